#include "server/common/executor.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace dbpool {
namespace {

TEST(Executor, RunsEveryTaskPostedFromManyThreads) {
  std::atomic<int> ran{0};
  {
    Executor executor(4, "test");
    EXPECT_EQ(executor.threads(), 4);
    std::vector<std::thread> posters;
    for (int t = 0; t < 8; ++t) {
      posters.emplace_back([&] {
        for (int i = 0; i < 1000; ++i) executor.Post([&] { ran.fetch_add(1); });
      });
    }
    for (auto& p : posters) p.join();
  }  // the destructor drains the queue
  EXPECT_EQ(ran.load(), 8000);
}

TEST(Executor, OneWorkerRunsTasksInOrder) {
  std::vector<int> order;
  std::mutex mu;
  {
    Executor executor(1, "test");
    for (int i = 0; i < 100; ++i) {
      executor.Post([&, i] {
        std::lock_guard<std::mutex> lock(mu);
        order.push_back(i);
      });
    }
  }
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
}

TEST(Executor, TasksMayPostMoreTasks) {
  std::mutex mu;
  std::condition_variable counted;
  int ran = 0;
  auto count = [&] {
    std::lock_guard<std::mutex> lock(mu);
    ++ran;
    counted.notify_all();
  };
  Executor executor(2, "test");
  executor.Post([&] {
    count();
    executor.Post(count);
  });
  std::unique_lock<std::mutex> lock(mu);
  EXPECT_TRUE(counted.wait_for(lock, std::chrono::seconds(10), [&] { return ran == 2; }))
      << "ran " << ran << " of 2 tasks";
}

}  // namespace
}  // namespace dbpool
