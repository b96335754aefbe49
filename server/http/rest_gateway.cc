#include "server/http/rest_gateway.h"

#include <CivetServer.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
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
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/api/annotations.pb.h"
#include "google/rpc/status.pb.h"
#include "server/security/forwarded_client.h"
#include "spdlog/spdlog.h"

namespace dbpool::http {
namespace {

// How often a unary call looks whether its HTTP client is still there.
constexpr absl::Duration kClientCheckEvery = absl::Milliseconds(100);

// The address and port of a socket address, as civetweb spells a client's.
std::pair<std::string, int> AddressOf(const sockaddr_storage& a) {
  char text[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto& in = reinterpret_cast<const sockaddr_in&>(a);
    inet_ntop(AF_INET, &in.sin_addr, text, sizeof text);
    return {text, ntohs(in.sin_port)};
  }
  if (a.ss_family == AF_INET6) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
    inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text);
    return {text, ntohs(in6.sin6_port)};
  }
  return {"", -1};
}

// The socket of the connection `info` came on, or -1: the one whose peer
// is the request's client and whose own port is the server's. The handler
// holds the connection, so the descriptor stays this socket while it runs.
int ClientSocket(const mg_request_info* info) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0') continue;
    struct stat st {};
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    sockaddr_storage peer{};
    socklen_t peer_len = sizeof peer;
    sockaddr_storage self{};
    socklen_t self_len = sizeof self;
    if (getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0 ||
        getsockname(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&self), &self_len) != 0) {
      continue;
    }
    const auto [peer_addr, peer_port] = AddressOf(peer);
    if (peer_port == info->remote_port && AddressOf(self).second == info->server_port &&
        absl::StripPrefix(peer_addr, "::ffff:") ==
            absl::StripPrefix(info->remote_addr, "::ffff:")) {
      found = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
  return found;
}

// The client closed its end (or the connection failed).
bool ClientGone(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

using google::protobuf::DescriptorPool;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::MessageFactory;

using Vars = std::vector<std::pair<std::string, std::string>>;

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

// A google.api.http path template, parsed.
struct PathTemplate {
  struct Segment {
    std::string literal;
    std::string variable;  // set: a variable, not a literal
  };
  std::vector<Segment> segments;
  std::string verb;  // after the final ':', without it
};

std::optional<PathTemplate> ParseTemplate(absl::string_view pattern) {
  if (!absl::ConsumePrefix(&pattern, "/")) return std::nullopt;
  PathTemplate t;
  // The verb: a ':' in the last segment, after its variable if it has one.
  const size_t last = pattern.rfind('/') == absl::string_view::npos ? 0 : pattern.rfind('/');
  const size_t close = pattern.find('}', last);
  const size_t colon = pattern.find(':', close == absl::string_view::npos ? last : close);
  if (colon != absl::string_view::npos) {
    t.verb = std::string(pattern.substr(colon + 1));
    if (t.verb.empty()) return std::nullopt;
    pattern = pattern.substr(0, colon);
  }
  const std::vector<absl::string_view> parts = absl::StrSplit(pattern, '/');
  for (size_t i = 0; i < parts.size(); ++i) {
    absl::string_view part = parts[i];
    PathTemplate::Segment segment;
    if (absl::ConsumePrefix(&part, "{")) {
      if (!absl::ConsumeSuffix(&part, "}")) return std::nullopt;
      const std::vector<absl::string_view> name_and_match = absl::StrSplit(part, '=');
      if (name_and_match.size() > 2 || name_and_match[0].empty()) return std::nullopt;
      const absl::string_view match = name_and_match.size() == 2 ? name_and_match[1] : "*";
      // "**" takes the rest of the path, so only the last segment may.
      if (match != "*" && !(match == "**" && i + 1 == parts.size())) return std::nullopt;
      segment.variable = std::string(name_and_match[0]);
    } else {
      if (absl::StrContains(part, '{') || absl::StrContains(part, '}')) return std::nullopt;
      segment.literal = std::string(part);
    }
    t.segments.push_back(std::move(segment));
  }
  return t;
}

std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (buffer.Dump(&slices).ok()) {
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return bytes;
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// Trailing metadata that says where a call's time went, as X-dbpool-*
// headers.
void AddTimingHeaders(const grpc::ClientContext& context, Reply* reply) {
  for (const auto& [key, value] : context.GetServerTrailingMetadata()) {
    if (absl::StartsWith(absl::string_view(key.data(), key.size()), "dbpool-")) {
      reply->headers.push_back({absl::StrCat("X-", std::string(key.data(), key.size())),
                                 std::string(value.data(), value.size())});
    }
  }
}

// One server-streaming call made for an HTTP request, through the generic
// stub (a bidi call that sends one message). The civetweb thread takes each
// message with Next and asks gRPC for another with ReadNext only once it
// has written the last one: a slow HTTP client slows the stream.
//
// A hold keeps gRPC from ending the call while the civetweb thread, which
// starts reads from outside any reaction, may still start one: without it
// the call completes as soon as the last message is read and the status
// is in, and the next StartRead would use a freed stream.
//
// Lives on the civetweb thread's stack: the owner must call Finish, which
// releases the hold and waits for gRPC to be done with it, before it goes.
// Next and Finish block.
class StreamingCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  StreamingCall(grpc::GenericStub& stub, grpc::ClientContext* context,
                const std::string& method, grpc::ByteBuffer request)
      : request_(std::move(request)) {
    stub.PrepareBidiStreamingCall(context, method, grpc::StubOptions(), this);
    AddHold();
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&incoming_);
    StartCall();
  }

  // The next message, or false at the end of the stream.
  bool Next(grpc::ByteBuffer* message) {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](StreamingCall* c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(c->mu_) {
          return c->ready_ || c->ended_;
        },
        this));
    if (!ready_) return false;
    ready_ = false;
    *message = incoming_;  // shares the slices
    incoming_.Clear();
    return true;
  }
  // Asks for the message after the one Next returned. Not after Finish.
  void ReadNext() { StartRead(&incoming_); }

  // Once, with no read outstanding (after Next returned false, or after a
  // cancel): lets the call end, waits until gRPC is done with it; its
  // status.
  grpc::Status Finish() {
    RemoveHold();
    done_.WaitForNotification();
    return status_;
  }

  void OnReadDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    if (ok) {
      ready_ = true;
    } else {
      ended_ = true;
    }
  }
  void OnDone(const grpc::Status& status) override {
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
    }
    status_ = status;
    done_.Notify();
  }

 private:
  grpc::ByteBuffer request_;
  absl::Mutex mu_;
  grpc::ByteBuffer incoming_;  // gRPC's while a read is out
  bool ready_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_;
  absl::Notification done_;
};

}  // namespace

std::optional<Vars> MatchPath(absl::string_view pattern, absl::string_view path) {
  const std::optional<PathTemplate> t = ParseTemplate(pattern);
  if (!t.has_value()) return std::nullopt;
  if (!t->verb.empty() && !absl::ConsumeSuffix(&path, absl::StrCat(":", t->verb))) {
    return std::nullopt;
  }
  if (!absl::ConsumePrefix(&path, "/")) return std::nullopt;
  const std::vector<absl::string_view> parts = absl::StrSplit(path, '/');
  Vars vars;
  for (size_t i = 0; i < t->segments.size(); ++i) {
    const PathTemplate::Segment& segment = t->segments[i];
    if (i >= parts.size()) return std::nullopt;
    if (segment.variable.empty()) {
      if (parts[i] != segment.literal) return std::nullopt;
      continue;
    }
    // The last variable takes the rest: civetweb has already decoded a
    // %2F inside it into a '/'.
    std::string value = i + 1 == t->segments.size()
                            ? absl::StrJoin(parts.begin() + i, parts.end(), "/")
                            : std::string(parts[i]);
    if (value.empty()) return std::nullopt;
    vars.emplace_back(segment.variable, std::move(value));
    if (i + 1 == t->segments.size()) return vars;
  }
  if (parts.size() != t->segments.size()) return std::nullopt;
  return vars;
}

std::vector<Route> RoutesOf(const std::string& service_name) {
  std::vector<Route> routes;
  const auto* service = DescriptorPool::generated_pool()->FindServiceByName(service_name);
  if (service == nullptr) return routes;
  for (int i = 0; i < service->method_count(); ++i) {
    const auto* method = service->method(i);
    if (!method->options().HasExtension(google::api::http)) continue;
    if (method->client_streaming()) {
      spdlog::error("http: {} streams requests, which HTTP/JSON cannot carry; no route",
                    method->full_name());
      continue;
    }
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
    r.server_streaming = method->server_streaming();
    // Checked once here, so that a request never finds a template it
    // cannot fill.
    const std::optional<PathTemplate> t = ParseTemplate(r.path);
    bool fillable = t.has_value();
    for (size_t k = 0; fillable && k < t->segments.size(); ++k) {
      const std::string& name = t->segments[k].variable;
      if (name.empty()) continue;
      const FieldDescriptor* field = method->input_type()->FindFieldByName(name);
      fillable = field != nullptr && field->type() == FieldDescriptor::TYPE_STRING &&
                 !field->is_repeated();
    }
    if (!fillable) {
      spdlog::error("http: path template {} of {} is not supported; no route", r.path,
                    method->full_name());
      continue;
    }
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
    if (std::optional<Reply> reply = Serve(conn)) Send(conn, *reply, head);
    return true;
  }

  // The reply, or nullopt when the request has been answered already (a
  // stream writes its own).
  std::optional<Reply> Serve(mg_connection* conn) {
    const mg_request_info* info = mg_get_request_info(conn);
    const std::string method = info->request_method;
    // HEAD is answered as GET without a body.
    const std::string verb = method == "HEAD" ? "GET" : method;
    // The path as sent (decoded), not cleaned of "..": templates match what
    // the client wrote.
    const char* uri = info->local_uri_raw != nullptr ? info->local_uri_raw : info->local_uri;
    const std::string path = uri != nullptr ? uri : "";
    if (path == "/healthz" || path == "/readyz") {
      if (verb != "GET") return Reply{405, R"({"code":3,"message":"use GET"})", {{"Allow", "GET"}}};
      if (path == "/healthz") return Reply{200, R"({"status":"ok"})", {}};
      return ready_() ? Reply{200, R"({"status":"serving"})", {}}
                      : Reply{503, R"({"status":"not_serving"})", {}};
    }
    std::vector<std::string> allowed;
    for (const Route& route : routes_) {
      std::optional<Vars> vars = MatchPath(route.path, path);
      if (!vars.has_value()) continue;
      if (route.verb == verb) {
        if (!route.server_streaming) return Call(conn, route, *vars);
        return Stream(conn, route, *vars);
      }
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

  // Fills `request` from the JSON body and the path's variables; the
  // reply that refuses the HTTP request otherwise.
  std::optional<Reply> ReadRequest(mg_connection* conn, const Route& route, const Vars& vars,
                                   Message* request) {
    const mg_request_info* info = mg_get_request_info(conn);
    const int64_t length = info->content_length;
    // The path may say all there is to say ("POST .../{id}:commit").
    const bool chunked = mg_get_header(conn, "Transfer-Encoding") != nullptr;
    const bool bodiless = !vars.empty() && (length == 0 || (length < 0 && !chunked));
    if (route.has_body && !bodiless) {
      if (!IsJson(mg_get_header(conn, "Content-Type"))) {
        Reply r = StatusReply(3, "Content-Type must be application/json");
        r.status = 415;
        return r;
      }
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
        if (vars.empty()) return StatusReply(3, "request body is empty; send a JSON object");
      } else {
        google::protobuf::util::JsonParseOptions parse;
        parse.ignore_unknown_fields = false;
        const auto parsed = google::protobuf::util::JsonStringToMessage(body, request, parse);
        if (!parsed.ok()) {
          return StatusReply(3, absl::StrCat("malformed JSON request: ",
                                             parsed.message().as_string()));
        }
      }
    }
    // RoutesOf made sure each variable names a string field.
    const google::protobuf::Reflection* reflection = request->GetReflection();
    for (const auto& [name, value] : vars) {
      const FieldDescriptor* field = request->GetDescriptor()->FindFieldByName(name);
      const std::string in_body = reflection->GetString(*request, field);
      if (!in_body.empty() && in_body != value) {
        return StatusReply(3, absl::StrCat(name, " is \"", in_body, "\" in the body but \"",
                                           value, "\" in the path"));
      }
      reflection->SetString(request, field, value);
    }
    return std::nullopt;
  }

  // Deadline, credentials and the HTTP client's name, as for every call.
  void PrepareContext(mg_connection* conn, grpc::ClientContext* context) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + options_.call_timeout));
    if (const char* authorization = mg_get_header(conn, "Authorization")) {
      context->AddMetadata("authorization", authorization);
    }
    context->AddMetadata(security::kForwardedClientKey,
                         security::ForwardedClientValue(
                             options_.forwarding_secret,
                             ClientIdentity(mg_get_request_info(conn))));
  }

  static const Message* Prototype(const std::string& type) {
    return MessageFactory::generated_factory()->GetPrototype(
        DescriptorPool::generated_pool()->FindMessageTypeByName(type));
  }

  Reply Call(mg_connection* conn, const Route& route, const Vars& vars) {
    std::unique_ptr<Message> request(Prototype(route.input_type)->New());
    if (std::optional<Reply> refused = ReadRequest(conn, route, vars, request.get())) {
      return *std::move(refused);
    }
    grpc::ByteBuffer request_buffer = ToBuffer(request->SerializeAsString());
    grpc::ByteBuffer response_buffer;
    grpc::ClientContext context;
    PrepareContext(conn, &context);
    grpc::Status status;
    absl::Notification done;
    stub_.UnaryCall(&context, route.grpc_method, grpc::StubOptions(), &request_buffer,
                    &response_buffer, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
    // Most calls are answered before the first look; only a slower one
    // looks for its socket.
    int client = -2;
    while (!done.WaitForNotificationWithTimeout(kClientCheckEvery)) {
      if (client == -2) client = ClientSocket(mg_get_request_info(conn));
      if (client >= 0 && ClientGone(client)) {
        context.TryCancel();
        done.WaitForNotification();
        break;
      }
    }
    Reply reply;
    if (status.ok()) {
      std::unique_ptr<Message> response(Prototype(route.output_type)->New());
      if (!response->ParseFromString(ToString(response_buffer))) {
        return StatusReply(13, "unreadable response");
      }
      reply = {200, ToJson(*response), {}};
    } else {
      reply = ErrorReply(status);
    }
    AddTimingHeaders(context, &reply);
    return reply;
  }

  // Answers with NDJSON as the messages come (see the header); nullopt
  // once it has written the reply itself.
  std::optional<Reply> Stream(mg_connection* conn, const Route& route, const Vars& vars) {
    std::unique_ptr<Message> request(Prototype(route.input_type)->New());
    if (std::optional<Reply> refused = ReadRequest(conn, route, vars, request.get())) {
      return refused;
    }
    grpc::ClientContext context;
    PrepareContext(conn, &context);
    StreamingCall call(stub_, &context, route.grpc_method, ToBuffer(request->SerializeAsString()));
    const Message* out_proto = Prototype(route.output_type);
    bool started = false;
    bool client_gone = false;
    std::optional<grpc::Status> failure;
    grpc::ByteBuffer message;
    while (call.Next(&message)) {
      std::unique_ptr<Message> response(out_proto->New());
      if (!response->ParseFromString(ToString(message))) {
        failure = grpc::Status(grpc::StatusCode::INTERNAL, "unreadable response");
        context.TryCancel();
        break;
      }
      if (!started) {
        started = true;
        static constexpr char kHead[] =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
            "Cache-Control: no-store\r\nTransfer-Encoding: chunked\r\n\r\n";
        client_gone = mg_write(conn, kHead, sizeof kHead - 1) <= 0;
      }
      const std::string line = absl::StrCat(ToJson(*response), "\n");
      if (client_gone || mg_send_chunk(conn, line.data(), line.size()) <= 0) {
        // Nobody is reading: the statement stops, its connection is freed.
        client_gone = true;
        context.TryCancel();
        break;
      }
      call.ReadNext();
    }
    grpc::Status status = call.Finish();
    if (failure.has_value()) status = *failure;
    if (client_gone) return std::nullopt;
    if (!started && !status.ok()) {
      // Nothing sent yet: answered as a unary call would be.
      Reply reply = ErrorReply(status);
      AddTimingHeaders(context, &reply);
      return reply;
    }
    if (!started) {
      // A stream without messages: an empty NDJSON body.
      static constexpr char kEmpty[] =
          "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
          "Cache-Control: no-store\r\nContent-Length: 0\r\n\r\n";
      mg_write(conn, kEmpty, sizeof kEmpty - 1);
      return std::nullopt;
    }
    if (!status.ok()) {
      const std::string line =
          absl::StrCat(R"({"error":)", ErrorReply(status).body, "}\n");
      mg_send_chunk(conn, line.data(), line.size());
    }
    mg_send_chunk(conn, "", 0);
    return std::nullopt;
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
