"""Re-rendering the stored results gives the committed reports."""
import json
import os
import unittest
from pathlib import Path

from dbpoolbench import compare_report, floor, rate, soak_report, waiters

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"


def load(name):
    with open(RESULTS / name) as f:
        return json.load(f)


def committed(path):
    return (REPO / path).read_text()


class CompareReport(unittest.TestCase):
    NAME = "bench/results/compare-2026-11-30-0355.json"

    def setUp(self):
        self.doc = load(os.path.basename(self.NAME))
        cwd = os.getcwd()
        os.chdir(REPO)  # the report links to the result relative to itself
        self.addCleanup(os.chdir, cwd)

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
        doc = load("floor-2026-11-30-0552.json")
        doc["git"] = "d421995"
        self.assertEqual(floor.summarize(doc["runs"], [64, 128]), doc["summary"])
        path = "bench/results/compare-2026-11-30-0355.json"
        self.assertEqual(floor.render(doc, path, load(os.path.basename(path))),
                         committed("docs/BENCHMARKS-floor.md"))

    def test_floor_without_a_compare_run_leaves_pgbouncer_out(self):
        doc = load("floor-2026-11-30-0552.json")
        doc["git"] = "d421995"
        md = floor.render(doc)
        self.assertIn("| 64 | 6,874 | 13,644 |", md)
        self.assertNotIn("PgBouncer", md)

    def test_rate(self):
        doc = load("rate-2026-11-30-0411.json")
        doc["git"] = "fe72020"
        self.assertEqual(rate.highest_good_rate(doc["sweep"]), doc["highest_good_rate"])
        self.assertEqual(rate.render(doc), committed("docs/BENCHMARKS-rate.md"))

    def test_waiters(self):
        doc = load("waiters-2026-11-30-0412.json")
        doc["duration_s"] = 10
        self.assertEqual(waiters.render(doc), committed("docs/BENCHMARKS-waiters.md"))


if __name__ == "__main__":
    unittest.main()
