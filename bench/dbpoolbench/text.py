"""Number formats and file output the reports share."""
import datetime
import json
import os
import time

DASH = "—"


def fixed(x, digits=2, missing=DASH):
    """x with `digits` decimals; `missing` for None."""
    return missing if x is None else f"{x:.{digits}f}"


def thousands(x, missing=DASH):
    """x rounded to a whole number with thousands separators."""
    return missing if x is None else f"{x:,.0f}"


def figure(x, digits=1, missing="n/a"):
    """A whole number as such (with separators), anything else with
    `digits` decimals."""
    if x is None:
        return missing
    if isinstance(x, int) or float(x).is_integer():
        return f"{int(x):,}"
    return f"{x:,.{digits}f}"


def utc_text(t=None):
    """A Unix time (now by default) as 2026-01-31T12:00:00Z."""
    when = datetime.datetime.fromtimestamp(time.time() if t is None else t,
                                           datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp():
    """The date part of result file names: 2026-01-31-1200 (UTC)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d-%H%M")


def write_json(path, doc, indent=1):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=indent)
        f.write("\n")


def write_text(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def last_json_line(text):
    """The JSON document on the last line of a command's output (dbpool
    bench --json prints its report there), or None."""
    try:
        return json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def load_jsonl(path):
    """The JSON values of a file with one per line, skipping lines that do
    not parse (a line cut short when its writer was stopped); [] when the
    file is missing."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out
