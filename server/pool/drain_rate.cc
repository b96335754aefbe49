#include "server/pool/drain_rate.h"

#include <algorithm>

namespace dbpool::pool {

void DrainRate::Record(absl::Time now) {
  times_[recorded_ % kKept] = now;
  ++recorded_;
}

std::optional<double> DrainRate::PerSecond(absl::Time now) const {
  if (recorded_ == 0) return std::nullopt;
  const absl::Time newest = times_[(recorded_ - 1) % kKept];
  absl::Time oldest = newest;
  int events = 0;
  for (int64_t i = recorded_ - 1; i >= std::max<int64_t>(0, recorded_ - kKept); --i) {
    const absl::Time t = times_[i % kKept];
    if (t <= now - kWindow) break;
    oldest = t;
    ++events;
  }
  if (events < kMinEvents || newest <= oldest) return std::nullopt;
  return (events - 1) / absl::ToDoubleSeconds(newest - oldest);
}

}  // namespace dbpool::pool
