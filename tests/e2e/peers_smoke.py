"""The peer gateways of bench/peers answer Query as dbpool does.

Builds the Go peer, starts a throwaway PostgreSQL with a small
pgbench_accounts, dbpool-server and both peers on free loopback ports, and
sends each the benchmark statement and a failing one through Python grpcio:
the columns, rows, command tag and status codes must be dbpool's.

    /usr/bin/python3 -m unittest -v tests/e2e/peers_smoke.py

Its own ctest (e2e.peers), outside the test_*.py modules, because building
the Go peer makes it the slowest to start.
"""

import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

RPC_TIMEOUT_S = 10.0
BUILD_TIMEOUT_S = 600.0
# The statement `dbpool bench` drives in bench/compare.
BENCH_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
ACCOUNTS = 10

pb = None
pb_grpc = None


class PeersTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        global pb, pb_grpc
        work = harness.make_temp_dir("dbpool-e2e-peers-")
        cls.addClassCleanup(shutil.rmtree, work, True)
        harness.generate_python_stubs(work)
        from dbpool.v1 import database_service_pb2 as _pb
        from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
        pb, pb_grpc = _pb, _pb_grpc

        go_bin = work / "dbpool-peer-go"
        build = subprocess.run([str(harness.PEERS_DIR / "go" / "build.sh"), str(go_bin)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=BUILD_TIMEOUT_S)
        if build.returncode != 0:
            raise harness.HarnessError("bench/peers/go/build.sh failed:\n" + build.stdout)

        harness.start_stack(cls)
        cls.pg.psql(
            "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int,"
            " abalance int, filler char(84));"
            " INSERT INTO pgbench_accounts SELECT aid, 1, 10 * aid - 3, ''"
            " FROM generate_series(1, %d) aid;" % ACCOUNTS)

        cls.targets = {"dbpool": cls.server.address}
        for name, argv in (("go", [str(go_bin)]),
                           ("node", ["node", str(harness.PEERS_DIR / "node" / "server.js")])):
            peer = harness.Peer(name, argv, cls.pg.database_url, work, pool_size=4)
            cls.addClassCleanup(peer.stop)
            cls.targets[name] = peer.address
        cls.stubs = {}
        for name, address in cls.targets.items():
            channel = grpc.insecure_channel(address)
            cls.addClassCleanup(channel.close)
            cls.stubs[name] = pb_grpc.DatabaseServiceStub(channel)

    def query(self, target, sql, *params):
        request = pb.QueryRequest(sql=sql, params=[pb.Value(int64_value=p) for p in params])
        return self.stubs[target].Query(request, timeout=RPC_TIMEOUT_S)

    def assert_same_as_dbpool(self, sql, *params):
        """Sends the statement to all three; returns dbpool's answer."""
        want = self.query("dbpool", sql, *params)
        for peer in ("go", "node"):
            with self.subTest(peer=peer, sql=sql, params=params):
                got = self.query(peer, sql, *params)
                self.assertEqual(list(got.columns), list(want.columns))
                self.assertEqual(list(got.rows), list(want.rows))
                self.assertEqual(got.command_tag, want.command_tag)
                self.assertEqual(got.rows_affected, want.rows_affected)
        return want

    def test_benchmark_statement(self):
        for aid in (1, ACCOUNTS):
            want = self.assert_same_as_dbpool(BENCH_SQL, aid)
            self.assertEqual([(c.name, c.type_oid, c.type_name) for c in want.columns],
                             [("abalance", 23, "int4")])
            self.assertEqual([[v.int64_value for v in r.values] for r in want.rows],
                             [[10 * aid - 3]])
            self.assertEqual((want.command_tag, want.rows_affected), ("SELECT 1", 1))

    def test_no_row_and_whole_row(self):
        want = self.assert_same_as_dbpool(BENCH_SQL, ACCOUNTS + 1)
        self.assertEqual((len(want.rows), want.command_tag), (0, "SELECT 0"))
        want = self.assert_same_as_dbpool(
            "SELECT * FROM pgbench_accounts WHERE aid = $1", 2)
        self.assertEqual([c.type_name for c in want.columns],
                         ["int4", "int4", "int4", "bpchar"])

    def test_update(self):
        want = self.assert_same_as_dbpool(
            "UPDATE pgbench_accounts SET bid = 1 WHERE aid <= $1", 3)
        self.assertEqual((want.command_tag, want.rows_affected), ("UPDATE 3", 3))

    def test_value_mapping(self):
        self.assert_same_as_dbpool(
            "SELECT true AS b, 2::int2 AS i2, 9007199254740993::int8 AS i8,"
            " 1.5::float8 AS f8, 'Infinity'::float4 AS f4, 12.340::numeric AS n,"
            " 'x'::text AS t, 'ab'::varchar AS vc, '\\x00ff'::bytea AS by,"
            " '2024-01-02 03:04:05.123456+02'::timestamptz AS tz,"
            " '0001-01-01 00:00:00'::timestamp AS ts, 'infinity'::timestamptz AS inf,"
            " '{\"a\": [1]}'::jsonb AS j, NULL::int AS nul, interval '1 day' AS iv,"
            " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u")

    def test_errors_map_to_the_same_code(self):
        for sql, code in (("SELEC 1", grpc.StatusCode.INVALID_ARGUMENT),
                          ("SELECT 1/0", grpc.StatusCode.INVALID_ARGUMENT),
                          ("SELECT * FROM no_such_table", grpc.StatusCode.INVALID_ARGUMENT)):
            for target in self.targets:
                with self.subTest(target=target, sql=sql):
                    with self.assertRaises(grpc.RpcError) as caught:
                        self.query(target, sql)
                    self.assertEqual(caught.exception.code(), code)


if __name__ == "__main__":
    unittest.main()
