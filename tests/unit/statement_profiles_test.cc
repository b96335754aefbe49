// Which statements may share a connection, as the engine learns them.
#include "server/engine/statement_profiles.h"

#include <gtest/gtest.h>

namespace dbpool::engine {
namespace {

constexpr absl::Duration kBelow = absl::Milliseconds(2);

TEST(StatementProfiles, UnseenStatementsRunAlone) {
  StatementProfiles profiles(kBelow, 100);
  EXPECT_FALSE(profiles.MayShare("SELECT 1"));
  profiles.Record("SELECT 1", absl::Microseconds(50));
  EXPECT_TRUE(profiles.MayShare("SELECT 1"));
}

TEST(StatementProfiles, OnlyPipelinableTextShares) {
  StatementProfiles profiles(kBelow, 100);
  profiles.Record("BEGIN", absl::Microseconds(10));
  profiles.Record("SET x.y = 1", absl::Microseconds(10));
  EXPECT_FALSE(profiles.MayShare("BEGIN"));
  EXPECT_FALSE(profiles.MayShare("SET x.y = 1"));
}

TEST(StatementProfiles, OneSlowRunStopsSharingAndSeveralFastOnesResumeIt) {
  StatementProfiles profiles(kBelow, 100);
  const char* sql = "UPDATE t SET x = 1 WHERE id = $1";
  profiles.Record(sql, absl::Microseconds(100));
  ASSERT_TRUE(profiles.MayShare(sql));
  profiles.Record(sql, absl::Milliseconds(50));  // a lock wait, say
  EXPECT_FALSE(profiles.MayShare(sql));
  profiles.Record(sql, absl::Microseconds(100));
  EXPECT_FALSE(profiles.MayShare(sql)) << "one fast run is not enough after a slow one";
  int runs = 1;
  while (!profiles.MayShare(sql) && runs < 100) {
    profiles.Record(sql, absl::Microseconds(100));
    ++runs;
  }
  EXPECT_TRUE(profiles.MayShare(sql));
  EXPECT_GT(runs, 10);
  EXPECT_LT(runs, 60);
}

TEST(StatementProfiles, AReplyDelayedByTheSchedulerDoesNotStopSharing) {
  StatementProfiles profiles(kBelow, 100);
  const char* sql = "SELECT 1";
  profiles.Record(sql, absl::Microseconds(100));
  profiles.Record(sql, absl::Milliseconds(5));
  EXPECT_TRUE(profiles.MayShare(sql));
  for (int i = 0; i < 8; ++i) profiles.Record(sql, absl::Milliseconds(5));
  EXPECT_FALSE(profiles.MayShare(sql)) << "but a statement that stays slow does";
}

TEST(StatementProfiles, ForgetsEverythingWhenFull) {
  StatementProfiles profiles(kBelow, 2);
  profiles.Record("SELECT 1", absl::Microseconds(10));
  profiles.Record("SELECT 2", absl::Microseconds(10));
  ASSERT_TRUE(profiles.MayShare("SELECT 1"));
  profiles.Record("SELECT 3", absl::Microseconds(10));
  EXPECT_FALSE(profiles.MayShare("SELECT 1"));
  EXPECT_TRUE(profiles.MayShare("SELECT 3"));
}

}  // namespace
}  // namespace dbpool::engine
