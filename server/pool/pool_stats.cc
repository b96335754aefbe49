#include "server/pool/pool_stats.h"

#include <cmath>
#include <numeric>

namespace dbpool::pool {

const char* CloseReasonName(CloseReason reason) {
  switch (reason) {
    case CloseReason::kIdle:
      return "idle";
    case CloseReason::kLifetime:
      return "lifetime";
    case CloseReason::kBroken:
      return "broken";
    case CloseReason::kShutdown:
      return "shutdown";
  }
  return "unknown";
}

int64_t PoolStats::connections_closed_total() const {
  return std::accumulate(connections_closed.begin(), connections_closed.end(),
                         int64_t{0});
}

absl::Duration PoolStats::AcquireQuantile(double q) const {
  const int64_t count = std::accumulate(acquire_buckets.begin(),
                                        acquire_buckets.end(), int64_t{0});
  if (count == 0) return absl::ZeroDuration();
  const auto rank = static_cast<int64_t>(std::ceil(q * count));
  int64_t seen = 0;
  for (size_t i = 0; i < kAcquireBucketSeconds.size(); ++i) {
    seen += acquire_buckets[i];
    if (seen >= rank) return absl::Seconds(kAcquireBucketSeconds[i]);
  }
  return absl::InfiniteDuration();
}

}  // namespace dbpool::pool
