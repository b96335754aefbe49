// Query round trips, type mapping and the error table against a real
// PostgreSQL.
#include <atomic>
#include <cmath>
#include <limits>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using ::testing::HasSubstr;

class QueryTest : public ::testing::Test {
 protected:
  // A result cap small enough to reach cheaply.
  TestServer server_{{{"DBPOOL_MAX_RESULT_BYTES", absl::StrCat(1 << 20)}}};
};

TEST_F(QueryTest, EveryMappedTypeRoundTrips) {
  v1::QueryRequest req;
  req.set_sql(
      "SELECT $1::int8 AS min8, $2::int8 AS max8, $3::text AS txt, "
      "$4::bytea AS bin, $5::numeric AS num, $6::timestamptz AS ts, "
      "$7::bool AS b, $8::float8 AS f, $9::jsonb AS j, $10::int4 AS nul, "
      "$11::uuid AS u, 'NaN'::float8 AS nan, 32767::int2 AS i2, "
      "'2024-02-29'::date AS d, '{1,2}'::int4[] AS arr");
  req.add_params()->set_int64_value(std::numeric_limits<int64_t>::min());
  req.add_params()->set_int64_value(std::numeric_limits<int64_t>::max());
  req.add_params()->set_string_value("grüße, 世界 🐘");
  req.add_params()->set_bytes_value(std::string("\0a\0\xff", 4));
  req.add_params()->set_decimal_value("123456789012345678901234567890.123456789");
  auto* ts = req.add_params()->mutable_timestamp_value();
  ts->set_seconds(1700000000);
  ts->set_nanos(123456000);
  req.add_params()->set_bool_value(true);
  req.add_params()->set_double_value(-0.1);
  req.add_params()->set_json_value("{\"k\": [1, \"v\"]}");
  req.add_params()->set_null_value(google::protobuf::NULL_VALUE);
  auto* u = req.add_params();
  u->set_string_value("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  u->set_type_hint("uuid");
  v1::QueryResponse resp;
  grpc::Status st = server_.Query(req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.rows_size(), 1);
  const auto& v = resp.rows(0).values();
  EXPECT_EQ(v[0].int64_value(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(v[1].int64_value(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(v[2].string_value(), "grüße, 世界 🐘");
  EXPECT_EQ(v[3].bytes_value(), std::string("\0a\0\xff", 4));
  EXPECT_EQ(v[4].decimal_value(), "123456789012345678901234567890.123456789");
  EXPECT_EQ(v[5].timestamp_value().seconds(), 1700000000);
  EXPECT_EQ(v[5].timestamp_value().nanos(), 123456000);
  EXPECT_TRUE(v[6].bool_value());
  EXPECT_EQ(v[7].double_value(), -0.1);
  EXPECT_EQ(v[8].json_value(), "{\"k\": [1, \"v\"]}");
  EXPECT_TRUE(v[9].has_null_value());
  EXPECT_EQ(v[10].string_value(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  EXPECT_TRUE(std::isnan(v[11].double_value()));
  EXPECT_EQ(v[12].int64_value(), 32767);
  EXPECT_EQ(v[13].string_value(), "2024-02-29");
  EXPECT_EQ(v[14].string_value(), "{1,2}");
  const std::vector<std::pair<std::string, std::string>> columns = {
      {"min8", "int8"},     {"txt", "text"},  {"bin", "bytea"},
      {"num", "numeric"},   {"ts", "timestamptz"}, {"b", "bool"},
      {"f", "float8"},      {"j", "jsonb"},   {"u", "uuid"},
      {"d", "date"},        {"arr", "integer[]"}};
  for (const auto& [name, type] : columns) {
    bool found = false;
    for (const auto& c : resp.columns()) {
      if (c.name() == name) {
        EXPECT_EQ(c.type_name(), type) << name;
        EXPECT_NE(c.type_oid(), 0u) << name;
        found = true;
      }
    }
    EXPECT_TRUE(found) << name;
  }
  EXPECT_EQ(resp.command_tag(), "SELECT 1");
  EXPECT_TRUE(resp.has_timings());
}

TEST_F(QueryTest, WritesReportRowsAffectedAndCommandTag) {
  v1::QueryResponse resp;
  ASSERT_TRUE(server_.Query("CREATE TABLE IF NOT EXISTS rt (id int PRIMARY KEY, v text)", &resp).ok());
  ASSERT_TRUE(server_.Query("TRUNCATE rt", &resp).ok());
  v1::QueryRequest ins;
  ins.set_sql("INSERT INTO rt SELECT g, 'v' || g FROM generate_series(1, $1::int) g");
  ins.add_params()->set_int64_value(3);
  resp.Clear();
  ASSERT_TRUE(server_.Query(ins, &resp).ok());
  EXPECT_EQ(resp.rows_affected(), 3);
  EXPECT_EQ(resp.command_tag(), "INSERT 0 3");
  resp.Clear();
  ASSERT_TRUE(server_.Query("SELECT id, v FROM rt ORDER BY id", &resp).ok());
  ASSERT_EQ(resp.rows_size(), 3);
  EXPECT_EQ(resp.rows(2).values(1).string_value(), "v3");
}

struct ErrorCase {
  const char* name;
  const char* sql;
  grpc::StatusCode code;
  const char* sqlstate;
};

// Names the case in test output instead of dumping its bytes.
void PrintTo(const ErrorCase& c, std::ostream* os) { *os << c.name; }

// One statement per row of DESIGN §3 that a statement can produce. Rows
// whose natural cause needs another session or a broken server are raised
// with their exact SQLSTATE through RAISE ... USING ERRCODE.
class ErrorTable : public QueryTest,
                   public ::testing::WithParamInterface<ErrorCase> {};

TEST_P(ErrorTable, MapsToCodeAndKeepsSqlState) {
  v1::QueryResponse resp;
  ASSERT_TRUE(server_.Query(
      "CREATE TABLE IF NOT EXISTS parent (id int PRIMARY KEY);"
      , &resp).ok());
  ASSERT_TRUE(server_.Query(
      "CREATE TABLE IF NOT EXISTS child (id int PRIMARY KEY, "
      "p int REFERENCES parent(id), n int NOT NULL DEFAULT 0 CHECK (n >= 0))",
      &resp).ok());
  ASSERT_TRUE(server_.Query("INSERT INTO child (id) VALUES (1) ON CONFLICT DO NOTHING", &resp).ok());
  ASSERT_TRUE(server_.Query("CREATE SEQUENCE IF NOT EXISTS fresh_seq", &resp).ok());
  const ErrorCase& c = GetParam();
  grpc::Status st = server_.Query(c.sql, &resp);
  EXPECT_EQ(st.error_code(), c.code) << c.sql << ": " << st.error_message();
  EXPECT_EQ(SqlStateOf(st), c.sqlstate) << c.sql;
  EXPECT_FALSE(st.error_message().empty());
  // The connection survived the error.
  resp.Clear();
  EXPECT_TRUE(server_.Query("SELECT 1", &resp).ok());
}

#define RAISE(code) "DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '" code "'; END $$"

INSTANTIATE_TEST_SUITE_P(
    Design, ErrorTable,
    ::testing::Values(
        ErrorCase{"DivisionByZero", "SELECT 1/0", grpc::StatusCode::INVALID_ARGUMENT, "22012"},
        ErrorCase{"BadInteger", "SELECT 'x'::int", grpc::StatusCode::INVALID_ARGUMENT, "22P02"},
        ErrorCase{"Syntax", "SELEC 1", grpc::StatusCode::INVALID_ARGUMENT, "42601"},
        ErrorCase{"UndefinedTable", "SELECT * FROM no_such_table", grpc::StatusCode::INVALID_ARGUMENT, "42P01"},
        ErrorCase{"MultipleStatements", "SELECT 1; SELECT 2", grpc::StatusCode::INVALID_ARGUMENT, "42601"},
        ErrorCase{"FeatureNotSupported", RAISE("0A000"), grpc::StatusCode::INVALID_ARGUMENT, "0A000"},
        ErrorCase{"UniqueViolation", "INSERT INTO child (id) VALUES (1)", grpc::StatusCode::ALREADY_EXISTS, "23505"},
        ErrorCase{"ForeignKey", "INSERT INTO child (id, p) VALUES (2, 99)", grpc::StatusCode::FAILED_PRECONDITION, "23503"},
        ErrorCase{"NotNull", "INSERT INTO child (id, n) VALUES (3, NULL)", grpc::StatusCode::FAILED_PRECONDITION, "23502"},
        ErrorCase{"Check", "INSERT INTO child (id, n) VALUES (4, -1)", grpc::StatusCode::FAILED_PRECONDITION, "23514"},
        ErrorCase{"PrerequisiteState", "SELECT currval('fresh_seq')", grpc::StatusCode::FAILED_PRECONDITION, "55000"},
        ErrorCase{"RaiseException", "DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$", grpc::StatusCode::FAILED_PRECONDITION, "P0001"},
        ErrorCase{"Serialization", RAISE("40001"), grpc::StatusCode::ABORTED, "40001"},
        ErrorCase{"Deadlock", RAISE("40P01"), grpc::StatusCode::ABORTED, "40P01"},
        ErrorCase{"InsufficientPrivilege", RAISE("42501"), grpc::StatusCode::PERMISSION_DENIED, "42501"},
        ErrorCase{"TooManyConnections", RAISE("53300"), grpc::StatusCode::RESOURCE_EXHAUSTED, "53300"},
        ErrorCase{"DataCorrupted", RAISE("XX001"), grpc::StatusCode::DATA_LOSS, "XX001"},
        ErrorCase{"InternalError", RAISE("XX000"), grpc::StatusCode::INTERNAL, "XX000"}),
    [](const ::testing::TestParamInfo<ErrorCase>& info) { return info.param.name; });

TEST(PreparedStatements, RepeatedSqlIsPreparedOnceAndSurvivesDeallocate) {
  // One connection: every call shares one session.
  TestServer server(ServerEnv{{"DB_POOL_MAX_CONNECTIONS", "1"}});
  v1::QueryRequest req;
  req.set_sql("SELECT $1::int + 1 AS next");
  req.add_params()->set_int64_value(41);
  for (int i = 0; i < 3; ++i) {
    v1::QueryResponse resp;
    ASSERT_TRUE(server.Query(req, &resp).ok());
    EXPECT_EQ(resp.rows(0).values(0).int64_value(), 42);
  }
  v1::QueryResponse listed;
  ASSERT_TRUE(server.Query("SELECT count(*) FROM pg_prepared_statements "
                           "WHERE statement = 'SELECT $1::int + 1 AS next'",
                           &listed).ok());
  EXPECT_EQ(listed.rows(0).values(0).int64_value(), 1);
  v1::QueryResponse ignored;
  ASSERT_TRUE(server.Query("DEALLOCATE ALL", &ignored).ok());
  v1::QueryResponse again;
  grpc::Status st = server.Query(req, &again);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(again.rows(0).values(0).int64_value(), 42);
}

TEST_F(QueryTest, ReadOnlyRequestsCannotWrite) {
  v1::QueryResponse resp;
  ASSERT_TRUE(server_.Query("CREATE TABLE IF NOT EXISTS ro (x int)", &resp).ok());
  v1::QueryRequest req;
  req.set_sql("INSERT INTO ro VALUES (1)");
  req.set_read_only(true);
  grpc::Status st = server_.Query(req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(SqlStateOf(st), "25006");
  req.set_sql("SELECT count(*) FROM ro");
  resp.Clear();
  ASSERT_TRUE(server_.Query(req, &resp).ok());
  EXPECT_EQ(resp.rows(0).values(0).int64_value(), 0);
  // Nor can they change the session that the next caller gets.
  req.set_sql("SELECT set_config('application_name', 'changed-by-read-only', false)");
  ASSERT_TRUE(server_.Query(req, &resp).ok());
  EXPECT_EQ(PgCluster::Get().Scalar("SELECT count(*) FROM pg_stat_activity WHERE "
                                    "application_name = 'changed-by-read-only'"),
            "0");
}

TEST_F(QueryTest, StatementTimeoutCancelsOnTheServer) {
  v1::QueryRequest req;
  req.set_sql("SELECT pg_sleep(30)");
  req.mutable_timeout()->set_nanos(300000000);
  v1::QueryResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status st = server_.Query(req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_EQ(SqlStateOf(st), "57014");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  resp.Clear();
  ASSERT_TRUE(server_.Query("SELECT 2", &resp).ok()) << "the connection is reused";
  EXPECT_EQ(server_.pool().Snapshot().connections_closed_total(), 0);
}

TEST_F(QueryTest, ResultLimitsFailWithResourceExhausted) {
  v1::QueryRequest req;
  req.set_sql("SELECT g FROM generate_series(1, 10) g");
  req.set_max_rows(5);
  v1::QueryResponse resp;
  grpc::Status st = server_.Query(req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("max_rows"));
  req.set_max_rows(10);
  EXPECT_TRUE(server_.Query(req, &resp).ok());
  // The fixture caps results at 1 MiB of cell data.
  req.set_sql("SELECT repeat('x', 2 << 20)");
  EXPECT_EQ(server_.Query(req, &resp).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

TEST_F(QueryTest, BadRequestsAreRejectedBeforeTheDatabase) {
  v1::QueryResponse resp;
  EXPECT_EQ(server_.Query("", &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::QueryRequest req;
  req.set_sql("SELECT $1");
  req.add_params()->set_string_value(std::string("a\0b", 3));
  grpc::Status st = server_.Query(req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("NUL"));
  EXPECT_EQ(server_.pool().Snapshot().acquires_immediate +
                server_.pool().Snapshot().acquires_waited,
            0)
      << "no connection was used";
}

TEST_F(QueryTest, UnparsableRequestIsInvalidArgument) {
  // QueryRequest.sql (field 1) holding bytes that are not UTF-8.
  const std::string bad = "SELECT '\xff\xfe'";
  std::string wire = {0x0a, static_cast<char>(bad.size())};
  wire += bad;
  grpc::Slice slice(wire);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::GenericStub generic(
      grpc::CreateChannel(server_.target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  absl::Notification done;
  grpc::Status st;
  generic.UnaryCall(&ctx, "/dbpool.v1.DatabaseService/Query", grpc::StubOptions(),
                    &request, &response, [&](grpc::Status s) {
                      st = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(15)));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("UTF-8"));
  v1::QueryResponse ok;
  EXPECT_TRUE(server_.Query("SELECT 1", &ok).ok()) << "the server is unharmed";
}

TEST_F(QueryTest, TimingsAndTrailingMetadataTellTheWait) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::QueryRequest req;
  req.set_sql("SELECT 1");
  v1::QueryResponse resp;
  ASSERT_TRUE(server_.stub().Query(&ctx, req, &resp).ok());
  const auto& trailers = ctx.GetServerTrailingMetadata();
  EXPECT_EQ(trailers.count("dbpool-acquire-wait-us"), 1u);
  EXPECT_EQ(trailers.count("dbpool-queue-depth"), 1u);
  EXPECT_TRUE(resp.timings().has_execution());
  EXPECT_GT(resp.timings().execution().nanos() + resp.timings().execution().seconds(), 0);
}

TEST_F(QueryTest, PoolConnectionsCarryTheApplicationName) {
  v1::QueryResponse resp;
  ASSERT_TRUE(server_.Query("SELECT current_setting('application_name')", &resp).ok());
  EXPECT_EQ(resp.rows(0).values(0).string_value(), "dbpool-test");
}

TEST_F(QueryTest, HealthAndStatsAgreeWithTheDatabase) {
  const absl::Time serving_by = absl::Now() + absl::Seconds(5);
  while (!server_.pool().Serving() && absl::Now() < serving_by) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  grpc::ClientContext hctx;
  hctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  grpc::health::v1::HealthCheckRequest hreq;
  grpc::health::v1::HealthCheckResponse hresp;
  ASSERT_TRUE(server_.health().Check(&hctx, hreq, &hresp).ok());
  EXPECT_EQ(hresp.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  v1::PoolStats stats;
  const absl::Time end = absl::Now() + absl::Seconds(5);
  do {
    grpc::ClientContext sctx;
    sctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    ASSERT_TRUE(server_.stub().GetPoolStats(&sctx, v1::GetPoolStatsRequest(), &stats).ok());
  } while (stats.connecting_connections() > 0 && absl::Now() < end);
  EXPECT_EQ(stats.max_connections(), 4);
  EXPECT_EQ(stats.total_connections(),
            stats.idle_connections() + stats.active_connections() +
                stats.connecting_connections());
  const std::string backends = PgCluster::Get().Scalar(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dbpool-test'");
  EXPECT_EQ(std::stoi(backends), stats.total_connections() - stats.connecting_connections());
}

}  // namespace
}  // namespace dbpool::testing
