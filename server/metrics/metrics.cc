#include "server/metrics/metrics.h"

#include <prometheus/gauge.h>
#include <prometheus/text_serializer.h>

#include <iterator>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/db/sql_state.h"
#include "server/metrics/pool_collector.h"

namespace dbpool::metrics {
namespace {

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* const buckets = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
      0.05,   0.1,     0.25,   0.5,   1,      2.5,   5,     10,   30};
  return *buckets;
}

const char* RpcTypeName(grpc::experimental::ServerRpcInfo::Type type) {
  using Type = grpc::experimental::ServerRpcInfo::Type;
  switch (type) {
    case Type::UNARY:
      return "unary";
    case Type::CLIENT_STREAMING:
      return "client_stream";
    case Type::SERVER_STREAMING:
      return "server_stream";
    case Type::BIDI_STREAMING:
      return "bidi_stream";
  }
  return "unknown";
}

// grpc_code values as go-grpc-prometheus writes them (Go's codes.Code
// names), so that existing dashboards and alerts match.
const char* GoCodeName(int code) {
  static constexpr const char* kNames[] = {
      "OK",          "Canceled",         "Unknown",           "InvalidArgument",
      "DeadlineExceeded", "NotFound",    "AlreadyExists",     "PermissionDenied",
      "ResourceExhausted", "FailedPrecondition", "Aborted",   "OutOfRange",
      "Unimplemented", "Internal",       "Unavailable",       "DataLoss",
      "Unauthenticated"};
  if (code < 0 || code >= static_cast<int>(std::size(kNames))) return "Unknown";
  return kNames[code];
}

class RpcInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcInterceptor(Metrics& metrics, std::string type, std::string service,
                 std::string method)
      : metrics_(metrics),
        type_(std::move(type)),
        service_(std::move(service)),
        method_(std::move(method)),
        start_(absl::Now()) {
    metrics_.RpcStarted(type_, service_, method_);
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_.ObserveRpc(type_, service_, method_,
                          methods->GetSendStatus().error_code(),
                          absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  Metrics& metrics_;
  const std::string type_;
  const std::string service_;
  const std::string method_;
  const absl::Time start_;
};

class RpcInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  RpcInterceptorFactory(Metrics& metrics, absl::flat_hash_set<std::string> known)
      : metrics_(metrics), known_(std::move(known)) {}

  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    std::string service = "unknown";
    std::string method = "unknown";
    const std::string full = info->method();
    if (known_.contains(full)) {
      // "/dbpool.v1.DatabaseService/Query"
      const auto slash = full.rfind('/');
      service = full.substr(1, slash - 1);
      method = full.substr(slash + 1);
    }
    return new RpcInterceptor(metrics_, RpcTypeName(info->type()), service, method);
  }

 private:
  Metrics& metrics_;
  const absl::flat_hash_set<std::string> known_;
};

}  // namespace

Metrics::Metrics(const std::string& version)
    : registry_(std::make_shared<prometheus::Registry>()),
      query_duration_(prometheus::BuildHistogram()
                          .Name("db_query_duration_seconds")
                          .Help("Time to run a statement and read its result.")
                          .Register(*registry_)),
      query_duration_all_(query_duration_.Add({}, LatencyBuckets())),
      query_errors_(prometheus::BuildCounter()
                        .Name("db_query_errors_total")
                        .Help("Failed statements by SQLSTATE class (\"none\" "
                              "for errors without one).")
                        .Register(*registry_)),
      rpc_started_(prometheus::BuildCounter()
                       .Name("grpc_server_started_total")
                       .Help("RPCs started on the server.")
                       .Register(*registry_)),
      rpc_handled_(prometheus::BuildCounter()
                       .Name("grpc_server_handled_total")
                       .Help("RPCs completed on the server, by code.")
                       .Register(*registry_)),
      rpc_seconds_(prometheus::BuildHistogram()
                       .Name("grpc_server_handling_seconds")
                       .Help("Time from the start of an RPC to its status.")
                       .Register(*registry_)) {
  prometheus::BuildGauge()
      .Name("dbpool_build_info")
      .Help("Always 1; the labels name the running build.")
      .Register(*registry_)
      .Add({{"version", version}})
      .Set(1);
  collectors_.push_back(std::make_shared<ProcessCollector>());
  collectors_.push_back(std::make_shared<EngineCollector>());
}

Metrics::~Metrics() = default;

void Metrics::AddPool(const pool::ConnectionPool& pool) {
  auto collector = std::make_shared<PoolCollector>(pool);
  pool_collector_ = collector.get();
  collectors_.push_back(std::move(collector));
  if (exposer_ != nullptr) exposer_->RegisterCollectable(collectors_.back());
}

void Metrics::AddReplicas(ReplicaSource source) {
  if (pool_collector_ != nullptr) pool_collector_->SetReplicas(std::move(source));
  // Only a server with replicas routes; without them the family would be
  // exported empty.
  routes_ = &prometheus::BuildCounter()
                 .Name("db_route_total")
                 .Help("Calls routed to the primary or a read replica, by target and reason.")
                 .Register(*registry_);
}

void Metrics::ObserveRoute(const std::string& target, const std::string& reason) {
  if (routes_ != nullptr) routes_->Add({{"target", target}, {"reason", reason}}).Increment();
}

void Metrics::AddTransactions(std::function<TransactionGauges()> source) {
  collectors_.push_back(std::make_shared<TransactionCollector>(std::move(source)));
  if (exposer_ != nullptr) exposer_->RegisterCollectable(collectors_.back());
}

void Metrics::StopExposing() { exposer_.reset(); }

absl::StatusOr<int> Metrics::Expose(const std::string& address) {
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(address, /*num_threads=*/2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " for metrics: ", e.what()));
  }
  exposer_->RegisterCollectable(registry_);
  for (const auto& c : collectors_) exposer_->RegisterCollectable(c);
  const std::vector<int> ports = exposer_->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError("metrics exporter has no port");
  return ports.front();
}

void Metrics::ObserveQuery(absl::Duration execution, const absl::Status& status) {
  query_duration_all_.Observe(absl::ToDoubleSeconds(execution));
  if (status.ok()) return;
  const auto sqlstate = db::SqlStateOf(status);
  query_errors_.Add({{"sqlstate_class", sqlstate ? sqlstate->substr(0, 2) : "none"}})
      .Increment();
}

void Metrics::RpcStarted(const std::string& type, const std::string& service,
                         const std::string& method) {
  rpc_started_
      .Add({{"grpc_type", type}, {"grpc_service", service}, {"grpc_method", method}})
      .Increment();
}

void Metrics::ObserveRpc(const std::string& type, const std::string& service,
                         const std::string& method, int code,
                         absl::Duration elapsed) {
  rpc_handled_
      .Add({{"grpc_type", type},
            {"grpc_service", service},
            {"grpc_method", method},
            {"grpc_code", GoCodeName(code)}})
      .Increment();
  rpc_seconds_
      .Add({{"grpc_type", type}, {"grpc_service", service}, {"grpc_method", method}},
           LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(elapsed));
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
Metrics::InterceptorFactory(absl::flat_hash_set<std::string> known_methods) {
  return std::make_unique<RpcInterceptorFactory>(*this, std::move(known_methods));
}

std::string Metrics::Scrape() const {
  std::vector<prometheus::MetricFamily> families = registry_->Collect();
  for (const auto& c : collectors_) {
    auto more = c->Collect();
    families.insert(families.end(), std::make_move_iterator(more.begin()),
                    std::make_move_iterator(more.end()));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

}  // namespace dbpool::metrics
