"""bench/pipeline-depth: the point select of bench/compare through dbpool
at several DB_PIPELINE_DEPTH settings side by side, for issue 9's "the
default comes from measurement and is documented".

One PostgreSQL (compare's settings and pgbench database) and one Release
dbpool-server per depth in front of it (pool 20, `--db-pipeline-depth=D`),
all started at once; the runs load one server at a time, interleaved
(every depth in each repetition, the order rotated per repetition, as
compare.run_order does). A run is compare.measure's: throughput,
latency, CPU per query of dbpool-server, PostgreSQL and the load
generator. Around it the server's /metrics is read, and the
db_pipeline_depth histogram's sum and count deltas give the mean depth at
which its statements were sent. The report gives the medians per (depth,
callers) and recommends a default."""
import math
import os
import re
import sys
import time

from . import compare, proc, stack, text
from .compare_report import and_list, involved_sums, run_medians
from .settings import Env
from .soak import LABELS, fetch
from .stats import median, ratio
from .text import fixed, thousands

HISTOGRAM = "db_pipeline_depth"
# The recommendation: the best geometric mean over the concurrencies of the
# throughput ratio to the lowest depth, where depths within this share of
# the best count as tied, and the tie goes to the least PostgreSQL CPU per
# query, then the lower depth.
TIE_SHARE = 0.03
# When fewer than this share of the statements shared a connection at
# every depth above 1, pipelining hardly engaged: the servers ran nearly
# alike, and their differences are run-to-run noise.
ENGAGED_SHARE = 0.1
# The engine's sharing rule, as the report describes it: kShareBelow in
# server/engine/loop_engine.cc, kOutlier in statement_profiles.cc.
SHARE_BELOW_MS = 2
OUTLIER_TIMES = 10
# The processes measured in every run: those of compare's system C.
PROCESSES = {"dbpool_server": "dbpool-server", "postgres": "PostgreSQL", "client": "client"}
CONFIG_SOURCE = "server/config/config.cc"


def settings_from(env):
    quick = env.flag("DEPTH_QUICK")
    st = {
        "quick": quick,
        "depths": sorted(set(env.whole_list("DEPTH_LIST", "1 2 4 8 16", minimum=1,
                                            maximum=64))),
        "concurrency": env.whole_list("DEPTH_CONCURRENCY", "64" if quick else "64 128"),
        "repeats": env.whole("DEPTH_REPEATS", 1 if quick else 3, minimum=1),
        "duration_s": env.seconds("DEPTH_DURATION", 3 if quick else 10),
        "warmup_s": env.seconds("DEPTH_WARMUP", 2),
        "pause_s": env.number("DEPTH_PAUSE", 1),
        "quiet_pct": env.number("DEPTH_QUIET_PCT", 10),
        "quiet_max_s": env.number("DEPTH_QUIET_MAX", 10),
        "build_dir": env.text("DEPTH_BUILD_DIR", "build-release"),
        "pool_size": stack.POOL_SIZE,
        "sql": stack.POINT_SELECT,
    }
    # Every server keeps its whole pool open, plus room for psql.
    st["postgres_max_connections"] = max(200, len(st["depths"]) * stack.POOL_SIZE + 30)
    report = env.text("DEPTH_REPORT", "bench/results/BENCHMARKS-pipeline-depth-quick.md"
                      if quick else "docs/BENCHMARKS-pipeline-depth.md")
    return st, report


def server_args(depth):
    """dbpool-server's flags for one depth: compare's C, pipelined to `depth`."""
    return [*compare.SERVER_ARGS, f"--db-pipeline-depth={depth}"]


# ---------------------------------------------------------------------------
# The depth histogram


def parse_histogram(exposition, name=HISTOGRAM):
    """{"buckets": {le: count}, "sum", "count"} of a histogram in Prometheus
    text (samples of every label set added up); None when it is not
    there."""
    out = {"buckets": {}, "sum": 0.0, "count": 0}
    seen = False
    for line in exposition.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        sample, _, labels = head.partition("{")
        if sample not in (f"{name}_bucket", f"{name}_sum", f"{name}_count"):
            continue
        seen = True
        v = float(value)
        if sample.endswith("_bucket"):
            le = dict(LABELS.findall(labels)).get("le", "?")
            out["buckets"][le] = out["buckets"].get(le, 0) + int(v)
        elif sample.endswith("_sum"):
            out["sum"] += v
        else:
            out["count"] += int(v)
    return out if seen else None


def depth_delta(before, after):
    """What the histogram says of the statements sent between two scrapes:
    how many, their mean depth, and the share that ran alone (le="1");
    None without both scrapes or with no statement."""
    if not before or not after:
        return None
    n = after["count"] - before["count"]
    if n <= 0:
        return None
    alone = after["buckets"].get("1", 0) - before["buckets"].get("1", 0)
    return {"statements": n, "mean_depth": (after["sum"] - before["sum"]) / n,
            "alone_share": alone / n}


def scrape(server):
    """The server's depth histogram now; None when /metrics did not answer
    or lacks it."""
    try:
        return parse_histogram(fetch(server.metrics_url))
    except (OSError, ValueError):
        return None


def server_default_depth(source=None):
    """DB_PIPELINE_DEPTH's default in the server's settings table, or None."""
    if source is None:
        try:
            source = (stack.REPO_ROOT / CONFIG_SOURCE).read_text()
        except OSError:
            return None
    m = re.search(r'\{"DB_PIPELINE_DEPTH",\s*"(\d+)"', source)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# Summary and recommendation


def ratios_per_repeat(runs, n, d, base):
    """Depth d's throughput over depth base's at n callers, per repetition
    (runs seconds apart), for the repetitions where both are valid."""
    out = []
    for rep in sorted({r["repeat"] for r in runs}):
        x, y = ([r["throughput"] for r in runs if r["concurrency"] == n and r["depth"] == k
                 and r["repeat"] == rep and r["valid"]] for k in (d, base))
        if x and y and y[0] > 0:
            out.append(x[0] / y[0])
    return out


def summarize(runs, concurrency, depths):
    """Medians over the valid runs of each (callers, depth):
    summary[str(callers)][str(depth)]; throughput ratios to the lowest
    depth, of the medians and per repetition."""
    summary = {}
    for n in concurrency:
        row = {}
        for d in depths:
            rs = [r for r in runs if r["concurrency"] == n and r["depth"] == d]
            good = [r for r in rs if r["valid"]]
            pipe = [r.get("pipeline") or {} for r in good]
            row[str(d)] = {
                **run_medians(rs),
                "cpu_us_per_query_median": {
                    **{k: median([r.get("cpu", {}).get("us_per_query", {}).get(k)
                                  for r in good]) for k in PROCESSES},
                    "total": median(involved_sums(good, "C", "us_per_query"))},
                "mean_depth_median": median([p.get("mean_depth") for p in pipe]),
                "alone_share_median": median([p.get("alone_share") for p in pipe]),
            }
        base = row[str(depths[0])]["throughput_median"]
        for d in depths:
            e = row[str(d)]
            e["vs_lowest_depth"] = ratio(e["throughput_median"], base)
            e["vs_lowest_depth_per_repeat"] = ratios_per_repeat(runs, n, d, depths[0])
        summary[str(n)] = row
    return summary


def geometric_mean(values):
    """The geometric mean of positive values; None when there are none."""
    xs = [x for x in values if x is not None and x > 0]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else None


def depth_ratio(entry):
    """A depth's throughput over the lowest depth's at one concurrency: the
    median of the per-repetition ratios, else the ratio of the medians;
    None without valid runs."""
    if not entry["throughput_median"]:
        return None
    per = median(entry.get("vs_lowest_depth_per_repeat") or [])
    return per if per else entry.get("vs_lowest_depth")


def recommend(summary):
    """The depth whose throughput ratio to the lowest depth (depth_ratio())
    has the best geometric mean over the concurrencies measured; depths
    within TIE_SHARE of it are tied, and the tie goes to the least
    PostgreSQL CPU per query (geometric mean over the concurrencies of the
    medians), then to the lower depth. Concurrencies at which the lowest
    depth has no valid run are left out (nothing to compare with), as is a
    depth without a ratio at every other one. None when no concurrency is
    left."""
    depths = sorted({int(d) for row in summary.values() for d in row})
    if not depths:
        return None
    ns = sorted(int(n) for n, row in summary.items()
                if row[str(depths[0])]["throughput_median"])
    if not ns:
        return None
    per_n = {d: [depth_ratio(summary[str(n)][str(d)]) for n in ns] for d in depths}
    gm = {d: geometric_mean(rs) for d, rs in per_n.items() if all(rs)}
    best = max(gm, key=lambda d: (gm[d], -d))
    tied = sorted(d for d, g in gm.items() if g >= (1 - TIE_SHARE) * gm[best])

    def pg(d):
        vs = [summary[str(n)][str(d)]["cpu_us_per_query_median"]["postgres"] for n in ns]
        return None if None in vs else geometric_mean(vs)
    pick = min(tied, key=lambda d: (math.inf if pg(d) is None else pg(d), d))
    # Whether pipelining engaged: every concurrency, every depth above 1.
    above = [e for row in summary.values() for d, e in row.items() if int(d) > 1]
    shared = [1 - e["alone_share_median"] for e in above
              if e["alone_share_median"] is not None]
    means = [e["mean_depth_median"] for e in above if e["mean_depth_median"] is not None]
    return {"concurrency": ns,
            "left_out": sorted(int(n) for n in summary if int(n) not in ns),
            "lowest_depth": depths[0], "depth": pick, "ratio": gm[pick],
            "postgres_us_per_query": pg(pick), "best_depth": best, "best_ratio": gm[best],
            "tied": tied, "ratios": {str(d): g for d, g in sorted(gm.items())},
            "max_shared_share": max(shared, default=None),
            "max_mean_depth": max(means, default=None)}


def engaged(rec):
    """False when depths above 1 were measured and at none of them did
    ENGAGED_SHARE of the statements share a connection; True otherwise."""
    m = rec.get("max_shared_share")
    return m is None or m >= ENGAGED_SHARE


# ---------------------------------------------------------------------------
# The run


def run_one(ctx, st, rep, n, depth, seq):
    """One measured run of the server of `depth` at n callers, its depth
    histogram read before and after."""
    server = ctx["servers"][depth]
    warmup, duration = st["warmup_s"], st["duration_s"]
    run = {"depth": depth, "concurrency": n, "repeat": rep, "seq": seq}
    argv = stack.bench_argv(ctx["cli"], server.address, stack.QUERY_LOAD, n, duration, warmup)
    h1 = scrape(server)
    rec = compare.measure(run, argv, warmup, duration,
                          {"postmaster": ctx["postmaster"], "dbpool_server": server.proc.pid})
    rec["pipeline"] = depth_delta(h1, scrape(server))
    return rec


def progress_line(rec):
    lm = rec.get("latency_ms") or {}
    cpu = rec.get("cpu", {}).get("us_per_query", {})
    pipe = rec.get("pipeline") or {}
    us = " ".join(f"{k} {fixed(cpu.get(k), 0, '-')}" for k in PROCESSES)
    return (f"depth {rec['depth']:<2} c={rec['concurrency']:<3} rep {rec['repeat']}: "
            f"{rec['throughput']:9.0f}/s  p50 {lm.get('p50') or 0:.3f} ms  "
            f"p99 {lm.get('p99') or 0:.3f} ms  errors {rec['errors']}  CPU us/q "
            f"{us}  "
            f"mean depth {fixed(pipe.get('mean_depth'), 2, '-')}  "
            f"others {rec.get('cpu', {}).get('others_pct', 0) or 0:.0f}%"
            f"{'' if rec['valid'] else '  INVALID'}")


def start_servers(s, st, server_bin, cli, cluster, log):
    """One dbpool-server per depth in front of the cluster's pgbench
    database, each checked with one query and for its depth histogram."""
    url = f"postgresql://postgres@127.0.0.1:{cluster.port}/pgbench"
    servers = {}
    for d in st["depths"]:
        server = s.server(server_bin, url, server_args(d))
        compare.probe(cli, server.address, st["sql"])
        if scrape(server) is None:
            raise stack.HarnessError(f"dbpool-server (depth {d}) exports no {HISTOGRAM} "
                                     f"on {server.metrics_url}")
        log(f"dbpool-server depth {d} on {server.address}, metrics {server.metrics_address} "
            f"(pid {server.proc.pid})")
        servers[d] = server
    return servers


def measure_all(st, server_bin, cli, meta, keep_tmp):
    log = stack.Logger("pipeline-depth")
    with stack.Stack("pipeline-depth", keep_tmp=keep_tmp) as s:
        cluster, st["database_size"] = compare.point_select_database(
            s, st["postgres_max_connections"], log)
        servers = start_servers(s, st, server_bin, cli, cluster, log)
        ctx = {"cli": cli, "postmaster": cluster.postmaster_pid, "servers": servers}
        # settle counts all of ours, the idle servers too, as not others'.
        pids = {"postmaster": cluster.postmaster_pid,
                **{f"dbpool_server_{d}": sv.proc.pid for d, sv in servers.items()}}
        meta["versions"] = {
            "postgres": stack.command_version([os.path.join(stack.pg_bindir(), "postgres"),
                                               "--version"]),
            "dbpool": stack.dbpool_version()}
        order = compare.run_order(st["repeats"], st["concurrency"], st["depths"])
        log(f"{len(order)} runs: depths {' '.join(map(str, st['depths']))}, concurrency "
            f"{' '.join(map(str, st['concurrency']))}, {st['repeats']} repetition(s), "
            f"{st['warmup_s']}s warm-up + {st['duration_s']}s each")
        runs = []
        for rep, n, d in order:
            before = compare.settle(pids, st["quiet_pct"], st["quiet_max_s"])
            time.sleep(st["pause_s"])
            rec = run_one(ctx, st, rep, n, d, seq=len(runs) + 1)
            rec["before"] = before
            runs.append(rec)
            print(progress_line(rec), file=sys.stderr, flush=True)
            for name, pid in pids.items():
                if proc.read_stat(pid) is None:
                    raise stack.HarnessError(f"{name} died during depth {d} c={n} rep {rep}")
    return runs


def main(env=None):
    env = Env(env)
    st, report_md = settings_from(env)
    log = stack.Logger("pipeline-depth")
    server_bin, cli = stack.binaries(st["build_dir"])
    results_json = (f"bench/results/pipeline-depth-{text.stamp()}"
                    f"{'-quick' if st['quick'] else ''}.json")
    meta = {"started_utc": text.utc_text(), "loadavg_start": proc.load_average(),
            "server_default_depth": server_default_depth()}
    runs = measure_all(st, server_bin, cli, meta, env.flag("DEPTH_KEEP_TMP"))
    model, mem = proc.machine_description()
    meta["settings"] = st
    meta["machine"] = {"nproc": os.cpu_count(), "cpu_model": model, "memory": mem,
                       "kernel": os.uname().release}
    meta["finished_utc"] = text.utc_text()
    summary = summarize(runs, st["concurrency"], st["depths"])
    doc = {"meta": meta, "summary": summary, "recommendation": recommend(summary),
           "runs": runs}
    text.write_json(results_json, doc)
    text.write_text(report_md, render(doc, results_json, report_md))
    log(f"wrote {report_md} and {results_json}")
    return 0


# ---------------------------------------------------------------------------
# The report


def recommendation_text(rec, default, default_then=None):
    """The report's recommendation paragraph: `default` is the server's
    default now, `default_then` the one when the run was made."""
    if rec is None:
        return "No recommendation: the lowest depth has no valid run to compare with."
    d, base = rec["depth"], rec["lowest_depth"]
    callers = and_list([str(n) for n in rec["concurrency"]]) + " callers"
    over = (f"Over all the concurrencies measured ({callers})" if not rec.get("left_out") else
            f"Over the concurrencies at which depth {base} has valid runs ({callers})")
    measure = (f"geometric mean of the throughput ratio to depth {base} (at each "
               f"concurrency the median of the per-repetition ratios)")
    head = f"**Recommended default: `DB_PIPELINE_DEPTH={d}`.**"
    ratios = {int(k): v for k, v in rec["ratios"].items()}
    if len(rec["tied"]) == 1:
        runners = sorted((k for k in ratios if k != d), key=lambda k: (-ratios[k], k))
        nxt = (f" (next: depth {runners[0]}, {ratios[runners[0]]:.2f})" if runners else "")
        why = (f"{over}, depth {d} has the best {measure}: {rec['ratio']:.2f}; no other "
               f"depth came within {TIE_SHARE:.0%} of it{nxt}.")
    else:
        each = and_list([f"{k} ({ratios[k]:.2f})" for k in rec["tied"]])
        why = (f"{over}, depths {each} are within {TIE_SHARE:.0%} of the best {measure}, "
               f"which counts as a tie; of those, depth {d} costs PostgreSQL the least CPU "
               f"per query ({fixed(rec['postgres_us_per_query'], 1)} µs, geometric mean of "
               f"the medians; equal figures go to the lower depth).")
    now = f" The server's default (`{CONFIG_SOURCE}`) is {default}"
    if default_then is not None and default_then != default:
        now += f" (it was {default_then} when this run was made)"
    if default is None:
        tail = ""
    elif not engaged(rec):
        tail = f"{now}: this run is no ground to change it, nor evidence for it."
    elif default == d:
        tail = f"{now}: this run supports it."
    else:
        tail = f"{now}: this run suggests {d} instead."
    if engaged(rec):
        return f"{head} {why}{tail}"
    return (f"{head} {why}{tail}\n\n**But pipelining hardly engaged**: at every concurrency "
            f"and bound, at least {1 - rec['max_shared_share']:.0%} of the statements ran "
            f"alone on their connection (mean depth at most {rec['max_mean_depth']:.2f}), so "
            "the servers ran nearly alike, the differences between the depths are run-to-run "
            "noise, and this pick is the rule's, not evidence for the depth. The engine shares "
            "a statement only while the moving average (1/8 per run) of its time in the "
            f"backend stays under {SHARE_BELOW_MS} ms (`kShareBelow` in "
            "`server/engine/loop_engine.cc`, `server/engine/statement_profiles.h`); one run of "
            f"{OUTLIER_TIMES * SHARE_BELOW_MS} ms or more stops sharing at once.")


def render(doc, json_path, md_path):
    """The Markdown report of a pipeline-depth result document."""
    meta, summary = doc["meta"], doc["summary"]
    st, v, m = meta["settings"], meta["versions"], meta["machine"]
    depths, base = st["depths"], st["depths"][0]
    pool = st["pool_size"]
    L = []
    w = L.append
    w(f"# Pipeline depth: dbpool's point select at DB_PIPELINE_DEPTH "
      f"{and_list([str(d) for d in depths])}\n")
    link = os.path.relpath(json_path, os.path.dirname(os.path.abspath(md_path)) or ".")
    w(f"Generated by `bench/pipeline-depth` (run {meta['started_utc']} – "
      f"{meta['finished_utc']}); every number below is computed from the raw results in "
      f"[`{json_path}`]({link}) — do not edit by hand, re-run the script.\n")
    if st["quick"]:
        w("> **Quick mode (`DEPTH_QUICK=1`)**: one short repetition per point, a smoke test "
          "of the script, not a measurement to quote.\n")
    w("## Recommendation\n")
    # By the rule as it stands, from the summary (the document stores the
    # recommendation as computed when it was written, perhaps by an older
    # rule).
    # The default compared with is the server's now, when its source can be
    # read; the run records the one it measured under.
    then = meta.get("server_default_depth")
    now = server_default_depth()
    w(recommendation_text(recommend(summary), then if now is None else now, then) + "\n")
    w("## What the depth does\n")
    w(f"`DB_PIPELINE_DEPTH` bounds the statements of different callers in flight on one "
      f"PostgreSQL connection: a short statement (a query or DML seen before, averaging "
      f"under {SHARE_BELOW_MS} ms in the backend) may be sent on a busy connection instead "
      f"of waiting for a free one, so callers share round trips. Depth 1 turns this off: "
      f"each of the {pool} connections runs one statement at a time, and callers beyond "
      f"{pool} wait for a connection. With N callers in a closed loop at most N / {pool} "
      + "statements are in flight per connection on average ("
      + ", ".join(f"{n / pool:g} at {n}" for n in st["concurrency"])
      + " callers), so a larger bound changes only how unevenly they may pile up. "
      "*Mean depth* is what the server's `db_pipeline_depth` histogram counted: the "
      "statements on the connection when a statement was sent, itself included, averaged "
      "over the run's statements (the difference of its `_sum` and `_count` read before and "
      "after the run, warm-up included); *ran alone* is the share sent with no other "
      "statement on their connection (`le=\"1\"`).\n")
    for n in st["concurrency"]:
        row = summary[str(n)]
        w(f"## {n} callers\n")
        w(f"| depth | OK calls/s (median) | min – max | vs depth {base} [per repetition] | "
          "p50 ms | p99 ms | "
          "dbpool-server µs/q | PostgreSQL µs/q | client µs/q | total µs/q | mean depth | "
          "ran alone | errors | valid runs |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for d in depths:
            e = row[str(d)]
            cpu = e["cpu_us_per_query_median"]
            per = e["vs_lowest_depth_per_repeat"]
            spread = f" [{min(per):.2f}–{max(per):.2f}]" if per else ""
            alone = e["alone_share_median"]
            w(f"| {d} | {thousands(e['throughput_median'])} | "
              f"{thousands(e['throughput_min'])} – {thousands(e['throughput_max'])} | "
              f"{fixed(e['vs_lowest_depth'], 2)}{spread} | {fixed(e['p50_ms_median'], 2)} | "
              f"{fixed(e['p99_ms_median'], 2)} | {fixed(cpu['dbpool_server'], 1)} | "
              f"{fixed(cpu['postgres'], 1)} | {fixed(cpu['client'], 1)} | "
              f"{fixed(cpu['total'], 1)} | {fixed(e['mean_depth_median'], 2)} | "
              f"{text.DASH if alone is None else f'{alone:.0%}'} | {e['errors']:,} | "
              f"{e['valid_runs']} of {e['runs']} |")
        w("")
    w(f"*vs depth {base}*: the ratio of the median throughputs and, in brackets, the range of "
      f"the ratios within each repetition (runs seconds apart, so slower and faster spells of "
      f"a shared machine cancel out); where that range straddles 1, the difference is within "
      f"run-to-run noise.\n")
    w("## Method\n")
    w(f"The point select of `bench/compare`, `{st['sql']}`, with `aid` drawn uniformly from "
      f"1..1,000,000 (pgbench scale 10, database {st['database_size']}, compare's PostgreSQL "
      f"settings), issued by `dbpool bench` as a closed loop of N callers. One PostgreSQL "
      f"and, in front of it, one Release dbpool-server per depth, all started at the "
      f"beginning (pool {pool}, all connections open: `{' '.join(server_args('D'))}`); a "
      f"run loads one server while the others stay idle. {st['repeats']} repetition(s); "
      f"each runs, for each N in turn, every depth back to back, the order rotated by one "
      f"per repetition, so that the depths compared are runs seconds apart. Each run: "
      f"{st['warmup_s']} s of warm-up, then {st['duration_s']} s measured. Before each run "
      f"the script waits for a second in which other processes use at most "
      f"{st['quiet_pct']:g} % of the machine (at most {st['quiet_max_s']:g} s), then "
      f"pauses {st['pause_s']:g} s.\n")
    w("CPU per query is the process's user + system time (`/proc/PID/stat`) over the "
      "measured window less a quarter second at each end, divided by the OK calls in it: "
      "dbpool-server (all threads), PostgreSQL (the postmaster and all its children, the "
      "idle servers' connections included) and the load generator; *total* is their sum. "
      "Figures are medians over the valid runs (min – max for throughput). Load "
      "generator, dbpool-server and PostgreSQL share the same two cores, so throughput is "
      "what the three together reach, and the CPU per query is what decides it.\n")
    w("## Machine\n")
    w("| | |\n|---|---|")
    w(f"| `nproc` | {m['nproc']} |")
    w(f"| CPU (`/proc/cpuinfo` model name) | {m['cpu_model']} |")
    w(f"| memory | {m['memory']} |")
    w(f"| kernel | {m['kernel']} |")
    w(f"| PostgreSQL | {v['postgres']} |")
    w(f"| dbpool | {v['dbpool']} |")
    w(f"| date (UTC) | {meta['started_utc']} – {meta['finished_utc']} |")
    w(f"| load average before the runs | {meta['loadavg_start']} |")
    return "\n".join(L) + "\n"
