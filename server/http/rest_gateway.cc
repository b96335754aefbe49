#include "server/http/rest_gateway.h"

#include <CivetServer.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstring>
#include <utility>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/api/annotations.pb.h"
#include "google/rpc/status.pb.h"
#include "server/security/forwarded_client.h"
#include "spdlog/spdlog.h"

namespace dbpool::http {
namespace {

using google::protobuf::DescriptorPool;
using google::protobuf::Message;
using google::protobuf::MessageFactory;

struct Reply {
  int status = 200;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

std::string ToJson(const Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(message, &out, options).ok()) {
    return R"({"code":13,"message":"response could not be rendered as JSON"})";
  }
  return out;
}

Reply StatusReply(int grpc_code, const std::string& message) {
  google::rpc::Status status;
  status.set_code(grpc_code);
  status.set_message(message);
  return {HttpStatusFor(grpc_code), ToJson(status), {}};
}

Reply ErrorReply(const grpc::Status& s) {
  google::rpc::Status status;
  if (s.error_details().empty() || !status.ParseFromString(s.error_details())) {
    status.set_code(s.error_code());
    status.set_message(s.error_message());
  }
  Reply reply{HttpStatusFor(s.error_code()), ToJson(status), {}};
  if (s.error_code() == grpc::StatusCode::UNAUTHENTICATED) {
    reply.headers.push_back({"WWW-Authenticate", "Bearer"});
  }
  return reply;
}

// Who the HTTP client is, in the form DatabaseService uses for gRPC
// callers: the certificate's common name under mutual TLS, else the
// address.
std::string ClientIdentity(const mg_request_info* info) {
  if (info->client_cert != nullptr && info->client_cert->peer_cert != nullptr) {
    auto* cert = static_cast<X509*>(info->client_cert->peer_cert);
    char cn[256];
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName,
                                  cn, sizeof cn) > 0) {
      return absl::StrCat("cn:", cn);
    }
  }
  const absl::string_view addr = info->remote_addr;
  return absl::StrCat(absl::StrContains(addr, ':') ? "ipv6:" : "ipv4:", addr);
}

// civetweb calls this for the HTTPS listener's OpenSSL context; 1 tells it
// the context is complete.
int InitSsl(void* ssl_context, void* civet_server) {
  const auto* options = static_cast<const GatewayOptions*>(
      static_cast<CivetServer*>(civet_server)->getUserContext());
  const absl::Status s = security::ConfigureServerContext(
      static_cast<SSL_CTX*>(ssl_context), *options->tls);
  return s.ok() ? 1 : -1;
}

// HEAD gets the headers a GET would, and no body.
void Send(mg_connection* conn, const Reply& reply, bool head_only) {
  std::string head = absl::StrCat("HTTP/1.1 ", reply.status, " ",
                                  mg_get_response_code_text(conn, reply.status),
                                  "\r\nContent-Type: application/json\r\n"
                                  "Cache-Control: no-store\r\nContent-Length: ",
                                  reply.body.size(), "\r\n");
  for (const auto& [k, v] : reply.headers) absl::StrAppend(&head, k, ": ", v, "\r\n");
  head += "\r\n";
  mg_write(conn, head.data(), head.size());
  if (!head_only) mg_write(conn, reply.body.data(), reply.body.size());
}

// "application/json", optionally with parameters ("; charset=utf-8").
bool IsJson(const char* content_type) {
  if (content_type == nullptr) return false;
  absl::string_view media = content_type;
  media = media.substr(0, media.find(';'));
  return absl::EqualsIgnoreCase(absl::StripAsciiWhitespace(media), "application/json");
}

}  // namespace

std::vector<Route> RoutesOf(const std::string& service_name) {
  std::vector<Route> routes;
  const auto* service = DescriptorPool::generated_pool()->FindServiceByName(service_name);
  if (service == nullptr) return routes;
  for (int i = 0; i < service->method_count(); ++i) {
    const auto* method = service->method(i);
    if (!method->options().HasExtension(google::api::http)) continue;
    const google::api::HttpRule& rule = method->options().GetExtension(google::api::http);
    Route r;
    switch (rule.pattern_case()) {
      case google::api::HttpRule::kGet: r.verb = "GET"; r.path = rule.get(); break;
      case google::api::HttpRule::kPost: r.verb = "POST"; r.path = rule.post(); break;
      case google::api::HttpRule::kPut: r.verb = "PUT"; r.path = rule.put(); break;
      case google::api::HttpRule::kDelete: r.verb = "DELETE"; r.path = rule.delete_(); break;
      case google::api::HttpRule::kPatch: r.verb = "PATCH"; r.path = rule.patch(); break;
      default: continue;
    }
    r.grpc_method = absl::StrCat("/", service->full_name(), "/", method->name());
    r.input_type = method->input_type()->full_name();
    r.output_type = method->output_type()->full_name();
    r.has_body = rule.body() == "*";
    routes.push_back(std::move(r));
  }
  return routes;
}

int HttpStatusFor(int grpc_code) {
  // google/rpc/code.proto, "HTTP Mapping".
  static constexpr int kMap[] = {200, 499, 500, 400, 504, 404, 409, 403,
                                 429, 400, 409, 400, 501, 500, 503, 500, 401};
  if (grpc_code < 0 || grpc_code >= static_cast<int>(std::size(kMap))) return 500;
  return kMap[grpc_code];
}

class RestGateway::Handler final : public CivetHandler {
 public:
  Handler(std::shared_ptr<grpc::Channel> channel, std::function<bool()> ready,
          const GatewayOptions& options)
      : stub_(std::move(channel)),
        ready_(std::move(ready)),
        options_(options),
        routes_(RoutesOf("dbpool.v1.DatabaseService")) {}

  bool handleGet(CivetServer*, mg_connection* c) override { return Handle(c); }
  bool handlePost(CivetServer*, mg_connection* c) override { return Handle(c); }
  bool handlePut(CivetServer*, mg_connection* c) override { return Handle(c); }
  bool handleDelete(CivetServer*, mg_connection* c) override { return Handle(c); }
  bool handlePatch(CivetServer*, mg_connection* c) override { return Handle(c); }
  bool handleHead(CivetServer*, mg_connection* c) override { return Handle(c); }
  bool handleOptions(CivetServer*, mg_connection* c) override { return Handle(c); }

 private:
  bool Handle(mg_connection* conn) {
    const bool head = std::strcmp(mg_get_request_info(conn)->request_method, "HEAD") == 0;
    Send(conn, Serve(conn), head);
    return true;
  }

  Reply Serve(mg_connection* conn) {
    const mg_request_info* info = mg_get_request_info(conn);
    const std::string method = info->request_method;
    // HEAD is answered as GET without a body.
    const std::string verb = method == "HEAD" ? "GET" : method;
    const std::string path = info->local_uri != nullptr ? info->local_uri : "";
    if (path == "/healthz" || path == "/readyz") {
      if (verb != "GET") return {405, R"({"code":3,"message":"use GET"})", {{"Allow", "GET"}}};
      if (path == "/healthz") return {200, R"({"status":"ok"})", {}};
      return ready_() ? Reply{200, R"({"status":"serving"})", {}}
                      : Reply{503, R"({"status":"not_serving"})", {}};
    }
    std::vector<std::string> allowed;
    for (const Route& route : routes_) {
      if (route.path != path) continue;
      if (route.verb == verb) return Call(conn, route);
      allowed.push_back(route.verb);
    }
    if (!allowed.empty()) {
      Reply r = StatusReply(3, absl::StrCat(verb, " is not allowed on ", path, "; use ",
                                            absl::StrJoin(allowed, ", ")));
      r.status = 405;
      r.headers.push_back({"Allow", absl::StrJoin(allowed, ", ")});
      return r;
    }
    return StatusReply(5, absl::StrCat("no route for ", verb, " ", path));
  }

  Reply Call(mg_connection* conn, const Route& route) {
    const auto* pool = DescriptorPool::generated_pool();
    const Message* in_proto = MessageFactory::generated_factory()->GetPrototype(
        pool->FindMessageTypeByName(route.input_type));
    const Message* out_proto = MessageFactory::generated_factory()->GetPrototype(
        pool->FindMessageTypeByName(route.output_type));
    std::unique_ptr<Message> request(in_proto->New());
    if (route.has_body) {
      if (!IsJson(mg_get_header(conn, "Content-Type"))) {
        Reply r = StatusReply(3, "Content-Type must be application/json");
        r.status = 415;
        return r;
      }
      const int64_t length = mg_get_request_info(conn)->content_length;
      if (length > options_.max_body_bytes) {
        Reply r = StatusReply(3, absl::StrCat("body of ", length, " bytes is over the limit of ",
                                              options_.max_body_bytes));
        r.status = 413;
        return r;
      }
      std::string body;
      if (!ReadBody(conn, &body)) {
        Reply r = StatusReply(3, absl::StrCat("body is over the limit of ",
                                              options_.max_body_bytes, " bytes"));
        r.status = 413;
        return r;
      }
      if (absl::StripAsciiWhitespace(body).empty()) {
        return StatusReply(3, "request body is empty; send a JSON object");
      }
      google::protobuf::util::JsonParseOptions parse;
      parse.ignore_unknown_fields = false;
      const auto parsed = google::protobuf::util::JsonStringToMessage(body, request.get(), parse);
      if (!parsed.ok()) {
        return StatusReply(3, absl::StrCat("malformed JSON request: ", parsed.message().as_string()));
      }
    }
    std::string wire;
    request->SerializeToString(&wire);
    grpc::Slice slice(wire);
    grpc::ByteBuffer request_buffer(&slice, 1);
    grpc::ByteBuffer response_buffer;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
    if (const char* authorization = mg_get_header(conn, "Authorization")) {
      context.AddMetadata("authorization", authorization);
    }
    context.AddMetadata(security::kForwardedClientKey,
                        security::ForwardedClientValue(
                            options_.forwarding_secret,
                            ClientIdentity(mg_get_request_info(conn))));
    grpc::Status status;
    absl::Notification done;
    stub_.UnaryCall(&context, route.grpc_method, grpc::StubOptions(), &request_buffer,
                    &response_buffer, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
    done.WaitForNotification();
    Reply reply;
    if (status.ok()) {
      std::vector<grpc::Slice> slices;
      std::string bytes;
      if (response_buffer.Dump(&slices).ok()) {
        for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      std::unique_ptr<Message> response(out_proto->New());
      if (!response->ParseFromString(bytes)) return StatusReply(13, "unreadable response");
      reply = {200, ToJson(*response), {}};
    } else {
      reply = ErrorReply(status);
    }
    for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
      if (absl::StartsWith(absl::string_view(key.data(), key.size()), "dbpool-")) {
        reply.headers.push_back({absl::StrCat("X-", std::string(key.data(), key.size())),
                                 std::string(value.data(), value.size())});
      }
    }
    return reply;
  }

  // Reads the body, refusing more than max_body_bytes even when the
  // length was not announced.
  bool ReadBody(mg_connection* conn, std::string* body) {
    char buf[16384];
    for (;;) {
      const int n = mg_read(conn, buf, sizeof buf);
      if (n <= 0) return true;
      if (static_cast<int64_t>(body->size()) + n > options_.max_body_bytes) return false;
      body->append(buf, n);
    }
  }

  grpc::GenericStub stub_;
  const std::function<bool()> ready_;
  const GatewayOptions options_;
  const std::vector<Route> routes_;
};

RestGateway::RestGateway(std::shared_ptr<grpc::Channel> channel,
                         std::function<bool()> ready, GatewayOptions options)
    : handler_(std::make_unique<Handler>(std::move(channel), std::move(ready), options)),
      options_(std::move(options)) {}

RestGateway::~RestGateway() { Stop(); }

absl::StatusOr<int> RestGateway::Start() {
  const std::vector<std::string> civet_options = {
      "listening_ports", absl::StrCat(options_.address, options_.tls ? "s" : ""),
      "num_threads", absl::StrCat(options_.threads),
      "request_timeout_ms", "60000",
      "enable_keep_alive", "yes"};
  try {
    CivetCallbacks callbacks{};
    if (options_.tls) callbacks.init_ssl = &InitSsl;
    callbacks.log_message = +[](const mg_connection*, const char* message) {
      spdlog::warn("http: {}", message);
      return 1;
    };
    server_ = std::make_unique<CivetServer>(civet_options, &callbacks, &options_);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.address,
                                               " for HTTP: ", e.what()));
  }
  server_->addHandler("/", handler_.get());
  const std::vector<int> ports = server_->getListeningPorts();
  if (ports.empty()) return absl::UnavailableError("HTTP server has no port");
  return ports.front();
}

void RestGateway::Stop() {
  if (server_ != nullptr) {
    server_->close();
    server_.reset();
  }
}

}  // namespace dbpool::http
