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
// Path templates: a "{field}" segment of a route's path fills the request
// field of that name (a string field of the request message), merged with
// the body; a body that names a different value is refused (400). Such
// routes also accept an empty body. civetweb hands over the path already
// percent-decoded, so a variable in the last segment takes the rest of the
// path: an id containing "/" (sent as %2F or not) still arrives whole. A
// ":verb" suffix ("/v1/query:stream") is matched literally.
//
// Server-streaming routes answer 200 with newline-delimited JSON
// (Content-Type application/x-ndjson, chunked transfer encoding): one JSON
// object per response message, on one line, written as it arrives; the next
// message is read from gRPC only once the last one is written, so a slow
// HTTP client slows the stream instead of growing memory. A call that fails
// before its first message is answered like a unary one (JSON error, HTTP
// status of its code). One that fails after it has started ends with a last
// line {"error": <google.rpc.Status as JSON>}, the HTTP status being
// already sent. A write to the HTTP client that fails cancels the call.
//
// A client that disconnects cancels its call, as a gRPC cancel does: a
// stream notices at its next write; a unary call watches the client's
// socket (every 100 ms) while it waits. civetweb does not hand its socket
// to a handler, so the gateway finds it among the process's descriptors by
// the request's two addresses.
//
// Owned by app::Server; must be destroyed before the gRPC server whose
// in-process channel it calls through.
// Thread-safe. Requests run on civetweb's worker threads, which block for
// the length of one call (a stream's included); gRPC threads never do.
#ifndef DBPOOL_SERVER_HTTP_REST_GATEWAY_H_
#define DBPOOL_SERVER_HTTP_REST_GATEWAY_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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
  std::string path;         // "/v1/query", "/v1/transactions/{transaction_id}:commit"
  std::string grpc_method;  // "/dbpool.v1.DatabaseService/Query"
  std::string input_type;   // full name of the request message
  std::string output_type;  // full name of the response message
  bool has_body = false;    // body: "*"
  bool server_streaming = false;  // answered as NDJSON
};

// The routes declared by the annotations of `service` (a full service name
// from the generated descriptor pool). Client-streaming methods, and
// templates whose variables are not string fields of the request, are left
// out (and logged).
std::vector<Route> RoutesOf(const std::string& service);

// The variables of path template `pattern` ("/v1/t/{id}:commit") and their
// values in `path` ("/v1/t/42:commit" gives {{"id", "42"}}), in template
// order; nullopt when `path` does not match. Supports literal segments,
// "{name}" (also "{name=*}") for one segment, "{name=**}" for the rest,
// and a final ":verb". A variable's value is never empty.
std::optional<std::vector<std::pair<std::string, std::string>>> MatchPath(
    absl::string_view pattern, absl::string_view path);

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
