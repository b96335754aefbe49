#include "server/engine/transactions.h"

#include <sys/random.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "server/db/sql_state.h"

namespace dbpool::engine {
namespace {

// Ended ids remembered for late callers; the oldest are forgotten first.
constexpr size_t kEndedRemembered = 100000;
constexpr size_t kRandomBytes = 16;

std::string RandomPart() {
  unsigned char bytes[kRandomBytes];
  size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
    // EINTR only: getrandom does not fail otherwise once the pool is ready.
  }
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes), sizeof bytes));
}

}  // namespace

absl::string_view OutcomeName(TransactionOutcome outcome) {
  switch (outcome) {
    case TransactionOutcome::kCommitted:
      return "committed";
    case TransactionOutcome::kRolledBack:
      return "rolled_back";
    case TransactionOutcome::kExpired:
      return "expired";
    case TransactionOutcome::kAborted:
      return "aborted";
    case TransactionOutcome::kDrained:
      return "drained";
  }
  return "aborted";
}

TransactionTable::TransactionTable(TransactionLimits limits)
    : limits_(std::move(limits)),
      // Web-safe base64 keeps the id free of '.', ':' and '/', so that it
      // splits at its one '.' and sits in a URL path as it is.
      instance_tag_(absl::WebSafeBase64Escape(limits_.instance)) {}

absl::StatusOr<std::string> TransactionTable::Reserve(const TransactionOptions& options) {
  std::string id = absl::StrCat(instance_tag_, ".", RandomPart());
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int>(open_.size()) >= limits_.max_open) {
    return db::DbpoolError(
        absl::StatusCode::kResourceExhausted, kTransactionLimit,
        absl::StrCat(open_.size(), " transactions are open, the most allowed "
                     "(DB_TX_MAX_OPEN); commit or roll back one, or retry later"));
  }
  Entry entry;
  entry.owner = options.caller;
  entry.idle_timeout = options.idle_timeout > absl::ZeroDuration()
                           ? std::min(options.idle_timeout, limits_.max_idle_timeout)
                           : limits_.idle_timeout;
  open_.emplace(id, std::move(entry));
  return id;
}

absl::Time TransactionTable::ExpiryLocked(const Entry& entry) const {
  if (expire_all_) return absl::InfinitePast();
  return std::min(entry.idle_since + entry.idle_timeout, entry.begun + limits_.max_lifetime);
}

absl::Time TransactionTable::Open(const std::string& id, Pinned* pinned, absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  if (it == open_.end()) return now;
  Entry& e = it->second;
  e.state = State::kIdle;
  e.pinned = pinned;
  e.begun = now;
  e.idle_since = now;
  return ExpiryLocked(e);
}

void TransactionTable::Unreserve(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  open_.erase(id);
}

absl::Status TransactionTable::EndedError(const Ended& e) {
  switch (e.outcome) {
    case TransactionOutcome::kCommitted:
    case TransactionOutcome::kRolledBack:
      return db::DbpoolError(absl::StatusCode::kFailedPrecondition, kTransactionEnded,
                             absl::StrCat("the transaction has ended: ", e.why));
    case TransactionOutcome::kExpired:
      return db::DbpoolError(absl::StatusCode::kAborted, kTransactionExpired,
                             absl::StrCat("the transaction was rolled back: ", e.why,
                                          "; begin a new one and retry"));
    case TransactionOutcome::kAborted:
    case TransactionOutcome::kDrained:
      break;
  }
  return db::DbpoolError(absl::StatusCode::kAborted, kTransactionAborted,
                         absl::StrCat("the transaction was rolled back: ", e.why,
                                      "; begin a new one and retry"));
}

absl::StatusOr<Pinned*> TransactionTable::Use(const std::string& id,
                                              const std::string& caller, bool end) {
  const size_t dot = id.rfind('.');
  if (dot == std::string::npos || id.size() - dot - 1 != 2 * kRandomBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", id, "\" is not a transaction id (BeginTransaction returns them)"));
  }
  const absl::string_view tag = absl::string_view(id).substr(0, dot);
  if (tag != instance_tag_) {
    std::string instance;
    if (!absl::WebSafeBase64Unescape(tag, &instance)) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", id, "\" is not a transaction id (BeginTransaction returns them)"));
    }
    return db::DbpoolError(
        absl::StatusCode::kFailedPrecondition, kTransactionElsewhere,
        absl::StrCat("the transaction lives on dbpool instance \"", instance,
                     "\", not on \"", limits_.instance,
                     "\": send its calls to that instance (docs/API.md, routing)"),
        {{"instance", instance}});
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  if (it == open_.end()) {
    auto ended = ended_.find(id);
    if (ended == ended_.end()) {
      return db::DbpoolError(
          absl::StatusCode::kAborted, kTransactionNotFound,
          "no open transaction has this id here: it ended long ago or the "
          "instance restarted; begin a new transaction and retry");
    }
    return EndedError(ended->second);
  }
  Entry& e = it->second;
  if (e.owner != caller) {
    return absl::PermissionDeniedError("the transaction belongs to another caller");
  }
  if (e.state == State::kEnding && e.ending.has_value()) return EndedError(*e.ending);
  if (e.state != State::kIdle) {
    return db::DbpoolError(
        absl::StatusCode::kFailedPrecondition, kTransactionBusy,
        e.state == State::kEnding
            ? "the transaction is ending"
            : "a statement of this transaction is running: a transaction runs "
              "one statement at a time");
  }
  e.state = end ? State::kEnding : State::kBusy;
  return e.pinned;
}

void TransactionTable::Idle(const std::string& id, absl::Time now) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  if (it == open_.end() || it->second.state != State::kBusy) return;
  it->second.state = State::kIdle;
  it->second.idle_since = now;
}

void TransactionTable::Close(const std::string& id, TransactionOutcome outcome,
                             std::string why) {
  std::lock_guard<std::mutex> lock(mu_);
  open_.erase(id);
  if (ended_.size() >= kEndedRemembered) {
    ended_.erase(ended_order_.front());
    ended_order_.pop_front();
  }
  if (ended_.insert_or_assign(id, Ended{outcome, std::move(why)}).second) {
    ended_order_.push_back(id);
  }
}

std::vector<std::pair<std::string, Pinned*>> TransactionTable::TakeExpired(absl::Time now) {
  std::vector<std::pair<std::string, Pinned*>> expired;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [id, e] : open_) {
    if (e.state == State::kIdle && ExpiryLocked(e) <= now) {
      e.state = State::kEnding;
      expired.emplace_back(id, e.pinned);
    }
  }
  return expired;
}

void TransactionTable::ExpireAll() {
  std::lock_guard<std::mutex> lock(mu_);
  expire_all_ = true;
}

absl::Time TransactionTable::NextExpiry() const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Time next = absl::InfiniteFuture();
  for (const auto& [id, e] : open_) {
    if (e.state == State::kIdle) next = std::min(next, ExpiryLocked(e));
  }
  return next;
}

bool TransactionTable::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return expire_all_;
}

void TransactionTable::MarkEnding(const std::string& id, TransactionOutcome outcome,
                                  std::string why) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_.find(id);
  if (it == open_.end()) return;
  it->second.state = State::kEnding;
  it->second.ending = Ended{outcome, std::move(why)};
}

int TransactionTable::open() const {
  std::lock_guard<std::mutex> lock(mu_);
  int n = 0;
  for (const auto& [id, e] : open_) {
    if (e.state == State::kIdle || e.state == State::kBusy) ++n;
  }
  return n;
}

int TransactionTable::held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(open_.size());
}

absl::Duration TransactionTable::OldestAge(absl::Time now) const {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Duration oldest = absl::ZeroDuration();
  for (const auto& [id, e] : open_) {
    if (e.state != State::kBeginning) oldest = std::max(oldest, now - e.begun);
  }
  return oldest;
}

}  // namespace dbpool::engine
