"""bench/soak: a long run of mixed traffic through dbpool-server while
PostgreSQL is restarted now and then; reports errors, leaks and latency
drift. The settings and thresholds are described in bench/soak."""
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request

from . import proc, soak_report, stack, text
from .settings import Env, SettingsError
from .soak_streams import STALL_S, streams

APP_NAME = "dbpool-soak"
SETUP_SQL = """
CREATE TABLE soak_events (id bigserial PRIMARY KEY, k bigint NOT NULL, note text,
                          at timestamptz NOT NULL DEFAULT now());
CREATE TABLE soak_counters (k bigint PRIMARY KEY, n bigint NOT NULL,
                            updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE soak_checked (v int NOT NULL CHECK (v < 0));
-- The failing streams log an ERROR each; the statement text need not follow.
ALTER SYSTEM SET log_min_error_statement = 'panic';
SELECT pg_reload_conf();
VACUUM ANALYZE;
"""
# /metrics names gRPC codes as Go does; the client as absl does.
GO_CODES = {
    "OK": "OK", "Canceled": "CANCELLED", "Unknown": "UNKNOWN",
    "InvalidArgument": "INVALID_ARGUMENT", "DeadlineExceeded": "DEADLINE_EXCEEDED",
    "NotFound": "NOT_FOUND", "AlreadyExists": "ALREADY_EXISTS",
    "PermissionDenied": "PERMISSION_DENIED", "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "FailedPrecondition": "FAILED_PRECONDITION", "Aborted": "ABORTED",
    "OutOfRange": "OUT_OF_RANGE", "Unimplemented": "UNIMPLEMENTED",
    "Internal": "INTERNAL", "Unavailable": "UNAVAILABLE", "DataLoss": "DATA_LOSS",
    "Unauthenticated": "UNAUTHENTICATED"}


def settings_from(env):
    st = {
        "duration_s": env.seconds("SOAK_DURATION", "30m"),
        "window_s": env.seconds("SOAK_WINDOW", "60s"),
        "warmup_windows": env.whole("SOAK_WARMUP_WINDOWS", 1),
        "restart_every_s": env.seconds("SOAK_RESTART_EVERY", "120s", minimum=0),
        "rate": env.whole("SOAK_RATE", 300, minimum=20),
        "timeout_s": env.seconds("SOAK_TIMEOUT", "5s"),
        "grace_s": env.seconds("SOAK_GRACE", "5s"),
        "sample_every_s": env.seconds("SOAK_SAMPLE_EVERY", "1s"),
        "pool_max": env.whole("SOAK_POOL_MAX", 20, minimum=1, maximum=150),
        "pool_min": env.whole("SOAK_POOL_MIN", 4),
        "pgbench_scale": env.whole("SOAK_SCALE", 10, minimum=1),
        "max_rss_growth_mb": env.whole("SOAK_MAX_RSS_GROWTH_MB", 64),
        "max_rss_step_mb": env.whole("SOAK_MAX_RSS_STEP_MB", 4),
        "max_fd_growth": env.whole("SOAK_MAX_FD_GROWTH", 10),
        "max_thread_growth": env.whole("SOAK_MAX_THREAD_GROWTH", 10),
        "max_stray_errors": env.whole("SOAK_MAX_STRAY_ERRORS", 0),
    }
    if st["pool_min"] > st["pool_max"]:
        raise SettingsError("SOAK_POOL_MIN/SOAK_POOL_MAX: want 0 <= min <= max <= 150")
    windows = window_count(st)
    if windows < st["warmup_windows"] + 2:
        raise SettingsError(
            f"SOAK_DURATION / SOAK_WINDOW gives {windows} window(s); want at least "
            f"{st['warmup_windows'] + 2} (warm-up, a first and a last)")
    return st


def window_count(st):
    return -(-st["duration_s"] // st["window_s"])


def window_lengths(st):
    """Seconds of traffic in each window: the last one takes the rest."""
    n = window_count(st)
    return [st["window_s"]] * (n - 1) + [st["duration_s"] - (n - 1) * st["window_s"]]


def restarts_per_window(st):
    """How many restarts each window gets: those due at k * restart_every
    (k >= 1) that fall in the window's nominal span, none in the warm-up
    or the last window."""
    n, every, length = window_count(st), st["restart_every_s"], st["window_s"]
    out = []
    for w in range(1, n + 1):
        k = 0
        if every > 0 and st["warmup_windows"] < w < n:
            k = sum(1 for t in range(every, w * length, every) if t >= (w - 1) * length)
        out.append(k)
    return out


# ---------------------------------------------------------------------------
# One window: every stream as its own `dbpool bench` process.


class Restarter(threading.Thread):
    """Restarts PostgreSQL at the given times; one record per restart."""

    def __init__(self, cluster, times, window, records):
        super().__init__(daemon=True)
        self.cluster, self.times, self.window, self.records = cluster, times, window, records

    def run(self):
        for at in self.times:
            time.sleep(max(0.0, at - time.time()))
            begin = time.time()
            p = self.cluster.restart()
            back = time.time()
            rec = {"begin": begin, "back": back, "rc": p.returncode, "window": self.window}
            if p.returncode != 0:
                rec["output"] = p.stdout[-2000:]
            self.records.append(rec)
            print(f"[soak {time.strftime('%H:%M:%S')}] PostgreSQL restarted in window "
                  f"{self.window}: back after {back - begin:.2f} s"
                  + ("" if p.returncode == 0 else f" (FAILED, exit {p.returncode})"),
                  file=sys.stderr, flush=True)


def stream_paths(wdir, n, name):
    base = os.path.join(wdir, f"w{n:03d}-{name}")
    return base + ".json", base + ".err"


def stream_report(wdir, n, name):
    """(the bench report of a stream in window n or None, its stderr tail)."""
    out, err = stream_paths(wdir, n, name)
    try:
        with open(out) as f:
            j = text.last_json_line(f.read())
    except OSError:
        j = None
    try:
        with open(err) as f:
            tail = f.read().strip()[-300:]
    except OSError:
        tail = ""
    return j, tail


def run_window(ctx, n, length, restarts):
    """One window of traffic; restarts spread evenly over it (one in its
    middle). Returns the window's record."""
    st, wdir = ctx["settings"], ctx["windows_dir"]
    procs, rcs = [], {}
    start = time.time()
    restarter = Restarter(ctx["cluster"], [start + (i + 0.5) * length / restarts
                                           for i in range(restarts)], n, ctx["restarts"])
    try:
        restarter.start()
        for s in streams(st["rate"], st["pgbench_scale"]):
            cmd = [str(ctx["cli"]), "bench", "--target", ctx["target"], "--sql", s["sql"],
                   "--rate", str(s["rate"]), "--duration", f"{length}s",
                   "--timeout", f"{st['timeout_s']}s", "--json"]
            if s["param"]:
                cmd += ["--param", s["param"]]
            out, err = stream_paths(wdir, n, s["name"])
            with open(out, "w") as o, open(err, "w") as e:
                procs.append((s["name"], subprocess.Popen(cmd, stdout=o, stderr=e)))
        for name, p in procs:
            try:
                rcs[name] = p.wait(timeout=length + st["timeout_s"] + 60)
            except subprocess.TimeoutExpired:
                stack.stop_process(p)
                rcs[name] = p.returncode
        restarter.join(timeout=length + 180)
    finally:
        for _, p in procs:
            stack.stop_process(p)
    end = time.time()
    rec = {"n": n, "start": start, "end": end, "length_s": length,
           "warmup": n <= st["warmup_windows"], "rc": rcs}
    print_window(rec, wdir, st)
    return rec


def print_window(rec, wdir, st):
    """A line of progress: requests and the errors no stream expects."""
    requests, unexpected = 0, {}
    for s in streams(st["rate"], st["pgbench_scale"]):
        j, _ = stream_report(wdir, rec["n"], s["name"])
        if not j:
            continue
        requests += j["requests"]
        for c, v in j.get("errors_by_code", {}).items():
            if c not in s["expected_errors"]:
                unexpected[c] = unexpected.get(c, 0) + v
    bad = [k for k, v in rec["rc"].items() if v != 0]
    print(f"[soak {time.strftime('%H:%M:%S')}] window {rec['n']}"
          f"{' (warm-up)' if rec['warmup'] else ''}: {rec['end'] - rec['start']:.1f} s, "
          f"{requests:,} requests, unexpected errors: "
          + (", ".join(f"{c} {v}" for c, v in unexpected.items()) or "none")
          + (f"; bench exited non-zero: {', '.join(bad)}" if bad else ""),
          file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# Sampling the server

LABELS = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(exposition):
    """From the Prometheus text: Query calls by gRPC code (absl names),
    connections closed by reason, opened, and failed connection attempts."""
    out = {"query_codes": {}, "closed_by_reason": {}}
    for line in exposition.splitlines():
        if not line or line[0] == "#":
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        if name not in ("grpc_server_handled_total", "db_pool_connections_closed_total",
                        "db_pool_connections_opened_total", "db_pool_connect_errors_total"):
            continue
        lab = dict(LABELS.findall(labels))
        v = int(float(value))
        if name == "grpc_server_handled_total":
            if lab.get("grpc_method") == "Query":
                code = GO_CODES.get(lab.get("grpc_code"), lab.get("grpc_code"))
                out["query_codes"][code] = v
        elif name == "db_pool_connections_closed_total":
            out["closed_by_reason"][lab.get("reason", "?")] = v
        else:
            out[name.replace("db_pool_", "").replace("_total", "")] = v
    return out


def fetch(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.read().decode()


def pool_counts(url):
    j = json.loads(fetch(url))
    keys = ("total_connections", "active_connections", "idle_connections",
            "connecting_connections", "waiting_connections")
    return {k.replace("_connections", ""): int(j.get(k, 0)) for k in keys} | {
        "reachable": bool(j.get("database_reachable"))}


def pg_connections(port):
    """The cluster's connections with our application_name; None when
    PostgreSQL does not answer (it may be restarting)."""
    sql = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{APP_NAME}'"
    env = dict(os.environ, PGCONNECT_TIMEOUT="2")
    try:
        p = subprocess.run(["psql", "-X", "-Atq", "-h", "127.0.0.1", "-p", str(port),
                            "-U", "postgres", "-d", "postgres", "-c", sql],
                           capture_output=True, text=True, timeout=4, env=env)
        return int(p.stdout.strip()) if p.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None


def take_sample(ctx):
    rec = {"t": time.time()}
    m = proc.machine_ticks()
    rec.update(load1=float(proc.load_average().split()[0]), busy_ticks=m["busy"],
               all_ticks=m["total"])
    pid = ctx["server"].proc.pid
    status, ticks = proc.status(pid), proc.cpu_ticks(pid)
    try:
        fds = proc.open_fds(pid)
    except OSError:
        fds = None
    if status is None or ticks is None or fds is None:
        rec["server_gone"] = True
        return rec
    rec.update(rss_kb=status["rss_kb"], threads=status["threads"], fds=fds, cpu_ticks=ticks)
    for key, fn in (("metrics", lambda: parse_metrics(fetch(ctx["server"].metrics_url))),
                    ("pool", lambda: pool_counts(ctx["pool_url"]))):
        try:
            rec[key] = fn()
        except Exception as e:  # the sample keeps what it could read
            rec[key] = None
            rec.setdefault("problems", []).append(f"{key}: {e}")
    rec["pg_conns"] = pg_connections(ctx["cluster"].port)
    return rec


class Sampler(threading.Thread):
    """Samples the server every `every` seconds until stopped, the server
    is gone or the deadline (a Unix time) passes."""

    def __init__(self, ctx, every, deadline):
        super().__init__(daemon=True)
        self.ctx, self.every, self.deadline = ctx, every, deadline
        self.samples, self.stop = [], threading.Event()

    def run(self):
        nxt = time.time()
        while not self.stop.is_set() and time.time() < self.deadline:
            rec = take_sample(self.ctx)
            self.samples.append(rec)
            if rec.get("server_gone"):
                return
            nxt = max(nxt + self.every, time.time())
            self.stop.wait(nxt - time.time())


class Heartbeat(threading.Thread):
    """Records machine stalls: times a 100 ms sleep woke STALL_S or more
    late. Runs until stopped or the deadline (a Unix time) passes."""

    def __init__(self, deadline):
        super().__init__(daemon=True)
        self.deadline, self.stalls, self.stop = deadline, [], threading.Event()

    def run(self):
        period = 0.1
        nxt = time.monotonic() + period
        while not self.stop.is_set() and time.time() < self.deadline:
            time.sleep(max(0.0, nxt - time.monotonic()))
            late = time.monotonic() - nxt
            if late >= STALL_S:
                self.stalls.append({"end": time.time(), "late_s": round(late, 2)})
            nxt = time.monotonic() + period


def conncheck(ctx, wait_s=15):
    """After the traffic: do PostgreSQL and the pool agree on the
    connections? Polls once a second for up to wait_s."""
    t_end = time.time() + wait_s
    seen = []
    while True:
        try:
            pool = pool_counts(ctx["pool_url"])
        except Exception:
            pool = None
        pg = pg_connections(ctx["cluster"].port)
        seen.append({"t": time.time(), "pool_total": pool and pool["total"],
                     "pool_active": pool and pool["active"], "pg_conns": pg})
        if pool is not None and pg is not None and pool["total"] == pg and pool["active"] == 0:
            break
        if time.time() >= t_end:
            break
        time.sleep(1)
    last = seen[-1]
    return {"agree": last["pool_total"] is not None and last["pool_total"] == last["pg_conns"],
            "waited_s": round(last["t"] - seen[0]["t"], 1), "last": last, "first": seen[0]}


def summarize_server_log(log_text):
    """The server's warn/error lines: how many, and the ten most frequent
    (numbers replaced by N)."""
    counts, n = {}, 0
    for line in log_text.splitlines():
        m = re.match(r"^\[[^\]]*\] \[(warning|error|critical)\] (.*)$", line)
        if not m:
            continue
        n += 1
        msg = re.sub(r"\d+", "N", m.group(2))[:200]
        counts[msg] = counts.get(msg, 0) + 1
    return {"lines": n, "top": [list(kv) for kv in
                                sorted(counts.items(), key=lambda kv: -kv[1])[:10]]}


# ---------------------------------------------------------------------------
# The run


def main(env=None):
    env = Env(env)
    st = settings_from(env)
    stamp = text.stamp()
    report_md = env.text("SOAK_REPORT", f"bench/results/soak-{stamp}.md")
    results_json = env.text("SOAK_JSON", f"bench/results/soak-{stamp}.json")
    log = stack.Logger("soak")
    stack.install_deps(log)
    server_bin, cli = stack.build_release(env.text("SOAK_BUILD_DIR", "build-release"), log)
    with stack.Stack("soak", keep_tmp=env.flag("SOAK_KEEP_TMP")) as s:
        started_utc = text.utc_text()
        log(f"starting PostgreSQL in {s.tmp}")
        cluster = s.postgres()
        log(f"pgbench -i -s {st['pgbench_scale']} on 127.0.0.1:{cluster.port}")
        stack.pgbench_init(cluster, st["pgbench_scale"], "postgres", s.tmp / "pgbench-init.log")
        cluster.psql(SETUP_SQL, timeout=600)
        server = s.server(server_bin, cluster.database_url,
                          [f"--db-pool-max-connections={st['pool_max']}",
                           f"--db-pool-min-connections={st['pool_min']}",
                           f"--db-application-name={APP_NAME}",
                           "--log-level=warn", "--shutdown-grace-ms=2000"])
        probe = subprocess.run([str(cli), "--target", server.address, "query",
                                "SELECT count(*) FROM soak_checked"],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            raise stack.HarnessError(f"dbpool query through {server.address} failed: "
                                     f"{probe.stderr}")
        log(f"dbpool-server pid {server.proc.pid}: grpc {server.address}, "
            f"http {server.http_address}, metrics {server.metrics_address}")
        versions = {"dbpool": stack.dbpool_version(),
                    "postgres": stack.command_version(
                        [os.path.join(stack.pg_bindir(), "postgres"), "--version"])}

        watch_out, watch_err = s.tmp / "watch.jsonl", s.tmp / "watch.err"
        with open(watch_out, "w") as o, open(watch_err, "w") as e:
            watch = s.process([str(cli), "--target", server.address, "--json", "watch",
                               "--interval", "1s"], stdout=o, stderr=e)
        wdir = s.tmp / "windows"
        wdir.mkdir()
        ctx = {"settings": st, "cluster": cluster, "server": server, "cli": cli,
               "target": server.address, "windows_dir": str(wdir), "restarts": [],
               "pool_url": server.http_url + "/api/metrics/database/pool"}
        t0 = time.time()
        # Generous: restarts and stalled windows may run late.
        deadline = t0 + 2 * st["duration_s"] + 600
        sampler, heartbeat = Sampler(ctx, st["sample_every_s"], deadline), Heartbeat(deadline)
        s.callback(sampler.stop.set)
        s.callback(heartbeat.stop.set)
        heartbeat.start()
        sampler.start()

        planned = restarts_per_window(st)
        log(f"traffic: {st['rate']} calls/s for {st['duration_s']}s in {len(planned)} windows "
            f"of {st['window_s']}s (warm-up {st['warmup_windows']}), "
            + (f"{sum(planned)} PostgreSQL restart(s), every {st['restart_every_s']}s"
               if st["restart_every_s"] else "no PostgreSQL restarts"))
        windows = []
        for n, (length, restarts) in enumerate(zip(window_lengths(st), planned), start=1):
            windows.append(run_window(ctx, n, length, restarts))
            if not server.is_running():
                log(f"dbpool-server exited during window {n}")
                break

        server_alive = server.is_running()
        checked = conncheck(ctx)
        watch_alive = watch.poll() is None
        watch_exit = "" if watch_alive else f"exit {watch.returncode}"
        sampler.stop.set()
        heartbeat.stop.set()
        sampler.join(timeout=10)
        stack.stop_process(watch)
        meta = {"started_utc": started_utc, "t0": t0, "settings": st,
                "streams": streams(st["rate"], st["pgbench_scale"]),
                "restarts_planned": sum(planned), "watch_alive": watch_alive,
                "watch_exit": watch_exit,
                "watch_stderr": watch_err.read_text(errors="replace")[-1000:],
                "server_alive": server_alive, "versions": versions,
                "server_log": summarize_server_log(server.stderr_text())}
        raw = {"windows": windows, "samples": list(sampler.samples),
               "restarts": list(ctx["restarts"]), "watch": text.load_jsonl(watch_out),
               "conncheck": checked, "stalls": list(heartbeat.stalls),
               "stream_report": lambda n, name: stream_report(str(wdir), n, name)}
        result = soak_report.analyse(meta, raw)
        text.write_json(results_json, result)
        text.write_text(report_md, soak_report.render(result, results_json))
        log(f"wrote {report_md} and {results_json}")
        print("PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"]),
              file=sys.stderr)
    return 0 if result["passed"] else 1
