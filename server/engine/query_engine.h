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

#include <memory>
#include <optional>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/value_codec.h"
#include "server/pool/pool_stats.h"

namespace dbpool::engine {

// One statement to run, as the RPC layer has validated it.
struct QueryJob {
  // The caller's request. Its read_only field is not read: `read_only`
  // below is the decision that counts.
  v1::QueryRequest request;
  // request.params(), already encoded.
  std::vector<db::EncodedParam> params;
  // Run in a READ ONLY transaction: the caller asked for it or its role
  // allows nothing else.
  bool read_only = false;
  // The caller's deadline: bounds both the wait for a connection and the
  // statement.
  absl::Time deadline = absl::InfiniteFuture();
  // Longest the statement may run once it has a connection (the statement
  // timeout); `deadline` still caps it.
  absl::Duration timeout = absl::InfiniteDuration();
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
  // unreachable, or draining), CANCELLED (after QueryHandle::Cancel).
  absl::Status status;
  // Filled when `status` is OK.
  v1::QueryResponse response;
  // Set when the statement got a connection, whatever its outcome.
  std::optional<QueryTimings> timings;
};

using QueryDone = absl::AnyInvocable<void(QueryResult) &&>;

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

class QueryEngine {
 public:
  virtual ~QueryEngine() = default;

  // Takes `job`; `done` runs exactly once with the outcome, on whatever
  // thread finishes the job, possibly before Submit returns. `done` must not
  // block. Never blocks.
  virtual std::shared_ptr<QueryHandle> Submit(QueryJob job, QueryDone done) = 0;

  // The state of the engine's connections now, for PoolStats replies,
  // error details and metrics.
  virtual pool::PoolStats Snapshot() const = 0;

  // Whether callers can expect a connection: the database answered the
  // last connection attempt and the engine is not draining.
  virtual bool Serving() const = 0;
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_QUERY_ENGINE_H_
