// Validation of Query requests before they wait for a connection, so that
// a bad request costs no pool capacity. Pure functions; thread-safe.
#ifndef DBPOOL_SERVER_RPC_REQUEST_VALIDATION_H_
#define DBPOOL_SERVER_RPC_REQUEST_VALIDATION_H_

#include <vector>

#include "absl/status/statusor.h"
#include "dbpool/v1/database_service.pb.h"
#include "server/db/value_codec.h"

namespace dbpool::rpc {

struct RequestLimits {
  int max_sql_bytes = 1 << 20;
  int max_params = 65535;
};

// Checks the request and encodes its parameters. INVALID_ARGUMENT names
// the first problem found.
absl::StatusOr<std::vector<db::EncodedParam>> ValidateQuery(
    const v1::QueryRequest& request, const RequestLimits& limits);

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_REQUEST_VALIDATION_H_
