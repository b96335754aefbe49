#include "server/engine/worker_engine.h"

#include <algorithm>
#include <atomic>
#include <utility>

#include "absl/time/clock.h"

namespace dbpool::engine {

// One submitted job, from the wait for a connection to `done`. Shared by the
// submitter's handle, the pool's acquire callback and the executor task.
class WorkerEngine::Run final : public QueryHandle,
                               public std::enable_shared_from_this<Run> {
 public:
  Run(WorkerEngine& engine, QueryJob job, QueryDone done)
      : engine_(engine), job_(std::move(job)), done_(std::move(done)) {
    job_.request.set_read_only(job_.read_only);
  }

  void Start() {
    const pool::ConnectionPool::WaitId id = engine_.pool_.Acquire(
        job_.deadline, [self = shared_from_this()](absl::StatusOr<pool::Lease> lease) {
          self->OnLease(std::move(lease));
        });
    wait_id_.store(id);
  }

  void Cancel() override {
    cancelled_.store(true);
    // The handle is handed out only after Start, so the id is known here.
    if (const auto id = wait_id_.load(); id != 0) engine_.pool_.CancelWait(id);
  }

  void OnLease(absl::StatusOr<pool::Lease> lease) {
    if (!lease.ok()) {
      Complete({lease.status(), {}, std::nullopt});
      return;
    }
    engine_.executor_.Post([self = shared_from_this(), lease = *std::move(lease)]() mutable {
      self->Execute(std::move(lease));
    });
  }

 private:
  // Runs on an executor worker.
  void Execute(pool::Lease lease) {
    QueryResult result;
    const absl::Time start = absl::Now();
    if (cancelled_.load()) {
      // The cancel came as the connection was handed over: the statement
      // never reaches PostgreSQL.
      result.status = absl::CancelledError("cancelled by the caller");
    } else {
      const absl::Time deadline = std::min(job_.deadline, start + job_.timeout);
      db::QueryOutcome outcome =
          db::RunQuery(lease.connection(), job_.request, job_.params, engine_.limits_,
                       deadline, cancelled_, &result.response);
      if (outcome.connection_broken) lease.MarkBroken();
      result.status = std::move(outcome.status);
    }
    QueryTimings timings;
    timings.acquire_wait = lease.wait();
    timings.queue_depth_on_arrival = lease.queue_depth_on_arrival();
    // Back to the pool before the reply, so the next waiter starts sooner.
    lease = pool::Lease();
    timings.execution = absl::Now() - start;
    result.timings = timings;
    Complete(std::move(result));
  }

  void Complete(QueryResult result) { std::move(done_)(std::move(result)); }

  WorkerEngine& engine_;
  QueryJob job_;
  QueryDone done_;
  // Polled by db::RunQuery while the statement runs.
  std::atomic<bool> cancelled_{false};
  std::atomic<pool::ConnectionPool::WaitId> wait_id_{0};
};

WorkerEngine::WorkerEngine(pool::ConnectionPool& pool, db::QueryLimits limits)
    : pool_(pool),
      limits_(limits),
      executor_(pool.options().max_connections, "dbpool-worker") {}

std::shared_ptr<QueryHandle> WorkerEngine::Submit(QueryJob job, QueryDone done) {
  auto run = std::make_shared<Run>(*this, std::move(job), std::move(done));
  run->Start();
  return run;
}

pool::PoolStats WorkerEngine::Snapshot() const { return pool_.Snapshot(); }

bool WorkerEngine::Serving() const { return pool_.Serving(); }

}  // namespace dbpool::engine
