#include "server/rpc/database_service.h"

#include <algorithm>
#include <string>
#include <utility>

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/time_util.h"
#include "server/rpc/cancel_relay.h"
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

// A request's timeout can shorten the default statement timeout (the
// connection's own statement_timeout) but not lengthen it.
absl::Duration StatementTimeout(const v1::QueryRequest& request,
                                absl::Duration default_timeout) {
  if (!request.has_timeout()) return default_timeout;
  const absl::Duration requested =
      absl::Nanoseconds(TimeUtil::DurationToNanoseconds(request.timeout()));
  return requested > absl::ZeroDuration() ? std::min(default_timeout, requested)
                                          : default_timeout;
}

// Errors that mean "the pool could not serve you in time" carry the pool's
// state, so the caller can tell saturation from an outage.
absl::Status WithPoolState(absl::Status status, const engine::QueryEngine& engine) {
  switch (status.code()) {
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kUnavailable:
      status.SetPayload("type.googleapis.com/dbpool.v1.PoolStats",
                        absl::Cord(ToProto(engine.Snapshot()).SerializeAsString()));
      break;
    default:
      break;
  }
  return status;
}

}  // namespace

// One Query call, from validation to Finish. Deletes itself in OnDone,
// which gRPC runs only after Finish and after the handler has returned; so
// Start, which runs inside the handler, may go on using the call after the
// engine's callback has finished it.
class DatabaseService::QueryCall final : public grpc::ServerUnaryReactor {
 public:
  QueryCall(DatabaseService* service, grpc::CallbackServerContext* context,
            grpc::ByteBuffer* reply)
      : service_(service), context_(context), reply_(reply) {}

  // Runs on the gRPC thread inside the handler.
  void Start(const grpc::ByteBuffer& wire) {
    absl::StatusOr<security::Caller> caller =
        service_->access_.Check(*context_, Need::kQuery);
    if (!caller.ok()) {
      Finish(ToGrpcStatus(caller.status()));
      return;
    }
    engine::QueryJob job;
    grpc::ByteBuffer copy(wire);  // shares the slices
    if (!grpc::SerializationTraits<v1::QueryRequest>::Deserialize(&copy, &job.request)
             .ok()) {
      Finish(ToGrpcStatus(absl::InvalidArgumentError(
          "request is not a valid dbpool.v1.QueryRequest: malformed protobuf, "
          "or a string field (sql, string_value, ...) that is not valid UTF-8; "
          "send binary data as bytes_value")));
      return;
    }
    auto params = ValidateQuery(job.request, service_->options_.request);
    if (!params.ok()) {
      Finish(ToGrpcStatus(params.status()));
      return;
    }
    absl::StatusOr<AccessControl::Slot> slot = service_->access_.Admit(*caller);
    if (!slot.ok()) {
      Finish(ToGrpcStatus(slot.status()));
      return;
    }
    slot_ = *std::move(slot);
    job.params = *std::move(params);
    // PostgreSQL itself refuses the writes of a read_only caller.
    job.read_only =
        job.request.read_only() || caller->role == security::Role::kReadOnly;
    job.deadline = DeadlineOf(context_);
    job.timeout = StatementTimeout(job.request, service_->options_.statement_timeout);
    cancel_.Attach(service_->engine_.Submit(
        std::move(job), [this](engine::QueryResult result) { OnResult(std::move(result)); }));
  }

  void OnCancel() override { cancel_.Cancel(); }

  void OnDone() override { delete this; }

 private:
  // Runs on whatever thread the engine finishes the job on.
  void OnResult(engine::QueryResult result) {
    // Freed before the reply, so the caller's next call finds it free.
    slot_ = AccessControl::Slot();
    absl::Status status = std::move(result.status);
    if (result.timings.has_value()) {
      const engine::QueryTimings& t = *result.timings;
      if (service_->metrics_ != nullptr) service_->metrics_->ObserveQuery(t.execution, status);
      if (status.ok()) {
        auto* timings = result.response.mutable_timings();
        *timings->mutable_acquire_wait() = ToProtoDuration(t.acquire_wait);
        *timings->mutable_execution() = ToProtoDuration(t.execution);
        timings->set_queue_depth_on_arrival(t.queue_depth_on_arrival);
        bool own_buffer = false;
        grpc::Status serialized = grpc::SerializationTraits<v1::QueryResponse>::Serialize(
            result.response, reply_, &own_buffer);
        if (!serialized.ok()) status = absl::InternalError(serialized.error_message());
      }
      context_->AddTrailingMetadata(
          "dbpool-acquire-wait-us",
          absl::StrCat(absl::ToInt64Microseconds(t.acquire_wait)));
      context_->AddTrailingMetadata("dbpool-queue-depth",
                                    absl::StrCat(t.queue_depth_on_arrival));
    }
    Finish(ToGrpcStatus(WithPoolState(std::move(status), service_->engine_)));
  }

  DatabaseService* const service_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const reply_;
  AccessControl::Slot slot_;
  CancelRelay cancel_;
};

DatabaseService::DatabaseService(engine::QueryEngine& engine, ServiceOptions options,
                                 metrics::Metrics* metrics)
    : engine_(engine),
      options_(std::move(options)),
      metrics_(metrics),
      access_(options_.tokens, options_.max_calls_per_caller,
              options_.forwarding_secret),
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
  *response = ToProto(engine_.Snapshot());
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
      interval, [this] { return ToProto(engine_.Snapshot()); }, std::move(same));
}

void DatabaseService::EndStreams() {
  streams_.Shutdown(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down"));
}

}  // namespace dbpool::rpc
