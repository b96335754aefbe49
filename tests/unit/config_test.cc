#include "server/config/config.h"

#include <fstream>
#include <map>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace dbpool::config {
namespace {

using ::testing::HasSubstr;

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(Config, DefaultsMirrorTheDesign) {
  auto c = Load(Env({{"DATABASE_URL", "postgresql://localhost/x"}}), {});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_connections, 20);
  EXPECT_EQ(c->min_connections, 2);
  EXPECT_EQ(c->idle_timeout, absl::Seconds(30));
  EXPECT_EQ(c->max_lifetime, absl::Minutes(30));
  EXPECT_EQ(c->acquire_timeout, absl::Seconds(5));
  EXPECT_EQ(c->max_waiting, 1000);
  EXPECT_EQ(c->statement_timeout, absl::Seconds(30));
  EXPECT_EQ(c->cancel_grace, absl::Seconds(2));
  EXPECT_EQ(c->application_name, "dbpool");
  EXPECT_EQ(c->grpc_port, 50051);
  EXPECT_EQ(c->http_port, 8080);
  EXPECT_EQ(c->metrics_port, 9464);
  EXPECT_EQ(c->listen_host, "0.0.0.0");
}

TEST(Config, FlagsOverrideEnvironment) {
  auto c = Load(Env({{"DATABASE_URL", "x"}, {"DB_POOL_MAX_CONNECTIONS", "7"}}),
                {"--db-pool-max-connections=9", "--grpc-port", "0",
                 "--listen-host=127.0.0.1"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->max_connections, 9);
  EXPECT_EQ(c->grpc_port, 0);
  EXPECT_EQ(c->listen_host, "127.0.0.1");
}

TEST(Config, ReportsEveryViolationAtOnce) {
  auto c = Load(Env({{"DB_POOL_MAX_CONNECTIONS", "zero"},
                     {"DB_POOL_IDLE_TIMEOUT_MS", "-5"},
                     {"DBPOOL_GRPC_PORT", "70000"}}),
                {"--no-such-flag=1", "stray"});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string m(c.status().message());
  EXPECT_THAT(m, HasSubstr("DATABASE_URL"));
  EXPECT_THAT(m, HasSubstr("DB_POOL_MAX_CONNECTIONS"));
  EXPECT_THAT(m, HasSubstr("DB_POOL_IDLE_TIMEOUT_MS"));
  EXPECT_THAT(m, HasSubstr("DBPOOL_GRPC_PORT"));
  EXPECT_THAT(m, HasSubstr("--no-such-flag"));
  EXPECT_THAT(m, HasSubstr("stray"));
}

TEST(Config, ReplicaUrlsSplitBetweenConnectionStringsOnly) {
  const auto replicas = [](const std::string& value) {
    auto c = Load(Env({{"DATABASE_URL", "x"}, {"DATABASE_REPLICA_URLS", value}}), {});
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? c->replica_urls : std::vector<std::string>{};
  };
  EXPECT_THAT(replicas(""), ::testing::IsEmpty());
  EXPECT_THAT(replicas("postgresql://a/db, postgres://b:5433/db"),
              ::testing::ElementsAre("postgresql://a/db", "postgres://b:5433/db"));
  // A multi-host URI is one replica pool: any standby of the list
  // (target_session_attrs=standby).
  EXPECT_THAT(replicas("postgresql://a:1,b:2/db?target_session_attrs=standby"),
              ::testing::ElementsAre("postgresql://a:1,b:2/db?target_session_attrs=standby"));
  EXPECT_THAT(replicas("host=a,b port=1,2 dbname=x,host=c dbname=x"),
              ::testing::ElementsAre("host=a,b port=1,2 dbname=x", "host=c dbname=x"));
}

TEST(Config, MinimumMustNotExceedMaximum) {
  auto c = Load(Env({{"DATABASE_URL", "x"},
                     {"DB_POOL_MAX_CONNECTIONS", "3"},
                     {"DB_POOL_MIN_CONNECTIONS", "4"}}),
                {});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("must not exceed"));
}

TEST(Config, SecuritySettingsAreCheckedTogether) {
  auto half = Load(Env({{"DATABASE_URL", "x"}, {"DBPOOL_TLS_CERT_FILE", "c.pem"}}), {});
  ASSERT_FALSE(half.ok());
  EXPECT_THAT(std::string(half.status().message()),
              HasSubstr("must be set together"));
  auto ca_alone = Load(Env({{"DATABASE_URL", "x"}}), {"--tls-client-ca-file=ca.pem"});
  ASSERT_FALSE(ca_alone.ok());
  EXPECT_THAT(std::string(ca_alone.status().message()),
              HasSubstr("DBPOOL_TLS_CLIENT_CA_FILE"));
  auto full = Load(Env({{"DATABASE_URL", "x"}}),
                   {"--tls-cert-file=c.pem", "--tls-key-file=k.pem",
                    "--tls-client-ca-file=ca.pem", "--reflection=off",
                    "--max-calls-per-caller=3"});
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->tls_key_file, "k.pem");
  EXPECT_FALSE(full->reflection);
  EXPECT_EQ(full->max_calls_per_caller, 3);
  EXPECT_FALSE(Load(Env({{"DATABASE_URL", "x"}}), {"--reflection=maybe"}).ok());
}

TEST(Config, RemembersWhichSettingsCameAsFlags) {
  auto c = Load(Env({{"DATABASE_URL", "from-env"}, {"DBPOOL_GRPC_PORT", "1"}}),
                {"--grpc-port=2", "--log-level", "debug"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->given_as_flags,
              ::testing::UnorderedElementsAre("DBPOOL_GRPC_PORT", "DBPOOL_LOG_LEVEL"));
}

TEST(Config, FlagWithoutValueIsAnError) {
  auto c = Load(Env({{"DATABASE_URL", "x"}}), {"--grpc-port"});
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("needs a value"));
}

TEST(Config, HelpNamesEveryVariable) {
  const std::string help = Help();
  for (const char* name :
       {"DATABASE_URL", "DB_POOL_MAX_CONNECTIONS", "DB_POOL_MIN_CONNECTIONS",
        "DB_POOL_IDLE_TIMEOUT_MS", "DB_POOL_MAX_LIFETIME_MS",
        "DB_POOL_ACQUIRE_TIMEOUT_MS", "DB_POOL_MAX_WAITING",
        "DB_POOL_CONNECT_TIMEOUT_MS", "DB_STATEMENT_TIMEOUT_MS",
        "DB_APPLICATION_NAME", "DBPOOL_GRPC_PORT", "DBPOOL_HTTP_PORT",
        "DBPOOL_METRICS_PORT", "DBPOOL_LISTEN_HOST"}) {
    EXPECT_THAT(help, HasSubstr(name));
  }
  EXPECT_TRUE(WantsHelp({"--help"}));
  EXPECT_FALSE(WantsHelp({"--grpc-port=1"}));
}

TEST(Config, EnvExampleDocumentsEveryVariableWithItsDefault) {
  std::ifstream file(std::string(DBPOOL_SOURCE_DIR) + "/.env.example");
  ASSERT_TRUE(file.good());
  std::map<std::string, std::string> vars;
  std::string line;
  while (std::getline(file, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto eq = line.find('=');
    ASSERT_NE(eq, std::string::npos) << line;
    EXPECT_TRUE(vars.emplace(line.substr(0, eq), line.substr(eq + 1)).second)
        << line.substr(0, eq) << " appears twice";
  }
  for (const Variable& v : Variables()) {
    auto it = vars.find(v.name);
    if (it == vars.end()) {
      ADD_FAILURE() << v.name << " is missing from .env.example";
      continue;
    }
    // DATABASE_URL has no default: the example shows what one looks like.
    if (v.name == "DATABASE_URL") continue;
    EXPECT_EQ(it->second, v.default_value)
        << v.name << " in .env.example differs from its default";
  }
  EXPECT_EQ(vars.size(), Variables().size()) << "unknown variables in .env.example";
  // The example, loaded as an environment, must be valid.
  auto c = Load(Env(vars), {});
  EXPECT_TRUE(c.ok()) << c.status();
}

}  // namespace
}  // namespace dbpool::config
