#include "server/app/connection_budget.h"

#include <libpq-fe.h>

#include <memory>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace dbpool::app {

std::string BudgetCheck::Describe() const {
  std::string reserved =
      absl::StrCat(limits.superuser_reserved, " superuser_reserved_connections");
  if (limits.reserved > 0) {
    absl::StrAppend(&reserved, " and ", limits.reserved, " reserved_connections");
  }
  std::string line = absl::StrCat(
      "connection budget: ", replicas, " replicas x DB_POOL_MAX_CONNECTIONS ",
      pool_size, " = ", needed(), " of ", limits.usable(),
      " usable connections (max_connections ", limits.max_connections, " less ",
      reserved, ")");
  if (!fits()) {
    absl::StrAppend(&line, ": does not fit; lower DB_POOL_MAX_CONNECTIONS to ",
                    replicas > 0 ? limits.usable() / replicas : 0,
                    " or fewer, run fewer replicas, or raise max_connections "
                    "(on every node of a replicated cluster)");
  }
  return line;
}

absl::StatusOr<ConnectionLimits> ReadConnectionLimits(db::PgConnector& connector,
                                                      absl::Time deadline) {
  absl::StatusOr<std::unique_ptr<db::PgConnection>> opened = connector.ConnectNow(deadline);
  if (!opened.ok()) return opened.status();
  PGconn* conn = (*opened)->raw();
  // reserved_connections is PostgreSQL 16's; missing_ok makes it NULL before.
  std::unique_ptr<PGresult, decltype(&PQclear)> result(
      PQexec(conn,
             "SELECT current_setting('max_connections'), "
             "current_setting('superuser_reserved_connections'), "
             "coalesce(current_setting('reserved_connections', true), '0')"),
      &PQclear);
  if (PQresultStatus(result.get()) != PGRES_TUPLES_OK || PQntuples(result.get()) != 1) {
    return absl::UnavailableError(
        absl::StrCat("cannot read max_connections: ", PQerrorMessage(conn)));
  }
  ConnectionLimits limits;
  if (!absl::SimpleAtoi(PQgetvalue(result.get(), 0, 0), &limits.max_connections) ||
      !absl::SimpleAtoi(PQgetvalue(result.get(), 0, 1), &limits.superuser_reserved) ||
      !absl::SimpleAtoi(PQgetvalue(result.get(), 0, 2), &limits.reserved)) {
    return absl::InternalError("max_connections settings are not integers");
  }
  return limits;
}

absl::Status CheckConnectionBudget(db::PgConnector& connector, absl::Time deadline,
                                   int replicas, int pool_size, bool enforce) {
  absl::StatusOr<ConnectionLimits> limits = ReadConnectionLimits(connector, deadline);
  if (!limits.ok()) {
    spdlog::warn("connection budget not checked: {}",
                 std::string(limits.status().message()));
    return absl::OkStatus();
  }
  const BudgetCheck check{replicas, pool_size, *limits};
  if (check.fits()) {
    spdlog::info("{}", check.Describe());
    return absl::OkStatus();
  }
  if (enforce) return absl::FailedPreconditionError(check.Describe());
  spdlog::warn("{}", check.Describe());
  return absl::OkStatus();
}

}  // namespace dbpool::app
