// PgConnector against a real PostgreSQL and against a host that accepts
// TCP connections and never answers (a frozen server, or one cut off behind
// a load balancer): attempts run side by side on the connector's one
// thread, so a silent host holds up no other attempt, and every attempt
// ends by its deadline.
#include "server/db/pg_connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using ::testing::HasSubstr;
using Opened = absl::StatusOr<std::unique_ptr<pool::Connection>>;

// A loopback port whose kernel completes TCP handshakes (listen backlog)
// and whose owner never reads or writes.
class SilentHost {
 public:
  SilentHost() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    EXPECT_EQ(listen(fd_, 64), 0);
    socklen_t len = sizeof addr;
    getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
  }
  ~SilentHost() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// A loopback port nothing listens on.
int ClosedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

db::ConnectionSettings Settings(std::string conninfo) {
  return db::ConnectionSettings{std::move(conninfo), "connector-test", absl::Seconds(5), 0};
}

// Collects the answers of attempts, in the order they came.
class Answers {
 public:
  pool::Connector::ConnectDone Expect(std::string name) {
    return [this, name](Opened opened) {
      std::lock_guard<std::mutex> lock(mu_);
      order_.push_back(name);
      results_.emplace_back(name, std::move(opened));
      arrived_.notify_all();
    };
  }
  // Waits (real time, bounded) for `n` answers.
  bool WaitFor(size_t n, absl::Duration timeout = absl::Seconds(20)) {
    std::unique_lock<std::mutex> lock(mu_);
    return arrived_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                             [&] { return results_.size() >= n; });
  }
  std::vector<std::string> order() {
    std::lock_guard<std::mutex> lock(mu_);
    return order_;
  }
  Opened Take(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [n, r] : results_) {
      if (n == name) return std::move(r);
    }
    return absl::InternalError(absl::StrCat("no answer for ", name));
  }

 private:
  std::mutex mu_;
  std::condition_variable arrived_;
  std::vector<std::string> order_;
  std::vector<std::pair<std::string, Opened>> results_;
};

int ThreadsNamed(const std::string& name) {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(entry.path() / "comm");
    std::string line;
    std::getline(comm, line);
    if (line == name) ++n;
  }
  return n;
}

TEST(PgConnectorTest, TwentyAttemptsOpenSideBySideOnOneThread) {
  const int before = ThreadsNamed("dbpool-connect");
  db::PgConnector connector(Settings(PgCluster::Get().conninfo()));
  EXPECT_EQ(ThreadsNamed("dbpool-connect"), before + 1);
  Answers answers;
  constexpr int kAttempts = 20;
  for (int i = 0; i < kAttempts; ++i) {
    connector.Connect(absl::Now() + absl::Seconds(10), answers.Expect(absl::StrCat(i)));
  }
  ASSERT_TRUE(answers.WaitFor(kAttempts));
  EXPECT_EQ(ThreadsNamed("dbpool-connect"), before + 1) << "no thread per attempt";
  for (int i = 0; i < kAttempts; ++i) {
    Opened opened = answers.Take(absl::StrCat(i));
    ASSERT_TRUE(opened.ok()) << opened.status();
    auto& conn = static_cast<db::PgConnection&>(**opened);
    EXPECT_TRUE(conn.IsUsable());
    PGresult* r = PQexec(conn.raw(), "SELECT current_setting('application_name')");
    ASSERT_EQ(PQresultStatus(r), PGRES_TUPLES_OK) << PQerrorMessage(conn.raw());
    EXPECT_STREQ(PQgetvalue(r, 0, 0), "connector-test");
    PQclear(r);
  }
}

TEST(PgConnectorTest, EachAttemptOnASilentHostEndsAtItsOwnDeadline) {
  SilentHost silent;
  db::PgConnector connector(
      Settings(absl::StrCat("host=127.0.0.1 port=", silent.port(), " dbname=postgres")));
  Answers answers;
  const absl::Time asked = absl::Now();
  // One thread serves both: the later attempt, with the nearer deadline,
  // must not wait behind the earlier one.
  connector.Connect(asked + absl::Seconds(3), answers.Expect("long"));
  connector.Connect(asked + absl::Milliseconds(300), answers.Expect("short"));
  ASSERT_TRUE(answers.WaitFor(1));
  EXPECT_GE(absl::Now() - asked, absl::Milliseconds(290)) << "it waited for its server";
  ASSERT_TRUE(answers.WaitFor(2));
  EXPECT_THAT(answers.order(), ::testing::ElementsAre("short", "long"));
  for (const char* name : {"short", "long"}) {
    Opened opened = answers.Take(name);
    EXPECT_EQ(opened.status().code(), absl::StatusCode::kUnavailable) << name;
    EXPECT_THAT(std::string(opened.status().message()), HasSubstr("timed out")) << name;
  }
}

TEST(PgConnectorTest, AMultiHostAttemptMovesPastASilentHost) {
  SilentHost silent;
  db::PgConnector connector(Settings(absl::StrCat(
      "host=127.0.0.1,127.0.0.1 port=", silent.port(), ",", PgCluster::Get().port(),
      " user=postgres dbname=postgres")));
  Answers answers;
  connector.Connect(absl::Now() + absl::Seconds(2), answers.Expect("both hosts"));
  ASSERT_TRUE(answers.WaitFor(1));
  Opened opened = answers.Take("both hosts");
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(static_cast<db::PgConnection&>(**opened).Endpoint(),
            absl::StrCat("127.0.0.1:", PgCluster::Get().port()))
      << "the second host, once the first had used its half of the time";
}

TEST(PgConnectorTest, ARefusedConnectionFailsWithLibpqsReason) {
  db::PgConnector connector(
      Settings(absl::StrCat("host=127.0.0.1 port=", ClosedPort(), " dbname=postgres")));
  Answers answers;
  connector.Connect(absl::Now() + absl::Seconds(10), answers.Expect("refused"));
  ASSERT_TRUE(answers.WaitFor(1));
  Opened opened = answers.Take("refused");
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(opened.status().message()), HasSubstr("Connection refused"));
}

TEST(PgConnectorTest, DestructionAnswersTheAttemptsUnderWay) {
  SilentHost silent;
  Answers answers;
  {
    db::PgConnector connector(
        Settings(absl::StrCat("host=127.0.0.1 port=", silent.port(), " dbname=postgres")));
    connector.Connect(absl::Now() + absl::Seconds(60), answers.Expect("pending"));
  }
  ASSERT_TRUE(answers.WaitFor(1, absl::Seconds(5))) << "answered by the destructor";
  Opened opened = answers.Take("pending");
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(opened.status().message()), HasSubstr("shutting down"));
}

TEST(PgConnectorTest, ConnectNowWaitsForTheConnection) {
  db::PgConnector connector(Settings(PgCluster::Get().conninfo()));
  absl::StatusOr<std::unique_ptr<db::PgConnection>> conn =
      connector.ConnectNow(absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_TRUE((*conn)->IsUsable());
}

}  // namespace
}  // namespace dbpool::testing
