// Executor: a fixed set of worker threads that run blocking work (database
// I/O) so that gRPC callback threads never block.
//
// Owned by the worker engine (or a test). Thread-safe: Post may be called
// from any thread, including a worker. Post never blocks; the destructor
// blocks until every posted task has run and the workers have exited.
#ifndef DBPOOL_SERVER_COMMON_EXECUTOR_H_
#define DBPOOL_SERVER_COMMON_EXECUTOR_H_

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"

namespace dbpool {

class Executor {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  Executor(int threads, std::string name);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // Queues `task` to run on a worker, first in first out.
  void Post(Task task);

  int threads() const { return static_cast<int>(workers_.size()); }

 private:
  void Loop();

  // std::mutex, not absl::Mutex, so that ThreadSanitizer sees the locking:
  // Debian's abseil is not instrumented (scripts/sanitize).
  std::mutex mu_;
  // Notified when a task is queued or stopping_ is set.
  std::condition_variable work_or_stop_;
  std::deque<Task> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;
};

}  // namespace dbpool

#endif  // DBPOOL_SERVER_COMMON_EXECUTOR_H_
