// Value codec: the one mapping between dbpool.v1.Value and PostgreSQL's
// wire forms, for parameters (Value -> text or binary plus a type OID) and
// for result cells (text form plus type OID -> Value).
//
// Pure functions over a static type table; thread-safe, never blocks.
#ifndef DBPOOL_SERVER_DB_VALUE_CODEC_H_
#define DBPOOL_SERVER_DB_VALUE_CODEC_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "dbpool/v1/database_service.pb.h"

namespace dbpool::db {

using Oid = uint32_t;

// Built-in type OIDs that the mapping names (pg_type.dat).
inline constexpr Oid kBoolOid = 16;
inline constexpr Oid kByteaOid = 17;
inline constexpr Oid kInt8Oid = 20;
inline constexpr Oid kInt2Oid = 21;
inline constexpr Oid kInt4Oid = 23;
inline constexpr Oid kTextOid = 25;
inline constexpr Oid kFloat8Oid = 701;
inline constexpr Oid kTimestampOid = 1114;
inline constexpr Oid kTimestamptzOid = 1184;
inline constexpr Oid kNumericOid = 1700;
inline constexpr Oid kJsonbOid = 3802;
// Lets the server infer the type from the statement.
inline constexpr Oid kUnspecifiedOid = 0;

// One bound parameter in libpq's terms.
struct EncodedParam {
  bool is_null = false;
  std::string data;
  bool binary = false;
  Oid type = kUnspecifiedOid;
};

// Encodes a parameter. INVALID_ARGUMENT for an unknown type hint, a NUL
// byte in text, a kind that cannot carry the hinted type, or a timestamp
// out of range.
absl::Status EncodeParam(const v1::Value& value, EncodedParam* out);

// Decodes one result cell given in PostgreSQL's text form. Types without a
// mapping become their text form in string_value.
absl::Status DecodeCell(Oid type, absl::string_view text, v1::Value* out);

// The type OID for a type hint such as "uuid" or "timestamptz" (aliases
// such as "integer" and "timestamp with time zone" too).
std::optional<Oid> OidForTypeName(absl::string_view name);

// The canonical name of a built-in type, such as "int8"; nullopt for types
// outside the built-in table (their names come from the server).
std::optional<std::string> TypeNameForOid(Oid type);

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_VALUE_CODEC_H_
