// DatabaseService: the dbpool.v1.DatabaseService implementation on gRPC's
// callback API.
//
// Every call that runs SQL (Query, ExecuteBatch, StreamQuery) and
// BeginTransaction is checked (AccessControl), validated and admitted
// (per-caller in-flight slot) on the gRPC thread, then handed to the
// QueryEngine, whose callback finishes the call: a waiting or running call
// holds no gRPC thread. A caller's cancel reaches the engine, which ends a
// wait at once and cancels a running statement on the server.
//
// Transactions belong to the caller that began them: every call that names
// one (Begin/Commit/Rollback, and Query, ExecuteBatch and StreamQuery with a
// transaction_id) passes the caller's name to the engine, which compares
// owners. Commit and Rollback take no in-flight slot: ending a transaction
// frees a connection and must never wait behind the caller's own queries.
//
// StreamQuery follows the engine's flow control: a chunk is written to the
// caller before the engine is asked for the next one (StreamHandle::Next),
// so a slow reader slows the database read instead of growing memory.
//
// Owned by whoever builds the server; must outlive the grpc::Server, and the
// engine must outlive it. Thread-safe. No method blocks; the destructor
// waits for open stats streams to end.
#ifndef DBPOOL_SERVER_RPC_DATABASE_SERVICE_H_
#define DBPOOL_SERVER_RPC_DATABASE_SERVICE_H_

#include <atomic>
#include <string>

#include "dbpool/v1/database_service.grpc.pb.h"
#include "server/engine/query_engine.h"
#include "server/metrics/metrics.h"
#include "server/rpc/access_control.h"
#include "server/rpc/periodic_streams.h"
#include "server/rpc/request_validation.h"

namespace dbpool::rpc {

// The trailing metadata key of a write's read-your-writes token
// (QueryResponse.commit_lsn), for clients that read trailers, not bodies.
inline constexpr char kCommitLsnKey[] = "dbpool-commit-lsn";

// Filled from config::Config by whoever builds the server.
struct ServiceOptions {
  RequestLimits request;
  // Used when a request sets no timeout; a request can only shorten it. A
  // batch runs within it as a whole.
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

// Query, ExecuteBatch and StreamQuery are registered raw (ByteBuffer in and
// out) so that a request that fails to parse, such as text that is not
// valid UTF-8, gets a clear INVALID_ARGUMENT instead of gRPC's generic
// answer. The transaction calls carry no SQL or values and are typed.
using DatabaseServiceBase = v1::DatabaseService::WithRawCallbackMethod_Query<
    v1::DatabaseService::WithCallbackMethod_GetPoolStats<
        v1::DatabaseService::WithCallbackMethod_StreamPoolStats<
            v1::DatabaseService::WithCallbackMethod_BeginTransaction<
                v1::DatabaseService::WithCallbackMethod_CommitTransaction<
                    v1::DatabaseService::WithCallbackMethod_RollbackTransaction<
                        v1::DatabaseService::WithRawCallbackMethod_ExecuteBatch<
                            v1::DatabaseService::WithRawCallbackMethod_StreamQuery<
                                v1::DatabaseService::Service>>>>>>>>;

class DatabaseService final : public DatabaseServiceBase {
 public:
  // `metrics` may be null (tests that do not look at metrics).
  DatabaseService(engine::QueryEngine& engine, ServiceOptions options,
                  metrics::Metrics* metrics = nullptr);

  // The reply is responses[0] of the engine's result, with the timings.
  grpc::ServerUnaryReactor* Query(grpc::CallbackServerContext* context,
                                  const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  // One engine job with `batch` set. Each result carries the job's acquire
  // wait and queue depth, and its execution time: the statement's own when
  // the engine measured one (QueryResponse.timings.execution), else the
  // whole batch's.
  grpc::ServerUnaryReactor* ExecuteBatch(grpc::CallbackServerContext* context,
                                         const grpc::ByteBuffer* request,
                                         grpc::ByteBuffer* response) override;
  // Writes each chunk as one QueryResponse, then a last one with
  // rows_affected, command_tag and timings (no rows).
  grpc::ServerWriteReactor<grpc::ByteBuffer>* StreamQuery(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;

  // A read_only caller may begin read_only transactions only. If the
  // caller cancels after the engine has begun the transaction, it is
  // rolled back: nobody would learn its id.
  grpc::ServerUnaryReactor* BeginTransaction(
      grpc::CallbackServerContext* context, const v1::BeginTransactionRequest* request,
      v1::BeginTransactionResponse* response) override;
  grpc::ServerUnaryReactor* CommitTransaction(
      grpc::CallbackServerContext* context, const v1::CommitTransactionRequest* request,
      v1::CommitTransactionResponse* response) override;
  grpc::ServerUnaryReactor* RollbackTransaction(
      grpc::CallbackServerContext* context, const v1::RollbackTransactionRequest* request,
      v1::RollbackTransactionResponse* response) override;

  grpc::ServerUnaryReactor* GetPoolStats(grpc::CallbackServerContext* context,
                                         const v1::GetPoolStatsRequest* request,
                                         v1::PoolStats* response) override;
  grpc::ServerWriteReactor<v1::PoolStats>* StreamPoolStats(
      grpc::CallbackServerContext* context,
      const v1::StreamPoolStatsRequest* request) override;

  // Ends stats streams (they would otherwise hold up shutdown).
  void EndStreams();

 private:
  class JobCall;
  class StreamCall;
  class BeginCall;

  // `commit` (null for a rollback) gets the commit's read-your-writes token.
  grpc::ServerUnaryReactor* EndTransaction(grpc::CallbackServerContext* context,
                                           const std::string& transaction_id,
                                           engine::TransactionEnd end,
                                           v1::CommitTransactionResponse* commit);

  engine::QueryEngine& engine_;
  const ServiceOptions options_;
  metrics::Metrics* const metrics_;
  AccessControl access_;
  PeriodicStreams<v1::PoolStats> streams_;
};

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_DATABASE_SERVICE_H_
