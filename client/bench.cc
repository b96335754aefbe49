// dbpool bench: see bench.h.
#include "bench.h"
#include "connection.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <grpc/support/time.h>
#include <grpcpp/alarm.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "dbpool/v1/database_service.grpc.pb.h"
#include "google/protobuf/util/time_util.h"

namespace dbpool::cli {
namespace {

namespace v1 = ::dbpool::v1;
using google::protobuf::util::TimeUtil;
using Clock = std::chrono::steady_clock;

constexpr int kExitOk = 0;
constexpr int kExitUnreachable = 1;
constexpr int kExitUsage = 2;
constexpr int kExitErrorGate = 3;

constexpr absl::string_view kDefaultTarget = "127.0.0.1:50051";
// Calls in flight at most in the open loop; a call due beyond it is not sent
// and counts as a client_overload error.
constexpr int64_t kMaxOutstanding = 10000;
constexpr int kMaxChannels = 4;
// Statements in one ExecuteBatch call at most (--batch); the server's own
// bound is DBPOOL_MAX_BATCH_STATEMENTS.
constexpr int64_t kMaxBatch = 100000;
constexpr int kMaxLoadThreads = 4;
constexpr absl::string_view kClientOverload = "client_overload";
// An ExecuteBatch answered OK with another number of results than
// statements: counted as an error, so that no statement is counted that
// did not run.
constexpr absl::string_view kBatchMismatch = "batch_results_mismatch";
// How long to wait for calls that were cancelled at the end of the run.
constexpr absl::Duration kCancelGrace = absl::Seconds(5);
// How long to wait for the pool stats stream to end once cancelled.
constexpr absl::Duration kWatcherGrace = absl::Seconds(2);

constexpr absl::string_view kBenchUsage =
    R"(usage: dbpool bench --target HOST:PORT --sql SQL [--param VALUE [--param-type TYPE]]...
                    [--batch N] [--concurrency N | --rate R] [--duration 10s] [--warmup 0s]
                    [--timeout 5s] [--max-error-rate X] [--json]
       dbpool bench --rpc stats [--concurrency N | --rate R] ...
)";

constexpr absl::string_view kBenchDetails = R"(
Load-tests Query with one SQL statement (or ExecuteBatch with --batch) and
reports throughput, latency percentiles (p50, p95, p99, p99.9, max) and
pool snapshots sampled once a second from StreamPoolStats.

  --target HOST:PORT    server (default $DBPOOL_TARGET, else 127.0.0.1:50051)
  --sql SQL             the statement; $1..$n are bound to the --param values
  --param VALUE         as for `dbpool query` (int:42, str:x, null, ...), plus
                        rand:MIN:MAX, a uniform random int64 drawn per
                        statement, and seq:START, the int64 START + k for the
                        run's k-th statement (k = 0, 1, 2, ... over all calls,
                        threads and batches, warm-up included): distinct keys
                        for INSERTs
  --param-type TYPE     binds the preceding --param as that PostgreSQL type
  --batch N             each call is one ExecuteBatch of N copies of the
                        statement (rand: and seq: values drawn for each copy)
                        instead of a Query: the N run in one transaction, in
                        one pipeline; the report adds statements and
                        statements/s, latency stays per call
  --concurrency N       closed loop: N calls in flight, each completion sends
                        the next (default 8)
  --rate R              open loop: R calls per second on a fixed schedule,
                        latency measured from the intended send time; at most
                        10000 calls in flight, the rest count as errors
                        (client_overload)
  --duration D          measured time (default 10s)
  --warmup D            load before the measured time, not counted (default 0s)
  --timeout D           deadline of every call (default 5s); at the end the
                        run waits at most this long for calls in flight
  --max-error-rate X    exit 3 when errors / requests > X
  --rpc stats           call GetPoolStats instead of Query (no --sql): the
                        cost of a call that never reaches the database,
                        i.e. of gRPC itself
  --json                print the report as one JSON object

requests counts the calls sent in the measured time that completed, failed
ones included; latency covers every completed call (not client_overload).
With --batch, statements counts the statements of the OK calls (N each);
an OK batch with a result count other than N is an error
(batch_results_mismatch).

exit status: 0 done, 1 target unreachable, 2 usage error,
             3 error rate above --max-error-rate
)";

// ---------------------------------------------------------------------------
// Options

struct ParamSpec {
  // The value sent; for rand: and seq: the type hint only.
  v1::Value value;
  bool random = false;
  int64_t min = 0;
  int64_t max = 0;
  bool seq = false;  // seq:START, START + the statement's number
  int64_t start = 0;
};

struct BenchOptions {
  std::string target;
  std::string sql;
  bool sql_set = false;
  std::vector<ParamSpec> params;
  int64_t concurrency = 8;
  bool concurrency_set = false;
  double rate = 0;
  bool rate_set = false;
  absl::Duration duration = absl::Seconds(10);
  absl::Duration warmup = absl::ZeroDuration();
  absl::Duration timeout = absl::Seconds(5);
  double max_error_rate = 0;
  bool gate = false;
  bool json = false;
  bool help = false;
  bool stats_rpc = false;  // --rpc stats
  int64_t batch = 0;       // --batch N: statements per ExecuteBatch; 0: Query

  bool open_loop() const { return rate_set; }
};

absl::StatusOr<absl::Duration> ParseDurationFlag(absl::string_view text,
                                                 bool allow_zero) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d == absl::InfiniteDuration() ||
      d < absl::ZeroDuration() || (!allow_zero && d == absl::ZeroDuration())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "want a ", allow_zero ? "" : "positive ",
        "finite duration such as 10s or 250ms, got \"", text, "\""));
  }
  return d;
}

absl::StatusOr<ParamSpec> ParseBenchParam(absl::string_view text,
                                          ParamParser parse_param) {
  ParamSpec spec;
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "rand:")) {
    std::vector<absl::string_view> bounds = absl::StrSplit(rest, ':');
    if (bounds.size() != 2 || !absl::SimpleAtoi(bounds[0], &spec.min) ||
        !absl::SimpleAtoi(bounds[1], &spec.max) || spec.min > spec.max) {
      return absl::InvalidArgumentError(absl::StrCat(
          "want rand:MIN:MAX with int64 MIN <= MAX, got \"", text, "\""));
    }
    spec.random = true;
    spec.value.set_int64_value(spec.min);
    return spec;
  }
  if (absl::ConsumePrefix(&rest, "seq:")) {
    if (!absl::SimpleAtoi(rest, &spec.start)) {
      return absl::InvalidArgumentError(
          absl::StrCat("want seq:START with an int64 START, got \"", text, "\""));
    }
    spec.seq = true;
    spec.value.set_int64_value(spec.start);
    return spec;
  }
  absl::StatusOr<v1::Value> value = parse_param(text);
  if (!value.ok()) return value.status();
  spec.value = *std::move(value);
  return spec;
}

absl::Status ApplyBenchFlag(absl::string_view name, const std::string& value,
                            ParamParser parse_param, BenchOptions* o) {
  if (name == "--target") {
    if (value.empty()) return absl::InvalidArgumentError("must not be empty");
    o->target = value;
  } else if (name == "--sql") {
    if (value.empty()) return absl::InvalidArgumentError("must not be empty");
    o->sql = value;
    o->sql_set = true;
  } else if (name == "--param") {
    absl::StatusOr<ParamSpec> spec = ParseBenchParam(value, parse_param);
    if (!spec.ok()) return spec.status();
    o->params.push_back(*std::move(spec));
  } else if (name == "--param-type") {
    if (o->params.empty()) {
      return absl::InvalidArgumentError("must follow a --param");
    }
    o->params.back().value.set_type_hint(value);
  } else if (name == "--concurrency") {
    int64_t n;
    if (!absl::SimpleAtoi(value, &n) || n <= 0 || n > kMaxOutstanding) {
      return absl::InvalidArgumentError(absl::StrCat(
          "want an integer from 1 to ", kMaxOutstanding, ", got \"", value,
          "\""));
    }
    o->concurrency = n;
    o->concurrency_set = true;
  } else if (name == "--batch") {
    int64_t n;
    if (!absl::SimpleAtoi(value, &n) || n <= 0 || n > kMaxBatch) {
      return absl::InvalidArgumentError(absl::StrCat(
          "want statements per call, an integer from 1 to ", kMaxBatch,
          ", got \"", value, "\""));
    }
    o->batch = n;
  } else if (name == "--rate") {
    double r;
    if (!absl::SimpleAtod(value, &r) || !std::isfinite(r) || r <= 0 ||
        r > 1e7) {
      return absl::InvalidArgumentError(absl::StrCat(
          "want calls per second, a number above 0, got \"", value, "\""));
    }
    o->rate = r;
    o->rate_set = true;
  } else if (name == "--duration" || name == "--warmup" ||
             name == "--timeout") {
    absl::StatusOr<absl::Duration> d =
        ParseDurationFlag(value, /*allow_zero=*/name == "--warmup");
    if (!d.ok()) return d.status();
    (name == "--duration" ? o->duration
     : name == "--warmup" ? o->warmup
                          : o->timeout) = *d;
  } else if (name == "--rpc") {
    if (value != "query" && value != "stats") {
      return absl::InvalidArgumentError(
          absl::StrCat("want query or stats, got \"", value, "\""));
    }
    o->stats_rpc = value == "stats";
  } else if (name == "--max-error-rate") {
    double x;
    if (!absl::SimpleAtod(value, &x) || !std::isfinite(x) || x < 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "want a fraction such as 0.01, got \"", value, "\""));
    }
    o->max_error_rate = x;
    o->gate = true;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown flag ", name));
  }
  return absl::OkStatus();
}

constexpr absl::string_view kValueFlags[] = {
    "--target",   "--sql",      "--param",   "--param-type",
    "--concurrency", "--rate", "--duration", "--warmup",
    "--timeout",  "--max-error-rate", "--rpc", "--batch"};

absl::StatusOr<BenchOptions> ParseBenchArgs(const std::vector<std::string>& args,
                                            ParamParser parse_param) {
  BenchOptions o;
  const char* env_target = std::getenv("DBPOOL_TARGET");
  o.target = env_target != nullptr && *env_target != '\0'
                 ? env_target
                 : std::string(kDefaultTarget);
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 2 || arg[0] != '-') {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument \"", arg, "\" (give the statement as --sql)"));
    }
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(0, eq);
    if (name == "--help" || name == "-h" || name == "--json") {
      if (eq != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("flag ", name, " takes no value"));
      }
      (name == "--json" ? o.json : o.help) = true;
      continue;
    }
    if (std::find(std::begin(kValueFlags), std::end(kValueFlags), name) ==
        std::end(kValueFlags)) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag ", name));
    }
    std::string value;
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (++i == args.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag ", name, " needs a value"));
    } else {
      value = args[i];
    }
    if (absl::Status s = ApplyBenchFlag(name, value, parse_param, &o);
        !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
    }
  }
  if (o.help) return o;
  if (o.stats_rpc && (o.sql_set || !o.params.empty() || o.batch > 0)) {
    return absl::InvalidArgumentError(
        "--rpc stats takes no --sql, --param or --batch");
  }
  if (!o.sql_set && !o.stats_rpc) {
    return absl::InvalidArgumentError("--sql is required");
  }
  if (o.rate_set && o.concurrency_set) {
    return absl::InvalidArgumentError(
        "give either --concurrency (closed loop) or --rate (open loop)");
  }
  return o;
}

// ---------------------------------------------------------------------------
// Latency histogram

// Log-linear buckets over nanoseconds, as in HdrHistogram: values below 256
// are exact; above, every power of two is split into 128 equal buckets, so a
// bucket is at most 1/128 (0.8%) of its values wide, and reporting its
// midpoint keeps the error under 0.4%. 7424 buckets cover all of uint64.
class LatencyHistogram {
 public:
  static constexpr int kLinear = 256;
  static constexpr int kSubBuckets = 128;
  static constexpr int kBuckets = kLinear + 56 * kSubBuckets;

  LatencyHistogram() : counts_(kBuckets, 0) {}

  void Record(uint64_t ns) {
    ++counts_[Index(ns)];
    ++count_;
    min_ = std::min(min_, ns);
    max_ = std::max(max_, ns);
  }

  void Merge(const LatencyHistogram& other) {
    for (int i = 0; i < kBuckets; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }

  uint64_t count() const { return count_; }
  uint64_t max() const { return count_ == 0 ? 0 : max_; }

  // The value at quantile q (0 < q <= 1): the midpoint of the bucket holding
  // the ceil(q * count)-th smallest value, kept within [min, max].
  uint64_t Quantile(double q) const {
    if (count_ == 0) return 0;
    const uint64_t rank = std::max<uint64_t>(
        1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_))));
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += counts_[i];
      if (seen >= rank) {
        const uint64_t mid = Lower(i) + (Width(i) - 1) / 2;
        return std::clamp(mid, min_, max_);
      }
    }
    return max_;
  }

  static int Index(uint64_t v) {
    if (v < kLinear) return static_cast<int>(v);
    const int msb = 63 - __builtin_clzll(v);  // >= 8
    const int shift = msb - 7;                // v >> shift in [128, 256)
    return kLinear + (shift - 1) * kSubBuckets +
           static_cast<int>((v >> shift) - kSubBuckets);
  }
  static uint64_t Lower(int i) {
    if (i < kLinear) return static_cast<uint64_t>(i);
    const int k = i - kLinear;
    const int shift = k / kSubBuckets + 1;
    return static_cast<uint64_t>(k % kSubBuckets + kSubBuckets) << shift;
  }
  static uint64_t Width(int i) {
    if (i < kLinear) return 1;
    return uint64_t{1} << ((i - kLinear) / kSubBuckets + 1);
  }

 private:
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  uint64_t min_ = UINT64_MAX;
  uint64_t max_ = 0;
};

// ---------------------------------------------------------------------------
// Pool samples

struct PoolSample {
  double t_s = 0;  // since the start of the run, warm-up included
  bool warmup = false;
  int32_t active = 0;
  int32_t idle = 0;
  int32_t waiting = 0;
  int32_t total = 0;
  int32_t max = 0;
  double acquire_p95_ms = 0;
  double acquire_p99_ms = 0;
};

double ProtoMillis(const google::protobuf::Duration& d) {
  return static_cast<double>(TimeUtil::DurationToNanoseconds(d)) / 1e6;
}

// Follows StreamPoolStats (interval 1 s) for the length of the run, on the
// CompletionQueue of the load thread that drives it. Not on a thread of its
// own nor through the callback API: any thread waiting in gRPC takes turns
// at polling its sockets, and would take the load's completions from the
// load thread only to hand them back.
//
// Thread-safety: used by the driving thread alone from Start until done();
// samples() and early_status() after that thread has ended.
class PoolWatcher {
 public:
  PoolWatcher(v1::DatabaseService::Stub* stub, const Connection& connection)
      : stub_(stub), connection_(connection) {
    request_.mutable_interval()->set_seconds(1);
  }

  PoolWatcher(const PoolWatcher&) = delete;
  PoolWatcher& operator=(const PoolWatcher&) = delete;

  void Start(grpc::CompletionQueue* cq, Clock::time_point t0,
             Clock::time_point measure_start) {
    t0_ = t0;
    measure_start_ = measure_start;
    connection_.Authorize(&context_);
    reader_ = stub_->PrepareAsyncStreamPoolStats(&context_, request_, cq);
    reader_->StartCall(&started_);
  }

  // Handles an event of the queue and returns true if it is this watcher's.
  bool Handle(void* tag, bool ok) {
    if (tag == &finished_) {
      done_ = true;
      return true;
    }
    if (tag != &started_ && tag != &read_) return false;
    if (!ok) {
      // The stream has ended (or never began): its status comes next.
      reader_->Finish(&status_, &finished_);
      return true;
    }
    if (tag == &read_) Record();
    reader_->Read(&stats_, &read_);
    return true;
  }

  // Ends the stream; done() once gRPC is through with this object. A status
  // that came before is kept as early_status().
  void Stop() {
    if (done_) early_status_ = status_;
    context_.TryCancel();
  }
  bool done() const { return done_; }

  const std::vector<PoolSample>& samples() const { return samples_; }
  // The stream's status if it ended before Stop, else OK.
  const grpc::Status& early_status() const { return early_status_; }

 private:
  void Record() {
    const Clock::time_point now = Clock::now();
    PoolSample s;
    s.t_s = std::chrono::duration<double>(now - t0_).count();
    s.warmup = now < measure_start_;
    s.active = stats_.active_connections();
    s.idle = stats_.idle_connections();
    s.waiting = stats_.waiting_connections();
    s.total = stats_.total_connections();
    s.max = stats_.max_connections();
    s.acquire_p95_ms = ProtoMillis(stats_.acquire_p95());
    s.acquire_p99_ms = ProtoMillis(stats_.acquire_p99());
    samples_.push_back(s);
  }

  v1::DatabaseService::Stub* const stub_;
  const Connection& connection_;
  Clock::time_point t0_;
  Clock::time_point measure_start_;
  grpc::ClientContext context_;
  v1::StreamPoolStatsRequest request_;
  v1::PoolStats stats_;
  // Lives in the call's arena: released before the context that owns it.
  std::unique_ptr<grpc::ClientAsyncReader<v1::PoolStats>> reader_;
  // Their addresses are the tags of the stream's steps.
  char started_ = 0;
  char read_ = 0;
  char finished_ = 0;
  bool done_ = false;
  grpc::Status status_;
  grpc::Status early_status_;
  std::vector<PoolSample> samples_;
};

// ---------------------------------------------------------------------------
// The load
//
// A few LoadThreads, each owning one CompletionQueue and taking the
// completions of its share of the calls on its own thread. In the closed
// loop a completion sends the slot's next call right there, so no call is
// ever handed between threads. (gRPC's callback API runs every completion on
// its executor threads; those hand-offs made up about a third of the load
// generator's CPU per call.) The Runner starts the threads, sends the open
// loop's calls on schedule and merges the threads' tallies at the end.

struct Results {
  LatencyHistogram latency;
  int64_t requests = 0;
  int64_t ok = 0;
  int64_t errors = 0;
  int64_t statements = 0;  // of the OK calls: --batch each, else one each
  std::map<std::string, int64_t> errors_by_code;

  void Merge(const Results& other) {
    latency.Merge(other.latency);
    requests += other.requests;
    ok += other.ok;
    errors += other.errors;
    statements += other.statements;
    for (const auto& [code, n] : other.errors_by_code) errors_by_code[code] += n;
  }
};

std::string CodeName(grpc::StatusCode code) {
  // gRPC and absl share the canonical code numbers.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// What every load thread reads and nobody writes once the run has started
// (but for the seq: counter, which they share).
struct LoadPlan {
  const BenchOptions* options = nullptr;
  const Connection* connection = nullptr;
  // The template: rand: and seq: values are set per statement.
  v1::QueryRequest request;
  // --batch N: N copies of request.
  v1::ExecuteBatchRequest batch_request;
  std::vector<int> random_params;  // indexes into request.params()
  std::vector<int> seq_params;     // indexes into request.params()
  // Statements numbered so far, for seq: (shared by the sending threads).
  std::atomic<int64_t>* seq_counter = nullptr;
  v1::GetPoolStatsRequest stats_request;  // --rpc stats
  Clock::time_point t0;
  Clock::time_point measure_start;
  Clock::time_point end;
};

// A deadline for gRPC's waits, which take no steady_clock time points.
gpr_timespec GrpcDeadline(Clock::time_point t) {
  const int64_t ns = std::max<int64_t>(
      0, std::chrono::duration_cast<std::chrono::nanoseconds>(t - Clock::now())
             .count());
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_nanos(ns, GPR_TIMESPAN));
}

// One load thread: a CompletionQueue, the slots of the calls on it, the
// stubs (channels) they go out on, and the tallies of their completions.
//
// The thread takes every completion from its queue. Calls are sent by the
// "sending thread": in the closed loop the load thread itself (a completion
// sends the slot's next call), in the open loop the Runner's scheduler,
// which sends each call when it is due through SendDue. That costs no
// hand-off per call: telling the load thread to send instead would wake it
// once more per call (through an alarm on its queue), and on 2 cores those
// wakes made it fall behind at 10000 calls/s.
//
// Thread-safety: the free slots are shared under free_mu_, the count of
// calls sent is atomic; the rest belongs to the load thread, or to the
// sending thread (stubs, random numbers, the overload count). The
// constructor, Join and results run on the Runner's thread, before Start and
// after the thread has ended.
class LoadThread {
 public:
  // closed loop: `slots` calls in flight from the start to the end of the
  // run; open loop: at most `slots` in flight, a call due beyond that is
  // counted as client_overload. watcher, if any, is driven on this thread's
  // queue from Start until the load has drained.
  LoadThread(const LoadPlan& plan, std::vector<v1::DatabaseService::Stub*> stubs,
             int64_t slots, PoolWatcher* watcher)
      : plan_(plan),
        stubs_(std::move(stubs)),
        max_slots_(slots),
        watcher_(watcher),
        rng_(Seed()) {}

  LoadThread(const LoadThread&) = delete;
  LoadThread& operator=(const LoadThread&) = delete;

  void Start() {
    thread_ = std::thread([this] { drained_ = Loop(); });
  }

  // Open loop, on the scheduler's thread: sends a call due at `due` (late
  // or not: its latency counts from due), or counts it as client_overload
  // when `slots` calls are in flight.
  void SendDue(Clock::time_point due) {
    Slot* slot = TakeSlot();
    if (slot == nullptr) {
      if (due >= plan_.measure_start) ++overloaded_;
      return;
    }
    Send(slot, due);
  }

  // Open loop, on the scheduler's thread: no more calls will be sent. Wakes
  // the thread (an alarm on its queue, due at once) to drain what is left.
  void EndSchedule() {
    schedule_over_.store(true, std::memory_order_release);
    wake_.Set(&cq_, gpr_inf_past(GPR_CLOCK_MONOTONIC), &wake_);
  }

  // Waits for the thread to end; true when every call sent on its queue has
  // finished, and the queue is then shut down. Called once, after the
  // scheduler's last call. On false, gRPC still refers to the slots and the
  // queue: this object must not be destroyed.
  bool Join() {
    thread_.join();
    if (overloaded_ > 0) {
      results_.requests += overloaded_;
      results_.errors += overloaded_;
      results_.errors_by_code[std::string(kClientOverload)] += overloaded_;
      overloaded_ = 0;
    }
    if (!drained_) return false;
    cq_.Shutdown();
    // What is left is at most the wake of EndSchedule, due at once.
    const Clock::time_point deadline =
        Clock::now() + absl::ToChronoNanoseconds(kCancelGrace);
    void* tag;
    bool ok;
    grpc::CompletionQueue::NextStatus next;
    while ((next = cq_.AsyncNext(&tag, &ok, GrpcDeadline(deadline))) ==
           grpc::CompletionQueue::GOT_EVENT) {
    }
    return next == grpc::CompletionQueue::SHUTDOWN;
  }

  // After Join.
  const Results& results() const { return results_; }

 private:
  // One call in flight at a time, reused from call to call: its request
  // keeps the statement and the fixed params, only rand: and seq: values
  // change. Filled by the sending thread, finished by the load thread; gRPC
  // orders the two.
  struct Slot {
    // A context serves one call: a new one is made in place for each.
    std::optional<grpc::ClientContext> context;
    v1::QueryRequest request;
    v1::QueryResponse response;
    v1::ExecuteBatchRequest batch_request;    // --batch
    v1::ExecuteBatchResponse batch_response;  // --batch
    v1::PoolStats stats;  // --rpc stats
    // Live in the call's arena: released before the context that owns it.
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::QueryResponse>> query;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::ExecuteBatchResponse>>
        batch_call;
    std::unique_ptr<grpc::ClientAsyncResponseReader<v1::PoolStats>> stats_call;
    grpc::Status status;
    // Intended send time (open loop) or actual send time (closed loop).
    Clock::time_point start;
    bool live = false;
  };

  static std::mt19937_64 Seed() {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device()};
    return std::mt19937_64(seed);
  }

  const BenchOptions& options() const { return *plan_.options; }
  int64_t in_flight() const {
    return sent_.load(std::memory_order_acquire) - finished_;
  }

  // The thread: load, drain, stop the watcher. False when calls, or the
  // watcher's stream, were still in flight after their grace.
  bool Loop() {
    if (watcher_ != nullptr) {
      watcher_->Start(&cq_, plan_.t0, plan_.measure_start);
    }
    bool drained = RunLoad();
    if (watcher_ != nullptr) {
      watcher_->Stop();
      const Clock::time_point deadline =
          Clock::now() + absl::ToChronoNanoseconds(kWatcherGrace);
      while (!watcher_->done() && Poll(deadline)) {
      }
      drained = drained && watcher_->done();
    }
    return drained;
  }

  // Takes completions until the load is over and its calls have finished;
  // false when some were still in flight after the cancel grace.
  bool RunLoad() {
    if (options().open_loop()) {
      // EndSchedule's wake ends the last wait; the bound only keeps every
      // wait finite.
      while (!schedule_over_.load(std::memory_order_acquire)) {
        Poll(Clock::now() + std::chrono::seconds(1));
      }
    } else {
      for (int64_t i = 0; i < max_slots_; ++i) Send(NewSlot(), Clock::now());
      while (Clock::now() < plan_.end) Poll(plan_.end);
    }
    // Every call has a deadline of --timeout from its send, so this wait
    // normally ends as the last one completes.
    if (Drain(Clock::now() + absl::ToChronoNanoseconds(options().timeout))) {
      return true;
    }
    // No more sends (the schedule is over): the slots are this thread's.
    for (const std::unique_ptr<Slot>& slot : slots_) {
      if (slot->live) slot->context->TryCancel();
    }
    return Drain(Clock::now() + absl::ToChronoNanoseconds(kCancelGrace));
  }

  // Handles events until no call is in flight; false if deadline came first.
  bool Drain(Clock::time_point deadline) {
    while (in_flight() > 0 && Poll(deadline)) {
    }
    return in_flight() == 0;
  }

  // Waits until deadline for one event and handles it; false on timeout.
  bool Poll(Clock::time_point deadline) {
    void* tag;
    bool ok;
    if (cq_.AsyncNext(&tag, &ok, GrpcDeadline(deadline)) !=
        grpc::CompletionQueue::GOT_EVENT) {
      return false;
    }
    if (tag == &wake_) return true;  // the schedule is over
    if (watcher_ == nullptr || !watcher_->Handle(tag, ok)) {
      OnDone(static_cast<Slot*>(tag));
    }
    return true;
  }

  // Sending thread: a new slot, owned by slots_.
  Slot* NewSlot() {
    auto slot = std::make_unique<Slot>();
    if (options().batch > 0) {
      slot->batch_request = plan_.batch_request;
    } else {
      slot->request = plan_.request;
    }
    slots_.push_back(std::move(slot));
    return slots_.back().get();
  }

  // Open loop, scheduler's thread: a free slot, a new one while fewer than
  // max_slots_ exist, or nullptr when all of them carry calls.
  Slot* TakeSlot() {
    {
      std::lock_guard<std::mutex> lock(free_mu_);
      if (!free_.empty()) {
        Slot* slot = free_.back();
        free_.pop_back();
        return slot;
      }
    }
    return static_cast<int64_t>(slots_.size()) < max_slots_ ? NewSlot()
                                                            : nullptr;
  }

  // Sending thread.
  void Send(Slot* slot, Clock::time_point start) {
    slot->query.reset();
    slot->batch_call.reset();
    slot->stats_call.reset();
    slot->context.emplace();
    grpc::ClientContext* context = &*slot->context;
    context->set_deadline(std::chrono::system_clock::now() +
                          absl::ToChronoNanoseconds(options().timeout));
    plan_.connection->Authorize(context);
    slot->start = start;
    slot->live = true;
    sent_.fetch_add(1, std::memory_order_release);
    v1::DatabaseService::Stub* stub = stubs_[next_stub_++ % stubs_.size()];
    if (options().stats_rpc) {
      slot->stats_call =
          stub->AsyncGetPoolStats(context, plan_.stats_request, &cq_);
      slot->stats_call->Finish(&slot->stats, &slot->status, slot);
      return;
    }
    if (options().batch > 0) {
      const int64_t n = options().batch;
      int64_t seq = 0;
      if (!plan_.seq_params.empty()) {
        seq = plan_.seq_counter->fetch_add(n, std::memory_order_relaxed);
      }
      for (int64_t k = 0; k < n; ++k) {
        SetVaryingParams(slot->batch_request.mutable_statements(static_cast<int>(k)),
                         seq + k);
      }
      slot->batch_call =
          stub->AsyncExecuteBatch(context, slot->batch_request, &cq_);
      slot->batch_call->Finish(&slot->batch_response, &slot->status, slot);
      return;
    }
    int64_t seq = 0;
    if (!plan_.seq_params.empty()) {
      seq = plan_.seq_counter->fetch_add(1, std::memory_order_relaxed);
    }
    SetVaryingParams(&slot->request, seq);
    slot->query = stub->AsyncQuery(context, slot->request, &cq_);
    slot->query->Finish(&slot->response, &slot->status, slot);
  }

  // Sending thread: draws the rand: params of one statement and sets its
  // seq: params for statement number `seq` of the run.
  void SetVaryingParams(v1::QueryRequest* request, int64_t seq) {
    for (int i : plan_.random_params) {
      const ParamSpec& spec = options().params[i];
      std::uniform_int_distribution<int64_t> dist(spec.min, spec.max);
      request->mutable_params(i)->set_int64_value(dist(rng_));
    }
    for (int i : plan_.seq_params) {
      request->mutable_params(i)->set_int64_value(options().params[i].start +
                                                  seq);
    }
  }

  void OnDone(Slot* slot) {
    const Clock::time_point now = Clock::now();
    slot->live = false;
    ++finished_;
    if (slot->start >= plan_.measure_start) {
      ++results_.requests;
      const int64_t batch = options().batch;
      if (!slot->status.ok()) {
        ++results_.errors;
        ++results_.errors_by_code[CodeName(slot->status.error_code())];
      } else if (batch > 0 && slot->batch_response.results_size() != batch) {
        ++results_.errors;
        ++results_.errors_by_code[std::string(kBatchMismatch)];
      } else {
        ++results_.ok;
        results_.statements += batch > 0 ? batch : 1;
      }
      const int64_t ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot->start)
              .count();
      results_.latency.Record(static_cast<uint64_t>(std::max<int64_t>(ns, 0)));
    }
    if (options().open_loop()) {
      std::lock_guard<std::mutex> lock(free_mu_);
      free_.push_back(slot);
    } else if (now < plan_.end) {
      // Closed loop: the slot's next call.
      Send(slot, now);
    }
  }

  const LoadPlan& plan_;
  const std::vector<v1::DatabaseService::Stub*> stubs_;
  const int64_t max_slots_;
  PoolWatcher* const watcher_;

  // Declared before the alarm, which must go first.
  grpc::CompletionQueue cq_;
  grpc::Alarm wake_;
  std::atomic<bool> schedule_over_{false};

  // Sending thread (and this thread once the sends are over).
  std::vector<std::unique_ptr<Slot>> slots_;
  size_t next_stub_ = 0;
  std::mt19937_64 rng_;
  int64_t overloaded_ = 0;  // open loop: calls due in the measured time
  std::atomic<int64_t> sent_{0};

  std::mutex free_mu_;
  std::vector<Slot*> free_;  // open loop: slots without a call

  // This thread.
  int64_t finished_ = 0;
  Results results_;

  std::thread thread_;
  bool drained_ = false;  // written by the thread, read after it is joined
};

// Runs the load on `threads` LoadThreads over the given stubs, with the pool
// watcher on the first of them, and merges what they counted. Used from one
// thread, which in the open loop is also the scheduler.
class Runner {
 public:
  Runner(const BenchOptions& options, const Connection& connection,
         std::vector<std::unique_ptr<v1::DatabaseService::Stub>> stubs,
         int threads)
      : stubs_(std::move(stubs)),
        watcher_(stubs_.front().get(), connection) {
    plan_.options = &options;
    plan_.connection = &connection;
    plan_.request.set_sql(options.sql);
    for (size_t i = 0; i < options.params.size(); ++i) {
      *plan_.request.add_params() = options.params[i].value;
      if (options.params[i].random) {
        plan_.random_params.push_back(static_cast<int>(i));
      }
      if (options.params[i].seq) {
        plan_.seq_params.push_back(static_cast<int>(i));
      }
    }
    for (int64_t k = 0; k < options.batch; ++k) {
      *plan_.batch_request.add_statements() = plan_.request;
    }
    plan_.seq_counter = &seq_counter_;
    // Closed loop: the calls in flight, split evenly; open loop: the cap on
    // them, split evenly too, as the schedule deals calls round-robin.
    const int64_t total =
        options.open_loop() ? kMaxOutstanding : options.concurrency;
    for (int t = 0; t < threads; ++t) {
      // Each thread its own channels when there are enough to go round.
      std::vector<v1::DatabaseService::Stub*> mine;
      for (size_t c = t % stubs_.size(); c < stubs_.size(); c += threads) {
        mine.push_back(stubs_[c].get());
      }
      const int64_t slots = total / threads + (t < total % threads ? 1 : 0);
      threads_.push_back(std::make_unique<LoadThread>(
          plan_, std::move(mine), slots, t == 0 ? &watcher_ : nullptr));
    }
  }

  // Runs the load from t0; returns true when every call has finished (false
  // only if cancelled calls did not come back, in which case this object
  // must not be destroyed).
  bool Run(Clock::time_point t0) {
    const BenchOptions& options = *plan_.options;
    plan_.t0 = t0;
    plan_.measure_start = t0 + absl::ToChronoNanoseconds(options.warmup);
    plan_.end = plan_.measure_start + absl::ToChronoNanoseconds(options.duration);
    for (const auto& thread : threads_) thread->Start();
    if (options.open_loop()) RunSchedule();
    bool all_done = true;
    for (const auto& thread : threads_) {
      all_done = thread->Join() && all_done;
      results_.Merge(thread->results());
    }
    return all_done;
  }

  // After Run.
  const Results& results() const { return results_; }
  const std::vector<PoolSample>& samples() const { return watcher_.samples(); }
  const grpc::Status& pool_stream_status() const {
    return watcher_.early_status();
  }
  size_t channels() const { return stubs_.size(); }

 private:
  // Open loop: call i is due at t0 + i / rate, whatever became of the
  // earlier ones, and goes out on thread i % threads. A late scheduler sends
  // the overdue calls at once; their latency still counts from when they
  // were due.
  void RunSchedule() {
    const double period_ns = 1e9 / plan_.options->rate;
    for (int64_t i = 0;; ++i) {
      const Clock::time_point due =
          plan_.t0 + std::chrono::nanoseconds(static_cast<int64_t>(
                         std::llround(static_cast<double>(i) * period_ns)));
      if (due >= plan_.end) break;
      if (Clock::now() < due) std::this_thread::sleep_until(due);
      threads_[i % threads_.size()]->SendDue(due);
    }
    for (const auto& thread : threads_) thread->EndSchedule();
  }

  const std::vector<std::unique_ptr<v1::DatabaseService::Stub>> stubs_;
  PoolWatcher watcher_;
  std::atomic<int64_t> seq_counter_{0};
  LoadPlan plan_;
  std::vector<std::unique_ptr<LoadThread>> threads_;
  Results results_;
};

// ---------------------------------------------------------------------------
// Report

struct Report {
  const BenchOptions* options;
  size_t channels;
  Results results;
  std::vector<PoolSample> samples;
  grpc::Status pool_stream_status;

  double duration_s() const {
    return absl::ToDoubleSeconds(options->duration);
  }
  double rps() const { return results.requests / duration_s(); }
  // --batch: the statements of the OK calls per second.
  double statements_per_s() const {
    return static_cast<double>(results.statements) / duration_s();
  }
  double error_rate() const {
    return results.requests == 0
               ? 0.0
               : static_cast<double>(results.errors) / results.requests;
  }
  // The gate fails also when nothing completed: no evidence of health.
  bool gate_failed() const {
    return options->gate &&
           (results.requests == 0 || error_rate() > options->max_error_rate);
  }
  double LatencyMs(double q) const {
    return static_cast<double>(results.latency.Quantile(q)) / 1e6;
  }
  double MaxMs() const {
    return static_cast<double>(results.latency.max()) / 1e6;
  }
};

std::string JsonEscape(absl::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += "\"";
  return out;
}

// A JSON number: integral values without a fraction, others with up to 6
// significant digits after the point.
std::string JsonNumber(double d) {
  if (!std::isfinite(d)) return "null";
  if (d == std::floor(d) && std::fabs(d) < 1e15) {
    return absl::StrCat(static_cast<int64_t>(d));
  }
  std::string s = absl::StrFormat("%.6f", d);
  s.erase(s.find_last_not_of('0') + 1);
  if (s.back() == '.') s.pop_back();
  return s;
}

std::string Ms(double ms) { return absl::StrFormat("%.3f", ms); }

void PrintJsonReport(const Report& r) {
  const BenchOptions& o = *r.options;
  std::vector<std::string> m;
  m.push_back(absl::StrCat("\"mode\":", JsonEscape(o.open_loop() ? "open" : "closed")));
  if (o.open_loop()) {
    m.push_back(absl::StrCat("\"rate\":", JsonNumber(o.rate)));
  } else {
    m.push_back(absl::StrCat("\"concurrency\":", o.concurrency));
  }
  m.push_back(absl::StrCat("\"target\":", JsonEscape(o.target)));
  m.push_back(absl::StrCat("\"sql\":", JsonEscape(o.sql)));
  m.push_back(absl::StrCat("\"channels\":", r.channels));
  m.push_back(absl::StrCat("\"duration_s\":", JsonNumber(r.duration_s())));
  m.push_back(absl::StrCat("\"warmup_s\":",
                           JsonNumber(absl::ToDoubleSeconds(o.warmup))));
  m.push_back(absl::StrCat("\"timeout_s\":",
                           JsonNumber(absl::ToDoubleSeconds(o.timeout))));
  m.push_back(absl::StrCat("\"requests\":", r.results.requests));
  m.push_back(absl::StrCat("\"ok\":", r.results.ok));
  m.push_back(absl::StrCat("\"errors\":", r.results.errors));
  std::vector<std::string> codes;
  for (const auto& [code, n] : r.results.errors_by_code) {
    codes.push_back(absl::StrCat(JsonEscape(code), ":", n));
  }
  m.push_back(absl::StrCat("\"errors_by_code\":{", absl::StrJoin(codes, ","), "}"));
  m.push_back(absl::StrCat("\"error_rate\":", JsonNumber(r.error_rate())));
  if (o.gate) {
    m.push_back(absl::StrCat("\"max_error_rate\":", JsonNumber(o.max_error_rate)));
  }
  m.push_back(absl::StrCat("\"rps\":", JsonNumber(std::round(r.rps() * 1000) / 1000)));
  if (o.batch > 0) {
    m.push_back(absl::StrCat("\"batch\":", o.batch));
    m.push_back(absl::StrCat("\"statements\":", r.results.statements));
    m.push_back(absl::StrCat(
        "\"statements_per_s\":",
        JsonNumber(std::round(r.statements_per_s() * 1000) / 1000)));
  }
  m.push_back(absl::StrFormat(
      "\"latency_ms\":{\"p50\":%s,\"p95\":%s,\"p99\":%s,\"p999\":%s,\"max\":%s}",
      Ms(r.LatencyMs(0.50)), Ms(r.LatencyMs(0.95)), Ms(r.LatencyMs(0.99)),
      Ms(r.LatencyMs(0.999)), Ms(r.MaxMs())));
  std::vector<std::string> samples;
  for (const PoolSample& s : r.samples) {
    samples.push_back(absl::StrFormat(
        "{\"t_s\":%.3f,\"warmup\":%s,\"active\":%d,\"idle\":%d,\"waiting\":%d,"
        "\"total\":%d,\"max\":%d,\"acquire_p95_ms\":%s,\"acquire_p99_ms\":%s}",
        s.t_s, s.warmup ? "true" : "false", s.active, s.idle, s.waiting,
        s.total, s.max, Ms(s.acquire_p95_ms), Ms(s.acquire_p99_ms)));
  }
  m.push_back(absl::StrCat("\"pool_samples\":[", absl::StrJoin(samples, ","), "]"));
  if (!r.pool_stream_status.ok()) {
    m.push_back(absl::StrCat(
        "\"pool_stream_error\":",
        JsonEscape(absl::StrCat(CodeName(r.pool_stream_status.error_code()),
                                ": ", r.pool_stream_status.error_message()))));
  }
  std::cout << "{" << absl::StrJoin(m, ",") << "}" << std::endl;
}

void PrintHumanReport(const Report& r) {
  const BenchOptions& o = *r.options;
  std::string out;
  absl::StrAppend(
      &out, "dbpool bench: ",
      o.open_loop() ? absl::StrCat("open loop, ", JsonNumber(o.rate), " calls/s")
                    : absl::StrCat("closed loop, concurrency ", o.concurrency),
      ", ", absl::FormatDuration(o.duration), " measured (warm-up ",
      absl::FormatDuration(o.warmup), "), timeout ",
      absl::FormatDuration(o.timeout), ", ", r.channels, " channel",
      r.channels == 1 ? "" : "s", ", target ", o.target, "\n");
  absl::StrAppend(&out, "  sql: ", o.sql, "\n");
  if (o.batch > 0) {
    absl::StrAppend(&out, "  ExecuteBatch of ", o.batch, " statement",
                    o.batch == 1 ? "" : "s", " per call\n");
  }
  absl::StrAppendFormat(&out,
                        "requests   %d (%d ok, %d errors, error rate %.2f%%)\n",
                        r.results.requests, r.results.ok, r.results.errors,
                        100 * r.error_rate());
  absl::StrAppendFormat(&out, "throughput %.1f calls/s\n", r.rps());
  if (o.batch > 0) {
    absl::StrAppendFormat(&out, "statements %d (%.1f statements/s)\n",
                          r.results.statements, r.statements_per_s());
  }
  absl::StrAppendFormat(
      &out, "latency ms p50 %s  p95 %s  p99 %s  p99.9 %s  max %s\n",
      Ms(r.LatencyMs(0.50)), Ms(r.LatencyMs(0.95)), Ms(r.LatencyMs(0.99)),
      Ms(r.LatencyMs(0.999)), Ms(r.MaxMs()));
  if (!r.results.errors_by_code.empty()) {
    absl::StrAppend(&out, "errors    ");
    for (const auto& [code, n] : r.results.errors_by_code) {
      absl::StrAppend(&out, " ", code, "=", n);
    }
    absl::StrAppend(&out, "\n");
  }
  absl::StrAppend(&out, "pool samples (", r.samples.size(), "):\n");
  absl::StrAppend(&out,
                  "     t_s  active  idle  waiting  total  max  acquire_p95_ms"
                  "  acquire_p99_ms\n");
  for (const PoolSample& s : r.samples) {
    absl::StrAppendFormat(&out, "  %6.1f%s %6d %5d %8d %6d %4d %15s %15s\n",
                          s.t_s, s.warmup ? "w" : " ", s.active, s.idle,
                          s.waiting, s.total, s.max, Ms(s.acquire_p95_ms),
                          Ms(s.acquire_p99_ms));
  }
  if (!r.pool_stream_status.ok()) {
    absl::StrAppend(&out, "pool stream ended early: ",
                    CodeName(r.pool_stream_status.error_code()), ": ",
                    r.pool_stream_status.error_message(), "\n");
  }
  std::cout << out << std::flush;
}

int ReportBenchUsageError(absl::string_view message) {
  std::cerr << "dbpool bench: " << message << "\n\n"
            << kBenchUsage << "\nrun 'dbpool bench --help' for details\n";
  return kExitUsage;
}

// Channels: one per 8 calls in flight (closed loop) or per 500 calls/s (open
// loop), 1 to 4. On one thread, 1, 2 or 4 channels cost the client about
// the same per call, but the server answers GetPoolStats faster over more
// connections (64 callers: 31k calls/s over 1, 37k over 4).
int ChannelCount(const BenchOptions& o) {
  const double load = o.open_loop() ? o.rate / 500.0 : o.concurrency / 8.0;
  return std::clamp(static_cast<int>(std::ceil(load)), 1, kMaxChannels);
}

// Load threads: one per 4 cores, 1 to 4, and no more than calls in flight.
// Every thread waiting in gRPC takes turns at polling all of its sockets and
// hands the completions it finds to the thread that owns them: on 2 cores a
// second thread raised the CPU per call by a quarter to a half for no more
// throughput, so more pay only where one could not keep up with the server.
int LoadThreadCount(const BenchOptions& o) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  int n = std::clamp(cores / 4, 1, kMaxLoadThreads);
  if (!o.open_loop()) n = static_cast<int>(std::min<int64_t>(n, o.concurrency));
  return n;
}

}  // namespace

int RunBench(const std::vector<std::string>& args, ParamParser parse_param) {
  absl::StatusOr<BenchOptions> parsed = ParseBenchArgs(args, parse_param);
  if (!parsed.ok()) return ReportBenchUsageError(parsed.status().message());
  const BenchOptions& options = *parsed;
  if (options.help) {
    std::cout << kBenchUsage << kBenchDetails << Connection::kHelp;
    return kExitOk;
  }
  const absl::StatusOr<Connection> connection = Connection::FromEnvironment();
  if (!connection.ok()) return ReportBenchUsageError(connection.status().message());
  // Debian's abseil checks every absl::Mutex lock for deadlock cycles, and
  // gRPC takes several on each call: a cost of the load generator's own,
  // which the server (server/main.cc) turns off too.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Distinct channel args keep the channels from sharing one subchannel, and
  // so one HTTP/2 connection.
  std::vector<std::unique_ptr<v1::DatabaseService::Stub>> stubs;
  const auto connect_deadline =
      std::chrono::system_clock::now() +
      absl::ToChronoNanoseconds(options.timeout);
  const int channel_count = ChannelCount(options);
  for (int i = 0; i < channel_count; ++i) {
    grpc::ChannelArguments channel_args;
    channel_args.SetInt("grpc.channel_id", i);
    channel_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    // The minimal filter stack leaves out what a load generator does not
    // use (message size limits, compression, idleness), about 5 us of CPU
    // per call. It would leave out the client's deadline timer as well:
    // that one is asked back, so a call the server never answers still ends
    // at --timeout.
    channel_args.SetInt(GRPC_ARG_MINIMAL_STACK, 1);
    channel_args.SetInt(GRPC_ARG_ENABLE_DEADLINE_CHECKS, 1);
    std::shared_ptr<grpc::Channel> channel =
        connection->Open(options.target, channel_args);
    // Connected up front, so that the connection set-up is not measured.
    if (!channel->WaitForConnected(connect_deadline)) {
      std::cerr << "dbpool bench: cannot connect to " << options.target
                << " within " << absl::FormatDuration(options.timeout) << "\n";
      return kExitUnreachable;
    }
    stubs.push_back(v1::DatabaseService::NewStub(channel));
  }
  auto* runner = new Runner(options, *connection, std::move(stubs),
                            LoadThreadCount(options));
  const bool runner_done = runner->Run(Clock::now());

  Report report{&options, runner->channels(), runner->results(),
                runner->samples(), runner->pool_stream_status()};
  if (options.json) {
    PrintJsonReport(report);
  } else {
    PrintHumanReport(report);
  }
  int code = kExitOk;
  if (report.gate_failed()) {
    std::cerr << absl::StrFormat(
        "dbpool bench: error rate %.4f (%d of %d) is above --max-error-rate "
        "%g\n",
        report.error_rate(), report.results.errors, report.results.requests,
        options.max_error_rate);
    code = kExitErrorGate;
  }
  if (!runner_done) {
    // gRPC still holds calls that refer to these objects: leave without
    // destroying them.
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(code);
  }
  delete runner;
  return code;
}

}  // namespace dbpool::cli
