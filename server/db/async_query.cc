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

AsyncQuery::AsyncQuery(Pipeline& pipeline, std::vector<StatementRef> statements,
                       QueryFrame frame, absl::Time deadline, const QueryLimits& limits,
                       ChunkSink* sink)
    : pipeline_(pipeline),
      pg_(pipeline.connection()),
      conn_(pipeline.raw()),
      frame_(frame),
      deadline_(deadline),
      limits_(limits),
      sink_(sink) {
  stmts_.reserve(statements.size());
  for (const StatementRef& ref : statements) stmts_.emplace_back(ref);
}

bool AsyncQuery::Wrapped() const {
  return frame_.framing == Framing::kBatch ||
         (frame_.framing == Framing::kOwn && frame_.read_only);
}

bool AsyncQuery::Control() const {
  return frame_.framing == Framing::kBeginTransaction ||
         frame_.framing == Framing::kEndTransaction;
}

bool AsyncQuery::Cleans() const {
  return frame_.framing == Framing::kOwn || frame_.framing == Framing::kBatch ||
         frame_.framing == Framing::kEndTransaction;
}

SessionEffects AsyncQuery::effects() const {
  SessionEffects effects = kNoEffect;
  for (const Stmt& stmt : stmts_) effects |= stmt.effects;
  return effects;
}

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
  if (sink_ != nullptr) {
    SendDescribeFlight();
    return;
  }
  SendStatementFlight(/*stale=*/"");
}

void AsyncQuery::Resume(absl::Time now) { pipeline_.Resume(now); }

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
    ClearResponses();
    Finish();
    return;
  }
  give_up_ = now + limits_.cancel_grace;
  cancel_settled_ = pg_.StartCancel();
  // A streamed statement waiting for its reader: what is left is read and
  // dropped until the server has stopped it.
  if (sink_ != nullptr) pipeline_.Resume(now);
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

void AsyncQuery::LookUp(std::vector<std::string>& deallocate) {
  if (Control()) return;
  StatementCache& cache = pg_.statements();
  for (Stmt& stmt : stmts_) {
    if (CachedStatement* entry = cache.Find(stmt.key)) {
      stmt.first_sight = false;
      stmt.effects = entry->effects;
      continue;
    }
    stmt.first_sight = true;
    stmt.effects = ClassifySessionEffects(stmt.request.sql());
    std::string evicted;
    cache.Insert(stmt.key, stmt.effects, &evicted);
    if (!evicted.empty()) {
      Bump(Counters().statement_cache_evictions);
      deallocate.push_back(std::move(evicted));
    }
  }
}

bool AsyncQuery::SendOne(Stmt& stmt, size_t index) {
  const char* sql = stmt.request.sql().c_str();
  const Bound& bound = stmt.bound;
  if (Control()) {
    return PQsendQueryParams(conn_, sql, 0, nullptr, nullptr, nullptr, nullptr, 0) == 1;
  }
  EngineCounters& counters = Counters();
  StatementCache& cache = pg_.statements();
  // Null when a later statement of a long batch has evicted it already.
  CachedStatement* entry = cache.Find(stmt.key);
  // SQL seen before is prepared, unless it changes the session: PREPARE or
  // DEALLOCATE ALL kept as a prepared statement of ours would act on the
  // very cache that holds it.
  if (stmt.first_sight || entry == nullptr || stmt.effects != kNoEffect) {
    Bump(counters.statement_cache_misses);
    stmt.prepared.clear();
    return PQsendQueryParams(conn_, sql, bound.count(), bound.types.data(),
                             bound.values.data(), bound.lengths.data(),
                             bound.formats.data(), 0) == 1;
  }
  stmt.prepared = entry->name;
  if (stmt.prepared.empty()) {
    Bump(counters.statement_cache_misses);
    std::string name = cache.NextName();
    stmt.prepared = name;
    // Named at once: a statement sent behind ours on this connection (or
    // later in this batch) binds to it instead of preparing it again.
    entry->name = name;
    if (PQsendPrepare(conn_, name.c_str(), sql, bound.count(), bound.types.data()) != 1) {
      return false;
    }
    preparing_.emplace_back(index, std::move(name));
    pipeline_.Expect(this, Part::kPrepare);
  } else {
    Bump(counters.statement_cache_hits);
  }
  return PQsendQueryPrepared(conn_, stmt.prepared.c_str(), bound.count(),
                             bound.values.data(), bound.lengths.data(),
                             bound.formats.data(), 0) == 1;
}

void AsyncQuery::SendStatementFlight(const std::string& stale) {
  next_result_ = 0;
  // Names these statements evict from the cache go first, each behind its
  // own Sync: a name the caller already deallocated must fail nothing.
  std::vector<std::string> deallocate;
  if (!stale.empty()) deallocate.push_back(stale);
  LookUp(deallocate);
  bool sent = true;
  // A batch whose first try failed left our transaction aborted.
  if (retried_ && Wrapped() && InTransaction()) {
    sent = Send(Part::kHousekeeping, "ROLLBACK") && Sync();
  }
  for (const std::string& name : deallocate) {
    if (!sent) break;
    sent = Send(Part::kHousekeeping, absl::StrCat("DEALLOCATE ", name).c_str()) && Sync();
  }
  if (sent && Wrapped()) {
    sent = Send(Part::kBegin, frame_.read_only ? "BEGIN READ ONLY" : "BEGIN");
  }
  for (size_t i = 0; sent && i < stmts_.size(); ++i) {
    sent = SendOne(stmts_[i], i);
    if (sent) pipeline_.Expect(this, Part::kStatement);
  }
  if (sent && frame_.framing == Framing::kBatch) sent = Send(Part::kEnd, "COMMIT");
  sent = sent && Sync();
  // Our read-only transaction ends in the same flight; rolling it back
  // also undoes whatever settings the statement made.
  if (sent && frame_.framing == Framing::kOwn && frame_.read_only) {
    sent = Send(Part::kEnd, "ROLLBACK") && Sync();
  }
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
  if (!Cleans()) {
    Finish();
    return;
  }
  SessionEffects to_reset = effects() | frame_.carried;
  if (pg_.ReportedParametersChanged()) to_reset |= kSettings | kIdentity;
  const bool in_transaction = InTransaction();
  if (to_reset == kNoEffect && !in_transaction) {
    Finish();
    return;
  }
  EngineCounters& counters = Counters();
  for (int kind : EffectKinds(to_reset)) Bump(counters.session_resets[kind]);
  if (to_reset & kIrreversible) {
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
  for (const std::vector<std::string>& group : ResetCommands(to_reset)) {
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
    case Part::kPrepare: {
      if (preparing_.empty()) break;
      const auto [index, name] = std::move(preparing_.front());
      preparing_.pop_front();
      if (failed) {
        if (!statement_error_) {
          statement_error_ = ErrorFromResult(conn_, result.get());
          error_index_ = static_cast<int>(index);
        }
        const std::string& key = stmts_[index].key;
        CachedStatement* entry = pg_.statements().Find(key);
        if (entry != nullptr && entry->name == name) pg_.statements().Erase(key);
        stmts_[index].prepared.clear();
      }
      break;
    }
    case Part::kStatement: {
      // Replies come in the order the statements went out; a statement
      // with several results (it cannot have: one per Execute) would only
      // keep its first.
      const size_t index = next_result_++;
      if (index == 0) {
        service_time_ = now - std::max(sent_at_, pipeline_.previous_reply_at());
      }
      if (index < stmts_.size() && st != PGRES_PIPELINE_ABORTED &&
          stmts_[index].result == nullptr) {
        stmts_[index].result = std::move(result);
      }
      break;
    }
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
    case Part::kDescribe:
      if (failed && !statement_error_) {
        statement_error_ = ErrorFromResult(conn_, result.get());
      } else if (st == PGRES_COMMAND_OK) {
        described_ = std::move(result);
      }
      break;
    case Part::kRows:
      if (st == PGRES_SINGLE_TUPLE) {
        OnRow(std::move(result));
        break;
      }
      // The last: TUPLES_OK without rows, COMMAND_OK, or the error.
      service_time_ = now - std::max(sent_at_, pipeline_.previous_reply_at());
      if (st != PGRES_PIPELINE_ABORTED && stmts_[0].result == nullptr) {
        stmts_[0].result = std::move(result);
      }
      break;
  }
}

void AsyncQuery::OnFlightDone(absl::Time now) {
  switch (phase_) {
    case Phase::kDescribe: {
      if (statement_error_ || described_ == nullptr || stop_reason_) {
        DecideStatus();
        SendCleanupFlight(now);
        return;
      }
      std::vector<Oid> unknown = UnknownTypes(described_.get());
      if (!unknown.empty()) {
        SendTypeNamesFlight(std::move(unknown));
        return;
      }
      SendRowsFlight();
      return;
    }
    case Phase::kStatement: {
      if (cancel_settled_ != nullptr &&
          !cancel_settled_->load(std::memory_order_acquire)) {
        // The statement ended before the postmaster dealt with our cancel
        // request; sending more now could get the request instead. It
        // settles within a round trip or two on a healthy server.
        settle_check_at_ = now + kCancelSettlePoll;
        return;
      }
      if (sink_ != nullptr) {
        DecideStatus();
        // The last rows, or the columns of a result without any.
        if (status_.ok() && (chunk_.rows_size() > 0 || !chunk_sent_)) EmitChunk(/*hold=*/false);
        SendCleanupFlight(now);
        return;
      }
      if (MayRetry()) return;
      if (!statement_error_) {
        std::vector<Oid> unknown;
        for (const Stmt& stmt : stmts_) {
          const PGresult* r = stmt.result.get();
          if (r == nullptr || PQresultStatus(r) != PGRES_TUPLES_OK) continue;
          for (Oid type : UnknownTypes(r)) {
            if (std::find(unknown.begin(), unknown.end(), type) == unknown.end()) {
              unknown.push_back(type);
            }
          }
        }
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
      if (described_ != nullptr) {
        SendRowsFlight();
        return;
      }
      DecideStatus();
      SendCleanupFlight(now);
      return;
    case Phase::kCleanup:
      if (cleanup_failed_ || InTransaction() ||
          pg_.ReportedParametersChanged()) {
        pipeline_.MarkBroken();
      } else if ((effects() | frame_.carried) & kPreparedStatements) {
        pg_.statements().Clear();
      }
      Finish();
      return;
    case Phase::kDone:
      return;
  }
}

const AsyncQuery::Stmt* AsyncQuery::FirstFailed() const {
  for (const Stmt& stmt : stmts_) {
    const PGresult* r = stmt.result.get();
    if (r != nullptr && PQresultStatus(r) == PGRES_FATAL_ERROR) return &stmt;
  }
  return nullptr;
}

bool AsyncQuery::MayRetry() {
  const Stmt* failed = FirstFailed();
  if (statement_error_ || failed == nullptr || failed->prepared.empty() || retried_ ||
      stop_reason_) {
    return false;
  }
  // Inside a caller's transaction the failure has aborted it: nothing can
  // be sent again.
  const bool own = frame_.framing == Framing::kOwn && !InTransaction();
  if (!own && frame_.framing != Framing::kBatch) return false;
  // 26000: the session lost the statement (a caller's DEALLOCATE); 0A000:
  // a schema change altered its result type. Prepare it again and retry
  // once.
  const std::string sqlstate = Field(failed->result.get(), PG_DIAG_SQLSTATE);
  if (sqlstate != "26000" && sqlstate != "0A000") return false;
  retried_ = true;
  Bump(Counters().statement_reprepares);
  // Another statement on this connection may have prepared it again
  // already; then that name stands.
  std::string stale;
  CachedStatement* entry = pg_.statements().Find(failed->key);
  if (entry != nullptr && entry->name == failed->prepared) {
    entry->name.clear();
    if (sqlstate == "0A000") stale = failed->prepared;
  }
  for (Stmt& stmt : stmts_) stmt.result.reset();
  end_error_.reset();
  sent_at_ = absl::Now();
  SendStatementFlight(stale);
  return true;
}

void AsyncQuery::ClearResponses() {
  for (Stmt& stmt : stmts_) stmt.response->Clear();
}

void AsyncQuery::SendDescribeFlight() {
  phase_ = Phase::kDescribe;
  Stmt& stmt = stmts_[0];
  stmt.effects = ClassifySessionEffects(stmt.request.sql());
  // A name of its own, outside the cache: the statement is described now
  // and executed by the next flight, whatever else the cache does.
  stream_name_ = pg_.statements().NextName();
  bool sent = true;
  if (Wrapped()) sent = Send(Part::kBegin, "BEGIN READ ONLY");
  sent = sent && PQsendPrepare(conn_, stream_name_.c_str(), stmt.request.sql().c_str(),
                               stmt.bound.count(), stmt.bound.types.data()) == 1;
  if (sent) {
    preparing_.emplace_back(0, stream_name_);
    pipeline_.Expect(this, Part::kPrepare);
  }
  sent = sent && PQsendDescribePrepared(conn_, stream_name_.c_str()) == 1;
  if (sent) pipeline_.Expect(this, Part::kDescribe);
  if (!sent || !Sync()) {
    SendFailed();
    return;
  }
  pipeline_.Flush();
}

void AsyncQuery::SendRowsFlight() {
  phase_ = Phase::kStatement;
  FillColumns(described_.get(), &chunk_);
  described_.reset();
  Stmt& stmt = stmts_[0];
  bool sent = PQsendQueryPrepared(conn_, stream_name_.c_str(), stmt.bound.count(),
                                  stmt.bound.values.data(), stmt.bound.lengths.data(),
                                  stmt.bound.formats.data(), 0) == 1;
  // Nothing else is in flight on the connection (a streamed statement
  // shares it with nobody, and its describe flight is done), so the
  // statement is at the head of the line, where single-row mode applies.
  if (sent && PQsetSingleRowMode(conn_) != 1) {
    pipeline_.Lose(SqlError("08006", "cannot read the result row by row"));
    return;
  }
  if (sent) pipeline_.Expect(this, Part::kRows);
  sent = sent && Sync();
  if (sent && Wrapped()) sent = Send(Part::kEnd, "ROLLBACK") && Sync();
  sent = sent &&
         Send(Part::kHousekeeping, absl::StrCat("DEALLOCATE ", stream_name_).c_str()) &&
         Sync();
  if (!sent) {
    SendFailed();
    return;
  }
  pipeline_.Flush();
}

void AsyncQuery::OnRow(Result result) {
  if (stop_reason_) return;  // being stopped: what is left is dropped
  const PGresult* r = result.get();
  const int64_t max_rows = stmts_[0].request.max_rows();
  if (max_rows > 0 && streamed_rows_ >= max_rows) {
    Stop(absl::ResourceExhaustedError(absl::StrCat(
             "the result has more than max_rows (", max_rows, ") rows")),
         absl::Now());
    return;
  }
  if (absl::Status s = AppendRows(r, &chunk_); !s.ok()) {
    Stop(std::move(s), absl::Now());
    return;
  }
  for (int j = 0; j < PQnfields(r); ++j) chunk_bytes_ += PQgetlength(r, 0, j);
  ++streamed_rows_;
  if (chunk_.rows_size() >= kChunkRows || chunk_bytes_ >= kChunkBytes) EmitChunk(/*hold=*/true);
}

void AsyncQuery::EmitChunk(bool hold) {
  EngineCounters& counters = Counters();
  counters.streamed_rows.fetch_add(static_cast<uint64_t>(chunk_.rows_size()),
                                   std::memory_order_relaxed);
  counters.streamed_bytes.fetch_add(static_cast<uint64_t>(chunk_bytes_),
                                    std::memory_order_relaxed);
  v1::QueryResponse out = std::move(chunk_);
  chunk_.Clear();
  chunk_bytes_ = 0;
  chunk_sent_ = true;
  if (hold) pipeline_.Hold();
  sink_->OnChunk(std::move(out));
}

void AsyncQuery::DecideStreamStatus() {
  Stmt& stmt = stmts_[0];
  const PGresult* r = stmt.result.get();
  const bool cancelled_there = r != nullptr && PQresultStatus(r) == PGRES_FATAL_ERROR &&
                               Field(r, PG_DIAG_SQLSTATE) == "57014";
  if (statement_error_) {
    status_ = *statement_error_;
  } else if (stop_reason_ && (r == nullptr || cancelled_there)) {
    status_ = WithSuffix(*stop_reason_, r != nullptr ? "; cancelled on the server" : "");
  } else if (r == nullptr) {
    status_ = SqlError("08006", "no result from the database");
    pipeline_.MarkBroken();
  } else if (PQresultStatus(r) == PGRES_FATAL_ERROR) {
    status_ = ErrorFromResult(conn_, r);
  } else {
    status_ = absl::OkStatus();
    stmt.response->set_command_tag(PQcmdStatus(const_cast<PGresult*>(r)));
    const char* affected = PQcmdTuples(const_cast<PGresult*>(r));
    stmt.response->set_rows_affected(*affected != '\0' ? std::atoll(affected) : 0);
  }
  if (status_.ok() && end_error_) status_ = *end_error_;
  if (!status_.ok()) stmt.response->Clear();
  stmt.result.reset();
}

void AsyncQuery::DecideStatus() {
  if (sink_ != nullptr) {
    DecideStreamStatus();
    return;
  }
  status_ = absl::OkStatus();
  int failed = -1;
  const PGresult* failed_result = nullptr;
  if (statement_error_) {
    status_ = *statement_error_;
    failed = error_index_;
  } else {
    for (size_t i = 0; i < stmts_.size(); ++i) {
      Stmt& stmt = stmts_[i];
      PGresult* r = stmt.result.get();
      if (r == nullptr) {
        status_ = SqlError("08006", "no result from the database");
        pipeline_.MarkBroken();
      } else {
        const int64_t max_rows =
            stmt.request.max_rows() > 0 ? std::min(stmt.request.max_rows(), limits_.max_rows)
                                        : limits_.max_rows;
        status_ = ReadStatementResult(conn_, r, max_rows, limits_.max_result_bytes,
                                      stmt.response);
      }
      if (!status_.ok()) {
        failed = static_cast<int>(i);
        failed_result = r;
        break;
      }
    }
  }
  if (status_.ok() && end_error_) status_ = *end_error_;
  if (stop_reason_ && failed_result != nullptr &&
      PQresultStatus(failed_result) == PGRES_FATAL_ERROR &&
      Field(failed_result, PG_DIAG_SQLSTATE) == "57014") {
    // Keep the server's SQLSTATE, but report why we stopped it.
    absl::Status s = WithSuffix(*stop_reason_, "; cancelled on the server");
    if (auto info = status_.GetPayload(kErrorInfoTypeUrl)) {
      s.SetPayload(kErrorInfoTypeUrl, *info);
    }
    status_ = std::move(s);
  }
  if (!status_.ok() && stmts_.size() > 1 && failed >= 0) {
    status_ = WithStatementIndex(status_, failed);
  }
  if (!status_.ok()) ClearResponses();
  for (Stmt& stmt : stmts_) stmt.result.reset();
}

void AsyncQuery::Fail(absl::Status status) {
  if (phase_ == Phase::kDone) return;
  pipeline_.MarkBroken();
  // Once the caller's outcome is decided (cleanup), it stands.
  if (phase_ == Phase::kStatement || phase_ == Phase::kTypeNames) {
    const Stmt* failed = FirstFailed();
    if (stop_reason_) {
      status_ = WithSuffix(*stop_reason_, "; connection closed");
    } else if (statement_error_) {
      status_ = *statement_error_;
    } else if (failed != nullptr) {
      // The server's own reason, rather than the lost socket.
      status_ = ErrorFromResult(conn_, failed->result.get());
    } else {
      status_ = std::move(status);
    }
    ClearResponses();
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
