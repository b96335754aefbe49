#include "tests/support/pg_harness.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "absl/algorithm/container.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/config/config.h"

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

std::string Ms(absl::Duration d) { return absl::StrCat(absl::ToInt64Milliseconds(d)); }

TestServer::TestServer(const ServerEnv& env) {
  ServerEnv vars = {{"DBPOOL_LISTEN_HOST", "127.0.0.1"},
                    {"DBPOOL_GRPC_PORT", "0"},
                    {"DBPOOL_HTTP_PORT", "0"},
                    {"DBPOOL_METRICS_PORT", "0"},
                    {"DB_POOL_MAX_CONNECTIONS", "4"},
                    {"DB_POOL_MIN_CONNECTIONS", "1"},
                    {"DB_APPLICATION_NAME", "dbpool-test"}};
  const std::vector<config::Variable> known = config::Variables();
  for (const auto& [name, value] : env) {
    EXPECT_TRUE(absl::c_any_of(known, [&](const auto& v) { return v.name == name; }))
        << name << " is not a dbpool-server setting";
    vars[name] = value;
  }
  // Only now: a test with a cluster of its own never starts the shared one.
  if (vars.count("DATABASE_URL") == 0) vars["DATABASE_URL"] = PgCluster::Get().conninfo();
  absl::StatusOr<config::Config> config = config::Load(
      [&vars](const std::string& name) -> std::optional<std::string> {
        auto it = vars.find(name);
        if (it == vars.end()) return std::nullopt;
        return it->second;
      },
      {});
  if (!config.ok()) GTEST_LOG_(FATAL) << "test server settings: " << config.status();
  absl::StatusOr<std::unique_ptr<app::Server>> server = app::BuildServer(*config);
  if (!server.ok()) GTEST_LOG_(FATAL) << "test server: " << server.status();
  server_ = *std::move(server);
  auto channel = grpc::CreateChannel(target(), grpc::InsecureChannelCredentials());
  stub_ = v1::DatabaseService::NewStub(channel);
  health_ = grpc::health::v1::Health::NewStub(channel);
}

TestServer::~TestServer() { server_->Shutdown(absl::Seconds(5)); }

std::string TestServer::target() const { return server_->Address(server_->grpc_port()); }

grpc::Status TestServer::Query(const v1::QueryRequest& request,
                               v1::QueryResponse* response,
                               absl::Duration deadline) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return stub_->Query(&context, request, response);
}

grpc::Status TestServer::Query(const std::string& sql, v1::QueryResponse* response,
                               absl::Duration deadline) {
  v1::QueryRequest request;
  request.set_sql(sql);
  return Query(request, response, deadline);
}

grpc::health::v1::HealthCheckResponse::ServingStatus TestServer::Health(
    absl::Duration deadline) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  grpc::health::v1::HealthCheckResponse response;
  if (!health_->Check(&context, {}, &response).ok()) {
    return grpc::health::v1::HealthCheckResponse::UNKNOWN;
  }
  return response.status();
}

grpc::Status TestServer::PoolStats(v1::PoolStats* stats, absl::Duration deadline) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
  return stub_->GetPoolStats(&context, {}, stats);
}

AsyncQuery::AsyncQuery(v1::DatabaseService::Stub& stub, const std::string& sql,
                       absl::Duration deadline)
    : AsyncQuery(stub,
                 [&sql] {
                   v1::QueryRequest r;
                   r.set_sql(sql);
                   return r;
                 }(),
                 deadline) {}

AsyncQuery::AsyncQuery(v1::DatabaseService::Stub& stub, v1::QueryRequest request,
                       absl::Duration deadline)
    : request_(std::move(request)), started_(absl::Now()), deadline_(started_ + deadline) {
  context_.set_deadline(absl::ToChronoTime(deadline_));
  stub.async()->Query(&context_, &request_, &response_, [this](grpc::Status s) {
    absl::MutexLock lock(&mu_);
    status_ = std::move(s);
    finished_ = absl::Now();
    done_ = true;
  });
}

AsyncQuery::~AsyncQuery() {
  context_.TryCancel();
  Wait();
}

grpc::Status AsyncQuery::Wait() {
  absl::MutexLock lock(&mu_);
  // The call's deadline ends it; the margin only catches a client library
  // that never reports.
  if (!mu_.AwaitWithTimeout(absl::Condition(&done_),
                            deadline_ + absl::Seconds(10) - absl::Now())) {
    ADD_FAILURE() << "the call did not end within 10 s of its deadline";
    return grpc::Status(grpc::StatusCode::UNKNOWN, "the call never ended");
  }
  return status_;
}

bool AsyncQuery::done() {
  absl::MutexLock lock(&mu_);
  return done_;
}

absl::Time AsyncQuery::finished() {
  absl::MutexLock lock(&mu_);
  return finished_;
}

std::string SqlStateOf(const grpc::Status& status) {
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return "";
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    if (any.UnpackTo(&info) && info.domain() == "postgresql") return info.reason();
  }
  return "";
}

}  // namespace dbpool::testing
