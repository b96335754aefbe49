// StatementProfiles: what the engine has learnt about each SQL text, to
// decide whether its statements may share a connection with other
// callers' (pipelining).
//
// A statement shares only when its text is one that cannot change the
// session or the transaction state (db::Pipelinable) and its own time in
// the backend, as last observed, is short. Pipelining saves round trips;
// a statement that runs for longer than `share_below` has nothing to gain
// and would hold up the statements queued behind it, so it runs alone, as
// does SQL not seen before. The time is a moving average (1/8 per run), so
// that a reply delayed by scheduling on a busy machine does not stop
// sharing; a run of ten times the bound or more (a lock wait) stops it at
// once, and it resumes only after many short ones.
//
// Owned by the engine. Thread-safe (one mutex; lookups and updates are a
// hash-map access each). Nothing blocks. Bounded: when `capacity` texts
// are known, the table starts over.
#ifndef DBPOOL_SERVER_ENGINE_STATEMENT_PROFILES_H_
#define DBPOOL_SERVER_ENGINE_STATEMENT_PROFILES_H_

#include <cstddef>
#include <mutex>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace dbpool::engine {

class StatementProfiles {
 public:
  StatementProfiles(absl::Duration share_below, size_t capacity);

  // Whether a statement with this text may share a connection now.
  bool MayShare(absl::string_view sql);
  // A statement with this text took `service` in the backend (infinite:
  // it never produced a result, e.g. cancelled).
  void Record(absl::string_view sql, absl::Duration service);

 private:
  struct Profile {
    bool pipelinable = false;
    bool seen = false;
    absl::Duration service;
  };

  const absl::Duration share_below_;
  const size_t capacity_;
  std::mutex mu_;
  absl::flat_hash_map<std::string, Profile> profiles_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dbpool::engine

#endif  // DBPOOL_SERVER_ENGINE_STATEMENT_PROFILES_H_
