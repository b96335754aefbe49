// Server: the whole dbpool server, built from a config::Config in one place
// for dbpool-server and the tests alike: the connection pool, the query
// engine, metrics and their exporter, the DatabaseService and health
// services on a grpc::Server, and the REST gateway.
//
// BuildServer returns a server that is listening on every port. Shutdown
// is what SIGTERM does. Owned by its builder (main, a test), whose thread
// alone calls Shutdown; the accessors may be used from any thread while the
// server runs. BuildServer and Shutdown block (binding ports, draining), and
// so does the destructor, which shuts down without grace when Shutdown was
// not called.
#ifndef DBPOOL_SERVER_APP_SERVER_H_
#define DBPOOL_SERVER_APP_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/config/config.h"
#include "server/engine/loop_engine.h"
#include "server/engine/query_engine.h"
#include "server/engine/routing_engine.h"
#include "server/http/rest_gateway.h"
#include "server/metrics/metrics.h"
#include "server/pool/connection_pool.h"
#include "server/rpc/database_service.h"
#include "server/rpc/health_service.h"

namespace dbpool::app {

class Server {
 public:
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The ports bound (the configured ones, or those picked for port 0).
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  int metrics_port() const { return metrics_port_; }
  // "host:port" on the listen host, bracketed for IPv6.
  std::string Address(int port) const;

  pool::ConnectionPool& pool() { return *pool_; }
  engine::QueryEngine& engine() { return *engine_; }
  metrics::Metrics& metrics() { return *metrics_; }
  rpc::HealthService& health() { return *health_; }
  // A channel to the gRPC server that needs no network (what the REST
  // gateway uses); calls on it count as in-process callers.
  std::shared_ptr<grpc::Channel> InProcessChannel();

  // In SIGTERM's order: health NOT_SERVING, DBPOOL_SHUTDOWN_DELAY_MS of
  // serving on while load balancers notice, streams ended, new calls
  // refused, calls in flight given `grace` to finish, the HTTP and metrics
  // listeners closed, then the pool drained. Later calls do nothing.
  void Shutdown(absl::Duration grace);

 private:
  friend absl::StatusOr<std::unique_ptr<Server>> BuildServer(const config::Config&);
  Server() = default;
  // A pool and an engine per replica, like the primary's, and the router in
  // front of them all; nothing without replicas.
  void AddReplicas(const config::Config& cfg, const pool::PoolOptions& pool_options,
                   const engine::LoopEngineOptions& engine_options);
  void Stop(absl::Duration delay, absl::Duration grace);

  std::string listen_host_;
  // Declared in the order they depend on each other, so that each is
  // destroyed before what it uses.
  std::unique_ptr<pool::ConnectionPool> pool_;
  std::vector<std::unique_ptr<pool::ConnectionPool>> replica_pools_;
  std::unique_ptr<metrics::Metrics> metrics_;
  // The primary's engine, then each replica's.
  std::vector<std::unique_ptr<engine::LoopEngine>> engines_;
  // Over engines_ when there are replicas.
  std::unique_ptr<engine::RoutingEngine> router_;
  // What calls run on: router_, else the primary's engine.
  engine::QueryEngine* engine_ = nullptr;
  std::unique_ptr<rpc::DatabaseService> database_;
  std::unique_ptr<rpc::HealthService> health_;
  std::unique_ptr<grpc::Server> grpc_;
  std::unique_ptr<http::RestGateway> gateway_;
  int grpc_port_ = 0;
  int http_port_ = 0;
  int metrics_port_ = 0;
  absl::Duration drain_delay_;
  bool shut_down_ = false;
};

// Builds the server `config` describes and starts it listening.
// INVALID_ARGUMENT when the configuration cannot work (an unusable
// DATABASE_URL, a password given as a flag, unreadable TLS or token files);
// FAILED_PRECONDITION when DBPOOL_ENFORCE_CONNECTION_BUDGET is set and the
// replicas' pools cannot fit the server's connections (connection_budget.h;
// this blocks up to DB_POOL_CONNECT_TIMEOUT_MS on one connection); UNAVAILABLE
// when a port cannot be bound.
absl::StatusOr<std::unique_ptr<Server>> BuildServer(const config::Config& config);

}  // namespace dbpool::app

#endif  // DBPOOL_SERVER_APP_SERVER_H_
