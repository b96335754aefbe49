// What the DatabaseService and RestGateway unit tests share: a
// DatabaseService over a FakeEngine behind an in-process gRPC server, and
// client helpers for each kind of call on the callback API. Every wait has
// a deadline: a call that never ends fails the test instead of hanging it.
//
// Test-only; each object is used by one test.
#ifndef DBPOOL_TESTS_UNIT_SERVICE_FIXTURE_H_
#define DBPOOL_TESTS_UNIT_SERVICE_FIXTURE_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "server/rpc/database_service.h"
#include "server/rpc/health_service.h"
#include "server/security/forwarded_client.h"
#include "tests/unit/fake_engine.h"

namespace dbpool::rpc::test {

inline constexpr char kTokens[] =
    "grafana monitor    mon-aaaaaaaaaaaaaaaa\n"
    "reports read_only  ro-bbbbbbbbbbbbbbbbb\n"
    "alice   read_write rw-ccccccccccccccccc\n"
    "bob     read_write rw-ddddddddddddddddd\n";
inline constexpr char kMonitor[] = "mon-aaaaaaaaaaaaaaaa";
inline constexpr char kReader[] = "ro-bbbbbbbbbbbbbbbbb";
inline constexpr char kAlice[] = "rw-ccccccccccccccccc";
inline constexpr char kBob[] = "rw-ddddddddddddddddd";
inline constexpr char kGatewaySecret[] = "0123456789abcdef0123456789abcdef";

inline v1::QueryRequest Sql(const std::string& sql) {
  v1::QueryRequest r;
  r.set_sql(sql);
  return r;
}

struct Metadata {
  std::string token;      // sent as "authorization: Bearer TOKEN"
  std::string forwarded;  // sent as the HTTP gateway's client name
};

inline Metadata As(const std::string& token) { return {token, ""}; }
// A call as the HTTP gateway makes it for `http_client`.
inline Metadata From(const std::string& http_client) {
  return {"", security::ForwardedClientValue(kGatewaySecret, http_client)};
}

inline void Prepare(grpc::ClientContext& context, const Metadata& metadata,
                    absl::Duration deadline) {
  if (!metadata.token.empty()) {
    context.AddMetadata("authorization", "Bearer " + metadata.token);
  }
  if (!metadata.forwarded.empty()) {
    context.AddMetadata(security::kForwardedClientKey, metadata.forwarded);
  }
  context.set_deadline(absl::ToChronoTime(absl::Now() + deadline));
}

// Starts `method` of the stub's callback API with Rpc's arguments.
#define DBPOOL_ASYNC(stub, method) \
  [&stub](auto&&... a) { stub.async()->method(std::forward<decltype(a)>(a)...); }

// One unary call in flight on the callback API. `invoke` starts it:
// invoke(context, request, response, on_done).
template <typename Request, typename Response>
class Rpc {
 public:
  template <typename Invoke>
  Rpc(Invoke invoke, Request request, Metadata metadata = {},
      absl::Duration deadline = absl::Seconds(10))
      : request_(std::move(request)), deadline_(deadline) {
    Prepare(context_, metadata, deadline);
    invoke(&context_, &request_, &response_, [this](grpc::Status s) {
      status_ = std::move(s);
      done_.Notify();
    });
  }
  ~Rpc() {
    context_.TryCancel();
    done_.WaitForNotificationWithTimeout(deadline_ + absl::Seconds(5));
  }
  Rpc(const Rpc&) = delete;
  Rpc& operator=(const Rpc&) = delete;

  // The call's status; a failure of the test when it has not ended well
  // after its own deadline.
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
  const Response& response() const { return response_; }
  const std::multimap<grpc::string_ref, grpc::string_ref>& trailers() const {
    return context_.GetServerTrailingMetadata();
  }

 private:
  grpc::ClientContext context_;
  Request request_;
  Response response_;
  const absl::Duration deadline_;
  absl::Notification done_;
  grpc::Status status_;
};

// One Query.
class Call : public Rpc<v1::QueryRequest, v1::QueryResponse> {
 public:
  using Metadata = test::Metadata;
  Call(v1::DatabaseService::Stub& stub, v1::QueryRequest request, Metadata metadata = {},
       absl::Duration deadline = absl::Seconds(10))
      : Rpc(DBPOOL_ASYNC(stub, Query), std::move(request),
            std::move(metadata), deadline) {}
};

class Batch : public Rpc<v1::ExecuteBatchRequest, v1::ExecuteBatchResponse> {
 public:
  Batch(v1::DatabaseService::Stub& stub, v1::ExecuteBatchRequest request,
        Metadata metadata = {}, absl::Duration deadline = absl::Seconds(10))
      : Rpc(DBPOOL_ASYNC(stub, ExecuteBatch), std::move(request),
            std::move(metadata), deadline) {}
};

class Begin : public Rpc<v1::BeginTransactionRequest, v1::BeginTransactionResponse> {
 public:
  Begin(v1::DatabaseService::Stub& stub, v1::BeginTransactionRequest request,
        Metadata metadata = {}, absl::Duration deadline = absl::Seconds(10))
      : Rpc(DBPOOL_ASYNC(stub, BeginTransaction),
            std::move(request), std::move(metadata), deadline) {}
};

class Commit : public Rpc<v1::CommitTransactionRequest, v1::CommitTransactionResponse> {
 public:
  Commit(v1::DatabaseService::Stub& stub, const std::string& id, Metadata metadata = {})
      : Rpc(DBPOOL_ASYNC(stub, CommitTransaction), Id(id),
            std::move(metadata)) {}

 private:
  static v1::CommitTransactionRequest Id(const std::string& id) {
    v1::CommitTransactionRequest r;
    r.set_transaction_id(id);
    return r;
  }
};

class Rollback
    : public Rpc<v1::RollbackTransactionRequest, v1::RollbackTransactionResponse> {
 public:
  Rollback(v1::DatabaseService::Stub& stub, const std::string& id, Metadata metadata = {})
      : Rpc(DBPOOL_ASYNC(stub, RollbackTransaction), Id(id),
            std::move(metadata)) {}

 private:
  static v1::RollbackTransactionRequest Id(const std::string& id) {
    v1::RollbackTransactionRequest r;
    r.set_transaction_id(id);
    return r;
  }
};

// One StreamQuery, read as the messages come; or, with `hold_reads`, not
// read at all until Resume(), so that a test can see what the server does
// while the reader is slow. Reads are started from outside reactions only
// by Resume, under a hold, so that the call cannot end under it.
class StreamReader final : public grpc::ClientReadReactor<v1::QueryResponse> {
 public:
  StreamReader(v1::DatabaseService::Stub& stub, v1::QueryRequest request,
               Metadata metadata = {}, bool hold_reads = false,
               absl::Duration deadline = absl::Seconds(10))
      : request_(std::move(request)), deadline_(deadline), held_(hold_reads) {
    Prepare(context_, metadata, deadline);
    stub.async()->StreamQuery(&context_, &request_, this);
    if (held_) {
      AddHold();
    } else {
      StartRead(&incoming_);
    }
    StartCall();
  }
  ~StreamReader() override {
    context_.TryCancel();
    bool held = false;
    {
      absl::MutexLock lock(&mu_);
      held = std::exchange(held_, false);
    }
    if (held) RemoveHold();
    done_.WaitForNotificationWithTimeout(deadline_ + absl::Seconds(5));
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;
    absl::MutexLock lock(&mu_);
    messages_.push_back(incoming_);
    StartRead(&incoming_);
  }
  void OnDone(const grpc::Status& s) override {
    status_ = s;
    done_.Notify();
  }

  // Starts reading, once, if reads were held.
  void Resume() {
    {
      absl::MutexLock lock(&mu_);
      if (!held_) return;
      held_ = false;
    }
    StartRead(&incoming_);
    RemoveHold();
  }
  void Cancel() { context_.TryCancel(); }

  // Whether `n` messages in all have arrived within `limit`.
  bool WaitForMessages(int n, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int>(messages_.size()) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), limit);
  }
  std::vector<v1::QueryResponse> messages() const {
    absl::MutexLock lock(&mu_);
    return messages_;
  }
  // The call's status. Reads still held stay unread: the hold goes, so
  // that a cancelled call can end.
  grpc::Status Wait() {
    bool held = false;
    {
      absl::MutexLock lock(&mu_);
      held = std::exchange(held_, false);
    }
    if (held) RemoveHold();
    if (!done_.WaitForNotificationWithTimeout(deadline_ + absl::Seconds(5))) {
      ADD_FAILURE() << "the stream never ended";
      return grpc::Status(grpc::StatusCode::UNKNOWN, "never ended");
    }
    return status_;
  }
  bool done() const { return done_.HasBeenNotified(); }
  // Valid after Wait().
  const std::multimap<grpc::string_ref, grpc::string_ref>& trailers() const {
    return context_.GetServerTrailingMetadata();
  }

 private:
  grpc::ClientContext context_;
  v1::QueryRequest request_;
  const absl::Duration deadline_;
  v1::QueryResponse incoming_;
  mutable absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_);
  std::vector<v1::QueryResponse> messages_ ABSL_GUARDED_BY(mu_);
  absl::Notification done_;
  grpc::Status status_;
};

template <typename R>
std::string Trailer(const R& call, const std::string& key) {
  auto it = call.trailers().find(key);
  if (it == call.trailers().end()) return "";
  return std::string(it->second.data(), it->second.size());
}

// The PoolStats detail of an error, if it carries one.
inline std::optional<v1::PoolStats> PoolStateOf(const grpc::Status& status) {
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return std::nullopt;
  for (const auto& any : details.details()) {
    v1::PoolStats stats;
    if (any.UnpackTo(&stats)) return stats;
  }
  return std::nullopt;
}

// The ErrorInfo detail of an error, if it carries one.
inline std::optional<google::rpc::ErrorInfo> ErrorInfoOf(const grpc::Status& status) {
  google::rpc::Status details;
  if (!details.ParseFromString(status.error_details())) return std::nullopt;
  for (const auto& any : details.details()) {
    google::rpc::ErrorInfo info;
    if (any.UnpackTo(&info)) return info;
  }
  return std::nullopt;
}

inline engine::QueryResult Ok() {
  engine::QueryResult r;
  v1::QueryResponse& response = r.responses.emplace_back();
  response.set_command_tag("SELECT 1");
  response.add_rows()->add_values()->set_int64_value(1);
  r.timings = engine::QueryTimings{absl::Microseconds(1500), 3, absl::Milliseconds(2)};
  return r;
}

inline engine::QueryResult Failed(absl::Status status, bool ran) {
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
    options.request.max_batch_statements = 3;
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
    engine_.EndEverything();
    server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    server_->Wait();
  }

  v1::DatabaseService::Stub& stub() { return *stub_; }

  ::dbpool::testing::FakeEngine engine_;
  std::unique_ptr<DatabaseService> service_;
  std::unique_ptr<HealthService> health_service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::DatabaseService::Stub> stub_;
};

}  // namespace dbpool::rpc::test

#endif  // DBPOOL_TESTS_UNIT_SERVICE_FIXTURE_H_
