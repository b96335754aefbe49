// PgCluster: a throwaway PostgreSQL cluster on loopback for tests, started
// through tests/support/pg_cluster.sh, and a few one-off queries against it.
//
// PgCluster::Get() is the process-wide cluster, started on first use and
// removed when the process's tests end; a test that needs a cluster of its
// own (one that does not exist yet when the server starts) makes one. Not
// meant for concurrent setup. Links no gRPC, so that tests of the engine can
// run under ThreadSanitizer (scripts/sanitize). Start, Stop and the queries
// block.
#ifndef DBPOOL_TESTS_SUPPORT_PG_CLUSTER_H_
#define DBPOOL_TESTS_SUPPORT_PG_CLUSTER_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace dbpool::testing {

class PgCluster {
 public:
  PgCluster() = default;
  // Stops the cluster and deletes its files.
  ~PgCluster();
  PgCluster(const PgCluster&) = delete;
  PgCluster& operator=(const PgCluster&) = delete;

  // The cluster this process's tests share, started on first use.
  static PgCluster& Get();

  // Creates the cluster and picks its port without starting it, so that a
  // server can be configured with conninfo() before the database exists.
  // Start() then uses that port, and fails the test if it was taken.
  void Init();
  void Start();
  void Stop();
  // pg_ctl restart -m fast: backends are terminated, the port is kept.
  void Restart();
  // Stops the cluster and deletes its files.
  void Remove();

  std::string conninfo() const;
  int port() const { return port_; }
  // The postmaster's process id, from postmaster.pid; 0 when not running.
  pid_t postmaster_pid() const;

  // Runs `sql` on a fresh connection of its own; returns the first value of
  // the first row ("" when none). Fails the test on error.
  std::string Scalar(const std::string& sql) const;
  // Scalar() read as an integer; -1 (and a test failure) when it is not one.
  int64_t Int(const std::string& sql) const;
  // Whether a fresh connection is accepted now (connect_timeout 2 s).
  bool Accepts() const;

 private:
  void MakeDir();

  std::string dir_;
  int port_ = 0;
  // Init() chose the port: Start() must get exactly that one.
  bool pinned_ = false;
};

}  // namespace dbpool::testing

#endif  // DBPOOL_TESTS_SUPPORT_PG_CLUSTER_H_
