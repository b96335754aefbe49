#include "server/pool/connection_pool.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace dbpool::pool {

Lease::Lease(ConnectionPool* pool, std::unique_ptr<Slot> slot,
             absl::Duration wait, int queue_depth)
    : pool_(pool),
      slot_(std::move(slot)),
      wait_(wait),
      queue_depth_on_arrival_(queue_depth) {}

Lease::Lease(Lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)),
      slot_(std::move(other.slot_)),
      broken_(other.broken_),
      wait_(other.wait_),
      queue_depth_on_arrival_(other.queue_depth_on_arrival_) {}

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Release();
    pool_ = std::exchange(other.pool_, nullptr);
    slot_ = std::move(other.slot_);
    broken_ = other.broken_;
    wait_ = other.wait_;
    queue_depth_on_arrival_ = other.queue_depth_on_arrival_;
  }
  return *this;
}

Lease::~Lease() { Release(); }

void Lease::Release() {
  if (pool_ != nullptr && slot_ != nullptr) {
    std::exchange(pool_, nullptr)->Release(std::move(slot_), broken_);
  }
}

void ConnectionPool::Deferred::Run() {
  // Closing may send a terminate message; callbacks may post work; a
  // connector may answer at once. None of it belongs under the pool lock.
  if (!to_close.empty()) {
    const int n = static_cast<int>(to_close.size());
    to_close.clear();
    std::lock_guard<std::mutex> lock(pool->mu_);
    pool->closing_ -= n;
    pool->StartConnectsLocked(*this);
  }
  for (; connects > 0; --connects) {
    pool->connector_->Connect(
        pool->clock_.Now() + pool->options_.connect_timeout,
        [pool = pool](absl::StatusOr<std::unique_ptr<Connection>> conn) {
          pool->OnConnected(std::move(conn));
        });
  }
  for (auto& [done, result] : callbacks) std::move(done)(std::move(result));
  callbacks.clear();
}

ConnectionPool::ConnectionPool(PoolOptions options,
                               std::shared_ptr<Connector> connector,
                               Clock& clock)
    : options_(std::move(options)),
      connector_(std::move(connector)),
      clock_(clock) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    unreachable_since_ = clock_.Now();
    next_connect_attempt_ = absl::InfinitePast();
    counters_.max = options_.max_connections;
    counters_.min = options_.min_connections;
  }
  if (options_.maintenance_thread) {
    threads_.emplace_back([this] { MaintenanceLoop(); });
  }
  Deferred deferred(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    StartConnectsLocked(deferred);
  }
  deferred.Run();
}

ConnectionPool::~ConnectionPool() {
  Deferred deferred(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    maintenance_wake_.notify_one();
    for (auto& w : waiters_) {
      deferred.callbacks.emplace_back(
          std::move(w.done),
          absl::UnavailableError("connection pool is shutting down"));
    }
    waiters_.clear();
    waiter_index_.clear();
    while (!idle_.empty()) {
      auto slot = std::move(idle_.back());
      idle_.pop_back();
      CloseLocked(std::move(slot), CloseReason::kShutdown, deferred);
    }
  }
  deferred.Run();
  for (auto& t : threads_) t.join();
  // The attempts' answers use the pool. stopping_ makes them close what
  // they opened and start nothing new.
  std::unique_lock<std::mutex> lock(mu_);
  connects_ended_.wait(lock, [this] {
    return connecting_ == 0 && connect_answers_running_ == 0;
  });
}

int ConnectionPool::TotalLocked() const {
  return static_cast<int>(idle_.size()) + active_ + connecting_;
}

bool ConnectionPool::FailingFastLocked() const {
  return !reachable_ &&
         clock_.Now() - unreachable_since_ > options_.acquire_timeout;
}

bool ConnectionPool::Serving() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reachable_ && !draining_ && !stopping_;
}

bool ConnectionPool::Saturated() const {
  std::lock_guard<std::mutex> lock(mu_);
  return !draining_ && !stopping_ && waiters_.empty() && idle_.empty() &&
         active_ + connecting_ + closing_ >= options_.max_connections;
}

absl::Status ConnectionPool::StateErrorLocked(absl::string_view what) const {
  const std::string state = absl::StrFormat(
      "pool: %d active, %d idle, %d connecting, %d waiting, max %d", active_,
      idle_.size(), connecting_, waiters_.size(), options_.max_connections);
  if (!reachable_ && !last_connect_error_.empty()) {
    return absl::UnavailableError(absl::StrCat(
        what, ": database unreachable: ", last_connect_error_, " (", state,
        ")"));
  }
  return absl::DeadlineExceededError(absl::StrCat(what, " (", state, ")"));
}

ConnectionPool::WaitId ConnectionPool::Acquire(absl::Time deadline,
                                               AcquireCallback done) {
  for (;;) {
    Deferred deferred(this);
    WaitId id = 0;
    std::unique_ptr<Slot> candidate;
    int depth = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const absl::Time now = clock_.Now();
      deadline = std::min(deadline, now + options_.acquire_timeout);
      depth = static_cast<int>(waiters_.size());
      absl::Status refusal;
      if (stopping_ || draining_) {
        refusal = absl::UnavailableError("connection pool is draining");
      } else if (idle_.empty() && FailingFastLocked()) {
        refusal = StateErrorLocked("no connection available");
      } else if (deadline <= now) {
        refusal = absl::DeadlineExceededError(
            "deadline passed before a connection could be acquired");
      }
      if (!refusal.ok()) {
        ++counters_.acquires_rejected;
        deferred.callbacks.emplace_back(std::move(done), std::move(refusal));
      } else if (waiters_.empty() && !idle_.empty()) {
        candidate = std::move(idle_.back());
        idle_.pop_back();
        ++active_;
      } else if (absl::Status doomed = AdmissionLocked(now, deadline, depth);
                 !doomed.ok()) {
        ++counters_.acquires_timed_out;
        deferred.callbacks.emplace_back(std::move(done), std::move(doomed));
      } else if (depth >= options_.max_waiting) {
        ++counters_.acquires_rejected;
        deferred.callbacks.emplace_back(
            std::move(done),
            absl::ResourceExhaustedError(absl::StrFormat(
                "connection pool queue is full: %d callers waiting, "
                "DB_POOL_MAX_WAITING=%d",
                depth, options_.max_waiting)));
      } else {
        id = next_wait_id_++;
        waiters_.push_back(Waiter{id, now, deadline, depth, std::move(done)});
        waiter_index_[id] = std::prev(waiters_.end());
        // The maintenance thread expires waiters.
        WakeMaintenanceLocked(deadline);
        StartConnectsLocked(deferred);
      }
    }
    if (candidate == nullptr) {
      deferred.Run();
      return id;
    }
    // The liveness check reads the socket, so it runs outside the lock while
    // the slot already counts as active.
    const bool usable = candidate->connection->IsUsable();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (usable) {
        ++counters_.acquires_immediate;
        RecordAcquireLocked(absl::ZeroDuration());
      } else {
        --active_;
        CloseLocked(std::move(candidate), CloseReason::kBroken, deferred);
      }
    }
    if (usable) {
      std::move(done)(
          Lease(this, std::move(candidate), absl::ZeroDuration(), depth));
      return 0;
    }
    deferred.Run();
  }
}

void ConnectionPool::CancelWait(WaitId id) {
  Deferred deferred(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = waiter_index_.find(id);
    if (it == waiter_index_.end()) return;
    ++counters_.acquires_cancelled;
    deferred.callbacks.emplace_back(
        std::move(it->second->done),
        absl::CancelledError("caller cancelled while waiting for a connection"));
    waiters_.erase(it->second);
    waiter_index_.erase(it);
  }
  deferred.Run();
}

bool ConnectionPool::Withdraw(WaitId id) {
  AcquireCallback dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = waiter_index_.find(id);
    if (it == waiter_index_.end()) return false;
    dropped = std::move(it->second->done);
    waiters_.erase(it->second);
    waiter_index_.erase(it);
  }
  // Destroyed outside the lock: it may hold the last reference to its call.
  return true;
}

void ConnectionPool::Drain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
}

void ConnectionPool::Release(std::unique_ptr<Slot> slot, bool broken) {
  Deferred deferred(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    --active_;
    const absl::Time now = clock_.Now();
    if (broken) {
      CloseLocked(std::move(slot), CloseReason::kBroken, deferred);
    } else if (stopping_ || (draining_ && waiters_.empty())) {
      CloseLocked(std::move(slot), CloseReason::kShutdown, deferred);
    } else if (now >= slot->retire_at) {
      CloseLocked(std::move(slot), CloseReason::kLifetime, deferred);
    } else {
      slot->last_released = now;
      PlaceLocked(std::move(slot), deferred, /*fresh=*/false);
    }
  }
  deferred.Run();
}

absl::Status ConnectionPool::AdmissionLocked(absl::Time now, absl::Time deadline,
                                             int ahead) {
  // The pace of a pool that is still opening connections (after a restart
  // of the database, or while it grows to meet a burst) says nothing of
  // its pace once it is full: judged by it, callers that would have made
  // it were refused.
  if (static_cast<int>(idle_.size()) + active_ < options_.max_connections) {
    return absl::OkStatus();
  }
  const std::optional<double> rate = drain_rate_.PerSecond(now);
  if (!rate.has_value()) return absl::OkStatus();
  // This caller's turn comes after the `ahead` waiters and one more free
  // connection; its statement then holds the connection about as long as
  // the others do, `active_ / rate` by Little's law. A caller admitted
  // only to be cancelled mid-statement at its deadline would waste that
  // connection time too.
  const absl::Duration turn = absl::Seconds((ahead + 1) / *rate);
  const absl::Duration done = turn + absl::Seconds(active_ / *rate);
  if (now + done <= deadline) return absl::OkStatus();
  return absl::DeadlineExceededError(absl::StrFormat(
      "deadline too short for the queue: %d callers ahead, connections free "
      "up at %.0f/s, so an answer in about %d ms, but the deadline is in "
      "%d ms",
      ahead, *rate, absl::ToInt64Milliseconds(done),
      absl::ToInt64Milliseconds(deadline - now)));
}

void ConnectionPool::PlaceLocked(std::unique_ptr<Slot> slot, Deferred& deferred,
                                 bool fresh) {
  const absl::Time now = clock_.Now();
  // A waiter too close to its deadline to finish a statement of the usual
  // length is answered now rather than handed a connection it would give
  // up mid-statement; the connection goes to the next in line.
  if (const std::optional<double> rate =
          waiters_.empty() ? std::nullopt : drain_rate_.PerSecond(now)) {
    // `active_` no longer counts the connection being placed.
    const absl::Duration hold = absl::Seconds((active_ + 1) / *rate);
    while (!waiters_.empty() && waiters_.front().deadline - now < hold) {
      Waiter late = std::move(waiters_.front());
      waiters_.pop_front();
      waiter_index_.erase(late.id);
      ++counters_.acquires_timed_out;
      deferred.callbacks.emplace_back(
          std::move(late.done),
          absl::DeadlineExceededError(absl::StrFormat(
              "deadline too close to finish a statement: %d ms left, statements "
              "hold a connection about %d ms",
              absl::ToInt64Milliseconds(late.deadline - now),
              absl::ToInt64Milliseconds(hold))));
    }
  }
  if (waiters_.empty()) {
    idle_.push_back(std::move(slot));
    return;
  }
  // Only a released connection says how fast the pool serves its queue. A
  // fresh one, opened while the pool grows or reconnects after an outage,
  // says how fast connections open: counting those made a pool recovering
  // from a restart look slow and refuse callers that would have made it.
  if (!fresh) drain_rate_.Record(now);
  Waiter w = std::move(waiters_.front());
  waiters_.pop_front();
  waiter_index_.erase(w.id);
  const absl::Duration wait = clock_.Now() - w.enqueued;
  ++active_;
  ++counters_.acquires_waited;
  RecordAcquireLocked(wait);
  deferred.callbacks.emplace_back(
      std::move(w.done), Lease(this, std::move(slot), wait, w.queue_depth));
}

void ConnectionPool::CloseLocked(std::unique_ptr<Slot> slot,
                                 CloseReason reason, Deferred& deferred) {
  ++counters_.connections_closed[static_cast<int>(reason)];
  ++closing_;
  deferred.to_close.push_back(std::move(slot->connection));
}

void ConnectionPool::RecordAcquireLocked(absl::Duration wait) {
  const double s = absl::ToDoubleSeconds(wait);
  const auto it = std::lower_bound(kAcquireBucketSeconds.begin(),
                                   kAcquireBucketSeconds.end(), s);
  ++counters_.acquire_buckets[it - kAcquireBucketSeconds.begin()];
  counters_.acquire_seconds_sum += s;
}

PoolStats ConnectionPool::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  PoolStats s = counters_;
  s.time = clock_.Now();
  s.active = active_;
  s.idle = static_cast<int>(idle_.size());
  s.connecting = connecting_;
  s.waiting = static_cast<int>(waiters_.size());
  s.total = TotalLocked();
  s.reachable = reachable_;
  s.draining = draining_;
  s.oldest_waiter_age = waiters_.empty()
                            ? absl::ZeroDuration()
                            : s.time - waiters_.front().enqueued;
  return s;
}

bool ConnectionPool::WantConnectLocked() const {
  if (stopping_ || draining_) return false;
  const int total = TotalLocked();
  if (total + closing_ >= options_.max_connections) return false;
  return static_cast<int>(waiters_.size()) > connecting_ ||
         total < options_.min_connections || (!reachable_ && connecting_ == 0);
}

bool ConnectionPool::NeedConnectLocked() const {
  return clock_.Now() >= next_connect_attempt_ && WantConnectLocked();
}

void ConnectionPool::StartConnectsLocked(Deferred& deferred) {
  while (connecting_ < options_.max_concurrent_connects && NeedConnectLocked()) {
    ++connecting_;
    ++deferred.connects;
  }
}

void ConnectionPool::WakeMaintenanceLocked(absl::Time at) {
  // Woken only for a time before the one it sleeps until: waking it for
  // every waiter cost a thread switch per queued call.
  if (at < maintenance_wakes_at_) {
    ++maintenance_epoch_;
    maintenance_wake_.notify_one();
  }
}

absl::Duration ConnectionPool::BackoffLocked() {
  absl::Duration d = options_.backoff_initial;
  for (int i = 1; i < consecutive_connect_failures_ && d < options_.backoff_max;
       ++i) {
    d *= 2;
  }
  d = std::min(d, options_.backoff_max);
  // Full jitter in the upper half keeps replicas from reconnecting in step.
  return d / 2 + d * absl::Uniform(random_, 0.0, 0.5);
}

void ConnectionPool::OnConnected(absl::StatusOr<std::unique_ptr<Connection>> conn) {
  Deferred deferred(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    --connecting_;
    ++connect_answers_running_;
    const absl::Time now = clock_.Now();
    if (conn.ok()) {
      reachable_ = true;
      consecutive_connect_failures_ = 0;
      next_connect_attempt_ = absl::InfinitePast();
      ++counters_.connections_opened;
      auto slot = std::make_unique<Slot>();
      slot->connection = *std::move(conn);
      slot->created = now;
      // Up to 10% early, so connections opened together do not all retire
      // together.
      slot->retire_at =
          now + options_.max_lifetime * (1.0 - absl::Uniform(random_, 0.0, 0.1));
      slot->last_released = now;
      if (stopping_) {
        CloseLocked(std::move(slot), CloseReason::kShutdown, deferred);
      } else {
        PlaceLocked(std::move(slot), deferred, /*fresh=*/true);
      }
    } else {
      ++counters_.connect_errors;
      ++consecutive_connect_failures_;
      last_connect_error_ = std::string(conn.status().message());
      if (reachable_) {
        reachable_ = false;
        unreachable_since_ = now;
      }
      next_connect_attempt_ = now + BackoffLocked();
      if (WantConnectLocked()) WakeMaintenanceLocked(next_connect_attempt_);
      // Once the outage outlasts the acquire timeout, queued callers learn
      // now rather than at their deadlines.
      if (FailingFastLocked()) {
        for (auto& w : waiters_) {
          ++counters_.acquires_rejected;
          deferred.callbacks.emplace_back(
              std::move(w.done), StateErrorLocked("no connection available"));
        }
        waiters_.clear();
        waiter_index_.clear();
      }
    }
    StartConnectsLocked(deferred);
  }
  deferred.Run();
  std::lock_guard<std::mutex> lock(mu_);
  if (--connect_answers_running_ == 0 && connecting_ == 0) connects_ended_.notify_all();
}

void ConnectionPool::RunMaintenance() {
  Deferred deferred(this);
  {
    std::lock_guard<std::mutex> lock(mu_);
    const absl::Time now = clock_.Now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->deadline > now) {
        ++it;
        continue;
      }
      ++counters_.acquires_timed_out;
      deferred.callbacks.emplace_back(
          std::move(it->done),
          StateErrorLocked(absl::StrFormat(
              "timed out after %s waiting for a connection",
              absl::FormatDuration(now - it->enqueued))));
      waiter_index_.erase(it->id);
      it = waiters_.erase(it);
    }
    // idle_ is a LIFO stack: the front holds the longest-idle connections.
    int open = TotalLocked();
    std::vector<std::unique_ptr<Slot>> keep;
    keep.reserve(idle_.size());
    for (auto& slot : idle_) {
      if (!slot->connection->IsUsable()) {
        // The server ended the session while it sat idle (a restart, a
        // terminated backend). Closing it now rather than at the next
        // acquire makes a new attempt find out whether the database is still
        // there, so that an outage shows (Serving(), health) before a
        // caller runs into it. IsUsable never blocks, and this runs once a
        // tick, not on the acquire path.
        CloseLocked(std::move(slot), CloseReason::kBroken, deferred);
        --open;
      } else if (now >= slot->retire_at) {
        CloseLocked(std::move(slot), CloseReason::kLifetime, deferred);
        --open;
      } else if (open > options_.min_connections &&
                 now - slot->last_released >= options_.idle_timeout) {
        CloseLocked(std::move(slot), CloseReason::kIdle, deferred);
        --open;
      } else {
        keep.push_back(std::move(slot));
      }
    }
    idle_ = std::move(keep);
    StartConnectsLocked(deferred);
  }
  deferred.Run();
}

int ConnectionPool::CloseIdleIf(absl::FunctionRef<bool(Connection&)> doomed) {
  Deferred deferred(this);
  int closed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<std::unique_ptr<Slot>> keep;
    keep.reserve(idle_.size());
    for (auto& slot : idle_) {
      if (doomed(*slot->connection)) {
        CloseLocked(std::move(slot), CloseReason::kBroken, deferred);
        ++closed;
      } else {
        keep.push_back(std::move(slot));
      }
    }
    idle_ = std::move(keep);
  }
  deferred.Run();
  return closed;
}

void ConnectionPool::MaintenanceLoop() {
  constexpr absl::Duration kTick = absl::Milliseconds(250);
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    const absl::Time now = clock_.Now();
    absl::Time wake = now + kTick;
    for (const auto& w : waiters_) wake = std::min(wake, w.deadline);
    if (next_connect_attempt_ > now && WantConnectLocked()) {
      wake = std::min(wake, next_connect_attempt_);
    }
    const uint64_t epoch = maintenance_epoch_;
    maintenance_wakes_at_ = wake;
    // A new waiter may have an earlier deadline than the one slept for.
    maintenance_wake_.wait_for(
        lock,
        absl::ToChronoNanoseconds(
            std::max(wake - clock_.Now(), absl::ZeroDuration())),
        [&] { return stopping_ || maintenance_epoch_ != epoch; });
    maintenance_wakes_at_ = absl::InfinitePast();
    if (stopping_) return;
    lock.unlock();
    RunMaintenance();
    lock.lock();
  }
}

}  // namespace dbpool::pool
