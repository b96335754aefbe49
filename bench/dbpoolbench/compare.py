"""bench/compare: the same point select five ways, and dbpool's gRPC floor,
interleaved.

  A  pgbench -M prepared directly against PostgreSQL
  B  pgbench -M simple   through PgBouncer 1.18 (transaction pooling, pool 20)
  C  dbpool bench        through dbpool-server (Release build, pool 20)
  D  dbpool bench        through the Go peer gateway (bench/peers/go, pool 20)
  E  dbpool bench        through the Node.js peer gateway (bench/peers/node, pool 20)
  F  dbpool bench --rpc stats against C's dbpool-server: its gRPC floor

The orchestration (main), one measured run (measure) and the wait for
a quiet machine between runs (settle); compare_report makes the report.
"""
import os
import shutil
import subprocess
import sys
import threading
import time

from . import pgbench, proc, sampling, stack, text
from .compare_report import INVOLVED, LOAD, SYSTEMS, gateway, render, summarize
from .settings import Env, SettingsError
from .stats import fmean_or_none, percentile
from .text import fixed

PGBENCH_SCRIPT = "\\set aid random(1, 1000000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
# The perf baseline's settings; fsync is off (pg_cluster.sh) because the
# cluster is thrown away and the workload is read-only.
PG_SETTINGS = ("shared_buffers=256MB", "effective_cache_size=4GB", "work_mem=4MB",
               "maintenance_work_mem=256MB", "max_wal_size=2GB", "checkpoint_timeout=15min",
               "max_worker_processes=2", "max_parallel_workers=2",
               "max_parallel_workers_per_gather=0", "jit=off", "log_connections=off")


# dbpool-server's flags in every run of C: the side-by-side pool, quiet.
SERVER_ARGS = (*stack.POOL_ARGS, "--log-level=warn", "--shutdown-grace-ms=2000")


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
        "systems": systems_from(env.text("BENCH_SYSTEMS", " ".join(SYSTEMS))),
        "pool_size": stack.POOL_SIZE,
        "sql": stack.POINT_SELECT,
    }
    pools = len({gateway(s) for s in st["systems"]} - {None})
    st["postgres_max_connections"] = max(200, max(st["concurrency"]) + pools * stack.POOL_SIZE + 30)
    report = env.text("BENCH_REPORT", "bench/results/BENCHMARKS-quick.md" if quick
                      else "docs/BENCHMARKS.md")
    return st, report


def systems_from(text):
    """"A C D" (spaces, commas or none) -> ["A", "C", "D"], in the order of
    SYSTEMS, which the run order rotates."""
    chosen = set(text.replace(",", " ").replace(" ", "").upper())
    unknown = chosen - set(SYSTEMS)
    if unknown or not chosen:
        raise SettingsError(f"BENCH_SYSTEMS: want some of {' '.join(SYSTEMS)}, got \"{text}\"")
    return [s for s in SYSTEMS if s in chosen]


# ---------------------------------------------------------------------------
# One measured run


def measure(run, argv, warmup, duration, pids, log_prefix=None):
    """Runs one load generator (argv) and measures it: pgbench when
    log_prefix is given (its per-transaction log), else dbpool bench
    --json. pids: the postmaster and the gateways that run (pgbouncer,
    dbpool_server, peer_go, peer_node), each measured in every run.
    Returns the run record, `run` (system, concurrency, repeat, seq)
    completed."""
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
        rec["cpu"] = sampling.window_figures(s1, s2, cpu_queries, list(s1["procs"]))
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
        named = {**{k: pid for k, pid in pids.items() if k != "postmaster"}, "client": p.pid}
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
            f"p99 {lm.get('p99') or 0:.3f} ms  errors {rec['errors']}  CPU us/q "
            f"{' '.join(f'{k} {us(k)}' for k in INVOLVED[rec['system']])}  "
            f"others {rec.get('cpu', {}).get('others_pct', 0) or 0:.0f}%"
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
        mine = [*pids.values(), *proc.children(postmaster)]
        return sum(proc.cpu_ticks(p) or 0 for p in mine)
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


def run_order(repeats, concurrency, systems):
    """(repeat, concurrency, system) of every run: per repetition, for each
    concurrency in turn, the systems back to back, the order rotated by one
    per repetition (ABC, BCA, CAB, ...) so that per-repetition ratios
    compare runs seconds apart."""
    k = len(systems)
    return [(rep, n, systems[(i + rep - 1) % k])
            for rep in range(1, repeats + 1) for n in concurrency for i in range(k)]


# The application_name the peers' connections carry, by which fill_pool
# counts them.
PEERS = {"D": "dbpool-peer-go", "E": "dbpool-peer-node"}


def peer_argv(sysname, go_bin):
    return [str(go_bin)] if sysname == "D" else [
        "node", str(stack.harness.PEERS_DIR / "node" / "server.js")]


def probe(cli, target, sql):
    """One query through a gateway before any run, so that a broken one
    stops the benchmark at its start."""
    p = subprocess.run([str(cli), "--target", target, "--json", "query", sql, "--param", "int:1"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise stack.HarnessError(f"a query through {target} failed: {p.stdout}{p.stderr}")


def fill_pool(ctx, st, sysname, timeout=60):
    """Fills a peer's pool (both open connections on demand, and pg.Pool
    closes them after 30 s idle) with bursts of 2 x pool size callers until
    PostgreSQL shows all of them; returns that count."""
    app = PEERS[sysname]
    deadline = time.monotonic() + timeout
    while True:
        stack.dbpool_bench(ctx["cli"], ctx["targets"][sysname],
                           ["--sql", st["sql"], "--param", "rand:1:1000000", "--concurrency",
                            str(2 * st["pool_size"]), "--duration", "1s"], timeout=30)
        n = int(ctx["cluster"].psql(f"SELECT count(*) FROM pg_stat_activity "
                                    f"WHERE application_name = '{app}'", database="pgbench"))
        if n >= st["pool_size"] or time.monotonic() >= deadline:
            break
    if n < st["pool_size"]:
        raise stack.HarnessError(f"the {app} pool holds {n} of {st['pool_size']} "
                                 f"connections after {timeout} s of load")
    return n


def point_select_database(s, max_connections, log):
    """PostgreSQL with PG_SETTINGS and pgbench's tables (scale 10) in the
    database pgbench, vacuumed and checkpointed, in the stack s: what every
    point-select comparison runs against. (cluster, database size as text)."""
    cluster = s.postgres(PG_SETTINGS + (f"max_connections={max_connections}",))
    log(f"PostgreSQL on 127.0.0.1:{cluster.port} (postmaster {cluster.postmaster_pid}, "
        f"max_connections {max_connections})")
    cluster.psql("CREATE DATABASE pgbench")
    log("pgbench -i -s 10")
    stack.pgbench_init(cluster, 10, "pgbench", s.tmp / "pgbench-init.log")
    cluster.psql("VACUUM ANALYZE; CHECKPOINT;", database="pgbench", timeout=600)
    size = cluster.psql("SELECT pg_size_pretty(pg_database_size('pgbench'))",
                        database="pgbench").strip()
    return cluster, size


def start_systems(s, st, server_bin, cli, go_bin, log):
    """PostgreSQL with pgbench's tables and, in front of it, the gateways
    of the systems chosen (PgBouncer, dbpool-server, the peers), all in the
    stack s. Returns what the runs need."""
    cluster, st["database_size"] = point_select_database(s, st["postgres_max_connections"], log)
    script = s.tmp / "select.sql"
    script.write_text(PGBENCH_SCRIPT)
    logs = s.tmp / "logs"
    logs.mkdir()
    ctx = {"cli": cli, "cluster": cluster, "script": script, "logs": logs,
           "pgbench": os.path.join(stack.pg_bindir(), "pgbench"),
           "ports": {"A": cluster.port}, "targets": {},
           "pids": {"postmaster": cluster.postmaster_pid}}
    url = f"postgresql://postgres@127.0.0.1:{cluster.port}/pgbench"
    if "B" in st["systems"]:
        bport, bpid = start_pgbouncer(st, cluster, s.tmp)
        s.callback(stop_pid, bpid)
        log(f"PgBouncer on 127.0.0.1:{bport} (pid {bpid})")
        ctx["ports"]["B"], ctx["pids"]["pgbouncer"] = bport, bpid
    if {"C", "F"} & set(st["systems"]):
        server = s.server(server_bin, url, SERVER_ARGS)
        probe(cli, server.address, st["sql"])
        log(f"dbpool-server on {server.address} (pid {server.proc.pid})")
        ctx["targets"]["C"] = ctx["targets"]["F"] = server.address
        ctx["pids"]["dbpool_server"] = server.proc.pid
    for sysname, app in PEERS.items():
        if sysname in st["systems"]:
            peer = s.peer(app, peer_argv(sysname, go_bin), f"{url}?application_name={app}",
                          st["pool_size"])
            probe(cli, peer.address, st["sql"])
            log(f"{app} on {peer.address} (pid {peer.proc.pid})")
            ctx["targets"][sysname], ctx["pids"][gateway(sysname)] = peer.address, peer.proc.pid
    return ctx


def versions(systems):
    pgbin = stack.pg_bindir()
    pg_version = stack.command_version([os.path.join(pgbin, "postgres"), "--version"])
    v = {"postgres": pg_version, "postgres_short": pg_version.split()[2],
         "pgbench": stack.command_version([os.path.join(pgbin, "pgbench"), "--version"]),
         "pgbouncer": stack.command_version([pgbouncer_bin(), "--version"]),
         "dbpool": stack.dbpool_version()}
    if "D" in systems:
        v["peer_go"] = (f"{stack.command_version(['go', 'version'])}; grpc-go "
                        f"{stack.debian_version('golang-google-grpc-dev')}, pgx "
                        f"{stack.debian_version('golang-github-jackc-pgx-v4-dev')} "
                        "(Debian packages)")
    if "E" in systems:
        v["peer_node"] = (f"Node.js {stack.command_version(['node', '--version'])}; "
                          f"@grpc/grpc-js {stack.npm_version('@grpc/grpc-js')}, "
                          f"pg {stack.npm_version('pg')}")
    return v


def run_one(ctx, st, rep, n, system, seq):
    """One measured run of a system at concurrency n."""
    warmup, duration = st["warmup_s"], st["duration_s"]
    run = {"system": system, "concurrency": n, "repeat": rep, "seq": seq}
    if LOAD[system] == "dbpool bench":
        calls = stack.FLOOR_LOAD if system == "F" else stack.QUERY_LOAD
        argv = stack.bench_argv(ctx["cli"], ctx["targets"][system], calls, n, duration, warmup)
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
    stack.install_deps(log)
    server_bin, cli = stack.build_release("build-release", log)
    go_bin = stack.build_peer_go("build-release", log) if "D" in st["systems"] else None
    with stack.Stack("compare", keep_tmp=env.flag("BENCH_KEEP_TMP")) as s:
        meta = {"started_utc": text.utc_text(), "loadavg_start": proc.load_average()}
        ctx = start_systems(s, st, server_bin, cli, go_bin, log)
        meta["versions"] = versions(st["systems"])
        order = run_order(st["repeats"], st["concurrency"], st["systems"])
        log(f"{len(order)} runs: systems {' '.join(st['systems'])}, concurrency "
            f"{' '.join(map(str, st['concurrency']))}, {st['repeats']} repetition(s), "
            f"{st['warmup_s']}s warm-up + {st['duration_s']}s each")
        runs = []
        for rep, n, system in order:
            before = settle(ctx["pids"], st["quiet_pct"], st["quiet_max_s"])
            # After settling, so that the pool is still full when the
            # measured window ends (pg.Pool's 30 s idle timeout).
            filled = fill_pool(ctx, st, system) if system in PEERS else None
            time.sleep(st["pause_s"])
            rec = run_one(ctx, st, rep, n, system, seq=len(runs) + 1)
            rec["before"] = before
            if filled is not None:
                rec["peer_pool_connections"] = filled
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
