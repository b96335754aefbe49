// DrainRate: how fast a pool hands out connections, over the last second,
// for deadline-aware admission: a caller whose deadline comes before its
// turn would is told so at once instead of waiting to fail.
//
// A plain value owned by the pool and used under its lock; not
// thread-safe. Nothing blocks.
#ifndef DBPOOL_SERVER_POOL_DRAIN_RATE_H_
#define DBPOOL_SERVER_POOL_DRAIN_RATE_H_

#include <array>
#include <cstdint>
#include <optional>

#include "absl/time/time.h"

namespace dbpool::pool {

class DrainRate {
 public:
  // A connection became free for the next caller at `now`.
  void Record(absl::Time now);

  // Connections freed per second over the last second; nullopt while
  // fewer than kMinEvents were seen in it, too few to predict from.
  std::optional<double> PerSecond(absl::Time now) const;

  static constexpr int kMinEvents = 10;

 private:
  static constexpr int kBuckets = 10;
  static constexpr absl::Duration kBucket = absl::Milliseconds(100);

  // Advances the ring to `now`'s bucket, emptying the ones it passes.
  void Roll(absl::Time now);
  int64_t Index(absl::Time t) const { return (t - absl::UnixEpoch()) / kBucket; }

  std::array<int64_t, kBuckets> counts_ = {};
  int64_t current_ = -1;  // index of the newest bucket
};

}  // namespace dbpool::pool

#endif  // DBPOOL_SERVER_POOL_DRAIN_RATE_H_
