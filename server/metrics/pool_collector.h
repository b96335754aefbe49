// Prometheus collectables that read state at scrape time, so nothing is
// counted twice. PoolCollector turns one pool snapshot into the db_pool_*
// families; it holds a reference to the pool, which must outlive it.
// Thread-safe (Snapshot takes the pool lock briefly; the engine counters
// are atomics).
#ifndef DBPOOL_SERVER_METRICS_POOL_COLLECTOR_H_
#define DBPOOL_SERVER_METRICS_POOL_COLLECTOR_H_

#include <functional>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "absl/time/time.h"
#include "server/pool/connection_pool.h"
#include "server/pool/pool_stats.h"

namespace dbpool::metrics {

class PoolCollector final : public prometheus::Collectable {
 public:
  explicit PoolCollector(const pool::ConnectionPool& pool) : pool_(pool) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const pool::ConnectionPool& pool_;
};

// The families for one snapshot; separate so tests can feed a fixed one.
std::vector<prometheus::MetricFamily> PoolFamilies(const pool::PoolStats& s);

// The query path's db_statement_cache_*, db_session_resets_total and
// db_pipeline_* families, read from db::Counters() at scrape time.
class EngineCollector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

// process_* families for this process, read from /proc.
// Open transactions and the oldest one's age, from the engine.
class TransactionCollector final : public prometheus::Collectable {
 public:
  using Source = std::function<std::pair<int, double>()>;
  template <typename F>
  explicit TransactionCollector(F source)
      : source_([source = std::move(source)] {
          const auto g = source();
          return std::pair<int, double>(g.open, absl::ToDoubleSeconds(g.oldest_age));
        }) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  Source source_;
};

class ProcessCollector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override;
};

}  // namespace dbpool::metrics

#endif  // DBPOOL_SERVER_METRICS_POOL_COLLECTOR_H_
