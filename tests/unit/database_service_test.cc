// DatabaseService over a fake engine, through an in-process gRPC server: what
// the Query reactor hands the engine, cancellation at each stage, the
// per-caller slot on every path, the pool state in error details, and
// access control by token, role and anonymous caller. The calls added with
// transactions (ExecuteBatch, StreamQuery, Begin/Commit/Rollback) are in
// database_service_tx_test.cc.
#include "server/rpc/database_service.h"

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <grpcpp/grpcpp.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "google/rpc/status.pb.h"
#include "server/rpc/health_service.h"
#include "server/security/forwarded_client.h"
#include "tests/unit/service_fixture.h"

namespace dbpool::rpc {
namespace {

using namespace ::dbpool::rpc::test;  // NOLINT: the fixture's vocabulary
using ::testing::HasSubstr;
using google::protobuf::util::TimeUtil;

TEST_F(DatabaseServiceTest, AValidCallReachesTheEngineAndItsResultTheCaller) {
  Start();
  v1::QueryRequest request = Sql("SELECT $1::int");
  request.add_params()->set_int64_value(41);
  *request.mutable_timeout() = TimeUtil::MillisecondsToDuration(300);
  const absl::Time sent = absl::Now();
  Call call(stub(), request, {}, absl::Seconds(10));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  const engine::QueryJob job = engine_.job(0);
  ASSERT_EQ(job.statements.size(), 1u);
  EXPECT_EQ(job.statements[0].request.sql(), "SELECT $1::int");
  EXPECT_EQ(job.statements[0].params.size(), 1u);
  EXPECT_FALSE(job.batch);
  EXPECT_TRUE(job.transaction_id.empty());
  EXPECT_TRUE(job.caller.empty()) << "no tokens, no limit, no transaction: no name needed";
  EXPECT_FALSE(job.read_only);
  EXPECT_EQ(job.timeout, absl::Milliseconds(300)) << "the request shortens the default";
  // The call's deadline, as gRPC carries it (rounded up on the wire).
  EXPECT_GT(job.deadline, sent + absl::Seconds(9));
  EXPECT_LT(job.deadline, sent + absl::Seconds(11));
  EXPECT_FALSE(call.done()) << "the call waits for the engine";

  ASSERT_TRUE(engine_.Complete(0, Ok()));
  ASSERT_TRUE(call.Wait().ok());
  EXPECT_EQ(call.response().command_tag(), "SELECT 1");
  EXPECT_EQ(call.response().rows(0).values(0).int64_value(), 1);
  EXPECT_EQ(TimeUtil::DurationToMicroseconds(call.response().timings().acquire_wait()), 1500);
  EXPECT_EQ(TimeUtil::DurationToMilliseconds(call.response().timings().execution()), 2);
  EXPECT_EQ(call.response().timings().queue_depth_on_arrival(), 3);
  EXPECT_EQ(Trailer(call, "dbpool-acquire-wait-us"), "1500");
  EXPECT_EQ(Trailer(call, "dbpool-queue-depth"), "3");
}

TEST_F(DatabaseServiceTest, ARequestTimeoutCannotLengthenTheDefault) {
  Start();
  v1::QueryRequest request = Sql("SELECT 1");
  *request.mutable_timeout() = TimeUtil::SecondsToDuration(3600);
  Call longer(stub(), request);
  Call none(stub(), Sql("SELECT 1"));
  ASSERT_TRUE(engine_.WaitForSubmitted(2));
  EXPECT_EQ(engine_.job(0).timeout, absl::Seconds(30));
  EXPECT_EQ(engine_.job(1).timeout, absl::Seconds(30));
}

TEST_F(DatabaseServiceTest, BadRequestsNeverReachTheEngine) {
  Start();
  Call empty(stub(), Sql(""));
  EXPECT_EQ(empty.Wait().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  Call too_long(stub(), Sql(std::string(2000, ' ') + "SELECT 1"));
  EXPECT_EQ(too_long.Wait().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(engine_.submitted(), 0);
}

TEST_F(DatabaseServiceTest, ReadOnlyRoleForcesReadOnly) {
  Start(/*tokens=*/true);
  Call reader(stub(), Sql("SELECT 1"), As(kReader));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  EXPECT_TRUE(engine_.job(0).read_only) << "the role decides, not the request";

  Call writer(stub(), Sql("SELECT 1"), As(kAlice));
  ASSERT_TRUE(engine_.WaitForSubmitted(2));
  EXPECT_FALSE(engine_.job(1).read_only);

  v1::QueryRequest asked = Sql("SELECT 1");
  asked.set_read_only(true);
  Call asking_writer(stub(), asked, As(kAlice));
  ASSERT_TRUE(engine_.WaitForSubmitted(3));
  EXPECT_TRUE(engine_.job(2).read_only) << "a writer may ask for read_only";
}

TEST_F(DatabaseServiceTest, TokensAndRolesDecideWhoMayQuery) {
  Start(/*tokens=*/true);
  Call anonymous(stub(), Sql("SELECT 1"));
  EXPECT_EQ(anonymous.Wait().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  Call wrong(stub(), Sql("SELECT 1"), As("rw-not-a-known-token-at-all"));
  EXPECT_EQ(wrong.Wait().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  Call monitor(stub(), Sql("SELECT 1"), As(kMonitor));
  const grpc::Status denied = monitor.Wait();
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(denied.error_message(), HasSubstr("grafana"));
  EXPECT_EQ(engine_.submitted(), 0) << "no refused call reaches the engine";

  pool::PoolStats stats;
  stats.max = 7;
  engine_.set_snapshot(stats);
  for (const char* token : {kMonitor, kReader, kAlice}) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    context.AddMetadata("authorization", absl::StrCat("Bearer ", token));
    v1::PoolStats reply;
    ASSERT_TRUE(stub().GetPoolStats(&context, {}, &reply).ok()) << token;
    EXPECT_EQ(reply.max_connections(), 7);
  }
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
  v1::PoolStats reply;
  EXPECT_EQ(stub().GetPoolStats(&context, {}, &reply).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(DatabaseServiceTest, CancelWhileWaitingEndsTheWaitAndFreesTheSlot) {
  Start(/*tokens=*/true, /*max_calls_per_caller=*/1);
  auto first = std::make_unique<Call>(stub(), Sql("SELECT 1"), As(kAlice));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  first->Cancel();
  ASSERT_TRUE(engine_.WaitForCancel(0)) << "the cancel reaches the engine";
  EXPECT_EQ(first->Wait().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(engine_.WaitForCompleted(0));
  Call next(stub(), Sql("SELECT 1"), As(kAlice));
  EXPECT_TRUE(engine_.WaitForSubmitted(2)) << "alice's slot was freed";
}

TEST_F(DatabaseServiceTest, CancelWhileRunningHoldsTheSlotUntilTheStatementStops) {
  Start(/*tokens=*/true, /*max_calls_per_caller=*/1);
  Call first(stub(), Sql("SELECT pg_sleep(10)"), As(kAlice));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  engine_.MarkRunning(0);
  first.Cancel();
  ASSERT_TRUE(engine_.WaitForCancel(0));
  EXPECT_EQ(first.Wait().error_code(), grpc::StatusCode::CANCELLED);

  // Until the statement has stopped it still counts against alice.
  Call refused(stub(), Sql("SELECT 1"), As(kAlice));
  const grpc::Status st = refused.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("DBPOOL_MAX_CALLS_PER_CALLER"));
  Call other(stub(), Sql("SELECT 1"), As(kBob));
  ASSERT_TRUE(engine_.WaitForSubmitted(2)) << "bob has a slot of his own";

  ASSERT_TRUE(engine_.Complete(0, Failed(absl::CancelledError("cancelled"), true)));
  Call after(stub(), Sql("SELECT 1"), As(kAlice));
  EXPECT_TRUE(engine_.WaitForSubmitted(3)) << "alice's slot was freed";
}

// Every way a call can end gives its slot back, so that a caller with a
// limit of one can always make the next call.
TEST_F(DatabaseServiceTest, TheSlotIsFreedOnEveryPath) {
  Start(/*tokens=*/true, /*max_calls_per_caller=*/1);
  struct Path {
    const char* name;
    engine::QueryResult result;
    grpc::StatusCode code;
  };
  const Path paths[] = {
      {"ok", Ok(), grpc::StatusCode::OK},
      {"statement error",
       Failed(absl::InvalidArgumentError("syntax error"), true),
       grpc::StatusCode::INVALID_ARGUMENT},
      {"no connection in time",
       Failed(absl::DeadlineExceededError("no connection"), false),
       grpc::StatusCode::DEADLINE_EXCEEDED},
      {"queue full", Failed(absl::ResourceExhaustedError("queue full"), false),
       grpc::StatusCode::RESOURCE_EXHAUSTED},
  };
  int submitted = 0;
  for (const Path& path : paths) {
    Call call(stub(), Sql("SELECT 1"), As(kAlice));
    ASSERT_TRUE(engine_.WaitForSubmitted(++submitted)) << path.name;
    ASSERT_TRUE(engine_.Complete(submitted - 1, path.result));
    EXPECT_EQ(call.Wait().error_code(), path.code) << path.name;
  }
  for (const Path& path : paths) {
    // Completed inside Submit, before the handle is known.
    engine_.CompleteInline(path.result);
    Call call(stub(), Sql("SELECT 1"), As(kAlice));
    EXPECT_EQ(call.Wait().error_code(), path.code) << path.name << ", inline";
    ++submitted;
  }
  engine_.CompleteInline(std::nullopt);
  Call bad(stub(), Sql(""), As(kAlice));
  EXPECT_EQ(bad.Wait().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  Call last(stub(), Sql("SELECT 1"), As(kAlice));
  EXPECT_TRUE(engine_.WaitForSubmitted(submitted + 1)) << "the slot is free after all";
  EXPECT_EQ(engine_.submitted(), submitted + 1);
}

TEST_F(DatabaseServiceTest, PoolStateErrorsCarryTheSnapshot) {
  Start();
  pool::PoolStats stats;
  stats.max = 7;
  stats.active = 7;
  stats.total = 7;
  stats.waiting = 3;
  engine_.set_snapshot(stats);
  const absl::Status pool_errors[] = {
      absl::ResourceExhaustedError("queue full"),
      absl::DeadlineExceededError("no connection within the acquire timeout"),
      absl::UnavailableError("database unreachable")};
  for (const absl::Status& error : pool_errors) {
    engine_.CompleteInline(Failed(error, false));
    Call call(stub(), Sql("SELECT 1"));
    const grpc::Status st = call.Wait();
    EXPECT_EQ(static_cast<int>(st.error_code()), static_cast<int>(error.code()));
    const std::optional<v1::PoolStats> state = PoolStateOf(st);
    ASSERT_TRUE(state.has_value()) << error;
    EXPECT_EQ(state->max_connections(), 7);
    EXPECT_EQ(state->active_connections(), 7);
    EXPECT_EQ(state->waiting_connections(), 3);
  }
  for (const absl::Status& error :
       {absl::InvalidArgumentError("syntax error"), absl::AbortedError("deadlock")}) {
    engine_.CompleteInline(Failed(error, true));
    Call call(stub(), Sql("SELECT 1"));
    const grpc::Status st = call.Wait();
    EXPECT_EQ(static_cast<int>(st.error_code()), static_cast<int>(error.code()));
    EXPECT_FALSE(PoolStateOf(st).has_value()) << error << ": not the pool's doing";
  }
}

TEST_F(DatabaseServiceTest, AnonymousCallersAreCountedByName) {
  Start(/*tokens=*/false, /*max_calls_per_caller=*/1);
  // Without tokens a caller is known by its address, which an in-process
  // call lacks ("unknown"), unless it is the HTTP gateway naming its own
  // client; a name sent without the gateway's secret counts for nothing.
  Call first(stub(), Sql("SELECT 1"));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  Call second(stub(), Sql("SELECT 1"));
  const grpc::Status st = second.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(st.error_message(), HasSubstr("\"unknown\""));
  Call forged(stub(), Sql("SELECT 1"),
              {"", security::ForwardedClientValue("not-the-secret", "ipv4:10.0.0.9")});
  EXPECT_EQ(forged.Wait().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << "counted as the address it came from";
  Call web_a(stub(), Sql("SELECT 1"), From("ipv4:10.0.0.1"));
  ASSERT_TRUE(engine_.WaitForSubmitted(2));
  Call web_b(stub(), Sql("SELECT 1"), From("ipv4:10.0.0.2"));
  ASSERT_TRUE(engine_.WaitForSubmitted(3)) << "each HTTP client is a caller of its own";
  Call web_a_again(stub(), Sql("SELECT 1"), From("ipv4:10.0.0.1"));
  const grpc::Status again = web_a_again.Wait();
  EXPECT_EQ(again.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(again.error_message(), HasSubstr("\"ipv4:10.0.0.1\""));
}

TEST_F(DatabaseServiceTest, HealthFollowsTheEngine) {
  Start();
  auto health = grpc::health::v1::Health::NewStub(channel_);
  auto check = [&](const std::string& service = "") {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_TRUE(health->Check(&context, request, &response).ok());
    return response.status();
  };
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::SERVING);
  engine_.set_serving(false);
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  // The database is gone, the process is not: liveness stays SERVING.
  EXPECT_EQ(check(kLivenessService), grpc::health::v1::HealthCheckResponse::SERVING);
  engine_.set_serving(true);
  health_service_->SetDraining();
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(check(kLivenessService), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST(PeerHost, DropsThePortOnly) {
  EXPECT_EQ(PeerHost("ipv4:127.0.0.1:53422"), "ipv4:127.0.0.1");
  EXPECT_EQ(PeerHost("ipv6:[::1]:5000"), "ipv6:[::1]");
  EXPECT_EQ(PeerHost("ipv6:%5B::1%5D:5000"), "ipv6:%5B::1%5D");
  EXPECT_EQ(PeerHost("unix:/run/dbpool.sock"), "unix:/run/dbpool.sock");
  EXPECT_EQ(PeerHost("inproc"), "inproc");
}

}  // namespace
}  // namespace dbpool::rpc
