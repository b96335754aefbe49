// Acquire/release through the pool: the uncontended immediate path and
// many threads sharing a few connections (FIFO hand-off under contention).
#include <benchmark/benchmark.h>

#include <memory>

#include "absl/synchronization/notification.h"
#include "server/pool/connection_pool.h"
#include "tests/unit/fake_connection.h"

namespace dbpool::pool {
namespace {

std::unique_ptr<ConnectionPool> WarmPool(int connections) {
  PoolOptions o;
  o.min_connections = connections;
  o.max_connections = connections;
  o.max_waiting = 100000;
  auto pool = std::make_unique<ConnectionPool>(
      o, std::make_shared<testing::FakeConnector>());
  while (pool->Snapshot().idle < connections) absl::SleepFor(absl::Milliseconds(1));
  return pool;
}

// Acquires and releases one connection, waiting for the callback when the
// pool is busy.
void AcquireRelease(ConnectionPool& pool) {
  absl::Notification got;
  Lease lease;
  pool.Acquire(absl::InfiniteFuture(), [&](absl::StatusOr<Lease> r) {
    if (r.ok()) lease = *std::move(r);
    got.Notify();
  });
  got.WaitForNotification();
  benchmark::DoNotOptimize(lease);
}

void BM_AcquireReleaseUncontended(benchmark::State& state) {
  auto pool = WarmPool(1);
  for (auto _ : state) AcquireRelease(*pool);
}
BENCHMARK(BM_AcquireReleaseUncontended);

ConnectionPool* shared_pool = nullptr;

void BM_AcquireReleaseContended(benchmark::State& state) {
  static std::unique_ptr<ConnectionPool> owner;
  if (state.thread_index() == 0) {
    owner = WarmPool(static_cast<int>(state.range(0)));
    shared_pool = owner.get();
  }
  for (auto _ : state) AcquireRelease(*shared_pool);
  if (state.thread_index() == 0) state.counters["connections"] = state.range(0);
}
BENCHMARK(BM_AcquireReleaseContended)
    ->Arg(4)
    ->Threads(1)
    ->Threads(2)
    ->Threads(8)
    ->Threads(32)
    ->UseRealTime();

}  // namespace
}  // namespace dbpool::pool
