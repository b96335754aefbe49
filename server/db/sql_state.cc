#include "server/db/sql_state.h"

#include "absl/strings/str_cat.h"
#include "google/rpc/error_details.pb.h"

namespace dbpool::db {

absl::StatusCode CodeForSqlState(absl::string_view s) {
  using C = absl::StatusCode;
  if (s.size() != 5) return C::kInternal;
  // Exact codes first, then classes.
  if (s == "23505") return C::kAlreadyExists;
  if (s == "40001" || s == "40P01") return C::kAborted;
  if (s == "42501" || s == "25006") return C::kPermissionDenied;
  if (s == "57014") return C::kDeadlineExceeded;
  if (s == "57P01" || s == "57P02" || s == "57P03") return C::kUnavailable;
  if (s == "XX001" || s == "XX002") return C::kDataLoss;
  if (s == "P0001") return C::kFailedPrecondition;
  // The only protocol violation a well-behaved client provokes is a
  // parameter count that does not match the statement's: the caller's error.
  if (s == "08P01") return C::kInvalidArgument;
  const absl::string_view cls = s.substr(0, 2);
  if (cls == "22" || cls == "42" || cls == "0A") return C::kInvalidArgument;
  if (cls == "23" || cls == "55") return C::kFailedPrecondition;
  // The pool authenticates with its own credentials, so a class 28 error is
  // the service's problem, not the caller's.
  if (cls == "28") return C::kUnavailable;
  if (cls == "53") return C::kResourceExhausted;
  if (cls == "08") return C::kUnavailable;
  if (cls == "40") return C::kAborted;
  return C::kInternal;
}

absl::Status SqlError(absl::string_view sqlstate, absl::string_view message,
                      const std::map<std::string, std::string>& fields) {
  absl::Status status(CodeForSqlState(sqlstate), message);
  google::rpc::ErrorInfo info;
  info.set_reason(std::string(sqlstate));
  info.set_domain(std::string(kPostgresDomain));
  for (const auto& [key, value] : fields) {
    if (!value.empty()) (*info.mutable_metadata())[key] = value;
  }
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return status;
}

absl::Status DbpoolError(absl::StatusCode code, absl::string_view reason,
                         absl::string_view message,
                         const std::map<std::string, std::string>& metadata) {
  absl::Status status(code, message);
  google::rpc::ErrorInfo info;
  info.set_reason(std::string(reason));
  info.set_domain(std::string(kDbpoolDomain));
  for (const auto& [key, value] : metadata) (*info.mutable_metadata())[key] = value;
  status.SetPayload(kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return status;
}

absl::Status WithStatementIndex(const absl::Status& status, int index) {
  absl::Status out(status.code(),
                   absl::StrCat("statement ", index, " of the batch: ", status.message()));
  google::rpc::ErrorInfo info;
  const auto payload = status.GetPayload(kErrorInfoTypeUrl);
  if (!payload.has_value() || !info.ParseFromString(std::string(*payload))) {
    info.Clear();
    info.set_reason("BATCH_STATEMENT_FAILED");
    info.set_domain(std::string(kDbpoolDomain));
  }
  (*info.mutable_metadata())[kStatementIndexKey] = absl::StrCat(index);
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& value) {
    out.SetPayload(url, value);
  });
  out.SetPayload(kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  return out;
}

std::optional<std::string> SqlStateOf(const absl::Status& status) {
  const auto payload = status.GetPayload(kErrorInfoTypeUrl);
  if (!payload.has_value()) return std::nullopt;
  google::rpc::ErrorInfo info;
  if (!info.ParseFromString(std::string(*payload)) ||
      info.domain() != kPostgresDomain) {
    return std::nullopt;
  }
  return info.reason();
}

}  // namespace dbpool::db
