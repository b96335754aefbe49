// Result cells as the server could send them, for every mapped type: the
// first byte picks the type, the rest is the text form.
#include <cstddef>
#include <cstdint>

#include "server/db/value_codec.h"

namespace {

constexpr dbpool::db::Oid kTypes[] = {16,  17,   20,   21,   23,   25,   26,  114,
                                      700, 701, 1082, 1114, 1184, 1700, 2950, 3802};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const dbpool::db::Oid type = kTypes[data[0] % std::size(kTypes)];
  const absl::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  dbpool::v1::Value value;
  (void)dbpool::db::DecodeCell(type, text, &value);
  // Whatever decoded must encode back without trouble.
  dbpool::db::EncodedParam param;
  (void)dbpool::db::EncodeParam(value, &param);
  return 0;
}
