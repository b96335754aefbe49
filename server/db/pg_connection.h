// PgConnection: one libpq connection owned by the pool, and PgConnector,
// which opens them.
//
// dbpool talks to libpq directly (not through libpqxx 6.4) because the query
// path needs what 6.4 does not expose: parameter type OIDs for type hints,
// binary parameters, every error field (constraint, detail, hint), a
// non-blocking liveness check and a connect deadline, and no silent
// reconnect (a connection that failed is replaced, never revived).
//
// A PgConnection is used by one thread at a time (whoever holds its lease).
// PgConnector is thread-safe. Connect and the query functions block on the
// network; IsUsable does not.
#ifndef DBPOOL_SERVER_DB_PG_CONNECTION_H_
#define DBPOOL_SERVER_DB_PG_CONNECTION_H_

#include <libpq-fe.h>

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/pool/connection.h"

namespace dbpool::db {

struct ConnectionSettings {
  std::string conninfo;  // libpq URI or key=value string
  std::string application_name;
  absl::Duration statement_timeout = absl::Seconds(30);
};

// Checks that `conninfo` parses, without connecting.
absl::Status ValidateConninfo(const std::string& conninfo);

// Whether `conninfo` (valid per ValidateConninfo) carries a password.
bool ConninfoHasPassword(const std::string& conninfo);

// `conninfo` with any password replaced by "***", for logs.
std::string RedactConninfo(const std::string& conninfo);

class PgConnection final : public pool::Connection {
 public:
  ~PgConnection() override;
  PgConnection(const PgConnection&) = delete;
  PgConnection& operator=(const PgConnection&) = delete;

  bool IsUsable() override;

  PGconn* raw() const { return conn_; }

  // Server-side prepared statements of this session, keyed by SQL text and
  // parameter types. A statement is prepared on its second use, so one-off
  // SQL costs no extra round trip and repeated SQL is parsed and planned
  // once per connection.
  struct Statement {
    std::string name;  // empty until prepared
  };
  static constexpr size_t kMaxStatements = 512;
  absl::flat_hash_map<std::string, Statement>& statements() { return statements_; }
  std::string NextStatementName();
  // Asks the server to cancel whatever this connection is running and waits
  // until the postmaster has dealt with the request (sent the signal, or
  // refused) or `deadline` passes; returns whether it did in time.
  // PQcancel has no timeout of its own: a postmaster that accepts the
  // connection and never answers (a stopped or overloaded host) would hold
  // the caller for good. So the request runs on a thread of its own, which
  // ends by itself when the postmaster answers. When this returns false the
  // connection must not be reused: the request may still arrive and cancel
  // the next statement.
  bool CancelRunningQuery(absl::Time deadline);

 private:
  friend class PgConnector;
  explicit PgConnection(PGconn* conn);
  static void OnNotice(void* self, const PGresult* notice);

  PGconn* conn_;
  // Set when the server reported a FATAL error outside a query (a
  // terminated backend, a shutdown): the session is over even if the socket
  // has not closed yet.
  bool fatal_notice_ = false;
  absl::flat_hash_map<std::string, Statement> statements_;
  int statements_prepared_ = 0;
};

class PgConnector final : public pool::Connector {
 public:
  explicit PgConnector(ConnectionSettings settings);

  absl::StatusOr<std::unique_ptr<pool::Connection>> Connect(
      absl::Time deadline) override;

 private:
  const ConnectionSettings settings_;
};

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_PG_CONNECTION_H_
