#include "server/db/pg_connection.h"

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace dbpool::db {
namespace {

struct ConninfoOptionsDeleter {
  void operator()(PQconninfoOption* o) const { PQconninfoFree(o); }
};
using ConninfoOptions = std::unique_ptr<PQconninfoOption, ConninfoOptionsDeleter>;

absl::StatusOr<ConninfoOptions> Parse(const std::string& conninfo) {
  char* error = nullptr;
  ConninfoOptions options(PQconninfoParse(conninfo.c_str(), &error));
  if (options == nullptr) {
    std::string message = error != nullptr ? error : "out of memory";
    PQfreemem(error);
    return absl::InvalidArgumentError(absl::StrCat(
        "DATABASE_URL is not a valid libpq connection string: ",
        absl::StripAsciiWhitespace(message)));
  }
  return options;
}

std::string LastError(PGconn* conn) {
  return std::string(absl::StripAsciiWhitespace(PQerrorMessage(conn)));
}

// Cancel requests whose thread still waits for the postmaster.
std::atomic<int> cancels_in_flight{0};
// A postmaster that never answers costs a thread per cancelled statement
// until it does; past this many, connections are given up without a cancel.
constexpr int kMaxCancelsInFlight = 16;


}  // namespace

absl::Status ValidateConninfo(const std::string& conninfo) {
  return Parse(conninfo).status();
}

bool ConninfoHasPassword(const std::string& conninfo) {
  auto options = Parse(conninfo);
  if (!options.ok()) return false;
  for (PQconninfoOption* o = options->get(); o->keyword != nullptr; ++o) {
    if (std::strcmp(o->keyword, "password") == 0) {
      return o->val != nullptr && *o->val != '\0';
    }
  }
  return false;
}

std::string RedactConninfo(const std::string& conninfo) {
  auto options = Parse(conninfo);
  if (!options.ok()) return "(unparsable connection string)";
  std::vector<std::string> parts;
  for (PQconninfoOption* o = options->get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr || *o->val == '\0') continue;
    const bool secret = std::strcmp(o->keyword, "password") == 0;
    parts.push_back(absl::StrCat(o->keyword, "=", secret ? "***" : o->val));
  }
  return absl::StrJoin(parts, " ");
}

std::string ConninfoEndpoint(const std::string& conninfo) {
  auto options = Parse(conninfo);
  if (!options.ok()) return "(unparsable connection string)";
  std::string host;
  std::string port;
  for (PQconninfoOption* o = options->get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr || *o->val == '\0') continue;
    if (std::strcmp(o->keyword, "host") == 0) host = o->val;
    if (std::strcmp(o->keyword, "port") == 0) port = o->val;
  }
  return absl::StrCat(host.empty() ? "localhost" : host, ":", port.empty() ? "5432" : port);
}

// The parameters PostgreSQL 15 reports whenever they change (GUC_REPORT)
// and that a session can change; server_version and the like are fixed.
constexpr const char* kReportedParameters[] = {
    "application_name", "client_encoding", "DateStyle",
    "default_transaction_read_only", "IntervalStyle", "is_superuser",
    "session_authorization", "standard_conforming_strings", "TimeZone"};

PgConnection::PgConnection(PGconn* conn, size_t prepared_cache_size)
    : conn_(conn), statements_(prepared_cache_size) {
  // Replaces libpq's default, which prints every notice to stderr.
  PQsetNoticeReceiver(conn_, &PgConnection::OnNotice, this);
  for (const char* name : kReportedParameters) {
    const char* value = PQparameterStatus(conn_, name);
    reported_at_open_.emplace_back(name, value != nullptr ? value : "");
  }
  if (PQconninfoOption* options = PQconninfo(conn_)) {
    for (PQconninfoOption* o = options; o->keyword != nullptr; ++o) {
      if (std::strcmp(o->keyword, "target_session_attrs") == 0 && o->val != nullptr) {
        wants_writable_ = std::strcmp(o->val, "read-write") == 0 ||
                          std::strcmp(o->val, "primary") == 0;
      }
    }
    PQconninfoFree(options);
  }
  wants_writable_ = wants_writable_ && !FencedSinceOpen();
}

bool PgConnection::FencedSinceOpen() const {
  if (!wants_writable_) return false;
  for (const char* name : {"default_transaction_read_only", "in_hot_standby"}) {
    const char* value = PQparameterStatus(conn_, name);
    if (value != nullptr && std::strcmp(value, "on") == 0) return true;
  }
  return false;
}

std::string PgConnection::Endpoint() const {
  const char* host = PQhost(conn_);
  const char* port = PQport(conn_);
  return absl::StrCat(host != nullptr ? host : "", ":", port != nullptr ? port : "");
}

bool PgConnection::ReportedParametersChanged() const {
  for (const auto& [name, value] : reported_at_open_) {
    const char* now = PQparameterStatus(conn_, name.c_str());
    if (value != (now != nullptr ? now : "")) return true;
  }
  return false;
}

void PgConnection::OnNotice(void* self, const PGresult* notice) {
  const char* severity =
      PQresultErrorField(notice, PG_DIAG_SEVERITY_NONLOCALIZED);
  if (severity != nullptr &&
      (std::strcmp(severity, "FATAL") == 0 || std::strcmp(severity, "PANIC") == 0)) {
    static_cast<PgConnection*>(self)->fatal_notice_ = true;
  }
}

PgConnection::~PgConnection() { PQfinish(conn_); }

bool PgConnection::IsUsable() {
  if (fatal_notice_ || PQstatus(conn_) != CONNECTION_OK ||
      PQtransactionStatus(conn_) != PQTRANS_IDLE || FencedSinceOpen()) {
    return false;
  }
  // A server that ended the session (pg_terminate_backend, a restart) has
  // already sent its goodbye; an idle connection has nothing else to read.
  pollfd pfd{PQsocket(conn_), POLLIN, 0};
  if (poll(&pfd, 1, 0) == 0) return true;
  if (PQconsumeInput(conn_) == 0) return false;
  while (PGnotify* n = PQnotifies(conn_)) PQfreemem(n);
  return !fatal_notice_ && PQstatus(conn_) == CONNECTION_OK &&
         PQisBusy(conn_) == 0 && !FencedSinceOpen();
}


std::shared_ptr<const std::atomic<bool>> PgConnection::StartCancel() {
  if (cancels_in_flight.fetch_add(1) >= kMaxCancelsInFlight) {
    cancels_in_flight.fetch_sub(1);
    return nullptr;
  }
  // The thread may outlive this connection, so it gets a PGcancel of its own.
  PGcancel* cancel = PQgetCancel(conn_);
  if (cancel == nullptr) {
    cancels_in_flight.fetch_sub(1);
    return nullptr;
  }
  auto settled = std::make_shared<std::atomic<bool>>(false);
  try {
    std::thread([cancel, settled] {
      char error[256];
      PQcancel(cancel, error, sizeof error);
      PQfreeCancel(cancel);
      settled->store(true, std::memory_order_release);
      cancels_in_flight.fetch_sub(1);
    }).detach();
  } catch (const std::system_error&) {
    PQfreeCancel(cancel);
    cancels_in_flight.fetch_sub(1);
    return nullptr;
  }
  return settled;
}

bool PgConnection::EnsurePipelineMode() {
  if (PQpipelineStatus(conn_) == PQ_PIPELINE_ON) return true;
  return PQsetnonblocking(conn_, 1) == 0 && PQenterPipelineMode(conn_) == 1;
}

PgConnector::PgConnector(ConnectionSettings settings)
    : settings_(std::move(settings)) {}

absl::StatusOr<std::unique_ptr<pool::Connection>> PgConnector::Connect(
    absl::Time deadline) {
  auto parsed = Parse(settings_.conninfo);
  if (!parsed.ok()) return parsed.status();
  // Sessions speak one dialect whatever the server's defaults, so that
  // result decoding can rely on it.
  std::string session_options = absl::StrCat(
      "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 "
      "-c bytea_output=hex -c statement_timeout=",
      absl::ToInt64Milliseconds(settings_.statement_timeout));
  std::vector<std::string> keys;
  std::vector<std::string> values;
  for (PQconninfoOption* o = parsed->get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string key = o->keyword;
    if (key == "options") {
      session_options = absl::StrCat(o->val, " ", session_options);
    } else if (key != "application_name") {
      keys.push_back(key);
      values.push_back(o->val);
    }
  }
  const auto add = [&](const char* k, std::string v) {
    keys.emplace_back(k);
    values.push_back(std::move(v));
  };
  add("options", session_options);
  if (!settings_.application_name.empty()) {
    add("application_name", settings_.application_name);
  }
  // Keepalives find peers that vanished without closing the socket.
  add("keepalives", "1");
  add("keepalives_idle", "30");
  add("keepalives_interval", "10");
  add("keepalives_count", "3");
  // libpq ignores connect_timeout in the non-blocking connect used here,
  // so a host that never answers (frozen, or cut off by a partition) would
  // hold every attempt until the deadline and the hosts after it in the
  // list would never be tried. Each host gets connect_timeout when the
  // string sets one, else an even share of what is left; past it the
  // attempt starts again with the hosts after the one that did not answer.
  const auto value_of = [&](const char* key) -> std::string* {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &values[i];
    }
    return nullptr;
  };
  const auto list_of = [&](const char* key) -> std::vector<std::string> {
    const std::string* v = value_of(key);
    if (v == nullptr) return {};
    return absl::StrSplit(*v, ',');
  };
  const std::vector<std::string> hosts = list_of("host");
  const std::vector<std::string> ports = list_of("port");
  const std::vector<std::string> addrs = list_of("hostaddr");
  const size_t host_count = std::max({hosts.size(), addrs.size(), size_t{1}});
  std::optional<absl::Duration> per_host;
  if (const std::string* t = value_of("connect_timeout")) {
    int seconds = 0;
    // As libpq: at least 2 s, 0 or less is no limit.
    if (absl::SimpleAtoi(*t, &seconds) && seconds > 0) {
      per_host = absl::Seconds(std::max(seconds, 2));
    }
  }
  const auto rest_of = [](const std::vector<std::string>& list, size_t first) {
    if (list.size() <= 1) return list.empty() ? std::string() : list[0];
    return absl::StrJoin(list.begin() + static_cast<ptrdiff_t>(first), list.end(), ",");
  };

  size_t first = 0;
  while (true) {
    if (host_count > 1) {
      if (std::string* h = value_of("host")) *h = rest_of(hosts, first);
      if (std::string* a = value_of("hostaddr")) *a = rest_of(addrs, first);
      if (std::string* p = value_of("port")) *p = rest_of(ports, first);
    }
    std::vector<const char*> k;
    std::vector<const char*> v;
    for (size_t i = 0; i < keys.size(); ++i) {
      k.push_back(keys[i].c_str());
      v.push_back(values[i].c_str());
    }
    k.push_back(nullptr);
    v.push_back(nullptr);

    const absl::Time started = absl::Now();
    const absl::Time host_deadline =
        std::min(deadline, started + per_host.value_or((deadline - started) /
                                                       static_cast<int64_t>(host_count - first)));
    PGconn* conn = PQconnectStartParams(k.data(), v.data(), /*expand_dbname=*/0);
    if (conn == nullptr) return absl::ResourceExhaustedError("libpq: out of memory");
    PostgresPollingStatusType state = PGRES_POLLING_WRITING;
    bool next_host = false;
    while (state != PGRES_POLLING_OK) {
      if (state == PGRES_POLLING_FAILED || PQstatus(conn) == CONNECTION_BAD) {
        std::string error = LastError(conn);
        PQfinish(conn);
        return absl::UnavailableError(absl::StrCat("cannot connect: ", error));
      }
      const absl::Time now = absl::Now();
      if (now >= deadline || (now >= host_deadline && first + 1 >= host_count)) {
        PQfinish(conn);
        return absl::UnavailableError("cannot connect: timed out");
      }
      if (now >= host_deadline) {
        next_host = true;
        break;
      }
      pollfd pfd{PQsocket(conn),
                 static_cast<short>(state == PGRES_POLLING_READING ? POLLIN : POLLOUT),
                 0};
      const int ms = static_cast<int>(
          std::min<int64_t>(absl::ToInt64Milliseconds(host_deadline - now) + 1, 1000));
      if (poll(&pfd, 1, ms) == 0) continue;
      state = PQconnectPoll(conn);
    }
    if (!next_host) {
      return std::unique_ptr<pool::Connection>(
          new PgConnection(conn, settings_.prepared_cache_size));
    }
    // Which of the remaining hosts did not answer: libpq names the one it
    // is trying.
    const std::string host = PQhost(conn) != nullptr ? PQhost(conn) : "";
    const std::string port = PQport(conn) != nullptr ? PQport(conn) : "";
    PQfinish(conn);
    size_t stuck = first;
    for (size_t i = first; i < host_count; ++i) {
      const std::string& h = i < hosts.size() ? hosts[i] : (i < addrs.size() ? addrs[i] : "");
      const std::string& p = ports.size() > 1 && i < ports.size() ? ports[i]
                             : ports.empty()                      ? port
                                                                  : ports[0];
      const bool same_addr = i < addrs.size() && addrs[i] == host;
      if ((h == host || same_addr) && (p == port || p.empty())) {
        stuck = i;
        break;
      }
    }
    first = stuck + 1;
    if (first >= host_count) return absl::UnavailableError("cannot connect: timed out");
  }
}

}  // namespace dbpool::db
