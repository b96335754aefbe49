"""What the Patroni test modules share: the cluster, HAProxy in front of it,
two dbpool servers (one through the multi-host URL, one through HAProxy's
primary port), a steady write load and probes that time the database side.

Figures are taken on the test's monotonic clock:

  * calls: (start, end, ok, code) per INSERT, from CALLERS callers;
  * "stopped accepting": a psycopg2 session on the old primary, polled
    every PROBE_INTERVAL_S, fails (a fast shutdown ends every session when
    it stops accepting connections; a SIGKILL is timed at the kill);
  * "accepts writes": a session on a replica first sees
    pg_is_in_recovery() false.
"""

import bisect
import heapq
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))
sys.path.insert(0, str(HERE.parent / "support"))
import harness  # noqa: E402
import haproxy  # noqa: E402
import patroni_cluster  # noqa: E402

import grpc  # noqa: E402

CALLERS = 32
POOL_SIZE = 16
RPC_TIMEOUT_S = 5.0
# A call may end this much past its deadline (thread scheduling on a busy
# two-core machine) and still count as bounded by it.
DEADLINE_SLACK_S = 0.5
PROBE_INTERVAL_S = 0.005
INSERT = "INSERT INTO writes (caller) VALUES ($1)"

# The standard deployment: one port for the primary, one for the replicas,
# each server checked through Patroni's REST API. HEAD keeps the checks
# cheap; fall 2 at 500 ms takes a failed node out within a second, rise 1
# puts the new primary in at its first good check, and on-marked-down
# ends the sessions still open to a node that left its role. retries 0:
# dbpool retries a refused connection itself, within half a second, while
# HAProxy waits a second between retries to the same server; with the
# default of 3, connections sent to a primary that had just stopped (still
# UP until its checks fail) held dbpool's connection attempts for 3 s, and
# no write went through for 3 s after the new primary accepted them.
HAPROXY_CONFIG = """\
global
  maxconn 1000

defaults
  mode tcp
  retries 0
  timeout connect 2s
  timeout client 30m
  timeout server 30m
  timeout check 1s

listen primary
  bind 127.0.0.1:{primary_port}
  option httpchk HEAD /primary
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{primary_servers}

listen replicas
  bind 127.0.0.1:{replica_port}
  balance roundrobin
  option httpchk HEAD /replica
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1 on-marked-down shutdown-sessions
{replica_servers}
"""

pb = None
pb_grpc = None


def haproxy_config(cluster, primary_port, replica_port):
    servers = "\n".join("  server %s 127.0.0.1:%d check port %d"
                        % (n.name, n.pg_port, n.rest_port)
                        for n in cluster.nodes.values())
    return HAPROXY_CONFIG.format(primary_port=primary_port, replica_port=replica_port,
                                 primary_servers=servers, replica_servers=servers)


def require_tools():
    """A missing tool fails the test with its name: these tests never skip
    (under CI a skip would pass unnoticed)."""
    patroni_cluster.require_tools()
    haproxy.haproxy_bin()


def start(test_class):
    """Starts everything for test_class and registers class cleanups that
    stop it, also when a later step fails. Sets cluster, proxy, servers
    ({"multi-host": server, "haproxy": server}) and stubs ({same keys})."""
    global pb, pb_grpc
    require_tools()
    binary = harness.server_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise harness.HarnessError("server binary %s is missing (set DBPOOL_SERVER_BIN)"
                                   % binary)
    stub_dir = tempfile.mkdtemp(prefix="dbpool-ha-stubs-")
    test_class.addClassCleanup(shutil.rmtree, stub_dir, True)
    harness.generate_python_stubs(stub_dir)
    from dbpool.v1 import database_service_pb2, database_service_pb2_grpc
    pb, pb_grpc = database_service_pb2, database_service_pb2_grpc

    cluster = patroni_cluster.PatroniCluster.start()
    test_class.addClassCleanup(cluster.stop)
    test_class.cluster = cluster
    # Without autovacuum on it: a new primary starts autovacuum at once, and
    # on these two shared cores a VACUUM of the table just written would
    # weigh on the seconds after a switch that the test compares with
    # those before it.
    cluster.psql(cluster.leader(),
                 "CREATE TABLE writes (id bigserial PRIMARY KEY, caller int) "
                 "WITH (autovacuum_enabled = off)")

    primary_port, replica_port = haproxy.free_ports(2)
    test_class.proxy = haproxy.Haproxy.start(
        haproxy_config(cluster, primary_port, replica_port))
    test_class.addClassCleanup(test_class.proxy.stop)
    test_class.haproxy_primary_port = primary_port

    # target_session_attrs=read-write through HAProxy too: its checks lag
    # a role change by up to inter x fall, and in that second a new
    # connection could reach a node that has just become a replica.
    urls = {
        "multi-host": cluster.multi_host_url(
            "target_session_attrs=read-write&connect_timeout=2"),
        "haproxy": "postgresql://postgres@127.0.0.1:%d/postgres"
                   "?target_session_attrs=read-write&connect_timeout=2" % primary_port,
    }
    test_class.servers = {}
    test_class.stubs = {}
    for name, url in urls.items():
        server = harness.DbpoolServer.start(url, extra_args=[
            "--db-pool-max-connections=%d" % POOL_SIZE,
            "--db-pool-min-connections=%d" % POOL_SIZE])
        test_class.addClassCleanup(server.cleanup)
        channel = grpc.insecure_channel(server.address)
        test_class.addClassCleanup(channel.close)
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        test_class.servers[name] = server
        test_class.stubs[name] = pb_grpc.DatabaseServiceStub(channel)


class Load:
    """CALLERS callers, each calling Query(INSERT) one call at a time with
    an RPC_TIMEOUT_S deadline, until stop(), max_seconds or max_calls.

    The callers are chains of asynchronous calls driven by one thread (a
    caller's next call starts when its last one ends) rather than CALLERS
    threads: on two cores, 32 Python threads fighting over the GIL would
    take a core from the database and dbpool, and make the figures the
    client's more than theirs. A caller whose call failed waits
    RETRY_PAUSE_S before the next, as a client retrying would, so that
    calls refused at once do not spin and swell the failure count."""

    RETRY_PAUSE_S = 0.1

    def __init__(self, stub, max_seconds=60.0, max_calls=500000):
        self.stub = stub
        self.max_seconds = max_seconds
        self.max_calls = max_calls
        self.calls = []  # (start, end, ok, code), in the order they ended
        self._stop = threading.Event()
        self._done = queue.Queue()
        self._requests = [pb.QueryRequest(sql=INSERT, params=[pb.Value(int64_value=n)])
                          for n in range(CALLERS)]
        self._driver = threading.Thread(target=self._run, daemon=True)
        self.stuck = 0

    def _issue(self, n):
        started = time.monotonic()
        future = self.stub.Query.future(self._requests[n], timeout=RPC_TIMEOUT_S)
        future.add_done_callback(
            lambda f: self._done.put((n, started, time.monotonic(), f.code())))

    def _run(self):
        end = time.monotonic() + self.max_seconds
        for n in range(CALLERS):
            self._issue(n)
        in_call = CALLERS
        paused = []  # (due, caller), callers waiting after a failure
        def going_on():
            return not (self._stop.is_set() or time.monotonic() >= end
                        or len(self.calls) + in_call + len(paused) >= self.max_calls)

        while in_call or paused:
            now = time.monotonic()
            while paused and paused[0][0] <= now:
                caller = heapq.heappop(paused)[1]
                if going_on():
                    self._issue(caller)
                    in_call += 1
            wait = paused[0][0] - now if paused else RPC_TIMEOUT_S + 10
            try:
                n, started, ended, code = self._done.get(timeout=max(0.0, wait))
            except queue.Empty:
                if paused:
                    continue
                # grpc ends every call by its deadline; a caller silent this
                # long is stuck, and stop() reports it.
                self.stuck = in_call
                return
            in_call -= 1
            ok = code == grpc.StatusCode.OK
            self.calls.append((started, ended, ok, None if ok else code))
            if not going_on():
                continue
            if ok:
                self._issue(n)
                in_call += 1
            else:
                heapq.heappush(paused, (time.monotonic() + self.RETRY_PAUSE_S, n))

    def start(self):
        self._driver.start()
        return self

    def stop(self):
        """Stops the callers; returns every call, sorted by start. Raises if
        a call did not end within RPC_TIMEOUT_S + 10 s."""
        self._stop.set()
        self._driver.join(2 * (RPC_TIMEOUT_S + 10))
        if self._driver.is_alive() or self.stuck:
            raise AssertionError("%d callers got no answer within %.0f s"
                                 % (self.stuck or CALLERS, RPC_TIMEOUT_S + 10))
        return sorted(self.calls)


class Probe:
    """A psycopg2 session on one node, polled every PROBE_INTERVAL_S.

    mode "down": the time of its first failure (the node stopped
    accepting). mode "writable": the time it first answers
    pg_is_in_recovery() false (the node accepts writes)."""

    def __init__(self, port, mode, max_seconds=60.0):
        import psycopg2
        self.mode = mode
        self.at = None
        self.error = None
        self._stop = threading.Event()
        self._conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                                      dbname="postgres", connect_timeout=2,
                                      application_name="ha-probe")
        self._conn.autocommit = True
        self._end = time.monotonic() + max_seconds
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psycopg2
        try:
            with self._conn.cursor() as cur:
                while not self._stop.is_set() and time.monotonic() < self._end:
                    try:
                        cur.execute("SELECT pg_is_in_recovery()")
                        in_recovery = cur.fetchone()[0]
                    except psycopg2.Error as e:
                        if self.mode == "down":
                            self.at = time.monotonic()
                        else:
                            self.error = e
                        return
                    if self.mode == "writable" and not in_recovery:
                        self.at = time.monotonic()
                        return
                    time.sleep(PROBE_INTERVAL_S)
        finally:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass

    def wait(self, timeout):
        """The time it saw its event, or None if it did not within timeout."""
        self._thread.join(timeout)
        return self.at

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def best_second(calls, first_end, last_end, step=0.05):
    """The most calls that succeeded within one second, over the sliding
    one-second windows that end between first_end and last_end."""
    ends = sorted(c[1] for c in calls if c[2])
    best = 0
    t = first_end
    while t <= last_end + 1e-9:
        best = max(best, bisect.bisect_left(ends, t) - bisect.bisect_left(ends, t - 1.0))
        t += step
    return best


def in_flight(calls, at):
    return sum(1 for c in calls if c[0] <= at < c[1])


def report(*lines):
    """Prints figures as lines of their own that start with "[ha] ", also
    after the "test ... " that unittest -v leaves open."""
    print("\n" + "\n".join("[ha] " + line for line in lines), flush=True)


def ms(seconds):
    return "%.0f ms" % (seconds * 1000)
