#include "server/db/lsn.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace dbpool::db {
namespace {

std::optional<uint32_t> Half(absl::string_view hex) {
  if (hex.empty() || hex.size() > 8) return std::nullopt;
  for (char c : hex) {
    if (!absl::ascii_isxdigit(static_cast<unsigned char>(c))) return std::nullopt;
  }
  uint32_t value = 0;
  if (!absl::SimpleHexAtoi(hex, &value)) return std::nullopt;
  return value;
}

}  // namespace

std::optional<uint64_t> ParseLsn(absl::string_view text) {
  const size_t slash = text.find('/');
  if (slash == absl::string_view::npos) return std::nullopt;
  const std::optional<uint32_t> high = Half(text.substr(0, slash));
  const std::optional<uint32_t> low = Half(text.substr(slash + 1));
  if (!high.has_value() || !low.has_value()) return std::nullopt;
  return (uint64_t{*high} << 32) | *low;
}

std::string FormatLsn(uint64_t lsn) {
  return absl::StrFormat("%X/%X", static_cast<uint32_t>(lsn >> 32),
                         static_cast<uint32_t>(lsn));
}

}  // namespace dbpool::db
