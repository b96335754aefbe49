// The pool under pressure and faults, against a real PostgreSQL:
// exhaustion, terminated backends, a restart under traffic, cancellation,
// and SIGTERM with calls in flight.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

int Count(const std::string& sql) {
  int n = -1;
  EXPECT_TRUE(absl::SimpleAtoi(PgCluster::Get().Scalar(sql), &n)) << sql;
  return n;
}

TEST(Resilience, ExhaustedPoolQueuesThenRejects) {
  TestServerOptions o;
  o.max_connections = 2;
  o.max_waiting = 2;
  TestServer server(o);
  std::vector<std::unique_ptr<AsyncQuery>> holders;
  for (int i = 0; i < 2; ++i) {
    holders.push_back(std::make_unique<AsyncQuery>(server.stub(),
                                                   "SELECT pg_sleep(1)", absl::Seconds(10)));
  }
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().active == 2; }));
  std::vector<std::unique_ptr<AsyncQuery>> waiters;
  for (int i = 0; i < 2; ++i) {
    waiters.push_back(std::make_unique<AsyncQuery>(server.stub(), "SELECT 1",
                                                   absl::Seconds(10)));
  }
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().waiting == 2; }));
  v1::QueryResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status over = server.Query("SELECT 1", &resp);
  EXPECT_EQ(over.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(500)) << "rejected at once";
  for (auto& q : holders) EXPECT_TRUE(q->Wait().ok());
  for (auto& q : waiters) EXPECT_TRUE(q->Wait().ok());
}

TEST(Resilience, WaiterDeadlineShorterThanAcquireTimeout) {
  TestServerOptions o;
  o.max_connections = 1;
  TestServer server(o);
  AsyncQuery holder(server.stub(), "SELECT pg_sleep(2)", absl::Seconds(10));
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().active == 1; }));
  v1::QueryResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status st = server.Query("SELECT 1", &resp, absl::Milliseconds(300));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  EXPECT_TRUE(holder.Wait().ok());
}

TEST(Resilience, TerminatedBackendsAreReplacedWithoutFailures) {
  TestServerOptions o;
  o.max_connections = 3;
  o.min_connections = 3;
  o.application_name = "dbpool-terminate";
  TestServer server(o);
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().idle == 3; }));
  EXPECT_EQ(Count("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                  "WHERE application_name = 'dbpool-terminate'"),
            3);
  absl::SleepFor(absl::Milliseconds(100));  // the goodbyes reach the sockets
  for (int i = 0; i < 10; ++i) {
    v1::QueryResponse resp;
    grpc::Status st = server.Query("SELECT 1", &resp);
    EXPECT_TRUE(st.ok()) << i << ": " << st.error_message();
  }
  EXPECT_GE(server.pool().Snapshot().connections_closed_total(), 1);
  ASSERT_TRUE(Eventually([&] {
    const auto s = server.pool().Snapshot();
    return s.connecting == 0 &&
           Count("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                 "'dbpool-terminate'") == s.total;
  })) << "pool counts and pg_stat_activity agree";
}

TEST(Resilience, BackendKilledMidQueryFailsThatCallOnly) {
  TestServerOptions o;
  o.max_connections = 2;
  o.application_name = "dbpool-kill";
  TestServer server(o);
  AsyncQuery victim(server.stub(), "SELECT pg_sleep(10)", absl::Seconds(20));
  ASSERT_TRUE(Eventually([&] {
    return Count("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                 "'dbpool-kill' AND query LIKE 'SELECT pg_sleep%'") == 1;
  }));
  Count("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
        "application_name = 'dbpool-kill' AND query LIKE 'SELECT pg_sleep%'");
  grpc::Status st = victim.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(SqlStateOf(st), "57P01");
  v1::QueryResponse resp;
  EXPECT_TRUE(server.Query("SELECT 1", &resp).ok());
  EXPECT_EQ(server.pool().Snapshot().connections_closed[static_cast<int>(
                pool::CloseReason::kBroken)],
            1);
}

TEST(Resilience, CallerCancelStopsTheServerQuery) {
  TestServerOptions o;
  o.application_name = "dbpool-cancel";
  TestServer server(o);
  const std::string running =
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
      "'dbpool-cancel' AND state = 'active' AND query LIKE 'SELECT pg_sleep%'";
  {
    AsyncQuery q(server.stub(), "SELECT pg_sleep(30)", absl::Seconds(60));
    ASSERT_TRUE(Eventually([&] { return Count(running) == 1; }));
    q.Cancel();
    EXPECT_EQ(q.Wait().error_code(), grpc::StatusCode::CANCELLED);
    EXPECT_TRUE(Eventually([&] { return Count(running) == 0; }, absl::Seconds(3)))
        << "the statement is gone from pg_stat_activity";
  }
  {
    // A passing RPC deadline does the same.
    AsyncQuery q(server.stub(), "SELECT pg_sleep(30)", absl::Milliseconds(500));
    EXPECT_EQ(q.Wait().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
    EXPECT_TRUE(Eventually([&] { return Count(running) == 0; }, absl::Seconds(3)));
  }
  v1::QueryResponse resp;
  ASSERT_TRUE(server.Query("SELECT 1", &resp).ok());
  EXPECT_EQ(server.pool().Snapshot().connections_closed_total(), 0)
      << "cancelled connections recover and are kept";
}

TEST(Resilience, RestartUnderTrafficRecoversWithoutHangs) {
  TestServerOptions o;
  o.max_connections = 4;
  o.min_connections = 4;
  TestServer server(o);
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().idle == 4; }));
  constexpr absl::Duration kDeadline = absl::Seconds(5);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, overdue{0}, ok_after_restart{0};
  std::atomic<bool> restarted{false};
  std::vector<std::thread> callers;
  for (int t = 0; t < 8; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < 100000 && !stop.load(); ++i) {
        v1::QueryResponse resp;
        const absl::Time start = absl::Now();
        grpc::Status st = server.Query("SELECT pg_sleep(0.005)", &resp, kDeadline);
        if (absl::Now() - start > kDeadline + absl::Milliseconds(500)) overdue++;
        if (st.ok()) {
          ok++;
          if (restarted.load()) ok_after_restart++;
        } else {
          failed++;
        }
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(500));
  PgCluster::Get().Restart();
  restarted = true;
  absl::SleepFor(absl::Seconds(2));
  stop = true;
  for (auto& c : callers) c.join();
  std::printf("restart under traffic: %d ok, %d failed, %d ok after restart\n",
              ok.load(), failed.load(), ok_after_restart.load());
  EXPECT_EQ(overdue.load(), 0) << "no call outlived its deadline";
  EXPECT_LE(failed.load(), o.max_connections)
      << "only calls running on a dropped connection fail";
  EXPECT_GT(ok_after_restart.load(), 0);
}

TEST(Resilience, LongOutageFailsFastThenRecovers) {
  TestServerOptions o;
  o.acquire_timeout = absl::Milliseconds(300);
  TestServer server(o);
  v1::QueryResponse resp;
  ASSERT_TRUE(server.Query("SELECT 1", &resp).ok());
  PgCluster::Get().Stop();
  // In-pool connections see the goodbye; the pool finds the database gone.
  ASSERT_TRUE(Eventually([&] {
    server.Query("SELECT 1", &resp, absl::Seconds(2));
    return !server.pool().Serving();
  }));
  absl::SleepFor(absl::Milliseconds(400));  // past the acquire timeout
  const absl::Time start = absl::Now();
  grpc::Status st = server.Query("SELECT 1", &resp, absl::Seconds(5));
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(250)) << "fails fast";
  grpc::ClientContext hctx;
  grpc::health::v1::HealthCheckResponse h;
  ASSERT_TRUE(server.health().Check(&hctx, {}, &h).ok());
  EXPECT_EQ(h.status(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  PgCluster::Get().Start();
  EXPECT_TRUE(Eventually([&] { return server.Query("SELECT 1", &resp).ok(); }));
  EXPECT_TRUE(server.pool().Serving());
}

// The real binary: SIGTERM lets accepted calls finish and exits 0.
TEST(Resilience, SigtermDrainsInFlightCalls) {
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    close(out[0]);
    const std::string url =
        absl::StrCat("--database-url=", PgCluster::Get().conninfo());
    execl(DBPOOL_SERVER_BIN, DBPOOL_SERVER_BIN, "--listen-host=127.0.0.1",
          "--grpc-port=0", "--http-port=0", "--metrics-port=0",
          "--db-pool-max-connections=4", url.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(out[1]);
  // However the test ends, the server does not outlive it.
  absl::Cleanup reap = [pid] {
    if (kill(pid, 0) == 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
  };
  FILE* stream = fdopen(out[0], "r");
  char line[256] = {};
  ASSERT_NE(fgets(line, sizeof line, stream), nullptr) << "no ready line";
  const std::string ready = line;
  const auto at = ready.find("grpc=");
  ASSERT_NE(at, std::string::npos) << ready;
  const std::string target = ready.substr(at + 5, ready.find(' ', at) - at - 5);
  auto stub = v1::DatabaseService::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  std::vector<std::unique_ptr<AsyncQuery>> inflight;
  for (int i = 0; i < 6; ++i) {  // 4 running, 2 waiting for a connection
    inflight.push_back(
        std::make_unique<AsyncQuery>(*stub, "SELECT pg_sleep(1)", absl::Seconds(20)));
  }
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  absl::SleepFor(absl::Milliseconds(100));
  AsyncQuery late(*stub, "SELECT 1", absl::Seconds(5));
  EXPECT_EQ(late.Wait().error_code(), grpc::StatusCode::UNAVAILABLE);
  for (auto& q : inflight) {
    grpc::Status st = q->Wait();
    EXPECT_TRUE(st.ok()) << st.error_message();
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  EXPECT_TRUE(WIFEXITED(wstatus));
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
  fclose(stream);
}

}  // namespace
}  // namespace dbpool::testing
