#include "server/engine/statement_profiles.h"

#include "server/db/session_effects.h"

namespace dbpool::engine {

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
  if (!p.seen || service >= p.service || p.service == absl::InfiniteDuration()) {
    p.service = service;
  } else {
    p.service += (service - p.service) / 8;
  }
  p.seen = true;
}

}  // namespace dbpool::engine
