"""Unit tests of deploy/k8s/generate_prometheusrule.py."""

import contextlib
import importlib.util
import io
import pathlib
import tempfile
import unittest
from unittest import mock

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "generate_prometheusrule", REPO / "deploy/k8s/generate_prometheusrule.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

RULES = """\
groups:
  - name: g.recording
    rules:
      - record: instance:x:ratio
        expr: |
          a{job="dbpool"}
            / on (job, instance)
          b{job="dbpool"}
  - name: g.alerts
    rules:
      - alert: XHigh
        expr: instance:x:ratio > 0.9
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: "x is {{ $value | humanizePercentage }}: a long line that must not be folded by the emitter, whatever its width"
"""


class RenderTest(unittest.TestCase):
    def test_groups_are_carried_unchanged(self):
        out = gen.render(RULES)
        obj = yaml.safe_load(out)
        self.assertEqual(obj["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(obj["kind"], "PrometheusRule")
        self.assertEqual(obj["spec"]["groups"], yaml.safe_load(RULES)["groups"])

    def test_says_it_is_generated(self):
        self.assertTrue(gen.render(RULES).startswith("# Generated from deploy/prometheus/rules.yml"))

    def test_multi_line_expressions_stay_blocks(self):
        out = gen.render(RULES)
        self.assertIn("expr: |\n", out)
        self.assertIn("    / on (job, instance)\n", out)

    def test_long_lines_are_not_folded(self):
        lines = gen.render(RULES).splitlines()
        self.assertTrue(any("a long line" in line and "whatever its width" in line for line in lines))

    def test_rejects_a_file_without_groups(self):
        for text in ("", "groups: []\n", "rules: []\n", "groups:\n  - name: g\n"):
            with self.subTest(text=text), self.assertRaises(ValueError):
                gen.render(text)


class CheckTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        root = pathlib.Path(tmp.name)
        self.rules = root / "rules.yml"
        self.output = root / "prometheusrule.yaml"
        self.rules.write_text(RULES)
        for name, value in (("REPO", root), ("RULES", self.rules), ("OUTPUT", self.output)):
            patcher = mock.patch.object(gen, name, value)
            patcher.start()
            self.addCleanup(patcher.stop)

    def run_main(self, *argv):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            code = gen.main(list(argv))
        return code, err.getvalue()

    def test_check_fails_until_written_then_passes(self):
        self.assertEqual(self.run_main("--check")[0], 1)
        self.assertEqual(self.run_main()[0], 0)
        self.assertEqual(self.run_main("--check")[0], 0)

    def test_check_fails_after_rules_change(self):
        self.run_main()
        self.rules.write_text(RULES.replace("0.9", "0.8"))
        code, err = self.run_main("--check")
        self.assertEqual(code, 1)
        self.assertIn("out of date", err)

    def test_check_fails_after_a_hand_edit(self):
        self.run_main()
        self.output.write_text(self.output.read_text().replace("XHigh", "XHigher"))
        self.assertEqual(self.run_main("--check")[0], 1)


if __name__ == "__main__":
    unittest.main()
