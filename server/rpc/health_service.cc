#include "server/rpc/health_service.h"

namespace dbpool::rpc {
namespace {

using grpc::health::v1::HealthCheckResponse;

// The whole server (""), each service it offers, and the process itself.
bool Known(const std::string& service) {
  return service.empty() || service == "dbpool.v1.DatabaseService" ||
         service == kLivenessService;
}

}  // namespace

HealthService::HealthService(const engine::QueryEngine& engine, int max_watches)
    : engine_(engine), watches_(max_watches) {}

HealthCheckResponse::ServingStatus HealthService::StatusOf(
    const std::string& service) const {
  if (!Known(service)) return HealthCheckResponse::SERVICE_UNKNOWN;
  // Whoever gets an answer has reached a live process.
  if (service == kLivenessService) return HealthCheckResponse::SERVING;
  return !draining_.load() && engine_.Serving() ? HealthCheckResponse::SERVING
                                              : HealthCheckResponse::NOT_SERVING;
}

grpc::ServerUnaryReactor* HealthService::Check(
    grpc::CallbackServerContext* context,
    const grpc::health::v1::HealthCheckRequest* request,
    HealthCheckResponse* response) {
  auto* reactor = context->DefaultReactor();
  if (!Known(request->service())) {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND,
                                 "unknown service " + request->service()));
    return reactor;
  }
  response->set_status(StatusOf(request->service()));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext*,
    const grpc::health::v1::HealthCheckRequest* request) {
  const std::string service = request->service();
  return watches_.Open(
      absl::Milliseconds(250),
      [this, service] {
        HealthCheckResponse r;
        r.set_status(StatusOf(service));
        return r;
      },
      [](const HealthCheckResponse& a, const HealthCheckResponse& b) {
        return a.status() == b.status();
      });
}

bool HealthService::Serving() const {
  return StatusOf("") == HealthCheckResponse::SERVING;
}

void HealthService::SetDraining() { draining_.store(true); }

void HealthService::EndWatches() {
  watches_.Shutdown(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down"));
}

}  // namespace dbpool::rpc
