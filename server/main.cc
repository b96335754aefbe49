// dbpool-server: loads the configuration, builds the server (app::Server),
// serves until SIGTERM or SIGINT, then drains.
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <google/protobuf/stubs/logging.h>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/app/server.h"
#include "server/config/config.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace {

constexpr int kConfigError = 2;

int ConfigError(absl::string_view message) {
  std::cerr << "dbpool-server: invalid configuration:\n" << message << "\n(see --help)\n";
  return kConfigError;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dbpool;
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (config::WantsHelp(args)) {
    std::cout << config::Help();
    return 0;
  }
  absl::StatusOr<config::Config> loaded = config::Load(config::ProcessEnv(), args);
  if (!loaded.ok()) return ConfigError(loaded.status().message());
  const config::Config& cfg = *loaded;
  // Logs go to stderr; stdout carries only the machine-readable ready line.
  spdlog::set_default_logger(spdlog::stderr_color_mt("dbpool"));
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
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

  // Signals go to the waiting thread below, not to whichever thread runs;
  // blocked before any thread starts, so that every thread inherits it.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<std::unique_ptr<app::Server>> server = app::BuildServer(cfg);
  if (!server.ok()) {
    if (absl::IsInvalidArgument(server.status()) ||
        absl::IsFailedPrecondition(server.status())) {
      return ConfigError(server.status().message());
    }
    spdlog::error("{}", std::string(server.status().message()));
    return 1;
  }
  // Scripts and tests read the bound ports from this line.
  std::printf("dbpool-server listening grpc=%s http=%s metrics=%s\n",
              (*server)->Address((*server)->grpc_port()).c_str(),
              (*server)->Address((*server)->http_port()).c_str(),
              (*server)->Address((*server)->metrics_port()).c_str());
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("signal {}: draining (delay {} ms, grace {} ms)", signal_number,
               absl::ToInt64Milliseconds(cfg.shutdown_delay),
               absl::ToInt64Milliseconds(cfg.shutdown_grace));
  (*server)->Shutdown(cfg.shutdown_grace);
  spdlog::info("drained; exiting");
  return 0;
}
