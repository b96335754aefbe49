"""What every benchmark needs around its measurement: packages, the
Release build, a throwaway PostgreSQL, dbpool-server and the peer
gateways (through the e2e harness, tests/e2e/harness.py), versions, and
stopping all of it on exit, also on failure or a signal."""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import text

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))
import harness  # noqa: E402  (lives with the e2e tests; path set just above)

HarnessError = harness.HarnessError

POINT_SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
# What `dbpool bench` calls: the point select (Query), or GetPoolStats,
# which the server answers from memory: its gRPC floor.
QUERY_LOAD = ("--sql", POINT_SELECT, "--param", "rand:1:1000000")
FLOOR_LOAD = ("--rpc", "stats")
# The pool of every side-by-side figure: PgBouncer's default_pool_size and
# dbpool's, all connections open from the start.
POOL_SIZE = 20
POOL_ARGS = (f"--db-pool-max-connections={POOL_SIZE}", f"--db-pool-min-connections={POOL_SIZE}")


class Logger:
    def __init__(self, name):
        self.name = name

    def __call__(self, message):
        print(f"[{self.name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr,
              flush=True)


def exit_on_signals():
    """SIGTERM and SIGINT raise SystemExit(128 + signal), so that the
    `finally` blocks and exit stacks stop what the run started."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def install_deps(log):
    """scripts/install-deps: what building and benchmarking need (it only
    installs what is missing)."""
    log("scripts/install-deps")
    subprocess.run([str(REPO_ROOT / "scripts" / "install-deps")], check=True)


def build_release(build_dir, log):
    """Configures (once) and builds dbpool-server and dbpool in Release
    mode; returns their paths. DBPOOL_BUILD_JOBS parallel jobs (2)."""
    build = REPO_ROOT / build_dir
    env = dict(os.environ, CCACHE_BASEDIR=str(REPO_ROOT), CCACHE_NOHASHDIR="true")
    log(f"building Release dbpool into {build_dir}/")
    if not (build / "build.ninja").is_file():
        subprocess.run(["cmake", "-S", str(REPO_ROOT), "-B", str(build), "-G", "Ninja",
                        "-DCMAKE_BUILD_TYPE=Release", "-DDBPOOL_BUILD_TESTS=OFF",
                        "-DDBPOOL_BUILD_BENCH=OFF"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    build.mkdir(parents=True, exist_ok=True)
    with open(build / "bench-build.log", "w") as out:
        p = subprocess.run(["nice", "-n", "10", "cmake", "--build", str(build), "-j",
                            os.environ.get("DBPOOL_BUILD_JOBS", "2"),
                            "--target", "dbpool-server", "dbpool"],
                           stdout=out, stderr=subprocess.STDOUT, env=env)
    if p.returncode != 0:
        sys.stderr.write(harness.tail((build / "bench-build.log").read_text(), 40) + "\n")
        raise HarnessError(f"the build failed (log: {build}/bench-build.log)")
    return binaries(build_dir)


def build_peer_go(build_dir, log, timeout=900):
    """bench/peers/go/build.sh into build_dir/dbpool-peer-go; its path."""
    out = REPO_ROOT / build_dir / "dbpool-peer-go"
    log(f"building the Go peer gateway into {build_dir}/")
    try:
        p = subprocess.run(["nice", "-n", "10", str(harness.PEERS_DIR / "go" / "build.sh"),
                            str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"bench/peers/go/build.sh took more than {timeout} s") from None
    if p.returncode != 0:
        raise HarnessError("bench/peers/go/build.sh failed:\n" + harness.tail(p.stdout))
    return out


def binaries(build_dir):
    """(dbpool-server, dbpool) of a build directory; an error naming it
    when they are not there."""
    build = REPO_ROOT / build_dir
    server, cli = build / "dbpool-server", build / "dbpool"
    if not (os.access(server, os.X_OK) and os.access(cli, os.X_OK)):
        raise HarnessError(f"{build_dir} has no dbpool-server / dbpool: build it first "
                           "(bench/compare builds build-release/)")
    return server, cli


def pg_bindir():
    p = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    d = p.stdout.strip()
    if p.returncode == 0 and os.access(os.path.join(d, "pgbench"), os.X_OK):
        return d
    return "/usr/lib/postgresql/15/bin"


def as_postgres(argv):
    """argv run as the postgres system user when we are root (PostgreSQL
    and PgBouncer refuse to run as root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.getuid() == 0 else list(argv)


def dbpool_version():
    """"0.1.0, git abc1234[ (with uncommitted changes)], Release build"."""
    text = (REPO_ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"^project\(dbpool VERSION ([0-9.]+)", text, re.M)
    version = m.group(1) if m else "?"
    return f"{version}, git {git_head()}{' (with uncommitted changes)' if git_dirty() else ''}, Release build"


def git_head():
    p = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "?"


def git_dirty():
    p = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--",
                        "server", "client", "proto", "CMakeLists.txt", "cmake"],
                       capture_output=True, text=True)
    return bool(p.stdout.strip())


def command_version(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    return (p.stdout or p.stderr).strip().splitlines()[0]


def debian_version(package):
    p = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                       capture_output=True, text=True)
    return p.stdout.strip() or "?"


def npm_version(package):
    """The version of a package in the checkout's node_modules."""
    try:
        return json.loads((REPO_ROOT / "node_modules" / package / "package.json")
                          .read_text())["version"]
    except (OSError, ValueError, KeyError):
        return "?"


class Stack(contextlib.ExitStack):
    """An exit stack for one benchmark run with its scratch directory:
    whatever is started through it stops when the `with` block ends."""

    def __init__(self, name, keep_tmp=False):
        super().__init__()
        self.log = Logger(name)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"dbpool-{name}-"))
        os.chmod(self.tmp, 0o755)  # postgres must reach the cluster inside
        self.callback(self._remove_tmp, keep_tmp)

    def _remove_tmp(self, keep):
        if keep:
            self.log(f"scratch directory kept: {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def postgres(self, settings=()):
        """A throwaway cluster; checks that its port leads to it and not to
        someone else's on a shared machine."""
        cluster = harness.PgCluster.start(prefix=f"dbpool-{self.log.name}-pg-",
                                          settings=settings)
        self.callback(cluster.stop)
        got = cluster.psql("SHOW data_directory").strip()
        if got != str(cluster.dir / "data"):
            raise HarnessError(f"port {cluster.port} does not reach our cluster ({got})")
        return cluster

    def server(self, binary, database_url, args=(), env=None):
        """env: settings the server takes from the environment only (the
        replicas' URLs, which may carry passwords)."""
        server = harness.DbpoolServer.start(database_url, binary=binary,
                                            extra_args=list(args), extra_env=env)
        self.callback(server.cleanup)
        self.callback(server.stop)
        return server

    def peer(self, name, argv, database_url, pool_size):
        """A peer gateway of bench/peers; its stderr goes to the scratch
        directory."""
        peer = harness.Peer(name, argv, database_url, self.tmp, pool_size)
        self.callback(peer.stop)
        return peer

    def point_select_postgres(self):
        """PostgreSQL with pgbench's tables (scale 10, database postgres)."""
        cluster = self.postgres()
        pgbench_init(cluster, 10, "postgres", self.tmp / "pgbench-init.log")
        return cluster

    def point_select_server(self, binary, args=(), cluster=None):
        """dbpool-server with a pool of POOL_SIZE in front of `cluster`, by
        default a new point_select_postgres()."""
        cluster = cluster or self.point_select_postgres()
        return self.server(binary, cluster.database_url, [*POOL_ARGS, *args])

    def process(self, argv, **popen):
        """A helper process, terminated at the end if still running."""
        proc = subprocess.Popen(argv, **popen)
        self.callback(stop_process, proc)
        return proc


def free_port():
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc, timeout=5):
    """SIGTERM, then SIGKILL when it outlives `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def pgbench_init(cluster, scale, database, log_path):
    """pgbench -i -s SCALE on DATABASE of the cluster."""
    with open(log_path, "w") as out:
        p = subprocess.run([os.path.join(pg_bindir(), "pgbench"), "-i", "-q", "-s", str(scale),
                            "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                            database], stdout=out, stderr=subprocess.STDOUT, timeout=1800)
    if p.returncode != 0:
        raise HarnessError("pgbench -i failed:\n" + harness.tail(Path(log_path).read_text()))


def bench_argv(cli, target, load, concurrency, seconds, warmup):
    """A timed `dbpool bench --json` closed loop of `concurrency` callers
    making the calls of `load` (QUERY_LOAD or FLOOR_LOAD)."""
    return [str(cli), "bench", "--target", target, *load, "--concurrency", str(concurrency),
            "--duration", f"{seconds}s", "--warmup", f"{warmup}s", "--json"]


def dbpool_bench(cli, target, args, timeout, stdout=subprocess.PIPE):
    """Runs `dbpool bench --json` to the end; (its report or None when it
    gave none, the CompletedProcess)."""
    p = subprocess.run([str(cli), "bench", "--target", target, *args, "--json"],
                       stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)
    return text.last_json_line(p.stdout or ""), p
