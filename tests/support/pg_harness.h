// Test harness for integration tests: a throwaway PostgreSQL cluster
// (started through tests/support/pg_cluster.sh, once per test binary run)
// and an in-process dbpool server wired exactly as main.cc wires it.
//
// PgCluster is a process-wide singleton, started by a gtest environment and
// stopped at the end. TestServer is owned by a test. Neither is meant for
// concurrent setup; the gRPC stubs they hand out are thread-safe.
#ifndef DBPOOL_TESTS_SUPPORT_PG_HARNESS_H_
#define DBPOOL_TESTS_SUPPORT_PG_HARNESS_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "dbpool/v1/database_service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/common/executor.h"
#include "server/pool/connection_pool.h"
#include "server/rpc/database_service.h"
#include "server/rpc/health_service.h"

namespace dbpool::testing {

class PgCluster {
 public:
  static PgCluster& Get();

  std::string conninfo() const;
  int port() const { return port_; }
  // Runs `sql` on a fresh connection of its own; returns the first value of
  // the first row ("" when none). Fails the test on error.
  std::string Scalar(const std::string& sql) const;

  void Start();
  void Stop();
  void Restart();
  // Stops the cluster and deletes its files.
  void Remove();

 private:
  std::string dir_;
  int port_ = 0;
};

struct TestServerOptions {
  int max_connections = 4;
  int min_connections = 1;
  int max_waiting = 100;
  absl::Duration acquire_timeout = absl::Seconds(5);
  absl::Duration statement_timeout = absl::Seconds(30);
  std::string conninfo;  // empty: the shared cluster
  std::string application_name = "dbpool-test";
  int max_stats_streams = 64;
  int max_sql_bytes = 1 << 20;
  int max_params = 65535;
};

class TestServer {
 public:
  explicit TestServer(TestServerOptions options = {});
  ~TestServer();

  v1::DatabaseService::Stub& stub() { return *stub_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }
  pool::ConnectionPool& pool() { return *pool_; }
  std::string target() const;

  // A Query with a deadline.
  grpc::Status Query(const v1::QueryRequest& request, v1::QueryResponse* response,
                     absl::Duration deadline = absl::Seconds(10));
  grpc::Status Query(const std::string& sql, v1::QueryResponse* response,
                     absl::Duration deadline = absl::Seconds(10));

 private:
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<pool::ConnectionPool> pool_;
  std::unique_ptr<rpc::DatabaseService> service_;
  std::unique_ptr<rpc::HealthService> health_service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::unique_ptr<v1::DatabaseService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// The SQLSTATE carried in a status's google.rpc.ErrorInfo detail, or "".
std::string SqlStateOf(const grpc::Status& status);

}  // namespace dbpool::testing

#endif  // DBPOOL_TESTS_SUPPORT_PG_HARNESS_H_
