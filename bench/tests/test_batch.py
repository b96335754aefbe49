"""bench/batch: settings, the pgbench pipeline script, the command lines,
figures per statement, the medians, the goals and the report, on made-up
figures."""
import json
import os
import tempfile
import unittest
from pathlib import Path
from unittest import mock

from dbpoolbench import __main__ as cli_main
from dbpoolbench import batch, compare, stack
from dbpoolbench.settings import Env, SettingsError

ST, _ = batch.settings_from(Env({}))
ST["database_size"] = "157 MB"

# Per system: calls/s and CPU µs per call of each process involved.
FIGURES = {
    "U": (5000.0, {"postgres": 140.0, "dbpool_server": 150.0, "client": 30.0}),
    "I": (90.0, {"postgres": 12000.0, "dbpool_server": 6000.0, "client": 2000.0}),
    "S": (400.0, {"postgres": 2500.0, "dbpool_server": 1500.0, "client": 600.0}),
    "B": (9000.0, {"postgres": 140.0, "pgbouncer": 27.0, "client": 18.0}),
    "P": (7000.0, {"postgres": 230.0, "client": 23.0}),
    "Q": (6000.0, {"postgres": 130.0, "dbpool_server": 135.0, "client": 30.0}),
}


def run(system, rep, tp, cpu, valid=True):
    """A run record as compare.measure leaves it, then per_statement."""
    per = dict(cpu)
    rec = {"system": system, "concurrency": batch.clients(system, ST), "repeat": rep, "seq": 0,
           "valid": valid, "throughput": tp, "errors": 0, "requests": int(tp * 10),
           "ok": int(tp * 10), "latency_ms": {"p50": 20 / tp * 1000, "p99": 60 / tp * 1000},
           "cpu": {"us_per_query": per, "ctx_switches_per_query": {k: 2.0 for k in per},
                   "cores_used": {k: v * tp / 1e6 for k, v in per.items()},
                   "others_pct": 1.0, "irq_softirq_pct": 5.0, "steal_pct": 0.0},
           "before": {"settle_s": 1.0, "others_pct_before": 0.0, "quiet": True}}
    return batch.per_statement(rec, batch.per_call(system, ST))


def runs_for(figures=FIGURES, repeats=3):
    """Every system in every repetition, the repetitions 1 % apart."""
    return [run(x, rep, tp * (1 + (rep - 2) / 100), cpu)
            for rep in range(1, repeats + 1) for x, (tp, cpu) in figures.items()]


def doc(figures=FIGURES, quick=False):
    runs = runs_for(figures)
    systems = [x for x in batch.SYSTEMS if x in figures]
    summary = batch.summarize(runs, systems)
    st = dict(ST, systems=systems, quick=quick)
    return {"meta": {"started_utc": "2026-12-02T10:00:00Z", "finished_utc": "2026-12-02T10:06:00Z",
                     "loadavg_start": "0.50 0.40 0.30", "settings": st,
                     "versions": {"postgres": "postgres (PostgreSQL) 15.18",
                                  "pgbouncer": "PgBouncer 1.18.0",
                                  "pgbench": "pgbench (PostgreSQL) 15.18",
                                  "dbpool": "0.1.0, git abc1234, Release build"},
                     "machine": {"nproc": 2, "cpu_model": "Test CPU", "memory": "23.5 GiB",
                                 "kernel": "6.1.0"}},
            "summary": summary, "goals": batch.judge(runs, summary), "runs": runs}


class Settings(unittest.TestCase):
    def test_defaults(self):
        st, report = batch.settings_from(Env({}))
        self.assertEqual(st["systems"], ["U", "I", "S", "B", "P", "Q"])
        self.assertEqual((st["repeats"], st["duration_s"], st["warmup_s"]), (3, 10, 2))
        self.assertEqual((st["insert_rows"], st["insert_clients"]), (1000, 20))
        self.assertEqual((st["select_batch"], st["select_clients"], st["pipeline"]),
                         (100, 20, 10))
        self.assertEqual(st["build_dir"], "build-release")
        self.assertEqual(st["sql"], stack.POINT_SELECT)
        self.assertEqual(report, "docs/BENCHMARKS-batch.md")
        self.assertFalse(st["quick"])

    def test_quick_is_short_and_leaves_the_report_alone(self):
        st, report = batch.settings_from(Env({"BATCH_QUICK": "1"}))
        self.assertEqual((st["repeats"], st["duration_s"]), (1, 3))
        self.assertEqual(st["systems"], list(batch.SYSTEMS))
        self.assertEqual(report, "bench/results/BENCHMARKS-batch-quick.md")

    def test_values(self):
        st, report = batch.settings_from(Env({
            "BATCH_SYSTEMS": "s,i u", "BATCH_REPEATS": "5", "BATCH_DURATION": "1m",
            "BATCH_INSERT_ROWS": "500", "BATCH_SELECT_SIZE": "50", "BATCH_PIPELINE": "20",
            "BATCH_SELECT_CLIENTS": "40", "BATCH_REPORT": "/tmp/b.md"}))
        self.assertEqual(st["systems"], ["U", "I", "S"])
        self.assertEqual((st["repeats"], st["duration_s"], st["insert_rows"],
                          st["select_batch"], st["pipeline"], st["select_clients"]),
                         (5, 60, 500, 50, 20, 40))
        self.assertEqual(report, "/tmp/b.md")
        self.assertEqual(st["postgres_max_connections"], 200)

    def test_errors_name_the_setting(self):
        for name, value in [("BATCH_SYSTEMS", "X"), ("BATCH_SYSTEMS", " , "),
                            ("BATCH_REPEATS", "0"), ("BATCH_DURATION", "0s"),
                            ("BATCH_WARMUP", "1s"), ("BATCH_INSERT_ROWS", "0"),
                            ("BATCH_SELECT_SIZE", "10001"), ("BATCH_PIPELINE", "x")]:
            with self.assertRaisesRegex(SettingsError, name):
                batch.settings_from(Env({name: value}))


class Loads(unittest.TestCase):
    def test_pipeline_script(self):
        script = batch.pipeline_script(10).splitlines()
        self.assertEqual(script[:10], [f"\\set aid{i} random(1, 1000000)" for i in range(1, 11)])
        self.assertEqual(script[10], "\\startpipeline")
        self.assertEqual(script[11:21], [f"SELECT abalance FROM pgbench_accounts WHERE aid = "
                                         f":aid{i};" for i in range(1, 11)])
        self.assertEqual(script[21:], ["\\endpipeline"])

    def test_statements_per_call(self):
        self.assertEqual({x: batch.per_call(x, ST) for x in batch.SYSTEMS},
                         {"U": 1, "I": 1000, "S": 100, "B": 1, "P": 10, "Q": 1})

    def test_dbpool_command_lines(self):
        ctx = {"cli": "dbpool", "target": "127.0.0.1:7000"}
        argv = batch.dbpool_argv(ctx, ST, "I")
        self.assertEqual(argv[:4], ["dbpool", "bench", "--target", "127.0.0.1:7000"])
        self.assertEqual(argv[argv.index("--sql") + 1], batch.INSERT_SQL)
        self.assertEqual(argv[argv.index("--batch") + 1], "1000")
        self.assertEqual(argv[argv.index("--concurrency") + 1], "20")
        self.assertIn("seq:1", argv)
        argv = batch.dbpool_argv(ctx, ST, "S")
        self.assertEqual(argv[argv.index("--sql") + 1], stack.POINT_SELECT)
        self.assertEqual(argv[argv.index("--batch") + 1], "100")
        self.assertIn("rand:1:1000000", argv)
        for unary in "UQ":
            self.assertNotIn("--batch", batch.dbpool_argv(ctx, ST, unary))
        self.assertIn("--json", argv)

    def test_pgbench_command_lines(self):
        ctx = {"pgbench": "pgbench", "ports": {"B": 6432, "P": 5432},
               "scripts": {"B": "select.sql", "P": "pipeline.sql"}}
        p = batch.pgbench_argv(ctx, ST, "P", "/tmp/x")
        self.assertEqual(p[p.index("-M") + 1], "prepared")
        self.assertEqual(p[p.index("-p") + 1], "5432")
        self.assertEqual(p[p.index("-f") + 1], "pipeline.sql")
        self.assertEqual((p[p.index("-c") + 1], p[p.index("-j") + 1]), ("20", "2"))
        b = batch.pgbench_argv(ctx, ST, "B", "/tmp/x")
        self.assertEqual((b[b.index("-M") + 1], b[b.index("-p") + 1]), ("simple", "6432"))

    def test_runs_are_interleaved_by_repetition(self):
        self.assertEqual(batch.run_order(2, ["U", "I", "S"]),
                         [(1, "U"), (1, "I"), (1, "S"), (2, "I"), (2, "S"), (2, "U")])

    def test_an_insert_run_with_fewer_rows_than_it_counted_is_invalid(self):
        ctx = {"cli": "dbpool", "target": "t", "pids": {"postmaster": 1}}
        measured = {"system": "I", "valid": True, "throughput": 10.0, "ok": 100,
                    "errors": 0, "latency_ms": {}}
        with mock.patch.object(compare, "measure", return_value=dict(measured)), \
                mock.patch.object(batch, "table_rows", return_value=100000):
            rec = batch.run_one(ctx, ST, 1, "I", seq=1)
        self.assertTrue(rec["valid"])
        self.assertEqual((rec["statements_per_s"], rec["table_rows"]), (10000.0, 100000))
        with mock.patch.object(compare, "measure", return_value=dict(measured)), \
                mock.patch.object(batch, "table_rows", return_value=99999):
            rec = batch.run_one(ctx, ST, 1, "I", seq=1)
        self.assertFalse(rec["valid"])
        self.assertIn("fewer than the 100000", rec["invalid_reason"])


class Figures(unittest.TestCase):
    def test_per_statement(self):
        rec = run("S", 1, 400.0, FIGURES["S"][1])
        self.assertEqual(rec["statements_per_s"], 40000.0)
        self.assertEqual(rec["cpu"]["us_per_statement"],
                         {"postgres": 25.0, "dbpool_server": 15.0, "client": 6.0})
        self.assertEqual(rec["cpu"]["ctx_switches_per_statement"]["postgres"], 0.02)
        # The per-call figures stay as measured.
        self.assertEqual(rec["cpu"]["us_per_query"]["postgres"], 2500.0)

    def test_per_statement_without_cpu(self):
        rec = batch.per_statement({"throughput": 3.0}, 1000)
        self.assertEqual((rec["statements_per_s"], rec["per_call"]), (3000.0, 1000))

    def test_summary(self):
        s = doc()["summary"]
        self.assertEqual(s["I"]["statements_per_s_median"], 90000.0)
        self.assertEqual(s["I"]["per_call"], 1000)
        self.assertAlmostEqual(s["S"]["cpu_us_per_statement_median"]["total"], 46.0)
        self.assertEqual(s["S"]["cpu_us_per_call_median"]["dbpool_server"], 1500.0)
        self.assertEqual(s["P"]["cpu_us_per_statement_median"],
                         {"postgres": 23.0, "client": 2.3, "total": 25.3})
        self.assertNotIn("dbpool_server", s["B"]["cpu_us_per_statement_median"])

    def test_invalid_runs_leave_the_medians(self):
        runs = runs_for()
        bad = next(r for r in runs if r["system"] == "S" and r["repeat"] == 3)
        bad["valid"] = False
        e = batch.summarize(runs, ["S"])["S"]
        self.assertEqual((e["runs"], e["valid_runs"]), (3, 2))
        self.assertLess(e["statements_per_s_max"], bad["statements_per_s"])


class Goals(unittest.TestCase):
    def test_all_met(self):
        g = doc()["goals"]
        self.assertEqual({k: v["verdict"] for k, v in g.items()}, dict.fromkeys(g, batch.MET))
        self.assertAlmostEqual(g["insert"]["value"], 18.0)
        self.assertAlmostEqual(g["cpu"]["value"], 15.0 / 27.0)
        self.assertAlmostEqual(g["pipeline"]["value"], 40000.0 / 70000.0)
        self.assertEqual(len(g["insert"]["per_repeat"]), 3)
        self.assertAlmostEqual(g["insert"]["min"], 18.0)

    def test_not_met_and_by_how_much(self):
        figures = dict(FIGURES, I=(40.0, FIGURES["I"][1]), S=(300.0, {
            "postgres": 2500.0, "dbpool_server": 3000.0, "client": 600.0}))
        g = doc(figures)["goals"]
        self.assertEqual(g["insert"]["verdict"], batch.NOT_MET)
        self.assertEqual(batch.margin_text(g["insert"]), "20% short of the target")
        self.assertEqual(g["cpu"]["verdict"], batch.NOT_MET)
        self.assertEqual(batch.margin_text(g["cpu"]), "11% over the limit")
        self.assertEqual(batch.margin_text(g["pipeline"]), "14% short of the target")

    def test_margins_of_met_goals(self):
        g = doc()["goals"]
        self.assertEqual(batch.margin_text(g["insert"]), "1.80× the target")
        self.assertEqual(batch.margin_text(g["cpu"]), "44% under the limit")

    def test_a_system_left_out_is_not_measured(self):
        g = doc({k: v for k, v in FIGURES.items() if k != "P"})["goals"]
        self.assertEqual(g["pipeline"]["verdict"], batch.NOT_MEASURED)
        self.assertEqual(batch.margin_text(g["pipeline"]), "not measured")
        self.assertEqual(g["cpu"]["verdict"], batch.MET)

    def test_every_run_invalid_misses_the_goal(self):
        runs = runs_for()
        for r in runs:
            if r["system"] == "B":
                r["valid"] = False
        g = batch.judge(runs, batch.summarize(runs, list(batch.SYSTEMS)))
        self.assertEqual(g["cpu"]["verdict"], batch.NOT_MET)
        self.assertEqual(g["cpu"]["per_repeat"], [])

    def test_server_cost_split(self):
        # Q: 135 µs a call of 1; S: 1,500 µs a call of 100.
        fixed_us, each, n = batch.server_cost_split(doc()["summary"])
        self.assertAlmostEqual(each, (1500 - 135) / 99)
        self.assertAlmostEqual(fixed_us + each, 135)
        self.assertEqual(n, 100)
        self.assertIsNone(batch.server_cost_split(
            doc({k: v for k, v in FIGURES.items() if k != "Q"})["summary"]))


class Report(unittest.TestCase):
    def setUp(self):
        cwd = os.getcwd()
        os.chdir(stack.REPO_ROOT)
        self.addCleanup(os.chdir, cwd)

    def render(self, d):
        return batch.render(d, "bench/results/batch-x.json", "docs/BENCHMARKS-batch.md")

    def test_goals_table(self):
        md = self.render(doc())
        self.assertIn("[`bench/results/batch-x.json`](../bench/results/batch-x.json)", md)
        rows = [line for line in md.splitlines() if line.startswith("| A 1,000-row insert")]
        self.assertEqual(len(rows), 1)
        self.assertIn("90,000 vs 5,000 rows/s: **18.00×** [18.00–18.00]", rows[0])
        self.assertIn("| **MET** | 1.80× the target |", rows[0])
        self.assertIn("15.0 vs 27.0 µs: **0.56×**", md)
        self.assertNotIn("Quick mode", md)

    def test_reasons_of_goals_not_met(self):
        figures = dict(FIGURES, S=(300.0, {"postgres": 2500.0, "dbpool_server": 3000.0,
                                           "client": 1600.0}))
        md = self.render(doc(figures))
        self.assertIn("**Server CPU (not met: 11% over the limit).**", md)
        # 135 µs a call of 1, 3,000 of 100: about 106 fixed, 28.9 each.
        self.assertIn("28.9 µs per statement", md)
        self.assertIn("so no batch size can meet the goal.", md)
        self.assertIn("**Pipeline (not met: 14% short of the target).**", md)
        self.assertIn("The largest difference is dbpool-server: 30.0 µs per statement in S "
                      "against 0.0 in P.", md)

    def test_a_batch_size_that_would_meet_the_cpu_goal(self):
        figures = dict(FIGURES, S=(300.0, {"postgres": 2500.0, "dbpool_server": 3000.0,
                                           "client": 600.0}),
                       Q=(6000.0, {"postgres": 130.0, "dbpool_server": 2000.0, "client": 30.0}))
        md = self.render(doc(figures))
        # 2,000 µs a call of 1, 3,000 of 100: 1,989.9 fixed, 10.1 each, so
        # 1,989.9 / n + 10.1 <= 27 from n = 117.7 on.
        self.assertIn("the goal needs batches of at least 118 statements.", md)

    def test_every_row_has_its_header_s_cells(self):
        lines = self.render(doc()).splitlines()
        for i, line in enumerate(lines):
            if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|-"):
                n = line.count("|")
                for row in lines[i + 1:]:
                    if not row.startswith("|"):
                        break
                    self.assertEqual(row.count("|"), n, row)

    def test_only_the_systems_that_ran(self):
        md = self.render(doc({k: v for k, v in FIGURES.items() if k in "UI"}))
        self.assertIn("U: unary insert", md)
        self.assertNotIn("P: PostgreSQL direct", md)
        self.assertNotIn("PgBouncer µs/stmt", md)
        self.assertIn("| not measured | not measured |", md)

    def test_quick_mode_says_so(self):
        self.assertIn("Quick mode (`BATCH_QUICK=1`)", self.render(doc(quick=True)))

    def test_render_command(self):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "batch.json"
            path.write_text(json.dumps(doc()))
            out = Path(d) / "out.md"
            self.assertEqual(cli_main.main(["render", "batch", str(path), "--md", str(out)]), 0)
            self.assertIn("# ExecuteBatch", out.read_text())


if __name__ == "__main__":
    unittest.main()
