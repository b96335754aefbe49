#include "server/rpc/request_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/db/sql_state.h"
#include "server/rpc/status_conversion.h"

namespace dbpool::rpc {
namespace {

using ::testing::HasSubstr;

absl::Status Check(const v1::QueryRequest& r, RequestLimits limits = {}) {
  return ValidateQuery(r, limits).status();
}

TEST(ValidateQuery, AcceptsAnOrdinaryRequest) {
  v1::QueryRequest r;
  r.set_sql("SELECT $1");
  r.add_params()->set_int64_value(1);
  auto params = ValidateQuery(r, {});
  ASSERT_TRUE(params.ok());
  EXPECT_EQ(params->size(), 1u);
}

TEST(ValidateQuery, RejectsBadRequestsWithClearMessages) {
  v1::QueryRequest r;
  EXPECT_THAT(std::string(Check(r).message()), HasSubstr("empty"));
  r.set_sql("  \n\t");
  EXPECT_THAT(std::string(Check(r).message()), HasSubstr("empty"));
  r.set_sql(std::string("SELECT 1\0", 9));
  EXPECT_THAT(std::string(Check(r).message()), HasSubstr("NUL"));
  r.set_sql("SELECT 1234567890");
  EXPECT_THAT(std::string(Check(r, {.max_sql_bytes = 10, .max_params = 5}).message()),
              HasSubstr("DBPOOL_MAX_SQL_BYTES"));
  r.set_sql("SELECT 1");
  for (int i = 0; i < 3; ++i) r.add_params()->set_int64_value(i);
  EXPECT_THAT(std::string(Check(r, {.max_sql_bytes = 100, .max_params = 2}).message()),
              HasSubstr("DBPOOL_MAX_PARAMS"));
  r.clear_params();
  r.set_max_rows(-1);
  EXPECT_THAT(std::string(Check(r).message()), HasSubstr("max_rows"));
  r.set_max_rows(0);
  r.mutable_timeout()->set_seconds(-1);
  EXPECT_THAT(std::string(Check(r).message()), HasSubstr("timeout"));
  r.clear_timeout();
  r.add_params()->set_string_value("x");
  r.add_params()->set_type_hint("nope");
  absl::Status s = Check(r);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("parameter $2"));
}

TEST(ValidateBatch, ChecksEveryStatementAndTheSize) {
  RequestLimits limits;
  limits.max_batch_statements = 2;
  v1::ExecuteBatchRequest r;
  EXPECT_THAT(std::string(ValidateBatch(r, limits).status().message()), HasSubstr("empty"));
  r.add_statements()->set_sql("SELECT $1");
  r.mutable_statements(0)->add_params()->set_int64_value(7);
  r.add_statements()->set_sql("SELECT 2");
  v1::ExecuteBatchRequest consumed = r;  // a valid batch is moved out
  auto ok = ValidateBatch(consumed, limits);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 2u);
  EXPECT_EQ((*ok)[0].request.sql(), "SELECT $1");
  EXPECT_EQ((*ok)[0].params.size(), 1u);
  EXPECT_EQ((*ok)[1].request.sql(), "SELECT 2");

  r.add_statements()->set_sql("SELECT 3");
  EXPECT_THAT(std::string(ValidateBatch(r, limits).status().message()),
              HasSubstr("DBPOOL_MAX_BATCH_STATEMENTS"));
  limits.max_batch_statements = 10;
  r.mutable_statements(2)->set_sql("");
  absl::Status bad = ValidateBatch(r, limits).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad.message()), HasSubstr("statements[2]: sql is empty"));
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(info.ParseFromString(std::string(*bad.GetPayload(db::kErrorInfoTypeUrl))));
  EXPECT_EQ(info.metadata().at(engine::kStatementIndexKey), "2");
  EXPECT_FALSE(db::SqlStateOf(bad).has_value()) << "not PostgreSQL's error";
}

TEST(ValidateBegin, RefusesUnknownIsolationAndBadIdleTimeouts) {
  v1::BeginTransactionRequest r;
  EXPECT_TRUE(ValidateBegin(r).ok());
  r.set_isolation(v1::ISOLATION_LEVEL_REPEATABLE_READ);
  *r.mutable_idle_timeout() = google::protobuf::Duration();
  EXPECT_TRUE(ValidateBegin(r).ok()) << "zero: the server's default";
  r.set_isolation(static_cast<v1::IsolationLevel>(-1));
  EXPECT_THAT(std::string(ValidateBegin(r).message()), HasSubstr("isolation"));
  r.set_isolation(v1::ISOLATION_LEVEL_READ_COMMITTED);
  r.mutable_idle_timeout()->set_nanos(-5);
  EXPECT_THAT(std::string(ValidateBegin(r).message()), HasSubstr("idle_timeout"));
  EXPECT_FALSE(ValidateTransactionId("").ok());
  EXPECT_TRUE(ValidateTransactionId("tx").ok());
}

TEST(ToGrpcStatus, CarriesPayloadsAsStatusDetails) {
  grpc::Status g = ToGrpcStatus(db::SqlError("40001", "could not serialize"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::ABORTED);
  EXPECT_EQ(g.error_message(), "could not serialize");
  google::rpc::Status details;
  ASSERT_TRUE(details.ParseFromString(g.error_details()));
  EXPECT_EQ(details.code(), static_cast<int>(grpc::StatusCode::ABORTED));
  ASSERT_EQ(details.details_size(), 1);
  EXPECT_EQ(details.details(0).type_url(), db::kErrorInfoTypeUrl);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

}  // namespace
}  // namespace dbpool::rpc
