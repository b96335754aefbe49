// Slow queries and cancellation: a deadline or a client cancel becomes a
// cancel on the server, and the connection, once the statement has
// stopped, is reused (the same backend serves the next call). A connection
// that does not recover is replaced and counted: see
// Backend.FrozenMidQueryErrsAtDeadlineAndIsDiscarded.
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "tests/fault/fault_util.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {
namespace {

using google::protobuf::util::TimeUtil;

// One connection, so that the backend serving the next call is the one
// that ran the cancelled statement, unless the pool replaced it.
ServerEnv OneConnection(const std::string& app) {
  return {{"DB_POOL_MAX_CONNECTIONS", "1"},
          {"DB_POOL_MIN_CONNECTIONS", "1"},
          {"DB_APPLICATION_NAME", app},
          // On a loaded machine a cancel can take a second or two to land;
          // these tests are about reuse once it has, not about the grace.
          {"DB_CANCEL_GRACE_MS", Ms(absl::Seconds(10))}};
}

std::string BackendPid(TestServer& server) {
  v1::QueryResponse resp;
  grpc::Status st = server.Query("SELECT pg_backend_pid()", &resp);
  const pool::PoolStats s = server.pool().Snapshot();
  EXPECT_TRUE(st.ok()) << st.error_message() << " (pool: " << s.active << " active, "
                       << s.idle << " idle, " << s.connecting << " connecting, "
                       << s.waiting << " waiting, " << s.connections_closed_total()
                       << " closed)";
  if (!st.ok() || resp.rows_size() != 1) return "";
  return absl::StrCat(resp.rows(0).values(0).int64_value());
}

int64_t RunningSleeps(const std::string& app) {
  return static_cast<int64_t>(
      BackendPids(app, "state = 'active' AND query LIKE 'SELECT pg_sleep%'").size());
}

// Waits until the statement shows in pg_stat_activity, stops it with
// `stop`, and returns how long after that it was gone from there.
template <typename Stop>
absl::Duration StoppedOnServer(const std::string& app, AsyncQuery& q, Stop stop,
                               grpc::StatusCode expected, absl::Time* stopped_at) {
  EXPECT_TRUE(Eventually([&] { return RunningSleeps(app) == 1; }));
  stop();
  grpc::Status st = q.Wait();
  EXPECT_EQ(st.error_code(), expected) << st.error_message();
  *stopped_at = absl::Now();
  EXPECT_TRUE(Eventually([&] { return RunningSleeps(app) == 0; }, absl::Seconds(3)))
      << "the statement is gone from pg_stat_activity";
  return absl::Now() - *stopped_at;
}

TEST(Cancel, RpcDeadlineCancelsOnTheServerAndKeepsTheConnection) {
  const std::string app = "dbpool-deadline";
  TestServer server(OneConnection(app));
  Figures fig;
  const std::string pid = BackendPid(server);
  ASSERT_FALSE(pid.empty());
  constexpr absl::Duration kDeadline = absl::Milliseconds(1500);
  AsyncQuery q(server.stub(), "SELECT pg_sleep(30)", kDeadline);
  absl::Time stopped;
  const absl::Duration gone = StoppedOnServer(
      app, q, [] {}, grpc::StatusCode::DEADLINE_EXCEEDED, &stopped);
  fig.AddMs("error_after_deadline", q.finished() - (q.started() + kDeadline));
  fig.AddMs("gone_from_pg_stat_activity_after_error", gone);
  EXPECT_LT(q.finished() - q.started(), kDeadline + absl::Milliseconds(500));
  EXPECT_EQ(BackendPid(server), pid) << "the same backend serves the next call";
  EXPECT_EQ(server.pool().Snapshot().connections_closed_total(), 0);
  fig.Add("closed", server.pool().Snapshot().connections_closed_total());
}

TEST(Cancel, RequestTimeoutCancelsOnTheServerAndKeepsTheConnection) {
  const std::string app = "dbpool-timeout";
  TestServer server(OneConnection(app));
  Figures fig;
  const std::string pid = BackendPid(server);
  ASSERT_FALSE(pid.empty());
  // The server's own deadline, shorter than the caller's: the server
  // cancels and answers, with the statement's SQLSTATE.
  v1::QueryRequest request;
  request.set_sql("SELECT pg_sleep(30)");
  *request.mutable_timeout() = TimeUtil::MillisecondsToDuration(500);
  AsyncQuery q(server.stub(), request, absl::Seconds(10));
  grpc::Status st = q.Wait();
  fig.AddMs("error_after", q.finished() - q.started());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << st.error_message();
  EXPECT_EQ(SqlStateOf(st), "57014") << "cancelled on the server: " << st.error_message();
  EXPECT_LT(q.finished() - q.started(), absl::Seconds(2));
  EXPECT_EQ(RunningSleeps(app), 0);
  EXPECT_EQ(BackendPid(server), pid) << "the same backend serves the next call";
  EXPECT_EQ(server.pool().Snapshot().connections_closed_total(), 0);
}

TEST(Cancel, ClientCancelStopsTheServerQueryAndKeepsTheConnection) {
  const std::string app = "dbpool-cancel";
  TestServer server(OneConnection(app));
  Figures fig;
  const std::string pid = BackendPid(server);
  ASSERT_FALSE(pid.empty());
  AsyncQuery q(server.stub(), "SELECT pg_sleep(30)", absl::Seconds(60));
  absl::Time stopped;
  const absl::Duration gone = StoppedOnServer(
      app, q, [&q] { q.Cancel(); }, grpc::StatusCode::CANCELLED, &stopped);
  fig.AddMs("gone_from_pg_stat_activity_after_cancel", gone);
  EXPECT_EQ(BackendPid(server), pid) << "the same backend serves the next call";
  EXPECT_EQ(server.pool().Snapshot().connections_closed_total(), 0);
  fig.Add("closed", server.pool().Snapshot().connections_closed_total());
}

// A caller that gives up while still queued leaves the queue at once and
// never takes a connection.
TEST(Cancel, WaitersLeaveTheQueueOnDeadlineAndCancel) {
  TestServer server(ServerEnv{{"DB_POOL_MAX_CONNECTIONS", "1"}});
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().idle == 1; }));
  Figures fig;
  AsyncQuery holder(server.stub(), "SELECT pg_sleep(2)", absl::Seconds(10));
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().active == 1; }));
  const int64_t waited_before = server.pool().Snapshot().acquires_waited;

  // Waits that ended without a connection: by deadline or by cancel.
  const auto abandoned = [&server] {
    const pool::PoolStats s = server.pool().Snapshot();
    return s.acquires_timed_out + s.acquires_cancelled;
  };
  const int64_t abandoned_before = abandoned();
  v1::QueryResponse resp;
  const absl::Time start = absl::Now();
  grpc::Status st = server.Query("SELECT 1", &resp, absl::Milliseconds(300));
  fig.AddMs("queued_deadline_error_after", absl::Now() - start);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_LT(absl::Now() - start, absl::Seconds(1));
  // The server ends the wait at the same deadline, or when the client's
  // cancel arrives, whichever it sees first.
  EXPECT_TRUE(Eventually([&] { return abandoned() == abandoned_before + 1; },
                         absl::Seconds(2)));
  EXPECT_EQ(server.pool().Snapshot().waiting, 0);

  const int64_t cancelled_before = server.pool().Snapshot().acquires_cancelled;
  AsyncQuery waiter(server.stub(), "SELECT 1", absl::Seconds(10));
  ASSERT_TRUE(Eventually([&] { return server.pool().Snapshot().waiting == 1; }));
  const absl::Time cancelled = absl::Now();
  waiter.Cancel();
  EXPECT_EQ(waiter.Wait().error_code(), grpc::StatusCode::CANCELLED);
  fig.AddMs("queued_cancel_error_after", waiter.finished() - cancelled);
  EXPECT_TRUE(Eventually(
      [&] { return server.pool().Snapshot().acquires_cancelled == cancelled_before + 1; },
      absl::Seconds(2)))
      << "the server ends the wait when the caller cancels";
  EXPECT_EQ(server.pool().Snapshot().waiting, 0);
  EXPECT_TRUE(holder.Wait().ok());
  EXPECT_EQ(server.pool().Snapshot().acquires_waited, waited_before)
      << "no abandoned waiter was handed the connection";
}

}  // namespace
}  // namespace dbpool::testing
