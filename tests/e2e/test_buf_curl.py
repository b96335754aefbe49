"""End-to-end tests of dbpool-server through buf (curl and lint).

buf comes from <repo>/node_modules/.bin/buf, installed by `npm ci` from the
repo's package.json. Run with:

    /usr/bin/python3 -m unittest -v tests/e2e/test_buf_curl.py
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BUF_TIMEOUT_S = 60


def _module_proto_files():
    """The .proto files of our own module under proto/, relative to it.

    Vendored third-party trees (google/...) are not ours to lint."""
    files = []
    for p in sorted(harness.PROTO_DIR.rglob("*.proto")):
        rel = p.relative_to(harness.PROTO_DIR).as_posix()
        if rel.startswith("google/"):
            continue
        files.append(rel)
    return files


def _b64decode(text):
    """buf prints Any values as base64 without padding (std or URL alphabet)."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _decode_string_fields(data):
    """The top-level length-delimited fields of a protobuf message, decoded as
    UTF-8 (first occurrence per field number). Enough for ErrorInfo's reason
    (1) and domain (2) without generated code."""
    def varint(i):
        shift = value = 0
        while True:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, i
    fields = {}
    i = 0
    while i < len(data):
        key, i = varint(i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, i = varint(i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = varint(i)
            fields.setdefault(number, data[i:i + n].decode("utf-8", "replace"))
            i += n
        else:
            raise ValueError("unsupported wire type %d" % wire)
    return fields


class BufLintTest(unittest.TestCase):
    """`buf lint` of the repo's proto/ module with its own buf.yaml.

    proto/buf.yaml lists no deps, and this machine is offline, so buf cannot
    resolve google/api/annotations.proto by itself. Instead protoc builds a
    FileDescriptorSet (with source info, so findings carry line numbers) of
    our files plus their imports (google/api from the Debian gogo googleapis
    copy, well-known types from protoc), and buf lints that image from
    inside proto/, where it picks up proto/buf.yaml as the lint config.
    --path restricts the findings to our own files; the imported google/*
    files are not ours and do not follow STANDARD.
    """

    def test_buf_lint_proto_module(self):
        harness.buf_bin()  # fails with install instructions if missing
        self.assertTrue((harness.PROTO_DIR / "buf.yaml").is_file(),
                        "missing %s" % (harness.PROTO_DIR / "buf.yaml"))
        files = _module_proto_files()
        self.assertIn("dbpool/v1/database_service.proto", files)
        work = Path(tempfile.mkdtemp(prefix="dbpool-e2e-buflint-"))
        self.addCleanup(shutil.rmtree, work, True)
        image = work / "image.binpb"
        protoc = shutil.which("protoc")
        self.assertIsNotNone(protoc, "protoc not found on PATH")
        proc = subprocess.run(
            [protoc, "-I", ".", "-I", str(harness.GOOGLEAPIS_DIR),
             "--include_imports", "--include_source_info",
             "--descriptor_set_out=%s" % image, *files],
            cwd=harness.PROTO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, timeout=120)
        self.assertEqual(proc.returncode, 0, "protoc failed:\n%s" % proc.stderr)

        args = ["lint", "%s#format=binpb" % image]
        for f in files:
            args += ["--path", f]
        res = harness.run_buf(args, cwd=harness.PROTO_DIR, timeout=BUF_TIMEOUT_S)
        self.assertEqual(res.returncode, 0,
                         "buf lint (config %s) exited %d:\n%s%s"
                         % (harness.PROTO_DIR / "buf.yaml", res.returncode,
                            res.stdout, res.stderr))
        self.assertEqual(res.stdout.strip(), "", "buf lint findings:\n%s" % res.stdout)


class BufCurlTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.buf = harness.buf_bin()  # fail early, with a clear message
        cls.cwd = tempfile.mkdtemp(prefix="dbpool-e2e-bufcurl-")
        cls.addClassCleanup(shutil.rmtree, cls.cwd, True)
        harness.start_stack(cls)

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    # -- helpers ------------------------------------------------------------

    def curl(self, *args, timeout=BUF_TIMEOUT_S):
        # Run outside the repo so that no buf.yaml is picked up: the schema
        # comes from server reflection only.
        return harness.run_buf(
            ["curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
            cwd=self.cwd, timeout=timeout)

    def call(self, method, data):
        return self.curl("-d", json.dumps(data), "%s/%s" % (self.server.url, method))

    def call_ok(self, method, data):
        res = self.call(method, data)
        self.assertEqual(res.returncode, 0,
                         "buf curl %s failed (exit %d)\nstdout:\n%s\nstderr:\n%s"
                         % (method, res.returncode, res.stdout, res.stderr))
        try:
            return json.loads(res.stdout)
        except ValueError:
            self.fail("buf curl %s printed no single JSON document:\n%s" % (method, res.stdout))

    # -- reflection listing ---------------------------------------------------

    def test_list_services(self):
        res = self.curl("--list-services", self.server.url)
        self.assertEqual(res.returncode, 0, res.stderr)
        services = set(res.stdout.split())
        self.assertIn("dbpool.v1.DatabaseService", services)
        self.assertIn("grpc.health.v1.Health", services)

    def test_list_methods(self):
        res = self.curl("--list-methods", self.server.url)
        self.assertEqual(res.returncode, 0, res.stderr)
        methods = set(res.stdout.split())
        for m in ("dbpool.v1.DatabaseService/Query",
                  "dbpool.v1.DatabaseService/GetPoolStats",
                  "dbpool.v1.DatabaseService/StreamPoolStats",
                  "grpc.health.v1.Health/Check"):
            self.assertIn(m, methods)

    # -- DatabaseService --------------------------------------------------------

    def test_query_select_one(self):
        out = self.call_ok("dbpool.v1.DatabaseService/Query", {"sql": "SELECT 1 AS one"})
        self.assertEqual(len(out.get("columns", [])), 1, out)
        col = out["columns"][0]
        self.assertEqual(col["name"], "one")
        self.assertEqual(col.get("typeName"), "int4")
        self.assertEqual(col.get("typeOid"), 23)
        self.assertEqual(len(out.get("rows", [])), 1, out)
        values = out["rows"][0]["values"]
        self.assertEqual(len(values), 1)
        # proto3 JSON prints int64 as a string.
        self.assertEqual(str(values[0].get("int64Value")), "1", values)
        self.assertEqual(out.get("commandTag"), "SELECT 1")

    def test_query_with_param(self):
        out = self.call_ok("dbpool.v1.DatabaseService/Query", {
            "sql": "SELECT $1::text || '!' AS s, $2::numeric * 2 AS d",
            "params": [{"stringValue": "hi"},
                       {"decimalValue": "1.25", "typeHint": "numeric"}]})
        values = out["rows"][0]["values"]
        self.assertEqual(values[0], {"stringValue": "hi!"})
        self.assertEqual(values[1], {"decimalValue": "2.50"})

    def test_get_pool_stats(self):
        out = self.call_ok("dbpool.v1.DatabaseService/GetPoolStats", {})
        self.assertIn("maxConnections", out)
        self.assertIsInstance(out["maxConnections"], int)
        self.assertNotIsInstance(out["maxConnections"], bool)
        self.assertGreater(out["maxConnections"], 0)
        # proto3 JSON omits zero gauges; those present are JSON numbers.
        for name in ("activeConnections", "idleConnections", "waitingConnections",
                     "totalConnections", "minConnections", "connectingConnections"):
            if name in out:
                self.assertIsInstance(out[name], int, name)
                self.assertGreaterEqual(out[name], 0, name)
        self.assertNotIn("max_connections", out, "names must be lowerCamelCase")

    def test_stream_pool_stats(self):
        res = harness.run_buf(
            ["curl", "--protocol", "grpc", "--http2-prior-knowledge",
             "--timeout", "1.5s",
             "-d", json.dumps({"interval": "0.1s"}),
             "%s/dbpool.v1.DatabaseService/StreamPoolStats" % self.server.url],
            cwd=self.cwd, timeout=BUF_TIMEOUT_S)
        # The stream never ends by itself; buf stops it at the deadline and
        # exits non-zero, so judge the output only.
        msgs, rest = harness.decode_json_stream(res.stdout)
        self.assertGreaterEqual(
            len(msgs), 2,
            "want >= 2 snapshots in 1.5 s at 100 ms (exit %d)\nstdout:\n%s\nstderr:\n%s"
            % (res.returncode, res.stdout, res.stderr))
        self.assertEqual(rest.strip(), "", "unparsable trailing output")
        for m in msgs:
            self.assertIsInstance(m, dict)
            self.assertIsInstance(m.get("maxConnections"), int, m)
            self.assertGreater(m["maxConnections"], 0)

    def test_query_error_is_invalid_argument(self):
        res = self.call("dbpool.v1.DatabaseService/Query", {"sql": "SELECT 1/0"})
        self.assertNotEqual(res.returncode, 0, "stdout:\n%s" % res.stdout)
        # buf exits with the gRPC code shifted left by 3 (INVALID_ARGUMENT=3).
        self.assertEqual(res.returncode, 3 << 3, res.stderr)
        self.assertIn("invalid_argument", res.stderr)
        # The SQLSTATE rides along in google.rpc.ErrorInfo.
        try:
            err = json.loads(res.stderr)
        except ValueError:
            self.fail("buf curl did not print the error as JSON:\n%s" % res.stderr)
        self.assertEqual(err.get("code"), "invalid_argument")
        infos = [d for d in err.get("details", []) if d.get("type") == "google.rpc.ErrorInfo"]
        self.assertEqual(len(infos), 1,
                         "want one google.rpc.ErrorInfo in error details: %s" % res.stderr)
        fields = _decode_string_fields(_b64decode(infos[0]["value"]))
        self.assertEqual(fields.get(1), "22012", "ErrorInfo.reason")
        self.assertEqual(fields.get(2), "postgresql", "ErrorInfo.domain")

    # -- health -----------------------------------------------------------------

    def test_health_check(self):
        for service in ("", "dbpool.v1.DatabaseService"):
            out = self.call_ok("grpc.health.v1.Health/Check", {"service": service})
            self.assertEqual(out.get("status"), "SERVING", "service %r: %s" % (service, out))


if __name__ == "__main__":
    unittest.main(verbosity=2)
