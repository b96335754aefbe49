"""Issue 9's goals judged on small made-up summaries."""
import unittest

from dbpoolbench import compare_report
from dbpoolbench.compare_report import GOALS, MET, NOT_MEASURED, NOT_MET, judge


def entry(server_cpu=None, postgres_cpu=None, server_switches=None):
    return {"cpu_us_per_query_median": {"dbpool_server": server_cpu, "postgres": postgres_cpu},
            "ctx_switches_per_query_median": {"dbpool_server": server_switches}}


def ratio(x):
    return {"ratio_of_medians": x, "per_repeat": [x], "min": x, "max": x}


def summary(levels=(64, 128), c_cpu=60, f_cpu=50, switches=0.9, c_pg=40, a_pg=44,
            c_over_b=0.9, c_over_d=2.5, c_over_e=4.5):
    out = {}
    for n in levels:
        out[str(n)] = {"A": entry(postgres_cpu=a_pg), "B": entry(),
                       "C": entry(c_cpu, c_pg, switches), "D": entry(), "E": entry(),
                       "F": entry(f_cpu), "C/A": ratio(0.5), "C/B": ratio(c_over_b),
                       "C/D": ratio(c_over_d), "C/E": ratio(c_over_e)}
    return out


def without(s, *systems):
    return {n: {k: v for k, v in e.items() if not any(x in k for x in systems)}
            for n, e in s.items()}


class Goals(unittest.TestCase):
    def verdict(self, goal, s):
        return judge(GOALS[goal], s)[0]

    def test_all_met(self):
        s = summary()
        self.assertEqual({g: self.verdict(g, s) for g in GOALS}, dict.fromkeys(GOALS, MET))

    def test_server_cpu_over_its_floor(self):
        self.assertEqual(self.verdict("floor", summary(c_cpu=75, f_cpu=50)), MET)
        self.assertEqual(self.verdict("floor", summary(c_cpu=76, f_cpu=50)), NOT_MET)
        self.assertEqual(self.verdict("floor", without(summary(), "F")), NOT_MEASURED)
        verdict, figures = judge(GOALS["floor"], summary(levels=(64,), c_cpu=60, f_cpu=50))
        self.assertEqual((verdict, figures), (NOT_MEASURED,
                                              ["60 vs 50 µs (1.20×) at 64", "not measured at 128"]))

    def test_a_miss_outweighs_a_point_not_measured(self):
        self.assertEqual(self.verdict("floor", summary(levels=(64,), c_cpu=200)), NOT_MET)

    def test_server_switches(self):
        self.assertEqual(self.verdict("switches", summary(switches=1.0)), MET)
        self.assertEqual(self.verdict("switches", summary(switches=1.1)), NOT_MET)
        self.assertEqual(self.verdict("switches", summary(levels=(8, 128))), NOT_MEASURED)

    def test_postgres_cpu_behind_dbpool(self):
        self.assertEqual(self.verdict("postgres", summary(c_pg=44, a_pg=44)), MET)
        self.assertEqual(self.verdict("postgres", summary(c_pg=74, a_pg=44)), NOT_MET)
        self.assertEqual(self.verdict("postgres", without(summary(), "A")), NOT_MEASURED)

    def test_throughput_against_pgbouncer(self):
        self.assertEqual(self.verdict("pgbouncer", summary(c_over_b=0.8)), MET)
        self.assertEqual(self.verdict("pgbouncer", summary(c_over_b=0.79)), NOT_MET)
        self.assertEqual(self.verdict("pgbouncer", without(summary(), "B")), NOT_MEASURED)

    def test_throughput_against_the_peers(self):
        self.assertEqual(self.verdict("go", summary(c_over_d=1.9)), NOT_MET)
        self.assertEqual(self.verdict("node", summary(c_over_e=3.9)), NOT_MET)
        self.assertEqual(self.verdict("go", without(summary(), "D")), NOT_MEASURED)
        self.assertEqual(self.verdict("node", without(summary(), "E")), NOT_MEASURED)

    def test_a_system_without_figures_misses(self):
        self.assertEqual(self.verdict("floor", summary(f_cpu=None)), NOT_MET)
        self.assertEqual(self.verdict("pgbouncer", summary(c_over_b=None)), NOT_MET)

    def test_the_section(self):
        lines = compare_report.goals_section(without(summary(), "F"))
        self.assertEqual(lines[2], "| dbpool-server CPU per Query ÷ per call of its gRPC floor "
                                   "(C vs F) | ≤ 1.5× at 64 and 128 callers | not measured at 64; "
                                   "not measured at 128 | not measured |")
        self.assertEqual(lines[3], "| dbpool-server context switches per query (C) | ≤ 1 at 64 "
                                   "callers | 0.9 at 64 | **MET** |")
        self.assertEqual(lines[-1], "Reported beside them, throughput C/A: 0.50 [0.50–0.50] at "
                                    "64; 0.50 [0.50–0.50] at 128.")
        self.assertNotIn("C/A", "\n".join(compare_report.goals_section(without(summary(), "A"))))


if __name__ == "__main__":
    unittest.main()
