#include <cmath>
#include <map>

#include <gtest/gtest.h>

#include "server/http/rest_gateway.h"
#include "server/metrics/metrics.h"
#include "server/metrics/pool_collector.h"
#include "server/db/sql_state.h"

namespace dbpool {
namespace {

const prometheus::MetricFamily* Find(const std::vector<prometheus::MetricFamily>& fs,
                                     const std::string& name) {
  for (const auto& f : fs) {
    if (f.name == name) return &f;
  }
  return nullptr;
}

TEST(PoolFamilies, GaugesAndCumulativeHistogramFromOneSnapshot) {
  pool::PoolStats s;
  s.active = 3;
  s.idle = 1;
  s.max = 20;
  s.waiting = 7;
  s.total = 5;
  s.connecting = 1;
  s.reachable = true;
  s.oldest_waiter_age = absl::Milliseconds(1500);
  s.acquires_timed_out = 4;
  s.connections_closed[static_cast<int>(pool::CloseReason::kBroken)] = 2;
  s.acquire_buckets[0] = 10;                            // <= 50 us
  s.acquire_buckets[4] = 5;                             // <= 1 ms
  s.acquire_buckets[pool::kAcquireBucketSeconds.size()] = 1;  // > 30 s
  s.acquire_seconds_sum = 40.5;
  const auto fs = metrics::PoolFamilies(s);
  EXPECT_EQ(Find(fs, "db_pool_active_connections")->metric[0].gauge.value, 3);
  EXPECT_EQ(Find(fs, "db_pool_waiting_connections")->metric[0].gauge.value, 7);
  EXPECT_EQ(Find(fs, "db_pool_max_connections")->metric[0].gauge.value, 20);
  EXPECT_EQ(Find(fs, "db_pool_oldest_waiter_seconds")->metric[0].gauge.value, 1.5);
  EXPECT_EQ(Find(fs, "db_pool_database_reachable")->metric[0].gauge.value, 1);
  std::map<std::string, double> acquires;
  for (const auto& m : Find(fs, "db_pool_acquires_total")->metric) {
    acquires[m.label[0].value] = m.counter.value;
  }
  EXPECT_EQ(acquires.size(), 5u);
  EXPECT_EQ(acquires["timeout"], 4);
  const auto* closed = Find(fs, "db_pool_connections_closed_total");
  ASSERT_EQ(closed->metric.size(), 4u);
  for (const auto& m : closed->metric) {
    EXPECT_EQ(m.counter.value, m.label[0].value == "broken" ? 2 : 0) << m.label[0].value;
  }
  const auto& h = Find(fs, "db_pool_acquire_duration_seconds")->metric[0].histogram;
  EXPECT_EQ(h.sample_count, 16u);
  EXPECT_EQ(h.sample_sum, 40.5);
  ASSERT_EQ(h.bucket.size(), pool::kAcquireBucketSeconds.size() + 1);
  EXPECT_EQ(h.bucket[0].cumulative_count, 10u);
  EXPECT_EQ(h.bucket[3].cumulative_count, 10u);
  EXPECT_EQ(h.bucket[4].cumulative_count, 15u);
  EXPECT_EQ(h.bucket[pool::kAcquireBucketSeconds.size() - 1].cumulative_count, 15u);
  EXPECT_TRUE(std::isinf(h.bucket.back().upper_bound));
  EXPECT_EQ(h.bucket.back().cumulative_count, 16u);
}

TEST(Metrics, QueryErrorsAreLabelledBySqlStateClassOnly) {
  metrics::Metrics m("test");
  m.ObserveQuery(absl::Milliseconds(2), absl::OkStatus());
  m.ObserveQuery(absl::Milliseconds(2), db::SqlError("23505", "dup"));
  m.ObserveQuery(absl::Milliseconds(2), db::SqlError("23503", "fk"));
  m.ObserveQuery(absl::Milliseconds(2), absl::DeadlineExceededError("late"));
  const std::string text = m.Scrape();
  EXPECT_NE(text.find("db_query_errors_total{sqlstate_class=\"23\"} 2"), std::string::npos) << text;
  EXPECT_NE(text.find("db_query_errors_total{sqlstate_class=\"none\"} 1"), std::string::npos);
  EXPECT_NE(text.find("db_query_duration_seconds_count 4"), std::string::npos);
  EXPECT_NE(text.find("dbpool_build_info{version=\"test\"} 1"), std::string::npos);
  EXPECT_NE(text.find("process_resident_memory_bytes"), std::string::npos);
}

TEST(Metrics, RpcMetricsUseGoGrpcPrometheusNames) {
  metrics::Metrics m("test");
  m.RpcStarted("unary", "dbpool.v1.DatabaseService", "Query");
  m.ObserveRpc("unary", "dbpool.v1.DatabaseService", "Query", 8, absl::Milliseconds(3));
  const std::string text = m.Scrape();
  EXPECT_NE(text.find("grpc_server_handled_total{grpc_code=\"ResourceExhausted\","
                      "grpc_method=\"Query\",grpc_service=\"dbpool.v1.DatabaseService\","
                      "grpc_type=\"unary\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("grpc_server_started_total{"), std::string::npos);
  EXPECT_NE(text.find("grpc_server_handling_seconds_bucket{"), std::string::npos);
}

TEST(RestGateway, RoutesComeFromTheProtoAnnotations) {
  const auto routes = http::RoutesOf("dbpool.v1.DatabaseService");
  std::map<std::string, http::Route> by_path;
  for (const auto& r : routes) by_path[r.path] = r;
  ASSERT_EQ(routes.size(), 7u);
  EXPECT_EQ(by_path["/v1/query"].verb, "POST");
  EXPECT_TRUE(by_path["/v1/query"].has_body);
  EXPECT_FALSE(by_path["/v1/query"].server_streaming);
  EXPECT_EQ(by_path["/v1/query"].grpc_method, "/dbpool.v1.DatabaseService/Query");
  EXPECT_EQ(by_path["/api/metrics/database/pool"].verb, "GET");
  EXPECT_EQ(by_path["/api/metrics/database/pool"].output_type, "dbpool.v1.PoolStats");
  EXPECT_EQ(by_path["/v1/query:stream"].grpc_method, "/dbpool.v1.DatabaseService/StreamQuery");
  EXPECT_TRUE(by_path["/v1/query:stream"].server_streaming);
  EXPECT_EQ(by_path["/v1/batch"].grpc_method, "/dbpool.v1.DatabaseService/ExecuteBatch");
  EXPECT_EQ(by_path["/v1/transactions"].grpc_method,
            "/dbpool.v1.DatabaseService/BeginTransaction");
  EXPECT_EQ(by_path["/v1/transactions/{transaction_id}:commit"].grpc_method,
            "/dbpool.v1.DatabaseService/CommitTransaction");
  EXPECT_EQ(by_path["/v1/transactions/{transaction_id}:rollback"].input_type,
            "dbpool.v1.RollbackTransactionRequest");
  EXPECT_TRUE(http::RoutesOf("no.such.Service").empty());
}

TEST(RestGateway, HttpStatusFollowsGoogleRpcCode) {
  const std::map<int, int> expected = {
      {0, 200},  {1, 499},  {2, 500},  {3, 400},  {4, 504},  {5, 404},
      {6, 409},  {7, 403},  {8, 429},  {9, 400},  {10, 409}, {11, 400},
      {12, 501}, {13, 500}, {14, 503}, {15, 500}, {16, 401}, {99, 500}};
  for (const auto& [code, status] : expected) {
    EXPECT_EQ(http::HttpStatusFor(code), status) << "grpc code " << code;
  }
}

}  // namespace
}  // namespace dbpool
