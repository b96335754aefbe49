// Bad requests through gRPC: each gets INVALID_ARGUMENT (or the code its
// row names) with a message that says what is wrong, and the server stays
// healthy afterwards.
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using ::testing::HasSubstr;

struct BadRequest {
  const char* name;
  v1::QueryRequest request;
  grpc::StatusCode code;
  const char* message;  // a part of the error message
};

v1::QueryRequest Sql(const std::string& sql) {
  v1::QueryRequest r;
  r.set_sql(sql);
  return r;
}

std::vector<BadRequest> Cases() {
  std::vector<BadRequest> cases;
  cases.push_back({"Empty", Sql(""), grpc::StatusCode::INVALID_ARGUMENT, "empty"});
  cases.push_back({"Blank", Sql(" \n\t "), grpc::StatusCode::INVALID_ARGUMENT, "empty"});
  cases.push_back({"Oversized", Sql("SELECT '" + std::string(5000, 'x') + "'"),
                   grpc::StatusCode::INVALID_ARGUMENT, "DBPOOL_MAX_SQL_BYTES"});
  cases.push_back({"NulInSql", Sql(std::string("SELECT 1\0--", 11)),
                   grpc::StatusCode::INVALID_ARGUMENT, "NUL"});
  cases.push_back({"MultiStatement", Sql("SELECT 1; SELECT 2"),
                   grpc::StatusCode::INVALID_ARGUMENT, "multiple commands"});
  {
    v1::QueryRequest r = Sql("SELECT $1");
    for (int i = 0; i < 11; ++i) r.add_params()->set_int64_value(i);
    cases.push_back({"TooManyParams", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "DBPOOL_MAX_PARAMS"});
  }
  {
    v1::QueryRequest r = Sql("SELECT $1::int");
    cases.push_back({"MissingParam", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "supplies 0 parameters"});
  }
  {
    v1::QueryRequest r = Sql("SELECT $1");
    r.add_params()->set_string_value("abc");
    r.mutable_params(0)->set_type_hint("int4");
    cases.push_back({"MistypedParam", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "invalid input syntax"});
  }
  {
    v1::QueryRequest r = Sql("SELECT $1");
    r.add_params()->set_string_value("x");
    r.mutable_params(0)->set_type_hint("varchar(10); DROP TABLE x");
    cases.push_back({"UnknownTypeHint", r, grpc::StatusCode::INVALID_ARGUMENT,
                     "unknown type_hint"});
  }
  {
    v1::QueryRequest r = Sql("SELECT $1::text");
    r.add_params()->set_string_value(std::string("a\0b", 3));
    cases.push_back({"NulInParam", r, grpc::StatusCode::INVALID_ARGUMENT, "NUL"});
  }
  {
    v1::QueryRequest r = Sql("SELECT 1");
    r.set_max_rows(-5);
    cases.push_back({"NegativeMaxRows", r, grpc::StatusCode::INVALID_ARGUMENT, "max_rows"});
  }
  {
    v1::QueryRequest r = Sql("SELECT g FROM generate_series(1, 2000) g");
    r.set_max_rows(int64_t{1} << 40);  // the server's own cap still holds
    cases.push_back({"HugeMaxRows", r, grpc::StatusCode::RESOURCE_EXHAUSTED, "rows"});
  }
  {
    v1::QueryRequest r = Sql("SELECT 1");
    r.mutable_timeout()->set_seconds(-1);
    cases.push_back({"NegativeTimeout", r, grpc::StatusCode::INVALID_ARGUMENT, "timeout"});
  }
  cases.push_back({"CopyProtocol", Sql("COPY (SELECT 1) TO STDOUT"),
                   grpc::StatusCode::INVALID_ARGUMENT, "not supported"});
  return cases;
}

TEST(BadInput, EveryCaseIsRejectedClearlyAndTheServerStaysHealthy) {
  TestServer server({{"DB_POOL_MAX_CONNECTIONS", "2"},
                     {"DBPOOL_MAX_SQL_BYTES", "4096"},
                     {"DBPOOL_MAX_PARAMS", "10"},
                     {"DBPOOL_MAX_ROWS", "1000"}});
  for (const BadRequest& c : Cases()) {
    v1::QueryResponse resp;
    grpc::Status st = server.Query(c.request, &resp);
    EXPECT_EQ(st.error_code(), c.code) << c.name << ": " << st.error_message();
    EXPECT_THAT(st.error_message(), HasSubstr(c.message)) << c.name;
  }
  v1::QueryResponse resp;
  ASSERT_TRUE(server.Query("SELECT 1", &resp).ok());
  const auto stats = server.pool().Snapshot();
  EXPECT_EQ(stats.connections_closed[static_cast<int>(pool::CloseReason::kBroken)], 1)
      << "only COPY, which leaves the session in the COPY sub-protocol, costs a "
         "connection";
}

}  // namespace
}  // namespace dbpool::testing
