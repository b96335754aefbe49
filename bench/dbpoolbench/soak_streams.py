"""What bench/soak sends, and what it takes as expected."""

# name, share of SOAK_RATE, SQL, --param (or None), the error codes it is
# meant to get. {accounts} is the pgbench_accounts row count.
STREAMS = [
    ("select", 0.50, "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
     "rand:1:{accounts}", []),
    ("insert", 0.10, "INSERT INTO soak_events (k, note) VALUES ($1, md5($1::text))",
     "rand:1:1000000", []),
    ("upsert", 0.10, "INSERT INTO soak_counters AS c (k, n) VALUES ($1, 1) "
     "ON CONFLICT (k) DO UPDATE SET n = c.n + 1, updated_at = now()",
     "rand:1:10000", []),
    ("slow", 0.15, "SELECT pg_sleep(0.02)", None, []),
    ("div0", 0.10, "SELECT $1::int / 0", "rand:1:1000", ["INVALID_ARGUMENT"]),
    ("check", 0.05, "INSERT INTO soak_checked (v) VALUES ($1)", "rand:1:1000",
     ["FAILED_PRECONDITION"]),
]

# Codes the server may return to the failing streams on purpose; in the
# server's per-second counts they are never taken as unexpected.
EXPECTED_CODES = {c for s in STREAMS for c in s[4]}

# A machine shared with others can stall every process on it for seconds;
# calls then pile up and time out through no fault of the server. A thread
# that only sleeps 100 ms at a time tells: it wakes late only when the
# machine (not the server, which it never waits for) held it up.
STALL_S = 1.0


def streams(rate, scale):
    """The streams at a total rate (calls/s) and pgbench scale."""
    out = []
    for name, share, sql, param, expected in STREAMS:
        out.append({"name": name, "share": share, "rate": round(rate * share, 3),
                    "sql": sql,
                    "param": param.format(accounts=100000 * scale) if param else None,
                    "expected_errors": expected})
    return out
