// dbpool-server: wiring only. Loads the configuration, builds the pool, the
// executor and the services, serves until SIGTERM or SIGINT, then drains.
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/logging.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>

#include "absl/algorithm/container.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "server/common/executor.h"
#include "server/config/config.h"
#include "server/db/pg_connection.h"
#include "server/http/rest_gateway.h"
#include "server/metrics/metrics.h"
#include "server/pool/connection_pool.h"
#include "server/rpc/database_service.h"
#include "server/rpc/health_service.h"
#include "server/security/tls.h"
#include "server/security/tokens.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

constexpr int kConfigError = 2;

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
  std::optional<dbpool::security::TlsSettings> tls;
  dbpool::security::TokenTable tokens;
};

absl::StatusOr<Secured> LoadSecurity(const dbpool::config::Config& cfg) {
  using namespace dbpool;
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
    if (!tls.ok()) return tls.status();
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
    const std::optional<dbpool::security::TlsSettings>& tls) {
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

}  // namespace

int main(int argc, char** argv) {
  using namespace dbpool;
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (config::WantsHelp(args)) {
    std::cout << config::Help();
    return 0;
  }
  absl::StatusOr<config::Config> loaded =
      config::Load(config::ProcessEnv(), args);
  absl::Status conninfo_status =
      loaded.ok() ? db::ValidateConninfo(loaded->database_url) : absl::OkStatus();
  if (!loaded.ok() || !conninfo_status.ok()) {
    std::cerr << "dbpool-server: invalid configuration:\n"
              << (loaded.ok() ? conninfo_status.message()
                              : loaded.status().message())
              << "\n(see --help)\n";
    return kConfigError;
  }
  const config::Config& cfg = *loaded;
  // Logs go to stderr; stdout carries only the machine-readable ready line.
  spdlog::set_default_logger(spdlog::stderr_color_mt("dbpool"));
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  absl::StatusOr<Secured> secured = LoadSecurity(cfg);
  if (!secured.ok()) {
    std::cerr << "dbpool-server: invalid configuration:\n"
              << secured.status().message() << "\n(see --help)\n";
    return kConfigError;
  }
  // protobuf logs every unparsable request; the caller already gets
  // INVALID_ARGUMENT, so these are debug noise, not errors.
  google::protobuf::SetLogHandler(
      +[](google::protobuf::LogLevel, const char*, int, const std::string& message) {
        spdlog::debug("protobuf: {}", message);
      });

  // Debian's abseil checks every absl::Mutex lock for deadlock cycles by
  // default: a cost on each call through gRPC, whose locks are absl::Mutex,
  // that the tests, not production, should pay.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Signals go to the waiting thread below, not to whichever thread runs.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  pool::PoolOptions pool_options;
  pool_options.max_connections = cfg.max_connections;
  pool_options.min_connections = cfg.min_connections;
  pool_options.idle_timeout = cfg.idle_timeout;
  pool_options.max_lifetime = cfg.max_lifetime;
  pool_options.acquire_timeout = cfg.acquire_timeout;
  pool_options.max_waiting = cfg.max_waiting;
  pool_options.connect_timeout = cfg.connect_timeout;
  auto connector = std::make_shared<db::PgConnector>(db::ConnectionSettings{
      cfg.database_url, cfg.application_name, cfg.statement_timeout});
  spdlog::info("database {}", db::RedactConninfo(cfg.database_url));

  // One worker per connection: a leased connection never waits for a thread.
  Executor executor(cfg.max_connections, "dbpool-worker");
  pool::ConnectionPool pool(pool_options, connector);
  metrics::Metrics metrics(DBPOOL_VERSION);
  metrics.AddPool(pool);

  rpc::ServiceOptions service_options;
  service_options.request.max_sql_bytes = cfg.max_sql_bytes;
  service_options.request.max_params = cfg.max_params;
  service_options.query.max_rows = cfg.max_rows;
  service_options.query.max_result_bytes = cfg.max_result_bytes;
  service_options.query.cancel_grace = cfg.cancel_grace;
  service_options.statement_timeout = cfg.statement_timeout;
  service_options.max_stats_streams = cfg.max_stats_streams;
  service_options.tokens = secured->tokens;
  service_options.max_calls_per_caller = cfg.max_calls_per_caller;
  spdlog::info("tls={} mutual_tls={} bearer_tokens={} reflection={}",
               secured->tls.has_value(), secured->tls && secured->tls->mutual(),
               secured->tokens.size(), cfg.reflection);
  if (!secured->tokens.empty() && !secured->tls.has_value()) {
    spdlog::warn("bearer tokens travel in clear text without TLS "
                 "(DBPOOL_TLS_CERT_FILE)");
  }
  rpc::DatabaseService database_service(pool, executor, service_options, &metrics);
  rpc::HealthService health_service(pool, cfg.max_stats_streams);

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  const std::string address = HostPort(cfg.listen_host, cfg.grpc_port);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(metrics.InterceptorFactory(KnownMethods()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.AddListeningPort(address, GrpcCredentials(secured->tls), &grpc_port);
  builder.RegisterService(&database_service);
  builder.RegisterService(&health_service);
  if (!cfg.reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  builder.SetMaxReceiveMessageSize(static_cast<int>(cfg.max_request_bytes));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || grpc_port == 0) {
    spdlog::error("cannot listen on {} (port in use?)", address);
    return 1;
  }
  absl::StatusOr<int> metrics_port =
      metrics.Expose(HostPort(cfg.listen_host, cfg.metrics_port));
  if (!metrics_port.ok()) {
    spdlog::error("{}", std::string(metrics_port.status().message()));
    return 1;
  }
  http::GatewayOptions gateway_options;
  gateway_options.address = HostPort(cfg.listen_host, cfg.http_port);
  gateway_options.max_body_bytes = cfg.max_request_bytes;
  gateway_options.tls = secured->tls;
  gateway_options.call_timeout = cfg.acquire_timeout + cfg.statement_timeout;
  // Each HTTP request holds a worker while its query waits and runs; twice
  // the pool leaves workers for /healthz and /readyz while the pool is busy.
  gateway_options.threads = std::max(16, 2 * cfg.max_connections);
  http::RestGateway gateway(server->InProcessChannel(grpc::ChannelArguments()),
                            [&health_service] { return health_service.Serving(); },
                            gateway_options);
  absl::StatusOr<int> http_port = gateway.Start();
  if (!http_port.ok()) {
    spdlog::error("{}", std::string(http_port.status().message()));
    return 1;
  }
  spdlog::info("pool max={} min={} acquire_timeout={}ms", cfg.max_connections,
               cfg.min_connections, absl::ToInt64Milliseconds(cfg.acquire_timeout));
  // Scripts and tests read the bound ports from this line.
  std::printf("dbpool-server listening grpc=%s http=%s metrics=%s\n",
              HostPort(cfg.listen_host, grpc_port).c_str(),
              HostPort(cfg.listen_host, *http_port).c_str(),
              HostPort(cfg.listen_host, *metrics_port).c_str());
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("signal {}: draining (grace {} ms)", signal_number,
               absl::ToInt64Milliseconds(cfg.shutdown_grace));
  health_service.SetDraining();
  health_service.EndWatches();
  database_service.EndStreams();
  // In-flight calls finish within the grace period; new ones are refused.
  server->Shutdown(absl::ToChronoTime(absl::Now() + cfg.shutdown_grace));
  server->Wait();
  // Each web server takes up to 2 s to notice that it should stop
  // (civetweb's poll interval): stop the two together.
  std::thread stop_http([&gateway] { gateway.Stop(); });
  metrics.StopExposing();
  stop_http.join();
  pool.Drain();
  spdlog::info("drained; exiting");
  return 0;
}
