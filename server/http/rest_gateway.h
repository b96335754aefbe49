// RestGateway: the HTTP/JSON face of dbpool, gateway style. Routes come from
// the google.api.http annotations of dbpool.v1.DatabaseService; a request's
// JSON body becomes the RPC's request message (proto3 JSON mapping), the
// call goes through the server's in-process channel (so validation, error
// mapping, metrics and deadlines are the gRPC ones), and the reply or the
// google.rpc.Status comes back as JSON with the HTTP status of
// google/rpc/code.proto. Also serves /healthz (alive) and /readyz (serving).
// The Authorization header travels as the call's authorization metadata,
// so bearer tokens and roles are checked where gRPC's are.
//
// Owned by app::Server; must be destroyed before the gRPC server whose
// in-process channel it calls through.
// Thread-safe. Requests run on civetweb's worker threads, which block for
// the length of one call; gRPC threads never do.
#ifndef DBPOOL_SERVER_HTTP_REST_GATEWAY_H_
#define DBPOOL_SERVER_HTTP_REST_GATEWAY_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/security/tls.h"

class CivetServer;

namespace dbpool::http {

// Filled from config::Config by app::BuildServer.
struct GatewayOptions {
  // host:port ("[::1]:8080" for IPv6); port 0 picks a free one.
  std::string address;
  // Larger bodies get 413 before they are read.
  int64_t max_body_bytes = 0;
  // Deadline of each call made for an HTTP request.
  absl::Duration call_timeout;
  int threads = 0;
  // Serves HTTPS only, with these settings, when set.
  std::optional<security::TlsSettings> tls;
  // Sent with each HTTP client's name, so that DatabaseService trusts it
  // (security/forwarded_client.h).
  std::string forwarding_secret;
};

// One route: an HTTP verb and path bound to a gRPC method.
struct Route {
  std::string verb;         // "GET", "POST", ...
  std::string path;         // "/v1/query"
  std::string grpc_method;  // "/dbpool.v1.DatabaseService/Query"
  std::string input_type;   // full name of the request message
  std::string output_type;  // full name of the response message
  bool has_body = false;    // body: "*"
};

// The routes declared by the annotations of `service` (a full service name
// from the generated descriptor pool).
std::vector<Route> RoutesOf(const std::string& service);

// The HTTP status for a gRPC status code, per google/rpc/code.proto.
int HttpStatusFor(int grpc_code);

class RestGateway {
 public:
  RestGateway(std::shared_ptr<grpc::Channel> channel,
              std::function<bool()> ready, GatewayOptions options);
  ~RestGateway();
  RestGateway(const RestGateway&) = delete;
  RestGateway& operator=(const RestGateway&) = delete;

  // Binds and starts serving; returns the bound port.
  absl::StatusOr<int> Start();
  // Stops accepting and waits for requests in progress.
  void Stop();

 private:
  class Handler;
  std::unique_ptr<Handler> handler_;
  std::unique_ptr<CivetServer> server_;
  const GatewayOptions options_;
};

}  // namespace dbpool::http

#endif  // DBPOOL_SERVER_HTTP_REST_GATEWAY_H_
