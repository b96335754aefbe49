// EngineCounters: process-wide counts of what the query path does to keep
// connections fast and clean (prepared-statement cache, session resets, pipelining),
// for the metrics exporter to read at scrape time.
//
// One instance for the process (Counters()); lives until exit. Thread-safe:
// relaxed atomic increments from whichever thread runs a statement, reads
// from the exporter. Nothing blocks.
#ifndef DBPOOL_SERVER_DB_ENGINE_COUNTERS_H_
#define DBPOOL_SERVER_DB_ENGINE_COUNTERS_H_

#include <array>
#include <atomic>
#include <cstdint>

#include "server/db/session_effects.h"

namespace dbpool::db {

// Pipeline depths counted one by one, up to this many.
inline constexpr size_t kPipelineDepthSlots = 65;

struct EngineCounters {
  // A statement ran prepared (hit), or unprepared or being prepared (miss).
  std::atomic<uint64_t> statement_cache_hits{0};
  std::atomic<uint64_t> statement_cache_misses{0};
  // Prepared statements deallocated to make room.
  std::atomic<uint64_t> statement_cache_evictions{0};
  // A prepared statement the server had lost, or whose result type a
  // schema change altered (SQLSTATE 26000, 0A000), prepared again and the
  // statement retried.
  std::atomic<uint64_t> statement_reprepares{0};
  // Connections reset after a caller left state behind, by kind
  // (EffectKindName); "irreversible" counts connections closed instead.
  std::array<std::atomic<uint64_t>, kEffectKinds> session_resets{};
  // Statements sent, by how many statements were on their connection with
  // them (themselves included); the last entry counts that many or more.
  std::array<std::atomic<uint64_t>, kPipelineDepthSlots> pipeline_depth{};
  // Statements on a connection now, sent and not finished.
  std::atomic<int64_t> pipeline_in_flight{0};
};

EngineCounters& Counters();

inline void Bump(std::atomic<uint64_t>& counter) {
  counter.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_ENGINE_COUNTERS_H_
