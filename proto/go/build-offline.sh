#!/usr/bin/env bash
# Builds a Go program that speaks dbpool.v1 offline from Debian's Go
# packages (GOPATH mode, /usr/share/gocode: no module download): generates
# the stubs with protoc-gen-go and protoc-gen-go-grpc as PACKAGE/dbpoolv1,
# puts protocodec beside them (Debian's grpc-go needs it, see its comment)
# and compiles SOURCE_DIR's .go files as PACKAGE. The Go peer gateway
# (bench/peers/go) and the Go client example (client/examples/go) build
# through it.
#
#   proto/go/build-offline.sh SOURCE_DIR PACKAGE OUTPUT
#
# Needs golang-go, golang-google-grpc-dev, golang-google-protobuf-dev,
# protoc-gen-go, protoc-gen-go-grpc, protobuf-compiler and
# golang-github-gogo-googleapis-dev, and whatever else SOURCE_DIR imports
# (scripts/install-deps installs them all).
set -euo pipefail
if (($# != 3)); then
  echo "usage: $0 SOURCE_DIR PACKAGE OUTPUT" >&2
  exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
src=$(realpath "$1")
package=$2
out=$(realpath -m "$3")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/$package" "$work/src/protocodec"
cp "$src"/*.go "$work/src/$package/"
cp "$here/protocodec/codec.go" "$work/src/protocodec/"

# The contract names no go_package, and the googleapis protos Debian ships
# name a bare "api": map both to Go import paths. The annotations resolve to
# Debian's genproto, which only the descriptor's import refers to.
annotations=google.golang.org/genproto/googleapis/api/annotations
map="Mdbpool/v1/database_service.proto=$package/dbpoolv1"
map+=",Mgoogle/api/annotations.proto=$annotations,Mgoogle/api/http.proto=$annotations"
protoc -I "$repo/proto" -I /usr/share/gocode/src/github.com/gogo/googleapis \
  --go_out="$map:$work/src" --go-grpc_out="$map:$work/src" \
  dbpool/v1/database_service.proto

mkdir -p "$(dirname "$out")"
cd "$work/src/$package"
GO111MODULE=off GOPATH="$work:/usr/share/gocode" GOFLAGS= go build -o "$out" .
echo "built $out"
