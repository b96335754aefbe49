#!/usr/bin/env bash
# Builds the Go peer gateway offline from Debian's Go packages
# (proto/go/build-offline.sh; the peer also needs
# golang-github-jackc-pgx-v4-dev).
#
#   bench/peers/go/build.sh [OUTPUT]    default: build/dbpool-peer-go
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
exec "$repo/proto/go/build-offline.sh" "$here" dbpoolpeer "${1:-$repo/build/dbpool-peer-go}"
