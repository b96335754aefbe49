// TransactionTable: the interactive transactions (BeginTransaction) one
// engine has open, and the rules for using them.
//
// A transaction id is this instance's name and 128 random bits from the
// kernel; only the caller that began it may use it, one statement at a
// time, on the instance that owns it. A transaction idle past its idle
// timeout, or older than the largest lifetime, is handed to the engine to
// roll back (TakeExpired). The number open at once is capped, so that
// autocommit callers always keep most of the pool. Ended ids are
// remembered (a bounded number of them), so that a late call learns why
// its transaction is gone. The table knows nothing of connections beyond
// the engine's `Pinned` pointer.
//
// Owned by the engine. Thread-safe: every method takes the table's lock
// for a few map operations; nothing blocks.
#ifndef DBPOOL_SERVER_ENGINE_TRANSACTIONS_H_
#define DBPOOL_SERVER_ENGINE_TRANSACTIONS_H_

#include <array>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "server/engine/query_engine.h"

namespace dbpool::engine {

struct TransactionLimits {
  // Used when a Begin asks for none.
  absl::Duration idle_timeout = absl::Minutes(1);
  // The longest idle timeout a Begin may ask for.
  absl::Duration max_idle_timeout = absl::Minutes(10);
  // Rolled back when older, once its running statement (if any) is done.
  absl::Duration max_lifetime = absl::Hours(1);
  int max_open = 1;
  // Named in every id; a call with another instance's id is sent there.
  std::string instance;
};

// The engine's connection of an open transaction.
class Pinned {
 public:
  virtual ~Pinned() = default;
};

// How a transaction ended, for metrics and for late callers.
enum class TransactionOutcome {
  kCommitted,
  kRolledBack,
  // Idle or lifetime limit.
  kExpired,
  // A serialization failure or deadlock, a failed statement before COMMIT,
  // or its connection lost.
  kAborted,
  // The server shut down.
  kDrained,
};
inline constexpr int kTransactionOutcomes = 5;
// "committed", "rolled_back", "expired", "aborted", "drained".
absl::string_view OutcomeName(TransactionOutcome outcome);

// ErrorInfo reasons (domain "dbpool") of the statuses below.
inline constexpr char kTransactionExpired[] = "TRANSACTION_EXPIRED";
inline constexpr char kTransactionAborted[] = "TRANSACTION_ABORTED";
inline constexpr char kTransactionEnded[] = "TRANSACTION_ENDED";
inline constexpr char kTransactionNotFound[] = "TRANSACTION_NOT_FOUND";
inline constexpr char kTransactionBusy[] = "TRANSACTION_BUSY";
inline constexpr char kTransactionElsewhere[] = "TRANSACTION_ELSEWHERE";
inline constexpr char kTransactionLimit[] = "TRANSACTION_LIMIT";

class TransactionTable {
 public:
  explicit TransactionTable(TransactionLimits limits);

  const TransactionLimits& limits() const { return limits_; }

  // A new id with room reserved for it, or RESOURCE_EXHAUSTED (reason
  // TRANSACTION_LIMIT) when max_open are open or beginning.
  absl::StatusOr<std::string> Reserve(const TransactionOptions& options);
  // Its BEGIN succeeded: open on `pinned` from `now`. Returns when it
  // expires unless a statement comes first.
  absl::Time Open(const std::string& id, Pinned* pinned, absl::Time now);
  // Its BEGIN failed: the room is free again, and the id unknown.
  void Unreserve(const std::string& id);

  // For one statement (`end` false) or the transaction's end (`end` true):
  // its connection, marked busy (or ending) so that nothing else uses it
  // meanwhile. INVALID_ARGUMENT for a malformed id; FAILED_PRECONDITION for
  // another instance's (TRANSACTION_ELSEWHERE, metadata "instance") or
  // while a statement of it runs (TRANSACTION_BUSY); PERMISSION_DENIED for
  // another caller's; ABORTED for one that has ended
  // (TRANSACTION_EXPIRED, TRANSACTION_ABORTED) or is unknown here
  // (TRANSACTION_NOT_FOUND); FAILED_PRECONDITION (TRANSACTION_ENDED) for
  // one already committed or rolled back.
  absl::StatusOr<Pinned*> Use(const std::string& id, const std::string& caller, bool end);
  // Its statement is done: idle again from `now`.
  void Idle(const std::string& id, absl::Time now);
  // It ended: its room is free, and a later use is told `why`.
  void Close(const std::string& id, TransactionOutcome outcome, std::string why);

  // Idle transactions past their expiry at `now`, marked ending: the
  // engine rolls them back and Closes them.
  std::vector<std::pair<std::string, Pinned*>> TakeExpired(absl::Time now);
  // Shutdown: from now on every transaction expires at once (idle ones at
  // the next TakeExpired, busy ones once their statement is done).
  void ExpireAll();
  // After ExpireAll.
  bool draining() const;
  // When TakeExpired has work next; InfiniteFuture when nothing is open.
  absl::Time NextExpiry() const;
  // A statement of the transaction has put it beyond use (a serialization
  // failure, a statement that ended it): marked ending, for the engine to
  // roll back and Close; meanwhile Use answers as if it had ended so.
  void MarkEnding(const std::string& id, TransactionOutcome outcome, std::string why);

  // Open now (begun, not ending).
  int open() const;
  // Open, beginning or ending: what counts against max_open.
  int held() const;
  // Age of the oldest open transaction; zero when none.
  absl::Duration OldestAge(absl::Time now) const;

 private:
  enum class State { kBeginning, kIdle, kBusy, kEnding };
  struct Ended {
    TransactionOutcome outcome;
    std::string why;
  };
  struct Entry {
    std::string owner;
    absl::Duration idle_timeout;
    State state = State::kBeginning;
    Pinned* pinned = nullptr;
    absl::Time begun;
    absl::Time idle_since;
    // Set when the engine ends it for a reason of its own.
    std::optional<Ended> ending;
  };
  // What a use of a transaction that ended as `e` is told.
  static absl::Status EndedError(const Ended& e);
  absl::Time ExpiryLocked(const Entry& entry) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TransactionLimits limits_;
  const std::string instance_tag_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, Entry> open_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Ended> ended_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> ended_order_ ABSL_GUARDED_BY(mu_);
  bool expire_all_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_TRANSACTIONS_H_
