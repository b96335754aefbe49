// QueryEngine: what the RPC layer needs from whatever runs statements on
// PostgreSQL. The RPC layer validates a call, hands it over as a QueryJob
// and is told the outcome through a callback; it never sees a connection.
//
// The contract leaves an implementation free to wait for connections
// without a thread, to run statements from a few event loops, and to put
// several callers' statements on one connection: nothing here blocks, and
// the completion callback may run on any thread, including inside Submit.
//
// Implementations are owned by whoever builds the server and must outlive
// every call that uses them. Every method is thread-safe and non-blocking.
#ifndef DBPOOL_SERVER_ENGINE_QUERY_ENGINE_H_
#define DBPOOL_SERVER_ENGINE_QUERY_ENGINE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/value_codec.h"
#include "server/pool/pool_stats.h"

namespace dbpool::engine {

// One statement, as the RPC layer has validated it.
struct Statement {
  // The caller's request. Only sql, params and max_rows are read: the
  // job's fields below decide the rest.
  v1::QueryRequest request;
  // request.params(), already encoded.
  std::vector<db::EncodedParam> params;
};

// What to run: one statement, or a batch.
struct QueryJob {
  // At least one; more only with `batch`.
  std::vector<Statement> statements;
  // Runs the statements in order as one unit, all or nothing, stopping at
  // the first failure (ExecuteBatch): in a transaction of their own, or in
  // `transaction_id`'s.
  bool batch = false;
  // Runs inside this open transaction (BeginTransaction) instead of on its
  // own; the read_only of the transaction applies.
  std::string transaction_id;
  // Who calls (AccessControl's name): must be the transaction's owner.
  std::string caller;
  // Run in a READ ONLY transaction: the caller asked for it or its role
  // allows nothing else.
  bool read_only = false;
  // The caller's deadline: bounds both the wait for a connection and the
  // statement.
  absl::Time deadline = absl::InfiniteFuture();
  // Longest the statement (or the batch) may run once it has a connection
  // (the statement timeout); `deadline` still caps it.
  absl::Duration timeout = absl::InfiniteDuration();
  // For a read_only job where there are read replicas: run it on the
  // primary all the same (CONSISTENCY_PRIMARY).
  bool primary_only = false;
  // For a read_only job where there are read replicas: a replica may run
  // it only once it has replayed the WAL up to here (db/lsn.h); 0: any.
  uint64_t min_lsn = 0;
};

// Where the time of a statement that got a connection went.
struct QueryTimings {
  absl::Duration acquire_wait;
  // Callers already waiting for a connection when this one arrived.
  int queue_depth_on_arrival = 0;
  absl::Duration execution;
};

struct QueryResult {
  // OK, the statement's own error, or one of the engine's: DEADLINE_EXCEEDED
  // (no connection in time, or the statement ran out of time),
  // RESOURCE_EXHAUSTED (too many waiting), UNAVAILABLE (database
  // unreachable, or draining), CANCELLED (after QueryHandle::Cancel), and
  // for a transaction's statement the errors of TransactionError
  // (transactions.h). A batch's error names the failing statement
  // (kStatementIndexKey in its ErrorInfo metadata).
  absl::Status status;
  // When `status` is OK: one per statement, in order.
  std::vector<v1::QueryResponse> responses;
  // Set when the statement got a connection, whatever its outcome.
  std::optional<QueryTimings> timings;
  // When `status` is OK, the job was not read_only and there are read
  // replicas: a WAL position at or past its commit ("X/X"), the caller's
  // read-your-writes token. Empty otherwise.
  std::string commit_lsn;
};

// The ErrorInfo metadata key naming the statement of a batch that failed
// (0-based, in decimal).
inline constexpr char kStatementIndexKey[] = "statement_index";

// How a transaction starts (BeginTransactionRequest, checked by the RPC
// layer).
struct TransactionOptions {
  v1::IsolationLevel isolation = v1::ISOLATION_LEVEL_UNSPECIFIED;
  bool read_only = false;
  bool deferrable = false;
  // Zero: the engine's default; the engine caps it.
  absl::Duration idle_timeout;
  // Who begins it; only this caller may use it.
  std::string caller;
  // Bounds the wait for a connection and the BEGIN.
  absl::Time deadline = absl::InfiniteFuture();
  // As QueryJob's, for a read_only transaction.
  bool primary_only = false;
  uint64_t min_lsn = 0;
};

struct BegunTransaction {
  std::string transaction_id;
  // When it is rolled back unless a statement comes first.
  absl::Time expire_time;
};

enum class TransactionEnd { kCommit, kRollback };

struct EndedTransaction {
  // As QueryResult::commit_lsn, for a commit.
  std::string commit_lsn;
};

// A read replica as the engine last saw it (QueryEngine::Replicas).
struct ReplicaState {
  // host:port, for metrics and PoolStats; never a connection string.
  std::string name;
  pool::PoolStats pool;
  // Whether read_only jobs may go to it now.
  bool routable = false;
  absl::Duration replay_lag;
  uint64_t replay_lsn = 0;
};

using QueryDone = absl::AnyInvocable<void(QueryResult) &&>;
using BeginDone = absl::AnyInvocable<void(absl::StatusOr<BegunTransaction>) &&>;
using EndDone = absl::AnyInvocable<void(absl::StatusOr<EndedTransaction>) &&>;

// A submitted statement, for cancelling it. Shared by the engine and the
// submitter; keeping it alive after completion is harmless.
class QueryHandle {
 public:
  virtual ~QueryHandle() = default;
  // Ends the statement as soon as it can with CANCELLED: a wait for a
  // connection ends at once; a running statement is cancelled on the
  // server. The QueryDone callback still runs exactly once, possibly inside
  // this call. A no-op once the statement has completed; may be called any
  // number of times, from any thread. Never blocks.
  virtual void Cancel() = 0;
};

// Where a streamed statement's result goes (StreamQuery). The engine calls
// it on its own threads, never two calls at once, and never blocks on it.
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // A chunk of the result: the first holds the columns (and maybe rows),
  // each holds at most the engine's chunk of rows and bytes. The engine
  // reads no further from PostgreSQL until StreamHandle::Next is called:
  // a slow reader slows the database read instead of growing memory.
  virtual void OnChunk(v1::QueryResponse chunk) = 0;
  // The end, exactly once; after it the engine no longer uses the sink. On
  // OK, responses[0] holds rows_affected and command_tag (no rows).
  virtual void OnDone(QueryResult result) = 0;
};

class StreamHandle : public QueryHandle {
 public:
  // The last chunk is on its way to the caller: the next may come.
  virtual void Next() = 0;
};

class QueryEngine {
 public:
  virtual ~QueryEngine() = default;

  // Takes `job`; `done` runs exactly once with the outcome, on whatever
  // thread finishes the job, possibly before Submit returns. `done` must not
  // block. Never blocks.
  virtual std::shared_ptr<QueryHandle> Submit(QueryJob job, QueryDone done) = 0;

  // Runs one statement and streams its result to `sink`, which must
  // outlive the OnDone call. Never blocks.
  virtual std::shared_ptr<StreamHandle> SubmitStream(QueryJob job, StreamSink& sink) = 0;

  // Pins a pooled connection to a new transaction: RESOURCE_EXHAUSTED at
  // once when the most transactions allowed are open; otherwise as an
  // acquire (Submit). Cancel() of the handle abandons the Begin. `done` runs
  // exactly once, on any thread, possibly inside the call. Never blocks.
  virtual std::shared_ptr<QueryHandle> BeginTransaction(TransactionOptions options,
                                                        BeginDone done) = 0;

  // Commits or rolls back `transaction_id` for `caller` and gives its
  // connection back. A commit of a transaction in which a statement failed
  // rolls back and reports ABORTED. `done` as for BeginTransaction. Never
  // blocks.
  virtual void EndTransaction(std::string transaction_id, std::string caller,
                              TransactionEnd end, EndDone done) = 0;

  // The state of the engine's connections now, for PoolStats replies,
  // error details and metrics.
  virtual pool::PoolStats Snapshot() const = 0;

  // Whether callers can expect a connection: the database answered the
  // last connection attempt and the engine is not draining.
  virtual bool Serving() const = 0;

  // The read replicas, in configured order; none for an engine of one
  // database.
  virtual std::vector<ReplicaState> Replicas() const { return {}; }
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_QUERY_ENGINE_H_
