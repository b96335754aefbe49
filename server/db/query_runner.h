// RunQuery: executes one QueryRequest on a pooled PostgreSQL connection and
// fills a QueryResponse. The only place that sends statements.
//
// Runs on an executor worker and blocks there until the result arrives, the
// deadline passes or the caller cancels; in the last two cases it cancels
// the statement on the server and waits briefly for the connection to
// recover. Thread-safe for distinct connections.
#ifndef DBPOOL_SERVER_DB_QUERY_RUNNER_H_
#define DBPOOL_SERVER_DB_QUERY_RUNNER_H_

#include <atomic>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/query_limits.h"
#include "server/db/value_codec.h"
#include "server/pool/connection.h"

namespace dbpool::db {

struct QueryOutcome {
  absl::Status status;
  // The connection must not be reused (it failed, or was left in an
  // unknown state).
  bool connection_broken = false;
};

// `connection` must be a PgConnection (the server's pool only holds those).
// `params` are request.params() already encoded (see rpc::ValidateQuery).
// `deadline` bounds execution; `cancelled` is polled while waiting.
QueryOutcome RunQuery(pool::Connection& connection,
                      const v1::QueryRequest& request,
                      const std::vector<EncodedParam>& params,
                      const QueryLimits& limits,
                      absl::Time deadline, const std::atomic<bool>& cancelled,
                      v1::QueryResponse* response);

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_QUERY_RUNNER_H_
