#!/usr/bin/env bash
# Checks deploy/k8s offline, without a cluster:
#   - deploy/k8s/generate_prometheusrule.py: its unit tests, and the committed
#     PrometheusRule is what it makes of deploy/prometheus/rules.yml;
#   - the base and the example overlay render with `kubectl kustomize`;
#   - check_k8s.mjs validates every rendered object against the Kubernetes
#     and Prometheus Operator schemas and checks it against the code (ports,
#     probes, settings, drain timing, rule names; details there).
# With DBPOOL_SERVER_BIN set, the settings are also read from
# `dbpool-server --help`. Needs kubectl (scripts/install-deps puts one in
# .tools/bin when none is on PATH), node and the repo's npm devDependencies
# (installed with `npm ci` if missing), python3 with PyYAML.
# Exits non-zero and lists every problem found.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

kubectl=$(command -v kubectl || true)
[[ -n $kubectl ]] || kubectl="$repo/.tools/bin/kubectl"
if [[ ! -x $kubectl ]]; then
  echo "FAILED: no kubectl on PATH or in .tools/bin: run scripts/install-deps" >&2
  exit 1
fi
command -v node >/dev/null || { echo "FAILED: node is not installed" >&2; exit 1; }
if [[ ! -d "$repo/node_modules/kubernetes-models" || ! -d "$repo/node_modules/@kubernetes-models/prometheus-operator" ||
      ! -d "$repo/node_modules/yaml" || ! -x "$repo/node_modules/.bin/tsc" ]]; then
  echo "installing the npm devDependencies with npm ci" >&2
  (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error) || {
    echo "FAILED: npm ci in $repo" >&2
    exit 1
  }
fi
echo "kubectl: $("$kubectl" version --client 2>/dev/null | tr '\n' ' ')"
echo "kubernetes-models: $(node -p "require('$repo/node_modules/kubernetes-models/package.json').version")," \
  "@kubernetes-models/prometheus-operator: $(node -p "require('$repo/node_modules/@kubernetes-models/prometheus-operator/package.json').version")"

# Scratch dir for the renderings and the generated .ts; node_modules is
# linked in so that tsc resolves the schemas from the repo.
work="$(mktemp -d "${TMPDIR:-/tmp}/dbpool-k8s-check.XXXXXX")"
ln -s "$repo/node_modules" "$work/node_modules"

failed=()
run() {
  echo "+ $*"
  if ! "$@"; then failed+=("$*"); fi
}
run python3 -m unittest discover -s "$here" -p 'test_generate_prometheusrule.py'
run python3 "$repo/deploy/k8s/generate_prometheusrule.py" --check
renderings=()
for target in base overlays/example; do
  name=${target##*/}
  if run "$kubectl" kustomize "$repo/deploy/k8s/$target" -o "$work/$name.yaml"; then
    renderings+=("$name=$work/$name.yaml")
  fi
done
if ((${#renderings[@]})); then
  run node "$here/check_k8s.mjs" --repo "$repo" --work "$work" \
    --tsc "$repo/node_modules/.bin/tsc" "${renderings[@]}"
fi

if ((${#failed[@]})); then
  echo >&2
  echo "FAILED (renderings kept in $work):" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
rm -rf "$work"
echo "OK: deploy/k8s base and example overlay"
