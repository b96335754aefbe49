#!/usr/bin/env bash
# Runs the dbpool end-to-end tests (Python gRPC client, buf curl, buf lint).
#
#   tests/e2e/run.sh                 every test_*.py module
#   tests/e2e/run.sh test_cli        one module (ctest runs each this way)
#   tests/e2e/run.sh -k health       other arguments go to unittest discover
#
# Environment: DBPOOL_SERVER_BIN (default <repo>/build/dbpool-server),
# DBPOOL_CLI_BIN (default <repo>/build/dbpool).
# Needs: Debian's /usr/bin/python3 with python3-grpcio and python3-protobuf,
# protoc and grpc_python_plugin, PostgreSQL server binaries, and buf from
# `npm ci` at the repo root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
if [[ ${1:-} == test_* ]]; then
  exec /usr/bin/python3 -m unittest -v "$@"
fi
exec /usr/bin/python3 -m unittest discover -v -s "$here" -p "test_*.py" "$@"
