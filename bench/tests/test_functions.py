"""Statistics, parsers and settings on small fixtures."""
import os
import tempfile
import unittest

from dbpoolbench import compare, pgbench, proc, rate, soak, soak_streams, stats, text, waiters
from dbpoolbench.settings import Env, SettingsError, parse_millis, parse_seconds


class Statistics(unittest.TestCase):
    def test_percentile_is_nearest_rank(self):
        xs = list(range(1, 101))
        self.assertEqual(stats.percentile(xs, 0.5), 50)
        self.assertEqual(stats.percentile(xs, 0.99), 99)
        self.assertEqual(stats.percentile(xs, 0.999), 100)
        self.assertEqual(stats.percentile([7], 0.01), 7)
        self.assertIsNone(stats.percentile([], 0.5))

    def test_median_leaves_out_missing_values(self):
        self.assertEqual(stats.median([3, None, 1, 2]), 2)
        self.assertEqual(stats.median([4, 1, 2, 3]), 2.5)
        self.assertIsNone(stats.median([None]))

    def test_slope(self):
        self.assertAlmostEqual(stats.slope([(0, 1), (1, 3), (2, 5)]), 2.0)
        self.assertIsNone(stats.slope([(1, 1), (1, 2)]))

    def test_ratio(self):
        self.assertEqual(stats.ratio(3, 2), 1.5)
        self.assertIsNone(stats.ratio(3, 0))
        self.assertIsNone(stats.ratio(None, 2))


class PgbenchLog(unittest.TestCase):
    # client tx latency_us script epoch_s epoch_us
    LINES = ["0 1 1500 0 100 500000",     # ends 100.5: in both windows
             "0 2 2500 0 101 0",          # ends 101.0
             "1 1 failed 0 101 200000",   # a failure in the window
             "1 2 900 0 99 0",            # before the window
             "1 3 700 0 102 100000",      # after the CPU window
             "garbage"]

    def test_latencies_failures_and_cpu_window(self):
        lat, in_cpu, failed = pgbench.parse_log(self.LINES, 100, 102.5, 100, 101.5)
        self.assertEqual(lat, [0.7, 1.5, 2.5])
        self.assertEqual(in_cpu, 2)
        self.assertEqual(failed, 1)

    def test_read_logs_reads_every_thread_file(self):
        with tempfile.TemporaryDirectory() as d:
            prefix = os.path.join(d, "A-c8-r1.pgb")
            with open(prefix + ".123", "w") as f:
                f.write("\n".join(self.LINES[:2]) + "\n")
            with open(prefix + ".123.1", "w") as f:
                f.write(self.LINES[4] + "\n")
            lat, _, _ = pgbench.read_logs(prefix, 100, 103, 0, 0)
        self.assertEqual(lat, [0.7, 1.5, 2.5])

    def test_summary_and_progress(self):
        out = "number of transactions actually processed: 10\ntps = 1234.5 (without initial connection time)\n"
        self.assertEqual(pgbench.reported_tps(out), 1234.5)
        self.assertIsNone(pgbench.reported_tps("nothing"))
        self.assertTrue(pgbench.is_progress("progress: 1.0 s, 100.0 tps"))


class ProcFiles(unittest.TestCase):
    def test_stat_with_parentheses_in_the_name(self):
        fields = ["S", "42"] + ["0"] * 9 + ["150", "25"] + ["0"] * 30
        self.assertEqual(proc.parse_stat("77 (a) b) " + " ".join(fields)), (42, 175))

    def test_status(self):
        s = proc.parse_status("Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t7\n"
                              "voluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t3\n")
        self.assertEqual(s, {"rss_kb": 2048, "threads": 7, "ctx_switches": 13})

    def test_machine_ticks(self):
        m = proc.parse_machine_ticks("cpu  10 1 5 100 4 2 3 6 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n")
        self.assertEqual(m, {"tasks": 16, "irq": 5, "steal": 6, "busy": 27, "total": 131})

    def test_this_process_is_readable(self):
        pid = os.getpid()
        self.assertIsNotNone(proc.cpu_ticks(pid))
        self.assertGreater(proc.status(pid)["threads"], 0)
        self.assertGreater(proc.ctx_switches(pid), 0)
        self.assertIn(pid, proc.children(os.getppid()))
        threads = proc.threads(pid)
        self.assertIn(str(pid), threads)
        self.assertEqual(len(threads), proc.status(pid)["threads"])
        self.assertEqual(proc.threads(2 ** 22 + 1), {})

    def test_threads_of_one_pool_count_together(self):
        self.assertEqual(proc.thread_group("dbpool-io-0"), "dbpool-io")
        self.assertEqual(proc.thread_group("dbpool-io-12"), "dbpool-io")
        self.assertEqual(proc.thread_group("worker 3"), "worker")
        self.assertEqual(proc.thread_group("nexting_thread"), "nexting_thread")
        self.assertEqual(proc.thread_group("default-executo"), "default-executo")
        self.assertEqual(proc.thread_group("7"), "7")

    def test_per_thread_group_counts_the_threads_alive_at_both_samples(self):
        before = {"1": ("dbpool-io-0", 100, 10), "2": ("dbpool-io-1", 50, 5),
                  "3": ("idle", 7, 7), "4": ("gone", 1, 1)}
        after = {"1": ("dbpool-io-0", 150, 30), "2": ("dbpool-io-1", 60, 25),
                 "3": ("idle", 7, 7), "5": ("new", 90, 90)}
        got = proc.per_thread_group(before, after, calls=100)
        self.assertEqual(list(got), ["dbpool-io"])
        self.assertAlmostEqual(got["dbpool-io"]["cpu_us_per_call"], 60 * proc.US_PER_TICK / 100)
        self.assertAlmostEqual(got["dbpool-io"]["switches_per_call"], 0.4)


class Settings(unittest.TestCase):
    def test_durations(self):
        self.assertEqual(parse_seconds("90"), 90)
        self.assertEqual(parse_seconds("90s"), 90)
        self.assertEqual(parse_seconds("30m"), 1800)
        self.assertEqual(parse_seconds("1h"), 3600)
        self.assertIsNone(parse_seconds("1.5s"))
        self.assertIsNone(parse_seconds("-1"))

    def test_milliseconds(self):
        self.assertEqual(parse_millis("50"), 50)
        self.assertEqual(parse_millis("50ms"), 50)
        self.assertEqual(parse_millis("2s"), 2000)
        self.assertIsNone(parse_millis("0.5s"))
        self.assertIsNone(parse_millis("50us"))
        self.assertEqual(Env({"D": "2s"}).millis("D", "50ms"), 2000)
        with self.assertRaisesRegex(SettingsError, "D: at least 1ms"):
            Env({"D": "0ms"}).millis("D", "50ms")

    def test_values_and_errors(self):
        env = Env({"D": "2m", "Z": "0", "L": "1, 8 64", "BAD": "x", "E": ""})
        self.assertEqual(env.seconds("D", "1s"), 120)
        self.assertEqual(env.seconds("E", "7s"), 7)
        self.assertEqual(env.seconds("Z", "1s", minimum=0), 0)
        self.assertEqual(env.whole_list("L", ""), [1, 8, 64])
        for call in (lambda: env.seconds("Z", "1s"), lambda: env.seconds("BAD", "1s"),
                     lambda: env.whole("BAD", 1), lambda: env.whole("Z", 1, minimum=1),
                     lambda: env.whole_list("BAD", ""), lambda: env.number("BAD", 1)):
            with self.assertRaises(SettingsError):
                call()


class SoakPlan(unittest.TestCase):
    def settings(self, **over):
        return soak.settings_from(Env({k: str(v) for k, v in over.items()}))

    def test_defaults_restart_every_other_window_away_from_the_ends(self):
        st = self.settings()
        plan = soak.restarts_per_window(st)
        self.assertEqual(len(plan), 30)
        self.assertEqual(sum(plan), 14)
        self.assertEqual(plan[0], 0)
        self.assertEqual(plan[-1], 0)

    def test_the_last_window_takes_the_rest(self):
        st = self.settings(SOAK_DURATION="150s", SOAK_WINDOW="60s", SOAK_RESTART_EVERY="0")
        self.assertEqual(soak.window_lengths(st), [60, 60, 30])
        self.assertEqual(soak.restarts_per_window(st), [0, 0, 0])

    def test_too_few_windows_is_a_settings_error(self):
        with self.assertRaises(SettingsError):
            self.settings(SOAK_DURATION="60s", SOAK_WINDOW="60s")
        with self.assertRaises(SettingsError):
            self.settings(SOAK_POOL_MIN=30)

    def test_metrics_parse(self):
        m = soak.parse_metrics(
            '# HELP x\n'
            'grpc_server_handled_total{grpc_code="InvalidArgument",grpc_method="Query"} 5\n'
            'grpc_server_handled_total{grpc_code="OK",grpc_method="GetPoolStats"} 9\n'
            'db_pool_connections_closed_total{reason="idle"} 2\n'
            'db_pool_connections_opened_total 12\n')
        self.assertEqual(m, {"query_codes": {"INVALID_ARGUMENT": 5},
                             "closed_by_reason": {"idle": 2}, "connections_opened": 12})

    def test_server_log_summary(self):
        log = ("[2026-01-01 00:00:00.000] [warning] pool: connect failed after 12 ms\n"
               "[2026-01-01 00:00:01.000] [warning] pool: connect failed after 7 ms\n"
               "[2026-01-01 00:00:01.000] [info] ready\n")
        self.assertEqual(soak.summarize_server_log(log),
                         {"lines": 2, "top": [["pool: connect failed after N ms", 2]]})

    def test_stream_shares_add_up(self):
        ss = soak_streams.streams(300, 10)
        self.assertAlmostEqual(sum(s["rate"] for s in ss), 300)
        self.assertEqual(ss[0]["param"], "rand:1:1000000")


class CompareOrder(unittest.TestCase):
    def test_systems_rotate_by_one_per_repetition(self):
        order = compare.run_order(3, [1, 8], ["A", "B", "C"])
        self.assertEqual(len(order), 18)
        self.assertEqual("".join(s for rep, n, s in order if n == 8), "ABCBCACAB")
        self.assertEqual([n for rep, n, s in order[:6]], [1, 1, 1, 8, 8, 8])

    def test_the_peers_rotate_with_the_others(self):
        order = compare.run_order(3, [64], ["A", "B", "C", "D", "E"])
        self.assertEqual("".join(s for rep, n, s in order), "ABCDE" "BCDEA" "CDEAB")
        order = compare.run_order(2, [64], ["C", "D"])
        self.assertEqual([(rep, s) for rep, n, s in order], [(1, "C"), (1, "D"), (2, "D"), (2, "C")])

    def test_the_floor_rotates_with_the_others(self):
        order = compare.run_order(2, [64, 128], ["A", "B", "C", "D", "E", "F"])
        self.assertEqual("".join(s for rep, n, s in order if n == 128), "ABCDEF" "BCDEFA")
        self.assertEqual(compare.systems_from("f c"), ["C", "F"])

    def test_quick_defaults_and_max_connections(self):
        st, report = compare.settings_from(Env({"BENCH_QUICK": "1", "BENCH_CONCURRENCY": "500"}))
        self.assertEqual((st["repeats"], st["duration_s"]), (1, 3))
        self.assertEqual(report, "bench/results/BENCHMARKS-quick.md")
        self.assertEqual(st["systems"], ["A", "B", "C", "D", "E", "F"])
        # A's 500 backends and the pools of B, C (F's too), D and E.
        self.assertEqual(st["postgres_max_connections"], 500 + 4 * 20 + 30)
        with self.assertRaises(SettingsError):
            compare.settings_from(Env({"BENCH_WARMUP": "1s"}))

    def test_a_run_chooses_its_systems(self):
        def systems(text):
            return compare.settings_from(Env({"BENCH_SYSTEMS": text}))[0]["systems"]
        self.assertEqual(systems("e,c a"), ["A", "C", "E"])
        self.assertEqual(systems("CD"), ["C", "D"])
        self.assertEqual(compare.settings_from(Env({"BENCH_SYSTEMS": "A",
                                                    "BENCH_CONCURRENCY": "300"}))[0]
                         ["postgres_max_connections"], 330)
        self.assertEqual(compare.settings_from(Env({"BENCH_SYSTEMS": "F",
                                                    "BENCH_CONCURRENCY": "300"}))[0]
                         ["postgres_max_connections"], 300 + 20 + 30)
        for bad in ("C G", "dbpool", " , "):
            with self.subTest(bad=bad), self.assertRaises(SettingsError):
                systems(bad)


class SmallFunctions(unittest.TestCase):
    def test_rate_bounds(self):
        ok = {"rate": 1000, "requests": 10000, "errors": 9, "latency_ms": {"p99": 49.9}}
        self.assertTrue(rate.good(ok))
        self.assertFalse(rate.good(dict(ok, errors=10)))
        self.assertFalse(rate.good(dict(ok, latency_ms={"p99": 50})))
        self.assertFalse(rate.good(dict(ok, requests=0)))
        self.assertEqual(rate.highest_good_rate([ok, dict(ok, rate=2000, errors=50)]), 1000)

    def test_waiters_result(self):
        report = {"duration_s": 5, "requests": 10, "errors_by_code": {"RESOURCE_EXHAUSTED": 8},
                  "latency_ms": {"p50": 1.0}}
        r = waiters.result(report, [(80, 204800), (84, 102400)], 100)
        self.assertEqual((r["server_threads_min"], r["server_threads_max"]), (80, 84))
        self.assertEqual(r["server_rss_mb_max"], 200.0)

    def test_formats(self):
        self.assertEqual(text.fixed(None), "—")
        self.assertEqual(text.fixed(1.234, 1), "1.2")
        self.assertEqual(text.thousands(12345.6), "12,346")
        self.assertEqual(text.figure(3.0), "3")
        self.assertEqual(text.figure(1234.56), "1,234.6")
        self.assertEqual(text.figure(None), "n/a")
        self.assertEqual(text.last_json_line('log\n{"a": 1}\n'), {"a": 1})
        self.assertIsNone(text.last_json_line("no json"))


if __name__ == "__main__":
    unittest.main()
