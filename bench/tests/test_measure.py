"""compare.measure against stand-ins for pgbench, dbpool bench and a peer
gateway (small Python programs that print what those do), so that the
timing, parsing, CPU accounting and the peers' start and warm-up run
without a database."""
import json
import os
import sys
import tempfile
import textwrap
import time
import unittest
from unittest import mock

from dbpoolbench import compare, stack

RUN = {"system": "X", "concurrency": 2, "repeat": 1, "seq": 1}


def program(source):
    return [sys.executable, "-c", textwrap.dedent(source)]


def dbpool_bench(busy):
    """dbpool bench --json after 1.5 s, busy (so that it uses CPU) or not."""
    report = {"requests": 110, "ok": 100, "errors": 10, "duration_s": 0.5,
              "errors_by_code": {"UNAVAILABLE": 10},
              "latency_ms": {"p50": 1.5, "p99": 4.0}}
    return program(f"""
        import json, time
        deadline = time.time() + 1.5
        while time.time() < deadline:
            {'pass' if busy else 'time.sleep(0.1)'}
        print("starting")
        print(json.dumps({report!r}))
        """)


class Measure(unittest.TestCase):
    def pids(self):
        # This process stands in for the postmaster: the load generator is
        # its child, so "PostgreSQL" CPU is counted too.
        return {"postmaster": os.getpid()}

    def test_dbpool_bench_report(self):
        rec = compare.measure(RUN, dbpool_bench(busy=True), warmup=0.5, duration=0.5,
                              pids=self.pids())
        self.assertTrue(rec["valid"], rec)
        self.assertEqual((rec["requests"], rec["ok"], rec["errors"]), (110, 100, 10))
        self.assertEqual(rec["throughput"], 200)
        self.assertEqual(rec["latency_ms"]["p99"], 4.0)
        self.assertGreater(rec["cpu"]["us_per_query"]["client"], 0)
        # Only the processes named in pids, and the load generator.
        self.assertEqual(set(rec["cpu"]["us_per_query"]), {"postgres", "client"})
        self.assertEqual(rec["exit_code"], 0)

    def test_a_load_that_ends_early_is_invalid(self):
        argv = program("import sys; sys.exit(3)")
        rec = compare.measure(RUN, argv, warmup=0.5, duration=0.5, pids=self.pids())
        self.assertFalse(rec["valid"])
        self.assertEqual(rec["exit_code"], 3)
        self.assertNotIn("cpu", rec)

    def test_pgbench_log_and_progress(self):
        with tempfile.TemporaryDirectory() as d:
            prefix = os.path.join(d, "X.pgb")
            # The load started a second before the first progress line, so
            # with 1 s of warm-up the window opens at that line: the
            # transactions ending 1.0 and 1.1 s after it are in, the one
            # before it is not; one failed.
            argv = program(f"""
                import sys, time
                t0 = time.time()
                print("progress: 1.0 s, 10.0 tps", file=sys.stderr, flush=True)
                time.sleep(2.5)
                def line(tx, lat, end):
                    return f"0 {{tx}} {{lat}} 0 {{int(end)}} {{int(end % 1 * 1e6)}}\\n"
                with open({prefix!r} + ".77", "w") as f:
                    f.write(line(1, 800, t0 - 0.3) + line(2, 1500, t0 + 1.0)
                            + line(3, 2500, t0 + 1.1) + line(4, "failed", t0 + 1.2))
                print("tps = 2.0 (without initial connection time)")
                """)
            rec = compare.measure(RUN, argv, warmup=1, duration=2, pids=self.pids(),
                                  log_prefix=prefix)
        self.assertTrue(rec["valid"], rec)
        self.assertEqual((rec["ok"], rec["errors"], rec["requests"]), (2, 1, 3))
        self.assertEqual(rec["throughput"], 1.0)
        self.assertEqual(rec["latency_ms"]["p50"], 1.5)
        self.assertEqual(rec["latency_ms"]["max"], 2.5)
        self.assertEqual(rec["pgbench_tps_reported"], 2.0)
        self.assertLess(abs(rec["connect_s"] + 1.0), 0.5)

    def test_a_gateway_is_measured_beside_the_load(self):
        with stack.Stack("test") as s:
            peer = s.peer("busy", PEER, "postgresql://x", pool_size=20)
            rec = compare.measure(RUN, dbpool_bench(busy=False), warmup=0.5, duration=0.5,
                                  pids={**self.pids(), "peer_go": peer.proc.pid})
        cpu = rec["cpu"]["us_per_query"]
        self.assertEqual(set(cpu), {"postgres", "peer_go", "client"})
        self.assertGreater(cpu["peer_go"], cpu["client"])

    def test_settle_reports_what_it_saw(self):
        t = time.time()
        seen = compare.settle(self.pids(), quiet_pct=100, quiet_max=5)
        self.assertTrue(seen["quiet"])
        self.assertLess(time.time() - t, 10)
        json.dumps(seen)


# A peer gateway as bench/peers' programs behave: --port and --pool-size,
# DATABASE_URL required (exit 2), the ready line, exit 0 on SIGTERM. It
# listens on 1000 + pool size, so that the test sees the flag arrive, and
# keeps a core busy.
PEER = program("""
    import os, signal, sys
    flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    if not os.environ.get("DATABASE_URL") or flags["port"] != "0":
        sys.exit(2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"dbpool-peer listening grpc=127.0.0.1:{1000 + int(flags['pool-size'])}", flush=True)
    while True:
        pass
    """)


class Peers(unittest.TestCase):
    def test_a_peer_starts_and_stops_with_the_stack(self):
        with stack.Stack("test") as s:
            peer = s.peer("stand-in", PEER, "postgresql://x", pool_size=20)
            self.assertEqual(peer.address, "127.0.0.1:1020")
            self.assertIsNone(peer.proc.poll())
        self.assertEqual(peer.proc.returncode, 0)

    def test_a_peer_that_fails_to_start_says_so(self):
        with stack.Stack("test") as s:
            with self.assertRaisesRegex(stack.HarnessError, "no ready line.*exit code 2"):
                s.peer("stand-in", PEER, "", pool_size=20)

    def fill(self, counts, timeout=60):
        """fill_pool with PostgreSQL counting `counts` connections in turn;
        the dbpool bench calls it made."""
        cluster = mock.Mock()
        cluster.psql.side_effect = [f"{n}\n" for n in counts]
        ctx = {"cli": "dbpool", "targets": {"E": "127.0.0.1:1"}, "cluster": cluster}
        st = {"sql": "SELECT 1", "pool_size": 20}
        with mock.patch.object(stack, "dbpool_bench") as bench:
            try:
                return compare.fill_pool(ctx, st, "E", timeout), bench.call_args_list
            finally:
                self.assertIn("application_name = 'dbpool-peer-node'",
                              cluster.psql.call_args.args[0])

    def test_fill_pool_loads_until_the_pool_is_full(self):
        n, calls = self.fill([3, 17, 20])
        self.assertEqual((n, len(calls)), (20, 3))
        args = calls[0].args[2]
        self.assertEqual(args[args.index("--concurrency") + 1], "40")

    def test_peers_get_dbpool_s_load(self):
        ctx = {"cli": "dbpool", "targets": {"C": "c:1", "D": "d:1", "E": "e:1"}, "pids": {}}
        st = {"sql": "SELECT 1", "warmup_s": 2, "duration_s": 10}
        with mock.patch.object(compare, "measure") as measure:
            for sysname in "CDE":
                compare.run_one(ctx, st, 1, 64, sysname, seq=1)
        argvs = [c.args[1] for c in measure.call_args_list]
        self.assertEqual([a[a.index("--target") + 1] for a in argvs], ["c:1", "d:1", "e:1"])
        for a in argvs:
            a[a.index("--target") + 1] = "X"
        self.assertEqual(argvs[1], argvs[0])
        self.assertEqual(argvs[2], argvs[0])

    def test_the_floor_calls_getpoolstats_on_c_s_server(self):
        ctx = {"cli": "dbpool", "targets": {"C": "c:1", "F": "c:1"}, "pids": {}}
        st = {"sql": "SELECT 1", "warmup_s": 2, "duration_s": 10}
        with mock.patch.object(compare, "measure") as measure:
            for sysname in "CF":
                compare.run_one(ctx, st, 1, 64, sysname, seq=1)
        (c_run, c_argv, *_), (f_run, f_argv, *_) = (c.args for c in measure.call_args_list)
        self.assertEqual(f_run["system"], "F")
        self.assertEqual(f_argv, ["dbpool", "bench", "--target", "c:1", "--rpc", "stats",
                                  "--concurrency", "64", "--duration", "10s", "--warmup", "2s",
                                  "--json"])
        self.assertEqual(c_argv[4:8], ["--sql", stack.POINT_SELECT, "--param", "rand:1:1000000"])
        self.assertEqual(c_argv[8:], f_argv[6:])

    def test_fill_pool_gives_up_at_its_deadline(self):
        with self.assertRaisesRegex(stack.HarnessError, "holds 12 of 20"):
            self.fill([12], timeout=0)


if __name__ == "__main__":
    unittest.main()
