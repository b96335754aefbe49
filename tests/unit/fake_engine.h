// FakeEngine: a QueryEngine that runs nothing. Every submitted job waits
// until the test completes it, so a test decides when and how each call
// ends; the test can also have the next jobs complete inside Submit.
//
// A cancel ends a job that is waiting (the default) at once with CANCELLED,
// inside QueryHandle::Cancel, as a pool wait does. A job the test has
// marked running only records the cancel, as a statement that takes a
// moment to stop; the test then completes it.
//
// Owned by a test; thread-safe. Every Wait* gives up after its limit.
#ifndef DBPOOL_TESTS_UNIT_FAKE_ENGINE_H_
#define DBPOOL_TESTS_UNIT_FAKE_ENGINE_H_

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/query_engine.h"

namespace dbpool::testing {

class FakeEngine final : public engine::QueryEngine {
 public:
  std::shared_ptr<engine::QueryHandle> Submit(engine::QueryJob job,
                                              engine::QueryDone done) override {
    std::optional<engine::QueryResult> inline_result;
    int index = 0;
    {
      absl::MutexLock lock(&mu_);
      index = static_cast<int>(jobs_.size());
      jobs_.push_back(std::make_unique<Entry>(std::move(job), std::move(done)));
      inline_result = inline_result_;
    }
    if (inline_result.has_value()) Complete(index, *std::move(inline_result));
    return std::make_shared<Handle>(this, index);
  }

  pool::PoolStats Snapshot() const override {
    absl::MutexLock lock(&mu_);
    return stats_;
  }
  bool Serving() const override {
    absl::MutexLock lock(&mu_);
    return serving_;
  }

  void set_snapshot(const pool::PoolStats& stats) {
    absl::MutexLock lock(&mu_);
    stats_ = stats;
  }
  void set_serving(bool serving) {
    absl::MutexLock lock(&mu_);
    serving_ = serving;
  }
  // Jobs submitted from now on complete with `result` before Submit
  // returns; nullopt: they wait for the test again.
  void CompleteInline(std::optional<engine::QueryResult> result) {
    absl::MutexLock lock(&mu_);
    inline_result_ = std::move(result);
  }

  // Whether `n` jobs in all have been submitted within `limit`.
  bool WaitForSubmitted(int n, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int>(jobs_.size()) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), limit);
  }
  int submitted() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(jobs_.size());
  }
  // A copy of job `i` as it was submitted.
  engine::QueryJob job(int i) const {
    absl::MutexLock lock(&mu_);
    return jobs_.at(i)->job;
  }

  // From now on a cancel of job `i` is only recorded.
  void MarkRunning(int i) {
    absl::MutexLock lock(&mu_);
    jobs_.at(i)->running = true;
  }
  int cancels(int i) const {
    absl::MutexLock lock(&mu_);
    return jobs_.at(i)->cancels;
  }
  // Whether job `i` has been cancelled within `limit`.
  bool WaitForCancel(int i, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    const Entry* e = jobs_.at(i).get();
    auto cancelled = [e] { return e->cancels > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&cancelled), limit);
  }
  // Whether job `i`'s callback has run and returned within `limit`.
  bool WaitForCompleted(int i, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    const Entry* e = jobs_.at(i).get();
    auto completed = [e] { return e->completed; };
    return mu_.AwaitWithTimeout(absl::Condition(&completed), limit);
  }
  bool completed(int i) const {
    absl::MutexLock lock(&mu_);
    return jobs_.at(i)->completed;
  }

  // Runs job `i`'s callback with `result`; false when it had already run.
  bool Complete(int i, engine::QueryResult result) {
    engine::QueryDone done;
    {
      absl::MutexLock lock(&mu_);
      Entry* e = jobs_.at(i).get();
      if (e->taken) return false;
      e->taken = true;
      done = std::move(e->done);
    }
    std::move(done)(std::move(result));
    absl::MutexLock lock(&mu_);
    jobs_.at(i)->completed = true;
    return true;
  }

 private:
  struct Entry {
    Entry(engine::QueryJob j, engine::QueryDone d) : job(std::move(j)), done(std::move(d)) {}
    engine::QueryJob job;
    engine::QueryDone done;
    bool running = false;
    int cancels = 0;
    bool taken = false;      // the callback has been claimed
    bool completed = false;  // and has returned
  };

  class Handle final : public engine::QueryHandle {
   public:
    Handle(FakeEngine* engine, int index) : engine_(engine), index_(index) {}
    void Cancel() override { engine_->Cancel(index_); }

   private:
    FakeEngine* const engine_;
    const int index_;
  };

  void Cancel(int i) {
    bool end_now = false;
    {
      absl::MutexLock lock(&mu_);
      Entry* e = jobs_.at(i).get();
      ++e->cancels;
      end_now = !e->running;
    }
    if (end_now) Complete(i, {absl::CancelledError("cancelled by the caller"), {}, {}});
  }

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Entry>> jobs_ ABSL_GUARDED_BY(mu_);
  pool::PoolStats stats_ ABSL_GUARDED_BY(mu_);
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  std::optional<engine::QueryResult> inline_result_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dbpool::testing

#endif  // DBPOOL_TESTS_UNIT_FAKE_ENGINE_H_
