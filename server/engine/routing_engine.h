// RoutingEngine: one QueryEngine over a primary and its streaming read
// replicas, each an engine of its own (a LoopEngine on its own pool).
//
// Reads (read_only jobs, read-only transactions, read_only streams) go to a
// routable replica, the one with the fewest calls outstanding; everything
// else goes to the primary. A replica is routable when it answered the last
// probe, is still in recovery, and its replay lag is within max_lag. The lag
// is measured without comparing clocks: every probe samples the primary's
// flushed WAL position, and a replica's lag is the age of the newest sample
// it has replayed.
//
// Read-your-writes: a successful job that was not read_only learns a WAL
// position at or past its commit (pg_current_wal_insert_lsn() read after
// the job completed; concurrent writes share one read), returned as
// QueryResult::commit_lsn. A read carrying min_lsn goes only to a replica
// known to have replayed that far; if none is, it waits up to `wait` while
// the replicas are polled, then goes to the primary. A read that failed on
// a replica because the replica was lost (UNAVAILABLE) or cancelled by
// recovery (40001) runs once more elsewhere, and the replica is skipped
// until a probe finds it healthy again.
//
// Owned by the server; the engines it routes to are not owned and must
// outlive it. Thread-safe; nothing blocks but the destructor, which waits
// for a probe in flight. A background thread probes every probe_interval
// and serves the reads waiting for min_lsn.
#ifndef DBPOOL_SERVER_ENGINE_ROUTING_ENGINE_H_
#define DBPOOL_SERVER_ENGINE_ROUTING_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/query_engine.h"

namespace dbpool::engine {

struct RoutingOptions {
  // DB_REPLICA_MAX_LAG_MS: replicas further behind take no reads.
  absl::Duration max_lag;
  // DB_REPLICA_LAG_PROBE_MS.
  absl::Duration probe_interval;
  // DB_REPLICA_WAIT_MS: longest a min_lsn read waits for a replica.
  absl::Duration wait;
  // DB_TX_MAX_LIFETIME_MS: a replica transaction not ended by then is
  // forgotten (its engine has rolled it back).
  absl::Duration transaction_lifetime;
};

// Why a call went where it went (db_route_total's reason label).
enum class RouteReason {
  kWrite,        // not read_only: the primary
  kRead,         // read_only: a routable replica
  kConsistency,  // read_only but CONSISTENCY_PRIMARY
  kNoReplica,    // read_only, no replica routable
  kMinLsn,       // read_only, no replica reached min_lsn in time
  kRetry,        // a read run again after its replica failed
  kTransaction,  // a statement or end of a transaction, to its node
};
const char* RouteReasonName(RouteReason reason);

// The target of a primary decision, in RouteObserver calls.
inline constexpr char kPrimaryTarget[] = "primary";

// Told of every routing decision: the target (kPrimaryTarget or a replica's
// name) and the reason. Runs on any thread; must not block.
using RouteObserver = std::function<void(const std::string& target, RouteReason reason)>;

class RoutingEngine final : public QueryEngine {
 public:
  struct Replica {
    std::string name;  // host:port
    QueryEngine* engine;
  };

  RoutingEngine(QueryEngine& primary, std::vector<Replica> replicas, RoutingOptions options,
                RouteObserver observer);
  ~RoutingEngine() override;
  RoutingEngine(const RoutingEngine&) = delete;
  RoutingEngine& operator=(const RoutingEngine&) = delete;

  std::shared_ptr<QueryHandle> Submit(QueryJob job, QueryDone done) override;
  std::shared_ptr<StreamHandle> SubmitStream(QueryJob job, StreamSink& sink) override;
  std::shared_ptr<QueryHandle> BeginTransaction(TransactionOptions options,
                                                BeginDone done) override;
  void EndTransaction(std::string transaction_id, std::string caller, TransactionEnd end,
                      EndDone done) override;
  // The primary's.
  pool::PoolStats Snapshot() const override;
  bool Serving() const override;
  std::vector<ReplicaState> Replicas() const override;

  // Ends probing; reads waiting for a replica go to the primary. Blocks
  // for a probe in flight. Later calls do nothing; the destructor calls it.
  void Stop();

  // One probe of the primary and every replica, now; blocks until they
  // answer or a second passes. The background thread calls it every
  // probe_interval; tests call it to decide when probes happen.
  void ProbeNow();

 private:
  class Routed;
  struct Node;
  struct Waiter;

  // Sends `job` where it belongs; `retried` when it failed once already.
  void Route(QueryJob job, QueryDone done, std::shared_ptr<Routed> routed, bool retried);
  void ToPrimary(QueryJob job, QueryDone done, const std::shared_ptr<Routed>& routed,
                 RouteReason reason);
  void ToReplica(Node& node, QueryJob job, QueryDone done, std::shared_ptr<Routed> routed,
                 RouteReason reason, bool may_retry);
  // The routable replica with the fewest outstanding calls among those
  // known to have replayed `min_lsn`; null when none.
  Node* Pick(uint64_t min_lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AnyRoutable() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Where a stream or a Begin goes, which never wait for min_lsn: the
  // replica Pick finds (null: the primary) and why.
  std::pair<Node*, RouteReason> PickWithoutWaiting(bool read_only, bool primary_only,
                                                   uint64_t min_lsn);
  void Observe(const std::string& target, RouteReason reason) const;
  // A call on `node` found it gone: no reads until a probe says otherwise.
  void MarkFailed(Node& node);

  // Runs `then` with a WAL position read after this call.
  void AfterCommit(absl::AnyInvocable<void(std::string) &&> then);
  void FetchCommitLsn();

  // The replay position of each of `nodes` now (0 where it did not
  // answer); blocks up to `limit`.
  std::vector<std::optional<std::pair<uint64_t, bool>>> ReadReplay(
      const std::vector<Node*>& nodes, absl::Duration limit);
  // Dispatches the waiters a replica now satisfies, and sends those out of
  // time to the primary.
  void ServeWaiters();
  void CancelWaiter(const Routed* routed);
  // The engine running `transaction_id` (the primary unless a replica
  // began it), the decision counted.
  QueryEngine& OwnerOf(const std::string& transaction_id);
  void Run();

  QueryEngine& primary_;
  const RoutingOptions options_;
  const RouteObserver observer_;
  std::vector<std::unique_ptr<Node>> nodes_;

  mutable absl::Mutex mu_;
  // (when, the primary's flushed WAL position then), oldest first.
  std::deque<std::pair<absl::Time, uint64_t>> samples_ ABSL_GUARDED_BY(mu_);
  std::deque<std::unique_ptr<Waiter>> waiters_ ABSL_GUARDED_BY(mu_);
  // Transactions begun on a replica: id -> (node, when begun).
  absl::flat_hash_map<std::string, std::pair<Node*, absl::Time>> replica_transactions_
      ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  size_t next_pick_ ABSL_GUARDED_BY(mu_) = 0;

  absl::Mutex commit_mu_;
  std::vector<absl::AnyInvocable<void(std::string) &&>> commit_waiting_
      ABSL_GUARDED_BY(commit_mu_);
  bool commit_fetching_ ABSL_GUARDED_BY(commit_mu_) = false;

  // Serializes probes (the thread's and ProbeNow's).
  absl::Mutex probe_mu_;
  std::thread thread_;
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_ROUTING_ENGINE_H_
