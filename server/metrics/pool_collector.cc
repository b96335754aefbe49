#include "server/metrics/pool_collector.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "server/db/engine_counters.h"

namespace dbpool::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

MetricFamily Single(const std::string& name, const std::string& help,
                    MetricType type, double value) {
  MetricFamily f{name, help, type, {}};
  ClientMetric m;
  if (type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
  return f;
}

ClientMetric Labelled(const std::string& label, const std::string& value,
                      double count) {
  ClientMetric m;
  m.label.push_back({label, value});
  m.counter.value = count;
  return m;
}

}  // namespace

std::vector<MetricFamily> PoolFamilies(const pool::PoolStats& s) {
  std::vector<MetricFamily> out;
  const auto gauge = [&](const char* name, const char* help, double v) {
    out.push_back(Single(name, help, MetricType::Gauge, v));
  };
  gauge("db_pool_active_connections", "Connections running a query for a caller.", s.active);
  gauge("db_pool_idle_connections", "Open connections ready for use.", s.idle);
  gauge("db_pool_max_connections", "Hard cap on connections (DB_POOL_MAX_CONNECTIONS).", s.max);
  gauge("db_pool_waiting_connections", "Callers waiting for a connection.", s.waiting);
  gauge("db_pool_min_connections", "Connections kept open (DB_POOL_MIN_CONNECTIONS).", s.min);
  gauge("db_pool_total_connections", "Open and opening connections: idle + active + connecting.", s.total);
  gauge("db_pool_connecting_connections", "Connections being opened.", s.connecting);
  gauge("db_pool_oldest_waiter_seconds", "How long the oldest waiting caller has waited.",
        absl::ToDoubleSeconds(s.oldest_waiter_age));
  gauge("db_pool_database_reachable", "1 when the last connection attempt succeeded.",
        s.reachable ? 1 : 0);

  MetricFamily acquires{"db_pool_acquires_total", "Connection acquires by outcome.",
                        MetricType::Counter, {}};
  acquires.metric.push_back(Labelled("result", "immediate", s.acquires_immediate));
  acquires.metric.push_back(Labelled("result", "waited", s.acquires_waited));
  acquires.metric.push_back(Labelled("result", "timeout", s.acquires_timed_out));
  acquires.metric.push_back(Labelled("result", "rejected", s.acquires_rejected));
  acquires.metric.push_back(Labelled("result", "cancelled", s.acquires_cancelled));
  out.push_back(std::move(acquires));

  out.push_back(Single("db_pool_connections_opened_total", "Connections opened.",
                       MetricType::Counter, s.connections_opened));
  MetricFamily closed{"db_pool_connections_closed_total", "Connections closed, by reason.",
                      MetricType::Counter, {}};
  for (int r = 0; r < pool::kCloseReasonCount; ++r) {
    closed.metric.push_back(Labelled(
        "reason", pool::CloseReasonName(static_cast<pool::CloseReason>(r)),
        s.connections_closed[r]));
  }
  out.push_back(std::move(closed));
  out.push_back(Single("db_pool_connect_errors_total", "Failed connection attempts.",
                       MetricType::Counter, s.connect_errors));

  MetricFamily hist{"db_pool_acquire_duration_seconds",
                    "Time from asking for a connection to getting one.",
                    MetricType::Histogram, {}};
  ClientMetric h;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < pool::kAcquireBucketSeconds.size(); ++i) {
    cumulative += s.acquire_buckets[i];
    h.histogram.bucket.push_back({cumulative, pool::kAcquireBucketSeconds[i]});
  }
  cumulative += s.acquire_buckets.back();
  h.histogram.bucket.push_back({cumulative, std::numeric_limits<double>::infinity()});
  h.histogram.sample_count = cumulative;
  h.histogram.sample_sum = s.acquire_seconds_sum;
  hist.metric.push_back(std::move(h));
  out.push_back(std::move(hist));
  return out;
}

std::vector<MetricFamily> PoolFamilies(const pool::PoolStats& primary,
                                       const std::vector<ReplicaGauges>& replicas) {
  std::vector<MetricFamily> out = PoolFamilies(primary);
  if (replicas.empty()) return out;
  for (const ReplicaGauges& r : replicas) {
    std::vector<MetricFamily> theirs = PoolFamilies(r.pool);
    // PoolFamilies always yields the same families in the same order.
    for (size_t i = 0; i < out.size(); ++i) {
      for (ClientMetric& m : theirs[i].metric) {
        m.label.push_back({"replica", r.name});
        out[i].metric.push_back(std::move(m));
      }
    }
  }
  MetricFamily lag{"db_replica_lag_seconds",
                   "Replay lag of each read replica at its last probe: how old the newest "
                   "primary WAL position it has replayed is.",
                   MetricType::Gauge, {}};
  MetricFamily routable{"db_replica_routable",
                        "1 when the replica takes reads: it answered the last probe, is in "
                        "recovery and its lag is within DB_REPLICA_MAX_LAG_MS.",
                        MetricType::Gauge, {}};
  for (const ReplicaGauges& r : replicas) {
    ClientMetric l;
    l.label.push_back({"replica", r.name});
    // A replica never probed has no lag to tell; -1 says so in a gauge.
    l.gauge.value = r.lag == absl::InfiniteDuration() ? -1 : absl::ToDoubleSeconds(r.lag);
    lag.metric.push_back(std::move(l));
    ClientMetric u;
    u.label.push_back({"replica", r.name});
    u.gauge.value = r.routable ? 1 : 0;
    routable.metric.push_back(std::move(u));
  }
  out.push_back(std::move(lag));
  out.push_back(std::move(routable));
  return out;
}

std::vector<MetricFamily> PoolCollector::Collect() const {
  if (!replicas_) return PoolFamilies(pool_.Snapshot());
  return PoolFamilies(pool_.Snapshot(), replicas_());
}

std::vector<MetricFamily> EngineCollector::Collect() const {
  const db::EngineCounters& c = db::Counters();
  const auto read = [](const std::atomic<uint64_t>& v) {
    return static_cast<double>(v.load(std::memory_order_relaxed));
  };
  std::vector<MetricFamily> out;
  MetricFamily lookups{"db_statement_cache_lookups_total",
                       "Statements run prepared from the cache (hit) or not "
                       "(miss: first sight, being prepared, or changing the session).",
                       MetricType::Counter, {}};
  lookups.metric.push_back(Labelled("result", "hit", read(c.statement_cache_hits)));
  lookups.metric.push_back(Labelled("result", "miss", read(c.statement_cache_misses)));
  out.push_back(std::move(lookups));
  out.push_back(Single("db_statement_cache_evictions_total",
                       "Prepared statements deallocated to stay within "
                       "DB_PREPARED_CACHE_SIZE.",
                       MetricType::Counter, read(c.statement_cache_evictions)));
  out.push_back(Single("db_statement_reprepares_total",
                       "Prepared statements prepared again after the server lost "
                       "them or a schema change altered their result (26000, 0A000).",
                       MetricType::Counter, read(c.statement_reprepares)));
  MetricFamily resets{"db_session_resets_total",
                      "Connections reset after a caller left session state "
                      "behind, by kind; irreversible: closed instead.",
                      MetricType::Counter, {}};
  for (int kind = 0; kind < db::kEffectKinds; ++kind) {
    resets.metric.push_back(Labelled("kind", std::string(db::EffectKindName(kind)),
                                     read(c.session_resets[kind])));
  }
  out.push_back(std::move(resets));

  out.push_back(Single("db_pipeline_statements_in_flight",
                       "Statements sent on pooled connections and not finished; "
                       "divided by db_pool_active, the pipeline depth now.",
                       MetricType::Gauge,
                       static_cast<double>(c.pipeline_in_flight.load(std::memory_order_relaxed))));
  // Upper bounds of the depth buckets; the depth is a whole number.
  static constexpr std::array<int, 8> kDepthBounds = {1, 2, 3, 4, 6, 8, 16, 32};
  MetricFamily depth{"db_pipeline_depth",
                     "Statements on a connection when a statement was sent, "
                     "itself included (1: it ran alone).",
                     MetricType::Histogram, {}};
  ClientMetric d;
  uint64_t count = 0;
  double sum = 0;
  size_t next_bound = 0;
  for (size_t k = 1; k < c.pipeline_depth.size(); ++k) {
    while (next_bound < kDepthBounds.size() && static_cast<int>(k) > kDepthBounds[next_bound]) {
      d.histogram.bucket.push_back({count, static_cast<double>(kDepthBounds[next_bound])});
      ++next_bound;
    }
    const uint64_t n = c.pipeline_depth[k].load(std::memory_order_relaxed);
    count += n;
    sum += static_cast<double>(n) * static_cast<double>(k);
  }
  for (; next_bound < kDepthBounds.size(); ++next_bound) {
    d.histogram.bucket.push_back({count, static_cast<double>(kDepthBounds[next_bound])});
  }
  d.histogram.bucket.push_back({count, std::numeric_limits<double>::infinity()});
  d.histogram.sample_count = count;
  d.histogram.sample_sum = sum;
  depth.metric.push_back(std::move(d));
  out.push_back(std::move(depth));

  MetricFamily ended{"db_transactions_ended_total",
                     "Interactive transactions ended, by outcome: committed, "
                     "rolled_back, expired (idle or lifetime limit), aborted "
                     "(serialization failure, deadlock, failed statement, lost "
                     "connection), drained (shutdown).",
                     MetricType::Counter, {}};
  static constexpr std::array<const char*, db::kTransactionOutcomeSlots> kOutcomes = {
      "committed", "rolled_back", "expired", "aborted", "drained"};
  for (size_t k = 0; k < kOutcomes.size(); ++k) {
    ended.metric.push_back(Labelled("outcome", kOutcomes[k], read(c.transactions_ended[k])));
  }
  out.push_back(std::move(ended));

  MetricFamily batches{"db_batch_statements",
                       "Statements per ExecuteBatch call.", MetricType::Histogram, {}};
  ClientMetric b;
  uint64_t batch_count = 0;
  for (size_t k = 0; k < db::kBatchSizeBounds.size(); ++k) {
    batch_count += c.batch_sizes[k].load(std::memory_order_relaxed);
    b.histogram.bucket.push_back({batch_count, static_cast<double>(db::kBatchSizeBounds[k])});
  }
  batch_count += c.batch_sizes.back().load(std::memory_order_relaxed);
  b.histogram.bucket.push_back({batch_count, std::numeric_limits<double>::infinity()});
  b.histogram.sample_count = batch_count;
  b.histogram.sample_sum = read(c.batch_statements);
  batches.metric.push_back(std::move(b));
  out.push_back(std::move(batches));
  out.push_back(Single("db_streamed_rows_total", "Rows sent by StreamQuery.",
                       MetricType::Counter, read(c.streamed_rows)));
  out.push_back(Single("db_streamed_bytes_total",
                       "Bytes of cell data sent by StreamQuery.", MetricType::Counter,
                       read(c.streamed_bytes)));
  return out;
}

std::vector<MetricFamily> TransactionCollector::Collect() const {
  const auto [open, oldest] = source_();
  std::vector<MetricFamily> out;
  out.push_back(Single("db_transactions_open",
                       "Interactive transactions open now (BeginTransaction); each "
                       "pins one pooled connection.",
                       MetricType::Gauge, open));
  out.push_back(Single("db_pool_transaction_connections",
                       "Connections pinned by open transactions, idle in them or "
                       "running their statements (part of db_pool_active_connections).",
                       MetricType::Gauge, open));
  out.push_back(Single("db_transaction_oldest_seconds",
                       "Age of the oldest open transaction; 0 when none is open.",
                       MetricType::Gauge, oldest));
  return out;
}

std::vector<MetricFamily> ProcessCollector::Collect() const {
  std::vector<MetricFamily> out;
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)),
                   std::istreambuf_iterator<char>());
  // Fields after the command name, which may itself contain spaces.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return out;
  std::istringstream fields(stat.substr(close + 2));
  std::vector<std::string> f;
  for (std::string x; fields >> x;) f.push_back(x);
  // f[0] is field 3 (state): utime is field 14, stime 15, starttime 22,
  // vsize 23, rss 24.
  if (f.size() < 22) return out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const double utime = std::stod(f[11]);
  const double stime = std::stod(f[12]);
  const double start_ticks = std::stod(f[19]);
  out.push_back(Single("process_cpu_seconds_total", "User and system CPU time.",
                       MetricType::Counter, (utime + stime) / ticks));
  out.push_back(Single("process_virtual_memory_bytes", "Virtual memory size.",
                       MetricType::Gauge, std::stod(f[20])));
  out.push_back(Single("process_resident_memory_bytes", "Resident memory size.",
                       MetricType::Gauge, std::stod(f[21]) * page));
  std::ifstream proc_stat("/proc/stat");
  for (std::string key; proc_stat >> key;) {
    if (key == "btime") {
      double boot = 0;
      proc_stat >> boot;
      out.push_back(Single("process_start_time_seconds",
                           "Start time since the Unix epoch.", MetricType::Gauge,
                           boot + start_ticks / ticks));
      break;
    }
  }
  int fds = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir) != nullptr) ++fds;
    closedir(dir);
    fds -= 3;  // ".", ".." and the directory's own descriptor
  }
  out.push_back(Single("process_open_fds", "Open file descriptors.",
                       MetricType::Gauge, fds));
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    out.push_back(Single("process_max_fds", "Limit on open file descriptors.",
                         MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
  }
  return out;
}

}  // namespace dbpool::metrics
