#include "server/pool/connection_pool.h"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "tests/unit/fake_connection.h"

namespace dbpool::pool {
namespace {

using ::dbpool::testing::FakeConnection;
using ::dbpool::testing::FakeConnector;

// Collects the result of one asynchronous acquire.
class Pending {
 public:
  ConnectionPool::AcquireCallback Callback() {
    return [this](absl::StatusOr<Lease> r) {
      std::lock_guard<std::mutex> lock(mu_);
      EXPECT_FALSE(result_.has_value()) << "callback ran twice";
      result_.emplace(std::move(r));
      // Under the lock: once Take sees the result, this Pending may be gone.
      arrived_.notify_all();
    };
  }
  bool done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return result_.has_value();
  }
  // Waits (real time) for the callback.
  absl::StatusOr<Lease> Take(absl::Duration timeout = absl::Seconds(5)) {
    std::unique_lock<std::mutex> lock(mu_);
    arrived_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                      [this] { return result_.has_value(); });
    if (!result_.has_value()) return absl::InternalError("callback never ran");
    absl::StatusOr<Lease> r = std::move(*result_);
    result_.reset();
    return r;
  }

 private:
  // std::mutex, not absl::Mutex: the callback runs on pool threads, and
  // ThreadSanitizer cannot see Debian's uninstrumented abseil locking.
  mutable std::mutex mu_;
  std::condition_variable arrived_;
  std::optional<absl::StatusOr<Lease>> result_ ABSL_GUARDED_BY(mu_);
};

int IdOf(const Lease& lease) {
  return static_cast<FakeConnection&>(lease.connection()).id();
}

// Polls `pred` for up to five seconds of real time.
template <typename Pred>
bool Eventually(Pred pred) {
  const absl::Time end = absl::Now() + absl::Seconds(5);
  while (absl::Now() < end) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return pred();
}

class PoolTest : public ::testing::Test {
 protected:
  std::unique_ptr<ConnectionPool> MakePool(PoolOptions options,
                                           Clock& clock = Clock::Real()) {
    return std::make_unique<ConnectionPool>(options, connector_, clock);
  }

  // A pool of one connection on `clock`, handed from one waiting caller to
  // the next every 10 ms, 20 times, so that its queue drains at 100/s;
  // `held` gets the last lease.
  std::unique_ptr<ConnectionPool> DrainingAt100PerSecond(ManualClock& clock,
                                                         absl::StatusOr<Lease>* held) {
    PoolOptions o;
    o.min_connections = 1;
    o.max_connections = 1;
    o.acquire_timeout = absl::Seconds(10);
    o.maintenance_thread = false;
    auto pool = MakePool(o, clock);
    EXPECT_TRUE(Eventually([&] { return pool->Snapshot().idle == 1; }));
    Pending first;
    pool->Acquire(absl::InfiniteFuture(), first.Callback());
    *held = first.Take();
    for (int i = 0; i < 20 && held->ok(); ++i) {
      Pending next;
      pool->Acquire(absl::InfiniteFuture(), next.Callback());
      clock.Advance(absl::Milliseconds(10));
      **held = Lease();
      *held = next.Take();
    }
    return pool;
  }

  std::shared_ptr<FakeConnector> connector_ = std::make_shared<FakeConnector>();
};

TEST_F(PoolTest, OpensMinimumAndServesAtOnce) {
  PoolOptions o;
  o.min_connections = 2;
  auto pool = MakePool(o);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 2; }));
  Pending p;
  EXPECT_EQ(pool->Acquire(absl::InfiniteFuture(), p.Callback()), 0u);
  ASSERT_TRUE(p.done()) << "an idle connection is handed out before Acquire returns";
  auto lease = p.Take();
  ASSERT_TRUE(lease.ok());
  const PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.active, 1);
  EXPECT_EQ(s.idle, 1);
  EXPECT_EQ(s.acquires_immediate, 1);
  EXPECT_TRUE(pool->Serving());
}

TEST_F(PoolTest, CloseIdleIfClosesOnlyWhatItPicksAndTheMinimumIsRestored) {
  PoolOptions o;
  o.min_connections = 3;
  o.max_connections = 4;
  auto pool = MakePool(o);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 3; }));
  Pending held;
  pool->Acquire(absl::InfiniteFuture(), held.Callback());
  auto lease = held.Take();
  ASSERT_TRUE(lease.ok());
  const int in_use = IdOf(*lease);
  // The one in use is never offered; of the two idle ones, one is picked.
  int offered = 0;
  const int closed = pool->CloseIdleIf([&](Connection& c) {
    const int id = static_cast<FakeConnection&>(c).id();
    EXPECT_NE(id, in_use);
    return ++offered == 1;
  });
  EXPECT_EQ(offered, 2);
  EXPECT_EQ(closed, 1);
  const PoolStats after = pool->Snapshot();
  EXPECT_EQ(after.connections_closed[static_cast<int>(CloseReason::kBroken)], closed);
  EXPECT_EQ(after.active, 1);
  // The pool brings itself back to its minimum with a new connection
  // (idle once it is open: total alone counts it while it connects).
  EXPECT_TRUE(Eventually([&] {
    const PoolStats s = pool->Snapshot();
    return s.total == 3 && s.idle == 2;
  }));
  EXPECT_EQ(connector_->opened.load(), 4);
  EXPECT_EQ(pool->CloseIdleIf([](Connection&) { return false; }), 0);
}

TEST_F(PoolTest, IdleConnectionsAreReusedLastInFirstOut) {
  PoolOptions o;
  o.min_connections = 2;
  o.max_connections = 2;
  auto pool = MakePool(o);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 2; }));
  Pending a, b;
  pool->Acquire(absl::InfiniteFuture(), a.Callback());
  pool->Acquire(absl::InfiniteFuture(), b.Callback());
  auto la = a.Take();
  auto lb = b.Take();
  ASSERT_TRUE(la.ok() && lb.ok());
  const int released_last = IdOf(*la);
  *lb = Lease();
  *la = Lease();
  Pending c;
  pool->Acquire(absl::InfiniteFuture(), c.Callback());
  auto lc = c.Take();
  ASSERT_TRUE(lc.ok());
  EXPECT_EQ(IdOf(*lc), released_last);
}

TEST_F(PoolTest, WaitersAreServedFirstInFirstOut) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  auto pool = MakePool(o);
  Pending holder;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  std::vector<Pending> waiters(5);
  for (auto& w : waiters) pool->Acquire(absl::InfiniteFuture(), w.Callback());
  EXPECT_EQ(pool->Snapshot().waiting, 5);
  Lease current = *std::move(held);
  for (size_t i = 0; i < waiters.size(); ++i) {
    for (size_t j = i; j < waiters.size(); ++j) {
      EXPECT_FALSE(waiters[j].done()) << "waiter " << j << " served early";
    }
    current = Lease();  // hands off to the oldest waiter
    auto next = waiters[i].Take();
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_EQ(next->queue_depth_on_arrival(), static_cast<int>(i));
    current = *std::move(next);
  }
  EXPECT_EQ(connector_->opened.load(), 1) << "hand-off reuses the connection";
}

TEST_F(PoolTest, ReleasedConnectionGoesToWaiterNotToNewcomer) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  auto pool = MakePool(o);
  Pending holder, waiter, newcomer;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  pool->Acquire(absl::InfiniteFuture(), waiter.Callback());
  *held = Lease();
  pool->Acquire(absl::InfiniteFuture(), newcomer.Callback());
  EXPECT_TRUE(waiter.done());
  EXPECT_FALSE(newcomer.done());
  EXPECT_EQ(pool->Snapshot().waiting, 1);
  // Hand the connection down the queue so no callback outlives its Pending.
  auto served = waiter.Take();
  ASSERT_TRUE(served.ok());
  *served = Lease();
  EXPECT_TRUE(newcomer.Take().ok());
}

TEST_F(PoolTest, QueueBoundRejectsAtOnce) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  o.max_waiting = 2;
  auto pool = MakePool(o);
  Pending holder, w1, w2, over;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  pool->Acquire(absl::InfiniteFuture(), w1.Callback());
  pool->Acquire(absl::InfiniteFuture(), w2.Callback());
  pool->Acquire(absl::InfiniteFuture(), over.Callback());
  ASSERT_TRUE(over.done()) << "rejection must not wait";
  auto r = over.Take();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("DB_POOL_MAX_WAITING"));
  EXPECT_EQ(pool->Snapshot().acquires_rejected, 1);
  *held = Lease();
  auto first = w1.Take();
  ASSERT_TRUE(first.ok());
  *first = Lease();
  EXPECT_TRUE(w2.Take().ok());
}

TEST_F(PoolTest, WaiterTimesOutAtAcquireTimeout) {
  ManualClock clock;
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  o.acquire_timeout = absl::Seconds(1);
  o.maintenance_thread = false;
  auto pool = MakePool(o, clock);
  Pending holder, waiter;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  pool->Acquire(absl::InfiniteFuture(), waiter.Callback());
  clock.Advance(absl::Milliseconds(999));
  pool->RunMaintenance();
  EXPECT_FALSE(waiter.done());
  clock.Advance(absl::Milliseconds(2));
  pool->RunMaintenance();
  auto r = waiter.Take();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(pool->Snapshot().acquires_timed_out, 1);
  EXPECT_EQ(pool->Snapshot().waiting, 0);
}

TEST_F(PoolTest, CallerDeadlineShorterThanAcquireTimeoutWins) {
  ManualClock clock;
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  o.acquire_timeout = absl::Seconds(10);
  o.maintenance_thread = false;
  auto pool = MakePool(o, clock);
  Pending holder, short_deadline, long_deadline;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  pool->Acquire(clock.Now() + absl::Milliseconds(100), short_deadline.Callback());
  pool->Acquire(absl::InfiniteFuture(), long_deadline.Callback());
  clock.Advance(absl::Milliseconds(150));
  pool->RunMaintenance();
  EXPECT_EQ(short_deadline.Take().status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_FALSE(long_deadline.done());
  *held = Lease();
  EXPECT_TRUE(long_deadline.Take().ok());
}

TEST_F(PoolTest, DeadlineShorterThanTheQueueIsRefusedAtOnce) {
  ManualClock clock;
  // One connection handed from one waiting caller to the next every 10 ms:
  // the pool drains its queue at 100/s.
  absl::StatusOr<Lease> held;
  auto pool = DrainingAt100PerSecond(clock, &held);
  ASSERT_TRUE(held.ok());
  std::vector<std::unique_ptr<Pending>> queued;
  for (int i = 0; i < 4; ++i) {
    queued.push_back(std::make_unique<Pending>());
    pool->Acquire(absl::InfiniteFuture(), queued.back()->Callback());
  }
  // Five hand-offs away at 100/s is 50 ms: 20 ms cannot make it, 200 ms can.
  Pending doomed, hopeful;
  pool->Acquire(clock.Now() + absl::Milliseconds(20), doomed.Callback());
  ASSERT_TRUE(doomed.done()) << "refused without waiting";
  const absl::Status refusal = doomed.Take().status();
  EXPECT_EQ(refusal.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(refusal.message()), ::testing::HasSubstr("4 callers ahead"));
  pool->Acquire(clock.Now() + absl::Milliseconds(200), hopeful.Callback());
  EXPECT_FALSE(hopeful.done());
  const PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.waiting, 5);
  EXPECT_EQ(s.acquires_timed_out, 1);
  *held = Lease();
  for (auto& q : queued) {
    auto lease = q->Take();
    ASSERT_TRUE(lease.ok());
    *lease = Lease();
  }
  EXPECT_TRUE(hopeful.Take().ok());
}

TEST_F(PoolTest, AWaiterTooLateToFinishIsAnsweredAndSkipped) {
  ManualClock clock;
  // The queue drains at 100/s: a statement holds the connection ~10 ms.
  absl::StatusOr<Lease> held;
  auto pool = DrainingAt100PerSecond(clock, &held);
  ASSERT_TRUE(held.ok());
  Pending late, patient;
  pool->Acquire(clock.Now() + absl::Milliseconds(50), late.Callback());
  pool->Acquire(absl::InfiniteFuture(), patient.Callback());
  EXPECT_FALSE(late.done());
  clock.Advance(absl::Milliseconds(45));  // 5 ms left: too little for 10
  *held = Lease();
  const absl::Status skipped = late.Take().status();
  EXPECT_EQ(skipped.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(std::string(skipped.message()), ::testing::HasSubstr("too close"));
  EXPECT_TRUE(patient.Take().ok()) << "the connection goes to the next in line";
  EXPECT_EQ(pool->Snapshot().acquires_timed_out, 1);
}

TEST_F(PoolTest, PastDeadlineIsRefusedAtOnce) {
  PoolOptions o;
  auto pool = MakePool(o);
  Pending p;
  pool->Acquire(absl::Now() - absl::Seconds(1), p.Callback());
  ASSERT_TRUE(p.done());
  EXPECT_EQ(p.Take().status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST_F(PoolTest, CancelledWaitEndsWithCancelled) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  auto pool = MakePool(o);
  Pending holder, waiter;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  const auto id = pool->Acquire(absl::InfiniteFuture(), waiter.Callback());
  ASSERT_NE(id, 0u);
  pool->CancelWait(id);
  EXPECT_EQ(waiter.Take().status().code(), absl::StatusCode::kCancelled);
  pool->CancelWait(id);  // a second cancel is a no-op
  const PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.acquires_cancelled, 1);
}

TEST_F(PoolTest, SaturatedOnlyWhenEveryConnectionIsBusyAndNobodyWaits) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  auto pool = MakePool(o);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 1; }));
  EXPECT_FALSE(pool->Saturated()) << "a connection is idle";
  Pending holder, waiter;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  EXPECT_TRUE(pool->Saturated());
  const auto id = pool->Acquire(absl::InfiniteFuture(), waiter.Callback());
  ASSERT_NE(id, 0u);
  EXPECT_FALSE(pool->Saturated()) << "a newcomer must queue behind the waiter";
  pool->Drain();
  pool->CancelWait(id);
  EXPECT_FALSE(pool->Saturated()) << "draining";
}

TEST_F(PoolTest, WithdrawnWaitEndsWithoutItsCallback) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  auto pool = MakePool(o);
  Pending holder, waiter, next;
  pool->Acquire(absl::InfiniteFuture(), holder.Callback());
  auto held = holder.Take();
  ASSERT_TRUE(held.ok());
  const auto id = pool->Acquire(absl::InfiniteFuture(), waiter.Callback());
  ASSERT_NE(id, 0u);
  pool->Acquire(absl::InfiniteFuture(), next.Callback());
  EXPECT_TRUE(pool->Withdraw(id));
  EXPECT_FALSE(pool->Withdraw(id)) << "a wait is withdrawn once";
  EXPECT_EQ(pool->Snapshot().waiting, 1);
  *held = Lease();
  // The connection goes to the next waiter; the withdrawn one hears nothing.
  EXPECT_TRUE(next.Take().ok());
  EXPECT_FALSE(waiter.done());
  const PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.acquires_cancelled, 0);
}

TEST_F(PoolTest, BrokenConnectionIsDiscardedAndReplaced) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 1;
  auto pool = MakePool(o);
  Pending p;
  pool->Acquire(absl::InfiniteFuture(), p.Callback());
  auto lease = p.Take();
  ASSERT_TRUE(lease.ok());
  const int broken_id = IdOf(*lease);
  lease->MarkBroken();
  *lease = Lease();
  EXPECT_EQ(pool->Snapshot().connections_closed[static_cast<int>(CloseReason::kBroken)], 1);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 1; }));
  Pending q;
  pool->Acquire(absl::InfiniteFuture(), q.Callback());
  auto again = q.Take();
  ASSERT_TRUE(again.ok());
  EXPECT_NE(IdOf(*again), broken_id);
  EXPECT_EQ(connector_->live.load(), 1);
}

TEST_F(PoolTest, DeadIdleConnectionIsNeverHandedOut) {
  PoolOptions o;
  o.min_connections = 2;
  o.max_connections = 2;
  auto pool = MakePool(o);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 2; }));
  connector_->BreakAll();  // e.g. pg_terminate_backend on both
  Pending a, b;
  pool->Acquire(absl::InfiniteFuture(), a.Callback());
  pool->Acquire(absl::InfiniteFuture(), b.Callback());
  auto la = a.Take();
  auto lb = b.Take();
  ASSERT_TRUE(la.ok() && lb.ok());
  // Both callers got fresh connections: the two dead ones were discarded.
  EXPECT_TRUE(la->connection().IsUsable());
  EXPECT_TRUE(lb->connection().IsUsable());
  EXPECT_GT(IdOf(*la), 2);
  EXPECT_GT(IdOf(*lb), 2);
  EXPECT_EQ(pool->Snapshot().connections_closed[static_cast<int>(CloseReason::kBroken)], 2);
}

// A database that went away while nobody called: maintenance finds the
// dead idle connections, and the failed reconnect makes the pool stop
// claiming it serves.
TEST_F(PoolTest, MaintenanceFindsDeadIdleConnectionsWithoutTraffic) {
  ManualClock clock;
  PoolOptions o;
  o.min_connections = 2;
  o.max_connections = 2;
  o.maintenance_thread = false;
  auto pool = MakePool(o, clock);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 2; }));
  ASSERT_TRUE(pool->Serving());
  connector_->failing = true;
  pool->RunMaintenance();
  EXPECT_EQ(pool->Snapshot().idle, 2) << "live connections stay";
  connector_->BreakAll();
  pool->RunMaintenance();
  EXPECT_EQ(pool->Snapshot().connections_closed[static_cast<int>(CloseReason::kBroken)], 2);
  EXPECT_TRUE(Eventually([&] { return !pool->Serving(); }));
  EXPECT_EQ(pool->Snapshot().idle, 0);
}

TEST_F(PoolTest, IdleConnectionsAboveMinimumCloseAfterIdleTimeout) {
  ManualClock clock;
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 3;
  o.idle_timeout = absl::Seconds(10);
  o.maintenance_thread = false;
  auto pool = MakePool(o, clock);
  std::vector<Pending> p(3);
  std::vector<Lease> leases;
  for (auto& x : p) pool->Acquire(absl::InfiniteFuture(), x.Callback());
  for (auto& x : p) {
    auto l = x.Take();
    ASSERT_TRUE(l.ok()) << l.status();
    leases.push_back(*std::move(l));
  }
  leases.clear();
  ASSERT_EQ(pool->Snapshot().idle, 3);
  clock.Advance(absl::Seconds(9));
  pool->RunMaintenance();
  EXPECT_EQ(pool->Snapshot().idle, 3);
  clock.Advance(absl::Seconds(2));
  pool->RunMaintenance();
  const PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.idle, 1) << "the minimum stays open";
  EXPECT_EQ(s.connections_closed[static_cast<int>(CloseReason::kIdle)], 2);
  EXPECT_EQ(connector_->live.load(), 1);
}

TEST_F(PoolTest, ConnectionsRetireAfterMaxLifetimeButNeverWhileInUse) {
  ManualClock clock;
  PoolOptions o;
  o.min_connections = 2;
  o.max_connections = 2;
  o.max_lifetime = absl::Seconds(60);
  o.maintenance_thread = false;
  auto pool = MakePool(o, clock);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 2; }));
  Pending p;
  pool->Acquire(absl::InfiniteFuture(), p.Callback());
  auto lease = p.Take();
  ASSERT_TRUE(lease.ok());
  clock.Advance(absl::Seconds(53));  // inside the 10% jitter: none retire
  pool->RunMaintenance();
  EXPECT_EQ(pool->Snapshot().connections_closed_total(), 0);
  clock.Advance(absl::Seconds(8));
  pool->RunMaintenance();
  PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.connections_closed[static_cast<int>(CloseReason::kLifetime)], 1)
      << "only the idle one";
  EXPECT_EQ(s.active, 1);
  *lease = Lease();
  s = pool->Snapshot();
  EXPECT_EQ(s.connections_closed[static_cast<int>(CloseReason::kLifetime)], 2);
  ASSERT_TRUE(Eventually([&] { return pool->Snapshot().idle == 2; }))
      << "the minimum is restored";
}

TEST_F(PoolTest, LongOutageFailsFastAndRecoversByItself) {
  connector_->failing = true;
  PoolOptions o;
  o.min_connections = 1;
  o.acquire_timeout = absl::Milliseconds(200);
  o.backoff_initial = absl::Milliseconds(5);
  o.backoff_max = absl::Milliseconds(20);
  auto pool = MakePool(o);
  // A short outage keeps callers queued.
  Pending early;
  pool->Acquire(absl::InfiniteFuture(), early.Callback());
  EXPECT_FALSE(early.done());
  EXPECT_FALSE(pool->Serving());
  // Past the acquire timeout, callers learn at once.
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(early.Take().status().code(), absl::StatusCode::kUnavailable);
  Pending late;
  const absl::Time asked = absl::Now();
  pool->Acquire(absl::InfiniteFuture(), late.Callback());
  ASSERT_TRUE(late.done());
  auto r = late.Take();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(r.status().message()), ::testing::HasSubstr("fake database is down"));
  EXPECT_LT(absl::Now() - asked, absl::Milliseconds(50));
  EXPECT_GT(pool->Snapshot().connect_errors, 0);
  connector_->failing = false;
  ASSERT_TRUE(Eventually([&] { return pool->Serving(); }));
  Pending after;
  pool->Acquire(absl::InfiniteFuture(), after.Callback());
  EXPECT_TRUE(after.Take().ok());
}

TEST_F(PoolTest, ShortOutageLosesNoWaiter) {
  PoolOptions o;
  o.min_connections = 0;
  o.max_connections = 2;
  o.acquire_timeout = absl::Seconds(5);
  o.backoff_initial = absl::Milliseconds(5);
  o.backoff_max = absl::Milliseconds(20);
  auto pool = MakePool(o);
  ASSERT_TRUE(Eventually([&] { return pool->Serving(); }));
  connector_->BreakAll();
  connector_->failing = true;
  std::vector<Pending> waiters(4);
  for (auto& w : waiters) pool->Acquire(absl::InfiniteFuture(), w.Callback());
  absl::SleepFor(absl::Milliseconds(100));
  for (auto& w : waiters) EXPECT_FALSE(w.done());
  connector_->failing = false;
  for (auto& w : waiters) {
    auto l = w.Take();
    ASSERT_TRUE(l.ok()) << l.status();
  }
}

TEST_F(PoolTest, DrainRefusesNewAcquires) {
  PoolOptions o;
  auto pool = MakePool(o);
  pool->Drain();
  Pending p;
  pool->Acquire(absl::InfiniteFuture(), p.Callback());
  EXPECT_EQ(p.Take().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_FALSE(pool->Serving());
}

TEST_F(PoolTest, AccountingHoldsUnderChurn) {
  PoolOptions o;
  o.min_connections = 1;
  o.max_connections = 4;
  o.max_waiting = 1000;
  o.idle_timeout = absl::Milliseconds(100);
  auto pool = MakePool(o);
  std::atomic<bool> stop{false};
  std::atomic<int> callbacks{0};
  std::atomic<int> violations{0};
  std::thread observer([&] {
    while (!stop.load()) {
      const PoolStats s = pool->Snapshot();
      if (s.total != s.idle + s.active + s.connecting || s.total > o.max_connections ||
          s.active < 0 || s.idle < 0 || s.connecting < 0 || s.waiting < 0) {
        violations.fetch_add(1);
      }
      if (connector_->live.load() > o.max_connections) violations.fetch_add(1);
    }
  });
  constexpr int kThreads = 8;
  constexpr int kIterations = 400;
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < kIterations; ++i) {
        Pending p;
        pool->Acquire(absl::Now() + absl::Seconds(5), p.Callback());
        auto lease = p.Take();
        callbacks.fetch_add(1);
        if (!lease.ok()) continue;
        if (rng() % 10 == 0) lease->MarkBroken();
        if (rng() % 4 == 0) std::this_thread::yield();
      }
    });
  }
  for (auto& w : workers) w.join();
  stop = true;
  observer.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_EQ(callbacks.load(), kThreads * kIterations);
  const PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.active, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.acquires_immediate + s.acquires_waited, kThreads * kIterations);
  ASSERT_TRUE(Eventually([&] {
    return pool->Snapshot().connecting == 0 &&
           connector_->live.load() == pool->Snapshot().total;
  }));
}

// Opening a connection holds no caller and no thread of the pool: the
// attempts wait in the connector, at most max_concurrent_connects at once,
// and each answer starts the next one still needed.
TEST_F(PoolTest, AttemptsRunWithoutBlockingCallersUpToTheLimit) {
  connector_->hold = true;
  PoolOptions o;
  o.min_connections = 0;
  o.max_connections = 10;
  o.max_concurrent_connects = 3;
  auto pool = MakePool(o);
  std::vector<Pending> pending(5);
  for (auto& p : pending) pool->Acquire(absl::InfiniteFuture(), p.Callback());
  EXPECT_EQ(connector_->held(), 3);
  PoolStats s = pool->Snapshot();
  EXPECT_EQ(s.connecting, 3);
  EXPECT_EQ(s.waiting, 5);
  ASSERT_TRUE(connector_->CompleteHeld());
  EXPECT_TRUE(pending[0].done()) << "the oldest waiter gets the first connection";
  EXPECT_FALSE(pending[1].done());
  EXPECT_EQ(connector_->held(), 3) << "four still wait: the answer starts another attempt";
  for (int answered = 1; answered < 5; ++answered) ASSERT_TRUE(connector_->CompleteHeld());
  EXPECT_EQ(connector_->held(), 0);
  std::vector<Lease> leases;
  for (auto& p : pending) {
    auto lease = p.Take();
    ASSERT_TRUE(lease.ok()) << lease.status();
    leases.push_back(*std::move(lease));
  }
  s = pool->Snapshot();
  EXPECT_EQ(s.active, 5);
  EXPECT_EQ(s.connecting, 0);
  EXPECT_EQ(s.connections_opened, 5);
}

// An answer that comes while the pool is being destroyed still finds it:
// the destructor waits for the attempts under way and closes what they
// opened.
TEST_F(PoolTest, DestructionWaitsForTheAttemptsUnderWay) {
  connector_->hold = true;
  PoolOptions o;
  o.min_connections = 2;
  o.max_connections = 2;
  auto pool = MakePool(o);
  ASSERT_EQ(connector_->held(), 2);
  std::thread answerer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    while (connector_->CompleteHeld()) {
    }
  });
  pool.reset();
  EXPECT_EQ(connector_->opened.load(), 2) << "both answers came before the pool was gone";
  EXPECT_EQ(connector_->live.load(), 0) << "and what they opened was closed";
  answerer.join();
}

TEST_F(PoolTest, AcquireQuantilesComeFromTheHistogram) {
  PoolStats s;
  s.acquire_buckets[0] = 90;  // <= 50 us
  s.acquire_buckets[7] = 9;   // <= 10 ms
  s.acquire_buckets[13] = 1;  // <= 1 s
  EXPECT_EQ(s.AcquireQuantile(0.5), absl::Microseconds(50));
  EXPECT_EQ(s.AcquireQuantile(0.95), absl::Milliseconds(10));
  EXPECT_EQ(s.AcquireQuantile(0.999), absl::Seconds(1));
}

}  // namespace
}  // namespace dbpool::pool
