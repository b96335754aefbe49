#!/usr/bin/env bash
# Generates the Go stubs of dbpool.v1 and builds the example offline from
# Debian's Go packages (proto/go/build-offline.sh): no module download.
#
#   client/examples/go/build.sh [OUTPUT]   default: build/client-examples/dbpool-example-go
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
exec "$repo/proto/go/build-offline.sh" "$here" dbpoolexample \
  "${1:-$repo/build/client-examples/dbpool-example-go}"
