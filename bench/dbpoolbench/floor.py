"""bench/floor: what one gRPC call costs dbpool-server before any database
work. The same closed loop of `dbpool bench` against one Release server,
interleaved and repeated: Q (Query, the point select of bench/compare) and
S (GetPoolStats, answered from memory), with the server's CPU and context
switches per call."""
import glob
import json
import os
import subprocess
import sys
import time

from . import proc, stack, text
from .settings import Env
from .stats import median

WARMUP_S = 2
RPCS = {"Q": stack.QUERY_LOAD, "S": stack.FLOOR_LOAD}


def server_sample(pid):
    """(CPU ticks, context switches, threads) of the server: the first two
    of all its threads, the last per thread. CPU comes from the process,
    which also counts threads that have ended."""
    threads = proc.threads(pid)
    return proc.cpu_ticks(pid), sum(t[2] for t in threads.values()), threads


def measure(cli, target, pid, rpc, concurrency, repeat, seconds):
    argv = stack.bench_argv(cli, target, RPCS[rpc], concurrency, seconds, WARMUP_S)
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(WARMUP_S)
        t1, s1, th1 = server_sample(pid)
        time.sleep(seconds)
        t2, s2, th2 = server_sample(pid)
        report = text.last_json_line(p.communicate(timeout=seconds + 60)[0])
    finally:
        stack.stop_process(p)
    if report is None:
        raise stack.HarnessError(f"dbpool bench gave no report: {' '.join(argv)}")
    calls = max(report["requests"] - report["errors"], 1)
    return {"rpc": rpc, "concurrency": concurrency, "repeat": repeat, "rps": report["rps"],
            "errors": report["errors"],
            "server_cpu_us_per_call": (t2 - t1) * proc.US_PER_TICK / calls,
            "server_switches_per_call": (s2 - s1) / calls,
            "threads": proc.per_thread_group(th1, th2, calls)}


def summarize(runs, levels):
    summary = {}
    for c in levels:
        row = {}
        for rpc in "QS":
            mine = [r for r in runs if r["rpc"] == rpc and r["concurrency"] == c]
            row[rpc] = {k: median([r[k] for r in mine]) for k in
                        ("rps", "server_cpu_us_per_call", "server_switches_per_call")}
            # Runs from before the per-thread figures have none.
            if any("threads" in r for r in mine):
                groups = sorted({g for r in mine for g in r.get("threads", {})})
                zero = {"cpu_us_per_call": 0.0, "switches_per_call": 0.0}
                row[rpc]["threads"] = {
                    g: {k: median([r.get("threads", {}).get(g, zero)[k] for r in mine])
                        for k in zero}
                    for g in groups}
        row["S_over_Q_cpu"] = row["S"]["server_cpu_us_per_call"] / row["Q"]["server_cpu_us_per_call"]
        summary[str(c)] = row
    return summary


def render(doc, compare_path=None, compare_doc=None):
    """The Markdown report; beside PgBouncer's figures when a compare
    result is given."""
    lines = [
        "# The gRPC floor: what a call costs dbpool-server before any database work",
        "",
        f"Written by `bench/floor` (dbpool git {doc['git']}, Release build, pool 20; "
        "client, server and PostgreSQL on the same two cores). One `dbpool bench` closed loop "
        "against one server, interleaved: **Query**, the point select of `bench/compare`, and "
        "**GetPoolStats**, which the server answers from memory (no database, no executor, no "
        "pool wait). Server CPU from `/proc/PID/stat` (utime + stime) and context switches "
        f"from every thread's `/proc/PID/task/*/status`; medians of {doc['repeats']} runs of "
        f"{doc['duration_s']:.0f} s after {WARMUP_S} s of warm-up.",
        "",
        "| callers | Query /s | GetPoolStats /s | server CPU µs per Query | per GetPoolStats | "
        "GetPoolStats ÷ Query | switches per Query | per GetPoolStats |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c, row in doc["summary"].items():
        q, s = row["Q"], row["S"]
        lines.append(f"| {c} | {q['rps']:,.0f} | {s['rps']:,.0f} | "
                     f"{q['server_cpu_us_per_call']:.0f} | {s['server_cpu_us_per_call']:.0f} | "
                     f"{row['S_over_Q_cpu']:.0%} | {q['server_switches_per_call']:.1f} | "
                     f"{s['server_switches_per_call']:.1f} |")
    lines += thread_table(doc["summary"])
    bouncer = {}
    if compare_doc:
        for c, e in compare_doc["summary"].items():
            if "B" in e:  # BENCH_SYSTEMS may have left PgBouncer out
                bouncer[c] = (e["B"]["throughput_median"],
                              e["B"]["cpu_us_per_query_median"]["pgbouncer"])
    if bouncer:
        lines += ["", f"Beside PgBouncer in the latest `bench/compare` run "
                  f"(`{compare_path}`, B: pgbench through PgBouncer on the same machine):", "",
                  "| callers | PgBouncer /s | PgBouncer CPU µs per query | 1.5 × that | "
                  "dbpool GetPoolStats /s | dbpool-server CPU µs per GetPoolStats |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for c, row in doc["summary"].items():
            if c in bouncer and bouncer[c][1]:
                tput, cpu = bouncer[c]
                lines.append(f"| {c} | {tput:,.0f} | {cpu:.0f} | {1.5 * cpu:.0f} | "
                             f"{row['S']['rps']:,.0f} | {row['S']['server_cpu_us_per_call']:.0f} |")
        lines += ["", "A GetPoolStats call is a lower bound for a Query call: it is the same "
                  "gRPC server, HTTP/2 stream, protobuf messages and client, with the database "
                  "work left out. Where it already costs the server more than 1.5 × PgBouncer's "
                  "CPU per query, or runs slower than PgBouncer's queries, no change beneath "
                  "gRPC can bring Query to those figures on this machine."]
    return "\n".join(lines) + "\n"


# What the groups of threads in dbpool-server are, for the report.
THREAD_ROLES = {
    "nexting_thread": "gRPC's callback threads: run handlers and completions",
    "default-executo": "gRPC's executor: work gRPC hands off when a call is "
                       "finished from a thread of its own",
    "dbpool-io": "the engine's event loops: statements and replies",
    "dbpool-connect": "opens connections",
    "dbpool-server": "main and unnamed threads",
}


def thread_table(summary):
    """Where the server's time goes, by group of threads; empty for runs
    without per-thread figures."""
    if not all("threads" in row[rpc] for row in summary.values() for rpc in "QS"):
        return []
    lines = ["", "## Where a call's server time goes, by thread", "",
             "CPU µs and context switches per call of each group of the server's threads "
             "(numbered threads of one pool count together), medians over the runs; groups "
             "below 0.5 µs and 0.01 switches per call in both RPCs are left out.", "",
             "| callers | threads | what they do | Query µs | Query switches | "
             "GetPoolStats µs | GetPoolStats switches |",
             "|---:|---|---|---:|---:|---:|---:|"]
    zero = {"cpu_us_per_call": 0.0, "switches_per_call": 0.0}
    for c, row in summary.items():
        groups = set(row["Q"]["threads"]) | set(row["S"]["threads"])
        shown = []
        for g in groups:
            q, s = row["Q"]["threads"].get(g, zero), row["S"]["threads"].get(g, zero)
            if max(q["cpu_us_per_call"], s["cpu_us_per_call"]) >= 0.5 or \
                    max(q["switches_per_call"], s["switches_per_call"]) >= 0.01:
                shown.append((q["cpu_us_per_call"], g, q, s))
        for _, g, q, s in sorted(shown, key=lambda x: (-x[0], x[1])):
            lines.append(f"| {c} | `{g}` | {THREAD_ROLES.get(g, '')} | "
                         f"{q['cpu_us_per_call']:.1f} | {q['switches_per_call']:.2f} | "
                         f"{s['cpu_us_per_call']:.1f} | {s['switches_per_call']:.2f} |")
    return lines


def latest_compare():
    """(path, document) of the newest full bench/compare result, or (None,
    None)."""
    files = sorted(f for f in glob.glob("bench/results/compare-*.json")
                   if not f.endswith("-quick.json"))
    if not files:
        return None, None
    with open(files[-1]) as f:
        return files[-1], json.load(f)


def main(env=None):
    env = Env(env)
    levels = env.whole_list("FLOOR_CONCURRENCY", "64 128")
    repeats = env.whole("FLOOR_REPEATS", 3, minimum=1)
    seconds = env.seconds("FLOOR_DURATION", "10s")
    report_md = env.text("FLOOR_REPORT", "docs/BENCHMARKS-floor.md")
    server_bin, cli = stack.binaries(env.text("FLOOR_BUILD_DIR", "build-release"))
    with stack.Stack("floor") as s:
        server = s.point_select_server(server_bin, ["--log-level=warn"])
        runs = []
        for rep in range(1, repeats + 1):
            for c in levels:
                for rpc in "QS":
                    run = measure(cli, server.address, server.proc.pid, rpc, c, rep, seconds)
                    runs.append(run)
                    print(f"{rpc} c={c} rep {rep}: {run['rps']:8.0f}/s  server "
                          f"{run['server_cpu_us_per_call']:5.0f} us/call  "
                          f"{run['server_switches_per_call']:5.1f} switches/call",
                          file=sys.stderr, flush=True)
                    time.sleep(1)
    doc = {"runs": runs, "summary": summarize(runs, levels), "duration_s": seconds,
           "repeats": repeats, "cpus": os.cpu_count(), "git": stack.git_head()}
    results_json = f"bench/results/floor-{text.stamp()}.json"
    text.write_json(results_json, doc)
    compare_path, compare_doc = latest_compare()
    md = render(doc, compare_path, compare_doc)
    text.write_text(report_md, md)
    print(md)
    print(f"\n{results_json}, {report_md}", file=sys.stderr)
    return 0
