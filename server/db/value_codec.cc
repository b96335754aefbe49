#include "server/db/value_codec.h"

#include <cmath>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/civil_time.h"
#include "absl/time/time.h"

namespace dbpool::db {
namespace {

// How a result cell of a type is carried in a Value.
enum class Kind { kBool, kInt, kDouble, kDecimal, kString, kBytes, kTimestamp, kJson };

struct TypeInfo {
  Oid oid;
  const char* name;
  Kind kind;
};

// The one type table: result mapping, hint names and column type names.
constexpr TypeInfo kTypes[] = {
    {16, "bool", Kind::kBool},
    {17, "bytea", Kind::kBytes},
    {18, "char", Kind::kString},
    {19, "name", Kind::kString},
    {20, "int8", Kind::kInt},
    {21, "int2", Kind::kInt},
    {23, "int4", Kind::kInt},
    {25, "text", Kind::kString},
    {26, "oid", Kind::kInt},
    {114, "json", Kind::kJson},
    {142, "xml", Kind::kString},
    {650, "cidr", Kind::kString},
    {700, "float4", Kind::kDouble},
    {701, "float8", Kind::kDouble},
    {790, "money", Kind::kString},
    {829, "macaddr", Kind::kString},
    {869, "inet", Kind::kString},
    {1042, "bpchar", Kind::kString},
    {1043, "varchar", Kind::kString},
    {1082, "date", Kind::kString},
    {1083, "time", Kind::kString},
    {1114, "timestamp", Kind::kTimestamp},
    {1184, "timestamptz", Kind::kTimestamp},
    {1186, "interval", Kind::kString},
    {1266, "timetz", Kind::kString},
    {1560, "bit", Kind::kString},
    {1562, "varbit", Kind::kString},
    {1700, "numeric", Kind::kDecimal},
    {2950, "uuid", Kind::kString},
    {3614, "tsvector", Kind::kString},
    {3802, "jsonb", Kind::kJson},
    {4072, "jsonpath", Kind::kString},
};

// SQL spellings accepted as type hints besides the canonical names.
constexpr std::pair<const char*, const char*> kAliases[] = {
    {"boolean", "bool"},
    {"smallint", "int2"},
    {"integer", "int4"},
    {"int", "int4"},
    {"bigint", "int8"},
    {"real", "float4"},
    {"double precision", "float8"},
    {"decimal", "numeric"},
    {"character varying", "varchar"},
    {"character", "bpchar"},
    {"timestamp without time zone", "timestamp"},
    {"timestamp with time zone", "timestamptz"},
    {"time without time zone", "time"},
    {"time with time zone", "timetz"},
};

const TypeInfo* FindType(Oid oid) {
  for (const auto& t : kTypes) {
    if (t.oid == oid) return &t;
  }
  return nullptr;
}

absl::Status CheckText(absl::string_view s) {
  if (s.find('\0') != absl::string_view::npos) {
    return absl::InvalidArgumentError(
        "text parameters must not contain NUL bytes; send binary data as "
        "bytes_value");
  }
  return absl::OkStatus();
}

std::string FormatDouble(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return absl::StrFormat("%.17g", d);
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// bytea_output = hex (the default since 9.0): "\x" then two digits a byte.
absl::Status DecodeBytea(absl::string_view text, std::string* out) {
  if (text.size() < 2 || text[0] != '\\' || text[1] != 'x' || text.size() % 2) {
    return absl::InternalError("bytea value is not in hex format");
  }
  out->resize((text.size() - 2) / 2);
  for (size_t i = 2, j = 0; i < text.size(); i += 2, ++j) {
    const int hi = HexDigit(text[i]);
    const int lo = HexDigit(text[i + 1]);
    if (hi < 0 || lo < 0) return absl::InternalError("bad hex digit in bytea");
    (*out)[j] = static_cast<char>(hi << 4 | lo);
  }
  return absl::OkStatus();
}

// Parses the ISO form that the pool's sessions use (DateStyle=ISO,
// TimeZone=UTC): "2024-05-06 07:08:09.123456+00" or, for timestamp, no
// offset. Returns nullopt for forms a Timestamp cannot hold (infinity, BC,
// years past 9999) so that they travel as text.
// Reads `n` decimal digits at `pos`; -1 if any is not a digit.
int Digits(absl::string_view s, size_t pos, size_t n) {
  if (pos + n > s.size()) return -1;
  int v = 0;
  for (size_t i = pos; i < pos + n; ++i) {
    if (!absl::ascii_isdigit(s[i])) return -1;
    v = v * 10 + (s[i] - '0');
  }
  return v;
}

std::optional<absl::Time> ParseTimestamp(absl::string_view text) {
  // Fixed layout "YYYY-MM-DD HH:MM:SS"; this runs once per result cell.
  if (text.size() < 19 || text[4] != '-' || text[7] != '-' || text[10] != ' ' ||
      text[13] != ':' || text[16] != ':') {
    return std::nullopt;
  }
  const int y = Digits(text, 0, 4), mo = Digits(text, 5, 2), d = Digits(text, 8, 2);
  const int h = Digits(text, 11, 2), mi = Digits(text, 14, 2), s = Digits(text, 17, 2);
  if (y < 0 || mo < 0 || d < 0 || h < 0 || mi < 0 || s < 0) return std::nullopt;
  absl::string_view rest = text.substr(19);
  int64_t micros = 0;
  if (!rest.empty() && rest[0] == '.') {
    size_t n = 1;
    int64_t scale = 100000;
    while (n < rest.size() && absl::ascii_isdigit(rest[n])) {
      micros += (rest[n] - '0') * scale;
      scale /= 10;
      ++n;
    }
    rest.remove_prefix(n);
  }
  int offset_seconds = 0;
  if (!rest.empty() && (rest[0] == '+' || rest[0] == '-')) {
    const int sign = rest[0] == '-' ? -1 : 1;
    // "+HH", "+HH:MM" or "+HH:MM:SS"
    const int oh = Digits(rest, 1, 2);
    if (oh < 0) return std::nullopt;
    int om = 0, os = 0;
    size_t used = 3;
    if (rest.size() >= 6 && rest[3] == ':') {
      om = Digits(rest, 4, 2);
      used = 6;
      if (rest.size() >= 9 && rest[6] == ':') {
        os = Digits(rest, 7, 2);
        used = 9;
      }
    }
    if (om < 0 || os < 0) return std::nullopt;
    offset_seconds = sign * (oh * 3600 + om * 60 + os);
    rest.remove_prefix(used);
  }
  if (!rest.empty()) return std::nullopt;  // " BC" and anything unexpected
  const absl::Time t = absl::FromCivil(absl::CivilSecond(y, mo, d, h, mi, s),
                                       absl::UTCTimeZone());
  return t + absl::Microseconds(micros) - absl::Seconds(offset_seconds);
}

}  // namespace

std::optional<Oid> OidForTypeName(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  std::string_view canonical = lower;
  for (const auto& [alias, target] : kAliases) {
    if (lower == alias) canonical = target;
  }
  for (const auto& t : kTypes) {
    if (canonical == t.name) return t.oid;
  }
  return std::nullopt;
}

std::optional<std::string> TypeNameForOid(Oid type) {
  if (const TypeInfo* t = FindType(type)) return std::string(t->name);
  return std::nullopt;
}

absl::Status EncodeParam(const v1::Value& value, EncodedParam* out) {
  *out = EncodedParam{};
  Oid natural = kUnspecifiedOid;
  switch (value.kind_case()) {
    case v1::Value::KIND_NOT_SET:
    case v1::Value::kNullValue:
      out->is_null = true;
      break;
    case v1::Value::kBoolValue:
      out->data = value.bool_value() ? "t" : "f";
      natural = kBoolOid;
      break;
    case v1::Value::kInt64Value:
      out->data = absl::StrCat(value.int64_value());
      natural = kInt8Oid;
      break;
    case v1::Value::kDoubleValue:
      out->data = FormatDouble(value.double_value());
      natural = kFloat8Oid;
      break;
    case v1::Value::kStringValue:
      if (absl::Status s = CheckText(value.string_value()); !s.ok()) return s;
      out->data = value.string_value();
      // Unknown lets one string bind to any column type (uuid, enum, date).
      natural = kUnspecifiedOid;
      break;
    case v1::Value::kBytesValue:
      out->data = value.bytes_value();
      out->binary = true;
      natural = kByteaOid;
      break;
    case v1::Value::kTimestampValue: {
      const auto& ts = value.timestamp_value();
      // 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59Z, as google.protobuf.Timestamp defines.
      constexpr int64_t kMinSeconds = -62135596800;
      constexpr int64_t kMaxSeconds = 253402300799;
      if (ts.seconds() < kMinSeconds || ts.seconds() > kMaxSeconds ||
          ts.nanos() < 0 || ts.nanos() > 999999999) {
        return absl::InvalidArgumentError(
            "timestamp_value is outside 0001-01-01 .. 9999-12-31 or has "
            "nanos outside [0, 1e9)");
      }
      out->data = absl::FormatTime(
          "%Y-%m-%dT%H:%M:%E6SZ",
          absl::FromUnixSeconds(ts.seconds()) + absl::Nanoseconds(ts.nanos()),
          absl::UTCTimeZone());
      natural = kTimestamptzOid;
      break;
    }
    case v1::Value::kDecimalValue:
      if (absl::Status s = CheckText(value.decimal_value()); !s.ok()) return s;
      out->data = value.decimal_value();
      natural = kNumericOid;
      break;
    case v1::Value::kJsonValue:
      if (absl::Status s = CheckText(value.json_value()); !s.ok()) return s;
      out->data = value.json_value();
      natural = kJsonbOid;
      break;
  }
  out->type = natural;
  if (!value.type_hint().empty()) {
    const std::optional<Oid> hinted = OidForTypeName(value.type_hint());
    if (!hinted.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unknown type_hint \"", value.type_hint(),
          "\"; use a built-in type name such as uuid, jsonb, numeric, "
          "timestamptz, int4 or text"));
    }
    if (out->binary && *hinted != kByteaOid) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bytes_value can only bind as bytea, not as ", value.type_hint()));
    }
    out->type = *hinted;
  }
  return absl::OkStatus();
}

absl::Status DecodeCell(Oid type, absl::string_view text, v1::Value* out) {
  const TypeInfo* info = FindType(type);
  const Kind kind = info != nullptr ? info->kind : Kind::kString;
  switch (kind) {
    case Kind::kBool:
      out->set_bool_value(text == "t");
      return absl::OkStatus();
    case Kind::kInt: {
      int64_t n = 0;
      if (!absl::SimpleAtoi(text, &n)) {
        return absl::InternalError(absl::StrCat("bad integer from server: ", text));
      }
      out->set_int64_value(n);
      return absl::OkStatus();
    }
    case Kind::kDouble: {
      double d = 0;
      if (text == "NaN") {
        d = std::numeric_limits<double>::quiet_NaN();
      } else if (text == "Infinity") {
        d = std::numeric_limits<double>::infinity();
      } else if (text == "-Infinity") {
        d = -std::numeric_limits<double>::infinity();
      } else if (!absl::SimpleAtod(text, &d)) {
        return absl::InternalError(absl::StrCat("bad float from server: ", text));
      }
      out->set_double_value(d);
      return absl::OkStatus();
    }
    case Kind::kDecimal:
      out->set_decimal_value(std::string(text));
      return absl::OkStatus();
    case Kind::kBytes:
      return DecodeBytea(text, out->mutable_bytes_value());
    case Kind::kTimestamp:
      if (const auto t = ParseTimestamp(text)) {
        const absl::Duration since_epoch = *t - absl::UnixEpoch();
        const int64_t seconds =
            absl::ToInt64Seconds(absl::Floor(since_epoch, absl::Seconds(1)));
        auto* ts = out->mutable_timestamp_value();
        ts->set_seconds(seconds);
        ts->set_nanos(static_cast<int32_t>(absl::ToInt64Nanoseconds(
            since_epoch - absl::Seconds(seconds))));
      } else {
        out->set_string_value(std::string(text));
      }
      return absl::OkStatus();
    case Kind::kJson:
      out->set_json_value(std::string(text));
      return absl::OkStatus();
    case Kind::kString:
      out->set_string_value(std::string(text));
      return absl::OkStatus();
  }
  return absl::InternalError("unreachable type kind");
}

}  // namespace dbpool::db
