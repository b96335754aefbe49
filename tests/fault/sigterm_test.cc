// SIGTERM under load against the real dbpool-server binary: calls accepted
// before the signal complete, new calls are refused with UNAVAILABLE, and
// the process exits 0 within its grace period.
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/fault/fault_util.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

// dbpool-server as a child process, listening on free ports. Killed with
// SIGKILL if the test ends before it has exited.
class ServerProcess {
 public:
  explicit ServerProcess(const std::vector<std::string>& flags) {
    int out[2];
    if (pipe(out) != 0) return;
    std::vector<std::string> args = {DBPOOL_SERVER_BIN, "--listen-host=127.0.0.1",
                                     "--grpc-port=0", "--http-port=0",
                                     "--metrics-port=0"};
    args.insert(args.end(), flags.begin(), flags.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      close(out[0]);
      execv(DBPOOL_SERVER_BIN, argv.data());
      _exit(127);
    }
    close(out[1]);
    if (pid_ < 0) {
      close(out[0]);
      return;
    }
    stdout_ = fdopen(out[0], "r");
    // The ready line names the bound ports; a server that cannot start
    // exits and closes the pipe instead.
    pollfd pfd{out[0], POLLIN, 0};
    char line[512] = {};
    if (poll(&pfd, 1, 20000) != 1 || fgets(line, sizeof line, stdout_) == nullptr) {
      return;
    }
    const std::string ready = line;
    const auto at = ready.find("grpc=");
    if (at == std::string::npos) return;
    target_ = ready.substr(at + 5, ready.find(' ', at) - at - 5);
  }

  ~ServerProcess() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (stdout_ != nullptr) fclose(stdout_);
  }

  pid_t pid() const { return pid_; }
  // host:port of the gRPC listener; empty when the server did not start.
  const std::string& target() const { return target_; }

  // The wait status once the process has exited, or nothing after `limit`.
  std::optional<int> WaitExit(absl::Duration limit) {
    const absl::Time end = absl::Now() + limit;
    for (int i = 0; i < 100000; ++i) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return status;
      }
      if (absl::Now() >= end) break;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  FILE* stdout_ = nullptr;
  std::string target_;
  bool exited_ = false;
};

struct Call {
  absl::Time start;
  absl::Time end;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
};

TEST(Sigterm, UnderLoadAcceptedCallsFinishNewOnesAreRefusedExitZero) {
  constexpr int kPool = 4;
  constexpr int kCallers = 16;
  // After the drain, dbpool-server stops its HTTP gateway and metrics
  // exporter; civetweb's mg_stop waits out its listener's 2 s poll for
  // each, so exiting takes 2-4 s on top of the drain.
  constexpr absl::Duration kGrace = absl::Seconds(10);
  constexpr absl::Duration kLoad = absl::Milliseconds(1500);
  // A call sent this long before the signal has reached the server, which
  // has accepted it: it is queued for a connection or running.
  constexpr absl::Duration kSurelyAccepted = absl::Milliseconds(400);
  constexpr int kMaxCallsPerCaller = 2000;

  ServerProcess server(
      {absl::StrCat("--db-pool-max-connections=", kPool),
       absl::StrCat("--db-pool-min-connections=", kPool),
       absl::StrCat("--shutdown-grace-ms=", absl::ToInt64Milliseconds(kGrace)),
       absl::StrCat("--database-url=", PgCluster::Get().conninfo())});
  ASSERT_FALSE(server.target().empty()) << "no ready line from dbpool-server";
  auto stub = v1::DatabaseService::NewStub(
      grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials()));
  const auto query = [&stub](absl::Duration deadline) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    v1::QueryRequest request;
    // 16 callers on 4 connections: each call waits about 800 ms, so calls
    // sent well before the signal are still in flight when it comes.
    request.set_sql("SELECT pg_sleep(0.2)");
    v1::QueryResponse response;
    return stub->Query(&context, request, &response);
  };
  ASSERT_TRUE(Eventually([&] { return query(absl::Seconds(2)).ok(); }));
  Figures fig;

  std::atomic<bool> signalled{false};
  std::atomic<bool> stop{false};
  const absl::Time load_limit = absl::Now() + absl::Seconds(20);
  std::vector<std::vector<Call>> calls(kCallers);
  std::vector<std::thread> callers;
  for (int t = 0; t < kCallers; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < kMaxCallsPerCaller && !stop.load() &&
                      absl::Now() < load_limit;
           ++i) {
        Call c;
        c.start = absl::Now();
        grpc::Status st = query(absl::Seconds(10));
        c.end = absl::Now();
        c.code = st.error_code();
        c.message = st.error_message();
        calls[t].push_back(c);
        // After the signal a caller stops at its first refusal.
        if (!st.ok() && signalled.load()) return;
      }
    });
  }
  absl::Cleanup join = [&] {
    stop = true;
    for (auto& c : callers) c.join();
  };
  // The load runs for its window; nothing to wait for.
  absl::SleepFor(kLoad);
  const absl::Time signal_at = absl::Now();
  signalled = true;
  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  const std::optional<int> status = server.WaitExit(kGrace + absl::Seconds(5));
  const absl::Duration exit_after = absl::Now() - signal_at;
  std::move(join).Invoke();

  int64_t total = 0, before = 0, drained = 0, boundary_ok = 0, boundary_refused = 0,
          after_ok = 0, after_refused = 0, other = 0;
  absl::Time first_refusal_end = absl::InfiniteFuture();
  absl::Time last_ok_end = signal_at;
  for (const auto& mine : calls) {
    for (const Call& c : mine) {
      ++total;
      const bool ok = c.code == grpc::StatusCode::OK;
      const bool refused = c.code == grpc::StatusCode::UNAVAILABLE;
      if (!ok && !refused) {
        ++other;
        ADD_FAILURE() << c.code << ": " << c.message;
      }
      if (refused) first_refusal_end = std::min(first_refusal_end, c.end);
      if (ok) last_ok_end = std::max(last_ok_end, c.end);
      if (c.start < signal_at - kSurelyAccepted) {
        ++before;
        EXPECT_TRUE(ok) << "accepted before the signal, yet: " << c.code << " "
                        << c.message;
        if (ok && c.end > signal_at) ++drained;
      } else if (c.start < signal_at) {
        ok ? ++boundary_ok : ++boundary_refused;
      } else {
        ok ? ++after_ok : ++after_refused;
      }
    }
  }
  int64_t accepted_after_refusal = 0;
  for (const auto& mine : calls) {
    for (const Call& c : mine) {
      if (c.start > first_refusal_end && c.code != grpc::StatusCode::UNAVAILABLE) {
        ++accepted_after_refusal;
      }
    }
  }

  fig.Add("callers", int64_t{kCallers});
  fig.Add("calls", total);
  fig.Add("accepted_before_signal", before);
  fig.Add("in_flight_at_signal_completed", drained);
  fig.Add("boundary_ok", boundary_ok);
  fig.Add("boundary_refused", boundary_refused);
  fig.Add("after_signal_ok", after_ok);
  fig.Add("after_signal_refused", after_refused);
  fig.Add("other_errors", other);
  if (first_refusal_end != absl::InfiniteFuture()) {
    fig.AddMs("first_refusal_after_signal", first_refusal_end - signal_at);
  }
  fig.AddMs("last_accepted_done_after_signal", last_ok_end - signal_at);
  fig.AddMs("exit_after_signal", exit_after);

  ASSERT_TRUE(status.has_value()) << "dbpool-server still running after the grace";
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  fig.Add("exit_code", int64_t{WIFEXITED(*status) ? WEXITSTATUS(*status) : -1});
  EXPECT_LE(exit_after, kGrace) << "exits within the grace period";
  EXPECT_LT(last_ok_end - signal_at, kGrace / 2) << "the accepted calls drain promptly";
  EXPECT_GT(drained, 0) << "calls were in flight at the signal";
  EXPECT_GT(after_refused, 0) << "new calls are refused";
  EXPECT_EQ(accepted_after_refusal, 0)
      << "once a call was refused, no later call was accepted";
  EXPECT_EQ(other, 0);
}

// DBPOOL_SHUTDOWN_DELAY_MS: after the signal the server says NOT_SERVING
// at once, so that balancers take it out, yet serves every call that still
// comes until the delay is over; only then does it refuse and drain.
TEST(Sigterm, DelayServesCallsWhileHealthSaysNotServing) {
  constexpr absl::Duration kDelay = absl::Milliseconds(1500);
  ServerProcess server(
      {"--db-pool-max-connections=2",
       absl::StrCat("--shutdown-delay-ms=", absl::ToInt64Milliseconds(kDelay)),
       "--shutdown-grace-ms=5000",
       absl::StrCat("--database-url=", PgCluster::Get().conninfo())});
  ASSERT_FALSE(server.target().empty()) << "no ready line from dbpool-server";
  auto channel = grpc::CreateChannel(server.target(), grpc::InsecureChannelCredentials());
  auto stub = v1::DatabaseService::NewStub(channel);
  auto health = grpc::health::v1::Health::NewStub(channel);
  const auto query = [&stub] {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    v1::QueryRequest request;
    request.set_sql("SELECT 1");
    v1::QueryResponse response;
    return stub->Query(&context, request, &response);
  };
  const auto serving = [&health] {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status st = health->Check(&context, request, &response);
    return st.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  };
  ASSERT_TRUE(Eventually([&] { return query().ok() && serving(); }));

  const absl::Time signal_at = absl::Now();
  ASSERT_EQ(kill(server.pid(), SIGTERM), 0);
  ASSERT_TRUE(Eventually([&] { return !serving(); }))
      << "health turns NOT_SERVING at the signal";
  int served = 0;
  // Calls keep coming, as from a balancer that has not noticed yet; the
  // last starts well inside the delay.
  while (absl::Now() < signal_at + kDelay - absl::Milliseconds(500)) {
    const grpc::Status st = query();
    EXPECT_TRUE(st.ok()) << "during the delay: " << st.error_code() << " "
                         << st.error_message();
    ++served;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_GT(served, 0);
  const std::optional<int> status = server.WaitExit(absl::Seconds(15));
  const absl::Duration exit_after = absl::Now() - signal_at;
  ASSERT_TRUE(status.has_value()) << "dbpool-server still running";
  EXPECT_TRUE(WIFEXITED(*status));
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  EXPECT_GE(exit_after, kDelay) << "the delay is kept";
  Figures fig;
  fig.Add("served_during_delay", int64_t{served});
  fig.AddMs("exit_after_signal", exit_after);
}

}  // namespace
}  // namespace dbpool::testing
