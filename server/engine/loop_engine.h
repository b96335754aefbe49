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
// Pipelining: when every connection the pool may hold is busy and nobody
// waits for one, a statement that may share (StatementProfiles: a query or
// DML statement with no session effect, seen before and short in the
// backend) joins a busy connection instead of queueing, the one with the
// fewest statements in flight, up to `pipeline_depth` on one connection.
// Each keeps its own Sync, so an error stays its caller's (db::Pipeline).
// Such statements that had to queue in the pool anyway are taken out of
// the queue (oldest first) by a shared connection that has room. A
// connection goes back to the pool once its last statement is done.
//
// Batches (ExecuteBatch) run alone on a connection of their own, in one
// flight: BEGIN, the statements, COMMIT, one Sync (db::AsyncQuery).
//
// Interactive transactions pin a leased connection on its loop: the lease
// counts one member of the connection for as long as the transaction is
// open, so it never goes back to the pool or takes joiners; each statement
// joins it on its loop like any other, and holds no thread while it waits
// or idles. What the statements leave in the session is collected and
// cleaned after COMMIT or ROLLBACK, as for any caller. A reaper thread
// rolls back transactions past their idle timeout or lifetime
// (TransactionTable).
//
// Owned by whoever builds the server. The pool must outlive it, and it
// must outlive every call submitted to it (the gRPC server's Wait sees to
// that). Thread-safe. Submit, Snapshot and Serving never block; the
// destructor rolls back the transactions still open and blocks until they
// and the statements in flight have finished and the threads have exited.
#ifndef DBPOOL_SERVER_ENGINE_LOOP_ENGINE_H_
#define DBPOOL_SERVER_ENGINE_LOOP_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "server/db/query_limits.h"
#include "server/engine/query_engine.h"
#include "server/engine/statement_profiles.h"
#include "server/engine/transactions.h"
#include "server/pool/connection_pool.h"

namespace dbpool::engine {

struct LoopEngineOptions {
  // I/O threads (DBPOOL_IO_THREADS); at least 1.
  int io_threads = 1;
  // Statements in flight on one connection at most (DB_PIPELINE_DEPTH);
  // 1 turns pipelining off.
  int pipeline_depth = 1;
  db::QueryLimits limits;
  TransactionLimits transactions;
};

class LoopEngine final : public QueryEngine {
 public:
  // `pool`'s connections must be db::PgConnections.
  LoopEngine(pool::ConnectionPool& pool, LoopEngineOptions options);
  ~LoopEngine() override;
  LoopEngine(const LoopEngine&) = delete;
  LoopEngine& operator=(const LoopEngine&) = delete;

  std::shared_ptr<QueryHandle> Submit(QueryJob job, QueryDone done) override;
  std::shared_ptr<StreamHandle> SubmitStream(QueryJob job, StreamSink& sink) override;
  std::shared_ptr<QueryHandle> BeginTransaction(TransactionOptions options,
                                                BeginDone done) override;
  void EndTransaction(std::string transaction_id, std::string caller, TransactionEnd end,
                      EndDone done) override;
  pool::PoolStats Snapshot() const override;
  bool Serving() const override;

  // Open transactions and the age of the oldest, for metrics.
  int OpenTransactions() const { return transactions_.open(); }
  absl::Duration OldestTransactionAge() const;

 private:
  class Call;
  class Conn;
  class Loop;

  // Submit and SubmitStream: refuses what may not run, else starts the
  // call in its transaction, on a shared connection, or in the pool's
  // queue. The outcome goes to `sink` when there is one, else to `done`.
  std::shared_ptr<StreamHandle> Start(QueryJob job, QueryDone done, StreamSink* sink);
  // The loop of the calling thread when it is one of ours, so that a
  // connection released there is reused there; else the next in turn.
  Loop& PickLoop();
  // Waits in the pool for a connection of the call's own.
  void Acquire(std::shared_ptr<Call> call);
  // Puts `call` on the shareable connection with the fewest statements, if
  // one has room.
  bool TryJoin(const std::shared_ptr<Call>& call);
  // Connections that take joiners; their `members` count. The loops list
  // and unlist them, joiners pick from them.
  void List(Conn& conn);
  void Unlist(Conn& conn);
  // Shareable callers queued in the pool, for connections with room to take
  // out of the queue (ConnectionPool::Withdraw).
  void AddShareWaiter(std::shared_ptr<Call> call);
  std::vector<std::shared_ptr<Call>> PullWaiters(Conn& conn);
  // A call left `conn` (done, or sent elsewhere).
  void Leave(Conn& conn);
  // No call is on `conn` or on its way to it; from then on none can join.
  bool Vacate(Conn& conn);
  // Sends `call` to `conn`, pinned by a transaction, on its loop.
  void JoinPinned(std::shared_ptr<Call> call, Conn& conn);
  // The COMMIT or ROLLBACK of the transaction on `conn`, counted as one of
  // its members, ready to post to (or place on) its loop.
  std::shared_ptr<Call> MakeEnd(const std::string& id, Conn& conn, TransactionEnd end,
                                TransactionOutcome outcome, std::string why, EndDone done);
  // Ends the transaction on `conn` for `done`, from any thread.
  void End(const std::string& id, Conn& conn, TransactionEnd end,
           TransactionOutcome outcome, std::string why, EndDone done);
  void WakeReaper();
  // Rolls back expired transactions; the reaper thread.
  void ReapLoop();

  pool::ConnectionPool& pool_;
  const LoopEngineOptions options_;
  StatementProfiles profiles_;
  TransactionTable transactions_;
  std::mutex share_mu_;
  std::vector<Conn*> shareable_ ABSL_GUARDED_BY(share_mu_);
  std::deque<std::shared_ptr<Call>> share_waiters_ ABSL_GUARDED_BY(share_mu_);
  std::vector<std::unique_ptr<Loop>> loops_;
  std::atomic<uint32_t> next_loop_{0};

  std::mutex reap_mu_;
  std::condition_variable reap_wake_;
  bool reap_stop_ ABSL_GUARDED_BY(reap_mu_) = false;
  std::thread reaper_;
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_LOOP_ENGINE_H_
