// Fakes behind the pool's connection interface, for pool and RPC unit
// tests. FakeConnector is thread-safe; each FakeConnection is used by one
// thread at a time, as the pool promises.
#ifndef DBPOOL_TESTS_UNIT_FAKE_CONNECTION_H_
#define DBPOOL_TESTS_UNIT_FAKE_CONNECTION_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "server/pool/connection.h"

namespace dbpool::testing {

class FakeConnector;

class FakeConnection final : public pool::Connection {
 public:
  FakeConnection(FakeConnector* owner, int id,
                 std::shared_ptr<std::atomic<bool>> usable);
  ~FakeConnection() override;
  bool IsUsable() override { return usable_->load(); }
  int id() const { return id_; }

 private:
  FakeConnector* const owner_;
  const int id_;
  const std::shared_ptr<std::atomic<bool>> usable_;
};

class FakeConnector final : public pool::Connector {
 public:
  // Answers at once, on the caller's thread, unless `hold` is set: then the
  // attempt waits for CompleteHeld, as a slow database's would.
  void Connect(absl::Time, ConnectDone done) override {
    if (hold.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      held_.push_back(std::move(done));
      return;
    }
    std::move(done)(Open());
  }

  // Attempts waiting for CompleteHeld.
  int held() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int>(held_.size());
  }

  // Answers the oldest held attempt, as Connect would have; false when
  // none is held.
  bool CompleteHeld() {
    ConnectDone done;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (held_.empty()) return false;
      done = std::move(held_.front());
      held_.erase(held_.begin());
    }
    std::move(done)(Open());
    return true;
  }

  // Makes every connection opened so far report itself unusable, as a
  // server that terminated its sessions would.
  void BreakAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& f : usable_flags_) f->store(false);
  }

  std::atomic<bool> failing{false};
  std::atomic<bool> hold{false};
  std::atomic<int> opened{0};
  std::atomic<int> live{0};

 private:
  absl::StatusOr<std::unique_ptr<pool::Connection>> Open() {
    if (failing.load()) return absl::UnavailableError("fake database is down");
    const int id = opened.fetch_add(1) + 1;
    auto usable = std::make_shared<std::atomic<bool>>(true);
    {
      std::lock_guard<std::mutex> lock(mu_);
      usable_flags_.push_back(usable);
    }
    live.fetch_add(1);
    return std::unique_ptr<pool::Connection>(new FakeConnection(this, id, usable));
  }

  // std::mutex, not absl::Mutex: Connect runs on whichever thread needs a
  // connection, and ThreadSanitizer cannot see Debian's uninstrumented
  // abseil locking.
  std::mutex mu_;
  std::vector<std::shared_ptr<std::atomic<bool>>> usable_flags_ ABSL_GUARDED_BY(mu_);
  std::vector<ConnectDone> held_ ABSL_GUARDED_BY(mu_);
};

inline FakeConnection::FakeConnection(FakeConnector* owner, int id,
                                      std::shared_ptr<std::atomic<bool>> usable)
    : owner_(owner), id_(id), usable_(std::move(usable)) {}

inline FakeConnection::~FakeConnection() { owner_->live.fetch_sub(1); }

}  // namespace dbpool::testing

#endif  // DBPOOL_TESTS_UNIT_FAKE_CONNECTION_H_
