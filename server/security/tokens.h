// TokenTable: the bearer tokens that callers present, each mapped to a
// caller name and a role. Loaded once at startup from the file named by
// DBPOOL_AUTH_TOKENS_FILE, one "NAME ROLE TOKEN" per line.
//
// Only SHA-256 digests of the tokens are kept, and a presented token is
// compared with every entry in constant time, so neither the table's
// memory nor the time an answer takes tells a caller how close a guess was.
// Error messages never contain token text.
//
// A plain value, immutable after loading: thread-safe for concurrent
// Authenticate calls. Nothing blocks.
#ifndef DBPOOL_SERVER_SECURITY_TOKENS_H_
#define DBPOOL_SERVER_SECURITY_TOKENS_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dbpool::security {

// What a caller may do. Each role includes the ones before it.
enum class Role {
  kMonitor,    // pool statistics and health
  kReadOnly,   // and queries, each run in a READ ONLY transaction
  kReadWrite,  // and any query
};

absl::string_view RoleName(Role role);

struct Caller {
  std::string name;
  Role role = Role::kReadWrite;
};

class TokenTable {
 public:
  // Tokens shorter than this are refused: they could be guessed.
  static constexpr size_t kMinTokenLength = 16;

  // An empty table: authentication is off.
  TokenTable() = default;

  // Parses the file's text. Blank lines and lines starting with '#' are
  // skipped. Every problem is reported at once, by line number.
  static absl::StatusOr<TokenTable> Parse(absl::string_view text);
  // Reads and parses `path`.
  static absl::StatusOr<TokenTable> Load(const std::string& path);

  bool empty() const { return entries_.empty(); }
  size_t size() const { return entries_.size(); }

  // `authorization` is the value of the caller's authorization header or
  // metadata, nullopt when it sent none. UNAUTHENTICATED unless it is
  // "Bearer <token>" with a known token.
  absl::StatusOr<Caller> Authenticate(
      std::optional<absl::string_view> authorization) const;

 private:
  using Digest = std::array<uint8_t, 32>;
  struct Entry {
    Digest digest;
    Caller caller;
  };
  static Digest Sha256(absl::string_view text);

  std::vector<Entry> entries_;
};

}  // namespace dbpool::security

#endif  // DBPOOL_SERVER_SECURITY_TOKENS_H_
