#include "server/pool/drain_rate.h"

#include <gtest/gtest.h>

namespace dbpool::pool {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1700000000);

TEST(DrainRate, NeedsEnoughEventsToPredict) {
  DrainRate rate;
  EXPECT_FALSE(rate.PerSecond(kStart).has_value());
  for (int i = 0; i < DrainRate::kMinEvents - 1; ++i) rate.Record(kStart);
  EXPECT_FALSE(rate.PerSecond(kStart).has_value());
  rate.Record(kStart);
  EXPECT_TRUE(rate.PerSecond(kStart).has_value());
}

TEST(DrainRate, CountsTheLastSecondOverTheTimeItWasBusy) {
  DrainRate rate;
  // 100 events over 500 ms, one every 5 ms.
  for (int i = 0; i < 100; ++i) rate.Record(kStart + absl::Milliseconds(5 * i));
  const auto busy = rate.PerSecond(kStart + absl::Milliseconds(499));
  ASSERT_TRUE(busy.has_value());
  EXPECT_NEAR(*busy, 200.0, 1.0);
  // A second later the window holds nothing.
  EXPECT_FALSE(rate.PerSecond(kStart + absl::Milliseconds(1600)).has_value());
}

TEST(DrainRate, OldBucketsLeaveTheWindow) {
  DrainRate rate;
  for (int i = 0; i < 50; ++i) rate.Record(kStart);
  for (int i = 0; i < 20; ++i) rate.Record(kStart + absl::Milliseconds(1050));
  // At 1.05 s the bucket of kStart has left the one-second window.
  const auto now = rate.PerSecond(kStart + absl::Milliseconds(1050));
  ASSERT_TRUE(now.has_value());
  EXPECT_NEAR(*now, 20 / 0.1, 1.0);
}

}  // namespace
}  // namespace dbpool::pool
