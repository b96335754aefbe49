"""python3 -m dbpoolbench compare|soak|floor|max-rate|waiters|overload|pipeline-depth|batch|replicas
python3 -m dbpoolbench render KIND RESULT.json [--md PATH]

Runs from the repository root (results and reports use paths relative to
it). Settings come from the environment (see the launchers in bench/).
Exit status: 0 done (soak: all checks passed), 1 failed, 2 bad settings,
130/143 interrupted."""
import argparse
import json
import os
import subprocess
import sys

from . import (batch, compare, compare_report, depth, floor, overload, rate, replicas, soak,
               soak_report, stack, text, waiters)
from .settings import SettingsError

COMMANDS = {"compare": compare.main, "soak": soak.main, "floor": floor.main,
            "max-rate": rate.main, "waiters": waiters.main, "overload": overload.main,
            "pipeline-depth": depth.main, "batch": batch.main,
            "replicas": replicas.main}


def render(kind, path, md_path):
    """The Markdown report of a stored result, as its command writes it."""
    with open(path) as f:
        doc = json.load(f)
    if kind == "compare":
        return compare_report.render(doc, path, md_path or "docs/BENCHMARKS.md")
    if kind == "soak":
        return soak_report.render(doc, path)
    if kind == "floor":
        return floor.render(doc, *floor.latest_compare())
    if kind == "max-rate":
        return rate.render(doc)
    if kind == "overload":
        return overload.render(doc)
    if kind == "pipeline-depth":
        return depth.render(doc, path, md_path or "docs/BENCHMARKS-pipeline-depth.md")
    if kind == "batch":
        return batch.render(doc, path, md_path or "docs/BENCHMARKS-batch.md")
    if kind == "replicas":
        return replicas.render(doc, path, md_path or "docs/BENCHMARKS-replicas.md")
    return waiters.render(doc)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="dbpoolbench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        sub.add_parser(name)
    r = sub.add_parser("render")
    r.add_argument("kind", choices=list(COMMANDS))
    r.add_argument("result")
    r.add_argument("--md", help="write here instead of stdout")
    a = ap.parse_args(argv)
    if a.command == "render":
        # Reports name their results by paths from the repository root.
        result, md_path = (p and os.path.relpath(os.path.abspath(p), stack.REPO_ROOT)
                           for p in (a.result, a.md))
        os.chdir(stack.REPO_ROOT)
        try:
            md = render(a.kind, result, md_path)
        except KeyError as e:
            print(f"dbpoolbench: {result} has no {e} (written before it was recorded)",
                  file=sys.stderr)
            return 1
        if md_path:
            text.write_text(md_path, md)
        else:
            sys.stdout.write(md)
        return 0
    os.chdir(stack.REPO_ROOT)
    stack.exit_on_signals()
    log = stack.Logger(a.command)
    try:
        return COMMANDS[a.command]()
    except SettingsError as e:
        log(f"error: {e}")
        return 2
    except (stack.HarnessError, subprocess.CalledProcessError) as e:
        log(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
