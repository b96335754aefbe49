#include "server/app/server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/algorithm/container.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/app/connection_budget.h"
#include "server/db/pg_connection.h"
#include "server/engine/loop_engine.h"
#include "server/security/forwarded_client.h"
#include "server/security/tls.h"
#include "server/security/tokens.h"
#include "spdlog/spdlog.h"

namespace dbpool::app {
namespace {

// Every method the server registers, for bounded RPC metric labels.
absl::flat_hash_set<std::string> KnownMethods() {
  absl::flat_hash_set<std::string> methods;
  for (const char* name : {"dbpool.v1.DatabaseService", "grpc.health.v1.Health",
                           "grpc.reflection.v1alpha.ServerReflection"}) {
    const auto* service =
        google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(name);
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      methods.insert(absl::StrCat("/", name, "/", service->method(i)->name()));
    }
  }
  return methods;
}

// The settings that need files (TLS, tokens), and the rules a flag must
// keep; every problem is a configuration error.
struct Secured {
  std::optional<security::TlsSettings> tls;
  security::TokenTable tokens;
};

absl::Status ValidateReplicas(const config::Config& cfg) {
  absl::flat_hash_set<std::string> names;
  for (size_t i = 0; i < cfg.replica_urls.size(); ++i) {
    const std::string& url = cfg.replica_urls[i];
    if (absl::Status s = db::ValidateConninfo(url); !s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("DATABASE_REPLICA_URLS[", i, "]: ", s.message()));
    }
    if (db::ConninfoHasPassword(url) &&
        absl::c_linear_search(cfg.given_as_flags, "DATABASE_REPLICA_URLS")) {
      return absl::InvalidArgumentError(
          "--database-replica-urls carries a password, which would show in "
          "/proc/PID/cmdline: pass it in DATABASE_REPLICA_URLS in the environment, "
          "PGPASSWORD or a PGPASSFILE");
    }
    if (!names.insert(db::ConninfoEndpoint(url)).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DATABASE_REPLICA_URLS names ", db::ConninfoEndpoint(url), " twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

void Server::AddReplicas(const config::Config& cfg, const pool::PoolOptions& pool_options,
                         const engine::LoopEngineOptions& engine_options) {
  Server& server = *this;
  if (cfg.replica_urls.empty()) return;
  std::vector<engine::RoutingEngine::Replica> replicas;
  for (const std::string& url : cfg.replica_urls) {
    auto connector = std::make_shared<db::PgConnector>(db::ConnectionSettings{
        url, cfg.application_name, cfg.statement_timeout,
        static_cast<size_t>(cfg.prepared_cache_size)});
    server.replica_pools_.push_back(
        std::make_unique<pool::ConnectionPool>(pool_options, connector));
    server.engines_.push_back(
        std::make_unique<engine::LoopEngine>(*server.replica_pools_.back(), engine_options));
    replicas.push_back({db::ConninfoEndpoint(url), server.engines_.back().get()});
    spdlog::info("read replica {}", db::RedactConninfo(url));
  }
  engine::RoutingOptions options;
  options.max_lag = cfg.replica_max_lag;
  options.probe_interval = cfg.replica_lag_probe;
  options.wait = cfg.replica_wait;
  options.transaction_lifetime = cfg.tx_max_lifetime;
  metrics::Metrics* metrics = server.metrics_.get();
  server.router_ = std::make_unique<engine::RoutingEngine>(
      *server.engines_.front(), std::move(replicas), options,
      [metrics](const std::string& target, engine::RouteReason reason) {
        metrics->ObserveRoute(target, engine::RouteReasonName(reason));
      });
  server.engine_ = server.router_.get();
  metrics->AddReplicas([router = server.router_.get()] {
    std::vector<metrics::ReplicaGauges> out;
    for (engine::ReplicaState& r : router->Replicas()) {
      out.push_back({std::move(r.name), r.pool, r.routable, r.replay_lag});
    }
    return out;
  });
}

namespace {

absl::StatusOr<Secured> LoadSecurity(const config::Config& cfg) {
  Secured out;
  if (db::ConninfoHasPassword(cfg.database_url) &&
      absl::c_linear_search(cfg.given_as_flags, "DATABASE_URL")) {
    // Every local user can read a process's command line.
    return absl::InvalidArgumentError(
        "--database-url carries a password, which would show in "
        "/proc/PID/cmdline: pass it in DATABASE_URL in the environment, "
        "PGPASSWORD or a PGPASSFILE");
  }
  if (!cfg.tls_cert_file.empty()) {
    auto tls = security::LoadTls(cfg.tls_cert_file, cfg.tls_key_file,
                                 cfg.tls_client_ca_file);
    if (!tls.ok()) return absl::InvalidArgumentError(tls.status().message());
    out.tls = *std::move(tls);
  }
  if (!cfg.auth_tokens_file.empty()) {
    auto tokens = security::TokenTable::Load(cfg.auth_tokens_file);
    if (!tokens.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("DBPOOL_AUTH_TOKENS_FILE: ", tokens.status().message()));
    }
    out.tokens = *std::move(tokens);
    struct stat st {};
    if (stat(cfg.auth_tokens_file.c_str(), &st) == 0 && (st.st_mode & 0077) != 0) {
      spdlog::warn("{} is readable by other users; chmod 600 it",
                   cfg.auth_tokens_file);
    }
  }
  return out;
}

std::shared_ptr<grpc::ServerCredentials> GrpcCredentials(
    const std::optional<security::TlsSettings>& tls) {
  if (!tls.has_value()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions options(
      tls->mutual() ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                    : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_root_certs = tls->client_ca_pem;
  options.pem_key_cert_pairs.push_back({tls->private_key_pem, tls->cert_chain_pem});
  return grpc::SslServerCredentials(options);
}

// Linking grpc++_reflection registers its plugin with every ServerBuilder
// at start-up; this option takes it out again.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(
      std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    plugins->erase(std::remove_if(plugins->begin(), plugins->end(),
                                  [](const auto& p) {
                                    return p->name() == "proto_server_reflection";
                                  }),
                   plugins->end());
  }
};

std::string HostPort(const std::string& host, int port) {
  return absl::StrCat(host.find(':') != std::string::npos ? "[" + host + "]" : host,
                      ":", port);
}

// DBPOOL_INSTANCE_NAME, else HOSTNAME:GRPC_PORT; with a port picked at
// start (0), which is not known yet, the process id stands in for it.
std::string InstanceName(const config::Config& cfg) {
  if (!cfg.instance_name.empty()) return cfg.instance_name;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  return cfg.grpc_port != 0 ? absl::StrCat(host, ":", cfg.grpc_port)
                            : absl::StrCat(host, ":pid", getpid());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> BuildServer(const config::Config& cfg) {
  if (absl::Status s = db::ValidateConninfo(cfg.database_url); !s.ok()) {
    return absl::InvalidArgumentError(s.message());
  }
  if (absl::Status s = ValidateReplicas(cfg); !s.ok()) return s;
  absl::StatusOr<Secured> secured = LoadSecurity(cfg);
  if (!secured.ok()) return secured.status();

  std::unique_ptr<Server> server(new Server());
  server->listen_host_ = cfg.listen_host;
  server->drain_delay_ = cfg.shutdown_delay;

  pool::PoolOptions pool_options;
  pool_options.max_connections = cfg.max_connections;
  pool_options.min_connections = cfg.min_connections;
  pool_options.idle_timeout = cfg.idle_timeout;
  pool_options.max_lifetime = cfg.max_lifetime;
  pool_options.acquire_timeout = cfg.acquire_timeout;
  pool_options.max_waiting = cfg.max_waiting;
  pool_options.connect_timeout = cfg.connect_timeout;
  pool_options.max_concurrent_connects = cfg.max_concurrent_connects;
  auto connector = std::make_shared<db::PgConnector>(db::ConnectionSettings{
      cfg.database_url, cfg.application_name, cfg.statement_timeout,
      static_cast<size_t>(cfg.prepared_cache_size)});
  spdlog::info("database {}", db::RedactConninfo(cfg.database_url));
  if (absl::Status budget = CheckConnectionBudget(
          *connector, absl::Now() + cfg.connect_timeout, cfg.expected_replicas,
          cfg.max_connections, cfg.enforce_connection_budget);
      !budget.ok()) {
    return budget;
  }
  server->pool_ = std::make_unique<pool::ConnectionPool>(pool_options, connector);
  server->metrics_ = std::make_unique<metrics::Metrics>(DBPOOL_VERSION);
  server->metrics_->AddPool(*server->pool_);

  db::QueryLimits limits;
  limits.max_rows = cfg.max_rows;
  limits.max_result_bytes = cfg.max_result_bytes;
  limits.cancel_grace = cfg.cancel_grace;
  limits.statement_timeout = cfg.statement_timeout;
  engine::LoopEngineOptions engine_options;
  engine_options.transactions.idle_timeout = cfg.tx_idle_timeout;
  engine_options.transactions.max_idle_timeout = cfg.tx_max_idle_timeout;
  engine_options.transactions.max_lifetime = cfg.tx_max_lifetime;
  engine_options.transactions.max_open = cfg.tx_max_open;
  engine_options.transactions.instance = InstanceName(cfg);
  spdlog::info("instance {}", engine_options.transactions.instance);
  engine_options.pipeline_depth = cfg.pipeline_depth;
  engine_options.io_threads =
      cfg.io_threads > 0 ? cfg.io_threads
                         : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  engine_options.limits = limits;
  server->engines_.push_back(
      std::make_unique<engine::LoopEngine>(*server->pool_, engine_options));
  server->metrics_->AddTransactions([engine = server->engines_.front().get()] {
    return metrics::Metrics::TransactionGauges{engine->OpenTransactions(),
                                               engine->OldestTransactionAge()};
  });
  server->engine_ = server->engines_.front().get();
  server->AddReplicas(cfg, pool_options, engine_options);

  // Lets the service trust the client names the REST gateway forwards.
  const std::string forwarding_secret = security::NewForwardingSecret();
  rpc::ServiceOptions service_options;
  service_options.request.max_sql_bytes = cfg.max_sql_bytes;
  service_options.request.max_params = cfg.max_params;
  service_options.request.max_batch_statements = cfg.max_batch_statements;
  service_options.statement_timeout = cfg.statement_timeout;
  service_options.max_stats_streams = cfg.max_stats_streams;
  service_options.tokens = secured->tokens;
  service_options.max_calls_per_caller = cfg.max_calls_per_caller;
  service_options.forwarding_secret = forwarding_secret;
  spdlog::info("tls={} mutual_tls={} bearer_tokens={} reflection={}",
               secured->tls.has_value(), secured->tls && secured->tls->mutual(),
               secured->tokens.size(), cfg.reflection);
  if (!secured->tokens.empty() && !secured->tls.has_value()) {
    spdlog::warn("bearer tokens travel in clear text without TLS "
                 "(DBPOOL_TLS_CERT_FILE)");
  }
  server->database_ = std::make_unique<rpc::DatabaseService>(
      *server->engine_, service_options, server->metrics_.get());
  server->health_ =
      std::make_unique<rpc::HealthService>(*server->engine_, cfg.max_stats_streams);

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  const std::string address = HostPort(cfg.listen_host, cfg.grpc_port);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(server->metrics_->InterceptorFactory(KnownMethods()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.AddListeningPort(address, GrpcCredentials(secured->tls), &server->grpc_port_);
  builder.RegisterService(server->database_.get());
  builder.RegisterService(server->health_.get());
  if (!cfg.reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.max_request_bytes));
  server->grpc_ = builder.BuildAndStart();
  if (server->grpc_ == nullptr || server->grpc_port_ == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, " (port in use?)"));
  }
  absl::StatusOr<int> metrics_port =
      server->metrics_->Expose(HostPort(cfg.listen_host, cfg.metrics_port));
  if (!metrics_port.ok()) return metrics_port.status();
  server->metrics_port_ = *metrics_port;

  http::GatewayOptions gateway_options;
  gateway_options.address = HostPort(cfg.listen_host, cfg.http_port);
  gateway_options.max_body_bytes = cfg.max_request_bytes;
  gateway_options.tls = secured->tls;
  gateway_options.forwarding_secret = forwarding_secret;
  gateway_options.call_timeout = cfg.acquire_timeout + cfg.statement_timeout;
  // Each HTTP request holds a worker while its query waits and runs; twice
  // the pool leaves workers for /healthz and /readyz while the pool is busy.
  gateway_options.threads = std::max(16, 2 * cfg.max_connections);
  server->gateway_ = std::make_unique<http::RestGateway>(
      server->InProcessChannel(),
      [health = server->health_.get()] { return health->Serving(); },
      gateway_options);
  absl::StatusOr<int> http_port = server->gateway_->Start();
  if (!http_port.ok()) return http_port.status();
  server->http_port_ = *http_port;
  spdlog::info("pool max={} min={} acquire_timeout={}ms", cfg.max_connections,
               cfg.min_connections, absl::ToInt64Milliseconds(cfg.acquire_timeout));
  return server;
}

Server::~Server() { Stop(absl::ZeroDuration(), absl::ZeroDuration()); }

std::string Server::Address(int port) const { return HostPort(listen_host_, port); }

std::shared_ptr<grpc::Channel> Server::InProcessChannel() {
  return grpc_->InProcessChannel(grpc::ChannelArguments());
}

void Server::Shutdown(absl::Duration grace) { Stop(drain_delay_, grace); }

void Server::Stop(absl::Duration delay, absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  // A server that failed half-way through BuildServer has only some parts.
  if (health_ != nullptr) health_->SetDraining();
  // Load balancers learn from /readyz and Health that this instance is
  // going and stop sending; calls that still come are served. gRPC's own
  // shutdown would answer CANCELLED to a call it has read but not yet
  // started.
  if (delay > absl::ZeroDuration()) absl::SleepFor(delay);
  if (health_ != nullptr) health_->EndWatches();
  if (database_ != nullptr) database_->EndStreams();
  if (grpc_ != nullptr) {
    // In-flight calls finish within the grace period; new ones are refused.
    grpc_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
    grpc_->Wait();
  }
  // Each web server takes up to 2 s to notice that it should stop
  // (civetweb's poll interval): stop the two together.
  std::thread stop_http([this] {
    if (gateway_ != nullptr) gateway_->Stop();
  });
  if (metrics_ != nullptr) metrics_->StopExposing();
  stop_http.join();
  // No call can reach them any more; the engine rolls them back as it
  // stops, and the log says so for their callers.
  if (engine_ != nullptr) {
    if (const int open = engine_->Snapshot().transactions; open > 0) {
      spdlog::warn("shutting down: {} open transactions are rolled back", open);
    }
  }
  // Probes would only find the pools draining.
  if (router_ != nullptr) router_->Stop();
  if (pool_ != nullptr) pool_->Drain();
  for (auto& replica : replica_pools_) replica->Drain();
}

}  // namespace dbpool::app
