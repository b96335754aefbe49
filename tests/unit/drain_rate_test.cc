#include "server/pool/drain_rate.h"

#include <gtest/gtest.h>

namespace dbpool::pool {
namespace {

const absl::Time kStart = absl::FromUnixSeconds(1700000000);

TEST(DrainRate, NeedsEnoughHandOffsToPredict) {
  DrainRate rate;
  EXPECT_FALSE(rate.PerSecond(kStart).has_value());
  for (int i = 0; i < DrainRate::kMinEvents - 1; ++i) {
    rate.Record(kStart + absl::Milliseconds(i));
  }
  EXPECT_FALSE(rate.PerSecond(kStart + absl::Milliseconds(10)).has_value());
  rate.Record(kStart + absl::Milliseconds(DrainRate::kMinEvents - 1));
  const auto r = rate.PerSecond(kStart + absl::Milliseconds(10));
  ASSERT_TRUE(r.has_value());
  EXPECT_NEAR(*r, 1000.0, 1.0);
}

TEST(DrainRate, ComesFromTheSpacingNotFromIdleTime) {
  DrainRate rate;
  // Busy for 50 ms after a long quiet spell: 11 hand-offs 5 ms apart.
  for (int i = 0; i <= 10; ++i) rate.Record(kStart + absl::Milliseconds(5 * i));
  const auto r = rate.PerSecond(kStart + absl::Milliseconds(60));
  ASSERT_TRUE(r.has_value());
  EXPECT_NEAR(*r, 200.0, 1.0);
}

TEST(DrainRate, OldHandOffsLeaveTheWindow) {
  DrainRate rate;
  for (int i = 0; i < 20; ++i) rate.Record(kStart + absl::Milliseconds(i));
  EXPECT_TRUE(rate.PerSecond(kStart + absl::Milliseconds(500)).has_value());
  EXPECT_FALSE(rate.PerSecond(kStart + absl::Milliseconds(1100)).has_value());
}

TEST(DrainRate, AllAtOneInstantPredictsNothing) {
  DrainRate rate;
  for (int i = 0; i < 30; ++i) rate.Record(kStart);
  EXPECT_FALSE(rate.PerSecond(kStart).has_value());
}

TEST(DrainRate, KeepsOnlyTheNewest) {
  DrainRate rate;
  // 100 hand-offs 1 ms apart, then 100 more 10 ms apart: only the last
  // ones it keeps, all 10 ms apart, count.
  for (int i = 0; i < 100; ++i) rate.Record(kStart + absl::Milliseconds(i));
  for (int i = 1; i <= 100; ++i) rate.Record(kStart + absl::Milliseconds(100 + 10 * i));
  const auto r = rate.PerSecond(kStart + absl::Milliseconds(1100));
  ASSERT_TRUE(r.has_value());
  EXPECT_NEAR(*r, 100.0, 1.0);
}

}  // namespace
}  // namespace dbpool::pool
