// WorkerEngine: the QueryEngine of today's server. A call waits for a pooled
// connection without a thread (ConnectionPool::Acquire); once it has one,
// db::RunQuery runs the statement on an executor worker, which blocks on
// that connection until the result, the deadline or a cancel.
//
// The executor has one worker per pooled connection, so a leased connection
// never waits for a thread.
//
// Owned by whoever builds the server; the pool must outlive it, and it must
// outlive every job submitted to it (the gRPC server's Wait sees to that).
// Thread-safe. Submit, Snapshot and Serving never block; the destructor
// blocks until the statements already running have finished.
#ifndef DBPOOL_SERVER_ENGINE_WORKER_ENGINE_H_
#define DBPOOL_SERVER_ENGINE_WORKER_ENGINE_H_

#include <memory>

#include "server/common/executor.h"
#include "server/db/query_runner.h"
#include "server/engine/query_engine.h"
#include "server/pool/connection_pool.h"

namespace dbpool::engine {

class WorkerEngine final : public QueryEngine {
 public:
  // `pool`'s connections must be db::PgConnections.
  WorkerEngine(pool::ConnectionPool& pool, db::QueryLimits limits);

  std::shared_ptr<QueryHandle> Submit(QueryJob job, QueryDone done) override;
  pool::PoolStats Snapshot() const override;
  bool Serving() const override;

 private:
  class Run;

  pool::ConnectionPool& pool_;
  const db::QueryLimits limits_;
  Executor executor_;
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_WORKER_ENGINE_H_
