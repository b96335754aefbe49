#include "server/config/config.h"

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"

namespace dbpool::config {
namespace {

using Apply = std::function<std::string(Config&, const std::string&)>;

struct Option {
  const char* env;
  const char* default_value;
  const char* help;
  Apply apply;  // returns an error message, empty when the value is good
};

template <typename T>
Apply Int(T Config::*field, int64_t lo, int64_t hi) {
  return [=](Config& c, const std::string& v) -> std::string {
    int64_t n = 0;
    if (!absl::SimpleAtoi(v, &n)) return absl::StrCat("not an integer: \"", v, "\"");
    if (n < lo || n > hi) {
      return absl::StrCat(n, " is out of range [", lo, ", ", hi, "]");
    }
    c.*field = static_cast<T>(n);
    return "";
  };
}

Apply Millis(absl::Duration Config::*field, int64_t lo, int64_t hi) {
  return [=](Config& c, const std::string& v) -> std::string {
    int64_t n = 0;
    if (!absl::SimpleAtoi(v, &n)) {
      return absl::StrCat("not a whole number of milliseconds: \"", v, "\"");
    }
    if (n < lo || n > hi) {
      return absl::StrCat(n, " ms is out of range [", lo, ", ", hi, "]");
    }
    c.*field = absl::Milliseconds(n);
    return "";
  };
}

Apply Text(std::string Config::*field, bool required) {
  return [=](Config& c, const std::string& v) -> std::string {
    if (required && v.empty()) return "must not be empty";
    c.*field = v;
    return "";
  };
}

// Splits at the commas that start another connection string: a URI
// (postgres:// or postgresql://) or a key=value string. A multi-host URI
// (postgresql://a,b/db) or a host list (host=a,b) stays whole.
Apply ConnectionStrings(std::vector<std::string> Config::*field) {
  return [=](Config& c, const std::string& v) -> std::string {
    std::vector<std::string> out;
    std::string current;
    for (absl::string_view part : absl::StrSplit(v, ',')) {
      const absl::string_view next = absl::StripLeadingAsciiWhitespace(part);
      const size_t eq = next.find('=');
      const bool starts = absl::StartsWith(next, "postgres://") ||
                          absl::StartsWith(next, "postgresql://") ||
                          (eq != absl::string_view::npos && eq > 0 &&
                           next.substr(0, eq).find_first_of(" /:@") == absl::string_view::npos);
      if (starts && !current.empty()) {
        out.emplace_back(absl::StripAsciiWhitespace(current));
        current.clear();
      }
      if (!current.empty()) current += ',';
      current += std::string(part);
    }
    if (!absl::StripAsciiWhitespace(current).empty()) {
      out.emplace_back(absl::StripAsciiWhitespace(current));
    }
    c.*field = std::move(out);
    return "";
  };
}

Apply OneOf(std::string Config::*field, std::vector<std::string> allowed) {
  return [=](Config& c, const std::string& v) -> std::string {
    for (const auto& a : allowed) {
      if (v == a) {
        c.*field = v;
        return "";
      }
    }
    return absl::StrCat("\"", v, "\" is not one of ", absl::StrJoin(allowed, ", "));
  };
}

Apply Bool(bool Config::*field) {
  return [=](Config& c, const std::string& v) -> std::string {
    const std::string lower = absl::AsciiStrToLower(v);
    if (lower == "true" || lower == "on" || lower == "1") {
      c.*field = true;
    } else if (lower == "false" || lower == "off" || lower == "0") {
      c.*field = false;
    } else {
      return absl::StrCat("\"", v, "\" is not one of true, false");
    }
    return "";
  };
}

constexpr int64_t kMaxMs = int64_t{24} * 3600 * 1000;

const std::vector<Option>& Options() {
  static const auto* const options = new std::vector<Option>{
      {"DATABASE_URL", "",
       "libpq URI or key=value string; the password is never logged. "
       "Required (the run script starts a local PostgreSQL when unset)",
       Text(&Config::database_url, /*required=*/true)},
      {"DATABASE_REPLICA_URLS", "",
       "streaming replicas for read_only calls, comma-separated libpq URIs or "
       "key=value strings, each with a pool like the primary's; empty: "
       "everything runs on DATABASE_URL",
       ConnectionStrings(&Config::replica_urls)},
      {"DB_REPLICA_MAX_LAG_MS", "1000",
       "replicas whose replay lag is over this take no reads",
       Millis(&Config::replica_max_lag, 0, kMaxMs)},
      {"DB_REPLICA_LAG_PROBE_MS", "250",
       "how often each replica's replay position and lag are probed",
       Millis(&Config::replica_lag_probe, 10, 60000)},
      {"DB_REPLICA_WAIT_MS", "200",
       "longest a read with min_lsn waits for a replica to replay that far "
       "before it runs on the primary; 0: it never waits",
       Millis(&Config::replica_wait, 0, 60000)},
      {"DBPOOL_LISTEN_HOST", "0.0.0.0", "address every port binds to",
       Text(&Config::listen_host, true)},
      {"DBPOOL_GRPC_PORT", "50051", "gRPC port; 0 picks a free one",
       Int(&Config::grpc_port, 0, 65535)},
      {"DBPOOL_HTTP_PORT", "8080", "REST/JSON shim and health port; 0 picks a free one",
       Int(&Config::http_port, 0, 65535)},
      {"DBPOOL_METRICS_PORT", "9464", "Prometheus exporter port; 0 picks a free one",
       Int(&Config::metrics_port, 0, 65535)},
      {"DB_POOL_MAX_CONNECTIONS", "20", "hard cap on server connections",
       Int(&Config::max_connections, 1, 10000)},
      {"DB_POOL_MIN_CONNECTIONS", "2", "connections kept open and warm",
       Int(&Config::min_connections, 0, 10000)},
      {"DBPOOL_EXPECTED_REPLICAS", "1",
       "dbpool instances sharing the database (the most a deployment scales "
       "to): at start, replicas x DB_POOL_MAX_CONNECTIONS is checked against "
       "the server's max_connections less its reserved connections",
       Int(&Config::expected_replicas, 1, 10000)},
      {"DBPOOL_ENFORCE_CONNECTION_BUDGET", "false",
       "refuse to start, instead of warning, when the replicas' pools cannot "
       "fit the server's connections",
       Bool(&Config::enforce_connection_budget)},
      {"DB_POOL_IDLE_TIMEOUT_MS", "30000",
       "idle connections above the minimum close after this",
       Millis(&Config::idle_timeout, 100, kMaxMs)},
      {"DB_POOL_MAX_LIFETIME_MS", "1800000",
       "connections retire after this (minus up to 10% jitter), never while in use",
       Millis(&Config::max_lifetime, 1000, kMaxMs)},
      {"DB_POOL_ACQUIRE_TIMEOUT_MS", "5000",
       "longest wait for a connection; the RPC deadline can shorten it",
       Millis(&Config::acquire_timeout, 1, 600000)},
      {"DB_POOL_MAX_WAITING", "1000",
       "callers allowed to wait; beyond it RESOURCE_EXHAUSTED at once",
       Int(&Config::max_waiting, 0, 1000000)},
      {"DB_POOL_CONNECT_TIMEOUT_MS", "5000", "time allowed to open one connection",
       Millis(&Config::connect_timeout, 100, 600000)},
      {"DB_POOL_MAX_CONCURRENT_CONNECTS", "2",
       "connections being opened at once, at most (they hold no thread while "
       "they wait): bounds the burst of new sessions after an outage or failover",
       Int(&Config::max_concurrent_connects, 1, 1000)},
      {"DB_STATEMENT_TIMEOUT_MS", "30000",
       "default statement timeout; QueryRequest.timeout and the RPC deadline cap it",
       Millis(&Config::statement_timeout, 1, kMaxMs)},
      {"DB_CANCEL_GRACE_MS", "2000",
       "how long a cancelled or timed-out statement may take to stop before "
       "its connection is closed and replaced",
       Millis(&Config::cancel_grace, 1, 600000)},
      {"DB_APPLICATION_NAME", "dbpool",
       "application_name of every pooled connection (see pg_stat_activity)",
       Text(&Config::application_name, false)},
      {"DBPOOL_IO_THREADS", "0",
       "threads that run statements (event loops over the pooled connections); "
       "0: one per core",
       Int(&Config::io_threads, 0, 256)},
      {"DB_PIPELINE_DEPTH", "4",
       "statements of different callers in flight on one connection at most, "
       "when every connection is busy (short queries and DML only); 1: none",
       Int(&Config::pipeline_depth, 1, 64)},
      {"DB_PREPARED_CACHE_SIZE", "512",
       "prepared statements kept per connection, least recently used out; "
       "0 prepares nothing (for a PgBouncer in transaction mode in between)",
       Int(&Config::prepared_cache_size, 0, 100000)},
      {"DB_TX_IDLE_TIMEOUT_MS", "60000",
       "an interactive transaction idle this long is rolled back; "
       "BeginTransactionRequest.idle_timeout can change it up to "
       "DB_TX_MAX_IDLE_TIMEOUT_MS",
       Millis(&Config::tx_idle_timeout, 100, kMaxMs)},
      {"DB_TX_MAX_IDLE_TIMEOUT_MS", "600000",
       "the longest idle timeout a transaction may ask for",
       Millis(&Config::tx_max_idle_timeout, 100, kMaxMs)},
      {"DB_TX_MAX_LIFETIME_MS", "3600000",
       "an interactive transaction older than this is rolled back, busy or not",
       Millis(&Config::tx_max_lifetime, 1000, kMaxMs)},
      {"DB_TX_MAX_OPEN", "0",
       "interactive transactions open at once at most (each pins a connection); "
       "beyond it BeginTransaction gets RESOURCE_EXHAUSTED; 0: half of "
       "DB_POOL_MAX_CONNECTIONS, at least 1",
       Int(&Config::tx_max_open, 0, 10000)},
      {"DBPOOL_INSTANCE_NAME", "",
       "this instance's name in the transaction ids it hands out, so that a "
       "call reaching another instance is told where to go; empty: "
       "HOSTNAME:GRPC_PORT",
       Text(&Config::instance_name, false)},
      {"DBPOOL_MAX_SQL_BYTES", "1048576", "longest SQL text accepted",
       Int(&Config::max_sql_bytes, 1, 64 << 20)},
      {"DBPOOL_MAX_PARAMS", "65535", "most parameters per statement (PostgreSQL's own cap)",
       Int(&Config::max_params, 0, 65535)},
      {"DBPOOL_MAX_ROWS", "100000",
       "most rows one result may have; QueryRequest.max_rows can only lower it",
       Int(&Config::max_rows, 1, std::numeric_limits<int32_t>::max())},
      {"DBPOOL_MAX_RESULT_BYTES", "67108864", "largest result, in bytes of cell data",
       Int(&Config::max_result_bytes, 1024, int64_t{1} << 32)},
      {"DBPOOL_MAX_BATCH_STATEMENTS", "10000", "most statements in one ExecuteBatch",
       Int(&Config::max_batch_statements, 1, 1000000)},
      {"DBPOOL_MAX_STATS_STREAMS", "64", "concurrent StreamPoolStats calls",
       Int(&Config::max_stats_streams, 1, 100000)},
      {"DBPOOL_MAX_REQUEST_BYTES", "33554432",
       "largest gRPC request message and HTTP body",
       Int(&Config::max_request_bytes, 1024, int64_t{1} << 30)},
      {"DBPOOL_MAX_CALLS_PER_CALLER", "0",
       "Query, StreamQuery, ExecuteBatch and BeginTransaction calls one caller "
       "(token name, else client certificate or address) may have in flight; "
       "beyond it RESOURCE_EXHAUSTED at once; 0: no limit",
       Int(&Config::max_calls_per_caller, 0, 1000000)},
      {"DBPOOL_TLS_CERT_FILE", "",
       "PEM certificate chain: gRPC and HTTP serve TLS only when set",
       Text(&Config::tls_cert_file, false)},
      {"DBPOOL_TLS_KEY_FILE", "", "PEM private key of DBPOOL_TLS_CERT_FILE",
       Text(&Config::tls_key_file, false)},
      {"DBPOOL_TLS_CLIENT_CA_FILE", "",
       "PEM CA certificates: when set, gRPC and HTTP clients must present a "
       "certificate it signed (mutual TLS)",
       Text(&Config::tls_client_ca_file, false)},
      {"DBPOOL_AUTH_TOKENS_FILE", "",
       "bearer tokens, one \"NAME ROLE TOKEN\" per line (roles read_only, "
       "read_write, monitor): when set, every call but health needs one",
       Text(&Config::auth_tokens_file, false)},
      {"DBPOOL_REFLECTION", "true",
       "serve gRPC server reflection (the public schema, no data)",
       Bool(&Config::reflection)},
      {"DBPOOL_SHUTDOWN_DELAY_MS", "0",
       "on SIGTERM, time to keep serving while /readyz and Health say "
       "NOT_SERVING, so that load balancers stop sending first; set it past "
       "their health-check interval times their fall count",
       Millis(&Config::shutdown_delay, 0, 600000)},
      {"DBPOOL_SHUTDOWN_GRACE_MS", "30000",
       "on SIGTERM, time given to in-flight calls before they are cancelled",
       Millis(&Config::shutdown_grace, 0, 600000)},
      {"DBPOOL_LOG_LEVEL", "info", "trace, debug, info, warn, error or off",
       OneOf(&Config::log_level, {"trace", "debug", "info", "warn", "error", "off"})},
  };
  return *options;
}

// DB_POOL_MAX_CONNECTIONS -> db-pool-max-connections; the DBPOOL_ prefix is
// dropped because every flag is dbpool's (--grpc-port).
std::string FlagName(absl::string_view env) {
  absl::ConsumePrefix(&env, "DBPOOL_");
  return absl::StrReplaceAll(absl::AsciiStrToLower(env), {{"_", "-"}});
}

}  // namespace

EnvLookup ProcessEnv() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

bool WantsHelp(const std::vector<std::string>& args) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") return true;
  }
  return false;
}

absl::StatusOr<Config> Load(const EnvLookup& env,
                            const std::vector<std::string>& args) {
  std::vector<std::string> problems;
  std::vector<std::string> values(Options().size());
  std::vector<std::string> config_flags;
  for (size_t i = 0; i < Options().size(); ++i) {
    values[i] = env(Options()[i].env).value_or(Options()[i].default_value);
  }
  for (size_t a = 0; a < args.size(); ++a) {
    absl::string_view arg = args[a];
    if (!absl::ConsumePrefix(&arg, "--")) {
      problems.push_back(absl::StrCat("unexpected argument \"", args[a], "\""));
      continue;
    }
    std::string name(arg);
    std::optional<std::string> value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    size_t i = 0;
    while (i < Options().size() && FlagName(Options()[i].env) != name) ++i;
    if (i == Options().size()) {
      problems.push_back(absl::StrCat("unknown flag --", name));
      continue;
    }
    if (!value.has_value()) {
      if (a + 1 == args.size()) {
        problems.push_back(absl::StrCat("flag --", name, " needs a value"));
        continue;
      }
      value = args[++a];
    }
    values[i] = *value;
    config_flags.emplace_back(Options()[i].env);
  }
  Config config;
  for (size_t i = 0; i < Options().size(); ++i) {
    std::string error = Options()[i].apply(config, values[i]);
    if (!error.empty()) {
      problems.push_back(absl::StrCat(Options()[i].env, " (--",
                                      FlagName(Options()[i].env), "): ", error));
    }
  }
  if (problems.empty() && config.min_connections > config.max_connections) {
    problems.push_back(absl::StrCat(
        "DB_POOL_MIN_CONNECTIONS (", config.min_connections,
        ") must not exceed DB_POOL_MAX_CONNECTIONS (", config.max_connections, ")"));
  }
  if (problems.empty() && config.tx_max_open > config.max_connections) {
    problems.push_back(absl::StrCat(
        "DB_TX_MAX_OPEN (", config.tx_max_open,
        ") must not exceed DB_POOL_MAX_CONNECTIONS (", config.max_connections, ")"));
  }
  if (problems.empty() && config.tx_idle_timeout > config.tx_max_idle_timeout) {
    problems.push_back(
        "DB_TX_IDLE_TIMEOUT_MS must not exceed DB_TX_MAX_IDLE_TIMEOUT_MS");
  }
  if (config.tx_max_open == 0) config.tx_max_open = std::max(1, config.max_connections / 2);
  if (config.tls_cert_file.empty() != config.tls_key_file.empty()) {
    problems.push_back(
        "DBPOOL_TLS_CERT_FILE and DBPOOL_TLS_KEY_FILE must be set together");
  }
  if (!config.tls_client_ca_file.empty() && config.tls_cert_file.empty()) {
    problems.push_back(
        "DBPOOL_TLS_CLIENT_CA_FILE needs DBPOOL_TLS_CERT_FILE and "
        "DBPOOL_TLS_KEY_FILE (mutual TLS is TLS first)");
  }
  if (!problems.empty()) {
    return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
  }
  config.given_as_flags = std::move(config_flags);
  return config;
}

std::vector<Variable> Variables() {
  std::vector<Variable> variables;
  for (const auto& o : Options()) variables.push_back({o.env, o.default_value});
  return variables;
}

std::string Help() {
  std::string out =
      "Usage: dbpool-server [--flag=value ...]\n"
      "Every setting is an environment variable; a flag overrides it.\n\n";
  for (const auto& o : Options()) {
    absl::StrAppend(&out, "  --", FlagName(o.env), "  (", o.env, ", default \"",
                    o.default_value, "\")\n      ", o.help, "\n");
  }
  return out;
}

}  // namespace dbpool::config
