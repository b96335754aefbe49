// DrainRate: how fast a saturated pool hands connections to its waiters,
// for deadline-aware admission: a caller whose deadline comes before its
// turn would is told so at once instead of waiting to fail.
//
// Only hand-offs to a waiter count. A connection given back while nobody
// waits says how busy the callers are, not how fast the pool can serve a
// queue, and counting those (or the idle time between them) would make a
// pool that has just become busy look slow and refuse callers that would
// have made it.
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
  // A connection went straight to a waiter at `now`.
  void Record(absl::Time now);

  // Hand-offs per second, from the spacing of the last ones within the
  // last second; nullopt while fewer than kMinEvents were seen in it, or
  // all at one instant: too little to predict from.
  std::optional<double> PerSecond(absl::Time now) const;

  static constexpr int kMinEvents = 10;

 private:
  static constexpr int kKept = 64;
  static constexpr absl::Duration kWindow = absl::Seconds(1);

  std::array<absl::Time, kKept> times_ = {};
  int64_t recorded_ = 0;
};

}  // namespace dbpool::pool

#endif  // DBPOOL_SERVER_POOL_DRAIN_RATE_H_
