// CancelRelay: a cancel reaches the engine's handle whether it comes before
// or after the handle is known, and never without a cancel.
#include "server/rpc/cancel_relay.h"

#include <atomic>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

namespace dbpool::rpc {
namespace {

class CountingHandle final : public engine::QueryHandle {
 public:
  void Cancel() override { cancels.fetch_add(1); }
  std::atomic<int> cancels{0};
};

TEST(CancelRelay, ACancelBeforeTheHandleIsKnownCancelsItOnArrival) {
  CancelRelay relay;
  relay.Cancel();
  auto handle = std::make_shared<CountingHandle>();
  relay.Attach(handle);
  EXPECT_EQ(handle->cancels.load(), 1);
}

TEST(CancelRelay, ACancelAfterTheHandleIsKnownCancelsItAtOnce) {
  CancelRelay relay;
  auto handle = std::make_shared<CountingHandle>();
  relay.Attach(handle);
  EXPECT_EQ(handle->cancels.load(), 0) << "no cancel, no cancelling";
  relay.Cancel();
  EXPECT_EQ(handle->cancels.load(), 1);
}

TEST(CancelRelay, RacingCancelAndAttachNeverLoseTheCancel) {
  for (int i = 0; i < 2000; ++i) {
    CancelRelay relay;
    auto handle = std::make_shared<CountingHandle>();
    std::thread canceller([&relay] { relay.Cancel(); });
    relay.Attach(handle);
    canceller.join();
    ASSERT_GE(handle->cancels.load(), 1) << "round " << i;
  }
}

}  // namespace
}  // namespace dbpool::rpc
