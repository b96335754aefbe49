#include "server/db/sql_state.h"

#include <gtest/gtest.h>

#include "google/rpc/error_details.pb.h"

namespace dbpool::db {
namespace {

using C = absl::StatusCode;

struct Row {
  const char* sqlstate;
  C code;
};

// DESIGN §3, one row per case.
class SqlStateTable : public ::testing::TestWithParam<Row> {};

TEST_P(SqlStateTable, MapsToCode) {
  EXPECT_EQ(CodeForSqlState(GetParam().sqlstate), GetParam().code)
      << GetParam().sqlstate;
}

INSTANTIATE_TEST_SUITE_P(
    Design, SqlStateTable,
    ::testing::Values(Row{"22012", C::kInvalidArgument},  // division by zero
                      Row{"22P02", C::kInvalidArgument},  // invalid text rep.
                      Row{"42601", C::kInvalidArgument},  // syntax error
                      Row{"42P01", C::kInvalidArgument},  // undefined table
                      Row{"0A000", C::kInvalidArgument},  // not supported
                      Row{"23505", C::kAlreadyExists},
                      Row{"23503", C::kFailedPrecondition},  // foreign key
                      Row{"23502", C::kFailedPrecondition},  // not null
                      Row{"23514", C::kFailedPrecondition},  // check
                      Row{"55P03", C::kFailedPrecondition},  // lock not available
                      Row{"P0001", C::kFailedPrecondition},  // RAISE EXCEPTION
                      Row{"40001", C::kAborted},
                      Row{"40P01", C::kAborted},
                      Row{"42501", C::kPermissionDenied},
                      Row{"25006", C::kPermissionDenied},
                      Row{"28P01", C::kUnavailable},  // the pool's own login
                      Row{"28000", C::kUnavailable},
                      Row{"53300", C::kResourceExhausted},  // too many connections
                      Row{"53100", C::kResourceExhausted},
                      Row{"57014", C::kDeadlineExceeded},
                      Row{"08006", C::kUnavailable},
                      Row{"08P01", C::kInvalidArgument},  // wrong parameter count
                      Row{"08001", C::kUnavailable},
                      Row{"57P01", C::kUnavailable},
                      Row{"57P02", C::kUnavailable},
                      Row{"57P03", C::kUnavailable},
                      Row{"XX001", C::kDataLoss},
                      Row{"XX002", C::kDataLoss},
                      Row{"XX000", C::kInternal},
                      Row{"58030", C::kInternal},
                      Row{"", C::kInternal},
                      Row{"bogus", C::kInternal}));

TEST(SqlError, CarriesErrorInfoWithSqlStateAndFields) {
  absl::Status s = SqlError("23505", "duplicate key value",
                            {{"constraint", "t_pkey"}, {"detail", "Key (id)=(1)"},
                             {"hint", ""}});
  EXPECT_EQ(s.code(), C::kAlreadyExists);
  EXPECT_EQ(s.message(), "duplicate key value");
  EXPECT_EQ(SqlStateOf(s), "23505");
  auto payload = s.GetPayload(kErrorInfoTypeUrl);
  ASSERT_TRUE(payload.has_value());
  google::rpc::ErrorInfo info;
  ASSERT_TRUE(info.ParseFromString(std::string(*payload)));
  EXPECT_EQ(info.domain(), "postgresql");
  EXPECT_EQ(info.metadata().at("constraint"), "t_pkey");
  EXPECT_EQ(info.metadata().count("hint"), 0u) << "empty fields are left out";
}

TEST(SqlError, PlainStatusHasNoSqlState) {
  EXPECT_FALSE(SqlStateOf(absl::InvalidArgumentError("x")).has_value());
}

}  // namespace
}  // namespace dbpool::db
