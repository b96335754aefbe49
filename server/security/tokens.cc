#include "server/security/tokens.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace dbpool::security {
namespace {

std::optional<Role> ParseRole(absl::string_view name) {
  for (Role role : {Role::kMonitor, Role::kReadOnly, Role::kReadWrite}) {
    if (RoleName(role) == name) return role;
  }
  return std::nullopt;
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kMonitor:
      return "monitor";
    case Role::kReadOnly:
      return "read_only";
    case Role::kReadWrite:
      return "read_write";
  }
  return "unknown";
}

TokenTable::Digest TokenTable::Sha256(absl::string_view text) {
  Digest digest;
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(),
         digest.data());
  return digest;
}

absl::StatusOr<TokenTable> TokenTable::Parse(absl::string_view text) {
  TokenTable table;
  std::vector<std::string> problems;
  absl::flat_hash_set<std::string> names;
  absl::flat_hash_set<std::string> digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || absl::StartsWith(line, "#")) continue;
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    const std::string where = absl::StrCat("line ", line_number, ": ");
    if (fields.size() != 3) {
      problems.push_back(absl::StrCat(where, "want NAME ROLE TOKEN, found ",
                                      fields.size(), " fields"));
      continue;
    }
    const std::optional<Role> role = ParseRole(fields[1]);
    if (!role.has_value()) {
      problems.push_back(absl::StrCat(where, "role \"", fields[1],
                                      "\" is not one of monitor, read_only, "
                                      "read_write"));
    }
    if (fields[2].size() < kMinTokenLength) {
      problems.push_back(absl::StrCat(where, "the token of \"", fields[0],
                                      "\" is shorter than ", kMinTokenLength,
                                      " characters"));
    }
    if (!names.insert(std::string(fields[0])).second) {
      problems.push_back(absl::StrCat(where, "name \"", fields[0],
                                      "\" appears twice"));
    }
    const Digest digest = Sha256(fields[2]);
    if (!digests.insert(std::string(digest.begin(), digest.end())).second) {
      problems.push_back(absl::StrCat(where, "the token of \"", fields[0],
                                      "\" is also another caller's"));
    }
    if (role.has_value()) {
      table.entries_.push_back({digest, Caller{std::string(fields[0]), *role}});
    }
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
  }
  if (table.entries_.empty()) {
    // An empty file would silently turn authentication off.
    return absl::InvalidArgumentError("no tokens in the file");
  }
  return table;
}

absl::StatusOr<TokenTable> TokenTable::Load(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << file.rdbuf();
  absl::StatusOr<TokenTable> table = Parse(text.str());
  if (!table.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", table.status().message()));
  }
  return table;
}

absl::StatusOr<Caller> TokenTable::Authenticate(
    std::optional<absl::string_view> authorization) const {
  if (!authorization.has_value()) {
    return absl::UnauthenticatedError(
        "this server needs a bearer token: send \"authorization: Bearer "
        "<token>\"");
  }
  absl::string_view token = *authorization;
  // The scheme is case-insensitive (RFC 7235).
  if (token.size() < 7 || !absl::EqualsIgnoreCase(token.substr(0, 7), "Bearer ")) {
    return absl::UnauthenticatedError(
        "the authorization value is not \"Bearer <token>\"");
  }
  token = absl::StripAsciiWhitespace(token.substr(7));
  const Digest presented = Sha256(token);
  const Entry* match = nullptr;
  // Every entry is compared, so the time taken does not depend on where
  // (or whether) the token is found.
  for (const Entry& e : entries_) {
    const bool same =
        CRYPTO_memcmp(e.digest.data(), presented.data(), presented.size()) == 0;
    if (same) match = &e;
  }
  if (match == nullptr) return absl::UnauthenticatedError("unknown bearer token");
  return match->caller;
}

}  // namespace dbpool::security
