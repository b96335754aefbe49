# shellcheck shell=bash
# Shared by the observability checks. Source it; do not run it.

# Installs Debian's prometheus package (for promtool) when promtool is missing.
# --no-install-recommends: without it apt also pulls node-exporter and friends.
ensure_promtool() {
  command -v promtool >/dev/null && return 0
  echo "promtool not found: installing the Debian package prometheus" >&2
  local sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q \
    --no-install-recommends prometheus >&2
  command -v promtool >/dev/null || {
    echo "FAILED: promtool is still missing after installing prometheus" >&2
    return 1
  }
}
