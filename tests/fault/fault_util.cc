#include "tests/fault/fault_util.h"

#include <dirent.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>

#include <gtest/gtest.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/support/pg_harness.h"

namespace dbpool::testing {

Figures::Figures() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  test_ = info != nullptr
              ? absl::StrCat(info->test_suite_name(), ".", info->name())
              : "unknown";
}

Figures::~Figures() {
  std::string line = absl::StrCat("[fault] ", test_);
  for (const auto& [name, value] : figures_) {
    absl::StrAppend(&line, " ", name, "=", value);
  }
  // Flushed at once: a crash later in the process must not lose the line.
  std::cout << line << std::endl;
}

void Figures::Add(const std::string& name, const std::string& value) {
  figures_.emplace_back(name, value);
  ::testing::Test::RecordProperty(name, value);
}

void Figures::Add(const std::string& name, int64_t value) {
  Add(name, absl::StrCat(value));
}

void Figures::Add(const std::string& name, double value) {
  Add(name, absl::StrFormat("%.1f", value));
}

void Figures::AddMs(const std::string& name, absl::Duration value) {
  Add(name + "_ms",
      absl::StrFormat("%.1f", absl::ToDoubleMilliseconds(value)));
}

int ThreadCount() {
  int n = 0;
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return n;
}

int64_t RssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) != 0) continue;
    std::vector<std::string> parts =
        absl::StrSplit(line, ' ', absl::SkipWhitespace());
    int64_t kib = 0;
    if (parts.size() >= 2 && absl::SimpleAtoi(parts[1], &kib)) return kib * 1024;
  }
  return -1;
}

absl::Duration Latencies::Quantile(double q) const {
  if (samples_.empty()) return absl::ZeroDuration();
  std::vector<absl::Duration> sorted = samples_;
  std::sort(sorted.begin(), sorted.end());
  const size_t rank = static_cast<size_t>(q * static_cast<double>(sorted.size()));
  return sorted[std::min(rank, sorted.size() - 1)];
}

absl::Duration Latencies::Max() const {
  if (samples_.empty()) return absl::ZeroDuration();
  return *std::max_element(samples_.begin(), samples_.end());
}

double MetricValue(const std::string& exposition, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (!absl::ConsumePrefix(&line, series) || !absl::ConsumePrefix(&line, " ")) {
      continue;
    }
    double value = 0;
    if (absl::SimpleAtod(line, &value)) return value;
  }
  return -1;
}

std::vector<pid_t> BackendPids(const std::string& app,
                               const std::string& extra_where) {
  std::string sql = absl::StrCat(
      "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM "
      "pg_stat_activity WHERE application_name = '",
      app, "'");
  if (!extra_where.empty()) absl::StrAppend(&sql, " AND (", extra_where, ")");
  std::vector<pid_t> pids;
  for (absl::string_view part :
       absl::StrSplit(PgCluster::Get().Scalar(sql), ',', absl::SkipEmpty())) {
    pid_t pid = 0;
    if (absl::SimpleAtoi(part, &pid)) pids.push_back(pid);
  }
  return pids;
}

int64_t BackendCount(const std::string& app) {
  return PgCluster::Get().Int(absl::StrCat(
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = '", app,
      "'"));
}

}  // namespace dbpool::testing
