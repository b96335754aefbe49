// The connection budget against a real PostgreSQL: the limits read back as
// the server reports them, and BuildServer warning or refusing by
// DBPOOL_ENFORCE_CONNECTION_BUDGET. The shared cluster runs with
// max_connections=200 and PostgreSQL 15's default of 3 superuser-reserved
// connections: 197 usable.
#include "server/app/connection_budget.h"

#include <map>
#include <memory>
#include <optional>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/time/clock.h"
#include "server/app/server.h"
#include "server/config/config.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using ::testing::HasSubstr;

absl::StatusOr<std::unique_ptr<app::Server>> Build(
    std::map<std::string, std::string> vars) {
  vars.insert({{"DBPOOL_LISTEN_HOST", "127.0.0.1"},
               {"DBPOOL_GRPC_PORT", "0"},
               {"DBPOOL_HTTP_PORT", "0"},
               {"DBPOOL_METRICS_PORT", "0"},
               {"DB_POOL_MIN_CONNECTIONS", "0"},
               {"DATABASE_URL", PgCluster::Get().conninfo()}});
  absl::StatusOr<config::Config> config = config::Load(
      [&vars](const std::string& name) -> std::optional<std::string> {
        auto it = vars.find(name);
        if (it == vars.end()) return std::nullopt;
        return it->second;
      },
      {});
  if (!config.ok()) return config.status();
  return app::BuildServer(*config);
}

TEST(ConnectionBudgetTest, ReadsTheServersLimits) {
  db::PgConnector connector(
      db::ConnectionSettings{PgCluster::Get().conninfo(), "budget", absl::Seconds(5), 0});
  absl::StatusOr<app::ConnectionLimits> limits =
      app::ReadConnectionLimits(connector, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(limits.ok()) << limits.status();
  EXPECT_EQ(limits->max_connections, 200);
  EXPECT_EQ(limits->superuser_reserved, 3);
  EXPECT_EQ(limits->reserved, 0);
  EXPECT_EQ(limits->usable(), 197);
}

TEST(ConnectionBudgetTest, DescribesTheArithmeticAndTheFix) {
  const app::BudgetCheck fits{3, 20, {100, 3, 0}};
  EXPECT_TRUE(fits.fits());
  EXPECT_EQ(fits.Describe(),
            "connection budget: 3 replicas x DB_POOL_MAX_CONNECTIONS 20 = 60 of 97 "
            "usable connections (max_connections 100 less 3 "
            "superuser_reserved_connections)");
  const app::BudgetCheck over{5, 20, {100, 3, 2}};
  EXPECT_FALSE(over.fits());
  EXPECT_THAT(over.Describe(), HasSubstr("= 100 of 95 usable"));
  EXPECT_THAT(over.Describe(), HasSubstr("and 2 reserved_connections"));
  EXPECT_THAT(over.Describe(), HasSubstr("lower DB_POOL_MAX_CONNECTIONS to 19 or fewer"));
  // Exactly full still fits: every replica can open its whole pool.
  EXPECT_TRUE((app::BudgetCheck{5, 19, {100, 3, 2}}.fits()));
}

TEST(ConnectionBudgetTest, EnforcedBudgetThatDoesNotFitRefusesToStart) {
  absl::StatusOr<std::unique_ptr<app::Server>> server =
      Build({{"DBPOOL_EXPECTED_REPLICAS", "50"},
             {"DB_POOL_MAX_CONNECTIONS", "4"},
             {"DBPOOL_ENFORCE_CONNECTION_BUDGET", "true"}});
  ASSERT_FALSE(server.ok());
  EXPECT_EQ(server.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(server.status().message(), HasSubstr("= 200 of 197 usable"));
}

TEST(ConnectionBudgetTest, BudgetThatDoesNotFitOnlyWarnsUnlessEnforced) {
  absl::StatusOr<std::unique_ptr<app::Server>> server =
      Build({{"DBPOOL_EXPECTED_REPLICAS", "50"}, {"DB_POOL_MAX_CONNECTIONS", "4"}});
  ASSERT_TRUE(server.ok()) << server.status();
}

TEST(ConnectionBudgetTest, EnforcedBudgetThatFitsStarts) {
  absl::StatusOr<std::unique_ptr<app::Server>> server =
      Build({{"DBPOOL_EXPECTED_REPLICAS", "49"},
             {"DB_POOL_MAX_CONNECTIONS", "4"},
             {"DBPOOL_ENFORCE_CONNECTION_BUDGET", "true"}});
  ASSERT_TRUE(server.ok()) << server.status();
}

TEST(ConnectionBudgetTest, UnreachableServerIsNotCheckedAndStarts) {
  absl::StatusOr<std::unique_ptr<app::Server>> server =
      Build({{"DATABASE_URL", "postgresql://postgres@127.0.0.1:1/postgres"},
             {"DBPOOL_EXPECTED_REPLICAS", "1000"},
             {"DBPOOL_ENFORCE_CONNECTION_BUDGET", "true"}});
  ASSERT_TRUE(server.ok()) << server.status();
}

}  // namespace
}  // namespace dbpool::testing
