#include "server/db/pipeline.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/db/async_query.h"
#include "server/db/pg_result.h"
#include "server/db/sql_state.h"

namespace dbpool::db {
namespace {

// How often a pipeline whose dropped statements are still running cancels
// them again: a request stops only what runs when it arrives.
constexpr absl::Duration kRecancelEvery = absl::Milliseconds(10);

}  // namespace

absl::Status ConnectionLost(PGconn* conn) {
  return SqlError("08006", absl::StrCat("connection to the database lost: ",
                                        absl::StripAsciiWhitespace(PQerrorMessage(conn))));
}

Pipeline::Pipeline(PgConnection& pg, absl::Duration cancel_grace)
    : pg_(pg),
      cancel_grace_(cancel_grace),
      previous_reply_at_(absl::Now()),
      last_reply_at_(previous_reply_at_) {}

void Pipeline::Join(AsyncQuery* query) { members_.push_back(Member{query, 0}); }

void Pipeline::Expect(AsyncQuery* owner, Part part) {
  entries_.push_back(Entry{owner, part});
  if (Member* m = Find(owner)) ++m->outstanding;
}

Pipeline::Member* Pipeline::Find(const AsyncQuery* query) {
  for (Member& m : members_) {
    if (m.query == query) return &m;
  }
  return nullptr;
}

bool Pipeline::Alone(const AsyncQuery* query) const {
  return members_.size() == 1 && members_[0].query == query && dropped_ == 0;
}

bool Pipeline::Flush() {
  const int pending = PQflush(pg_.raw());
  if (pending < 0) {
    Lose(ConnectionLost(pg_.raw()));
    return false;
  }
  wants_write_ = pending == 1;
  return true;
}

void Pipeline::Lose(absl::Status status, AsyncQuery* culprit,
                    absl::Status culprit_status) {
  broken_ = true;
  entries_.clear();
  dropped_ = 0;
  // Each query's Fail leaves the member list (Finished).
  std::vector<Member> members = members_;
  for (const Member& m : members) {
    m.query->OnLost(m.query == culprit ? culprit_status : status);
  }
}

void Pipeline::Finished(AsyncQuery* query) {
  // What is still to come for it is read and dropped.
  for (Entry& e : entries_) {
    if (e.owner == query) {
      e.owner = nullptr;
      ++dropped_;
    }
  }
  members_.erase(std::remove_if(members_.begin(), members_.end(),
                                [query](const Member& m) { return m.query == query; }),
                 members_.end());
  finished_.push_back(query);
  if (members_.empty() && dropped_ > 0 && give_up_ == absl::InfiniteFuture()) {
    // Only statements nobody waits for are left: cancelling them can hit
    // no one (nothing joins a pipeline with dropped statements).
    accepting_ = false;
    const absl::Time now = absl::Now();
    give_up_ = now + cancel_grace_;
    next_cancel_at_ = now;
  }
}

void Pipeline::Detach(AsyncQuery* query) {
  accepting_ = false;
  Finished(query);
}

std::vector<AsyncQuery*> Pipeline::TakeFinished() {
  std::vector<AsyncQuery*> out;
  out.swap(finished_);
  return out;
}

bool Pipeline::Idle() const {
  if (!members_.empty()) return false;
  // A broken connection is closed, whatever it still had in flight.
  if (broken_) return true;
  return entries_.empty() &&
         (cancel_settled_ == nullptr || cancel_settled_->load(std::memory_order_acquire));
}

absl::Time Pipeline::Timer() const {
  if (!members_.empty() || broken_ || give_up_ == absl::InfiniteFuture()) {
    return absl::InfiniteFuture();
  }
  return std::min(next_cancel_at_, give_up_);
}

void Pipeline::OnTimer(absl::Time now) {
  if (Timer() > now) return;
  if (now >= give_up_) {
    // The dropped statements did not stop in time, or the cancel request
    // did not settle: nobody else may use this session.
    broken_ = true;
    return;
  }
  const bool settled =
      cancel_settled_ == nullptr || cancel_settled_->load(std::memory_order_acquire);
  if (!settled) {
    next_cancel_at_ = now + kCancelSettlePoll;
    return;
  }
  if (entries_.empty()) {
    next_cancel_at_ = absl::InfiniteFuture();
    return;
  }
  cancel_settled_ = pg_.StartCancel();
  if (cancel_settled_ == nullptr) {
    broken_ = true;
    return;
  }
  next_cancel_at_ = now + kRecancelEvery;
}

void Pipeline::OnSocket(absl::Time now) {
  if (wants_write_ && !Flush()) return;
  Pump(now);
  if (members_.empty() && entries_.empty()) next_cancel_at_ = now;
}

void Pipeline::Resume(absl::Time now) {
  if (!held_) return;
  held_ = false;
  Pump(now);
}

void Pipeline::Settle(AsyncQuery* owner, absl::Time now) {
  if (owner == nullptr) {
    --dropped_;
    return;
  }
  Member* m = Find(owner);
  if (m != nullptr && --m->outstanding == 0) owner->OnFlightDone(now);
}

void Pipeline::Pump(absl::Time now) {
  if (held_) return;
  PGconn* conn = pg_.raw();
  // A server that ends the session says why first (57P01 for a terminated
  // backend): what arrived is read even when the socket is already closed.
  const bool read = PQconsumeInput(conn) != 0;
  while (!entries_.empty() && !held_ && PQisBusy(conn) == 0) {
    PGresult* raw = PQgetResult(conn);
    const Entry entry = entries_.front();
    if (entry.part == Part::kSync) {
      const bool sync = raw != nullptr && PQresultStatus(raw) == PGRES_PIPELINE_SYNC;
      PQclear(raw);
      if (!sync) {
        Lose(SqlError("08006", "unexpected reply from the database"));
        return;
      }
      entries_.pop_front();
      Settle(entry.owner, now);
      continue;
    }
    if (raw == nullptr) {  // the end of this command's results
      entries_.pop_front();
      Settle(entry.owner, now);
      continue;
    }
    Result result(raw);
    switch (PQresultStatus(raw)) {
      case PGRES_COPY_IN:
      case PGRES_COPY_OUT:
      case PGRES_COPY_BOTH:
        // The session now speaks the COPY sub-protocol: give it up.
        Lose(ConnectionLost(conn), entry.owner,
             absl::InvalidArgumentError("COPY is not supported through Query"));
        return;
      default:
        previous_reply_at_ = last_reply_at_;
        last_reply_at_ = now;
        if (entry.owner != nullptr) entry.owner->OnResult(entry.part, std::move(result), now);
    }
  }
  if (!read || PQstatus(conn) == CONNECTION_BAD) Lose(ConnectionLost(conn));
}

}  // namespace dbpool::db
