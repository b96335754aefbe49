// FakeEngine: a QueryEngine that runs nothing. Every submitted job, stream,
// Begin and End waits until the test completes it, so a test decides when
// and how each call ends; the test can also have the next jobs complete
// inside Submit.
//
// The contract it keeps (query_engine.h), which the service relies on:
// - Each callback (QueryDone, BeginDone, EndDone, StreamSink::OnDone) runs
//   exactly once, on the thread that completes it: the test's, or the
//   canceller's inside Cancel().
// - A cancel ends a job, stream or Begin that is waiting (the default) at
//   once with CANCELLED, inside Cancel(), as a pool wait does. One the test
//   has marked running only records the cancel, as a statement that takes a
//   moment to stop; the test then completes it.
// - Streams: no two sink calls at once; SendChunk refuses (returns false) a
//   chunk while the previous one awaits Next(), so a test cannot break flow
//   control by accident; a Next() with no chunk awaiting it is counted as
//   spurious. A cancel that arrives during OnChunk ends the stream right
//   after OnChunk returns. Nothing reaches the sink after OnDone.
//
// Owned by a test; must outlive the server that uses it. Thread-safe.
// Every Wait* gives up after its limit.
#ifndef DBPOOL_TESTS_UNIT_FAKE_ENGINE_H_
#define DBPOOL_TESTS_UNIT_FAKE_ENGINE_H_

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/engine/query_engine.h"

namespace dbpool::testing {

class FakeEngine final : public engine::QueryEngine {
 public:
  // ---- Submit ----

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

  // ---- SubmitStream ----

  std::shared_ptr<engine::StreamHandle> SubmitStream(engine::QueryJob job,
                                                     engine::StreamSink& sink) override {
    std::optional<InlineStream> script;
    int index = 0;
    {
      absl::MutexLock lock(&mu_);
      index = static_cast<int>(streams_.size());
      streams_.push_back(std::make_unique<Stream>(std::move(job), &sink));
      script = inline_stream_;
    }
    if (script.has_value()) {
      if (script->first_chunk.has_value()) SendChunk(index, *script->first_chunk);
      EndStream(index, std::move(script->end));
    }
    return std::make_shared<StreamHandleImpl>(this, index);
  }

  // Streams submitted from now on send `first_chunk` (if any) and end with
  // `end` before SubmitStream returns, without waiting for Next: the
  // engine's end may come before the chunk is written. nullopt: they wait
  // for the test again.
  struct InlineStream {
    std::optional<v1::QueryResponse> first_chunk;
    engine::QueryResult end;
  };
  void StreamInline(std::optional<InlineStream> script) {
    absl::MutexLock lock(&mu_);
    inline_stream_ = std::move(script);
  }

  bool WaitForStreams(int n, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int>(streams_.size()) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), limit);
  }
  int streams() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(streams_.size());
  }
  engine::QueryJob stream_job(int i) const {
    absl::MutexLock lock(&mu_);
    return streams_.at(i)->job;
  }
  // Gives stream `i` a chunk (OnChunk). False, and nothing sent, when the
  // last chunk still awaits Next or the stream has ended.
  bool SendChunk(int i, v1::QueryResponse chunk) {
    engine::StreamSink* sink = nullptr;
    {
      absl::MutexLock lock(&mu_);
      Stream* s = streams_.at(i).get();
      if (s->done || s->in_sink_call || s->awaiting_next) return false;
      s->in_sink_call = true;
      s->awaiting_next = true;
      ++s->chunks;
      sink = s->sink;
    }
    sink->OnChunk(std::move(chunk));
    bool end = false;
    {
      absl::MutexLock lock(&mu_);
      Stream* s = streams_.at(i).get();
      s->in_sink_call = false;
      end = s->end_after_call && !s->done;
      if (end) s->done = true;
    }
    if (end) FinishStream(i, Cancelled());
    return true;
  }
  // Ends stream `i` (OnDone), whether or not its last chunk has had its
  // Next; false when it had already ended.
  bool EndStream(int i, engine::QueryResult result) {
    {
      absl::MutexLock lock(&mu_);
      Stream* s = streams_.at(i).get();
      if (s->done || s->in_sink_call) return false;
      s->done = true;
    }
    FinishStream(i, std::move(result));
    return true;
  }
  // Whether stream `i` has had `n` calls of Next in all within `limit`.
  bool WaitForNext(int i, int n, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    const Stream* s = streams_.at(i).get();
    auto enough = [s, n] { return s->nexts >= n; };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), limit);
  }
  int nexts(int i) const {
    absl::MutexLock lock(&mu_);
    return streams_.at(i)->nexts;
  }
  // Next() calls with no chunk awaiting one: a flow-control bug.
  int spurious_nexts(int i) const {
    absl::MutexLock lock(&mu_);
    return streams_.at(i)->spurious_nexts;
  }
  void MarkStreamRunning(int i) {
    absl::MutexLock lock(&mu_);
    streams_.at(i)->running = true;
  }
  int stream_cancels(int i) const {
    absl::MutexLock lock(&mu_);
    return streams_.at(i)->cancels;
  }
  bool WaitForStreamCancel(int i, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    const Stream* s = streams_.at(i).get();
    auto cancelled = [s] { return s->cancels > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&cancelled), limit);
  }
  // Whether stream `i`'s OnDone has run and returned within `limit`.
  bool WaitForStreamEnded(int i, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    const Stream* s = streams_.at(i).get();
    auto ended = [s] { return s->ended; };
    return mu_.AwaitWithTimeout(absl::Condition(&ended), limit);
  }

  // ---- BeginTransaction / EndTransaction ----

  std::shared_ptr<engine::QueryHandle> BeginTransaction(engine::TransactionOptions options,
                                                        engine::BeginDone done) override {
    std::optional<absl::StatusOr<engine::BegunTransaction>> inline_result;
    int index = 0;
    {
      absl::MutexLock lock(&mu_);
      index = static_cast<int>(begins_.size());
      begins_.push_back(std::make_unique<Begin>(std::move(options), std::move(done)));
      inline_result = inline_begin_;
    }
    if (inline_result.has_value()) CompleteBegin(index, *std::move(inline_result));
    return std::make_shared<BeginHandle>(this, index);
  }

  void EndTransaction(std::string transaction_id, std::string caller,
                      engine::TransactionEnd end, engine::EndDone done) override {
    std::optional<absl::Status> inline_status;
    int index = 0;
    {
      absl::MutexLock lock(&mu_);
      index = static_cast<int>(ends_.size());
      ends_.push_back(std::make_unique<End>(
          EndCall{std::move(transaction_id), std::move(caller), end}, std::move(done)));
      inline_status = inline_end_;
    }
    if (inline_status.has_value()) CompleteEnd(index, *inline_status);
  }

  // Begins from now on complete with `result` inside BeginTransaction.
  void CompleteBeginsInline(std::optional<absl::StatusOr<engine::BegunTransaction>> result) {
    absl::MutexLock lock(&mu_);
    inline_begin_ = std::move(result);
  }
  // Ends from now on complete with `status` inside EndTransaction.
  void CompleteEndsInline(std::optional<absl::Status> status) {
    absl::MutexLock lock(&mu_);
    inline_end_ = std::move(status);
  }

  bool WaitForBegins(int n, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int>(begins_.size()) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), limit);
  }
  int begins() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(begins_.size());
  }
  engine::TransactionOptions begin_options(int i) const {
    absl::MutexLock lock(&mu_);
    return begins_.at(i)->options;
  }
  int begin_cancels(int i) const {
    absl::MutexLock lock(&mu_);
    return begins_.at(i)->cancels;
  }
  bool WaitForBeginCancel(int i, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    const Begin* b = begins_.at(i).get();
    auto cancelled = [b] { return b->cancels > 0; };
    return mu_.AwaitWithTimeout(absl::Condition(&cancelled), limit);
  }
  // From now on a cancel of Begin `i` is only recorded.
  void MarkBeginRunning(int i) {
    absl::MutexLock lock(&mu_);
    begins_.at(i)->running = true;
  }
  bool CompleteBegin(int i, absl::StatusOr<engine::BegunTransaction> result) {
    engine::BeginDone done;
    {
      absl::MutexLock lock(&mu_);
      Begin* b = begins_.at(i).get();
      if (b->taken) return false;
      b->taken = true;
      done = std::move(b->done);
    }
    std::move(done)(std::move(result));
    return true;
  }

  struct EndCall {
    std::string transaction_id;
    std::string caller;
    engine::TransactionEnd end;
  };
  bool WaitForEnds(int n, absl::Duration limit = absl::Seconds(10)) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return static_cast<int>(ends_.size()) >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), limit);
  }
  int ends() const {
    absl::MutexLock lock(&mu_);
    return static_cast<int>(ends_.size());
  }
  EndCall end_call(int i) const {
    absl::MutexLock lock(&mu_);
    return ends_.at(i)->call;
  }
  bool CompleteEnd(int i, absl::Status status, std::string commit_lsn = "") {
    engine::EndDone done;
    {
      absl::MutexLock lock(&mu_);
      End* e = ends_.at(i).get();
      if (e->taken) return false;
      e->taken = true;
      done = std::move(e->done);
    }
    if (status.ok()) {
      std::move(done)(engine::EndedTransaction{std::move(commit_lsn)});
    } else {
      std::move(done)(std::move(status));
    }
    return true;
  }

  // ---- State ----

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

  // Ends everything still open with CANCELLED, so that no call holds up a
  // server's shutdown.
  void EndEverything() {
    for (int i = 0; i < submitted(); ++i) Complete(i, Cancelled());
    for (int i = 0; i < streams(); ++i) EndStream(i, Cancelled());
    for (int i = 0; i < begins(); ++i) {
      CompleteBegin(i, absl::CancelledError("test over"));
    }
    for (int i = 0; i < ends(); ++i) CompleteEnd(i, absl::CancelledError("test over"));
  }

 private:
  static engine::QueryResult Cancelled() {
    engine::QueryResult result;
    result.status = absl::CancelledError("cancelled by the caller");
    return result;
  }

  struct Entry {
    Entry(engine::QueryJob j, engine::QueryDone d) : job(std::move(j)), done(std::move(d)) {}
    engine::QueryJob job;
    engine::QueryDone done;
    bool running = false;
    int cancels = 0;
    bool taken = false;      // the callback has been claimed
    bool completed = false;  // and has returned
  };

  struct Stream {
    Stream(engine::QueryJob j, engine::StreamSink* s) : job(std::move(j)), sink(s) {}
    engine::QueryJob job;
    engine::StreamSink* const sink;
    bool running = false;
    int cancels = 0;
    int chunks = 0;
    int nexts = 0;
    int spurious_nexts = 0;
    bool awaiting_next = false;
    bool in_sink_call = false;
    // A cancel came during OnChunk: end once it returns.
    bool end_after_call = false;
    bool done = false;   // OnDone has been claimed
    bool ended = false;  // and has returned
  };

  struct Begin {
    Begin(engine::TransactionOptions o, engine::BeginDone d)
        : options(std::move(o)), done(std::move(d)) {}
    engine::TransactionOptions options;
    engine::BeginDone done;
    bool running = false;
    int cancels = 0;
    bool taken = false;
  };

  struct End {
    End(EndCall c, engine::EndDone d) : call(std::move(c)), done(std::move(d)) {}
    EndCall call;
    engine::EndDone done;
    bool taken = false;
  };

  class Handle final : public engine::QueryHandle {
   public:
    Handle(FakeEngine* engine, int index) : engine_(engine), index_(index) {}
    void Cancel() override { engine_->Cancel(index_); }

   private:
    FakeEngine* const engine_;
    const int index_;
  };

  class StreamHandleImpl final : public engine::StreamHandle {
   public:
    StreamHandleImpl(FakeEngine* engine, int index) : engine_(engine), index_(index) {}
    void Cancel() override { engine_->CancelStream(index_); }
    void Next() override { engine_->Next(index_); }

   private:
    FakeEngine* const engine_;
    const int index_;
  };

  class BeginHandle final : public engine::QueryHandle {
   public:
    BeginHandle(FakeEngine* engine, int index) : engine_(engine), index_(index) {}
    void Cancel() override { engine_->CancelBegin(index_); }

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
    if (end_now) Complete(i, Cancelled());
  }

  void CancelStream(int i) {
    {
      absl::MutexLock lock(&mu_);
      Stream* s = streams_.at(i).get();
      ++s->cancels;
      if (s->running || s->done) return;
      if (s->in_sink_call) {
        s->end_after_call = true;
        return;
      }
      s->done = true;
    }
    FinishStream(i, Cancelled());
  }

  void Next(int i) {
    absl::MutexLock lock(&mu_);
    Stream* s = streams_.at(i).get();
    ++s->nexts;
    if (!s->awaiting_next) ++s->spurious_nexts;
    s->awaiting_next = false;
  }

  // Runs the sink's OnDone; the caller has claimed it (done = true).
  void FinishStream(int i, engine::QueryResult result) {
    engine::StreamSink* sink = nullptr;
    {
      absl::MutexLock lock(&mu_);
      Stream* s = streams_.at(i).get();
      s->in_sink_call = true;
      sink = s->sink;
    }
    sink->OnDone(std::move(result));
    absl::MutexLock lock(&mu_);
    Stream* s = streams_.at(i).get();
    s->in_sink_call = false;
    s->ended = true;
  }

  void CancelBegin(int i) {
    bool end_now = false;
    {
      absl::MutexLock lock(&mu_);
      Begin* b = begins_.at(i).get();
      ++b->cancels;
      end_now = !b->running;
    }
    if (end_now) CompleteBegin(i, absl::CancelledError("cancelled by the caller"));
  }

  mutable absl::Mutex mu_;
  std::vector<std::unique_ptr<Entry>> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Stream>> streams_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Begin>> begins_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<End>> ends_ ABSL_GUARDED_BY(mu_);
  pool::PoolStats stats_ ABSL_GUARDED_BY(mu_);
  bool serving_ ABSL_GUARDED_BY(mu_) = true;
  std::optional<engine::QueryResult> inline_result_ ABSL_GUARDED_BY(mu_);
  std::optional<InlineStream> inline_stream_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::StatusOr<engine::BegunTransaction>> inline_begin_ ABSL_GUARDED_BY(mu_);
  std::optional<absl::Status> inline_end_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dbpool::testing

#endif  // DBPOOL_TESTS_UNIT_FAKE_ENGINE_H_
