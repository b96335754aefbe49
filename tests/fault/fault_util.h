// Helpers of the fault tests: figures that reach the CI log, process
// resource readings, latency summaries and pg_stat_activity look-ups.
#ifndef DBPOOL_TESTS_FAULT_FAULT_UTIL_H_
#define DBPOOL_TESTS_FAULT_FAULT_UTIL_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"

namespace dbpool::testing {

// The figures one test measured. Each Add() is recorded as a gtest property
// (XML output) at once; on destruction, which also happens when an ASSERT
// ends the test early, they are printed as one line
//   [fault] <Suite.Test> name=value name=value ...
// on stdout, which scripts/test copies to the CI log.
class Figures {
 public:
  Figures();
  ~Figures();
  Figures(const Figures&) = delete;
  Figures& operator=(const Figures&) = delete;

  void Add(const std::string& name, int64_t value);
  void Add(const std::string& name, double value);
  void Add(const std::string& name, const std::string& value);
  // In milliseconds with one decimal, named name + "_ms".
  void AddMs(const std::string& name, absl::Duration value);

 private:
  std::string test_;
  std::vector<std::pair<std::string, std::string>> figures_;
};

// Threads of this process (/proc/self/task).
int ThreadCount();
// Resident set size of this process in bytes (/proc/self/status VmRSS).
int64_t RssBytes();

// A set of durations; quantiles by nearest rank.
class Latencies {
 public:
  void Add(absl::Duration d) { samples_.push_back(d); }
  size_t size() const { return samples_.size(); }
  absl::Duration Quantile(double q) const;
  absl::Duration Max() const;

 private:
  std::vector<absl::Duration> samples_;
};

// The value of `series` (a metric name with its labels, as exposed, e.g.
// db_pool_connections_closed_total{reason="broken"}) in a text exposition;
// -1 when it is not there.
double MetricValue(const std::string& exposition, const std::string& series);

// Process ids of the backends whose application_name is `app` (and which
// match `extra_where`, an SQL condition, when not empty), in pid order.
std::vector<pid_t> BackendPids(const std::string& app,
                               const std::string& extra_where = "");
// How many backends have application_name `app`.
int64_t BackendCount(const std::string& app);

}  // namespace dbpool::testing

#endif  // DBPOOL_TESTS_FAULT_FAULT_UTIL_H_
