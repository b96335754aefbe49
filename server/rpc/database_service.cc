#include "server/rpc/database_service.h"

#include <algorithm>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
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

// Without the detour through int64 nanoseconds, which overflows past 292
// years (a valid Duration reaches 10,000).
absl::Duration FromProtoDuration(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

// A request's timeout can shorten the default statement timeout (the
// connection's own statement_timeout) but not lengthen it.
absl::Duration StatementTimeout(const v1::QueryRequest& request,
                                absl::Duration default_timeout) {
  if (!request.has_timeout()) return default_timeout;
  const absl::Duration requested = FromProtoDuration(request.timeout());
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

// Parses a raw request. The message says what most often goes wrong: gRPC
// itself would only say that parsing failed.
template <typename Request>
absl::Status ParseRaw(const grpc::ByteBuffer& wire, Request* request) {
  grpc::ByteBuffer copy(wire);  // shares the slices
  if (grpc::SerializationTraits<Request>::Deserialize(&copy, request).ok()) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "request is not a valid ", Request::descriptor()->full_name(),
      ": malformed protobuf, or a string field (sql, string_value, ...) that is "
      "not valid UTF-8; send binary data as bytes_value"));
}

template <typename Message>
absl::Status SerializeRaw(const Message& message, grpc::ByteBuffer* wire) {
  bool own_buffer = false;
  const grpc::Status s =
      grpc::SerializationTraits<Message>::Serialize(message, wire, &own_buffer);
  return s.ok() ? absl::OkStatus() : absl::InternalError(s.error_message());
}

// Where the job's time went, in a reply. `keep_execution`: the engine
// measured this statement on its own; its figure is the better one.
void SetTimings(const engine::QueryTimings& t, v1::QueryResponse* response,
                bool keep_execution = false) {
  auto* timings = response->mutable_timings();
  *timings->mutable_acquire_wait() = ToProtoDuration(t.acquire_wait);
  if (!keep_execution) *timings->mutable_execution() = ToProtoDuration(t.execution);
  timings->set_queue_depth_on_arrival(t.queue_depth_on_arrival);
}

// Every reply says why it was slow, also when it failed.
void AddTimingTrailers(const engine::QueryTimings& t,
                       grpc::CallbackServerContext* context) {
  context->AddTrailingMetadata("dbpool-acquire-wait-us",
                               absl::StrCat(absl::ToInt64Microseconds(t.acquire_wait)));
  context->AddTrailingMetadata("dbpool-queue-depth", absl::StrCat(t.queue_depth_on_arrival));
}

// Calls that name a transaction need the caller's name: the engine lets
// only the owner use it.
Naming NamingFor(const std::string& transaction_id) {
  return transaction_id.empty() ? Naming::kIfUsed : Naming::kAlways;
}

}  // namespace

// One Query or ExecuteBatch call, from validation to Finish. Deletes itself
// in OnDone, which gRPC runs only after Finish and after the handler has
// returned; so Start, which runs inside the handler, may go on using the
// call after the engine's callback has finished it.
class DatabaseService::JobCall final : public grpc::ServerUnaryReactor {
 public:
  enum class Kind { kQuery, kBatch };

  JobCall(DatabaseService* service, grpc::CallbackServerContext* context,
          grpc::ByteBuffer* reply, Kind kind)
      : service_(service), context_(context), reply_(reply), kind_(kind) {}

  // Runs on the gRPC thread inside the handler.
  void Start(const grpc::ByteBuffer& wire) {
    absl::StatusOr<engine::QueryJob> job = Prepare(wire);
    if (!job.ok()) {
      Finish(ToGrpcStatus(job.status()));
      return;
    }
    statements_ = static_cast<int>(job->statements.size());
    cancel_.Attach(service_->engine_.Submit(
        *std::move(job), [this](engine::QueryResult result) { OnResult(std::move(result)); }));
  }

  void OnCancel() override { cancel_.Cancel(); }

  void OnDone() override { delete this; }

 private:
  // The job, or why the call is refused before it reaches the engine.
  absl::StatusOr<engine::QueryJob> Prepare(const grpc::ByteBuffer& wire) {
    engine::QueryJob job;
    const DatabaseService& s = *service_;
    // Parsed before the access check: whether the call names a
    // transaction decides whether the caller's name is needed.
    absl::StatusOr<security::Caller> caller;
    if (kind_ == Kind::kQuery) {
      engine::Statement statement;
      if (absl::Status p = ParseRaw(wire, &statement.request); !p.ok()) return p;
      job.transaction_id = statement.request.transaction_id();
      caller = s.access_.Check(*context_, Need::kQuery, NamingFor(job.transaction_id));
      if (!caller.ok()) return caller.status();
      auto params = ValidateQuery(statement.request, s.options_.request);
      if (!params.ok()) return params.status();
      statement.params = *std::move(params);
      absl::StatusOr<ReadRouting> routing =
          ValidateRouting(statement.request.consistency(), statement.request.min_lsn());
      if (!routing.ok()) return routing.status();
      job.primary_only = routing->primary_only;
      job.min_lsn = routing->min_lsn;
      // PostgreSQL itself refuses the writes of a read_only caller.
      job.read_only =
          statement.request.read_only() || caller->role == security::Role::kReadOnly;
      job.timeout = StatementTimeout(statement.request, s.options_.statement_timeout);
      job.statements.push_back(std::move(statement));
    } else {
      v1::ExecuteBatchRequest request;
      if (absl::Status p = ParseRaw(wire, &request); !p.ok()) return p;
      job.transaction_id = request.transaction_id();
      caller = s.access_.Check(*context_, Need::kQuery, NamingFor(job.transaction_id));
      if (!caller.ok()) return caller.status();
      auto statements = ValidateBatch(request, s.options_.request);
      if (!statements.ok()) return statements.status();
      job.statements = *std::move(statements);
      job.batch = true;
      // The statements' own read_only and timeout are not read (the proto
      // says so): the batch is one unit.
      job.read_only = caller->role == security::Role::kReadOnly;
      job.timeout = s.options_.statement_timeout;
    }
    job.caller = caller->name;
    // Admitted last: a refused call never held a slot.
    absl::StatusOr<AccessControl::Slot> slot = service_->access_.Admit(*caller);
    if (!slot.ok()) return slot.status();
    slot_ = *std::move(slot);
    job.deadline = DeadlineOf(context_);
    return job;
  }

  // Runs on whatever thread the engine finishes the job on.
  void OnResult(engine::QueryResult result) {
    // Freed before the reply, so the caller's next call finds it free.
    slot_ = AccessControl::Slot();
    absl::Status status = std::move(result.status);
    if (status.ok() && static_cast<int>(result.responses.size()) != statements_) {
      status = absl::InternalError(absl::StrCat("the engine returned ", result.responses.size(),
                                                " results for ", statements_, " statements"));
    }
    // Timings come with every statement that got a connection; without
    // them there is nothing to tell about time.
    const engine::QueryTimings* t =
        result.timings.has_value() ? &*result.timings : nullptr;
    if (t != nullptr) {
      Observe(*t, status, result.responses);
      AddTimingTrailers(*t, context_);
    }
    if (status.ok() && !result.commit_lsn.empty()) {
      context_->AddTrailingMetadata(kCommitLsnKey, result.commit_lsn);
      for (v1::QueryResponse& r : result.responses) r.set_commit_lsn(result.commit_lsn);
    }
    if (status.ok()) status = Reply(t, result.responses);
    Finish(ToGrpcStatus(WithPoolState(std::move(status), service_->engine_)));
  }

  // Query metrics: one per statement the engine timed on its own, else one
  // for the job.
  void Observe(const engine::QueryTimings& t, const absl::Status& status,
               const std::vector<v1::QueryResponse>& responses) {
    metrics::Metrics* metrics = service_->metrics_;
    if (metrics == nullptr) return;
    const bool each_timed =
        status.ok() && kind_ == Kind::kBatch &&
        std::all_of(responses.begin(), responses.end(), [](const v1::QueryResponse& r) {
          return r.has_timings() && r.timings().has_execution();
        });
    if (!each_timed) {
      metrics->ObserveQuery(t.execution, status);
      return;
    }
    for (const v1::QueryResponse& r : responses) {
      metrics->ObserveQuery(FromProtoDuration(r.timings().execution()), status);
    }
  }

  // `t` may be null.
  absl::Status Reply(const engine::QueryTimings* t, std::vector<v1::QueryResponse>& responses) {
    if (kind_ == Kind::kQuery) {
      if (t != nullptr) SetTimings(*t, &responses[0]);
      return SerializeRaw(responses[0], reply_);
    }
    v1::ExecuteBatchResponse reply;
    reply.mutable_results()->Reserve(static_cast<int>(responses.size()));
    for (v1::QueryResponse& r : responses) {
      const bool own = r.has_timings() && r.timings().has_execution();
      if (t != nullptr) SetTimings(*t, &r, own);
      *reply.add_results() = std::move(r);
    }
    return SerializeRaw(reply, reply_);
  }

  DatabaseService* const service_;
  grpc::CallbackServerContext* const context_;
  grpc::ByteBuffer* const reply_;
  const Kind kind_;
  int statements_ = 0;
  AccessControl::Slot slot_;
  CancelRelay cancel_;
};

// One StreamQuery call. The reactor is also the engine's sink, so it has
// two owners that end independently: gRPC (its OnDone) and the engine (the
// sink's OnDone, which may come on the engine's thread at any moment,
// even inside SubmitStream or while a chunk is still being written). A
// third reference covers Start, which runs inside the handler. Whoever
// drops the last one deletes the call.
//
// At most one write is outstanding. Chunks wait in `pending_` while one is
// (an engine that keeps to flow control sends the next only after Next, so
// there is at most one); the engine's end waits for the last write to
// complete. gRPC's and the engine's calls (StartWrite, Finish, Next, Cancel)
// are made outside `mu_`: either side may call back inline.
class DatabaseService::StreamCall final
    : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  StreamCall(DatabaseService* service, grpc::CallbackServerContext* context)
      : service_(service), context_(context), sink_(this) {}

  // Runs on the gRPC thread inside the handler.
  void Start(const grpc::ByteBuffer& wire) {
    absl::StatusOr<engine::QueryJob> job = Prepare(wire);
    if (!job.ok()) {
      {
        absl::MutexLock lock(&mu_);
        engine_done_ = true;
        finished_ = true;
      }
      Release();  // the engine never had it
      Finish(ToGrpcStatus(job.status()));
      Release();  // Start's
      return;
    }
    Attach(service_->engine_.SubmitStream(*std::move(job), sink_));
    Release();  // Start's
  }

  void OnWriteDone(bool ok) override {
    bool next = false;
    bool cancel = false;
    bool finish = false;
    bool write = false;
    std::optional<grpc::Status> last_out;
    std::shared_ptr<engine::StreamHandle> handle;
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (last_in_flight_) {
        // The last message is out, or the caller is gone: only the status
        // is left.
        last_out = ok ? status_ : grpc::Status::CANCELLED;
      } else if (!ok) {
        // The caller is gone: nothing more can reach it.
        write_failed_ = true;
        pending_.clear();
        cancel = !cancelled_;
        cancelled_ = true;
      } else if (!pending_.empty()) {
        write = StartNextLocked();
      } else if (!engine_done_ && !cancelled_) {
        // The chunk is on its way: the engine may read the next one.
        next = handle_ != nullptr;
        next_owed_ = handle_ == nullptr;
      }
      if (!last_out && !write && engine_done_ && !finished_) finish = finished_ = true;
      handle = handle_;
    }
    if (last_out.has_value()) {
      Finish(*last_out);
      return;
    }
    if (write) StartWrite(&writing_);
    if (cancel && handle != nullptr) handle->Cancel();
    if (next && handle != nullptr) handle->Next();
    if (finish) SendEnd();
  }

  void OnCancel() override {
    std::shared_ptr<engine::StreamHandle> handle;
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_) return;
      cancelled_ = true;
      handle = handle_;
    }
    // Without a handle yet, Attach cancels.
    if (handle != nullptr) handle->Cancel();
  }

  void OnDone() override { Release(); }

 private:
  class Sink final : public engine::StreamSink {
   public:
    explicit Sink(StreamCall* call) : call_(call) {}
    void OnChunk(v1::QueryResponse chunk) override { call_->OnChunk(std::move(chunk)); }
    void OnDone(engine::QueryResult result) override { call_->OnEngineDone(std::move(result)); }

   private:
    StreamCall* const call_;
  };

  absl::StatusOr<engine::QueryJob> Prepare(const grpc::ByteBuffer& wire) {
    const DatabaseService& s = *service_;
    engine::Statement statement;
    if (absl::Status p = ParseRaw(wire, &statement.request); !p.ok()) return p;
    engine::QueryJob job;
    job.transaction_id = statement.request.transaction_id();
    absl::StatusOr<security::Caller> caller =
        s.access_.Check(*context_, Need::kQuery, NamingFor(job.transaction_id));
    if (!caller.ok()) return caller.status();
    auto params = ValidateQuery(statement.request, s.options_.request);
    if (!params.ok()) return params.status();
    statement.params = *std::move(params);
    absl::StatusOr<ReadRouting> routing =
        ValidateRouting(statement.request.consistency(), statement.request.min_lsn());
    if (!routing.ok()) return routing.status();
    job.primary_only = routing->primary_only;
    job.min_lsn = routing->min_lsn;
    job.read_only =
        statement.request.read_only() || caller->role == security::Role::kReadOnly;
    job.timeout = StatementTimeout(statement.request, s.options_.statement_timeout);
    job.statements.push_back(std::move(statement));
    job.caller = caller->name;
    absl::StatusOr<AccessControl::Slot> slot = service_->access_.Admit(*caller);
    if (!slot.ok()) return slot.status();
    slot_ = *std::move(slot);
    job.deadline = DeadlineOf(context_);
    return job;
  }

  // The handle, once SubmitStream has returned it; settles what happened
  // before: a cancel, or a written chunk whose Next is owed.
  void Attach(std::shared_ptr<engine::StreamHandle> handle) {
    bool cancel = false;
    bool next = false;
    {
      absl::MutexLock lock(&mu_);
      handle_ = handle;
      if (!engine_done_) {
        cancel = cancelled_;
        next = next_owed_ && !cancelled_;
      }
      next_owed_ = false;
    }
    if (handle == nullptr) return;
    if (cancel) handle->Cancel();
    if (next) handle->Next();
  }

  // Engine thread.
  void OnChunk(v1::QueryResponse chunk) {
    // Serialized here, off gRPC's threads.
    grpc::ByteBuffer wire;
    const absl::Status serialized = SerializeRaw(chunk, &wire);
    bool write = false;
    std::shared_ptr<engine::StreamHandle> handle;
    {
      absl::MutexLock lock(&mu_);
      if (write_failed_ || engine_done_) return;
      if (!serialized.ok()) {
        // Ends the call through the engine: OnEngineDone reports it.
        if (!failure_.has_value()) failure_ = serialized;
        if (cancelled_) return;
        cancelled_ = true;
        handle = handle_;
      } else {
        pending_.push_back(std::move(wire));
        if (!write_in_flight_) write = StartNextLocked();
      }
    }
    if (handle != nullptr) handle->Cancel();
    if (write) StartWrite(&writing_);
  }

  // Engine thread; the engine's last use of the sink. Its reference is
  // dropped last of all.
  void OnEngineDone(engine::QueryResult result) {
    // Freed before the reply, so the caller's next call finds it free.
    slot_ = AccessControl::Slot();
    absl::Status status = std::move(result.status);
    {
      absl::MutexLock lock(&mu_);
      // Whatever the engine says, it stopped because this call told it to.
      if (failure_.has_value()) status = *failure_;
    }
    if (result.timings.has_value()) {
      const engine::QueryTimings& t = *result.timings;
      if (service_->metrics_ != nullptr) service_->metrics_->ObserveQuery(t.execution, status);
      AddTimingTrailers(t, context_);
    }
    std::optional<grpc::ByteBuffer> last;
    if (status.ok()) {
      v1::QueryResponse end;
      if (!result.responses.empty()) end = std::move(result.responses[0]);
      // The columns and rows went in the chunks.
      end.clear_columns();
      end.clear_rows();
      if (result.timings.has_value()) SetTimings(*result.timings, &end);
      last.emplace();
      status = SerializeRaw(end, &*last);
      if (!status.ok()) last.reset();
    }
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      engine_done_ = true;
      status_ = ToGrpcStatus(WithPoolState(std::move(status), service_->engine_));
      if (status_.ok()) last_ = std::move(last);
      if (!write_in_flight_ && !finished_) finish = finished_ = true;
    }
    if (finish) SendEnd();
    Release();
  }

  // Moves the next pending chunk into the write slot.
  bool StartNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    writing_ = std::move(pending_.front());
    pending_.pop_front();
    write_in_flight_ = true;
    return true;
  }

  // Once per call, after the engine's end and the last chunk's write. The
  // last message goes as a write of its own, Finish once it is out:
  // StartWriteAndFinish was seen to lose the message on the in-process
  // transport (gRPC 1.51) when the reader was already waiting for it
  // (StreamEndBeforeTheLastWriteCompletesIsSafe), and the HTTP gateway
  // calls through that transport.
  void SendEnd() {
    bool write_last = false;
    grpc::Status status;
    {
      absl::MutexLock lock(&mu_);
      // The caller is gone: the status is all that is left to give.
      if (write_failed_ && status_.ok()) status_ = grpc::Status::CANCELLED;
      write_last = status_.ok() && last_.has_value();
      last_in_flight_ = write_last;
      status = status_;
    }
    if (write_last) {
      StartWrite(&*last_);
    } else {
      Finish(status);
    }
  }

  void Release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

  DatabaseService* const service_;
  grpc::CallbackServerContext* const context_;
  Sink sink_;
  // gRPC, the engine, Start.
  std::atomic<int> refs_{3};
  // Touched only before the engine's end and in it, which the engine
  // orders.
  AccessControl::Slot slot_;

  absl::Mutex mu_;
  std::shared_ptr<engine::StreamHandle> handle_ ABSL_GUARDED_BY(mu_);
  std::deque<grpc::ByteBuffer> pending_ ABSL_GUARDED_BY(mu_);
  // Owned by gRPC while write_in_flight_.
  grpc::ByteBuffer writing_;
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool write_failed_ ABSL_GUARDED_BY(mu_) = false;
  // A chunk was written before the handle was known.
  bool next_owed_ ABSL_GUARDED_BY(mu_) = false;
  // The caller cancelled, a write failed, or a chunk could not be sent:
  // the engine has been (or on Attach will be) told to stop.
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<absl::Status> failure_ ABSL_GUARDED_BY(mu_);
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  // Owned by gRPC while last_in_flight_.
  std::optional<grpc::ByteBuffer> last_;
  bool last_in_flight_ ABSL_GUARDED_BY(mu_) = false;
};

// One BeginTransaction call. Deletes itself in OnDone, as JobCall.
class DatabaseService::BeginCall final : public grpc::ServerUnaryReactor {
 public:
  BeginCall(DatabaseService* service, grpc::CallbackServerContext* context,
            v1::BeginTransactionResponse* reply)
      : service_(service), context_(context), reply_(reply) {}

  // Runs on the gRPC thread inside the handler.
  void Start(const v1::BeginTransactionRequest& request) {
    absl::StatusOr<engine::TransactionOptions> options = Prepare(request);
    if (!options.ok()) {
      Finish(ToGrpcStatus(options.status()));
      return;
    }
    caller_ = options->caller;
    cancel_.Attach(service_->engine_.BeginTransaction(
        *std::move(options), [this](absl::StatusOr<engine::BegunTransaction> begun) {
          OnBegun(std::move(begun));
        }));
  }

  void OnCancel() override {
    cancelled_.store(true, std::memory_order_release);
    cancel_.Cancel();
  }

  void OnDone() override { delete this; }

 private:
  absl::StatusOr<engine::TransactionOptions> Prepare(
      const v1::BeginTransactionRequest& request) {
    absl::StatusOr<security::Caller> caller =
        service_->access_.Check(*context_, Need::kQuery, Naming::kAlways);
    if (!caller.ok()) return caller.status();
    if (absl::Status s = ValidateBegin(request); !s.ok()) return s;
    if (caller->role == security::Role::kReadOnly && !request.read_only()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "caller \"", caller->name,
          "\" has role read_only, which may begin read_only transactions only"));
    }
    engine::TransactionOptions options;
    options.isolation = request.isolation();
    // The role check above already refused the alternative; this keeps it
    // true should that check ever change.
    options.read_only = request.read_only() || caller->role == security::Role::kReadOnly;
    options.deferrable = request.deferrable();
    absl::StatusOr<ReadRouting> routing =
        ValidateRouting(request.consistency(), request.min_lsn());
    if (!routing.ok()) return routing.status();
    options.primary_only = routing->primary_only;
    options.min_lsn = routing->min_lsn;
    if (request.has_idle_timeout()) {
      options.idle_timeout = FromProtoDuration(request.idle_timeout());
    }
    options.caller = caller->name;
    // A Begin waits for a connection as a query does, so it counts as one.
    absl::StatusOr<AccessControl::Slot> slot = service_->access_.Admit(*caller);
    if (!slot.ok()) return slot.status();
    slot_ = *std::move(slot);
    options.deadline = DeadlineOf(context_);
    return options;
  }

  // Runs on whatever thread the engine finishes the Begin on.
  void OnBegun(absl::StatusOr<engine::BegunTransaction> begun) {
    slot_ = AccessControl::Slot();
    if (!begun.ok()) {
      Finish(ToGrpcStatus(WithPoolState(begun.status(), service_->engine_)));
      return;
    }
    if (cancelled_.load(std::memory_order_acquire)) {
      // Nobody will learn the id; without this the transaction would hold
      // its connection until the idle timeout.
      service_->engine_.EndTransaction(begun->transaction_id, caller_,
                                       engine::TransactionEnd::kRollback,
                                       [](absl::StatusOr<engine::EndedTransaction>) {});
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the caller"));
      return;
    }
    reply_->set_transaction_id(std::move(begun->transaction_id));
    if (begun->expire_time != absl::InfiniteFuture()) {
      *reply_->mutable_expire_time() =
          TimeUtil::NanosecondsToTimestamp(absl::ToUnixNanos(begun->expire_time));
    }
    Finish(grpc::Status::OK);
  }

  DatabaseService* const service_;
  grpc::CallbackServerContext* const context_;
  v1::BeginTransactionResponse* const reply_;
  std::string caller_;
  std::atomic<bool> cancelled_{false};
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
  auto* call = new JobCall(this, context, response, JobCall::Kind::kQuery);
  call->Start(*request);
  return call;
}

grpc::ServerUnaryReactor* DatabaseService::ExecuteBatch(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  auto* call = new JobCall(this, context, response, JobCall::Kind::kBatch);
  call->Start(*request);
  return call;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* DatabaseService::StreamQuery(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  auto* call = new StreamCall(this, context);
  // Start may drop the last reference but gRPC's, never gRPC's: the
  // pointer stays valid for gRPC.
  call->Start(*request);
  return call;
}

grpc::ServerUnaryReactor* DatabaseService::BeginTransaction(
    grpc::CallbackServerContext* context, const v1::BeginTransactionRequest* request,
    v1::BeginTransactionResponse* response) {
  auto* call = new BeginCall(this, context, response);
  call->Start(*request);
  return call;
}

grpc::ServerUnaryReactor* DatabaseService::CommitTransaction(
    grpc::CallbackServerContext* context, const v1::CommitTransactionRequest* request,
    v1::CommitTransactionResponse* response) {
  return EndTransaction(context, request->transaction_id(), engine::TransactionEnd::kCommit,
                        response);
}

grpc::ServerUnaryReactor* DatabaseService::RollbackTransaction(
    grpc::CallbackServerContext* context, const v1::RollbackTransactionRequest* request,
    v1::RollbackTransactionResponse*) {
  return EndTransaction(context, request->transaction_id(),
                        engine::TransactionEnd::kRollback, nullptr);
}

grpc::ServerUnaryReactor* DatabaseService::EndTransaction(
    grpc::CallbackServerContext* context, const std::string& transaction_id,
    engine::TransactionEnd end, v1::CommitTransactionResponse* commit) {
  auto* reactor = context->DefaultReactor();
  absl::StatusOr<security::Caller> caller =
      access_.Check(*context, Need::kQuery, Naming::kAlways);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  if (absl::Status s = ValidateTransactionId(transaction_id); !s.ok()) {
    reactor->Finish(ToGrpcStatus(s));
    return reactor;
  }
  // Not cancellable: once asked, the engine ends the transaction whatever
  // the caller does, and the reactor waits for it.
  engine_.EndTransaction(
      transaction_id, caller->name, end,
      [reactor, context, commit](absl::StatusOr<engine::EndedTransaction> ended) {
        if (!ended.ok()) {
          reactor->Finish(ToGrpcStatus(ended.status()));
          return;
        }
        if (commit != nullptr && !ended->commit_lsn.empty()) {
          context->AddTrailingMetadata(kCommitLsnKey, ended->commit_lsn);
          commit->set_commit_lsn(std::move(ended->commit_lsn));
        }
        reactor->Finish(grpc::Status::OK);
      });
  return reactor;
}

grpc::ServerUnaryReactor* DatabaseService::GetPoolStats(
    grpc::CallbackServerContext* context, const v1::GetPoolStatsRequest*,
    v1::PoolStats* response) {
  auto* reactor = context->DefaultReactor();
  if (auto caller = access_.Check(*context, Need::kStats); !caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  *response = PoolStatsOf(engine_);
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
  if (request->has_interval()) interval = FromProtoDuration(request->interval());
  interval = std::clamp(interval, absl::Milliseconds(100), absl::Hours(1));
  PeriodicStreams<v1::PoolStats>::Same same;
  if (request->only_on_change()) same = SameGauges;
  return streams_.Open(
      interval, [this] { return PoolStatsOf(engine_); }, std::move(same));
}

void DatabaseService::EndStreams() {
  streams_.Shutdown(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down"));
}

}  // namespace dbpool::rpc
