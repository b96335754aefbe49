#include "server/db/async_query.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/db/engine_counters.h"
#include "server/db/sql_state.h"

namespace dbpool::db {
namespace {

// How often a statement that ended while its cancel request was on its way
// looks whether the request has settled.
constexpr absl::Duration kSettlePoll = absl::Milliseconds(1);

// The status for a connection that failed under us, with libpq's reason.
absl::Status Lost(PGconn* conn) {
  return SqlError("08006", absl::StrCat("connection to the database lost: ",
                                        absl::StripAsciiWhitespace(PQerrorMessage(conn))));
}

absl::Status WithSuffix(const absl::Status& reason, absl::string_view suffix) {
  return absl::Status(reason.code(), absl::StrCat(reason.message(), suffix));
}

}  // namespace

AsyncQuery::AsyncQuery(PgConnection& pg, const v1::QueryRequest& request,
                       const std::vector<EncodedParam>& params, bool read_only,
                       absl::Time deadline, const QueryLimits& limits,
                       v1::QueryResponse* response)
    : pg_(pg),
      conn_(pg.raw()),
      request_(request),
      bound_(params),
      read_only_(read_only),
      deadline_(deadline),
      limits_(limits),
      response_(response),
      key_(StatementKey(request.sql(), bound_)) {}

int AsyncQuery::socket() const { return PQsocket(conn_); }

absl::Time AsyncQuery::Timer() const {
  if (phase_ == Phase::kCleanup) return cleanup_deadline_;
  if (settle_check_at_.has_value()) return std::min(*settle_check_at_, give_up_);
  if (stop_reason_.has_value()) return give_up_;
  return deadline_;
}

bool AsyncQuery::Start(absl::Time now) {
  if (!pg_.EnsurePipelineMode()) {
    return Fail(SqlError("08006", "the connection cannot enter pipeline mode"));
  }
  if (now >= deadline_) {
    status_ = absl::DeadlineExceededError(
        "the deadline passed before the statement could start");
    return Finish();
  }
  SendStatementFlight(/*stale=*/"");
  if (phase_ == Phase::kDone) return true;
  return Pump(now);
}

bool AsyncQuery::OnSocket(absl::Time now) {
  if (wants_write_ && !Flush()) return true;
  return Pump(now);
}

bool AsyncQuery::OnTimer(absl::Time now) {
  if (phase_ == Phase::kCleanup) {
    // The caller has its answer; the session could not be put right in
    // time, so nobody else may use it.
    if (now >= cleanup_deadline_) return Fail(absl::OkStatus());
    return false;
  }
  if (settle_check_at_.has_value() && now < give_up_) {
    if (!cancel_settled_->load(std::memory_order_acquire)) {
      settle_check_at_ = now + kSettlePoll;
      return false;
    }
    settle_check_at_.reset();
    return FlightDone(now) || Pump(now);
  }
  if (!stop_reason_.has_value()) {
    if (now < deadline_) return false;
    return Stop(absl::DeadlineExceededError(
                    "statement did not finish before its deadline"),
                now);
  }
  if (now < give_up_) return false;
  status_ = WithSuffix(*stop_reason_,
                       "; the server did not stop the statement, connection closed");
  broken_ = true;
  return Finish();
}

bool AsyncQuery::Cancel(absl::Time now) {
  if (phase_ == Phase::kCleanup || phase_ == Phase::kDone ||
      stop_reason_.has_value()) {
    return phase_ == Phase::kDone;
  }
  return Stop(absl::CancelledError("cancelled by the caller"), now);
}

bool AsyncQuery::Stop(absl::Status reason, absl::Time now) {
  stop_reason_ = std::move(reason);
  give_up_ = now + limits_.cancel_grace;
  cancel_settled_ = pg_.StartCancel();
  if (cancel_settled_ == nullptr) {
    // The statement may still be running, and a cancel request that
    // arrived late would hit the next statement on this connection.
    status_ = WithSuffix(*stop_reason_,
                         "; the database did not take the cancel request, "
                         "connection closed");
    broken_ = true;
    return Finish();
  }
  return false;
}

bool AsyncQuery::Send(Part part, const char* sql) {
  if (PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0) == 0) {
    return false;
  }
  expected_.push_back(part);
  return true;
}

bool AsyncQuery::Sync() {
  if (PQpipelineSync(conn_) != 1) return false;
  expected_.push_back(Part::kSync);
  return true;
}

bool AsyncQuery::Flush() {
  const int pending = PQflush(conn_);
  if (pending < 0) {
    Fail(Lost(conn_));
    return false;
  }
  wants_write_ = pending == 1;
  return true;
}

void AsyncQuery::SendStatementFlight(const std::string& stale) {
  EngineCounters& counters = Counters();
  StatementCache& cache = pg_.statements();
  std::string deallocate = stale;
  CachedStatement* entry = cache.Find(key_);
  const bool first_sight = entry == nullptr;
  if (first_sight) {
    effects_ = ClassifySessionEffects(request_.sql());
    std::string evicted;
    entry = cache.Insert(key_, effects_, &evicted);
    if (!evicted.empty()) {
      Bump(counters.statement_cache_evictions);
      deallocate = std::move(evicted);
    }
  } else {
    effects_ = entry->effects;
  }
  bool sent = true;
  // On its own, behind a Sync: a name the caller already deallocated must
  // not fail the statement.
  if (!deallocate.empty()) {
    sent = Send(Part::kHousekeeping, absl::StrCat("DEALLOCATE ", deallocate).c_str()) &&
           Sync();
  }
  if (sent && read_only_) sent = Send(Part::kBegin, "BEGIN READ ONLY");
  const char* sql = request_.sql().c_str();
  // SQL seen before is prepared, unless it changes the session: PREPARE or
  // DEALLOCATE ALL kept as a prepared statement of ours would act on the
  // very cache that holds it.
  if (sent && !first_sight && entry != nullptr && effects_ == kNoEffect) {
    prepared_ = entry->name;
    if (prepared_.empty()) {
      Bump(counters.statement_cache_misses);
      preparing_ = cache.NextName();
      prepared_ = preparing_;
      sent = PQsendPrepare(conn_, preparing_.c_str(), sql, bound_.count(),
                           bound_.types.data()) == 1;
      if (sent) expected_.push_back(Part::kPrepare);
    } else {
      Bump(counters.statement_cache_hits);
    }
    sent = sent && PQsendQueryPrepared(conn_, prepared_.c_str(), bound_.count(),
                                       bound_.values.data(), bound_.lengths.data(),
                                       bound_.formats.data(), 0) == 1;
  } else if (sent) {
    Bump(counters.statement_cache_misses);
    prepared_.clear();
    sent = PQsendQueryParams(conn_, sql, bound_.count(), bound_.types.data(),
                             bound_.values.data(), bound_.lengths.data(),
                             bound_.formats.data(), 0) == 1;
  }
  if (sent) expected_.push_back(Part::kStatement);
  sent = sent && Sync();
  // Our read-only transaction ends in the same flight; rolling it back
  // also undoes whatever settings the statement made.
  if (sent && read_only_) sent = Send(Part::kEnd, "ROLLBACK") && Sync();
  if (!sent) {
    Fail(Lost(conn_));
    return;
  }
  Flush();
}

void AsyncQuery::SendTypeNamesFlight(std::vector<Oid> types) {
  phase_ = Phase::kTypeNames;
  const std::string array = absl::StrCat("{", absl::StrJoin(types, ","), "}");
  const char* values[] = {array.c_str()};
  const bool sent =
      PQsendQueryParams(conn_,
                        "SELECT t::int8, format_type(t, NULL) "
                        "FROM unnest($1::oid[]) AS t",
                        1, nullptr, values, nullptr, nullptr, 0) == 1;
  if (sent) expected_.push_back(Part::kTypeNames);
  if (!sent || !Sync()) {
    Fail(Lost(conn_));
    return;
  }
  Flush();
}

void AsyncQuery::SendCleanupFlight(absl::Time now) {
  SessionEffects effects = effects_;
  if (pg_.ReportedParametersChanged()) effects |= kSettings | kIdentity;
  const bool in_transaction = PQtransactionStatus(conn_) != PQTRANS_IDLE;
  if (effects == kNoEffect && !in_transaction) {
    Finish();
    return;
  }
  EngineCounters& counters = Counters();
  for (int kind : EffectKinds(effects)) Bump(counters.session_resets[kind]);
  if (effects & kIrreversible) {
    broken_ = true;
    Finish();
    return;
  }
  phase_ = Phase::kCleanup;
  cleanup_deadline_ = now + limits_.cancel_grace;
  bool sent = true;
  // A transaction the statement itself opened (a bare BEGIN) is rolled
  // back so that the next caller starts clean.
  if (in_transaction) sent = Send(Part::kCleanup, "ROLLBACK") && Sync();
  for (const std::vector<std::string>& group : ResetCommands(effects)) {
    for (const std::string& command : group) {
      sent = sent && Send(Part::kCleanup, command.c_str());
    }
    // Each group is a transaction of its own (session_effects.h).
    sent = sent && Sync();
  }
  if (!sent) {
    Fail(absl::OkStatus());
    return;
  }
  Flush();
}

bool AsyncQuery::Pump(absl::Time now) {
  while (phase_ != Phase::kDone) {
    // A server that ends the session says why first (57P01 for a
    // terminated backend): what arrived is read even when the socket is
    // already closed.
    const bool read = PQconsumeInput(conn_) != 0;
    while (!expected_.empty() && PQisBusy(conn_) == 0) {
      PGresult* raw = PQgetResult(conn_);
      const Part part = expected_.front();
      if (part == Part::kSync) {
        const bool sync = raw != nullptr && PQresultStatus(raw) == PGRES_PIPELINE_SYNC;
        PQclear(raw);
        if (!sync) return Fail(SqlError("08006", "unexpected reply from the database"));
        expected_.pop_front();
        continue;
      }
      if (raw == nullptr) {  // the end of this command's results
        expected_.pop_front();
        continue;
      }
      Result result(raw);
      switch (PQresultStatus(raw)) {
        case PGRES_COPY_IN:
        case PGRES_COPY_OUT:
        case PGRES_COPY_BOTH:
          // The session now speaks the COPY sub-protocol: give it up.
          return Fail(absl::InvalidArgumentError(
              "COPY is not supported through Query"));
        default:
          OnResult(part, std::move(result));
      }
    }
    if (!read || PQstatus(conn_) == CONNECTION_BAD) {
      return Fail(Lost(conn_));
    }
    if (!expected_.empty()) return false;  // waiting for the socket
    if (FlightDone(now)) return true;
    // A new flight went out: its replies may already be here.
  }
  return true;
}

void AsyncQuery::OnResult(Part part, Result result) {
  const ExecStatusType st = PQresultStatus(result.get());
  const bool failed = st == PGRES_FATAL_ERROR;
  switch (part) {
    case Part::kSync:
    case Part::kHousekeeping:
      break;
    case Part::kBegin:
      if (failed && !statement_error_) {
        statement_error_ = ErrorFromResult(conn_, result.get());
      }
      break;
    case Part::kPrepare:
      if (failed) {
        if (!statement_error_) statement_error_ = ErrorFromResult(conn_, result.get());
        pg_.statements().Erase(key_);
      } else if (CachedStatement* entry = pg_.statements().Find(key_)) {
        entry->name = preparing_;
      }
      preparing_.clear();
      break;
    case Part::kStatement:
      if (st != PGRES_PIPELINE_ABORTED && statement_result_ == nullptr) {
        statement_result_ = std::move(result);
      }
      break;
    case Part::kEnd:
      if (failed && !end_error_) end_error_ = ErrorFromResult(conn_, result.get());
      break;
    case Part::kTypeNames:
      if (st == PGRES_TUPLES_OK) {
        for (int i = 0; i < PQntuples(result.get()); ++i) {
          RememberTypeName(
              static_cast<Oid>(std::strtoul(PQgetvalue(result.get(), i, 0), nullptr, 10)),
              PQgetvalue(result.get(), i, 1));
        }
      }
      break;
    case Part::kCleanup:
      if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) cleanup_failed_ = true;
      break;
  }
}

bool AsyncQuery::FlightDone(absl::Time now) {
  switch (phase_) {
    case Phase::kStatement: {
      if (cancel_settled_ != nullptr &&
          !cancel_settled_->load(std::memory_order_acquire)) {
        // The statement ended before the postmaster dealt with our cancel
        // request; sending more now could get the request instead. It
        // settles within a round trip or two on a healthy server.
        settle_check_at_ = now + kSettlePoll;
        return false;
      }
      const PGresult* r = statement_result_.get();
      if (!statement_error_ && r != nullptr && PQresultStatus(r) == PGRES_FATAL_ERROR &&
          !prepared_.empty() && !retried_ && !stop_reason_ &&
          PQtransactionStatus(conn_) == PQTRANS_IDLE) {
        // 26000: the session lost the statement (a caller's DEALLOCATE);
        // 0A000: a schema change altered its result type. Prepare it again
        // and retry once.
        const std::string sqlstate = Field(r, PG_DIAG_SQLSTATE);
        if (sqlstate == "26000" || sqlstate == "0A000") {
          retried_ = true;
          Bump(Counters().statement_reprepares);
          const std::string stale = sqlstate == "0A000" ? prepared_ : "";
          if (CachedStatement* entry = pg_.statements().Find(key_)) entry->name.clear();
          statement_result_.reset();
          end_error_.reset();
          SendStatementFlight(stale);
          return phase_ == Phase::kDone;
        }
      }
      if (!statement_error_ && r != nullptr && PQresultStatus(r) == PGRES_TUPLES_OK) {
        std::vector<Oid> unknown = UnknownTypes(r);
        if (!unknown.empty()) {
          SendTypeNamesFlight(std::move(unknown));
          return phase_ == Phase::kDone;
        }
      }
      DecideStatus();
      SendCleanupFlight(now);
      return phase_ == Phase::kDone;
    }
    case Phase::kTypeNames:
      DecideStatus();
      SendCleanupFlight(now);
      return phase_ == Phase::kDone;
    case Phase::kCleanup:
      if (cleanup_failed_ || PQtransactionStatus(conn_) != PQTRANS_IDLE ||
          pg_.ReportedParametersChanged()) {
        broken_ = true;
      } else if (effects_ & kPreparedStatements) {
        pg_.statements().Clear();
      }
      return Finish();
    case Phase::kDone:
      return true;
  }
  return true;
}

void AsyncQuery::DecideStatus() {
  PGresult* r = statement_result_.get();
  if (statement_error_) {
    status_ = *statement_error_;
  } else if (r == nullptr) {
    status_ = SqlError("08006", "no result from the database");
    broken_ = true;
  } else {
    const int64_t max_rows = request_.max_rows() > 0
                                 ? std::min(request_.max_rows(), limits_.max_rows)
                                 : limits_.max_rows;
    status_ = ReadStatementResult(conn_, r, max_rows, limits_.max_result_bytes,
                                  response_);
  }
  if (status_.ok() && end_error_) status_ = *end_error_;
  if (stop_reason_ && r != nullptr && PQresultStatus(r) == PGRES_FATAL_ERROR &&
      Field(r, PG_DIAG_SQLSTATE) == "57014") {
    // Keep the server's SQLSTATE, but report why we stopped it.
    absl::Status s = WithSuffix(*stop_reason_, "; cancelled on the server");
    if (auto info = status_.GetPayload(kErrorInfoTypeUrl)) {
      s.SetPayload(kErrorInfoTypeUrl, *info);
    }
    status_ = std::move(s);
  }
  if (!status_.ok()) response_->Clear();
  statement_result_.reset();
}

bool AsyncQuery::Fail(absl::Status status) {
  broken_ = true;
  // Once the caller's outcome is decided (cleanup), it stands.
  if (phase_ == Phase::kStatement || phase_ == Phase::kTypeNames) {
    const PGresult* r = statement_result_.get();
    if (stop_reason_) {
      status_ = WithSuffix(*stop_reason_, "; connection closed");
    } else if (statement_error_) {
      status_ = *statement_error_;
    } else if (r != nullptr && PQresultStatus(r) == PGRES_FATAL_ERROR) {
      // The server's own reason, rather than the lost socket.
      status_ = ErrorFromResult(conn_, r);
    } else {
      status_ = std::move(status);
    }
    response_->Clear();
  }
  return Finish();
}

bool AsyncQuery::Finish() {
  phase_ = Phase::kDone;
  expected_.clear();
  // A cancel request still on its way could stop the next caller's
  // statement on this connection.
  if (cancel_settled_ != nullptr && !cancel_settled_->load(std::memory_order_acquire)) {
    broken_ = true;
  }
  return true;
}

}  // namespace dbpool::db
