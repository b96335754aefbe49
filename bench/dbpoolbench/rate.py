"""bench/max-rate: the highest open-loop rate dbpool sustains with under
0.1 % errors and p99 latency under 50 ms for the point select of
bench/compare, and the seed's 100 requests/s figures. Open loop: calls go
out on a fixed schedule and latency counts from the intended send time, so
queueing shows."""
import json
import sys

from . import stack, text
from .settings import Env

MAX_ERROR_SHARE = 0.001
MAX_P99_MS = 50
SEED_RATE = 100


def good(r):
    """Within the bounds: under 0.1 % errors and p99 under 50 ms."""
    return bool(r["requests"]) and r["errors"] / r["requests"] < MAX_ERROR_SHARE \
        and r["latency_ms"]["p99"] < MAX_P99_MS


def highest_good_rate(sweep):
    return max((r["rate"] for r in sweep if good(r)), default=0)


def render(doc):
    seed, sweep, best = doc["seed"], doc["sweep"], doc["highest_good_rate"]
    acq = [s.get("acquire_p95_ms") for s in seed.get("pool_samples", [])
           if s.get("acquire_p95_ms") is not None]
    rows = "\n".join(
        f"| {r['rate']:,} | {r['rps']:,.0f} | {r['errors']} of {r['requests']:,} | "
        f"{r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {r['latency_ms']['max']:.1f} | "
        f"{'yes' if good(r) else 'no'} |" for r in sweep)
    seed_met = seed["errors"] == 0 and seed["latency_ms"]["p99"] < 5 and (not acq or max(acq) < 1)
    lat = seed["latency_ms"]
    return f"""# Open-loop rates

Written by `bench/max-rate` (dbpool git {doc['git']}, Release build, pool 20;
client, server and PostgreSQL on the same two cores). The point select of
`bench/compare`, issued on a fixed schedule; latency counts from each call's
intended send time.

## The seed's test: 100 requests/s

| requests | errors | p50 ms | p95 ms | p99 ms | max ms | pool acquire p95 (server, ms) |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| {seed['requests']:,} | {seed['errors']} | {lat['p50']:.2f} | {lat['p95']:.2f} | {lat['p99']:.2f} | {lat['max']:.1f} | {max(acq) if acq else 'n/a'} |

Goal: 0 errors, acquire p95 under 1 ms, p99 under 5 ms —
{'met' if seed_met else 'NOT met'}.

## Rate sweep

| target rate /s | achieved /s | errors | p50 ms | p99 ms | max ms | < 0.1 % errors and p99 < 50 ms |
| ---: | ---: | ---: | ---: | ---: | ---: | :---: |
{rows}

Highest rate that kept errors under 0.1 % and p99 under 50 ms: **{best:,}/s**,
{best / SEED_RATE:.0f}× the seed's 100 requests/s (goal: at least 50×:
{'met' if best >= 50 * SEED_RATE else 'NOT met'}).
"""


def main(env=None):
    env = Env(env)
    start = env.whole("RATE_START", 1000, minimum=1)
    step = env.whole("RATE_STEP", 1000, minimum=1)
    top = env.whole("RATE_MAX", 20000, minimum=1)
    seconds = env.seconds("RATE_DURATION", "10s")
    server_bin, cli = stack.binaries(env.text("RATE_BUILD_DIR", "build-release"))
    with stack.Stack("rate") as s:
        server = s.point_select_server(server_bin)

        def run(rate):
            report, _ = stack.dbpool_bench(
                cli, server.address, ["--sql", stack.POINT_SELECT, "--param", "rand:1:1000000",
                                      "--rate", str(rate), "--duration", f"{seconds}s",
                                      "--warmup", "2s", "--timeout", "5s"],
                timeout=seconds + 120)
            if report is None:
                raise stack.HarnessError(f"dbpool bench at {rate}/s gave no report")
            return report
        seed = run(SEED_RATE)
        sweep = []
        for rate in range(start, top + 1, step):
            r = run(rate)
            sweep.append(r)
            print(f"max-rate: {rate}/s -> errors {r['errors']} of {r['requests']} "
                  f"p99 {r['latency_ms']['p99']} ms", file=sys.stderr, flush=True)
            if not good(r):
                break
    doc = {"seed": seed, "sweep": sweep, "highest_good_rate": highest_good_rate(sweep),
           "git": stack.git_head()}
    text.write_json(f"bench/results/rate-{text.stamp()}.json", doc, indent=2)
    text.write_text(env.text("RATE_REPORT", "docs/BENCHMARKS-rate.md"), render(doc))
    print(json.dumps({"highest_good_rate": doc["highest_good_rate"]}))
    return 0
