// How the HTTP gateway tells DatabaseService who its HTTP client is
// ("cn:NAME" under mutual TLS, else the client address), so that the
// per-caller limit counts HTTP clients one by one.
//
// The name travels in call metadata on the in-process channel, together
// with a secret that app::BuildServer draws at start-up and gives to both
// sides. Any outside caller can send the same metadata key, but not the
// secret, so the service trusts only names that carry it. (The channel
// itself cannot be told apart: gRPC 1.51 gives an in-process call the peer
// "unknown".)
//
// Pure functions; thread-safe. NewForwardingSecret reads the system's
// random source.
#ifndef DBPOOL_SERVER_SECURITY_FORWARDED_CLIENT_H_
#define DBPOOL_SERVER_SECURITY_FORWARDED_CLIENT_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace dbpool::security {

inline constexpr char kForwardedClientKey[] = "dbpool-http-client";

// A fresh secret: 128 random bits, in hex.
std::string NewForwardingSecret();

// The metadata value that names `client`.
std::string ForwardedClientValue(absl::string_view secret, absl::string_view client);

// The client that `value` names, when it carries `secret`; nullopt when it
// does not, and always when `secret` is empty.
std::optional<std::string> ForwardedClient(absl::string_view value,
                                           absl::string_view secret);

}  // namespace dbpool::security

#endif  // DBPOOL_SERVER_SECURITY_FORWARDED_CLIENT_H_
