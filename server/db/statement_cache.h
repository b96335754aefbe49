// StatementCache: one connection's server-side prepared statements, least
// recently used first out, with what each statement leaves in the session.
//
// A statement is prepared on its second use, so one-off SQL costs no extra
// round trip and repeated SQL is parsed and planned once per connection.
// The cache is bounded (DB_PREPARED_CACHE_SIZE): every prepared statement
// holds memory in its backend, and an application that builds SQL text
// with literals would otherwise grow it without end. The caller deallocates
// what Insert evicts.
//
// Owned by its PgConnection; used by one thread at a time, like the
// connection. Nothing blocks.
#ifndef DBPOOL_SERVER_DB_STATEMENT_CACHE_H_
#define DBPOOL_SERVER_DB_STATEMENT_CACHE_H_

#include <cstddef>
#include <list>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "server/db/session_effects.h"

namespace dbpool::db {

struct CachedStatement {
  std::string key;   // SQL text and parameter type OIDs
  std::string name;  // the server-side name; empty until prepared
  SessionEffects effects = kNoEffect;
};

class StatementCache {
 public:
  // `capacity` 0: nothing is cached, so nothing is ever prepared.
  explicit StatementCache(size_t capacity) : capacity_(capacity) {}
  StatementCache(const StatementCache&) = delete;
  StatementCache& operator=(const StatementCache&) = delete;

  // The entry for `key`, now the most recently used; nullptr when absent.
  CachedStatement* Find(const std::string& key);

  // Adds `key` (absent) as the most recently used entry and returns it;
  // nullptr when the capacity is 0. When the cache was full, the least
  // recently used entry goes, and its server-side name, if it was prepared,
  // is stored in `*evicted` for the caller to deallocate.
  CachedStatement* Insert(std::string key, SessionEffects effects,
                          std::string* evicted);

  void Erase(const std::string& key);
  // Forgets every entry (after DEALLOCATE ALL).
  void Clear();

  size_t size() const { return entries_.size(); }
  size_t capacity() const { return capacity_; }
  // A name no statement of this connection has had.
  std::string NextName() { return "dbpool_" + std::to_string(++names_issued_); }

 private:
  const size_t capacity_;
  std::list<CachedStatement> entries_;  // most recently used first
  absl::flat_hash_map<std::string, std::list<CachedStatement>::iterator> index_;
  uint64_t names_issued_ = 0;
};

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_STATEMENT_CACHE_H_
