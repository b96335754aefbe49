// How the dbpool client reaches a server: the channel credentials and the
// bearer token, shared by every command (query, stats, watch, bench).
//
// Read from the environment, not from flags, so that a token never shows
// in /proc/PID/cmdline:
//   DBPOOL_TOKEN            bearer token sent with every call
//   DBPOOL_TLS_CA           PEM CA bundle; when set, the client speaks TLS
//   DBPOOL_TLS_CLIENT_CERT  PEM client certificate and key (mutual TLS)
//   DBPOOL_TLS_CLIENT_KEY
//
// A plain value, thread-safe to share once loaded; loading reads files.
#ifndef DBPOOL_CLIENT_CONNECTION_H_
#define DBPOOL_CLIENT_CONNECTION_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace dbpool::cli {

class Connection {
 public:
  static absl::StatusOr<Connection> FromEnvironment();

  std::shared_ptr<grpc::Channel> Open(const std::string& target,
                                      const grpc::ChannelArguments& args = {}) const;
  // Adds the bearer token, if any, to a call.
  void Authorize(grpc::ClientContext* context) const;

  // The environment variables, for --help.
  static const char kHelp[];

 private:
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  std::string authorization_;
};

}  // namespace dbpool::cli

#endif  // DBPOOL_CLIENT_CONNECTION_H_
