#include "server/rpc/stats_conversion.h"

#include "google/protobuf/util/time_util.h"
#include "server/db/lsn.h"

namespace dbpool::rpc {
namespace {

using google::protobuf::util::TimeUtil;

google::protobuf::Duration ToDuration(absl::Duration d) {
  if (d == absl::InfiniteDuration()) d = absl::Hours(24 * 365);
  return TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(d));
}

}  // namespace

v1::PoolStats ToProto(const pool::PoolStats& s) {
  v1::PoolStats p;
  p.set_active_connections(s.active);
  p.set_idle_connections(s.idle);
  p.set_max_connections(s.max);
  p.set_waiting_connections(s.waiting);
  p.set_total_connections(s.total);
  p.set_min_connections(s.min);
  p.set_connecting_connections(s.connecting);
  p.set_transaction_connections(s.transactions);
  p.set_database_reachable(s.reachable);
  *p.mutable_oldest_waiter_age() = ToDuration(s.oldest_waiter_age);
  p.set_acquires_immediate(s.acquires_immediate);
  p.set_acquires_waited(s.acquires_waited);
  p.set_acquires_timed_out(s.acquires_timed_out);
  p.set_acquires_rejected(s.acquires_rejected);
  p.set_acquires_cancelled(s.acquires_cancelled);
  p.set_connections_opened(s.connections_opened);
  p.set_connections_closed(s.connections_closed_total());
  p.set_connect_errors(s.connect_errors);
  *p.mutable_acquire_p50() = ToDuration(s.AcquireQuantile(0.50));
  *p.mutable_acquire_p95() = ToDuration(s.AcquireQuantile(0.95));
  *p.mutable_acquire_p99() = ToDuration(s.AcquireQuantile(0.99));
  *p.mutable_time() = TimeUtil::NanosecondsToTimestamp(
      absl::ToUnixNanos(s.time));
  return p;
}

v1::PoolStats PoolStatsOf(const engine::QueryEngine& engine) {
  v1::PoolStats p = ToProto(engine.Snapshot());
  for (const engine::ReplicaState& r : engine.Replicas()) {
    v1::ReplicaStats* replica = p.add_replicas();
    replica->set_name(r.name);
    *replica->mutable_pool() = ToProto(r.pool);
    replica->set_routable(r.routable);
    *replica->mutable_replay_lag() = ToDuration(r.replay_lag);
    if (r.replay_lsn != 0) replica->set_replay_lsn(db::FormatLsn(r.replay_lsn));
  }
  return p;
}

bool SameGauges(const v1::PoolStats& a, const v1::PoolStats& b) {
  if (a.replicas_size() != b.replicas_size()) return false;
  for (int i = 0; i < a.replicas_size(); ++i) {
    if (a.replicas(i).routable() != b.replicas(i).routable() ||
        !SameGauges(a.replicas(i).pool(), b.replicas(i).pool())) {
      return false;
    }
  }
  return a.active_connections() == b.active_connections() &&
         a.idle_connections() == b.idle_connections() &&
         a.waiting_connections() == b.waiting_connections() &&
         a.total_connections() == b.total_connections() &&
         a.connecting_connections() == b.connecting_connections() &&
         a.transaction_connections() == b.transaction_connections() &&
         a.database_reachable() == b.database_reachable();
}

}  // namespace dbpool::rpc
