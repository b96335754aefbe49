// Overload: more callers than connections and queue together. The queue
// is bounded and first in, first out; calls beyond it are refused at once;
// threads and memory stay bounded; health and stats keep answering.
#include <algorithm>
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "tests/fault/fault_util.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using HealthStatus = grpc::health::v1::HealthCheckResponse;

// How much the process may grow under the overload. AddressSanitizer keeps
// freed memory in a quarantine of up to 256 MiB, which shows as RSS.
#if defined(__SANITIZE_ADDRESS__)
constexpr int64_t kRssGrowthBound = int64_t{512} << 20;
#else
constexpr int64_t kRssGrowthBound = int64_t{256} << 20;
#endif

TEST(Overload, ExhaustedPoolQueuesThenRejects) {
  TestServer server({{"DB_POOL_MAX_CONNECTIONS", "2"}, {"DB_POOL_MAX_WAITING", "2"}});
  std::vector<std::unique_ptr<AsyncQuery>> holders;
  for (int i = 0; i < 2; ++i) {
    holders.push_back(std::make_unique<AsyncQuery>(server.stub(), "SELECT pg_sleep(1)",
                                                   absl::Seconds(10)));
  }
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().active == 2; }));
  std::vector<std::unique_ptr<AsyncQuery>> waiters;
  for (int i = 0; i < 2; ++i) {
    waiters.push_back(
        std::make_unique<AsyncQuery>(server.stub(), "SELECT 1", absl::Seconds(10)));
  }
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().waiting == 2; }));
  v1::QueryResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status over = server.Query("SELECT 1", &resp);
  EXPECT_EQ(over.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500)) << "rejected at once";
  for (auto& q : holders) EXPECT_TRUE(q->Wait().ok());
  for (auto& q : waiters) EXPECT_TRUE(q->Wait().ok());
}

// Samples what must stay bounded and responsive while a load runs.
class Sampler {
 public:
  explicit Sampler(TestServer& server) : server_(server) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~Sampler() { Stop(); }

  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }

  int threads_peak = 0;
  int64_t rss_peak = 0;
  Latencies health;
  Latencies stats;
  int not_serving = 0;
  int stats_failed = 0;
  int waiting_peak = 0;
  int active_peak = 0;

 private:
  void Loop() {
    const absl::Time end = absl::Now() + absl::Seconds(30);
    for (int i = 0; i < 3000 && !stop_.load() && absl::Now() < end; ++i) {
      threads_peak = std::max(threads_peak, ThreadCount());
      rss_peak = std::max(rss_peak, RssBytes());
      absl::Time t = absl::Now();
      if (server_.Health(absl::Seconds(5)) != HealthStatus::SERVING) ++not_serving;
      health.Add(absl::Now() - t);
      t = absl::Now();
      v1::PoolStats s;
      if (server_.PoolStats(&s, absl::Seconds(5)).ok()) {
        waiting_peak = std::max(waiting_peak, s.waiting_connections());
        active_peak = std::max(active_peak, s.active_connections());
      } else {
        ++stats_failed;
      }
      stats.Add(absl::Now() - t);
      absl::SleepFor(absl::Milliseconds(20));
    }
  }

  TestServer& server_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(Overload, TenTimesCapacityStaysBoundedAndResponsive) {
  constexpr int kPool = 4;
  constexpr int kMaxWaiting = 40;
  constexpr int kCallers = 400;
  constexpr int kMaxRounds = 10;
  constexpr absl::Duration kLoad = absl::Seconds(4);
  TestServer server({{"DB_POOL_MAX_CONNECTIONS", absl::StrCat(kPool)},
                     {"DB_POOL_MIN_CONNECTIONS", absl::StrCat(kPool)},
                     {"DB_POOL_MAX_WAITING", absl::StrCat(kMaxWaiting)}});
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().idle == kPool; }));
  Figures fig;
  // gRPC starts its threads and grows its buffers on first use: warm it up
  // before taking the baseline.
  {
    std::vector<std::unique_ptr<AsyncQuery>> warm;
    for (int i = 0; i < kPool + kMaxWaiting; ++i) {
      warm.push_back(
          std::make_unique<AsyncQuery>(server.stub(), "SELECT 1", absl::Seconds(10)));
    }
    for (auto& q : warm) ASSERT_TRUE(q->Wait().ok());
  }
  const int threads_before = ThreadCount();
  const int64_t rss_before = RssBytes();

  Sampler sampler(server);
  int64_t ok = 0, exhausted = 0, other = 0;
  Latencies rejected_after;
  int rounds = 0;
  const absl::Time end = absl::Now() + kLoad;
  // Rounds of kCallers calls issued at once: the first kPool run, the next
  // kMaxWaiting queue, the rest must be refused.
  for (; rounds < kMaxRounds && absl::Now() < end; ++rounds) {
    std::vector<std::unique_ptr<AsyncQuery>> calls;
    calls.reserve(kCallers);
    for (int i = 0; i < kCallers; ++i) {
      calls.push_back(std::make_unique<AsyncQuery>(
          server.stub(), "SELECT pg_sleep(0.01)", absl::Seconds(10)));
    }
    for (auto& c : calls) {
      grpc::Status st = c->Wait();
      if (st.ok()) {
        ++ok;
      } else if (st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        ++exhausted;
        rejected_after.Add(c->finished() - c->started());
      } else {
        ++other;
        ADD_FAILURE() << st.error_code() << ": " << st.error_message();
      }
    }
  }
  sampler.Stop();

  fig.Add("rounds", int64_t{rounds});
  fig.Add("callers_per_round", int64_t{kCallers});
  fig.Add("ok", ok);
  fig.Add("resource_exhausted", exhausted);
  fig.Add("other_errors", other);
  fig.AddMs("rejected_p50", rejected_after.Quantile(0.5));
  fig.AddMs("rejected_p99", rejected_after.Quantile(0.99));
  fig.AddMs("rejected_max", rejected_after.Max());
  fig.Add("threads_before", int64_t{threads_before});
  fig.Add("threads_peak", int64_t{sampler.threads_peak});
  fig.Add("rss_before_mib", rss_before >> 20);
  fig.Add("rss_peak_mib", sampler.rss_peak >> 20);
  fig.Add("health_checks", static_cast<int64_t>(sampler.health.size()));
  fig.AddMs("health_p50", sampler.health.Quantile(0.5));
  fig.AddMs("health_max", sampler.health.Max());
  fig.AddMs("stats_p50", sampler.stats.Quantile(0.5));
  fig.AddMs("stats_max", sampler.stats.Max());
  fig.Add("waiting_peak", int64_t{sampler.waiting_peak});

  EXPECT_GE(rounds, 2);
  EXPECT_EQ(other, 0);
  EXPECT_GE(ok, int64_t{rounds} * (kPool + kMaxWaiting))
      << "each round, the pool and the full queue are served";
  EXPECT_GT(exhausted, 0);
  EXPECT_LT(rejected_after.Max(), absl::Seconds(1)) << "refused at once";
  // A thread per caller would be hundreds more; gRPC's pollers and the
  // pool's own threads are a few dozen at most.
  EXPECT_LE(sampler.threads_peak, threads_before + 64);
  EXPECT_LE(sampler.rss_peak - rss_before, kRssGrowthBound);
  EXPECT_GE(sampler.health.size(), 10u);
  EXPECT_EQ(sampler.not_serving, 0);
  EXPECT_EQ(sampler.stats_failed, 0);
  EXPECT_LT(sampler.health.Max(), absl::Seconds(1)) << "health answers promptly";
  EXPECT_LT(sampler.stats.Max(), absl::Seconds(1)) << "stats answer promptly";
  EXPECT_LE(sampler.waiting_peak, kMaxWaiting);
  EXPECT_LE(sampler.active_peak, kPool);
}

// Calls queued one by one are served in that order. Three connections stay
// busy and one cycles through the queue, so the order in which the waiters
// reach the database (a sequence) is the order the pool served them.
TEST(Overload, QueuedCallsAreServedInArrivalOrder) {
  constexpr int kPool = 4;
  constexpr int kMaxWaiting = 40;
  TestServer server({{"DB_POOL_MAX_CONNECTIONS", absl::StrCat(kPool)},
                     {"DB_POOL_MIN_CONNECTIONS", absl::StrCat(kPool)},
                     {"DB_POOL_MAX_WAITING", absl::StrCat(kMaxWaiting)},
                     // The queue fills one call at a time: room for a slow
                     // machine.
                     {"DB_POOL_ACQUIRE_TIMEOUT_MS", Ms(absl::Seconds(30))},
                     // The cancelled holder's connection must come back,
                     // however slowly the cancel lands on a loaded machine.
                     {"DB_CANCEL_GRACE_MS", Ms(absl::Seconds(10))}});
  PgCluster::Get().Scalar("CREATE SEQUENCE fifo");
  Figures fig;
  std::vector<std::unique_ptr<AsyncQuery>> holders;
  for (int i = 0; i < kPool; ++i) {
    holders.push_back(std::make_unique<AsyncQuery>(server.stub(), "SELECT pg_sleep(30)",
                                                   absl::Seconds(60)));
  }
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().active == kPool; }));
  std::vector<std::unique_ptr<AsyncQuery>> waiters;
  for (int i = 0; i < kMaxWaiting; ++i) {
    waiters.push_back(std::make_unique<AsyncQuery>(
        server.stub(), "SELECT nextval('fifo')", absl::Seconds(60)));
    ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().waiting == i + 1; }))
        << "waiter " << i << " queued";
  }
  AsyncQuery over(server.stub(), "SELECT 1", absl::Seconds(10));
  grpc::Status st = over.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
  fig.AddMs("over_bound_rejected_after", over.finished() - over.started());
  EXPECT_LT(over.finished() - over.started(), absl::Seconds(1)) << "refused at once";

  // One connection comes free: the cancelled statement stops and its
  // connection goes to the oldest waiter, then to the next.
  holders[0]->Cancel();
  int out_of_order = 0;
  int max_displacement = 0;
  for (int i = 0; i < kMaxWaiting; ++i) {
    grpc::Status w = waiters[i]->Wait();
    ASSERT_TRUE(w.ok()) << i << ": " << w.error_message();
    const auto& r = waiters[i]->response();
    ASSERT_EQ(r.rows_size(), 1);
    const int64_t served = r.rows(0).values(0).int64_value() - 1;
    EXPECT_EQ(r.timings().queue_depth_on_arrival(), i) << "arrived in order";
    if (served != i) ++out_of_order;
    max_displacement = std::max<int>(max_displacement, std::abs(served - i));
  }
  fig.Add("waiters", int64_t{kMaxWaiting});
  fig.Add("served_out_of_order", int64_t{out_of_order});
  fig.Add("max_displacement", int64_t{max_displacement});
  EXPECT_EQ(out_of_order, 0) << "served first in, first out";
  const pool::PoolStats s = server.pool().Snapshot();
  EXPECT_EQ(s.connections_closed_total(), 0)
      << "broken " << s.connections_closed[static_cast<int>(pool::CloseReason::kBroken)]
      << ", idle " << s.connections_closed[static_cast<int>(pool::CloseReason::kIdle)];
}

}  // namespace
}  // namespace dbpool::testing
