// Session effects: what a statement may leave behind in its database
// session for the next caller of the same pooled connection, read from the
// statement's text, and the SQL that undoes it.
//
// A pooled connection serves many callers one after another. Most
// statements leave nothing behind, but some change the session for good:
// SET, set_config(…, false), SET ROLE and SET SESSION AUTHORIZATION,
// temporary tables, session advisory locks, LISTEN, SQL-level PREPARE,
// cursors WITH HOLD. The engine classifies every statement (cheaply: one
// pass over its text, cached with the statement) and, after a statement
// that has effects, undoes exactly those before the connection serves
// anyone else. Resetting only what was touched keeps the prepared-statement
// cache that DISCARD ALL would throw away.
//
// The classification errs on the side of resetting: a word in the wrong
// place costs a reset, never a leak. What it cannot see is a user-defined
// function that changes the session from inside; the parameters PostgreSQL
// reports after every statement (session_authorization, TimeZone, …) are
// checked as well, which catches the ones that matter to decoding and
// identity (PgConnection::ReportedParametersChanged).
//
// Pure functions of their arguments; thread-safe; nothing blocks.
#ifndef DBPOOL_SERVER_DB_SESSION_EFFECTS_H_
#define DBPOOL_SERVER_DB_SESSION_EFFECTS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace dbpool::db {

// A bit set of what a statement may leave in its session.
enum SessionEffect : uint32_t {
  kNoEffect = 0,
  // SET, RESET, SET SESSION CHARACTERISTICS, set_config(): RESET ALL.
  kSettings = 1u << 0,
  // SET ROLE, SET SESSION AUTHORIZATION: back to the pool's own login.
  kIdentity = 1u << 1,
  // CREATE TEMP …, SELECT … INTO TEMP, anything naming pg_temp: DISCARD TEMP.
  kTempObjects = 1u << 2,
  // Session-level advisory locks: pg_advisory_unlock_all().
  kAdvisoryLocks = 1u << 3,
  // LISTEN: UNLISTEN *.
  kListen = 1u << 4,
  // SQL-level PREPARE and DEALLOCATE, DISCARD ALL: DEALLOCATE ALL, which
  // also drops the engine's own prepared statements (their cache is
  // cleared with them).
  kPreparedStatements = 1u << 5,
  // DECLARE (a cursor WITH HOLD outlives its transaction): CLOSE ALL.
  kCursors = 1u << 6,
  // DO and CALL run arbitrary code: every reset above, plus DISCARD
  // SEQUENCES.
  kAnything = (1u << 7) | kSettings | kIdentity | kTempObjects |
              kAdvisoryLocks | kListen | kPreparedStatements | kCursors,
  // LOAD (a library stays loaded) and dblink connections cannot be undone
  // by any statement: the connection is closed after the call.
  kIrreversible = 1u << 8,
};
using SessionEffects = uint32_t;

// What running `sql` may leave behind. `sql` may hold several statements
// (separated by ';'); comments, string literals, quoted identifiers and
// dollar-quoted bodies are skipped.
SessionEffects ClassifySessionEffects(absl::string_view sql);

// Whether `sql` may share a connection with other callers' statements in
// one pipeline: every statement in it is a query or DML statement (SELECT,
// WITH, VALUES, TABLE, INSERT, UPDATE, DELETE, MERGE) that leaves nothing
// in the session. Transaction control, utility commands and anything with
// a session effect run alone.
bool Pipelinable(absl::string_view sql);

// Whether `sql` may end the transaction it runs in: COMMIT, END, ABORT,
// ROLLBACK (not ROLLBACK TO SAVEPOINT), PREPARE TRANSACTION. Such
// statements have no place in a batch or an interactive transaction, whose
// end is the engine's.
bool EndsTransaction(absl::string_view sql);

// The statements that undo `effects`, in the order they must run, in
// groups that each run as a transaction of their own: settings and
// identity come first, on their own, because a caller's SET
// default_transaction_read_only would otherwise make the rest of the reset
// run read-only. Empty for kNoEffect. kIrreversible has no statements.
std::vector<std::vector<std::string>> ResetCommands(SessionEffects effects);

// The kinds of reset a connection can get, for counting them: the bit
// positions of SessionEffect, 0 … kEffectKinds - 1.
inline constexpr int kEffectKinds = 9;
// A stable name of kind `kind`, for metrics labels ("settings", "identity",
// …, "anything", "irreversible").
absl::string_view EffectKindName(int kind);
// The kinds one reset of `effects` counts as: kAnything counts once as
// "anything", kIrreversible once as "irreversible", others bit by bit.
std::vector<int> EffectKinds(SessionEffects effects);

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_SESSION_EFFECTS_H_
