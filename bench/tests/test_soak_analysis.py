"""soak_report.analyse on a small synthetic run: three measured windows
after one of warm-up, a PostgreSQL restart in the third, one sample a
second."""
import copy
import datetime
import unittest

from dbpoolbench import soak, soak_report, soak_streams
from dbpoolbench.settings import Env

T0 = 1_800_000_000.0
WINDOW_S = 10
WINDOWS = 4
RESTART_AT, BACK_AT = T0 + 25, T0 + 25.5


def iso(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def run():
    st = soak.settings_from(Env({"SOAK_DURATION": "40s", "SOAK_WINDOW": "10s",
                                 "SOAK_RESTART_EVERY": "25s", "SOAK_RATE": "100"}))
    streams = soak_streams.streams(st["rate"], st["pgbench_scale"])
    meta = {"started_utc": "2027-01-15T08:00:00Z", "t0": T0, "settings": st,
            "streams": streams, "restarts_planned": 1, "watch_alive": True,
            "watch_exit": "", "watch_stderr": "", "server_alive": True,
            "versions": {"dbpool": "0.1.0", "postgres": "15"},
            "server_log": {"lines": 0, "top": []}}
    windows = [{"n": n, "start": T0 + (n - 1) * WINDOW_S, "end": T0 + n * WINDOW_S,
                "length_s": WINDOW_S, "warmup": n == 1,
                "rc": {s["name"]: 0 for s in streams}} for n in range(1, WINDOWS + 1)]
    reports = {}
    for w in windows:
        for s in streams:
            requests = int(s["rate"] * WINDOW_S)
            failing = bool(s["expected_errors"])
            reports[(w["n"], s["name"])] = {
                "requests": requests, "ok": 0 if failing else requests,
                "errors_by_code": {s["expected_errors"][0]: requests} if failing else {},
                "rps": s["rate"], "latency_ms": {"p50": 1.0, "p99": 5.0 + w["n"], "max": 20.0}}
    samples = []
    ok = 0
    for i in range(WINDOWS * WINDOW_S + 1):
        t = T0 + i
        ok += 100
        samples.append({"t": t, "load1": 1.0, "busy_ticks": 50 * i, "all_ticks": 200 * i,
                        "rss_kb": 50 * 1024, "threads": 80, "fds": 40, "cpu_ticks": 10 * i,
                        "metrics": {"query_codes": {"OK": ok}, "closed_by_reason": {}},
                        "pool": {"total": 4, "active": 1, "idle": 3, "connecting": 0,
                                 "waiting": 0, "reachable": True},
                        "pg_conns": 4})
    raw = {"windows": windows, "samples": samples,
           "restarts": [{"begin": RESTART_AT, "back": BACK_AT, "rc": 0, "window": 3}],
           "watch": [{"time": iso(T0 + i), "database_reachable": True}
                     for i in range(WINDOWS * WINDOW_S + 1)],
           "conncheck": {"agree": True, "waited_s": 0.0,
                         "last": {"pool_total": 4, "pg_conns": 4}, "first": {}},
           "stalls": [],
           "stream_report": lambda n, name: (copy.deepcopy(reports[(n, name)]), "")}
    return meta, raw


def failed_checks(result):
    return [c["check"] for c in result["checks"] if not c["pass"]]


def add_unexpected(samples, at, code, n):
    """The server counts n calls ending with `code` in the second to `at`."""
    for x in samples:
        if x["t"] >= at:
            codes = x["metrics"]["query_codes"]
            codes[code] = codes.get(code, 0) + n


class Analyse(unittest.TestCase):
    def test_a_clean_run_passes(self):
        result = soak_report.analyse(*run())
        self.assertTrue(result["passed"], result["failures"])
        self.assertEqual(failed_checks(result), [])
        self.assertEqual(result["restarts_done"], 1)
        self.assertEqual(result["totals"]["unexpected_total"], 0)
        self.assertEqual(result["totals"]["expected_errors"], 4 * 150)
        self.assertEqual(result["latency_drift"]["select"]["p99_max_window"], 4)
        self.assertEqual(result["windows"][2]["restarts"], [1])

    def test_steady_rss_growth_fails(self):
        meta, raw = run()
        for x in raw["samples"]:
            x["rss_kb"] += int((x["t"] - T0) * 5 * 1024)  # 5 MiB a second
        result = soak_report.analyse(meta, raw)
        self.assertFalse(result["passed"])
        self.assertIn("RSS growth after warm-up (MiB)", failed_checks(result))

    def test_errors_at_a_restart_are_reported_not_failed(self):
        meta, raw = run()
        add_unexpected(raw["samples"], RESTART_AT + 1, "UNAVAILABLE", 7)
        result = soak_report.analyse(meta, raw)
        self.assertTrue(result["passed"], result["failures"])
        self.assertEqual(result["server_unexpected_errors"]["within_grace_of_restart"], 7)
        self.assertEqual(result["restarts"][0]["unexpected_near"], {"UNAVAILABLE": 7})

    def test_errors_away_from_restarts_fail(self):
        meta, raw = run()
        add_unexpected(raw["samples"], T0 + 14, "INTERNAL", 2)
        reports = raw["stream_report"]

        def with_errors(n, name):  # the clients see them too
            j, err = reports(n, name)
            if (n, name) == (2, "select"):
                j["errors_by_code"] = {"INTERNAL": 2}
            return j, err
        raw["stream_report"] = with_errors
        result = soak_report.analyse(meta, raw)
        self.assertFalse(result["passed"])
        self.assertEqual(result["server_unexpected_errors"]["away_from_restarts_and_stalls"], 2)
        self.assertEqual(result["client_unexpected_errors_in_calm_windows"], 2)

    def test_a_dead_watch_stream_fails(self):
        meta, raw = run()
        meta["watch_alive"], meta["watch_exit"] = False, "exit 1"
        raw["watch"] = raw["watch"][:10]
        result = soak_report.analyse(meta, raw)
        self.assertIn("watch stream open to the end", failed_checks(result))
        self.assertIn("watch stream: longest gap between snapshots outside machine stalls (s)",
                      failed_checks(result))

    def test_the_report_renders(self):
        result = soak_report.analyse(*run())
        md = soak_report.render(result, "soak.json")
        self.assertIn("**Result: PASS**", md)
        self.assertIn("| 3 | 20 | 1 | 1,000 | 0 |", md)


if __name__ == "__main__":
    unittest.main()
