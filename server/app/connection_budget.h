// The connection budget: whether every dbpool instance of a deployment, each
// with a full pool, fits the connections PostgreSQL gives to ordinary roles.
//
// Past max_connections a new session is refused outright ("sorry, too many
// clients already"), so a deployment that scales beyond the budget fails
// under exactly the load it scaled for. The check runs once at start, from
// BuildServer: ReadConnectionLimits opens one connection (blocking up to its
// deadline) and closes it; the rest are plain functions. Thread-compatible.
#ifndef DBPOOL_SERVER_APP_CONNECTION_BUDGET_H_
#define DBPOOL_SERVER_APP_CONNECTION_BUDGET_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/db/pg_connection.h"

namespace dbpool::app {

// What the server reserves out of max_connections.
struct ConnectionLimits {
  int max_connections = 0;
  int superuser_reserved = 0;
  // PostgreSQL 16's reserved_connections (pg_use_reserved_connections);
  // 0 before 16.
  int reserved = 0;

  // Sessions an ordinary role can open.
  int usable() const { return max_connections - superuser_reserved - reserved; }
};

struct BudgetCheck {
  int replicas = 0;
  int pool_size = 0;  // DB_POOL_MAX_CONNECTIONS of each
  ConnectionLimits limits;

  int needed() const { return replicas * pool_size; }
  bool fits() const { return needed() <= limits.usable(); }
  // One line for the log: the arithmetic, and what to change when it does
  // not fit.
  std::string Describe() const;
};

// Reads the limits through a new connection from `connector`.
absl::StatusOr<ConnectionLimits> ReadConnectionLimits(db::PgConnector& connector,
                                                      absl::Time deadline);

// Logs the check; FAILED_PRECONDITION when it does not fit and `enforce`.
// A server that cannot be reached is logged and passes: refusing to start
// then would only turn an outage into a crash loop, and readiness already
// keeps traffic away.
absl::Status CheckConnectionBudget(db::PgConnector& connector, absl::Time deadline,
                                   int replicas, int pool_size, bool enforce);

}  // namespace dbpool::app

#endif  // DBPOOL_SERVER_APP_CONNECTION_BUDGET_H_
