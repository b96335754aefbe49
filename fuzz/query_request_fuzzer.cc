// A request off the wire, as gRPC hands it to the service: validation and
// parameter encoding must reject or accept it without crashing. The same
// bytes are tried as a QueryRequest, an ExecuteBatchRequest and a
// BeginTransactionRequest.
#include <cstddef>
#include <cstdint>

#include "dbpool/v1/database_service.pb.h"
#include "server/rpc/request_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dbpool::rpc::RequestLimits limits;
  limits.max_sql_bytes = 4096;
  limits.max_params = 64;
  limits.max_batch_statements = 16;
  dbpool::v1::QueryRequest request;
  if (request.ParseFromArray(data, static_cast<int>(size))) {
    (void)dbpool::rpc::ValidateQuery(request, limits);
  }
  dbpool::v1::ExecuteBatchRequest batch;
  if (batch.ParseFromArray(data, static_cast<int>(size))) {
    (void)dbpool::rpc::ValidateBatch(batch, limits);
  }
  dbpool::v1::BeginTransactionRequest begin;
  if (begin.ParseFromArray(data, static_cast<int>(size))) {
    (void)dbpool::rpc::ValidateBegin(begin);
  }
  return 0;
}
