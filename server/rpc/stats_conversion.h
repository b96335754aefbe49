// pool::PoolStats -> dbpool.v1.PoolStats. Pure functions; thread-safe.
#ifndef DBPOOL_SERVER_RPC_STATS_CONVERSION_H_
#define DBPOOL_SERVER_RPC_STATS_CONVERSION_H_

#include "dbpool/v1/database_service.pb.h"
#include "server/engine/query_engine.h"
#include "server/pool/pool_stats.h"

namespace dbpool::rpc {

v1::PoolStats ToProto(const pool::PoolStats& stats);

// The engine's primary pool, with its read replicas listed.
v1::PoolStats PoolStatsOf(const engine::QueryEngine& engine);

// Whether two snapshots differ in what a watcher cares about (the gauges
// and reachability, and each replica's and whether it takes reads),
// ignoring counters and time.
bool SameGauges(const v1::PoolStats& a, const v1::PoolStats& b);

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_STATS_CONVERSION_H_
