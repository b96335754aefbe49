// The event-loop engine on its own against a real PostgreSQL: results,
// errors, read-only calls, deadlines and cancels, many callers on few
// connections, and pipelining (several callers' statements on one
// connection), without gRPC in between.
#include "server/engine/loop_engine.h"

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

#include "server/db/engine_counters.h"
#include "server/db/pg_connection.h"
#include "server/db/sql_state.h"
#include "server/pool/connection_pool.h"
#include "tests/integration/engine_fixture.h"
#include "tests/support/pg_cluster.h"

namespace dbpool::engine {
namespace {

using testing::PgCluster;

class LoopEngineTest : public EngineTest {
 protected:
  // Statements sent while others were on their connection, so far in this
  // process.
  static uint64_t SharedSends() {
    const db::EngineCounters& c = db::Counters();
    uint64_t n = 0;
    for (size_t k = 2; k < c.pipeline_depth.size(); ++k) n += c.pipeline_depth[k].load();
    return n;
  }
  static uint64_t DeepestSend() {
    const db::EngineCounters& c = db::Counters();
    uint64_t deepest = 0;
    for (size_t k = 1; k < c.pipeline_depth.size(); ++k) {
      if (c.pipeline_depth[k].load() > 0) deepest = k;
    }
    return deepest;
  }

};

// A closed loop of callers: each completion submits that caller's next
// call until `calls` have been submitted; `make(i)` builds call i and
// `check(i, result)` judges it (false: a failure). Waits at most `limit`
// for them all; must outlive the calls it made.
struct ClosedLoop {
  std::function<QueryJob(int)> make;
  // Runs right after call i is submitted (to cancel it, say).
  std::function<void(int, const std::shared_ptr<QueryHandle>&)> after_submit;
  std::function<bool(int, const QueryResult&)> check;
  std::atomic<int> failures{0};

  // Returns the number of calls that completed.
  int Run(QueryEngine& engine, int callers, int calls, absl::Duration limit) {
    // Shared with the callbacks, the last of which may still be returning
    // when the wait ends.
    struct State {
      std::atomic<int> next{0};
      std::atomic<int> completed{0};
      Flag all;
    };
    auto state = std::make_shared<State>();
    for (int c = 0; c < callers; ++c) Issue(engine, state, calls);
    state->all.WaitFor(limit);
    return state->completed.load();
  }

 private:
  template <typename State>
  void Issue(QueryEngine& engine, const std::shared_ptr<State>& state, int calls) {
    const int i = state->next.fetch_add(1);
    if (i >= calls) return;
    auto handle = engine.Submit(make(i), [this, &engine, state, calls, i](QueryResult r) {
      if (!check(i, r)) failures.fetch_add(1);
      Issue(engine, state, calls);
      if (state->completed.fetch_add(1) + 1 == calls) state->all.Set();
    });
    if (after_submit) after_submit(i, handle);
  }
};

TEST_F(LoopEngineTest, RunsStatementsAndReportsErrors) {
  Make(2, 1);
  QueryJob job = Job("SELECT $1::int8 + 1 AS next, '{1,2}'::int4[] AS arr");
  db::EncodedParam p;
  v1::Value v;
  v.set_int64_value(41);
  ASSERT_TRUE(db::EncodeParam(v, &p).ok());
  job.statements[0].params.push_back(p);
  for (int i = 0; i < 3; ++i) {  // unnamed, then prepared, then from the cache
    QueryResult r = Run(job);
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(Reply(r).rows_size(), 1);
    EXPECT_EQ(Reply(r).rows(0).values(0).int64_value(), 42);
    EXPECT_EQ(Reply(r).columns(1).type_name(), "integer[]");
    EXPECT_EQ(Reply(r).command_tag(), "SELECT 1");
    ASSERT_TRUE(r.timings.has_value());
  }
  QueryResult bad = Run(Job("SELECT 1/0"));
  EXPECT_EQ(db::SqlStateOf(bad.status).value_or(""), "22012");
  QueryResult syntax = Run(Job("SELEC 1"));
  EXPECT_EQ(db::SqlStateOf(syntax.status).value_or(""), "42601");
  QueryResult after = Run(Job("SELECT 1"));
  EXPECT_TRUE(after.status.ok()) << after.status;
}

TEST_F(LoopEngineTest, ReadOnlyCallsCannotWrite) {
  Make(1, 1);
  ASSERT_TRUE(Run(Job("CREATE TABLE IF NOT EXISTS engine_ro (x int)")).status.ok());
  QueryJob job = Job("INSERT INTO engine_ro VALUES (1)");
  job.read_only = true;
  EXPECT_EQ(db::SqlStateOf(Run(job).status).value_or(""), "25006");
  job = Job("SELECT count(*) FROM engine_ro");
  job.read_only = true;
  QueryResult r = Run(job);
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(Reply(r).rows(0).values(0).int64_value(), 0);
}

TEST_F(LoopEngineTest, DeadlineCancelsOnTheServerAndKeepsTheConnection) {
  Make(1, 1);
  const std::string pid = Reply(Run(Job("SELECT pg_backend_pid()::text"))).rows(0).values(0).string_value();
  QueryResult r = Run(Job("SELECT pg_sleep(30)", absl::Milliseconds(300)));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded) << r.status;
  EXPECT_EQ(db::SqlStateOf(r.status).value_or(""), "57014");
  QueryResult again = Run(Job("SELECT pg_backend_pid()::text"));
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_EQ(Reply(again).rows(0).values(0).string_value(), pid);
}

TEST_F(LoopEngineTest, CancelEndsARunningStatement) {
  Make(1, 1);
  Flag done;
  QueryResult result;
  auto handle = engine_->Submit(Job("SELECT pg_sleep(30)"), [&](QueryResult r) {
    result = std::move(r);
    done.Set();
  });
  absl::SleepFor(absl::Milliseconds(200));
  handle->Cancel();
  ASSERT_TRUE(done.WaitFor(absl::Seconds(5)));
  EXPECT_EQ(result.status.code(), absl::StatusCode::kCancelled) << result.status;
  EXPECT_TRUE(Run(Job("SELECT 1")).status.ok());
}

TEST_F(LoopEngineTest, ManyCallersOnFewConnections) {
  constexpr int kCalls = 2000;
  Make(4, 2, kCalls);
  std::atomic<int> ok{0};
  std::atomic<int> finished{0};
  std::mutex mu;
  std::string first_error;
  Flag all;
  for (int i = 0; i < kCalls; ++i) {
    QueryJob job = Job("SELECT $1::int8 * 2");
    db::EncodedParam p;
    v1::Value v;
    v.set_int64_value(i);
    ASSERT_TRUE(db::EncodeParam(v, &p).ok());
    job.statements[0].params.push_back(p);
    engine_->Submit(std::move(job), [&, i](QueryResult r) {
      if (r.status.ok() && Reply(r).rows(0).values(0).int64_value() == 2 * i) {
        ++ok;
      } else {
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.empty()) first_error = r.status.ToString();
      }
      if (++finished == kCalls) all.Set();
    });
  }
  ASSERT_TRUE(all.WaitFor(absl::Seconds(60)));
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(ok.load(), kCalls) << "first error: " << first_error;
  const pool::PoolStats s = pool_->Snapshot();
  EXPECT_EQ(s.active, 0);
  EXPECT_LE(s.total, 4);
}

TEST_F(LoopEngineTest, ShortStatementsShareBusyConnectionsAndKeepTheirOwnOutcome) {
  constexpr int kCalls = 4000;
  Make(2, 1, 1000, /*pipeline_depth=*/8);
  const std::string sql = "SELECT $1::int8 * 2 / $2::int8";
  // Seen once and short: from now on it may share a connection.
  ASSERT_TRUE(Run(IntJob(sql, {1, 1})).status.ok());
  const uint64_t shared_before = SharedSends();
  std::mutex mu;
  std::string first_failure;
  std::atomic<int> divided_by_zero{0};
  ClosedLoop load;
  // Every seventh call fails with its own error, in the middle of others'.
  load.make = [&](int i) { return IntJob(sql, {i, i % 7 == 0 ? 0 : 1}); };
  load.check = [&](int i, const QueryResult& r) {
    bool good;
    if (i % 7 == 0) {
      good = db::SqlStateOf(r.status).value_or("") == "22012";
      if (good) ++divided_by_zero;
    } else {
      good = r.status.ok() && Reply(r).rows_size() == 1 &&
             Reply(r).rows(0).values(0).int64_value() == 2 * int64_t{i};
    }
    if (!good) {
      std::lock_guard<std::mutex> lock(mu);
      if (first_failure.empty()) first_failure = absl::StrCat(i, ": ", r.status.ToString());
    }
    return good;
  };
  ASSERT_EQ(load.Run(*engine_, 32, kCalls, absl::Seconds(60)), kCalls);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(load.failures.load(), 0) << "first: " << first_failure;
  EXPECT_EQ(divided_by_zero.load(), (kCalls + 6) / 7);
  EXPECT_GT(SharedSends(), shared_before) << "nothing was pipelined";
  EXPECT_LE(DeepestSend(), 8u) << "DB_PIPELINE_DEPTH bounds the statements in flight";
  EXPECT_EQ(db::Counters().pipeline_in_flight.load(), 0);
  const pool::PoolStats s = pool_->Snapshot();
  EXPECT_EQ(s.active, 0);
  EXPECT_LE(s.total, 2);
  EXPECT_EQ(s.connections_opened, s.total) << "a connection was closed under the load";
}

TEST_F(LoopEngineTest, DepthOneNeverShares) {
  Make(2, 1, 1000, /*pipeline_depth=*/1);
  const std::string sql = "SELECT $1::int8";
  ASSERT_TRUE(Run(IntJob(sql, {1})).status.ok());
  const uint64_t shared_before = SharedSends();
  ClosedLoop load;
  load.make = [&](int i) { return IntJob(sql, {i}); };
  load.check = [](int, const QueryResult& r) { return r.status.ok(); };
  ASSERT_EQ(load.Run(*engine_, 16, 1000, absl::Seconds(60)), 1000);
  EXPECT_EQ(load.failures.load(), 0);
  EXPECT_EQ(SharedSends(), shared_before);
}

TEST_F(LoopEngineTest, StatementsThatChangeTheSessionNeverShare) {
  Make(1, 1, 1000, /*pipeline_depth=*/8);
  // Each leaves a setting behind that only its own reset undoes; sharing a
  // pipeline would let the next caller's statement run under it.
  const std::string set = "SELECT set_config('application_name', 'x' || $1::text, false)";
  const std::string read = "SELECT current_setting('application_name')";
  ASSERT_TRUE(Run(IntJob(set, {0})).status.ok());
  ASSERT_TRUE(Run(Job(read)).status.ok());
  std::mutex mu;
  std::string leaked;
  ClosedLoop load;
  load.make = [&](int i) { return i % 2 == 0 ? IntJob(set, {i}) : Job(read); };
  load.check = [&](int i, const QueryResult& r) {
    if (!r.status.ok()) return false;
    if (i % 2 == 1 && Reply(r).rows(0).values(0).string_value() != "dbpool-engine-test") {
      std::lock_guard<std::mutex> lock(mu);
      leaked = Reply(r).rows(0).values(0).string_value();
      return false;
    }
    return true;
  };
  ASSERT_EQ(load.Run(*engine_, 16, 2000, absl::Seconds(60)), 2000);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(load.failures.load(), 0) << "a reader saw " << leaked;
}

// Issue 9: a cancel or a timeout never fails another caller's statement.
// Half the callers cancel their calls or give them deadlines that expire
// mid-flight, on connections they share with the other half.
TEST_F(LoopEngineTest, CancelsAndDeadlinesNeverFailOtherCallers) {
  constexpr int kCancels = 10000;
  constexpr int kCalls = 4 * kCancels;
  Make(4, 1, kCalls, /*pipeline_depth=*/8);
  const std::string sql = "SELECT $1::int8 + 1";
  ASSERT_TRUE(Run(IntJob(sql, {1})).status.ok());
  const uint64_t shared_before = SharedSends();
  std::atomic<int> stopped{0};
  std::atomic<int> victims{0};
  std::mutex mu;
  std::string first_victim;
  ClosedLoop load;
  // Odd calls keep their results; even ones are cancelled at once, or
  // after a moment, or have a deadline of a few hundred microseconds.
  load.make = [&](int i) {
    if (i % 2 == 1) return IntJob(sql, {i});
    return IntJob(sql, {i}, i % 6 == 4 ? absl::Microseconds(100 + i % 400) : absl::Seconds(30));
  };
  // Cancelled "after a moment": when the next call completes.
  std::vector<std::shared_ptr<QueryHandle>> later;
  load.after_submit = [&](int i, const std::shared_ptr<QueryHandle>& handle) {
    if (i % 6 == 0) handle->Cancel();
    if (i % 6 == 2) {
      std::lock_guard<std::mutex> lock(mu);
      later.push_back(handle);
    }
  };
  load.check = [&](int i, const QueryResult& r) {
    std::vector<std::shared_ptr<QueryHandle>> due;
    {
      std::lock_guard<std::mutex> lock(mu);
      due.swap(later);
    }
    for (const auto& handle : due) handle->Cancel();
    if (i % 2 == 0) {
      if (r.status.code() == absl::StatusCode::kCancelled ||
          r.status.code() == absl::StatusCode::kDeadlineExceeded) {
        ++stopped;
        return true;
      }
      // Finished before the cancel or the deadline.
      return r.status.ok() && Reply(r).rows(0).values(0).int64_value() == i + 1;
    }
    if (r.status.ok() && Reply(r).rows(0).values(0).int64_value() == i + 1) return true;
    ++victims;
    std::lock_guard<std::mutex> lock(mu);
    if (first_victim.empty()) first_victim = r.status.ToString();
    return false;
  };
  ASSERT_EQ(load.Run(*engine_, 48, kCalls, absl::Seconds(240)), kCalls);
  std::lock_guard<std::mutex> lock(mu);
  EXPECT_EQ(victims.load(), 0) << "first: " << first_victim;
  EXPECT_EQ(load.failures.load(), 0);
  EXPECT_GE(stopped.load(), kCancels / 2)
      << "most cancels and deadlines should land while the statement is in flight";
  EXPECT_GT(SharedSends(), shared_before) << "nothing was pipelined";
  EXPECT_TRUE(Run(IntJob(sql, {1})).status.ok());
}

}  // namespace
}  // namespace dbpool::engine
