// SQLSTATE -> status code: the one error mapping of dbpool (DESIGN §3),
// and the constructor of statuses that carry a PostgreSQL error.
//
// A status made here carries a google.rpc.ErrorInfo payload (reason =
// SQLSTATE, domain = "postgresql", metadata = constraint, detail, hint,
// ...) under its Any type URL, so that the RPC edge can pass it on as a
// google.rpc.Status detail unchanged. Pure functions; thread-safe.
#ifndef DBPOOL_SERVER_DB_SQL_STATE_H_
#define DBPOOL_SERVER_DB_SQL_STATE_H_

#include <map>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace dbpool::db {

inline constexpr absl::string_view kErrorInfoTypeUrl =
    "type.googleapis.com/google.rpc.ErrorInfo";
inline constexpr absl::string_view kPostgresDomain = "postgresql";
// The domain of ErrorInfo reasons that are dbpool's own (transactions,
// batches), as opposed to a SQLSTATE.
inline constexpr absl::string_view kDbpoolDomain = "dbpool";
// The ErrorInfo metadata key naming the statement of a batch that failed
// (0-based, in decimal).
inline constexpr char kStatementIndexKey[] = "statement_index";

// The status code for a five-character SQLSTATE.
absl::StatusCode CodeForSqlState(absl::string_view sqlstate);

// A status for a PostgreSQL error: code from the SQLSTATE, the server's
// message, and ErrorInfo with `fields` (constraint, detail, hint, ...) as
// metadata.
absl::Status SqlError(absl::string_view sqlstate, absl::string_view message,
                      const std::map<std::string, std::string>& fields = {});

// A status of dbpool's own, with ErrorInfo{reason, domain "dbpool",
// metadata}.
absl::Status DbpoolError(absl::StatusCode code, absl::string_view reason,
                         absl::string_view message,
                         const std::map<std::string, std::string>& metadata = {});

// `status` of statement `index` of a batch: the message says which, and
// its ErrorInfo (made with reason BATCH_STATEMENT_FAILED if it had none)
// carries kStatementIndexKey.
absl::Status WithStatementIndex(const absl::Status& status, int index);

// The SQLSTATE a status carries, if it came from SqlError.
std::optional<std::string> SqlStateOf(const absl::Status& status);

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_SQL_STATE_H_
