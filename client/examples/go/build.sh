#!/usr/bin/env bash
# Generates the Go stubs of dbpool.v1 and builds the example offline from
# Debian's Go packages (GOPATH mode, /usr/share/gocode): no module download.
#
#   client/examples/go/build.sh [OUTPUT]   default: build/client-examples/dbpool-example-go
#
# Needs golang-go, golang-google-grpc-dev, golang-google-protobuf-dev,
# protoc-gen-go, protoc-gen-go-grpc, protobuf-compiler and
# golang-github-gogo-googleapis-dev.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=$(realpath -m "${1:-$repo/build/client-examples/dbpool-example-go}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/src/dbpoolexample
mkdir -p "$pkg"
cp "$here/main.go" "$pkg/"

# The contract names no go_package, and the googleapis protos Debian ships
# name a bare "api": map both to Go import paths. The annotations resolve to
# Debian's genproto, which only the descriptor's import refers to.
annotations=google.golang.org/genproto/googleapis/api/annotations
map="Mdbpool/v1/database_service.proto=dbpoolexample/dbpoolv1"
map+=",Mgoogle/api/annotations.proto=$annotations,Mgoogle/api/http.proto=$annotations"
protoc -I "$repo/proto" -I /usr/share/gocode/src/github.com/gogo/googleapis \
  --go_out="$map:$work/src" --go-grpc_out="$map:$work/src" \
  dbpool/v1/database_service.proto

mkdir -p "$(dirname "$out")"
cd "$pkg"
GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOFLAGS= go build -o "$out" .
echo "built $out"
