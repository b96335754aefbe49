// CancelRelay: carries a caller's cancel to the engine's QueryHandle. The
// cancel may come at any time, also before Submit has returned the handle;
// whichever of the two comes second cancels the job, so a cancel is never
// lost and never needs the handle to exist yet.
//
// Owned by one call. Thread-safe; nothing blocks but a short critical
// section. QueryHandle::Cancel runs outside it.
#ifndef DBPOOL_SERVER_RPC_CANCEL_RELAY_H_
#define DBPOOL_SERVER_RPC_CANCEL_RELAY_H_

#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/engine/query_engine.h"

namespace dbpool::rpc {

class CancelRelay {
 public:
  // The caller cancelled.
  void Cancel();
  // The engine's handle for the call's job, once Submit has returned it.
  void Attach(std::shared_ptr<engine::QueryHandle> handle);

 private:
  absl::Mutex mu_;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  std::shared_ptr<engine::QueryHandle> handle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_CANCEL_RELAY_H_
