// The pool's view of a database connection, and of the thing that opens
// them. The pool knows nothing of PostgreSQL; server/db implements these
// interfaces with libpq, and unit tests implement them with fakes.
//
// A Connection is owned by exactly one party at a time (the pool while idle,
// a Lease while in use) and is never used by two threads at once.
// A Connector is called by whichever thread finds a connection needed and
// must be thread-safe; it never blocks its caller.
#ifndef DBPOOL_SERVER_POOL_CONNECTION_H_
#define DBPOOL_SERVER_POOL_CONNECTION_H_

#include <memory>

#include "absl/functional/any_invocable.h"
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
  using ConnectDone =
      absl::AnyInvocable<void(absl::StatusOr<std::unique_ptr<Connection>>) &&>;

  virtual ~Connector() = default;

  // Starts opening a connection and returns without waiting for it.
  // `done` runs exactly once, with the connection or why there is none
  // (at the latest once `deadline` has passed), on a thread of the
  // connector's choosing, possibly before Connect returns. It must not
  // block.
  virtual void Connect(absl::Time deadline, ConnectDone done) = 0;
};

}  // namespace dbpool::pool

#endif  // DBPOOL_SERVER_POOL_CONNECTION_H_
