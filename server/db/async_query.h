// AsyncQuery: one caller's statement on one pooled connection, driven by an
// event loop without ever blocking.
//
// The connection is in libpq's non-blocking pipeline mode. What used to
// take a round trip each goes out together: BEGIN READ ONLY, Parse,
// Bind/Execute and ROLLBACK of a read-only call are one flight, each part
// closed by the Sync that keeps an error inside it. After the statement's
// result come, only when needed, one more flight each for: a retry after a
// schema change (0A000) or a lost prepared statement (26000); the names of
// result types not seen before; and cleaning the session (ROLLBACK of a
// transaction the statement opened, the resets of session_effects.h).
//
// When the deadline passes or the caller cancels, the statement is
// cancelled on the server (PgConnection::StartCancel, which does not
// block) and its results are still read, for at most `cancel_grace`; a
// connection that does not recover in time, or whose cancel request is
// still on its way, is reported broken and closed by the pool.
//
// Owned by the event loop that drives it; not thread-safe: every method
// runs on that loop's thread. The connection, request, params and response
// must outlive it. No method blocks.
#ifndef DBPOOL_SERVER_DB_ASYNC_QUERY_H_
#define DBPOOL_SERVER_DB_ASYNC_QUERY_H_

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/pg_connection.h"
#include "server/db/pg_result.h"
#include "server/db/query_limits.h"
#include "server/db/session_effects.h"
#include "server/db/value_codec.h"

namespace dbpool::db {

class AsyncQuery {
 public:
  AsyncQuery(PgConnection& pg, const v1::QueryRequest& request,
             const std::vector<EncodedParam>& params, bool read_only,
             absl::Time deadline, const QueryLimits& limits,
             v1::QueryResponse* response);
  AsyncQuery(const AsyncQuery&) = delete;
  AsyncQuery& operator=(const AsyncQuery&) = delete;

  // Sends the first flight. Returns true when the query is done already
  // (the connection failed at once).
  bool Start(absl::Time now);
  // The socket is readable, or writable while WantsWrite(). Returns true
  // when the query is done.
  bool OnSocket(absl::Time now);
  // Call when `now` >= Timer(). Returns true when the query is done.
  bool OnTimer(absl::Time now);
  // The caller gave up. Returns true when the query is done.
  bool Cancel(absl::Time now);

  int socket() const;
  // Output is waiting for the socket to take it.
  bool WantsWrite() const { return wants_write_; }
  // When OnTimer must run next.
  absl::Time Timer() const;

  // Valid once done: the outcome for the caller (the response is filled
  // when it is OK), and whether the connection must be closed.
  const absl::Status& status() const { return status_; }
  bool connection_broken() const { return broken_; }

 private:
  // What the next result belongs to.
  enum class Part {
    kSync,         // a Sync: PGRES_PIPELINE_SYNC
    kHousekeeping, // DEALLOCATE of our own statement: errors do not matter
    kBegin,        // BEGIN READ ONLY: its error is the caller's
    kPrepare,      // Parse of a statement being prepared
    kStatement,    // the caller's statement
    kEnd,          // ROLLBACK of our read-only transaction
    kTypeNames,    // format_type of result types not seen before
    kCleanup,      // ROLLBACK or a reset: any error closes the connection
  };
  enum class Phase { kStatement, kTypeNames, kCleanup, kDone };

  // The flights. Each ends the query (Fail) when the connection cannot
  // take it.
  // `stale`: a prepared statement of ours to deallocate first.
  void SendStatementFlight(const std::string& stale);
  void SendTypeNamesFlight(std::vector<Oid> types);
  // Cleans the session if the statement left anything, else finishes.
  void SendCleanupFlight(absl::Time now);
  bool Send(Part part, const char* sql);
  bool Sync();
  // Hands libpq's output to the socket; false (and the query done) when
  // the connection failed.
  bool Flush();

  // Reads what has arrived; moves on to the next flight when one is
  // complete. Returns true when the query is done.
  bool Pump(absl::Time now);
  void OnResult(Part part, Result result);
  bool FlightDone(absl::Time now);
  // The caller's outcome from the statement flight's results.
  void DecideStatus();

  // Starts the server-side cancel for `reason`.
  bool Stop(absl::Status reason, absl::Time now);
  // The connection failed: it is closed, and `status` is the caller's
  // outcome unless that was decided already.
  bool Fail(absl::Status status);
  bool Finish();

  PgConnection& pg_;
  PGconn* const conn_;
  const v1::QueryRequest& request_;
  const Bound bound_;
  const bool read_only_;
  const absl::Time deadline_;
  const QueryLimits limits_;
  v1::QueryResponse* const response_;
  const std::string key_;

  Phase phase_ = Phase::kStatement;
  std::deque<Part> expected_;
  bool wants_write_ = false;
  // The statement flight's outcome: the first error in it, or the
  // statement's own result.
  std::optional<absl::Status> statement_error_;
  Result statement_result_;
  // The ROLLBACK of our read-only transaction failed.
  std::optional<absl::Status> end_error_;
  SessionEffects effects_ = kNoEffect;
  // The name being prepared in this flight, and the one that ran.
  std::string preparing_;
  std::string prepared_;
  bool retried_ = false;
  bool cleanup_failed_ = false;
  absl::Time cleanup_deadline_ = absl::InfiniteFuture();

  // Set once the caller's time is up or it cancelled.
  std::optional<absl::Status> stop_reason_;
  absl::Time give_up_ = absl::InfiniteFuture();
  std::shared_ptr<const std::atomic<bool>> cancel_settled_;
  // Set while the statement flight is complete but the cancel request is
  // not settled yet: when to look again.
  std::optional<absl::Time> settle_check_at_;

  absl::Status status_;
  bool broken_ = false;
};

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_ASYNC_QUERY_H_
