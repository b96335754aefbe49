#include "server/rpc/request_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

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
