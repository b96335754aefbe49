// The fixture of the engine's integration tests: a LoopEngine over a real
// pool of a throwaway PostgreSQL (PgCluster), and helpers that submit and
// wait with a deadline.
#ifndef DBPOOL_TESTS_INTEGRATION_ENGINE_FIXTURE_H_
#define DBPOOL_TESTS_INTEGRATION_ENGINE_FIXTURE_H_

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "server/db/pg_connection.h"
#include "server/engine/loop_engine.h"
#include "server/pool/connection_pool.h"
#include "tests/support/pg_cluster.h"

namespace dbpool::engine {

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

class EngineTest : public ::testing::Test {
 protected:
  void Make(int connections, int io_threads, int max_waiting = 1000,
            int pipeline_depth = 1, TransactionLimits transactions = {}) {
    pool::PoolOptions po;
    po.max_connections = connections;
    po.max_waiting = max_waiting;
    po.min_connections = 1;
    pool_ = std::make_unique<pool::ConnectionPool>(
        po, std::make_shared<db::PgConnector>(db::ConnectionSettings{
                testing::PgCluster::Get().conninfo(), "dbpool-engine-test",
                absl::Seconds(30), 64}));
    LoopEngineOptions eo;
    eo.io_threads = io_threads;
    eo.pipeline_depth = pipeline_depth;
    eo.limits.cancel_grace = cancel_grace_;
    eo.transactions = std::move(transactions);
    engine_ = std::make_unique<LoopEngine>(*pool_, eo);
  }
  void TearDown() override {
    engine_.reset();
    pool_.reset();
  }

  QueryJob Job(const std::string& sql, absl::Duration deadline = absl::Seconds(10)) {
    QueryJob job;
    job.statements.resize(1);
    job.statements[0].request.set_sql(sql);
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
    // Moved, not copied: a copy would share the status's payload with the
    // state the engine's thread frees, through a reference count
    // ThreadSanitizer cannot see (Debian's abseil is not instrumented).
    return std::move(state->result);
  }

  static QueryJob IntJob(const std::string& sql, std::vector<int64_t> values,
                         absl::Duration deadline = absl::Seconds(30)) {
    QueryJob job;
    job.statements.resize(1);
    job.statements[0].request.set_sql(sql);
    job.deadline = absl::Now() + deadline;
    for (int64_t value : values) {
      db::EncodedParam p;
      v1::Value v;
      v.set_int64_value(value);
      EXPECT_TRUE(db::EncodeParam(v, &p).ok());
      job.statements[0].params.push_back(p);
    }
    return job;
  }

  // One job of several statements, run as a batch.
  static QueryJob BatchJob(const std::vector<std::string>& sqls,
                           absl::Duration deadline = absl::Seconds(30)) {
    QueryJob job;
    job.batch = true;
    job.statements.resize(sqls.size());
    for (size_t i = 0; i < sqls.size(); ++i) job.statements[i].request.set_sql(sqls[i]);
    job.deadline = absl::Now() + deadline;
    return job;
  }

  // `sql` inside transaction `id`, for `caller`.
  QueryJob InTx(const std::string& id, const std::string& sql,
                const std::string& caller = "tester") {
    QueryJob job = Job(sql);
    job.transaction_id = id;
    job.caller = caller;
    return job;
  }

  // Begins a transaction for `options.caller` ("tester" when empty) and
  // waits (at most 20 s).
  absl::StatusOr<BegunTransaction> Begin(TransactionOptions options = {}) {
    if (options.caller.empty()) options.caller = "tester";
    if (options.deadline == absl::InfiniteFuture()) options.deadline = absl::Now() + absl::Seconds(10);
    struct State {
      Flag done;
      absl::StatusOr<BegunTransaction> result = absl::UnknownError("no answer");
    };
    auto state = std::make_shared<State>();
    engine_->BeginTransaction(std::move(options),
                              [state](absl::StatusOr<BegunTransaction> r) {
                                state->result = std::move(r);
                                state->done.Set();
                              });
    EXPECT_TRUE(state->done.WaitFor(absl::Seconds(20)));
    return std::move(state->result);
  }

  // Commits or rolls back `id` and waits (at most 20 s).
  absl::Status End(const std::string& id, TransactionEnd end,
                   const std::string& caller = "tester") {
    struct State {
      Flag done;
      absl::Status result = absl::UnknownError("no answer");
    };
    auto state = std::make_shared<State>();
    engine_->EndTransaction(id, caller, end, [state](absl::StatusOr<EndedTransaction> s) {
      // Moved, not copied: a copy would share the status with the engine's
      // thread, which destroys its own.
      state->result = std::move(s).status();
      state->done.Set();
    });
    EXPECT_TRUE(state->done.WaitFor(absl::Seconds(20)));
    return std::move(state->result);
  }

  // The first response of `r`, or an empty one when it has none (failed).
  static const v1::QueryResponse& Reply(const QueryResult& r) {
    static const v1::QueryResponse kNone;
    return r.responses.empty() ? kNone : r.responses[0];
  }

  // DB_CANCEL_GRACE_MS of the engine Make builds.
  absl::Duration cancel_grace_ = absl::Seconds(2);
  std::unique_ptr<pool::ConnectionPool> pool_;
  std::unique_ptr<LoopEngine> engine_;
};

}  // namespace dbpool::engine

#endif  // DBPOOL_TESTS_INTEGRATION_ENGINE_FIXTURE_H_
