#include "server/engine/loop_engine.h"

#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/db/async_query.h"
#include "server/db/pg_connection.h"

namespace dbpool::engine {

class LoopEngine::Call final : public QueryHandle,
                               public std::enable_shared_from_this<Call> {
 public:
  Call(LoopEngine& engine, QueryJob job, QueryDone done)
      : engine_(engine), job_(std::move(job)), done_(std::move(done)) {}

  void Cancel() override;
  void OnLease(absl::StatusOr<pool::Lease> lease);

  LoopEngine& engine_;
  QueryJob job_;
  QueryDone done_;
  std::atomic<bool> cancelled_{false};
  std::atomic<pool::ConnectionPool::WaitId> wait_id_{0};
  // Set once the call has a connection and a loop to run on.
  std::atomic<Loop*> loop_{nullptr};

  // Owned by the loop thread once the call is posted to it.
  pool::Lease lease_;
  std::unique_ptr<db::AsyncQuery> query_;
  v1::QueryResponse response_;
  absl::Time started_;
  // Start() already ran, on the thread that got the connection.
  bool started_elsewhere_ = false;
  // Start() finished the statement (the connection failed at once).
  bool done_early_ = false;
  int registered_fd_ = -1;
  bool watching_writes_ = false;
};

class LoopEngine::Loop {
 public:
  Loop(LoopEngine& engine, int index);
  ~Loop();

  // On this loop's thread: runs `call` from the next turn of the loop.
  void Post(std::shared_ptr<Call> call);
  // From any other thread: sends `call`'s statement at once, there, and
  // leaves the rest to the loop, which is woken only if it would otherwise
  // sleep past the statement's deadline. A statement then costs the loop
  // no wake-up of its own: the reply is what wakes it.
  void StartHere(std::shared_ptr<Call> call);
  // From any thread.
  void PostCancel(std::shared_ptr<Call> call);
  // The loop ends once nothing is running or posted.
  void Stop();

  LoopEngine& engine() const { return engine_; }
  // The loop whose thread this is; null on other threads.
  static Loop* Current() { return current_; }

 private:
  void Run();
  // Takes what other threads handed over; runs on the loop's thread.
  void TakePosted(absl::Time now);
  // Makes the AsyncQuery of a call that has its connection; Start() is then
  // the caller's to run.
  void Prepare(Call& call, absl::Time now);
  void Start(std::shared_ptr<Call> call, absl::Time now);
  void Adopt(std::shared_ptr<Call> call);
  void Watch(Call& call);
  void Complete(Call& call);
  void Wake();

  LoopEngine& engine_;
  const int index_;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  // Set while the loop may be in epoll_wait, so that only then posting
  // costs a write to wake_fd_.
  std::atomic<bool> sleeping_{false};
  // While sleeping_: when the loop wakes by itself (absl::ToUnixNanos),
  // INT64_MAX for never.
  std::atomic<int64_t> wakes_at_{0};

  // std::mutex, not absl::Mutex, so that ThreadSanitizer sees the locking:
  // Debian's abseil is not instrumented (scripts/sanitize).
  std::mutex mu_;
  std::vector<std::shared_ptr<Call>> posted_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Call>> cancels_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Loop thread only.
  std::vector<std::shared_ptr<Call>> running_;
  std::thread thread_;
  static thread_local Loop* current_;
};

thread_local LoopEngine::Loop* LoopEngine::Loop::current_ = nullptr;

void LoopEngine::Call::Cancel() {
  // Sequentially consistent with OnLease: either this sees the loop, or
  // the loop sees cancelled_ when it starts the statement.
  if (cancelled_.exchange(true)) return;
  if (const auto id = wait_id_.load(); id != 0) engine_.pool_.CancelWait(id);
  if (Loop* loop = loop_.load()) loop->PostCancel(shared_from_this());
}

void LoopEngine::Call::OnLease(absl::StatusOr<pool::Lease> lease) {
  if (!lease.ok()) {
    QueryResult result;
    result.status = lease.status();
    std::move(done_)(std::move(result));
    return;
  }
  lease_ = *std::move(lease);
  Loop& loop = engine_.PickLoop();
  loop_.store(&loop);
  if (Loop::Current() == &loop) {
    loop.Post(shared_from_this());
  } else {
    loop.StartHere(shared_from_this());
  }
}

LoopEngine::Loop::Loop(LoopEngine& engine, int index)
    : engine_(engine), index_(index) {
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev);
  thread_ = std::thread([this] { Run(); });
}

LoopEngine::Loop::~Loop() {
  Stop();
  thread_.join();
  close(wake_fd_);
  close(epoll_fd_);
}

void LoopEngine::Loop::Post(std::shared_ptr<Call> call) {
  std::lock_guard<std::mutex> lock(mu_);
  posted_.push_back(std::move(call));
}

void LoopEngine::Loop::StartHere(std::shared_ptr<Call> call) {
  Call& c = *call;
  const absl::Time now = absl::Now();
  Prepare(c, now);
  c.started_elsewhere_ = true;
  c.done_early_ = c.query_->Start(now);
  const int fd = c.done_early_ ? -1 : c.query_->socket();
  const bool writes = fd >= 0 && c.query_->WantsWrite();
  if (fd >= 0) {
    c.registered_fd_ = fd;
    c.watching_writes_ = writes;
  }
  const absl::Time timer = c.done_early_ ? absl::InfinitePast() : c.query_->Timer();
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted_.push_back(std::move(call));
  }
  // Registered only once posted: the loop, woken by the reply, takes what
  // was posted before it handles the event. From here on the call is the
  // loop's. Should the registration fail, the statement's deadline still
  // ends it.
  if (fd >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN | (writes ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    ev.data.ptr = &c;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
  if (sleeping_.load() && absl::ToUnixNanos(timer) < wakes_at_.load()) Wake();
}

void LoopEngine::Loop::PostCancel(std::shared_ptr<Call> call) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancels_.push_back(std::move(call));
  }
  if (Current() != this) Wake();
}

void LoopEngine::Loop::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  Wake();
}

void LoopEngine::Loop::Wake() {
  if (!sleeping_.load()) return;
  const uint64_t one = 1;
  // A full counter already wakes the loop: the result does not matter.
  [[maybe_unused]] ssize_t n = write(wake_fd_, &one, sizeof one);
}

void LoopEngine::Loop::Run() {
  current_ = this;
  pthread_setname_np(pthread_self(), absl::StrCat("dbpool-io-", index_).c_str());
  epoll_event events[64];
  for (;;) {
    absl::Time now = absl::Now();
    TakePosted(now);
    bool stopping = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping = stopping_;
    }
    if (stopping && running_.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (posted_.empty() && cancels_.empty()) return;
      continue;
    }
    // Deadlines: a loop runs at most as many statements as it has
    // connections, so a scan is cheaper than a timer heap.
    absl::Time next = absl::InfiniteFuture();
    for (size_t i = 0; i < running_.size();) {
      Call& call = *running_[i];
      const absl::Time at = call.query_->Timer();
      if (at <= now && call.query_->OnTimer(now)) {
        Complete(call);  // removes running_[i]
        continue;
      }
      next = std::min(next, call.query_->Timer());
      ++i;
    }
    int timeout_ms = -1;
    if (next != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(std::clamp<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1))),
          1, 1000));
    }
    wakes_at_.store(timeout_ms < 0 ? std::numeric_limits<int64_t>::max()
                                   : absl::ToUnixNanos(now + absl::Milliseconds(timeout_ms)));
    sleeping_.store(true);
    {
      // Whatever was posted before sleeping_ was set did not wake us.
      std::lock_guard<std::mutex> lock(mu_);
      if (!posted_.empty() || !cancels_.empty() || stopping_ != stopping) timeout_ms = 0;
    }
    const int n = epoll_wait(epoll_fd_, events, 64, timeout_ms);
    sleeping_.store(false);
    now = absl::Now();
    // A reply may belong to a statement started on another thread since.
    if (n > 0) TakePosted(now);
    for (int i = 0; i < n; ++i) {
      auto* call = static_cast<Call*>(events[i].data.ptr);
      if (call == nullptr) {
        uint64_t count = 0;
        [[maybe_unused]] ssize_t r = read(wake_fd_, &count, sizeof count);
        continue;
      }
      if (call->query_->OnSocket(now)) {
        Complete(*call);
      } else {
        Watch(*call);
      }
    }
  }
}

void LoopEngine::Loop::TakePosted(absl::Time now) {
  std::vector<std::shared_ptr<Call>> posted;
  std::vector<std::shared_ptr<Call>> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted.swap(posted_);
    cancels.swap(cancels_);
  }
  for (auto& call : posted) {
    if (call->started_elsewhere_) {
      Adopt(std::move(call));
    } else {
      Start(std::move(call), now);
    }
  }
  for (auto& call : cancels) {
    // A call that finished meanwhile is no longer running.
    if (call->query_ != nullptr && call->query_->Cancel(now)) Complete(*call);
  }
}

void LoopEngine::Loop::Prepare(Call& c, absl::Time now) {
  c.started_ = now;
  absl::Time deadline = c.job_.deadline;
  if (c.job_.timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, now + c.job_.timeout);
  }
  c.query_ = std::make_unique<db::AsyncQuery>(
      static_cast<db::PgConnection&>(c.lease_.connection()), c.job_.request,
      c.job_.params, c.job_.read_only, deadline, engine_.options_.limits,
      &c.response_);
}

void LoopEngine::Loop::Start(std::shared_ptr<Call> call, absl::Time now) {
  Prepare(*call, now);
  call->done_early_ = call->query_->Start(now);
  Adopt(std::move(call));
}

void LoopEngine::Loop::Adopt(std::shared_ptr<Call> call) {
  Call& c = *call;
  running_.push_back(std::move(call));
  if (c.done_early_ || (c.cancelled_.load() && c.query_->Cancel(absl::Now()))) {
    Complete(c);
    return;
  }
  // Registers the socket, unless the thread that started the statement
  // did; then only output that did not fit the socket at once changes it.
  Watch(c);
}

void LoopEngine::Loop::Watch(Call& call) {
  const int fd = call.query_->socket();
  const bool writes = call.query_->WantsWrite();
  if (fd == call.registered_fd_ && writes == call.watching_writes_) return;
  epoll_event ev{};
  ev.events = EPOLLIN | (writes ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  ev.data.ptr = &call;
  if (call.registered_fd_ < 0) {
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      // No way to hear the reply: the deadline (timer) ends the call.
      return;
    }
    call.registered_fd_ = fd;
  } else {
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
  }
  call.watching_writes_ = writes;
}

void LoopEngine::Loop::Complete(Call& call) {
  // libpq forgets its socket when it closes it, and a closed socket has
  // left the epoll set already; its number may belong to another
  // connection by now.
  if (call.registered_fd_ >= 0 && call.query_->socket() == call.registered_fd_) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, call.registered_fd_, nullptr);
  }
  call.registered_fd_ = -1;
  QueryResult result;
  result.status = call.query_->status();
  if (result.status.ok()) result.response = std::move(call.response_);
  result.timings = QueryTimings{call.lease_.wait(),
                                call.lease_.queue_depth_on_arrival(),
                                absl::Now() - call.started_};
  if (call.query_->connection_broken()) call.lease_.MarkBroken();
  call.query_.reset();
  // Back to the pool before the reply, so the next waiter starts sooner
  // (on this loop, when the connection goes straight to a waiter).
  call.lease_ = pool::Lease();
  std::shared_ptr<Call> keep;
  for (auto it = running_.begin(); it != running_.end(); ++it) {
    if (it->get() == &call) {
      keep = std::move(*it);
      running_.erase(it);
      break;
    }
  }
  std::move(call.done_)(std::move(result));
}

LoopEngine::LoopEngine(pool::ConnectionPool& pool, LoopEngineOptions options)
    : pool_(pool), options_(std::move(options)) {
  for (int i = 0; i < std::max(1, options_.io_threads); ++i) {
    loops_.push_back(std::make_unique<Loop>(*this, i));
  }
}

LoopEngine::~LoopEngine() {
  for (auto& loop : loops_) loop->Stop();
  loops_.clear();
}

LoopEngine::Loop& LoopEngine::PickLoop() {
  Loop* current = Loop::Current();
  if (current != nullptr && &current->engine() == this) return *current;
  return *loops_[next_loop_.fetch_add(1, std::memory_order_relaxed) % loops_.size()];
}

std::shared_ptr<QueryHandle> LoopEngine::Submit(QueryJob job, QueryDone done) {
  auto call = std::make_shared<Call>(*this, std::move(job), std::move(done));
  const absl::Time deadline = call->job_.deadline;
  const pool::ConnectionPool::WaitId id = pool_.Acquire(
      deadline, [call](absl::StatusOr<pool::Lease> lease) {
        call->OnLease(std::move(lease));
      });
  call->wait_id_.store(id);
  // A cancel that came before the id was known could not end the wait.
  if (call->cancelled_.load() && id != 0) pool_.CancelWait(id);
  return call;
}

pool::PoolStats LoopEngine::Snapshot() const { return pool_.Snapshot(); }

bool LoopEngine::Serving() const { return pool_.Serving(); }

}  // namespace dbpool::engine
