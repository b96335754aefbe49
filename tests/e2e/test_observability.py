"""End-to-end tests of dbpool-server's observability surface.

* the REST/JSON gateway on the HTTP port: GET /api/metrics/database/pool,
  POST /v1/query, error mapping to google.rpc.Status JSON and HTTP status
  codes, the X-dbpool-* attribution headers, bad input, /healthz and /readyz;
* the Prometheus exporter on the metrics port: `promtool check metrics` and
  the exported families against tests/observability/exported_metrics.txt;
* a real Prometheus server scraping the exporter under load.

Run with Debian's interpreter:

    cd tests/e2e && /usr/bin/python3 -m unittest -v test_observability

Needs, besides what the other e2e tests need: promtool and prometheus
(Debian package `prometheus`) and psql (PostgreSQL client).
"""

import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

# Every RPC and HTTP request carries a timeout so that a hung server fails the
# test instead of hanging it.
RPC_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 30.0

EXPORTED_METRICS = harness.REPO_ROOT / "tests" / "observability" / "exported_metrics.txt"

# google/rpc/code.proto, "HTTP Mapping".
HTTP_STATUS_FOR_CODE = {
    0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
POOL_STATS_TYPE = "type.googleapis.com/dbpool.v1.PoolStats"

# A proto3 JSON Duration ("1.000340s", "0s") and Timestamp (RFC 3339, UTC).
DURATION_RE = re.compile(r"^-?\d+(\.\d{1,9})?s$")
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
INT64_RE = re.compile(r"^-?\d+$")

# Filled in by _load_stubs once the stubs are generated.
pb = None
pb_grpc = None
status_pb2 = None
error_details_pb2 = None
json_format = None


def _load_stubs(out_dir):
    global pb, pb_grpc, status_pb2, error_details_pb2, json_format
    harness.generate_python_stubs(out_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    from google.rpc import error_details_pb2 as _ed
    from google.rpc import status_pb2 as _st
    from google.protobuf import json_format as _jf
    pb, pb_grpc, status_pb2, error_details_pb2, json_format = _pb, _pb_grpc, _st, _ed, _jf


# PoolStats fields that stay put while the pool is at rest (all but the
# snapshot time and the durations).
STABLE_FIELDS = (
    "active_connections", "idle_connections", "max_connections", "waiting_connections",
    "total_connections", "min_connections", "connecting_connections", "database_reachable",
    "acquires_immediate", "acquires_waited", "acquires_timed_out", "acquires_rejected",
    "acquires_cancelled", "connections_opened", "connections_closed", "connect_errors")


def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def duration_nanos(text):
    """Nanoseconds of a proto3 JSON Duration such as "0.000123456s"."""
    assert DURATION_RE.match(text), text
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.strip("-s").partition(".")
    return sign * (int(whole) * 10**9 + int((frac + "000000000")[:9]))


# ---------------------------------------------------------------------------
# HTTP


class HttpReply:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers      # http.client.HTTPMessage (case-insensitive)
        self.body = body            # bytes

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self):
        return "HTTP %d %r %s" % (self.status, dict(self.headers.items()),
                                  self.body[:2000].decode("utf-8", "replace"))


def split_address(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def http_request(address, method, path, body=None, headers=None,
                 timeout=HTTP_TIMEOUT_S):
    """One request on a fresh connection; returns an HttpReply."""
    host, port = split_address(address)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return HttpReply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def http_raw_request(address, head, body_chunks, timeout=HTTP_TIMEOUT_S):
    """Sends `head` (request line and headers, bytes) and then body_chunks from
    a separate thread while reading the response, so that a server that
    answers before reading the whole body (413) is not mistaken for a broken
    one. Errors while sending after the answer are ignored."""
    host, port = split_address(address)
    sock = socket.create_connection((host, port), timeout=timeout)
    send_error = []

    def send():
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError as e:
            send_error.append(e)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        resp = http.client.HTTPResponse(sock, method="POST")
        resp.begin()
        reply = HttpReply(resp.status, resp.headers, resp.read())
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        sender.join(timeout)
    return reply


def post_json(address, path, doc, content_type="application/json"):
    body = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return http_request(address, "POST", path, body=body, headers=headers)


# ---------------------------------------------------------------------------
# Prometheus text format


SAMPLE_RE = re.compile(
    r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?$")
LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_labels(text):
    labels = {}
    pos = 0
    text = text or ""
    while pos < len(text):
        m = LABEL_RE.match(text, pos)
        if not m:
            raise ValueError("bad label set %r" % text)
        labels[m.group(1)] = m.group(2)
        pos = m.end()
    return labels


def parse_exposition(text):
    """Returns {family: {"type": TYPE, "samples": [(name, labels, value)]}}.
    Raises ValueError on a sample that belongs to no declared family."""
    families = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                families.setdefault(parts[2], {"type": None, "samples": []})["type"] = parts[3]
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise ValueError("unparsable sample line %r" % line)
        name, labels, value = m.group(1), parse_labels(m.group(2)), float(m.group(3))
        for fam, suffixes in ((name, ("",)),
                              (name.rsplit("_", 1)[0], ("_bucket", "_sum", "_count"))):
            info = families.get(fam)
            if info is None:
                continue
            allowed = {"histogram": ("", "_bucket", "_sum", "_count"),
                       "summary": ("", "_sum", "_count")}.get(info["type"], ("",))
            suffix = name[len(fam):]
            if suffix in allowed and suffix in suffixes:
                info["samples"].append((name, labels, value))
                break
        else:
            raise ValueError("sample %r belongs to no # TYPE'd family" % line)
    return families


def read_exported_metrics(replicas=False):
    """{name: (type, frozenset(labels), frozenset(optional labels))} from
    exported_metrics.txt: the families a server exports with read replicas
    (`replicas`) or without. Optional labels are those only a replica's
    series carry."""
    if not EXPORTED_METRICS.is_file():
        raise harness.HarnessError("missing %s" % EXPORTED_METRICS)
    out = {}
    for raw in EXPORTED_METRICS.read_text("utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) not in (2, 3, 4) or (len(parts) == 4 and parts[3] != "replicas"):
            raise harness.HarnessError("bad line in %s: %r" % (EXPORTED_METRICS, raw))
        if len(parts) == 4 and not replicas:
            continue
        listed = parts[2].split(",") if len(parts) >= 3 else []
        labels = frozenset(l for l in listed if not l.startswith("?"))
        optional = frozenset(l[1:] for l in listed if l.startswith("?"))
        out[parts[0]] = (parts[1], labels, optional)
    return out


def fetch_metrics(server):
    """(Content-Type, text) of the server's /metrics."""
    reply = http_request(server.metrics_address, "GET", "/metrics")
    if reply.status != 200:
        raise AssertionError("GET /metrics: %r" % reply)
    return reply.headers.get("Content-Type", ""), reply.body.decode("utf-8")


def sample_value(families, name, **labels):
    """The value of the one sample called `name` (such as a family name, or
    NAME_bucket of a histogram) whose labels include `labels`."""
    matches = [v for info in families.values() for n, l, v in info["samples"]
               if n == name and all(l.get(k) == want for k, want in labels.items())]
    if len(matches) != 1:
        raise AssertionError("want one %s%r sample, found %d" % (name, labels, len(matches)))
    return matches[0]


def promtool_bin():
    path = shutil.which("promtool")
    if not path:
        raise harness.HarnessError(
            "promtool not found on PATH (Debian: apt-get install --no-install-recommends prometheus)")
    return path


def prometheus_bin():
    path = shutil.which("prometheus")
    if not path:
        raise harness.HarnessError(
            "prometheus not found on PATH (Debian: apt-get install --no-install-recommends prometheus)")
    return path


# ---------------------------------------------------------------------------
# Shared gRPC helpers


class GrpcMixin:
    """Needs cls.db (a DatabaseServiceStub)."""

    def query(self, sql, *params, stub=None, **kwargs):
        req = pb.QueryRequest(sql=sql, params=list(params), **kwargs)
        return (stub or self.db).Query(req, timeout=RPC_TIMEOUT_S)

    def stats(self, stub=None):
        return (stub or self.db).GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S)

    def wait_for_stats(self, predicate, what, stub=None, timeout=10.0):
        """Polls GetPoolStats until predicate(stats) holds; returns the stats."""
        deadline = time.monotonic() + timeout
        s = self.stats(stub)
        while not predicate(s):
            if time.monotonic() > deadline:
                self.fail("pool never reached %s within %.0f s; last: %s" % (what, timeout, s))
            time.sleep(0.02)
            s = self.stats(stub)
        return s

    def quiescent_stats(self, stub=None, timeout=15.0):
        """Waits until no call holds or waits for a connection and two
        snapshots 200 ms apart agree on every gauge; returns the last."""
        gauges = ("active_connections", "idle_connections", "waiting_connections",
                  "total_connections", "connecting_connections")
        deadline = time.monotonic() + timeout
        prev = None
        while True:
            s = self.stats(stub)
            quiet = (s.active_connections == 0 and s.waiting_connections == 0
                     and s.connecting_connections == 0)
            if quiet and prev is not None and all(
                    getattr(s, g) == getattr(prev, g) for g in gauges):
                return s
            prev = s if quiet else None
            if time.monotonic() > deadline:
                self.fail("pool never became quiescent within %.0f s; last: %s" % (timeout, s))
            time.sleep(0.2)

    def at_rest(self, read, stub=None, attempts=20):
        """Calls read() between two GetPoolStats snapshots of a pool at rest
        until both snapshots agree on STABLE_FIELDS; returns (read(), stats)."""
        for _ in range(attempts):
            self.quiescent_stats(stub)
            before = self.stats(stub)
            value = read()
            after = self.stats(stub)
            if all(getattr(before, f) == getattr(after, f) for f in STABLE_FIELDS):
                return value, after
        self.fail("pool never held still across %d attempts" % attempts)

    def grpc_error_status(self, err):
        """(google.rpc.Status, [ErrorInfo]) decoded from a gRPC error's trailers."""
        md = err.trailing_metadata() or ()
        raw = [v for k, v in md if k == "grpc-status-details-bin"]
        self.assertEqual(len(raw), 1, "want one grpc-status-details-bin trailer, got %r" % (md,))
        status = status_pb2.Status()
        status.ParseFromString(raw[0])
        infos = []
        for any_msg in status.details:
            if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_msg.Unpack(info)
                infos.append(info)
        return status, infos


def connect(test_class, server):
    channel = grpc.insecure_channel(server.address)
    test_class.addClassCleanup(channel.close)
    try:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        raise harness.HarnessError("could not connect to %s\n%s"
                                   % (server.address, server.diagnostics()))
    return pb_grpc.DatabaseServiceStub(channel)


def require_addresses(server):
    if server.http_port is None or server.metrics_port is None:
        raise harness.HarnessError(
            "dbpool-server did not report http= and metrics= addresses on its "
            "ready line\n%s" % server.diagnostics())


# ---------------------------------------------------------------------------
# The HTTP gateway and the exporter


class ObservabilityTest(GrpcMixin, unittest.TestCase):
    """One server with a pool of 4 and DBPOOL_MAX_SQL_BYTES=1000 (so that the
    HTTP body limit is 2*1000 + 1 MiB), plus a second server on the same
    database with a pool of 1 for the saturation errors."""

    MAX_SQL_BYTES = 1000
    # DBPOOL_MAX_REQUEST_BYTES: the largest gRPC message and HTTP body.
    BODY_LIMIT = 1 << 20

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        harness.start_stack(cls, server_args=[
            "--http-port=0", "--metrics-port=0",
            "--db-pool-max-connections=4", "--db-pool-min-connections=2",
            "--max-sql-bytes=%d" % cls.MAX_SQL_BYTES,
            "--max-request-bytes=%d" % cls.BODY_LIMIT])
        require_addresses(cls.server)
        cls.http = cls.server.http_address
        cls.db = connect(cls, cls.server)
        # Pool of one, two waiters at most, short acquire timeout.
        cls.small = harness.DbpoolServer.start(cls.pg.database_url, extra_args=[
            "--http-port=0", "--metrics-port=0",
            "--db-pool-max-connections=1", "--db-pool-min-connections=1",
            "--db-pool-max-waiting=2", "--db-pool-acquire-timeout-ms=2000"])
        cls.addClassCleanup(cls.small.cleanup)
        require_addresses(cls.small)
        cls.small_db = connect(cls, cls.small)

    @classmethod
    def tearDownClass(cls):
        small = getattr(cls, "small", None)
        if small is not None:
            rc = small.stop()
            if rc != 0:
                raise harness.HarnessError("small dbpool-server exited with %r after SIGTERM\n%s"
                                           % (rc, small.diagnostics()))
        harness.stop_server_checked(cls)

    # -- helpers ------------------------------------------------------------

    def http_query(self, doc, address=None):
        return post_json(address or self.http, "/v1/query", doc)

    def assert_json_reply(self, reply, status):
        self.assertEqual(reply.status, status, reply)
        self.assertTrue(reply.headers.get("Content-Type", "").startswith("application/json"),
                        reply)
        try:
            return reply.json()
        except ValueError as e:
            self.fail("body is not JSON (%s): %r" % (e, reply))

    def assert_status_json(self, reply, http_status, code=None):
        """The body is a google.rpc.Status in proto3 JSON with a message;
        returns it."""
        doc = self.assert_json_reply(reply, http_status)
        self.assertIsInstance(doc, dict, reply)
        self.assertLessEqual(set(doc), {"code", "message", "details"}, reply)
        self.assertIsInstance(doc.get("code"), int, reply)
        if code is not None:
            self.assertEqual(doc["code"], code, reply)
        self.assertIsInstance(doc.get("message"), str, reply)
        self.assertTrue(doc["message"].strip(), "empty message: %r" % reply)
        self.assertIsInstance(doc.get("details", []), list, reply)
        for d in doc.get("details", []):
            self.assertIn("@type", d, reply)
        return doc

    @staticmethod
    def details_of(doc, type_url):
        return [d for d in doc.get("details", []) if d.get("@type") == type_url]

    def assert_attribution_headers(self, reply):
        """Both X-dbpool-* headers are there and are non-negative integers;
        returns (acquire_wait_us, queue_depth)."""
        wait = reply.headers.get("X-dbpool-acquire-wait-us")
        depth = reply.headers.get("X-dbpool-queue-depth")
        self.assertIsNotNone(wait, "no X-dbpool-acquire-wait-us: %r" % reply)
        self.assertIsNotNone(depth, "no X-dbpool-queue-depth: %r" % reply)
        self.assertRegex(wait, r"^\d+$")
        self.assertRegex(depth, r"^\d+$")
        return int(wait), int(depth)

    def assert_headers_match_timings(self, reply):
        """On success the headers repeat QueryResponse.timings."""
        wait_us, depth = self.assert_attribution_headers(reply)
        timings = reply.json()["timings"]
        self.assertEqual(wait_us, duration_nanos(timings["acquire_wait"]) // 1000, reply)
        self.assertEqual(depth, timings["queue_depth_on_arrival"], reply)
        return wait_us, depth

    def assert_server_healthy(self, server=None, stub=None):
        server = server or self.server
        for path, body in (("/healthz", {"status": "ok"}), ("/readyz", {"status": "serving"})):
            reply = http_request(server.http_address, "GET", path)
            self.assertEqual(self.assert_json_reply(reply, 200), body, path)
        reply = post_json(server.http_address, "/v1/query", {"sql": "SELECT 1 AS one"})
        doc = self.assert_json_reply(reply, 200)
        self.assertEqual(doc["rows"][0]["values"][0]["int64_value"], "1", reply)
        self.assertEqual(self.query("SELECT 2", stub=stub).rows[0].values[0].int64_value, 2)
        self.assertTrue(server.is_running(), server.diagnostics())

    # -- 1. GET /api/metrics/database/pool ----------------------------------

    def pool_json(self):
        reply = http_request(self.http, "GET", "/api/metrics/database/pool")
        self.assertEqual(reply.headers.get("X-dbpool-acquire-wait-us"), None,
                         "attribution headers belong to /v1/query only")
        return self.assert_json_reply(reply, 200)

    def test_pool_json_field_names_and_types(self):
        self.query("SELECT 1")  # at least one acquire
        doc = self.pool_json()
        from google.protobuf.descriptor import FieldDescriptor as F
        fields = {f.name: f for f in pb.PoolStats.DESCRIPTOR.fields}
        unknown = set(doc) - set(fields)
        self.assertFalse(unknown, "keys that are not PoolStats proto field names "
                                  "(lowerCamelCase?): %s" % sorted(unknown))
        scalars = {n for n, f in fields.items() if f.type != F.TYPE_MESSAGE}
        missing = scalars - set(doc)
        self.assertFalse(missing, "scalar fields missing from the JSON: %s" % sorted(missing))
        for name, f in fields.items():
            if name not in doc:
                continue
            v = doc[name]
            if name == "replicas":
                # A server without read replicas lists none.
                self.assertEqual(v, [], name)
            elif f.type == F.TYPE_INT32:
                self.assertTrue(isinstance(v, int) and not isinstance(v, bool),
                                "%s must be a JSON number, got %r" % (name, v))
                self.assertGreaterEqual(v, 0, name)
            elif f.type == F.TYPE_INT64:
                self.assertIsInstance(v, str, "%s (int64) must be a JSON string" % name)
                self.assertRegex(v, INT64_RE, name)
                self.assertGreaterEqual(int(v), 0, name)
            elif f.type == F.TYPE_BOOL:
                self.assertIsInstance(v, bool, name)
            elif f.message_type.full_name == "google.protobuf.Duration":
                self.assertIsInstance(v, str, name)
                self.assertRegex(v, DURATION_RE, name)
            elif f.message_type.full_name == "google.protobuf.Timestamp":
                self.assertIsInstance(v, str, name)
                self.assertRegex(v, TIMESTAMP_RE, name)
            else:
                self.fail("unexpected field type for %s" % name)
        for name in ("active_connections", "idle_connections", "max_connections",
                     "waiting_connections", "total_connections", "min_connections",
                     "connecting_connections"):
            self.assertIn(name, doc)
        self.assertIs(doc["database_reachable"], True)
        self.assertIn("time", doc)
        # And it is valid proto3 JSON for PoolStats.
        json_format.Parse(json.dumps(doc), pb.PoolStats())

    def test_pool_json_agrees_with_grpc(self):
        self.query("SELECT 1")
        doc, after = self.at_rest(self.pool_json)
        self.assertEqual(doc["max_connections"], 4)
        self.assertEqual(doc["min_connections"], 2)
        self.assertEqual(after.max_connections, 4)
        self.assertEqual(after.min_connections, 2)
        for f in STABLE_FIELDS:
            want = getattr(after, f)
            got = doc[f]
            if isinstance(got, str):  # int64 counters
                got = int(got)
            self.assertEqual(got, want, f)
        # Gauges of one snapshot are consistent with each other.
        self.assertEqual(doc["total_connections"],
                         doc["idle_connections"] + doc["active_connections"]
                         + doc["connecting_connections"], doc)
        self.assertGreaterEqual(doc["total_connections"], doc["min_connections"], doc)
        self.assertLessEqual(doc["total_connections"], doc["max_connections"], doc)
        self.assertEqual(doc["active_connections"], 0, doc)
        self.assertEqual(doc["waiting_connections"], 0, doc)
        self.assertEqual(doc["oldest_waiter_age"], "0s", doc)
        # The snapshot is fresh.
        msg = json_format.Parse(json.dumps(doc), pb.PoolStats())
        self.assertLess(abs(msg.time.ToNanoseconds() / 1e9 - time.time()), 60, doc["time"])
        self.assertLessEqual(msg.time.ToNanoseconds(), after.time.ToNanoseconds())

    # -- 2. POST /v1/query ----------------------------------------------------

    def assert_same_as_grpc(self, sql, grpc_params, json_params, **json_extra):
        """POSTs sql+json_params and compares the result with the Query RPC
        given sql+grpc_params. Returns the HTTP reply."""
        expected = self.query(sql, *grpc_params)
        doc = {"sql": sql, "params": json_params}
        doc.update(json_extra)
        reply = self.http_query(doc)
        body = self.assert_json_reply(reply, 200)
        got = json_format.Parse(reply.body.decode("utf-8"), pb.QueryResponse())
        # Timings differ from call to call; everything else must not.
        self.assertTrue(got.HasField("timings"), reply)
        self.assertTrue(expected.HasField("timings"))
        got.ClearField("timings")
        expected.ClearField("timings")
        self.assertEqual(got, expected, "HTTP and gRPC disagree for %r" % sql)
        # Proto field names, not lowerCamelCase.
        self.assertLessEqual(set(body), {"columns", "rows", "rows_affected", "command_tag",
                                         "timings", "commit_lsn"}, reply)
        # Without read replicas there is no token to give.
        self.assertEqual(body.get("commit_lsn", ""), "", reply)
        for c in body.get("columns", []):
            self.assertEqual(set(c), {"name", "type_oid", "type_name"}, reply)
        self.assertIsInstance(body["rows_affected"], str, "int64 as JSON string")
        self.assert_headers_match_timings(reply)
        return reply

    def test_query_same_rows_and_columns_as_grpc(self):
        sql = ("SELECT $1::int8 + 1 AS n, 7::int4 AS i4, $2::text AS greeting,"
               " 1.5::float8 AS f, 'Infinity'::float8 AS inf, 12.3400::numeric AS d,"
               " '\\xdeadbeef'::bytea AS b, true AS flag, NULL::text AS nothing,"
               " '{\"a\": [1, 2]}'::jsonb AS j,"
               " '2024-01-02 03:04:05.123456+00'::timestamptz AS ts,"
               " $3::int8 AS big, $4 AS u")
        u = "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        big = 9007199254740993  # 2^53 + 1: not exact as a JSON double
        grpc_params = [pb.Value(int64_value=41), pb.Value(string_value="héllo wörld"),
                       pb.Value(int64_value=big), pb.Value(string_value=u, type_hint="uuid")]
        # Proto field names...
        reply = self.assert_same_as_grpc(sql, grpc_params, [
            {"int64_value": "41"}, {"string_value": "héllo wörld"},
            {"int64_value": str(big)}, {"string_value": u, "type_hint": "uuid"}])
        body = reply.json()
        values = {c["name"]: v for c, v in zip(body["columns"], body["rows"][0]["values"])}
        self.assertEqual(values["big"]["int64_value"], str(big))
        self.assertEqual(values["n"]["int64_value"], "42")
        self.assertEqual(values["b"]["bytes_value"], "3q2+7w==")
        self.assertEqual(values["inf"]["double_value"], "Infinity")
        self.assertEqual(values["ts"]["timestamp_value"], "2024-01-02T03:04:05.123456Z")
        # google.protobuf.NullValue is JSON null in proto3 JSON.
        self.assertIn("null_value", values["nothing"], body)
        self.assertIsNone(values["nothing"]["null_value"], body)
        # ...and lowerCamelCase, with an int64 as a JSON number.
        self.assert_same_as_grpc(sql, grpc_params, [
            {"int64Value": 41}, {"stringValue": "héllo wörld"},
            {"int64Value": str(big)}, {"stringValue": u, "typeHint": "uuid"}])

    def test_query_brief_example(self):
        reply = self.http_query({"sql": "SELECT $1::int AS x",
                                 "params": [{"int64_value": "5"}]})
        body = self.assert_json_reply(reply, 200)
        self.assertEqual(body["columns"], [{"name": "x", "type_oid": 23, "type_name": "int4"}])
        self.assertEqual(body["rows"][0]["values"][0]["int64_value"], "5")
        self.assertEqual(body["command_tag"], "SELECT 1")
        self.assertEqual(body["rows_affected"], "1")
        self.assert_headers_match_timings(reply)

    def test_query_multiple_rows_dml_and_options(self):
        table = "e2e_obs_%d" % os.getpid()
        self.query("CREATE TABLE %s (id int8 PRIMARY KEY, name text)" % table)
        try:
            reply = self.http_query({
                "sql": "INSERT INTO %s SELECT g, 'n' || g FROM generate_series(1, $1::int4) g"
                       % table,
                "params": [{"int64_value": "3"}]})
            body = self.assert_json_reply(reply, 200)
            self.assertEqual(body["command_tag"], "INSERT 0 3")
            self.assertEqual(body["rows_affected"], "3")
            self.assertEqual(body["rows"], [])
            self.assert_same_as_grpc("SELECT id, name FROM %s ORDER BY id" % table, [], [],
                                     read_only=True, timeout="5s", max_rows="10")
            self.assert_same_as_grpc("SELECT id, name FROM %s WHERE id > $1 ORDER BY id"
                                     % table, [pb.Value(int64_value=1)],
                                     [{"int64_value": "1"}], readOnly=True, maxRows=2)
            # Unique violation: 23505, ALREADY_EXISTS, 409.
            self.assert_error_like_grpc(
                "INSERT INTO %s (id, name) VALUES ($1, $2)" % table,
                [pb.Value(int64_value=1), pb.Value(string_value="dup")],
                [{"int64_value": "1"}, {"string_value": "dup"}],
                http_status=409, code=6, sqlstate="23505")
        finally:
            self.query("DROP TABLE IF EXISTS %s" % table)

    def assert_error_like_grpc(self, sql, grpc_params, json_params, http_status, code,
                               sqlstate=None, **extra):
        """The HTTP error has the same code, message and ErrorInfo as the
        gRPC error for the same request. Returns (reply, Status JSON)."""
        with self.assertRaises(grpc.RpcError) as ctx:
            self.query(sql, *grpc_params, **{k: v for k, v in extra.items()
                                            if k in ("read_only", "max_rows")})
        err = ctx.exception
        self.assertEqual(err.code().value[0], code, "%s: %s" % (err.code(), err.details()))
        g_status, g_infos = self.grpc_error_status(err)
        doc = {"sql": sql, "params": json_params}
        doc.update({k: (str(v) if k == "max_rows" else v) for k, v in extra.items()})
        reply = self.http_query(doc)
        body = self.assert_status_json(reply, http_status, code)
        self.assertEqual(HTTP_STATUS_FOR_CODE[code], http_status)
        self.assertEqual(body["message"], err.details())
        infos = self.details_of(body, ERROR_INFO_TYPE)
        if sqlstate is None:
            self.assertEqual(infos, [], reply)
            self.assertEqual(g_infos, [])
        else:
            self.assertEqual(len(infos), 1, reply)
            self.assertEqual(infos[0]["reason"], sqlstate, reply)
            self.assertEqual(infos[0]["domain"], "postgresql", reply)
            self.assertEqual([i.reason for i in g_infos], [sqlstate])
        self.assertEqual(sorted(d["@type"] for d in body.get("details", [])),
                         sorted(a.type_url for a in g_status.details), reply)
        return reply, body

    def test_query_errors_map_to_http_status(self):
        cases = [
            # sql, extra request fields, HTTP status, code, SQLSTATE
            ("SELECT 1/0", {}, 400, 3, "22012"),
            ("SELEC 1", {}, 400, 3, "42601"),
            ("SELECT * FROM no_such_table_e2e", {}, 400, 3, "42P01"),
            ("DO $$BEGIN RAISE EXCEPTION 'boom'; END$$", {}, 400, 9, "P0001"),
            ("CREATE TABLE e2e_obs_ro (x int)", {"read_only": True}, 403, 7, "25006"),
            ("SELECT generate_series(1, 10)", {"max_rows": 2}, 429, 8, None),
        ]
        for sql, extra, http_status, code, sqlstate in cases:
            with self.subTest(sql=sql):
                reply, _ = self.assert_error_like_grpc(sql, [], [], http_status, code,
                                                       sqlstate, **extra)
                # The statement ran on a connection, so the call is attributed.
                self.assert_attribution_headers(reply)

    def test_query_statement_timeout_is_504_with_sqlstate_and_pool_state(self):
        reply = self.http_query({"sql": "SELECT pg_sleep(5)", "timeout": "0.2s"})
        body = self.assert_status_json(reply, 504, 4)
        infos = self.details_of(body, ERROR_INFO_TYPE)
        self.assertEqual([(i["reason"], i["domain"]) for i in infos], [("57014", "postgresql")],
                         reply)
        pools = self.details_of(body, POOL_STATS_TYPE)
        self.assertEqual(len(pools), 1, reply)
        self.assertEqual(pools[0]["max_connections"], 4, reply)
        self.assert_attribution_headers(reply)

    def test_query_admin_shutdown_is_503(self):
        reply = self.http_query({"sql": "SELECT pg_terminate_backend(pg_backend_pid())"})
        body = self.assert_status_json(reply, 503, 14)
        infos = self.details_of(body, ERROR_INFO_TYPE)
        self.assertEqual([i["reason"] for i in infos], ["57P01"], reply)
        self.assertEqual(len(self.details_of(body, POOL_STATS_TYPE)), 1, reply)
        self.assert_attribution_headers(reply)
        # The pool replaces the connection and goes on serving.
        self.wait_for_stats(lambda s: s.total_connections >= 2, "min connections again")
        self.assert_server_healthy()

    def test_validation_error_without_sqlstate(self):
        reply = self.http_query({"sql": "   "})
        body = self.assert_status_json(reply, 400, 3)
        self.assertEqual(self.details_of(body, ERROR_INFO_TYPE), [], reply)
        reply = self.http_query({"sql": "SELECT '%s'" % ("x" * self.MAX_SQL_BYTES)})
        body = self.assert_status_json(reply, 400, 3)
        self.assertIn("DBPOOL_MAX_SQL_BYTES", body["message"])

    def test_pool_saturation_errors(self):
        """Pool of 1, at most 2 waiters, acquire timeout 2 s (self.small)."""
        small, stub = self.small, self.small_db
        self.quiescent_stats(stub)
        # 1 s of holding leaves a second of margin under the 2 s acquire
        # timeout, for a loaded machine.
        hold = stub.Query.future(pb.QueryRequest(sql="SELECT pg_sleep(1.0)"),
                                 timeout=RPC_TIMEOUT_S)
        waiters = {}

        def wait_in_line(name):
            waiters[name] = post_json(small.http_address, "/v1/query",
                                      {"sql": "SELECT %d AS w" % len(name)})

        threads = []
        try:
            self.wait_for_stats(lambda s: s.active_connections == 1, "1 active", stub)
            for i, name in enumerate(("w", "ww")):
                t = threading.Thread(target=wait_in_line, args=(name,), daemon=True)
                t.start()
                threads.append(t)
                self.wait_for_stats(lambda s, n=i + 1: s.waiting_connections == n,
                                    "%d waiting" % (i + 1), stub)
            # The queue is full: RESOURCE_EXHAUSTED at once, with the pool state.
            started = time.monotonic()
            reply = post_json(small.http_address, "/v1/query", {"sql": "SELECT 1"})
            self.assertLess(time.monotonic() - started, 1.0, "a full queue must refuse at once")
            body = self.assert_status_json(reply, 429, 8)
            self.assertEqual(self.details_of(body, ERROR_INFO_TYPE), [], reply)
            pools = self.details_of(body, POOL_STATS_TYPE)
            self.assertEqual(len(pools), 1, reply)
            self.assertEqual(pools[0]["max_connections"], 1, reply)
            self.assertEqual(pools[0]["waiting_connections"], 2, reply)
            self.assertEqual(pools[0]["active_connections"], 1, reply)
        finally:
            for t in threads:
                t.join(HTTP_TIMEOUT_S)
            hold.result()
        # Both waiters got the connection in turn; the headers say they waited
        # and where they stood in the queue.
        for name, depth in (("w", 0), ("ww", 1)):
            reply = waiters.get(name)
            self.assertIsNotNone(reply, "waiter %s did not finish" % name)
            body = self.assert_json_reply(reply, 200)
            self.assertEqual(body["rows"][0]["values"][0]["int64_value"], str(len(name)))
            wait_us, got_depth = self.assert_headers_match_timings(reply)
            self.assertEqual(got_depth, depth, reply)
            self.assertGreater(wait_us, 100000, "waited behind pg_sleep(1.0): %r" % reply)

        # Acquire timeout: DEADLINE_EXCEEDED, 504, with the pool state.
        hold = stub.Query.future(pb.QueryRequest(sql="SELECT pg_sleep(3)"),
                                 timeout=RPC_TIMEOUT_S)
        try:
            self.wait_for_stats(lambda s: s.active_connections == 1, "1 active", stub)
            started = time.monotonic()
            reply = post_json(small.http_address, "/v1/query", {"sql": "SELECT 1"})
            elapsed = time.monotonic() - started
            body = self.assert_status_json(reply, 504, 4)
            self.assertGreater(elapsed, 1.5, "acquire timeout is 2 s")
            self.assertEqual(self.details_of(body, ERROR_INFO_TYPE), [], reply)
            pools = self.details_of(body, POOL_STATS_TYPE)
            self.assertEqual(len(pools), 1, reply)
            self.assertEqual(pools[0]["active_connections"], 1, reply)
        finally:
            hold.result()
        self.assert_server_healthy(small, stub)

    def test_database_down_is_503_and_not_ready(self):
        # A bound but not listening socket: connecting to it is refused, and
        # nobody else can take the port while the test runs.
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", 0))
            port = blocker.getsockname()[1]
            down = harness.DbpoolServer.start(
                "postgresql://postgres@127.0.0.1:%d/postgres" % port,
                extra_args=["--http-port=0", "--metrics-port=0",
                            "--db-pool-min-connections=0",
                            "--db-pool-connect-timeout-ms=500",
                            "--db-pool-acquire-timeout-ms=1000"])
            self.addCleanup(down.cleanup)
            require_addresses(down)
            deadline = time.monotonic() + 15
            while True:
                ready = http_request(down.http_address, "GET", "/readyz")
                if ready.status == 503 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            self.assertEqual(self.assert_json_reply(ready, 503), {"status": "not_serving"})
            self.assertEqual(self.assert_json_reply(
                http_request(down.http_address, "GET", "/healthz"), 200), {"status": "ok"})
            reply = post_json(down.http_address, "/v1/query", {"sql": "SELECT 1"})
            body = self.assert_status_json(reply, 503, 14)
            pools = self.details_of(body, POOL_STATS_TYPE)
            self.assertEqual(len(pools), 1, reply)
            self.assertIs(pools[0]["database_reachable"], False, reply)
            doc = self.assert_json_reply(
                http_request(down.http_address, "GET", "/api/metrics/database/pool"), 200)
            self.assertIs(doc["database_reachable"], False)
            self.assertGreater(int(doc["connect_errors"]), 0)
            _, text = fetch_metrics(down)
            fams = parse_exposition(text)
            self.assertEqual(sample_value(fams, "db_pool_database_reachable"), 0)
            self.assertGreater(sample_value(fams, "db_pool_connect_errors_total"), 0)
            self.assertEqual(down.stop(), 0, down.diagnostics())

    # -- 3. bad HTTP input ---------------------------------------------------

    def test_bad_requests_get_4xx_json(self):
        q = {"sql": "SELECT 1"}
        good = json.dumps(q).encode()
        cases = [
            # name, method, path, body, headers, HTTP status
            ("text/plain", "POST", "/v1/query", good, {"Content-Type": "text/plain"}, 415),
            ("no content type", "POST", "/v1/query", good, {}, 415),
            ("form encoded", "POST", "/v1/query", b"sql=SELECT+1",
             {"Content-Type": "application/x-www-form-urlencoded"}, 415),
            ("malformed JSON", "POST", "/v1/query", b"{sql: SELECT 1}", None, 400),
            ("truncated JSON", "POST", "/v1/query", good[:-3], None, 400),
            ("empty body", "POST", "/v1/query", b"", None, 400),
            ("JSON array", "POST", "/v1/query", b"[1, 2]", None, 400),
            ("JSON string", "POST", "/v1/query", b'"SELECT 1"', None, 400),
            ("unknown field", "POST", "/v1/query",
             b'{"sql": "SELECT 1", "no_such_field": 1}', None, 400),
            ("unknown nested field", "POST", "/v1/query",
             b'{"sql": "SELECT $1::int", "params": [{"int64_value": "1", "bogus": 2}]}',
             None, 400),
            ("wrong value type", "POST", "/v1/query", b'{"sql": 42}', None, 400),
            ("bad int64", "POST", "/v1/query",
             b'{"sql": "SELECT $1::int", "params": [{"int64_value": "abc"}]}', None, 400),
            ("two kinds in a oneof", "POST", "/v1/query",
             b'{"sql": "SELECT $1", "params": [{"int64_value": "1", "string_value": "x"}]}',
             None, 400),
            ("invalid UTF-8", "POST", "/v1/query", b'{"sql": "SELECT \xff"}', None, 400),
            ("unknown route", "GET", "/no/such/route", None, None, 404),
            ("unknown route under /v1", "POST", "/v1/querys", good, None, 404),
            ("trailing slash", "POST", "/v1/query/", good, None, 404),
            ("GET /v1/query", "GET", "/v1/query", None, None, 405),
            ("DELETE /v1/query", "DELETE", "/v1/query", None, None, 405),
            ("POST pool stats", "POST", "/api/metrics/database/pool", b"{}", None, 405),
        ]
        for name, method, path, body, headers, want in cases:
            with self.subTest(name):
                if headers is None:
                    headers = {"Content-Type": "application/json"}
                reply = http_request(self.http, method, path, body=body, headers=headers)
                doc = self.assert_status_json(reply, want)
                if want == 405:
                    allow = reply.headers.get("Allow")
                    self.assertIsNotNone(allow, "405 without Allow: %r" % reply)
                    want_allow = "GET" if path.startswith("/api/") else "POST"
                    self.assertEqual([a.strip() for a in allow.split(",")], [want_allow], reply)
                if want == 404:
                    self.assertEqual(doc["code"], 5, reply)
        self.assert_server_healthy()

    def test_content_type_with_parameters_is_accepted(self):
        for ctype in ("application/json; charset=utf-8", "Application/JSON"):
            with self.subTest(ctype):
                reply = post_json(self.http, "/v1/query", {"sql": "SELECT 1"}, content_type=ctype)
                self.assert_json_reply(reply, 200)

    def test_health_routes_refuse_other_verbs(self):
        reply = http_request(self.http, "POST", "/healthz", body=b"{}",
                             headers={"Content-Type": "application/json"})
        self.assertEqual(reply.status, 405, reply)
        self.assertEqual(reply.headers.get("Allow"), "GET", reply)
        self.assertTrue(reply.json().get("message"), reply)

    @staticmethod
    def json_body_of_size(n):
        """A valid QueryRequest JSON document of exactly n bytes."""
        head, tail = b'{"sql": "SELECT 1 -- ', b'"}'
        return head + b"x" * (n - len(head) - len(tail)) + tail

    def request_head(self, extra):
        return ("POST /v1/query HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                "Connection: close\r\n%s\r\n" % (self.http, extra)).encode()

    def test_oversized_bodies_are_413(self):
        limit = self.BODY_LIMIT
        # At the limit the body is read, and the SQL inside is too long: 400.
        body = self.json_body_of_size(limit)
        reply = http_raw_request(self.http, self.request_head("Content-Length: %d\r\n" % limit),
                                 [body])
        doc = self.assert_status_json(reply, 400, 3)
        self.assertIn("DBPOOL_MAX_SQL_BYTES", doc["message"])
        for size in (limit + 1, 4 << 20):
            with self.subTest(content_length=size):
                body = self.json_body_of_size(size)
                chunks = [body[i:i + 65536] for i in range(0, size, 65536)]
                reply = http_raw_request(
                    self.http, self.request_head("Content-Length: %d\r\n" % size), chunks)
                self.assert_status_json(reply, 413)
        # Chunked, so the length is known only after reading.
        size = limit + 1
        body = self.json_body_of_size(size)
        chunks = [b"%x\r\n%s\r\n" % (len(body[i:i + 65536]), body[i:i + 65536])
                  for i in range(0, size, 65536)] + [b"0\r\n\r\n"]
        reply = http_raw_request(self.http, self.request_head("Transfer-Encoding: chunked\r\n"),
                                 chunks)
        self.assert_status_json(reply, 413)
        self.assert_server_healthy()

    # -- 4. the exposition ---------------------------------------------------

    def make_traffic(self):
        self.query("SELECT 1")
        self.stats()
        with self.assertRaises(grpc.RpcError):
            self.query("SELECT 1/0")  # db_query_errors_total exists only after an error
        self.assert_json_reply(self.http_query({"sql": "SELECT 2"}), 200)
        self.assert_json_reply(http_request(self.http, "GET", "/api/metrics/database/pool"), 200)

    def test_promtool_check_metrics(self):
        self.make_traffic()
        ctype, text = fetch_metrics(self.server)
        self.assertTrue(ctype.startswith("text/plain"), ctype)
        proc = subprocess.run([promtool_bin(), "check", "metrics"], input=text,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=60)
        self.assertEqual(proc.returncode, 0,
                         "promtool check metrics failed:\n%s%s" % (proc.stdout, proc.stderr))

    def test_exported_families_match_the_list(self):
        self.make_traffic()
        expected = read_exported_metrics()
        _, text = fetch_metrics(self.server)
        families = parse_exposition(text)
        ours = {n: f for n, f in families.items() if not n.startswith("exposer_")}
        self.assertEqual(sorted(set(ours) - set(expected)), [],
                         "exported but not listed in %s" % EXPORTED_METRICS)
        self.assertEqual(sorted(set(expected) - set(ours)), [],
                         "listed in %s but not exported" % EXPORTED_METRICS)
        for name, (mtype, labels, _) in sorted(expected.items()):
            with self.subTest(name):
                fam = ours[name]
                self.assertEqual(fam["type"], mtype)
                self.assertTrue(fam["samples"], "%s has no samples" % name)
                seen = set()
                for _, lbls, _ in fam["samples"]:
                    seen |= set(lbls) - {"le", "quantile"}
                # Without replicas, no series carries a replica's label.
                self.assertEqual(seen, set(labels), "labels of %s" % name)

    def test_exposition_agrees_with_grpc(self):
        self.make_traffic()
        before_errors = sample_value(parse_exposition(fetch_metrics(self.server)[1]),
                                     "db_query_errors_total", sqlstate_class="22")
        with self.assertRaises(grpc.RpcError):
            self.query("SELECT 1/0")
        fams, after = self.at_rest(lambda: parse_exposition(fetch_metrics(self.server)[1]))
        self.assertEqual(sample_value(fams, "db_query_errors_total", sqlstate_class="22"),
                         before_errors + 1)
        for gauge, field in (("db_pool_max_connections", "max_connections"),
                             ("db_pool_min_connections", "min_connections"),
                             ("db_pool_total_connections", "total_connections"),
                             ("db_pool_idle_connections", "idle_connections"),
                             ("db_pool_active_connections", "active_connections"),
                             ("db_pool_waiting_connections", "waiting_connections"),
                             ("db_pool_connections_opened_total", "connections_opened"),
                             ("db_pool_connect_errors_total", "connect_errors")):
            self.assertEqual(sample_value(fams, gauge), getattr(after, field), gauge)
        self.assertEqual(sample_value(fams, "db_pool_max_connections"), 4)
        self.assertEqual(sample_value(fams, "db_pool_database_reachable"), 1)
        for result, field in (("immediate", "acquires_immediate"), ("waited", "acquires_waited"),
                              ("timeout", "acquires_timed_out"),
                              ("rejected", "acquires_rejected"),
                              ("cancelled", "acquires_cancelled")):
            self.assertEqual(sample_value(fams, "db_pool_acquires_total", result=result),
                             getattr(after, field), result)
        closed = sum(v for n, _, v in fams["db_pool_connections_closed_total"]["samples"])
        self.assertEqual(closed, after.connections_closed)
        # The acquire histogram counts every acquire that got a connection.
        count = sample_value(fams, "db_pool_acquire_duration_seconds_count")
        inf = sample_value(fams, "db_pool_acquire_duration_seconds_bucket", le="+Inf")
        self.assertEqual(count, inf)
        self.assertEqual(count, after.acquires_immediate + after.acquires_waited)
        buckets = [(float(l["le"]), v) for n, l, v in
                   fams["db_pool_acquire_duration_seconds"]["samples"] if n.endswith("_bucket")]
        self.assertEqual(buckets, sorted(buckets), "buckets are cumulative and ordered")
        handled = sample_value(fams, "grpc_server_handled_total", grpc_method="Query",
                               grpc_service="dbpool.v1.DatabaseService", grpc_type="unary",
                               grpc_code="InvalidArgument")
        self.assertGreaterEqual(handled, 2)
        self.assertEqual(sample_value(fams, "dbpool_build_info"), 1)


# ---------------------------------------------------------------------------
# A real Prometheus


class Prometheus:
    """A Prometheus server scraping one target every second."""

    READY_TIMEOUT_S = 30.0

    def __init__(self, target):
        self.dir = Path(tempfile.mkdtemp(prefix="dbpool-e2e-prometheus-"))
        self.proc = None
        self.port = None
        self.log_path = self.dir / "prometheus.log"
        (self.dir / "prometheus.yml").write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: dbpool\n"
            "    static_configs:\n"
            "      - targets: ['%s']\n" % target)

    def start(self):
        binary = prometheus_bin()
        for _ in range(3):  # the free port can be taken before Prometheus binds it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [binary, "--config.file=%s" % (self.dir / "prometheus.yml"),
                     "--storage.tsdb.path=%s" % (self.dir / "data"),
                     "--web.listen-address=127.0.0.1:%d" % self.port],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.READY_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen("%s/-/ready" % self.url, timeout=2) as r:
                        if r.status == 200:
                            return
                except OSError:
                    pass
                time.sleep(0.2)
            self.stop()
        raise harness.HarnessError("Prometheus did not become ready\n" + self.log_tail())

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def log_tail(self):
        try:
            return harness.tail(self.log_path.read_text("utf-8", "replace"))
        except OSError:
            return ""

    def api(self, path, **params):
        url = "%s/api/v1/%s?%s" % (self.url, path, urllib.parse.urlencode(params))
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read().decode("utf-8"))
        if doc.get("status") != "success":
            raise AssertionError("Prometheus %s: %r" % (url, doc))
        return doc["data"]

    def query(self, expr, **params):
        """An instant query; returns the result vector."""
        data = self.api("query", query=expr, **params)
        if data["resultType"] != "vector":
            raise AssertionError("%s: want a vector, got %r" % (expr, data))
        return data["result"]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class PrometheusScrapeTest(GrpcMixin, unittest.TestCase):
    """Prometheus scrapes a server with a pool of 4 while 8 callers run
    pg_sleep(0.01) through it."""

    LOAD_SECONDS = 10.0
    CALLERS = 8
    MAX_CALLS_PER_CALLER = 3000
    SERIES_TIMEOUT_S = 20.0

    @classmethod
    def setUpClass(cls):
        cls.stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-stubs-")
        cls.addClassCleanup(shutil.rmtree, cls.stub_dir, True)
        _load_stubs(cls.stub_dir)
        prometheus_bin()  # fail early, with install instructions
        # Long idle timeout: the pool must not shrink while the test compares
        # its size with pg_stat_activity.
        harness.start_stack(cls, server_args=[
            "--http-port=0", "--metrics-port=0",
            "--db-pool-max-connections=4", "--db-pool-min-connections=1",
            "--db-pool-idle-timeout-ms=600000"])
        require_addresses(cls.server)
        cls.db = connect(cls, cls.server)

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    def run_load(self, stop_event):
        """CALLERS threads run SELECT pg_sleep(0.01) until stop_event, the
        time limit or the call limit; returns (calls, errors, threads)."""
        stop_at = time.monotonic() + self.LOAD_SECONDS
        calls = [0] * self.CALLERS
        errors = []

        def caller(i):
            while (not stop_event.is_set() and time.monotonic() < stop_at
                   and calls[i] < self.MAX_CALLS_PER_CALLER and len(errors) < 20):
                try:
                    self.db.Query(pb.QueryRequest(sql="SELECT pg_sleep(0.01)"),
                                  timeout=RPC_TIMEOUT_S)
                except grpc.RpcError as e:
                    errors.append("%s: %s" % (e.code(), e.details()))
                calls[i] += 1

        threads = [threading.Thread(target=caller, args=(i,), daemon=True)
                   for i in range(self.CALLERS)]
        for t in threads:
            t.start()
        return calls, errors, threads

    def pg_activity(self):
        """(connections, idle connections) of dbpool in pg_stat_activity,
        read through psql, not through the pool."""
        out = self.pg.psql(
            "SELECT count(*), count(*) FILTER (WHERE state = 'idle') "
            "FROM pg_stat_activity WHERE application_name = 'dbpool'").strip()
        total, idle = out.split("|")
        return int(total), int(idle)

    def scalar(self, prom, expr, **params):
        result = prom.query(expr, **params)
        self.assertEqual(len(result), 1, "%s: %r" % (expr, result))
        return float(result[0]["value"][1])

    def test_prometheus_scrapes_the_pool(self):
        prom = Prometheus(self.server.metrics_address)
        self.addCleanup(prom.cleanup)
        prom.start()

        seed = ("db_pool_active_connections", "db_pool_idle_connections",
                "db_pool_max_connections", "db_pool_waiting_connections",
                "db_pool_acquire_duration_seconds_bucket")
        stop = threading.Event()
        calls, errors, threads = self.run_load(stop)
        try:
            deadline = time.monotonic() + self.SERIES_TIMEOUT_S
            missing = list(seed)
            while missing and time.monotonic() < deadline:
                missing = [m for m in missing if not prom.query('%s{job="dbpool"}' % m)]
                if missing:
                    time.sleep(0.5)
            self.assertEqual(missing, [], "series missing after %.0f s\n%s"
                             % (self.SERIES_TIMEOUT_S, prom.log_tail()))
            for t in threads:
                t.join(self.LOAD_SECONDS + 2 * RPC_TIMEOUT_S)
        finally:
            stop.set()
            for t in threads:
                t.join(2 * RPC_TIMEOUT_S)
        self.assertFalse(any(t.is_alive() for t in threads), "load threads did not stop")
        self.assertEqual(errors, [], "load calls failed")
        self.assertGreater(sum(calls), 100, "too little load: %r" % calls)

        up = prom.query('up{job="dbpool"}')
        self.assertEqual(len(up), 1, up)
        self.assertEqual(up[0]["metric"]["instance"], self.server.metrics_address)
        self.assertEqual(up[0]["value"][1], "1")

        # max_connections as scraped and as reported over gRPC.
        self.assertEqual(self.scalar(prom, 'db_pool_max_connections{job="dbpool"}'), 4)
        self.assertEqual(self.stats().max_connections, 4)
        # 8 callers on 4 connections: some scrape saw callers waiting and
        # connections in use, and some acquires waited.
        self.assertGreater(self.scalar(
            prom, 'max_over_time(db_pool_waiting_connections{job="dbpool"}[1m])'), 0)
        self.assertGreater(self.scalar(
            prom, 'max_over_time(db_pool_active_connections{job="dbpool"}[1m])'), 0)
        self.assertLessEqual(self.scalar(
            prom, 'max_over_time(db_pool_active_connections{job="dbpool"}[1m])'), 4)
        self.assertGreater(self.scalar(
            prom, 'increase(db_pool_acquires_total{job="dbpool",result="waited"}[1m])'), 0)
        buckets = prom.query('db_pool_acquire_duration_seconds_bucket{job="dbpool"}')
        self.assertIn("+Inf", {b["metric"].get("le") for b in buckets})
        p99 = self.scalar(
            prom, 'histogram_quantile(0.99, rate(db_pool_acquire_duration_seconds_bucket'
                  '{job="dbpool"}[30s]))')
        self.assertFalse(math.isnan(p99), "p99 of the acquire time is NaN")
        self.assertGreater(p99, 0)
        self.assertLess(p99, 5.0, "p99 acquire time beyond the acquire timeout")

        # After the load: a scrape taken once the pool is at rest agrees with
        # GetPoolStats and with pg_stat_activity.
        quiet = self.quiescent_stats()
        quiet_since = time.time()
        deadline = time.monotonic() + 15
        while True:
            ts = prom.query('timestamp(db_pool_total_connections{job="dbpool"})')
            if ts and float(ts[0]["value"][1]) > quiet_since + 0.1:
                break
            self.assertLess(time.monotonic(), deadline, "no scrape after the load stopped")
            time.sleep(0.3)
        at = "%.3f" % time.time()
        scraped_total = self.scalar(prom, 'db_pool_total_connections{job="dbpool"}', time=at)
        scraped_idle = self.scalar(prom, 'db_pool_idle_connections{job="dbpool"}', time=at)
        scraped_active = self.scalar(prom, 'db_pool_active_connections{job="dbpool"}', time=at)
        now = self.stats()
        pg_total, pg_idle = self.pg_activity()
        self.assertEqual(now.total_connections, quiet.total_connections, "pool changed size")
        self.assertEqual(scraped_total, now.total_connections)
        self.assertEqual(scraped_idle, now.idle_connections)
        self.assertEqual(scraped_active, 0)
        self.assertEqual(now.idle_connections, now.total_connections)
        self.assertEqual(pg_total, now.total_connections,
                         "pg_stat_activity has %d dbpool connections, the pool %d"
                         % (pg_total, now.total_connections))
        self.assertEqual(pg_idle, now.idle_connections)
        # Load ran on all four connections.
        self.assertEqual(now.total_connections, 4, now)

        prom.stop()
        self.assertEqual(prom.proc.returncode, 0, prom.log_tail())


if __name__ == "__main__":
    unittest.main(verbosity=2)
