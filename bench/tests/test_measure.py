"""compare.measure against stand-ins for pgbench and dbpool bench (small
Python programs that print what those do), so that the timing, parsing
and CPU accounting run without a database."""
import json
import os
import sys
import tempfile
import textwrap
import time
import unittest

from dbpoolbench import compare

RUN = {"system": "X", "concurrency": 2, "repeat": 1, "seq": 1}


def program(source):
    return [sys.executable, "-c", textwrap.dedent(source)]


class Measure(unittest.TestCase):
    def pids(self):
        # This process stands in for the postmaster: the load generator is
        # its child, so "PostgreSQL" CPU is counted too.
        return {"postmaster": os.getpid()}

    def test_dbpool_bench_report(self):
        report = {"requests": 110, "ok": 100, "errors": 10, "duration_s": 0.5,
                  "errors_by_code": {"UNAVAILABLE": 10},
                  "latency_ms": {"p50": 1.5, "p99": 4.0}}
        argv = program(f"""
            import json, time
            deadline = time.time() + 1.5
            while time.time() < deadline:  # busy, so that it uses CPU
                pass
            print("starting")
            print(json.dumps({report!r}))
            """)
        rec = compare.measure(RUN, argv, warmup=0.5, duration=0.5, pids=self.pids())
        self.assertTrue(rec["valid"], rec)
        self.assertEqual((rec["requests"], rec["ok"], rec["errors"]), (110, 100, 10))
        self.assertEqual(rec["throughput"], 200)
        self.assertEqual(rec["latency_ms"]["p99"], 4.0)
        self.assertGreater(rec["cpu"]["us_per_query"]["client"], 0)
        self.assertIsNone(rec["cpu"]["us_per_query"]["dbpool_server"])
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

    def test_settle_reports_what_it_saw(self):
        t = time.time()
        seen = compare.settle(self.pids(), quiet_pct=100, quiet_max=5)
        self.assertTrue(seen["quiet"])
        self.assertLess(time.time() - t, 10)
        json.dumps(seen)


if __name__ == "__main__":
    unittest.main()
