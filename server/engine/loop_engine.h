// LoopEngine: the QueryEngine that runs statements from a few event loops.
//
// A call waits for a pooled connection without a thread
// (ConnectionPool::Acquire keeps FIFO order, the queue bound, the acquire
// timeout, outage and drain behaviour). Once it has one, an I/O thread
// drives the statement with libpq in non-blocking pipeline mode
// (db::AsyncQuery) on epoll: no thread per connection, no blocking call on
// the query path. A connection released on an I/O thread goes to the next
// waiter on that same thread, so under load a loop moves from one reply to
// the next statement without a hand-off.
//
// Owned by whoever builds the server. The pool must outlive it, and it
// must outlive every call submitted to it (the gRPC server's Wait sees to
// that). Thread-safe. Submit, Snapshot and Serving never block; the
// destructor blocks until the statements in flight have finished and the
// I/O threads have exited.
#ifndef DBPOOL_SERVER_ENGINE_LOOP_ENGINE_H_
#define DBPOOL_SERVER_ENGINE_LOOP_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "server/db/query_limits.h"
#include "server/engine/query_engine.h"
#include "server/pool/connection_pool.h"

namespace dbpool::engine {

struct LoopEngineOptions {
  // I/O threads (DBPOOL_IO_THREADS); at least 1.
  int io_threads = 1;
  db::QueryLimits limits;
};

class LoopEngine final : public QueryEngine {
 public:
  // `pool`'s connections must be db::PgConnections.
  LoopEngine(pool::ConnectionPool& pool, LoopEngineOptions options);
  ~LoopEngine() override;
  LoopEngine(const LoopEngine&) = delete;
  LoopEngine& operator=(const LoopEngine&) = delete;

  std::shared_ptr<QueryHandle> Submit(QueryJob job, QueryDone done) override;
  pool::PoolStats Snapshot() const override;
  bool Serving() const override;

 private:
  class Call;
  class Loop;

  // The loop of the calling thread when it is one of ours, so that a
  // connection released there is reused there; else the next in turn.
  Loop& PickLoop();

  pool::ConnectionPool& pool_;
  const LoopEngineOptions options_;
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<uint32_t> next_loop_{0};
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_LOOP_ENGINE_H_
