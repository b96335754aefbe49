"""Shared helpers for the dbpool end-to-end tests.

Both test modules drive the real server binary against a throwaway
PostgreSQL cluster started through tests/support/pg_cluster.sh:

    cls.pg = harness.PgCluster.start()
    cls.server = harness.DbpoolServer.start(cls.pg.database_url)
    ...
    rc = cls.server.stop()          # SIGTERM, then wait
    cls.pg.stop()

bench/dbpoolbench starts its PostgreSQL and servers through the same two
classes.

All three ports are ephemeral; the server's ready line names them:
server.address (gRPC host:port), server.http_address / server.http_url (the
REST/JSON gateway and /healthz, /readyz) and server.metrics_address /
server.metrics_url (the Prometheus exporter's /metrics).
start_stack(cls, server_args=[...]) passes extra flags to the server.

Streaming replicas of a cluster, for read-replica routing:

    replica = cls.pg.start_replica()    # a PgCluster too
    replica.pause_replay(); replica.resume_replay(); replica.replay_lsn()

Nothing here is specific to unittest; failures are raised as
HarnessError with the server's output attached, so that a broken start is
easy to diagnose from the test log.
"""

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
PROTO_DIR = REPO_ROOT / "proto"
PG_CLUSTER_SH = REPO_ROOT / "tests" / "support" / "pg_cluster.sh"
BUF_BIN = REPO_ROOT / "node_modules" / ".bin" / "buf"

# Third-party proto roots shipped by Debian packages.
GOOGLEAPIS_DIR = Path("/usr/share/gocode/src/github.com/gogo/googleapis")
GRPC_PROTO_DIR = Path("/usr/share/grpc-proto")

DEFAULT_SERVER_BIN = REPO_ROOT / "build" / "dbpool-server"
READY_RE = re.compile(r"dbpool-server listening grpc=([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")
# The same line goes on with the HTTP gateway and metrics exporter addresses:
#   dbpool-server listening grpc=H:P http=H:P metrics=H:P
HTTP_RE = re.compile(r"\bhttp=([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")
METRICS_RE = re.compile(r"\bmetrics=([0-9.]+|\[[0-9a-fA-F:]+\]):(\d+)")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


class HarnessError(AssertionError):
    """A precondition of the end-to-end tests does not hold.

    It derives from AssertionError so that unittest reports it as a test
    failure with its message rather than as an anonymous crash.
    """


def server_bin():
    return Path(os.environ.get("DBPOOL_SERVER_BIN") or DEFAULT_SERVER_BIN)


def cli_bin():
    """The `dbpool` client: $DBPOOL_CLI_BIN, else build/dbpool."""
    return Path(os.environ.get("DBPOOL_CLI_BIN") or REPO_ROOT / "build" / "dbpool")


def run_cli(test, args, timeout, target=True, env=None):
    """Runs the `dbpool` client with ARGS for `test` (a TestCase with a
    started server). --target points at the test server unless target is
    False; DBPOOL_TARGET is never inherited. A run past `timeout` fails the
    test with the output so far."""
    full_env = {k: v for k, v in os.environ.items() if k != "DBPOOL_TARGET"}
    full_env.update(env or {})
    argv = [str(cli_bin())]
    if target:
        argv += ["--target", test.server.address]
    argv += list(args)
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired as e:
        test.fail("dbpool %s did not finish within %.0f s\nstdout:\n%s\nstderr:\n%s"
                  % (" ".join(args), timeout, e.stdout, e.stderr))


def start_stack_with_cli(test_class):
    """start_stack, after checking that the client binary exists."""
    binary = cli_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise HarnessError(
            "client binary %s does not exist or is not executable "
            "(set DBPOOL_CLI_BIN or build the `dbpool` target)" % binary)
    start_stack(test_class)


def make_temp_dir(prefix):
    """A fresh temporary directory that the postgres user can traverse."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o755)
    return Path(d)


def tail(text, lines=40):
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------
# PostgreSQL


class PgCluster:
    """A throwaway PostgreSQL cluster owned by this test process."""

    def __init__(self, root, port):
        self.root = root
        self.dir = root / "pg"
        self.port = port
        self._stopped = False
        self._killed = []

    @property
    def database_url(self):
        return "postgresql://postgres@127.0.0.1:%d/postgres" % self.port

    @property
    def postmaster_pid(self):
        with open(self.dir / "data" / "postmaster.pid") as f:
            return int(f.readline())

    @classmethod
    def start(cls, prefix="dbpool-e2e-pg-", settings=()):
        """settings: ("name=value", ...) for the server, over
        pg_cluster.sh's defaults."""
        return cls._launch(["start"], prefix, settings)

    def start_replica(self, prefix="dbpool-e2e-replica-", settings=()):
        """A streaming replica of this (running) cluster, started on a port
        of its own; stop it before this one. settings as start's, and
        PostgreSQL wants max_connections and a few others at least as large
        as the primary's."""
        return self._launch(["start-replica", str(self.dir)], prefix, settings)

    @classmethod
    def _launch(cls, command, prefix, settings):
        if not PG_CLUSTER_SH.is_file():
            raise HarnessError("missing %s" % PG_CLUSTER_SH)
        root = make_temp_dir(prefix)
        pg_dir = root / "pg"
        options = [arg for setting in settings for arg in ("-c", setting)]
        try:
            proc = subprocess.run(
                ["bash", str(PG_CLUSTER_SH), *command, str(pg_dir), *options],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, timeout=180)
        except subprocess.TimeoutExpired:
            cls._stop_dir(pg_dir)
            shutil.rmtree(root, ignore_errors=True)
            raise HarnessError("pg_cluster.sh %s did not finish in 180 s" % command[0])
        port_text = proc.stdout.strip().splitlines()[-1:] if proc.stdout else []
        if proc.returncode != 0 or not port_text or not port_text[0].isdigit():
            cls._stop_dir(pg_dir)
            shutil.rmtree(root, ignore_errors=True)
            raise HarnessError(
                "pg_cluster.sh %s failed (exit %d)\nstdout:\n%s\nstderr:\n%s"
                % (command[0], proc.returncode, proc.stdout, proc.stderr))
        return cls(root, int(port_text[0]))

    @staticmethod
    def _stop_dir(pg_dir):
        subprocess.run(["bash", str(PG_CLUSTER_SH), "stop", str(pg_dir)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)

    def restart(self, timeout=120):
        """pg_ctl restart -m fast on the same port; the CompletedProcess."""
        return subprocess.run(["bash", str(PG_CLUSTER_SH), "restart", str(self.dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)

    def kill(self):
        """SIGKILL to the postmaster: the crash of a whole node. Its
        children notice and exit by themselves."""
        pid = self.postmaster_pid
        children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)],
                                  stdout=subprocess.PIPE, text=True, timeout=30).stdout
        self._killed = [pid, *map(int, children.split())]
        os.kill(pid, signal.SIGKILL)

    def start_again(self, timeout=60):
        """Starts a killed cluster on its old port. PostgreSQL refuses to
        while its old processes exist, even as zombies (the lock file names
        the old postmaster, and they may still hold its shared memory), so
        this first waits for them to be reaped."""
        deadline = time.monotonic() + timeout
        while any(Path("/proc/%d" % pid).exists() for pid in self._killed):
            if time.monotonic() > deadline:
                raise HarnessError("processes of the killed cluster on port %d still "
                                   "exist after %.0f s" % (self.port, timeout))
            time.sleep(0.05)
        proc = self.restart(timeout=max(1, deadline - time.monotonic()))
        if proc.returncode != 0:
            raise HarnessError("restarting the cluster on port %d failed: %s"
                               % (self.port, proc.stdout))

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        try:
            self._stop_dir(self.dir)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql, database="postgres", timeout=60):
        """Runs SQL through psql (as a side channel to the server). SQL goes
        in on stdin, so that several statements each run on their own
        (VACUUM and ALTER SYSTEM refuse a transaction block)."""
        proc = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database],
            input=sql, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            timeout=timeout)
        if proc.returncode != 0:
            raise HarnessError("psql failed: %s" % proc.stderr)
        return proc.stdout

    def session(self):
        """A PsqlSession on this cluster; close it when done."""
        return PsqlSession(self.port)

    # Replicas only.

    def pause_replay(self, timeout=10):
        """Stops applying WAL (it is still received), and returns once the
        replica says replay is paused."""
        self.psql("SELECT pg_wal_replay_pause()")
        deadline = time.monotonic() + timeout
        while self.psql("SELECT pg_get_wal_replay_pause_state()").strip() != "paused":
            if time.monotonic() > deadline:
                raise HarnessError("replay on port %d not paused within %.0f s"
                                   % (self.port, timeout))
            time.sleep(0.02)

    def resume_replay(self):
        self.psql("SELECT pg_wal_replay_resume()")

    def replay_lsn(self):
        """pg_last_wal_replay_lsn(), "X/X"."""
        return self.psql("SELECT pg_last_wal_replay_lsn()").strip()

    def wait_for_replay(self, lsn, timeout=10):
        """Returns once the replica has replayed up to lsn ("X/X")."""
        deadline = time.monotonic() + timeout
        while parse_lsn(self.replay_lsn()) < parse_lsn(lsn):
            if time.monotonic() > deadline:
                raise HarnessError("replica on port %d replayed only to %s, not %s, in %.0f s"
                                   % (self.port, self.replay_lsn(), lsn, timeout))
            time.sleep(0.02)


class PsqlSession:
    """One psql connection kept open, for statements sent too often to
    start a psql for each (a process start costs a good part of a second on
    a busy machine)."""

    _DONE = "--psql-session-done--"

    def __init__(self, port):
        self.port = port
        self._proc = subprocess.Popen(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1)
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self._proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def run(self, sql, timeout=10):
        """Runs SQL (one or more statements); the lines they print."""
        # psql sends a statement at its semicolon; \echo would not.
        try:
            self._proc.stdin.write("%s;\n\\echo %s\n" % (sql.rstrip().rstrip(";"),
                                                           self._DONE))
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # psql has ended: reported below, with its error.
        deadline = time.monotonic() + timeout
        out = []
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise HarnessError("psql on port %d did not answer %r within %.0f s"
                                   % (self.port, sql, timeout))
            if line is None:
                self._proc.wait(10)
                raise HarnessError("psql on port %d ended (exit %s) at %r: %s"
                                   % (self.port, self._proc.returncode, sql,
                                      self._proc.stderr.read()))
            if line == self._DONE:
                return out
            out.append(line)

    def close(self):
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._reader.join(5)
        self._proc.stdout.close()
        self._proc.stderr.close()


def parse_lsn(text):
    """PostgreSQL's "X/X" WAL position as a number, for comparing."""
    m = re.fullmatch(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})", text)
    if not m:
        raise ValueError("not a WAL position: %r" % text)
    return (int(m.group(1), 16) << 32) | int(m.group(2), 16)


# ---------------------------------------------------------------------------
# The server under test


class DbpoolServer:
    """The dbpool-server binary, started on an ephemeral port."""

    def __init__(self, proc, log_dir):
        self.proc = proc
        self.log_dir = log_dir
        self.host = None
        self.port = None
        # From the same ready line; None when the server did not report them.
        self.http_host = None
        self.http_port = None
        self.metrics_host = None
        self.metrics_port = None
        self._stdout_lines = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()
        self.exit_code = None

    @property
    def address(self):
        return "%s:%d" % (self.host, self.port)

    @property
    def url(self):
        """The gRPC endpoint as a URL (what buf curl wants)."""
        return "http://%s:%d" % (self.host, self.port)

    @staticmethod
    def _join(host, port):
        if host is None or port is None:
            raise HarnessError("dbpool-server did not report this address")
        return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)

    @property
    def http_address(self):
        """host:port of the REST/JSON gateway (/v1/query, /healthz, ...)."""
        return self._join(self.http_host, self.http_port)

    @property
    def http_url(self):
        return "http://" + self.http_address

    @property
    def metrics_address(self):
        """host:port of the Prometheus exporter."""
        return self._join(self.metrics_host, self.metrics_port)

    @property
    def metrics_url(self):
        """The exposition URL: http://host:port/metrics."""
        return "http://%s/metrics" % self.metrics_address

    @classmethod
    def start(cls, database_url, extra_args=(), extra_env=None, url_in_env=False,
              binary=None):
        """url_in_env passes DATABASE_URL in the environment instead of as a
        flag (the way a password must travel). binary defaults to
        server_bin()."""
        binary = Path(binary) if binary else server_bin()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise HarnessError(
                "server binary %s does not exist or is not executable "
                "(set DBPOOL_SERVER_BIN or build the project)" % binary)
        log_dir = Path(tempfile.mkdtemp(prefix="dbpool-e2e-server-"))
        env = dict(os.environ)
        # Flags win over the environment; drop inherited settings that could
        # point the server elsewhere.
        for name in ("DATABASE_URL", "DATABASE_REPLICA_URLS", "DBPOOL_LISTEN_HOST",
                     "DBPOOL_GRPC_PORT"):
            env.pop(name, None)
        # The server may also open HTTP and metrics ports (fixed defaults);
        # ask for ephemeral ones so that runs never collide with each other
        # or with a developer's server. Environment rather than flags, so a
        # server without those settings simply ignores them.
        env["DBPOOL_HTTP_PORT"] = "0"
        env["DBPOOL_METRICS_PORT"] = "0"
        env.update(extra_env or {})
        args = [str(binary), "--listen-host=127.0.0.1", "--grpc-port=0", *extra_args]
        if url_in_env:
            env["DATABASE_URL"] = database_url
        else:
            args.append("--database-url=" + database_url)
        stderr = open(log_dir / "stderr.log", "wb")
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=stderr,
                                    env=env)
        finally:
            stderr.close()
        server = cls(proc, log_dir)
        server._wait_ready()
        return server

    def _read_stdout(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self._stdout_lines.append(line)
            m = READY_RE.search(line)
            if m and not self._ready.is_set():
                self.host = m.group(1).strip("[]")
                self.port = int(m.group(2))
                for regex, attr in ((HTTP_RE, "http"), (METRICS_RE, "metrics")):
                    extra = regex.search(line)
                    if extra:
                        setattr(self, attr + "_host", extra.group(1).strip("[]"))
                        setattr(self, attr + "_port", int(extra.group(2)))
                self._ready.set()
        self.proc.stdout.close()

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._ready.wait(0.1):
                return
            if self.proc.poll() is not None:
                self._reader.join(5)
                if self._ready.is_set():
                    break
                raise HarnessError(
                    "dbpool-server exited with %d before it was ready\n%s"
                    % (self.proc.returncode, self.diagnostics()))
        if not self._ready.is_set():
            self.kill()
            raise HarnessError(
                "dbpool-server printed no 'dbpool-server listening grpc=HOST:PORT' "
                "line within %.0f s\n%s" % (READY_TIMEOUT_S, self.diagnostics()))
        if self.port == 0:
            self.kill()
            raise HarnessError("dbpool-server reported port 0\n" + self.diagnostics())

    def stdout_text(self):
        with self._lock:
            return "\n".join(self._stdout_lines)

    def stderr_text(self):
        try:
            return (self.log_dir / "stderr.log").read_text("utf-8", "replace")
        except OSError:
            return ""

    def diagnostics(self, lines=40):
        return ("--- server stdout (tail) ---\n%s\n--- server stderr (tail) ---\n%s"
                % (tail(self.stdout_text(), lines), tail(self.stderr_text(), lines)))

    def is_running(self):
        return self.proc.poll() is None

    def stop(self, timeout=STOP_TIMEOUT_S):
        """SIGTERM; returns the exit code, or None if it did not exit in time
        (in which case the process is killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        self._reader.join(5)
        self.exit_code = self.proc.returncode
        return self.exit_code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._reader.join(5)

    def cleanup(self):
        self.kill()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def start_stack(test_class, server_args=(), server_env=None):
    """Starts PostgreSQL and the server for a unittest.TestCase class.

    server_args and server_env go to DbpoolServer.start (extra flags, such as
    --db-pool-max-connections=4, and extra environment).

    Sets test_class.pg and test_class.server, and registers class cleanups
    that kill whatever is still running, even if setUpClass fails halfway
    (unittest skips tearDownClass in that case but still runs cleanups).
    """
    binary = server_bin()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise HarnessError(
            "server binary %s does not exist or is not executable "
            "(set DBPOOL_SERVER_BIN or build the project)" % binary)
    test_class.pg = PgCluster.start()
    test_class.addClassCleanup(test_class.pg.stop)
    test_class.server = DbpoolServer.start(test_class.pg.database_url,
                                           extra_args=server_args,
                                           extra_env=server_env)
    test_class.addClassCleanup(test_class.server.cleanup)


def stop_server_checked(test_class):
    """SIGTERMs the server and raises unless it exits 0 within 15 s."""
    server = getattr(test_class, "server", None)
    if server is None:
        return
    rc = server.stop()
    if rc is None:
        raise HarnessError("dbpool-server did not exit within %.0f s of SIGTERM\n%s"
                           % (STOP_TIMEOUT_S, server.diagnostics()))
    if rc != 0:
        raise HarnessError("dbpool-server exited with %d after SIGTERM (want 0)\n%s"
                           % (rc, server.diagnostics()))


# ---------------------------------------------------------------------------
# Python stubs


STUB_PROTOS = [
    "dbpool/v1/database_service.proto",
    "google/api/annotations.proto",
    "google/api/http.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
    "grpc/health/v1/health.proto",
]


def generate_python_stubs(out_dir):
    """Runs protoc with the gRPC Python plugin into out_dir and puts out_dir
    on sys.path. Well-known types come from the protobuf runtime."""
    plugin = shutil.which("grpc_python_plugin")
    if not plugin:
        raise HarnessError("grpc_python_plugin not found on PATH")
    protoc = shutil.which("protoc")
    if not protoc:
        raise HarnessError("protoc not found on PATH")
    for d in (PROTO_DIR, GOOGLEAPIS_DIR, GRPC_PROTO_DIR):
        if not d.is_dir():
            raise HarnessError("proto include directory %s is missing" % d)
    cmd = [protoc,
           "-I", str(PROTO_DIR), "-I", str(GOOGLEAPIS_DIR), "-I", str(GRPC_PROTO_DIR),
           "--python_out=%s" % out_dir,
           "--grpc_out=%s" % out_dir,
           "--plugin=protoc-gen-grpc=%s" % plugin,
           *STUB_PROTOS]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=120)
    if proc.returncode != 0:
        raise HarnessError("protoc failed (exit %d): %s\n%s"
                           % (proc.returncode, " ".join(cmd), proc.stderr))
    out = str(out_dir)
    if out not in sys.path:
        sys.path.insert(0, out)
    # `google` is a namespace package shared with the protobuf runtime, so
    # the generated google/api and google/rpc directories join it on their
    # own. `grpc` is a regular package (grpcio), so its generated
    # grpc/health/v1 directory has to be added to grpc.__path__ by hand for
    # `grpc.health.v1.health_pb2` (which health_pb2_grpc imports) to resolve.
    import importlib
    import grpc
    extra = os.path.join(out, "grpc")
    if extra not in grpc.__path__:
        grpc.__path__.append(extra)
    importlib.invalidate_caches()


# ---------------------------------------------------------------------------
# buf


def buf_bin():
    if not (BUF_BIN.exists() and os.access(BUF_BIN, os.X_OK)):
        raise HarnessError(
            "buf not found at %s: run `npm ci` (or `npm install`) in %s to "
            "install @bufbuild/buf from package.json" % (BUF_BIN, REPO_ROOT))
    return str(BUF_BIN)


def run_buf(args, cwd=None, timeout=60, env=None):
    """Runs buf with args; returns the CompletedProcess (text mode)."""
    full_env = dict(os.environ)
    full_env.setdefault("BUF_LOG_FORMAT", "text")
    # Colour codes would get in the way of assertions on stderr.
    full_env["NO_COLOR"] = "1"
    full_env.update(env or {})
    cmd = [buf_bin(), *args]
    try:
        return subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired as e:
        raise HarnessError("buf %s did not finish within %s s\nstdout:\n%s\nstderr:\n%s"
                           % (" ".join(args), timeout, e.stdout, e.stderr))


def decode_json_stream(text):
    """Parses JSON values printed one after another (as buf curl does for
    streaming responses). Returns (values, rest) where rest is whatever
    trailing text did not parse (empty when the output is well formed)."""
    import json
    decoder = json.JSONDecoder()
    values = []
    i = 0
    n = len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return values, ""
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return values, text[i:]
        values.append(value)


# ---------------------------------------------------------------------------
# Peer gateways (bench/peers)

PEERS_DIR = REPO_ROOT / "bench" / "peers"
PEER_READY_RE = re.compile(r"dbpool-peer listening grpc=(\S+)")


class Peer:
    """A peer gateway of bench/peers (they share one command line),
    started on a free port (--port=0) with a pool of pool_size."""

    def __init__(self, name, argv, database_url, log_dir, pool_size):
        self.name = name
        self.stderr_path = log_dir / (name + ".stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [*argv, "--port=0", f"--pool-size={pool_size}"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr, text=True,
                env=dict(os.environ, DATABASE_URL=database_url))
        lines = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                ready = PEER_READY_RE.search(lines.get(timeout=0.2))
            except queue.Empty:
                continue
            if ready:
                self.address = ready.group(1)
                return
        exited = self.proc.poll()
        self.stop()
        raise HarnessError(
            "%s peer printed no ready line (%s)\n%s"
            % (name, "exit code %d" % exited if exited is not None
               else "waited %.0f s" % READY_TIMEOUT_S, self.stderr()))

    def _read_stdout(self, lines):
        with self.proc.stdout:
            for line in self.proc.stdout:
                lines.put(line)

    def stderr(self):
        return tail(self.stderr_path.read_text("utf-8", "replace"))

    def stop(self):
        """SIGTERM, then SIGKILL after the harness's stop timeout; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
