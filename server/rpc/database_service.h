// DatabaseService: the dbpool.v1.DatabaseService implementation on gRPC's
// callback API.
//
// A Query is checked (AccessControl) and validated on the gRPC thread, then
// handed to the QueryEngine, whose callback finishes the call: a waiting or
// running call holds no gRPC thread. A caller's cancel reaches the engine,
// which ends a wait at once and cancels a running statement on the server.
//
// Owned by whoever builds the server; must outlive the grpc::Server, and the
// engine must outlive it. Thread-safe. No method blocks; the destructor
// waits for open stats streams to end.
#ifndef DBPOOL_SERVER_RPC_DATABASE_SERVICE_H_
#define DBPOOL_SERVER_RPC_DATABASE_SERVICE_H_

#include <atomic>

#include "dbpool/v1/database_service.grpc.pb.h"
#include "server/engine/query_engine.h"
#include "server/metrics/metrics.h"
#include "server/rpc/access_control.h"
#include "server/rpc/periodic_streams.h"
#include "server/rpc/request_validation.h"

namespace dbpool::rpc {

// Filled from config::Config by whoever builds the server.
struct ServiceOptions {
  RequestLimits request;
  // Used when a request sets no timeout; a request can only shorten it.
  absl::Duration statement_timeout;
  int max_stats_streams = 0;
  // Empty: no authentication.
  security::TokenTable tokens;
  // 0: no per-caller limit.
  int max_calls_per_caller = 0;
  // The HTTP gateway's, for the client names it forwards (see
  // security/forwarded_client.h); empty: they are never trusted.
  std::string forwarding_secret;
};

// Query is registered raw (ByteBuffer in and out) so that a request that
// fails to parse, such as text that is not valid UTF-8, gets a clear
// INVALID_ARGUMENT instead of gRPC's generic answer.
using DatabaseServiceBase = v1::DatabaseService::WithRawCallbackMethod_Query<
    v1::DatabaseService::WithCallbackMethod_GetPoolStats<
        v1::DatabaseService::WithCallbackMethod_StreamPoolStats<
            v1::DatabaseService::Service>>>;

class DatabaseService final : public DatabaseServiceBase {
 public:
  // `metrics` may be null (tests that do not look at metrics).
  DatabaseService(engine::QueryEngine& engine, ServiceOptions options,
                  metrics::Metrics* metrics = nullptr);

  grpc::ServerUnaryReactor* Query(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* GetPoolStats(grpc::CallbackServerContext* context,
                                         const v1::GetPoolStatsRequest* request,
                                         v1::PoolStats* response) override;
  grpc::ServerWriteReactor<v1::PoolStats>* StreamPoolStats(
      grpc::CallbackServerContext* context,
      const v1::StreamPoolStatsRequest* request) override;

  // Ends stats streams (they would otherwise hold up shutdown).
  void EndStreams();

 private:
  class QueryCall;

  engine::QueryEngine& engine_;
  const ServiceOptions options_;
  metrics::Metrics* const metrics_;
  AccessControl access_;
  PeriodicStreams<v1::PoolStats> streams_;
};

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_DATABASE_SERVICE_H_
