#!/usr/bin/env python3
"""Writes the Prometheus Operator PrometheusRule from deploy/prometheus/rules.yml.

rules.yml stays the one source of dbpool's recording and alerting rules
(promtool checks and unit-tests it); the PrometheusRule carries its groups
unchanged, so that a cluster with the Prometheus Operator evaluates exactly
what was tested.

    deploy/k8s/generate_prometheusrule.py           # rewrite the component's file
    deploy/k8s/generate_prometheusrule.py --check   # exit 1 if it is out of date
"""

import argparse
import pathlib
import sys

import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES = REPO / "deploy/prometheus/rules.yml"
OUTPUT = REPO / "deploy/k8s/components/monitoring/prometheusrule.yaml"

HEADER = """\
# Generated from deploy/prometheus/rules.yml by
# deploy/k8s/generate_prometheusrule.py: change rules.yml and run it, do not
# edit this file (tests/deploy/check_k8s.sh fails when the two disagree).
"""


def prometheus_rule(rules):
    """The PrometheusRule object holding the rule groups of a rules.yml document."""
    groups = rules.get("groups") if isinstance(rules, dict) else None
    if not isinstance(groups, list) or not groups:
        raise ValueError("rules.yml has no rule groups")
    for group in groups:
        if not isinstance(group, dict) or not group.get("name") or not group.get("rules"):
            raise ValueError(f"rule group without a name or rules: {group!r}")
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "dbpool", "labels": {"app.kubernetes.io/name": "dbpool"}},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper, value):
    # Multi-line PromQL stays a readable block, as in rules.yml.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def render(rules_text):
    """The PrometheusRule file for the text of a rules.yml."""
    body = yaml.dump(
        prometheus_rule(yaml.safe_load(rules_text)),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 16,
    )
    return HEADER + body


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed file instead of writing it")
    args = parser.parse_args(argv)
    want = render(RULES.read_text(encoding="utf-8"))
    if args.check:
        have = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if have != want:
            print(f"{OUTPUT.relative_to(REPO)} is out of date with "
                  f"{RULES.relative_to(REPO)}: run deploy/k8s/generate_prometheusrule.py",
                  file=sys.stderr)
            return 1
        print(f"{OUTPUT.relative_to(REPO)} matches {RULES.relative_to(REPO)}")
        return 0
    OUTPUT.write_text(want, encoding="utf-8")
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
