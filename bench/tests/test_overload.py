"""bench/overload: settings, rate, pg_stat_activity samples, the goal and
the report, on made-up figures."""
import io
import unittest

from dbpoolbench import overload
from dbpoolbench.settings import Env, SettingsError


def doc(capacity=10000, goodput=9500, longest_ms=120, over_limit=0, samples=1000,
        codes=None):
    return {
        "git": "abc1234",
        "settings": {"factor": 3.0, "deadline_ms": 50, "duration_s": 20,
                     "capacity_callers": 64, "capacity_duration_s": 5,
                     "build_dir": "build-release"},
        "capacity_rps": capacity,
        "capacity_latency_ms": {"p50": 5.1, "p95": 8.0, "p99": 11.25, "p999": 15.0, "max": 20.0},
        "offered_rps": 3 * capacity,
        "duration_s": 20.0,
        "requests": 600000,
        "ok": goodput * 20,
        "goodput_rps": goodput,
        "errors_by_code": {"DEADLINE_EXCEEDED": 410000, "client_overload": 0}
        if codes is None else codes,
        "latency_ms": {"p50": 1.5, "p95": 40.0, "p99": 49.5, "p999": 50.2, "max": 51.3},
        "activity": {"samples": samples, "longest_ms": longest_ms, "most_active": 20,
                     "samples_over_limit": over_limit, "limit_ms": 150},
    }


class Settings(unittest.TestCase):
    def test_defaults(self):
        st = overload.settings_from(Env({}))
        self.assertEqual((st["factor"], st["deadline_ms"], st["duration_s"], st["statement_ms"]),
                         (3, 100, 20, 20))
        self.assertEqual((st["capacity_callers"], st["capacity_duration_s"]), (64, 5))
        self.assertEqual(st["report"], "docs/BENCHMARKS-overload.md")

    def test_values(self):
        st = overload.settings_from(Env({"OVERLOAD_FACTOR": "2.5", "OVERLOAD_DEADLINE": "1s",
                                         "OVERLOAD_DURATION": "1m",
                                         "OVERLOAD_REPORT": "/tmp/o.md"}))
        self.assertEqual((st["factor"], st["deadline_ms"], st["duration_s"], st["report"]),
                         (2.5, 1000, 60, "/tmp/o.md"))

    def test_errors_name_the_setting(self):
        for name, value in [("OVERLOAD_FACTOR", "0.5"), ("OVERLOAD_FACTOR", "three"),
                            ("OVERLOAD_DEADLINE", "50us"), ("OVERLOAD_DEADLINE", "0"),
                            ("OVERLOAD_DURATION", "0s"), ("OVERLOAD_CAPACITY_CALLERS", "0")]:
            with self.assertRaisesRegex(SettingsError, name):
                overload.settings_from(Env({name: value}))


class Rate(unittest.TestCase):
    def test_query_load(self):
        self.assertEqual(overload.query_load(0), overload.stack.QUERY_LOAD)
        sql = overload.query_load(20)[1]
        self.assertIn("pg_sleep(0.02)", sql)
        self.assertIn("WHERE aid = $1", sql)

    def test_render_names_the_statement_length(self):
        d = doc()
        d["settings"]["statement_ms"] = 20
        self.assertIn("made to last 20 ms with pg_sleep", overload.render(d))
        self.assertNotIn("pg_sleep", overload.render(doc()))

    def test_capacity_counts_ok_calls(self):
        self.assertEqual(overload.ok_rate({"ok": 50000, "requests": 50010,
                                            "duration_s": 5.0}), 10000)

    def test_offered_rate(self):
        self.assertEqual(overload.offered_rate(10000.4, 3), 30001)
        self.assertEqual(overload.offered_rate(1234.5, 2.5), 3086)
        self.assertEqual(overload.offered_rate(0.1, 3), 1)


class Activity(unittest.TestCase):
    def test_parse_sample(self):
        self.assertEqual(overload.parse_sample("3|17\n"), (3, 17))
        self.assertEqual(overload.parse_sample("0|0"), (0, 0))
        self.assertIsNone(overload.parse_sample(""))
        self.assertIsNone(overload.parse_sample("ERROR:  relation does not exist"))
        self.assertIsNone(overload.parse_sample("3|-1"))

    def test_sampler_reads_one_row_per_statement_until_psql_ends(self):
        class Psql:
            stdin = io.StringIO()
            stdout = io.StringIO("1|5\nWARNING: x\n2|7\n")
        sampler = overload.ActivitySampler(Psql, limit_s=10)
        sampler.run()
        self.assertEqual(sampler.samples, [(1, 5), (2, 7)])
        self.assertEqual(Psql.stdin.getvalue(), overload.ACTIVITY_SQL * 4)

    def test_reduce(self):
        r = overload.reduce_samples([(2, 10), (20, 151), (5, 150), (0, 0)], 150)
        self.assertEqual(r, {"samples": 4, "longest_ms": 151, "most_active": 20,
                             "samples_over_limit": 1, "limit_ms": 150})

    def test_reduce_nothing(self):
        r = overload.reduce_samples([], 150)
        self.assertEqual((r["samples"], r["longest_ms"], r["samples_over_limit"]), (0, None, 0))


class Goal(unittest.TestCase):
    def test_met(self):
        self.assertEqual(overload.judge(doc(goodput=9000)), (0.9, True, True, True))

    def test_goodput_short(self):
        share, goodput_met, statements_met, met = overload.judge(doc(goodput=8999))
        self.assertEqual((goodput_met, statements_met, met), (False, True, False))
        self.assertAlmostEqual(share, 0.8999)

    def test_a_statement_past_its_deadline(self):
        self.assertEqual(overload.judge(doc(longest_ms=400, over_limit=3))[1:],
                         (True, False, False))

    def test_no_samples_is_not_met(self):
        self.assertEqual(overload.judge(doc(samples=0, longest_ms=None))[1:],
                         (True, False, False))

    def test_no_capacity(self):
        self.assertEqual(overload.judge(doc(capacity=0, goodput=0))[:2], (0, False))


class Report(unittest.TestCase):
    def test_met(self):
        md = overload.render(doc())
        self.assertTrue(md.startswith("# Overload: deadline-aware admission at 3× capacity\n"))
        for row in ["| capacity (closed loop, OK calls/s) | 10,000 |",
                    "| capacity run p50 / p99 (ms) | 5.10 / 11.25 |",
                    "| offered rate (calls/s) | 30,000 |",
                    "| goodput (OK calls/s) | 9,500 |",
                    "| goodput ÷ capacity | 95% |",
                    "| DEADLINE_EXCEEDED (refused by admission, or expired) | 410,000 |",
                    "| other errors | client_overload 0 |",
                    "| latency of all calls p50 / p95 / p99 / max (ms) | "
                    "1.50 / 40.00 / 49.50 / 51.3 |",
                    "| longest-running statement seen (ms) | 120 |",
                    "| limit: deadline + 100 ms | 150 |",
                    "| samples over the limit | 0 |"]:
            self.assertIn(row, md)
        self.assertIn("every call with a\n50 ms deadline", md)
        self.assertIn("Issue 9's item 5: **met**.", md)

    def test_not_met(self):
        md = overload.render(doc(goodput=5000, longest_ms=2100, over_limit=12,
                                 codes={"DEADLINE_EXCEEDED": 5, "UNAVAILABLE": 7}))
        self.assertIn("Goodput at least 90% of capacity: NOT met.", md)
        self.assertIn("after its caller's deadline:\nNOT met.", md)
        self.assertIn("Issue 9's item 5: **NOT met**.", md)
        self.assertIn("| other errors | UNAVAILABLE 7 |", md)
        self.assertIn("| longest-running statement seen (ms) | 2,100 |", md)

    def test_no_other_errors(self):
        self.assertIn("| other errors | none |",
                      overload.render(doc(codes={"DEADLINE_EXCEEDED": 1})))


if __name__ == "__main__":
    unittest.main()
