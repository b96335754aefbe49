#include "server/rpc/cancel_relay.h"

#include <utility>

namespace dbpool::rpc {

void CancelRelay::Cancel() {
  std::shared_ptr<engine::QueryHandle> handle;
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    handle = handle_;
  }
  if (handle != nullptr) handle->Cancel();
}

void CancelRelay::Attach(std::shared_ptr<engine::QueryHandle> handle) {
  bool cancelled = false;
  {
    absl::MutexLock lock(&mu_);
    handle_ = handle;
    cancelled = cancelled_;
  }
  if (cancelled) handle->Cancel();
}

}  // namespace dbpool::rpc
