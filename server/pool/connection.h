// The pool's view of a database connection, and of the thing that opens
// them. The pool knows nothing of PostgreSQL; server/db implements these
// interfaces with libpq, and unit tests implement them with fakes.
//
// A Connection is owned by exactly one party at a time (the pool while idle,
// a Lease while in use) and is never used by two threads at once.
// A Connector is shared by the pool's opener threads and must be
// thread-safe.
#ifndef DBPOOL_SERVER_POOL_CONNECTION_H_
#define DBPOOL_SERVER_POOL_CONNECTION_H_

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dbpool::pool {

class Connection {
 public:
  virtual ~Connection() = default;

  // Whether the connection can take a query. Never blocks: it looks only at
  // what the server has already sent (a termination notice, a closed socket)
  // so that it is safe on a gRPC thread.
  virtual bool IsUsable() = 0;
};

class Connector {
 public:
  virtual ~Connector() = default;

  // Opens a connection; blocks until it is ready or `deadline` passes.
  virtual absl::StatusOr<std::unique_ptr<Connection>> Connect(
      absl::Time deadline) = 0;
};

}  // namespace dbpool::pool

#endif  // DBPOOL_SERVER_POOL_CONNECTION_H_
