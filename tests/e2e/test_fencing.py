"""End-to-end tests of following the writable host: two independent
PostgreSQL clusters A and B behind one multi-host connection string with
target_session_attrs=read-write. A is fenced in place (turned read-only,
still up) under write load; in the second module class, A's postmaster is
killed under write load (an unplanned failover, B already writable).

    /usr/bin/python3 -m unittest -v tests/e2e/test_fencing.py
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

RPC_TIMEOUT_S = 5.0
POOL_SIZE = 8
WRITERS = 16

pb = None
pb_grpc = None


def _load_stubs(out_dir):
    global pb, pb_grpc
    harness.generate_python_stubs(out_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    pb, pb_grpc = _pb, _pb_grpc


class TwoHosts(unittest.TestCase):
    """Clusters A and B, each with a `writes` table, and a server whose
    connection string lists A then B with target_session_attrs=read-write."""

    EXTRA_URL_OPTIONS = ""

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        binary = harness.server_bin()
        if not binary.is_file():
            raise harness.HarnessError("server binary %s is missing" % binary)
        cls.a = harness.PgCluster.start(prefix="dbpool-e2e-pg-a-")
        cls.addClassCleanup(cls.a.stop)
        cls.b = harness.PgCluster.start(prefix="dbpool-e2e-pg-b-")
        cls.addClassCleanup(cls.b.stop)
        for cluster in (cls.a, cls.b):
            cluster.psql("CREATE TABLE writes (id bigserial PRIMARY KEY, writer int)")
        url = ("postgresql://postgres@127.0.0.1:%d,127.0.0.1:%d/postgres"
               "?target_session_attrs=read-write%s"
               % (cls.a.port, cls.b.port, cls.EXTRA_URL_OPTIONS))
        cls.server = harness.DbpoolServer.start(url, extra_args=[
            "--db-pool-max-connections=%d" % POOL_SIZE,
            "--db-pool-min-connections=%d" % POOL_SIZE])
        cls.addClassCleanup(cls.server.cleanup)
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.addClassCleanup(cls.channel.close)
        grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
        cls.db = pb_grpc.DatabaseServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        harness.stop_server_checked(cls)

    def dbpool_sessions(self, cluster):
        return int(cluster.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool'").strip())


class FencingTest(TwoHosts):

    def test_a_primary_fenced_in_place_is_left_for_the_writable_host(self):
        # Every connection is on A, the first host, which is writable.
        deadline = time.monotonic() + 10
        while self.dbpool_sessions(self.a) < POOL_SIZE and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.dbpool_sessions(self.a), POOL_SIZE)
        self.assertEqual(self.dbpool_sessions(self.b), 0)

        stop = threading.Event()
        lock = threading.Lock()
        outcomes = []  # (time, ok, code)

        def writer(n):
            # Bounded: at most 20 s of writes, one call at a time.
            end = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < end:
                try:
                    self.db.Query(pb.QueryRequest(
                        sql="INSERT INTO writes (writer) VALUES ($1)",
                        params=[pb.Value(int64_value=n)]), timeout=RPC_TIMEOUT_S)
                    result = (time.monotonic(), True, None)
                except grpc.RpcError as e:
                    result = (time.monotonic(), False, e.code())
                with lock:
                    outcomes.append(result)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        fenced_at = time.monotonic()
        self.a.psql("ALTER SYSTEM SET default_transaction_read_only = on;\n"
                    "SELECT pg_reload_conf();")
        time.sleep(4.0)
        stop.set()
        for t in threads:
            t.join(RPC_TIMEOUT_S + 25)
            self.assertFalse(t.is_alive())

        failed = [o for o in outcomes if not o[1]]
        after = [o for o in outcomes if o[0] > fenced_at]
        last_failure = max((o[0] for o in failed), default=fenced_at)
        settled = [o for o in outcomes if o[0] > last_failure]
        print("[fencing] %d calls, %d failed (%s), last failure %.0f ms after the fence, "
              "%d calls after it, all OK"
              % (len(outcomes), len(failed), sorted({str(o[2]) for o in failed}),
                 (last_failure - fenced_at) * 1000, len(settled)))
        # A write A refuses (25006) ran nothing, so the engine sends it again
        # through the connection string; the bound is the pool size.
        self.assertLessEqual(len(failed), POOL_SIZE)
        self.assertTrue(all(o[2] == grpc.StatusCode.PERMISSION_DENIED for o in failed), failed)
        self.assertGreater(len(after), len(failed))
        # Writes go on, to B, and nothing of dbpool is left on A.
        self.assertGreater(len(settled), 100)
        self.assertGreater(int(self.b.psql("SELECT count(*) FROM writes").strip()), 0)
        deadline = time.monotonic() + 10
        while self.dbpool_sessions(self.a) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(self.dbpool_sessions(self.a), 0)
        self.assertGreater(self.dbpool_sessions(self.b), 0)


class PostmasterKilledTest(TwoHosts):
    """SIGKILL to the first host's postmaster under write load: no call
    outlives its deadline, and writes go on to B by themselves."""

    EXTRA_URL_OPTIONS = "&connect_timeout=2"

    def test_writes_move_to_the_surviving_host_and_no_call_outlives_its_deadline(self):
        deadline = time.monotonic() + 10
        while self.dbpool_sessions(self.a) < POOL_SIZE and time.monotonic() < deadline:
            time.sleep(0.05)
        stop = threading.Event()
        lock = threading.Lock()
        outcomes = []  # (end time, ok, code, seconds taken)

        def writer(n):
            end = time.monotonic() + 20
            while not stop.is_set() and time.monotonic() < end:
                started = time.monotonic()
                try:
                    self.db.Query(pb.QueryRequest(
                        sql="INSERT INTO writes (writer) VALUES ($1)",
                        params=[pb.Value(int64_value=n)]), timeout=RPC_TIMEOUT_S)
                    ok, code = True, None
                except grpc.RpcError as e:
                    ok, code = False, e.code()
                now = time.monotonic()
                with lock:
                    outcomes.append((now, ok, code, now - started))

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        killed_at = time.monotonic()
        os.kill(self.a.postmaster_pid, signal.SIGKILL)
        time.sleep(5.0)
        stop.set()
        for t in threads:
            t.join(RPC_TIMEOUT_S + 25)
            self.assertFalse(t.is_alive())

        failed = [o for o in outcomes if not o[1]]
        last_failure = max((o[0] for o in failed), default=killed_at)
        settled = [o for o in outcomes if o[0] > last_failure]
        slowest = max(o[3] for o in outcomes)
        print("[failover] A's postmaster killed: %d calls, %d failed (%s), last failure "
              "%.0f ms after the kill, slowest call %.0f ms, %d calls after, all OK"
              % (len(outcomes), len(failed), sorted({str(o[2]) for o in failed}),
                 (last_failure - killed_at) * 1000, slowest * 1000, len(settled)))
        # Every call ended by its deadline (plus scheduling slack).
        self.assertLess(slowest, RPC_TIMEOUT_S + 1.0)
        # Writes go on, on B, by themselves.
        self.assertGreater(len(settled), 100)
        self.assertGreater(int(self.b.psql("SELECT count(*) FROM writes").strip()), 0)


class FrozenHostTest(TwoHosts):
    """The first host freezes (SIGSTOP to its postmaster and every backend:
    a hung or partitioned machine). Connections to it time out per host
    (connect_timeout=2) and the pool opens its new ones on B; without that,
    every attempt would wait on A until the pool's connect deadline."""

    EXTRA_URL_OPTIONS = "&connect_timeout=2"

    def frozen_pids(self):
        pids = [self.a.postmaster_pid]
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pids[0])],
                             capture_output=True, text=True, timeout=10).stdout
        return pids + [int(p) for p in out.split()]

    def test_new_connections_skip_a_host_that_does_not_answer(self):
        deadline = time.monotonic() + 10
        while self.dbpool_sessions(self.a) < POOL_SIZE and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = self.frozen_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: [os.kill(pid, signal.SIGCONT) for pid in pids])
        frozen_at = time.monotonic()
        served_by = None
        calls = 0
        # Calls on A's frozen backends run out of time and their
        # connections are replaced; the replacements go to B.
        while time.monotonic() < frozen_at + 40 and calls < 200:
            calls += 1
            try:
                reply = self.db.Query(pb.QueryRequest(sql="SELECT inet_server_port()"),
                                      timeout=3.0)
                served_by = reply.rows[0].values[0].int64_value
                break
            except grpc.RpcError:
                continue
        recovered_after = time.monotonic() - frozen_at
        print("[failover] A frozen: first call served %.1f s later, by port %s, "
              "after %d calls" % (recovered_after, served_by, calls))
        self.assertEqual(served_by, self.b.port)


if __name__ == "__main__":
    unittest.main()
