"""A private HAProxy for tests, on loopback ports the caller chooses.

    ports = haproxy.free_ports(2)
    proxy = haproxy.Haproxy.start(CONFIG % ports)   # waits for every bind
    ...
    proxy.stop()

The configuration text is the caller's: it names every port to bind
(`bind 127.0.0.1:PORT` lines), so the launcher stays generic and never
touches the ports of a system HAProxy. start() waits until every bound port
accepts connections. HAProxy runs in the foreground (-db), as a child of
the test process, so stop() ends exactly that process; its output goes to
a log file (put `log stderr format raw local0` in `global` to get its
traffic log there too).
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
BIND_RE = re.compile(r"^\s*bind\s+(?:([0-9.]+)|\[([0-9a-fA-F:]+)\])?:(\d+)\b", re.M)


class HaproxyError(AssertionError):
    """HAProxy is missing or did not start; an AssertionError so that
    unittest reports it as a test failure with its message."""


def free_ports(count, host="127.0.0.1"):
    """`count` distinct ports that were free on `host` a moment ago. All
    are held open together until the last is picked, so none repeats."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host="127.0.0.1"):
    return free_ports(1, host)[0]


def haproxy_bin():
    path = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(path, os.X_OK):
        raise HaproxyError("haproxy not found (Debian package `haproxy`; "
                           "scripts/install-deps installs it)")
    return path


def _accepts(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Haproxy:
    """One haproxy process started from a configuration text."""

    def __init__(self, proc, work_dir, binds):
        self.proc = proc
        self.work_dir = work_dir
        self.binds = binds
        self.config_path = work_dir / "haproxy.cfg"
        self.log_path = work_dir / "haproxy.log"

    @classmethod
    def start(cls, config_text, timeout=START_TIMEOUT_S):
        """Checks the configuration, starts haproxy and waits until every
        `bind` of the configuration accepts connections."""
        binary = haproxy_bin()
        binds = [(m.group(1) or m.group(2) or "127.0.0.1", int(m.group(3)))
                 for m in BIND_RE.finditer(config_text)]
        if not binds:
            raise HaproxyError("the configuration binds no host:port")
        work_dir = Path(tempfile.mkdtemp(prefix="dbpool-haproxy-"))
        config_path = work_dir / "haproxy.cfg"
        config_path.write_text(config_text)
        check = subprocess.run([binary, "-c", "-f", str(config_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=30)
        if check.returncode != 0:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise HaproxyError("haproxy -c rejects the configuration:\n%s\n%s"
                               % (check.stdout, config_text))
        with open(work_dir / "haproxy.log", "wb") as log:
            proc = subprocess.Popen([binary, "-db", "-f", str(config_path)],
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        proxy = cls(proc, work_dir, binds)
        deadline = time.monotonic() + timeout
        pending = list(binds)
        while pending and time.monotonic() < deadline:
            if proc.poll() is not None:
                text = proxy.log_text()
                proxy.stop()
                raise HaproxyError("haproxy exited with %d at start:\n%s"
                                   % (proc.returncode, text))
            pending = [b for b in pending if not _accepts(*b)]
            if pending:
                time.sleep(0.05)
        if pending:
            text = proxy.log_text()
            proxy.stop()
            raise HaproxyError("haproxy did not listen on %s within %.0f s:\n%s"
                               % (pending, timeout, text))
        return proxy

    def log_text(self):
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM (immediate stop), SIGKILL past the stop timeout; removes
        the work directory. Safe to call twice. Returns Popen.returncode
        (haproxy ends on SIGTERM by the signal itself: -15)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.work_dir, ignore_errors=True)
        return self.proc.returncode
