// Backends that die or freeze: terminated while idle or mid-query, and
// stopped with SIGSTOP mid-query (with and without a postmaster that
// answers the cancel request). Afterwards the pool's counts and
// pg_stat_activity must agree: nothing leaks.
#include <signal.h>

#include <algorithm>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/algorithm/container.h"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/fault/fault_util.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using ::testing::Contains;
using ::testing::Not;

constexpr char kRunningSleep[] =
    "state = 'active' AND query LIKE 'SELECT pg_sleep%'";
constexpr char kBrokenSeries[] =
    "db_pool_connections_closed_total{reason=\"broken\"}";

int64_t ClosedBroken(TestServer& server) {
  return server.pool().Snapshot().connections_closed[static_cast<int>(
      pool::CloseReason::kBroken)];
}

// The pool has settled at `total` connections and PostgreSQL has exactly
// those backends for `app`.
bool PoolAndDatabaseAgree(TestServer& server, const std::string& app, int total) {
  const pool::PoolStats s = server.pool().Snapshot();
  return s.active == 0 && s.connecting == 0 && s.total == total &&
         BackendCount(app) == total;
}

// The frozen-backend tests: two warm connections, so that the other one
// serves while one is frozen, and a short cancel grace.
constexpr absl::Duration kGrace = absl::Seconds(1);

ServerEnv FrozenBackendOptions(const std::string& app) {
  return {{"DB_POOL_MAX_CONNECTIONS", "2"},
          {"DB_POOL_MIN_CONNECTIONS", "2"},
          {"DB_CANCEL_GRACE_MS", Ms(kGrace)},
          {"DB_APPLICATION_NAME", app}};
}

// The one backend of `app` running pg_sleep.
pid_t SleepingBackend(const std::string& app) {
  std::vector<pid_t> pids;
  if (!Eventually([&] {
        pids = BackendPids(app, kRunningSleep);
        return pids.size() == 1;
      })) {
    ADD_FAILURE() << "no backend of " << app << " is running pg_sleep";
    return 0;
  }
  return pids[0];
}

TEST(Backend, TerminatedIdleBackendsAreReplacedWithoutFailures) {
  const std::string app = "dbpool-terminate";
  TestServer server({{"DB_POOL_MAX_CONNECTIONS", "3"},
                     {"DB_POOL_MIN_CONNECTIONS", "3"},
                     {"DB_APPLICATION_NAME", app}});
  ASSERT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 3); }));
  Figures fig;
  const std::vector<pid_t> terminated = BackendPids(app);
  ASSERT_EQ(terminated.size(), 3u);
  EXPECT_EQ(PgCluster::Get().Int(absl::StrCat(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = '",
                app, "'")),
            3);
  // The goodbyes reach the pool's sockets after pg_terminate_backend has
  // returned; the pool must notice them on acquire, whenever they arrive.
  // Its maintenance may already have replaced some: wait for the
  // terminated backends to be gone, not for none to be left.
  ASSERT_TRUE(Eventually([&] {
    for (pid_t pid : BackendPids(app)) {
      if (absl::c_linear_search(terminated, pid)) return false;
    }
    return true;
  }));
  int failed = 0;
  for (int i = 0; i < 10; ++i) {
    v1::QueryResponse resp;
    grpc::Status st = server.Query("SELECT 1", &resp);
    EXPECT_TRUE(st.ok()) << i << ": " << st.error_message();
    if (!st.ok()) ++failed;
  }
  // A dead connection at the bottom of the idle stack is found by
  // maintenance rather than by a caller.
  EXPECT_TRUE(Eventually([&] { return ClosedBroken(server) == 3; }, absl::Seconds(3)))
      << ClosedBroken(server) << " closed as broken";
  fig.Add("failed", int64_t{failed});
  fig.Add("closed_broken", ClosedBroken(server));
  EXPECT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 3); }))
      << "pool counts and pg_stat_activity agree";
}

TEST(Backend, KilledMidQueryFailsThatCallOnlyAndIsReplaced) {
  const std::string app = "dbpool-kill";
  constexpr absl::Duration kDeadline = absl::Seconds(10);
  TestServer server({{"DB_POOL_MAX_CONNECTIONS", "2"},
                     {"DB_POOL_MIN_CONNECTIONS", "2"},
                     {"DB_APPLICATION_NAME", app}});
  ASSERT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }));
  Figures fig;
  AsyncQuery victim(server.stub(), "SELECT pg_sleep(30)", kDeadline);
  const pid_t pid = SleepingBackend(app);
  ASSERT_NE(pid, 0);
  const absl::Time killed = absl::Now();
  ASSERT_EQ(PgCluster::Get().Scalar(absl::StrCat("SELECT pg_terminate_backend(", pid, ")")),
            "t");
  grpc::Status st = victim.Wait();
  fig.AddMs("error_after_kill", victim.finished() - killed);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(SqlStateOf(st), "57P01") << st.error_message();
  EXPECT_LT(victim.finished() - killed, absl::Seconds(2))
      << "the error comes from the dead connection, not from the deadline";

  v1::QueryResponse resp;
  EXPECT_TRUE(server.Query("SELECT 1", &resp).ok());
  ASSERT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }))
      << "the connection is replaced and pg_stat_activity agrees";
  EXPECT_THAT(BackendPids(app), Not(Contains(pid)));
  const pool::PoolStats s = server.pool().Snapshot();
  EXPECT_EQ(ClosedBroken(server), 1);
  EXPECT_EQ(s.connections_closed_total(), 1);
  EXPECT_EQ(s.connections_opened, 3);
  v1::PoolStats stats;
  ASSERT_TRUE(server.PoolStats(&stats).ok());
  EXPECT_EQ(stats.connections_closed(), 1);
  EXPECT_EQ(stats.total_connections(), 2);
  EXPECT_EQ(MetricValue(server.metrics().Scrape(), kBrokenSeries), 1);
  fig.Add("closed_broken", ClosedBroken(server));
  fig.Add("opened", s.connections_opened);
  fig.Add("backends_after", BackendCount(app));
}

// PQcancel reaches the postmaster, which signals the backend; a stopped
// backend does not act on it. The caller still gets its error at its
// deadline, and the server gives the connection up after the cancel grace.
TEST(Backend, FrozenMidQueryErrsAtDeadlineAndIsDiscarded) {
  const std::string app = "dbpool-frozen";
  constexpr absl::Duration kDeadline = absl::Seconds(1);
  TestServer server(FrozenBackendOptions(app));
  ASSERT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }));
  Figures fig;
  AsyncQuery victim(server.stub(), "SELECT pg_sleep(30)", kDeadline);
  const pid_t pid = SleepingBackend(app);
  ASSERT_NE(pid, 0);
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  // Declared after the server: runs first, so that neither the server's
  // shutdown nor the cluster's waits on a stopped process.
  absl::Cleanup thaw = [pid] { kill(pid, SIGCONT); };

  grpc::Status st = victim.Wait();
  const absl::Time deadline = victim.started() + kDeadline;
  fig.AddMs("error_after_deadline", victim.finished() - deadline);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_LT(victim.finished() - victim.started(), kDeadline + absl::Milliseconds(500));

  EXPECT_TRUE(Eventually([&] { return ClosedBroken(server) == 1; }, absl::Seconds(10)))
      << "the frozen connection is given up";
  fig.AddMs("discarded_after_deadline", absl::Now() - deadline);
  EXPECT_LT(absl::Now() - deadline, kGrace + absl::Seconds(2));
  v1::QueryResponse resp;
  EXPECT_TRUE(server.Query("SELECT 1", &resp).ok()) << "the other connections serve";
  EXPECT_THAT(BackendPids(app), Contains(pid)) << "frozen, the backend is still there";

  ASSERT_EQ(kill(pid, SIGCONT), 0);
  // Running again, the backend finds its client gone and exits.
  EXPECT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }))
      << "pool " << server.pool().Snapshot().total << ", backends "
      << BackendCount(app);
  EXPECT_THAT(BackendPids(app), Not(Contains(pid)));
  EXPECT_EQ(ClosedBroken(server), 1);
  EXPECT_EQ(MetricValue(server.metrics().Scrape(), kBrokenSeries), 1);
  v1::PoolStats stats;
  ASSERT_TRUE(server.PoolStats(&stats).ok());
  EXPECT_EQ(stats.connections_closed(), 1);
  fig.Add("closed_broken", ClosedBroken(server));
  fig.Add("backends_after", BackendCount(app));
}

// A caller that sets only a statement timeout (QueryRequest.timeout) gets
// its answer from the server, which first waits out the cancel grace for
// the frozen statement: at the timeout plus the grace, well within the
// call's own deadline.
TEST(Backend, FrozenMidQueryWithRequestTimeoutAnswersAfterTheGrace) {
  const std::string app = "dbpool-frozen-timeout";
  constexpr absl::Duration kTimeout = absl::Seconds(1);
  TestServer server(FrozenBackendOptions(app));
  ASSERT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }));
  Figures fig;
  v1::QueryRequest request;
  request.set_sql("SELECT pg_sleep(30)");
  request.mutable_timeout()->set_seconds(absl::ToInt64Seconds(kTimeout));
  AsyncQuery victim(server.stub(), request, absl::Seconds(20));
  const pid_t pid = SleepingBackend(app);
  ASSERT_NE(pid, 0);
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  absl::Cleanup thaw = [pid] { kill(pid, SIGCONT); };

  grpc::Status st = victim.Wait();
  const absl::Duration after = victim.finished() - victim.started();
  fig.AddMs("error_after", after);
  fig.AddMs("timeout", kTimeout);
  fig.AddMs("cancel_grace", kGrace);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_THAT(st.error_message(), ::testing::HasSubstr("connection closed"));
  EXPECT_GE(after, kTimeout + kGrace);
  EXPECT_LT(after, kTimeout + kGrace + absl::Seconds(2));
  EXPECT_EQ(ClosedBroken(server), 1);
  ASSERT_EQ(kill(pid, SIGCONT), 0);
  EXPECT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }));
}

// The same with the postmaster stopped too: PQcancel connects (the kernel
// completes the handshake) and then waits for an answer that never comes.
// The caller must still get its error at its deadline, and the connection
// must still be given up and counted.
TEST(Backend, FrozenWithCancelUnansweredIsStillDiscarded) {
  const std::string app = "dbpool-frozen-pm";
  constexpr absl::Duration kDeadline = absl::Seconds(1);
  ServerEnv o = FrozenBackendOptions(app);
  // Replacement connections hang on the stopped postmaster until this.
  o["DB_POOL_CONNECT_TIMEOUT_MS"] = Ms(absl::Seconds(1));
  TestServer server(o);
  ASSERT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }));
  Figures fig;
  AsyncQuery victim(server.stub(), "SELECT pg_sleep(30)", kDeadline);
  const pid_t pid = SleepingBackend(app);
  ASSERT_NE(pid, 0);
  const pid_t postmaster = PgCluster::Get().postmaster_pid();
  ASSERT_GT(postmaster, 0);
  ASSERT_EQ(kill(postmaster, SIGSTOP), 0);
  absl::Cleanup thaw_postmaster = [postmaster] { kill(postmaster, SIGCONT); };
  ASSERT_EQ(kill(pid, SIGSTOP), 0);
  absl::Cleanup thaw = [pid] { kill(pid, SIGCONT); };

  // No SQL from here until the thaw: the postmaster would not answer.
  grpc::Status st = victim.Wait();
  const absl::Time deadline = victim.started() + kDeadline;
  fig.AddMs("error_after_deadline", victim.finished() - deadline);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_LT(victim.finished() - victim.started(), kDeadline + absl::Milliseconds(500));

  const bool discarded =
      Eventually([&] { return ClosedBroken(server) == 1; }, kGrace + absl::Seconds(4));
  EXPECT_TRUE(discarded) << "the connection whose cancel went unanswered is given up "
                            "and counted (pool: "
                         << server.pool().Snapshot().active << " active)";
  if (discarded) fig.AddMs("discarded_after_deadline", absl::Now() - deadline);
  EXPECT_EQ(server.pool().Snapshot().active, 0) << "no worker is stuck in PQcancel";

  ASSERT_EQ(kill(postmaster, SIGCONT), 0);
  ASSERT_EQ(kill(pid, SIGCONT), 0);
  v1::QueryResponse resp;
  EXPECT_TRUE(Eventually([&] { return server.Query("SELECT 1", &resp).ok(); }));
  EXPECT_TRUE(Eventually([&] { return PoolAndDatabaseAgree(server, app, 2); }))
      << "pool " << server.pool().Snapshot().total << ", backends "
      << BackendCount(app);
  EXPECT_THAT(BackendPids(app), Not(Contains(pid)));
  EXPECT_EQ(ClosedBroken(server), 1);
  fig.Add("closed_broken", ClosedBroken(server));
  fig.Add("backends_after", BackendCount(app));
}

}  // namespace
}  // namespace dbpool::testing
