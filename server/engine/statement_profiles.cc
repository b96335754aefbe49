#include "server/engine/statement_profiles.h"

#include "server/db/session_effects.h"

namespace dbpool::engine {
namespace {

// How many times the bound a single run must take to stop sharing at once.
constexpr int kOutlier = 10;

}  // namespace

StatementProfiles::StatementProfiles(absl::Duration share_below, size_t capacity)
    : share_below_(share_below), capacity_(capacity) {}

bool StatementProfiles::MayShare(absl::string_view sql) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = profiles_.find(sql);
  return it != profiles_.end() && it->second.pipelinable && it->second.seen &&
         it->second.service < share_below_;
}

void StatementProfiles::Record(absl::string_view sql, absl::Duration service) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = profiles_.find(sql);
  if (it == profiles_.end()) {
    if (profiles_.size() >= capacity_) profiles_.clear();
    Profile fresh;
    // Classified once per text, outside the hot path of later lookups.
    fresh.pipelinable = db::Pipelinable(sql);
    it = profiles_.emplace(std::string(sql), fresh).first;
  }
  Profile& p = it->second;
  // A run far beyond the bound (a lock wait) counts at once; anything else
  // is averaged, since on a loaded machine a reply can wait a few
  // milliseconds for its thread to be scheduled.
  if (!p.seen || service >= kOutlier * share_below_ ||
      p.service == absl::InfiniteDuration()) {
    p.service = service;
  } else {
    p.service += (service - p.service) / 8;
  }
  p.seen = true;
}

}  // namespace dbpool::engine
