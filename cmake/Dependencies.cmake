# Every dependency comes from Debian 12 packages (scripts/install-deps).
find_package(Threads REQUIRED)
find_package(Protobuf REQUIRED)           # module mode: Debian's 3.21 has no config
find_package(gRPC CONFIG REQUIRED)        # 1.51
find_package(absl CONFIG REQUIRED)        # 20220623
find_package(PkgConfig REQUIRED)
pkg_check_modules(PQ REQUIRED IMPORTED_TARGET libpq)
find_package(spdlog CONFIG REQUIRED)
find_package(prometheus-cpp CONFIG REQUIRED)  # no version file: ask for none
find_package(civetweb CONFIG REQUIRED)
find_package(OpenSSL REQUIRED)           # 3.0: TLS files, token digests

# Protos that the contract imports, from golang-github-gogo-googleapis-dev
# (google/api, google/rpc) and grpc-proto (grpc/health/v1).
find_path(DBPOOL_GOOGLEAPIS_DIR google/rpc/status.proto
  PATHS /usr/share/gocode/src/github.com/gogo/googleapis
  NO_DEFAULT_PATH REQUIRED)
find_path(DBPOOL_GRPC_PROTO_DIR grpc/health/v1/health.proto
  PATHS /usr/share/grpc-proto NO_DEFAULT_PATH REQUIRED)
