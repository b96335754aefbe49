// Validation of requests before they wait for a connection, so that a bad
// request costs no pool capacity. Pure functions; thread-safe.
#ifndef DBPOOL_SERVER_RPC_REQUEST_VALIDATION_H_
#define DBPOOL_SERVER_RPC_REQUEST_VALIDATION_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/value_codec.h"
#include "server/engine/query_engine.h"

namespace dbpool::rpc {

struct RequestLimits {
  int max_sql_bytes = 1 << 20;
  int max_params = 65535;
  // Statements in one ExecuteBatch (DBPOOL_MAX_BATCH_STATEMENTS).
  int max_batch_statements = 10000;
};

// Checks the request and encodes its parameters. INVALID_ARGUMENT names
// the first problem found.
absl::StatusOr<std::vector<db::EncodedParam>> ValidateQuery(
    const v1::QueryRequest& request, const RequestLimits& limits);

// Checks every statement of a batch as ValidateQuery does, and the batch's
// size: INVALID_ARGUMENT for an empty batch, one over
// limits.max_batch_statements, or the first bad statement, whose message
// starts "statements[i]: " and whose google.rpc.ErrorInfo (domain "dbpool")
// carries engine::kStatementIndexKey, as the engine's batch errors do. A
// statement may not name a transaction other than the batch's. Consumes
// `request`'s statements on success.
absl::StatusOr<std::vector<engine::Statement>> ValidateBatch(
    v1::ExecuteBatchRequest& request, const RequestLimits& limits);

// INVALID_ARGUMENT for an isolation level this build does not know or an
// idle_timeout that is not a valid, non-negative google.protobuf.Duration.
absl::Status ValidateBegin(const v1::BeginTransactionRequest& request);

// Where a read may run, from a request's consistency and min_lsn.
struct ReadRouting {
  bool primary_only = false;
  uint64_t min_lsn = 0;
};
// INVALID_ARGUMENT for a consistency this build does not know or a min_lsn
// not in PostgreSQL's "X/X" form.
absl::StatusOr<ReadRouting> ValidateRouting(v1::Consistency consistency,
                                            const std::string& min_lsn);

// INVALID_ARGUMENT when a transaction id is empty.
absl::Status ValidateTransactionId(const std::string& transaction_id);

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_REQUEST_VALIDATION_H_
