// HealthService: grpc.health.v1.Health built from generated code, so that
// reflection can describe it (gRPC 1.51's built-in one cannot be called
// through reflection). SERVING while the engine reaches the database and the
// server is not draining.
//
// Owned by whoever builds the server; must outlive the grpc::Server, and the
// engine must outlive it. Thread-safe; never blocks.
#ifndef DBPOOL_SERVER_RPC_HEALTH_SERVICE_H_
#define DBPOOL_SERVER_RPC_HEALTH_SERVICE_H_

#include <atomic>

#include "grpc/health/v1/health.grpc.pb.h"
#include "server/engine/query_engine.h"
#include "server/rpc/periodic_streams.h"

namespace dbpool::rpc {

// A health service name that is SERVING whenever the process answers, the
// database reachable or not, draining or not: for liveness probes, which
// must not restart a server that is only waiting for its database.
inline constexpr char kLivenessService[] = "liveness";

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  HealthService(const engine::QueryEngine& engine, int max_watches);

  grpc::ServerUnaryReactor* Check(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request,
      grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

  // Whether the whole server ("") is SERVING.
  bool Serving() const;
  // From now on every service reports NOT_SERVING.
  void SetDraining();
  // Ends Watch streams.
  void EndWatches();

 private:
  grpc::health::v1::HealthCheckResponse::ServingStatus StatusOf(
      const std::string& service) const;

  const engine::QueryEngine& engine_;
  std::atomic<bool> draining_{false};
  PeriodicStreams<grpc::health::v1::HealthCheckResponse> watches_;
};

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_HEALTH_SERVICE_H_
