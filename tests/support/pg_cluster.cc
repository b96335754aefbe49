#include "tests/support/pg_cluster.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace dbpool::testing {
namespace {

std::string Run(const std::string& command) {
  std::string out;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return out;
  std::array<char, 256> buf;
  while (fgets(buf.data(), buf.size(), pipe) != nullptr) out += buf.data();
  const int rc = pclose(pipe);
  EXPECT_EQ(rc, 0) << command << "\n" << out;
  return std::string(absl::StripAsciiWhitespace(out));
}

std::string ClusterScript() {
  return std::string(DBPOOL_SOURCE_DIR) + "/tests/support/pg_cluster.sh";
}

PgCluster* shared_cluster = nullptr;

// Removes the shared cluster, if a test started it, after the last test.
class ClusterEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    if (shared_cluster != nullptr) shared_cluster->Remove();
  }
};

const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new ClusterEnvironment);

}  // namespace

PgCluster& PgCluster::Get() {
  static PgCluster* const cluster = [] {
    auto* c = new PgCluster();
    c->Start();
    shared_cluster = c;
    return c;
  }();
  return *cluster;
}

PgCluster::~PgCluster() { Remove(); }

std::string PgCluster::conninfo() const {
  return absl::StrCat("host=127.0.0.1 port=", port_,
                      " user=postgres dbname=postgres");
}

void PgCluster::MakeDir() {
  if (!dir_.empty()) return;
  char tmpl[] = "/tmp/dbpool-it-XXXXXX";
  dir_ = mkdtemp(tmpl);
  // The cluster runs as the postgres user, which must reach the folder.
  chmod(dir_.c_str(), 0755);
}

void PgCluster::Init() {
  MakeDir();
  const std::string port = Run(ClusterScript() + " init " + dir_ + "/pg");
  ASSERT_TRUE(absl::SimpleAtoi(port, &port_)) << port;
  pinned_ = true;
}

void PgCluster::Start() {
  MakeDir();
  const int wanted = port_;
  const std::string port = Run(ClusterScript() + " start " + dir_ + "/pg");
  ASSERT_TRUE(absl::SimpleAtoi(port, &port_)) << port;
  if (pinned_) {
    EXPECT_EQ(port_, wanted) << "port " << wanted
                             << " was taken before the cluster started";
  }
}

void PgCluster::Stop() {
  if (dir_.empty()) return;
  Run(ClusterScript() + " stop " + dir_ + "/pg");
}

void PgCluster::Remove() {
  if (dir_.empty()) return;
  Stop();
  std::filesystem::remove_all(dir_);
  dir_.clear();
}

void PgCluster::Restart() { Run(ClusterScript() + " restart " + dir_ + "/pg"); }

pid_t PgCluster::postmaster_pid() const {
  std::ifstream file(dir_ + "/pg/data/postmaster.pid");
  pid_t pid = 0;
  if (!(file >> pid)) return 0;
  return pid;
}

std::string PgCluster::Scalar(const std::string& sql) const {
  // A bounded connect: a test must fail, not hang, when the server is gone.
  PGconn* conn = PQconnectdb((conninfo() + " connect_timeout=5").c_str());
  std::string value;
  if (PQstatus(conn) != CONNECTION_OK) {
    ADD_FAILURE() << "harness connection: " << PQerrorMessage(conn);
  } else {
    PGresult* r = PQexec(conn, sql.c_str());
    const ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
    } else if (st == PGRES_TUPLES_OK && PQntuples(r) > 0) {
      value = PQgetvalue(r, 0, 0);
    }
    PQclear(r);
  }
  PQfinish(conn);
  return value;
}

int64_t PgCluster::Int(const std::string& sql) const {
  int64_t n = -1;
  const std::string value = Scalar(sql);
  EXPECT_TRUE(absl::SimpleAtoi(value, &n)) << sql << " gave '" << value << "'";
  return n;
}

bool PgCluster::Accepts() const {
  PGconn* conn = PQconnectdb((conninfo() + " connect_timeout=2").c_str());
  const bool ok = PQstatus(conn) == CONNECTION_OK;
  PQfinish(conn);
  return ok;
}

}  // namespace dbpool::testing
