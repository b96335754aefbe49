"""bench/compare: the same point select three ways, interleaved.

  A  pgbench -M prepared directly against PostgreSQL
  B  pgbench -M simple   through PgBouncer 1.18 (transaction pooling, pool 20)
  C  dbpool bench        through dbpool-server (Release build, pool 20)

The orchestration (main), one measured run (measure), the wait for a
quiet machine between runs (settle), and the report (summarize, render).
"""
import os
import shutil
import subprocess
import sys
import threading
import time

from . import pgbench, proc, sampling, stack, text
from .settings import Env
from .stats import fmean_or_none, median, percentile, ratio
from .text import fixed, thousands

PACKAGES = ("pgbouncer", "postgresql-15", "postgresql-client-15", "python3", "procps",
            *stack.BUILD_PACKAGES)
SYSTEMS = {
    "A": "A: PostgreSQL direct (pgbench -M prepared)",
    "B": "B: PgBouncer 1.18 (pgbench -M simple)",
    "C": "C: dbpool (dbpool bench)",
}
INVOLVED = {"A": ("postgres", "client"),
            "B": ("postgres", "pgbouncer", "client"),
            "C": ("postgres", "dbpool_server", "client")}
PGBENCH_SCRIPT = "\\set aid random(1, 1000000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
# The perf baseline's settings; fsync is off (pg_cluster.sh) because the
# cluster is thrown away and the workload is read-only.
PG_SETTINGS = ("shared_buffers=256MB", "effective_cache_size=4GB", "work_mem=4MB",
               "maintenance_work_mem=256MB", "max_wal_size=2GB", "checkpoint_timeout=15min",
               "max_worker_processes=2", "max_parallel_workers=2",
               "max_parallel_workers_per_gather=0", "jit=off", "log_connections=off")


def settings_from(env):
    quick = env.flag("BENCH_QUICK")
    st = {
        "quick": quick,
        "repeats": env.whole("BENCH_REPEATS", 1 if quick else 3, minimum=1),
        "duration_s": env.seconds("BENCH_DURATION", 3 if quick else 10),
        # pgbench's start is found from its 1 s progress line.
        "warmup_s": env.seconds("BENCH_WARMUP", 2, minimum=2),
        "pause_s": env.number("BENCH_PAUSE", 1),
        "quiet_pct": env.number("BENCH_QUIET_PCT", 10),
        "quiet_max_s": env.number("BENCH_QUIET_MAX", 10),
        "concurrency": env.whole_list("BENCH_CONCURRENCY",
                                      "1 8 64" if quick else "1 8 32 64 128"),
        "pool_size": stack.POOL_SIZE,
        "sql": stack.POINT_SELECT,
    }
    st["postgres_max_connections"] = max(200, max(st["concurrency"]) + 2 * stack.POOL_SIZE + 30)
    report = env.text("BENCH_REPORT", "bench/results/BENCHMARKS-quick.md" if quick
                      else "docs/BENCHMARKS.md")
    return st, report


# ---------------------------------------------------------------------------
# One measured run


def measure(run, argv, warmup, duration, pids, log_prefix=None):
    """Runs one load generator (argv) and measures it: pgbench when
    log_prefix is given (its per-transaction log), else dbpool bench
    --json. pids: postmaster, pgbouncer and dbpool_server. Returns the run
    record, `run` (system, concurrency, repeat, seq) completed."""
    load = run_load(argv, warmup, duration, pids, waits_for_progress=log_prefix is not None,
                    connect_s=120 + run["concurrency"])
    s1, s2 = load["s1"], load["s2"]
    rec = dict(run, start_utc=text.utc_text(load["launch"]),
               wall_s=round(load["end"] - load["launch"], 3),
               connect_s=round(load["go"] - load["launch"], 3), command=argv,
               exit_code=load["rc"], warmup_s=warmup, duration_s=duration)
    if log_prefix is not None:
        ws = load["go"] + warmup
        lat, cpu_queries, failed = pgbench.read_logs(
            log_prefix, ws, ws + duration, s1["t"] if s1 else 0, s2["t"] if s2 else 0)
        aborted = sum(1 for line in load["stderr"] if "aborted" in line)
        rec.update(requests=len(lat) + failed, ok=len(lat), errors=failed + aborted,
                   throughput=len(lat) / duration,
                   latency_ms={"p50": percentile(lat, .5), "p95": percentile(lat, .95),
                               "p99": percentile(lat, .99), "p999": percentile(lat, .999),
                               "max": lat[-1] if lat else None, "mean": fmean_or_none(lat)})
        tps = pgbench.reported_tps(load["stdout"])
        if tps is not None:
            rec["pgbench_tps_reported"] = tps
        if aborted:
            rec["aborted_clients"] = aborted
    else:
        j = text.last_json_line(load["stdout"])
        if j:
            rec.update(requests=j["requests"], ok=j["ok"], errors=j["errors"],
                       errors_by_code=j.get("errors_by_code", {}),
                       throughput=j["ok"] / j["duration_s"],
                       latency_ms=dict(j["latency_ms"]),
                       pool_samples=j.get("pool_samples", []))
            # dbpool bench reports no per-call times: its rate over the window.
            cpu_queries = (j["ok"] / j["duration_s"]) * (s2["t"] - s1["t"]) if s1 else 0
        else:
            load["valid"] = False
            rec.update(requests=0, ok=0, errors=0, throughput=0, latency_ms={})
            cpu_queries = 0
    if s1 and s2 and cpu_queries > 0:
        rec["cpu"] = sampling.window_figures(s1, s2, cpu_queries,
                                             ("pgbouncer", "dbpool_server", "client"))
    rec["valid"] = load["valid"] and load["rc"] == 0
    if load["stderr"] and (load["rc"] != 0 or rec["errors"] or not rec["valid"]):
        rec["stderr_tail"] = load["stderr"][-10:]
    return rec


def run_load(argv, warmup, duration, pids, waits_for_progress, connect_s):
    """Runs argv to its end, with snapshots s1 and s2 at the ends of the
    measured window (less a margin), which starts `warmup` seconds after
    the load does ("go"): at launch, or for pgbench one second before its
    first progress line (it connects all clients first; -P 1 prints a line
    a second after the load starts, and -T counts from there). valid is
    False when the load ended before the window did."""
    stderr, started, progress_at, stdout_parts = [], threading.Event(), {}, []
    launch = time.time()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read_stderr():
        for line in p.stderr:
            if pgbench.is_progress(line):
                if not started.is_set():
                    progress_at["t"] = time.time()
                    started.set()
            else:
                stderr.append(line.rstrip("\n"))
                del stderr[:-40]
    readers = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: stdout_parts.append(p.stdout.read()),
                                daemon=True)]
    for t in readers:
        t.start()
    s1 = s2 = None
    try:
        go = launch
        if waits_for_progress:
            if not started.wait(timeout=connect_s):
                p.kill()
            go = progress_at.get("t", launch + 1) - 1.0
        margin = min(0.25, duration / 10)
        named = {"pgbouncer": pids.get("pgbouncer"), "dbpool_server": pids.get("dbpool_server"),
                 "client": p.pid}
        valid = p.poll() is None
        if valid:
            sampling.sleep_until(go + warmup + margin)
            s1 = sampling.snapshot(pids["postmaster"], named)
            sampling.sleep_until(go + warmup + duration - margin)
            s2 = sampling.snapshot(pids["postmaster"], named)
            valid = p.poll() is None
        try:
            rc = p.wait(timeout=warmup + duration + 120)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
            valid = False
    finally:
        stack.stop_process(p)
    for t in readers:
        t.join(timeout=5)
    return {"launch": launch, "go": go, "end": time.time(), "rc": rc, "valid": valid,
            "s1": s1, "s2": s2, "stdout": "".join(stdout_parts), "stderr": stderr}


def progress_line(rec):
    lm = rec.get("latency_ms") or {}
    cpu = rec.get("cpu", {}).get("us_per_query", {})

    def us(k):
        return fixed(cpu.get(k), 0, "-")
    return (f"{rec['system']} c={rec['concurrency']:<3} rep {rec['repeat']}: "
            f"{rec['throughput']:9.0f}/s  p50 {lm.get('p50') or 0:.3f} ms  "
            f"p99 {lm.get('p99') or 0:.3f} ms  errors {rec['errors']}  CPU us/q pg "
            f"{us('postgres')} bouncer {us('pgbouncer')} dbpool {us('dbpool_server')} "
            f"client {us('client')}  others {rec.get('cpu', {}).get('others_pct', 0) or 0:.0f}%"
            f"{'' if rec['valid'] else '  INVALID'}")


def settle(pids, quiet_pct, quiet_max):
    """Before a run: waits (at most 60 s) until the cluster's process count
    has not changed for 1 s (the backends of a direct run are gone), then
    up to quiet_max seconds for a 1 s stretch in which other processes use
    at most quiet_pct of the machine (other tenants of a shared box).
    Returns what it saw, for the next run's record."""
    postmaster = pids["postmaster"]
    t_start = time.time()
    deadline = t_start + 60
    last, since = None, time.time()
    while time.time() < deadline:
        n = len(proc.children(postmaster))
        if n != last:
            last, since = n, time.time()
        elif time.time() - since >= 1.0:
            break
        time.sleep(0.2)

    def ours():
        mine = [postmaster, *proc.children(postmaster), pids.get("pgbouncer"),
                pids.get("dbpool_server")]
        return sum(proc.cpu_ticks(p) or 0 for p in mine if p)
    t_quiet = time.time()
    while True:
        m1, o1 = proc.machine_ticks(), ours()
        time.sleep(1.0)
        m2, o2 = proc.machine_ticks(), ours()
        total = (m2["total"] - m1["total"]) or 1
        others = max(0.0, 100.0 * ((m2["tasks"] - m1["tasks"]) - (o2 - o1)) / total)
        if others <= quiet_pct or time.time() - t_quiet >= quiet_max:
            break
    return {"settle_s": round(time.time() - t_start, 2),
            "others_pct_before": round(others, 1), "quiet": others <= quiet_pct}


# ---------------------------------------------------------------------------
# The run


def start_pgbouncer(st, cluster, tmp):
    """A private PgBouncer in front of the cluster's pgbench database
    (Debian's own pgbouncer service, on 6432, is left alone). Returns
    (port, pid)."""
    bdir = tmp / "pgbouncer"
    bdir.mkdir()
    port = stack.free_port()
    (bdir / "pgbouncer.ini").write_text(f"""[databases]
pgbench = host=127.0.0.1 port={cluster.port} dbname=pgbench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {bdir}/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = {st['pool_size']}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
logfile = {bdir}/pgbouncer.log
pidfile = {bdir}/pgbouncer.pid
""")
    (bdir / "userlist.txt").write_text('"postgres" ""\n')
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", "postgres:postgres", str(bdir)], check=True)
    # runuser gives a soft limit of 1024 descriptors; max_client_conn needs more.
    subprocess.run(stack.as_postgres(["sh", "-c", 'ulimit -n 4096 2>/dev/null; exec "$0" -d "$1"',
                                      pgbouncer_bin(), str(bdir / "pgbouncer.ini")]),
                   check=True, timeout=30)
    pidfile = bdir / "pgbouncer.pid"
    deadline = time.monotonic() + 10
    pid = ""
    while time.monotonic() < deadline and not pid.isdigit():
        time.sleep(0.1)
        pid = pidfile.read_text().strip() if pidfile.exists() else ""
    if not pid.isdigit():
        log = bdir / "pgbouncer.log"
        raise stack.HarnessError("PgBouncer did not start:\n" +
                                 stack.harness.tail(log.read_text() if log.exists() else ""))
    pid = int(pid)
    deadline = time.monotonic() + 5
    n = ""
    while time.monotonic() < deadline:
        p = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                            "-d", "pgbench", "-Atc", "SELECT count(*) FROM pgbench_accounts"],
                           capture_output=True, text=True, timeout=10)
        n = p.stdout.strip()
        if p.returncode == 0:
            break
        time.sleep(0.1)
    if n != "1000000":
        raise stack.HarnessError(f"PgBouncer on {port} does not serve pgbench (got '{n}')")
    return port, pid


def stop_pid(pid, timeout=5):
    """SIGTERM to a process we did not spawn (PgBouncer daemonizes), then
    SIGKILL after `timeout`."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.read_stat(pid) is None:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


def pgbouncer_bin():
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def run_order(repeats, concurrency):
    """(repeat, concurrency, system) of every run: per repetition, for each
    concurrency in turn, A, B and C back to back, the order rotated by one
    per repetition (ABC, BCA, CAB, ...) so that per-repetition ratios
    compare runs seconds apart."""
    return [(rep, n, "ABC"[(k + rep - 1) % 3])
            for rep in range(1, repeats + 1) for n in concurrency for k in range(3)]


def start_systems(s, st, server_bin, cli, log):
    """PostgreSQL with pgbench's tables, PgBouncer and dbpool-server in
    front of it, all in the stack s. Returns what the runs need."""
    cluster = s.postgres(PG_SETTINGS + (f"max_connections={st['postgres_max_connections']}",))
    log(f"PostgreSQL on 127.0.0.1:{cluster.port} (postmaster {cluster.postmaster_pid}, "
        f"max_connections {st['postgres_max_connections']})")
    cluster.psql("CREATE DATABASE pgbench")
    log("pgbench -i -s 10")
    stack.pgbench_init(cluster, 10, "pgbench", s.tmp / "pgbench-init.log")
    cluster.psql("VACUUM ANALYZE; CHECKPOINT;", database="pgbench", timeout=600)
    st["database_size"] = cluster.psql(
        "SELECT pg_size_pretty(pg_database_size('pgbench'))", database="pgbench").strip()
    bport, bpid = start_pgbouncer(st, cluster, s.tmp)
    s.callback(stop_pid, bpid)
    log(f"PgBouncer on 127.0.0.1:{bport} (pid {bpid})")
    server = s.server(server_bin, f"postgresql://postgres@127.0.0.1:{cluster.port}/pgbench",
                      [*stack.POOL_ARGS, "--log-level=warn", "--shutdown-grace-ms=2000"])
    probe = subprocess.run([str(cli), "--target", server.address, "--json", "query",
                            st["sql"], "--param", "int:1"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise stack.HarnessError(f"dbpool query failed: {probe.stdout}{probe.stderr}")
    log(f"dbpool-server on {server.address} (pid {server.proc.pid})")
    script = s.tmp / "select.sql"
    script.write_text(PGBENCH_SCRIPT)
    logs = s.tmp / "logs"
    logs.mkdir()
    return {"cli": cli, "target": server.address, "script": script, "logs": logs,
            "pgbench": os.path.join(stack.pg_bindir(), "pgbench"),
            "ports": {"A": cluster.port, "B": bport},
            "pids": {"postmaster": cluster.postmaster_pid, "pgbouncer": bpid,
                     "dbpool_server": server.proc.pid}}


def versions():
    pgbin = stack.pg_bindir()
    pg_version = stack.command_version([os.path.join(pgbin, "postgres"), "--version"])
    return {"postgres": pg_version, "postgres_short": pg_version.split()[2],
            "pgbench": stack.command_version([os.path.join(pgbin, "pgbench"), "--version"]),
            "pgbouncer": stack.command_version([pgbouncer_bin(), "--version"]),
            "dbpool": stack.dbpool_version()}


def run_one(ctx, st, rep, n, system, seq):
    """One measured run of a system at concurrency n."""
    warmup, duration = st["warmup_s"], st["duration_s"]
    run = {"system": system, "concurrency": n, "repeat": rep, "seq": seq}
    if system == "C":
        argv = [str(ctx["cli"]), "bench", "--target", ctx["target"], "--sql", st["sql"],
                "--param", "rand:1:1000000", "--concurrency", str(n),
                "--duration", f"{duration}s", "--warmup", f"{warmup}s", "--json"]
        return measure(run, argv, warmup, duration, ctx["pids"])
    tag = f"{system}-c{n}-r{rep}"
    prefix = str(ctx["logs"] / f"{tag}.pgb")
    argv = [ctx["pgbench"], "-h", "127.0.0.1",
            "-p", str(ctx["ports"][system]), "-U", "postgres", "-n",
            "-M", "prepared" if system == "A" else "simple", "-f", str(ctx["script"]),
            "-c", str(n), "-j", "2" if n % 2 == 0 else "1",  # -j must divide -c
            "-T", str(warmup + duration + 1), "-P", "1", "-l", "--log-prefix", prefix, "pgbench"]
    try:
        return measure(run, argv, warmup, duration, ctx["pids"], log_prefix=prefix)
    finally:
        for f in ctx["logs"].glob(f"{tag}.pgb.*"):
            f.unlink()  # per-transaction logs: large, and digested by now


def main(env=None):
    env = Env(env)
    st, report_md = settings_from(env)
    log = stack.Logger("compare")
    results_json = f"bench/results/compare-{text.stamp()}{'-quick' if st['quick'] else ''}.json"
    stack.ensure_packages(PACKAGES, log)
    server_bin, cli = stack.build_release("build-release", log)
    with stack.Stack("compare", keep_tmp=env.flag("BENCH_KEEP_TMP")) as s:
        meta = {"started_utc": text.utc_text(), "loadavg_start": proc.load_average()}
        ctx = start_systems(s, st, server_bin, cli, log)
        meta["versions"] = versions()
        order = run_order(st["repeats"], st["concurrency"])
        log(f"{len(order)} runs: concurrency {' '.join(map(str, st['concurrency']))}, "
            f"{st['repeats']} repetition(s), {st['warmup_s']}s warm-up + {st['duration_s']}s each")
        runs = []
        for rep, n, system in order:
            before = settle(ctx["pids"], st["quiet_pct"], st["quiet_max_s"])
            time.sleep(st["pause_s"])
            rec = run_one(ctx, st, rep, n, system, seq=len(runs) + 1)
            rec["before"] = before
            runs.append(rec)
            print(progress_line(rec), file=sys.stderr, flush=True)
            for name, pid in ctx["pids"].items():
                if proc.read_stat(pid) is None:
                    raise stack.HarnessError(f"{name} died during {system} c={n} rep {rep}")
    model, mem = proc.machine_description()
    meta["settings"] = st
    meta["machine"] = {"nproc": os.cpu_count(), "cpu_model": model, "memory": mem,
                       "kernel": os.uname().release, "clock_ticks_per_s": proc.TICK}
    meta["finished_utc"] = text.utc_text()
    doc = {"meta": meta, "summary": summarize(runs, st["concurrency"]), "runs": runs}
    text.write_json(results_json, doc)
    text.write_text(report_md, render(doc, results_json, report_md))
    log(f"wrote {report_md} and {results_json}")
    return 0


# ---------------------------------------------------------------------------
# Report


def summarize(runs, concurrency):
    summary = {}
    for n in concurrency:
        s = {}
        for sysname in "ABC":
            rs = [r for r in runs if r["concurrency"] == n and r["system"] == sysname]
            good = [r for r in rs if r["valid"]]
            tp = [r["throughput"] for r in good]
            entry = {
                "runs": len(rs), "valid_runs": len(good),
                "errors": sum(r.get("errors", 0) for r in rs),
                "throughput_median": median(tp),
                "throughput_min": min(tp) if tp else None,
                "throughput_max": max(tp) if tp else None,
                "p50_ms_median": median([r["latency_ms"].get("p50") for r in good]),
                "p99_ms_median": median([r["latency_ms"].get("p99") for r in good]),
                "cpu_us_per_query_median": {},
                "others_pct_median": median([r.get("cpu", {}).get("others_pct") for r in good]),
                "others_pct_max": max([r.get("cpu", {}).get("others_pct") or 0 for r in good],
                                      default=None),
            }
            entry["ctx_switches_per_query_median"] = {}
            for k in ("postgres", "pgbouncer", "dbpool_server", "client"):
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
        for num, den in (("C", "A"), ("C", "B"), ("B", "A")):
            per_rep = []
            for rep in sorted({r["repeat"] for r in runs}):
                x, y = ([r["throughput"] for r in runs if r["concurrency"] == n and
                         r["system"] == name and r["repeat"] == rep and r["valid"]]
                        for name in (num, den))
                if x and y and y[0] > 0:
                    per_rep.append(x[0] / y[0])
            s[f"{num}/{den}"] = {
                "ratio_of_medians": ratio(s[num]["throughput_median"], s[den]["throughput_median"]),
                "per_repeat": per_rep,
                "min": min(per_rep) if per_rep else None,
                "max": max(per_rep) if per_rep else None,
            }
        s["dbpool_vs_pgbouncer_cpu"] = ratio(s["C"]["cpu_us_per_query_median"]["dbpool_server"],
                                             s["B"]["cpu_us_per_query_median"]["pgbouncer"])
        summary[str(n)] = s
    return summary


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
    L = []
    w = L.append
    w("# Benchmarks: dbpool vs PostgreSQL direct vs PgBouncer\n")
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
    w(f"| date (UTC) | {meta['started_utc']} – {meta['finished_utc']} |")
    w(f"| load average before the runs | {meta['loadavg_start']} |")
    w("")
    w("## Method\n")
    w("One point select, `SELECT abalance FROM pgbench_accounts WHERE aid = $1`, with "
      f"`aid` drawn uniformly from 1..1,000,000 (pgbench scale 10, database "
      f"{st['database_size']}, `shared_buffers` 256MB), issued by a closed loop of N "
      "concurrent callers:\n")
    w("* **A — PostgreSQL direct**: `pgbench -M prepared -c N -j J` with a script file "
      "(`\\set aid random(1, 1000000)` and the SELECT with `:aid`), N server connections.")
    w(f"* **B — PgBouncer**: `pgbench -M simple` (PgBouncer 1.18 cannot keep protocol-level "
      f"prepared statements in transaction mode) through PgBouncer, `pool_mode=transaction`, "
      f"`default_pool_size={st['pool_size']}`, `max_client_conn=1000`, `auth_type=trust`.")
    w(f"* **C — dbpool**: `dbpool bench --concurrency N --param rand:1:1000000` through "
      f"`dbpool-server` (Release build, `--db-pool-max-connections={st['pool_size']}`, "
      f"`--db-pool-min-connections={st['pool_size']}`). dbpool binds the parameter with "
      "the extended protocol; each pooled connection runs a statement unnamed the first "
      "time and prepared (bind + execute) from its second use on.")
    w("")
    w(f"J = 2 pgbench threads when N is even, else 1 (`-j` must divide `-c`). Concurrency "
      f"{', '.join(map(str, conc))}; {st['repeats']} repetition(s). Each repetition runs, "
      f"for each N in turn, A, B and C back to back, the order rotated by one per "
      f"repetition (ABC, BCA, CAB, …), so that per-repetition ratios compare runs "
      f"seconds apart. Every run loads {st['warmup_s']} s of warm-up and then "
      f"{st['duration_s']} s measured. Before each run the script waits until the "
      f"cluster's process count is stable (direct backends have exited), then up to "
      f"{st['quiet_max_s']:g} s for a second in which other processes use at most "
      f"{st['quiet_pct']:g} % of the machine, then {st['pause_s']:g} s. Everything (PostgreSQL {v['postgres_short']}, PgBouncer, "
      "dbpool-server, the load generator) runs on this machine, over 127.0.0.1 TCP.\n")
    w("* **Throughput**: successful queries per second in the measured window (pgbench: "
      "counted from its per-transaction log `-l`; dbpool bench: `ok / duration`). "
      "**Latency** p50/p99: pgbench from the same log, dbpool bench from its histogram.")
    w("* **CPU µs/query**: `utime + stime` deltas from `/proc/PID/stat` over the measured "
      f"window (less {min(0.25, st['duration_s'] / 10):.2f} s at each end), divided by the "
      "queries completed in that window. PostgreSQL = postmaster plus all its children "
      "(backends and background processes); PgBouncer; dbpool-server (all threads); "
      "client = pgbench or dbpool bench. Resolution is one clock tick (10 ms) per process "
      "and window. *total* = the processes involved in that system.")
    w("* Tables show the **median over repetitions**, with [min–max] for throughput. "
      "Ratios C/A and C/B are ratios of the median throughputs; the spread is the "
      "min–max of the per-repetition ratios.")
    w("* **others' CPU** = task time of the whole machine (`/proc/stat` user + nice + "
      "system) minus the processes above, in % of all cores: work of other tenants "
      "during the run (noise).\n")

    w("## Summary\n")
    w("| clients | A direct /s | B PgBouncer /s | C dbpool /s | **C/A** [spread] | **C/B** [spread] "
      "| dbpool-server CPU µs/q | PgBouncer CPU µs/q | dbpool ÷ PgBouncer CPU |")
    w("|---:|---:|---:|---:|---|---|---:|---:|---:|")
    for n in conc:
        s = summary[str(n)]
        w(f"| {n} | {thousands(s['A']['throughput_median'])} | {thousands(s['B']['throughput_median'])} "
          f"| {thousands(s['C']['throughput_median'])} "
          f"| {ratio_text(s['C/A'], bold=True)} | {ratio_text(s['C/B'], bold=True)} "
          f"| {fixed(s['C']['cpu_us_per_query_median']['dbpool_server'], 0)} "
          f"| {fixed(s['B']['cpu_us_per_query_median']['pgbouncer'], 0)} "
          f"| {fixed(s['dbpool_vs_pgbouncer_cpu'])} |")
    w("")

    w("## Per concurrency\n")
    for n in conc:
        s = summary[str(n)]
        w(f"### {n} concurrent caller{'s' if n != 1 else ''}\n")
        w("| system | throughput /s median [min–max] | p50 ms | p99 ms | PostgreSQL µs/q "
          "| PgBouncer µs/q | dbpool-server µs/q | client µs/q | total CPU µs/q | errors | others' CPU % |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for sysname in "ABC":
            e = s[sysname]
            c = e["cpu_us_per_query_median"]
            runs_note = "" if e["valid_runs"] == e["runs"] else f" ({e['runs'] - e['valid_runs']} invalid run(s))"
            w(f"| {SYSTEMS[sysname]}{runs_note} | {thousands(e['throughput_median'])} "
              f"[{thousands(e['throughput_min'])}–{thousands(e['throughput_max'])}] "
              f"| {fixed(e['p50_ms_median'], 3)} | {fixed(e['p99_ms_median'], 3)} "
              f"| {fixed(c['postgres'], 0)} | {fixed(c['pgbouncer'], 0)} | {fixed(c['dbpool_server'], 0)} "
              f"| {fixed(c['client'], 0)} | {fixed(c['total'], 0)} | {e['errors']} "
              f"| {fixed(e['others_pct_median'], 0)} |")
        w(f"\nC/A = {ratio_text(s['C/A'], bold=True)}, C/B = {ratio_text(s['C/B'], bold=True)}, "
          f"B/A = {ratio_text(s['B/A'])}.\n")

    w("## Context switches per query\n")
    w("Voluntary + involuntary context switches of every thread, from "
      "`/proc/PID/task/*/status`, over the same window, divided by the queries (median "
      "over repetitions). On this paravirtualised VM a context switch is expensive "
      "(the perf baseline measured 15 µs per pipe round trip between two processes).\n")
    w("| clients | A: PostgreSQL | A: pgbench | B: PostgreSQL | B: PgBouncer | B: pgbench "
      "| C: PostgreSQL | C: dbpool-server | C: dbpool bench |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in conc:
        s = summary[str(n)]

        def x(sysname, k):
            return fixed(s[sysname]["ctx_switches_per_query_median"][k], 1)
        w(f"| {n} | {x('A', 'postgres')} | {x('A', 'client')} | {x('B', 'postgres')} "
          f"| {x('B', 'pgbouncer')} | {x('B', 'client')} | {x('C', 'postgres')} "
          f"| **{x('C', 'dbpool_server')}** | {x('C', 'client')} |")
    w("")
    w("## Reading the numbers\n")
    w(reading(summary, conc, runs, st, m["nproc"]))
    w("")
    return "\n".join(L) + "\n"


def ratio_text(r, bold=False):
    """"0.39 [0.37–0.41]": a ratio of medians and its per-repetition
    spread."""
    head = fixed(r["ratio_of_medians"])
    return f"{f'**{head}**' if bold else head} [{fixed(r['min'])}–{fixed(r['max'])}]"


def cores_used(runs, n):
    """'A 1.9, B 1.8, C 1.9': median cores used by the processes involved."""
    parts = []
    for sysname in "ABC":
        mine = [r for r in runs if r["concurrency"] == n and r["system"] == sysname
                and r["valid"] and r.get("cpu")]
        parts.append(f"{sysname} {fixed(median(involved_sums(mine, sysname, 'cores_used')), 1)}")
    return ", ".join(parts)


def reading(summary, conc, runs, st, nproc):
    out = []
    # Goal 1: C/B >= 1.0 at 64 and 128.
    parts, met1, missing = [], True, []
    for n in (64, 128):
        if str(n) not in summary:
            missing.append(n)
            met1 = False
            continue
        r = summary[str(n)]["C/B"]
        ok = r["ratio_of_medians"] is not None and r["ratio_of_medians"] >= 1.0
        met1 &= ok
        parts.append(f"{fixed(r['ratio_of_medians'])} at {n} clients "
                     f"(per repetition {fixed(r['min'])}–{fixed(r['max'])})")
    verdict = "**MET**" if met1 else "**NOT MET**"
    txt = f"*Goal 1 — dbpool at least as fast as PgBouncer at 64 and 128 clients (C/B ≥ 1.0):* {verdict}. "
    txt += ("C/B is " + " and ".join(parts) + "." if parts else "")
    if missing:
        txt += f" Not measured at {' and '.join(map(str, missing))} clients in this run."
    out.append(txt)

    # Goal 2: dbpool CPU/query <= 1.5x PgBouncer's.
    rows, met2 = [], True
    for n in conc:
        s = summary[str(n)]
        x = s["dbpool_vs_pgbouncer_cpu"]
        if x is None:
            met2 = False
            continue
        met2 &= x <= 1.5
        rows.append(f"{fixed(s['C']['cpu_us_per_query_median']['dbpool_server'], 0)} vs "
                    f"{fixed(s['B']['cpu_us_per_query_median']['pgbouncer'], 0)} µs "
                    f"({fixed(x)}×) at {n}")
    verdict = "**MET**" if met2 else "**NOT MET**"
    out.append(f"*Goal 2 — dbpool-server CPU per query ≤ 1.5× PgBouncer's, at every "
               f"concurrency:* {verdict} (dbpool-server vs PgBouncer: {'; '.join(rows)}).")

    ca = [(n, summary[str(n)]["C/A"]["ratio_of_medians"]) for n in conc]
    out.append("Against PostgreSQL direct (prepared) dbpool reaches C/A = " +
               ", ".join(f"{fixed(r)} at {n}" for n, r in ca) + ".")
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
            f"The processes of each system together kept {cores_used(runs, hi)} of the "
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
                    "it (gRPC poller → pool → executor worker that runs libpq and waits "
                    "in `poll` → gRPC completion), where PgBouncer forwards bytes from "
                    "one single-threaded event loop.")
        out.append(txt)
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
    out.append(note)
    return "\n\n".join(out)
