"""End-to-end tests of read-replica routing: a primary with two streaming
replicas (DATABASE_REPLICA_URLS) behind one server. read_only statements go
to a replica whose lag is within DB_REPLICA_MAX_LAG_MS, everything else to
the primary; a write's commit_lsn, passed back as min_lsn, keeps a read from
seeing a replica older than the write; a lagging or dead replica is left out
and taken back once it has caught up or come back.

    cd tests/e2e && /usr/bin/python3 -m unittest -v test_read_replicas

Every statement reports where it ran (pg_is_in_recovery(),
inet_server_port()), so that routing is checked by its outcome. Lines
starting with "[replicas] " report the figures of the load tests.
"""

import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import unittest
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

RPC_TIMEOUT_S = 5.0
POOL_SIZE = 4
PROBE_MS = 50
MAX_LAG_MS = 500
WAIT_MS = 200
PROBE_S = PROBE_MS / 1000
MAX_LAG_S = MAX_LAG_MS / 1000
WAIT_S = WAIT_MS / 1000
# A replica's URL carries a password that its trust authentication never
# asks for, so that a connection string leaking into metrics, stats or logs
# is seen.
SECRET = "replica-secret-" + uuid.uuid4().hex[:8]
# PostgreSQL's pg_lsn text form.
LSN_RE = re.compile(r"^[0-9A-F]{1,8}/[0-9A-F]{1,8}$")
COMMIT_LSN_KEY = "dbpool-commit-lsn"
WHERE_SQL = "SELECT pg_is_in_recovery(), inet_server_port()"
# Long enough for calls from several threads to overlap at the server, so
# that least-outstanding-calls routing spreads them over both replicas.
OVERLAPPING_WHERE_SQL = WHERE_SQL + " FROM pg_sleep(0.005)"
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

pb = None
pb_grpc = None


def _load_stubs(out_dir):
    global pb, pb_grpc
    harness.generate_python_stubs(out_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    pb, pb_grpc = _pb, _pb_grpc


def where(response):
    """(in recovery, server port) from the first row of WHERE_SQL."""
    return where_row(response.rows[0])


def where_row(row):
    return row.values[0].bool_value, row.values[1].int64_value


def metric_samples(text):
    """[(name, {label: value}, value)] of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if m:
            samples.append((m.group(1), dict(LABEL_RE.findall(m.group(2) or "")),
                            float(m.group(3))))
    return samples


def wait_until(predicate, timeout, what):
    """Polls predicate until it returns something true; that value. what
    names the awaited state in the failure: a string, or a function giving
    one then."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %.1f s"
                                 % (what() if callable(what) else what, timeout))
        time.sleep(0.02)


class ReadLoad:
    """Threads sending read_only OVERLAPPING_WHERE_SQL one call at a time,
    each call recorded as (start, end, port or None, status code)."""

    def __init__(self, db, threads, longest_s):
        self.db = db
        self.stop_event = threading.Event()
        self.records = [[] for _ in range(threads)]
        self.longest_s = longest_s
        self.threads = [threading.Thread(target=self._run, args=(out,))
                        for out in self.records]

    def _run(self, out):
        end = time.monotonic() + self.longest_s
        while not self.stop_event.is_set() and time.monotonic() < end:
            started = time.monotonic()
            try:
                response = self.db.Query(pb.QueryRequest(sql=OVERLAPPING_WHERE_SQL,
                                                         read_only=True),
                                         timeout=RPC_TIMEOUT_S)
                port, code = where(response)[1], grpc.StatusCode.OK
            except grpc.RpcError as e:
                port, code = None, e.code()
            out.append((started, time.monotonic(), port, code))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(self.longest_s + RPC_TIMEOUT_S + 5)
            if t.is_alive():
                raise AssertionError("a reader thread is still running past its bound")

    def all(self):
        return sorted(r for out in self.records for r in out)

    def seconds_until_read_on(self, port, since, timeout):
        """How long after since a call started that was answered on port,
        waiting up to timeout for one; None if none was."""
        deadline = time.monotonic() + timeout
        while True:
            starts = [r[0] for r in self.all() if r[0] >= since and r[2] == port]
            if starts:
                return min(starts) - since
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)


class ReplicaStack(unittest.TestCase):
    """A primary with an `items` table, two streaming replicas of it and a
    server routing to them, every pool of POOL_SIZE connections kept open."""

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        binary = harness.server_bin()
        if not binary.is_file():
            raise harness.HarnessError("server binary %s is missing" % binary)
        # Synchronous commit, as in production: the test clusters' default
        # (off) flushes a commit's WAL, and so streams it to the replicas,
        # only up to wal_writer_delay later, which reads carrying its token
        # would mostly wait out and take to the primary.
        cls.primary = harness.PgCluster.start(prefix="dbpool-e2e-pg-primary-",
                                              settings=["synchronous_commit=on"])
        cls.addClassCleanup(cls.primary.stop)
        cls.replicas = []
        for _ in range(2):
            replica = cls.primary.start_replica()
            # Class cleanups run last in, first out: replicas stop first.
            cls.addClassCleanup(replica.stop)
            cls.replicas.append(replica)
        cls.primary.psql("CREATE TABLE items (id bigserial PRIMARY KEY, writer int NOT NULL)")
        lsn = cls.primary.psql("SELECT pg_current_wal_lsn()").strip()
        for replica in cls.replicas:
            replica.wait_for_replay(lsn)
        cls.replica_ports = [r.port for r in cls.replicas]
        cls.replica_names = ["127.0.0.1:%d" % p for p in cls.replica_ports]
        urls = ["postgresql://postgres:%s@127.0.0.1:%d/postgres" % (SECRET, p)
                for p in cls.replica_ports]
        cls.server = harness.DbpoolServer.start(
            cls.primary.database_url,
            extra_args=["--db-pool-max-connections=%d" % POOL_SIZE,
                        "--db-pool-min-connections=%d" % POOL_SIZE,
                        "--db-replica-lag-probe-ms=%d" % PROBE_MS,
                        "--db-replica-max-lag-ms=%d" % MAX_LAG_MS,
                        "--db-replica-wait-ms=%d" % WAIT_MS],
            # The environment, the way URLs with passwords travel.
            extra_env={"DATABASE_REPLICA_URLS": ",".join(urls)})
        cls.addClassCleanup(cls.server.cleanup)
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.addClassCleanup(cls.channel.close)
        grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
        cls.db = pb_grpc.DatabaseServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        harness.stop_server_checked(cls)

    def setUp(self):
        self.wait_routable(self.replica_names, timeout=10)

    # --- calls

    def query(self, sql, params=(), **fields):
        return self.db.Query(pb.QueryRequest(sql=sql, params=params, **fields),
                             timeout=RPC_TIMEOUT_S)

    def where_query(self, **fields):
        return where(self.query(WHERE_SQL, **fields))

    def insert(self, writer=0):
        """INSERT through the server: (id, commit_lsn, trailing token)."""
        response, call = self.db.Query.with_call(
            pb.QueryRequest(sql="INSERT INTO items (writer) VALUES ($1) RETURNING id",
                            params=[pb.Value(int64_value=writer)]),
            timeout=RPC_TIMEOUT_S)
        trailing = dict(call.trailing_metadata() or ())
        return response.rows[0].values[0].int64_value, response.commit_lsn, \
            trailing.get(COMMIT_LSN_KEY)

    def stats(self):
        return self.db.GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S)

    def routable(self):
        return {r.name: r.routable for r in self.stats().replicas}

    def wait_routable(self, names, timeout):
        wait_until(lambda: all(self.routable().get(n) for n in names), timeout,
                   lambda: "replicas %s routable (GetPoolStats: %s)"
                   % (names, self.routable()))

    def metrics_text(self):
        with urllib.request.urlopen(self.server.metrics_url, timeout=RPC_TIMEOUT_S) as r:
            return r.read().decode("utf-8")

    def assert_lsn(self, lsn):
        self.assertRegex(lsn, LSN_RE)

    def dbpool_sessions(self, cluster):
        return int(cluster.psql("SELECT count(*) FROM pg_stat_activity "
                                "WHERE application_name = 'dbpool'"))

    def active_on(self, cluster, marker):
        """application_name of each session of cluster running a statement
        that contains marker (psql's own excluded)."""
        return cluster.psql(
            "SELECT application_name FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE '%%%s%%' AND pid <> pg_backend_pid()" % marker).split()


class RoutingTest(ReplicaStack):

    def test_reads_go_to_replicas_and_everything_else_to_the_primary(self):
        # Idle replicas stay routable: with nothing written, a replica that
        # has replayed all there is does not lag, however long ago the last
        # transaction was.
        time.sleep(MAX_LAG_S + 4 * PROBE_S)
        self.assertEqual(self.routable(), dict.fromkeys(self.replica_names, True))
        results = [[] for _ in range(4)]

        def reader(out):
            for _ in range(25):
                out.append(where(self.query(OVERLAPPING_WHERE_SQL, read_only=True)))

        threads = [threading.Thread(target=reader, args=(out,)) for out in results]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            self.assertFalse(t.is_alive())
        reads = [r for out in results for r in out]
        self.assertEqual(len(reads), 100)
        self.assertEqual({r[0] for r in reads}, {True}, reads)
        self.assertEqual({r[1] for r in reads}, set(self.replica_ports), reads)

        for _ in range(10):
            self.assertEqual(self.where_query(), (False, self.primary.port))
            self.assertEqual(self.where_query(read_only=True,
                                              consistency=pb.CONSISTENCY_PRIMARY),
                             (False, self.primary.port))
        batch = self.db.ExecuteBatch(pb.ExecuteBatchRequest(
            statements=[pb.QueryRequest(sql=WHERE_SQL)]), timeout=RPC_TIMEOUT_S)
        self.assertEqual(where(batch.results[0]), (False, self.primary.port))

        rows = []
        for message in self.db.StreamQuery(pb.QueryRequest(
                sql=WHERE_SQL + " FROM generate_series(1, 3)", read_only=True),
                timeout=RPC_TIMEOUT_S):
            rows += [where_row(row) for row in message.rows]
        self.assertEqual(len(rows), 3)
        self.assertEqual(len(set(rows)), 1, rows)
        self.assertIn(rows[0][1], self.replica_ports)
        self.assertTrue(rows[0][0])

    def test_sessions_on_each_node_are_dbpools_where_expected(self):
        # Every node has its own pool of POOL_SIZE kept open; the router's
        # lag probe may hold one more connection.
        nodes = [self.primary, *self.replicas]
        for cluster in nodes:
            wait_until(lambda: self.dbpool_sessions(cluster) >= POOL_SIZE, 10,
                       "dbpool's pool open on port %d" % cluster.port)
            self.assertLessEqual(self.dbpool_sessions(cluster), POOL_SIZE + 1,
                                 "port %d" % cluster.port)

        # A statement that runs long enough to be seen in pg_stat_activity,
        # active on exactly the node that it says it ran on.
        for read_only, consistency in ((True, pb.CONSISTENCY_UNSPECIFIED),
                                       (False, pb.CONSISTENCY_UNSPECIFIED),
                                       (True, pb.CONSISTENCY_PRIMARY)):
            marker = "marker_" + uuid.uuid4().hex
            outcome = []
            call = threading.Thread(target=lambda: outcome.append(where(self.query(
                "SELECT pg_is_in_recovery(), inet_server_port(), '%s' FROM pg_sleep(2)"
                % marker, read_only=read_only, consistency=consistency))))
            call.start()
            try:
                seen = wait_until(
                    lambda: {port: names for port, names in
                             ((c.port, self.active_on(c, marker)) for c in nodes) if names},
                    1.8, "statement %s active on a node" % marker)
            finally:
                call.join(RPC_TIMEOUT_S + 1)
            self.assertFalse(call.is_alive())
            in_recovery, port = outcome[0]
            self.assertEqual(seen, {port: ["dbpool"]})
            if read_only and consistency != pb.CONSISTENCY_PRIMARY:
                self.assertTrue(in_recovery)
                self.assertIn(port, self.replica_ports)
            else:
                self.assertEqual((in_recovery, port), (False, self.primary.port))

    def test_writes_carry_a_commit_lsn_that_a_replica_shows_them_at(self):
        start = harness.parse_lsn(self.primary.psql("SELECT pg_current_wal_insert_lsn()").strip())
        previous = start
        for n in range(10):
            row_id, lsn, trailing = self.insert(writer=n)
            self.assert_lsn(lsn)
            self.assertEqual(trailing, lsn)
            self.assertGreaterEqual(harness.parse_lsn(lsn), previous)
            previous = harness.parse_lsn(lsn)
            # At or past the commit: a replica that has replayed to the
            # token has the row.
            replica = self.replicas[n % 2]
            replica.wait_for_replay(lsn)
            self.assertEqual(replica.psql("SELECT count(*) FROM items WHERE id = %d"
                                          % row_id).strip(), "1")
        self.assertGreater(previous, start)

        response, call = self.db.Query.with_call(
            pb.QueryRequest(sql=WHERE_SQL, read_only=True), timeout=RPC_TIMEOUT_S)
        self.assertEqual(response.commit_lsn, "")
        self.assertNotIn(COMMIT_LSN_KEY, dict(call.trailing_metadata() or ()))

        batch, call = self.db.ExecuteBatch.with_call(pb.ExecuteBatchRequest(statements=[
            pb.QueryRequest(sql="INSERT INTO items (writer) VALUES (1)"),
            pb.QueryRequest(sql="INSERT INTO items (writer) VALUES (2)")]),
            timeout=RPC_TIMEOUT_S)
        lsn = dict(call.trailing_metadata() or ()).get(COMMIT_LSN_KEY)
        self.assertIsNotNone(lsn, "ExecuteBatch without %s" % COMMIT_LSN_KEY)
        self.assert_lsn(lsn)
        self.assertGreaterEqual(harness.parse_lsn(lsn), previous)
        in_results = [r.commit_lsn for r in batch.results if r.commit_lsn]
        self.assertTrue(in_results, "no result of the batch carries commit_lsn")
        self.assertEqual(set(in_results), {lsn})

    def test_transactions_commit_with_a_token_and_read_only_ones_run_on_a_replica(self):
        begun = self.db.BeginTransaction(pb.BeginTransactionRequest(), timeout=RPC_TIMEOUT_S)
        tx = begun.transaction_id
        row = self.query("INSERT INTO items (writer) VALUES (7) RETURNING id",
                         transaction_id=tx)
        row_id = row.rows[0].values[0].int64_value
        # A read_only statement inside a transaction runs where it does.
        self.assertEqual(self.where_query(read_only=True, transaction_id=tx),
                         (False, self.primary.port))
        committed, call = self.db.CommitTransaction.with_call(
            pb.CommitTransactionRequest(transaction_id=tx), timeout=RPC_TIMEOUT_S)
        self.assert_lsn(committed.commit_lsn)
        self.assertEqual(dict(call.trailing_metadata() or ()).get(COMMIT_LSN_KEY),
                         committed.commit_lsn)
        read = self.query("SELECT writer FROM items WHERE id = $1",
                          params=[pb.Value(int64_value=row_id)], read_only=True,
                          min_lsn=committed.commit_lsn)
        self.assertEqual([r.values[0].int64_value for r in read.rows], [7])

        begun = self.db.BeginTransaction(pb.BeginTransactionRequest(read_only=True),
                                         timeout=RPC_TIMEOUT_S)
        tx = begun.transaction_id
        first = self.where_query(transaction_id=tx)
        self.assertTrue(first[0])
        self.assertIn(first[1], self.replica_ports)
        # The whole transaction on one replica.
        for _ in range(3):
            self.assertEqual(self.where_query(transaction_id=tx), first)
        self.db.CommitTransaction(pb.CommitTransactionRequest(transaction_id=tx),
                                  timeout=RPC_TIMEOUT_S)

        begun = self.db.BeginTransaction(pb.BeginTransactionRequest(
            read_only=True, consistency=pb.CONSISTENCY_PRIMARY), timeout=RPC_TIMEOUT_S)
        self.assertEqual(self.where_query(transaction_id=begun.transaction_id),
                         (False, self.primary.port))
        self.db.RollbackTransaction(pb.RollbackTransactionRequest(
            transaction_id=begun.transaction_id), timeout=RPC_TIMEOUT_S)

    def test_a_token_no_replica_has_replayed_is_read_on_the_primary(self):
        for replica in self.replicas:
            self.addCleanup(replica.resume_replay)
            replica.pause_replay()
        _, lsn, _ = self.insert()
        self.assert_lsn(lsn)
        started = time.monotonic()
        self.assertEqual(self.where_query(read_only=True, min_lsn=lsn),
                         (False, self.primary.port))
        waited = time.monotonic() - started
        # The wait for a replica is bounded by DB_REPLICA_WAIT_MS (plus the
        # call itself on a busy machine).
        self.assertLess(waited, WAIT_S + 1.0)
        for replica in self.replicas:
            replica.resume_replay()
        # Once replayed, the same token is good on a replica again (they may
        # have been left out meanwhile for their lag).
        for replica in self.replicas:
            replica.wait_for_replay(lsn)
        self.wait_routable(self.replica_names, timeout=5)
        self.assertEqual(self.where_query(read_only=True, min_lsn=lsn)[0], True)

    def test_a_paused_replica_is_skipped_past_the_lag_limit_and_used_after_resume(self):
        paused, other = self.replicas
        paused_name = "127.0.0.1:%d" % paused.port
        self.addCleanup(paused.resume_replay)
        stop = threading.Event()
        writes = []

        def trickle():
            # The lag of a paused replica grows only while there is WAL it
            # has not replayed.
            end = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < end:
                try:
                    self.insert()
                    writes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    writes.append(e.code())
                time.sleep(0.02)

        writer = threading.Thread(target=trickle)
        writer.start()
        try:
            with ReadLoad(self.db, threads=4, longest_s=30) as load:
                time.sleep(0.5)
                paused.pause_replay()
                paused_at = time.monotonic()
                skipped_from = paused_at + MAX_LAG_S + 2 * PROBE_S
                time.sleep(skipped_from - time.monotonic() + 1.5)
                stats = {r.name: r for r in self.stats().replicas}
                routable_metric = {
                    labels.get("replica"): value
                    for name, labels, value in metric_samples(self.metrics_text())
                    if name == "db_replica_routable"}
                # Reads started before the resume was asked for are the
                # ones that must have stayed off the replica.
                resumed_at = time.monotonic()
                paused.resume_replay()
                back_after = load.seconds_until_read_on(paused.port, resumed_at, 5)
            records = load.all()
        finally:
            stop.set()
            writer.join(RPC_TIMEOUT_S + 35)
        self.assertFalse(writer.is_alive())
        while_skipped = {}
        for started, _, port, _ in records:
            if skipped_from <= started < resumed_at:
                while_skipped[port] = while_skipped.get(port, 0) + 1
        print("[replicas] replay paused: %d reads from %.0f ms after the pause to the "
              "resume, by port %s (paused %d, primary %d); first read on it again %s"
              % (sum(while_skipped.values()), (skipped_from - paused_at) * 1000,
                 while_skipped, paused.port, self.primary.port,
                 "never" if back_after is None else "%.0f ms after the resume"
                 % (back_after * 1000)))
        self.assertEqual([r for r in records if r[3] != grpc.StatusCode.OK], [])
        self.assertEqual(set(writes), {grpc.StatusCode.OK})
        self.assertGreater(len(writes), 10)
        self.assertNotIn(paused.port, while_skipped)
        self.assertGreater(while_skipped.get(other.port, 0), 0)
        self.assertFalse(stats[paused_name].routable)
        self.assertGreaterEqual(stats[paused_name].replay_lag.ToTimedelta().total_seconds(),
                                MAX_LAG_S)
        self.assertTrue(stats["127.0.0.1:%d" % other.port].routable)
        self.assertEqual(routable_metric.get(paused_name), 0.0)
        self.assertIsNotNone(back_after, "no read on the replica within 5 s of the resume")

    def test_read_your_writes_under_intermittent_replay_pauses(self):
        pairs, threads, budget_s = 10000, 8, 75
        toggled = self.replicas[0]
        self.addCleanup(toggled.resume_replay)
        stop = threading.Event()
        toggles = []

        def toggle():
            # Paused spells shorter than DB_REPLICA_MAX_LAG_MS keep the
            # replica routable while it is behind: only the token keeps
            # reads off it.
            end = time.monotonic() + budget_s + 5
            paused = False
            session = toggled.session()
            try:
                while not stop.is_set() and time.monotonic() < end:
                    stop.wait(random.uniform(0.1, 0.3))
                    session.run("SELECT pg_wal_replay_resume()" if paused
                                else "SELECT pg_wal_replay_pause()")
                    paused = not paused
                    toggles.append(paused)
                session.run("SELECT pg_wal_replay_resume()")
            finally:
                session.close()

        lock = threading.Lock()
        taken = [0]
        results = [{"ports": {}, "stale": [], "errors": [], "no_token": 0}
                   for _ in range(threads)]

        def worker(out, n):
            end = time.monotonic() + budget_s
            while time.monotonic() < end:
                with lock:
                    if taken[0] == pairs:
                        return
                    taken[0] += 1
                try:
                    row_id, lsn, _ = self.insert(writer=n)
                    if not lsn:
                        out["no_token"] += 1
                    read = self.query("SELECT id, inet_server_port() FROM items WHERE id = $1",
                                      params=[pb.Value(int64_value=row_id)], read_only=True,
                                      min_lsn=lsn)
                except grpc.RpcError as e:
                    out["errors"].append(e.code())
                    continue
                if not read.rows:
                    out["stale"].append((row_id, lsn))
                    continue
                port = read.rows[0].values[1].int64_value
                out["ports"][port] = out["ports"].get(port, 0) + 1

        toggler = threading.Thread(target=toggle)
        toggler.start()
        workers = [threading.Thread(target=worker, args=(out, n))
                   for n, out in enumerate(results)]
        started = time.monotonic()
        try:
            for t in workers:
                t.start()
            for t in workers:
                t.join(budget_s + 2 * RPC_TIMEOUT_S + 5)
                self.assertFalse(t.is_alive())
        finally:
            stop.set()
            toggler.join(10)
        elapsed = time.monotonic() - started
        ports, stale, errors, no_token = {}, [], [], 0
        for out in results:
            for port, n in out["ports"].items():
                ports[port] = ports.get(port, 0) + n
            stale += out["stale"]
            errors += out["errors"]
            no_token += out["no_token"]
        done = sum(ports.values()) + len(stale)
        on_replicas = sum(n for p, n in ports.items() if p in self.replica_ports)
        print("[replicas] read-your-writes: %d pairs in %.1f s (%.0f pairs/s, %d threads), "
              "%d stale, %d errors %s, %d writes without a token, %d pause/resume toggles; "
              "reads by port %s (primary %d, paused %d): %.1f%% on replicas"
              % (done, elapsed, done / elapsed, threads, len(stale), len(errors),
                 sorted({str(c) for c in errors}), no_token, len(toggles), ports,
                 self.primary.port, toggled.port, 100.0 * on_replicas / max(done, 1)))
        self.assertFalse(toggler.is_alive())
        self.assertEqual(stale[:10], [])
        self.assertEqual(errors, [])
        self.assertEqual(no_token, 0)
        self.assertEqual(done, pairs, "pairs done within %d s" % budget_s)
        self.assertGreater(len(toggles), 10)
        self.assertGreater(on_replicas, 0)

    def test_pool_stats_and_metrics_name_replicas_by_host_and_port(self):
        self.insert()
        for _ in range(20):
            self.query(OVERLAPPING_WHERE_SQL, read_only=True)
        stats = self.stats()
        self.assertEqual([r.name for r in stats.replicas], self.replica_names)
        for replica, cluster in zip(stats.replicas, self.replicas):
            self.assertTrue(replica.routable, replica)
            self.assert_lsn(replica.replay_lsn)
            self.assertLessEqual(replica.replay_lag.ToTimedelta().total_seconds(), MAX_LAG_S)
            self.assertEqual(replica.pool.max_connections, POOL_SIZE)
            self.assertEqual(replica.pool.min_connections, POOL_SIZE)
            self.assertTrue(replica.pool.database_reachable)
            # The stats' position is one the replica had reached.
            self.assertLessEqual(harness.parse_lsn(replica.replay_lsn),
                                 harness.parse_lsn(cluster.replay_lsn()))
        self.assertEqual(stats.max_connections, POOL_SIZE)
        self.assertNotIn(SECRET, str(stats))

        text = self.metrics_text()
        samples = metric_samples(text)
        routes = [labels for name, labels, _ in samples if name == "db_route_total"]
        self.assertIn("primary", {labels.get("target") for labels in routes})
        self.assertTrue(set(self.replica_names) & {labels.get("target") for labels in routes},
                        routes)
        self.assertTrue(all(labels.get("reason") for labels in routes), routes)
        for family in ("db_replica_lag_seconds", "db_replica_routable"):
            self.assertEqual(sorted(labels.get("replica") for name, labels, _ in samples
                                    if name == family),
                             sorted(self.replica_names), family)
        self.assertEqual({labels["replica"]: value for name, labels, value in samples
                          if name == "db_replica_routable"},
                         dict.fromkeys(self.replica_names, 1.0))
        for family in ("db_pool_active_connections", "db_pool_max_connections"):
            # The primary's pool: no replica label, which Prometheus does
            # not tell from an empty one.
            by_replica = {labels.get("replica") or None: value
                          for name, labels, value in samples if name == family}
            self.assertEqual(set(by_replica), {None, *self.replica_names}, family)
        self.assertEqual({labels["replica"]: value for name, labels, value in samples
                          if name == "db_pool_max_connections" and "replica" in labels},
                         dict.fromkeys(self.replica_names, float(POOL_SIZE)))
        for name, labels, _ in samples:
            for key, value in labels.items():
                for dsn_part in ("://", "password", "host=", "user=", SECRET):
                    self.assertNotIn(dsn_part, value, "%s{%s}" % (name, key))
        self.assertNotIn(SECRET, text)
        self.assertNotIn(SECRET, self.server.stdout_text())
        self.assertNotIn(SECRET, self.server.stderr_text())


class ReplicaKilledTest(ReplicaStack):

    def test_a_killed_replica_costs_at_most_its_reads_in_flight_and_comes_back(self):
        killed, survivor = self.replicas
        killed_name = "127.0.0.1:%d" % killed.port
        survivor_name = "127.0.0.1:%d" % survivor.port
        with ReadLoad(self.db, threads=16, longest_s=40) as load:
            time.sleep(1.5)
            killed.kill()
            killed_at = time.monotonic()
            routable_seen = []  # (seconds after the kill, {name: routable})
            while time.monotonic() < killed_at + 3.0:
                routable_seen.append((time.monotonic() - killed_at, self.routable()))
                time.sleep(PROBE_S)
            # It may take reads again before start_again returns.
            restart_begun = time.monotonic()
            killed.start_again()
            restart_s = time.monotonic() - restart_begun
            back_after = load.seconds_until_read_on(killed.port, restart_begun, 20 + restart_s)
        records = load.all()
        failed = [r for r in records if r[3] != grpc.StatusCode.OK]
        in_flight = [r for r in records if r[0] < killed_at < r[1]]
        settled_from = killed_at + PROBE_S
        late_failures = [r for r in failed if r[0] >= settled_from]
        # Backends of a killed postmaster notice only at their next wait, so
        # the connections open to it may answer a little longer. Replay has
        # stopped with the postmaster, though, so its lag passes the limit
        # and it is left out at the latest as a paused replica is.
        left_out_from = killed_at + MAX_LAG_S + 2 * PROBE_S
        answered_by_killed = [r[0] - killed_at for r in records
                              if killed_at <= r[0] < restart_begun and r[2] == killed.port]
        survivor_reads = sum(1 for r in records if settled_from <= r[0] < restart_begun
                             and r[2] == survivor.port)
        survivor_left_out = [t for t, routable in routable_seen
                             if not routable.get(survivor_name)]
        killed_taken = [t for t, routable in routable_seen
                        if routable.get(killed_name) and t >= left_out_from - killed_at]
        print("[replicas] replica killed under 16 readers: %d reads, %d in flight at the "
              "kill, %d failed %s, %d failed starting %.0f ms or more after it; %d reads "
              "started after the kill answered by the killed node's remaining backends%s; "
              "%d on the other replica before the restart, which GetPoolStats showed "
              "unroutable in %d of %d looks; first read on it again %s after its "
              "restart began (which took %.0f ms)"
              % (len(records), len(in_flight), len(failed),
                 sorted({str(r[3]) for r in failed}), len(late_failures),
                 PROBE_S * 1000, len(answered_by_killed),
                 ", the last started %.0f ms after it" % (max(answered_by_killed) * 1000)
                 if answered_by_killed else "", survivor_reads, len(survivor_left_out),
                 len(routable_seen), "never" if back_after is None else "%.0f ms" % (back_after * 1000),
                 restart_s * 1000))
        self.assertLessEqual(len(failed), len(in_flight))
        self.assertEqual(late_failures, [])
        self.assertLess(max(answered_by_killed, default=0), left_out_from - killed_at)
        self.assertGreater(survivor_reads, 0)
        self.assertEqual(killed_taken, [], "killed replica routable at these seconds "
                         "after the kill\n" + self.server.diagnostics())
        self.assertEqual(survivor_left_out, [], "surviving replica unroutable at these "
                         "seconds after the kill\n" + self.server.diagnostics())
        self.assertIsNotNone(back_after, "no read on the replica within 20 s of its restart")


if __name__ == "__main__":
    unittest.main()
