// ConnectionPool: a bounded, fair pool of database connections with
// asynchronous acquire.
//
// Waiters are served first in, first out, and a released connection goes
// straight to the oldest waiter (no barging). Idle connections are reused
// last in, first out so that surplus ones age out. Connections are opened
// through the Connector, which does not block: at most
// max_concurrent_connects at once, started outside the lock by whichever
// thread finds one needed, with backoff while connecting fails. A
// maintenance thread expires waiters, closes dead, idle and old connections,
// keeps the minimum and starts the attempts a backoff held back.
//
// Ownership: main owns the pool. A Lease must be destroyed before the pool.
// Thread-safety: every public method may be called from any thread.
// Blocking: Acquire, CancelWait, Snapshot and Drain never block on I/O and
// may run on gRPC callback threads. Acquire callbacks run on whatever thread
// completes the wait (the caller's, a releasing one, the connector's or the
// maintenance thread), never under the pool's lock; they must not block.
// The destructor blocks until the maintenance thread has stopped and the
// connection attempts under way have ended.
#ifndef DBPOOL_SERVER_POOL_CONNECTION_POOL_H_
#define DBPOOL_SERVER_POOL_CONNECTION_POOL_H_

#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/functional/function_ref.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/common/clock.h"
#include "server/pool/connection.h"
#include "server/pool/drain_rate.h"
#include "server/pool/pool_stats.h"

namespace dbpool::pool {

struct PoolOptions {
  int max_connections = 20;
  int min_connections = 2;
  absl::Duration idle_timeout = absl::Seconds(30);
  absl::Duration max_lifetime = absl::Minutes(30);
  absl::Duration acquire_timeout = absl::Seconds(5);
  int max_waiting = 1000;
  absl::Duration connect_timeout = absl::Seconds(5);
  // At most this many connections are being opened at once.
  int max_concurrent_connects = 2;
  // Reconnect backoff: doubles from the first value up to the cap, with
  // jitter, while connecting fails.
  absl::Duration backoff_initial = absl::Milliseconds(25);
  absl::Duration backoff_max = absl::Milliseconds(500);
  // Runs the maintenance thread. Tests that drive time by hand turn it off
  // and call RunMaintenance() themselves.
  bool maintenance_thread = true;
};

class ConnectionPool;

// The pool's record of one connection.
struct Slot {
  std::unique_ptr<Connection> connection;
  absl::Time created;
  absl::Time retire_at;
  absl::Time last_released;
};

// Exclusive use of one pooled connection; returns it to the pool when
// destroyed. Move-only.
class Lease {
 public:
  Lease() = default;
  Lease(Lease&& other) noexcept;
  Lease& operator=(Lease&& other) noexcept;
  ~Lease();

  Connection& connection() const { return *slot_->connection; }
  // The connection failed or was left in an unknown state: the pool closes
  // it instead of reusing it.
  void MarkBroken() { broken_ = true; }
  // How long the acquire waited.
  absl::Duration wait() const { return wait_; }
  // Callers already waiting when this acquire arrived.
  int queue_depth_on_arrival() const { return queue_depth_on_arrival_; }

 private:
  friend class ConnectionPool;
  Lease(ConnectionPool* pool, std::unique_ptr<Slot> slot, absl::Duration wait,
        int queue_depth);
  void Release();

  ConnectionPool* pool_ = nullptr;
  std::unique_ptr<Slot> slot_;
  bool broken_ = false;
  absl::Duration wait_;
  int queue_depth_on_arrival_ = 0;
};

class ConnectionPool {
 public:
  using AcquireCallback = absl::AnyInvocable<void(absl::StatusOr<Lease>) &&>;
  using WaitId = uint64_t;

  ConnectionPool(PoolOptions options, std::shared_ptr<Connector> connector,
                 Clock& clock = Clock::Real());
  ~ConnectionPool();
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;

  // Asks for a connection by `deadline` (capped at now + acquire_timeout).
  // A caller that would have to wait while the deadline comes sooner than
  // its turn, at the rate connections went to waiters over the last second, is
  // refused at once with DEADLINE_EXCEEDED (deadline-aware admission): it
  // could only have waited to fail, holding a place in the queue.
  // `done` runs exactly once: with a Lease, or with DEADLINE_EXCEEDED,
  // RESOURCE_EXHAUSTED (queue full), UNAVAILABLE (database unreachable for
  // longer than the acquire timeout, or draining) or CANCELLED. When served
  // at once, `done` runs before Acquire returns. Returns an id for
  // CancelWait.
  WaitId Acquire(absl::Time deadline, AcquireCallback done);

  // Abandons a wait: its callback runs now with CANCELLED. No-op when the
  // wait has already ended.
  void CancelWait(WaitId id);

  // Ends a wait without running its callback, for a caller that found
  // another way to run (a pipelined connection, which only an engine that
  // can share connections has). False when the wait has already ended.
  bool Withdraw(WaitId id);

  // Refuses new acquires with UNAVAILABLE; waiters already queued are still
  // served. Connections close as they are released.
  void Drain();

  PoolStats Snapshot() const;

  // Whether callers can expect a connection: the database answered the
  // last connection attempt and the pool is not draining.
  bool Serving() const;

  // Every connection the pool may hold is busy or opening and nobody waits:
  // an acquire would queue. A caller that can share a busy connection
  // (pipelining) does better to do so; while anyone waits it must queue
  // behind them instead (FIFO).
  bool Saturated() const;

  // Closes the idle connections `doomed` picks (counted as broken), such as
  // every connection to a server that turned read-only; returns how many.
  // `doomed` runs under the pool's lock and must not block.
  int CloseIdleIf(absl::FunctionRef<bool(Connection&)> doomed);

  // Expires waiters; closes idle connections that are dead, idle for too
  // long or too old. The maintenance thread calls it; tests with a manual
  // clock call it directly.
  void RunMaintenance();

  const PoolOptions& options() const { return options_; }

 private:
  friend class Lease;
  struct Waiter {
    WaitId id;
    absl::Time enqueued;
    absl::Time deadline;
    int queue_depth;
    AcquireCallback done;
  };
  // Work decided under the lock and carried out after it is released.
  struct Deferred {
    explicit Deferred(ConnectionPool* pool) : pool(pool) {}
    ConnectionPool* const pool;
    std::vector<std::pair<AcquireCallback, absl::StatusOr<Lease>>> callbacks;
    std::vector<std::unique_ptr<Connection>> to_close;
    // Connection attempts to start, already counted in connecting_.
    int connects = 0;
    void Run();
  };

  void Release(std::unique_ptr<Slot> slot, bool broken);
  // Gives `slot` to the oldest waiter or puts it on the idle stack.
  // `fresh`: just opened, rather than released by a caller.
  void PlaceLocked(std::unique_ptr<Slot> slot, Deferred& deferred, bool fresh)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseLocked(std::unique_ptr<Slot> slot, CloseReason reason,
                   Deferred& deferred) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK, or DEADLINE_EXCEEDED for a caller that would queue behind `ahead`
  // waiters and whose deadline comes before its turn would; only judged
  // once every connection the pool may have is open.
  absl::Status AdmissionLocked(absl::Time now, absl::Time deadline, int ahead)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecordAcquireLocked(absl::Duration wait)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status StateErrorLocked(absl::string_view what) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool FailingFastLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A connection should be opened, backoff aside.
  bool WantConnectLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ... and the backoff, if any, is over.
  bool NeedConnectLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts the attempts to start now into `deferred`, within
  // max_concurrent_connects. Every change that can make a connection
  // needed calls this; the end of a backoff is the maintenance thread's.
  void StartConnectsLocked(Deferred& deferred) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The connector's answer to one attempt.
  void OnConnected(absl::StatusOr<std::unique_ptr<Connection>> conn);
  void WakeMaintenanceLocked(absl::Time at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int TotalLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Duration BackoffLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void MaintenanceLoop();

  const PoolOptions options_;
  const std::shared_ptr<Connector> connector_;
  Clock& clock_;

  // std::mutex, not absl::Mutex, so that ThreadSanitizer sees the locking:
  // Debian's abseil is not instrumented (scripts/sanitize).
  mutable std::mutex mu_;
  // The maintenance thread waits on it for stopping_ or an earlier wake-up
  // (a waiter's deadline, the end of a backoff).
  std::condition_variable maintenance_wake_;
  // The destructor waits on it for the connection attempts to end.
  std::condition_variable connects_ended_;
  std::vector<std::unique_ptr<Slot>> idle_ ABSL_GUARDED_BY(mu_);  // LIFO
  std::list<Waiter> waiters_ ABSL_GUARDED_BY(mu_);                 // FIFO
  absl::flat_hash_map<WaitId, std::list<Waiter>::iterator> waiter_index_
      ABSL_GUARDED_BY(mu_);
  WaitId next_wait_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t maintenance_epoch_ ABSL_GUARDED_BY(mu_) = 0;
  // When the maintenance thread wakes next; the infinite past while it is
  // awake, since it looks at every waiter before it sleeps again.
  absl::Time maintenance_wakes_at_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int connecting_ ABSL_GUARDED_BY(mu_) = 0;
  // OnConnected calls still running after their attempt stopped counting
  // in connecting_: the destructor waits for them too.
  int connect_answers_running_ ABSL_GUARDED_BY(mu_) = 0;
  // Closed but not yet destroyed: they still hold a server connection, so
  // they count against max_connections until they are gone.
  int closing_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool reachable_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time unreachable_since_ ABSL_GUARDED_BY(mu_);
  absl::Time next_connect_attempt_ ABSL_GUARDED_BY(mu_);
  int consecutive_connect_failures_ ABSL_GUARDED_BY(mu_) = 0;
  std::string last_connect_error_ ABSL_GUARDED_BY(mu_);
  absl::BitGen random_ ABSL_GUARDED_BY(mu_);
  PoolStats counters_ ABSL_GUARDED_BY(mu_);
  DrainRate drain_rate_ ABSL_GUARDED_BY(mu_);

  std::vector<std::thread> threads_;
};

}  // namespace dbpool::pool

#endif  // DBPOOL_SERVER_POOL_CONNECTION_POOL_H_
