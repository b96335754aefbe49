#include "server/rpc/database_service.h"

#include <string>
#include <utility>
#include <vector>

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "server/rpc/stats_conversion.h"
#include "server/rpc/status_conversion.h"

namespace dbpool::rpc {
namespace {

using google::protobuf::util::TimeUtil;

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

google::protobuf::Duration ToProtoDuration(absl::Duration d) {
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

// Errors that mean "the pool could not serve you in time" carry the pool's
// state, so the caller can tell saturation from an outage.
absl::Status WithPoolState(absl::Status status, const pool::ConnectionPool& pool) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnavailable:
      status.SetPayload("type.googleapis.com/dbpool.v1.PoolStats",
                        absl::Cord(ToProto(pool.Snapshot()).SerializeAsString()));
      break;
    default:
      break;
  }
  return status;
}

}  // namespace

// One Query call, from validation to Finish. Deletes itself in OnDone,
// which gRPC runs only after Finish and after the handler has returned.
class DatabaseService::QueryCall final : public grpc::ServerUnaryReactor {
 public:
  QueryCall(DatabaseService* service, grpc::CallbackServerContext* context,
            grpc::ByteBuffer* reply)
      : service_(service),
        context_(context),
        reply_(reply),
        rpc_deadline_(DeadlineOf(context)) {}

  // Runs on the gRPC thread inside the handler.
  void Start(const grpc::ByteBuffer& wire) {
    absl::StatusOr<security::Caller> caller =
        service_->access_.Check(*context_, Need::kQuery);
    if (!caller.ok()) {
      Finish(ToGrpcStatus(caller.status()));
      return;
    }
    grpc::ByteBuffer copy(wire);  // shares the slices
    if (!grpc::SerializationTraits<v1::QueryRequest>::Deserialize(&copy, &request_)
             .ok()) {
      Finish(ToGrpcStatus(absl::InvalidArgumentError(
          "request is not a valid dbpool.v1.QueryRequest: malformed protobuf, "
          "or a string field (sql, string_value, ...) that is not valid UTF-8; "
          "send binary data as bytes_value")));
      return;
    }
    auto params = ValidateQuery(request_, service_->options_.request);
    if (!params.ok()) {
      Finish(ToGrpcStatus(params.status()));
      return;
    }
    params_ = *std::move(params);
    // PostgreSQL itself refuses the writes of a read_only caller.
    if (caller->role == security::Role::kReadOnly) request_.set_read_only(true);
    absl::StatusOr<AccessControl::Slot> slot = service_->access_.Admit(*caller);
    if (!slot.ok()) {
      Finish(ToGrpcStatus(slot.status()));
      return;
    }
    slot_ = *std::move(slot);
    const pool::ConnectionPool::WaitId id = service_->pool_.Acquire(
        rpc_deadline_, [this](absl::StatusOr<pool::Lease> lease) {
          OnLease(std::move(lease));
        });
    wait_id_.store(id);
    // A cancel that came before the id was known could not end the wait.
    if (cancelled_.load() && id != 0) service_->pool_.CancelWait(id);
  }

  void OnCancel() override {
    cancelled_.store(true);
    if (const auto id = wait_id_.load(); id != 0) service_->pool_.CancelWait(id);
  }

  void OnDone() override { delete this; }

 private:
  void OnLease(absl::StatusOr<pool::Lease> lease) {
    if (!lease.ok()) {
      slot_ = AccessControl::Slot();
      Finish(ToGrpcStatus(WithPoolState(lease.status(), service_->pool_)));
      return;
    }
    service_->executor_.Post(
        [this, lease = *std::move(lease)]() mutable { Run(std::move(lease)); });
  }

  // Runs on an executor worker.
  void Run(pool::Lease lease) {
    const absl::Time start = absl::Now();
    absl::Duration timeout = service_->options_.statement_timeout;
    if (request_.has_timeout()) {
      const absl::Duration requested = absl::Nanoseconds(
          TimeUtil::DurationToNanoseconds(request_.timeout()));
      // The connection's own statement_timeout is the default, so a request
      // can shorten it but not lengthen it.
      if (requested > absl::ZeroDuration()) timeout = std::min(timeout, requested);
    }
    const absl::Time deadline = std::min(rpc_deadline_, start + timeout);
    db::QueryOutcome outcome =
        db::RunQuery(lease.connection(), request_, params_,
                     service_->options_.query, deadline, cancelled_, &response_);
    if (outcome.connection_broken) lease.MarkBroken();
    const absl::Duration wait = lease.wait();
    const int depth = lease.queue_depth_on_arrival();
    // Back to the pool before the reply, so the next waiter starts sooner.
    lease = pool::Lease();
    const absl::Duration execution = absl::Now() - start;
    if (service_->metrics_ != nullptr) {
      service_->metrics_->ObserveQuery(execution, outcome.status);
    }
    if (outcome.status.ok()) {
      auto* timings = response_.mutable_timings();
      *timings->mutable_acquire_wait() = ToProtoDuration(wait);
      *timings->mutable_execution() = ToProtoDuration(execution);
      timings->set_queue_depth_on_arrival(depth);
      bool own_buffer = false;
      grpc::Status serialized = grpc::SerializationTraits<v1::QueryResponse>::Serialize(
          response_, reply_, &own_buffer);
      if (!serialized.ok()) outcome.status = absl::InternalError(serialized.error_message());
    }
    context_->AddTrailingMetadata(
        "dbpool-acquire-wait-us", absl::StrCat(absl::ToInt64Microseconds(wait)));
    context_->AddTrailingMetadata("dbpool-queue-depth", absl::StrCat(depth));
    // Freed before the reply, so the caller's next call finds it free.
    slot_ = AccessControl::Slot();
    Finish(ToGrpcStatus(WithPoolState(std::move(outcome.status), service_->pool_)));
  }

  DatabaseService* const service_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const reply_;
  v1::QueryRequest request_;
  v1::QueryResponse response_;
  const absl::Time rpc_deadline_;
  std::vector<db::EncodedParam> params_;
  std::atomic<bool> cancelled_{false};
  std::atomic<pool::ConnectionPool::WaitId> wait_id_{0};
  AccessControl::Slot slot_;
};

DatabaseService::DatabaseService(pool::ConnectionPool& pool, Executor& executor,
                                 ServiceOptions options, metrics::Metrics* metrics)
    : pool_(pool),
      executor_(executor),
      options_(std::move(options)),
      metrics_(metrics),
      access_(options_.tokens, options_.max_calls_per_caller),
      streams_(options_.max_stats_streams) {}

grpc::ServerUnaryReactor* DatabaseService::Query(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  auto* call = new QueryCall(this, context, response);
  call->Start(*request);
  return call;
}

grpc::ServerUnaryReactor* DatabaseService::GetPoolStats(
    grpc::CallbackServerContext* context, const v1::GetPoolStatsRequest*,
    v1::PoolStats* response) {
  auto* reactor = context->DefaultReactor();
  if (auto caller = access_.Check(*context, Need::kStats); !caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  *response = ToProto(pool_.Snapshot());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<v1::PoolStats>* DatabaseService::StreamPoolStats(
    grpc::CallbackServerContext* context,
    const v1::StreamPoolStatsRequest* request) {
  if (auto caller = access_.Check(*context, Need::kStats); !caller.ok()) {
    return streams_.Reject(ToGrpcStatus(caller.status()));
  }
  absl::Duration interval = absl::Seconds(1);
  if (request->has_interval()) {
    interval = absl::Nanoseconds(
        TimeUtil::DurationToNanoseconds(request->interval()));
  }
  interval = std::clamp(interval, absl::Milliseconds(100), absl::Hours(1));
  PeriodicStreams<v1::PoolStats>::Same same;
  if (request->only_on_change()) same = SameGauges;
  return streams_.Open(
      interval, [this] { return ToProto(pool_.Snapshot()); }, std::move(same));
}

void DatabaseService::EndStreams() {
  streams_.Shutdown(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down"));
}

}  // namespace dbpool::rpc
