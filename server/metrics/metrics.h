// Metrics: the one Prometheus registry of dbpool and its exporter.
//
// Pool gauges, the acquire histogram and the pool counters are read from a
// pool snapshot at scrape time (PoolCollector), so nothing is counted twice.
// RPC metrics use the go-grpc-prometheus names and come from a server
// interceptor; query metrics are recorded by the Query path.
//
// Owned by app::Server; outlives the gRPC server. Thread-safe: recording
// methods are called from any thread and never block on I/O. Expose() binds
// the exporter port; scrapes run on the exporter's own threads.
#ifndef DBPOOL_SERVER_METRICS_METRICS_H_
#define DBPOOL_SERVER_METRICS_METRICS_H_

#include <functional>
#include <memory>
#include <string>

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/metrics/pool_collector.h"
#include "server/pool/connection_pool.h"

namespace dbpool::metrics {

class Metrics {
 public:
  explicit Metrics(const std::string& version);
  ~Metrics();

  // Reports `pool` at every scrape. `pool` must outlive this object.
  void AddPool(const pool::ConnectionPool& pool);

  // Reports the read replicas' pools and state at every scrape, with the
  // pool AddPool named; after AddPool, before Expose.
  void AddReplicas(ReplicaSource source);
  // One routing decision (db_route_total): `target` is "primary" or a
  // replica's name, `reason` why it went there.
  void ObserveRoute(const std::string& target, const std::string& reason);

  // Open interactive transactions now and the age of the oldest.
  struct TransactionGauges {
    int open = 0;
    absl::Duration oldest_age;
  };
  // Reports what `source` says at every scrape; it must be cheap, must not
  // block, and must outlive this object.
  void AddTransactions(std::function<TransactionGauges()> source);

  // Starts the exporter on `address` (host:port, port 0 picks a free one);
  // returns the bound port.
  absl::StatusOr<int> Expose(const std::string& address);
  // Closes the /metrics listener; waits for scrapes in progress.
  void StopExposing();

  // One finished Query: its execution time and outcome. The error label is
  // the SQLSTATE class, or "none" for errors that carry no SQLSTATE.
  void ObserveQuery(absl::Duration execution, const absl::Status& status);

  // The text exposition of everything, as /metrics serves it.
  std::string Scrape() const;

  // A server interceptor factory recording grpc_server_* metrics for the
  // methods in `known_methods` ("/pkg.Service/Method"); others are
  // labelled "unknown" so that clients cannot grow label cardinality.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  InterceptorFactory(absl::flat_hash_set<std::string> known_methods);

  // Records one RPC; used by the interceptor.
  void ObserveRpc(const std::string& type, const std::string& service,
                  const std::string& method, int code, absl::Duration elapsed);
  void RpcStarted(const std::string& type, const std::string& service,
                  const std::string& method);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::vector<std::shared_ptr<prometheus::Collectable>> collectors_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Histogram>& query_duration_;
  prometheus::Histogram& query_duration_all_;
  prometheus::Family<prometheus::Counter>& query_errors_;
  prometheus::Family<prometheus::Counter>* routes_ = nullptr;  // with replicas
  PoolCollector* pool_collector_ = nullptr;
  prometheus::Family<prometheus::Counter>& rpc_started_;
  prometheus::Family<prometheus::Counter>& rpc_handled_;
  prometheus::Family<prometheus::Histogram>& rpc_seconds_;
};

}  // namespace dbpool::metrics

#endif  // DBPOOL_SERVER_METRICS_METRICS_H_
