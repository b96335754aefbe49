#include "server/engine/routing_engine.h"

#include <algorithm>
#include <optional>

#include "absl/synchronization/notification.h"
#include "server/db/lsn.h"
#include "server/db/sql_state.h"
#include "spdlog/spdlog.h"

namespace dbpool::engine {
namespace {

// A probe that takes longer than this counts as unanswered.
constexpr absl::Duration kProbeLimit = absl::Seconds(1);
// How often replicas are asked for their replay position while reads wait
// for one to reach their min_lsn: often enough that a wait ends soon after
// the WAL arrives, seldom enough not to load the replicas.
constexpr absl::Duration kWaiterPoll = absl::Milliseconds(1);
constexpr absl::Duration kCommitLsnLimit = absl::Seconds(5);

QueryJob SqlJob(const char* sql, absl::Time deadline) {
  QueryJob job;
  job.statements.resize(1);
  job.statements[0].request.set_sql(sql);
  job.deadline = deadline;
  return job;
}

// A job run to its end by a thread that waits for it.
struct Blocking {
  absl::Notification done;
  QueryResult result;
};

std::shared_ptr<Blocking> Start(QueryEngine& engine, const char* sql, absl::Time deadline) {
  auto b = std::make_shared<Blocking>();
  engine.Submit(SqlJob(sql, deadline), [b](QueryResult r) {
    b->result = std::move(r);
    b->done.Notify();
  });
  return b;
}

// Row 0 of a finished Blocking, when it succeeded with one.
const v1::Row* FirstRow(Blocking& b, absl::Time deadline) {
  if (!b.done.WaitForNotificationWithDeadline(deadline)) return nullptr;
  if (!b.result.status.ok() || b.result.responses.empty() ||
      b.result.responses[0].rows_size() == 0) {
    return nullptr;
  }
  return &b.result.responses[0].rows(0);
}

std::optional<uint64_t> LsnValue(const v1::Row& row, int column) {
  if (row.values_size() <= column || !row.values(column).has_string_value()) {
    return std::nullopt;
  }
  return db::ParseLsn(row.values(column).string_value());
}

// Replicas lost or cancelled by recovery: the read itself was fine.
bool WorthRetrying(const absl::Status& status) {
  if (absl::IsUnavailable(status)) return true;
  const std::optional<std::string> state = db::SqlStateOf(status);
  return state.has_value() && *state == "40001";
}

}  // namespace

const char* RouteReasonName(RouteReason reason) {
  switch (reason) {
    case RouteReason::kWrite:
      return "write";
    case RouteReason::kRead:
      return "read";
    case RouteReason::kConsistency:
      return "consistency";
    case RouteReason::kNoReplica:
      return "no_replica";
    case RouteReason::kMinLsn:
      return "min_lsn";
    case RouteReason::kRetry:
      return "retry";
    case RouteReason::kTransaction:
      return "transaction";
  }
  return "unknown";
}

struct RoutingEngine::Node {
  std::string name;
  QueryEngine* engine;
  std::atomic<int> outstanding{0};
  // Guarded by the engine's mu_.
  bool answered = false;
  bool in_recovery = false;
  uint64_t replay_lsn = 0;
  absl::Duration lag = absl::InfiniteDuration();
  // A call found it gone since the last probe.
  bool failed = false;

  bool routable(absl::Duration max_lag) const {
    return answered && in_recovery && !failed && lag <= max_lag;
  }
};

// The handle a caller gets: the call may move from a wait to a replica to
// the primary, and a cancel must reach wherever it is.
class RoutingEngine::Routed final : public QueryHandle {
 public:
  explicit Routed(RoutingEngine* engine) : engine_(engine) {}

  void Cancel() override {
    std::shared_ptr<QueryHandle> inner;
    {
      absl::MutexLock lock(&mu_);
      cancelled_ = true;
      inner = inner_;
    }
    if (inner != nullptr) {
      inner->Cancel();
    } else {
      engine_->CancelWaiter(this);
    }
  }

  void Attach(std::shared_ptr<QueryHandle> inner) {
    bool cancelled;
    {
      absl::MutexLock lock(&mu_);
      inner_ = inner;
      cancelled = cancelled_;
    }
    if (cancelled) inner->Cancel();
  }

  bool cancelled() const {
    absl::MutexLock lock(&mu_);
    return cancelled_;
  }

 private:
  RoutingEngine* const engine_;
  mutable absl::Mutex mu_;
  std::shared_ptr<QueryHandle> inner_ ABSL_GUARDED_BY(mu_);
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

struct RoutingEngine::Waiter {
  QueryJob job;
  QueryDone done;
  std::shared_ptr<Routed> routed;
  absl::Time give_up;
};

RoutingEngine::RoutingEngine(QueryEngine& primary, std::vector<Replica> replicas,
                             RoutingOptions options, RouteObserver observer)
    : primary_(primary), options_(options), observer_(std::move(observer)) {
  for (Replica& r : replicas) {
    auto node = std::make_unique<Node>();
    node->name = std::move(r.name);
    node->engine = r.engine;
    nodes_.push_back(std::move(node));
  }
  if (!nodes_.empty()) thread_ = std::thread([this] { Run(); });
}

RoutingEngine::~RoutingEngine() { Stop(); }

void RoutingEngine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  // Reads still waiting for a replica go to the primary, which answers
  // them (or refuses them, draining) before it is destroyed.
  std::deque<std::unique_ptr<Waiter>> waiters;
  {
    absl::MutexLock lock(&mu_);
    waiters.swap(waiters_);
  }
  for (auto& w : waiters) {
    ToPrimary(std::move(w->job), std::move(w->done), w->routed, RouteReason::kMinLsn);
  }
}

void RoutingEngine::Observe(const std::string& target, RouteReason reason) const {
  if (observer_) observer_(target, reason);
}

std::shared_ptr<QueryHandle> RoutingEngine::Submit(QueryJob job, QueryDone done) {
  auto routed = std::make_shared<Routed>(this);
  Route(std::move(job), std::move(done), routed, /*retried=*/false);
  return routed;
}

void RoutingEngine::Route(QueryJob job, QueryDone done, std::shared_ptr<Routed> routed,
                          bool retried) {
  if (!job.transaction_id.empty()) {
    QueryEngine& owner = OwnerOf(job.transaction_id);
    routed->Attach(owner.Submit(std::move(job), std::move(done)));
    return;
  }
  if (!job.read_only || nodes_.empty()) {
    ToPrimary(std::move(job), std::move(done), routed, RouteReason::kWrite);
    return;
  }
  if (job.primary_only) {
    ToPrimary(std::move(job), std::move(done), routed, RouteReason::kConsistency);
    return;
  }
  Node* node = nullptr;
  RouteReason fallback = RouteReason::kNoReplica;
  {
    absl::MutexLock lock(&mu_);
    node = Pick(job.min_lsn);
    if (node == nullptr && AnyRoutable()) {
      fallback = RouteReason::kMinLsn;
      const absl::Time give_up = std::min(absl::Now() + options_.wait, job.deadline);
      if (!retried && options_.wait > absl::ZeroDuration() && !stopping_) {
        auto waiter = std::make_unique<Waiter>();
        waiter->job = std::move(job);
        waiter->done = std::move(done);
        waiter->routed = std::move(routed);
        waiter->give_up = give_up;
        waiters_.push_back(std::move(waiter));
        return;
      }
    }
  }
  if (node == nullptr) {
    ToPrimary(std::move(job), std::move(done), routed,
              retried ? RouteReason::kRetry : fallback);
    return;
  }
  ToReplica(*node, std::move(job), std::move(done), std::move(routed),
            retried ? RouteReason::kRetry : RouteReason::kRead, /*may_retry=*/!retried);
}

void RoutingEngine::ToPrimary(QueryJob job, QueryDone done,
                              const std::shared_ptr<Routed>& routed, RouteReason reason) {
  Observe(kPrimaryTarget, reason);
  if (job.read_only || nodes_.empty()) {
    routed->Attach(primary_.Submit(std::move(job), std::move(done)));
    return;
  }
  routed->Attach(primary_.Submit(
      std::move(job), [this, done = std::move(done)](QueryResult result) mutable {
        if (!result.status.ok()) {
          std::move(done)(std::move(result));
          return;
        }
        AfterCommit([result = std::move(result),
                     done = std::move(done)](std::string lsn) mutable {
          result.commit_lsn = std::move(lsn);
          std::move(done)(std::move(result));
        });
      }));
}

void RoutingEngine::ToReplica(Node& node, QueryJob job, QueryDone done,
                              std::shared_ptr<Routed> routed, RouteReason reason,
                              bool may_retry) {
  Observe(node.name, reason);
  node.outstanding.fetch_add(1, std::memory_order_relaxed);
  std::optional<QueryJob> copy;
  if (may_retry) copy = job;
  routed->Attach(node.engine->Submit(
      std::move(job), [this, &node, routed, copy = std::move(copy),
                       done = std::move(done)](QueryResult result) mutable {
        node.outstanding.fetch_sub(1, std::memory_order_relaxed);
        if (copy.has_value() && WorthRetrying(result.status) && !routed->cancelled() &&
            absl::Now() < copy->deadline) {
          if (absl::IsUnavailable(result.status)) MarkFailed(node);
          Route(*std::move(copy), std::move(done), std::move(routed), /*retried=*/true);
          return;
        }
        std::move(done)(std::move(result));
      }));
}

RoutingEngine::Node* RoutingEngine::Pick(uint64_t min_lsn) {
  Node* best = nullptr;
  // Ties go round: calls that never overlap would otherwise all go to the
  // first replica.
  const size_t start = next_pick_++;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const auto& node = nodes_[(start + i) % nodes_.size()];
    if (!node->routable(options_.max_lag) || node->replay_lsn < min_lsn) continue;
    if (best == nullptr || node->outstanding.load(std::memory_order_relaxed) <
                               best->outstanding.load(std::memory_order_relaxed)) {
      best = node.get();
    }
  }
  return best;
}

bool RoutingEngine::AnyRoutable() const {
  return std::any_of(nodes_.begin(), nodes_.end(),
                     [this](const auto& n) { return n->routable(options_.max_lag); });
}

void RoutingEngine::MarkFailed(Node& node) {
  absl::MutexLock lock(&mu_);
  if (!node.failed) spdlog::warn("replica {} lost a call; no reads until it answers", node.name);
  node.failed = true;
}

std::pair<RoutingEngine::Node*, RouteReason> RoutingEngine::PickWithoutWaiting(
    bool read_only, bool primary_only, uint64_t min_lsn) {
  if (!read_only || nodes_.empty()) return {nullptr, RouteReason::kWrite};
  if (primary_only) return {nullptr, RouteReason::kConsistency};
  absl::MutexLock lock(&mu_);
  Node* node = Pick(min_lsn);
  if (node != nullptr) return {node, RouteReason::kRead};
  return {nullptr, AnyRoutable() ? RouteReason::kMinLsn : RouteReason::kNoReplica};
}

// A stream is not retried (rows may have reached the caller) and does not
// wait for min_lsn (a caller of a long read can afford the primary).
std::shared_ptr<StreamHandle> RoutingEngine::SubmitStream(QueryJob job, StreamSink& sink) {
  if (!job.transaction_id.empty()) {
    return OwnerOf(job.transaction_id).SubmitStream(std::move(job), sink);
  }
  const auto [node, reason] = PickWithoutWaiting(job.read_only, job.primary_only, job.min_lsn);
  if (node == nullptr) {
    Observe(kPrimaryTarget, reason);
    return primary_.SubmitStream(std::move(job), sink);
  }
  Observe(node->name, reason);
  return node->engine->SubmitStream(std::move(job), sink);
}

std::shared_ptr<QueryHandle> RoutingEngine::BeginTransaction(TransactionOptions options,
                                                             BeginDone done) {
  // Named, not bound: the callback below captures the node.
  const std::pair<Node*, RouteReason> picked =
      PickWithoutWaiting(options.read_only, options.primary_only, options.min_lsn);
  Node* const node = picked.first;
  const RouteReason reason = picked.second;
  if (node == nullptr) {
    Observe(kPrimaryTarget, reason);
    return primary_.BeginTransaction(std::move(options), std::move(done));
  }
  Observe(node->name, reason);
  return node->engine->BeginTransaction(
      std::move(options),
      [this, node, done = std::move(done)](absl::StatusOr<BegunTransaction> begun) mutable {
        if (begun.ok()) {
          absl::MutexLock lock(&mu_);
          replica_transactions_[begun->transaction_id] = {node, absl::Now()};
        }
        std::move(done)(std::move(begun));
      });
}

void RoutingEngine::EndTransaction(std::string transaction_id, std::string caller,
                                   TransactionEnd end, EndDone done) {
  QueryEngine& owner = OwnerOf(transaction_id);
  if (&owner != &primary_) {
    std::string id = transaction_id;
    owner.EndTransaction(
        std::move(transaction_id), std::move(caller), end,
        [this, id = std::move(id),
         done = std::move(done)](absl::StatusOr<EndedTransaction> ended) mutable {
          {
            absl::MutexLock lock(&mu_);
            replica_transactions_.erase(id);
          }
          std::move(done)(std::move(ended));
        });
    return;
  }
  if (end == TransactionEnd::kRollback || nodes_.empty()) {
    primary_.EndTransaction(std::move(transaction_id), std::move(caller), end, std::move(done));
    return;
  }
  primary_.EndTransaction(
      std::move(transaction_id), std::move(caller), end,
      [this, done = std::move(done)](absl::StatusOr<EndedTransaction> ended) mutable {
        if (!ended.ok()) {
          std::move(done)(std::move(ended));
          return;
        }
        AfterCommit([done = std::move(done)](std::string lsn) mutable {
          std::move(done)(EndedTransaction{std::move(lsn)});
        });
      });
}

QueryEngine& RoutingEngine::OwnerOf(const std::string& transaction_id) {
  Node* node = nullptr;
  {
    absl::MutexLock lock(&mu_);
    auto it = replica_transactions_.find(transaction_id);
    if (it != replica_transactions_.end()) node = it->second.first;
  }
  Observe(node != nullptr ? node->name : kPrimaryTarget, RouteReason::kTransaction);
  return node != nullptr ? *node->engine : primary_;
}

void RoutingEngine::AfterCommit(absl::AnyInvocable<void(std::string) &&> then) {
  {
    absl::MutexLock lock(&commit_mu_);
    commit_waiting_.push_back(std::move(then));
    if (commit_fetching_) return;
    commit_fetching_ = true;
  }
  FetchCommitLsn();
}

// Every write waiting now completed before this read is sent, so the
// position read is at or past each one's commit record; the writes that
// complete meanwhile wait for the next read.
void RoutingEngine::FetchCommitLsn() {
  std::vector<absl::AnyInvocable<void(std::string) &&>> batch;
  {
    absl::MutexLock lock(&commit_mu_);
    batch.swap(commit_waiting_);
  }
  primary_.Submit(
      SqlJob("SELECT pg_current_wal_insert_lsn()::text", absl::Now() + kCommitLsnLimit),
      [this, batch = std::move(batch)](QueryResult result) mutable {
        std::string lsn;
        if (result.status.ok() && !result.responses.empty() &&
            result.responses[0].rows_size() == 1) {
          if (std::optional<uint64_t> v = LsnValue(result.responses[0].rows(0), 0)) {
            lsn = db::FormatLsn(*v);
          }
        } else {
          // The writes stand; their callers only lose the token.
          spdlog::warn("cannot read the commit position: {}",
                       std::string(result.status.message()));
        }
        for (auto& then : batch) std::move(then)(lsn);
        {
          absl::MutexLock lock(&commit_mu_);
          if (commit_waiting_.empty()) {
            commit_fetching_ = false;
            return;
          }
        }
        FetchCommitLsn();
      });
}

pool::PoolStats RoutingEngine::Snapshot() const { return primary_.Snapshot(); }

bool RoutingEngine::Serving() const { return primary_.Serving(); }

std::vector<ReplicaState> RoutingEngine::Replicas() const {
  std::vector<ReplicaState> out;
  out.reserve(nodes_.size());
  absl::MutexLock lock(&mu_);
  for (const auto& node : nodes_) {
    ReplicaState s;
    s.name = node->name;
    s.pool = node->engine->Snapshot();
    s.routable = node->routable(options_.max_lag);
    s.replay_lag = node->lag;
    s.replay_lsn = node->replay_lsn;
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::optional<std::pair<uint64_t, bool>>> RoutingEngine::ReadReplay(
    const std::vector<Node*>& nodes, absl::Duration limit) {
  const absl::Time deadline = absl::Now() + limit;
  std::vector<std::shared_ptr<Blocking>> asks;
  asks.reserve(nodes.size());
  for (Node* node : nodes) {
    asks.push_back(Start(*node->engine,
                         "SELECT pg_last_wal_replay_lsn()::text, pg_is_in_recovery()",
                         deadline));
  }
  std::vector<std::optional<std::pair<uint64_t, bool>>> out(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    const v1::Row* row = FirstRow(*asks[i], deadline + kProbeLimit);
    if (row == nullptr || row->values_size() != 2) continue;
    const bool in_recovery = row->values(1).has_bool_value() && row->values(1).bool_value();
    out[i] = {LsnValue(*row, 0).value_or(0), in_recovery};
  }
  return out;
}

void RoutingEngine::ProbeNow() {
  absl::MutexLock probe(&probe_mu_);
  const absl::Time deadline = absl::Now() + kProbeLimit;
  // The primary first: a replica that has replayed this has everything the
  // primary had when the probe began.
  std::shared_ptr<Blocking> flushed =
      Start(primary_, "SELECT pg_current_wal_flush_lsn()::text", deadline);
  const v1::Row* row = FirstRow(*flushed, deadline + kProbeLimit);
  std::optional<uint64_t> primary_lsn;
  if (row != nullptr) primary_lsn = LsnValue(*row, 0);
  const absl::Time sampled = absl::Now();

  std::vector<Node*> nodes;
  for (const auto& n : nodes_) nodes.push_back(n.get());
  const auto replay = ReadReplay(nodes, kProbeLimit);

  absl::MutexLock lock(&mu_);
  if (primary_lsn.has_value()) samples_.emplace_back(sampled, *primary_lsn);
  // Samples are kept long enough that a replica behind all of them is
  // certainly past max_lag.
  const absl::Duration keep = 2 * options_.max_lag + 2 * options_.probe_interval;
  while (samples_.size() > 1 && sampled - samples_.front().first > keep) samples_.pop_front();
  for (size_t i = 0; i < nodes.size(); ++i) {
    Node& node = *nodes[i];
    const bool was_routable = node.routable(options_.max_lag);
    if (!replay[i].has_value()) {
      node.answered = false;
    } else {
      node.answered = true;
      node.failed = false;
      node.replay_lsn = std::max(node.replay_lsn, replay[i]->first);
      node.in_recovery = replay[i]->second;
      // It has replayed every sample up to some k and not k+1: it is at
      // least as far behind as k+1 is old. Taking that bound, not k's age,
      // keeps the spacing of probes (long while another replica does not
      // answer) out of the figure. Behind every sample kept: the oldest's
      // age.
      node.lag = samples_.empty() ? absl::ZeroDuration() : sampled - samples_.front().first;
      for (size_t s = samples_.size(); s-- > 0;) {
        if (samples_[s].second <= node.replay_lsn) {
          node.lag = s + 1 == samples_.size() ? absl::ZeroDuration()
                                              : sampled - samples_[s + 1].first;
          break;
        }
      }
    }
    const bool routable = node.routable(options_.max_lag);
    if (routable != was_routable) {
      if (routable) {
        spdlog::info("replica {} takes reads (lag {})", node.name,
                     absl::FormatDuration(node.lag));
      } else if (!node.answered) {
        spdlog::warn("replica {} takes no reads: it did not answer", node.name);
      } else if (!node.in_recovery) {
        spdlog::warn("replica {} takes no reads: it is not in recovery (promoted?)",
                     node.name);
      } else {
        spdlog::warn("replica {} takes no reads: replay lag {} is over {}", node.name,
                     absl::FormatDuration(node.lag), absl::FormatDuration(options_.max_lag));
      }
    }
  }
  // Transactions their engines have long rolled back.
  const absl::Duration forget = options_.transaction_lifetime + absl::Minutes(1);
  for (auto it = replica_transactions_.begin(); it != replica_transactions_.end();) {
    if (sampled - it->second.second > forget) {
      replica_transactions_.erase(it++);
    } else {
      ++it;
    }
  }
}

void RoutingEngine::ServeWaiters() {
  std::vector<Node*> candidates;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& n : nodes_) {
      if (n->routable(options_.max_lag)) candidates.push_back(n.get());
    }
  }
  const auto replay = ReadReplay(candidates, kProbeLimit);
  std::vector<std::unique_ptr<Waiter>> ready;
  std::vector<std::unique_ptr<Waiter>> late;
  std::vector<Node*> targets;
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (replay[i].has_value()) {
        candidates[i]->replay_lsn = std::max(candidates[i]->replay_lsn, replay[i]->first);
      }
    }
    const absl::Time now = absl::Now();
    std::deque<std::unique_ptr<Waiter>> still;
    for (auto& w : waiters_) {
      if (Node* node = Pick(w->job.min_lsn)) {
        targets.push_back(node);
        ready.push_back(std::move(w));
      } else if (now >= w->give_up) {
        late.push_back(std::move(w));
      } else {
        still.push_back(std::move(w));
      }
    }
    waiters_.swap(still);
  }
  for (size_t i = 0; i < ready.size(); ++i) {
    ToReplica(*targets[i], std::move(ready[i]->job), std::move(ready[i]->done),
              std::move(ready[i]->routed), RouteReason::kRead, /*may_retry=*/true);
  }
  for (auto& w : late) {
    ToPrimary(std::move(w->job), std::move(w->done), w->routed, RouteReason::kMinLsn);
  }
}

void RoutingEngine::CancelWaiter(const Routed* routed) {
  std::unique_ptr<Waiter> found;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(waiters_.begin(), waiters_.end(),
                           [routed](const auto& w) { return w->routed.get() == routed; });
    if (it == waiters_.end()) return;
    found = std::move(*it);
    waiters_.erase(it);
  }
  QueryResult result;
  result.status = absl::CancelledError("cancelled while waiting for a replica");
  std::move(found->done)(std::move(result));
}

void RoutingEngine::Run() {
  absl::Time next_probe = absl::Now();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      const auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !waiters_.empty();
      };
      mu_.AwaitWithDeadline(absl::Condition(&wake), next_probe);
      if (stopping_) return;
    }
    if (absl::Now() >= next_probe) {
      ProbeNow();
      next_probe = absl::Now() + options_.probe_interval;
    }
    bool waiting;
    {
      absl::MutexLock lock(&mu_);
      waiting = !waiters_.empty();
    }
    if (waiting) {
      ServeWaiters();
      absl::SleepFor(kWaiterPoll);
    }
  }
}

}  // namespace dbpool::engine
