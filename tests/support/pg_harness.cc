#include "tests/support/pg_harness.h"

#include <libpq-fe.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <array>
#include <cstdio>
#include <filesystem>

#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/db/pg_connection.h"

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

class ClusterEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { PgCluster::Get().Start(); }
  void TearDown() override { PgCluster::Get().Remove(); }
};

const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new ClusterEnvironment);

}  // namespace

PgCluster& PgCluster::Get() {
  static auto* const cluster = new PgCluster();
  return *cluster;
}

std::string PgCluster::conninfo() const {
  return absl::StrCat("host=127.0.0.1 port=", port_,
                      " user=postgres dbname=postgres");
}

void PgCluster::Start() {
  if (dir_.empty()) {
    char tmpl[] = "/tmp/dbpool-it-XXXXXX";
    dir_ = mkdtemp(tmpl);
    // The cluster runs as the postgres user, which must reach the folder.
    chmod(dir_.c_str(), 0755);
  }
  const std::string port = Run(ClusterScript() + " start " + dir_ + "/pg");
  ASSERT_TRUE(absl::SimpleAtoi(port, &port_)) << port;
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

std::string PgCluster::Scalar(const std::string& sql) const {
  PGconn* conn = PQconnectdb(conninfo().c_str());
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

TestServer::TestServer(TestServerOptions options) {
  if (options.conninfo.empty()) options.conninfo = PgCluster::Get().conninfo();
  pool::PoolOptions po;
  po.max_connections = options.max_connections;
  po.min_connections = options.min_connections;
  po.max_waiting = options.max_waiting;
  po.acquire_timeout = options.acquire_timeout;
  auto connector = std::make_shared<db::PgConnector>(db::ConnectionSettings{
      options.conninfo, options.application_name, options.statement_timeout});
  executor_ = std::make_unique<Executor>(options.max_connections, "test-worker");
  pool_ = std::make_unique<pool::ConnectionPool>(po, connector);
  rpc::ServiceOptions so;
  so.statement_timeout = options.statement_timeout;
  so.query.max_rows = 1000;
  so.query.max_result_bytes = 1 << 20;
  so.max_stats_streams = options.max_stats_streams;
  so.request.max_sql_bytes = options.max_sql_bytes;
  so.request.max_params = options.max_params;
  service_ = std::make_unique<rpc::DatabaseService>(*pool_, *executor_, so);
  health_service_ = std::make_unique<rpc::HealthService>(*pool_);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
  builder.RegisterService(service_.get());
  builder.RegisterService(health_service_.get());
  server_ = builder.BuildAndStart();
  EXPECT_NE(server_, nullptr);
  auto channel = grpc::CreateChannel(target(), grpc::InsecureChannelCredentials());
  stub_ = v1::DatabaseService::NewStub(channel);
  health_ = grpc::health::v1::Health::NewStub(channel);
}

TestServer::~TestServer() {
  health_service_->EndWatches();
  service_->EndStreams();
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_->Wait();
}

std::string TestServer::target() const { return absl::StrCat("127.0.0.1:", port_); }

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
