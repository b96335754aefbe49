// PostgreSQL restarted (pg_ctl restart -m fast) under 32 concurrent callers
// and an open-loop stream of calls.
#include <atomic>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/cleanup/cleanup.h"
#include "absl/container/btree_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "tests/fault/fault_util.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

struct Call {
  absl::Time start;
  absl::Time end;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string sqlstate;
  std::string message;
};

// The outage as a fresh libpq connection sees it.
struct Outage {
  absl::Time down;  // the first refused connection ended
  absl::Time up;    // the first accepted one after it began
  bool seen = false;
};

TEST(Restart, FastRestartUnderLoadFailsOnlyRunningCallsAndRecovers) {
  // Throughput is bounded by the sleep (8 connections / 20 ms), not by the
  // CPU that the callers, the server and PostgreSQL share with whatever
  // else runs on the machine, so that buckets before and after compare.
  constexpr char kSql[] = "SELECT pg_sleep(0.02)";
  constexpr int kPool = 8;
  constexpr int kCallers = 32;
  constexpr absl::Duration kDeadline = absl::Seconds(5);
  constexpr absl::Duration kBucket = absl::Milliseconds(100);
  // The load runs kWarmup, then kBefore is the pre-restart measurement, then
  // the restart, then kAfter from PostgreSQL accepting connections again.
  constexpr absl::Duration kWarmup = absl::Milliseconds(300);
  constexpr absl::Duration kBefore = absl::Milliseconds(1500);
  constexpr absl::Duration kAfter = absl::Milliseconds(3500);
  constexpr absl::Duration kRecoveryBound = absl::Seconds(3);
  constexpr int kMaxCallsPerCaller = 20000;
  // The closed-loop callers are all queued while PostgreSQL is down, so an
  // open-loop stream adds one call every kArrivalEvery: calls that arrive
  // during the outage. At an eighth of the pool's capacity it leaves room
  // for the backlog to drain on a loaded machine.
  constexpr absl::Duration kArrivalEvery = absl::Milliseconds(20);
  constexpr int kMaxArrivals = 4000;
  constexpr absl::Duration kMaxLoad = absl::Seconds(20);
  // A goodbye from a backend reaches the pool's socket a moment after
  // PostgreSQL starts refusing connections; a call that took a connection
  // within that moment was running on a dropped connection, not arriving
  // during the outage.
  constexpr absl::Duration kGoodbyeMargin = absl::Milliseconds(100);

  TestServer server({{"DB_POOL_MAX_CONNECTIONS", absl::StrCat(kPool)},
                     {"DB_POOL_MIN_CONNECTIONS", absl::StrCat(kPool)},
                     {"DB_APPLICATION_NAME", "dbpool-restart"}});
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().idle == kPool; }));
  Figures fig;

  std::atomic<bool> stop{false};
  const absl::Time load_limit = absl::Now() + kMaxLoad;
  std::vector<std::vector<Call>> calls(kCallers);
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&, t] {
      std::vector<Call>& mine = calls[t];
      mine.reserve(kMaxCallsPerCaller);
      for (int i = 0; i < kMaxCallsPerCaller && !stop.load() &&
                      absl::Now() < load_limit;
           ++i) {
        Call c;
        v1::QueryResponse resp;
        c.start = absl::Now();
        grpc::Status st = server.Query(kSql, &resp, kDeadline);
        c.end = absl::Now();
        c.code = st.error_code();
        if (!st.ok()) {
          c.sqlstate = SqlStateOf(st);
          c.message = st.error_message();
        }
        mine.push_back(std::move(c));
      }
    });
  }
  std::vector<std::unique_ptr<AsyncQuery>> arrivals;
  callers.emplace_back([&] {
    for (int i = 0; i < kMaxArrivals && !stop.load() && absl::Now() < load_limit;
         ++i) {
      arrivals.push_back(std::make_unique<AsyncQuery>(
          server.stub(), kSql, kDeadline));
      // The stream's pace, not a wait for anything.
      absl::SleepFor(kArrivalEvery);
    }
  });
  absl::Cleanup join = [&] {
    stop = true;
    for (auto& c : callers) c.join();
  };

  // The load runs for its measurement window; nothing to wait for.
  absl::SleepFor(kWarmup + kBefore);
  const absl::Time restart_begin = absl::Now();
  // The pool's view through the restart: open connections and waiters.
  struct Sample {
    absl::Time at;
    int open;
    int waiting;
  };
  std::vector<Sample> samples;
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    const absl::Time end = absl::Now() + absl::Seconds(15);
    for (int i = 0; i < 2000 && sampling.load() && absl::Now() < end; ++i) {
      const pool::PoolStats s = server.pool().Snapshot();
      samples.push_back({s.time, s.idle + s.active, s.waiting});
      absl::SleepFor(absl::Milliseconds(10));
    }
  });
  absl::Cleanup stop_sampler = [&] {
    sampling = false;
    sampler.join();
  };
  Outage outage;
  std::thread prober([&outage] {
    const absl::Time end = absl::Now() + absl::Seconds(15);
    bool down = false;
    for (int i = 0; i < 20000 && absl::Now() < end; ++i) {
      const absl::Time attempt = absl::Now();
      const bool accepts = PgCluster::Get().Accepts();
      if (!accepts && !down) {
        down = true;
        outage.down = absl::Now();
      } else if (accepts && down) {
        outage.up = attempt;
        outage.seen = true;
        return;
      }
      absl::SleepFor(absl::Milliseconds(2));
    }
  });
  const int64_t opened_before = server.pool().Snapshot().connections_opened;
  PgCluster::Get().Restart();
  const absl::Time restart_end = absl::Now();
  prober.join();
  ASSERT_TRUE(outage.seen) << "no refused connection was seen during the restart";
  // When the pool's first new connection opened: reconnect backoff shows
  // here, apart from the ramp-up of throughput.
  ASSERT_TRUE(Eventually(
      [&] { return server.pool().Snapshot().connections_opened > opened_before; },
      absl::Seconds(5), absl::Milliseconds(1)));
  const absl::Time reconnected = absl::Now();
  const int64_t connect_errors = server.pool().Snapshot().connect_errors;
  absl::SleepFor(outage.up + kAfter - absl::Now());
  std::move(join).Invoke();
  std::move(stop_sampler).Invoke();

  std::vector<Call> all;
  for (auto& mine : calls) all.insert(all.end(), mine.begin(), mine.end());
  for (auto& q : arrivals) {
    grpc::Status st = q->Wait();
    all.push_back(Call{q->started(), q->finished(), st.error_code(), SqlStateOf(st),
                       st.error_message()});
  }
  int64_t ok = 0, overdue = 0, during_outage = 0;
  std::vector<const Call*> failures;
  absl::btree_map<std::string, int> failure_kinds;
  absl::Duration slowest;
  for (const Call& c : all) {
    slowest = std::max(slowest, c.end - c.start);
    if (c.end - c.start > kDeadline + absl::Seconds(1)) ++overdue;
    if (c.start >= outage.down && c.start < outage.up) ++during_outage;
    if (c.code == grpc::StatusCode::OK) {
      ++ok;
    } else {
      failures.push_back(&c);
      ++failure_kinds[absl::StrCat(c.code, "/", c.sqlstate)];
    }
  }

  // Throughput: successful calls per 100 ms bucket, by completion time.
  const auto completed_in = [&](absl::Time from, absl::Time to) {
    int64_t n = 0;
    for (const Call& c : all) {
      if (c.code == grpc::StatusCode::OK && c.end >= from && c.end < to) ++n;
    }
    return n;
  };
  const double before_per_bucket =
      static_cast<double>(completed_in(restart_begin - kBefore, restart_begin)) /
      (kBefore / kBucket);
  std::vector<int64_t> after;
  absl::Duration recovery = absl::InfiniteDuration();
  for (int k = 0; k < kAfter / kBucket; ++k) {
    const absl::Time from = outage.up + k * kBucket;
    after.push_back(completed_in(from, from + kBucket));
    if (recovery == absl::InfiniteDuration() &&
        static_cast<double>(after.back()) >= 0.9 * before_per_bucket) {
      recovery = (k + 1) * kBucket;
    }
  }

  fig.Add("callers", int64_t{kCallers});
  fig.Add("open_loop_calls", static_cast<int64_t>(arrivals.size()));
  fig.Add("pool", int64_t{kPool});
  fig.Add("calls", static_cast<int64_t>(all.size()));
  fig.Add("ok", ok);
  fig.Add("failed", static_cast<int64_t>(failures.size()));
  fig.Add("failed_kinds", absl::StrJoin(failure_kinds, ",", absl::PairFormatter(":")));
  fig.Add("calls_during_outage", during_outage);
  fig.Add("overdue", overdue);
  fig.AddMs("slowest_call", slowest);
  fig.AddMs("pg_ctl_restart", restart_end - restart_begin);
  fig.AddMs("outage", outage.up - outage.down);
  fig.Add("rate_before_per_s", before_per_bucket * (absl::Seconds(1) / kBucket));
  // Open connections and waiters at the end of each bucket after PostgreSQL
  // was back.
  std::vector<std::string> pool_after;
  for (int k = 0; k < std::min<int64_t>(10, kAfter / kBucket); ++k) {
    const absl::Time t = outage.up + (k + 1) * kBucket;
    const Sample* last = nullptr;
    for (const Sample& x : samples) {
      if (x.at <= t) last = &x;
    }
    if (last != nullptr) pool_after.push_back(absl::StrCat(last->open, ":", last->waiting));
  }
  fig.Add("open_waiting_after_up", absl::StrJoin(pool_after, "/"));
  fig.Add("buckets_after_up",
          absl::StrJoin(after.begin(), after.begin() + std::min<size_t>(after.size(), 10),
                        "/"));
  fig.Add("connect_errors", connect_errors);
  fig.AddMs("first_connection_after_up", reconnected - outage.up);
  fig.AddMs("recovery_to_90pct", recovery);

  EXPECT_EQ(overdue, 0) << "no call outlives its deadline";
  EXPECT_GT(during_outage, 0) << "calls arrived during the outage";
  EXPECT_LE(static_cast<int64_t>(failures.size()), kPool)
      << "only calls running on a dropped connection fail";
  for (const Call* c : failures) {
    EXPECT_EQ(c->code, grpc::StatusCode::UNAVAILABLE)
        << "a dropped connection is UNAVAILABLE: " << c->message;
    EXPECT_LT(c->start, outage.down + kGoodbyeMargin)
        << "a call that arrived during the outage or after it failed, "
        << absl::ToInt64Milliseconds(c->start - outage.down)
        << " ms after PostgreSQL refused connections: " << c->sqlstate << " "
        << c->message;
  }
  EXPECT_LE(recovery, kRecoveryBound)
      << "throughput per 100 ms after PostgreSQL is back: "
      << absl::StrJoin(after, " ") << "; before: " << before_per_bucket;
}

}  // namespace
}  // namespace dbpool::testing
