// PoolStats: a consistent snapshot of a ConnectionPool, taken under its lock.
// A plain value; copy it freely.
#ifndef DBPOOL_SERVER_POOL_POOL_STATS_H_
#define DBPOOL_SERVER_POOL_POOL_STATS_H_

#include <array>
#include <cstdint>

#include "absl/time/time.h"

namespace dbpool::pool {

// Why a connection was closed; the label of connections_closed_total.
enum class CloseReason { kIdle, kLifetime, kBroken, kShutdown };
inline constexpr int kCloseReasonCount = 4;
const char* CloseReasonName(CloseReason reason);

// Upper bounds of the acquire-latency histogram buckets; the last bucket is
// everything above the last bound.
inline constexpr std::array<double, 18> kAcquireBucketSeconds = {
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3,
    50e-3, 100e-3, 250e-3, 500e-3, 1.0,  2.5,    5.0,  10.0,  30.0};

struct PoolStats {
  // Gauges. Invariant: total == idle + active + connecting.
  int active = 0;
  int idle = 0;
  int connecting = 0;
  // Of `active`, those pinned by open interactive transactions (idle in
  // their transaction or running one of its statements). The engine fills
  // it; the pool knows nothing of transactions.
  int transactions = 0;
  int waiting = 0;
  int total = 0;
  int max = 0;
  int min = 0;
  bool reachable = false;
  bool draining = false;
  absl::Duration oldest_waiter_age = absl::ZeroDuration();

  // Counters since the pool started.
  int64_t acquires_immediate = 0;
  int64_t acquires_waited = 0;
  int64_t acquires_timed_out = 0;
  int64_t acquires_rejected = 0;
  int64_t acquires_cancelled = 0;
  int64_t connections_opened = 0;
  std::array<int64_t, kCloseReasonCount> connections_closed = {};
  int64_t connect_errors = 0;

  // Acquire latency of successful acquires: counts per bucket of
  // kAcquireBucketSeconds (plus one overflow bucket) and their sum.
  std::array<int64_t, kAcquireBucketSeconds.size() + 1> acquire_buckets = {};
  double acquire_seconds_sum = 0;

  absl::Time time;

  int64_t connections_closed_total() const;
  // The q-quantile (0 < q <= 1) of acquire latency, read off the histogram
  // as the upper bound of the bucket that holds it.
  absl::Duration AcquireQuantile(double q) const;
};

}  // namespace dbpool::pool

#endif  // DBPOOL_SERVER_POOL_POOL_STATS_H_
