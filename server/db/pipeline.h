// Pipeline: one leased connection in libpq's pipeline mode, carrying the
// statements of one or several callers (AsyncQuery) at once.
//
// Every command sent on the connection is recorded here with the query it
// belongs to and what it is (Part). Replies come back in the order the
// commands went out; the pipeline reads them, hands each to its query, and
// tells a query when its last outstanding reply has come (the query may
// then send another flight, which joins the end of the line). Each
// caller's commands are closed by their own Sync, so an error aborts only
// that caller's part of the pipeline.
//
// A query that gives up while others share the connection cannot be
// cancelled on the server: the request would stop whatever the backend
// runs at that moment, possibly another caller's statement. Its replies
// are then read and dropped (Detach), and the pipeline takes no new
// statements. Once only dropped replies are left, the backend can only be
// running statements nobody waits for, and the pipeline cancels them on
// the server; a connection that has not drained within the cancel grace
// is closed.
//
// Owned by the event loop that holds the connection's lease; not
// thread-safe: every method runs on that loop's thread. The connection must
// outlive it, and so must every query that has joined it until the query
// has finished. No method blocks.
#ifndef DBPOOL_SERVER_DB_PIPELINE_H_
#define DBPOOL_SERVER_DB_PIPELINE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "server/db/pg_connection.h"

namespace dbpool::db {

class AsyncQuery;

// How often a query or a pipeline whose cancel request is on its way looks
// whether the request has settled; it settles within a round trip or two.
inline constexpr absl::Duration kCancelSettlePoll = absl::Milliseconds(1);

// The status for a connection that failed under us, with libpq's reason.
absl::Status ConnectionLost(PGconn* conn);

// What a reply belongs to.
enum class Part : uint8_t {
  kSync,          // a Sync: PGRES_PIPELINE_SYNC
  kHousekeeping,  // DEALLOCATE of our own statement: errors do not matter
  kBegin,         // BEGIN READ ONLY: its error is the caller's
  kPrepare,       // Parse of a statement being prepared
  kStatement,     // the caller's statement
  kEnd,           // ROLLBACK of our read-only transaction
  kTypeNames,     // format_type of result types not seen before
  kCleanup,       // ROLLBACK or a reset: any error closes the connection
  kDescribe,      // Describe of a statement about to be streamed
  kRows,          // a streamed statement, read row by row (single-row mode)
};

class Pipeline {
 public:
  Pipeline(PgConnection& pg, absl::Duration cancel_grace);
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  PgConnection& connection() const { return pg_; }
  PGconn* raw() const { return pg_.raw(); }
  int socket() const { return PQsocket(pg_.raw()); }
  // Output is waiting for the socket to take it.
  bool WantsWrite() const { return wants_write_; }

  // The socket is readable, or writable while WantsWrite().
  void OnSocket(absl::Time now);
  // Call when `now` >= Timer().
  void OnTimer(absl::Time now);
  // When OnTimer must run next: the pipeline's own work (cancelling and
  // draining dropped statements), not its queries' deadlines.
  absl::Time Timer() const;

  // Stops reading replies (and the socket) until Resume: a streamed
  // statement's reader is behind, and PostgreSQL is left to wait on a full
  // socket rather than this process growing a buffer.
  void Hold() { held_ = true; }
  void Resume(absl::Time now);
  // Replies are wanted from the socket (not held).
  bool WantsRead() const { return !held_; }

  // Queries that have finished since the last call, in order.
  std::vector<AsyncQuery*> TakeFinished();

  // Whether another caller's statement may join.
  bool accepting() const { return accepting_ && !broken_; }
  void CloseToJoins() { accepting_ = false; }
  // The connection must be closed once it is idle, not reused.
  bool broken() const { return broken_; }
  void MarkBroken() { broken_ = true; }
  // Nothing is left in flight: no query, no reply outstanding, no cancel
  // request on its way. The connection may then go back to the pool.
  bool Idle() const;
  // No reply is outstanding: libpq's view of the session (its transaction
  // status) is that of the last reply, not of a command in progress.
  bool Quiet() const { return entries_.empty(); }
  // Queries on the connection now.
  int in_flight() const { return static_cast<int>(members_.size()); }

  // For AsyncQuery.
  void Join(AsyncQuery* query);
  // The next reply of a command just sent belongs to `owner`'s `part`.
  void Expect(AsyncQuery* owner, Part part);
  // Hands libpq's output to the socket; false (and every query ended)
  // when the connection failed.
  bool Flush();
  // The connection failed: every query on it ends with `status`, except
  // that `culprit`, if any, ends with `culprit_status`.
  void Lose(absl::Status status, AsyncQuery* culprit = nullptr,
            absl::Status culprit_status = absl::OkStatus());
  // `query` is the only statement on the connection: a cancel request can
  // hit nothing else.
  bool Alone(const AsyncQuery* query) const;
  // `query` gives up while sharing the connection: its replies are read and
  // dropped, and no statement joins any more.
  void Detach(AsyncQuery* query);
  // `query` is done and leaves.
  void Finished(AsyncQuery* query);
  // When the reply before the one being handed out arrived (or the
  // pipeline was made): a query's own time in the backend starts no
  // earlier.
  absl::Time previous_reply_at() const { return previous_reply_at_; }

 private:
  struct Entry {
    AsyncQuery* owner;  // null: dropped
    Part part;
  };
  struct Member {
    AsyncQuery* query;
    int outstanding;
  };

  void Pump(absl::Time now);
  // A reply of `owner` is complete; tells it when it was its last.
  void Settle(AsyncQuery* owner, absl::Time now);
  Member* Find(const AsyncQuery* query);

  PgConnection& pg_;
  const absl::Duration cancel_grace_;
  std::deque<Entry> entries_;
  std::vector<Member> members_;
  std::vector<AsyncQuery*> finished_;
  int dropped_ = 0;
  bool wants_write_ = false;
  bool accepting_ = true;
  bool broken_ = false;
  bool held_ = false;
  absl::Time previous_reply_at_;
  absl::Time last_reply_at_;

  // Draining dropped statements once no query is left.
  absl::Time give_up_ = absl::InfiniteFuture();
  std::shared_ptr<const std::atomic<bool>> cancel_settled_;
  absl::Time next_cancel_at_ = absl::InfiniteFuture();
};

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_PIPELINE_H_
