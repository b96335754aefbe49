// Test harness for the integration and fault tests: an in-process dbpool
// server built by app::BuildServer, as dbpool-server builds it, against a
// throwaway PostgreSQL (pg_cluster.h).
//
// TestServer is owned by a test and not meant for concurrent setup; the
// gRPC stubs it hands out are thread-safe.
#ifndef DBPOOL_TESTS_SUPPORT_PG_HARNESS_H_
#define DBPOOL_TESTS_SUPPORT_PG_HARNESS_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dbpool/v1/database_service.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/app/server.h"
#include "server/metrics/metrics.h"
#include "server/pool/connection_pool.h"
#include "tests/support/pg_cluster.h"

namespace dbpool::testing {

// A TestServer's settings: dbpool-server environment variables (see
// .env.example), laid over the harness's own, which are the only ones that
// differ from the defaults: loopback, free ports, the shared cluster, and a
// pool of 4 (1 kept open) named dbpool-test. A single setting is written
// ServerEnv{{NAME, VALUE}}: bare braces would also read as an iterator pair.
using ServerEnv = std::map<std::string, std::string>;

// A duration as the value of a *_MS setting.
std::string Ms(absl::Duration d);

// The whole server, in-process, listening on loopback. Owned by a test;
// stopped (5 s grace) when destroyed.
class TestServer {
 public:
  explicit TestServer(const ServerEnv& env = {});
  ~TestServer();

  v1::DatabaseService::Stub& stub() { return *stub_; }
  grpc::health::v1::Health::Stub& health() { return *health_; }
  pool::ConnectionPool& pool() { return server_->pool(); }
  // What /metrics would serve: the pool collector and query metrics.
  metrics::Metrics& metrics() { return server_->metrics(); }
  // host:port of the gRPC server.
  std::string target() const;

  // A Query with a deadline.
  grpc::Status Query(const v1::QueryRequest& request, v1::QueryResponse* response,
                     absl::Duration deadline = absl::Seconds(10));
  grpc::Status Query(const std::string& sql, v1::QueryResponse* response,
                     absl::Duration deadline = absl::Seconds(10));
  // Health/Check for the whole server; UNKNOWN when the call fails.
  grpc::health::v1::HealthCheckResponse::ServingStatus Health(
      absl::Duration deadline = absl::Seconds(2));
  // GetPoolStats through gRPC.
  grpc::Status PoolStats(v1::PoolStats* stats,
                         absl::Duration deadline = absl::Seconds(2));

 private:
  std::unique_ptr<app::Server> server_;
  std::unique_ptr<v1::DatabaseService::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

// One Query in flight on the callback API. The deadline bounds Wait() (a
// call not over 10 s past it fails the test). A call still running when the
// object is destroyed is cancelled and waited for, so a test that ends early
// leaves nothing behind.
class AsyncQuery {
 public:
  AsyncQuery(v1::DatabaseService::Stub& stub, const std::string& sql,
             absl::Duration deadline);
  AsyncQuery(v1::DatabaseService::Stub& stub, v1::QueryRequest request,
             absl::Duration deadline);
  ~AsyncQuery();
  AsyncQuery(const AsyncQuery&) = delete;
  AsyncQuery& operator=(const AsyncQuery&) = delete;

  grpc::Status Wait();
  bool done();
  void Cancel() { context_.TryCancel(); }
  absl::Time started() const { return started_; }
  // When the status arrived; valid after Wait().
  absl::Time finished();
  // Valid after Wait().
  const v1::QueryResponse& response() { return response_; }

 private:
  grpc::ClientContext context_;
  v1::QueryRequest request_;
  v1::QueryResponse response_;
  absl::Time started_;
  absl::Time deadline_;
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time finished_ ABSL_GUARDED_BY(mu_);
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

// Polls `pred` every `poll` until it holds or `limit` passes; returns its
// last value.
template <typename Pred>
bool Eventually(Pred pred, absl::Duration limit = absl::Seconds(10),
                absl::Duration poll = absl::Milliseconds(20)) {
  const absl::Time end = absl::Now() + limit;
  const int64_t max_polls = limit / poll + 1;
  for (int64_t i = 0; i < max_polls && absl::Now() < end; ++i) {
    if (pred()) return true;
    absl::SleepFor(poll);
  }
  return pred();
}

// The SQLSTATE carried in a status's google.rpc.ErrorInfo detail, or "".
std::string SqlStateOf(const grpc::Status& status);

}  // namespace dbpool::testing

#endif  // DBPOOL_TESTS_SUPPORT_PG_HARNESS_H_
