// AsyncQuery: one caller's statement on a pooled connection, driven by an
// event loop without ever blocking.
//
// The connection is in libpq's non-blocking pipeline mode (Pipeline), which
// it may share with other callers' statements. What used to
// take a round trip each goes out together: BEGIN READ ONLY, Parse,
// Bind/Execute and ROLLBACK of a read-only call are one flight, each part
// closed by the Sync that keeps an error inside it. After the statement's
// result come, only when needed, one more flight each for: a retry after a
// schema change (0A000) or a lost prepared statement (26000); the names of
// result types not seen before; and cleaning the session (ROLLBACK of a
// transaction the statement opened, the resets of session_effects.h).
//
// When the deadline passes or the caller cancels, a statement alone on its
// connection is cancelled on the server (PgConnection::StartCancel, which
// does not block) and its results are still read, for at most
// `cancel_grace`; a connection that does not recover in time, or whose
// cancel request is still on its way, is reported broken and closed by the
// pool. A statement that shares its connection is not cancelled there (the
// request could stop another caller's statement): the caller is answered
// at once and the Pipeline drops the statement's replies.
//
// A query is one statement or a batch (ExecuteBatch), framed for where it
// runs (Framing): on its own, cleaned afterwards; as a batch in a
// transaction of its own, all or nothing; inside a caller's open
// transaction, neither wrapped nor cleaned (what it leaves is reported, for
// the transaction's end to clean); or as the BEGIN, COMMIT or ROLLBACK of
// such a transaction.
//
// The query reports that it has finished through Pipeline::TakeFinished.
//
// Owned by the event loop that drives it; not thread-safe: every method
// runs on that loop's thread. The pipeline, request, params and response
// must outlive it. No method blocks.
#ifndef DBPOOL_SERVER_DB_ASYNC_QUERY_H_
#define DBPOOL_SERVER_DB_ASYNC_QUERY_H_

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/pg_connection.h"
#include "server/db/pg_result.h"
#include "server/db/pipeline.h"
#include "server/db/query_limits.h"
#include "server/db/session_effects.h"
#include "server/db/value_codec.h"

namespace dbpool::db {

// One statement of a query and where its result goes.
struct StatementRef {
  const v1::QueryRequest* request;
  const std::vector<EncodedParam>* params;
  v1::QueryResponse* response;
};

enum class Framing {
  // One autocommit statement (in BEGIN READ ONLY … ROLLBACK when read
  // only); whatever it leaves in the session is cleaned afterwards.
  kOwn,
  // Statements in BEGIN … COMMIT, all or nothing, stopping at the first
  // failure; cleaned afterwards.
  kBatch,
  // Inside the caller's open transaction: sent as they are, and what they
  // leave in the session is reported (effects()), not cleaned.
  kInTransaction,
  // BEGIN of an interactive transaction: sent unprepared, nothing cleaned.
  kBeginTransaction,
  // COMMIT or ROLLBACK of an interactive transaction, sent unprepared; then
  // the session is cleaned of what the transaction left (`carried`).
  kEndTransaction,
};

// Where a streamed statement's rows go, on the loop's thread. After each
// chunk the query holds its pipeline (reads nothing more) until Resume.
class ChunkSink {
 public:
  virtual ~ChunkSink() = default;
  virtual void OnChunk(v1::QueryResponse chunk) = 0;
};

// A streamed chunk ends at this many rows or bytes of cell data, whichever
// comes first.
inline constexpr int kChunkRows = 1000;
inline constexpr int64_t kChunkBytes = int64_t{1} << 20;

struct QueryFrame {
  Framing framing = Framing::kOwn;
  // kOwn and kBatch: in a READ ONLY transaction.
  bool read_only = false;
  // kEndTransaction: what the transaction's statements may have left.
  SessionEffects carried = kNoEffect;
};

class AsyncQuery {
 public:
  // `statements` holds one statement, or several for kBatch and
  // kInTransaction. With a `sink` (one statement, kOwn or kInTransaction)
  // the result is streamed: the statement is described first (columns and
  // their type names), then read row by row in chunks, and the statement's
  // response gets only the command tag and rows affected.
  AsyncQuery(Pipeline& pipeline, std::vector<StatementRef> statements,
             QueryFrame frame, absl::Time deadline, const QueryLimits& limits,
             ChunkSink* sink = nullptr);
  AsyncQuery(const AsyncQuery&) = delete;
  AsyncQuery& operator=(const AsyncQuery&) = delete;

  // Joins the pipeline and sends the first flight.
  void Start(absl::Time now);
  // Call when `now` >= Timer().
  void OnTimer(absl::Time now);
  // The caller gave up.
  void Cancel(absl::Time now);
  // The caller has taken the last chunk: reading goes on.
  void Resume(absl::Time now);

  // When OnTimer must run next.
  absl::Time Timer() const;

  bool done() const { return phase_ == Phase::kDone; }
  // Valid once done: the outcome for the caller (the response is filled
  // when it is OK).
  const absl::Status& status() const { return status_; }
  // The statement's own time in the backend: from when it was sent, or
  // when the reply before it arrived if that was later, to its result.
  // Infinite when no result came.
  absl::Duration service_time() const { return service_time_; }
  // What the statements may have left in the session (kInTransaction
  // reports it; the other framings clean it).
  SessionEffects effects() const;

 private:
  friend class Pipeline;
  struct Stmt {
    Stmt(const StatementRef& ref)
        : request(*ref.request),
          bound(*ref.params),
          key(StatementKey(ref.request->sql(), bound)),
          response(ref.response) {}
    const v1::QueryRequest& request;
    const Bound bound;
    const std::string key;
    v1::QueryResponse* const response;
    SessionEffects effects = kNoEffect;
    // Not in the connection's cache before this flight: sent unprepared.
    bool first_sight = false;
    // The prepared statement it ran as; empty when sent unprepared.
    std::string prepared;
    Result result;
  };

  enum class Phase { kDescribe, kStatement, kTypeNames, kCleanup, kDone };

  // From the Pipeline: a reply, the last reply of a flight, the end of the
  // connection.
  void OnResult(Part part, Result result, absl::Time now);
  void OnFlightDone(absl::Time now);
  void OnLost(absl::Status status) { Fail(std::move(status)); }

  // The flights. Each ends the query (Fail) when the connection cannot
  // take it.
  // `stale`: a prepared statement of ours to deallocate.
  void SendStatementFlight(const std::string& stale);
  void SendTypeNamesFlight(std::vector<Oid> types);
  // Streaming: Parse and Describe first, then the rows.
  void SendDescribeFlight();
  void SendRowsFlight();
  void OnRow(Result result);
  // Hands the chunk so far to the sink; with `hold`, reading stops until
  // Resume.
  void EmitChunk(bool hold);
  void DecideStreamStatus();
  // Cleans the session if the statement left anything, else finishes.
  void SendCleanupFlight(absl::Time now);
  bool Send(Part part, const char* sql);
  bool Sync();
  // The connection could not take a command.
  void SendFailed();

  // The session is inside a transaction block, after this query's last
  // flight.
  bool InTransaction() const;
  // The caller's outcome from the statement flight's results.
  void DecideStatus();
  // The first statement whose result is an error.
  const Stmt* FirstFailed() const;
  // Sends the statement flight again after an error that preparing anew
  // cures; false when it does not apply.
  bool MayRetry();
  void ClearResponses();

  // Ends the statement for `reason`: cancels it on the server when it is
  // alone on its connection, else drops it.
  void Stop(absl::Status reason, absl::Time now);
  // The connection failed: `status` is the caller's outcome unless that
  // was decided already.
  void Fail(absl::Status status);
  void Finish();

  // Wrapped in a transaction of ours (BEGIN … COMMIT or ROLLBACK).
  bool Wrapped() const;
  // Sent as they are, never prepared.
  bool Control() const;
  // The session is cleaned afterwards.
  bool Cleans() const;
  // Finds each statement in the connection's cache, or adds it (first
  // sight); names that evicts go to `deallocate`.
  void LookUp(std::vector<std::string>& deallocate);
  // Sends statement `index` (preparing it when seen before). False when
  // the connection could not take it.
  bool SendOne(Stmt& stmt, size_t index);

  Pipeline& pipeline_;
  PgConnection& pg_;
  PGconn* const conn_;
  std::vector<Stmt> stmts_;
  const QueryFrame frame_;
  const absl::Time deadline_;
  const QueryLimits limits_;

  Phase phase_ = Phase::kStatement;
  absl::Time sent_at_;
  absl::Duration service_time_ = absl::InfiniteDuration();
  // The statement flight's outcome: the first error in it that is not a
  // statement's own result (BEGIN, Parse), and the statement it belongs
  // to (-1: none).
  std::optional<absl::Status> statement_error_;
  int error_index_ = -1;
  // The statement whose reply comes next.
  size_t next_result_ = 0;
  // The ROLLBACK of our read-only transaction, or the COMMIT of a batch,
  // failed.
  std::optional<absl::Status> end_error_;
  // Statements being prepared in this flight, in order: index and name.
  std::deque<std::pair<size_t, std::string>> preparing_;
  bool retried_ = false;
  bool cleanup_failed_ = false;
  absl::Time cleanup_deadline_ = absl::InfiniteFuture();

  // Streaming.
  ChunkSink* const sink_;
  std::string stream_name_;
  Result described_;
  v1::QueryResponse chunk_;
  int64_t chunk_bytes_ = 0;
  int64_t streamed_rows_ = 0;
  bool chunk_sent_ = false;

  // Set once the caller's time is up or it cancelled.
  std::optional<absl::Status> stop_reason_;
  absl::Time give_up_ = absl::InfiniteFuture();
  std::shared_ptr<const std::atomic<bool>> cancel_settled_;
  // Set while the statement flight is complete but the cancel request is
  // not settled yet: when to look again.
  std::optional<absl::Time> settle_check_at_;

  absl::Status status_;
};

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_ASYNC_QUERY_H_
