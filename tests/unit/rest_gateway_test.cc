// RestGateway over the fake engine: path templates, the routes of the
// transaction, batch and streaming calls end to end over real HTTP on a
// loopback socket, NDJSON streaming (as it arrives, errors after the start,
// errors before it), and a disconnecting HTTP client cancelling its stream.
#include "server/http/rest_gateway.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "google/rpc/status.pb.h"
#include "server/db/sql_state.h"
#include "tests/unit/service_fixture.h"

namespace dbpool::http {
namespace {

using namespace ::dbpool::rpc::test;  // NOLINT: the fixture's vocabulary
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using Vars = std::vector<std::pair<std::string, std::string>>;

// ------------------------------------------------------------ MatchPath

TEST(MatchPath, FillsVariablesAndMatchesVerbs) {
  EXPECT_THAT(MatchPath("/v1/query", "/v1/query"), ::testing::Optional(Vars{}));
  EXPECT_EQ(MatchPath("/v1/query", "/v1/query:stream"), std::nullopt);
  EXPECT_THAT(MatchPath("/v1/query:stream", "/v1/query:stream"), ::testing::Optional(Vars{}));
  EXPECT_EQ(MatchPath("/v1/query:stream", "/v1/query"), std::nullopt);
  EXPECT_EQ(MatchPath("/v1/query", "/v1/query/"), std::nullopt);
  EXPECT_EQ(MatchPath("/v1/query", "/v1"), std::nullopt);

  const char kCommit[] = "/v1/transactions/{transaction_id}:commit";
  EXPECT_THAT(*MatchPath(kCommit, "/v1/transactions/tx-1:commit"),
              ElementsAre(Pair("transaction_id", "tx-1")));
  // Ids may hold ':' and, decoded by civetweb from %2F, '/'.
  EXPECT_THAT(*MatchPath(kCommit, "/v1/transactions/node-a:50051/7:commit"),
              ElementsAre(Pair("transaction_id", "node-a:50051/7")));
  EXPECT_EQ(MatchPath(kCommit, "/v1/transactions/tx-1:rollback"), std::nullopt);
  EXPECT_EQ(MatchPath(kCommit, "/v1/transactions/:commit"), std::nullopt) << "empty id";
  EXPECT_EQ(MatchPath(kCommit, "/v1/transactions:commit"), std::nullopt);
  EXPECT_EQ(MatchPath(kCommit, "/v1/other/tx-1:commit"), std::nullopt);

  EXPECT_THAT(*MatchPath("/v1/{a}/x/{b=**}", "/v1/one/x/two/three"),
              ElementsAre(Pair("a", "one"), Pair("b", "two/three")));
  EXPECT_EQ(MatchPath("/v1/{a}/x", "/v1//x"), std::nullopt) << "empty value";
  EXPECT_THAT(*MatchPath("/v1/{a=*}/x", "/v1/y/x"), ElementsAre(Pair("a", "y")));
  // Templates this gateway does not support match nothing.
  EXPECT_EQ(MatchPath("/v1/{a=**}/x", "/v1/y/x"), std::nullopt);
  EXPECT_EQ(MatchPath("/v1/pre{a}", "/v1/prey"), std::nullopt);
  EXPECT_EQ(MatchPath("v1/query", "v1/query"), std::nullopt);
}

// ----------------------------------------------------------- HTTP client

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names in lower case
  std::string body;                            // de-chunked
};

// A blocking HTTP/1.1 client on one connection; every read gives up after
// its limit.
class HttpClient {
 public:
  explicit HttpClient(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    timeval tv{0, 100 * 1000};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  ~HttpClient() {
    if (fd_ >= 0) close(fd_);
  }

  bool Send(const std::string& request) {
    return connected_ && send(fd_, request.data(), request.size(), MSG_NOSIGNAL) ==
                             static_cast<ssize_t>(request.size());
  }

  // Reads until `done(received)` holds or the server closes; false when
  // neither happened within `limit`.
  template <typename Done>
  bool ReadUntil(Done done, absl::Duration limit = absl::Seconds(10)) {
    const absl::Time give_up = absl::Now() + limit;
    char buf[8192];
    while (!done(received_)) {
      if (closed_) return false;
      if (absl::Now() > give_up) return false;
      const ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        received_.append(buf, n);
      } else if (n == 0) {
        closed_ = true;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        closed_ = true;
      }
    }
    return true;
  }
  // The whole response of a "Connection: close" request.
  bool ReadToEnd(absl::Duration limit = absl::Seconds(10)) {
    ReadUntil([](const std::string&) { return false; }, limit);
    return closed_;
  }
  const std::string& received() const { return received_; }

  // Closes with a reset, as a client that crashed: the server's next
  // write fails.
  void Abort() {
    linger l{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
  std::string received_;
};

std::string Dechunk(absl::string_view body) {
  std::string out;
  while (!body.empty()) {
    const size_t eol = body.find("\r\n");
    if (eol == absl::string_view::npos) break;
    uint64_t size = 0;
    if (!absl::SimpleHexAtoi(body.substr(0, eol), &size) || size == 0) break;
    body.remove_prefix(eol + 2);
    out.append(std::string(body.substr(0, size)));
    body.remove_prefix(std::min<size_t>(body.size(), size + 2));
  }
  return out;
}

HttpResponse Parse(const std::string& raw) {
  HttpResponse r;
  const size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return r;
  const std::vector<std::string> lines = absl::StrSplit(raw.substr(0, end), "\r\n");
  const std::vector<std::string> status_line = absl::StrSplit(lines[0], ' ');
  if (status_line.size() >= 2 && !absl::SimpleAtoi(status_line[1], &r.status)) r.status = 0;
  for (size_t i = 1; i < lines.size(); ++i) {
    const size_t colon = lines[i].find(':');
    if (colon == std::string::npos) continue;
    r.headers[absl::AsciiStrToLower(lines[i].substr(0, colon))] =
        std::string(absl::StripAsciiWhitespace(lines[i].substr(colon + 1)));
  }
  r.body = raw.substr(end + 4);
  if (r.headers["transfer-encoding"] == "chunked") r.body = Dechunk(r.body);
  return r;
}

std::string Post(const std::string& path, const std::string& body, bool json = true) {
  return absl::StrCat("POST ", path, " HTTP/1.1\r\nHost: test\r\nConnection: close\r\n",
                      json ? "Content-Type: application/json\r\n" : "",
                      "Content-Length: ", body.size(), "\r\n\r\n", body);
}

template <typename Message>
Message FromJson(absl::string_view json) {
  Message m;
  const auto parsed = google::protobuf::util::JsonStringToMessage(std::string(json), &m);
  EXPECT_TRUE(parsed.ok()) << parsed.message().as_string() << ": " << json;
  return m;
}

std::vector<std::string> Lines(const std::string& ndjson) {
  return absl::StrSplit(ndjson, '\n', absl::SkipEmpty());
}

// ---------------------------------------------------------- the gateway

class RestGatewayTest : public rpc::test::DatabaseServiceTest {
 protected:
  void StartGateway() {
    Start();
    GatewayOptions options;
    options.address = "127.0.0.1:0";
    options.max_body_bytes = 1 << 20;
    options.call_timeout = absl::Seconds(10);
    options.threads = 4;
    options.forwarding_secret = kGatewaySecret;
    gateway_ = std::make_unique<RestGateway>(channel_, [] { return true; }, options);
    absl::StatusOr<int> port = gateway_->Start();
    ASSERT_TRUE(port.ok()) << port.status();
    port_ = *port;
  }

  void TearDown() override {
    // Calls the gateway still waits on end first, or Stop would wait for
    // them forever.
    engine_.EndEverything();
    gateway_.reset();
    DatabaseServiceTest::TearDown();
  }

  // One request on a connection of its own, read to the end.
  HttpResponse Exchange(const std::string& request) {
    HttpClient client(port_);
    EXPECT_TRUE(client.Send(request));
    EXPECT_TRUE(client.ReadToEnd()) << "no complete response: " << client.received();
    return Parse(client.received());
  }

  std::unique_ptr<RestGateway> gateway_;
  int port_ = 0;
};

TEST_F(RestGatewayTest, CommitAndRollbackTakeTheIdFromThePath) {
  StartGateway();
  engine_.CompleteEndsInline(absl::OkStatus());
  // No body at all: the path says everything.
  HttpResponse commit = Exchange(Post("/v1/transactions/node-a:50051%2F7:commit", "", false));
  EXPECT_EQ(commit.status, 200) << commit.body;
  // No read replicas, so no read-your-writes token.
  EXPECT_EQ(commit.body, R"({"commit_lsn":""})");
  ASSERT_EQ(engine_.ends(), 1);
  EXPECT_EQ(engine_.end_call(0).transaction_id, "node-a:50051/7");
  EXPECT_EQ(engine_.end_call(0).end, engine::TransactionEnd::kCommit);
  EXPECT_EQ(engine_.end_call(0).caller, "ipv4:127.0.0.1") << "the HTTP client, forwarded";

  HttpResponse rollback =
      Exchange(Post("/v1/transactions/tx-2:rollback", R"({"transaction_id":"tx-2"})"));
  EXPECT_EQ(rollback.status, 200) << rollback.body;
  ASSERT_EQ(engine_.ends(), 2);
  EXPECT_EQ(engine_.end_call(1).transaction_id, "tx-2");
  EXPECT_EQ(engine_.end_call(1).end, engine::TransactionEnd::kRollback);

  HttpResponse conflict =
      Exchange(Post("/v1/transactions/tx-3:commit", R"({"transaction_id":"tx-4"})"));
  EXPECT_EQ(conflict.status, 400);
  EXPECT_THAT(conflict.body, HasSubstr("in the path"));
  HttpResponse wrong_verb = Exchange(absl::StrCat(
      "GET /v1/transactions/tx-3:commit HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"));
  EXPECT_EQ(wrong_verb.status, 405);
  EXPECT_EQ(wrong_verb.headers["allow"], "POST");
  EXPECT_EQ(engine_.ends(), 2);

  engine_.CompleteEndsInline(absl::AbortedError("a statement failed; rolled back"));
  HttpResponse aborted = Exchange(Post("/v1/transactions/tx-5:commit", "", false));
  EXPECT_EQ(aborted.status, 409);
  EXPECT_EQ(FromJson<google::rpc::Status>(aborted.body).code(), 10);
}

TEST_F(RestGatewayTest, BeginAndBatchOverHttp) {
  StartGateway();
  engine_.CompleteBeginsInline(engine::BegunTransaction{
      "tx-http", absl::FromUnixSeconds(1900000000)});
  HttpResponse begun = Exchange(Post(
      "/v1/transactions",
      R"({"isolation":"ISOLATION_LEVEL_SERIALIZABLE","read_only":true,"idle_timeout":"2s"})"));
  ASSERT_EQ(begun.status, 200) << begun.body;
  const auto reply = FromJson<v1::BeginTransactionResponse>(begun.body);
  EXPECT_EQ(reply.transaction_id(), "tx-http");
  EXPECT_EQ(reply.expire_time().seconds(), 1900000000);
  ASSERT_EQ(engine_.begins(), 1);
  EXPECT_EQ(engine_.begin_options(0).isolation, v1::ISOLATION_LEVEL_SERIALIZABLE);
  EXPECT_EQ(engine_.begin_options(0).idle_timeout, absl::Seconds(2));

  engine::QueryResult two;
  two.responses.resize(2);
  two.responses[0].set_command_tag("INSERT 0 1");
  two.responses[1].set_command_tag("UPDATE 3");
  two.timings = engine::QueryTimings{absl::Microseconds(10), 0, absl::Milliseconds(1)};
  engine_.CompleteInline(two);
  HttpResponse batch = Exchange(Post(
      "/v1/batch",
      R"({"transaction_id":"tx-http","statements":[{"sql":"INSERT 1"},{"sql":"UPDATE 2"}]})"));
  ASSERT_EQ(batch.status, 200) << batch.body;
  const auto results = FromJson<v1::ExecuteBatchResponse>(batch.body);
  ASSERT_EQ(results.results_size(), 2);
  EXPECT_EQ(results.results(1).command_tag(), "UPDATE 3");
  EXPECT_EQ(engine_.job(0).transaction_id, "tx-http");
  EXPECT_EQ(batch.headers["x-dbpool-acquire-wait-us"], "10");
}

TEST_F(RestGatewayTest, StreamIsNdjsonWrittenAsItArrives) {
  StartGateway();
  HttpClient client(port_);
  ASSERT_TRUE(client.Send(Post("/v1/query:stream", R"({"sql":"SELECT n FROM big"})")));
  ASSERT_TRUE(engine_.WaitForStreams(1));
  EXPECT_EQ(engine_.stream_job(0).statements.at(0).request.sql(), "SELECT n FROM big");

  v1::QueryResponse first;
  first.add_columns()->set_name("n");
  first.add_rows()->add_values()->set_int64_value(1);
  ASSERT_TRUE(engine_.SendChunk(0, first));
  // The first line arrives before the stream has ended.
  ASSERT_TRUE(client.ReadUntil(
      [](const std::string& r) { return r.find("\"int64_value\"") != std::string::npos; }));
  HttpResponse head = Parse(client.received());
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(head.headers["content-type"], "application/x-ndjson");
  EXPECT_EQ(head.headers["transfer-encoding"], "chunked");

  ASSERT_TRUE(engine_.WaitForNext(0, 1)) << "written to HTTP, so the next may come";
  v1::QueryResponse second;
  second.add_rows()->add_values()->set_int64_value(2);
  ASSERT_TRUE(engine_.SendChunk(0, second));
  ASSERT_TRUE(engine_.WaitForNext(0, 2));
  engine::QueryResult end;
  end.responses.emplace_back().set_command_tag("SELECT 2");
  end.responses[0].set_rows_affected(2);
  end.timings = engine::QueryTimings{absl::Microseconds(5), 0, absl::Milliseconds(3)};
  ASSERT_TRUE(engine_.EndStream(0, end));
  ASSERT_TRUE(client.ReadToEnd());

  const HttpResponse r = Parse(client.received());
  const std::vector<std::string> lines = Lines(r.body);
  ASSERT_EQ(lines.size(), 3u) << r.body;
  EXPECT_EQ(FromJson<v1::QueryResponse>(lines[0]).columns(0).name(), "n");
  EXPECT_EQ(FromJson<v1::QueryResponse>(lines[1]).rows(0).values(0).int64_value(), 2);
  const auto last = FromJson<v1::QueryResponse>(lines[2]);
  EXPECT_EQ(last.command_tag(), "SELECT 2");
  EXPECT_EQ(last.rows_affected(), 2);
  EXPECT_EQ(last.timings().execution().nanos(), 3000000);
}

TEST_F(RestGatewayTest, AStreamThatFailsAfterItStartedEndsWithAnErrorLine) {
  StartGateway();
  HttpClient client(port_);
  ASSERT_TRUE(client.Send(Post("/v1/query:stream", R"({"sql":"SELECT 1/n FROM t"})")));
  ASSERT_TRUE(engine_.WaitForStreams(1));
  v1::QueryResponse first;
  first.add_rows()->add_values()->set_int64_value(1);
  ASSERT_TRUE(engine_.SendChunk(0, first));
  ASSERT_TRUE(engine_.WaitForNext(0, 1));
  ASSERT_TRUE(engine_.EndStream(0, Failed(db::SqlError("22012", "division by zero"), true)));
  ASSERT_TRUE(client.ReadToEnd());
  const HttpResponse r = Parse(client.received());
  EXPECT_EQ(r.status, 200) << "already sent when the error came";
  const std::vector<std::string> lines = Lines(r.body);
  ASSERT_EQ(lines.size(), 2u) << r.body;
  absl::string_view error = lines[1];
  ASSERT_TRUE(absl::ConsumePrefix(&error, R"({"error":)")) << lines[1];
  ASSERT_TRUE(absl::ConsumeSuffix(&error, "}")) << lines[1];
  const auto status = FromJson<google::rpc::Status>(error);
  EXPECT_EQ(status.code(), 3);
  EXPECT_EQ(status.message(), "division by zero");
  EXPECT_THAT(lines[1], HasSubstr("22012")) << "the ErrorInfo detail comes along";
}

TEST_F(RestGatewayTest, AStreamThatFailsBeforeItStartedIsAnHttpError) {
  StartGateway();
  HttpClient client(port_);
  ASSERT_TRUE(client.Send(Post("/v1/query:stream", R"({"sql":"SELECT 1"})")));
  ASSERT_TRUE(engine_.WaitForStreams(1));
  ASSERT_TRUE(engine_.EndStream(0, Failed(absl::ResourceExhaustedError("queue full"), false)));
  ASSERT_TRUE(client.ReadToEnd());
  HttpResponse r = Parse(client.received());
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.headers["content-type"], "application/json");
  EXPECT_EQ(FromJson<google::rpc::Status>(r.body).code(), 8);

  // Refused by validation: no stream at all.
  HttpResponse empty = Exchange(Post("/v1/query:stream", R"({"sql":" "})"));
  EXPECT_EQ(empty.status, 400);
  EXPECT_EQ(engine_.streams(), 1);
}

TEST_F(RestGatewayTest, AClientThatLeavesCancelsItsStream) {
  StartGateway();
  HttpClient client(port_);
  ASSERT_TRUE(client.Send(Post("/v1/query:stream", R"({"sql":"SELECT n FROM big"})")));
  ASSERT_TRUE(engine_.WaitForStreams(1));
  v1::QueryResponse chunk;
  chunk.add_rows()->add_values()->set_string_value(std::string(4096, 'x'));
  ASSERT_TRUE(engine_.SendChunk(0, chunk));
  ASSERT_TRUE(client.ReadUntil(
      [](const std::string& r) { return r.find("xxxx") != std::string::npos; }));
  client.Abort();
  // Each chunk the gateway can still write asks for the next; the first
  // write that fails cancels the call.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  int sent = 1;
  while (!engine_.WaitForStreamCancel(0, absl::Milliseconds(20)) && absl::Now() < give_up) {
    if (engine_.nexts(0) >= sent && engine_.SendChunk(0, chunk)) ++sent;
  }
  EXPECT_GT(engine_.stream_cancels(0), 0) << "the engine never heard of it";
  EXPECT_TRUE(engine_.WaitForStreamEnded(0));
}

}  // namespace
}  // namespace dbpool::http
