"""docs/DEPLOYMENT.md against the repository it describes.

A reader follows that document to build, apply and wire dbpool, so what it
names must be real:

- every repository path it names (in backticks, in a command of a code
  block, or as a link) exists;
- every DATABASE_*, DB_* and DBPOOL_* setting it names is one of
  .env.example's (which tests/unit/config_test.cc holds to the server's
  own table), and the defaults and ports it gives for them are
  .env.example's;
- the Kubernetes figures it works out (the drain sum, the connection
  budget of the base and of the example overlay) are the manifests';
- its links, and every link into it or into OPERATIONS.md from the other
  documents, reach a file and a heading that exist (sections move between
  the two).

Offline and quick: it reads files, nothing else.

    cd tests/deploy && python3 -m unittest -v test_deployment_doc
"""

import os
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
DOC = DOCS / "DEPLOYMENT.md"
ENV_EXAMPLE = REPO / ".env.example"
K8S = REPO / "deploy" / "k8s"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"

# Not followed by a file extension: DATABASE_POOL_MONITORING.md is a file.
SETTING = re.compile(r"\b(?:DATABASE|DBPOOL|DB)_[A-Z0-9_]*[A-Z0-9]\b(?!\.[A-Za-z])")
# Variables the document names that are not server settings, with the
# file that reads each (checked, so that an entry cannot outlive its use).
NOT_SETTINGS = {
    "DBPOOL_CONTAINER_FULL_BUILD": "tests/deploy/test_container.py",
    "DBPOOL_TOKEN": "client/connection.cc",
    "DBPOOL_TLS_CA": "client/connection.cc",
    "DBPOOL_TLS_CLIENT_CERT": "client/connection.cc",
    "DBPOOL_TLS_CLIENT_KEY": "client/connection.cc",
}
FENCE = re.compile(r"^ *(```|~~~).*?^ *\1 *$", re.S | re.M)
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
STATED_VALUE = re.compile(
    r"`([A-Z][A-Z0-9_]+)`\s+\((?:default\s+`?([^)`]+?)`?|`([^`]+)`|(\d+)\s(s|ms))\)")


def top_level_names():
    """The repository's own top-level files and folders: a path is taken
    for a repository path when it starts with one of them. From git where
    there is one, so that build trees and installed tools do not count."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL).stdout
        names = {line.split("/", 1)[0] for line in out.splitlines() if line}
        if names:
            return names
    except (OSError, subprocess.CalledProcessError):
        pass
    # No git (an exported tree): what .gitignore leaves out, by hand.
    return {p.name for p in REPO.iterdir()
            if p.name != ".git"
            and not p.name.startswith(("build", "node_modules", ".tools", ".dbpool"))}


def split_fences(text):
    """(text without its fenced code blocks, [the blocks' contents])."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    return FENCE.sub("", text), blocks


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation other than
    '-' and '_' dropped, spaces to '-'."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    prose, _ = split_fences(path.read_text())
    seen = {}
    out = set()
    for m in re.finditer(r"^#{1,6} +(.+?) *#* *$", prose, re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        out.add(base if n == 0 else "%s-%d" % (base, n))
        seen[base] = n + 1
    return out


def env_example():
    """NAME -> value of every setting in .env.example."""
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M))


def link_problems(source, targets_wanted=None):
    """Problems with the relative links of one Markdown file; with
    targets_wanted, only links into those files (by name) are checked."""
    prose, _ = split_fences(source.read_text())
    problems = []
    for target in LINK.findall(prose):
        if re.match(r"^[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (source.parent / path_part).resolve() if path_part else source
        if targets_wanted is not None and dest.name not in targets_wanted:
            continue
        where = "%s: (%s)" % (os.path.relpath(source, REPO), target)
        if not dest.exists():
            problems.append("%s: no such file" % where)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append("%s: no heading #%s in %s"
                            % (where, anchor, os.path.relpath(dest, REPO)))
    return problems


class DeploymentDocTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.text = DOC.read_text()
        cls.prose, cls.blocks = split_fences(cls.text)
        cls.top = top_level_names()
        cls.env = env_example()

    def is_repo_path(self, token):
        first = token.split("/", 1)[0]
        return first in self.top and (
            "/" in token or (REPO / first).is_file())

    def missing(self, token):
        token = token.rstrip(".,;:")
        if "*" in token:
            return not any(REPO.glob(token))
        return not (REPO / token).exists()

    def test_preconditions(self):
        # The parsing below found what it must, so that the other tests
        # cannot pass by reading nothing.
        self.assertIn("deploy", self.top)
        self.assertIn(".env.example", self.top)
        self.assertGreater(len(self.env), 40)
        self.assertGreater(len(self.blocks), 5)
        self.assertIn("the-connection-budget", anchors(DOC))

    def test_paths_in_backticks_exist(self):
        paths = [s.strip() for s in CODE_SPAN.findall(self.prose)
                 if not re.search(r"\s", s.strip()) and self.is_repo_path(s.strip())]
        self.assertGreater(len(paths), 20, "found too few paths to be reading the document")
        self.assertEqual([p for p in paths if self.missing(p)], [],
                         "paths in backticks that the repository does not have")

    def test_paths_in_code_blocks_exist(self):
        paths = []
        for block in self.blocks:
            for token in re.split(r"[\s'\"=(),]+", block):
                if "/" in token and token.split("/", 1)[0] in self.top:
                    paths.append(token)
        self.assertIn("deploy/docker/Dockerfile", paths)
        self.assertIn("deploy/k8s/overlays/example", paths)
        self.assertEqual([p for p in paths if self.missing(p)], [],
                         "paths in code blocks that the repository does not have")

    def test_settings_are_in_env_example(self):
        named = set(SETTING.findall(self.text))
        self.assertIn("DBPOOL_EXPECTED_REPLICAS", named)
        unknown = sorted(n for n in named if n not in self.env and n not in NOT_SETTINGS)
        self.assertEqual(unknown, [], "settings that .env.example does not have")
        for name, reader in NOT_SETTINGS.items():
            self.assertNotIn(name, self.env, "%s is a setting: drop it from NOT_SETTINGS" % name)
            self.assertIn(name, (REPO / reader).read_text(), "%s no longer reads %s" % (reader, name))

    def test_defaults_and_ports_are_the_code_s(self):
        # What the document gives as a value of a setting: "`NAME` (default
        # X)", "`NAME` (`X`)", "`NAME` (30 s)" and the ports table's
        # "| 50051 | `NAME` |". Settings against .env.example, build
        # arguments against the Dockerfile's ARG lines.
        stated = []
        for m in STATED_VALUE.finditer(self.prose):
            name, default, literal, number, unit = m.groups()
            if number is not None:
                value = str(int(number) * (1000 if unit == "s" and name.endswith("_MS") else 1))
            else:
                value = default if default is not None else literal
            stated.append((name, value))
        stated += [(name, port) for port, name in
                   re.findall(r"^\| (\d+) \| `([A-Z][A-Z0-9_]+)` \|", self.prose, re.M)]
        args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.M))
        self.assertIn("BASE_IMAGE", args)
        checked, wrong = [], []
        for name, value in stated:
            if SETTING.fullmatch(name):
                known, where = self.env, ".env.example"
            elif name in args:
                known, where = args, "the Dockerfile"
            else:
                continue
            checked.append(name)
            if known.get(name) != value:
                wrong.append("%s: %s here, %s in %s" % (name, value, known.get(name), where))
        self.assertGreaterEqual(len(checked), 8, checked)
        self.assertEqual(wrong, [])

    def test_drain_sum_is_the_manifests(self):
        deployment = yaml.safe_load((K8S / "base/deployment.yaml").read_text())
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        grace_ms = int(self.base_env()["DBPOOL_SHUTDOWN_GRACE_MS"])
        line = ("preStop sleep %d s + DBPOOL_SHUTDOWN_GRACE_MS %d s + 5 s = %d s"
                % (sleep, grace_ms // 1000, pod["terminationGracePeriodSeconds"]))
        self.assertIn(line, self.text)

    def test_budget_table_is_the_manifests(self):
        deployment = yaml.safe_load((K8S / "base/deployment.yaml").read_text())
        surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        hpa = yaml.safe_load((K8S / "base/horizontalpodautoscaler.yaml").read_text())
        overlay = yaml.safe_load((K8S / "overlays/example/kustomization.yaml").read_text())
        overlay_max = next(op["value"] for p in overlay["patches"]
                           if p["target"]["kind"] == "HorizontalPodAutoscaler"
                           for op in yaml.safe_load(p["patch"])
                           if op["path"] == "/spec/maxReplicas")
        base_env = self.base_env()
        overlay_env = dict(base_env, **self.read_env(K8S / "overlays/example/dbpool.env"))
        usable = 97  # max_connections 100 less 3 superuser_reserved_connections
        for name, max_replicas, env in (("base", hpa["spec"]["maxReplicas"], base_env),
                                        ("example overlay", overlay_max, overlay_env)):
            pool = int(env["DB_POOL_MAX_CONNECTIONS"])
            total = (max_replicas + surge) * pool
            self.assertEqual(int(env["DBPOOL_EXPECTED_REPLICAS"]), max_replicas + surge, name)
            row = "| %s | %d | %d | %d = %d | %d left |" % (
                name, max_replicas, surge, pool, total, usable - total)
            self.assertIn(row, self.text, "the budget table's %s row" % name)

    def test_links_resolve(self):
        self.assertEqual(link_problems(DOC), [])

    def test_links_into_it_and_operations_resolve(self):
        problems = []
        for source in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
            problems += link_problems(source, {"DEPLOYMENT.md", "OPERATIONS.md"})
        self.assertEqual(problems, [])

    @staticmethod
    def read_env(path):
        return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", path.read_text(), re.M))

    def base_env(self):
        return self.read_env(K8S / "base/dbpool.env")


class HelpersTest(unittest.TestCase):
    """The parsing the checks above rely on."""

    def test_slug(self):
        self.assertEqual(slug("PostgreSQL restarts (`pg_ctl restart -m fast`)"),
                         "postgresql-restarts-pg_ctl-restart--m-fast")
        self.assertEqual(slug("HAProxy (HTTP/2, health checks on /readyz)"),
                         "haproxy-http2-health-checks-on-readyz")
        self.assertEqual(slug("Pool size and PostgreSQL max_connections"),
                         "pool-size-and-postgresql-max_connections")

    def test_fenced_blocks_are_not_headings(self):
        prose, blocks = split_fences("# A\n```\n# not a heading\n```\n## B\n")
        self.assertNotIn("not a heading", prose)
        self.assertEqual(len(blocks), 1)

    def test_a_broken_link_is_reported(self):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "OTHER.md").write_text("# Limits\n")
            (Path(d) / "docs").mkdir()
            page = Path(d) / "docs" / "page.md"
            page.write_text("# Here\n[a](#here) [b](#nowhere) [c](../OTHER.md#limits) "
                            "[d](../OTHER.md#no-such) [e](../NO_SUCH.md)\n")
            problems = link_problems(page)
        self.assertEqual(len(problems), 3, problems)
        self.assertTrue(any("#nowhere" in p for p in problems))
        self.assertTrue(any("#no-such" in p for p in problems))
        self.assertTrue(any("no such file" in p for p in problems))


if __name__ == "__main__":
    unittest.main()
