#include "server/pool/drain_rate.h"

#include <algorithm>

namespace dbpool::pool {

void DrainRate::Roll(absl::Time now) {
  const int64_t index = Index(now);
  if (current_ < 0 || index - current_ >= kBuckets) {
    counts_.fill(0);
  } else {
    for (int64_t i = current_ + 1; i <= index; ++i) counts_[i % kBuckets] = 0;
  }
  current_ = std::max(current_, index);
}

void DrainRate::Record(absl::Time now) {
  Roll(now);
  ++counts_[Index(now) % kBuckets];
}

std::optional<double> DrainRate::PerSecond(absl::Time now) const {
  const int64_t index = Index(now);
  if (current_ < 0 || index - current_ >= kBuckets) return std::nullopt;
  int64_t events = 0;
  int64_t oldest = -1;
  // The buckets still inside the window that ends at `now`.
  for (int64_t i = std::max<int64_t>(0, index - kBuckets + 1); i <= current_; ++i) {
    const int64_t n = counts_[i % kBuckets];
    if (n > 0 && oldest < 0) oldest = i;
    events += n;
  }
  if (events < kMinEvents) return std::nullopt;
  // Over the time since the oldest event in the window, not the whole
  // window: a pool that has been busy for 200 ms drains at 200 ms' rate.
  const absl::Duration span =
      std::max(kBucket, now - (absl::UnixEpoch() + oldest * kBucket));
  return static_cast<double>(events) / absl::ToDoubleSeconds(span);
}

}  // namespace dbpool::pool
