"""Security end to end: TLS and mutual TLS on gRPC and HTTP, bearer tokens
and roles, the per-caller limit, secrets kept out of sight, and sslmode
passed through to PostgreSQL.

Certificates are made here with the openssl command line; clients are
Python grpcio and urllib, the way a service would call dbpool.
"""

import concurrent.futures
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

RPC_TIMEOUT_S = 10.0
# Clients that must be refused get a short deadline: the refusal is what is
# being checked, not the wait.
REFUSED_TIMEOUT_S = 3.0

pb = pb_grpc = health_pb2 = health_pb2_grpc = None
certs = None  # Path of the certificate directory, made in setUpModule
_stub_dir = None

TOKENS = {
    "monitor": "mon-0123456789abcdef",
    "reader": "read-0123456789abcdef",
    "writer": "write-0123456789abcdef",
}


def _openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=60)


def _make_ca(name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", "/CN=%s" % name, "-keyout", str(certs / (name + ".key")),
             "-out", str(certs / (name + ".pem")))


def _make_cert(name, ca, san=None):
    key, csr, pem = (certs / (name + ext) for ext in (".key", ".csr", ".pem"))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=%s" % name, "-keyout", str(key), "-out", str(csr))
    ext = certs / (name + ".ext")
    ext.write_text("subjectAltName=%s\n" % san if san else "basicConstraints=CA:FALSE\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(certs / (ca + ".pem")),
             "-CAkey", str(certs / (ca + ".key")), "-CAcreateserial", "-days", "2",
             "-extfile", str(ext), "-out", str(pem))


def setUpModule():
    global pb, pb_grpc, health_pb2, health_pb2_grpc, certs, _stub_dir
    if shutil.which("openssl") is None:
        raise harness.HarnessError("openssl is missing (scripts/install-deps installs it)")
    _stub_dir = tempfile.mkdtemp(prefix="dbpool-e2e-sec-stubs-")
    harness.generate_python_stubs(_stub_dir)
    from dbpool.v1 import database_service_pb2 as _pb
    from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
    from grpc.health.v1 import health_pb2 as _h
    from grpc.health.v1 import health_pb2_grpc as _hg
    pb, pb_grpc, health_pb2, health_pb2_grpc = _pb, _pb_grpc, _h, _hg
    certs = Path(tempfile.mkdtemp(prefix="dbpool-e2e-certs-"))
    _make_ca("ca")
    _make_cert("server", "ca", san="DNS:localhost,IP:127.0.0.1")
    _make_cert("client-a", "ca")
    _make_cert("client-b", "ca")
    _make_ca("rogue-ca")
    _make_cert("rogue", "rogue-ca")


def tearDownModule():
    shutil.rmtree(_stub_dir, ignore_errors=True)
    shutil.rmtree(certs, ignore_errors=True)


def _read(name):
    return (certs / name).read_bytes()


def _tls_env(mutual=False):
    env = {"DBPOOL_TLS_CERT_FILE": str(certs / "server.pem"),
           "DBPOOL_TLS_KEY_FILE": str(certs / "server.key")}
    if mutual:
        env["DBPOOL_TLS_CLIENT_CA_FILE"] = str(certs / "ca.pem")
    return env


def _secure_channel(server, client=None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=_read("ca.pem"),
        private_key=_read(client + ".key") if client else None,
        certificate_chain=_read(client + ".pem") if client else None)
    return grpc.secure_channel(server.address, creds)


def _https_context(client=None):
    context = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    if client:
        context.load_cert_chain(str(certs / (client + ".pem")), str(certs / (client + ".key")))
    return context


def _http(url, body=None, headers=None, context=None):
    """Returns (status, headers, parsed JSON body)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S, context=context) as r:
            return r.status, r.headers, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


def _query(channel, sql, token=None, timeout=RPC_TIMEOUT_S, **fields):
    metadata = [("authorization", "Bearer " + token)] if token else None
    return pb_grpc.DatabaseServiceStub(channel).Query(
        pb.QueryRequest(sql=sql, **fields), timeout=timeout, metadata=metadata)


def _wait_for_busy(channel, calls, token=None):
    """Waits (at most 5 s) until `calls` queries hold or wait for a
    connection, so that the next call finds them in flight."""
    metadata = [("authorization", "Bearer " + token)] if token else None
    stub = pb_grpc.DatabaseServiceStub(channel)
    for _ in range(100):
        stats = stub.GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S,
                                  metadata=metadata)
        if stats.active_connections + stats.waiting_connections >= calls:
            return
        time.sleep(0.05)
    raise harness.HarnessError("%d calls never became active" % calls)


class ServerTls(unittest.TestCase):
    """TLS without client certificates: encrypted, anyone may connect."""

    @classmethod
    def setUpClass(cls):
        harness.start_stack(cls, server_env=_tls_env())

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    def test_grpc_over_tls_serves_queries_and_health(self):
        with _secure_channel(self.server) as channel:
            self.assertEqual(_query(channel, "SELECT 41 + 1").rows[0].values[0].int64_value, 42)
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
            self.assertEqual(health.status, health_pb2.HealthCheckResponse.SERVING)

    def test_plaintext_grpc_is_refused(self):
        with grpc.insecure_channel(self.server.address) as channel:
            with self.assertRaises(grpc.RpcError) as ctx:
                _query(channel, "SELECT 1", timeout=REFUSED_TIMEOUT_S)
            self.assertIn(ctx.exception.code(),
                          (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))

    def test_https_gateway_serves_the_pool_route_and_queries(self):
        base = "https://" + self.server.http_address
        status, _, body = _http(base + "/api/metrics/database/pool", context=_https_context())
        self.assertEqual(status, 200)
        self.assertIn("active_connections", body)
        status, _, body = _http(base + "/v1/query", {"sql": "SELECT 'over tls'"},
                                context=_https_context())
        self.assertEqual(status, 200, body)
        self.assertEqual(body["rows"][0]["values"][0]["string_value"], "over tls")

    def test_plain_http_is_refused_on_the_tls_port(self):
        with self.assertRaises((urllib.error.URLError, ConnectionError, OSError)):
            _http("http://%s/healthz" % self.server.http_address)

    def test_an_untrusted_server_certificate_is_noticed_by_clients(self):
        # The client trusts only the rogue CA: the handshake must fail, which
        # shows the server really presents the configured certificate.
        context = ssl.create_default_context(cafile=str(certs / "rogue-ca.pem"))
        with self.assertRaises(urllib.error.URLError) as ctx:
            _http("https://%s/healthz" % self.server.http_address, context=context)
        self.assertIsInstance(ctx.exception.reason, ssl.SSLCertVerificationError)


class MutualTls(unittest.TestCase):
    """Client certificates required, and their names are the callers."""

    @classmethod
    def setUpClass(cls):
        harness.start_stack(cls, server_args=["--max-calls-per-caller=1"],
                            server_env=_tls_env(mutual=True))

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    def test_a_client_with_a_certificate_from_the_ca_is_served(self):
        with _secure_channel(self.server, "client-a") as channel:
            self.assertEqual(_query(channel, "SELECT 1").rows[0].values[0].int64_value, 1)
        status, _, body = _http("https://%s/v1/query" % self.server.http_address,
                                {"sql": "SELECT 1"}, context=_https_context("client-a"))
        self.assertEqual(status, 200, body)

    def test_the_dbpool_client_speaks_mutual_tls(self):
        env = {"DBPOOL_TLS_CA": str(certs / "ca.pem"),
               "DBPOOL_TLS_CLIENT_CERT": str(certs / "client-a.pem"),
               "DBPOOL_TLS_CLIENT_KEY": str(certs / "client-a.key")}
        proc = harness.run_cli(self, ["--json", "query", "SELECT 7"], 30, env=env)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn('"7"', proc.stdout)
        bench = harness.run_cli(self, ["bench", "--sql", "SELECT 1", "--concurrency", "2",
                                       "--duration", "1s", "--json"], 60, env=env)
        self.assertEqual(bench.returncode, 0, bench.stderr)
        self.assertGreater(json.loads(bench.stdout)["requests"], 0)
        del env["DBPOOL_TLS_CLIENT_KEY"]
        proc = harness.run_cli(self, ["stats"], 30, env=env)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("DBPOOL_TLS_CLIENT_KEY", proc.stderr)

    def test_buf_curl_reaches_the_server_with_a_client_certificate(self):
        res = harness.run_buf(
            ["curl", "--protocol", "grpc", "--cacert", str(certs / "ca.pem"),
             "--cert", str(certs / "client-a.pem"), "--key", str(certs / "client-a.key"),
             "-d", json.dumps({"sql": "SELECT 8"}),
             "https://%s/dbpool.v1.DatabaseService/Query" % self.server.address],
            cwd=str(certs))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertEqual(json.loads(res.stdout)["rows"][0]["values"][0]["int64Value"], "8")

    def test_clients_without_a_good_certificate_are_refused(self):
        for client in (None, "rogue"):
            with self.subTest(client=client):
                with _secure_channel(self.server, client) as channel:
                    with self.assertRaises(grpc.RpcError) as ctx:
                        _query(channel, "SELECT 1", timeout=REFUSED_TIMEOUT_S)
                    self.assertIn(ctx.exception.code(), (grpc.StatusCode.UNAVAILABLE,
                                                         grpc.StatusCode.DEADLINE_EXCEEDED))
                with self.assertRaises((urllib.error.URLError, ConnectionError, OSError)):
                    _http("https://%s/healthz" % self.server.http_address,
                          context=_https_context(client))

    def test_the_certificate_name_is_the_caller_for_the_per_caller_limit(self):
        with _secure_channel(self.server, "client-a") as a, \
                _secure_channel(self.server, "client-b") as b, \
                concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(_query, a, "SELECT pg_sleep(1.5)")
            _wait_for_busy(b, 1)
            with self.assertRaises(grpc.RpcError) as ctx:
                _query(a, "SELECT 2")
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertIn("cn:client-a", ctx.exception.details())
            self.assertEqual(_query(b, "SELECT 3").rows[0].values[0].int64_value, 3)
            slow.result(timeout=RPC_TIMEOUT_S)
            self.assertEqual(_query(a, "SELECT 4").rows[0].values[0].int64_value, 4)

    def test_an_https_client_is_counted_by_its_certificate_name(self):
        url = "https://%s/v1/query" % self.server.http_address

        def post(client, sql):
            return _http(url, {"sql": sql}, context=_https_context(client))

        with _secure_channel(self.server, "client-b") as b, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(post, "client-a", "SELECT pg_sleep(1.5)")
            _wait_for_busy(b, 1)
            status, _, body = post("client-a", "SELECT 2")
            self.assertEqual(status, 429, body)
            self.assertIn("cn:client-a", body["message"])
            status, _, body = post("client-b", "SELECT 3")
            self.assertEqual(status, 200, body)
            self.assertEqual(slow.result(timeout=RPC_TIMEOUT_S)[0], 200)


class BearerTokens(unittest.TestCase):
    """Tokens mapped to roles; health and metrics stay open."""

    @classmethod
    def setUpClass(cls):
        cls.token_dir = Path(tempfile.mkdtemp(prefix="dbpool-e2e-tokens-"))
        cls.addClassCleanup(shutil.rmtree, cls.token_dir, True)
        tokens = cls.token_dir / "tokens"
        tokens.write_text("# name role token\n"
                          "dashboards monitor %(monitor)s\n"
                          "reports read_only %(reader)s\n"
                          "orders read_write %(writer)s\n" % TOKENS)
        tokens.chmod(0o600)
        harness.start_stack(cls, server_args=["--max-calls-per-caller=2"],
                            server_env={"DBPOOL_AUTH_TOKENS_FILE": str(tokens)})
        cls.pg.psql("CREATE TABLE orders (id int PRIMARY KEY)")
        cls.channel = grpc.insecure_channel(cls.server.address)
        cls.addClassCleanup(cls.channel.close)
        cls.db = pb_grpc.DatabaseServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    def assert_code(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args, **kwargs)
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        return ctx.exception

    def test_calls_without_a_valid_token_are_unauthenticated(self):
        for metadata in (None, [("authorization", "Bearer not-a-known-token-123")],
                         [("authorization", "Basic " + TOKENS["writer"])]):
            with self.subTest(metadata=metadata):
                err = self.assert_code(grpc.StatusCode.UNAUTHENTICATED, self.db.Query,
                                       pb.QueryRequest(sql="SELECT 1"),
                                       timeout=RPC_TIMEOUT_S, metadata=metadata)
                self.assertNotIn("not-a-known-token-123", err.details())
                self.assert_code(grpc.StatusCode.UNAUTHENTICATED, self.db.GetPoolStats,
                                 pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S,
                                 metadata=metadata)
                stream = self.db.StreamPoolStats(pb.StreamPoolStatsRequest(),
                                                 timeout=RPC_TIMEOUT_S, metadata=metadata)
                self.assert_code(grpc.StatusCode.UNAUTHENTICATED, next, stream)

    def test_health_and_metrics_stay_open(self):
        health = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
        self.assertEqual(health.status, health_pb2.HealthCheckResponse.SERVING)
        self.assertEqual(_http("http://%s/healthz" % self.server.http_address)[0], 200)
        with urllib.request.urlopen(self.server.metrics_url, timeout=RPC_TIMEOUT_S) as r:
            self.assertIn(b"db_pool_active_connections", r.read())

    def test_monitor_reads_stats_but_may_not_query(self):
        stats = self.db.GetPoolStats(pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S,
                                     metadata=[("authorization", "Bearer " + TOKENS["monitor"])])
        self.assertGreaterEqual(stats.max_connections, 1)
        err = self.assert_code(grpc.StatusCode.PERMISSION_DENIED, _query, self.channel,
                               "SELECT 1", TOKENS["monitor"])
        self.assertIn("dashboards", err.details())

    def test_read_only_callers_cannot_write_even_when_they_ask_to(self):
        self.assertEqual(
            _query(self.channel, "SELECT count(*) FROM orders", TOKENS["reader"])
            .rows[0].values[0].int64_value, int(self.pg.psql("SELECT count(*) FROM orders")))
        for sql in ("INSERT INTO orders VALUES (1)", "SET TRANSACTION READ WRITE"):
            with self.subTest(sql=sql):
                if sql.startswith("SET"):
                    # Allowed by PostgreSQL as the first statement, but the
                    # transaction ends with it: nothing can follow.
                    _query(self.channel, sql, TOKENS["reader"])
                    continue
                self.assert_code(grpc.StatusCode.PERMISSION_DENIED, _query, self.channel,
                                 sql, TOKENS["reader"], read_only=False)
        self.assertEqual(self.pg.psql("SELECT count(*) FROM orders WHERE id = 1").strip(), "0")

    def test_read_write_callers_write(self):
        reply = _query(self.channel, "INSERT INTO orders VALUES (2)", TOKENS["writer"])
        self.assertEqual(reply.rows_affected, 1)
        self.assertEqual(self.pg.psql("SELECT count(*) FROM orders WHERE id = 2").strip(), "1")

    def test_http_needs_the_token_too(self):
        url = "http://%s/v1/query" % self.server.http_address
        status, headers, body = _http(url, {"sql": "SELECT 1"})
        self.assertEqual(status, 401, body)
        self.assertEqual(headers.get("WWW-Authenticate"), "Bearer")
        self.assertEqual(body["code"], grpc.StatusCode.UNAUTHENTICATED.value[0])
        status, _, body = _http(url, {"sql": "SELECT 1"},
                                {"Authorization": "Bearer " + TOKENS["reader"]})
        self.assertEqual(status, 200, body)
        status, _, body = _http(url, {"sql": "INSERT INTO orders VALUES (3)"},
                                {"Authorization": "Bearer " + TOKENS["reader"]})
        self.assertEqual(status, 403, body)
        status, _, body = _http("http://%s/api/metrics/database/pool" % self.server.http_address,
                                headers={"Authorization": "Bearer " + TOKENS["monitor"]})
        self.assertEqual(status, 200, body)

    def test_buf_curl_with_a_token_header(self):
        url = "http://%s/dbpool.v1.DatabaseService/GetPoolStats" % self.server.address
        base = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", "{}", url]
        res = harness.run_buf(base[:1] + ["-H", "authorization: Bearer " + TOKENS["monitor"]]
                              + base[1:], cwd=str(self.token_dir))
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("maxConnections", res.stdout)
        res = harness.run_buf(base, cwd=str(self.token_dir))
        self.assertNotEqual(res.returncode, 0)
        self.assertIn("unauthenticated", res.stderr)

    def test_the_dbpool_client_sends_the_token_from_the_environment(self):
        proc = harness.run_cli(self, ["query", "SELECT 1"], 30)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("UNAUTHENTICATED", proc.stderr)
        proc = harness.run_cli(self, ["--json", "stats"], 30,
                               env={"DBPOOL_TOKEN": TOKENS["monitor"]})
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("max_connections", proc.stdout)
        bench = harness.run_cli(self, ["bench", "--sql", "SELECT 1", "--concurrency", "2",
                                       "--duration", "1s", "--json"], 60,
                                env={"DBPOOL_TOKEN": TOKENS["reader"]})
        self.assertEqual(bench.returncode, 0, bench.stderr)
        report = json.loads(bench.stdout)
        self.assertEqual(report["errors"], 0, report)
        self.assertGreater(len(report["pool_samples"]), 0)

    def test_per_caller_limit_refuses_the_excess_of_one_caller_only(self):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = [pool.submit(_query, self.channel, "SELECT pg_sleep(1.5)", TOKENS["writer"])
                    for _ in range(2)]
            _wait_for_busy(self.channel, 2, TOKENS["monitor"])
            err = self.assert_code(grpc.StatusCode.RESOURCE_EXHAUSTED, _query,
                                   self.channel, "SELECT 1", TOKENS["writer"])
            self.assertIn("orders", err.details())
            self.assertIn("DBPOOL_MAX_CALLS_PER_CALLER", err.details())
            self.assertEqual(_query(self.channel, "SELECT 5", TOKENS["reader"])
                             .rows[0].values[0].int64_value, 5)
            for f in slow:
                f.result(timeout=RPC_TIMEOUT_S)
        self.assertEqual(_query(self.channel, "SELECT 6", TOKENS["writer"])
                         .rows[0].values[0].int64_value, 6)


class MessageLimitAndNoReflection(unittest.TestCase):
    """DBPOOL_MAX_REQUEST_BYTES bounds what a caller can make the server
    read, before any parsing; DBPOOL_REFLECTION=false hides the schema."""

    LIMIT = 64 << 10

    @classmethod
    def setUpClass(cls):
        harness.start_stack(cls, server_args=["--max-request-bytes=%d" % cls.LIMIT,
                                              "--reflection=false"])

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    def test_a_message_over_the_limit_is_refused_and_the_server_carries_on(self):
        with grpc.insecure_channel(self.server.address) as channel:
            with self.assertRaises(grpc.RpcError) as ctx:
                _query(channel, "SELECT '%s'" % ("x" * self.LIMIT))
            # gRPC's own answer to an oversized message.
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertIn("larger than max", ctx.exception.details())
            self.assertEqual(_query(channel, "SELECT '%s'" % ("y" * 1000))
                             .rows[0].values[0].string_value, "y" * 1000)
        status, _, body = _http("http://%s/v1/query" % self.server.http_address,
                                {"sql": "SELECT '%s'" % ("x" * self.LIMIT)})
        self.assertEqual(status, 413, body)

    def test_reflection_can_be_turned_off(self):
        res = harness.run_buf(
            ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", "{}",
             "http://%s/dbpool.v1.DatabaseService/GetPoolStats" % self.server.address],
            cwd=str(certs))
        self.assertNotEqual(res.returncode, 0, res.stdout)
        # buf finds no reflection service, so no schema for the method.
        self.assertRegex(res.stderr.lower(), "unimplemented|failed to find service")
        with grpc.insecure_channel(self.server.address) as channel:
            stats = pb_grpc.DatabaseServiceStub(channel).GetPoolStats(
                pb.GetPoolStatsRequest(), timeout=RPC_TIMEOUT_S)
        self.assertGreaterEqual(stats.max_connections, 1)


class Secrets(unittest.TestCase):
    """Passwords and tokens stay out of the command line, logs, errors and
    metrics."""

    PASSWORD = "pw-Secret-7f3a9c"

    def test_password_and_tokens_do_not_leak(self):
        token_dir = Path(tempfile.mkdtemp(prefix="dbpool-e2e-secret-"))
        self.addCleanup(shutil.rmtree, token_dir, True)
        tokens = token_dir / "tokens"
        tokens.write_text("app read_write %s\n" % TOKENS["writer"])
        tokens.chmod(0o600)
        pg = harness.PgCluster.start()
        self.addCleanup(pg.stop)
        url = "postgresql://postgres:%s@127.0.0.1:%d/postgres" % (self.PASSWORD, pg.port)
        server = harness.DbpoolServer.start(
            url, extra_env={"DBPOOL_AUTH_TOKENS_FILE": str(tokens),
                            "DBPOOL_LOG_LEVEL": "debug"}, url_in_env=True)
        self.addCleanup(server.cleanup)
        with grpc.insecure_channel(server.address) as channel:
            self.assertEqual(_query(channel, "SELECT 1", TOKENS["writer"])
                             .rows[0].values[0].int64_value, 1)
            with self.assertRaises(grpc.RpcError) as ctx:
                _query(channel, "SELECT 1", "guess-" + TOKENS["writer"])
            self.assertNotIn(TOKENS["writer"], ctx.exception.details())
            with self.assertRaises(grpc.RpcError) as ctx:
                _query(channel, "SELECT no_such_column", TOKENS["writer"])
            self.assertNotIn(self.PASSWORD, ctx.exception.details())
        cmdline = Path("/proc/%d/cmdline" % server.proc.pid).read_bytes().decode()
        with urllib.request.urlopen(server.metrics_url, timeout=RPC_TIMEOUT_S) as r:
            metrics = r.read().decode()
        pool_json = _http("http://%s/api/metrics/database/pool" % server.http_address,
                          headers={"Authorization": "Bearer " + TOKENS["writer"]})[2]
        self.assertEqual(server.stop(), 0)
        log = server.stderr_text()
        self.assertIn("database ", log)  # the redacted URL is logged...
        for place, text in (("cmdline", cmdline), ("log", log), ("metrics", metrics),
                            ("pool JSON", json.dumps(pool_json))):
            with self.subTest(place=place):
                self.assertNotIn(self.PASSWORD, text)
                self.assertNotIn(TOKENS["writer"], text)

    def test_a_password_in_a_flag_is_refused(self):
        proc = subprocess.run(
            [str(harness.server_bin()), "--grpc-port=0", "--http-port=0",
             "--metrics-port=0",
             "--database-url=postgresql://app:%s@127.0.0.1:1/app" % self.PASSWORD],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("PGPASSWORD", proc.stderr)
        self.assertNotIn(self.PASSWORD, proc.stderr)
        self.assertNotIn("listening", proc.stdout)

    def test_bad_security_files_stop_the_server_before_it_listens(self):
        tmp = Path(tempfile.mkdtemp(prefix="dbpool-e2e-badsec-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        short = tmp / "short"
        short.write_text("app read_write tooshort\nx admin %s\n" % TOKENS["reader"])
        cases = {
            "short token, unknown role": (
                {"DBPOOL_AUTH_TOKENS_FILE": str(short)}, ["line 1", "line 2", "admin"]),
            "key of another certificate": (
                {"DBPOOL_TLS_CERT_FILE": str(certs / "server.pem"),
                 "DBPOOL_TLS_KEY_FILE": str(certs / "client-a.key")},
                ["does not belong"]),
            "missing file": (
                {"DBPOOL_TLS_CERT_FILE": str(tmp / "nope.pem"),
                 "DBPOOL_TLS_KEY_FILE": str(certs / "server.key")},
                ["DBPOOL_TLS_CERT_FILE", "nope.pem"]),
            "client CA without TLS": (
                {"DBPOOL_TLS_CLIENT_CA_FILE": str(certs / "ca.pem")},
                ["DBPOOL_TLS_CLIENT_CA_FILE"]),
        }
        for name, (env_extra, wanted) in cases.items():
            with self.subTest(name):
                env = {k: v for k, v in os.environ.items() if not k.startswith("DBPOOL_")}
                env.update(env_extra)
                env["DATABASE_URL"] = "postgresql://app@127.0.0.1:1/app"
                proc = subprocess.run([str(harness.server_bin()), "--grpc-port=0",
                                       "--http-port=0", "--metrics-port=0"],
                                      env=env, capture_output=True, text=True, timeout=30)
                self.assertEqual(proc.returncode, 2, proc.stderr)
                for w in wanted:
                    self.assertIn(w, proc.stderr)
                self.assertNotIn("tooshort", proc.stderr)
                self.assertNotIn(TOKENS["reader"], proc.stderr)
                self.assertNotIn("listening", proc.stdout)


class DatabaseTls(unittest.TestCase):
    """sslmode and the other libpq settings reach PostgreSQL unchanged."""

    def test_sslmode_require_gives_encrypted_pool_connections(self):
        pg = harness.PgCluster.start()
        self.addCleanup(pg.stop)
        subprocess.run(["bash", str(harness.PG_CLUSTER_SH), "ssl", str(pg.dir)],
                       check=True, timeout=60)
        url = pg.database_url + "?sslmode=require&application_name=dbpool-ssl"
        server = harness.DbpoolServer.start(url, extra_args=["--db-application-name=dbpool-ssl"])
        self.addCleanup(server.cleanup)
        with grpc.insecure_channel(server.address) as channel:
            self.assertEqual(_query(channel, "SELECT ssl::text FROM pg_stat_ssl "
                                             "WHERE pid = pg_backend_pid()")
                             .rows[0].values[0].string_value, "true")
        unencrypted = pg.psql(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.application_name = 'dbpool-ssl' AND NOT s.ssl")
        self.assertEqual(unencrypted.strip(), "0")
        self.assertEqual(server.stop(), 0)


if __name__ == "__main__":
    unittest.main()
