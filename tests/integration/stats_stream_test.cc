// StreamPoolStats: first snapshot at once, the interval, only-on-change,
// and the cap on concurrent streams.
#include <memory>
#include <vector>

#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

// Opens a stream on `ctx`, which gets a deadline so that no Read waits
// forever.
std::unique_ptr<grpc::ClientReader<v1::PoolStats>> Open(
    TestServer& server, grpc::ClientContext& ctx, absl::Duration interval,
    bool only_on_change) {
  v1::StreamPoolStatsRequest req;
  *req.mutable_interval() = google::protobuf::util::TimeUtil::NanosecondsToDuration(
      absl::ToInt64Nanoseconds(interval));
  req.set_only_on_change(only_on_change);
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  return server.stub().StreamPoolStats(&ctx, req);
}

TEST(StatsStream, SendsAtOnceThenPerInterval) {
  TestServer server;
  grpc::ClientContext ctx;
  const absl::Time start = absl::Now();
  auto reader = Open(server, ctx, absl::Milliseconds(100), false);
  v1::PoolStats s;
  ASSERT_TRUE(reader->Read(&s));
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500)) << "first snapshot at once";
  EXPECT_EQ(s.max_connections(), 4);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(reader->Read(&s));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(290)) << "one per interval";
  ctx.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(StatsStream, OnlyOnChangeStaysQuietUntilTheGaugesMove) {
  TestServer server(ServerEnv{{"DB_POOL_MIN_CONNECTIONS", "0"}});
  // Let the probe connection settle so nothing moves by itself.
  const absl::Time settle = absl::Now() + absl::Seconds(5);
  while ((server.pool().Snapshot().connecting > 0 || !server.pool().Serving()) &&
         absl::Now() < settle) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  grpc::ClientContext ctx;
  auto reader = Open(server, ctx, absl::Milliseconds(100), true);
  v1::PoolStats first;
  ASSERT_TRUE(reader->Read(&first));
  // A query in another thread moves the gauges (active goes up and down).
  std::thread load([&] {
    absl::SleepFor(absl::Milliseconds(600));
    v1::QueryResponse resp;
    EXPECT_TRUE(server.Query("SELECT pg_sleep(0.5)", &resp).ok());
  });
  const absl::Time before = absl::Now();
  v1::PoolStats next;
  ASSERT_TRUE(reader->Read(&next));
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(500))
      << "nothing is sent while the gauges stand still";
  EXPECT_NE(next.active_connections() + next.total_connections(),
            first.active_connections() + first.total_connections());
  load.join();
  ctx.TryCancel();
  reader->Finish();
}

TEST(StatsStream, ConcurrentStreamsAreCapped) {
  TestServer server(ServerEnv{{"DBPOOL_MAX_STATS_STREAMS", "2"}});
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::PoolStats>>> readers;
  for (int i = 0; i < 2; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    readers.push_back(Open(server, *contexts.back(), absl::Seconds(1), false));
    v1::PoolStats s;
    ASSERT_TRUE(readers.back()->Read(&s));
  }
  grpc::ClientContext ctx;
  auto over = Open(server, ctx, absl::Seconds(1), false);
  v1::PoolStats s;
  EXPECT_FALSE(over->Read(&s));
  EXPECT_EQ(over->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  for (auto& c : contexts) c->TryCancel();
  for (auto& r : readers) r->Finish();
}

}  // namespace
}  // namespace dbpool::testing
