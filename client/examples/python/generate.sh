#!/usr/bin/env bash
# Generates the Python stubs of dbpool.v1 (and the google.api protos its
# contract imports) with Debian's protoc and gRPC Python plugin.
#
#   client/examples/python/generate.sh [OUT]   default: build/client-examples/python
#
# Needs protobuf-compiler, protobuf-compiler-grpc and
# golang-github-gogo-googleapis-dev.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
out=$(realpath -m "${1:-$repo/build/client-examples/python}")
googleapis=/usr/share/gocode/src/github.com/gogo/googleapis

plugin=$(command -v grpc_python_plugin) || {
  echo "generate.sh: grpc_python_plugin not found (apt-get install protobuf-compiler-grpc)" >&2
  exit 1
}

mkdir -p "$out"
protoc -I "$repo/proto" -I "$googleapis" \
  --python_out="$out" --grpc_out="$out" \
  --plugin=protoc-gen-grpc="$plugin" \
  dbpool/v1/database_service.proto google/api/annotations.proto google/api/http.proto
echo "generated $out"
