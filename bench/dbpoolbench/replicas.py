"""bench/replicas: read-replica routing under a read-heavy mix, three
configurations of dbpool-server side by side, interleaved:

  A  replicas   DATABASE_REPLICA_URLS = both replicas, reads read_only
  B  primary    no replicas: the same calls, all on the primary
  C  token      as A, each read carrying its caller's last write's
                commit_lsn as min_lsn (read-your-writes)

The load (replicas_load): 64 callers in closed loops, 90 % point selects by
random id (read_only), 10 % single-row UPDATEs, on a table of 100,000 rows.
Figures: A/B throughput (what routing reads to replicas gains or costs
here), C's read p99 against A's (what the token costs), the share of reads
the replicas served (db_route_total on /metrics) and where the CPU went.

One primary (synchronous_commit=on, as in production: with the test
clusters' off a commit reaches the replicas only up to wal_writer_delay
later, which token reads would mostly wait out) and two streaming replicas
of it, and two dbpool-servers, one routing to the replicas (A, C) and one
not (B), all started at the beginning; each round runs every configuration
back to back, the order rotated by one per round."""
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from . import compare, proc, sampling, stack, text
from .batch import run_order
from .compare_report import and_list, noise_note, table
from .replicas_load import SELECT_SQL, TABLE, UPDATE_SQL
from .settings import Env, SettingsError
from .stats import median, ratio
from .text import fixed, thousands

BENCH_DIR = Path(__file__).resolve().parents[1]
CONFIGS = {
    "A": "A: two replicas, reads read_only",
    "B": "B: primary only",
    "C": "C: two replicas, reads with min_lsn",
}
ROUTED = ("A", "C")
GROUPS = {"primary": "primary", "replicas": "replicas", "dbpool_server": "dbpool-server",
          "client": "client"}
TABLE_DDL = (f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, v bigint NOT NULL); "
             f"INSERT INTO {TABLE} SELECT g, 0 FROM generate_series(1, {{rows}}) g; "
             f"VACUUM ANALYZE {TABLE}; CHECKPOINT;")
# Where a read_only call without a replica to take it runs; counted apart
# from writes to tell how many reads the replicas took.
WRITE_REASONS = ("write", "transaction")


def settings_from(env):
    quick = env.flag("REPLICAS_QUICK")
    st = {
        "quick": quick,
        "configs": configs_from(env.text("REPLICAS_CONFIGS", " ".join(CONFIGS))),
        "rounds": env.whole("REPLICAS_ROUNDS", 1 if quick else 3, minimum=1, maximum=20),
        "duration_s": env.seconds("REPLICAS_DURATION", 3 if quick else 8),
        "warmup_s": env.seconds("REPLICAS_WARMUP", 2),
        "pause_s": env.number("REPLICAS_PAUSE", 1),
        "quiet_pct": env.number("REPLICAS_QUIET_PCT", 10),
        "quiet_max_s": env.number("REPLICAS_QUIET_MAX", 10),
        "callers": env.whole("REPLICAS_CALLERS", 64, minimum=1, maximum=1000),
        "write_pct": env.number("REPLICAS_WRITE_PCT", 10),
        "rows": env.whole("REPLICAS_ROWS", 100000, minimum=1, maximum=10_000_000),
        "replicas": env.whole("REPLICAS_COUNT", 2, minimum=1, maximum=4),
        "build_dir": env.text("REPLICAS_BUILD_DIR", "build-release"),
        "pool_size": stack.POOL_SIZE,
        "sql": {"read": SELECT_SQL, "write": UPDATE_SQL},
    }
    if st["write_pct"] > 100:
        raise SettingsError(f"REPLICAS_WRITE_PCT: at most 100, got {st['write_pct']:g}")
    report = env.text("REPLICAS_REPORT", "bench/results/BENCHMARKS-replicas-quick.md" if quick
                      else "docs/BENCHMARKS-replicas.md")
    return st, report


def configs_from(value):
    """"A B C" (spaces, commas or none) -> ["A", "B", "C"], in the order of
    CONFIGS, which the run order rotates."""
    chosen = set(value.replace(",", " ").replace(" ", "").upper())
    unknown = chosen - set(CONFIGS)
    if unknown or not chosen:
        raise SettingsError(f"REPLICAS_CONFIGS: want some of {' '.join(CONFIGS)}, "
                            f"got \"{value}\"")
    return [c for c in CONFIGS if c in chosen]


def server_binary(env, build_dir):
    """$DBPOOL_SERVER_BIN (the e2e tests' setting), else build_dir's."""
    path = env.text("DBPOOL_SERVER_BIN", "")
    if not path:
        return stack.binaries(build_dir)[0]
    if not os.access(path, os.X_OK):
        raise stack.HarnessError(f"DBPOOL_SERVER_BIN={path} is not an executable")
    return Path(path)


def build_type(server_bin):
    """CMAKE_BUILD_TYPE of the build directory the binary lies in, or "?"."""
    try:
        for line in (Path(server_bin).parent / "CMakeCache.txt").read_text().splitlines():
            if line.startswith("CMAKE_BUILD_TYPE:"):
                return line.split("=", 1)[1] or "?"
    except OSError:
        pass
    return "?"


# ---------------------------------------------------------------------------
# Figures of one run


def parse_routes(exposition):
    """{"target reason": count} of db_route_total in a Prometheus text
    exposition."""
    out = {}
    for line in exposition.splitlines():
        if not line.startswith("db_route_total{"):
            continue
        labels, _, value = line[len("db_route_total{"):].rpartition("} ")
        lab = dict(part.split("=", 1) for part in split_labels(labels))
        key = f"{lab.get('target', '?')} {lab.get('reason', '?')}"
        out[key] = out.get(key, 0) + float(value)
    return out


def split_labels(labels):
    """'a="x",b="y"' -> ['a=x', 'b=y'] (label values here hold no quotes
    or commas: targets are host:port, reasons words)."""
    return [p.replace('"', "") for p in labels.split(",") if p]


def route_delta(before, after):
    """Routing decisions between two scrapes, zeros left out."""
    out = {k: after[k] - before.get(k, 0) for k in after}
    return {k: v for k, v in out.items() if v}


def read_routes(routes):
    """(reads on replicas, reads on the primary, of which for min_lsn) from
    a route_delta."""
    on_replicas = on_primary = min_lsn = 0
    for key, n in routes.items():
        target, reason = key.rsplit(" ", 1)
        if reason in WRITE_REASONS:
            continue
        if target == "primary":
            on_primary += n
            if reason == "min_lsn":
                min_lsn += n
        else:
            on_replicas += n
    return on_replicas, on_primary, min_lsn


def replica_share(routes):
    """Share of the routed reads that replicas served; None without any
    routed read (a server without replicas counts no routes)."""
    on_replicas, on_primary, _ = read_routes(routes)
    return ratio(on_replicas, on_replicas + on_primary) if on_replicas else (
        0.0 if on_primary else None)


def cpu_figures(t1, t2, ticks1, ticks2, m1, m2, calls):
    """Per group: cores used over the window and CPU µs per call (read or
    write); the machine's busy share and the part of it outside the run."""
    window = t2 - t1
    out = {"window_s": round(window, 3), "cores_used": {}, "us_per_call": {}}
    for k in ticks2:
        d = ticks2[k] - ticks1.get(k, 0)
        out["cores_used"][k] = d / proc.TICK / window
        out["us_per_call"][k] = d * proc.US_PER_TICK / calls if calls else None
    m = {k: m2[k] - m1[k] for k in m1}
    total = m["total"] or 1
    ours = sum(ticks2[k] - ticks1.get(k, 0) for k in ticks2)
    out["machine_busy_pct"] = 100.0 * m["busy"] / total
    # What compare_report.noise_note reads: the share of the cores taken by
    # processes outside the run (the idle server among them).
    out["others_pct"] = max(0.0, 100.0 * (m["tasks"] - ours) / total)
    out["irq_softirq_pct"] = 100.0 * m["irq"] / total
    out["steal_pct"] = 100.0 * m["steal"] / total
    return out


def record(run, load, routes, cpu):
    """A run's record from the load's report, the routes and the CPU."""
    rec = dict(run)
    if not load:
        rec.update(valid=False, throughput=0, reads_per_s=0, writes_per_s=0, errors=0)
        return rec
    on_replicas, on_primary, min_lsn = read_routes(routes)
    rec.update(read=load["read"], write=load["write"], token_reads=load["token_reads"],
               reads_per_s=load["read"]["per_s"], writes_per_s=load["write"]["per_s"],
               throughput=load["read"]["per_s"] + load["write"]["per_s"],
               errors=load["read"]["errors"] + load["write"]["errors"], routes=routes,
               reads_on_replicas=on_replicas, reads_on_primary=on_primary,
               min_lsn_on_primary=min_lsn, replica_share=replica_share(routes))
    if cpu:
        rec["cpu"] = cpu
    calls = load["read"]["ok"] + load["write"]["ok"] + rec["errors"]
    rec["valid"] = run.get("exit_code") == 0 and calls > 0 and rec["errors"] <= 0.01 * calls
    return rec


# ---------------------------------------------------------------------------
# Medians and findings


def _get(rec, *path):
    for k in path:
        if not isinstance(rec, dict) or k not in rec:
            return None
        rec = rec[k]
    return rec


FIELDS = {
    "throughput": ("throughput",),
    "reads_per_s": ("reads_per_s",),
    "writes_per_s": ("writes_per_s",),
    "read_p50_ms": ("read", "latency_ms", "p50"),
    "read_p99_ms": ("read", "latency_ms", "p99"),
    "write_p50_ms": ("write", "latency_ms", "p50"),
    "write_p99_ms": ("write", "latency_ms", "p99"),
    "replica_share": ("replica_share",),
    "machine_busy_pct": ("cpu", "machine_busy_pct"),
}


def summarize(runs, configs):
    """Medians over the valid runs of each configuration."""
    summary = {}
    for c in configs:
        rs = [r for r in runs if r["config"] == c]
        good = [r for r in rs if r["valid"]]
        e = {"runs": len(rs), "valid_runs": len(good), "errors": sum(r["errors"] for r in rs)}
        for name, path in FIELDS.items():
            e[name] = median([_get(r, *path) for r in good])
        for key in ("cores_used", "us_per_call"):
            e[key] = {g: median([_get(r, "cpu", key, g) for r in good]) for g in GROUPS}
        e["min_lsn_on_primary"] = sum(r.get("min_lsn_on_primary", 0) for r in good)
        e["token_reads"] = sum(r.get("token_reads", 0) for r in good)
        summary[c] = e
    return summary


def per_round(runs, num, den, field, combine=lambda x, y: x / y):
    """combine(num's figure, den's) within each round where both have a
    valid run with it."""
    out = []
    for rnd in sorted({r["round"] for r in runs}):
        x, y = ([_get(r, *FIELDS[field]) for r in runs
                 if r["config"] == c and r["round"] == rnd and r["valid"]] for c in (num, den))
        if x and y and x[0] is not None and y[0]:
            out.append(combine(x[0], y[0]))
    return out


def findings(runs, summary):
    """A/B throughput and C against A at the read p99 (ratio and ms): the
    ratio of the medians and the per-round values."""
    out = {}
    if "A" in summary and "B" in summary:
        out["throughput"] = {"value": ratio(summary["A"]["throughput"],
                                            summary["B"]["throughput"]),
                             "per_round": per_round(runs, "A", "B", "throughput")}
    if "A" in summary and "C" in summary:
        a, c = summary["A"]["read_p99_ms"], summary["C"]["read_p99_ms"]
        out["token_p99"] = {"value": ratio(c, a),
                            "per_round": per_round(runs, "C", "A", "read_p99_ms"),
                            "ms": None if a is None or c is None else c - a,
                            "ms_per_round": per_round(runs, "C", "A", "read_p99_ms",
                                                      lambda x, y: x - y)}
    return out


def read_capacity(replicas, write_pct):
    """With every node on a machine of its own and reads and writes
    costing a node alike: the mix's throughput over the primary-only
    capacity when the nodes saturate. dbpool sends reads only to the
    replicas while one is routable, so the primary carries the writes and
    the replicas split the reads: min(1 / w, replicas / (1 - w))."""
    w = write_pct / 100
    bounds = [replicas / (1 - w)] if w < 1 else []
    if w > 0:
        bounds.append(1 / w)
    return min(bounds)


# ---------------------------------------------------------------------------
# The run


def load_argv(st, target, stubs, config, seed):
    argv = [sys.executable, "-m", "dbpoolbench.replicas_load", "--target", target,
            "--stubs", str(stubs), "--callers", str(st["callers"]),
            "--write-pct", f"{st['write_pct']:g}", "--rows", str(st["rows"]),
            "--duration", str(st["duration_s"]), "--warmup", str(st["warmup_s"]),
            "--seed", str(seed)]
    return argv + ["--token"] if config == "C" else argv


def group_ticks(groups):
    """CPU ticks per group {name: [pid, ...]}; a postmaster counts with all
    its children."""
    out = {}
    for name, pids in groups.items():
        n = 0
        for pid in pids:
            members = [pid, *proc.children(pid)] if name in ("primary", "replicas") else [pid]
            n += sum(proc.cpu_ticks(p) or 0 for p in members)
        out[name] = n
    return out


def scrape_routes(server):
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        return parse_routes(r.read().decode())


def run_one(ctx, st, rnd, config, seq):
    """One measured run: the load against the configuration's server, CPU
    and routes read at the ends of the measured window (less a margin)."""
    server = ctx["servers"]["B" if config == "B" else "A"]
    argv = load_argv(st, server.address, ctx["stubs"], config, seq)
    run = {"config": config, "round": rnd, "seq": seq, "callers": st["callers"],
           "start_utc": text.utc_text()}
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR))
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    go, stderr, out = threading.Event(), [], []
    at = {}

    def read_stderr():
        for line in p.stderr:
            if line.startswith("go ") and not go.is_set():
                at["go"] = float(line.split()[1])
                go.set()
            else:
                stderr.append(line.rstrip("\n"))
    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)]
    for t in readers:
        t.start()
    groups = {**ctx["groups"], "dbpool_server": [server.proc.pid], "client": [p.pid]}
    cpu = routes = None
    try:
        if go.wait(60):
            margin = min(0.25, st["duration_s"] / 10)
            start = at["go"] + st["warmup_s"]
            sampling.sleep_until(start + margin)
            t1, m1, k1, r1 = time.time(), proc.machine_ticks(), group_ticks(groups), \
                scrape_routes(server)
            sampling.sleep_until(start + st["duration_s"] - margin)
            t2, m2, k2, r2 = time.time(), proc.machine_ticks(), group_ticks(groups), \
                scrape_routes(server)
            routes = route_delta(r1, r2)
        rc = p.wait(timeout=st["warmup_s"] + st["duration_s"] + 60)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        stack.stop_process(p)
    for t in readers:
        t.join(5)
    run["exit_code"] = rc
    load = text.last_json_line("".join(out)) if rc == 0 else None
    if load and routes is not None:
        # The load's counts cover its own window; the CPU's is a margin
        # shorter at each end: calls over it at the window's rate.
        calls = (load["read"]["ok"] + load["write"]["ok"]) / load["duration_s"] * (t2 - t1)
        cpu = cpu_figures(t1, t2, k1, k2, m1, m2, calls)
    rec = record(run, load, routes or {}, cpu)
    if stderr and not rec["valid"]:
        rec["stderr_tail"] = stderr[-10:]
    return rec


def start_systems(s, st, server_bin, log):
    """The primary with the table, its replicas (stopped before it) and
    the two servers, in the stack s."""
    settings = (*compare.PG_SETTINGS, "max_connections=200")
    primary = s.postgres((*settings, "synchronous_commit=on"))
    log(f"primary on 127.0.0.1:{primary.port} (postmaster {primary.postmaster_pid})")
    primary.psql(TABLE_DDL.format(rows=st["rows"]), timeout=600)
    replicas = []
    for i in range(st["replicas"]):
        r = primary.start_replica(prefix=f"dbpool-replicas-r{i + 1}-", settings=settings)
        s.callback(r.stop)
        replicas.append(r)
        log(f"replica {i + 1} on 127.0.0.1:{r.port} (postmaster {r.postmaster_pid})")
    lsn = primary.psql("SELECT pg_current_wal_lsn()").strip()
    for r in replicas:
        r.wait_for_replay(lsn, timeout=120)
    st["table_size"] = primary.psql(f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))"
                                    ).strip()
    urls = ",".join(f"postgresql://postgres@127.0.0.1:{r.port}/postgres" for r in replicas)
    servers = {"A": s.server(server_bin, primary.database_url, compare.SERVER_ARGS,
                             env={"DATABASE_REPLICA_URLS": urls}),
               "B": s.server(server_bin, primary.database_url, compare.SERVER_ARGS)}
    for k, srv in servers.items():
        log(f"dbpool-server {'with' if k == 'A' else 'without'} replicas on {srv.address} "
            f"(pid {srv.proc.pid})")
    stubs = s.tmp / "stubs"
    stubs.mkdir()
    stack.harness.generate_python_stubs(stubs)
    ctx = {"servers": servers, "stubs": stubs,
           "groups": {"primary": [primary.postmaster_pid],
                      "replicas": [r.postmaster_pid for r in replicas]},
           "pids": {"postmaster": primary.postmaster_pid,
                    **{f"replica{i + 1}": r.postmaster_pid for i, r in enumerate(replicas)},
                    **{f"server_{k}": srv.proc.pid for k, srv in servers.items()}}}
    probe(ctx, st)
    return ctx


def probe(ctx, st):
    """A short load through each server, so that a broken setup stops the
    benchmark at its start: no errors, and the routing server sends reads to
    the replicas."""
    short = dict(st, duration_s=1, warmup_s=1)
    for config in ("A", "B"):
        rec = run_one(ctx, short, 0, config, 0)
        if not rec["valid"] or rec["errors"]:
            raise stack.HarnessError(f"the probe of {config} failed: "
                                     f"{rec.get('stderr_tail') or rec.get('read')}")
        if config == "A" and not rec["reads_on_replicas"]:
            raise stack.HarnessError(f"the probe of A sent no read to a replica: "
                                     f"{rec['routes']}")


def versions(server_bin):
    pg = stack.command_version([os.path.join(stack.pg_bindir(), "postgres"), "--version"])
    import grpc
    return {"postgres": pg, "dbpool": stack.dbpool_version().replace(
                "Release build", f"{build_type(server_bin)} build"),
            "server_bin": str(server_bin), "grpcio": grpc.__version__,
            "python": sys.version.split()[0]}


def progress_line(rec):
    def lat(kind, q):
        return fixed(_get(rec, kind, "latency_ms", q), 2, "-")
    share = rec.get("replica_share")
    return (f"{rec['config']} round {rec['round']}: {rec['throughput']:8.0f} calls/s "
            f"(reads {rec['reads_per_s']:.0f}, writes {rec['writes_per_s']:.0f})  read p50 "
            f"{lat('read', 'p50')} p99 {lat('read', 'p99')} ms  write p50 {lat('write', 'p50')}"
            f" p99 {lat('write', 'p99')} ms  on replicas "
            f"{'-' if share is None else f'{share:.0%}'}  errors {rec['errors']}"
            f"{'' if rec['valid'] else '  INVALID'}")


def measure_all(st, server_bin, meta, keep_tmp):
    log = stack.Logger("replicas")
    with stack.Stack("replicas", keep_tmp=keep_tmp) as s:
        ctx = start_systems(s, st, server_bin, log)
        meta["versions"] = versions(server_bin)
        order = run_order(st["rounds"], st["configs"])
        log(f"{len(order)} runs: {' '.join(st['configs'])}, {st['rounds']} round(s), "
            f"{st['warmup_s']}s warm-up + {st['duration_s']}s each")
        runs = []
        for rnd, config in order:
            before = compare.settle(ctx["pids"], st["quiet_pct"], st["quiet_max_s"])
            time.sleep(st["pause_s"])
            rec = run_one(ctx, st, rnd, config, len(runs) + 1)
            rec["before"] = before
            runs.append(rec)
            print(progress_line(rec), file=sys.stderr, flush=True)
            for name, pid in ctx["pids"].items():
                if proc.read_stat(pid) is None:
                    raise stack.HarnessError(f"{name} died during {config} round {rnd}")
    return runs


def main(env=None):
    env = Env(env)
    st, report_md = settings_from(env)
    log = stack.Logger("replicas")
    server_bin = server_binary(env, st["build_dir"])
    results_json = f"bench/results/replicas-{text.stamp()}{'-quick' if st['quick'] else ''}.json"
    meta = {"started_utc": text.utc_text(), "loadavg_start": proc.load_average()}
    runs = measure_all(st, server_bin, meta, env.flag("REPLICAS_KEEP_TMP"))
    model, mem = proc.machine_description()
    meta["settings"] = st
    meta["machine"] = {"nproc": os.cpu_count(), "cpu_model": model, "memory": mem,
                       "kernel": os.uname().release}
    meta["finished_utc"] = text.utc_text()
    summary = summarize(runs, st["configs"])
    doc = {"meta": meta, "summary": summary, "findings": findings(runs, summary), "runs": runs}
    text.write_json(results_json, doc)
    text.write_text(report_md, render(doc, results_json, report_md))
    log(f"wrote {report_md} and {results_json}")
    return 0


# ---------------------------------------------------------------------------
# The report


def pct(x, digits=0):
    return "—" if x is None else f"{100 * x:.{digits}f} %"


def spread(values, digits=2, unit=""):
    if not values:
        return "[—]"
    return f"[{fixed(min(values), digits)}–{fixed(max(values), digits)}{unit}]"


def run_range(runs, config, field):
    xs = [_get(r, *FIELDS[field]) for r in runs if r["config"] == config and r["valid"]]
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def findings_rows(f, summary, st):
    rows = []
    if "throughput" in f:
        t = f["throughput"]
        rows.append(["Throughput (reads + writes), A ÷ B",
                     f"{thousands(summary['A']['throughput'])} vs "
                     f"{thousands(summary['B']['throughput'])} calls/s: "
                     f"**{fixed(t['value'])}×** {spread(t['per_round'])}"])
    if "token_p99" in f:
        t = f["token_p99"]
        rows.append(["Read p99 with the token, C ÷ A",
                     f"{fixed(summary['C']['read_p99_ms'])} vs "
                     f"{fixed(summary['A']['read_p99_ms'])} ms: **{fixed(t['value'])}×** "
                     f"{spread(t['per_round'])}, {signed_ms(t['ms'])} "
                     f"{spread(t['ms_per_round'], unit=' ms')}"])
    for c in ROUTED:
        if c in summary:
            rows.append([f"Reads served by the replicas in {c}",
                         f"{pct(summary[c]['replica_share'], 1)}"])
    return rows


def signed_ms(x):
    return "—" if x is None else f"{x:+.2f} ms"


def cores(e, group):
    return fixed(e["cores_used"].get(group), 2)


def reading(summary, st, nproc):
    """What A/B means on one machine, and what it would be with the nodes
    on machines of their own."""
    if "A" not in summary or "B" not in summary:
        return ""
    a, b = summary["A"], summary["B"]
    n, w = st["replicas"], st["write_pct"]
    cap = read_capacity(n, w)
    share = f"{pct(1 - w / 100)} reads"
    out = [f"**What A ÷ B means here.** The primary, both replicas, the two dbpool-servers "
           f"and the load generator all share this machine's {nproc} cores, so the replicas "
           f"bring no CPU of their own: the reads they take away from the primary are served "
           f"with the same cores, and every write is now also replayed twice. The machine was "
           f"{fixed(a['machine_busy_pct'], 0)} % busy in A and {fixed(b['machine_busy_pct'], 0)} "
           f"% in B. In B the primary used {cores(b, 'primary')} cores, dbpool-server "
           f"{cores(b, 'dbpool_server')} and the client {cores(b, 'client')}; in A the primary "
           f"{cores(a, 'primary')}, the replicas {cores(a, 'replicas')}, dbpool-server "
           f"{cores(a, 'dbpool_server')} and the client {cores(a, 'client')}. So the ratio "
           f"shows what routing costs on a saturated machine — dbpool-server spent "
           f"{fixed(a['us_per_call'].get('dbpool_server'), 1)} µs of CPU per call in A against "
           f"{fixed(b['us_per_call'].get('dbpool_server'), 1)} µs in B, PostgreSQL "
           f"{fixed(sum_groups(a, ('primary', 'replicas')), 1)} µs against "
           f"{fixed(sum_groups(b, ('primary', 'replicas')), 1)} µs (all three nodes) — and not "
           f"what replicas add.\n",
           f"**With the replicas on machines of their own** reads scale with the number of "
           f"replicas. dbpool sends `read_only` calls only to replicas while one is routable, "
           f"so the primary keeps the {w:g} % writes and the {n} replicas split the {share}: "
           f"{n} nodes' worth of read capacity, {n}× what the primary alone serves when reads "
           f"dominate and it is the bottleneck. For this mix, with reads and writes costing a "
           f"node alike, the whole mix then saturates at min(1 ÷ {w / 100:g}, {n} ÷ "
           f"{1 - w / 100:g}) = **{cap:.1f}×** the primary-only throughput, the replicas being "
           f"the limit; up to {n + 1}× would need the primary to take reads too, which dbpool "
           f"does only when no replica is routable. Less the routing overhead measured here "
           f"(dbpool-server's CPU per call above, and the token's cost below), and provided "
           f"dbpool-server itself has the cores to carry it.\n"]
    return "\n".join(out)


def sum_groups(e, groups):
    xs = [e["us_per_call"].get(g) for g in groups]
    return None if None in xs else sum(xs)


def token_reading(summary, f, st):
    if "token_p99" not in f:
        return ""
    a, c, t = summary["A"], summary["C"], f["token_p99"]
    return (f"**The token's cost.** In C every read carries the `commit_lsn` of its caller's "
            f"last write as `min_lsn` ({thousands(c['token_reads'])} reads did in the measured "
            f"windows). A replica known to have replayed that far runs it at once; otherwise "
            f"the read waits, while dbpool polls the replicas, up to `DB_REPLICA_WAIT_MS` "
            f"(200 ms) and then runs on the primary. Read p50 went from "
            f"{fixed(a['read_p50_ms'])} ms (A) to {fixed(c['read_p50_ms'])} ms (C), p99 from "
            f"{fixed(a['read_p99_ms'])} to {fixed(c['read_p99_ms'])} ms ({signed_ms(t['ms'])}); "
            f"{thousands(c['min_lsn_on_primary'])} reads waited out the wait and ran on the "
            f"primary (`db_route_total{{reason=\"min_lsn\"}}`), and the replicas served "
            f"{pct(c['replica_share'], 1)} of C's reads against {pct(a['replica_share'], 1)} "
            f"of A's.\n")


def results_rows(runs, summary, configs):
    rows = []
    for c in configs:
        e = summary[c]
        lo, hi = run_range(runs, c, "throughput")
        note = "" if e["valid_runs"] == e["runs"] else \
            f" ({e['runs'] - e['valid_runs']} invalid run(s))"
        rows.append([f"{CONFIGS[c]}{note}",
                     f"{thousands(e['throughput'])} [{thousands(lo)}–{thousands(hi)}]",
                     thousands(e["reads_per_s"]), thousands(e["writes_per_s"]),
                     fixed(e["read_p50_ms"]), fixed(e["read_p99_ms"]),
                     fixed(e["write_p50_ms"]), fixed(e["write_p99_ms"]),
                     pct(e["replica_share"], 1), f"{e['errors']:,}"])
    return rows


def cpu_rows(summary, configs):
    return [[CONFIGS[c], *(f"{cores(summary[c], g)} ({fixed(summary[c]['us_per_call'].get(g), 1)})"
                           for g in GROUPS), fixed(summary[c]["machine_busy_pct"], 0)]
            for c in configs]


def render(doc, json_path, md_path):
    """The Markdown report of a replicas result document."""
    meta, summary, runs = doc["meta"], doc["summary"], doc["runs"]
    st, v, m = meta["settings"], meta["versions"], meta["machine"]
    f = findings(runs, summary)
    configs = [c for c in CONFIGS if c in summary]
    L = []
    w = L.append
    w("# Read replicas: a read-heavy mix on two replicas against the primary alone\n")
    link = os.path.relpath(json_path, os.path.dirname(os.path.abspath(md_path)) or ".")
    w(f"Generated by `bench/replicas` (run {meta['started_utc']} – {meta['finished_utc']}); "
      f"every number below is computed from the raw results in [`{json_path}`]({link}) — do "
      f"not edit by hand, re-run the script.\n")
    if st["quick"]:
        w("> **Quick mode (`REPLICAS_QUICK=1`)**: one short round, a smoke test of the "
          "script, not a measurement to quote.\n")
    w("## Findings\n")
    w(f"{st['callers']} callers, {100 - st['write_pct']:g} % point selects (`read_only`) and "
      f"{st['write_pct']:g} % single-row updates. Ratios of the medians over {st['rounds']} "
      f"round(s); in brackets the range of the values within each round, whose runs are "
      f"seconds apart.\n")
    L += table(["figure", "measured (median [per round])"], ["---", "---"],
               findings_rows(f, summary, st))
    w("")
    for part in (reading(summary, st, m["nproc"]), token_reading(summary, f, st)):
        if part:
            w(part)
    w("## Results\n")
    w("Medians over the valid runs. Calls/s count the calls that succeeded in the measured "
      "window; latency is per call, as the client saw it. *On replicas* is the share of the "
      "reads dbpool routed to a replica (`db_route_total`, read at the ends of the window).\n")
    L += table(["configuration", "calls/s [min–max]", "reads/s", "writes/s", "read p50 ms",
                "read p99 ms", "write p50 ms", "write p99 ms", "on replicas", "errors"],
               ["---", *["---:"] * 9], results_rows(runs, summary, configs))
    w("")
    w("Where the CPU went: cores used over the window, in brackets CPU µs per call "
      "(reads and writes). PostgreSQL counts each postmaster with all its children.\n")
    L += table(["configuration", *GROUPS.values(), "machine busy %"],
               ["---", *["---:"] * (len(GROUPS) + 1)], cpu_rows(summary, configs))
    w("")
    w("## Method\n")
    w(method(st, configs, runs))
    w("## Machine\n")
    w("| | |\n|---|---|")
    w(f"| `nproc` | {m['nproc']} |")
    w(f"| CPU (`/proc/cpuinfo` model name) | {m['cpu_model']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| PostgreSQL | {v['postgres']} |")
    w(f"| dbpool | {v['dbpool']} |")
    w(f"| load generator | Python {v['python']}, grpcio {v['grpcio']} (`grpc.aio`) |")
    w(f"| date (UTC) | {meta['started_utc']} – {meta['finished_utc']} |")
    w(f"| load average before the runs | {meta['loadavg_start']} |")
    return "\n".join(L) + "\n"


def method(st, configs, runs):
    n = st["replicas"]
    order = "".join(configs)
    rotations = ", ".join(order[k:] + order[:k] for k in range(min(3, len(order))))
    items = {
        "A": f"* **A — replicas**: dbpool-server with `DATABASE_REPLICA_URLS` naming the {n} "
             f"replicas (default routing settings: probe every 250 ms, lag at most 1 s, "
             f"`DB_REPLICA_WAIT_MS` 200 ms); reads `read_only: true`.",
        "B": "* **B — primary only**: a second dbpool-server, the same flags, no replicas; the "
             "same calls, `read_only` included, all run on the primary.",
        "C": "* **C — token**: A's server; each read also carries `min_lsn`, the `commit_lsn` "
             "of its caller's last successful write (none before the caller's first write).",
    }
    out = [f"A primary with bench/compare's PostgreSQL settings plus `synchronous_commit=on`, "
           f"and {n} streaming replicas of it (`tests/support/pg_cluster.sh start-replica`, "
           f"the same settings), all on this machine. The table `{TABLE}` "
           f"(`id bigint PRIMARY KEY, v bigint`) holds {st['rows']:,} rows "
           f"({st.get('table_size', '?')}), vacuumed and checkpointed, replayed by every replica "
           f"before the first run. Every dbpool-server runs with "
           f"`{' '.join(compare.SERVER_ARGS)}` (one pool of {st['pool_size']} on the primary "
           f"and one on each replica), both started at the beginning.\n",
           f"The load is `python3 -m dbpoolbench.replicas_load`, a process of its own: "
           f"{st['callers']} callers on one `grpc.aio` channel, each a closed loop of `Query` "
           f"calls, with probability {st['write_pct']:g} % `{UPDATE_SQL}` and otherwise "
           f"`{SELECT_SQL}` with `read_only: true`, `$1` uniform over 1..{st['rows']:,}, every "
           f"call with a 5 s deadline. (`dbpool bench` sends one statement and sets neither "
           f"`read_only` nor `min_lsn`.)\n"]
    out += [items[c] for c in configs]
    out.append(f"\n{st['rounds']} round(s); each runs {and_list(configs)} back to back, the "
               f"order rotated by one per round ({rotations}, …). Each run: {st['warmup_s']} s "
               f"of warm-up, then {st['duration_s']} s measured. Before each run the script "
               f"waits until the primary's process count is stable, then up to "
               f"{st['quiet_max_s']:g} s for a second in which other processes use at most "
               f"{st['quiet_pct']:g} % of the machine, then {st['pause_s']:g} s. A run is valid "
               f"when the load ends normally with at most 1 % of its calls failed.\n")
    out.append(noise_note(runs, dict(st, repeats=st["rounds"])) + "\n")
    out.append("* **Calls/s**: calls that succeeded and completed in the measured window ÷ "
               "its length; latency percentiles (nearest rank) over every call completed in "
               "it.")
    out.append("* **Cores used, µs per call**: `utime + stime` deltas from `/proc/PID/stat` "
               f"over the window less {min(0.25, st['duration_s'] / 10):.2f} s at each end, "
               "÷ its length, or ÷ the calls of that stretch at the window's rate. *primary* "
               "and *replicas* are the postmasters with all their children; *dbpool-server* "
               "the server under load (the idle one is left out); *client* the load "
               "generator. *machine busy* covers everything, the idle server included.")
    out.append("* **On replicas**: `db_route_total` of the server under load, scraped from "
               "its `/metrics` at both ends of that stretch; reads are the decisions other "
               "than `write` and `transaction`, on a replica those whose `target` is not "
               "`primary`.")
    return "\n".join(out) + "\n"
