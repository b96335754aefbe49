// Reading libpq results into dbpool's types: errors with their SQLSTATE and
// fields, rows into a QueryResponse, and parameters bound the way libpq
// takes them. Shared by everything that sends statements.
//
// Free functions over results the caller owns; thread-safe. The type-name
// cache is process-wide and locked. Nothing here does I/O.
#ifndef DBPOOL_SERVER_DB_PG_RESULT_H_
#define DBPOOL_SERVER_DB_PG_RESULT_H_

#include <libpq-fe.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/value_codec.h"

namespace dbpool::db {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using Result = std::unique_ptr<PGresult, ResultDeleter>;

// One error field of `r`; "" when absent.
std::string Field(const PGresult* r, int code);

// The status for a failed result, keeping SQLSTATE and the error fields.
absl::Status ErrorFromResult(PGconn* conn, const PGresult* r);

// The parameters of one statement as libpq takes them. Points into the
// EncodedParams it was made from, which must outlive it.
struct Bound {
  explicit Bound(const std::vector<EncodedParam>& params);
  int count() const { return static_cast<int>(types.size()); }
  std::vector<Oid> types;
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
};

// The statement cache's key: the SQL text and its parameter types.
std::string StatementKey(const std::string& sql, const Bound& bound);

// Names of types outside the built-in table (enums, arrays, domains), as
// the server spells them (format_type); learnt once, shared by every
// connection.
std::optional<std::string> KnownTypeName(Oid type);
void RememberTypeName(Oid type, std::string name);
// The column types of `r` whose names are not known yet.
std::vector<Oid> UnknownTypes(const PGresult* r);

// Adds the columns of `r` (a result or a statement's description) to
// `response`; type names not known by now are left empty.
void FillColumns(const PGresult* r, v1::QueryResponse* response);
// Adds the rows of `r` to `response` (a streamed chunk takes them one
// single-row result at a time).
absl::Status AppendRows(const PGresult* r, v1::QueryResponse* response);

// Fills `response` from a statement's result: columns, rows, command tag
// and rows affected, or the error the result carries. Refuses results over
// `max_rows` or `max_bytes` of cell data. Type names not known by now are
// left empty.
absl::Status ReadStatementResult(PGconn* conn, PGresult* r,
                                 int64_t max_rows, int64_t max_bytes,
                                 v1::QueryResponse* response);

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_PG_RESULT_H_
