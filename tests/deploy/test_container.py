"""The container image, deploy/docker/Dockerfile.

Three layers, cheapest first:

- DockerfileTest reads the Dockerfile against the build: the runtime
  stage's packages must provide every shared library that the installed
  binaries resolve with ldd (each mapped to the package that owns it and
  the packages' own dependencies followed, both in dpkg's database), and
  nothing that only building needs; EXPOSE must name the ports that
  dbpool-server --help gives as defaults; the user must not be root; the
  health check must be the script that probes /readyz.
- HealthcheckScriptTest runs that script against the built server, plain
  and over TLS, ready and not ready.
- ImageTest builds the image with buildah and runs it with podman against
  a throwaway PostgreSQL: /readyz, the health check, the user, SIGTERM.
  No registry is reachable here, so the base is Debian 12 made with
  debootstrap from the machine's own apt mirror (BASE_IMAGE) and kept in
  local storage for the next run. A Release build of the binaries inside
  the builder stage takes longer than CI allows (docs/DEPLOYMENT.md gives
  the figure), so the build stage is replaced by this build tree's own
  `cmake --install` (--build-context build=DIR) and the runtime stage is
  built exactly as written; DBPOOL_CONTAINER_FULL_BUILD=1 builds both
  stages. This machine's sandbox lacks CAP_SYS_RESOURCE and mounts cgroup
  v1 beside an empty v2 hierarchy, hence the flags in CONTAINER_RUN_FLAGS.
  It needs root, buildah, podman, runc and debootstrap (scripts/install-deps
  installs them); under CI=true a missing one fails the test instead of
  skipping it.

Environment: DBPOOL_SERVER_BIN and DBPOOL_BUILD_DIR (ctest sets both).
"""

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "deploy" / "docker" / "Dockerfile"
HEALTHCHECK = REPO_ROOT / "deploy" / "docker" / "healthcheck"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
sys.path.insert(0, str(REPO_ROOT / "tests" / "e2e"))
import harness  # noqa: E402

# Runtime packages that provide no library the binaries link, and why the
# image has them.
NON_LIBRARY_PACKAGES = {
    "ca-certificates": "verify-full TLS to PostgreSQL",
    "openssl": "the health check over HTTPS",
}
BUILD_ONLY = re.compile(r"(-dev$|^g\+\+|^gcc|^cpp|^clang|^cmake|^ninja|^make$|"
                        r"^pkg-config$|^protobuf-compiler)")
PORT_VARIABLES = ("DBPOOL_GRPC_PORT", "DBPOOL_HTTP_PORT", "DBPOOL_METRICS_PORT")

BASE_TAG = "localhost/dbpool-test-base:bookworm"
IMAGE_TAG = "localhost/dbpool-test:latest"
COMMAND_TIMEOUT_S = 120
DEBOOTSTRAP_TIMEOUT_S = 420
BUILD_TIMEOUT_S = 420
FULL_BUILD_TIMEOUT_S = 900
READY_TIMEOUT_S = 60
HEALTH_TIMEOUT_S = 10


def build_dir():
    return Path(os.environ.get("DBPOOL_BUILD_DIR") or REPO_ROOT / "build")


def run(args, timeout=COMMAND_TIMEOUT_S, check=True, **kwargs):
    proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s" % (
            shlex.join(str(a) for a in args), proc.returncode,
            harness.tail(proc.stdout), harness.tail(proc.stderr)))
    return proc


# ---------------------------------------------------------------------------
# The Dockerfile, read as the builders read it


class Stage:
    def __init__(self, base, name):
        self.base = base
        self.name = name
        self.instructions = []  # (KEYWORD, arguments)

    def all(self, keyword):
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword):
        found = self.all(keyword)
        if len(found) != 1:
            raise AssertionError("want one %s in the stage FROM %s, found %d"
                                 % (keyword, self.base, len(found)))
        return found[0]


class Dockerfile:
    def __init__(self, path):
        self.args = {}  # ARG before the first FROM: name -> default
        self.stages = []
        logical = re.sub(r"\\\n", " ", path.read_text())
        for line in logical.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            keyword, rest = keyword.upper(), rest.strip()
            if keyword == "FROM":
                words = rest.split()
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
                self.stages.append(Stage(words[0], name))
            elif not self.stages and keyword == "ARG":
                name, _, default = rest.partition("=")
                self.args[name] = default
            else:
                self.stages[-1].instructions.append((keyword, rest))

    @property
    def runtime(self):
        return self.stages[-1]

    def stage(self, name):
        for s in self.stages:
            if s.name == name:
                return s
        raise AssertionError("no stage named %s" % name)


def apt_packages(stage):
    """The packages that RUN apt-get install lines of a stage name."""
    packages = []
    for command in stage.all("RUN"):
        for part in re.split(r"&&|;|\|\|", command):
            words = shlex.split(part)
            if "apt-get" in words and "install" in words:
                packages += [w for w in words[words.index("install") + 1:]
                             if not w.startswith("-")]
    return packages


def exec_form(text):
    """["a", "b"] as Docker's JSON exec form."""
    words = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    if not text.startswith("[") or not words:
        raise AssertionError("not the exec form: %s" % text)
    return words


def config_defaults():
    """{VARIABLE: default} from dbpool-server --help."""
    out = run([str(harness.server_bin()), "--help"]).stdout
    found = dict(re.findall(r'\(([A-Z0-9_]+), default "([^"]*)"\)', out))
    if not found:
        raise AssertionError("dbpool-server --help lists no defaults:\n" + out)
    return found


# ---------------------------------------------------------------------------
# Libraries and Debian packages


def elf_files(root):
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if f.read(4) == b"\x7fELF":
                    yield path


def resolved_libraries(binary):
    """{soname: path} of every library ldd resolves for binary; a library
    it cannot find fails."""
    out = run(["ldd", str(binary)]).stdout
    libraries = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+) => (.+?)(?: \(0x[0-9a-f]+\))?$", line)
        if not m:
            continue
        if m.group(2) == "not found":
            raise AssertionError("%s: %s not found\n%s" % (binary, m.group(1), out))
        libraries[m.group(1)] = Path(m.group(2))
    return libraries


def needed(binary):
    out = run(["readelf", "-d", str(binary)]).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


class Dpkg:
    """dpkg's database, read once: which package owns each file, and what
    each installed package depends on."""

    def __init__(self):
        self.owner = {}
        for listing in Path("/var/lib/dpkg/info").glob("*.list"):
            package = listing.stem.split(":")[0]
            for line in listing.read_text(errors="replace").splitlines():
                self.owner[line] = package
        self.depends = {}
        out = run(["dpkg-query", "-W", "-f",
                   "${Package}\t${Status}\t${Pre-Depends}, ${Depends}\n"]).stdout
        for line in out.splitlines():
            package, status, depends = line.split("\t")
            if status == "install ok installed":
                self.depends[package] = depends

    def owning_package(self, path):
        """The package that installed path. ldd names a file by the
        directory its search found, which after Debian's /usr merge may be
        /lib or /usr/lib whichever dpkg recorded, and by its soname link."""
        for p in (str(path), os.path.realpath(path)):
            for candidate in (p, p[len("/usr"):] if p.startswith("/usr/lib/") else "/usr" + p):
                if candidate in self.owner:
                    return self.owner[candidate]
        raise AssertionError("no Debian package owns %s" % path)

    def installed(self, package):
        return package in self.depends

    def closure(self, packages):
        """packages and everything they depend on (a runtime package is
        installed here whenever its -dev package is)."""
        seen, todo = set(), list(packages)
        while todo:
            package = todo.pop()
            if package in seen:
                continue
            seen.add(package)
            for clause in self.depends[package].split(","):
                for alternative in clause.split("|"):
                    name = alternative.strip().split(" ")[0].split(":")[0]
                    if self.installed(name):
                        todo.append(name)
                        break
        return seen


def install_tree(destdir):
    """The build tree's `cmake --install`, as the build stage runs it:
    DESTDIR=destdir, prefix /usr/local. Returns destdir/usr/local."""
    env = dict(os.environ, DESTDIR=str(destdir))
    run(["cmake", "--install", str(build_dir()), "--prefix", "/usr/local"], env=env)
    return destdir / "usr" / "local"


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dockerfile = Dockerfile(DOCKERFILE)
        cls.packages = apt_packages(cls.dockerfile.runtime)
        cls.tmp = Path(tempfile.mkdtemp(prefix="dbpool-deploy-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        cls.prefix = install_tree(cls.tmp)

    def test_base_is_debian_12_slim_and_replaceable(self):
        self.assertEqual(self.dockerfile.args.get("BASE_IMAGE"), "debian:bookworm-slim")
        self.assertEqual(len(self.dockerfile.stages), 2)
        for stage in self.dockerfile.stages:
            self.assertEqual(stage.base, "${BASE_IMAGE}")

    def test_build_stage_builds_release_and_installs_what_runtime_copies(self):
        build = self.dockerfile.stage("build")
        script = " ".join(build.all("RUN"))
        self.assertIn("-DCMAKE_BUILD_TYPE=Release", script)
        self.assertIn("--target dbpool-server dbpool", script)
        m = re.search(r"DESTDIR=(\S+) cmake --install build --prefix (\S+)", script)
        self.assertIsNotNone(m, script)
        copies = [c for c in self.dockerfile.runtime.all("COPY") if c.startswith("--from=")]
        self.assertEqual(copies, ["--from=build %s%s/ %s/" % (m.group(1), m.group(2),
                                                             m.group(2))])

    def test_runtime_packages_provide_every_library(self):
        """Every library the installed binaries resolve, outside the
        installed tree, comes from the runtime packages or their
        dependencies; every library they name directly comes from a package
        the stage names, not from what another happens to pull in."""
        dpkg = Dpkg()
        for package in self.packages:
            self.assertTrue(dpkg.installed(package),
                            "%s is not a package installed here" % package)
        closure = dpkg.closure(self.packages)
        used = set()
        binaries = list(elf_files(self.prefix))
        self.assertEqual(
            sorted(p.relative_to(self.prefix).as_posix() for p in binaries),
            ["bin/dbpool", "bin/dbpool-server", "lib/dbpool/libssl.so"])
        for binary in binaries:
            libraries = resolved_libraries(binary)
            for soname, path in libraries.items():
                if path.is_relative_to(self.prefix):
                    continue
                package = dpkg.owning_package(path)
                used.add(package)
                self.assertIn(package, closure,
                              "%s needs %s (%s, package %s), which the runtime stage "
                              "does not install" % (binary.name, soname, path, package))
            for soname in needed(binary):
                path = libraries[soname]
                if path.is_relative_to(self.prefix) or soname.startswith(
                        ("libc.so", "libm.so", "libgcc_s.so")):
                    continue
                self.assertIn(dpkg.owning_package(path), self.packages,
                              "%s links %s directly: name its package" % (
                                  binary.name, soname))
        for package in self.packages:
            self.assertTrue(package in used or package in NON_LIBRARY_PACKAGES,
                            "%s provides no library the binaries use" % package)

    def test_no_build_tools_in_runtime(self):
        self.assertEqual([p for p in self.packages if BUILD_ONLY.search(p)], [])
        self.assertTrue([p for p in apt_packages(self.dockerfile.stage("build"))
                         if BUILD_ONLY.search(p)], "the pattern matches nothing")

    def test_ports_are_the_configured_defaults(self):
        defaults = config_defaults()
        exposed = " ".join(self.dockerfile.runtime.all("EXPOSE")).split()
        self.assertEqual(sorted(exposed), sorted(defaults[v] for v in PORT_VARIABLES))

    def test_environment_restates_no_default(self):
        defaults = config_defaults()
        for env in self.dockerfile.runtime.all("ENV"):
            for name, value in re.findall(r"(\w+)=(\S+)", env):
                self.assertNotEqual(defaults.get(name), value.strip("\"'"),
                                    "ENV %s restates the default" % name)

    def test_runs_as_a_numeric_user_that_is_not_root(self):
        user = self.dockerfile.runtime.one("USER")
        uid, _, gid = user.partition(":")
        self.assertTrue(uid.isdigit() and gid.isdigit(), user)
        self.assertNotEqual(uid, "0")
        self.assertNotEqual(gid, "0")
        script = " ".join(self.dockerfile.runtime.all("RUN"))
        self.assertRegex(script, r"useradd [^&]*--uid %s\b" % uid)
        self.assertRegex(script, r"groupadd [^&]*--gid %s\b" % gid)

    def test_entrypoint_is_the_installed_server(self):
        entrypoint = exec_form(self.dockerfile.runtime.one("ENTRYPOINT"))
        self.assertEqual(len(entrypoint), 1)
        self.assertTrue((self.prefix / Path(entrypoint[0]).relative_to("/usr/local"))
                        .is_file(), entrypoint)
        self.assertEqual(self.dockerfile.runtime.one("STOPSIGNAL"), "SIGTERM")

    def test_healthcheck_is_the_readyz_probe(self):
        check = self.dockerfile.runtime.one("HEALTHCHECK")
        options, _, command = check.partition("CMD ")
        probe = exec_form(command.strip())
        self.assertEqual(len(probe), 1)
        self.assertIn("COPY deploy/docker/healthcheck %s" % probe[0],
                      ["COPY " + c for c in self.dockerfile.runtime.all("COPY")])
        text = HEALTHCHECK.read_text()
        self.assertIn("GET /readyz ", text)
        self.assertIn("${DBPOOL_HTTP_PORT:-%s}" % config_defaults()["DBPOOL_HTTP_PORT"],
                      text)
        timeout = re.search(r"--timeout=(\d+)s", options)
        deadline = re.search(r"^deadline=(\d+)$", text, re.M)
        self.assertLess(int(deadline.group(1)), int(timeout.group(1)))

    def test_context_leaves_out_build_trees_and_node_modules(self):
        patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
        self.assertIn("build*/", patterns)
        self.assertIn("node_modules/", patterns)


# ---------------------------------------------------------------------------
# The health check script against the built server


def probe(env, timeout=HEALTH_TIMEOUT_S):
    """Exit status of the health check with the given server environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DBPOOL_")}
    return run([str(HEALTHCHECK)], env=dict(clean, **env), timeout=timeout,
               check=False).returncode


def probe_until_healthy(env, timeout=READY_TIMEOUT_S):
    """Exit status of the first passing probe, else of the last one: the
    ready line comes before the pool's first connection."""
    deadline = time.monotonic() + timeout
    while True:
        status = probe(env)
        if status == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certificate(directory):
    cert, key = directory / "server.pem", directory / "server.key"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
         "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)])
    return cert, key


class HealthcheckScriptTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = harness.PgCluster.start(prefix="dbpool-deploy-pg-")
        cls.addClassCleanup(cls.pg.stop)
        cls.tmp = Path(tempfile.mkdtemp(prefix="dbpool-deploy-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)

    def start(self, database_url, env):
        server = harness.DbpoolServer.start(database_url, extra_env=env)
        self.addCleanup(server.cleanup)
        return server

    def server_env(self, server, extra=None):
        return dict({"DBPOOL_LISTEN_HOST": "127.0.0.1",
                     "DBPOOL_HTTP_PORT": str(server.http_port)}, **(extra or {}))

    def test_ready_server_is_healthy(self):
        server = self.start(self.pg.database_url, {})
        self.assertEqual(probe_until_healthy(self.server_env(server)), 0)

    def test_server_without_its_database_is_unhealthy(self):
        unreachable = "postgresql://postgres@127.0.0.1:%d/postgres" % free_port()
        server = self.start(unreachable, {})
        self.assertEqual(urllib.request.urlopen(server.http_url + "/healthz",
                                                timeout=5).status, 200)
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.http_url + "/readyz", timeout=5)
        self.assertEqual(e.exception.code, 503)
        self.assertNotEqual(probe(self.server_env(server)), 0)

    def test_nothing_listening_is_unhealthy(self):
        self.assertNotEqual(probe({"DBPOOL_LISTEN_HOST": "127.0.0.1",
                                   "DBPOOL_HTTP_PORT": str(free_port())}), 0)

    def test_tls_server_is_probed_over_https(self):
        cert, key = make_certificate(self.tmp)
        tls = {"DBPOOL_TLS_CERT_FILE": str(cert), "DBPOOL_TLS_KEY_FILE": str(key)}
        server = self.start(self.pg.database_url, tls)
        self.assertEqual(probe_until_healthy(self.server_env(server, tls)), 0)
        self.assertNotEqual(probe(self.server_env(server)), 0,
                            "plain HTTP to a TLS port must not pass")


# ---------------------------------------------------------------------------
# The image, built and run


def image_tools_problem():
    """Why the image cannot be built here, or None."""
    if os.geteuid() != 0:
        return "building needs root (rootful buildah; no subordinate ids here)"
    missing = [t for t in ("buildah", "podman", "runc", "debootstrap")
               if shutil.which(t) is None]
    if missing:
        return "missing %s (scripts/install-deps installs them)" % ", ".join(missing)
    return None


def debian_mirror():
    """The Debian mirror apt uses here, for debootstrap."""
    for path in [Path("/etc/apt/sources.list"),
                 *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if not path.is_file():
            continue
        text = path.read_text()
        for m in re.finditer(r"^URIs:\s*(\S+)\s*\nSuites:[^\n]*\bbookworm\b", text, re.M):
            if "security" not in m.group(1):
                return m.group(1)
        for m in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return m.group(1)
    return "http://deb.debian.org/debian"


def image_exists(tag):
    return run(["podman", "image", "exists", tag], check=False).returncode == 0


def ensure_base_image(workdir):
    """Debian 12 minbase from the apt mirror, imported once and kept."""
    if image_exists(BASE_TAG):
        return
    rootfs = workdir / "rootfs"
    run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror()],
        timeout=DEBOOTSTRAP_TIMEOUT_S)
    # debian:bookworm-slim ships neither the downloaded packages nor the
    # package lists; images built on this base should not carry them either.
    for leftover in [*rootfs.glob("var/cache/apt/archives/*.deb"),
                     *rootfs.glob("var/lib/apt/lists/*_*")]:
        leftover.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        run(["podman", "import", "-", BASE_TAG], stdin=tar.stdout)
    finally:
        tar.stdout.close()
        tar.wait(timeout=COMMAND_TIMEOUT_S)


# Without CAP_SYS_RESOURCE, podman's default limits (1048576 files, 4194304
# processes) cannot be set, nor always the limits of the calling process
# (conmon may run under lower ones): ask for limits low enough to be a
# reduction anywhere. crun refuses cgroup v1 with a v2 hierarchy mounted
# beside it; runc does not.
CONTAINER_RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=4096:4096",
                       "--ulimit", "nproc=4096:4096"]


class ImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        problem = image_tools_problem()
        if problem:
            if os.environ.get("CI") == "true":
                raise AssertionError("cannot build the image: " + problem)
            raise unittest.SkipTest(problem)
        cls.tmp = Path(tempfile.mkdtemp(prefix="dbpool-image-"))
        cls.addClassCleanup(shutil.rmtree, cls.tmp, ignore_errors=True)
        ensure_base_image(cls.tmp)
        # HEALTHCHECK exists only in the docker image format, not in OCI.
        args = ["buildah", "build", "--isolation", "chroot", "--format", "docker",
                "--build-arg", "BASE_IMAGE=" + BASE_TAG,
                "-f", str(DOCKERFILE), "-t", IMAGE_TAG]
        if os.environ.get("DBPOOL_CONTAINER_FULL_BUILD") == "1":
            timeout = FULL_BUILD_TIMEOUT_S
        else:
            install_tree(cls.tmp / "context" / "out")
            args += ["--build-context", "build=%s" % (cls.tmp / "context")]
            timeout = BUILD_TIMEOUT_S
        started = time.monotonic()
        run(args + [str(REPO_ROOT)], timeout=timeout)
        cls.addClassCleanup(run, ["podman", "rmi", "-f", IMAGE_TAG], check=False)
        print("[deploy] image built in %.0f s" % (time.monotonic() - started),
              file=sys.stderr)
        cls.pg = harness.PgCluster.start(prefix="dbpool-image-pg-")
        cls.addClassCleanup(cls.pg.stop)

    def inspect(self, template):
        return run(["podman", "image", "inspect", "--format", template,
                    IMAGE_TAG]).stdout.strip()

    def start_container(self):
        http = free_port()
        name = "dbpool-test-%d" % os.getpid()
        # The host's network, so that the container reaches the test's
        # PostgreSQL on loopback; a read-only root, as DEPLOYMENT.md allows.
        run(["podman", "run", "-d", "--name", name, "--network", "host", "--read-only",
             *CONTAINER_RUN_FLAGS,
             "-e", "DATABASE_URL=" + self.pg.database_url,
             "-e", "DBPOOL_GRPC_PORT=%d" % free_port(),
             "-e", "DBPOOL_HTTP_PORT=%d" % http,
             "-e", "DBPOOL_METRICS_PORT=%d" % free_port(),
             IMAGE_TAG])
        self.addCleanup(run, ["podman", "rm", "-f", "-t", "0", name], check=False)
        return name, "http://127.0.0.1:%d" % http

    def wait_ready(self, name, url):
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(url + "/readyz", timeout=2).status == 200:
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        logs = run(["podman", "logs", name], check=False)
        self.fail("/readyz not 200 within %d s\n%s%s" % (
            READY_TIMEOUT_S, logs.stdout, logs.stderr))

    def test_image_configuration(self):
        self.assertEqual(self.inspect("{{.Config.User}}"), "10001:10001")
        self.assertEqual(self.inspect("{{json .Config.Entrypoint}}"),
                         '["/usr/local/bin/dbpool-server"]')
        for port in ("50051/tcp", "8080/tcp", "9464/tcp"):
            self.assertIn(port, self.inspect("{{json .Config.ExposedPorts}}"))
        self.assertIn("dbpool-healthcheck", self.inspect("{{json .Config.Healthcheck}}"))

    def test_container_serves_and_drains(self):
        name, url = self.start_container()
        self.wait_ready(name, url)
        healthy = run(["podman", "healthcheck", "run", name], check=False)
        self.assertEqual(healthy.returncode, 0, healthy.stdout + healthy.stderr)
        ids = run(["podman", "exec", name, "id"]).stdout.strip()
        self.assertTrue(ids.startswith("uid=10001(dbpool) gid=10001(dbpool)"), ids)
        pid = run(["podman", "inspect", "--format", "{{.State.Pid}}", name]).stdout.strip()
        status = Path("/proc/%s/status" % pid).read_text()
        self.assertRegex(status, r"Uid:\s+10001\s")
        run(["podman", "stop", "-t", "30", name], timeout=60)
        code = run(["podman", "inspect", "--format", "{{.State.ExitCode}}", name])
        self.assertEqual(code.stdout.strip(), "0")


if __name__ == "__main__":
    unittest.main()
