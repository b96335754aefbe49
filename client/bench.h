// dbpool bench: a load generator for dbpool.v1.DatabaseService/Query.
//
//   dbpool bench --target HOST:PORT --sql SQL [--param VALUE]...
//                [--concurrency N | --rate R] [--duration 10s] [--warmup 0s]
//                [--timeout 5s] [--max-error-rate X] [--json]
//
// Closed loop (--concurrency N): N calls in flight, each completion issues
// the next. Open loop (--rate R): calls leave on a fixed schedule whatever
// the completions, and latency counts from the intended send time, so a slow
// server cannot hide its queueing (no coordinated omission). Pool snapshots
// from StreamPoolStats are sampled during the run.
//
// Exit status: 0 done, 1 the target could not be reached, 2 usage error,
// 3 the error rate is above --max-error-rate.
#ifndef DBPOOL_CLIENT_BENCH_H_
#define DBPOOL_CLIENT_BENCH_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dbpool/v1/database_service.pb.h"

namespace dbpool::cli {

// Parses one --param VALUE the way the query command does (int:42, str:x,
// null, ...). Bench adds rand:MIN:MAX on top of it.
using ParamParser = absl::StatusOr<dbpool::v1::Value> (*)(absl::string_view);

// Runs `dbpool bench`. args are the command-line arguments without the
// program name and without the word "bench" itself; global flags given before
// "bench" (--target, --timeout, --json) are among them. Returns the exit
// status.
int RunBench(const std::vector<std::string>& args, ParamParser parse_param);

}  // namespace dbpool::cli

#endif  // DBPOOL_CLIENT_BENCH_H_
