#include "server/db/pg_connection.h"

#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <future>
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

struct PgConnector::Attempt {
  ~Attempt() {
    if (conn != nullptr) PQfinish(conn);
  }

  absl::Time deadline;
  ConnectDone done;
  // The first host of the list still to try.
  size_t first = 0;
  absl::Time host_deadline;
  PGconn* conn = nullptr;
  PostgresPollingStatusType state = PGRES_POLLING_WRITING;
  absl::StatusOr<std::unique_ptr<pool::Connection>> outcome =
      absl::UnknownError("connection attempt not finished");
};

absl::StatusOr<PgConnector::Params> PgConnector::MakeParams(
    const ConnectionSettings& settings) {
  auto parsed = Parse(settings.conninfo);
  if (!parsed.ok()) return parsed.status();
  Params p;
  // Sessions speak one dialect whatever the server's defaults, so that
  // result decoding can rely on it.
  std::string session_options = absl::StrCat(
      "-c DateStyle=ISO -c TimeZone=UTC -c extra_float_digits=3 "
      "-c bytea_output=hex -c statement_timeout=",
      absl::ToInt64Milliseconds(settings.statement_timeout));
  for (PQconninfoOption* o = parsed->get(); o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string key = o->keyword;
    if (key == "options") {
      session_options = absl::StrCat(o->val, " ", session_options);
    } else if (key != "application_name") {
      p.keys.push_back(key);
      p.values.push_back(o->val);
    }
  }
  const auto add = [&](const char* k, std::string v) {
    p.keys.emplace_back(k);
    p.values.push_back(std::move(v));
  };
  add("options", session_options);
  if (!settings.application_name.empty()) {
    add("application_name", settings.application_name);
  }
  // Keepalives find peers that vanished without closing the socket.
  add("keepalives", "1");
  add("keepalives_idle", "30");
  add("keepalives_interval", "10");
  add("keepalives_count", "3");
  const auto list_of = [&](const char* key) -> std::vector<std::string> {
    for (size_t i = 0; i < p.keys.size(); ++i) {
      if (p.keys[i] == key) return absl::StrSplit(p.values[i], ',');
    }
    return {};
  };
  p.hosts = list_of("host");
  p.ports = list_of("port");
  p.addrs = list_of("hostaddr");
  p.host_count = std::max({p.hosts.size(), p.addrs.size(), size_t{1}});
  for (size_t i = 0; i < p.keys.size(); ++i) {
    int seconds = 0;
    // As libpq: at least 2 s, 0 or less is no limit.
    if (p.keys[i] == "connect_timeout" && absl::SimpleAtoi(p.values[i], &seconds) &&
        seconds > 0) {
      p.per_host = absl::Seconds(std::max(seconds, 2));
    }
  }
  return p;
}

PgConnector::PgConnector(ConnectionSettings settings)
    : settings_(std::move(settings)), params_(MakeParams(settings_)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  thread_ = std::thread([this] { Run(); });
  pthread_setname_np(thread_.native_handle(), "dbpool-connect");
}

PgConnector::~PgConnector() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  Wake();
  thread_.join();
  close(wake_fd_);
}

void PgConnector::Wake() {
  const uint64_t one = 1;
  // A full counter already wakes the thread: the result does not matter.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof one);
}

void PgConnector::Connect(absl::Time deadline, ConnectDone done) {
  auto attempt = std::make_unique<Attempt>();
  attempt->deadline = deadline;
  attempt->done = std::move(done);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      incoming_.push_back(std::move(attempt));
    }
  }
  if (attempt != nullptr) {
    std::move(attempt->done)(absl::UnavailableError("cannot connect: shutting down"));
    return;
  }
  Wake();
}

absl::StatusOr<std::unique_ptr<PgConnection>> PgConnector::ConnectNow(absl::Time deadline) {
  std::promise<absl::StatusOr<std::unique_ptr<pool::Connection>>> opened;
  std::future<absl::StatusOr<std::unique_ptr<pool::Connection>>> result = opened.get_future();
  Connect(deadline, [&opened](absl::StatusOr<std::unique_ptr<pool::Connection>> conn) {
    opened.set_value(std::move(conn));
  });
  absl::StatusOr<std::unique_ptr<pool::Connection>> conn = result.get();
  if (!conn.ok()) return conn.status();
  // Every connection this connector opens is a PgConnection.
  return std::unique_ptr<PgConnection>(static_cast<PgConnection*>(conn->release()));
}

bool PgConnector::StartHost(Attempt& a, absl::Time now) const {
  const Params& p = *params_;
  const auto rest_of = [&](const std::vector<std::string>& list) {
    if (list.size() <= 1) return list.empty() ? std::string() : list[0];
    return absl::StrJoin(list.begin() + static_cast<ptrdiff_t>(a.first), list.end(), ",");
  };
  // The host lists cut to the hosts still to try; libpq copies what it is
  // given.
  std::vector<std::string> values = p.values;
  std::vector<const char*> k;
  std::vector<const char*> v;
  for (size_t i = 0; i < p.keys.size(); ++i) {
    if (p.host_count > 1) {
      if (p.keys[i] == "host") values[i] = rest_of(p.hosts);
      if (p.keys[i] == "hostaddr") values[i] = rest_of(p.addrs);
      if (p.keys[i] == "port") values[i] = rest_of(p.ports);
    }
    k.push_back(p.keys[i].c_str());
    v.push_back(values[i].c_str());
  }
  k.push_back(nullptr);
  v.push_back(nullptr);
  a.host_deadline = std::min(
      a.deadline, now + p.per_host.value_or((a.deadline - now) /
                                            static_cast<int64_t>(p.host_count - a.first)));
  a.conn = PQconnectStartParams(k.data(), v.data(), /*expand_dbname=*/0);
  a.state = PGRES_POLLING_WRITING;
  if (a.conn == nullptr) {
    a.outcome = absl::ResourceExhaustedError("libpq: out of memory");
    return false;
  }
  return true;
}

bool PgConnector::Advance(Attempt& a, absl::Time now, bool ready) const {
  const Params& p = *params_;
  for (;;) {
    if (a.state == PGRES_POLLING_OK) {
      a.outcome = std::unique_ptr<pool::Connection>(
          new PgConnection(std::exchange(a.conn, nullptr), settings_.prepared_cache_size));
      return true;
    }
    if (a.state == PGRES_POLLING_FAILED || PQstatus(a.conn) == CONNECTION_BAD) {
      a.outcome = absl::UnavailableError(absl::StrCat("cannot connect: ", LastError(a.conn)));
      return true;
    }
    if (now >= a.deadline || (now >= a.host_deadline && a.first + 1 >= p.host_count)) {
      a.outcome = absl::UnavailableError("cannot connect: timed out");
      return true;
    }
    if (now >= a.host_deadline) {
      // Which of the remaining hosts did not answer: libpq names the one
      // it is trying. The attempt starts again with the hosts after it.
      const std::string host = PQhost(a.conn) != nullptr ? PQhost(a.conn) : "";
      const std::string port = PQport(a.conn) != nullptr ? PQport(a.conn) : "";
      PQfinish(std::exchange(a.conn, nullptr));
      size_t stuck = a.first;
      for (size_t i = a.first; i < p.host_count; ++i) {
        const std::string& h = i < p.hosts.size()   ? p.hosts[i]
                               : i < p.addrs.size() ? p.addrs[i]
                                                    : "";
        const std::string& pt = p.ports.size() > 1 && i < p.ports.size() ? p.ports[i]
                                : p.ports.empty()                        ? port
                                                                         : p.ports[0];
        const bool same_addr = i < p.addrs.size() && p.addrs[i] == host;
        if ((h == host || same_addr) && (pt == port || pt.empty())) {
          stuck = i;
          break;
        }
      }
      a.first = stuck + 1;
      if (a.first >= p.host_count) {
        a.outcome = absl::UnavailableError("cannot connect: timed out");
        return true;
      }
      if (!StartHost(a, now)) return true;
      continue;
    }
    if (!ready) return false;
    ready = false;
    a.state = PQconnectPoll(a.conn);
  }
}

void PgConnector::Run() {
  std::vector<std::unique_ptr<Attempt>> live;
  std::vector<std::unique_ptr<Attempt>> finished;
  std::vector<pollfd> fds;
  for (;;) {
    std::vector<std::unique_ptr<Attempt>> fresh;
    bool stopping = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      fresh.swap(incoming_);
      stopping = stopping_;
    }
    absl::Time now = absl::Now();
    for (std::unique_ptr<Attempt>& a : fresh) {
      if (!params_.ok()) {
        a->outcome = params_.status();
      } else if (StartHost(*a, now) && !Advance(*a, now, /*ready=*/false)) {
        live.push_back(std::move(a));
        continue;
      }
      finished.push_back(std::move(a));
    }
    if (stopping) {
      for (std::unique_ptr<Attempt>& a : live) {
        a->outcome = absl::UnavailableError("cannot connect: shutting down");
        finished.push_back(std::move(a));
      }
      live.clear();
    }
    // Answered outside the lock and after the attempts have moved on: an
    // answer may start the next attempt.
    for (std::unique_ptr<Attempt>& a : finished) std::move(a->done)(std::move(a->outcome));
    finished.clear();
    if (stopping) {
      std::lock_guard<std::mutex> lock(mu_);
      if (incoming_.empty()) return;
      continue;
    }
    fds.assign(1, pollfd{wake_fd_, POLLIN, 0});
    absl::Time next = absl::InfiniteFuture();
    for (const std::unique_ptr<Attempt>& a : live) {
      fds.push_back(pollfd{PQsocket(a->conn),
                           static_cast<short>(a->state == PGRES_POLLING_READING ? POLLIN
                                                                                : POLLOUT),
                           0});
      next = std::min({next, a->host_deadline, a->deadline});
    }
    int timeout_ms = -1;
    if (next != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(std::clamp<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1))), 0, 1000));
    }
    if (poll(fds.data(), fds.size(), timeout_ms) < 0) continue;
    if (fds[0].revents != 0) {
      uint64_t count = 0;
      [[maybe_unused]] ssize_t r = read(wake_fd_, &count, sizeof count);
    }
    now = absl::Now();
    std::vector<std::unique_ptr<Attempt>> still;
    for (size_t i = 0; i < live.size(); ++i) {
      if (Advance(*live[i], now, fds[i + 1].revents != 0)) {
        finished.push_back(std::move(live[i]));
      } else {
        still.push_back(std::move(live[i]));
      }
    }
    // Answered at the top of the next turn, with the attempts that end at
    // once.
    live.swap(still);
  }
}

}  // namespace dbpool::db
