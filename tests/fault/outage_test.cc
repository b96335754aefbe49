// PostgreSQL unreachable: down for longer than the acquire timeout, and
// down when dbpool starts.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "tests/fault/fault_util.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using ::testing::HasSubstr;
using HealthStatus = grpc::health::v1::HealthCheckResponse;

TEST(Outage, LongerThanAcquireTimeoutFailsFastAndRecoversByItself) {
  constexpr absl::Duration kAcquireTimeout = absl::Seconds(2);
  constexpr int kProbes = 20;
  TestServer server({{"DB_POOL_ACQUIRE_TIMEOUT_MS", Ms(kAcquireTimeout)},
                     {"DB_POOL_MIN_CONNECTIONS", "2"}});
  Figures fig;
  v1::QueryResponse resp;
  ASSERT_TRUE(server.Query("SELECT 1", &resp).ok());
  ASSERT_TRUE(Eventually([&] { return server.Health() == HealthStatus::SERVING; }));

  PgCluster::Get().Stop();
  const absl::Time stopped = absl::Now();
  // The pool learns of the outage from its connections' goodbyes and its
  // next connection attempt.
  ASSERT_TRUE(Eventually([&] { return server.Health() == HealthStatus::NOT_SERVING; }));
  fig.AddMs("not_serving_after_stop", absl::Now() - stopped);
  // An outage longer than the acquire timeout is what this test is about:
  // the time has to pass, there is no condition to poll for.
  absl::SleepFor(kAcquireTimeout + absl::Milliseconds(200));

  Latencies fail_fast;
  for (int i = 0; i < kProbes; ++i) {
    const absl::Time start = absl::Now();
    grpc::Status st = server.Query("SELECT 1", &resp, absl::Seconds(10));
    fail_fast.Add(absl::Now() - start);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr("database unreachable"));
  }
  EXPECT_EQ(server.Health(), HealthStatus::NOT_SERVING);
  v1::PoolStats stats;
  ASSERT_TRUE(server.PoolStats(&stats).ok());
  EXPECT_FALSE(stats.database_reachable());
  fig.Add("fail_fast_calls", static_cast<int64_t>(fail_fast.size()));
  fig.AddMs("fail_fast_p50", fail_fast.Quantile(0.5));
  fig.AddMs("fail_fast_max", fail_fast.Max());
  fig.AddMs("acquire_timeout", kAcquireTimeout);
  EXPECT_LT(fail_fast.Max(), kAcquireTimeout / 4)
      << "calls fail fast instead of waiting for the acquire timeout";

  PgCluster::Get().Start();
  ASSERT_TRUE(Eventually([] { return PgCluster::Get().Accepts(); }));
  const absl::Time up = absl::Now();
  EXPECT_TRUE(Eventually([&] { return server.Health() == HealthStatus::SERVING; }))
      << "health recovers without help";
  fig.AddMs("serving_after_up", absl::Now() - up);
  EXPECT_TRUE(Eventually([&] { return server.Query("SELECT 1", &resp).ok(); }))
      << "queries recover without help";
  fig.AddMs("query_ok_after_up", absl::Now() - up);
  EXPECT_TRUE(server.PoolStats(&stats).ok());
  EXPECT_TRUE(stats.database_reachable());
}

TEST(Outage, DatabaseDownWhenServerStartsThenAppears) {
  // A cluster of this test's own whose port is known before it exists.
  PgCluster late;
  late.Init();
  const absl::Time begin = absl::Now();
  TestServer server({{"DATABASE_URL", late.conninfo()},
                     {"DB_POOL_ACQUIRE_TIMEOUT_MS", Ms(absl::Seconds(1))}});
  Figures fig;
  fig.AddMs("server_started", absl::Now() - begin);
  EXPECT_EQ(server.Health(), HealthStatus::NOT_SERVING);
  v1::QueryResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status st = server.Query("SELECT 1", &resp, absl::Seconds(10));
  fig.AddMs("query_failed_after", absl::Now() - start);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_THAT(st.error_message(), HasSubstr("database unreachable"));
  EXPECT_EQ(server.Health(), HealthStatus::NOT_SERVING);

  // Start() fails the test unless the cluster got the port the server was
  // configured with.
  late.Start();
  ASSERT_TRUE(late.Accepts());
  const absl::Time up = absl::Now();
  EXPECT_TRUE(Eventually([&] { return server.Health() == HealthStatus::SERVING; }))
      << "health turns SERVING once the database appears";
  fig.AddMs("serving_after_start", absl::Now() - up);
  EXPECT_TRUE(Eventually([&] { return server.Query("SELECT 1", &resp).ok(); }));
  fig.AddMs("query_ok_after_start", absl::Now() - up);
}

}  // namespace
}  // namespace dbpool::testing
