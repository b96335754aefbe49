"""bench/replicas: settings, the load's command line and latency summary,
the routes from /metrics, the medians, the findings, the capacity bound
and the report, on made-up figures."""
import unittest

from dbpoolbench import replicas, replicas_load
from dbpoolbench.settings import Env, SettingsError

ST, _ = replicas.settings_from(Env({}))
ST["table_size"] = "6568 kB"

EXPOSITION = """# HELP db_route_total Routing decisions.
# TYPE db_route_total counter
db_route_total{target="primary",reason="write"} 100
db_route_total{target="127.0.0.1:5433",reason="read"} 450
db_route_total{target="127.0.0.1:5434",reason="read"} 440
db_route_total{target="primary",reason="min_lsn"} 10
db_pool_connections{state="idle"} 20
"""

# Per configuration: reads/s, writes/s, read p99 ms, routes of a run.
FIGURES = {
    "A": (1800.0, 200.0, 90.0, {"primary write": 2000, "r1:1 read": 9000, "r2:2 read": 9000}),
    "B": (1600.0, 180.0, 95.0, {}),
    "C": (1700.0, 190.0, 110.0, {"primary write": 1900, "r1:1 read": 8000, "r2:2 read": 8000,
                                 "primary min_lsn": 400}),
}
GROUPS = {"primary": 0.4, "replicas": 0.5, "dbpool_server": 0.5, "client": 0.4}


def kind(per_s, p99, duration=8.0):
    ok = int(per_s * duration)
    return {"ok": ok, "errors": 0, "errors_by_code": {}, "per_s": per_s,
            "latency_ms": {"p50": p99 / 4, "p95": p99 / 2, "p99": p99, "p999": p99 * 2,
                           "max": p99 * 3, "mean": p99 / 3}}


def run(config, rnd, scale=1.0, valid=True):
    reads, writes, p99, routes = FIGURES[config]
    load = {"duration_s": 8.0, "callers": 64, "token": config == "C",
            "token_reads": int(reads * 8) if config == "C" else 0,
            "read": kind(reads * scale, p99 * scale), "write": kind(writes * scale, 30.0)}
    calls = (reads + writes) * scale * 7.5
    cpu = {"window_s": 7.5, "machine_busy_pct": 99.0, "others_pct": 20.0,
           "irq_softirq_pct": 5.0, "steal_pct": 0.0,
           "cores_used": dict(GROUPS),
           "us_per_call": {g: c * 7.5 * 1e6 / calls for g, c in GROUPS.items()}}
    rec = replicas.record({"config": config, "round": rnd, "seq": 0, "callers": 64,
                           "exit_code": 0 if valid else 1}, load, routes, cpu)
    return rec


def runs_for(rounds=3):
    """Every configuration in every round, the rounds 1 % apart."""
    return [run(c, rnd, 1 + (rnd - 2) / 100) for rnd in range(1, rounds + 1) for c in FIGURES]


def doc(quick=False):
    runs = runs_for()
    summary = replicas.summarize(runs, list(FIGURES))
    st = dict(ST, quick=quick)
    return {"meta": {"started_utc": "2026-12-02T10:00:00Z", "finished_utc": "2026-12-02T10:03:00Z",
                     "loadavg_start": "0.50 0.40 0.30", "settings": st,
                     "versions": {"postgres": "postgres (PostgreSQL) 15.18",
                                  "dbpool": "0.1.0, git abc1234, RelWithDebInfo build",
                                  "server_bin": "/x/dbpool-server", "grpcio": "1.51.1",
                                  "python": "3.11.2"},
                     "machine": {"nproc": 2, "cpu_model": "Test CPU", "memory": "23.5 GiB",
                                 "kernel": "6.1.0"}},
            "summary": summary, "findings": replicas.findings(runs, summary), "runs": runs}


class Settings(unittest.TestCase):
    def test_defaults(self):
        st, report = replicas.settings_from(Env({}))
        self.assertEqual(st["configs"], ["A", "B", "C"])
        self.assertEqual((st["rounds"], st["duration_s"], st["warmup_s"]), (3, 8, 2))
        self.assertEqual((st["callers"], st["write_pct"], st["rows"], st["replicas"]),
                         (64, 10.0, 100000, 2))
        self.assertEqual(report, "docs/BENCHMARKS-replicas.md")

    def test_quick_is_short_and_leaves_the_report_alone(self):
        st, report = replicas.settings_from(Env({"REPLICAS_QUICK": "1"}))
        self.assertEqual((st["rounds"], st["duration_s"]), (1, 3))
        self.assertEqual(report, "bench/results/BENCHMARKS-replicas-quick.md")

    def test_configs(self):
        st, _ = replicas.settings_from(Env({"REPLICAS_CONFIGS": "c,a"}))
        self.assertEqual(st["configs"], ["A", "C"])

    def test_errors_name_the_setting(self):
        for name, value in [("REPLICAS_CONFIGS", "D"), ("REPLICAS_CONFIGS", " , "),
                            ("REPLICAS_ROUNDS", "0"), ("REPLICAS_ROUNDS", "21"),
                            ("REPLICAS_DURATION", "0s"), ("REPLICAS_CALLERS", "x"),
                            ("REPLICAS_WRITE_PCT", "101"), ("REPLICAS_COUNT", "5")]:
            with self.assertRaisesRegex(SettingsError, name):
                replicas.settings_from(Env({name: value}))


class Load(unittest.TestCase):
    def test_command_line(self):
        argv = replicas.load_argv(ST, "127.0.0.1:7000", "/tmp/stubs", "A", 3)
        self.assertEqual(argv[1:3], ["-m", "dbpoolbench.replicas_load"])
        self.assertEqual(argv[argv.index("--target") + 1], "127.0.0.1:7000")
        self.assertEqual(argv[argv.index("--callers") + 1], "64")
        self.assertEqual(argv[argv.index("--write-pct") + 1], "10")
        self.assertEqual(argv[argv.index("--seed") + 1], "3")
        self.assertNotIn("--token", argv)
        self.assertIn("--token", replicas.load_argv(ST, "t", "s", "C", 1))
        self.assertNotIn("--token", replicas.load_argv(ST, "t", "s", "B", 1))

    def test_latency_summary(self):
        s = replicas_load.latency_summary([float(x) for x in range(100, 0, -1)])
        self.assertEqual((s["p50"], s["p99"], s["max"], s["mean"]), (50.0, 99.0, 100.0, 50.5))
        self.assertIsNone(replicas_load.latency_summary([])["p99"])

    def test_recorder_keeps_the_window_only(self):
        rec = replicas_load.Recorder(10.0, 20.0)
        rec.add("read", 9.0, 9.5, "OK", False)      # ends before the window
        rec.add("read", 9.9, 10.1, "OK", True)
        rec.add("write", 15.0, 15.2, "UNAVAILABLE", False)
        rec.add("read", 19.9, 20.0, "OK", False)    # ends at its end: out
        r = rec.report(64, True)
        self.assertEqual((r["read"]["ok"], r["write"]["ok"], r["write"]["errors"]), (1, 0, 1))
        self.assertEqual(r["write"]["errors_by_code"], {"UNAVAILABLE": 1})
        self.assertEqual(r["token_reads"], 1)
        self.assertAlmostEqual(r["read"]["per_s"], 0.1)
        self.assertAlmostEqual(r["read"]["latency_ms"]["p50"], 200.0)


class Routes(unittest.TestCase):
    def test_parse_and_delta(self):
        after = replicas.parse_routes(EXPOSITION)
        self.assertEqual(after, {"primary write": 100, "127.0.0.1:5433 read": 450,
                                 "127.0.0.1:5434 read": 440, "primary min_lsn": 10})
        before = {"primary write": 40, "127.0.0.1:5433 read": 450}
        self.assertEqual(replicas.route_delta(before, after),
                         {"primary write": 60, "127.0.0.1:5434 read": 440,
                          "primary min_lsn": 10})

    def test_read_routes_and_share(self):
        routes = replicas.parse_routes(EXPOSITION)
        self.assertEqual(replicas.read_routes(routes), (890, 10, 10))
        self.assertAlmostEqual(replicas.replica_share(routes), 0.989, places=3)
        self.assertEqual(replicas.replica_share({"primary no_replica": 5}), 0.0)
        self.assertIsNone(replicas.replica_share({}))
        self.assertIsNone(replicas.replica_share({"primary write": 5}))


class Figures(unittest.TestCase):
    def test_cpu_figures(self):
        tick = replicas.proc.TICK
        f = replicas.cpu_figures(0.0, 2.0, {"primary": 0}, {"primary": tick},
                                 {"busy": 0, "total": 0, "tasks": 0, "irq": 0, "steal": 0},
                                 {"busy": 150, "total": 200, "tasks": 140, "irq": 10,
                                  "steal": 0}, 1000)
        self.assertAlmostEqual(f["cores_used"]["primary"], 0.5)
        self.assertAlmostEqual(f["us_per_call"]["primary"], 1000.0)
        self.assertAlmostEqual(f["machine_busy_pct"], 75.0)
        self.assertAlmostEqual(f["others_pct"], 100.0 * (140 - tick) / 200 if tick < 140 else 0)
        self.assertAlmostEqual(f["irq_softirq_pct"], 5.0)

    def test_a_failed_load_or_too_many_errors_is_invalid(self):
        rec = replicas.record({"config": "A", "round": 1, "exit_code": 1}, None, {}, None)
        self.assertFalse(rec["valid"])
        self.assertEqual(rec["throughput"], 0)
        load = {"token_reads": 0, "read": dict(kind(100, 10), errors=20),
                "write": kind(10, 10)}
        self.assertFalse(replicas.record({"config": "A", "round": 1, "exit_code": 0}, load,
                                         {}, None)["valid"])

    def test_summary_takes_medians_of_valid_runs(self):
        runs = runs_for() + [run("A", 4, scale=10, valid=False)]
        s = replicas.summarize(runs, ["A", "B", "C"])
        self.assertEqual((s["A"]["runs"], s["A"]["valid_runs"]), (4, 3))
        self.assertAlmostEqual(s["A"]["throughput"], 2000.0)
        self.assertAlmostEqual(s["A"]["read_p99_ms"], 90.0)
        self.assertAlmostEqual(s["A"]["replica_share"], 1.0)
        self.assertIsNone(s["B"]["replica_share"])
        self.assertAlmostEqual(s["C"]["replica_share"], 16000 / 16400)
        self.assertEqual(s["C"]["min_lsn_on_primary"], 1200)
        self.assertAlmostEqual(s["B"]["cores_used"]["client"], 0.4)

    def test_findings(self):
        runs = runs_for()
        f = replicas.findings(runs, replicas.summarize(runs, ["A", "B", "C"]))
        self.assertAlmostEqual(f["throughput"]["value"], 2000 / 1780)
        self.assertEqual(len(f["throughput"]["per_round"]), 3)
        for r in f["throughput"]["per_round"]:
            self.assertAlmostEqual(r, 2000 / 1780)
        self.assertAlmostEqual(f["token_p99"]["value"], 110 / 90)
        self.assertAlmostEqual(f["token_p99"]["ms"], 20.0)
        self.assertAlmostEqual(f["token_p99"]["ms_per_round"][0], 20 * 0.99)

    def test_findings_need_both_sides(self):
        runs = [r for r in runs_for() if r["config"] != "B"]
        f = replicas.findings(runs, replicas.summarize(runs, ["A", "C"]))
        self.assertEqual(set(f), {"token_p99"})

    def test_read_capacity(self):
        self.assertAlmostEqual(replicas.read_capacity(2, 10), 2 / 0.9)
        self.assertAlmostEqual(replicas.read_capacity(2, 0), 2.0)
        self.assertAlmostEqual(replicas.read_capacity(2, 50), 2.0)
        self.assertAlmostEqual(replicas.read_capacity(4, 50), 2.0)
        self.assertAlmostEqual(replicas.read_capacity(1, 100), 1.0)


class Report(unittest.TestCase):
    def test_render(self):
        md = replicas.render(doc(), "bench/results/replicas-x.json", "docs/BENCHMARKS-replicas.md")
        self.assertIn("(../bench/results/replicas-x.json)", md)
        self.assertIn("| Throughput (reads + writes), A ÷ B | 2,000 vs 1,780 calls/s: "
                      "**1.12×** [1.12–1.12] |", md)
        self.assertIn("110.00 vs 90.00 ms: **1.22×**", md)
        self.assertIn("+20.00 ms [19.80–20.20 ms]", md)
        self.assertIn("| Reads served by the replicas in C | 97.6 % |", md)
        self.assertIn("share this machine's 2 cores", md)
        self.assertIn("= **2.2×** the primary-only throughput", md)
        self.assertIn("1,200 reads waited out the wait", md)
        self.assertIn("| B: primary only | 1,780 [1,762–1,798] |", md)
        self.assertIn("RelWithDebInfo build", md)
        self.assertIn("other processes on the machine took a median 20 %", md)
        self.assertNotIn("Quick mode", md)
        self.assertNotIn("None", md)

    def test_render_quick_and_partial(self):
        d = doc(quick=True)
        self.assertIn("Quick mode", replicas.render(d, "r.json", "r.md"))
        for c in ("B", "C"):
            del d["summary"][c]
        md = replicas.render(d, "r.json", "r.md")
        self.assertNotIn("A ÷ B", md)
        self.assertNotIn("token's cost", md)

    def test_render_command(self):
        import json
        import os
        import tempfile
        from dbpoolbench import __main__ as cli_main
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "r.json")
            with open(path, "w") as f:
                json.dump(doc(), f)
            self.assertIn("# Read replicas", cli_main.render("replicas", path, None))


if __name__ == "__main__":
    unittest.main()
