// DatabaseService over a fake engine, through an in-process gRPC server: what
// the Query reactor hands the engine, cancellation at each stage, the
// per-caller slot on every path, the pool state in error details, and
// access control by token, role and anonymous caller.
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
#include "tests/unit/fake_engine.h"

namespace dbpool::rpc {
namespace {

using ::dbpool::testing::FakeEngine;
using ::testing::HasSubstr;
using google::protobuf::util::TimeUtil;

constexpr char kTokens[] =
    "grafana monitor    mon-aaaaaaaaaaaaaaaa\n"
    "reports read_only  ro-bbbbbbbbbbbbbbbbb\n"
    "alice   read_write rw-ccccccccccccccccc\n"
    "bob     read_write rw-ddddddddddddddddd\n";
constexpr char kMonitor[] = "mon-aaaaaaaaaaaaaaaa";
constexpr char kReader[] = "ro-bbbbbbbbbbbbbbbbb";
constexpr char kAlice[] = "rw-ccccccccccccccccc";
constexpr char kBob[] = "rw-ddddddddddddddddd";
constexpr char kGatewaySecret[] = "0123456789abcdef0123456789abcdef";

v1::QueryRequest Sql(const std::string& sql) {
  v1::QueryRequest r;
  r.set_sql(sql);
  return r;
}

// One Query in flight on the callback API.
class Call {
 public:
  struct Metadata {
    std::string token;      // sent as "authorization: Bearer TOKEN"
    std::string forwarded;  // sent as the HTTP gateway's client name
  };

  Call(v1::DatabaseService::Stub& stub, v1::QueryRequest request, Metadata metadata = {},
       absl::Duration deadline = absl::Seconds(10))
      : request_(std::move(request)), deadline_(deadline) {
    if (!metadata.token.empty()) {
      context_.AddMetadata("authorization", "Bearer " + metadata.token);
    }
    if (!metadata.forwarded.empty()) {
      context_.AddMetadata(security::kForwardedClientKey, metadata.forwarded);
    }
    context_.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
    stub.async()->Query(&context_, &request_, &response_, [this](grpc::Status s) {
      status_ = std::move(s);
      done_.Notify();
    });
  }
  ~Call() {
    context_.TryCancel();
    done_.WaitForNotificationWithTimeout(deadline_ + absl::Seconds(5));
  }

  // The call's status; DEADLINE_EXCEEDED-like failure of the test when it
  // has not ended well after its own deadline.
  grpc::Status Wait() {
    if (!done_.WaitForNotificationWithTimeout(deadline_ + absl::Seconds(5))) {
      ADD_FAILURE() << "the call never ended";
      return grpc::Status(grpc::StatusCode::UNKNOWN, "never ended");
    }
    return status_;
  }
  bool done() const { return done_.HasBeenNotified(); }
  void Cancel() { context_.TryCancel(); }
  // Valid after Wait().
  const v1::QueryResponse& response() const { return response_; }
  const std::multimap<grpc::string_ref, grpc::string_ref>& trailers() const {
    return context_.GetServerTrailingMetadata();
  }

 private:
  grpc::ClientContext context_;
  v1::QueryRequest request_;
  v1::QueryResponse response_;
  const absl::Duration deadline_;
  absl::Notification done_;
  grpc::Status status_;
};

Call::Metadata As(const std::string& token) { return {token, ""}; }
// A call as the HTTP gateway makes it for `http_client`.
Call::Metadata From(const std::string& http_client) {
  return {"", security::ForwardedClientValue(kGatewaySecret, http_client)};
}

std::string Trailer(const Call& call, const std::string& key) {
  auto it = call.trailers().find(key);
  if (it == call.trailers().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

// The PoolStats detail of an error, if it carries one.
std::optional<v1::PoolStats> PoolStateOf(const grpc::Status& status) {
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return std::nullopt;
  for (const auto& any : details.details()) {
    v1::PoolStats stats;
    if (any.UnpackTo(&stats)) return stats;
  }
  return std::nullopt;
}

engine::QueryResult Ok() {
  engine::QueryResult r;
  r.response.set_command_tag("SELECT 1");
  r.response.add_rows()->add_values()->set_int64_value(1);
  r.timings = engine::QueryTimings{absl::Microseconds(1500), 3, absl::Milliseconds(2)};
  return r;
}

engine::QueryResult Failed(absl::Status status, bool ran) {
  engine::QueryResult r;
  r.status = std::move(status);
  if (ran) r.timings = engine::QueryTimings{absl::ZeroDuration(), 0, absl::Milliseconds(1)};
  return r;
}

class DatabaseServiceTest : public ::testing::Test {
 protected:
  void Start(bool tokens = false, int max_calls_per_caller = 0) {
    ServiceOptions options;
    options.request.max_sql_bytes = 1 << 10;
    options.request.max_params = 10;
    options.statement_timeout = absl::Seconds(30);
    options.max_stats_streams = 4;
    options.max_calls_per_caller = max_calls_per_caller;
    options.forwarding_secret = kGatewaySecret;
    if (tokens) {
      auto table = security::TokenTable::Parse(kTokens);
      ASSERT_TRUE(table.ok()) << table.status();
      options.tokens = *std::move(table);
    }
    service_ = std::make_unique<DatabaseService>(engine_, options);
    health_service_ = std::make_unique<HealthService>(engine_, 4);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    builder.RegisterService(health_service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = server_->InProcessChannel(grpc::ChannelArguments());
    stub_ = v1::DatabaseService::NewStub(channel_);
  }

  void TearDown() override {
    if (server_ == nullptr) return;
    // A job still held would hold its call, and the server's Wait, forever.
    for (int i = 0; i < engine_.submitted(); ++i) {
      engine_.Complete(i, Failed(absl::CancelledError("test over"), false));
    }
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    server_->Wait();
  }

  v1::DatabaseService::Stub& stub() { return *stub_; }

  FakeEngine engine_;
  std::unique_ptr<DatabaseService> service_;
  std::unique_ptr<HealthService> health_service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DatabaseService::Stub> stub_;
};

TEST_F(DatabaseServiceTest, AValidCallReachesTheEngineAndItsResultTheCaller) {
  Start();
  v1::QueryRequest request = Sql("SELECT $1::int");
  request.add_params()->set_int64_value(41);
  *request.mutable_timeout() = TimeUtil::MillisecondsToDuration(300);
  const absl::Time sent = absl::Now();
  Call call(stub(), request, {}, absl::Seconds(10));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  const engine::QueryJob job = engine_.job(0);
  EXPECT_EQ(job.request.sql(), "SELECT $1::int");
  EXPECT_EQ(job.params.size(), 1u);
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
  auto check = [&] {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_TRUE(health->Check(&context, {}, &response).ok());
    return response.status();
  };
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::SERVING);
  engine_.set_serving(false);
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
  engine_.set_serving(true);
  health_service_->SetDraining();
  EXPECT_EQ(check(), grpc::health::v1::HealthCheckResponse::NOT_SERVING);
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
