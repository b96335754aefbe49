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
#include "server/db/engine_counters.h"
#include "server/db/pg_connection.h"

namespace dbpool::engine {
namespace {

// A statement whose own time in the backend is above this gains little
// from sharing a round trip and would hold up whoever queues behind it.
constexpr absl::Duration kShareBelow = absl::Milliseconds(2);
// SQL texts whose profile the engine keeps.
constexpr size_t kProfiledStatements = 10000;

void RecordDepth(int depth) {
  db::EngineCounters& c = db::Counters();
  db::Bump(c.pipeline_depth[std::min<size_t>(static_cast<size_t>(depth),
                                             c.pipeline_depth.size() - 1)]);
  c.pipeline_in_flight.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

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
  // May join another caller's connection.
  bool shareable_ = false;
  absl::Time submitted_;
  // In the pool's queue: a pipelined connection with room may take it out.
  std::atomic<bool> waiting_{false};
  std::atomic<bool> cancelled_{false};
  std::atomic<pool::ConnectionPool::WaitId> wait_id_{0};
  // Set once the call is on its way to a loop: only then can that loop
  // take a cancel for it.
  std::atomic<Loop*> loop_{nullptr};

  // Owned by the loop thread once the call is posted to it.
  Conn* conn_ = nullptr;
  // The loop has the call among its connection's calls.
  bool running_here_ = false;
  std::unique_ptr<db::AsyncQuery> query_;
  v1::QueryResponse response_;
  absl::Time started_;
  absl::Duration acquire_wait_;
  int queue_depth_on_arrival_ = 0;
};

// One leased connection and the calls on it.
class LoopEngine::Conn {
 public:
  Conn(Loop& loop, pool::Lease lease, const db::QueryLimits& limits)
      : loop_(loop),
        lease_(std::move(lease)),
        pipeline_(static_cast<db::PgConnection&>(lease_.connection()),
                  limits.cancel_grace) {}

  Loop& loop_;
  pool::Lease lease_;
  db::Pipeline pipeline_;
  // Calls sent on it whose statements have not finished; loop thread.
  std::vector<std::shared_ptr<Call>> calls_;
  // calls_.size(), for joiners deciding whether the loop needs waking.
  std::atomic<int> running_{0};
  int registered_fd_ = -1;
  bool watching_writes_ = false;
  // The lease went back to the pool; the object goes at the end of the
  // loop's turn, since events of this turn may still point at it.
  bool released_ = false;
  // The loop has it among its connections: before that, its events wait.
  std::atomic<bool> adopted_{false};

  // Guarded by the engine's share_mu_: calls on it or posted to it, and
  // whether joiners may pick it.
  int members_ = 1;
  bool listed_ = false;
};

class LoopEngine::Loop {
 public:
  Loop(LoopEngine& engine, int index);
  ~Loop();

  // On this loop's thread: runs `call` on `conn`, a fresh lease, from the
  // next turn of the loop.
  void Post(std::shared_ptr<Call> call, std::unique_ptr<Conn> conn);
  // From any other thread: sends `call`'s statement at once, there, and
  // leaves the rest to the loop, which is woken only if it would otherwise
  // sleep past the statement's deadline. A statement then costs the loop
  // no wake-up of its own: the reply is what wakes it.
  void StartHere(std::shared_ptr<Call> call, std::unique_ptr<Conn> conn);
  // From any thread: `call` joins `conn`, one of this loop's. The loop is
  // woken only if nothing else is in flight on `conn` or the deadline comes
  // first: otherwise the next reply wakes it, and the joiners that came
  // meanwhile go out together.
  void PostJoin(std::shared_ptr<Call> call);
  // From any thread.
  void PostCancel(std::shared_ptr<Call> call);
  // The loop ends once nothing is running or posted.
  void Stop();

  LoopEngine& engine() const { return engine_; }
  // The loop whose thread this is; null on other threads.
  static Loop* Current() { return current_; }

 private:
  struct Fresh {
    std::shared_ptr<Call> call;
    std::unique_ptr<Conn> conn;
  };

  void Run();
  // Takes what other threads handed over; runs on the loop's thread.
  void TakePosted(absl::Time now);
  // Makes and starts the call's AsyncQuery on its connection.
  void Begin(Call& call, absl::Time now);
  // Makes `call` one of `conn`'s, starting its statement unless that was
  // done already.
  void Place(std::shared_ptr<Call> call, Conn& conn, absl::Time now);
  void Adopt(Fresh fresh, absl::Time now);
  void StartJoin(std::shared_ptr<Call> call, absl::Time now);
  // Hands the finished calls of `conn` their outcome, fills its room with
  // queued callers, and gives the connection back to the pool once nothing
  // is left on it.
  void Collect(Conn& conn);
  // Takes the finished calls off `conn`, outcome and all.
  void Finish(Conn& conn, absl::Time now,
              std::vector<std::pair<std::shared_ptr<Call>, QueryResult>>& finished);
  void Watch(Conn& conn);
  void Release(Conn& conn);
  // Drops the connections released since the last call.
  void Sweep();
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
  std::vector<Fresh> posted_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Call>> joins_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Call>> cancels_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // Loop thread only.
  std::vector<std::unique_ptr<Conn>> conns_;
  std::thread thread_;
  static thread_local Loop* current_;
};

thread_local LoopEngine::Loop* LoopEngine::Loop::current_ = nullptr;

void LoopEngine::Call::Cancel() {
  // Sequentially consistent with OnLease and TryJoin: either this sees the
  // loop, or the loop sees cancelled_ when it starts the statement.
  if (cancelled_.exchange(true)) return;
  if (const auto id = wait_id_.load(); id != 0) engine_.pool_.CancelWait(id);
  if (Loop* loop = loop_.load()) loop->PostCancel(shared_from_this());
}

void LoopEngine::Call::OnLease(absl::StatusOr<pool::Lease> lease) {
  waiting_.store(false);
  if (!lease.ok()) {
    QueryResult result;
    result.status = lease.status();
    std::move(done_)(std::move(result));
    return;
  }
  acquire_wait_ = lease->wait();
  queue_depth_on_arrival_ = lease->queue_depth_on_arrival();
  Loop& loop = engine_.PickLoop();
  auto conn = std::make_unique<Conn>(loop, *std::move(lease), engine_.options_.limits);
  if (Loop::Current() == &loop) {
    loop.Post(shared_from_this(), std::move(conn));
  } else {
    loop.StartHere(shared_from_this(), std::move(conn));
  }
  // Only now: a cancel the loop took before the call would find nothing to
  // stop, and the call reads cancelled_ once it is the loop's.
  loop_.store(&loop);
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

void LoopEngine::Loop::Post(std::shared_ptr<Call> call, std::unique_ptr<Conn> conn) {
  std::lock_guard<std::mutex> lock(mu_);
  posted_.push_back(Fresh{std::move(call), std::move(conn)});
}

void LoopEngine::Loop::StartHere(std::shared_ptr<Call> call,
                                 std::unique_ptr<Conn> conn) {
  Call& c = *call;
  Conn& n = *conn;
  const absl::Time now = absl::Now();
  c.conn_ = &n;
  Begin(c, now);
  const bool done = c.query_->done();
  const int fd = done ? -1 : n.pipeline_.socket();
  const bool writes = fd >= 0 && n.pipeline_.WantsWrite();
  if (fd >= 0) {
    n.registered_fd_ = fd;
    n.watching_writes_ = writes;
  }
  const absl::Time timer = done ? absl::InfinitePast() : c.query_->Timer();
  // Registered before it is posted, while this thread still owns the
  // connection: once posted, the loop may finish and release it. An event
  // that comes before the loop has adopted the connection is left for the
  // next turn (the socket stays readable). Should the registration fail,
  // the statement's deadline still ends it.
  if (fd >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN | (writes ? static_cast<uint32_t>(EPOLLOUT) : 0u);
    ev.data.ptr = &n;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted_.push_back(Fresh{std::move(call), std::move(conn)});
  }
  if (sleeping_.load() && absl::ToUnixNanos(timer) < wakes_at_.load()) Wake();
}

void LoopEngine::Loop::PostJoin(std::shared_ptr<Call> call) {
  const Conn& conn = *call->conn_;
  const int64_t deadline = absl::ToUnixNanos(call->job_.deadline);
  {
    std::lock_guard<std::mutex> lock(mu_);
    joins_.push_back(std::move(call));
  }
  // The loop checks for posted work after it has set sleeping_ and before
  // it sleeps; a conn whose last statement finished before that check
  // sees this join there.
  if (sleeping_.load() && (conn.running_.load() == 0 || deadline < wakes_at_.load())) {
    Wake();
  }
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
    Sweep();
    bool stopping = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping = stopping_;
    }
    if (stopping && conns_.empty()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (posted_.empty() && joins_.empty() && cancels_.empty()) return;
      continue;
    }
    // Deadlines: a loop runs at most as many statements as its connections
    // carry, so a scan is cheaper than a timer heap.
    absl::Time next = absl::InfiniteFuture();
    for (size_t i = 0; i < conns_.size(); ++i) {
      Conn& conn = *conns_[i];
      if (conn.released_) continue;
      bool fired = false;
      for (const std::shared_ptr<Call>& call : conn.calls_) {
        if (call->query_->Timer() <= now) {
          call->query_->OnTimer(now);
          fired = true;
        }
      }
      if (conn.pipeline_.Timer() <= now) {
        conn.pipeline_.OnTimer(now);
        fired = true;
      }
      if (fired) Collect(conn);
      if (conn.released_) continue;
      for (const std::shared_ptr<Call>& call : conn.calls_) {
        next = std::min(next, call->query_->Timer());
      }
      next = std::min(next, conn.pipeline_.Timer());
    }
    Sweep();
    int timeout_ms = -1;
    if (next != absl::InfiniteFuture()) {
      timeout_ms = static_cast<int>(std::clamp<int64_t>(
          absl::ToInt64Milliseconds(absl::Ceil(next - now, absl::Milliseconds(1))),
          0, 1000));
    }
    wakes_at_.store(timeout_ms < 0 ? std::numeric_limits<int64_t>::max()
                                   : absl::ToUnixNanos(now + absl::Milliseconds(timeout_ms)));
    sleeping_.store(true);
    {
      // Whatever was posted before sleeping_ was set did not wake us.
      std::lock_guard<std::mutex> lock(mu_);
      if (!posted_.empty() || !joins_.empty() || !cancels_.empty() ||
          stopping_ != stopping) {
        timeout_ms = 0;
      }
    }
    const int n = epoll_wait(epoll_fd_, events, 64, timeout_ms);
    sleeping_.store(false);
    now = absl::Now();
    // A reply may belong to a statement started on another thread since.
    if (n > 0) TakePosted(now);
    for (int i = 0; i < n; ++i) {
      auto* conn = static_cast<Conn*>(events[i].data.ptr);
      if (conn == nullptr) {
        uint64_t count = 0;
        [[maybe_unused]] ssize_t r = read(wake_fd_, &count, sizeof count);
        continue;
      }
      if (!conn->adopted_ || conn->released_) continue;
      conn->pipeline_.OnSocket(now);
      Collect(*conn);
      if (!conn->released_) Watch(*conn);
    }
  }
}

void LoopEngine::Loop::Sweep() {
  // Between turns no event refers to a released connection any more.
  conns_.erase(std::remove_if(conns_.begin(), conns_.end(),
                              [](const std::unique_ptr<Conn>& c) { return c->released_; }),
               conns_.end());
}

void LoopEngine::Loop::TakePosted(absl::Time now) {
  std::vector<Fresh> posted;
  std::vector<std::shared_ptr<Call>> joins;
  std::vector<std::shared_ptr<Call>> cancels;
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted.swap(posted_);
    joins.swap(joins_);
    cancels.swap(cancels_);
  }
  // Fresh connections first: a joiner may be headed for one of them.
  for (Fresh& fresh : posted) Adopt(std::move(fresh), now);
  for (auto& call : joins) StartJoin(std::move(call), now);
  for (auto& call : cancels) {
    // A call that finished meanwhile, went elsewhere, or has not reached
    // its connection yet (it reads cancelled_ when it does) is left alone.
    if (call->loop_.load() != this || !call->running_here_) continue;
    call->query_->Cancel(now);
    Collect(*call->conn_);
  }
}

void LoopEngine::Loop::Begin(Call& c, absl::Time now) {
  c.started_ = now;
  absl::Time deadline = c.job_.deadline;
  if (c.job_.timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, now + c.job_.timeout);
  }
  Conn& conn = *c.conn_;
  c.query_ = std::make_unique<db::AsyncQuery>(conn.pipeline_, c.job_.request,
                                              c.job_.params, c.job_.read_only,
                                              deadline, engine_.options_.limits,
                                              &c.response_);
  RecordDepth(conn.running_.fetch_add(1) + 1);
  c.query_->Start(now);
}

void LoopEngine::Loop::Place(std::shared_ptr<Call> call, Conn& conn, absl::Time now) {
  Call& c = *call;
  conn.calls_.push_back(std::move(call));
  c.running_here_ = true;
  // Started already when the thread that got the connection sent it.
  if (c.query_ == nullptr) {
    c.conn_ = &conn;
    Begin(c, now);
  }
  // A cancel that came before the call was the loop's found nothing to stop.
  if (c.cancelled_.load()) c.query_->Cancel(now);
}

void LoopEngine::Loop::Adopt(Fresh fresh, absl::Time now) {
  Conn& conn = *fresh.conn;
  Call& call = *fresh.call;
  conns_.push_back(std::move(fresh.conn));
  conn.adopted_.store(true, std::memory_order_relaxed);
  Place(std::move(fresh.call), conn, now);
  if (call.shareable_ && engine_.options_.pipeline_depth > 1 &&
      conn.pipeline_.accepting()) {
    engine_.List(conn);
  }
  Collect(conn);
  // Registers the socket, unless the thread that started the statement
  // did; then only output that did not fit the socket at once changes it.
  if (!conn.released_) Watch(conn);
}

void LoopEngine::Loop::StartJoin(std::shared_ptr<Call> call, absl::Time now) {
  Conn& conn = *call->conn_;
  if (conn.released_ || !conn.pipeline_.accepting()) {
    // The connection stopped taking statements after this call picked it.
    call->conn_ = nullptr;
    call->loop_.store(nullptr);
    engine_.Leave(conn);
    if (!conn.released_) Collect(conn);
    engine_.Acquire(std::move(call));
    return;
  }
  Place(std::move(call), conn, now);
  Collect(conn);
  if (!conn.released_) Watch(conn);
}

void LoopEngine::Loop::Watch(Conn& conn) {
  const int fd = conn.pipeline_.socket();
  if (fd < 0) return;
  const bool writes = conn.pipeline_.WantsWrite();
  if (fd == conn.registered_fd_ && writes == conn.watching_writes_) return;
  epoll_event ev{};
  ev.events = EPOLLIN | (writes ? static_cast<uint32_t>(EPOLLOUT) : 0u);
  ev.data.ptr = &conn;
  if (conn.registered_fd_ < 0) {
    if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      // No way to hear the reply: the deadlines (timers) end the calls.
      return;
    }
    conn.registered_fd_ = fd;
  } else {
    epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
  }
  conn.watching_writes_ = writes;
}

void LoopEngine::Loop::Collect(Conn& conn) {
  std::vector<std::pair<std::shared_ptr<Call>, QueryResult>> finished;
  const absl::Time now = absl::Now();
  for (;;) {
    Finish(conn, now, finished);
    // Room on a shared connection goes to callers queued for one of their
    // own, oldest first: in a closed loop the queue never empties, and
    // without this nothing would ever share.
    std::vector<std::shared_ptr<Call>> pulled;
    if (conn.pipeline_.accepting()) pulled = engine_.PullWaiters(conn);
    if (pulled.empty()) break;
    for (std::shared_ptr<Call>& call : pulled) {
      Call& c = *call;
      c.acquire_wait_ = now - c.submitted_;
      Place(std::move(call), conn, now);
      c.loop_.store(this);
    }
  }
  if (!conn.pipeline_.accepting()) engine_.Unlist(conn);
  // Back to the pool before the replies, so the next waiter starts sooner
  // (on this loop, when the connection goes straight to a waiter).
  if (conn.pipeline_.Idle() && engine_.Vacate(conn)) Release(conn);
  for (auto& [call, result] : finished) std::move(call->done_)(std::move(result));
}

void LoopEngine::Loop::Finish(
    Conn& conn, absl::Time now,
    std::vector<std::pair<std::shared_ptr<Call>, QueryResult>>& finished) {
  for (db::AsyncQuery* query : conn.pipeline_.TakeFinished()) {
    auto it = std::find_if(conn.calls_.begin(), conn.calls_.end(),
                           [query](const std::shared_ptr<Call>& c) {
                             return c->query_.get() == query;
                           });
    if (it == conn.calls_.end()) continue;
    std::shared_ptr<Call> call = std::move(*it);
    conn.calls_.erase(it);
    conn.running_.fetch_sub(1);
    db::Counters().pipeline_in_flight.fetch_sub(1, std::memory_order_relaxed);
    QueryResult result;
    result.status = query->status();
    if (result.status.ok()) result.response = std::move(call->response_);
    result.timings = QueryTimings{call->acquire_wait_, call->queue_depth_on_arrival_,
                                  now - call->started_};
    if (query->service_time() != absl::InfiniteDuration()) {
      engine_.profiles_.Record(call->job_.request.sql(), query->service_time());
    }
    call->query_.reset();
    call->conn_ = nullptr;
    call->running_here_ = false;
    engine_.Leave(conn);
    finished.emplace_back(std::move(call), std::move(result));
  }
}

void LoopEngine::Loop::Release(Conn& conn) {
  // libpq forgets its socket when it closes it, and a closed socket has
  // left the epoll set already; its number may belong to another
  // connection by now.
  if (conn.registered_fd_ >= 0 && conn.pipeline_.socket() == conn.registered_fd_) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, conn.registered_fd_, nullptr);
  }
  conn.registered_fd_ = -1;
  conn.released_ = true;
  if (conn.pipeline_.broken()) conn.lease_.MarkBroken();
  conn.lease_ = pool::Lease();
}

LoopEngine::LoopEngine(pool::ConnectionPool& pool, LoopEngineOptions options)
    : pool_(pool),
      options_(std::move(options)),
      profiles_(kShareBelow, kProfiledStatements) {
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

void LoopEngine::List(Conn& conn) {
  std::lock_guard<std::mutex> lock(share_mu_);
  if (conn.listed_) return;
  conn.listed_ = true;
  shareable_.push_back(&conn);
}

void LoopEngine::Unlist(Conn& conn) {
  std::lock_guard<std::mutex> lock(share_mu_);
  if (!conn.listed_) return;
  conn.listed_ = false;
  shareable_.erase(std::find(shareable_.begin(), shareable_.end(), &conn));
}

void LoopEngine::Leave(Conn& conn) {
  std::lock_guard<std::mutex> lock(share_mu_);
  --conn.members_;
}

bool LoopEngine::Vacate(Conn& conn) {
  std::lock_guard<std::mutex> lock(share_mu_);
  if (conn.members_ > 0) return false;
  if (conn.listed_) {
    conn.listed_ = false;
    shareable_.erase(std::find(shareable_.begin(), shareable_.end(), &conn));
  }
  return true;
}

std::vector<std::shared_ptr<LoopEngine::Call>> LoopEngine::PullWaiters(Conn& conn) {
  std::vector<std::shared_ptr<Call>> pulled;
  if (options_.pipeline_depth <= 1) return pulled;
  std::lock_guard<std::mutex> lock(share_mu_);
  if (!conn.listed_) return pulled;
  while (conn.members_ < options_.pipeline_depth && !share_waiters_.empty()) {
    std::shared_ptr<Call> call = std::move(share_waiters_.front());
    share_waiters_.pop_front();
    // Out of the pool's queue, or it got a connection (or gave up) first.
    if (!call->waiting_.load() || !pool_.Withdraw(call->wait_id_.load())) continue;
    call->waiting_.store(false);
    ++conn.members_;
    call->conn_ = &conn;
    pulled.push_back(std::move(call));
  }
  return pulled;
}

void LoopEngine::AddShareWaiter(std::shared_ptr<Call> call) {
  std::lock_guard<std::mutex> lock(share_mu_);
  // Callers served meanwhile leave from the front, in about the order the
  // pool serves them, which keeps the list as short as the queue.
  while (!share_waiters_.empty() && !share_waiters_.front()->waiting_.load()) {
    share_waiters_.pop_front();
  }
  share_waiters_.push_back(std::move(call));
}

bool LoopEngine::TryJoin(const std::shared_ptr<Call>& call) {
  Conn* best = nullptr;
  {
    std::lock_guard<std::mutex> lock(share_mu_);
    for (Conn* conn : shareable_) {
      if (conn->members_ < options_.pipeline_depth &&
          (best == nullptr || conn->members_ < best->members_)) {
        best = conn;
      }
    }
    if (best == nullptr) return false;
    ++best->members_;
    // Set under the lock: the connection cannot be released while this
    // call counts as one of its members.
    call->conn_ = best;
  }
  call->loop_.store(&best->loop_);
  best->loop_.PostJoin(call);
  return true;
}

void LoopEngine::Acquire(std::shared_ptr<Call> call) {
  const absl::Time deadline = call->job_.deadline;
  Call* raw = call.get();
  raw->waiting_.store(true);
  const pool::ConnectionPool::WaitId id = pool_.Acquire(
      deadline, [call = std::move(call)](absl::StatusOr<pool::Lease> lease) {
        call->OnLease(std::move(lease));
      });
  raw->wait_id_.store(id);
  // A cancel that came before the id was known could not end the wait.
  if (raw->cancelled_.load() && id != 0) pool_.CancelWait(id);
}

std::shared_ptr<QueryHandle> LoopEngine::Submit(QueryJob job, QueryDone done) {
  auto call = std::make_shared<Call>(*this, std::move(job), std::move(done));
  call->submitted_ = absl::Now();
  if (options_.pipeline_depth > 1 && profiles_.MayShare(call->job_.request.sql())) {
    call->shareable_ = true;
    if (pool_.Saturated() && TryJoin(call)) return call;
  }
  Acquire(call);
  if (call->shareable_ && call->wait_id_.load() != 0) AddShareWaiter(call);
  return call;
}

pool::PoolStats LoopEngine::Snapshot() const { return pool_.Snapshot(); }

bool LoopEngine::Serving() const { return pool_.Serving(); }

}  // namespace dbpool::engine
