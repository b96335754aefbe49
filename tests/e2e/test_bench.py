"""End-to-end tests of `dbpool bench`, the load generator of the CLI.

Runs the built `dbpool` binary against dbpool-server and a throwaway
PostgreSQL cluster, both started through harness.py:

    /usr/bin/python3 -m unittest -v tests/e2e/test_bench.py

The client binary is $DBPOOL_CLI_BIN (default <repo>/build/dbpool), the
server binary $DBPOOL_SERVER_BIN (default <repo>/build/dbpool-server).
The whole module takes about 30 s of load plus the stack start.
"""

import json
import os
import socket
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# A bench run lasts --duration plus at most --timeout; this is generous on
# top of the longest run here (10 s) but still catches a hung client.
CLI_TIMEOUT_S = 60.0
LATENCY_KEYS = ("p50", "p95", "p99", "p999", "max")
SAMPLE_KEYS = ("active", "idle", "waiting", "total",
               "acquire_p95_ms", "acquire_p99_ms")
# The open loop's cap on calls in flight (kMaxOutstanding in client/bench.cc).
MAX_IN_FLIGHT = 10000


class MutedProxy:
    """A TCP proxy in front of the server that passes on all the client
    sends, but of what the server sends on each connection only its first
    write (its HTTP/2 SETTINGS, which the client waits for before it counts
    itself connected): calls go out and are never answered. The rest stays
    in the socket buffers until close()."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self._listener.getsockname()[1]
        self._sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                return  # closed
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 1),
                             daemon=True).start()

    @staticmethod
    def _pump(src, dst, reads):
        """Copies src to dst until EOF or, if reads is not None, that many
        reads; then stops reading."""
        try:
            while reads is None or reads > 0:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
                if reads is not None:
                    reads -= 1
        except OSError:
            pass

    def close(self):
        self._listener.close()
        for s in self._sockets:
            s.close()


class BenchTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        harness.start_stack_with_cli(cls)

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    # -- helpers ------------------------------------------------------------

    def run_bench(self, *args, target=True):
        return harness.run_cli(self, ("bench",) + args, CLI_TIMEOUT_S, target=target)

    def muted_target(self):
        proxy = MutedProxy(self.server.address)
        self.addCleanup(proxy.close)
        return proxy.address

    def assert_exit(self, proc, code):
        self.assertEqual(proc.returncode, code,
                         "want exit %d, got %d\nstdout:\n%s\nstderr:\n%s"
                         % (code, proc.returncode, proc.stdout, proc.stderr))

    def parse_report(self, proc):
        lines = proc.stdout.splitlines()
        self.assertEqual(len(lines), 1, "want one line of JSON: %r" % proc.stdout)
        return json.loads(lines[0])

    def assert_latency(self, report):
        latency = report["latency_ms"]
        for key in LATENCY_KEYS:
            self.assertIn(key, latency)
            self.assertIsInstance(latency[key], (int, float))
        values = [latency[key] for key in LATENCY_KEYS]
        self.assertEqual(values, sorted(values),
                         "want p50 <= p95 <= p99 <= p999 <= max: %r" % latency)
        self.assertGreater(latency["p50"], 0, latency)

    def assert_pool_samples(self, report):
        samples = report["pool_samples"]
        self.assertIsInstance(samples, list)
        self.assertTrue(samples, "no pool samples")
        for sample in samples:
            for key in SAMPLE_KEYS:
                self.assertIn(key, sample)
            self.assertGreaterEqual(sample["total"], sample["active"])
        self.assertTrue(any(s["total"] > 0 for s in samples), samples)

    # -- tests --------------------------------------------------------------

    def test_open_loop_smoke(self):
        # The seed's check: 100 calls/s for 10 s, error gate at 1%.
        proc = self.run_bench("--sql", "SELECT 1", "--rate", "100",
                              "--duration", "10s", "--max-error-rate", "0.01",
                              "--json")
        self.assert_exit(proc, 0)
        report = self.parse_report(proc)
        self.assertEqual(report["mode"], "open")
        self.assertEqual(report["rate"], 100)
        self.assertEqual(report["duration_s"], 10)
        self.assertGreaterEqual(report["requests"], 900, report)
        self.assertLessEqual(report["requests"], 1100, report)
        self.assertEqual(report["errors"], 0, report["errors_by_code"])
        self.assertEqual(report["errors_by_code"], {})
        self.assertAlmostEqual(report["rps"], report["requests"] / 10, delta=0.01)
        self.assert_latency(report)
        self.assert_pool_samples(report)
        # One sample a second over 10 s; a loaded machine may lose one or two.
        self.assertGreaterEqual(len(report["pool_samples"]), 8)

    def test_closed_loop_random_params(self):
        # Every drawn value must lie in [1, 100000], else the CASE divides by
        # zero and the call fails. The division depends on $1 so that a
        # generic plan of the prepared statement cannot fold it.
        proc = self.run_bench(
            "--sql",
            "SELECT CASE WHEN $1::int BETWEEN 1 AND 100000 THEN $1::int "
            "ELSE 1/($1::int * 0) END",
            "--param", "rand:1:100000", "--concurrency", "16",
            "--duration", "3s", "--json")
        self.assert_exit(proc, 0)
        report = self.parse_report(proc)
        self.assertEqual(report["mode"], "closed")
        self.assertEqual(report["concurrency"], 16)
        self.assertNotIn("rate", report)
        self.assertGreater(report["requests"], 0)
        self.assertEqual(report["errors"], 0, report["errors_by_code"])
        self.assertAlmostEqual(report["rps"], report["requests"] / 3, delta=0.01)
        self.assert_latency(report)
        self.assert_pool_samples(report)

    def test_random_params_vary(self):
        # rand:0:1 divides by zero about half the time: both outcomes show.
        proc = self.run_bench("--sql", "SELECT 1 / $1::int",
                              "--param", "rand:0:1", "--concurrency", "4",
                              "--duration", "1s", "--json")
        self.assert_exit(proc, 0)
        report = self.parse_report(proc)
        self.assertGreater(report["ok"], 0, report)
        self.assertGreater(report["errors_by_code"].get("INVALID_ARGUMENT", 0), 0,
                           report)
        self.assertEqual(report["ok"] + report["errors"], report["requests"])

    def test_error_gate(self):
        proc = self.run_bench("--sql", "SELECT 1/0", "--rate", "50",
                              "--duration", "2s", "--max-error-rate", "0.01",
                              "--json")
        self.assert_exit(proc, 3)
        report = self.parse_report(proc)
        self.assertGreater(report["requests"], 0)
        self.assertEqual(report["errors"], report["requests"])
        self.assertEqual(report["errors_by_code"].get("INVALID_ARGUMENT"),
                         report["requests"], report["errors_by_code"])
        self.assert_latency(report)
        self.assertIn("max-error-rate", proc.stderr)

    def test_stats_rpc(self):
        # GetPoolStats, answered from memory: no statement, no errors.
        proc = self.run_bench("--rpc", "stats", "--concurrency", "8",
                              "--duration", "1s", "--json")
        self.assert_exit(proc, 0)
        report = self.parse_report(proc)
        self.assertEqual(report["mode"], "closed")
        self.assertEqual(report["sql"], "")
        self.assertGreater(report["requests"], 0)
        self.assertEqual(report["errors"], 0, report["errors_by_code"])
        self.assert_latency(report)

    def test_deadline_ends_unanswered_calls(self):
        # Nothing is answered: each of the 4 callers' calls ends at its
        # 1 s deadline and the next goes out, until the 2 s are over. The
        # client's own deadline timer must end them (the channels run gRPC's
        # minimal filter stack, which leaves it out unless asked back);
        # otherwise the calls would hang to the end and be cancelled.
        proc = self.run_bench("--target", self.muted_target(), "--rpc", "stats",
                              "--concurrency", "4", "--duration", "2s",
                              "--timeout", "1s", "--json", target=False)
        self.assert_exit(proc, 0)
        report = self.parse_report(proc)
        self.assertEqual(report["errors_by_code"], {"DEADLINE_EXCEEDED": 8}, report)
        self.assertEqual(report["requests"], 8, report)
        self.assertGreaterEqual(report["latency_ms"]["p50"], 1000, report)

    def test_open_loop_client_overload(self):
        # Nothing is answered, and no call ends before its 4 s deadline:
        # at 4000 calls/s the calls in flight reach the cap of 10000 after
        # 2.5 s, and the 2000 calls due in the last 0.5 s are not sent but
        # counted as client_overload. Latency counts from the due time.
        proc = self.run_bench("--target", self.muted_target(), "--rpc", "stats",
                              "--rate", "4000", "--duration", "3s",
                              "--timeout", "4s", "--json", target=False)
        self.assert_exit(proc, 0)
        report = self.parse_report(proc)
        self.assertEqual(report["requests"], 12000, report)
        self.assertEqual(report["errors_by_code"],
                         {"DEADLINE_EXCEEDED": MAX_IN_FLIGHT,
                          "client_overload": 12000 - MAX_IN_FLIGHT}, report)
        self.assertEqual(report["ok"], 0, report)
        self.assertGreaterEqual(report["latency_ms"]["p50"], 4000, report)

    def test_usage_errors(self):
        cases = [
            ([], "--sql is required"),
            (["--sql", "SELECT 1", "--rate", "10", "--concurrency", "2"],
             "either --concurrency"),
            (["--sql", "SELECT $1", "--param", "rand:9:1"], "rand:MIN:MAX"),
            (["--sql", "SELECT 1", "--bogus"], "unknown flag --bogus"),
            (["--sql", "SELECT 1", "--duration", "soon"], "duration"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                proc = self.run_bench(*args)
                self.assert_exit(proc, 2)
                self.assertIn(message, proc.stderr)
                self.assertIn("usage: dbpool bench", proc.stderr)
                self.assertEqual(proc.stdout, "")


if __name__ == "__main__":
    unittest.main()
