// WAL positions (PostgreSQL's pg_lsn) as the read-your-writes tokens carry
// them: "X/X", two hexadecimal halves of a 64-bit position. Pure functions;
// thread-safe.
#ifndef DBPOOL_SERVER_DB_LSN_H_
#define DBPOOL_SERVER_DB_LSN_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace dbpool::db {

// The position `text` names, as PostgreSQL's pg_lsn input accepts it
// (1 to 8 hex digits on each side of the slash); nullopt otherwise.
std::optional<uint64_t> ParseLsn(absl::string_view text);

// `lsn` as PostgreSQL prints a pg_lsn ("16/B374D848").
std::string FormatLsn(uint64_t lsn);

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_LSN_H_
