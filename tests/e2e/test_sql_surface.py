"""End-to-end tests of transactions and batches: the real server, a real
PostgreSQL, the Python gRPC client, the REST gateway and `buf curl`.

    /usr/bin/python3 -m unittest -v tests/e2e/test_sql_surface.py
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

RPC_TIMEOUT_S = 10.0

pb = None
pb_grpc = None
status_pb2 = None
error_details_pb2 = None


def _load_stubs(out_dir):
    global pb, pb_grpc, status_pb2, error_details_pb2
    harness.generate_python_stubs(out_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    from google.rpc import error_details_pb2 as _ed
    from google.rpc import status_pb2 as _st
    pb, pb_grpc, status_pb2, error_details_pb2 = _pb, _pb_grpc, _st, _ed


def error_info(err):
    """The google.rpc.ErrorInfo of a failed call, or None."""
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status()
        status.ParseFromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    return None


class SqlSurfaceTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        harness.start_stack(cls, server_args=[
            "--db-pool-max-connections=6", "--db-tx-max-open=3",
            "--db-tx-idle-timeout-ms=800", "--instance-name=e2e-a"])
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.addClassCleanup(cls.channel.close)
        grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
        cls.db = pb_grpc.DatabaseServiceStub(cls.channel)
        cls.pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        harness.stop_server_checked(cls)

    def setUp(self):
        self.pg.psql("TRUNCATE accounts; INSERT INTO accounts VALUES (1, 100), (2, 100)")

    # -- helpers --------------------------------------------------------------

    def begin(self, **kwargs):
        return self.db.BeginTransaction(pb.BeginTransactionRequest(**kwargs),
                                        timeout=RPC_TIMEOUT_S).transaction_id

    def query(self, sql, tx="", **kwargs):
        return self.db.Query(pb.QueryRequest(sql=sql, transaction_id=tx, **kwargs),
                             timeout=RPC_TIMEOUT_S)

    def commit(self, tx):
        return self.db.CommitTransaction(pb.CommitTransactionRequest(transaction_id=tx),
                                         timeout=RPC_TIMEOUT_S)

    def rollback(self, tx):
        return self.db.RollbackTransaction(pb.RollbackTransactionRequest(transaction_id=tx),
                                           timeout=RPC_TIMEOUT_S)

    def balance(self, account):
        return int(self.pg.psql("SELECT balance FROM accounts WHERE id = %d" % account).strip())

    def assert_code(self, fn, code):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn()
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        return ctx.exception

    def http(self, method, path, body=None, timeout=RPC_TIMEOUT_S):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server.http_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    # -- transactions -----------------------------------------------------------

    def test_a_transfer_across_calls_commits_atomically(self):
        tx = self.begin(isolation=pb.ISOLATION_LEVEL_SERIALIZABLE)
        self.query("UPDATE accounts SET balance = balance - 30 WHERE id = 1", tx)
        self.query("UPDATE accounts SET balance = balance + 30 WHERE id = 2", tx)
        # Not visible outside before the commit.
        self.assertEqual(self.balance(1), 100)
        self.commit(tx)
        self.assertEqual((self.balance(1), self.balance(2)), (70, 130))
        stats = self.db.GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S)
        self.assertEqual(stats.transaction_connections, 0)

    def test_each_isolation_level_is_what_postgres_runs(self):
        for level, name in ((pb.ISOLATION_LEVEL_READ_COMMITTED, "read committed"),
                            (pb.ISOLATION_LEVEL_REPEATABLE_READ, "repeatable read"),
                            (pb.ISOLATION_LEVEL_SERIALIZABLE, "serializable")):
            tx = self.begin(isolation=level)
            got = self.query("SELECT current_setting('transaction_isolation')", tx)
            self.assertEqual(got.rows[0].values[0].string_value, name)
            self.rollback(tx)

    def test_a_serialization_failure_is_aborted_and_the_transaction_gone(self):
        tx = self.begin(isolation=pb.ISOLATION_LEVEL_REPEATABLE_READ)
        self.query("SELECT balance FROM accounts WHERE id = 1", tx)
        self.query("UPDATE accounts SET balance = 0 WHERE id = 1")
        err = self.assert_code(
            lambda: self.query("UPDATE accounts SET balance = 1 WHERE id = 1", tx),
            grpc.StatusCode.ABORTED)
        self.assertEqual(error_info(err).reason, "40001")
        err = self.assert_code(lambda: self.query("SELECT 1", tx), grpc.StatusCode.ABORTED)
        self.assertEqual(error_info(err).reason, "TRANSACTION_ABORTED")

    def test_a_deadlock_aborts_one_transaction(self):
        a, b = self.begin(), self.begin()
        self.query("UPDATE accounts SET balance = 1 WHERE id = 1", a)
        self.query("UPDATE accounts SET balance = 2 WHERE id = 2", b)
        outcome = {}

        def blocked():
            try:
                self.query("UPDATE accounts SET balance = 1 WHERE id = 2", a)
                outcome["a"] = "ok"
            except grpc.RpcError as e:
                outcome["a"] = e
        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.3)
        try:
            self.query("UPDATE accounts SET balance = 2 WHERE id = 1", b)
            outcome["b"] = "ok"
        except grpc.RpcError as e:
            outcome["b"] = e
        t.join(RPC_TIMEOUT_S)
        self.assertFalse(t.is_alive())
        failed = [v for v in outcome.values() if v != "ok"]
        self.assertEqual(len(failed), 1, outcome)
        self.assertEqual(failed[0].code(), grpc.StatusCode.ABORTED)
        self.assertEqual(error_info(failed[0]).reason, "40P01")
        survivor = a if outcome["a"] == "ok" else b
        self.commit(survivor)

    def test_an_abandoned_transaction_is_rolled_back_and_its_locks_released(self):
        tx = self.begin()
        self.query("UPDATE accounts SET balance = 0 WHERE id = 1", tx)
        started = time.monotonic()
        # Blocks on the row lock until the idle timeout (800 ms) rolls it back.
        self.query("UPDATE accounts SET balance = 55 WHERE id = 1")
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertEqual(self.balance(1), 55)
        err = self.assert_code(lambda: self.query("SELECT 1", tx), grpc.StatusCode.ABORTED)
        self.assertEqual(error_info(err).reason, "TRANSACTION_EXPIRED")

    def wait_no_transactions(self):
        """Transactions other tests ended are rolled back in the background;
        waits (at most 5 s) until none is open."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            stats = self.db.GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S)
            if stats.transaction_connections == 0:
                return
            time.sleep(0.05)
        self.fail("transactions still open: %s" % stats)

    def test_the_open_transaction_cap_refuses_at_once(self):
        self.wait_no_transactions()
        txs = [self.begin() for _ in range(3)]
        started = time.monotonic()
        err = self.assert_code(self.begin, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(error_info(err).reason, "TRANSACTION_LIMIT")
        # Autocommit callers keep the rest of the pool.
        self.assertEqual(self.query("SELECT 1").rows[0].values[0].int64_value, 1)
        for tx in txs:
            self.rollback(tx)

    def test_ids_from_another_instance_or_garbage_are_refused(self):
        tx = self.begin()
        prefix, rand = tx.rsplit(".", 1)
        import base64
        other = base64.urlsafe_b64encode(b"e2e-b").decode().rstrip("=") + "." + rand
        err = self.assert_code(lambda: self.query("SELECT 1", other),
                               grpc.StatusCode.FAILED_PRECONDITION)
        self.assertEqual(error_info(err).reason, "TRANSACTION_ELSEWHERE")
        self.assertEqual(error_info(err).metadata["instance"], "e2e-b")
        self.assert_code(lambda: self.query("SELECT 1", "garbage"),
                         grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(len(rand), 32)
        self.rollback(tx)

    def test_commit_after_a_failed_statement_reports_aborted(self):
        tx = self.begin()
        self.assert_code(lambda: self.query("SELECT 1/0", tx), grpc.StatusCode.INVALID_ARGUMENT)
        err = self.assert_code(lambda: self.commit(tx), grpc.StatusCode.ABORTED)
        self.assertEqual(error_info(err).reason, "TRANSACTION_ABORTED")

    # -- batches ----------------------------------------------------------------

    def test_a_batch_is_all_or_nothing_and_names_the_failing_statement(self):
        req = pb.ExecuteBatchRequest(statements=[
            pb.QueryRequest(sql="UPDATE accounts SET balance = balance - 10 WHERE id = 1"),
            pb.QueryRequest(sql="UPDATE accounts SET balance = balance + 10 WHERE id = 2"),
            pb.QueryRequest(sql="INSERT INTO accounts VALUES (1, 0)"),
        ])
        err = self.assert_code(lambda: self.db.ExecuteBatch(req, timeout=RPC_TIMEOUT_S),
                               grpc.StatusCode.ALREADY_EXISTS)
        info = error_info(err)
        self.assertEqual(info.reason, "23505")
        self.assertEqual(info.metadata["statement_index"], "2")
        self.assertEqual((self.balance(1), self.balance(2)), (100, 100))

    def test_a_thousand_insert_batch(self):
        req = pb.ExecuteBatchRequest(statements=[
            pb.QueryRequest(sql="INSERT INTO accounts VALUES ($1, $2)",
                            params=[pb.Value(int64_value=1000 + i), pb.Value(int64_value=i)])
            for i in range(1000)])
        resp = self.db.ExecuteBatch(req, timeout=30)
        self.assertEqual(len(resp.results), 1000)
        self.assertTrue(all(r.command_tag == "INSERT 0 1" for r in resp.results))
        self.assertEqual(int(self.pg.psql("SELECT count(*) FROM accounts").strip()), 1002)

    def test_a_batch_inside_a_transaction(self):
        tx = self.begin()
        resp = self.db.ExecuteBatch(pb.ExecuteBatchRequest(transaction_id=tx, statements=[
            pb.QueryRequest(sql="UPDATE accounts SET balance = 0 WHERE id = 1"),
            pb.QueryRequest(sql="SELECT balance FROM accounts WHERE id = 1")]),
            timeout=RPC_TIMEOUT_S)
        self.assertEqual(resp.results[1].rows[0].values[0].int64_value, 0)
        self.rollback(tx)
        self.assertEqual(self.balance(1), 100)

    # -- REST -------------------------------------------------------------------

    def test_rest_routes_for_transactions_and_batches(self):
        status, begun = self.http("POST", "/v1/transactions",
                                  {"isolation": "ISOLATION_LEVEL_REPEATABLE_READ"})
        self.assertEqual(status, 200, begun)
        # Replies keep the proto's field names; requests may use either form.
        tx = begun["transaction_id"]
        self.assertIn("expire_time", begun)
        status, body = self.http("POST", "/v1/query", {
            "sql": "UPDATE accounts SET balance = 7 WHERE id = 1", "transactionId": tx})
        self.assertEqual(status, 200, body)
        status, body = self.http("POST", "/v1/transactions/%s:commit" % tx, {})
        self.assertEqual(status, 200, body)
        self.assertEqual(self.balance(1), 7)
        status, body = self.http("POST", "/v1/transactions/%s:rollback" % tx, {})
        self.assertEqual(status, 400, body)  # FAILED_PRECONDITION: already committed
        status, body = self.http("POST", "/v1/batch", {"statements": [
            {"sql": "SELECT 1 AS one"}, {"sql": "SELECT 2 AS two"}]})
        self.assertEqual(status, 200, body)
        self.assertEqual([r["columns"][0]["name"] for r in body["results"]], ["one", "two"])

    def test_buf_curl_begins_and_commits(self):
        # Outside the repository, so that the schema comes from reflection.
        cwd = tempfile.mkdtemp(prefix="dbpool-e2e-bufcurl-")
        self.addCleanup(shutil.rmtree, cwd, True)
        url = "%s/dbpool.v1.DatabaseService/" % self.server.url

        def call(method, data):
            res = harness.run_buf(["curl", "--protocol", "grpc", "--http2-prior-knowledge",
                                   "-d", json.dumps(data), url + method], cwd=cwd)
            self.assertEqual(res.returncode, 0, res.stderr)
            return json.loads(res.stdout)
        tx = call("BeginTransaction", {"readOnly": True})["transactionId"]
        got = call("Query", {"sql": "SELECT current_setting('transaction_read_only') AS ro",
                             "transactionId": tx})
        self.assertEqual(got["rows"][0]["values"][0]["stringValue"], "on")
        self.assertEqual(call("CommitTransaction", {"transactionId": tx}), {})


class TransactionOwnersTest(unittest.TestCase):
    """With bearer tokens, a transaction belongs to the token that began it;
    a read_only token may begin only read-only transactions."""

    TOKENS = {"alice": "alice-token-0123456789", "bob": "bob-token-0123456789ab",
              "reader": "reader-token-012345678"}

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        tokens = os.path.join(cls.stub_dir, "tokens")
        with open(tokens, "w") as f:
            f.write("alice read_write %(alice)s\nbob read_write %(bob)s\n"
                    "reader read_only %(reader)s\n" % cls.TOKENS)
        os.chmod(tokens, 0o600)
        harness.start_stack(cls, server_env={"DBPOOL_AUTH_TOKENS_FILE": tokens})
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.addClassCleanup(cls.channel.close)
        cls.db = pb_grpc.DatabaseServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        harness.stop_server_checked(cls)

    def auth(self, who):
        return [("authorization", "Bearer " + self.TOKENS[who])]

    def test_another_token_cannot_use_or_end_the_transaction(self):
        tx = self.db.BeginTransaction(pb.BeginTransactionRequest(), metadata=self.auth("alice"),
                                      timeout=RPC_TIMEOUT_S).transaction_id
        for call in (lambda: self.db.Query(pb.QueryRequest(sql="SELECT 1", transaction_id=tx),
                                           metadata=self.auth("bob"), timeout=RPC_TIMEOUT_S),
                     lambda: self.db.CommitTransaction(
                         pb.CommitTransactionRequest(transaction_id=tx),
                         metadata=self.auth("bob"), timeout=RPC_TIMEOUT_S)):
            with self.assertRaises(grpc.RpcError) as ctx:
                call()
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        got = self.db.Query(pb.QueryRequest(sql="SELECT 1", transaction_id=tx),
                            metadata=self.auth("alice"), timeout=RPC_TIMEOUT_S)
        self.assertEqual(got.rows[0].values[0].int64_value, 1)
        self.db.CommitTransaction(pb.CommitTransactionRequest(transaction_id=tx),
                                  metadata=self.auth("alice"), timeout=RPC_TIMEOUT_S)

    def test_a_read_only_token_begins_only_read_only_transactions(self):
        with self.assertRaises(grpc.RpcError) as ctx:
            self.db.BeginTransaction(pb.BeginTransactionRequest(), metadata=self.auth("reader"),
                                     timeout=RPC_TIMEOUT_S)
        self.assertEqual(ctx.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        tx = self.db.BeginTransaction(pb.BeginTransactionRequest(read_only=True),
                                      metadata=self.auth("reader"),
                                      timeout=RPC_TIMEOUT_S).transaction_id
        self.db.RollbackTransaction(pb.RollbackTransactionRequest(transaction_id=tx),
                                    metadata=self.auth("reader"), timeout=RPC_TIMEOUT_S)


class ShutdownWithOpenTransactionsTest(unittest.TestCase):
    """SIGTERM with transactions open: they are rolled back, the server
    exits 0 within its grace, and nothing they wrote remains."""

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        harness.start_stack(cls, server_args=["--shutdown-grace-ms=500"])

    def test_sigterm_rolls_back_open_transactions(self):
        self.pg.psql("CREATE TABLE IF NOT EXISTS drained (x int)")
        with grpc.insecure_channel(self.server.address) as channel:
            db = pb_grpc.DatabaseServiceStub(channel)
            for _ in range(2):
                tx = db.BeginTransaction(pb.BeginTransactionRequest(),
                                         timeout=RPC_TIMEOUT_S).transaction_id
                db.Query(pb.QueryRequest(sql="INSERT INTO drained VALUES (1)",
                                         transaction_id=tx), timeout=RPC_TIMEOUT_S)
        started = time.monotonic()
        rc = self.server.stop()
        self.assertEqual(rc, 0, self.server.diagnostics())
        self.assertLess(time.monotonic() - started, 10.0)
        self.assertEqual(self.pg.psql("SELECT count(*) FROM drained").strip(), "0")
        self.assertIn("2 open transactions are rolled back",
                      self.server.stderr_text() + self.server.stdout_text())


if __name__ == "__main__":
    unittest.main()
