// Status propagation macros, named as abseil names them so they can be
// replaced by absl/status/status_macros.h once the toolchain has it.
// Header-only; no state, no blocking.
#ifndef DBPOOL_SERVER_COMMON_STATUS_MACROS_H_
#define DBPOOL_SERVER_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define DBPOOL_CONCAT_INNER_(a, b) a##b
#define DBPOOL_CONCAT_(a, b) DBPOOL_CONCAT_INNER_(a, b)

// Returns from the current function when `expr` is not OK.
#define RETURN_IF_ERROR(expr)                 \
  do {                                        \
    ::absl::Status dbpool_status_ = (expr);   \
    if (!dbpool_status_.ok()) return dbpool_status_; \
  } while (false)

// Declares `lhs` from a StatusOr, returning its status when not OK.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(DBPOOL_CONCAT_(dbpool_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return tmp.status();          \
  lhs = std::move(tmp).value()

#endif  // DBPOOL_SERVER_COMMON_STATUS_MACROS_H_
