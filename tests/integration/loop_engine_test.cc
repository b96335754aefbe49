// The event-loop engine on its own against a real PostgreSQL: results,
// errors, read-only calls, deadlines and cancels, and many callers on few
// connections, without gRPC in between.
#include "server/engine/loop_engine.h"

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "server/db/pg_connection.h"
#include "server/db/sql_state.h"
#include "server/pool/connection_pool.h"
#include "tests/support/pg_cluster.h"

namespace dbpool::engine {
namespace {

using testing::PgCluster;

// Set once, waited for with a deadline. std::mutex, not absl::Notification,
// so that ThreadSanitizer sees the hand-off (scripts/sanitize).
class Flag {
 public:
  void Set() {
    std::lock_guard<std::mutex> lock(mu_);
    set_ = true;
    cv_.notify_all();
  }
  bool WaitFor(absl::Duration limit) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, absl::ToChronoNanoseconds(limit), [this] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

class LoopEngineTest : public ::testing::Test {
 protected:
  void Make(int connections, int io_threads, int max_waiting = 1000) {
    pool::PoolOptions po;
    po.max_connections = connections;
    po.max_waiting = max_waiting;
    po.min_connections = 1;
    pool_ = std::make_unique<pool::ConnectionPool>(
        po, std::make_shared<db::PgConnector>(db::ConnectionSettings{
                PgCluster::Get().conninfo(), "dbpool-engine-test",
                absl::Seconds(30), 64}));
    LoopEngineOptions eo;
    eo.io_threads = io_threads;
    eo.limits.cancel_grace = absl::Seconds(2);
    engine_ = std::make_unique<LoopEngine>(*pool_, eo);
  }
  void TearDown() override {
    engine_.reset();
    pool_.reset();
  }

  QueryJob Job(const std::string& sql, absl::Duration deadline = absl::Seconds(10)) {
    QueryJob job;
    job.request.set_sql(sql);
    job.deadline = absl::Now() + deadline;
    return job;
  }

  // Runs `job` and waits for its outcome (at most 20 s).
  QueryResult Run(QueryJob job) {
    struct State {
      Flag done;
      QueryResult result;
    };
    auto state = std::make_shared<State>();
    engine_->Submit(std::move(job), [state](QueryResult r) {
      state->result = std::move(r);
      state->done.Set();
    });
    EXPECT_TRUE(state->done.WaitFor(absl::Seconds(20)));
    return state->result;
  }

  std::unique_ptr<pool::ConnectionPool> pool_;
  std::unique_ptr<LoopEngine> engine_;
};

TEST_F(LoopEngineTest, RunsStatementsAndReportsErrors) {
  Make(2, 1);
  QueryJob job = Job("SELECT $1::int8 + 1 AS next, '{1,2}'::int4[] AS arr");
  db::EncodedParam p;
  v1::Value v;
  v.set_int64_value(41);
  ASSERT_TRUE(db::EncodeParam(v, &p).ok());
  job.params.push_back(p);
  for (int i = 0; i < 3; ++i) {  // unnamed, then prepared, then from the cache
    QueryResult r = Run(job);
    ASSERT_TRUE(r.status.ok()) << r.status;
    ASSERT_EQ(r.response.rows_size(), 1);
    EXPECT_EQ(r.response.rows(0).values(0).int64_value(), 42);
    EXPECT_EQ(r.response.columns(1).type_name(), "integer[]");
    EXPECT_EQ(r.response.command_tag(), "SELECT 1");
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
  EXPECT_EQ(r.response.rows(0).values(0).int64_value(), 0);
}

TEST_F(LoopEngineTest, DeadlineCancelsOnTheServerAndKeepsTheConnection) {
  Make(1, 1);
  const std::string pid = Run(Job("SELECT pg_backend_pid()::text")).response.rows(0).values(0).string_value();
  QueryResult r = Run(Job("SELECT pg_sleep(30)", absl::Milliseconds(300)));
  EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded) << r.status;
  EXPECT_EQ(db::SqlStateOf(r.status).value_or(""), "57014");
  QueryResult again = Run(Job("SELECT pg_backend_pid()::text"));
  ASSERT_TRUE(again.status.ok()) << again.status;
  EXPECT_EQ(again.response.rows(0).values(0).string_value(), pid);
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
    job.params.push_back(p);
    engine_->Submit(std::move(job), [&, i](QueryResult r) {
      if (r.status.ok() && r.response.rows(0).values(0).int64_value() == 2 * i) {
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

}  // namespace
}  // namespace dbpool::engine
