#include "server/security/forwarded_client.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <array>
#include <cstdlib>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace dbpool::security {

std::string NewForwardingSecret() {
  std::array<unsigned char, 16> bytes;
  // Without randomness the secret would be guessable; nothing sensible can
  // run on such a system.
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) std::abort();
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
}

std::string ForwardedClientValue(absl::string_view secret, absl::string_view client) {
  return absl::StrCat(secret, " ", client);
}

std::optional<std::string> ForwardedClient(absl::string_view value,
                                           absl::string_view secret) {
  if (secret.empty() || value.size() <= secret.size() || value[secret.size()] != ' ') {
    return std::nullopt;
  }
  // Constant time: how long a refusal takes tells a guesser nothing.
  if (CRYPTO_memcmp(value.data(), secret.data(), secret.size()) != 0) {
    return std::nullopt;
  }
  return std::string(value.substr(secret.size() + 1));
}

}  // namespace dbpool::security
