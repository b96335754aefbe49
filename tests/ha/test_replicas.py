"""Many dbpool replicas on one PostgreSQL behind a load balancer.

Three dbpool-server processes share one throwaway PostgreSQL, each with its
own application_name, so that `SELECT current_setting('application_name')`
tells which replica served a call. Callers load them through

  (a) HAProxy in HTTP/2 mode, health-checking each replica's /readyz, and
  (b) a grpcio channel with client-side round_robin over the three
      addresses and a retry policy for UNAVAILABLE,

and under that load replica r1 gets SIGTERM (no call may fail: it drains
while the balancer moves away from it), then replica r2 gets SIGKILL (only
calls already on their way to r2 may fail, as UNAVAILABLE; with the client's
retry policy none). Figures are printed as "[ha] " lines.

    cd tests/ha && DBPOOL_SERVER_BIN=... /usr/bin/python3 -m unittest -v test_replicas
"""

import csv
import io
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE.parent / "support"))
import harness  # noqa: E402
import haproxy  # noqa: E402

import grpc  # noqa: E402

NAMES = ("r1", "r2", "r3")
POOL_SIZE = 8
CALLERS = 16
RPC_TIMEOUT_S = 5.0
SHUTDOWN_GRACE_MS = 5000
# After SIGTERM a replica says NOT_SERVING and serves on this long, so that
# the balancers stop sending first: HAProxy's check every 200 ms (fall 1),
# the client's health Watch (the server sends changes within 250 ms).
SHUTDOWN_DELAY_MS = 1000
# A few milliseconds in PostgreSQL keep calls in flight on every replica, so
# that the SIGTERM drains real work and the SIGKILL cuts some.
SQL = "SELECT current_setting('application_name') FROM pg_sleep(0.002)"
STEADY_S = 2.0
AFTER_TERM_S = 1.0
AFTER_KILL_S = 2.0
# Round-robin in both balancers gives a third each; a policy that sticks to
# one replica (pick_first, one HTTP/2 connection pinned to one server)
# gives one of them nearly everything and the others nothing.
MIN_SHARE = 0.25
# The callers stop on their own after this, whatever happens to the test.
LOAD_LIMIT_S = 60.0
HEALTH_CHECK_INTERVAL_MS = 200
SERVICE = "dbpool.v1.DatabaseService"

pb = None
pb_grpc = None
pg = None


def setUpModule():
    global pb, pb_grpc, pg
    stub_dir = tempfile.mkdtemp(prefix="dbpool-ha-stubs-")
    unittest.addModuleCleanup(shutil.rmtree, stub_dir, True)
    harness.generate_python_stubs(stub_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    pb, pb_grpc = _pb, _pb_grpc
    binary = harness.server_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise harness.HarnessError("server binary %s is missing" % binary)
    pg = harness.PgCluster.start(prefix="dbpool-ha-pg-")
    unittest.addModuleCleanup(pg.stop)


class Call:
    __slots__ = ("start", "end", "replica", "code", "details")

    def __init__(self, start, end, replica, code=None, details=None):
        self.start, self.end, self.replica = start, end, replica
        self.code, self.details = code, details


class Load:
    """CALLERS threads calling Query through `stub`, one call at a time
    each, until stop() or LOAD_LIMIT_S."""

    def __init__(self, stub):
        self.stub = stub
        self.calls = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._caller, daemon=True)
                         for _ in range(CALLERS)]

    def start(self):
        for t in self._threads:
            t.start()

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(RPC_TIMEOUT_S + 5)
        if any(t.is_alive() for t in self._threads):
            raise AssertionError("a caller is still in a call %.0f s after the stop"
                                 % (RPC_TIMEOUT_S + 5))

    def _caller(self):
        end = time.monotonic() + LOAD_LIMIT_S
        while not self._stop.is_set() and time.monotonic() < end:
            started = time.monotonic()
            try:
                reply = self.stub.Query(pb.QueryRequest(sql=SQL), timeout=RPC_TIMEOUT_S)
                call = Call(started, time.monotonic(), reply.rows[0].values[0].string_value)
            except grpc.RpcError as e:
                call = Call(started, time.monotonic(), None, e.code(), e.details())
            with self._lock:
                self.calls.append(call)


def start_replica(name):
    return harness.DbpoolServer.start(pg.database_url, extra_env={
        "DB_POOL_MAX_CONNECTIONS": str(POOL_SIZE),
        "DB_POOL_MIN_CONNECTIONS": str(POOL_SIZE),
        "DB_APPLICATION_NAME": name,
        "DBPOOL_INSTANCE_NAME": name,
        "DBPOOL_SHUTDOWN_GRACE_MS": str(SHUTDOWN_GRACE_MS),
        "DBPOOL_SHUTDOWN_DELAY_MS": str(SHUTDOWN_DELAY_MS),
    })


def share_line(counts):
    total = sum(counts.values())
    return ", ".join("%s %d (%.1f %%)" % (n, counts[n], 100.0 * counts[n] / total)
                     for n in NAMES)


class ReplicaFaults:
    """The scenario both balancers go through. A subclass makes self.channel
    in setUp, and says how long after the kill a call sent to the dead
    replica may still fail (KILL_WINDOW_S)."""

    MODE = None
    # Zero: the client retries on another replica whatever was cut.
    KILL_WINDOW_S = 0.0

    def setUp(self):
        self.replicas = {}
        for name in NAMES:
            server = start_replica(name)
            self.addCleanup(server.cleanup)
            self.replicas[name] = server

    def balancer_view(self):
        """The balancer's own account, for the report; empty by default."""
        return ""

    def test_sigterm_drains_and_sigkill_fails_only_calls_in_flight(self):
        load = Load(pb_grpc.DatabaseServiceStub(self.channel))
        load.start()
        try:
            time.sleep(STEADY_S)
            term_at = time.monotonic()
            rc = self.replicas["r1"].stop(SHUTDOWN_GRACE_MS / 1000.0 + 10)
            exited_at = time.monotonic()
            time.sleep(AFTER_TERM_S)
            at_kill = self.balancer_view()
            kill_at = time.monotonic()
            self.replicas["r2"].kill()
            time.sleep(AFTER_KILL_S)
        finally:
            load.stop()
        calls = load.calls
        tag = "[ha] %s:" % self.MODE

        before = [c for c in calls if c.end < term_at]
        counts = {n: sum(1 for c in before if c.replica == n) for n in NAMES}
        print("%s before the faults %d calls in %.1f s: %s"
              % (tag, len(before), STEADY_S, share_line(counts)))

        term_window = [c for c in calls if c.end >= term_at and c.start < kill_at]
        term_failed = [c for c in calls if c.code is not None and c.end < kill_at]
        r1_after = [c for c in calls if c.replica == "r1" and c.end >= term_at]
        print("%s SIGTERM r1: exit code %s after %.0f ms; %d calls until the kill, "
              "%d failed %s; r1 answered %d calls after the signal"
              % (tag, rc, (exited_at - term_at) * 1000, len(term_window),
                 len(term_failed), sorted({c.code.name for c in term_failed}),
                 len(r1_after)))

        in_flight = [c for c in calls if c.start < kill_at < c.end]
        kill_failed = [c for c in calls if c.code is not None and c.end >= kill_at]
        late = [c for c in kill_failed if c.start >= kill_at]
        after = [c for c in calls if c.start >= kill_at]
        slowest = max(c.end - c.start for c in calls)
        print("%s SIGKILL r2: %d calls in flight at the kill, %d failed %s, %d of them "
              "sent after the kill, the last %.0f ms after it; %d calls sent after the "
              "kill; slowest call %.0f ms%s"
              % (tag, len(in_flight), len(kill_failed),
                 sorted({c.code.name for c in kill_failed}), len(late),
                 max((c.start - kill_at for c in late), default=0) * 1000, len(after),
                 slowest * 1000, at_kill))
        end_view = self.balancer_view()
        if end_view:
            print("%s at the end%s" % (tag, end_view))

        for name in NAMES:
            self.assertGreaterEqual(counts[name], MIN_SHARE * len(before),
                                    "%s served too small a share: %s"
                                    % (name, share_line(counts)))
        self.assertEqual(rc, 0, "r1 exit code after SIGTERM\n"
                         + self.replicas["r1"].diagnostics())
        self.assertEqual(
            [], ["%s %r, sent %.0f ms and ended %.0f ms after the signal"
                 % (c.code.name, c.details, (c.start - term_at) * 1000,
                    (c.end - term_at) * 1000) for c in term_failed],
            "calls failed around r1's SIGTERM")
        # Only calls already on their way to r2, or sent to it before the
        # balancer could know it was gone, may fail; and they fail fast.
        self.assertEqual(
            [], ["%s %r, sent %.0f ms after the kill" % (c.code.name, c.details,
                                                         (c.start - kill_at) * 1000)
                 for c in kill_failed
                 if c.start >= kill_at + self.KILL_WINDOW_S
                 or c.code != grpc.StatusCode.UNAVAILABLE],
            "calls failed outside the window of r2's SIGKILL")
        self.assertLess(slowest, RPC_TIMEOUT_S)
        # The survivor carries the load on its own.
        self.assertGreater(len(after), 100)
        self.assertTrue(all(c.replica == "r3" for c in after if c.code is None))


def haproxy_config(frontend_port, admin_socket, replicas):
    servers = "\n".join(
        "    server %s 127.0.0.1:%d proto h2 check check-proto h1 port %d"
        % (name, s.port, s.http_port)
        for name, s in replicas.items())
    return """\
global
    stats socket %(admin_socket)s level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # Connection failures only (retry-on's default): a request is never sent
    # twice, since the statement may have run.
    retries 3
    option redispatch 1

frontend grpc
    bind 127.0.0.1:%(frontend_port)d proto h2
    default_backend dbpool

backend dbpool
    balance roundrobin
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    # check-proto h1: the checks go to the REST port, which speaks HTTP/1.1;
    # without it they would take the server line's h2 and fail with "Socket
    # error" (HAProxy 2.6 does not take check-proto from default-server).
    default-server inter %(inter)dms fall 1 rise 1
%(servers)s
""" % {"admin_socket": admin_socket, "frontend_port": frontend_port,
       "inter": HEALTH_CHECK_INTERVAL_MS, "servers": servers}


def show_stat(admin_socket):
    """HAProxy's `show stat` for the dbpool backend's servers, by name."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(admin_socket)
        s.sendall(b"show stat\n")
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    text = b"".join(chunks).decode().lstrip("# ")
    return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "dbpool" and row["svname"] in NAMES}


class HaproxyTest(ReplicaFaults, unittest.TestCase):
    """(a) One plain channel to HAProxy; no retries in the client."""

    MODE = "haproxy"
    # Requests HAProxy had sent to r2, or sends before it sees the
    # connection close or a check fail (fall 1), come back as
    # RST_STREAM(REFUSED_STREAM): retry-on conn-failure does not resend a
    # request that has left.
    KILL_WINDOW_S = (HEALTH_CHECK_INTERVAL_MS + 100) / 1000.0

    def setUp(self):
        super().setUp()
        run_dir = Path(tempfile.mkdtemp(prefix="dbpool-ha-haproxy-"))
        self.addCleanup(shutil.rmtree, run_dir, True)
        self.admin_socket = str(run_dir / "admin.sock")
        port = haproxy.free_port()
        self.proxy = haproxy.Haproxy.start(
            haproxy_config(port, self.admin_socket, self.replicas))
        self.addCleanup(self.proxy.stop)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stat = show_stat(self.admin_socket)
            if len(stat) == len(NAMES) and all(r["status"] == "UP" for r in stat.values()):
                break
            time.sleep(0.05)
        else:
            self.fail("HAProxy did not see every replica UP within 10 s: %s"
                      % {n: r["status"] for n, r in show_stat(self.admin_socket).items()})
        self.channel = grpc.insecure_channel("127.0.0.1:%d" % port)
        self.addCleanup(self.channel.close)
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT_S)

    def balancer_view(self):
        stat = show_stat(self.admin_socket)
        return "; HAProxy: " + ", ".join(
            "%s %s, %s answered, %s redispatched, %s cut by the server, %s in flight"
            % (n, stat[n]["status"], stat[n]["hrsp_2xx"], stat[n]["wredis"],
               stat[n]["srv_abrt"], stat[n]["scur"]) for n in NAMES)


SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    # Each subchannel watches its replica's grpc.health.v1 status, so a
    # replica turning NOT_SERVING on SIGTERM gets no new calls.
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
}


class RoundRobinTest(ReplicaFaults, unittest.TestCase):
    """(b) The client balances itself over the three addresses and retries
    UNAVAILABLE on another replica."""

    MODE = "round_robin"

    def setUp(self):
        super().setUp()
        target = "ipv4:" + ",".join(s.address for s in self.replicas.values())
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
            ("grpc.enable_retries", 1),
        ])
        self.addCleanup(self.channel.close)
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT_S)


if __name__ == "__main__":
    unittest.main()
