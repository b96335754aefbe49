// Clock: the source of "now" for code whose timing tests must control.
// The pool reads time only through this interface so that unit tests can
// move time forward by hand. Implementations are thread-safe; none block.
#ifndef DBPOOL_SERVER_COMMON_CLOCK_H_
#define DBPOOL_SERVER_COMMON_CLOCK_H_

#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace dbpool {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;

  // The process-wide real clock; never destroyed.
  static Clock& Real();
};

// A clock that moves only when told to; for tests.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24))
      : now_(start) {}
  absl::Time Now() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    std::lock_guard<std::mutex> lock(mu_);
    now_ += d;
  }

 private:
  // std::mutex, not absl::Mutex, so that ThreadSanitizer sees the locking:
  // Debian's abseil is not instrumented (scripts/sanitize).
  mutable std::mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dbpool

#endif  // DBPOOL_SERVER_COMMON_CLOCK_H_
