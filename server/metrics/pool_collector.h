// Prometheus collectables that read state at scrape time, so nothing is
// counted twice. PoolCollector turns one pool snapshot into the db_pool_*
// families; it holds a reference to the pool, which must outlive it.
// Thread-safe (Snapshot takes the pool lock briefly; the engine counters
// are atomics).
#ifndef DBPOOL_SERVER_METRICS_POOL_COLLECTOR_H_
#define DBPOOL_SERVER_METRICS_POOL_COLLECTOR_H_

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "absl/time/time.h"
#include "server/pool/connection_pool.h"
#include "server/pool/pool_stats.h"

namespace dbpool::metrics {

// A read replica's pool and routing state, as the engine last saw them.
struct ReplicaGauges {
  std::string name;  // host:port, the `replica` label
  pool::PoolStats pool;
  bool routable = false;
  absl::Duration lag;
};
using ReplicaSource = std::function<std::vector<ReplicaGauges>()>;

// The primary's pool as the unlabelled db_pool_* series, each replica's as
// the same families with a `replica` label (one collectable, so that each
// family is exposed once), and db_replica_lag_seconds and
// db_replica_routable per replica.
class PoolCollector final : public prometheus::Collectable {
 public:
  explicit PoolCollector(const pool::ConnectionPool& pool) : pool_(pool) {}
  // Before the collector is exposed; `source` must be cheap, must not
  // block, and must outlive the collector.
  void SetReplicas(ReplicaSource source) { replicas_ = std::move(source); }
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const pool::ConnectionPool& pool_;
  ReplicaSource replicas_;
};

// The families for one snapshot; separate so tests can feed a fixed one.
std::vector<prometheus::MetricFamily> PoolFamilies(const pool::PoolStats& s);
// PoolFamilies(primary) with every replica's series added, and the replica
// gauges.
std::vector<prometheus::MetricFamily> PoolFamilies(const pool::PoolStats& primary,
                                                   const std::vector<ReplicaGauges>& replicas);

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
