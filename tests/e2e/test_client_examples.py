"""The client examples of client/examples (Python, Node.js, Go) against
dbpool-server.

Each example is prepared the way its README says (Python stubs generated
with generate.sh, the Go program built offline with build.sh, the Node.js
one loading the protos itself), then run against a throwaway PostgreSQL and
dbpool-server that wants a bearer token. Its output must hold the query's
answer, the pool exactly as it stands (settled at its minimum before the
runs) and exactly the number of snapshots asked for; without a token, or
without a server, it must exit 1 naming the gRPC code.

    tests/e2e/run.sh test_client_examples

A language whose toolchain is missing is skipped, except under CI=true,
where that fails its test (scripts/install-deps installs every one).
"""

import datetime
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

import grpc  # noqa: E402

EXAMPLES_DIR = harness.REPO_ROOT / "client" / "examples"
NODE_MODULES = harness.REPO_ROOT / "node_modules"
GOCODE_DIR = "/usr/share/gocode/src"

# An example makes three calls of at most 5 s each, and watches for one
# second a snapshot: a run past this has hung.
RUN_TIMEOUT_S = 60.0
BUILD_TIMEOUT_S = 600.0
SETTLE_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 10.0

MAX_CONNECTIONS = 4
MIN_CONNECTIONS = 2
TOKEN = "examples-0123456789abcdef"

# Nothing but the examples uses the pool, which sits at its minimum,
# all idle, before, during and after each run.
POOL_LINE = ("pool: active=0 idle=%d connecting=0 total=%d max=%d waiting=0 reachable=true"
             % (MIN_CONNECTIONS, MIN_CONNECTIONS, MAX_CONNECTIONS))
WATCH_RE = re.compile(r"^watch (\d+)/(\d+): active=0 idle=%d total=%d waiting=0 time=(\S+)$"
                      % (MIN_CONNECTIONS, MIN_CONNECTIONS))
# RFC 3339 in UTC as each language prints it: protobuf's JSON form (0, 3, 6
# or 9 digits), Go's RFC3339Nano (trailing zeros dropped), JavaScript's
# toISOString (milliseconds).
TIME_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z$")
# The stream sends a snapshot at once, then one a second.
WATCH_INTERVAL_S = 1.0

# The tools each example needs, as commands on PATH and as directories.
TOOLCHAINS = {
    "python": (["protoc", "grpc_python_plugin"], [harness.GOOGLEAPIS_DIR]),
    "node": (["node"], [harness.GOOGLEAPIS_DIR, NODE_MODULES / "@grpc" / "grpc-js",
                        NODE_MODULES / "@grpc" / "proto-loader"]),
    "go": (["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"],
           [harness.GOOGLEAPIS_DIR, GOCODE_DIR + "/google.golang.org/grpc",
            GOCODE_DIR + "/google.golang.org/protobuf"]),
}

# How each language spells a gRPC status code in its error line.
CODE_NAMES = {
    "python": {"unauthenticated": "UNAUTHENTICATED", "unavailable": "UNAVAILABLE"},
    "node": {"unauthenticated": "UNAUTHENTICATED", "unavailable": "UNAVAILABLE"},
    "go": {"unauthenticated": "Unauthenticated", "unavailable": "Unavailable"},
}

pb = pb_grpc = None


def toolchain_problem(language):
    commands, paths = TOOLCHAINS[language]
    missing = ([c for c in commands if not shutil.which(c)]
               + [str(p) for p in paths if not os.path.isdir(p)])
    if missing:
        return ("the %s example needs %s, which %s missing (scripts/install-deps installs them)"
                % (language, ", ".join(missing), "is" if len(missing) == 1 else "are"))
    return None


def parse_time(text):
    m = TIME_RE.match(text)
    if not m:
        raise AssertionError("not an RFC 3339 UTC time: %r" % text)
    seconds = datetime.datetime.fromisoformat(m.group(1)).replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return seconds + float("0." + (m.group(2) or "0"))


def closed_port():
    """A loopback port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClientExamplesTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        global pb, pb_grpc
        cls.work = harness.make_temp_dir("dbpool-e2e-examples-")
        cls.addClassCleanup(shutil.rmtree, cls.work, True)
        stubs = cls.work / "harness-stubs"
        stubs.mkdir()
        harness.generate_python_stubs(stubs)
        from dbpool.v1 import database_service_pb2 as _pb
        from dbpool.v1 import database_service_pb2_grpc as _pb_grpc
        pb, pb_grpc = _pb, _pb_grpc

        tokens = cls.work / "tokens"
        tokens.write_text("examples read_only %s\n" % TOKEN)
        tokens.chmod(0o600)
        harness.start_stack(cls, server_args=[
            "--db-pool-max-connections=%d" % MAX_CONNECTIONS,
            "--db-pool-min-connections=%d" % MIN_CONNECTIONS,
        ], server_env={"DBPOOL_AUTH_TOKENS_FILE": str(tokens)})
        cls.wait_for_settled_pool()
        cls.prepared = {}

    @classmethod
    def tearDownClass(cls):
        harness.stop_server_checked(cls)

    @classmethod
    def wait_for_settled_pool(cls):
        """Returns once the pool holds its minimum of connections, all idle,
        which is what every example must then report."""
        with grpc.insecure_channel(cls.server.address) as channel:
            db = pb_grpc.DatabaseServiceStub(channel)
            metadata = [("authorization", "Bearer " + TOKEN)]
            want = (0, MIN_CONNECTIONS, 0, MIN_CONNECTIONS, 0)
            deadline = time.monotonic() + SETTLE_TIMEOUT_S
            while True:
                s = db.GetPoolStats(pb.GetPoolStatsRequest(), metadata=metadata,
                                    timeout=RPC_TIMEOUT_S)
                got = (s.active_connections, s.idle_connections, s.connecting_connections,
                       s.total_connections, s.waiting_connections)
                if got == want:
                    return
                if time.monotonic() > deadline:
                    raise harness.HarnessError(
                        "pool (active, idle, connecting, total, waiting) is %s, not %s, "
                        "after %.0f s\n%s" % (got, want, SETTLE_TIMEOUT_S,
                                              cls.server.diagnostics()))
                time.sleep(0.05)

    # -- preparing and running an example -----------------------------------

    def prepare(self, language):
        """The command that runs LANGUAGE's example and the environment it
        needs, generating or building it on first use."""
        problem = toolchain_problem(language)
        if problem:
            if os.environ.get("CI") == "true":
                self.fail(problem)
            self.skipTest(problem)
        if language not in self.prepared:
            self.prepared[language] = getattr(self, "_prepare_" + language)()
        return self.prepared[language]

    def _run_script(self, script, output):
        try:
            proc = subprocess.run([str(script), str(output)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            self.fail("%s did not finish within %.0f s:\n%s" % (script, BUILD_TIMEOUT_S, e.stdout))
        self.assertEqual(proc.returncode, 0, "%s failed:\n%s" % (script, proc.stdout))

    def _prepare_python(self):
        stubs = self.work / "python"
        self._run_script(EXAMPLES_DIR / "python" / "generate.sh", stubs)
        return ([sys.executable, str(EXAMPLES_DIR / "python" / "dbpool_example.py")],
                {"PYTHONPATH": str(stubs)})

    def _prepare_node(self):
        return ["node", str(EXAMPLES_DIR / "node" / "dbpool-example.js")], {}

    def _prepare_go(self):
        binary = self.work / "dbpool-example-go"
        self._run_script(EXAMPLES_DIR / "go" / "build.sh", binary)
        return [str(binary)], {}

    def run_example(self, language, args=(), env=None):
        command, base_env = self.prepare(language)
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("DBPOOL_TARGET", "DBPOOL_TOKEN", "PYTHONPATH")}
        full_env.update(base_env)
        full_env.update(env or {})
        started = time.time()
        try:
            proc = subprocess.run([*command, *args], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, timeout=RUN_TIMEOUT_S, env=full_env)
        except subprocess.TimeoutExpired as e:
            self.fail("the %s example did not finish within %.0f s\nstdout:\n%s\nstderr:\n%s"
                      % (language, RUN_TIMEOUT_S, e.stdout, e.stderr))
        return proc, started, time.time()

    # -- what a run must print ----------------------------------------------

    def assert_success(self, run, watch):
        proc, started, ended = run
        self.assertEqual(proc.returncode, 0, "stdout:\n%s\nstderr:\n%s"
                         % (proc.stdout, proc.stderr))
        self.assertEqual(proc.stderr, "")
        lines = proc.stdout.splitlines()
        self.assertEqual(lines[:3], ["row: answer=42", "tag: SELECT 1", POOL_LINE])
        self.assertEqual(len(lines), 3 + watch, proc.stdout)
        times = []
        for n, line in enumerate(lines[3:], 1):
            m = WATCH_RE.match(line)
            self.assertIsNotNone(m, line)
            self.assertEqual((int(m.group(1)), int(m.group(2))), (n, watch), line)
            times.append(parse_time(m.group(3)))
        # Snapshots taken while the example ran (JavaScript's dates drop
        # what is below the millisecond), one interval apart or more.
        self.assertGreaterEqual(times[0], started - 0.001, lines[3])
        self.assertLessEqual(times[-1], ended, lines[-1])
        for earlier, later in zip(times, times[1:]):
            self.assertGreaterEqual(later - earlier, 0.9 * WATCH_INTERVAL_S, proc.stdout)

    def assert_failure(self, language, run, code, target):
        proc = run[0]
        self.assertEqual(proc.returncode, 1, "stdout:\n%s\nstderr:\n%s"
                         % (proc.stdout, proc.stderr))
        self.assertEqual(proc.stdout, "")
        self.assertRegex(proc.stderr, r"\Adbpool-example: %s: %s: \S.*\n\Z"
                         % (re.escape(target), CODE_NAMES[language][code]))

    def check_example(self, language):
        # Once, before the subtests, so that a missing toolchain is reported once.
        self.prepare(language)
        address = self.server.address
        with self.subTest("target and token from the environment, three snapshots"):
            self.assert_success(self.run_example(
                language, env={"DBPOOL_TARGET": address, "DBPOOL_TOKEN": TOKEN}), watch=3)
        with self.subTest("--target and --watch"):
            self.assert_success(self.run_example(
                language, ["--target", address, "--watch", "2"],
                env={"DBPOOL_TOKEN": TOKEN}), watch=2)
        with self.subTest("no token"):
            self.assert_failure(language, self.run_example(language, ["--target", address]),
                                "unauthenticated", address)
        with self.subTest("no server"):
            target = "127.0.0.1:%d" % closed_port()
            self.assert_failure(language, self.run_example(
                language, ["--target", target], env={"DBPOOL_TOKEN": TOKEN}),
                "unavailable", target)

    # -- the examples -------------------------------------------------------

    def test_python_example(self):
        self.check_example("python")

    def test_node_example(self):
        self.check_example("node")

    def test_go_example(self):
        self.check_example("go")


if __name__ == "__main__":
    unittest.main()
