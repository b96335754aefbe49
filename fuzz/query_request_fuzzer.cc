// A QueryRequest off the wire, as gRPC hands it to the service: validation
// and parameter encoding must reject or accept it without crashing.
#include <cstddef>
#include <cstdint>

#include "dbpool/v1/database_service.pb.h"
#include "server/rpc/request_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dbpool::v1::QueryRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  dbpool::rpc::RequestLimits limits;
  limits.max_sql_bytes = 4096;
  limits.max_params = 64;
  (void)dbpool::rpc::ValidateQuery(request, limits);
  return 0;
}
