#include "server/db/statement_cache.h"

#include <utility>

namespace dbpool::db {

CachedStatement* StatementCache::Find(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  entries_.splice(entries_.begin(), entries_, it->second);
  return &*it->second;
}

CachedStatement* StatementCache::Insert(std::string key, SessionEffects effects,
                                        std::string* evicted) {
  evicted->clear();
  if (capacity_ == 0) return nullptr;
  if (entries_.size() >= capacity_) {
    CachedStatement& last = entries_.back();
    *evicted = std::move(last.name);
    index_.erase(last.key);
    entries_.pop_back();
  }
  entries_.push_front(CachedStatement{std::move(key), "", effects});
  index_.emplace(entries_.front().key, entries_.begin());
  return &entries_.front();
}

void StatementCache::Erase(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return;
  entries_.erase(it->second);
  index_.erase(it);
}

void StatementCache::Clear() {
  entries_.clear();
  index_.clear();
}

}  // namespace dbpool::db
