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

absl::Status WithSuffix(const absl::Status& reason, absl::string_view suffix) {
  return absl::Status(reason.code(), absl::StrCat(reason.message(), suffix));
}

}  // namespace

AsyncQuery::AsyncQuery(Pipeline& pipeline, const v1::QueryRequest& request,
                       const std::vector<EncodedParam>& params, bool read_only,
                       absl::Time deadline, const QueryLimits& limits,
                       v1::QueryResponse* response)
    : pipeline_(pipeline),
      pg_(pipeline.connection()),
      conn_(pipeline.raw()),
      request_(request),
      bound_(params),
      read_only_(read_only),
      deadline_(deadline),
      limits_(limits),
      response_(response),
      key_(StatementKey(request.sql(), bound_)) {}

absl::Time AsyncQuery::Timer() const {
  if (phase_ == Phase::kCleanup) return cleanup_deadline_;
  if (settle_check_at_.has_value()) return std::min(*settle_check_at_, give_up_);
  if (stop_reason_.has_value()) return give_up_;
  return deadline_;
}

void AsyncQuery::Start(absl::Time now) {
  pipeline_.Join(this);
  if (!pg_.EnsurePipelineMode()) {
    pipeline_.Lose(SqlError("08006", "the connection cannot enter pipeline mode"));
    return;
  }
  if (now >= deadline_) {
    status_ = absl::DeadlineExceededError(
        "the deadline passed before the statement could start");
    Finish();
    return;
  }
  sent_at_ = now;
  SendStatementFlight(/*stale=*/"");
}

void AsyncQuery::OnTimer(absl::Time now) {
  if (phase_ == Phase::kDone) return;
  if (phase_ == Phase::kCleanup) {
    // The caller has its answer; the session could not be put right in
    // time, so nobody else may use it.
    if (now >= cleanup_deadline_) {
      pipeline_.MarkBroken();
      Finish();
    }
    return;
  }
  if (settle_check_at_.has_value() && now < give_up_) {
    if (!cancel_settled_->load(std::memory_order_acquire)) {
      settle_check_at_ = now + kCancelSettlePoll;
      return;
    }
    settle_check_at_.reset();
    OnFlightDone(now);
    return;
  }
  if (!stop_reason_.has_value()) {
    if (now < deadline_) return;
    Stop(absl::DeadlineExceededError("statement did not finish before its deadline"),
         now);
    return;
  }
  if (now < give_up_) return;
  status_ = WithSuffix(*stop_reason_,
                       "; the server did not stop the statement, connection closed");
  pipeline_.MarkBroken();
  Finish();
}

void AsyncQuery::Cancel(absl::Time now) {
  if (phase_ == Phase::kCleanup || phase_ == Phase::kDone || stop_reason_.has_value()) {
    return;
  }
  Stop(absl::CancelledError("cancelled by the caller"), now);
}

void AsyncQuery::Stop(absl::Status reason, absl::Time now) {
  stop_reason_ = std::move(reason);
  // Until the connection has drained, nothing joins: a cancel request, or
  // the wait for a dropped statement, must not reach a newcomer.
  pipeline_.CloseToJoins();
  if (!pipeline_.Alone(this)) {
    // A cancel request would stop whatever the backend runs when it
    // arrives, maybe another caller's statement.
    status_ = WithSuffix(*stop_reason_,
                         "; the statement shares its connection, so its "
                         "result is discarded rather than cancelled on the server");
    response_->Clear();
    Finish();
    return;
  }
  give_up_ = now + limits_.cancel_grace;
  cancel_settled_ = pg_.StartCancel();
  if (cancel_settled_ == nullptr) {
    // The statement may still be running, and a cancel request that
    // arrived late would hit the next statement on this connection.
    status_ = WithSuffix(*stop_reason_,
                         "; the database did not take the cancel request, "
                         "connection closed");
    pipeline_.MarkBroken();
    Finish();
  }
}

bool AsyncQuery::InTransaction() const {
  // libpq reports a command in progress (PQTRANS_ACTIVE) while others'
  // statements are in flight. Only statements that cannot open a
  // transaction share a connection (Pipelinable), so then there is none.
  if (!pipeline_.Quiet()) return false;
  return PQtransactionStatus(conn_) != PQTRANS_IDLE;
}

bool AsyncQuery::Send(Part part, const char* sql) {
  if (PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0) == 0) {
    return false;
  }
  pipeline_.Expect(this, part);
  return true;
}

bool AsyncQuery::Sync() {
  if (PQpipelineSync(conn_) != 1) return false;
  pipeline_.Expect(this, Part::kSync);
  return true;
}

void AsyncQuery::SendFailed() {
  pipeline_.Lose(ConnectionLost(conn_));
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
      // Named at once: a statement sent behind ours on this connection
      // binds to it instead of preparing it again.
      entry->name = preparing_;
      sent = PQsendPrepare(conn_, preparing_.c_str(), sql, bound_.count(),
                           bound_.types.data()) == 1;
      if (sent) pipeline_.Expect(this, Part::kPrepare);
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
  if (sent) pipeline_.Expect(this, Part::kStatement);
  sent = sent && Sync();
  // Our read-only transaction ends in the same flight; rolling it back
  // also undoes whatever settings the statement made.
  if (sent && read_only_) sent = Send(Part::kEnd, "ROLLBACK") && Sync();
  if (!sent) {
    SendFailed();
    return;
  }
  pipeline_.Flush();
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
  if (sent) pipeline_.Expect(this, Part::kTypeNames);
  if (!sent || !Sync()) {
    SendFailed();
    return;
  }
  pipeline_.Flush();
}

void AsyncQuery::SendCleanupFlight(absl::Time now) {
  SessionEffects effects = effects_;
  if (pg_.ReportedParametersChanged()) effects |= kSettings | kIdentity;
  const bool in_transaction = InTransaction();
  if (effects == kNoEffect && !in_transaction) {
    Finish();
    return;
  }
  EngineCounters& counters = Counters();
  for (int kind : EffectKinds(effects)) Bump(counters.session_resets[kind]);
  if (effects & kIrreversible) {
    pipeline_.MarkBroken();
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
    SendFailed();
    return;
  }
  pipeline_.Flush();
}

void AsyncQuery::OnResult(Part part, Result result, absl::Time now) {
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
        CachedStatement* entry = pg_.statements().Find(key_);
        if (entry != nullptr && entry->name == preparing_) pg_.statements().Erase(key_);
      }
      preparing_.clear();
      break;
    case Part::kStatement:
      service_time_ = now - std::max(sent_at_, pipeline_.previous_reply_at());
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

void AsyncQuery::OnFlightDone(absl::Time now) {
  switch (phase_) {
    case Phase::kStatement: {
      if (cancel_settled_ != nullptr &&
          !cancel_settled_->load(std::memory_order_acquire)) {
        // The statement ended before the postmaster dealt with our cancel
        // request; sending more now could get the request instead. It
        // settles within a round trip or two on a healthy server.
        settle_check_at_ = now + kCancelSettlePoll;
        return;
      }
      const PGresult* r = statement_result_.get();
      if (!statement_error_ && r != nullptr && PQresultStatus(r) == PGRES_FATAL_ERROR &&
          !prepared_.empty() && !retried_ && !stop_reason_ &&
          !InTransaction()) {
        // 26000: the session lost the statement (a caller's DEALLOCATE);
        // 0A000: a schema change altered its result type. Prepare it again
        // and retry once.
        const std::string sqlstate = Field(r, PG_DIAG_SQLSTATE);
        if (sqlstate == "26000" || sqlstate == "0A000") {
          retried_ = true;
          Bump(Counters().statement_reprepares);
          // Another statement on this connection may have prepared it
          // again already; then that name stands.
          std::string stale;
          CachedStatement* entry = pg_.statements().Find(key_);
          if (entry != nullptr && entry->name == prepared_) {
            entry->name.clear();
            if (sqlstate == "0A000") stale = prepared_;
          }
          statement_result_.reset();
          end_error_.reset();
          sent_at_ = now;
          SendStatementFlight(stale);
          return;
        }
      }
      if (!statement_error_ && r != nullptr && PQresultStatus(r) == PGRES_TUPLES_OK) {
        std::vector<Oid> unknown = UnknownTypes(r);
        if (!unknown.empty()) {
          SendTypeNamesFlight(std::move(unknown));
          return;
        }
      }
      DecideStatus();
      SendCleanupFlight(now);
      return;
    }
    case Phase::kTypeNames:
      DecideStatus();
      SendCleanupFlight(now);
      return;
    case Phase::kCleanup:
      if (cleanup_failed_ || InTransaction() ||
          pg_.ReportedParametersChanged()) {
        pipeline_.MarkBroken();
      } else if (effects_ & kPreparedStatements) {
        pg_.statements().Clear();
      }
      Finish();
      return;
    case Phase::kDone:
      return;
  }
}

void AsyncQuery::DecideStatus() {
  PGresult* r = statement_result_.get();
  if (statement_error_) {
    status_ = *statement_error_;
  } else if (r == nullptr) {
    status_ = SqlError("08006", "no result from the database");
    pipeline_.MarkBroken();
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

void AsyncQuery::Fail(absl::Status status) {
  if (phase_ == Phase::kDone) return;
  pipeline_.MarkBroken();
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
  Finish();
}

void AsyncQuery::Finish() {
  phase_ = Phase::kDone;
  // A cancel request still on its way could stop the next caller's
  // statement on this connection.
  if (cancel_settled_ != nullptr && !cancel_settled_->load(std::memory_order_acquire)) {
    pipeline_.MarkBroken();
  }
  pipeline_.Finished(this);
}

}  // namespace dbpool::db
