"""End-to-end tests of dbpool-server through the Python gRPC client.

Run with Debian's interpreter (python3-grpcio 1.51, protobuf 3.21 runtime):

    /usr/bin/python3 -m unittest -v tests/e2e/test_python_client.py

The server binary is $DBPOOL_SERVER_BIN (default <repo>/build/dbpool-server).
"""

import json
import os
import shutil
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

# Every RPC carries a deadline so that a hung server fails the test instead of
# hanging it.
RPC_TIMEOUT_S = 10.0

# Filled in by setUpClass once the stubs are generated.
pb = None
pb_grpc = None
status_pb2 = None
error_details_pb2 = None
health_pb2 = None
health_pb2_grpc = None


def _load_stubs(out_dir):
    global pb, pb_grpc, status_pb2, error_details_pb2, health_pb2, health_pb2_grpc
    harness.generate_python_stubs(out_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    from google.rpc import error_details_pb2 as _ed
    from google.rpc import status_pb2 as _st
    from grpc.health.v1 import health_pb2 as _h
    from grpc.health.v1 import health_pb2_grpc as _hg
    pb, pb_grpc, status_pb2, error_details_pb2 = _pb, _pb_grpc, _st, _ed
    health_pb2, health_pb2_grpc = _h, _hg


class PythonClientTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        harness.start_stack(cls)
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.addClassCleanup(cls.channel.close)
        try:
            grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
        except grpc.FutureTimeoutError:
            raise harness.HarnessError(
                "could not connect to %s\n%s"
                % (cls.server.address, cls.server.diagnostics()))
        cls.db = pb_grpc.DatabaseServiceStub(cls.channel)
        cls.health = health_pb2_grpc.HealthStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        harness.stop_server_checked(cls)

    # -- helpers ------------------------------------------------------------

    def query(self, sql, *params, **kwargs):
        req = pb.QueryRequest(sql=sql, params=list(params), **kwargs)
        return self.db.Query(req, timeout=RPC_TIMEOUT_S)

    def assert_rpc_error(self, fn, code):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn()
        err = ctx.exception
        self.assertEqual(err.code(), code,
                         "want %s, got %s: %s" % (code, err.code(), err.details()))
        return err

    def raises_rpc_error(self, fn):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn()
        return ctx.exception

    def error_info(self, err):
        """Decodes google.rpc.Status from grpc-status-details-bin and returns
        (status, [ErrorInfo...])."""
        md = err.trailing_metadata() or ()
        raw = [v for k, v in md if k == "grpc-status-details-bin"]
        self.assertEqual(len(raw), 1,
                         "want exactly one grpc-status-details-bin trailer, got %r" % (md,))
        self.assertIsInstance(raw[0], bytes)
        status = status_pb2.Status()
        status.ParseFromString(raw[0])
        self.assertEqual(status.code, err.code().value[0],
                         "google.rpc.Status.code must match the gRPC status code")
        infos = []
        for any_msg in status.details:
            if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                self.assertTrue(any_msg.Unpack(info))
                infos.append(info)
        self.assertEqual(len(infos), 1,
                         "want one google.rpc.ErrorInfo in details, got %r"
                         % [d.type_url for d in status.details])
        return status, infos[0]

    @staticmethod
    def col(resp, name):
        for i, c in enumerate(resp.columns):
            if c.name == name:
                return i, c
        raise AssertionError("no column %r in %r" % (name, [c.name for c in resp.columns]))

    # -- Query ----------------------------------------------------------------

    def test_query_round_trip_types_and_params(self):
        sql = (
            "SELECT $1::int8 + 1 AS n,"
            " 7::int4 AS i4,"
            " $2::text AS greeting,"
            " 1.5::float8 AS f,"
            " 12.3400::numeric AS d,"
            " '\\xdeadbeef'::bytea AS b,"
            " true AS flag,"
            " NULL::text AS nothing,"
            " '{\"a\": [1, 2], \"b\": null}'::jsonb AS j,"
            " '2024-01-02 03:04:05.123456+00'::timestamptz AS ts")
        resp = self.query(sql,
                          pb.Value(int64_value=41),
                          pb.Value(string_value="héllo wörld"))
        expected_types = [
            ("n", "int8", 20), ("i4", "int4", 23), ("greeting", "text", 25),
            ("f", "float8", 701), ("d", "numeric", 1700), ("b", "bytea", 17),
            ("flag", "bool", 16), ("nothing", "text", 25), ("j", "jsonb", 3802),
            ("ts", "timestamptz", 1184)]
        self.assertEqual([c.name for c in resp.columns], [e[0] for e in expected_types])
        for c, (name, type_name, oid) in zip(resp.columns, expected_types):
            self.assertEqual(c.type_name, type_name, "column %s" % name)
            self.assertEqual(c.type_oid, oid, "column %s" % name)

        self.assertEqual(len(resp.rows), 1)
        row = resp.rows[0]
        self.assertEqual(len(row.values), len(expected_types))
        v = {c.name: row.values[i] for i, c in enumerate(resp.columns)}

        self.assertEqual(v["n"].WhichOneof("kind"), "int64_value")
        self.assertEqual(v["n"].int64_value, 42)
        self.assertEqual(v["i4"].WhichOneof("kind"), "int64_value")
        self.assertEqual(v["i4"].int64_value, 7)
        self.assertEqual(v["greeting"].WhichOneof("kind"), "string_value")
        self.assertEqual(v["greeting"].string_value, "héllo wörld")
        self.assertEqual(v["f"].WhichOneof("kind"), "double_value")
        self.assertEqual(v["f"].double_value, 1.5)
        self.assertEqual(v["d"].WhichOneof("kind"), "decimal_value")
        self.assertEqual(v["d"].decimal_value, "12.3400")
        self.assertEqual(v["b"].WhichOneof("kind"), "bytes_value")
        self.assertEqual(v["b"].bytes_value, b"\xde\xad\xbe\xef")
        self.assertEqual(v["flag"].WhichOneof("kind"), "bool_value")
        self.assertIs(v["flag"].bool_value, True)
        # NULL is null_value (an unset oneof would also mean NULL per the
        # proto, but the contract says null_value).
        self.assertEqual(v["nothing"].WhichOneof("kind"), "null_value")
        self.assertEqual(v["j"].WhichOneof("kind"), "json_value")
        self.assertEqual(json.loads(v["j"].json_value), {"a": [1, 2], "b": None})
        self.assertEqual(v["ts"].WhichOneof("kind"), "timestamp_value")
        self.assertEqual(v["ts"].timestamp_value.seconds, 1704164645)
        self.assertEqual(v["ts"].timestamp_value.nanos, 123456000)

        self.assertEqual(resp.command_tag, "SELECT 1")
        self.assertEqual(resp.rows_affected, 1)

    def test_query_type_hint_binds_parameter_type(self):
        u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        resp = self.query("SELECT pg_typeof($1)::text AS t, $1 AS u",
                          pb.Value(string_value=u, type_hint="uuid"))
        self.assertEqual(len(resp.rows), 1)
        i_t, _ = self.col(resp, "t")
        i_u, c_u = self.col(resp, "u")
        self.assertEqual(resp.rows[0].values[i_t].string_value, "uuid")
        self.assertEqual(c_u.type_name, "uuid")
        self.assertEqual(c_u.type_oid, 2950)
        # uuid has no dedicated kind: its text form goes into string_value.
        self.assertEqual(resp.rows[0].values[i_u].WhichOneof("kind"), "string_value")
        self.assertEqual(resp.rows[0].values[i_u].string_value, u)

    def test_query_multiple_rows_and_dml(self):
        table = "e2e_py_%d" % os.getpid()
        self.query("CREATE TABLE %s (id int8 PRIMARY KEY, name text)" % table)
        try:
            ins = self.query(
                "INSERT INTO %s (id, name) SELECT g, 'n' || g FROM generate_series(1, $1::int4) g"
                % table, pb.Value(int64_value=3))
            self.assertEqual(ins.rows_affected, 3)
            self.assertEqual(ins.command_tag, "INSERT 0 3")
            self.assertEqual(len(ins.rows), 0)

            sel = self.query("SELECT id, name FROM %s ORDER BY id" % table)
            self.assertEqual([r.values[0].int64_value for r in sel.rows], [1, 2, 3])
            self.assertEqual([r.values[1].string_value for r in sel.rows], ["n1", "n2", "n3"])
            self.assertEqual(sel.command_tag, "SELECT 3")

            # Unique violation: SQLSTATE 23505 in ErrorInfo.
            err = self.raises_rpc_error(
                lambda: self.query("INSERT INTO %s (id, name) VALUES ($1, $2)" % table,
                                   pb.Value(int64_value=1), pb.Value(string_value="dup")))
            _, info = self.error_info(err)
            self.assertEqual(info.reason, "23505")
            self.assertEqual(info.domain, "postgresql")
        finally:
            self.query("DROP TABLE IF EXISTS %s" % table)

    def test_query_division_by_zero_error_info(self):
        err = self.assert_rpc_error(lambda: self.query("SELECT 1/0"),
                                    grpc.StatusCode.INVALID_ARGUMENT)
        status, info = self.error_info(err)
        self.assertEqual(status.code, 3)
        self.assertEqual(info.reason, "22012")
        self.assertEqual(info.domain, "postgresql")

    def test_query_syntax_error_error_info(self):
        err = self.assert_rpc_error(lambda: self.query("SELEC 1"),
                                    grpc.StatusCode.INVALID_ARGUMENT)
        _, info = self.error_info(err)
        self.assertEqual(info.reason, "42601")
        self.assertEqual(info.domain, "postgresql")

    def test_query_empty_sql_is_invalid_argument(self):
        self.assert_rpc_error(lambda: self.query(""), grpc.StatusCode.INVALID_ARGUMENT)

    def test_server_still_serves_after_errors(self):
        for _ in range(3):
            with self.assertRaises(grpc.RpcError):
                self.query("SELECT 1/0")
        resp = self.query("SELECT 1 AS one")
        self.assertEqual(resp.rows[0].values[0].int64_value, 1)

    # -- pool stats -----------------------------------------------------------

    def assert_sane_stats(self, s):
        self.assertGreater(s.max_connections, 0)
        for name in ("active_connections", "idle_connections", "waiting_connections",
                     "total_connections", "min_connections", "connecting_connections"):
            self.assertGreaterEqual(getattr(s, name), 0, name)
        self.assertLessEqual(s.min_connections, s.max_connections)
        self.assertLessEqual(s.total_connections, s.max_connections)
        # The pool takes its snapshot under one lock, so the gauges agree
        # exactly, even while connections open and close.
        self.assertEqual(s.total_connections,
                         s.idle_connections + s.active_connections + s.connecting_connections,
                         "total != idle + active + connecting: %s" % s)
        self.assertTrue(s.database_reachable, "database_reachable: %s" % s)
        self.assertGreater(s.time.seconds, 0, "snapshot time must be set")
        self.assertLess(abs(s.time.seconds - time.time()), 300,
                        "snapshot time far from now: %s" % s.time)

    def test_get_pool_stats(self):
        # Make sure at least one acquire happened.
        self.query("SELECT 1")
        s = self.db.GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S)
        self.assert_sane_stats(s)
        self.assertGreaterEqual(s.connections_opened, 1)
        self.assertGreaterEqual(s.acquires_immediate + s.acquires_waited, 1)

    def test_stream_pool_stats(self):
        req = pb.StreamPoolStatsRequest()
        req.interval.FromMilliseconds(100)
        call = self.db.StreamPoolStats(req, timeout=RPC_TIMEOUT_S)
        got = []
        times = []
        start = time.monotonic()
        try:
            for snap in call:
                times.append(time.monotonic() - start)
                got.append(snap)
                if len(got) >= 3:
                    break
        finally:
            call.cancel()
        self.assertGreaterEqual(len(got), 3)
        for s in got:
            self.assert_sane_stats(s)
        self.assertLess(times[0], 2.0, "first snapshot should arrive at once")
        self.assertLess(times[2], 5.0, "3 snapshots at 100 ms took %.2f s" % times[2])
        # Snapshots 2 and 3 come one interval apart (be lenient with timers).
        self.assertGreater(times[2] - times[0], 0.15,
                           "3 snapshots 100 ms apart arrived within %.3f s" % (times[2] - times[0]))
        self.assertEqual(call.code(), grpc.StatusCode.CANCELLED)
        # The server survives a cancelled stream.
        s = self.db.GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S)
        self.assert_sane_stats(s)

    def test_stream_pool_stats_interval_clamped_to_100ms(self):
        req = pb.StreamPoolStatsRequest()
        req.interval.FromMilliseconds(1)
        call = self.db.StreamPoolStats(req, timeout=RPC_TIMEOUT_S)
        times = []
        start = time.monotonic()
        try:
            for _ in call:
                times.append(time.monotonic() - start)
                if len(times) >= 4:
                    break
        finally:
            call.cancel()
        self.assertEqual(len(times), 4)
        # Three intervals of at least 100 ms each (allow timer slack).
        self.assertGreater(times[3] - times[0], 0.25,
                           "interval of 1 ms was not clamped to 100 ms: %r" % times)

    # -- health -----------------------------------------------------------------

    def test_health_serving(self):
        for service in ("", "dbpool.v1.DatabaseService", "liveness"):
            resp = self.health.Check(health_pb2.HealthCheckRequest(service=service),
                                     timeout=RPC_TIMEOUT_S)
            self.assertEqual(resp.status, health_pb2.HealthCheckResponse.SERVING,
                             "service %r" % service)

    def test_health_unknown_service_not_found(self):
        self.assert_rpc_error(
            lambda: self.health.Check(
                health_pb2.HealthCheckRequest(service="no.such.v1.Service"),
                timeout=RPC_TIMEOUT_S),
            grpc.StatusCode.NOT_FOUND)


if __name__ == "__main__":
    unittest.main(verbosity=2)
