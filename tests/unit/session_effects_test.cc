// What a statement leaves in its session, read from its text, and the
// prepared-statement cache that keeps that reading with the statement.
#include "server/db/session_effects.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/db/statement_cache.h"

namespace dbpool::db {
namespace {

using ::testing::ElementsAre;

struct Case {
  const char* sql;
  SessionEffects want;
};

class ClassifyTest : public ::testing::TestWithParam<Case> {};

TEST_P(ClassifyTest, Classifies) {
  EXPECT_EQ(ClassifySessionEffects(GetParam().sql), GetParam().want)
      << GetParam().sql;
}

INSTANTIATE_TEST_SUITE_P(
    Statements, ClassifyTest,
    ::testing::Values(
        // Plain statements leave nothing.
        Case{"SELECT abalance FROM pgbench_accounts WHERE aid = $1", kNoEffect},
        Case{"UPDATE t SET x = 1 WHERE id = $1", kNoEffect},
        Case{"INSERT INTO t VALUES ($1) ON CONFLICT (id) DO UPDATE SET x = 2", kNoEffect},
        Case{"ALTER TABLE t ALTER COLUMN x SET DEFAULT 0", kNoEffect},
        Case{"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = x "
             "AS $$ SELECT 1 $$",
             kNoEffect},
        Case{"SELECT temp FROM weather", kNoEffect},
        Case{"SELECT pg_advisory_xact_lock(1)", kNoEffect},
        Case{"SET LOCAL statement_timeout = 5", kNoEffect},
        Case{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", kNoEffect},
        Case{"PREPARE TRANSACTION 'x'", kNoEffect},
        Case{"DISCARD TEMP", kNoEffect},
        // Words inside literals, comments and bodies are not statements.
        Case{"SELECT 'SET ROLE x; LISTEN y'", kNoEffect},
        Case{"SELECT E'it\\'s; SET x = 1'", kNoEffect},
        Case{"SELECT 1 -- ; SET x = 1", kNoEffect},
        Case{"SELECT /* outer /* nested ; LISTEN c */ still */ 1", kNoEffect},
        Case{"SELECT $tag$ ; select set_config('a','b',false) $tag$", kNoEffect},
        Case{"SELECT $1::text", kNoEffect},
        Case{"SELECT \"set x\" FROM t", kNoEffect},
        // Settings and identity.
        Case{"SET search_path = private", kSettings},
        Case{"set Statement_Timeout to 1", kSettings},
        Case{"SET SESSION statement_timeout = 1", kSettings},
        Case{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", kSettings},
        Case{"RESET search_path", kSettings},
        Case{"SELECT set_config('search_path', 'x', false)", kSettings},
        Case{"SELECT pg_catalog.set_config('a.b', 'x', false)", kSettings},
        Case{"SET ROLE acc_low", kIdentity},
        Case{"SET SESSION ROLE acc_low", kIdentity},
        Case{"SET SESSION AUTHORIZATION acc_low", kIdentity},
        Case{"RESET ROLE", kIdentity},
        // Objects and locks that outlive the call.
        Case{"CREATE TEMP TABLE t (x int)", kTempObjects},
        Case{"CREATE LOCAL TEMPORARY TABLE t (x int)", kTempObjects},
        Case{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", kTempObjects},
        Case{"SELECT 1 AS x INTO TEMP t", kTempObjects},
        Case{"CREATE TABLE pg_temp.t (x int)", kTempObjects},
        Case{"SELECT pg_advisory_lock(42)", kAdvisoryLocks},
        Case{"SELECT pg_try_advisory_lock_shared(1, 2)", kAdvisoryLocks},
        Case{"LISTEN channel", kListen},
        Case{"PREPARE p AS SELECT 1", kPreparedStatements},
        Case{"DEALLOCATE p", kPreparedStatements},
        Case{"DISCARD ALL", kPreparedStatements},
        Case{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", kCursors},
        // Arbitrary code, and what nothing can undo.
        Case{"DO $$ BEGIN PERFORM 1; END $$", kAnything},
        Case{"CALL p()", kAnything},
        Case{"LOAD 'auto_explain'", kIrreversible},
        Case{"SELECT dblink_connect('c', 'dbname=x')", kIrreversible},
        // Every statement of a multi-statement text counts.
        Case{"SELECT 1; SET search_path = x; LISTEN c",
             kSettings | kListen},
        Case{"  ( SELECT 1 ) ; create temp table x (y int)", kTempObjects}));

using Groups = std::vector<std::vector<std::string>>;

TEST(ResetCommands, SettingsAndIdentityRunFirstOnTheirOwn) {
  EXPECT_EQ(ResetCommands(kSettings | kIdentity | kListen),
            (Groups{{"SET SESSION AUTHORIZATION DEFAULT", "RESET ROLE", "RESET ALL"},
                    {"UNLISTEN *"}}));
  EXPECT_EQ(ResetCommands(kCursors | kTempObjects | kAdvisoryLocks | kPreparedStatements),
            (Groups{{"CLOSE ALL", "DISCARD TEMP", "SELECT pg_advisory_unlock_all()",
                     "DEALLOCATE ALL"}}));
  EXPECT_EQ(ResetCommands(kSettings), (Groups{{"RESET ALL"}}));
  EXPECT_EQ(ResetCommands(kNoEffect), Groups{});
  EXPECT_EQ(ResetCommands(kIrreversible), Groups{});
}

TEST(ResetCommands, AnythingResetsEverything) {
  EXPECT_EQ(ResetCommands(kAnything),
            (Groups{{"SET SESSION AUTHORIZATION DEFAULT", "RESET ROLE", "RESET ALL"},
                    {"CLOSE ALL", "DISCARD TEMP", "SELECT pg_advisory_unlock_all()",
                     "UNLISTEN *", "DEALLOCATE ALL", "DISCARD SEQUENCES"}}));
}

TEST(EffectKinds, CountsWholesaleKindsOnce) {
  EXPECT_THAT(EffectKinds(kSettings | kListen), ElementsAre(0, 4));
  EXPECT_THAT(EffectKinds(kAnything), ElementsAre(7));
  EXPECT_THAT(EffectKinds(kIrreversible | kSettings), ElementsAre(8));
  EXPECT_EQ(EffectKindName(0), "settings");
  EXPECT_EQ(EffectKindName(7), "anything");
  EXPECT_EQ(EffectKindName(8), "irreversible");
  EXPECT_EQ(EffectKindName(kEffectKinds), "unknown");
}

TEST(StatementCache, EvictsTheLeastRecentlyUsedAndHandsBackItsName) {
  StatementCache cache(2);
  std::string evicted;
  CachedStatement* a = cache.Insert("a", kNoEffect, &evicted);
  ASSERT_NE(a, nullptr);
  a->name = cache.NextName();
  EXPECT_EQ(a->name, "dbpool_1");
  cache.Insert("b", kListen, &evicted);
  EXPECT_EQ(evicted, "");
  ASSERT_NE(cache.Find("a"), nullptr);  // a is now the most recent
  cache.Insert("c", kNoEffect, &evicted);
  EXPECT_EQ(evicted, "");  // b went: never prepared, nothing to deallocate
  EXPECT_EQ(cache.Find("b"), nullptr);
  cache.Insert("d", kNoEffect, &evicted);
  EXPECT_EQ(evicted, "dbpool_1");
  EXPECT_EQ(cache.Find("a"), nullptr);
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.Find("c")->effects, kNoEffect);
  cache.Erase("c");
  EXPECT_EQ(cache.size(), 1u);
  cache.Clear();
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.NextName(), "dbpool_2");  // names are never reused
}

struct ShareCase {
  const char* sql;
  bool pipelinable;
};

class PipelinableTest : public ::testing::TestWithParam<ShareCase> {};

TEST_P(PipelinableTest, Decides) {
  EXPECT_EQ(Pipelinable(GetParam().sql), GetParam().pipelinable) << GetParam().sql;
}

INSTANTIATE_TEST_SUITE_P(
    Statements, PipelinableTest,
    ::testing::Values(
        ShareCase{"SELECT abalance FROM pgbench_accounts WHERE aid = $1", true},
        ShareCase{"  select 1", true},
        ShareCase{"(SELECT 1) UNION (SELECT 2)", true},
        ShareCase{"WITH t AS (SELECT 1) SELECT * FROM t", true},
        ShareCase{"VALUES (1)", true},
        ShareCase{"TABLE t", true},
        ShareCase{"INSERT INTO t VALUES ($1)", true},
        ShareCase{"UPDATE t SET x = 1", true},
        ShareCase{"DELETE FROM t", true},
        ShareCase{"/* comment */ SELECT 'BEGIN'", true},
        // Leaves something in the session.
        ShareCase{"SELECT set_config('a.b', '1', false)", false},
        ShareCase{"SELECT pg_advisory_lock(1)", false},
        ShareCase{"SELECT 1 INTO TEMP t", false},
        // Transaction control, utility commands, anything else.
        ShareCase{"BEGIN", false},
        ShareCase{"START TRANSACTION", false},
        ShareCase{"COMMIT", false},
        ShareCase{"SAVEPOINT a", false},
        ShareCase{"SET search_path = x", false},
        ShareCase{"LOCK TABLE t", false},
        ShareCase{"COPY t FROM STDIN", false},
        ShareCase{"VACUUM t", false},
        ShareCase{"CREATE TABLE t (x int)", false},
        ShareCase{"DO $$ BEGIN END $$", false},
        ShareCase{"SELECT 1; BEGIN", false},
        ShareCase{"", false},
        ShareCase{";", false}));

TEST(StatementCache, CapacityZeroKeepsNothing) {
  StatementCache cache(0);
  std::string evicted = "stale";
  EXPECT_EQ(cache.Insert("a", kNoEffect, &evicted), nullptr);
  EXPECT_EQ(evicted, "");
  EXPECT_EQ(cache.Find("a"), nullptr);
}

}  // namespace
}  // namespace dbpool::db
