// Conversion of internal statuses to gRPC statuses at the RPC edge.
// Every payload of the absl::Status (for example the google.rpc.ErrorInfo
// that carries a SQLSTATE) becomes a google.rpc.Status detail, sent as
// grpc-status-details-bin. Pure function; thread-safe.
#ifndef DBPOOL_SERVER_RPC_STATUS_CONVERSION_H_
#define DBPOOL_SERVER_RPC_STATUS_CONVERSION_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace dbpool::rpc {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_STATUS_CONVERSION_H_
