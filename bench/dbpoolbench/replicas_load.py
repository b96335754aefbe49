"""The load of bench/replicas, a process of its own so that its CPU is
measured apart from the rest: CALLERS callers on one grpc.aio channel, each
a closed loop of calls to Query, a single-row UPDATE with probability
WRITE_PCT %, else a point select marked read_only. With --token every read
carries the caller's last write's commit_lsn as min_lsn (read-your-writes).

`dbpool bench` sends one statement, never read_only nor min_lsn, so this
mix needs a client of its own.

    python3 -m dbpoolbench.replicas_load --target H:P --stubs DIR [--token] ...

Prints "go UNIX_TIME" on stderr when the callers start (the measured window
is [go + warmup, go + warmup + duration)), then one JSON line on stdout: per
kind (read, write) the calls that completed in the window, their latency
percentiles and errors by gRPC code."""
import argparse
import asyncio
import json
import random
import sys
import time

from .stats import fmean_or_none, percentile

TABLE = "rr_rows"
SELECT_SQL = f"SELECT v FROM {TABLE} WHERE id = $1"
UPDATE_SQL = f"UPDATE {TABLE} SET v = v + 1 WHERE id = $1"
KINDS = ("read", "write")
RPC_TIMEOUT_S = 5.0


def latency_summary(values_ms):
    """p50, p95, p99, p99.9, max and mean of latencies in ms (None each
    when there are none)."""
    xs = sorted(values_ms)
    return {"p50": percentile(xs, .5), "p95": percentile(xs, .95), "p99": percentile(xs, .99),
            "p999": percentile(xs, .999), "max": xs[-1] if xs else None,
            "mean": fmean_or_none(xs)}


def kind_report(latencies_ms, errors_by_code, duration_s):
    """One kind's part of the report: completed calls in the window, rate,
    latency (every completed call, failed ones too) and errors."""
    errors = sum(errors_by_code.values())
    ok = len(latencies_ms) - errors
    return {"ok": ok, "errors": errors, "errors_by_code": dict(errors_by_code),
            "per_s": ok / duration_s, "latency_ms": latency_summary(latencies_ms)}


class Recorder:
    """What the callers saw in the measured window."""

    def __init__(self, start, end):
        self.start, self.end = start, end
        self.latencies = {k: [] for k in KINDS}
        self.errors = {k: {} for k in KINDS}
        self.token_reads = 0

    def add(self, kind, t0, t1, code, with_token):
        if not self.start <= t1 < self.end:
            return
        self.latencies[kind].append((t1 - t0) * 1000.0)
        if code != "OK":
            self.errors[kind][code] = self.errors[kind].get(code, 0) + 1
        if with_token:
            self.token_reads += 1

    def report(self, callers, token):
        duration = self.end - self.start
        return {"duration_s": duration, "callers": callers, "token": token,
                "token_reads": self.token_reads,
                **{k: kind_report(self.latencies[k], self.errors[k], duration) for k in KINDS}}


async def caller(grpc, pb, stub, rng, a, rec, stop_at):
    token = ""
    while time.time() < stop_at:
        key = pb.Value(int64_value=rng.randint(1, a.rows))
        write = rng.random() * 100 < a.write_pct
        if write:
            req = pb.QueryRequest(sql=UPDATE_SQL, params=[key])
        else:
            req = pb.QueryRequest(sql=SELECT_SQL, params=[key], read_only=True,
                                  min_lsn=token if a.token else "")
        t0 = time.time()
        try:
            resp = await stub.Query(req, timeout=RPC_TIMEOUT_S)
            code = "OK"
        except grpc.aio.AioRpcError as e:
            resp, code = None, e.code().name
        t1 = time.time()
        rec.add("write" if write else "read", t0, t1, code, bool(not write and req.min_lsn))
        if write and resp is not None and resp.commit_lsn:
            token = resp.commit_lsn


async def run(a):
    sys.path.insert(0, a.stubs)
    import grpc
    from dbpool.v1 import database_service_pb2 as pb
    from dbpool.v1 import database_service_pb2_grpc as pb_grpc
    async with grpc.aio.insecure_channel(a.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = pb_grpc.DatabaseServiceStub(channel)
        go = time.time()
        print(f"go {go:.6f}", file=sys.stderr, flush=True)
        start = go + a.warmup
        rec = Recorder(start, start + a.duration)
        rngs = [random.Random(a.seed * 1000 + i) for i in range(a.callers)]
        await asyncio.gather(*(caller(grpc, pb, stub, rng, a, rec, rec.end) for rng in rngs))
    return rec.report(a.callers, a.token)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dbpoolbench.replicas_load", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--stubs", required=True, help="directory of the generated Python stubs")
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--write-pct", type=float, default=10.0)
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--token", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    print(json.dumps(asyncio.run(run(a))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
