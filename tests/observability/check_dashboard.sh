#!/usr/bin/env bash
# Checks the Grafana dashboard and the metric names used everywhere, offline
# (details in check_dashboard.mjs):
#   - dashboards/dbpool.json type-checks against npm @grafana/schema with tsc
#     (`satisfies Dashboard`, and each panel's options against its plugin's types);
#   - its variables, datasources, $instance filters and layout;
#   - every PromQL expression in the dashboard, rules.yml and rules_test.yml
#     names only metrics and labels from tests/observability/exported_metrics.txt;
#   - the dashboard's expressions parse (promtool check rules);
#   - alerts carry severity/summary/description/runbook_url, their run-book
#     anchors exist, each has a firing and a not-firing unit test;
#   - the run-book explains every exported metric;
#   - prometheus.yml scrapes job "dbpool" every 5s and loads rules.yml, and the
#     Grafana provisioning files are complete and agree with it.
# Needs node, the repo's npm devDependencies (installed with `npm ci` if
# missing) and promtool (the Debian package prometheus, installed if missing).
# Exits non-zero and lists every problem found.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"
ensure_promtool || exit 1
command -v node >/dev/null || { echo "FAILED: node is not installed" >&2; exit 1; }

if [[ ! -x "$repo/node_modules/.bin/tsc" || ! -f "$repo/node_modules/@grafana/schema/package.json" ]]; then
  echo "installing the npm devDependencies (typescript, @grafana/schema) with npm ci" >&2
  (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error) || {
    echo "FAILED: npm ci in $repo" >&2
    exit 1
  }
fi
echo "tsc: $("$repo/node_modules/.bin/tsc" --version)," \
  "@grafana/schema: $(node -p "require('$repo/node_modules/@grafana/schema/package.json').version")"

# Scratch dir for the generated .ts and rule files; node_modules is linked in
# so that tsc resolves @grafana/schema from the repo.
work="$(mktemp -d "${TMPDIR:-/tmp}/dbpool-dashboard-check.XXXXXX")"
ln -s "$repo/node_modules" "$work/node_modules"

status=0
node "$here/check_dashboard.mjs" --repo "$repo" --work "$work" \
  --tsc "$repo/node_modules/.bin/tsc" --promtool "$(command -v promtool)" || status=1

# The checker reads rules.yml with its own small YAML reader: make sure it
# saw the same number of rules as promtool.
promtool_count="$(promtool check rules "$repo/deploy/prometheus/rules.yml" 2>&1 |
  sed -n 's/.*SUCCESS: \([0-9][0-9]*\) rules found.*/\1/p')"
checker_count="$(cat "$work/rules.count" 2>/dev/null || echo none)"
if [[ -z $promtool_count || $promtool_count != "$checker_count" ]]; then
  echo "FAILED: check_dashboard.mjs read ${checker_count} rules from rules.yml, promtool ${promtool_count:-none}" >&2
  status=1
fi

if ((status)); then
  echo "FAILED: see above; generated files kept in $work" >&2
  exit 1
fi
rm -rf "$work"
echo "OK: dashboard, metric names, rule metadata"
