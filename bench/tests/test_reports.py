"""Re-rendering the stored results gives the committed reports."""
import json
import os
import unittest
from pathlib import Path

from dbpoolbench import batch, compare_report, depth, floor, rate, soak_report, waiters

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"


def load(name):
    with open(RESULTS / name) as f:
        return json.load(f)


def committed(path):
    return (REPO / path).read_text()


# A run of A, B and C only, from before the peers and the floor joined:
# the tests add synthetic D, E and F runs to it.
ABC_ONLY = "bench/results/compare-2026-11-30-0355.json"


class StoredRun(unittest.TestCase):
    """Loads the stored run NAME, from the repository's root."""
    NAME = None

    def setUp(self):
        self.doc = load(os.path.basename(self.NAME))
        cwd = os.getcwd()
        os.chdir(REPO)  # the report links to the result relative to itself
        self.addCleanup(os.chdir, cwd)


class CompareReport(StoredRun):
    """The newest stored run and the report committed from it."""
    NAME = "bench/results/compare-2026-12-02-1754.json"

    def test_summary_is_recomputed_from_the_runs(self):
        st = self.doc["meta"]["settings"]
        self.assertEqual(compare_report.summarize(self.doc["runs"], st["concurrency"]),
                         self.doc["summary"])

    def test_report_is_the_committed_one(self):
        self.assertEqual(compare_report.render(self.doc, self.NAME, "docs/BENCHMARKS.md"),
                         committed("docs/BENCHMARKS.md"))

    def test_an_invalid_run_leaves_the_medians(self):
        runs = [dict(r) for r in self.doc["runs"]]
        slowest = min((r for r in runs if r["system"] == "C" and r["concurrency"] == 64),
                      key=lambda r: r["throughput"])
        slowest["valid"] = False
        entry = compare_report.summarize(runs, [64])["64"]["C"]
        self.assertEqual(entry["valid_runs"], entry["runs"] - 1)
        self.assertGreater(entry["throughput_min"], slowest["throughput"])


def as_peer(run, sysname, process, factor):
    """A C run of the stored result as peer sysname's, `factor` times
    slower, its dbpool-server figures as the gateway's."""
    r = json.loads(json.dumps(run))
    r["system"], r["throughput"] = sysname, run["throughput"] / factor
    for key in ("us_per_query", "ctx_switches_per_query", "cores_used"):
        figures = r.get("cpu", {}).get(key)
        if figures:
            figures[process] = figures.pop("dbpool_server")
    return r


def rows_of(md, header_start):
    """The rows of the table whose header starts so, as lists of cells."""
    lines = md.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


class CompareReportWithPeers(unittest.TestCase):
    """The stored result with peers D and E added: C's runs 2.5 and 4
    times slower."""

    def setUp(self):
        doc = load(os.path.basename(ABC_ONLY))
        cs = [r for r in doc["runs"] if r["system"] == "C"]
        doc["runs"] += [as_peer(r, "D", "peer_go", 2.5) for r in cs]
        doc["runs"] += [as_peer(r, "E", "peer_node", 4.0) for r in cs]
        doc["meta"]["versions"].update(peer_go="go1.19", peer_node="Node.js v18")
        doc["summary"] = compare_report.summarize(doc["runs"], [1, 8, 32, 64, 128])
        self.doc = doc
        self.md = compare_report.render(doc, ABC_ONLY, "docs/BENCHMARKS.md")

    def test_ratios_against_the_peers(self):
        s = self.doc["summary"]["64"]
        self.assertAlmostEqual(s["C/D"]["ratio_of_medians"], 2.5)
        self.assertAlmostEqual(s["C/E"]["ratio_of_medians"], 4.0)
        self.assertEqual(len(s["C/D"]["per_repeat"]), 3)
        self.assertEqual(s["D"]["cpu_us_per_query_median"]["peer_go"],
                         s["C"]["cpu_us_per_query_median"]["dbpool_server"])
        self.assertIsNone(s["C"]["cpu_us_per_query_median"]["peer_go"])
        stored = load(os.path.basename(ABC_ONLY))["summary"]["64"]
        self.assertEqual(s["C/B"], stored["C/B"])

    def test_peer_table_and_goal(self):
        rows = rows_of(self.md, "| clients | C dbpool /s | D Go /s")
        self.assertEqual(rows[0], ["clients", "C dbpool /s", "D Go /s", "E Node.js /s",
                                   "**C/D** [spread]", "**C/E** [spread]",
                                   "dbpool-server CPU µs/q", "Go gateway CPU µs/q",
                                   "Node.js gateway CPU µs/q"])
        self.assertEqual(rows[5], ["64", "6,909", "2,764", "1,727", "**2.50** [2.50–2.50]",
                                   "**4.00** [4.00–4.00]", "136", "136", "136"])
        goals = rows_of(self.md, "| goal | target")
        self.assertEqual(goals[6], ["Throughput C/D (the Go gateway)", "≥ 2 at 64 callers",
                                    "2.50 [2.50–2.50] at 64", "**MET**"])
        self.assertEqual(goals[7][3], "**MET**")
        self.assertIn("| Go gateway | go1.19 |", self.md)

    def test_the_peers_join_every_table(self):
        per = rows_of(self.md, "| system | throughput")
        self.assertEqual(per[0][4:10], ["PostgreSQL µs/q", "PgBouncer µs/q",
                                        "dbpool-server µs/q", "Go gateway µs/q",
                                        "Node.js gateway µs/q", "client µs/q"])
        self.assertEqual([r[0][:2] for r in per[2:]], ["A:", "B:", "C:", "D:", "E:"])
        switches = rows_of(self.md, "| clients | A: PostgreSQL")[0]
        self.assertEqual(switches[-6:], ["D: PostgreSQL", "D: Go gateway", "D: dbpool bench",
                                         "E: PostgreSQL", "E: Node.js gateway",
                                         "E: dbpool bench"])
        self.assertIn("C/D = **2.50** [2.50–2.50], C/E = **4.00** [4.00–4.00].", self.md)
        self.assertIn("A, B, C, D and E back to back, the order rotated by one per "
                      "repetition (ABCDE, BCDEA, CDEAB, …)", self.md)

    def test_every_row_has_its_header_s_cells(self):
        lines = self.md.splitlines()
        for i, line in enumerate(lines):
            if line.startswith("|") and not lines[i - 1].startswith("|"):
                for row in rows_of("\n".join(lines[i:]), line):
                    self.assertEqual(len(row), line.count("|") - 1, row)

    def test_a_run_of_some_systems_renders_only_those(self):
        doc = dict(self.doc, runs=[r for r in self.doc["runs"] if r["system"] in "CD"])
        doc["summary"] = compare_report.summarize(doc["runs"], [1, 8, 32, 64, 128])
        self.assertEqual(set(doc["summary"]["64"]), {"C", "D", "C/D"})
        md = compare_report.render(doc, ABC_ONLY, "docs/BENCHMARKS.md")
        self.assertTrue(md.startswith("# Benchmarks: dbpool vs a Go gateway\n"))
        self.assertNotIn("PgBouncer µs/q", md)
        self.assertNotIn("pgbench threads", md)
        self.assertEqual([row[3] for row in rows_of(md, "| goal | target")[2:]],
                         ["not measured", "**NOT MET**", "not measured", "not measured",
                          "**MET**", "not measured"])
        self.assertEqual(rows_of(md, "| clients | C dbpool /s")[0],
                         ["clients", "C dbpool /s", "dbpool-server CPU µs/q"])

    def test_a_peer_behind_its_goal(self):
        cs = [r for r in self.doc["runs"] if r["system"] == "C"]
        runs = cs + [as_peer(r, "E", "peer_node", 0.3) for r in cs]
        doc = dict(self.doc, runs=runs, summary=compare_report.summarize(runs, [64]))
        doc["meta"] = dict(doc["meta"], settings=dict(doc["meta"]["settings"], concurrency=[64]))
        md = compare_report.render(doc, ABC_ONLY, "docs/BENCHMARKS.md")
        self.assertIn("| Throughput C/E (the Node.js gateway) | ≥ 4 at 64 callers | "
                      "0.30 [0.30–0.30] at 64 | **NOT MET** |", md)


def as_floor(run):
    """A C run of the stored result as F's: four times the calls, each
    costing dbpool-server a quarter of a query."""
    r = json.loads(json.dumps(run))
    r["system"], r["throughput"] = "F", run["throughput"] * 4
    r["cpu"]["us_per_query"]["dbpool_server"] /= 4
    return r


class CompareReportWithTheFloor(unittest.TestCase):
    def setUp(self):
        doc = load(os.path.basename(ABC_ONLY))
        doc["runs"] += [as_floor(r) for r in doc["runs"] if r["system"] == "C"]
        doc["summary"] = compare_report.summarize(doc["runs"], [1, 8, 32, 64, 128])
        self.md = compare_report.render(doc, ABC_ONLY, "docs/BENCHMARKS.md")

    def test_dbpool_server_is_judged_against_its_floor(self):
        self.assertEqual(rows_of(self.md, "| goal | target")[2],
                         ["dbpool-server CPU per Query ÷ per call of its gRPC floor (C vs F)",
                          "≤ 1.5× at 64 and 128 callers",
                          "136 vs 34 µs (4.00×) at 64; 121 vs 30 µs (4.00×) at 128",
                          "**NOT MET**"])

    def test_the_floor_joins_the_tables_without_postgresql(self):
        self.assertTrue(self.md.startswith("# Benchmarks: dbpool vs PostgreSQL direct vs "
                                           "PgBouncer vs dbpool's gRPC floor\n"))
        per = rows_of(self.md, "| system | throughput")
        self.assertEqual(per[-1][0], "F: dbpool's gRPC floor (dbpool bench --rpc stats)")
        self.assertEqual(per[-1][4], "—")  # PostgreSQL does no work for GetPoolStats
        self.assertIn("F: dbpool-server", rows_of(self.md, "| clients | A: PostgreSQL")[0])
        self.assertIn("Everything (PostgreSQL 15.20, PgBouncer, dbpool-server, the load "
                      "generator)", self.md)


class PipelineDepthReport(StoredRun):
    """The stored pipeline-depth run and the report committed from it."""
    NAME = "bench/results/pipeline-depth-2026-12-02-0614.json"
    MD = "docs/BENCHMARKS-pipeline-depth.md"

    def test_summary_is_recomputed_from_the_runs(self):
        # The stored recommendation is the rule's of the day; the report
        # recomputes it with today's (depth.render).
        st = self.doc["meta"]["settings"]
        summary = depth.summarize(self.doc["runs"], st["concurrency"], st["depths"])
        self.assertEqual(summary, self.doc["summary"])

    def test_report_is_the_committed_one(self):
        self.assertEqual(depth.render(self.doc, self.NAME, self.MD), committed(self.MD))


class SoakReport(unittest.TestCase):
    def test_report_is_the_committed_one(self):
        name = "soak-2026-11-30-0555"
        self.assertEqual(soak_report.render(load(name + ".json"),
                                            f"bench/results/{name}.json"),
                         committed(f"bench/results/{name}.md"))


class SmallReports(unittest.TestCase):
    """floor, max-rate and waiters; their stored results predate the
    fields that the report's first lines name (git, duration), which the
    tests take from the committed reports."""

    def test_floor(self):
        doc = load("floor-2026-12-02-1821.json")
        self.assertEqual(floor.summarize(doc["runs"], [64, 128]), doc["summary"])
        path = "bench/results/compare-2026-12-02-1754.json"
        self.assertEqual(floor.render(doc, path, load(os.path.basename(path))),
                         committed("docs/BENCHMARKS-floor.md"))

    def test_floor_from_before_the_per_thread_figures(self):
        doc = load("floor-2026-11-30-0552.json")
        doc["git"] = "d421995"
        self.assertEqual(floor.summarize(doc["runs"], [64, 128]), doc["summary"])
        md = floor.render(doc)
        self.assertNotIn("by thread", md)
        self.assertIn("| 64 | 6,874 | 13,644 | 134 | 40 |", md)

    def test_floor_without_a_compare_run_leaves_pgbouncer_out(self):
        doc = load("floor-2026-11-30-0552.json")
        doc["git"] = "d421995"
        md = floor.render(doc)
        self.assertIn("| 64 | 6,874 | 13,644 |", md)
        self.assertNotIn("PgBouncer", md)

    def test_floor_beside_a_compare_run_without_pgbouncer(self):
        doc = load("floor-2026-11-30-0552.json")
        doc["git"] = "d421995"
        compare = load("compare-2026-11-30-0355.json")
        for e in compare["summary"].values():
            del e["B"]
        self.assertEqual(floor.render(doc, "x.json", compare), floor.render(doc))

    def test_floor_shows_where_the_time_goes_by_thread(self):
        doc = load("floor-2026-11-30-0552.json")
        doc["git"] = "d421995"
        for i, r in enumerate(doc["runs"]):
            r["threads"] = {"dbpool-io": {"cpu_us_per_call": 30.0 + i, "switches_per_call": 0.5},
                            "nexting_thread": {"cpu_us_per_call": 40.0,
                                               "switches_per_call": 0.8}}
            if r["rpc"] == "S":
                del r["threads"]["dbpool-io"]
        doc["summary"] = floor.summarize(doc["runs"], [64, 128])
        q = doc["summary"]["64"]["Q"]["threads"]
        self.assertEqual(q["nexting_thread"], {"cpu_us_per_call": 40.0, "switches_per_call": 0.8})
        ios = [30.0 + i for i, r in enumerate(doc["runs"])
               if r["rpc"] == "Q" and r["concurrency"] == 64]
        self.assertEqual(q["dbpool-io"]["cpu_us_per_call"], sorted(ios)[len(ios) // 2])
        self.assertEqual(doc["summary"]["64"]["S"]["threads"]["nexting_thread"]["cpu_us_per_call"],
                         40.0)
        md = floor.render(doc)
        self.assertIn("## Where a call's server time goes, by thread", md)
        rows = [line for line in md.splitlines() if line.startswith("| 64 | `")]
        self.assertEqual([r.split(" | ")[1] for r in rows], ["`nexting_thread`", "`dbpool-io`"])
        self.assertTrue(rows[1].endswith("| 0.0 | 0.00 |"), rows[1])

    def test_rate(self):
        doc = load("rate-2026-11-30-0411.json")
        doc["git"] = "fe72020"
        self.assertEqual(rate.highest_good_rate(doc["sweep"]), doc["highest_good_rate"])
        self.assertEqual(rate.render(doc), committed("docs/BENCHMARKS-rate.md"))

    def test_waiters(self):
        doc = load("waiters-2026-11-30-0412.json")
        doc["duration_s"] = 10
        self.assertEqual(waiters.render(doc), committed("docs/BENCHMARKS-waiters.md"))


class BatchReport(StoredRun):
    """The stored bench/batch run and the report committed from it."""
    NAME = "bench/results/batch-2026-12-02-0936.json"

    def test_summary_and_goals_are_recomputed_from_the_runs(self):
        st = self.doc["meta"]["settings"]
        summary = batch.summarize(self.doc["runs"], st["systems"])
        self.assertEqual(summary, self.doc["summary"])
        self.assertEqual(batch.judge(self.doc["runs"], summary), self.doc["goals"])

    def test_report_is_the_committed_one(self):
        self.assertEqual(batch.render(self.doc, self.NAME, "docs/BENCHMARKS-batch.md"),
                         committed("docs/BENCHMARKS-batch.md"))

    def test_the_goals_as_measured(self):
        g = self.doc["goals"]
        self.assertEqual({k: v["verdict"] for k, v in g.items()},
                         {"insert": batch.MET, "cpu": batch.MET, "pipeline": batch.MET})
        self.assertGreaterEqual(g["insert"]["value"], 10)
        self.assertLessEqual(g["cpu"]["value"], 1)
        self.assertGreaterEqual(g["pipeline"]["value"], 0.5)
        self.assertEqual([len(v["per_repeat"]) for v in g.values()], [3, 3, 3])

    def test_every_run_is_valid_and_inserts_left_their_rows(self):
        for r in self.doc["runs"]:
            self.assertTrue(r["valid"], r["system"])
            if r["system"] in batch.INSERTS:
                self.assertGreaterEqual(r["table_rows"], r["ok"] * r["per_call"])

    def test_the_compare_report_links_it(self):
        md = committed("docs/BENCHMARKS.md")
        self.assertIn("[`docs/BENCHMARKS-batch.md`](BENCHMARKS-batch.md)", md)
        for path, _ in compare_report.OTHER_REPORTS:
            self.assertTrue((REPO / path).is_file(), path)


if __name__ == "__main__":
    unittest.main()
