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
