// PgConnection: one libpq connection owned by the pool, and PgConnector,
// which opens them.
//
// dbpool talks to libpq directly (not through libpqxx 6.4) because the query
// path needs what 6.4 does not expose: parameter type OIDs for type hints,
// binary parameters, every error field (constraint, detail, hint), a
// non-blocking liveness check and a connect deadline, and no silent
// reconnect (a connection that failed is replaced, never revived).
//
// A PgConnection is used by one thread at a time (whoever holds its lease:
// the thread that sends a statement, then the event loop that reads its
// reply). PgConnector is thread-safe and owns one thread, on which it opens
// every connection; only ConnectNow waits for one. Nothing else here
// blocks.
#ifndef DBPOOL_SERVER_DB_PG_CONNECTION_H_
#define DBPOOL_SERVER_DB_PG_CONNECTION_H_

#include <libpq-fe.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/db/statement_cache.h"
#include "server/pool/connection.h"

namespace dbpool::db {

struct ConnectionSettings {
  std::string conninfo;  // libpq URI or key=value string
  std::string application_name;
  absl::Duration statement_timeout;
  // Prepared statements kept per connection (StatementCache).
  size_t prepared_cache_size = 0;
};

// Checks that `conninfo` parses, without connecting.
absl::Status ValidateConninfo(const std::string& conninfo);

// Whether `conninfo` (valid per ValidateConninfo) carries a password.
bool ConninfoHasPassword(const std::string& conninfo);

// `conninfo` with any password replaced by "***", for logs.
std::string RedactConninfo(const std::string& conninfo);

// "host:port" of `conninfo` (valid per ValidateConninfo), for names in
// metrics and logs: the hosts and ports as given (a list stays a list),
// libpq's defaults where none is.
std::string ConninfoEndpoint(const std::string& conninfo);

class PgConnection final : public pool::Connection {
 public:
  ~PgConnection() override;
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  bool IsUsable() override;

  PGconn* raw() const { return conn_; }

  StatementCache& statements() { return statements_; }

  // Whether a parameter the server reports to the client (its GUC_REPORT
  // set: session_authorization, TimeZone, DateStyle, IntervalStyle,
  // client_encoding, default_transaction_read_only, …) now differs from
  // the value it had when the connection opened. A cheap local check that
  // catches session changes no statement text shows, such as a function
  // that calls set_config.
  bool ReportedParametersChanged() const;

  // The server has turned read-only (default_transaction_read_only or
  // in_hot_standby now "on") since this connection opened, and the
  // connection asked for a writable server (target_session_attrs
  // read-write or primary): a primary fenced in place or demoted. Such a
  // connection, and every idle one to the same server, must go, so that the
  // next ones find the writable host through the connection string.
  bool FencedSinceOpen() const;
  // The server this connection reached, as host:port.
  std::string Endpoint() const;

  // Asks the server to cancel whatever this connection is running, and
  // returns at once with a flag that turns true once the postmaster has
  // dealt with the request (sent the signal, or refused); null when no
  // request could be sent. PQcancel has no timeout of its own: a postmaster
  // that accepts the connection and never answers (a stopped or overloaded
  // host) would hold its caller for good. So the request runs on a thread
  // of its own, which ends by itself when the postmaster answers, and at
  // most 16 such threads wait at once. Until the flag is true the
  // connection must not run another caller's statement: a request that
  // arrived late would cancel it.
  std::shared_ptr<const std::atomic<bool>> StartCancel();

  // Puts the connection in non-blocking pipeline mode, for good: every
  // command is then sent with the extended protocol and closed by a Sync.
  // Returns false when libpq refused (the connection is then unusable).
  bool EnsurePipelineMode();

 private:
  friend class PgConnector;
  static void OnNotice(void* self, const PGresult* notice);

  PgConnection(PGconn* conn, size_t prepared_cache_size);

  PGconn* conn_;
  // Set when the server reported a FATAL error outside a query (a
  // terminated backend, a shutdown): the session is over even if the socket
  // has not closed yet.
  bool fatal_notice_ = false;
  StatementCache statements_;
  // The reported parameters as they were at connect.
  std::vector<std::pair<std::string, std::string>> reported_at_open_;
  // target_session_attrs asked for a writable server, and it was one.
  bool wants_writable_ = false;
};

// Opens connections without blocking its callers. One thread of its own
// drives every attempt under way (PQconnectStartParams, then PQconnectPoll
// whenever poll(2) finds the socket ready), so that connections open
// concurrently at the cost of one thread, not one each. They open there
// rather than on the engine's event loops because opening is the slow,
// CPU-heavy part of a connection's life: libpq resolves host names
// synchronously, and a TLS handshake or SCRAM's 4096 hash rounds take
// milliseconds of CPU that would stall every statement on a query loop.
//
// Each host of a multi-host string gets connect_timeout when the string
// sets one, else an even share of the time left: libpq ignores
// connect_timeout in non-blocking connects, and a host that never answers
// would otherwise hold the attempt until its deadline.
class PgConnector final : public pool::Connector {
 public:
  explicit PgConnector(ConnectionSettings settings);
  // Fails the attempts still under way and waits for the thread.
  ~PgConnector() override;
  PgConnector(const PgConnector&) = delete;
  PgConnector& operator=(const PgConnector&) = delete;

  // `done` runs on the connector's thread (at once, on the calling
  // thread, once the connector is shutting down).
  void Connect(absl::Time deadline, ConnectDone done) override;

  // Opens one connection and waits for it: for start-up checks. Must not
  // run on the connector's thread (a `done` of Connect).
  absl::StatusOr<std::unique_ptr<PgConnection>> ConnectNow(absl::Time deadline);

 private:
  // The connection parameters, parsed once.
  struct Params {
    std::vector<std::string> keys;
    std::vector<std::string> values;
    std::vector<std::string> hosts;
    std::vector<std::string> ports;
    std::vector<std::string> addrs;
    size_t host_count = 1;
    std::optional<absl::Duration> per_host;
  };
  struct Attempt;

  static absl::StatusOr<Params> MakeParams(const ConnectionSettings& settings);
  // Starts connecting to the hosts from `a.first` on; false when `a` has
  // its outcome already.
  bool StartHost(Attempt& a, absl::Time now) const;
  // Takes `a` as far as it goes without waiting; `ready`: its socket is
  // ready for what it waits for. True once `a` has its outcome.
  bool Advance(Attempt& a, absl::Time now, bool ready) const;
  void Run();
  void Wake();

  const ConnectionSettings settings_;
  const absl::StatusOr<Params> params_;
  int wake_fd_ = -1;
  // std::mutex, not absl::Mutex, so that ThreadSanitizer sees the locking:
  // Debian's abseil is not instrumented (scripts/sanitize).
  std::mutex mu_;
  std::vector<std::unique_ptr<Attempt>> incoming_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_PG_CONNECTION_H_
