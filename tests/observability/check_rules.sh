#!/usr/bin/env bash
# Checks the Prometheus configuration and rules with promtool, offline:
#   promtool check config deploy/prometheus/prometheus.yml   (and the rule files it loads)
#   promtool check rules  deploy/prometheus/rules.yml
#   promtool test rules   deploy/prometheus/rules_test.yml   (alert unit tests)
# Installs the Debian package prometheus if promtool is missing.
# Exits non-zero, naming each failed step, if any step fails.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$here/lib.sh"
ensure_promtool || exit 1
echo "promtool: $(promtool --version 2>&1 | head -n1)"

cd "$repo/deploy/prometheus" || exit 1
failed=()
run() {
  echo "+ $*"
  if ! "$@"; then failed+=("$*"); fi
}
run promtool check config prometheus.yml
run promtool check rules rules.yml
run promtool test rules rules_test.yml

if ((${#failed[@]})); then
  echo >&2
  echo "FAILED (in deploy/prometheus):" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "OK: prometheus.yml, rules.yml and rules_test.yml"
