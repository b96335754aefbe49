#!/usr/bin/env bash
# Builds the Go peer gateway offline from Debian's Go packages (GOPATH mode,
# /usr/share/gocode): generates the dbpool.v1 stubs with protoc-gen-go and
# protoc-gen-go-grpc, then compiles.
#
#   bench/peers/go/build.sh [OUTPUT]    default: build/dbpool-peer-go
#
# Needs golang-go, golang-google-grpc-dev, golang-github-jackc-pgx-v4-dev,
# golang-google-protobuf-dev, protoc-gen-go, protoc-gen-go-grpc and
# golang-github-gogo-googleapis-dev (scripts/install-deps installs them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../../.." && pwd)
out=$(realpath -m "${1:-$repo/build/dbpool-peer-go}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/src/dbpoolpeer
mkdir -p "$pkg"
cp "$here/main.go" "$pkg/"

# The contract has no go_package, and the googleapis protos Debian ships
# name a bare "api": map both to Go import paths. The annotations resolve
# to Debian's genproto, which only the descriptor's import refers to.
annotations=google.golang.org/genproto/googleapis/api/annotations
map="Mdbpool/v1/database_service.proto=dbpoolpeer/dbpoolv1"
map+=",Mgoogle/api/annotations.proto=$annotations,Mgoogle/api/http.proto=$annotations"
protoc -I "$repo/proto" -I /usr/share/gocode/src/github.com/gogo/googleapis \
  --go_out="$map:$work/src" --go-grpc_out="$map:$work/src" \
  dbpool/v1/database_service.proto

mkdir -p "$(dirname "$out")"
cd "$pkg"
GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOFLAGS= go build -o "$out" .
echo "built $out"
