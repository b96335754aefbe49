"""bench/waiters: 10,000 concurrent callers against a pool of 20 whose
statement takes 200 ms. The waiting queue holds 1,000; every other call
must be refused with RESOURCE_EXHAUSTED at once. Samples the server's
thread count and resident memory every 100 ms."""
import json
import threading

from . import proc, stack, text
from .settings import Env

MAX_RSS_MB = 300
MAX_THREADS = 200


class ThreadsAndMemory(threading.Thread):
    """(threads, RSS kB) of a process every 100 ms until stopped, it is
    gone, or `limit_s` passes."""

    def __init__(self, pid, limit_s):
        super().__init__(daemon=True)
        self.pid, self.limit_s = pid, limit_s
        self.samples, self.stop = [], threading.Event()

    def run(self):
        for _ in range(int(self.limit_s * 10)):
            st = proc.status(self.pid)
            if st is None or self.stop.is_set():
                return
            self.samples.append((st["threads"], st["rss_kb"]))
            self.stop.wait(0.1)


def result(report, samples, callers):
    threads = [t for t, _ in samples]
    rss_mb = [r / 1024 for _, r in samples]
    return {
        "callers": callers,
        "duration_s": report["duration_s"],
        "requests": report["requests"],
        "errors_by_code": report["errors_by_code"],
        "latency_ms": report["latency_ms"],
        "server_threads_max": max(threads),
        "server_threads_min": min(threads),
        "server_rss_mb_max": round(max(rss_mb), 1),
        "samples": len(samples),
    }


def render(r):
    codes = r["errors_by_code"]
    rejected = codes.get("RESOURCE_EXHAUSTED", 0)
    other = {k: v for k, v in codes.items() if k != "RESOURCE_EXHAUSTED"}
    served = r["requests"] - sum(codes.values())
    lat = r["latency_ms"]
    met = r["server_rss_mb_max"] < MAX_RSS_MB and r["server_threads_max"] < MAX_THREADS
    return f"""# {r['callers']:,} concurrent callers

Written by `bench/waiters`. A pool of 20 connections, a waiting queue of
1,000 (`DB_POOL_MAX_WAITING`), and {r['callers']:,} closed-loop callers each
running `SELECT pg_sleep(0.2)` for {r['duration_s']:.0f} s: about 100
statements a second can run, so nearly every call is over the queue bound.

| measure | value |
| --- | --- |
| calls completed | {r['requests']:,} |
| served | {served:,} |
| refused with RESOURCE_EXHAUSTED | {rejected:,} |
| other errors | {other or 'none'} |
| call latency p50 / p99 / max (ms) | {lat['p50']:.2f} / {lat['p99']:.2f} / {lat['max']:.2f} |
| server threads (min–max while loaded) | {r['server_threads_min']}–{r['server_threads_max']} |
| server resident memory, max | {r['server_rss_mb_max']:.1f} MB |

Threads bounded and memory under {MAX_RSS_MB} MB:
{'met' if met else 'NOT met'} — the thread count does not grow with callers,
because a waiting call holds no thread. Calls over the queue bound are
refused without entering the queue; their end-to-end latency above is what
{r['callers']:,} callers cost on two cores shared by client, server and
PostgreSQL, not time spent waiting for a connection.
"""


def main(env=None):
    env = Env(env)
    callers = env.whole("WAITERS_CALLERS", 10000, minimum=1)
    seconds = env.seconds("WAITERS_DURATION", "10s")
    server_bin, cli = stack.binaries(env.text("WAITERS_BUILD_DIR", "build"))
    with stack.Stack("waiters") as s:
        cluster = s.postgres()
        server = s.server(server_bin, cluster.database_url,
                          [*stack.POOL_ARGS, "--db-pool-max-waiting=1000",
                           "--db-pool-acquire-timeout-ms=30000"])
        sampler = ThreadsAndMemory(server.proc.pid, limit_s=seconds + 120)
        s.callback(sampler.stop.set)
        sampler.start()
        report, p = stack.dbpool_bench(cli, server.address,
                                       ["--sql", "SELECT pg_sleep(0.2)", "--concurrency",
                                        str(callers), "--duration", f"{seconds}s",
                                        "--timeout", "30s"], timeout=seconds + 120)
        sampler.stop.set()
        sampler.join(timeout=5)
    if report is None or not sampler.samples:
        raise stack.HarnessError(f"dbpool bench gave no report: {p.stderr[-2000:]}")
    r = result(report, sampler.samples, callers)
    text.write_json(f"bench/results/waiters-{text.stamp()}.json", r, indent=2)
    text.write_text(env.text("WAITERS_REPORT", "docs/BENCHMARKS-waiters.md"), render(r))
    print(json.dumps(r))
    return 0
