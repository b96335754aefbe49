"""End-to-end tests of StreamQuery: ten million rows with the server's
memory measured, a reader that stops reading, cancels and deadlines that
stop the statement on the server, and the REST gateway's NDJSON stream.

    /usr/bin/python3 -m unittest -v tests/e2e/test_streaming.py
"""

import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

RPC_TIMEOUT_S = 10.0
# Server memory may grow this much while it streams, whatever the size of
# the result (the bound).
RSS_GROWTH_LIMIT = 64 << 20

pb = None
pb_grpc = None


def _load_stubs(out_dir):
    global pb, pb_grpc
    harness.generate_python_stubs(out_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    pb, pb_grpc = _pb, _pb_grpc


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


class RssSampler:
    """Samples a process's resident memory every 50 ms until stopped."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        return self.peak


class StreamingTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        harness.start_stack(cls, server_args=["--max-rows=1000"])
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.addClassCleanup(cls.channel.close)
        grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
        cls.db = pb_grpc.DatabaseServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        harness.stop_server_checked(cls)

    def running(self, marker):
        """Statements of the pool's sessions whose text holds `marker`."""
        return int(self.pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool' "
            "AND state = 'active' AND query LIKE '%%%s%%'" % marker).strip())

    def wait_gone(self, marker, limit_s=5.0):
        deadline = time.monotonic() + limit_s
        while self.running(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.running(marker)

    def wait_event(self, marker):
        return self.pg.psql(
            "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE "
            "application_name = 'dbpool' AND query LIKE '%%%s%%' AND state = 'active'"
            % marker).strip()

    def test_ten_million_rows_arrive_with_flat_server_memory(self):
        pid = self.server.proc.pid
        # Warm: the first stream sizes gRPC's and libpq's buffers.
        list(self.db.StreamQuery(pb.QueryRequest(sql="SELECT generate_series(1, 100000)"),
                                 timeout=60))
        before = rss_bytes(pid)
        sampler = RssSampler(pid)
        rows = 0
        first = last = None
        for message in self.db.StreamQuery(
                pb.QueryRequest(sql="SELECT generate_series(1, 10000000) AS n"), timeout=600):
            if first is None:
                first = message
            if message.rows:
                last_value = message.rows[-1].values[0].int64_value
            rows += len(message.rows)
            last = message
        peak = sampler.stop()
        growth = peak - before
        print("[stream] 10,000,000 rows: server RSS %.1f MiB before, peak %.1f MiB, "
              "growth %.1f MiB (limit %d MiB)"
              % (before / 2**20, peak / 2**20, growth / 2**20, RSS_GROWTH_LIMIT >> 20))
        self.assertEqual(rows, 10_000_000)
        self.assertEqual(last_value, 10_000_000)
        self.assertEqual([c.name for c in first.columns], ["n"])
        self.assertEqual(last.command_tag, "SELECT 10000000")
        self.assertEqual(last.rows_affected, 10_000_000)
        self.assertTrue(last.HasField("timings"))
        self.assertLess(growth, RSS_GROWTH_LIMIT)

    def test_a_reader_that_stops_reading_stops_the_database_and_keeps_memory_flat(self):
        pid = self.server.proc.pid
        before = rss_bytes(pid)
        stream = self.db.StreamQuery(
            pb.QueryRequest(sql="SELECT generate_series(1, 50000000) AS stalled_reader"),
            timeout=120)
        next(stream)
        # The server stops reading from PostgreSQL once gRPC's flow-control
        # window is full; PostgreSQL then waits to write to its socket.
        deadline = time.monotonic() + 10
        while self.wait_event("stalled_reader") != "ClientWrite" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.wait_event("stalled_reader"), "ClientWrite")
        time.sleep(1.0)
        growth = rss_bytes(pid) - before
        print("[stream] stalled reader: server RSS growth %.1f MiB" % (growth / 2**20))
        self.assertLess(growth, RSS_GROWTH_LIMIT)
        stream.cancel()
        self.assertEqual(self.wait_gone("stalled_reader"), 0)

    def test_cancel_mid_stream_stops_the_statement(self):
        stream = self.db.StreamQuery(
            pb.QueryRequest(sql="SELECT generate_series(1, 50000000) AS cancelled_mid_stream"),
            timeout=120)
        for _ in range(3):
            next(stream)
        stream.cancel()
        with self.assertRaises(grpc.RpcError) as ctx:
            for _ in stream:
                pass
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.CANCELLED)
        self.assertEqual(self.wait_gone("cancelled_mid_stream"), 0)

    def test_a_deadline_mid_stream_stops_the_statement(self):
        stream = self.db.StreamQuery(
            pb.QueryRequest(sql="SELECT generate_series(1, 50000000) AS deadline_mid_stream"),
            timeout=1.0)
        with self.assertRaises(grpc.RpcError) as ctx:
            for _ in stream:
                time.sleep(0.01)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(self.wait_gone("deadline_mid_stream"), 0)

    def test_unary_query_over_the_row_limit_points_to_stream_query(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.db.Query(pb.QueryRequest(sql="SELECT generate_series(1, 5000)"),
                          timeout=RPC_TIMEOUT_S)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("StreamQuery", ctx.exception.details())
        rows = sum(len(m.rows) for m in self.db.StreamQuery(
            pb.QueryRequest(sql="SELECT generate_series(1, 5000)"), timeout=RPC_TIMEOUT_S))
        self.assertEqual(rows, 5000)

    def test_rest_stream_is_newline_delimited_json(self):
        conn = http.client.HTTPConnection(self.server.http_host, self.server.http_port,
                                          timeout=60)
        body = json.dumps({"sql": "SELECT generate_series(1, 2500) AS n"})
        conn.request("POST", "/v1/query:stream", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("Content-Type"), "application/x-ndjson")
        lines = [json.loads(line) for line in resp.read().decode().splitlines() if line]
        conn.close()
        self.assertEqual(lines[0]["columns"][0]["name"], "n")
        self.assertEqual(sum(len(m.get("rows", [])) for m in lines), 2500)
        self.assertEqual(lines[-1]["command_tag"], "SELECT 2500")

    def test_rest_client_that_disconnects_cancels_its_stream(self):
        conn = http.client.HTTPConnection(self.server.http_host, self.server.http_port,
                                          timeout=60)
        body = json.dumps({"sql": "SELECT generate_series(1, 50000000) AS rest_disconnect"})
        conn.request("POST", "/v1/query:stream", body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        self.assertEqual(resp.status, 200)
        resp.readline()
        deadline = time.monotonic() + 10
        while not self.running("rest_disconnect") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.running("rest_disconnect"), 1)
        conn.sock.close()
        conn.close()
        self.assertEqual(self.wait_gone("rest_disconnect", limit_s=15.0), 0)

    def test_rest_client_that_disconnects_cancels_its_unary_query(self):
        conn = http.client.HTTPConnection(self.server.http_host, self.server.http_port,
                                          timeout=60)
        body = json.dumps({"sql": "SELECT pg_sleep(30) AS rest_unary_disconnect"})
        conn.request("POST", "/v1/query", body=body,
                     headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 10
        while not self.running("rest_unary_disconnect") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.running("rest_unary_disconnect"), 1)
        conn.sock.close()
        conn.close()
        self.assertEqual(self.wait_gone("rest_unary_disconnect", limit_s=5.0), 0)


if __name__ == "__main__":
    unittest.main()
