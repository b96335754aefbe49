#include "server/rpc/request_validation.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace dbpool::rpc {

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
  if (request.has_timeout()) {
    const auto& t = request.timeout();
    if (t.seconds() < 0 || t.nanos() < 0 || t.nanos() > 999999999 ||
        t.seconds() > 315576000000) {
      return absl::InvalidArgumentError("timeout must be a positive duration");
    }
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

}  // namespace dbpool::rpc
