#include "server/db/query_runner.h"

#include <poll.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/db/engine_counters.h"
#include "server/db/pg_connection.h"
#include "server/db/session_effects.h"
#include "server/db/sql_state.h"
#include "server/db/value_codec.h"

namespace dbpool::db {
namespace {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

std::string Field(const PGresult* r, int code) {
  const char* v = PQresultErrorField(r, code);
  return v != nullptr ? v : "";
}

// The status for a failed result, keeping SQLSTATE and the error fields.
absl::Status ErrorFromResult(PGconn* conn, const PGresult* r) {
  std::string sqlstate = Field(r, PG_DIAG_SQLSTATE);
  std::string message = Field(r, PG_DIAG_MESSAGE_PRIMARY);
  if (message.empty()) {
    message = std::string(absl::StripAsciiWhitespace(PQerrorMessage(conn)));
  }
  if (sqlstate.empty()) {
    // Errors raised inside libpq (lost connection) have no SQLSTATE.
    sqlstate = PQstatus(conn) == CONNECTION_BAD ? "08006" : "XX000";
  }
  return SqlError(sqlstate, message,
                  {{"detail", Field(r, PG_DIAG_MESSAGE_DETAIL)},
                   {"hint", Field(r, PG_DIAG_MESSAGE_HINT)},
                   {"constraint", Field(r, PG_DIAG_CONSTRAINT_NAME)},
                   {"schema", Field(r, PG_DIAG_SCHEMA_NAME)},
                   {"table", Field(r, PG_DIAG_TABLE_NAME)},
                   {"column", Field(r, PG_DIAG_COLUMN_NAME)},
                   {"datatype", Field(r, PG_DIAG_DATATYPE_NAME)},
                   {"position", Field(r, PG_DIAG_STATEMENT_POSITION)}});
}

class Session {
 public:
  Session(PgConnection& c, absl::Time deadline,
          const std::atomic<bool>& cancelled, absl::Duration grace)
      : c_(c), deadline_(deadline), cancelled_(cancelled), grace_(grace) {}

  bool broken() const { return broken_ || PQstatus(c_.raw()) != CONNECTION_OK; }

  // Waits for the statement in flight and returns its first result. Cancels
  // it on the server when the deadline passes or the caller cancels.
  absl::StatusOr<Result> Await() {
    PGconn* conn = c_.raw();
    std::optional<absl::Status> stop_reason;
    absl::Time give_up = absl::InfiniteFuture();
    for (;;) {
      if (PQconsumeInput(conn) == 0) {
        broken_ = true;
        return SqlError("08006", absl::StrCat("connection to the database lost: ",
                                              absl::StripAsciiWhitespace(
                                                  PQerrorMessage(conn))));
      }
      if (PQisBusy(conn) == 0) break;
      const absl::Time now = absl::Now();
      if (!stop_reason.has_value() &&
          (cancelled_.load(std::memory_order_relaxed) || now >= deadline_)) {
        stop_reason = cancelled_.load(std::memory_order_relaxed)
                          ? absl::CancelledError("cancelled by the caller")
                          : absl::DeadlineExceededError(
                                "statement did not finish before its deadline");
        give_up = now + grace_;
        if (!c_.CancelRunningQuery(give_up)) {
          // The statement may still be running, and a cancel request that
          // arrives late would hit the next statement on this connection.
          broken_ = true;
          return absl::Status(stop_reason->code(),
                              absl::StrCat(stop_reason->message(),
                                           "; the database did not take the "
                                           "cancel request, connection closed"));
        }
        // Waiting for the request took time: look at the clock again.
        continue;
      }
      if (now >= give_up) {
        // The server did not stop in time: the connection is given up.
        broken_ = true;
        return absl::Status(stop_reason->code(),
                            absl::StrCat(stop_reason->message(),
                                         "; the server did not stop the "
                                         "statement, connection closed"));
      }
      const absl::Time wake =
          std::min({stop_reason ? give_up : deadline_, now + absl::Milliseconds(20)});
      pollfd pfd{PQsocket(conn), POLLIN, 0};
      poll(&pfd, 1,
           static_cast<int>(std::max<int64_t>(
               0, absl::ToInt64Milliseconds(wake - now) + 1)));
    }
    Result first(PQgetResult(conn));
    if (first == nullptr) {
      broken_ = true;
      return SqlError("08006", "no result from the database");
    }
    switch (PQresultStatus(first.get())) {
      case PGRES_COPY_IN:
      case PGRES_COPY_OUT:
      case PGRES_COPY_BOTH:
        // The session now speaks the COPY sub-protocol, which Query does not;
        // PQgetResult would return this result forever. Give the session up.
        broken_ = true;
        return first;
      default:
        break;
    }
    // Only a simple query of several statements (Command) has more than
    // one result; the first failure among them is what counts.
    while (PGresult* extra = PQgetResult(conn)) {
      if (PQresultStatus(extra) == PGRES_FATAL_ERROR &&
          PQresultStatus(first.get()) != PGRES_FATAL_ERROR) {
        first.reset(extra);
      } else {
        PQclear(extra);
      }
    }
    if (stop_reason.has_value() &&
        PQresultStatus(first.get()) == PGRES_FATAL_ERROR &&
        Field(first.get(), PG_DIAG_SQLSTATE) == "57014") {
      // Keep the server's SQLSTATE, but report why we stopped it.
      absl::Status s(stop_reason->code(),
                     absl::StrCat(stop_reason->message(),
                                  "; cancelled on the server"));
      if (auto info = ErrorFromResult(conn, first.get())
                          .GetPayload(kErrorInfoTypeUrl)) {
        s.SetPayload(kErrorInfoTypeUrl, *info);
      }
      return s;
    }
    return first;
  }

  // Runs statements without parameters that must succeed (BEGIN,
  // ROLLBACK, a session reset), as one simple query.
  absl::Status Command(const char* sql) {
    if (PQsendQuery(c_.raw(), sql) == 0) return Lost();
    auto r = Await();
    if (!r.ok()) return r.status();
    if (PQresultStatus(r->get()) != PGRES_COMMAND_OK &&
        PQresultStatus(r->get()) != PGRES_TUPLES_OK) {
      return ErrorFromResult(c_.raw(), r->get());
    }
    return absl::OkStatus();
  }

  absl::Status Lost() {
    broken_ = true;
    return SqlError("08006",
                    absl::StrCat("connection to the database lost: ",
                                 absl::StripAsciiWhitespace(
                                     PQerrorMessage(c_.raw()))));
  }

 private:
  PgConnection& c_;
  const absl::Time deadline_;
  const std::atomic<bool>& cancelled_;
  const absl::Duration grace_;
  bool broken_ = false;
};

// Names of types outside the built-in table (enums, arrays, domains), as
// the server spells them; shared by all connections.
class TypeNameCache {
 public:
  std::string Get(PGconn* conn, Oid oid) {
    if (auto name = TypeNameForOid(oid)) return *name;
    {
      absl::MutexLock lock(&mu_);
      if (auto it = names_.find(oid); it != names_.end()) return it->second;
    }
    const std::string oid_text = absl::StrCat(oid);
    const char* params[] = {oid_text.c_str()};
    Result r(PQexecParams(conn, "SELECT format_type($1::oid, NULL)", 1, nullptr,
                          params, nullptr, nullptr, 0));
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK || PQntuples(r.get()) != 1) {
      return "";
    }
    std::string name = PQgetvalue(r.get(), 0, 0);
    absl::MutexLock lock(&mu_);
    names_[oid] = name;
    return name;
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<Oid, std::string> names_ ABSL_GUARDED_BY(mu_);
};

TypeNameCache& TypeNames() {
  static auto* const cache = new TypeNameCache();
  return *cache;
}

absl::Status FillRows(PGconn* conn, const PGresult* r, int64_t max_rows,
                      int64_t max_bytes, v1::QueryResponse* response) {
  const int rows = PQntuples(r);
  const int cols = PQnfields(r);
  if (rows > max_rows) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "result has ", rows, " rows, more than the limit of ", max_rows,
        "; add LIMIT or raise max_rows (server cap DBPOOL_MAX_ROWS)"));
  }
  int64_t bytes = 0;
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) bytes += PQgetlength(r, i, j);
  }
  if (bytes > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "result has ", bytes, " bytes, more than DBPOOL_MAX_RESULT_BYTES (",
        max_bytes, ")"));
  }
  std::vector<Oid> types(cols);
  for (int j = 0; j < cols; ++j) {
    types[j] = PQftype(r, j);
    auto* column = response->add_columns();
    column->set_name(PQfname(r, j));
    column->set_type_oid(types[j]);
    column->set_type_name(TypeNames().Get(conn, types[j]));
  }
  response->mutable_rows()->Reserve(rows);
  for (int i = 0; i < rows; ++i) {
    auto* row = response->add_rows();
    row->mutable_values()->Reserve(cols);
    for (int j = 0; j < cols; ++j) {
      v1::Value* value = row->add_values();
      if (PQgetisnull(r, i, j)) {
        value->set_null_value(google::protobuf::NULL_VALUE);
        continue;
      }
      absl::Status s = DecodeCell(
          types[j], absl::string_view(PQgetvalue(r, i, j), PQgetlength(r, i, j)),
          value);
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

// The parameters of one statement as libpq takes them.
struct Bound {
  std::vector<Oid> types;
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
  int count() const { return static_cast<int>(types.size()); }
};

absl::StatusOr<Result> SendUnnamed(Session& session, PGconn* conn,
                                   const std::string& sql, const Bound& b) {
  if (PQsendQueryParams(conn, sql.c_str(), b.count(), b.types.data(),
                        b.values.data(), b.lengths.data(), b.formats.data(),
                        /*resultFormat=*/0) == 0) {
    return session.Lost();
  }
  return session.Await();
}

// Prepares `entry` under a new name; false when the server refused (the
// unnamed run that follows then reports the error as usual).
absl::StatusOr<bool> Prepare(Session& session, PgConnection& pg,
                             const std::string& sql, const Bound& b,
                             CachedStatement& entry) {
  std::string name = pg.statements().NextName();
  if (PQsendPrepare(pg.raw(), name.c_str(), sql.c_str(), b.count(),
                    b.types.data()) == 0) {
    return session.Lost();
  }
  auto prepared = session.Await();
  if (!prepared.ok()) return prepared.status();
  if (PQresultStatus(prepared->get()) != PGRES_COMMAND_OK) return false;
  entry.name = std::move(name);
  return true;
}

// Runs one statement: unnamed the first time this connection sees the SQL,
// prepared from the second time on. Sets `*effects` to what the statement
// may leave in the session.
absl::StatusOr<Result> Send(Session& session, PgConnection& pg,
                            const std::string& sql, const Bound& b,
                            SessionEffects* effects) {
  PGconn* conn = pg.raw();
  EngineCounters& counters = Counters();
  std::string key = sql;
  key.push_back('\0');
  key.append(reinterpret_cast<const char*>(b.types.data()), b.count() * sizeof(Oid));
  StatementCache& cache = pg.statements();
  CachedStatement* entry = cache.Find(key);
  if (entry == nullptr) {
    *effects = ClassifySessionEffects(sql);
    std::string evicted;
    cache.Insert(std::move(key), *effects, &evicted);
    if (!evicted.empty()) {
      Bump(counters.statement_cache_evictions);
      // Our own name, never caller text. A statement the caller already
      // deallocated is gone either way.
      if (absl::Status s = session.Command(absl::StrCat("DEALLOCATE ", evicted).c_str());
          !s.ok() && session.broken()) {
        return s;
      }
    }
    Bump(counters.statement_cache_misses);
    return SendUnnamed(session, conn, sql, b);
  }
  *effects = entry->effects;
  // A statement that changes the session runs unnamed every time: PREPARE
  // or DEALLOCATE ALL kept as a prepared statement of ours would act on
  // the very cache that holds it.
  if (entry->effects != kNoEffect) {
    Bump(counters.statement_cache_misses);
    return SendUnnamed(session, conn, sql, b);
  }
  if (entry->name.empty()) {
    Bump(counters.statement_cache_misses);
    auto prepared = Prepare(session, pg, sql, b, *entry);
    if (!prepared.ok()) return prepared.status();
    if (!*prepared) {
      cache.Erase(entry->key);
      return SendUnnamed(session, conn, sql, b);
    }
  } else {
    Bump(counters.statement_cache_hits);
  }
  for (int attempt = 0;; ++attempt) {
    if (PQsendQueryPrepared(conn, entry->name.c_str(), b.count(), b.values.data(),
                            b.lengths.data(), b.formats.data(), 0) == 0) {
      return session.Lost();
    }
    auto result = session.Await();
    if (!result.ok()) return result;
    const std::string sqlstate = Field(result->get(), PG_DIAG_SQLSTATE);
    // 26000: the session lost the statement (a caller's DEALLOCATE);
    // 0A000: a schema change altered its result type. Prepare it again and
    // retry once, unless the failure aborted a transaction it ran in.
    if ((sqlstate != "26000" && sqlstate != "0A000") || attempt > 0 ||
        PQtransactionStatus(conn) != PQTRANS_IDLE) {
      return result;
    }
    Bump(counters.statement_reprepares);
    if (sqlstate == "0A000") {
      if (absl::Status s =
              session.Command(absl::StrCat("DEALLOCATE ", entry->name).c_str());
          !s.ok() && session.broken()) {
        return s;
      }
    }
    auto prepared = Prepare(session, pg, sql, b, *entry);
    if (!prepared.ok()) return prepared.status();
    if (!*prepared) {
      cache.Erase(entry->key);
      return SendUnnamed(session, conn, sql, b);
    }
  }
}

absl::Status Execute(Session& session, PgConnection& pg,
                     const v1::QueryRequest& request,
                     const std::vector<EncodedParam>& params,
                     const QueryLimits& limits,
                     SessionEffects* effects, v1::QueryResponse* response) {
  PGconn* conn = pg.raw();
  const size_t n = params.size();
  Bound b;
  b.types.resize(n);
  b.values.resize(n);
  b.lengths.resize(n);
  b.formats.resize(n);
  for (size_t i = 0; i < n; ++i) {
    b.types[i] = params[i].type;
    b.values[i] = params[i].is_null ? nullptr : params[i].data.c_str();
    b.lengths[i] = static_cast<int>(params[i].data.size());
    b.formats[i] = params[i].binary ? 1 : 0;
  }
  absl::StatusOr<Result> result = Send(session, pg, request.sql(), b, effects);
  if (!result.ok()) return result.status();
  PGresult* r = result->get();
  switch (PQresultStatus(r)) {
    case PGRES_TUPLES_OK: {
      const int64_t max_rows =
          request.max_rows() > 0 ? std::min(request.max_rows(), limits.max_rows)
                                 : limits.max_rows;
      if (absl::Status s =
              FillRows(conn, r, max_rows, limits.max_result_bytes, response);
          !s.ok()) {
        return s;
      }
      break;
    }
    case PGRES_COMMAND_OK:
      break;
    case PGRES_EMPTY_QUERY:
      return absl::InvalidArgumentError("sql contains no statement");
    case PGRES_FATAL_ERROR:
      return ErrorFromResult(conn, r);
    default:
      // COPY and the like leave the protocol in a state the pool cannot use.
      return absl::InvalidArgumentError(absl::StrCat(
          "statements of this kind (", PQresStatus(PQresultStatus(r)),
          ") are not supported through Query"));
  }
  response->set_command_tag(PQcmdStatus(r));
  const char* affected = PQcmdTuples(r);
  response->set_rows_affected(*affected != '\0' ? std::atoll(affected) : 0);
  return absl::OkStatus();
}

// Undoes what the statement may have left in the session (whatever its
// outcome: a cancelled statement may have taken its lock before it
// stopped), so that the next caller of this connection starts as the
// first did. Returns false when the connection cannot be made clean and
// must be closed. Runs on a deadline of its own: the caller may have
// cancelled, but the connection still has to be put right.
bool ResetSession(PgConnection& pg, SessionEffects effects, absl::Duration grace) {
  if (pg.ReportedParametersChanged()) effects |= kSettings | kIdentity;
  if (effects == kNoEffect) return true;
  EngineCounters& counters = Counters();
  for (int kind : EffectKinds(effects)) Bump(counters.session_resets[kind]);
  if (effects & kIrreversible) return false;
  static const std::atomic<bool> kNotCancelled{false};
  Session reset(pg, absl::Now() + grace, kNotCancelled, grace);
  for (const std::string& commands : ResetCommands(effects)) {
    if (!reset.Command(commands.c_str()).ok()) return false;
  }
  if (effects & kPreparedStatements) pg.statements().Clear();
  return !reset.broken() && !pg.ReportedParametersChanged();
}

}  // namespace

QueryOutcome RunQuery(pool::Connection& connection,
                      const v1::QueryRequest& request,
                      const std::vector<EncodedParam>& params,
                      const QueryLimits& limits,
                      absl::Time deadline, const std::atomic<bool>& cancelled,
                      v1::QueryResponse* response) {
  auto& pg = static_cast<PgConnection&>(connection);
  PGconn* conn = pg.raw();
  Session session(pg, deadline, cancelled, limits.cancel_grace);
  QueryOutcome out;
  if (request.read_only()) {
    out.status = session.Command("BEGIN READ ONLY");
  }
  SessionEffects effects = kNoEffect;
  if (out.status.ok()) {
    out.status = Execute(session, pg, request, params, limits, &effects, response);
  }
  if (!session.broken() && PQtransactionStatus(conn) != PQTRANS_IDLE) {
    // Our own READ ONLY transaction ends here, and a transaction the
    // statement itself opened (a bare BEGIN): both are rolled back so that
    // the next caller starts clean. A read-only transaction has no writes to
    // keep, and rolling it back also undoes session settings it made (SET,
    // set_config), which would otherwise reach the next caller of this
    // connection: a read_only caller must not change what others run with.
    absl::Status end = session.Command("ROLLBACK");
    if (out.status.ok()) out.status = end;
  }
  if (!out.status.ok()) response->Clear();
  out.connection_broken =
      session.broken() || PQtransactionStatus(conn) != PQTRANS_IDLE ||
      !ResetSession(pg, effects, limits.cancel_grace);
  return out;
}

}  // namespace dbpool::db
