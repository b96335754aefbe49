// Config: every setting of dbpool-server, read from the environment with
// command-line flags overriding, validated as a whole.
//
// The table in config.cc is the one place that names each setting, its
// environment variable, its flag, its default and its limits; `--help` and
// .env.example are written from the same names. A plain value; loading does
// no I/O beyond reading the environment through the given lookup.
#ifndef DBPOOL_SERVER_CONFIG_CONFIG_H_
#define DBPOOL_SERVER_CONFIG_CONFIG_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dbpool::config {

struct Config {
  // Where to listen.
  std::string listen_host;
  int grpc_port = 0;
  int http_port = 0;
  int metrics_port = 0;

  // The database and the pool.
  std::string database_url;
  // Streaming replicas that take read_only calls (DATABASE_REPLICA_URLS).
  std::vector<std::string> replica_urls;
  absl::Duration replica_max_lag;
  absl::Duration replica_lag_probe;
  absl::Duration replica_wait;
  int max_connections = 0;
  int min_connections = 0;
  int expected_replicas = 0;  // dbpool instances sharing the database
  bool enforce_connection_budget = false;
  absl::Duration idle_timeout;
  absl::Duration max_lifetime;
  absl::Duration acquire_timeout;
  int max_waiting = 0;
  absl::Duration connect_timeout;
  int max_concurrent_connects = 0;
  absl::Duration statement_timeout;
  absl::Duration cancel_grace;
  std::string application_name;
  int prepared_cache_size = 0;
  int io_threads = 0;  // 0: one per core
  int pipeline_depth = 0;

  // Interactive transactions.
  absl::Duration tx_idle_timeout;
  absl::Duration tx_max_idle_timeout;
  absl::Duration tx_max_lifetime;
  int tx_max_open = 0;  // resolved: never 0 after Load
  std::string instance_name;  // empty: HOSTNAME:GRPC_PORT

  // Request limits.
  int max_sql_bytes = 0;
  int max_params = 0;
  int64_t max_rows = 0;
  int64_t max_result_bytes = 0;
  int max_batch_statements = 0;
  int max_stats_streams = 0;
  int64_t max_request_bytes = 0;
  int max_calls_per_caller = 0;  // 0: no per-caller limit

  // Security. Empty paths turn the feature off.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  std::string auth_tokens_file;
  bool reflection = true;

  // Process.
  absl::Duration shutdown_delay;
  absl::Duration shutdown_grace;
  std::string log_level;

  // Environment names of the settings given as flags: their values are
  // visible to every local user in /proc/PID/cmdline.
  std::vector<std::string> given_as_flags;
};

// Reads a variable from the environment; nullopt when unset.
using EnvLookup = std::function<std::optional<std::string>(const std::string&)>;
EnvLookup ProcessEnv();

// Builds the configuration from defaults, then `env`, then `args` (flags of
// the form --name=value or --name value, without the program name).
// On any problem, returns InvalidArgument listing every one, one per line.
absl::StatusOr<Config> Load(const EnvLookup& env,
                            const std::vector<std::string>& args);

// A description of every setting, for --help.
std::string Help();

// Every setting's environment variable and its default as written in the
// table ("" when it has none), in table order.
struct Variable {
  std::string name;
  std::string default_value;
};
std::vector<Variable> Variables();

// Whether `args` asks for help.
bool WantsHelp(const std::vector<std::string>& args);

}  // namespace dbpool::config

#endif  // DBPOOL_SERVER_CONFIG_CONFIG_H_
