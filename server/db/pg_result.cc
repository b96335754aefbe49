#include "server/db/pg_result.h"

#include <cstdlib>
#include <mutex>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "server/db/sql_state.h"

namespace dbpool::db {
namespace {

class TypeNameCache {
 public:
  std::optional<std::string> Get(Oid oid) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = names_.find(oid);
    if (it == names_.end()) return std::nullopt;
    return it->second;
  }
  void Put(Oid oid, std::string name) {
    std::lock_guard<std::mutex> lock(mu_);
    names_[oid] = std::move(name);
  }

 private:
  std::mutex mu_;
  absl::flat_hash_map<Oid, std::string> names_ ABSL_GUARDED_BY(mu_);
};

TypeNameCache& TypeNames() {
  static auto* const cache = new TypeNameCache();
  return *cache;
}

absl::Status FillRows(const PGresult* r, int64_t max_rows, int64_t max_bytes,
                      v1::QueryResponse* response) {
  const int rows = PQntuples(r);
  const int cols = PQnfields(r);
  if (rows > max_rows) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "result has ", rows, " rows, more than the limit of ", max_rows,
        "; add LIMIT, raise max_rows (server cap DBPOOL_MAX_ROWS), or read it "
        "with StreamQuery"));
  }
  int64_t bytes = 0;
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) bytes += PQgetlength(r, i, j);
  }
  if (bytes > max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "result has ", bytes, " bytes, more than DBPOOL_MAX_RESULT_BYTES (",
        max_bytes, "); read it with StreamQuery"));
  }
  FillColumns(r, response);
  return AppendRows(r, response);
}

}  // namespace

std::string Field(const PGresult* r, int code) {
  const char* v = PQresultErrorField(r, code);
  return v != nullptr ? v : "";
}

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

Bound::Bound(const std::vector<EncodedParam>& params) {
  const size_t n = params.size();
  types.resize(n);
  values.resize(n);
  lengths.resize(n);
  formats.resize(n);
  for (size_t i = 0; i < n; ++i) {
    types[i] = params[i].type;
    values[i] = params[i].is_null ? nullptr : params[i].data.c_str();
    lengths[i] = static_cast<int>(params[i].data.size());
    formats[i] = params[i].binary ? 1 : 0;
  }
}

std::string StatementKey(const std::string& sql, const Bound& bound) {
  std::string key = sql;
  key.push_back('\0');
  key.append(reinterpret_cast<const char*>(bound.types.data()),
             bound.types.size() * sizeof(Oid));
  return key;
}

void FillColumns(const PGresult* r, v1::QueryResponse* response) {
  for (int j = 0; j < PQnfields(r); ++j) {
    const Oid type = PQftype(r, j);
    auto* column = response->add_columns();
    column->set_name(PQfname(r, j));
    column->set_type_oid(type);
    column->set_type_name(KnownTypeName(type).value_or(""));
  }
}

absl::Status AppendRows(const PGresult* r, v1::QueryResponse* response) {
  const int rows = PQntuples(r);
  const int cols = PQnfields(r);
  response->mutable_rows()->Reserve(response->rows_size() + rows);
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
          PQftype(r, j), absl::string_view(PQgetvalue(r, i, j), PQgetlength(r, i, j)),
          value);
      if (!s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

std::optional<std::string> KnownTypeName(Oid type) {
  if (auto name = TypeNameForOid(type)) return name;
  return TypeNames().Get(type);
}

void RememberTypeName(Oid type, std::string name) {
  TypeNames().Put(type, std::move(name));
}

std::vector<Oid> UnknownTypes(const PGresult* r) {
  std::vector<Oid> unknown;
  for (int j = 0; j < PQnfields(r); ++j) {
    const Oid type = PQftype(r, j);
    if (!KnownTypeName(type).has_value()) unknown.push_back(type);
  }
  return unknown;
}

absl::Status ReadStatementResult(PGconn* conn, PGresult* r,
                                 int64_t max_rows, int64_t max_bytes,
                                 v1::QueryResponse* response) {
  switch (PQresultStatus(r)) {
    case PGRES_TUPLES_OK:
      if (absl::Status s = FillRows(r, max_rows, max_bytes, response); !s.ok()) {
        return s;
      }
      break;
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

}  // namespace dbpool::db
