#include "server/rpc/request_validation.h"

#include <optional>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"
#include "server/db/lsn.h"
#include "server/db/sql_state.h"

namespace dbpool::rpc {
namespace {

// The largest google.protobuf.Duration, 10,000 years.
constexpr int64_t kMaxDurationSeconds = 315576000000;

// Whether `d` is a valid google.protobuf.Duration that is not negative.
bool ValidNonNegative(const google::protobuf::Duration& d) {
  return d.seconds() >= 0 && d.nanos() >= 0 && d.nanos() <= 999999999 &&
         d.seconds() <= kMaxDurationSeconds;
}

// Names the statement the way the engine's batch errors do, so that a
// client finds the culprit in one place whoever refused it.
absl::Status StatementError(int index, absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(
      absl::StrCat("statements[", index, "]: ", message));
  google::rpc::ErrorInfo info;
  info.set_reason("INVALID_STATEMENT");
  info.set_domain("dbpool");
  (*info.mutable_metadata())[engine::kStatementIndexKey] = absl::StrCat(index);
  status.SetPayload(db::kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return status;
}

}  // namespace

absl::StatusOr<std::vector<db::EncodedParam>> ValidateQuery(
    const v1::QueryRequest& request, const RequestLimits& limits) {
  const std::string& sql = request.sql();
  if (absl::StripAsciiWhitespace(sql).empty()) {
    return absl::InvalidArgumentError("sql is empty");
  }
  if (sql.size() > static_cast<size_t>(limits.max_sql_bytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("sql is ", sql.size(), " bytes, over the limit of ",
                     limits.max_sql_bytes, " (DBPOOL_MAX_SQL_BYTES)"));
  }
  if (sql.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("sql contains a NUL byte");
  }
  if (request.params_size() > limits.max_params) {
    return absl::InvalidArgumentError(
        absl::StrCat(request.params_size(), " parameters, over the limit of ",
                     limits.max_params, " (DBPOOL_MAX_PARAMS)"));
  }
  if (request.max_rows() < 0) {
    return absl::InvalidArgumentError("max_rows must not be negative");
  }
  if (request.has_timeout() && !ValidNonNegative(request.timeout())) {
    return absl::InvalidArgumentError("timeout must be a positive duration");
  }
  std::vector<db::EncodedParam> params(request.params_size());
  for (int i = 0; i < request.params_size(); ++i) {
    if (absl::Status s = db::EncodeParam(request.params(i), &params[i]); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("parameter $", i + 1, ": ", s.message()));
    }
  }
  return params;
}

absl::StatusOr<std::vector<engine::Statement>> ValidateBatch(
    v1::ExecuteBatchRequest& request, const RequestLimits& limits) {
  const int n = request.statements_size();
  if (n == 0) {
    return absl::InvalidArgumentError("statements is empty: a batch needs at least one");
  }
  if (n > limits.max_batch_statements) {
    return absl::InvalidArgumentError(
        absl::StrCat(n, " statements, over the limit of ", limits.max_batch_statements,
                     " per batch (DBPOOL_MAX_BATCH_STATEMENTS)"));
  }
  std::vector<engine::Statement> statements(n);
  for (int i = 0; i < n; ++i) {
    v1::QueryRequest& r = *request.mutable_statements(i);
    // Ignoring it would run the statement outside the transaction its
    // author meant.
    if (!r.transaction_id().empty() && r.transaction_id() != request.transaction_id()) {
      return StatementError(
          i, "transaction_id differs from the batch's; a batch runs as one unit, "
             "set ExecuteBatchRequest.transaction_id instead");
    }
    auto params = ValidateQuery(r, limits);
    if (!params.ok()) return StatementError(i, params.status().message());
    statements[i].params = *std::move(params);
  }
  // Moved only once all are known good: a refused request stays whole.
  for (int i = 0; i < n; ++i) {
    statements[i].request = std::move(*request.mutable_statements(i));
  }
  return statements;
}

absl::Status ValidateBegin(const v1::BeginTransactionRequest& request) {
  if (!v1::IsolationLevel_IsValid(request.isolation())) {
    return absl::InvalidArgumentError(
        absl::StrCat("isolation ", request.isolation(), " is not an IsolationLevel"));
  }
  if (request.has_idle_timeout() && !ValidNonNegative(request.idle_timeout())) {
    return absl::InvalidArgumentError(
        "idle_timeout must be a valid, non-negative duration");
  }
  return absl::OkStatus();
}

absl::StatusOr<ReadRouting> ValidateRouting(v1::Consistency consistency,
                                            const std::string& min_lsn) {
  if (!v1::Consistency_IsValid(consistency)) {
    return absl::InvalidArgumentError(
        absl::StrCat("consistency ", consistency, " is not a Consistency"));
  }
  ReadRouting routing;
  routing.primary_only = consistency == v1::CONSISTENCY_PRIMARY;
  if (!min_lsn.empty()) {
    std::optional<uint64_t> lsn = db::ParseLsn(min_lsn);
    if (!lsn.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "min_lsn \"", min_lsn.substr(0, 40),
          "\" is not a WAL position; pass a commit_lsn as it was returned (\"X/X\")"));
    }
    routing.min_lsn = *lsn;
  }
  return routing;
}

absl::Status ValidateTransactionId(const std::string& transaction_id) {
  if (transaction_id.empty()) {
    return absl::InvalidArgumentError(
        "transaction_id is empty; use the id BeginTransaction returned");
  }
  return absl::OkStatus();
}

}  // namespace dbpool::rpc
