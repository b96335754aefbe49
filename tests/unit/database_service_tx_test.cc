// DatabaseService's calls for transactions, batches and streamed results,
// over the fake engine through an in-process gRPC server: what each hands
// the engine (statements, transaction id, caller, options), what refuses a
// call before the engine sees it, StreamQuery's flow control, cancel and
// end at every moment, and the caller's name wherever a transaction is
// involved.
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "server/db/sql_state.h"
#include "tests/unit/service_fixture.h"

namespace dbpool::rpc {
namespace {

using namespace ::dbpool::rpc::test;  // NOLINT: the fixture's vocabulary
using ::dbpool::testing::FakeEngine;
using FakeEngineEnd = FakeEngine::EndCall;
using ::testing::HasSubstr;
using google::protobuf::util::TimeUtil;

v1::ExecuteBatchRequest BatchOf(const std::vector<std::string>& sqls) {
  v1::ExecuteBatchRequest r;
  for (const std::string& sql : sqls) *r.add_statements() = Sql(sql);
  return r;
}

v1::QueryRequest InTx(const std::string& sql, const std::string& id) {
  v1::QueryRequest r = Sql(sql);
  r.set_transaction_id(id);
  return r;
}

// A result for a batch of `n`, each statement "INSERT 0 i".
engine::QueryResult BatchOk(int n) {
  engine::QueryResult r;
  for (int i = 0; i < n; ++i) {
    v1::QueryResponse& response = r.responses.emplace_back();
    response.set_command_tag(absl::StrCat("INSERT 0 ", i));
    response.set_rows_affected(i);
  }
  r.timings = engine::QueryTimings{absl::Microseconds(700), 2, absl::Milliseconds(9)};
  return r;
}

v1::QueryResponse Chunk(int first_row, int rows, bool with_columns) {
  v1::QueryResponse chunk;
  if (with_columns) {
    auto* column = chunk.add_columns();
    column->set_name("n");
    column->set_type_name("int8");
  }
  for (int i = 0; i < rows; ++i) {
    chunk.add_rows()->add_values()->set_int64_value(first_row + i);
  }
  return chunk;
}

engine::QueryResult StreamEnd(int rows) {
  engine::QueryResult r;
  v1::QueryResponse& end = r.responses.emplace_back();
  end.set_rows_affected(rows);
  end.set_command_tag(absl::StrCat("SELECT ", rows));
  r.timings = engine::QueryTimings{absl::Microseconds(250), 1, absl::Milliseconds(40)};
  return r;
}

engine::BegunTransaction Begun(const std::string& id, absl::Time expire) {
  return engine::BegunTransaction{id, expire};
}

// ---------------------------------------------------------------- Query

TEST_F(DatabaseServiceTest, QueryPassesItsTransactionAndNamesTheCaller) {
  Start();
  Call plain(stub(), Sql("SELECT 1"));
  Call in_tx(stub(), InTx("SELECT 2", "tx-1"));
  Call from_web(stub(), InTx("SELECT 3", "tx-2"), From("ipv4:10.0.0.7"));
  // Without the gateway's secret a name is not believed: it could take
  // over another client's transaction.
  Call forged(stub(), InTx("SELECT 4", "tx-2"),
              {"", security::ForwardedClientValue("not-the-secret", "ipv4:10.0.0.7")});
  ASSERT_TRUE(engine_.WaitForSubmitted(4));
  std::map<std::string, engine::QueryJob> by_sql;
  for (int i = 0; i < 4; ++i) {
    engine::QueryJob job = engine_.job(i);
    by_sql[job.statements.at(0).request.sql()] = job;
  }
  EXPECT_TRUE(by_sql["SELECT 1"].transaction_id.empty());
  EXPECT_TRUE(by_sql["SELECT 1"].caller.empty()) << "nothing needs the name";
  EXPECT_EQ(by_sql["SELECT 2"].transaction_id, "tx-1");
  // An in-process caller's peer is "unknown"; the name must still be there
  // for the engine to compare owners.
  EXPECT_EQ(by_sql["SELECT 2"].caller, "unknown");
  EXPECT_EQ(by_sql["SELECT 3"].transaction_id, "tx-2");
  EXPECT_EQ(by_sql["SELECT 3"].caller, "ipv4:10.0.0.7") << "the gateway's client";
  EXPECT_EQ(by_sql["SELECT 4"].caller, "unknown");
}

TEST_F(DatabaseServiceTest, QueryInATransactionIsTheTokenOwners) {
  Start(/*tokens=*/true);
  Call call(stub(), InTx("SELECT 1", "tx-9"), As(kAlice));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  EXPECT_EQ(engine_.job(0).caller, "alice");
  EXPECT_EQ(engine_.job(0).transaction_id, "tx-9");
  ASSERT_TRUE(engine_.Complete(0, Ok()));
  ASSERT_TRUE(call.Wait().ok());
  EXPECT_EQ(call.response().command_tag(), "SELECT 1");
}

TEST_F(DatabaseServiceTest, QueryRefusesAnEngineReplyWithoutItsResult) {
  Start();
  engine::QueryResult empty = Ok();
  empty.responses.clear();
  engine_.CompleteInline(empty);
  Call call(stub(), Sql("SELECT 1"));
  EXPECT_EQ(call.Wait().error_code(), grpc::StatusCode::INTERNAL);
}

// --------------------------------------------------------- ExecuteBatch

TEST_F(DatabaseServiceTest, BatchReachesTheEngineAsOneJob) {
  Start();
  v1::ExecuteBatchRequest request = BatchOf({"INSERT INTO t VALUES ($1)", "UPDATE t SET x = 1",
                                             "DELETE FROM t"});
  request.mutable_statements(0)->add_params()->set_int64_value(5);
  // Not read: the batch is one unit, READ WRITE within the server's timeout.
  request.mutable_statements(1)->set_read_only(true);
  *request.mutable_statements(2)->mutable_timeout() = TimeUtil::MillisecondsToDuration(5);
  Batch call(stub(), request);
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  const engine::QueryJob job = engine_.job(0);
  EXPECT_TRUE(job.batch);
  ASSERT_EQ(job.statements.size(), 3u);
  EXPECT_EQ(job.statements[0].request.sql(), "INSERT INTO t VALUES ($1)");
  EXPECT_EQ(job.statements[0].params.size(), 1u);
  EXPECT_EQ(job.statements[2].request.sql(), "DELETE FROM t");
  EXPECT_FALSE(job.read_only);
  EXPECT_EQ(job.timeout, absl::Seconds(30));
  EXPECT_TRUE(job.transaction_id.empty());

  engine::QueryResult result = BatchOk(3);
  // The engine timed the second statement on its own: that figure stays.
  *result.responses[1].mutable_timings()->mutable_execution() =
      TimeUtil::MillisecondsToDuration(4);
  ASSERT_TRUE(engine_.Complete(0, result));
  ASSERT_TRUE(call.Wait().ok());
  ASSERT_EQ(call.response().results_size(), 3);
  for (int i = 0; i < 3; ++i) {
    const v1::QueryResponse& r = call.response().results(i);
    EXPECT_EQ(r.command_tag(), absl::StrCat("INSERT 0 ", i));
    EXPECT_EQ(TimeUtil::DurationToMicroseconds(r.timings().acquire_wait()), 700) << i;
    EXPECT_EQ(r.timings().queue_depth_on_arrival(), 2) << i;
  }
  EXPECT_EQ(TimeUtil::DurationToMilliseconds(call.response().results(0).timings().execution()), 9);
  EXPECT_EQ(TimeUtil::DurationToMilliseconds(call.response().results(1).timings().execution()), 4);
  EXPECT_EQ(Trailer(call, "dbpool-acquire-wait-us"), "700");
  EXPECT_EQ(Trailer(call, "dbpool-queue-depth"), "2");
}

TEST_F(DatabaseServiceTest, BatchRefusesEmptyAndOversizedBatchesBeforeTheEngine) {
  Start();  // at most 3 statements
  Batch empty(stub(), BatchOf({}));
  const grpc::Status e = empty.Wait();
  EXPECT_EQ(e.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(e.error_message(), HasSubstr("empty"));
  Batch four(stub(), BatchOf({"SELECT 1", "SELECT 2", "SELECT 3", "SELECT 4"}));
  const grpc::Status f = four.Wait();
  EXPECT_EQ(f.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(f.error_message(), HasSubstr("DBPOOL_MAX_BATCH_STATEMENTS"));
  Batch three(stub(), BatchOf({"SELECT 1", "SELECT 2", "SELECT 3"}));
  EXPECT_TRUE(engine_.WaitForSubmitted(1)) << "the limit itself is allowed";
  EXPECT_EQ(engine_.submitted(), 1);
}

TEST_F(DatabaseServiceTest, ABadStatementNamesItsIndex) {
  Start();
  v1::ExecuteBatchRequest request = BatchOf({"SELECT 1", "SELECT $1", "SELECT 3"});
  request.mutable_statements(1)->add_params()->set_type_hint("no_such_type");
  Batch call(stub(), request);
  const grpc::Status st = call.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("statements[1]"));
  EXPECT_THAT(st.error_message(), HasSubstr("parameter $1"));
  const auto info = ErrorInfoOf(st);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->metadata().at(engine::kStatementIndexKey), "1");

  Batch blank(stub(), BatchOf({"SELECT 1", "SELECT 2", "  "}));
  const grpc::Status b = blank.Wait();
  EXPECT_THAT(b.error_message(), HasSubstr("statements[2]: sql is empty"));

  // A statement may not point elsewhere than its batch.
  v1::ExecuteBatchRequest elsewhere = BatchOf({"SELECT 1"});
  elsewhere.mutable_statements(0)->set_transaction_id("tx-other");
  Batch other(stub(), elsewhere);
  const grpc::Status o = other.Wait();
  EXPECT_EQ(o.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(o.error_message(), HasSubstr("statements[0]: transaction_id"));
  EXPECT_EQ(engine_.submitted(), 0);
}

TEST_F(DatabaseServiceTest, BatchInATransactionAndForAReader) {
  Start(/*tokens=*/true);
  v1::ExecuteBatchRequest request = BatchOf({"SELECT 1", "SELECT 2"});
  request.set_transaction_id("tx-7");
  request.mutable_statements(1)->set_transaction_id("tx-7");  // the same: fine
  Batch alice(stub(), request, As(kAlice));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  EXPECT_EQ(engine_.job(0).transaction_id, "tx-7");
  EXPECT_EQ(engine_.job(0).caller, "alice");
  EXPECT_FALSE(engine_.job(0).read_only);

  Batch reader(stub(), BatchOf({"SELECT 1"}), As(kReader));
  ASSERT_TRUE(engine_.WaitForSubmitted(2));
  EXPECT_TRUE(engine_.job(1).read_only) << "the role decides";
  Batch monitor(stub(), BatchOf({"SELECT 1"}), As(kMonitor));
  EXPECT_EQ(monitor.Wait().error_code(), grpc::StatusCode::PERMISSION_DENIED);

  // The engine's error names the failing statement; it reaches the caller.
  absl::Status failed = db::SqlError("23505", "duplicate key", {});
  {
    google::rpc::ErrorInfo info;
    info.set_reason("23505");
    info.set_domain("postgresql");
    (*info.mutable_metadata())[engine::kStatementIndexKey] = "1";
    failed.SetPayload(db::kErrorInfoTypeUrl, absl::Cord(info.SerializeAsString()));
  }
  ASSERT_TRUE(engine_.Complete(0, Failed(failed, true)));
  const grpc::Status st = alice.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  const auto info = ErrorInfoOf(st);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->metadata().at(engine::kStatementIndexKey), "1");
}

TEST_F(DatabaseServiceTest, BatchAndStreamTakeAPerCallerSlot) {
  Start(/*tokens=*/true, /*max_calls_per_caller=*/1);
  Batch first(stub(), BatchOf({"SELECT 1"}), As(kAlice));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  StreamReader refused(stub(), Sql("SELECT 1"), As(kAlice));
  EXPECT_EQ(refused.Wait().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  Batch also_refused(stub(), BatchOf({"SELECT 1"}), As(kAlice));
  EXPECT_EQ(also_refused.Wait().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(engine_.Complete(0, BatchOk(1)));
  ASSERT_TRUE(first.Wait().ok());

  StreamReader stream(stub(), Sql("SELECT 1"), As(kAlice));
  ASSERT_TRUE(engine_.WaitForStreams(1)) << "alice's slot was freed";
  Call refused_query(stub(), Sql("SELECT 1"), As(kAlice));
  EXPECT_EQ(refused_query.Wait().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(engine_.EndStream(0, StreamEnd(0)));
  ASSERT_TRUE(stream.Wait().ok());
  Call after(stub(), Sql("SELECT 1"), As(kAlice));
  EXPECT_TRUE(engine_.WaitForSubmitted(2)) << "the stream's slot was freed";
}

// Raw registration: text that is not UTF-8 gets a clear INVALID_ARGUMENT.
TEST_F(DatabaseServiceTest, BatchAndStreamSayWhatIsWrongWithUnreadableRequests) {
  Start();
  grpc::GenericStub generic(channel_);
  // ExecuteBatchRequest{statements: [QueryRequest{sql: "\xff"}]}, by hand:
  // a conforming client library would not send it.
  const std::string wire("\x0a\x03\x0a\x01\xff", 5);
  {
    grpc::Slice slice(wire);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&context, "/dbpool.v1.DatabaseService/ExecuteBatch",
                      grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) {
                        status = std::move(s);
                        done.Notify();
                      });
    ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(15)));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("dbpool.v1.ExecuteBatchRequest"));
    EXPECT_THAT(status.error_message(), HasSubstr("UTF-8"));
  }
  // The typed client serializes invalid UTF-8 anyway (and logs it).
  StreamReader stream(stub(), Sql("SELECT '\xff'"));
  const grpc::Status st = stream.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("dbpool.v1.QueryRequest"));
  EXPECT_EQ(engine_.submitted() + engine_.streams(), 0);
}

// ---------------------------------------------------------- Transactions

TEST_F(DatabaseServiceTest, BeginMapsTheRequestAndReturnsTheIdAndExpiry) {
  Start(/*tokens=*/true);
  v1::BeginTransactionRequest request;
  request.set_isolation(v1::ISOLATION_LEVEL_SERIALIZABLE);
  request.set_read_only(true);
  request.set_deferrable(true);
  *request.mutable_idle_timeout() = TimeUtil::MillisecondsToDuration(2500);
  const absl::Time sent = absl::Now();
  Begin call(stub(), request, As(kAlice));
  ASSERT_TRUE(engine_.WaitForBegins(1));
  const engine::TransactionOptions options = engine_.begin_options(0);
  EXPECT_EQ(options.isolation, v1::ISOLATION_LEVEL_SERIALIZABLE);
  EXPECT_TRUE(options.read_only);
  EXPECT_TRUE(options.deferrable);
  EXPECT_EQ(options.idle_timeout, absl::Milliseconds(2500));
  EXPECT_EQ(options.caller, "alice");
  EXPECT_GT(options.deadline, sent + absl::Seconds(9));
  EXPECT_LT(options.deadline, sent + absl::Seconds(11));
  EXPECT_FALSE(call.done()) << "the call waits for the engine";

  const absl::Time expire = absl::FromUnixSeconds(1900000000) + absl::Milliseconds(250);
  ASSERT_TRUE(engine_.CompleteBegin(0, Begun("node-a:50051/42", expire)));
  ASSERT_TRUE(call.Wait().ok());
  EXPECT_EQ(call.response().transaction_id(), "node-a:50051/42");
  EXPECT_EQ(TimeUtil::TimestampToMilliseconds(call.response().expire_time()),
            absl::ToUnixMillis(expire));
}

TEST_F(DatabaseServiceTest, BeginDefaultsAndTheAnonymousCallersName) {
  Start();
  Begin plain(stub(), {});
  Begin from_web(stub(), {}, From("cn:web-7"));
  ASSERT_TRUE(engine_.WaitForBegins(2));
  std::vector<std::string> callers = {engine_.begin_options(0).caller,
                                      engine_.begin_options(1).caller};
  EXPECT_THAT(callers, ::testing::UnorderedElementsAre("unknown", "cn:web-7"))
      << "always named, even without tokens or a per-caller limit";
  const engine::TransactionOptions options = engine_.begin_options(0);
  EXPECT_EQ(options.isolation, v1::ISOLATION_LEVEL_UNSPECIFIED);
  EXPECT_FALSE(options.read_only);
  EXPECT_EQ(options.idle_timeout, absl::ZeroDuration()) << "the engine's default";
}

TEST_F(DatabaseServiceTest, BeginRefusesWhatItCannotMap) {
  Start();
  struct Case {
    const char* name;
    v1::BeginTransactionRequest request;
  };
  std::vector<Case> cases;
  cases.push_back({"unknown isolation", {}});
  cases.back().request.set_isolation(static_cast<v1::IsolationLevel>(7));
  cases.push_back({"negative idle_timeout", {}});
  cases.back().request.mutable_idle_timeout()->set_seconds(-1);
  cases.push_back({"nanos out of range", {}});
  cases.back().request.mutable_idle_timeout()->set_nanos(1000000000);
  cases.push_back({"past the largest Duration", {}});
  cases.back().request.mutable_idle_timeout()->set_seconds(315576000001);
  for (const Case& c : cases) {
    Begin call(stub(), c.request);
    EXPECT_EQ(call.Wait().error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
  }
  EXPECT_EQ(engine_.begins(), 0);
}

TEST_F(DatabaseServiceTest, AReaderMayBeginReadOnlyTransactionsOnly) {
  Start(/*tokens=*/true);
  Begin writing(stub(), {}, As(kReader));
  const grpc::Status st = writing.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("reports"));
  Begin monitor(stub(), {}, As(kMonitor));
  EXPECT_EQ(monitor.Wait().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  Begin anonymous(stub(), {});
  EXPECT_EQ(anonymous.Wait().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(engine_.begins(), 0);

  v1::BeginTransactionRequest read_only;
  read_only.set_read_only(true);
  Begin reading(stub(), read_only, As(kReader));
  ASSERT_TRUE(engine_.WaitForBegins(1));
  EXPECT_TRUE(engine_.begin_options(0).read_only);
  EXPECT_EQ(engine_.begin_options(0).caller, "reports");
}

TEST_F(DatabaseServiceTest, BeginErrorsCarryThePoolState) {
  Start();
  pool::PoolStats stats;
  stats.max = 5;
  engine_.set_snapshot(stats);
  engine_.CompleteBeginsInline(absl::ResourceExhaustedError("too many open transactions"));
  Begin call(stub(), {});
  const grpc::Status st = call.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_TRUE(PoolStateOf(st).has_value());
  EXPECT_EQ(PoolStateOf(st)->max_connections(), 5);
}

TEST_F(DatabaseServiceTest, CancelOfABeginReachesItsHandle) {
  Start(/*tokens=*/true, /*max_calls_per_caller=*/1);
  Begin call(stub(), {}, As(kAlice));
  ASSERT_TRUE(engine_.WaitForBegins(1));
  call.Cancel();
  ASSERT_TRUE(engine_.WaitForBeginCancel(0));
  EXPECT_EQ(call.Wait().error_code(), grpc::StatusCode::CANCELLED);
  Begin next(stub(), {}, As(kAlice));
  EXPECT_TRUE(engine_.WaitForBegins(2)) << "a Begin holds a slot only while it waits";
}

TEST_F(DatabaseServiceTest, ABeginThatSucceedsAfterItsCallerLeftIsRolledBack) {
  Start(/*tokens=*/true);
  Begin call(stub(), {}, As(kBob));
  ASSERT_TRUE(engine_.WaitForBegins(1));
  engine_.MarkBeginRunning(0);  // the BEGIN is on its way: too late to abandon
  call.Cancel();
  ASSERT_TRUE(engine_.WaitForBeginCancel(0));
  EXPECT_EQ(call.Wait().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(engine_.CompleteBegin(0, Begun("tx-orphan", absl::Now() + absl::Minutes(1))));
  ASSERT_TRUE(engine_.WaitForEnds(1));
  const FakeEngineEnd end = engine_.end_call(0);
  EXPECT_EQ(end.transaction_id, "tx-orphan");
  EXPECT_EQ(end.caller, "bob");
  EXPECT_EQ(end.end, engine::TransactionEnd::kRollback);
}

TEST_F(DatabaseServiceTest, CommitAndRollbackMapToEndTransaction) {
  Start(/*tokens=*/true);
  Commit commit(stub(), "tx-1", As(kAlice));
  ASSERT_TRUE(engine_.WaitForEnds(1));
  Rollback rollback(stub(), "tx-2", As(kReader));
  ASSERT_TRUE(engine_.WaitForEnds(2));
  const FakeEngineEnd c = engine_.end_call(0);
  EXPECT_EQ(c.transaction_id, "tx-1");
  EXPECT_EQ(c.caller, "alice");
  EXPECT_EQ(c.end, engine::TransactionEnd::kCommit);
  const FakeEngineEnd r = engine_.end_call(1);
  EXPECT_EQ(r.transaction_id, "tx-2");
  EXPECT_EQ(r.caller, "reports") << "a reader ends its own transactions";
  EXPECT_EQ(r.end, engine::TransactionEnd::kRollback);
  EXPECT_FALSE(commit.done()) << "the call waits for the engine";

  // A commit of a transaction in which a statement failed.
  ASSERT_TRUE(engine_.CompleteEnd(0, absl::AbortedError("rolled back: a statement failed")));
  EXPECT_EQ(commit.Wait().error_code(), grpc::StatusCode::ABORTED);
  ASSERT_TRUE(engine_.CompleteEnd(1, absl::OkStatus()));
  EXPECT_TRUE(rollback.Wait().ok());

  Commit empty(stub(), "", As(kAlice));
  EXPECT_EQ(empty.Wait().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  Commit monitor(stub(), "tx-1", As(kMonitor));
  EXPECT_EQ(monitor.Wait().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(engine_.ends(), 2);
}

TEST_F(DatabaseServiceTest, CommitNamesTheAnonymousCallerAndTakesNoSlot) {
  Start(/*tokens=*/false, /*max_calls_per_caller=*/1);
  Call busy(stub(), Sql("SELECT 1"), From("ipv4:10.0.0.3"));
  ASSERT_TRUE(engine_.WaitForSubmitted(1));
  // Its only slot is taken; ending a transaction must not wait behind it.
  engine_.CompleteEndsInline(absl::OkStatus());
  Commit commit(stub(), "tx-3", From("ipv4:10.0.0.3"));
  EXPECT_TRUE(commit.Wait().ok());
  ASSERT_EQ(engine_.ends(), 1);
  EXPECT_EQ(engine_.end_call(0).caller, "ipv4:10.0.0.3");
}

// ----------------------------------------------------------- StreamQuery

TEST_F(DatabaseServiceTest, StreamWritesEachChunkThenAsksForTheNext) {
  Start();
  v1::QueryRequest request = InTx("SELECT n FROM big", "tx-5");
  *request.mutable_timeout() = TimeUtil::SecondsToDuration(2);
  StreamReader stream(stub(), request);
  ASSERT_TRUE(engine_.WaitForStreams(1));
  const engine::QueryJob job = engine_.stream_job(0);
  ASSERT_EQ(job.statements.size(), 1u);
  EXPECT_EQ(job.statements[0].request.sql(), "SELECT n FROM big");
  EXPECT_EQ(job.transaction_id, "tx-5");
  EXPECT_EQ(job.caller, "unknown");
  EXPECT_EQ(job.timeout, absl::Seconds(2));
  EXPECT_FALSE(job.batch);

  ASSERT_TRUE(engine_.SendChunk(0, Chunk(0, 2, true)));
  ASSERT_TRUE(stream.WaitForMessages(1));
  ASSERT_TRUE(engine_.WaitForNext(0, 1)) << "the chunk went out: the next may come";
  ASSERT_TRUE(engine_.SendChunk(0, Chunk(2, 2, false)));
  ASSERT_TRUE(engine_.WaitForNext(0, 2));
  ASSERT_TRUE(engine_.SendChunk(0, Chunk(4, 1, false)));
  ASSERT_TRUE(engine_.WaitForNext(0, 3));
  ASSERT_TRUE(engine_.EndStream(0, StreamEnd(5)));
  ASSERT_TRUE(stream.Wait().ok());

  const std::vector<v1::QueryResponse> messages = stream.messages();
  ASSERT_EQ(messages.size(), 4u);
  EXPECT_EQ(messages[0].columns(0).name(), "n");
  EXPECT_EQ(messages[0].rows_size(), 2);
  EXPECT_EQ(messages[1].rows(1).values(0).int64_value(), 3);
  EXPECT_EQ(messages[2].rows_size(), 1);
  const v1::QueryResponse& last = messages[3];
  EXPECT_EQ(last.rows_size(), 0);
  EXPECT_EQ(last.rows_affected(), 5);
  EXPECT_EQ(last.command_tag(), "SELECT 5");
  EXPECT_EQ(TimeUtil::DurationToMicroseconds(last.timings().acquire_wait()), 250);
  EXPECT_EQ(TimeUtil::DurationToMilliseconds(last.timings().execution()), 40);
  EXPECT_EQ(last.timings().queue_depth_on_arrival(), 1);
  EXPECT_EQ(engine_.nexts(0), 3) << "no Next after the end";
  EXPECT_EQ(engine_.spurious_nexts(0), 0);
}

// The in-process transport completes a write only when the reader takes
// the message: a reader that does not read gets no further chunk.
TEST_F(DatabaseServiceTest, AReaderThatDoesNotReadGetsNoNextChunk) {
  Start();
  StreamReader stream(stub(), Sql("SELECT n FROM big"), {}, /*hold_reads=*/true);
  ASSERT_TRUE(engine_.WaitForStreams(1));
  ASSERT_TRUE(engine_.SendChunk(0, Chunk(0, 100, true)));
  EXPECT_FALSE(engine_.WaitForNext(0, 1, absl::Milliseconds(300)))
      << "Next before the chunk reached the reader";
  EXPECT_FALSE(engine_.SendChunk(0, Chunk(100, 1, false))) << "the fake keeps flow control";
  stream.Resume();
  ASSERT_TRUE(engine_.WaitForNext(0, 1));
  ASSERT_TRUE(stream.WaitForMessages(1));
  ASSERT_TRUE(engine_.EndStream(0, StreamEnd(100)));
  ASSERT_TRUE(stream.Wait().ok());
  EXPECT_EQ(stream.messages().size(), 2u);
  EXPECT_EQ(engine_.spurious_nexts(0), 0);
}

TEST_F(DatabaseServiceTest, StreamEndBeforeTheLastWriteCompletesIsSafe) {
  Start();
  // The engine ends while the chunk is still with gRPC: the reader holds
  // it up until the end has been handed over.
  StreamReader held(stub(), Sql("SELECT 1"), {}, /*hold_reads=*/true);
  ASSERT_TRUE(engine_.WaitForStreams(1));
  ASSERT_TRUE(engine_.SendChunk(0, Chunk(0, 1, true)));
  ASSERT_TRUE(engine_.EndStream(0, StreamEnd(1)));
  ASSERT_TRUE(engine_.WaitForStreamEnded(0));
  EXPECT_FALSE(held.done()) << "the end waits for the chunk";
  held.Resume();
  ASSERT_TRUE(held.Wait().ok());
  ASSERT_EQ(held.messages().size(), 2u);
  EXPECT_EQ(held.messages()[1].command_tag(), "SELECT 1");
  EXPECT_EQ(engine_.nexts(0), 0) << "no Next for a stream that has ended";

  // All of it inside SubmitStream, before the handler has returned.
  for (int i = 0; i < 20; ++i) {
    engine_.StreamInline(FakeEngine::InlineStream{Chunk(0, 1, true), StreamEnd(1)});
    StreamReader inline_stream(stub(), Sql("SELECT 1"));
    ASSERT_TRUE(inline_stream.Wait().ok()) << i;
    ASSERT_EQ(inline_stream.messages().size(), 2u) << i;
    EXPECT_EQ(inline_stream.messages()[1].command_tag(), "SELECT 1") << i;
  }
  // An error right after a chunk: the chunk, then the error.
  engine_.StreamInline(FakeEngine::InlineStream{
      Chunk(0, 1, true), Failed(absl::InvalidArgumentError("division by zero"), true)});
  StreamReader failing(stub(), Sql("SELECT 1/0"));
  EXPECT_EQ(failing.Wait().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(failing.messages().size(), 1u);
  engine_.StreamInline(std::nullopt);
}

TEST_F(DatabaseServiceTest, StreamErrorAfterChunksEndsTheCallWithIt) {
  Start();
  StreamReader stream(stub(), Sql("SELECT n FROM big"));
  ASSERT_TRUE(engine_.WaitForStreams(1));
  ASSERT_TRUE(engine_.SendChunk(0, Chunk(0, 3, true)));
  ASSERT_TRUE(engine_.WaitForNext(0, 1));
  ASSERT_TRUE(engine_.EndStream(
      0, Failed(absl::ResourceExhaustedError("result over DBPOOL_MAX_RESULT_BYTES"), true)));
  const grpc::Status st = stream.Wait();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(stream.messages().size(), 1u);
  EXPECT_EQ(Trailer(stream, "dbpool-queue-depth"), "0") << "streams say why they were slow too";
}

TEST_F(DatabaseServiceTest, CancelOfAStreamReachesItsHandle) {
  Start();
  // Waiting for a connection: the cancel ends it at once.
  StreamReader waiting(stub(), Sql("SELECT 1"));
  ASSERT_TRUE(engine_.WaitForStreams(1));
  waiting.Cancel();
  ASSERT_TRUE(engine_.WaitForStreamCancel(0));
  EXPECT_EQ(waiting.Wait().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(engine_.WaitForStreamEnded(0));

  // Mid-stream, with a write outstanding to a reader that does not read:
  // the statement takes a moment to stop, then ends.
  StreamReader running(stub(), Sql("SELECT n FROM big"), {}, /*hold_reads=*/true);
  ASSERT_TRUE(engine_.WaitForStreams(2));
  engine_.MarkStreamRunning(1);
  ASSERT_TRUE(engine_.SendChunk(1, Chunk(0, 10, true)));
  running.Cancel();
  ASSERT_TRUE(engine_.WaitForStreamCancel(1));
  EXPECT_EQ(running.Wait().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(engine_.EndStream(1, Failed(absl::CancelledError("cancelled"), true)));
  ASSERT_TRUE(engine_.WaitForStreamEnded(1));
  EXPECT_EQ(engine_.spurious_nexts(1), 0);
}

TEST_F(DatabaseServiceTest, StreamRefusesBadRequestsBeforeTheEngine) {
  Start(/*tokens=*/true);
  StreamReader empty(stub(), Sql(" "), As(kAlice));
  EXPECT_EQ(empty.Wait().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  StreamReader anonymous(stub(), Sql("SELECT 1"));
  EXPECT_EQ(anonymous.Wait().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  StreamReader monitor(stub(), Sql("SELECT 1"), As(kMonitor));
  EXPECT_EQ(monitor.Wait().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(engine_.streams(), 0);

  StreamReader reader(stub(), InTx("SELECT 1", "tx-1"), As(kReader));
  ASSERT_TRUE(engine_.WaitForStreams(1));
  EXPECT_TRUE(engine_.stream_job(0).read_only);
  EXPECT_EQ(engine_.stream_job(0).caller, "reports");
}

// Many streams ended at random moments relative to their writes: every call
// ends and nothing is used after it is freed (run under ASan by
// scripts/sanitize).
TEST_F(DatabaseServiceTest, StreamsSurviveEndsAndCancelsAtAnyMoment) {
  Start();
  constexpr int kStreams = 40;
  std::vector<std::unique_ptr<StreamReader>> readers;
  for (int i = 0; i < kStreams; ++i) {
    readers.push_back(std::make_unique<StreamReader>(stub(), Sql("SELECT 1")));
    ASSERT_TRUE(engine_.WaitForStreams(i + 1));
    ASSERT_TRUE(engine_.SendChunk(i, Chunk(0, 1, true)));
    switch (i % 4) {
      case 0:  // end at once, the write maybe still out
        engine_.EndStream(i, StreamEnd(1));
        break;
      case 1:  // the caller cancels while the write may be out
        readers[i]->Cancel();
        break;
      case 2:  // both at once
        readers[i]->Cancel();
        engine_.EndStream(i, StreamEnd(1));
        break;
      case 3:  // in order
        ASSERT_TRUE(engine_.WaitForNext(i, 1));
        engine_.EndStream(i, StreamEnd(1));
        break;
    }
  }
  for (int i = 0; i < kStreams; ++i) {
    const grpc::Status st = readers[i]->Wait();
    if (i % 4 == 0 || i % 4 == 3) {
      EXPECT_TRUE(st.ok()) << i << ": " << st.error_message();
    }
    EXPECT_TRUE(engine_.WaitForStreamEnded(i)) << i;
    EXPECT_EQ(engine_.spurious_nexts(i), 0) << i;
  }
}

}  // namespace
}  // namespace dbpool::rpc
