"""bench/compare's report: the summary over repetitions (summarize) and
the Markdown report (render) of a result document. A document holds the
systems its run chose; the report shows those, so that results from
before the peers (A, B and C only) still render, and judges issue 9's
goals, those whose systems did not run as not measured."""
import os
from typing import Callable, NamedTuple

from .stats import median, ratio
from .text import fixed, thousands

SYSTEMS = {
    "A": "A: PostgreSQL direct (pgbench -M prepared)",
    "B": "B: PgBouncer 1.18 (pgbench -M simple)",
    "C": "C: dbpool (dbpool bench)",
    "D": "D: Go gateway (grpc-go + pgxpool, dbpool bench)",
    "E": "E: Node.js gateway (grpc-js + pg.Pool, dbpool bench)",
    "F": "F: dbpool's gRPC floor (dbpool bench --rpc stats)",
}
# The processes whose CPU counts for a system: PostgreSQL unless the
# system leaves the database out, its gateway if any, the load generator.
INVOLVED = {"A": ("postgres", "client"),
            "B": ("postgres", "pgbouncer", "client"),
            "C": ("postgres", "dbpool_server", "client"),
            "D": ("postgres", "peer_go", "client"),
            "E": ("postgres", "peer_node", "client"),
            "F": ("dbpool_server", "client")}
LOAD = {"A": "pgbench", "B": "pgbench", "C": "dbpool bench", "D": "dbpool bench",
        "E": "dbpool bench", "F": "dbpool bench"}
# Process names in the order of the report's columns.
PROCESSES = {"postgres": "PostgreSQL", "pgbouncer": "PgBouncer", "dbpool_server": "dbpool-server",
             "peer_go": "Go gateway", "peer_node": "Node.js gateway", "client": "client"}
TITLES = {"A": "PostgreSQL direct", "B": "PgBouncer", "C": "dbpool", "D": "a Go gateway",
          "E": "a Node.js gateway", "F": "dbpool's gRPC floor"}
# Throughput ratios (numerator, denominator), in the order the report
# names them.
RATIOS = (("C", "A"), ("C", "B"), ("B", "A"), ("C", "D"), ("C", "E"))


def gateway(sysname):
    """The process between the load generator and PostgreSQL, or None."""
    return next((k for k in INVOLVED[sysname] if k not in ("postgres", "client")), None)


def gateways(systems):
    """The gateway processes of the systems, each once (C and F share
    dbpool-server)."""
    return list(dict.fromkeys(g for g in map(gateway, systems) if g))


def present(runs):
    """The systems that ran, in the order of SYSTEMS."""
    ran = {r["system"] for r in runs}
    return [s for s in SYSTEMS if s in ran]


def processes(systems):
    """The processes involved in any of the systems, in column order."""
    return [k for k in PROCESSES if any(k in INVOLVED[s] for s in systems)]


def and_list(items):
    """"A, B and C"."""
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def run_medians(rs):
    """What every report says of a group of runs of one setting: how many
    (valid), their errors, and the medians over the valid ones of
    throughput (with its range), latency and others' CPU."""
    good = [r for r in rs if r["valid"]]
    tp = [r["throughput"] for r in good]
    return {
        "runs": len(rs), "valid_runs": len(good),
        "errors": sum(r.get("errors", 0) for r in rs),
        "throughput_median": median(tp),
        "throughput_min": min(tp) if tp else None,
        "throughput_max": max(tp) if tp else None,
        "p50_ms_median": median([r["latency_ms"].get("p50") for r in good]),
        "p99_ms_median": median([r["latency_ms"].get("p99") for r in good]),
        "others_pct_median": median([r.get("cpu", {}).get("others_pct") for r in good]),
    }


def summarize(runs, concurrency):
    systems = present(runs)
    procs = processes(systems)
    summary = {}
    for n in concurrency:
        s = {}
        for sysname in systems:
            rs = [r for r in runs if r["concurrency"] == n and r["system"] == sysname]
            good = [r for r in rs if r["valid"]]
            entry = {
                **run_medians(rs),
                "cpu_us_per_query_median": {},
                "others_pct_max": max([r.get("cpu", {}).get("others_pct") or 0 for r in good],
                                      default=None),
            }
            entry["ctx_switches_per_query_median"] = {}
            for k in procs:
                mine = k in INVOLVED[sysname]
                for field, key in (("cpu_us_per_query_median", "us_per_query"),
                                   ("ctx_switches_per_query_median", "ctx_switches_per_query")):
                    vals = [r.get("cpu", {}).get(key, {}).get(k) for r in good]
                    entry[field][k] = median(vals) if mine else None
            entry["irq_softirq_pct_median"] = median(
                [r.get("cpu", {}).get("irq_softirq_pct") for r in good])
            entry["steal_pct_median"] = median([r.get("cpu", {}).get("steal_pct") for r in good])
            entry["cpu_us_per_query_median"]["total"] = median(
                involved_sums(good, sysname, "us_per_query"))
            s[sysname] = entry
        for num, den in RATIOS:
            if num in s and den in s:
                s[f"{num}/{den}"] = throughput_ratio(runs, n, num, den, s)
        if "B" in s and "C" in s:
            s["dbpool_vs_pgbouncer_cpu"] = ratio(
                s["C"]["cpu_us_per_query_median"]["dbpool_server"],
                s["B"]["cpu_us_per_query_median"]["pgbouncer"])
        summary[str(n)] = s
    return summary


def throughput_ratio(runs, n, num, den, s):
    """num's throughput over den's at n callers: of the medians, and per
    repetition (the runs seconds apart)."""
    per_rep = []
    for rep in sorted({r["repeat"] for r in runs}):
        x, y = ([r["throughput"] for r in runs if r["concurrency"] == n and
                 r["system"] == name and r["repeat"] == rep and r["valid"]]
                for name in (num, den))
        if x and y and y[0] > 0:
            per_rep.append(x[0] / y[0])
    return {
        "ratio_of_medians": ratio(s[num]["throughput_median"], s[den]["throughput_median"]),
        "per_repeat": per_rep,
        "min": min(per_rep) if per_rep else None,
        "max": max(per_rep) if per_rep else None,
    }


def involved_sums(runs, sysname, key):
    """Per run, the sum of cpu[key] over the processes of the system, for
    the runs that have it for every one of them."""
    out = []
    for r in runs:
        u = r.get("cpu", {}).get(key, {})
        if u and all(u.get(k) is not None for k in INVOLVED[sysname]):
            out.append(sum(u[k] for k in INVOLVED[sysname]))
    return out


def render(doc, json_path, md_path):
    """The Markdown report of a compare result document."""
    meta, summary, runs = doc["meta"], doc["summary"], doc["runs"]
    st = meta["settings"]
    v = meta["versions"]
    m = meta["machine"]
    conc = st["concurrency"]
    systems = present(runs)
    procs = processes(systems)
    L = []
    w = L.append
    w(f"# Benchmarks: {' vs '.join(TITLES[s] for s in sorted(systems, key=lambda s: s != 'C'))}\n")
    link = os.path.relpath(json_path, os.path.dirname(os.path.abspath(md_path)) or ".")
    w(f"Generated by `bench/compare` (run {meta['started_utc']} – {meta['finished_utc']}); "
      f"every number below is computed from the raw results in "
      f"[`{json_path}`]({link}) — do not edit by hand, re-run the script.\n")
    if st["quick"]:
        w("> **Quick mode (`BENCH_QUICK=1`)**: one short repetition per point, a smoke "
          "test of the script, not a measurement to quote.\n")
    w("## Machine\n")
    w("| | |\n|---|---|")
    w(f"| `nproc` | {m['nproc']} |")
    w(f"| CPU (`/proc/cpuinfo` model name) | {m['cpu_model']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| PostgreSQL | {v['postgres']} |")
    w(f"| PgBouncer | {v['pgbouncer']} |")
    w(f"| pgbench | {v['pgbench']} |")
    w(f"| dbpool | {v['dbpool']} |")
    for key, name in (("peer_go", "Go gateway"), ("peer_node", "Node.js gateway")):
        if key in v:
            w(f"| {name} | {v[key]} |")
    w(f"| date (UTC) | {meta['started_utc']} – {meta['finished_utc']} |")
    w(f"| load average before the runs | {meta['loadavg_start']} |")
    w("")
    w("## Method\n")
    w("One point select, `SELECT abalance FROM pgbench_accounts WHERE aid = $1`, with "
      f"`aid` drawn uniformly from 1..1,000,000 (pgbench scale 10, database "
      f"{st['database_size']}, `shared_buffers` 256MB), issued by a closed loop of N "
      "concurrent callers:\n")
    for sysname in systems:
        w(method_item(sysname, st))
    if "D" in systems or "E" in systems:
        w(f"\nThe peer gateways open their connections on demand (and `pg.Pool` closes them "
          f"after 30 s idle): before each of their runs, `dbpool bench` with "
          f"{2 * st['pool_size']} callers fills the pool until `pg_stat_activity` shows "
          f"all {st['pool_size']} connections.")
    w("")
    threads = ("J = 2 pgbench threads when N is even, else 1 (`-j` must divide `-c`). "
               if "A" in systems or "B" in systems else "")
    order = "".join(systems)
    rotations = ", ".join(order[k:] + order[:k] for k in range(min(3, len(order))))
    parts = [f"PostgreSQL {v['postgres_short']}",
             *(PROCESSES[g] for g in gateways(systems)), "the load generator"]
    w(f"{threads}Concurrency "
      f"{', '.join(map(str, conc))}; {st['repeats']} repetition(s). Each repetition runs, "
      f"for each N in turn, {and_list(systems)} back to back, the order rotated by one per "
      f"repetition ({rotations}, …), so that per-repetition ratios compare runs "
      f"seconds apart. Every run loads {st['warmup_s']} s of warm-up and then "
      f"{st['duration_s']} s measured. Before each run the script waits until the "
      f"cluster's process count is stable (direct backends have exited), then up to "
      f"{st['quiet_max_s']:g} s for a second in which other processes use at most "
      f"{st['quiet_pct']:g} % of the machine, then {st['pause_s']:g} s. Everything ("
      f"{', '.join(parts)}) runs on this machine, over 127.0.0.1 TCP.\n")
    w("* **Throughput**: successful queries per second in the measured window (pgbench: "
      "counted from its per-transaction log `-l`; dbpool bench: `ok / duration`). "
      "**Latency** p50/p99: pgbench from the same log, dbpool bench from its histogram.")
    counted = ["PostgreSQL = postmaster plus all its children (backends and background "
               "processes)"]
    counted += [PROCESSES[g] + ("" if g == "pgbouncer" else " (all threads)")
                for g in gateways(systems)]
    counted.append(f"client = {' or '.join(dict.fromkeys(LOAD[s] for s in systems))}")
    w("* **CPU µs/query**: `utime + stime` deltas from `/proc/PID/stat` over the measured "
      f"window (less {min(0.25, st['duration_s'] / 10):.2f} s at each end), divided by the "
      f"queries completed in that window. {'; '.join(counted)}. Resolution is one clock "
      "tick (10 ms) per process and window. *total* = the processes involved in that system.")
    dbpool_ratios = [f"{num}/{den}" for num, den in RATIOS
                     if num == "C" and f"{num}/{den}" in summary[str(conc[0])]]
    w("* Tables show the **median over repetitions**, with [min–max] for throughput." +
      (f" Ratios {and_list(dbpool_ratios)} are ratios of the median throughputs; the spread "
       "is the min–max of the per-repetition ratios." if dbpool_ratios else ""))
    w("* **others' CPU** = task time of the whole machine (`/proc/stat` user + nice + "
      "system) minus the processes above, in % of all cores: work of other tenants "
      "during the run (noise).\n")

    w("## Goals\n")
    w("Issue 9's goals, judged on this run's medians; a goal whose systems or "
      "concurrency were not in the run is not measured.\n")
    L += goals_section(summary)
    w("")
    w("## Summary\n")
    L += summary_table(columns(SUMMARY_COLUMNS, systems), summary, conc)
    w("")
    if "D" in systems or "E" in systems:
        w("### Against the gateways a team would write instead\n")
        L += summary_table(columns(PEER_COLUMNS, systems), summary, conc)
        w("")

    w("## Per concurrency\n")
    for n in conc:
        s = summary[str(n)]
        w(f"### {n} concurrent caller{'s' if n != 1 else ''}\n")
        rows = []
        for sysname in systems:
            e = s[sysname]
            c = e["cpu_us_per_query_median"]
            runs_note = "" if e["valid_runs"] == e["runs"] else f" ({e['runs'] - e['valid_runs']} invalid run(s))"
            rows.append([f"{SYSTEMS[sysname]}{runs_note}",
                         f"{thousands(e['throughput_median'])} "
                         f"[{thousands(e['throughput_min'])}–{thousands(e['throughput_max'])}]",
                         fixed(e['p50_ms_median'], 3), fixed(e['p99_ms_median'], 3),
                         *(fixed(c[k], 0) for k in procs), fixed(c['total'], 0),
                         str(e['errors']), fixed(e['others_pct_median'], 0)])
        L += table(["system", "throughput /s median [min–max]", "p50 ms", "p99 ms",
                    *(f"{PROCESSES[k]} µs/q" for k in procs), "total CPU µs/q", "errors",
                    "others' CPU %"],
                   ["---", *["---:"] * (len(procs) + 6)], rows)
        ratios = [f"{num}/{den} = {ratio_text(s[f'{num}/{den}'], bold=num == 'C')}"
                  for num, den in RATIOS if f"{num}/{den}" in s]
        w(f"\n{', '.join(ratios)}.\n" if ratios else "")

    w("## Context switches per query\n")
    w("Voluntary + involuntary context switches of every thread, from "
      "`/proc/PID/task/*/status`, over the same window, divided by the queries (median "
      "over repetitions). On this paravirtualised VM a context switch is expensive "
      "(the perf baseline measured 15 µs per pipe round trip between two processes).\n")
    cells = [(sysname, k) for sysname in systems for k in INVOLVED[sysname]]

    def switches(s, sysname, k):
        x = fixed(s[sysname]["ctx_switches_per_query_median"][k], 1)
        return f"**{x}**" if (sysname, k) == ("C", "dbpool_server") else x
    L += table(["clients", *(f"{sysname}: {LOAD[sysname] if k == 'client' else PROCESSES[k]}"
                             for sysname, k in cells)],
               ["---:"] * (len(cells) + 1),
               [[str(n), *(switches(summary[str(n)], *cell) for cell in cells)] for n in conc])
    w("")
    w("## Reading the numbers\n")
    w(reading(summary, conc, runs, st, m["nproc"]))
    w("")
    w("## Other benchmarks\n")
    here = os.path.dirname(os.path.abspath(md_path)) or "."
    for path, what in OTHER_REPORTS:
        link = os.path.relpath(os.path.abspath(path), here)
        w(f"* [`{path}`]({link}): {what}")
    w("")
    return "\n".join(L) + "\n"


# The reports of the other benchmarks, listed at the end of this one.
OTHER_REPORTS = (
    ("docs/BENCHMARKS-batch.md", "ExecuteBatch (`bench/batch`): a 1,000-row insert as one batch "
     "against unary calls, and point selects in batches of 100 against PgBouncer and "
     "pgbench's pipeline mode"),
    ("docs/BENCHMARKS-pipeline-depth.md", "the point select at several `DB_PIPELINE_DEPTH` "
     "settings side by side (`bench/pipeline-depth`)"),
    ("docs/BENCHMARKS-floor.md", "what a gRPC call costs the server before any database work "
     "(`bench/floor`)"),
    ("docs/BENCHMARKS-rate.md", "the highest open-loop rate within 0.1 % errors and 50 ms p99 "
     "(`bench/max-rate`)"),
    ("docs/BENCHMARKS-waiters.md", "10,000 concurrent callers on a pool of 20 "
     "(`bench/waiters`)"),
    ("docs/BENCHMARKS-overload.md", "three times the capacity offered with 100 ms deadlines "
     "(`bench/overload`)"),
)


def method_item(sysname, st):
    """The Method section's line on one system."""
    pool = st["pool_size"]
    return {
        "A": "* **A — PostgreSQL direct**: `pgbench -M prepared -c N -j J` with a script file "
             "(`\\set aid random(1, 1000000)` and the SELECT with `:aid`), N server connections.",
        "B": f"* **B — PgBouncer**: `pgbench -M simple` (PgBouncer 1.18 cannot keep "
             f"protocol-level prepared statements in transaction mode) through PgBouncer, "
             f"`pool_mode=transaction`, `default_pool_size={pool}`, `max_client_conn=1000`, "
             f"`auth_type=trust`.",
        "C": f"* **C — dbpool**: `dbpool bench --concurrency N --param rand:1:1000000` through "
             f"`dbpool-server` (Release build, `--db-pool-max-connections={pool}`, "
             f"`--db-pool-min-connections={pool}`). dbpool binds the parameter with the "
             "extended protocol; each pooled connection runs a statement unnamed the first "
             "time and prepared (bind + execute) from its second use on.",
        "D": f"* **D — Go gateway**: the same `dbpool bench` through `bench/peers/go` "
             f"(grpc-go + pgx v4 `pgxpool`, `--pool-size={pool}`), the gateway a team would "
             "write instead; pgx prepares the statement once per connection.",
        "E": f"* **E — Node.js gateway**: the same `dbpool bench` through `bench/peers/node` "
             f"(`@grpc/grpc-js` + `pg.Pool`, `--pool-size={pool}`), the stack dbpool grew out "
             "of; pg parses the statement again on every call.",
        "F": "* **F — dbpool's gRPC floor**: `dbpool bench --rpc stats --concurrency N` "
             "against C's `dbpool-server` process: GetPoolStats, answered from memory (no "
             "database, no pool wait), the least a call can cost the server. Its "
             "\"queries\" are those calls; PostgreSQL does no work for them.",
    }[sysname]


def table(header, align, rows):
    """A Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def summary_table(cols, summary, conc):
    """One row per concurrency."""
    return table(["clients", *(c[0] for c in cols)], ["---:", *(c[2] for c in cols)],
                 [[str(n), *(c[3](summary[str(n)]) for c in cols)] for n in conc])


def columns(spec, systems):
    """The columns of a summary table whose systems all ran."""
    return [c for c in spec if all(x in systems for x in c[1])]


def throughput_column(sysname, header):
    return (header, sysname, "---:", lambda s: thousands(s[sysname]["throughput_median"]))


def ratio_column(num, den):
    key = f"{num}/{den}"
    return (f"**{key}** [spread]", num + den, "---", lambda s: ratio_text(s[key], bold=True))


def gateway_cpu_column(sysname):
    g = gateway(sysname)
    return (f"{PROCESSES[g]} CPU µs/q", sysname, "---:",
            lambda s: fixed(s[sysname]["cpu_us_per_query_median"][g], 0))


# (header, systems it needs, alignment, cell of a concurrency's summary)
SUMMARY_COLUMNS = (
    throughput_column("A", "A direct /s"), throughput_column("B", "B PgBouncer /s"),
    throughput_column("C", "C dbpool /s"), ratio_column("C", "A"), ratio_column("C", "B"),
    gateway_cpu_column("C"), gateway_cpu_column("B"),
    ("dbpool ÷ PgBouncer CPU", "BC", "---:", lambda s: fixed(s["dbpool_vs_pgbouncer_cpu"])),
)
PEER_COLUMNS = (
    throughput_column("C", "C dbpool /s"), throughput_column("D", "D Go /s"),
    throughput_column("E", "E Node.js /s"), ratio_column("C", "D"), ratio_column("C", "E"),
    gateway_cpu_column("C"), gateway_cpu_column("D"), gateway_cpu_column("E"),
)


def ratio_text(r, bold=False):
    """"0.39 [0.37–0.41]": a ratio of medians and its per-repetition
    spread."""
    head = fixed(r["ratio_of_medians"])
    return f"{f'**{head}**' if bold else head} [{fixed(r['min'])}–{fixed(r['max'])}]"


class Goal(NamedTuple):
    """A target for a figure of one concurrency's summary, which needs
    `systems` to have run, at each of `callers`."""
    what: str
    systems: str
    callers: tuple
    limit: float
    at_most: bool
    unit: str
    figure: Callable  # a concurrency's summary -> (value or None, its text)


def cpu_over(num, den, k):
    """Process k's CPU per query in system num over in system den."""
    def figure(s):
        x, y = (s[sysname]["cpu_us_per_query_median"][k] for sysname in (num, den))
        return ratio(x, y), f"{fixed(x, 0)} vs {fixed(y, 0)} µs ({fixed(ratio(x, y))}×)"
    return figure


def throughput_over(num, den):
    def figure(s):
        r = s[f"{num}/{den}"]
        return r["ratio_of_medians"], ratio_text(r)
    return figure


def server_switches(s):
    x = s["C"]["ctx_switches_per_query_median"]["dbpool_server"]
    return x, fixed(x, 1)


# Issue 9's goals, in its order.
GOALS = {
    "floor": Goal("dbpool-server CPU per Query ÷ per call of its gRPC floor (C vs F)", "CF",
                  (64, 128), 1.5, True, "×", cpu_over("C", "F", "dbpool_server")),
    "switches": Goal("dbpool-server context switches per query (C)", "C", (64,), 1.0, True,
                     "", server_switches),
    "postgres": Goal("PostgreSQL CPU per query behind dbpool ÷ behind direct pgbench "
                     "-M prepared (C vs A)", "AC", (64,), 1.0, True, "×",
                     cpu_over("C", "A", "postgres")),
    "pgbouncer": Goal("Throughput C/B (PgBouncer)", "BC", (64, 128), 0.8, False, "", throughput_over("C", "B")),
    "go": Goal("Throughput C/D (the Go gateway)", "CD", (64,), 2.0, False, "",
               throughput_over("C", "D")),
    "node": Goal("Throughput C/E (the Node.js gateway)", "CE", (64,), 4.0, False, "",
                 throughput_over("C", "E")),
}
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"


def judge(goal, summary):
    """(verdict, the figure at each of the goal's callers). A point whose
    systems or concurrency were not in the run is not measured; one that
    ran without a figure (every run invalid) misses the target."""
    verdicts, figures = set(), []
    for n in goal.callers:
        s = summary.get(str(n), {})
        if not all(x in s for x in goal.systems):
            verdicts.add(NOT_MEASURED)
            figures.append(f"not measured at {n}")
            continue
        value, txt = goal.figure(s)
        ok = value is not None and (value <= goal.limit if goal.at_most else value >= goal.limit)
        verdicts.add(MET if ok else NOT_MET)
        figures.append(f"{txt} at {n}")
    return next(v for v in (NOT_MET, NOT_MEASURED, MET) if v in verdicts), figures


def goals_section(summary):
    """The goals table, and C/A, which the issue asks to be reported."""
    rows = []
    for goal in GOALS.values():
        verdict, figures = judge(goal, summary)
        target = (f"{'≤' if goal.at_most else '≥'} {goal.limit:g}{goal.unit} at "
                  f"{and_list(map(str, goal.callers))} callers")
        rows.append([goal.what, target, "; ".join(figures),
                     f"**{verdict.upper()}**" if verdict != NOT_MEASURED else verdict])
    out = table(["goal", "target", "measured (median [spread])", "verdict"],
                ["---", "---", "---", "---"], rows)
    ca = [f"{ratio_text(summary[str(n)]['C/A'])} at {n}"
          for n in (64, 128) if "C/A" in summary.get(str(n), {})]
    if ca:
        out += ["", f"Reported beside them, throughput C/A: {'; '.join(ca)}."]
    return out


def cores_used(runs, n, systems):
    """'A 1.9, B 1.8, C 1.9': median cores used by the processes involved."""
    parts = []
    for sysname in systems:
        mine = [r for r in runs if r["concurrency"] == n and r["system"] == sysname
                and r["valid"] and r.get("cpu")]
        parts.append(f"{sysname} {fixed(median(involved_sums(mine, sysname, 'cores_used')), 1)}")
    return ", ".join(parts)


def reading(summary, conc, runs, st, nproc):
    systems = present(runs)
    out = []
    if "A" in systems and "C" in systems:
        ca = [(n, summary[str(n)]["C/A"]["ratio_of_medians"]) for n in conc]
        out.append("Against PostgreSQL direct (prepared) dbpool reaches C/A = " +
                   ", ".join(f"{fixed(r)} at {n}" for n, r in ca) + ".")
    if all(x in systems for x in "ABC"):
        out += cost_reading(summary, conc, runs, nproc)
    if "C" in systems and ("D" in systems or "E" in systems):
        out += peers_reading(summary, conc, runs, systems, nproc)
    out.append(noise_note(runs, st))
    return "\n\n".join(out)


def cost_reading(summary, conc, runs, nproc):
    """Where the CPU of a query goes, direct, through PgBouncer and
    through dbpool, and how often dbpool-server switches."""
    out = []
    hi = max(conc)
    s = summary[str(hi)]

    def c(sysname, k):
        return s[sysname]["cpu_us_per_query_median"][k]
    if c("C", "total") and c("B", "total") and c("A", "total"):
        out.append(
            f"At {hi} clients a query costs, summed over every process involved, "
            f"{fixed(c('A', 'total'), 0)} µs of CPU direct (PostgreSQL {fixed(c('A', 'postgres'), 0)}), "
            f"{fixed(c('B', 'total'), 0)} µs through PgBouncer (PostgreSQL {fixed(c('B', 'postgres'), 0)}, "
            f"PgBouncer {fixed(c('B', 'pgbouncer'), 0)}, pgbench {fixed(c('B', 'client'), 0)}) and "
            f"{fixed(c('C', 'total'), 0)} µs through dbpool (PostgreSQL {fixed(c('C', 'postgres'), 0)}, "
            f"dbpool-server {fixed(c('C', 'dbpool_server'), 0)}, dbpool bench {fixed(c('C', 'client'), 0)}). "
            f"The processes of each system together kept {cores_used(runs, hi, 'ABC')} of the "
            f"{nproc} cores busy, so throughput is bounded by cores ÷ total CPU per "
            f"query, and the load generator's own cost counts too: dbpool bench (gRPC "
            f"client) needs "
            f"{fixed(ratio(c('C', 'client'), c('B', 'client')))}× the CPU per "
            f"query of pgbench.")
    cs_rows, cs_high = [], False
    for n in conc:
        e = summary[str(n)]
        d = e["C"]["ctx_switches_per_query_median"]["dbpool_server"]
        b = e["B"]["ctx_switches_per_query_median"]["pgbouncer"]
        if d is not None and b is not None:
            cs_rows.append(f"{fixed(d, 1)} vs {fixed(b, 1)} at {n}")
            cs_high |= d > 2 * b
    if cs_rows:
        txt = "Context switches per query, dbpool-server vs PgBouncer: " + "; ".join(cs_rows) + "."
        if cs_high:
            txt += (" dbpool-server switches far more often: a query crosses threads in "
                    "it (a gRPC thread takes the call and sends the statement, an event "
                    "loop wakes for the reply and answers, gRPC's threads wake to write "
                    "it), where PgBouncer forwards bytes from one single-threaded event "
                    "loop.")
        out.append(txt)
    return out


def peers_reading(summary, conc, runs, systems, nproc):
    """The ratios against the peer gateways at every concurrency and what
    a query costs each gateway."""
    peers = [p for p in "DE" if p in systems]
    out = ["Against the peers at every concurrency: " + "; ".join(
        f"C/{p} = " + ", ".join(f"{fixed(summary[str(c)][f'C/{p}']['ratio_of_medians'])} at {c}"
                                for c in conc) for p in peers) + "."]
    hi = max(conc)
    s = summary[str(hi)]
    costs = []
    for sysname in ("C", *peers):
        g = gateway(sysname)
        e = s[sysname]
        costs.append(f"{PROCESSES[g]} {fixed(e['cpu_us_per_query_median'][g], 0)} µs and "
                     f"{fixed(e['ctx_switches_per_query_median'][g], 1)} context switches "
                     f"(all processes {fixed(e['cpu_us_per_query_median']['total'], 0)} µs)")
    out.append(f"At {hi} clients a query costs the gateway process, with the same dbpool "
               f"bench in front: {'; '.join(costs)}. The processes of each system together "
               f"kept {cores_used(runs, hi, ['C', *peers])} of the {nproc} cores busy.")
    return out


def noise_note(runs, st):
    measured = [r["cpu"] for r in runs if r.get("cpu")]
    others = [x["others_pct"] for x in measured if x.get("others_pct") is not None]
    bad = [r for r in runs if not r["valid"]]
    errs = sum(r.get("errors", 0) for r in runs)
    note = (f"Noise: other processes on the machine took a median {fixed(median(others), 0)} % "
            f"(max {fixed(max(others) if others else None, 0)} %) of the cores during the "
            f"measured windows (interrupt/softirq time median "
            f"{fixed(median([x.get('irq_softirq_pct') for x in measured]), 0)} %, "
            f"hypervisor steal median {fixed(median([x.get('steal_pct') for x in measured]), 0)} %, "
            f"not counted as others). ")
    note += (f"{len(bad)} run(s) were invalid (client failed or ended early) and are left "
             "out. " if bad else "All runs completed. ")
    note += f"{errs} failed queries in total. "
    unquiet = [r for r in runs if r.get("before") and not r["before"]["quiet"]]
    if unquiet:
        note += (f"{len(unquiet)} of {len(runs)} runs started without a quiet second "
                 f"(other processes above {st['quiet_pct']:g} % for {st['quiet_max_s']:g} s). ")
    note += ("The perf baseline (`perf-baseline.md`) found absolute throughput on this "
             "machine good to about ±30 % and interleaved ratios to about ±15 %; read "
             "differences smaller than that as noise.")
    if st["repeats"] < 3:
        note += f" Only {st['repeats']} repetition(s): spreads are not meaningful."
    return note
