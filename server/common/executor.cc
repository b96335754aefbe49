#include "server/common/executor.h"

#include <pthread.h>

#include <utility>

namespace dbpool {

Executor::Executor(int threads, std::string name) {
  workers_.reserve(threads);
  for (int i = 0; i < threads; ++i) {
    workers_.emplace_back([this] { Loop(); });
    // Thread names show up in top/perf; Linux caps them at 15 characters.
    pthread_setname_np(workers_.back().native_handle(),
                       name.substr(0, 15).c_str());
  }
}

Executor::~Executor() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_or_stop_.notify_all();
  for (auto& t : workers_) t.join();
}

void Executor::Post(Task task) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
  }
  work_or_stop_.notify_one();
}

void Executor::Loop() {
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_or_stop_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
      // Drain the queue before stopping so no accepted work is dropped.
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    std::move(task)();
  }
}

}  // namespace dbpool
