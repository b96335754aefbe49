// Clean connections between callers: whatever one caller leaves in its
// session (settings, role, temporary tables, advisory locks, LISTEN,
// prepared statements, cursors) is gone before the next caller of the same
// connection runs. And the per-connection prepared-statement cache: bounded,
// deallocating what it evicts, re-preparing after a schema change.
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/db/engine_counters.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

// Everything a session could carry to its next caller, in one row.
constexpr char kProbe[] =
    "SELECT concat_ws(' | ', current_user, session_user, "
    "current_setting('search_path'), current_setting('TimeZone'), "
    "current_setting('statement_timeout'), "
    "coalesce(current_setting('dbpool_test.mark', true), ''), "
    "(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), "
    "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
    " AND pid = pg_backend_pid()), "
    "(SELECT count(*) FROM pg_listening_channels()), "
    "(SELECT count(*) FROM pg_prepared_statements WHERE from_sql), "
    "(SELECT count(*) FROM pg_cursors WHERE name <> '')) AS state, "
    "pg_backend_pid() AS pid";

// Every call gets the same session.
ServerEnv OneConnection() {
  return {{"DB_POOL_MAX_CONNECTIONS", "1"}, {"DB_POOL_MIN_CONNECTIONS", "1"}};
}

class CleanSessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    PgCluster::Get().Scalar(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
        "'acc_low') THEN CREATE ROLE acc_low; END IF; END $$");
  }

  void SetUp() override { baseline_ = Probe(&baseline_pid_); }

  std::string Probe(int64_t* pid) {
    v1::QueryResponse resp;
    grpc::Status st = server_.Query(kProbe, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    if (!st.ok() || resp.rows_size() != 1) return "probe failed";
    *pid = resp.rows(0).values(1).int64_value();
    return resp.rows(0).values(0).string_value();
  }

  // Runs `sql` as one caller, then checks that the next caller finds the
  // session as the first caller did, on the same backend.
  void LeavesNothingBehind(const std::string& sql) {
    v1::QueryResponse resp;
    grpc::Status st = server_.Query(sql, &resp);
    ASSERT_TRUE(st.ok()) << sql << ": " << st.error_message();
    int64_t pid = 0;
    EXPECT_EQ(Probe(&pid), baseline_) << "after: " << sql;
    EXPECT_EQ(pid, baseline_pid_) << "the connection was replaced, not reset";
  }

  TestServer server_{OneConnection()};
  std::string baseline_;
  int64_t baseline_pid_ = 0;
};

TEST_F(CleanSessionTest, Settings) {
  LeavesNothingBehind("SET search_path = pg_catalog");
  LeavesNothingBehind("SET statement_timeout = 1234");
  LeavesNothingBehind("SELECT set_config('dbpool_test.mark', 'left', false)");
  LeavesNothingBehind("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY");
  v1::QueryResponse resp;
  // Had the last one stayed, writes would now fail with 25006.
  EXPECT_TRUE(server_.Query("CREATE TABLE IF NOT EXISTS clean_rw (x int)", &resp).ok());
}

TEST_F(CleanSessionTest, RoleAndSessionAuthorization) {
  LeavesNothingBehind("SET ROLE acc_low");
  LeavesNothingBehind("SET SESSION AUTHORIZATION acc_low");
  LeavesNothingBehind("SELECT set_config('role', 'acc_low', false)");
}

TEST_F(CleanSessionTest, TemporaryTables) {
  LeavesNothingBehind("CREATE TEMP TABLE scratch AS SELECT 1 AS x");
  // The same name is free again for the next caller.
  LeavesNothingBehind("CREATE TEMP TABLE scratch AS SELECT 1 AS x");
  LeavesNothingBehind("SELECT 1 AS x INTO TEMP scratch2");
}

TEST_F(CleanSessionTest, AdvisoryLocks) {
  LeavesNothingBehind("SELECT pg_advisory_lock(4242)");
  EXPECT_EQ(PgCluster::Get().Scalar("SELECT pg_try_advisory_lock(4242)"), "t");
  LeavesNothingBehind("SELECT pg_advisory_lock_shared(1, 2)");
}

TEST_F(CleanSessionTest, LockTakenByACancelledStatementIsReleased) {
  v1::QueryResponse resp;
  grpc::Status st = server_.Query("SELECT pg_advisory_lock(77), pg_sleep(30)", &resp,
                                  absl::Milliseconds(500));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(Eventually([] {
    return PgCluster::Get().Scalar("SELECT pg_try_advisory_lock(77)") == "t";
  }));
  int64_t pid = 0;
  EXPECT_EQ(Probe(&pid), baseline_);
}

TEST_F(CleanSessionTest, Listen) { LeavesNothingBehind("LISTEN dbpool_channel"); }

TEST_F(CleanSessionTest, SqlPreparedStatements) {
  LeavesNothingBehind("PREPARE mine AS SELECT 1");
  // No "prepared statement already exists" for the next caller.
  LeavesNothingBehind("PREPARE mine AS SELECT 1");
}

TEST_F(CleanSessionTest, CursorsWithHold) {
  LeavesNothingBehind("DECLARE held CURSOR WITH HOLD FOR SELECT 1");
}

TEST_F(CleanSessionTest, AnonymousBlocksAndProcedures) {
  LeavesNothingBehind(
      "DO $$ BEGIN PERFORM set_config('search_path', 'pg_catalog', false); "
      "PERFORM pg_advisory_lock(5); EXECUTE 'LISTEN from_do'; "
      "EXECUTE 'CREATE TEMP TABLE from_do (x int)'; END $$");
}

TEST_F(CleanSessionTest, FunctionThatChangesAReportedSetting) {
  v1::QueryResponse resp;
  ASSERT_TRUE(server_.Query(
      "CREATE OR REPLACE FUNCTION clean_sneaky() RETURNS int LANGUAGE plpgsql AS "
      "$$ BEGIN PERFORM set_config('TimeZone', 'Asia/Tokyo', false); "
      "RETURN 1; END $$", &resp).ok());
  // Nothing in "SELECT clean_sneaky()" names a setting; PostgreSQL's report
  // of the new TimeZone is what gives it away.
  LeavesNothingBehind("SELECT clean_sneaky()");
}

TEST_F(CleanSessionTest, ReadOnlyCallersToo) {
  v1::QueryRequest req;
  req.set_sql("SELECT pg_advisory_lock(31)");
  req.set_read_only(true);
  v1::QueryResponse resp;
  ASSERT_TRUE(server_.Query(req, &resp).ok());
  EXPECT_EQ(PgCluster::Get().Scalar("SELECT pg_try_advisory_lock(31)"), "t");
  int64_t pid = 0;
  EXPECT_EQ(Probe(&pid), baseline_);
}

TEST_F(CleanSessionTest, WhatCannotBeUndoneClosesTheConnection) {
  const uint64_t before = db::Counters().session_resets[8].load();
  v1::QueryResponse resp;
  grpc::Status st = server_.Query("LOAD 'auto_explain'", &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(db::Counters().session_resets[8].load(), before + 1);
  int64_t pid = 0;
  EXPECT_EQ(Probe(&pid), baseline_);
  EXPECT_NE(pid, baseline_pid_);
}

// Random callers leave random state; every next caller must find none.
TEST_F(CleanSessionTest, TenThousandRandomHandOffs) {
  const std::vector<std::string> dirt = {
      "SET search_path = pg_catalog",
      "SET statement_timeout = 4321",
      "SET TimeZone = 'America/Lima'",
      "SELECT set_config('dbpool_test.mark', 'x', false)",
      "SET ROLE acc_low",
      "SET SESSION AUTHORIZATION acc_low",
      "CREATE TEMP TABLE IF NOT EXISTS r (x int)",
      "SELECT pg_advisory_lock(99)",
      "SELECT pg_advisory_lock_shared(98)",
      "LISTEN r",
      "PREPARE r AS SELECT 1",
      "DECLARE r CURSOR WITH HOLD FOR SELECT 1",
      "DO $$ BEGIN PERFORM pg_advisory_lock(97); END $$",
      "SELECT 1",
  };
  const uint32_t seed = std::random_device{}();
  std::mt19937 random(seed);
  std::uniform_int_distribution<size_t> pick(0, dirt.size() - 1);
  int leaks = 0;
  int failures = 0;
  constexpr int kHandOffs = 10000;
  const absl::Time end = absl::Now() + absl::Minutes(4);
  int done = 0;
  for (; done < kHandOffs && absl::Now() < end; done += 2) {
    v1::QueryResponse resp;
    const std::string& sql = dirt[pick(random)];
    if (!server_.Query(sql, &resp).ok()) ++failures;
    int64_t pid = 0;
    if (Probe(&pid) != baseline_ || pid != baseline_pid_) {
      ++leaks;
      ADD_FAILURE() << "leak after " << sql << " (seed " << seed << ")";
      if (leaks > 5) break;
    }
  }
  EXPECT_EQ(done, kHandOffs) << "ran out of time";
  EXPECT_EQ(leaks, 0);
  EXPECT_EQ(failures, 0);
  std::printf("[clean] %d hand-offs, %d leaks (seed %u)\n", done, leaks, seed);
}

TEST(StatementCache, EvictedStatementsAreDeallocated) {
  ServerEnv env = OneConnection();
  env["DB_PREPARED_CACHE_SIZE"] = "2";
  TestServer server(env);
  const uint64_t evictions = db::Counters().statement_cache_evictions.load();
  v1::QueryResponse resp;
  for (const char* sql : {"SELECT 1 AS a", "SELECT 2 AS b", "SELECT 3 AS c"}) {
    for (int i = 0; i < 2; ++i) ASSERT_TRUE(server.Query(sql, &resp).ok());
  }
  // Seeing this one evicts "SELECT 2 AS b"; "SELECT 1 AS a" went before.
  ASSERT_TRUE(server.Query("SELECT string_agg(statement, ',') FROM "
                           "pg_prepared_statements WHERE NOT from_sql",
                           &resp).ok());
  EXPECT_EQ(resp.rows(0).values(0).string_value(), "SELECT 3 AS c");
  EXPECT_EQ(db::Counters().statement_cache_evictions.load(), evictions + 2);
}

TEST(StatementCache, SizeZeroPreparesNothing) {
  ServerEnv env = OneConnection();
  env["DB_PREPARED_CACHE_SIZE"] = "0";
  TestServer server(env);
  v1::QueryResponse resp;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(server.Query("SELECT count(*) FROM pg_prepared_statements", &resp).ok());
    EXPECT_EQ(resp.rows(0).values(0).int64_value(), 0);
  }
}

TEST(StatementCache, SchemaChangeIsRetriedWithAFreshPlan) {
  TestServer server(OneConnection());
  v1::QueryResponse resp;
  ASSERT_TRUE(server.Query("DROP TABLE IF EXISTS drift", &resp).ok());
  ASSERT_TRUE(server.Query("CREATE TABLE drift (a int)", &resp).ok());
  ASSERT_TRUE(server.Query("INSERT INTO drift VALUES (1)", &resp).ok());
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(server.Query("SELECT * FROM drift", &resp).ok());
  }
  ASSERT_TRUE(server.Query("ALTER TABLE drift ADD COLUMN b text DEFAULT 'x'", &resp).ok());
  const uint64_t reprepares = db::Counters().statement_reprepares.load();
  resp.Clear();
  grpc::Status st = server.Query("SELECT * FROM drift", &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.columns_size(), 2);
  EXPECT_EQ(resp.rows(0).values(1).string_value(), "x");
  EXPECT_EQ(db::Counters().statement_reprepares.load(), reprepares + 1);
  // The stale statement was deallocated, not left behind.
  ASSERT_TRUE(server.Query("SELECT count(*) FROM pg_prepared_statements "
                           "WHERE statement = 'SELECT * FROM drift'", &resp).ok());
  EXPECT_EQ(resp.rows(0).values(0).int64_value(), 1);
}

}  // namespace
}  // namespace dbpool::testing
