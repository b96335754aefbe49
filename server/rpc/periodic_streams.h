// PeriodicStreams: server-streaming calls that send a fresh message at once
// and then once per interval (optionally only when it changed), driven by
// one ticker thread for all of them. StreamPoolStats and Health.Watch use
// it.
//
// Owned by the service that opens the streams; must outlive the gRPC
// server's Wait(). Thread-safe. Never blocks a gRPC thread: writes are
// started from the ticker thread, and StartWrite/Finish are always called
// outside the lock because gRPC may run reactions inline.
#ifndef DBPOOL_SERVER_RPC_PERIODIC_STREAMS_H_
#define DBPOOL_SERVER_RPC_PERIODIC_STREAMS_H_

#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dbpool::rpc {

template <typename Msg>
class PeriodicStreams {
 public:
  using Produce = std::function<Msg()>;
  using Same = std::function<bool(const Msg&, const Msg&)>;

  explicit PeriodicStreams(int max_streams) : max_streams_(max_streams) {
    thread_ = std::thread([this] { Loop(); });
  }
  ~PeriodicStreams() {
    Shutdown(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down"));
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](PeriodicStreams* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
            return p->streams_.empty();
          },
          this));
    }
  }

  // Opens a stream. `same` may be empty: then every interval sends.
  grpc::ServerWriteReactor<Msg>* Open(absl::Duration interval, Produce produce,
                                      Same same) {
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      return new Rejected(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                       "server is shutting down"));
    }
    if (static_cast<int>(streams_.size()) >= max_streams_) {
      return new Rejected(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat("too many concurrent streams (limit ", max_streams_,
                       ", DBPOOL_MAX_STATS_STREAMS)")));
    }
    auto* s = new Stream(this, interval, std::move(produce), std::move(same));
    streams_.insert(s);
    ++epoch_;
    return s;
  }

  // A stream that ends at once with `status`, for calls refused before
  // they open one.
  static grpc::ServerWriteReactor<Msg>* Reject(const grpc::Status& status) {
    return new Rejected(status);
  }

  // Ends every stream with `status` and refuses new ones.
  void Shutdown(const grpc::Status& status) {
    std::vector<Stream*> to_finish;
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
      for (Stream* s : streams_) {
        if (!s->finished && !s->write_pending) {
          s->finished = true;
          to_finish.push_back(s);
        } else {
          s->finish_status = status;
        }
      }
    }
    for (Stream* s : to_finish) s->Finish(status);
    if (thread_.joinable()) thread_.join();
  }

 private:
  class Rejected final : public grpc::ServerWriteReactor<Msg> {
   public:
    explicit Rejected(const grpc::Status& status) { this->Finish(status); }
    void OnDone() override { delete this; }
  };

  class Stream final : public grpc::ServerWriteReactor<Msg> {
   public:
    Stream(PeriodicStreams* owner, absl::Duration interval, Produce produce,
           Same same)
        : owner(owner),
          interval(interval),
          produce(std::move(produce)),
          same(std::move(same)) {}

    void OnWriteDone(bool ok) override {
      bool finish = false;
      grpc::Status status = grpc::Status::OK;
      {
        absl::MutexLock lock(&owner->mu_);
        write_pending = false;
        ++owner->epoch_;
        if (!ok || cancelled || owner->stopping_) {
          finished = true;
          finish = true;
          status = ok ? finish_status : grpc::Status::CANCELLED;
        }
      }
      if (finish) this->Finish(status);
    }
    void OnCancel() override {
      bool finish = false;
      {
        absl::MutexLock lock(&owner->mu_);
        cancelled = true;
        ++owner->epoch_;
        if (!write_pending && !finished) {
          finished = true;
          finish = true;
        }
      }
      if (finish) this->Finish(grpc::Status::CANCELLED);
    }
    void OnDone() override {
      {
        absl::MutexLock lock(&owner->mu_);
        owner->streams_.erase(this);
      }
      delete this;
    }

    PeriodicStreams* const owner;
    const absl::Duration interval;
    const Produce produce;
    const Same same;
    // Guarded by owner->mu_.
    absl::Time next_due = absl::InfinitePast();
    bool write_pending = false;
    bool cancelled = false;
    bool finished = false;
    bool sent_any = false;
    grpc::Status finish_status = grpc::Status::OK;
    Msg message;  // owned by gRPC while write_pending
  };

  void Loop() {
    absl::MutexLock lock(&mu_);
    while (!stopping_) {
      const absl::Time now = absl::Now();
      std::vector<Stream*> due;
      absl::Time wake = now + absl::Seconds(1);
      for (Stream* s : streams_) {
        if (s->finished || s->write_pending || s->cancelled) continue;
        if (s->next_due <= now) {
          due.push_back(s);
          s->next_due = now + s->interval;
        }
        wake = std::min(wake, s->next_due);
      }
      std::vector<Stream*> writes;
      for (Stream* s : due) {
        Msg next = s->produce();
        if (s->sent_any && s->same && s->same(s->message, next)) continue;
        s->message = std::move(next);
        s->sent_any = true;
        s->write_pending = true;
        writes.push_back(s);
      }
      if (!writes.empty()) {
        mu_.Unlock();
        for (Stream* s : writes) s->StartWrite(&s->message);
        mu_.Lock();
        continue;
      }
      struct Args {
        PeriodicStreams* self;
        uint64_t epoch;
      } args{this, epoch_};
      // A new stream wants its first message at once, and a finished write
      // may make its stream due.
      mu_.AwaitWithTimeout(
          absl::Condition(
              +[](Args* a) ABSL_NO_THREAD_SAFETY_ANALYSIS {
                return a->self->stopping_ || a->self->epoch_ != a->epoch;
              },
              &args),
          std::max(wake - absl::Now(), absl::ZeroDuration()));
    }
  }

  const int max_streams_;
  absl::Mutex mu_;
  absl::flat_hash_set<Stream*> streams_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_PERIODIC_STREAMS_H_
