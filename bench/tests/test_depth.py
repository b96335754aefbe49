"""bench/pipeline-depth: settings, the depth histogram from /metrics, the
medians, the recommendation and the report, on made-up figures."""
import json
import os
import tempfile
import unittest
from unittest import mock

from dbpoolbench import __main__ as cli_main
from dbpoolbench import compare, depth, stack
from dbpoolbench.settings import Env, SettingsError

# /metrics as dbpool-server writes it, cut down: the depth histogram
# between two metrics whose names share its prefix.
EXPOSITION = """\
# HELP db_pipeline_statements_in_flight Statements sent on pooled connections and not finished.
# TYPE db_pipeline_statements_in_flight gauge
db_pipeline_statements_in_flight 3
# HELP db_pipeline_depth Statements on a connection when a statement was sent, itself included (1: it ran alone).
# TYPE db_pipeline_depth histogram
db_pipeline_depth_count 40
db_pipeline_depth_sum 95
db_pipeline_depth_bucket{le="1"} 10
db_pipeline_depth_bucket{le="2"} 22
db_pipeline_depth_bucket{le="3"} 30
db_pipeline_depth_bucket{le="4"} 36
db_pipeline_depth_bucket{le="6"} 40
db_pipeline_depth_bucket{le="8"} 40
db_pipeline_depth_bucket{le="16"} 40
db_pipeline_depth_bucket{le="32"} 40
db_pipeline_depth_bucket{le="+Inf"} 40
# TYPE db_pool_active_connections gauge
db_pool_active_connections 20
"""


def hist(count, total, alone):
    return {"buckets": {"1": alone, "+Inf": count}, "sum": total, "count": count}


def run(d, n, rep, tp, pg=30.0, server=20.0, client=15.0, valid=True, mean=None, alone=0.5):
    """A run record as run_one makes it, with the figures that matter here."""
    return {"depth": d, "concurrency": n, "repeat": rep, "seq": 0, "valid": valid,
            "throughput": tp, "errors": 0, "requests": int(tp * 10), "ok": int(tp * 10),
            "latency_ms": {"p50": 64 / tp * 1000 * 0.9, "p99": 64 / tp * 1000 * 3},
            "cpu": {"us_per_query": {"postgres": pg, "dbpool_server": server,
                                     "client": client}, "others_pct": 1.0},
            "pipeline": {"statements": int(tp * 12), "mean_depth": mean or min(d, n / 20),
                         "alone_share": alone}}


def runs_for(figures, concurrency=(64,), repeats=3):
    """Runs whose every repetition has `figures` {depth: (throughput, PG
    µs/q)} at each concurrency, the repetitions 1 % apart."""
    out = []
    for n in concurrency:
        for rep in range(1, repeats + 1):
            for d, (tp, pg) in figures.items():
                out.append(run(d, n, rep, tp * (1 + (rep - 2) / 100), pg=pg))
    return out


def doc(figures=None, concurrency=(64,), quick=False, default=8):
    figures = figures or {1: (10000, 40.0), 2: (11000, 36.0), 4: (12000, 34.0),
                          8: (12100, 33.0), 16: (11800, 33.5)}
    depths = sorted(figures)
    runs = runs_for(figures, concurrency)
    summary = depth.summarize(runs, list(concurrency), depths)
    st, _ = depth.settings_from(Env({"DEPTH_LIST": " ".join(map(str, depths)),
                                     "DEPTH_CONCURRENCY": " ".join(map(str, concurrency)),
                                     "DEPTH_QUICK": "1" if quick else ""}))
    st["database_size"] = "150 MB"
    return {"meta": {"started_utc": "2026-12-02T06:00:00Z", "finished_utc": "2026-12-02T06:10:00Z",
                     "loadavg_start": "0.50 0.40 0.30", "server_default_depth": default,
                     "settings": st,
                     "versions": {"postgres": "postgres (PostgreSQL) 15.10",
                                  "dbpool": "0.1.0, git abc1234, Release build"},
                     "machine": {"nproc": 2, "cpu_model": "Test CPU", "memory": "23.4 GiB",
                                 "kernel": "6.1.0"}},
            "summary": summary, "recommendation": depth.recommend(summary), "runs": runs}


class Settings(unittest.TestCase):
    def test_defaults(self):
        st, report = depth.settings_from(Env({}))
        self.assertEqual(st["depths"], [1, 2, 4, 8, 16])
        self.assertEqual(st["concurrency"], [64, 128])
        self.assertEqual((st["repeats"], st["duration_s"], st["warmup_s"]), (3, 10, 2))
        self.assertEqual(st["build_dir"], "build-release")
        self.assertEqual(st["sql"], "SELECT abalance FROM pgbench_accounts WHERE aid = $1")
        self.assertEqual(report, "docs/BENCHMARKS-pipeline-depth.md")
        self.assertFalse(st["quick"])

    def test_quick_is_short_and_leaves_the_report_alone(self):
        st, report = depth.settings_from(Env({"DEPTH_QUICK": "1"}))
        self.assertEqual((st["repeats"], st["duration_s"], st["concurrency"]), (1, 3, [64]))
        self.assertEqual(st["depths"], [1, 2, 4, 8, 16])
        self.assertNotEqual(report, "docs/BENCHMARKS-pipeline-depth.md")

    def test_values(self):
        st, report = depth.settings_from(Env({
            "DEPTH_LIST": "16,1 4 4", "DEPTH_CONCURRENCY": "8,32", "DEPTH_REPEATS": "5",
            "DEPTH_DURATION": "1m", "DEPTH_WARMUP": "5s", "DEPTH_BUILD_DIR": "b",
            "DEPTH_REPORT": "/tmp/d.md"}))
        self.assertEqual(st["depths"], [1, 4, 16])
        self.assertEqual(st["concurrency"], [8, 32])
        self.assertEqual((st["repeats"], st["duration_s"], st["warmup_s"], st["build_dir"]),
                         (5, 60, 5, "b"))
        self.assertEqual(report, "/tmp/d.md")

    def test_postgres_has_room_for_every_pool(self):
        st, _ = depth.settings_from(Env({"DEPTH_LIST": " ".join(map(str, range(1, 13)))}))
        self.assertEqual(st["postgres_max_connections"], 12 * 20 + 30)
        self.assertEqual(depth.settings_from(Env({}))[0]["postgres_max_connections"], 200)

    def test_errors_name_the_setting(self):
        for name, value in [("DEPTH_LIST", "0"), ("DEPTH_LIST", "65"), ("DEPTH_LIST", "8x"),
                            ("DEPTH_LIST", " , "), ("DEPTH_CONCURRENCY", "0"),
                            ("DEPTH_REPEATS", "0"), ("DEPTH_DURATION", "0s"),
                            ("DEPTH_WARMUP", "1.5s")]:
            with self.assertRaisesRegex(SettingsError, name):
                depth.settings_from(Env({name: value}))

    def test_server_flags_are_compare_s_with_the_depth(self):
        args = depth.server_args(4)
        self.assertEqual(args[-1], "--db-pipeline-depth=4")
        for flag in stack.POOL_ARGS:
            self.assertIn(flag, args)
        self.assertEqual(args[:-1], list(compare.SERVER_ARGS))

    def test_server_default(self):
        self.assertEqual(depth.server_default_depth(
            '{"DB_POOL_MAX", "10", x},\n      {"DB_PIPELINE_DEPTH", "8",\n'), 8)
        self.assertIsNone(depth.server_default_depth("nothing here"))
        self.assertIn(depth.server_default_depth(), range(1, 65))


class Histogram(unittest.TestCase):
    def test_parse(self):
        h = depth.parse_histogram(EXPOSITION)
        self.assertEqual((h["count"], h["sum"]), (40, 95.0))
        self.assertEqual(h["buckets"]["1"], 10)
        self.assertEqual(h["buckets"]["+Inf"], 40)
        self.assertEqual(len(h["buckets"]), 9)

    def test_label_sets_add_up(self):
        h = depth.parse_histogram('db_pipeline_depth_count{pool="a"} 3\n'
                                  'db_pipeline_depth_count{pool="b"} 4\n'
                                  'db_pipeline_depth_sum{pool="a"} 1.5e+01\n'
                                  'db_pipeline_depth_bucket{pool="b",le="1"} 2\n')
        self.assertEqual((h["count"], h["sum"], h["buckets"]), (7, 15.0, {"1": 2}))

    def test_missing(self):
        self.assertIsNone(depth.parse_histogram("db_pipeline_statements_in_flight 3\n"))
        self.assertIsNone(depth.parse_histogram(""))

    def test_delta(self):
        before = depth.parse_histogram(EXPOSITION)
        after = hist(count=140, total=395.0, alone=30)
        self.assertEqual(depth.depth_delta(before, after),
                         {"statements": 100, "mean_depth": 3.0, "alone_share": 0.2})

    def test_delta_without_both_scrapes_or_statements(self):
        h = hist(10, 20.0, 5)
        self.assertIsNone(depth.depth_delta(None, h))
        self.assertIsNone(depth.depth_delta(h, None))
        self.assertIsNone(depth.depth_delta(h, h))

    def test_scrape_of_a_server_that_does_not_answer(self):
        server = mock.Mock(metrics_url="http://127.0.0.1:1/metrics")
        with mock.patch.object(depth, "fetch", side_effect=OSError("refused")):
            self.assertIsNone(depth.scrape(server))
        with mock.patch.object(depth, "fetch", return_value=EXPOSITION):
            self.assertEqual(depth.scrape(server)["count"], 40)


class Runs(unittest.TestCase):
    def test_a_run_loads_its_depth_s_server_between_two_scrapes(self):
        servers = {d: mock.Mock(address=f"127.0.0.1:{7000 + d}", proc=mock.Mock(pid=100 + d))
                   for d in (1, 8)}
        ctx = {"cli": "dbpool", "postmaster": 42, "servers": servers}
        st = {"warmup_s": 2, "duration_s": 10}
        scrapes = [hist(100, 300.0, 10), hist(1100, 3300.0, 110)]
        with mock.patch.object(compare, "measure", return_value={"valid": True}) as measure, \
                mock.patch.object(depth, "scrape", side_effect=scrapes):
            rec = depth.run_one(ctx, st, 2, 64, 8, seq=7)
        (r, argv, warmup, duration, pids), _ = measure.call_args
        self.assertEqual(r, {"depth": 8, "concurrency": 64, "repeat": 2, "seq": 7})
        self.assertEqual(argv, stack.bench_argv("dbpool", "127.0.0.1:7008", stack.QUERY_LOAD,
                                                64, 10, 2))
        self.assertEqual(pids, {"postmaster": 42, "dbpool_server": 108})
        self.assertEqual(rec["pipeline"], {"statements": 1000, "mean_depth": 3.0,
                                           "alone_share": 0.1})

    def test_runs_are_interleaved_by_repetition(self):
        order = compare.run_order(2, [64], [1, 4, 16])
        self.assertEqual(order, [(1, 64, 1), (1, 64, 4), (1, 64, 16),
                                 (2, 64, 4), (2, 64, 16), (2, 64, 1)])


class Summary(unittest.TestCase):
    def test_medians_of_the_valid_runs(self):
        runs = [run(8, 64, 1, 12000, pg=30, mean=3.0), run(8, 64, 2, 11000, pg=34, mean=3.2),
                run(8, 64, 3, 13000, pg=32, mean=3.1), run(8, 64, 4, 500, pg=99, valid=False)]
        e = depth.summarize(runs, [64], [8])["64"]["8"]
        self.assertEqual((e["runs"], e["valid_runs"]), (4, 3))
        self.assertEqual((e["throughput_median"], e["throughput_min"], e["throughput_max"]),
                         (12000, 11000, 13000))
        self.assertEqual(e["cpu_us_per_query_median"],
                         {"dbpool_server": 20.0, "postgres": 32, "client": 15.0, "total": 67.0})
        self.assertEqual(e["mean_depth_median"], 3.1)
        self.assertEqual(e["alone_share_median"], 0.5)

    def test_ratios_to_the_lowest_depth_per_repetition(self):
        # The second repetition is slower for both depths: per repetition
        # depth 8 is ahead each time, by 10 % and 20 %.
        runs = [run(1, 64, 1, 10000), run(8, 64, 1, 11000),
                run(1, 64, 2, 5000), run(8, 64, 2, 6000),
                run(1, 64, 3, 9000, valid=False), run(8, 64, 3, 9000)]
        e = depth.summarize(runs, [64], [1, 8])["64"]
        self.assertEqual(e["8"]["vs_lowest_depth_per_repeat"], [1.1, 1.2])
        self.assertAlmostEqual(e["8"]["vs_lowest_depth"], 9000 / 7500)
        self.assertEqual(e["1"]["vs_lowest_depth_per_repeat"], [1.0, 1.0])

    def test_a_depth_without_valid_runs(self):
        e = depth.summarize([run(2, 64, 1, 9000, valid=False)], [64], [2])["64"]["2"]
        self.assertEqual((e["valid_runs"], e["throughput_median"], e["mean_depth_median"]),
                         (0, None, None))
        self.assertIsNone(e["cpu_us_per_query_median"]["total"])

    def test_a_run_without_depth_figures(self):
        r = run(4, 64, 1, 9000)
        r["pipeline"] = None
        e = depth.summarize([r, run(4, 64, 2, 9000, mean=2.5)], [64], [4])["64"]["4"]
        self.assertEqual(e["mean_depth_median"], 2.5)


class Recommendation(unittest.TestCase):
    def pick(self, figures, concurrency=(64,)):
        summary = depth.summarize(runs_for(figures, concurrency), list(concurrency),
                                  sorted(figures))
        return depth.recommend(summary)

    def test_geometric_mean(self):
        self.assertAlmostEqual(depth.geometric_mean([1.2, 1.05]), (1.2 * 1.05) ** 0.5)
        self.assertAlmostEqual(depth.geometric_mean([2.0, None, 8.0]), 4.0)
        self.assertIsNone(depth.geometric_mean([]))
        self.assertIsNone(depth.geometric_mean([None, 0]))

    def test_the_fastest_depth(self):
        r = self.pick({1: (10000, 30.0), 4: (12000, 40.0), 8: (11000, 20.0)})
        self.assertEqual((r["depth"], r["best_depth"], r["tied"]), (4, 4, [4]))
        self.assertEqual((r["concurrency"], r["left_out"], r["lowest_depth"]), ([64], [], 1))
        self.assertAlmostEqual(r["ratio"], 1.2)
        self.assertEqual(set(r["ratios"]), {"1", "4", "8"})
        self.assertAlmostEqual(r["ratios"]["8"], 1.1)

    def test_the_geometric_mean_over_all_concurrencies_decides(self):
        # At 64 callers depth 4 is fastest (1.20 against 1.10), at 128
        # depth 16 (1.30 against 1.05); over both 16 wins, 1.196 to 1.122.
        summary = depth.summarize(
            runs_for({1: (10000, 30.0), 4: (12000, 30.0), 16: (11000, 30.0)}, [64]) +
            runs_for({1: (10000, 30.0), 4: (10500, 30.0), 16: (13000, 30.0)}, [128]),
            [64, 128], [1, 4, 16])
        r = depth.recommend(summary)
        self.assertEqual((r["depth"], r["tied"], r["concurrency"]), (16, [16], [64, 128]))
        self.assertAlmostEqual(r["ratios"]["16"], (1.1 * 1.3) ** 0.5)
        self.assertAlmostEqual(r["ratios"]["4"], (1.2 * 1.05) ** 0.5)
        self.assertEqual(r["ratios"]["1"], 1.0)

    def test_per_repetition_ratios_not_the_ratio_of_medians(self):
        # Within each repetition depth 4 runs 1.10 x depth 1 twice and depth
        # 8 1.05 x twice: 4 wins. The medians of the throughputs alone
        # would say 8 (10,500 / 8,000 against 7,000 / 8,000).
        runs = []
        for rep, figures in enumerate([{1: 10000, 4: 11000, 8: 10500},
                                       {1: 6000, 4: 6600, 8: 6300},
                                       {1: 8000, 4: 7000, 8: 12000}], 1):
            runs += [run(d, 64, rep, tp) for d, tp in figures.items()]
        summary = depth.summarize(runs, [64], [1, 4, 8])
        r = depth.recommend(summary)
        self.assertEqual((r["depth"], r["tied"]), (4, [4]))
        self.assertAlmostEqual(r["ratios"]["4"], 1.1)
        self.assertAlmostEqual(r["ratios"]["8"], 1.05)
        # A result stored without per-repetition ratios: the ratio of the
        # medians is all there is.
        for e in summary["64"].values():
            del e["vs_lowest_depth_per_repeat"]
        r = depth.recommend(summary)
        self.assertEqual(r["depth"], 8)
        self.assertAlmostEqual(r["ratios"]["8"], 10500 / 8000)

    def test_a_tie_goes_to_less_postgres_cpu(self):
        # 8 is fastest; 4 and 16 are within 3 % of it, 16 the cheapest for
        # PostgreSQL; 1 is cheaper still, but too slow to count.
        r = self.pick({1: (10000, 30.0), 4: (11700, 34.0), 8: (12000, 33.0), 16: (11900, 32.0)})
        self.assertEqual((r["depth"], r["best_depth"], r["tied"]), (16, 8, [4, 8, 16]))
        self.assertAlmostEqual(r["postgres_us_per_query"], 32.0)
        self.assertAlmostEqual(r["best_ratio"], 1.2)
        self.assertEqual((r["max_mean_depth"], r["max_shared_share"]), (3.2, 0.5))
        self.assertTrue(depth.engaged(r))

    def test_postgres_cpu_is_a_geometric_mean_over_the_concurrencies(self):
        # Tied at both; depth 4 is cheaper at 64 callers, depth 8 at 128, by
        # more: 8 has the lower geometric mean (sqrt(40 x 20) < sqrt(30 x 40)).
        summary = depth.summarize(
            runs_for({1: (10000, 50.0), 4: (12000, 30.0), 8: (12000, 40.0)}, [64]) +
            runs_for({1: (10000, 50.0), 4: (12000, 40.0), 8: (12000, 20.0)}, [128]),
            [64, 128], [1, 4, 8])
        r = depth.recommend(summary)
        self.assertEqual((r["depth"], r["tied"]), (8, [4, 8]))
        self.assertAlmostEqual(r["postgres_us_per_query"], (40 * 20) ** 0.5)

    def test_just_outside_three_percent_is_no_tie(self):
        r = self.pick({4: (11630, 20.0), 8: (12000, 33.0)})
        self.assertEqual((r["depth"], r["tied"], r["lowest_depth"]), (8, [8], 4))

    def test_equal_postgres_cpu_goes_to_the_lower_depth(self):
        r = self.pick({2: (11900, 30.0), 4: (12000, 30.0), 16: (11950, 30.0)},
                      concurrency=(64, 128))
        self.assertEqual((r["depth"], r["best_depth"], r["tied"]), (2, 4, [2, 4, 16]))

    def test_equal_figures_go_to_the_lower_depth(self):
        r = self.pick({1: (10000, 30.0), 4: (12000, 30.0), 8: (12000, 30.0)})
        self.assertEqual((r["depth"], r["best_depth"]), (4, 4))

    def test_a_missing_cpu_figure_never_wins_a_tie(self):
        figures = {2: (11900, 30.0), 4: (12000, 31.0)}
        runs = runs_for(figures, (64, 128))
        for r in runs:
            if r["depth"] == 2 and r["concurrency"] == 128:
                del r["cpu"]
        r = depth.recommend(depth.summarize(runs, [64, 128], [2, 4]))
        self.assertEqual((r["depth"], r["tied"]), (4, [2, 4]))

    def test_a_depth_without_valid_runs_somewhere_is_left_out(self):
        # Depth 8 is fastest at 64 callers but has no valid run at 128.
        runs = (runs_for({1: (10000, 30.0), 4: (11000, 30.0), 8: (14000, 30.0)}, [64]) +
                runs_for({1: (10000, 30.0), 4: (11000, 30.0)}, [128]) +
                [run(8, 128, 1, 14000, valid=False)])
        r = depth.recommend(depth.summarize(runs, [64, 128], [1, 4, 8]))
        self.assertEqual((r["depth"], r["concurrency"]), (4, [64, 128]))
        self.assertNotIn("8", r["ratios"])

    def test_a_concurrency_without_the_lowest_depth_is_left_out(self):
        runs = (runs_for({1: (10000, 30.0), 8: (12000, 30.0)}, [64]) +
                runs_for({4: (10000, 30.0), 8: (9000, 30.0)}, [128]) +
                [run(1, 128, 1, 9000, valid=False)])
        r = depth.recommend(depth.summarize(runs, [64, 128], [1, 4, 8]))
        self.assertEqual((r["depth"], r["concurrency"], r["left_out"]), (8, [64], [128]))
        # Depth 4 has no run at 64 callers.
        self.assertEqual(set(r["ratios"]), {"1", "8"})
        self.assertIn("Over the concurrencies at which depth 1 has valid runs (64 callers), "
                      "depth 8 has the best", depth.recommendation_text(r, 8))

    def test_engaged(self):
        self.assertTrue(depth.engaged({"max_shared_share": 0.1}))
        self.assertFalse(depth.engaged({"max_shared_share": 0.09}))
        # Depth 1 alone says nothing about pipelining.
        self.assertTrue(depth.engaged(self.pick({1: (10000, 30.0)})))

    def test_engaged_at_any_concurrency_counts(self):
        runs = runs_for({1: (10000, 30.0), 8: (12000, 30.0)}, [64, 128])
        for r in runs:
            r["pipeline"]["alone_share"] = 0.7 if (r["depth"], r["concurrency"]) == (8, 128) \
                else 0.97
        r = depth.recommend(depth.summarize(runs, [64, 128], [1, 8]))
        self.assertAlmostEqual(r["max_shared_share"], 0.3)
        self.assertTrue(depth.engaged(r))

    def test_nothing_valid(self):
        runs = [run(8, 64, 1, 12000, valid=False)]
        self.assertIsNone(depth.recommend(depth.summarize(runs, [64], [8])))
        # Nor with valid runs of other depths only: nothing to compare with.
        runs = [run(1, 64, 1, 10000, valid=False), run(8, 64, 1, 12000)]
        self.assertIsNone(depth.recommend(depth.summarize(runs, [64], [1, 8])))

    def test_the_engine_rule_the_report_describes(self):
        root = stack.REPO_ROOT / "server" / "engine"
        loop = (root / "loop_engine.cc").read_text()
        profiles = (root / "statement_profiles.cc").read_text()
        self.assertIn(f"kShareBelow = absl::Milliseconds({depth.SHARE_BELOW_MS});", loop)
        self.assertIn(f"kOutlier = {depth.OUTLIER_TIMES};", profiles)
        self.assertIn("(service - p.service) / 8", profiles)


class Report(unittest.TestCase):
    def setUp(self):
        # The server's default as the run recorded it, unless a test says.
        patcher = mock.patch.object(depth, "server_default_depth", return_value=None)
        self.now = patcher.start()
        self.addCleanup(patcher.stop)

    def render(self, d):
        return depth.render(d, "bench/results/pipeline-depth-2026-12-02-0600.json",
                            "docs/BENCHMARKS-pipeline-depth.md")

    def test_tables_and_recommendation(self):
        md = self.render(doc(concurrency=(64, 128)))
        self.assertTrue(md.startswith(
            "# Pipeline depth: dbpool's point select at DB_PIPELINE_DEPTH 1, 2, 4, 8 and 16\n"))
        self.assertIn("[`bench/results/pipeline-depth-2026-12-02-0600.json`]"
                      "(../bench/results/pipeline-depth-2026-12-02-0600.json)", md)
        self.assertIn("## 64 callers\n", md)
        self.assertIn("## 128 callers\n", md)
        # Depth 8 at 64 callers: throughput of the middle repetition, min and
        # max 1 % either side, 1.21 × depth 1; CPU 20 + 33 + 15.
        self.assertIn("| 8 | 12,100 | 11,979 – 12,221 | 1.21 [1.21–1.21] | 4.76 | 15.87 | 20.0 | "
                      "33.0 | 15.0 | 68.0 | 3.20 | 50% | 0 | 3 of 3 |", md)
        self.assertIn("| 1 | 10,000 | 9,900 – 10,100 | 1.00 [1.00–1.00] |", md)
        self.assertIn("(3.2 at 64, 6.4 at 128 callers)", md)
        # 4, 8 and 16 are within 3 % of 8; 8 has the least PostgreSQL CPU.
        self.assertIn("**Recommended default: `DB_PIPELINE_DEPTH=8`.** Over all the "
                      "concurrencies measured (64 and 128 callers), depths 4 (1.20), 8 (1.21) "
                      "and 16 (1.18) are within 3% of the best geometric mean of the throughput "
                      "ratio to depth 1 (at each concurrency the median of the per-repetition "
                      "ratios), which counts as a tie; of those, depth 8 costs PostgreSQL the "
                      "least CPU per query (33.0 µs, geometric mean of the medians; equal "
                      "figures go to the lower depth).", md)
        self.assertIn("The server's default (`server/config/config.cc`) is 8: this run "
                      "supports it.", md)
        self.assertIn("`--db-pool-max-connections=20 --db-pool-min-connections=20 "
                      "--log-level=warn --shutdown-grace-ms=2000 --db-pipeline-depth=D`", md)
        self.assertNotIn("Quick mode", md)
        self.assertNotIn("hardly engaged", md)

    def test_a_clear_winner_that_is_not_the_default(self):
        md = self.render(doc({1: (10000, 30.0), 2: (11000, 30.0), 4: (13000, 30.0)}, default=8))
        self.assertIn("**Recommended default: `DB_PIPELINE_DEPTH=4`.** Over all the "
                      "concurrencies measured (64 callers), depth 4 has the best geometric "
                      "mean of the throughput ratio to depth 1 (at each concurrency the median "
                      "of the per-repetition ratios): 1.30; no other depth came within 3% of it "
                      "(next: depth 2, 1.10).", md)
        self.assertIn("is 8: this run suggests 4 instead.", md)

    def test_the_default_is_the_server_s_now(self):
        self.now.return_value = 4
        md = self.render(doc({1: (10000, 30.0), 4: (13000, 30.0)}, default=8))
        self.assertIn("The server's default (`server/config/config.cc`) is 4 (it was 8 when "
                      "this run was made): this run supports it.", md)
        self.now.return_value = 8
        self.assertIn("is 8: this run suggests 4 instead.",
                      self.render(doc({1: (10000, 30.0), 4: (13000, 30.0)}, default=8)))

    def test_quick_and_missing_figures(self):
        d = doc({1: (10000, 30.0), 4: (13000, 30.0)}, quick=True)
        for r in d["runs"]:
            if r["depth"] == 4:
                r["valid"] = False
        d["summary"] = depth.summarize(d["runs"], [64], [1, 4])
        md = self.render(d)
        self.assertIn("> **Quick mode (`DEPTH_QUICK=1`)**", md)
        self.assertIn("| 4 | — | — – — | — | — | — | — | — | — | — | — | — | 0 | 0 of 3 |", md)
        self.assertIn("| 1 | 10,000 | 9,900 – 10,100 | 1.00 [1.00–1.00] |", md)
        self.assertIn("`DB_PIPELINE_DEPTH=1`.** Over all the concurrencies measured (64 "
                      "callers), depth 1 has the best geometric mean", md)
        self.assertIn("1.00; no other depth came within 3% of it.", md)

    def test_pipelining_that_did_not_engage_is_said(self):
        d = doc(concurrency=(64, 128))
        self.assertEqual(d["recommendation"]["max_mean_depth"], 6.4)
        for r in d["runs"]:
            r["pipeline"]["mean_depth"] = 1.0 + r["depth"] / 100
            r["pipeline"]["alone_share"] = 1.0 - r["depth"] / 200
        d["summary"] = depth.summarize(d["runs"], [64, 128], [1, 2, 4, 8, 16])
        d["recommendation"] = depth.recommend(d["summary"])
        self.assertEqual(d["recommendation"]["depth"], 8)
        md = self.render(d)
        self.assertIn("**But pipelining hardly engaged**: at every concurrency and bound, at "
                      "least 92% of the statements ran alone on their connection (mean depth at "
                      "most 1.16)", md)
        self.assertIn("The engine shares a statement only while the moving average (1/8 per "
                      "run) of its time in the backend stays under 2 ms (`kShareBelow` in "
                      "`server/engine/loop_engine.cc`, `server/engine/statement_profiles.h`); "
                      "one run of 20 ms or more stops sharing at once.", md)
        self.assertNotIn("1 ms", md)
        self.assertIn("is 8: this run is no ground to change it, nor evidence for it.", md)

    def test_no_recommendation(self):
        self.assertIn("No recommendation", depth.recommendation_text(None, 8))


class Command(unittest.TestCase):
    def test_render_a_stored_result(self):
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        self.assertIs(cli_main.COMMANDS["pipeline-depth"], depth.main)
        with tempfile.TemporaryDirectory() as tmp:
            result, md = os.path.join(tmp, "r.json"), os.path.join(tmp, "r.md")
            with open(result, "w") as f:
                json.dump(doc(), f)
            self.assertEqual(cli_main.main(["render", "pipeline-depth", result, "--md", md]), 0)
            with open(md) as f:
                self.assertIn("`DB_PIPELINE_DEPTH=8`", f.read())


if __name__ == "__main__":
    unittest.main()
