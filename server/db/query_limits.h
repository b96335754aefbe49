// QueryLimits: the bounds every statement runs within, whichever engine
// runs it. A plain value, set from the configuration.
#ifndef DBPOOL_SERVER_DB_QUERY_LIMITS_H_
#define DBPOOL_SERVER_DB_QUERY_LIMITS_H_

#include <cstdint>

#include "absl/time/time.h"

namespace dbpool::db {

struct QueryLimits {
  int64_t max_rows = 100000;
  int64_t max_result_bytes = int64_t{64} << 20;
  // How long a cancelled statement may take to stop before the connection
  // is given up.
  absl::Duration cancel_grace = absl::Seconds(2);
  // The server's statement timeout (DB_STATEMENT_TIMEOUT_MS): also bounds
  // what the engine sends of its own, such as a transaction's COMMIT.
  absl::Duration statement_timeout = absl::Seconds(30);
};

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_QUERY_LIMITS_H_
