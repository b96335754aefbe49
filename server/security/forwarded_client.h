// The metadata key through which the HTTP gateway tells DatabaseService who
// its HTTP client is ("cn:NAME" under mutual TLS, else the client address).
// The service trusts it only on the in-process channel, where no outside
// caller can set it. Header-only constant; shared by both sides so that the
// name is written once.
#ifndef DBPOOL_SERVER_SECURITY_FORWARDED_CLIENT_H_
#define DBPOOL_SERVER_SECURITY_FORWARDED_CLIENT_H_

namespace dbpool::security {

inline constexpr char kForwardedClientKey[] = "dbpool-http-client";

}  // namespace dbpool::security

#endif  // DBPOOL_SERVER_SECURITY_FORWARDED_CLIENT_H_
