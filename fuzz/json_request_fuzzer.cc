// A POST /v1/query body: the gateway's JSON-to-request step (protobuf's
// JSON mapping) followed by validation.
#include <cstddef>
#include <cstdint>
#include <string>

#include <google/protobuf/util/json_util.h>

#include "dbpool/v1/database_service.pb.h"
#include "server/rpc/request_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  dbpool::v1::QueryRequest request;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = false;
  if (!google::protobuf::util::JsonStringToMessage(body, &request, options).ok()) {
    return 0;
  }
  (void)dbpool::rpc::ValidateQuery(request, dbpool::rpc::RequestLimits{});
  return 0;
}
