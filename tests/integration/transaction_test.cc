// Interactive transactions and batches on the event-loop engine against a
// real PostgreSQL: visibility, isolation levels, serialization failures and
// deadlocks, timeouts that release locks, the open-transaction cap, ids
// bound to their caller and instance, sessions cleaned at the end, and
// batches that are all or nothing.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "server/db/engine_counters.h"
#include "server/db/sql_state.h"
#include "server/engine/transactions.h"
#include "tests/integration/engine_fixture.h"
#include "tests/support/pg_cluster.h"

namespace dbpool::engine {
namespace {

using testing::PgCluster;

// The ErrorInfo of `status`; empty when it has none.
google::rpc::ErrorInfo InfoOf(const absl::Status& status) {
  google::rpc::ErrorInfo info;
  if (auto payload = status.GetPayload(db::kErrorInfoTypeUrl)) {
    info.ParseFromString(std::string(*payload));
  }
  return info;
}

uint64_t Ended(TransactionOutcome outcome) {
  return db::Counters().transactions_ended[static_cast<int>(outcome)].load();
}

// Whether `outcome` has been counted `n` times within 5 s: an end the
// engine starts by itself finishes after the caller has its answer.
bool EndedReaches(TransactionOutcome outcome, uint64_t n) {
  const absl::Time limit = absl::Now() + absl::Seconds(5);
  while (Ended(outcome) < n && absl::Now() < limit) absl::SleepFor(absl::Milliseconds(5));
  return Ended(outcome) == n;
}

class TransactionTest : public EngineTest {
 protected:
  void SetUp() override {
    table_ = absl::StrCat("tx_", ::testing::UnitTest::GetInstance()->current_test_info()->name());
    PgCluster::Get().Scalar(absl::StrCat("DROP TABLE IF EXISTS ", table_));
    PgCluster::Get().Scalar(
        absl::StrCat("CREATE TABLE ", table_, " (id int PRIMARY KEY, v int NOT NULL)"));
    PgCluster::Get().Scalar(absl::StrCat("INSERT INTO ", table_, " VALUES (1, 0), (2, 0)"));
  }

  TransactionLimits Limits(int max_open = 4) {
    TransactionLimits limits;
    limits.max_open = max_open;
    limits.instance = "test-instance";
    return limits;
  }

  int64_t Count() {
    return PgCluster::Get().Int(absl::StrCat("SELECT count(*) FROM ", table_));
  }

  std::string table_;
};

TEST_F(TransactionTest, WritesAreSeenByOthersOnlyAfterCommit) {
  Make(4, 2, 1000, 1, Limits());
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  EXPECT_GT(tx->expire_time, absl::Now());
  EXPECT_EQ(engine_->Snapshot().transactions, 1);
  QueryResult insert = Run(InTx(tx->transaction_id,
                                absl::StrCat("INSERT INTO ", table_, " VALUES (3, 3)")));
  ASSERT_TRUE(insert.status.ok()) << insert.status;
  EXPECT_EQ(Reply(insert).command_tag(), "INSERT 0 1");
  // Inside, the row is there; outside, not yet.
  EXPECT_EQ(Reply(Run(InTx(tx->transaction_id, absl::StrCat("SELECT count(*) FROM ", table_))))
                .rows(0)
                .values(0)
                .int64_value(),
            3);
  EXPECT_EQ(Count(), 2);
  const uint64_t committed = Ended(TransactionOutcome::kCommitted);
  ASSERT_TRUE(End(tx->transaction_id, TransactionEnd::kCommit).ok());
  EXPECT_EQ(Count(), 3);
  EXPECT_EQ(Ended(TransactionOutcome::kCommitted), committed + 1);
  EXPECT_EQ(engine_->Snapshot().transactions, 0);
  // Its id is spent.
  QueryResult late = Run(InTx(tx->transaction_id, "SELECT 1"));
  EXPECT_EQ(late.status.code(), absl::StatusCode::kFailedPrecondition) << late.status;
  EXPECT_EQ(InfoOf(late.status).reason(), kTransactionEnded);
}

TEST_F(TransactionTest, RollbackDiscardsAndFreesTheConnection) {
  Make(1, 1, 1000, 1, Limits(1));
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  ASSERT_TRUE(Run(InTx(tx->transaction_id, absl::StrCat("DELETE FROM ", table_))).status.ok());
  ASSERT_TRUE(End(tx->transaction_id, TransactionEnd::kRollback).ok());
  EXPECT_EQ(Count(), 2);
  // The only connection is back in the pool.
  QueryResult after = Run(Job("SELECT 1"));
  EXPECT_TRUE(after.status.ok()) << after.status;
  EXPECT_EQ(pool_->Snapshot().active, 0);
}

TEST_F(TransactionTest, EachIsolationLevelAndReadOnlyReachPostgres) {
  Make(2, 1, 1000, 1, Limits());
  const std::pair<v1::IsolationLevel, const char*> levels[] = {
      {v1::ISOLATION_LEVEL_READ_COMMITTED, "read committed"},
      {v1::ISOLATION_LEVEL_REPEATABLE_READ, "repeatable read"},
      {v1::ISOLATION_LEVEL_SERIALIZABLE, "serializable"}};
  for (const auto& [level, name] : levels) {
    TransactionOptions options;
    options.isolation = level;
    options.read_only = true;
    options.deferrable = level == v1::ISOLATION_LEVEL_SERIALIZABLE;
    auto tx = Begin(options);
    ASSERT_TRUE(tx.ok()) << tx.status();
    QueryResult shown = Run(InTx(tx->transaction_id,
                                 "SELECT current_setting('transaction_isolation'), "
                                 "current_setting('transaction_read_only'), "
                                 "current_setting('transaction_deferrable')"));
    ASSERT_TRUE(shown.status.ok()) << shown.status;
    EXPECT_EQ(Reply(shown).rows(0).values(0).string_value(), name);
    EXPECT_EQ(Reply(shown).rows(0).values(1).string_value(), "on");
    EXPECT_EQ(Reply(shown).rows(0).values(2).string_value(),
              level == v1::ISOLATION_LEVEL_SERIALIZABLE ? "on" : "off");
    QueryResult write = Run(InTx(tx->transaction_id, absl::StrCat("DELETE FROM ", table_)));
    EXPECT_EQ(db::SqlStateOf(write.status), "25006") << write.status;
    // The failed write aborted it: COMMIT rolls back and says so.
    absl::Status commit = End(tx->transaction_id, TransactionEnd::kCommit);
    EXPECT_EQ(commit.code(), absl::StatusCode::kAborted) << commit;
    EXPECT_EQ(InfoOf(commit).reason(), kTransactionAborted);
  }
  EXPECT_EQ(Count(), 2);
}

TEST_F(TransactionTest, SerializationFailureAbortsTheWholeTransaction) {
  Make(2, 1, 1000, 1, Limits());
  TransactionOptions options;
  options.isolation = v1::ISOLATION_LEVEL_REPEATABLE_READ;
  auto tx = Begin(options);
  ASSERT_TRUE(tx.ok()) << tx.status();
  // Its snapshot is taken by its first statement.
  ASSERT_TRUE(
      Run(InTx(tx->transaction_id, absl::StrCat("SELECT v FROM ", table_, " WHERE id = 1")))
          .status.ok());
  ASSERT_TRUE(Run(Job(absl::StrCat("UPDATE ", table_, " SET v = 10 WHERE id = 1"))).status.ok());
  const uint64_t aborted = Ended(TransactionOutcome::kAborted);
  QueryResult conflict = Run(InTx(tx->transaction_id,
                                  absl::StrCat("UPDATE ", table_, " SET v = 20 WHERE id = 1")));
  EXPECT_EQ(conflict.status.code(), absl::StatusCode::kAborted) << conflict.status;
  EXPECT_EQ(db::SqlStateOf(conflict.status), "40001");
  EXPECT_NE(conflict.status.message().find("retry it whole"), absl::string_view::npos);
  // Rolled back at once: its id now says so, and nothing stays pinned.
  QueryResult late = Run(InTx(tx->transaction_id, "SELECT 1"));
  EXPECT_EQ(late.status.code(), absl::StatusCode::kAborted) << late.status;
  EXPECT_EQ(InfoOf(late.status).reason(), kTransactionAborted);
  EXPECT_TRUE(EndedReaches(TransactionOutcome::kAborted, aborted + 1));
  EXPECT_EQ(engine_->Snapshot().transactions, 0);
  EXPECT_EQ(PgCluster::Get().Int(absl::StrCat("SELECT v FROM ", table_, " WHERE id = 1")), 10);
}

TEST_F(TransactionTest, DeadlockAbortsOneAndLetsTheOtherCommit) {
  Make(3, 2, 1000, 1, Limits());
  auto a = Begin();
  auto b = Begin();
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(Run(InTx(a->transaction_id, absl::StrCat("UPDATE ", table_, " SET v = 1 WHERE id = 1"))).status.ok());
  ASSERT_TRUE(Run(InTx(b->transaction_id, absl::StrCat("UPDATE ", table_, " SET v = 2 WHERE id = 2"))).status.ok());
  // a waits for b's row; b then waits for a's: PostgreSQL ends one of them.
  struct State {
    Flag done;
    QueryResult result;
  };
  auto waiting = std::make_shared<State>();
  engine_->Submit(InTx(a->transaction_id, absl::StrCat("UPDATE ", table_, " SET v = 1 WHERE id = 2")),
                  [waiting](QueryResult r) {
                    waiting->result = std::move(r);
                    waiting->done.Set();
                  });
  absl::SleepFor(absl::Milliseconds(200));
  QueryResult closing = Run(InTx(b->transaction_id, absl::StrCat("UPDATE ", table_, " SET v = 2 WHERE id = 1")));
  ASSERT_TRUE(waiting->done.WaitFor(absl::Seconds(20)));
  const QueryResult& first = waiting->result;
  // Exactly one was chosen as the victim.
  ASSERT_NE(first.status.ok(), closing.status.ok()) << first.status << " / " << closing.status;
  const QueryResult& victim = first.status.ok() ? closing : first;
  const std::string& survivor = first.status.ok() ? a->transaction_id : b->transaction_id;
  EXPECT_EQ(victim.status.code(), absl::StatusCode::kAborted) << victim.status;
  EXPECT_EQ(db::SqlStateOf(victim.status), "40P01");
  ASSERT_TRUE(End(survivor, TransactionEnd::kCommit).ok());
  EXPECT_EQ(engine_->Snapshot().transactions, 0);
}

TEST_F(TransactionTest, AnAbandonedTransactionIsRolledBackOnTimeAndItsLocksReleased) {
  TransactionLimits limits = Limits();
  limits.idle_timeout = absl::Milliseconds(500);
  Make(3, 1, 1000, 1, limits);
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  EXPECT_LE(tx->expire_time, absl::Now() + absl::Milliseconds(500));
  ASSERT_TRUE(Run(InTx(tx->transaction_id, absl::StrCat("UPDATE ", table_, " SET v = 9 WHERE id = 1"))).status.ok());
  const uint64_t expired = Ended(TransactionOutcome::kExpired);
  // Another caller's UPDATE of the locked row waits until the rollback.
  const absl::Time start = absl::Now();
  QueryResult other = Run(Job(absl::StrCat("UPDATE ", table_, " SET v = 5 WHERE id = 1"),
                              absl::Seconds(10)));
  ASSERT_TRUE(other.status.ok()) << other.status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  EXPECT_EQ(PgCluster::Get().Int(absl::StrCat("SELECT v FROM ", table_, " WHERE id = 1")), 5);
  EXPECT_TRUE(EndedReaches(TransactionOutcome::kExpired, expired + 1));
  QueryResult late = Run(InTx(tx->transaction_id, "SELECT 1"));
  EXPECT_EQ(late.status.code(), absl::StatusCode::kAborted) << late.status;
  EXPECT_EQ(InfoOf(late.status).reason(), kTransactionExpired);
}

TEST_F(TransactionTest, IdleTimeoutRequestedIsCapped) {
  TransactionLimits limits = Limits();
  limits.max_idle_timeout = absl::Seconds(2);
  Make(2, 1, 1000, 1, limits);
  TransactionOptions options;
  options.idle_timeout = absl::Hours(1);
  const absl::Time before = absl::Now();
  auto tx = Begin(options);
  ASSERT_TRUE(tx.ok()) << tx.status();
  EXPECT_LE(tx->expire_time, absl::Now() + absl::Seconds(2));
  EXPECT_GE(tx->expire_time, before + absl::Seconds(2) - absl::Milliseconds(1));
  ASSERT_TRUE(End(tx->transaction_id, TransactionEnd::kRollback).ok());
}

TEST_F(TransactionTest, BeyondTheCapBeginIsRefusedAtOnce) {
  Make(4, 1, 1000, 1, Limits(2));
  auto a = Begin();
  auto b = Begin();
  ASSERT_TRUE(a.ok() && b.ok());
  const absl::Time start = absl::Now();
  auto c = Begin();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_EQ(InfoOf(c.status()).reason(), kTransactionLimit);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500));
  // Autocommit callers still get the rest of the pool.
  EXPECT_TRUE(Run(Job("SELECT 1")).status.ok());
  ASSERT_TRUE(End(a->transaction_id, TransactionEnd::kCommit).ok());
  auto d = Begin();
  EXPECT_TRUE(d.ok()) << d.status();
  ASSERT_TRUE(End(b->transaction_id, TransactionEnd::kRollback).ok());
  ASSERT_TRUE(End(d->transaction_id, TransactionEnd::kRollback).ok());
}

TEST_F(TransactionTest, AnIdIsBoundToItsCallerAndInstance) {
  Make(2, 1, 1000, 1, Limits());
  TransactionOptions options;
  options.caller = "alice";
  auto tx = Begin(options);
  ASSERT_TRUE(tx.ok()) << tx.status();
  QueryResult other = Run(InTx(tx->transaction_id, "SELECT 1", "mallory"));
  EXPECT_EQ(other.status.code(), absl::StatusCode::kPermissionDenied) << other.status;
  EXPECT_EQ(End(tx->transaction_id, TransactionEnd::kCommit, "mallory").code(),
            absl::StatusCode::kPermissionDenied);
  // An id another instance handed out names that instance.
  TransactionLimits other_instance;
  other_instance.instance = "replica-b:50051";
  TransactionTable elsewhere(other_instance);
  auto foreign = elsewhere.Reserve(TransactionOptions{});
  ASSERT_TRUE(foreign.ok());
  QueryResult misrouted = Run(InTx(*foreign, "SELECT 1", "alice"));
  EXPECT_EQ(misrouted.status.code(), absl::StatusCode::kFailedPrecondition) << misrouted.status;
  EXPECT_EQ(InfoOf(misrouted.status).reason(), kTransactionElsewhere);
  EXPECT_EQ(InfoOf(misrouted.status).metadata().at("instance"), "replica-b:50051");
  EXPECT_EQ(Run(InTx("not-an-id", "SELECT 1", "alice")).status.code(),
            absl::StatusCode::kInvalidArgument);
  // The owner still has it, untouched.
  EXPECT_TRUE(Run(InTx(tx->transaction_id, "SELECT 1", "alice")).status.ok());
  EXPECT_TRUE(End(tx->transaction_id, TransactionEnd::kCommit, "alice").ok());
}

TEST_F(TransactionTest, OneStatementAtATimeAndNoCommitBehindItsBack) {
  Make(2, 1, 1000, 1, Limits());
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  struct State {
    Flag done;
    QueryResult result;
  };
  auto slow = std::make_shared<State>();
  engine_->Submit(InTx(tx->transaction_id, "SELECT pg_sleep(0.5)"), [slow](QueryResult r) {
    slow->result = std::move(r);
    slow->done.Set();
  });
  QueryResult busy = Run(InTx(tx->transaction_id, "SELECT 1"));
  EXPECT_EQ(busy.status.code(), absl::StatusCode::kFailedPrecondition) << busy.status;
  EXPECT_EQ(InfoOf(busy.status).reason(), kTransactionBusy);
  ASSERT_TRUE(slow->done.WaitFor(absl::Seconds(20)));
  EXPECT_TRUE(slow->result.status.ok()) << slow->result.status;
  for (const char* sql : {"COMMIT", "rollback", "END", "ABORT", "PREPARE TRANSACTION 'x'"}) {
    QueryResult refused = Run(InTx(tx->transaction_id, sql));
    EXPECT_EQ(refused.status.code(), absl::StatusCode::kInvalidArgument) << sql;
  }
  // Savepoints stay inside.
  EXPECT_TRUE(Run(InTx(tx->transaction_id, "SAVEPOINT s")).status.ok());
  EXPECT_TRUE(Run(InTx(tx->transaction_id, "ROLLBACK TO SAVEPOINT s")).status.ok());
  EXPECT_TRUE(End(tx->transaction_id, TransactionEnd::kCommit).ok());
}

TEST_F(TransactionTest, WhatATransactionLeavesInTheSessionIsCleanedAtItsEnd) {
  // One connection: the next caller is certain to get the same session.
  Make(1, 1, 1000, 1, Limits(1));
  const std::string pid = Reply(Run(Job("SELECT pg_backend_pid()::text"))).rows(0).values(0).string_value();
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  for (const char* sql : {"SET search_path TO leaked, public", "CREATE TEMP TABLE leaked_tmp (x int)",
                          "SELECT pg_advisory_lock(4242)", "SET application_name = 'leaked'"}) {
    QueryResult r = Run(InTx(tx->transaction_id, sql));
    ASSERT_TRUE(r.status.ok()) << sql << ": " << r.status;
  }
  ASSERT_TRUE(End(tx->transaction_id, TransactionEnd::kCommit).ok());
  QueryResult after = Run(Job(
      "SELECT pg_backend_pid()::text, current_setting('search_path'), "
      "current_setting('application_name'), "
      "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), "
      "to_regclass('pg_temp.leaked_tmp') IS NULL"));
  ASSERT_TRUE(after.status.ok()) << after.status;
  const v1::Row& row = Reply(after).rows(0);
  EXPECT_EQ(row.values(0).string_value(), pid);
  EXPECT_EQ(row.values(1).string_value(), "\"$user\", public");
  EXPECT_EQ(row.values(2).string_value(), "dbpool-engine-test");
  EXPECT_EQ(row.values(3).int64_value(), 0);
  EXPECT_TRUE(row.values(4).bool_value());
}

TEST_F(TransactionTest, ShutdownRollsBackOpenTransactions) {
  Make(2, 1, 1000, 1, Limits());
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  ASSERT_TRUE(Run(InTx(tx->transaction_id, absl::StrCat("INSERT INTO ", table_, " VALUES (7, 7)"))).status.ok());
  const uint64_t drained = Ended(TransactionOutcome::kDrained);
  const absl::Time start = absl::Now();
  engine_.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(Ended(TransactionOutcome::kDrained), drained + 1);
  EXPECT_EQ(Count(), 2);
  EXPECT_EQ(pool_->Snapshot().active, 0);
}

TEST_F(TransactionTest, ABatchIsAllOrNothingAndNamesTheFailingStatement) {
  Make(2, 1, 1000, 1, Limits());
  QueryResult failed = Run(BatchJob({
      absl::StrCat("INSERT INTO ", table_, " VALUES (10, 1)"),
      absl::StrCat("UPDATE ", table_, " SET v = v + 1"),
      absl::StrCat("INSERT INTO ", table_, " VALUES (1, 1)"),  // duplicate key
      absl::StrCat("INSERT INTO ", table_, " VALUES (11, 1)"),
  }));
  EXPECT_EQ(failed.status.code(), absl::StatusCode::kAlreadyExists) << failed.status;
  EXPECT_EQ(db::SqlStateOf(failed.status), "23505");
  EXPECT_EQ(InfoOf(failed.status).metadata().at(db::kStatementIndexKey), "2");
  EXPECT_TRUE(failed.responses.empty());
  EXPECT_EQ(Count(), 2);
  EXPECT_EQ(PgCluster::Get().Int(absl::StrCat("SELECT sum(v) FROM ", table_)), 0);
  // The connection is clean for the next caller: no transaction left open.
  QueryResult next = Run(Job("SELECT current_setting('transaction_isolation') IS NOT NULL"));
  EXPECT_TRUE(next.status.ok()) << next.status;
}

TEST_F(TransactionTest, AThousandStatementBatchRunsInOneGo) {
  Make(2, 1, 1000, 1, Limits());
  std::vector<std::string> inserts;
  for (int i = 0; i < 1000; ++i) {
    inserts.push_back(absl::StrCat("INSERT INTO ", table_, " VALUES (", 100 + i, ", ", i, ")"));
  }
  QueryResult done = Run(BatchJob(inserts));
  ASSERT_TRUE(done.status.ok()) << done.status;
  ASSERT_EQ(done.responses.size(), 1000u);
  for (const v1::QueryResponse& r : done.responses) EXPECT_EQ(r.command_tag(), "INSERT 0 1");
  EXPECT_EQ(Count(), 1002);
  // Repeated SQL with parameters: prepared once, results in order.
  QueryJob same;
  same.batch = true;
  same.deadline = absl::Now() + absl::Seconds(30);
  for (int64_t i = 0; i < 50; ++i) {
    Statement st;
    st.request.set_sql("SELECT $1::int8 * 2");
    db::EncodedParam p;
    v1::Value v;
    v.set_int64_value(i);
    ASSERT_TRUE(db::EncodeParam(v, &p).ok());
    st.params.push_back(p);
    same.statements.push_back(std::move(st));
  }
  QueryResult doubled = Run(std::move(same));
  ASSERT_TRUE(doubled.status.ok()) << doubled.status;
  ASSERT_EQ(doubled.responses.size(), 50u);
  for (int64_t i = 0; i < 50; ++i) {
    EXPECT_EQ(doubled.responses[i].rows(0).values(0).int64_value(), 2 * i);
  }
}

TEST_F(TransactionTest, ABatchInsideATransactionIsPartOfIt) {
  Make(2, 1, 1000, 1, Limits());
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  QueryJob batch = BatchJob({absl::StrCat("INSERT INTO ", table_, " VALUES (20, 1)"),
                             absl::StrCat("INSERT INTO ", table_, " VALUES (21, 1)")});
  batch.transaction_id = tx->transaction_id;
  batch.caller = "tester";
  QueryResult r = Run(std::move(batch));
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.responses.size(), 2u);
  EXPECT_EQ(Count(), 2);
  ASSERT_TRUE(End(tx->transaction_id, TransactionEnd::kRollback).ok());
  EXPECT_EQ(Count(), 2);
  QueryResult refused = Run(BatchJob({"SELECT 1", "COMMIT"}));
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kInvalidArgument) << refused.status;
  EXPECT_EQ(InfoOf(refused.status).metadata().at(db::kStatementIndexKey), "1");
}

}  // namespace
}  // namespace dbpool::engine
