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
// Interactive transactions end in one of this many ways
// (engine::TransactionOutcome).
inline constexpr size_t kTransactionOutcomeSlots = 5;
// Upper bounds of the batch-size buckets; the last slot counts larger ones.
inline constexpr std::array<uint64_t, 5> kBatchSizeBounds = {1, 10, 100, 1000, 10000};

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
  // Interactive transactions ended, by outcome.
  std::array<std::atomic<uint64_t>, kTransactionOutcomeSlots> transactions_ended{};
  // Batches run, by size bucket (kBatchSizeBounds), and their statements.
  std::array<std::atomic<uint64_t>, kBatchSizeBounds.size() + 1> batch_sizes{};
  std::atomic<uint64_t> batch_statements{0};
  // Rows and bytes of cell data sent by StreamQuery.
  std::atomic<uint64_t> streamed_rows{0};
  std::atomic<uint64_t> streamed_bytes{0};
};

EngineCounters& Counters();

inline void Bump(std::atomic<uint64_t>& counter) {
  counter.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace dbpool::db

#endif  // DBPOOL_SERVER_DB_ENGINE_COUNTERS_H_
