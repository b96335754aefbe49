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
#include <variant>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/db/async_query.h"
#include "server/db/engine_counters.h"
#include "server/db/pg_connection.h"
#include "server/db/session_effects.h"
#include "server/db/sql_state.h"

namespace dbpool::engine {
namespace {

// A statement whose own time in the backend is above this gains little
// from sharing a round trip and would hold up whoever queues behind it.
constexpr absl::Duration kShareBelow = absl::Milliseconds(2);
// SQL texts whose profile the engine keeps.
constexpr size_t kProfiledStatements = 10000;

// A statement refused by a server that turned read-only goes again at most
// this often: each refusal takes one more connection to that server out of
// use (one that was busy when the others were closed), and the call's
// deadline still bounds it.
constexpr int kFenceRetries = 3;

// Bounds a COMMIT or ROLLBACK the engine sends for a transaction.
absl::Time EndDeadline(const db::QueryLimits& limits) {
  return absl::Now() + limits.statement_timeout;
}

// `status` with `suffix` on its message, payloads and all.
absl::Status WithSuffix(const absl::Status& status, absl::string_view suffix) {
  absl::Status out(status.code(), absl::StrCat(status.message(), suffix));
  status.ForEachPayload([&out](absl::string_view url, const absl::Cord& payload) {
    out.SetPayload(url, payload);
  });
  return out;
}

// The handle of a call answered at once (refused before it ran).
class Answered final : public StreamHandle {
 public:
  void Cancel() override {}
  void Next() override {}
};

void CountBatch(size_t statements) {
  db::EngineCounters& c = db::Counters();
  size_t bucket = 0;
  while (bucket < db::kBatchSizeBounds.size() && statements > db::kBatchSizeBounds[bucket]) {
    ++bucket;
  }
  db::Bump(c.batch_sizes[bucket]);
  c.batch_statements.fetch_add(statements, std::memory_order_relaxed);
}

void RecordDepth(int depth) {
  db::EngineCounters& c = db::Counters();
  db::Bump(c.pipeline_depth[std::min<size_t>(static_cast<size_t>(depth),
                                             c.pipeline_depth.size() - 1)]);
  c.pipeline_in_flight.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

class LoopEngine::Call final : public StreamHandle,
                               public db::ChunkSink,
                               public std::enable_shared_from_this<Call> {
 public:
  enum class Kind {
    kQuery,
    // The BEGIN of an interactive transaction.
    kBegin,
    // A statement (or batch) inside one.
    kInTransaction,
    // Its COMMIT or ROLLBACK.
    kEnd,
  };
  using Done = std::variant<QueryDone, BeginDone, EndDone>;

  Call(LoopEngine& engine, QueryJob job, Kind kind, Done done)
      : engine_(engine), job_(std::move(job)), kind_(kind), done_(std::move(done)) {
    responses_.resize(job_.statements.size());
  }

  void Cancel() override;
  void Next() override;
  // A chunk of a streamed result, on the loop's thread.
  void OnChunk(v1::QueryResponse chunk) override { sink_->OnChunk(std::move(chunk)); }
  void OnLease(absl::StatusOr<pool::Lease> lease);
  // Hands the caller its outcome.
  void Deliver(QueryResult result);

  LoopEngine& engine_;
  QueryJob job_;
  const Kind kind_;
  Done done_;
  // Streams its result there (StreamQuery).
  StreamSink* sink_ = nullptr;
  // Times sent again after a server that turned read-only refused it.
  int fence_retries_ = 0;
  // kBegin, kInTransaction and kEnd: the transaction.
  std::string tx_id_;
  // kBegin: when it expires (set once it is open).
  absl::Time tx_expires_;
  // kEnd: what it does and how the transaction will have ended.
  TransactionEnd end_ = TransactionEnd::kRollback;
  TransactionOutcome outcome_ = TransactionOutcome::kRolledBack;
  std::string why_;
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
  std::vector<v1::QueryResponse> responses_;
  absl::Time started_;
  absl::Duration acquire_wait_;
  int queue_depth_on_arrival_ = 0;
};

// One leased connection and the calls on it.
class LoopEngine::Conn final : public Pinned {
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
  bool watching_reads_ = true;
  // The lease went back to the pool; the object goes at the end of the
  // loop's turn, since events of this turn may still point at it.
  bool released_ = false;
  // The loop has it among its connections: before that, its events wait.
  std::atomic<bool> adopted_{false};

  // Guarded by the engine's share_mu_: calls on it or posted to it (and
  // the transaction pinning it, which counts as one), and whether joiners
  // may pick it.
  int members_ = 1;
  bool listed_ = false;

  // Its server turned read-only under it (LeaveIfFenced); loop thread.
  bool fenced_ = false;
  // The transaction pinning it; empty when none. Set before the loop
  // adopts it, then loop thread only.
  std::string tx_id_;
  // What the transaction's statements may have left in the session.
  db::SessionEffects tx_effects_ = db::kNoEffect;
  // An end the loop starts for the transaction (after a serialization
  // failure, say) once the statement that called for it is collected.
  std::shared_ptr<Call> pending_end_;
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
  // From any thread: the reader of `call`'s stream is ready for more.
  void PostResume(std::shared_ptr<Call> call);
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
  // After a transaction's BEGIN, statement or end: keeps the table and
  // the connection's hold in step with what happened; may change the
  // caller's status.
  void OnBegun(Call& call, Conn& conn, absl::Status& status, absl::Time now);
  void OnTransactionStatement(Call& call, const db::AsyncQuery& query, Conn& conn,
                              absl::Status& status, absl::Time now);
  void OnEnded(Call& call, Conn& conn, QueryResult& result);
  // Whether `conn`'s server has turned read-only under a connection string
  // that wants a writable one; the first time, closes the idle
  // connections to it and takes `conn` out of use.
  bool LeaveIfFenced(Conn& conn);
  // The transaction on `conn` is over without an end of its own.
  void DropTransaction(Conn& conn, TransactionOutcome outcome, std::string why);
  // Rolls back the transaction on `conn` once the current call is
  // collected.
  void EndSoon(Conn& conn, TransactionOutcome outcome, std::string why);
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
  std::vector<std::shared_ptr<Call>> resumes_ ABSL_GUARDED_BY(mu_);
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

void LoopEngine::Call::Deliver(QueryResult result) {
  if (sink_ != nullptr) {
    sink_->OnDone(std::move(result));
    return;
  }
  switch (kind_) {
    case Kind::kQuery:
    case Kind::kInTransaction:
      std::move(std::get<QueryDone>(done_))(std::move(result));
      return;
    case Kind::kBegin:
      if (result.status.ok()) {
        std::move(std::get<BeginDone>(done_))(BegunTransaction{tx_id_, tx_expires_});
      } else {
        std::move(std::get<BeginDone>(done_))(std::move(result.status));
      }
      return;
    case Kind::kEnd:
      if (result.status.ok()) {
        std::move(std::get<EndDone>(done_))(EndedTransaction{});
      } else {
        std::move(std::get<EndDone>(done_))(std::move(result.status));
      }
      return;
  }
}

void LoopEngine::Call::Next() {
  if (Loop* loop = loop_.load()) loop->PostResume(shared_from_this());
}

void LoopEngine::Call::OnLease(absl::StatusOr<pool::Lease> lease) {
  waiting_.store(false);
  if (!lease.ok()) {
    if (kind_ == Kind::kBegin) engine_.transactions_.Unreserve(tx_id_);
    QueryResult result;
    result.status = lease.status();
    Deliver(std::move(result));
    return;
  }
  acquire_wait_ = lease->wait();
  queue_depth_on_arrival_ = lease->queue_depth_on_arrival();
  Loop& loop = engine_.PickLoop();
  auto conn = std::make_unique<Conn>(loop, *std::move(lease), engine_.options_.limits);
  if (kind_ == Kind::kBegin) {
    // The transaction holds the connection from the start: when the BEGIN
    // is done, the connection stays.
    conn->tx_id_ = tx_id_;
    conn->members_ = 2;
  }
  // A stream's reader asks for more (Next) from the first chunk on, which
  // the loop may send before this thread would get past the start: the
  // loop must be known by then. A cancel posted this early is harmless:
  // the loop reads cancelled_ when it places the call.
  if (sink_ != nullptr) loop_.store(&loop);
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

void LoopEngine::Loop::PostResume(std::shared_ptr<Call> call) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    resumes_.push_back(std::move(call));
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
      if (posted_.empty() && joins_.empty() && cancels_.empty() && resumes_.empty()) return;
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
      if (fired) {
        Collect(conn);
        if (!conn.released_) Watch(conn);
      }
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
      if (!posted_.empty() || !joins_.empty() || !cancels_.empty() || !resumes_.empty() ||
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
  std::vector<std::shared_ptr<Call>> resumes;
  {
    std::lock_guard<std::mutex> lock(mu_);
    posted.swap(posted_);
    joins.swap(joins_);
    cancels.swap(cancels_);
    resumes.swap(resumes_);
  }
  // Fresh connections first: a joiner may be headed for one of them.
  for (Fresh& fresh : posted) Adopt(std::move(fresh), now);
  for (auto& call : joins) StartJoin(std::move(call), now);
  for (auto& call : cancels) {
    // A call that finished meanwhile, went elsewhere, or has not reached
    // its connection yet (it reads cancelled_ when it does) is left alone.
    if (call->loop_.load() != this || !call->running_here_) continue;
    Conn& conn = *call->conn_;
    call->query_->Cancel(now);
    Collect(conn);
    // A held stream reads again to drain what the server still sends.
    if (!conn.released_) Watch(conn);
  }
  for (auto& call : resumes) {
    if (call->loop_.load() != this || !call->running_here_) continue;
    Conn& conn = *call->conn_;
    call->query_->Resume(now);
    Collect(conn);
    if (!conn.released_) Watch(conn);
  }
}

void LoopEngine::Loop::Begin(Call& c, absl::Time now) {
  c.started_ = now;
  absl::Time deadline = c.job_.deadline;
  if (c.job_.timeout != absl::InfiniteDuration()) {
    deadline = std::min(deadline, now + c.job_.timeout);
  }
  Conn& conn = *c.conn_;
  std::vector<db::StatementRef> refs;
  refs.reserve(c.job_.statements.size());
  for (size_t i = 0; i < c.job_.statements.size(); ++i) {
    refs.push_back(db::StatementRef{&c.job_.statements[i].request,
                                    &c.job_.statements[i].params, &c.responses_[i]});
  }
  db::QueryFrame frame;
  switch (c.kind_) {
    case Call::Kind::kQuery:
      frame.framing = c.job_.batch ? db::Framing::kBatch : db::Framing::kOwn;
      frame.read_only = c.job_.read_only;
      break;
    case Call::Kind::kBegin:
      frame.framing = db::Framing::kBeginTransaction;
      break;
    case Call::Kind::kInTransaction:
      frame.framing = db::Framing::kInTransaction;
      break;
    case Call::Kind::kEnd:
      frame.framing = db::Framing::kEndTransaction;
      frame.carried = conn.tx_effects_;
      break;
  }
  c.query_ = std::make_unique<db::AsyncQuery>(conn.pipeline_, std::move(refs), frame,
                                              deadline, engine_.options_.limits,
                                              c.sink_ != nullptr ? &c : nullptr);
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
  const bool pinned = call->kind_ == Call::Kind::kInTransaction ||
                      call->kind_ == Call::Kind::kEnd;
  if (pinned && (conn.pipeline_.broken() || conn.tx_id_.empty())) {
    // The transaction's connection failed while it idled.
    QueryResult result;
    result.status = db::DbpoolError(
        absl::StatusCode::kAborted, kTransactionAborted,
        "the transaction was rolled back: its connection to the database "
        "was lost; begin a new one and retry");
    DropTransaction(conn, TransactionOutcome::kAborted,
                    "its connection to the database was lost");
    call->conn_ = nullptr;
    call->loop_.store(nullptr);
    engine_.Leave(conn);
    Collect(conn);
    call->Deliver(std::move(result));
    return;
  }
  if (pinned) {
    // A pinned connection takes its transaction's statements whatever its
    // pipeline says about joiners (a cancelled statement closes it to them).
    Place(std::move(call), conn, now);
    Collect(conn);
    if (!conn.released_) Watch(conn);
    return;
  }
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
  // A held stream leaves its socket unread: watching it would wake the
  // loop for nothing.
  const bool reads = conn.pipeline_.WantsRead();
  if (fd == conn.registered_fd_ && writes == conn.watching_writes_ &&
      reads == conn.watching_reads_) {
    return;
  }
  epoll_event ev{};
  ev.events = (reads ? static_cast<uint32_t>(EPOLLIN) : 0u) |
              (writes ? static_cast<uint32_t>(EPOLLOUT) : 0u);
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
  conn.watching_reads_ = reads;
}

void LoopEngine::Loop::Collect(Conn& conn) {
  std::vector<std::pair<std::shared_ptr<Call>, QueryResult>> finished;
  const absl::Time now = absl::Now();
  for (;;) {
    Finish(conn, now, finished);
    if (conn.pending_end_ != nullptr) {
      Place(std::move(conn.pending_end_), conn, now);
      continue;
    }
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
  // A transaction idling on a connection that failed (the server ended
  // the session) is over; its next call is told so.
  if (!conn.tx_id_.empty() && conn.calls_.empty() && conn.pipeline_.broken()) {
    DropTransaction(conn, TransactionOutcome::kAborted,
                    "its connection to the database was lost");
  }
  if (!conn.pipeline_.accepting()) engine_.Unlist(conn);
  // Back to the pool before the replies, so the next waiter starts sooner
  // (on this loop, when the connection goes straight to a waiter).
  if (conn.pipeline_.Idle() && engine_.Vacate(conn)) Release(conn);
  for (auto& [call, result] : finished) call->Deliver(std::move(result));
}

void LoopEngine::Loop::DropTransaction(Conn& conn, TransactionOutcome outcome,
                                       std::string why) {
  if (conn.tx_id_.empty()) return;
  engine_.transactions_.Close(conn.tx_id_, outcome, std::move(why));
  db::Bump(db::Counters().transactions_ended[static_cast<int>(outcome)]);
  conn.tx_id_.clear();
  // The transaction's own hold on the connection.
  engine_.Leave(conn);
}

void LoopEngine::Loop::EndSoon(Conn& conn, TransactionOutcome outcome, std::string why) {
  engine_.transactions_.MarkEnding(conn.tx_id_, outcome, why);
  conn.pending_end_ =
      engine_.MakeEnd(conn.tx_id_, conn, TransactionEnd::kRollback, outcome, std::move(why),
                      [](absl::StatusOr<EndedTransaction>) {});
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
    if (result.status.ok()) result.responses = std::move(call->responses_);
    result.timings = QueryTimings{call->acquire_wait_, call->queue_depth_on_arrival_,
                                  now - call->started_};
    const bool fenced = LeaveIfFenced(conn);
    switch (call->kind_) {
      case Call::Kind::kQuery:
        if (fenced && !call->job_.read_only && call->fence_retries_ < kFenceRetries &&
            call->sink_ == nullptr && db::SqlStateOf(result.status) == "25006") {
          // Refused by a server that turned read-only under us. An
          // autocommit statement that fails leaves nothing behind, so it
          // goes again on a connection the pool opens through the
          // connection string (the writable host).
          ++call->fence_retries_;
          call->query_.reset();
          call->conn_ = nullptr;
          call->running_here_ = false;
          call->loop_.store(nullptr);
          call->responses_.assign(call->job_.statements.size(), v1::QueryResponse());
          engine_.Leave(conn);
          engine_.Acquire(std::move(call));
          continue;
        }
        if (!call->job_.batch && query->service_time() != absl::InfiniteDuration()) {
          engine_.profiles_.Record(call->job_.statements[0].request.sql(),
                                   query->service_time());
        }
        break;
      case Call::Kind::kBegin:
        OnBegun(*call, conn, result.status, now);
        break;
      case Call::Kind::kInTransaction:
        OnTransactionStatement(*call, *query, conn, result.status, now);
        break;
      case Call::Kind::kEnd:
        OnEnded(*call, conn, result);
        break;
    }
    call->query_.reset();
    call->conn_ = nullptr;
    call->running_here_ = false;
    engine_.Leave(conn);
    finished.emplace_back(std::move(call), std::move(result));
  }
}

bool LoopEngine::Loop::LeaveIfFenced(Conn& conn) {
  if (conn.fenced_) return true;
  db::PgConnection& pg = conn.pipeline_.connection();
  if (!pg.FencedSinceOpen()) return false;
  // The server turned read-only under us (fenced or demoted): this
  // connection and every idle one to it go, and the pool reconnects
  // through the connection string, which finds the writable host.
  conn.fenced_ = true;
  conn.pipeline_.MarkBroken();
  conn.pipeline_.CloseToJoins();
  const std::string endpoint = pg.Endpoint();
  engine_.pool_.CloseIdleIf([&endpoint](pool::Connection& c) {
    return static_cast<db::PgConnection&>(c).Endpoint() == endpoint;
  });
  return true;
}

void LoopEngine::Loop::OnBegun(Call& call, Conn& conn, absl::Status& status,
                               absl::Time now) {
  if (!status.ok()) {
    engine_.transactions_.Unreserve(conn.tx_id_);
    // No transaction came of it; whatever BEGIN left, nobody may inherit.
    if (PQtransactionStatus(conn.pipeline_.raw()) != PQTRANS_IDLE) {
      conn.pipeline_.MarkBroken();
    }
    conn.tx_id_.clear();
    engine_.Leave(conn);
    return;
  }
  call.tx_expires_ = engine_.transactions_.Open(conn.tx_id_, &conn, now);
  engine_.WakeReaper();
  if (call.cancelled_.load()) {
    // The caller gave up after the BEGIN had run: nobody will ever know
    // the id, so it ends now rather than at its idle timeout.
    status = absl::CancelledError("cancelled by the caller; the transaction was rolled back");
    EndSoon(conn, TransactionOutcome::kRolledBack, "its Begin was cancelled");
  }
}

void LoopEngine::Loop::OnTransactionStatement(Call& call, const db::AsyncQuery& query,
                                              Conn& conn, absl::Status& status,
                                              absl::Time now) {
  conn.tx_effects_ |= query.effects();
  if (conn.pipeline_.broken()) {
    DropTransaction(conn, TransactionOutcome::kAborted,
                    "its connection to the database was lost");
    return;
  }
  const std::optional<std::string> sqlstate = db::SqlStateOf(status);
  if (sqlstate == "40001" || sqlstate == "40P01") {
    // PostgreSQL has aborted the transaction; only all of it again can
    // succeed, so it is rolled back now and the caller told to retry.
    status = WithSuffix(status, "; the transaction was rolled back: retry it whole");
    EndSoon(conn, TransactionOutcome::kAborted,
            absl::StrCat("a statement failed with SQLSTATE ", *sqlstate));
    return;
  }
  if (PQtransactionStatus(conn.pipeline_.raw()) == PQTRANS_IDLE) {
    // Refused up front (EndsTransaction), but a procedure may still end it.
    EndSoon(conn, TransactionOutcome::kAborted, "a statement ended the transaction");
    return;
  }
  engine_.transactions_.Idle(call.tx_id_, now);
  engine_.WakeReaper();
}

void LoopEngine::Loop::OnEnded(Call& call, Conn& conn, QueryResult& result) {
  TransactionOutcome outcome = call.outcome_;
  std::string why = call.why_;
  if (result.status.ok() && call.end_ == TransactionEnd::kCommit &&
      !result.responses.empty() && result.responses[0].command_tag() == "ROLLBACK") {
    // PostgreSQL answers COMMIT of a failed transaction with ROLLBACK.
    outcome = TransactionOutcome::kAborted;
    why = "a statement in it had failed, so COMMIT rolled it back";
    result.status = db::DbpoolError(
        absl::StatusCode::kAborted, kTransactionAborted,
        "the transaction was rolled back, not committed: a statement in it "
        "had failed; begin a new one and retry");
  } else if (!result.status.ok()) {
    outcome = TransactionOutcome::kAborted;
    why = absl::StrCat("its ", call.end_ == TransactionEnd::kCommit ? "COMMIT" : "ROLLBACK",
                       " failed: ", result.status.message());
    // Whatever state the session is in, nobody may inherit it.
    conn.pipeline_.MarkBroken();
  }
  DropTransaction(conn, outcome, std::move(why));
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
      profiles_(kShareBelow, kProfiledStatements),
      transactions_(options_.transactions) {
  for (int i = 0; i < std::max(1, options_.io_threads); ++i) {
    loops_.push_back(std::make_unique<Loop>(*this, i));
  }
  reaper_ = std::thread([this] { ReapLoop(); });
}

LoopEngine::~LoopEngine() {
  // Open transactions are rolled back (their connections cleaned and
  // returned) before the loops stop, which they do once nothing is left.
  transactions_.ExpireAll();
  WakeReaper();
  const absl::Time give_up =
      absl::Now() + options_.limits.statement_timeout + options_.limits.cancel_grace;
  while (transactions_.held() > 0 && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  {
    std::lock_guard<std::mutex> lock(reap_mu_);
    reap_stop_ = true;
  }
  reap_wake_.notify_all();
  reaper_.join();
  for (auto& loop : loops_) loop->Stop();
  loops_.clear();
}

void LoopEngine::WakeReaper() { reap_wake_.notify_all(); }

void LoopEngine::ReapLoop() {
  pthread_setname_np(pthread_self(), "dbpool-tx-reaper");
  std::unique_lock<std::mutex> lock(reap_mu_);
  while (!reap_stop_) {
    // Idle timeouts are at least 100 ms: a tenth of a second late at
    // most, and asleep while nothing is open.
    const absl::Time next = transactions_.NextExpiry();
    const absl::Time now = absl::Now();
    if (next > now) {
      const absl::Duration wait = std::min(next - now, absl::Milliseconds(100));
      reap_wake_.wait_for(lock, absl::ToChronoMilliseconds(
                                    std::max(wait, absl::Milliseconds(1))));
      continue;
    }
    lock.unlock();
    const bool draining = transactions_.draining();
    for (auto& [id, pinned] : transactions_.TakeExpired(now)) {
      End(id, static_cast<Conn&>(*pinned), TransactionEnd::kRollback,
          draining ? TransactionOutcome::kDrained : TransactionOutcome::kExpired,
          draining ? "the server shut down"
                   : "it stayed idle past its idle timeout or outlived "
                     "DB_TX_MAX_LIFETIME_MS",
          [](absl::StatusOr<EndedTransaction>) {});
    }
    lock.lock();
  }
}

std::shared_ptr<LoopEngine::Call> LoopEngine::MakeEnd(const std::string& id, Conn& conn,
                                                      TransactionEnd end,
                                                      TransactionOutcome outcome,
                                                      std::string why, EndDone done) {
  QueryJob job;
  job.statements.resize(1);
  job.statements[0].request.set_sql(end == TransactionEnd::kCommit ? "COMMIT" : "ROLLBACK");
  job.transaction_id = id;
  job.deadline = EndDeadline(options_.limits);
  auto call = std::make_shared<Call>(*this, std::move(job), Call::Kind::kEnd, std::move(done));
  call->tx_id_ = id;
  call->end_ = end;
  call->outcome_ = outcome;
  call->why_ = std::move(why);
  call->submitted_ = absl::Now();
  {
    std::lock_guard<std::mutex> lock(share_mu_);
    ++conn.members_;
  }
  call->conn_ = &conn;
  call->loop_.store(&conn.loop_);
  return call;
}

void LoopEngine::End(const std::string& id, Conn& conn, TransactionEnd end,
                     TransactionOutcome outcome, std::string why, EndDone done) {
  std::shared_ptr<Call> call = MakeEnd(id, conn, end, outcome, std::move(why), std::move(done));
  conn.loop_.PostJoin(std::move(call));
}

void LoopEngine::JoinPinned(std::shared_ptr<Call> call, Conn& conn) {
  {
    std::lock_guard<std::mutex> lock(share_mu_);
    ++conn.members_;
  }
  call->conn_ = &conn;
  call->loop_.store(&conn.loop_);
  conn.loop_.PostJoin(std::move(call));
}

std::shared_ptr<QueryHandle> LoopEngine::BeginTransaction(TransactionOptions options,
                                                          BeginDone done) {
  absl::StatusOr<std::string> id = transactions_.Reserve(options);
  if (!id.ok()) {
    std::move(done)(id.status());
    return std::make_shared<Answered>();
  }
  std::string sql = "BEGIN";
  switch (options.isolation) {
    case v1::ISOLATION_LEVEL_READ_COMMITTED:
      sql += " ISOLATION LEVEL READ COMMITTED";
      break;
    case v1::ISOLATION_LEVEL_REPEATABLE_READ:
      sql += " ISOLATION LEVEL REPEATABLE READ";
      break;
    case v1::ISOLATION_LEVEL_SERIALIZABLE:
      sql += " ISOLATION LEVEL SERIALIZABLE";
      break;
    default:
      break;
  }
  sql += options.read_only ? " READ ONLY" : " READ WRITE";
  if (options.deferrable) sql += " DEFERRABLE";
  QueryJob job;
  job.statements.resize(1);
  job.statements[0].request.set_sql(std::move(sql));
  job.caller = options.caller;
  job.deadline = options.deadline;
  auto call = std::make_shared<Call>(*this, std::move(job), Call::Kind::kBegin, std::move(done));
  call->tx_id_ = *std::move(id);
  call->submitted_ = absl::Now();
  Acquire(call);
  return call;
}

void LoopEngine::EndTransaction(std::string transaction_id, std::string caller,
                                TransactionEnd end, EndDone done) {
  absl::StatusOr<Pinned*> pinned = transactions_.Use(transaction_id, caller, /*end=*/true);
  if (!pinned.ok()) {
    std::move(done)(pinned.status());
    return;
  }
  End(transaction_id, static_cast<Conn&>(**pinned), end,
      end == TransactionEnd::kCommit ? TransactionOutcome::kCommitted
                                     : TransactionOutcome::kRolledBack,
      end == TransactionEnd::kCommit ? "it was committed" : "it was rolled back",
      std::move(done));
}

absl::Duration LoopEngine::OldestTransactionAge() const {
  return transactions_.OldestAge(absl::Now());
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
  return Start(std::move(job), std::move(done), nullptr);
}

std::shared_ptr<StreamHandle> LoopEngine::SubmitStream(QueryJob job, StreamSink& sink) {
  job.batch = false;
  job.statements.resize(1);
  return Start(std::move(job), QueryDone(), &sink);
}

std::shared_ptr<StreamHandle> LoopEngine::Start(QueryJob job, QueryDone done,
                                                StreamSink* sink) {
  const bool in_transaction = !job.transaction_id.empty();
  auto call = std::make_shared<Call>(
      *this, std::move(job),
      in_transaction ? Call::Kind::kInTransaction : Call::Kind::kQuery, std::move(done));
  call->sink_ = sink;
  call->submitted_ = absl::Now();
  const QueryJob& j = call->job_;
  const auto refuse = [&call](absl::Status status) {
    QueryResult result;
    result.status = std::move(status);
    call->Deliver(std::move(result));
    return std::make_shared<Answered>();
  };
  if (j.batch || in_transaction) {
    // Their end is the engine's: COMMIT here would end a batch half-way or
    // a transaction behind its id.
    for (size_t i = 0; i < j.statements.size(); ++i) {
      if (!db::EndsTransaction(j.statements[i].request.sql())) continue;
      absl::Status status = absl::InvalidArgumentError(
          in_transaction
              ? "a statement that ends the transaction (COMMIT, ROLLBACK, END, "
                "ABORT, PREPARE TRANSACTION) cannot run inside one: use "
                "CommitTransaction or RollbackTransaction"
              : "a statement that ends a transaction (COMMIT, ROLLBACK, END, "
                "ABORT, PREPARE TRANSACTION) cannot run in a batch, which is "
                "one transaction");
      if (j.statements.size() > 1) status = db::WithStatementIndex(status, static_cast<int>(i));
      return refuse(std::move(status));
    }
  }
  if (j.batch) CountBatch(j.statements.size());
  if (in_transaction) {
    absl::StatusOr<Pinned*> pinned = transactions_.Use(j.transaction_id, j.caller, /*end=*/false);
    if (!pinned.ok()) return refuse(pinned.status());
    call->tx_id_ = j.transaction_id;
    JoinPinned(call, static_cast<Conn&>(**pinned));
    return call;
  }
  // Streams never share: their connection is held while the reader is
  // behind.
  if (sink == nullptr && options_.pipeline_depth > 1 && !j.batch &&
      profiles_.MayShare(j.statements[0].request.sql())) {
    call->shareable_ = true;
    if (pool_.Saturated() && TryJoin(call)) return call;
  }
  Acquire(call);
  if (call->shareable_ && call->wait_id_.load() != 0) AddShareWaiter(call);
  return call;
}

pool::PoolStats LoopEngine::Snapshot() const {
  pool::PoolStats stats = pool_.Snapshot();
  stats.transactions = transactions_.open();
  return stats;
}

bool LoopEngine::Serving() const { return pool_.Serving(); }

}  // namespace dbpool::engine
