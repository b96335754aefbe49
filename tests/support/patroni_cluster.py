"""A throwaway Patroni cluster for tests: one etcd and three Patroni nodes
running PostgreSQL 15 with streaming replication, all on free loopback
ports, data under one temporary folder.

    cluster = patroni_cluster.PatroniCluster.start()
    try:
        cluster.leader()                  # "n1", "n2" or "n3"
        cluster.switchover("n2")          # returns once n2 leads
        cluster.kill_primary_postmaster()
        cluster.wait_writable()           # the node that took over
    finally:
        cluster.stop()

Timeouts are short (ttl 10 s, loop_wait 1 s, retry_timeout 3 s: Patroni
wants loop_wait + 2 * retry_timeout <= ttl) so that a failover takes
seconds, and primary_start_timeout is 0, so that a primary whose postmaster
died is failed over to a replica rather than restarted in place.

Debian 12 specifics: etcd 3.4 serves only the v3 API, so Patroni gets an
`etcd3:` section; Patroni runs under /usr/bin/python3 (its modules come
from Debian packages); settings every node must share (max_connections,
replication) go under bootstrap.dcs.postgresql.parameters, where Patroni
keeps them. PostgreSQL refuses to run as root, so as root Patroni runs as
the `postgres` user.

Every wait has a deadline; a failure raises PatroniError with the tail of
the logs concerned. stop() ends only processes this module started, by
pid, and removes the temporary folder.
"""

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import haproxy

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PYTHON = "/usr/bin/python3"
PATRONI = "/usr/bin/patroni"
PATRONICTL = "/usr/bin/patronictl"
ETCD = "/usr/bin/etcd"
SCOPE = "dbpool"
NODE_NAMES = ("n1", "n2", "n3")
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0

# Shared by every node through the DCS. fsync stays off as in the other
# test clusters; full_page_writes and wal_log_hints stay on because
# pg_rewind, which brings a failed primary back as a replica, needs them.
DCS_PARAMETERS = {
    "max_connections": 100,
    "wal_level": "replica",
    "hot_standby": "on",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "256MB",
    "wal_log_hints": "on",
    "fsync": "off",
    "synchronous_commit": "off",
}


def _running(pid):
    """Whether pid is a live process: not gone, and not a zombie that its
    parent (after Patroni's detach, whoever adopted it) has yet to reap."""
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PatroniError(AssertionError):
    """The cluster did not start or did not do what was asked in time; an
    AssertionError so that unittest reports it as a failure."""


def _tail(path, lines=30):
    try:
        text = Path(path).read_text("utf-8", "replace")
    except OSError:
        return "(no %s)" % path
    return "\n".join(text.splitlines()[-lines:])


def require_tools():
    """Raises PatroniError naming what is missing (never skips: the caller
    decides whether to skip, and under CI it must not)."""
    missing = [p for p in (PYTHON, PATRONI, PATRONICTL, ETCD,
                           str(PG_BIN_DIR / "postgres"), str(PG_BIN_DIR / "initdb"))
               if not os.access(p, os.X_OK)]
    try:
        subprocess.run([PYTHON, "-c", "import psycopg2, etcd, yaml"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    except (subprocess.CalledProcessError, OSError):
        missing.append("python3-psycopg2 / python3-etcd / python3-yaml")
    if missing:
        raise PatroniError("missing for the Patroni cluster: %s (Debian packages "
                           "patroni etcd-server postgresql-15 python3-etcd "
                           "python3-psycopg2; scripts/install-deps installs them)"
                           % ", ".join(missing))


class Node:
    def __init__(self, name, root, pg_port, rest_port):
        self.name = name
        self.dir = root / name
        self.data_dir = self.dir / "data"
        self.config_path = self.dir / "patroni.yml"
        self.log_path = self.dir / "patroni.log"
        self.pg_port = pg_port
        self.rest_port = rest_port
        self.proc = None

    @property
    def rest_url(self):
        return "http://127.0.0.1:%d" % self.rest_port

    def postmaster_pid(self):
        """The pid in postmaster.pid, or None when there is none."""
        try:
            with open(self.data_dir / "postmaster.pid") as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None


def _yaml(value, indent=0):
    """Enough YAML for the configuration below (nested mappings, lists and
    scalars), so that the harness does not depend on PyYAML."""
    pad = "  " * indent
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                out.append("%s%s:\n%s" % (pad, k, _yaml(v, indent + 1)))
            else:
                out.append("%s%s: %s" % (pad, k, json.dumps(v)))
    else:
        for v in value:
            if isinstance(v, (dict, list)):
                inner = _yaml(v, indent + 1).lstrip()
                out.append("%s- %s" % (pad, inner))
            else:
                out.append("%s- %s" % (pad, json.dumps(v)))
    return "\n".join(out)


class PatroniCluster:
    def __init__(self, root, etcd_client_port, etcd_peer_port):
        self.root = root
        self.etcd_client_port = etcd_client_port
        self.etcd_peer_port = etcd_peer_port
        self.etcd_dir = root / "etcd"
        self.etcd_log = root / "etcd.log"
        self.etcd_proc = None
        self.nodes = {}
        self._stopped = False

    # -- start -------------------------------------------------------------

    @classmethod
    def start(cls, timeout=START_TIMEOUT_S):
        """etcd, then the three nodes; returns once there is a leader that
        accepts writes and both replicas stream from it."""
        require_tools()
        root = Path(tempfile.mkdtemp(prefix="dbpool-patroni-"))
        os.chmod(root, 0o755)
        ports = haproxy.free_ports(2 + 2 * len(NODE_NAMES))
        cluster = cls(root, ports[0], ports[1])
        for i, name in enumerate(NODE_NAMES):
            cluster.nodes[name] = Node(name, root, ports[2 + 2 * i], ports[3 + 2 * i])
        try:
            deadline = time.monotonic() + timeout
            cluster._start_etcd(deadline)
            for node in cluster.nodes.values():
                cluster._start_node(node)
            cluster.wait_healthy(deadline - time.monotonic())
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_etcd(self, deadline):
        self.etcd_dir.mkdir()
        client = "http://127.0.0.1:%d" % self.etcd_client_port
        peer = "http://127.0.0.1:%d" % self.etcd_peer_port
        with open(self.etcd_log, "wb") as log:
            self.etcd_proc = subprocess.Popen(
                [ETCD, "--name", "etcd0", "--data-dir", str(self.etcd_dir),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", "etcd0=" + peer,
                 "--initial-cluster-state", "new", "--enable-v2=false",
                 "--log-level", "warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() < deadline:
            if self.etcd_proc.poll() is not None:
                raise PatroniError("etcd exited with %d at start:\n%s"
                                   % (self.etcd_proc.returncode, _tail(self.etcd_log)))
            try:
                with urllib.request.urlopen(client + "/health", timeout=1) as r:
                    if json.load(r).get("health") == "true":
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise PatroniError("etcd not healthy on %s in time:\n%s"
                           % (client, _tail(self.etcd_log)))

    def _config(self, node):
        return {
            "scope": SCOPE,
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": "127.0.0.1:%d" % node.rest_port,
                        "connect_address": "127.0.0.1:%d" % node.rest_port},
            "etcd3": {"hosts": "127.0.0.1:%d" % self.etcd_client_port,
                      "protocol": "http"},
            "bootstrap": {
                "dcs": {
                    "ttl": 10, "loop_wait": 1, "retry_timeout": 3,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "primary_start_timeout": 0,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True,
                                   "parameters": DCS_PARAMETERS},
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"},
                           {"auth": "trust"}],
            },
            "postgresql": {
                "listen": "127.0.0.1:%d" % node.pg_port,
                "connect_address": "127.0.0.1:%d" % node.pg_port,
                "data_dir": str(node.data_dir),
                "bin_dir": str(PG_BIN_DIR),
                "pgpass": str(node.dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": "postgres"},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "postgres", "password": "postgres"},
                },
                "pg_hba": ["local all all trust",
                           "host all all 127.0.0.1/32 trust",
                           "host replication replicator 127.0.0.1/32 trust"],
                "parameters": {"unix_socket_directories": str(node.dir),
                               "log_min_messages": "warning"},
            },
        }

    def _start_node(self, node):
        node.dir.mkdir()
        node.config_path.write_text(_yaml(self._config(node)) + "\n")
        user = None
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(node.dir, user.pw_uid, user.pw_gid)
            os.chown(node.config_path, user.pw_uid, user.pw_gid)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(node.dir)}
        with open(node.log_path, "wb") as log:
            node.proc = subprocess.Popen(
                [PYTHON, PATRONI, str(node.config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=str(node.dir), env=env,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None)

    # -- state -------------------------------------------------------------

    def members(self):
        """GET /cluster from the first node that answers: the members list."""
        for node in self.nodes.values():
            try:
                with urllib.request.urlopen(node.rest_url + "/cluster", timeout=1) as r:
                    return json.load(r).get("members", [])
            except (OSError, ValueError):
                continue
        return []

    def leader(self):
        """The name of the member that holds the leader key, or None."""
        for m in self.members():
            if m.get("role") == "leader":
                return m["name"]
        return None

    def multi_host_url(self, options="target_session_attrs=read-write"):
        hosts = ",".join("127.0.0.1:%d" % n.pg_port for n in self.nodes.values())
        return "postgresql://postgres@%s/postgres?%s" % (hosts, options)

    def psql(self, name, sql, timeout=30):
        proc = subprocess.run(
            [str(PG_BIN_DIR / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(self.nodes[name].pg_port), "-U", "postgres",
             "-d", "postgres"],
            input=sql, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            timeout=timeout)
        if proc.returncode != 0:
            raise PatroniError("psql on %s failed: %s" % (name, proc.stderr))
        return proc.stdout

    def diagnostics(self, lines=25):
        parts = ["--- members: %s" % json.dumps(self.members())]
        for node in self.nodes.values():
            parts.append("--- %s log (tail) ---\n%s" % (node.name, _tail(node.log_path, lines)))
        parts.append("--- etcd log (tail) ---\n%s" % _tail(self.etcd_log, lines))
        return "\n".join(parts)

    # -- waits ---------------------------------------------------------------

    def wait_healthy(self, timeout=60.0):
        """Until there is a leader that accepts writes and every other node
        is a running replica streaming from it; returns the leader's name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            members = self.members()
            leader = [m for m in members if m.get("role") == "leader"
                      and m.get("state") == "running"]
            streaming = [m for m in members if m.get("role") == "replica"
                         and m.get("state") in ("streaming", "running")
                         and m.get("lag") == 0]
            if (leader and len(streaming) == len(self.nodes) - 1
                    and self._writable(leader[0]["name"])
                    and self._replicas_streaming(leader[0]["name"])):
                return leader[0]["name"]
            time.sleep(0.2)
        raise PatroniError("the cluster was not healthy within %.0f s\n%s"
                           % (timeout, self.diagnostics()))

    def _replicas_streaming(self, leader):
        try:
            count = int(self.psql(leader, "SELECT count(*) FROM pg_stat_replication "
                                          "WHERE state = 'streaming'", timeout=5))
        except (PatroniError, ValueError, subprocess.TimeoutExpired):
            return False
        return count == len(self.nodes) - 1

    def _writable(self, name):
        try:
            return self.psql(name, "SELECT pg_is_in_recovery()", timeout=5).strip() == "f"
        except (PatroniError, subprocess.TimeoutExpired):
            return False

    def wait_writable(self, timeout=60.0, exclude=()):
        """Until a node other than those in `exclude` is the leader and
        accepts writes; returns its name."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            name = self.leader()
            if name and name not in exclude and self._writable(name):
                return name
            time.sleep(0.1)
        raise PatroniError("no writable leader%s within %.0f s\n%s"
                           % (" other than %s" % ", ".join(exclude) if exclude else "",
                              timeout, self.diagnostics()))

    def _check_alive(self):
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                raise PatroniError("patroni %s exited with %d\n%s"
                                   % (node.name, node.proc.returncode, self.diagnostics()))
        if self.etcd_proc is not None and self.etcd_proc.poll() is not None:
            raise PatroniError("etcd exited with %d\n%s"
                               % (self.etcd_proc.returncode, self.diagnostics()))

    # -- faults ----------------------------------------------------------------

    def switchover(self, candidate, timeout=60.0):
        """patronictl switchover to `candidate`. patronictl exits 0 even when
        the switchover fails, so success is the candidate holding the leader
        key and accepting writes before the deadline."""
        old = self.leader()
        if old is None or old == candidate:
            raise PatroniError("cannot switch over from %s to %s" % (old, candidate))
        try:
            proc = subprocess.run(
                [PYTHON, PATRONICTL, "-c", str(self.nodes[old].config_path),
                 "switchover", "--leader", old, "--candidate", candidate, "--force",
                 SCOPE],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise PatroniError("patronictl switchover did not finish in %.0f s: %s\n%s"
                               % (timeout, e.output, self.diagnostics()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.leader() == candidate and self._writable(candidate):
                return proc.stdout
            time.sleep(0.1)
        raise PatroniError("leader is %s, not %s, %.0f s after patronictl switchover "
                           "(exit %d):\n%s\n%s" % (self.leader(), candidate, timeout,
                                                   proc.returncode, proc.stdout,
                                                   self.diagnostics()))

    def kill_primary_postmaster(self):
        """SIGKILL to the leader's postmaster; returns (leader, pid)."""
        name = self.leader()
        if name is None:
            raise PatroniError("no leader to kill\n" + self.diagnostics())
        pid = self.nodes[name].postmaster_pid()
        if pid is None:
            raise PatroniError("no postmaster.pid for leader %s" % name)
        os.kill(pid, signal.SIGKILL)
        return name, pid

    # -- stop ------------------------------------------------------------------

    def stop(self):
        """SIGTERM to every Patroni (each stops its PostgreSQL), then etcd;
        SIGKILL for whatever outlives the deadline, including a postmaster
        a killed Patroni left behind. Removes the temporary folder. Safe
        to call twice."""
        if self._stopped:
            return
        self._stopped = True
        try:
            running = [n for n in self.nodes.values()
                       if n.proc is not None and n.proc.poll() is None]
            for node in running:
                node.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for node in running:
                try:
                    node.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait(STOP_TIMEOUT_S)
            for node in self.nodes.values():
                self._kill_postmaster_left(node)
            if self.etcd_proc is not None and self.etcd_proc.poll() is None:
                self.etcd_proc.send_signal(signal.SIGTERM)
                try:
                    self.etcd_proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.etcd_proc.kill()
                    self.etcd_proc.wait(STOP_TIMEOUT_S)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _kill_postmaster_left(node):
        """Patroni starts PostgreSQL detached (setsid), so a postmaster can
        outlive a Patroni that was killed; it is ours when its pid file is
        in our data directory and the process runs from our binaries."""
        pid = node.postmaster_pid()
        if pid is None:
            return
        try:
            exe = os.readlink("/proc/%d/exe" % pid)
            cmdline = Path("/proc/%d/cmdline" % pid).read_bytes().split(b"\0")
        except OSError:
            return
        if exe.startswith(str(PG_BIN_DIR)) and str(node.data_dir).encode() in cmdline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
