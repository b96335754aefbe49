// RoutingEngine over scripted engines: the routing rules, the lag measure,
// read-your-writes tokens and waits, retries and transactions, with the
// probes answered as PostgreSQL would and run when the test says.
#include "server/engine/routing_engine.h"

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "server/db/lsn.h"

namespace dbpool::engine {
namespace {

constexpr char kFlushProbe[] = "SELECT pg_current_wal_flush_lsn()::text";
constexpr char kInsertProbe[] = "SELECT pg_current_wal_insert_lsn()::text";
constexpr char kReplayProbe[] = "SELECT pg_last_wal_replay_lsn()::text, pg_is_in_recovery()";

v1::QueryResponse OneRow(std::vector<v1::Value> values) {
  v1::QueryResponse r;
  v1::Row* row = r.add_rows();
  for (auto& v : values) *row->add_values() = std::move(v);
  return r;
}

v1::Value Text(const std::string& s) {
  v1::Value v;
  v.set_string_value(s);
  return v;
}

v1::Value Bool(bool b) {
  v1::Value v;
  v.set_bool_value(b);
  return v;
}

class NoopHandle final : public QueryHandle {
 public:
  void Cancel() override {}
};

// A node that answers the probes from its settings and every other
// statement with a row naming itself, inside Submit; or, once told to
// hold, keeps the other statements until the test releases them.
class ScriptedEngine final : public QueryEngine {
 public:
  explicit ScriptedEngine(std::string name) : name_(std::move(name)) {}

  void set_lsn(uint64_t lsn) {
    absl::MutexLock lock(&mu_);
    lsn_ = lsn;
  }
  void set_down(bool down) {
    absl::MutexLock lock(&mu_);
    down_ = down;
  }
  // Statements (not probes) fail with this from now on; OK: they succeed.
  void set_failure(absl::Status status) {
    absl::MutexLock lock(&mu_);
    failure_ = std::move(status);
  }
  void set_hold(bool hold) {
    absl::MutexLock lock(&mu_);
    hold_ = hold;
  }
  // Completes the held statements.
  void Release() {
    std::vector<QueryDone> held;
    {
      absl::MutexLock lock(&mu_);
      held.swap(held_);
    }
    for (auto& done : held) std::move(done)(Answer());
  }
  int statements() const {
    absl::MutexLock lock(&mu_);
    return statements_;
  }
  std::vector<std::string> begun() const {
    absl::MutexLock lock(&mu_);
    return begun_;
  }

  std::shared_ptr<QueryHandle> Submit(QueryJob job, QueryDone done) override {
    const std::string& sql = job.statements.at(0).request.sql();
    QueryResult result;
    {
      absl::MutexLock lock(&mu_);
      if (sql == kFlushProbe || sql == kInsertProbe || sql == kReplayProbe) {
        if (down_) {
          result.status = absl::UnavailableError("down");
        } else if (sql == kReplayProbe) {
          result.responses.push_back(OneRow({Text(db::FormatLsn(lsn_)), Bool(true)}));
        } else {
          result.responses.push_back(OneRow({Text(db::FormatLsn(lsn_))}));
        }
      } else {
        ++statements_;
        if (hold_) {
          held_.push_back(std::move(done));
          return std::make_shared<NoopHandle>();
        }
        result = AnswerLocked();
      }
    }
    std::move(done)(std::move(result));
    return std::make_shared<NoopHandle>();
  }

  std::shared_ptr<StreamHandle> SubmitStream(QueryJob, StreamSink&) override {
    ADD_FAILURE() << "no streams here";
    return nullptr;
  }

  std::shared_ptr<QueryHandle> BeginTransaction(TransactionOptions, BeginDone done) override {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      id = absl::StrCat(name_, ".tx", begun_.size());
      begun_.push_back(id);
    }
    std::move(done)(BegunTransaction{id, absl::Now() + absl::Minutes(1)});
    return std::make_shared<NoopHandle>();
  }

  void EndTransaction(std::string id, std::string, TransactionEnd, EndDone done) override {
    {
      absl::MutexLock lock(&mu_);
      ended_.push_back(id);
    }
    std::move(done)(EndedTransaction{});
  }

  std::vector<std::string> ended() const {
    absl::MutexLock lock(&mu_);
    return ended_;
  }

  pool::PoolStats Snapshot() const override { return {}; }
  bool Serving() const override { return true; }

 private:
  QueryResult Answer() {
    absl::MutexLock lock(&mu_);
    return AnswerLocked();
  }
  QueryResult AnswerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    QueryResult r;
    r.status = failure_;
    if (r.status.ok()) r.responses.push_back(OneRow({Text(name_)}));
    return r;
  }

  const std::string name_;
  mutable absl::Mutex mu_;
  uint64_t lsn_ ABSL_GUARDED_BY(mu_) = 0x100;
  bool down_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);
  int statements_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<QueryDone> held_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> begun_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> ended_ ABSL_GUARDED_BY(mu_);
};

class RoutingEngineTest : public ::testing::Test {
 protected:
  // A router over the primary and replicas r1, r2, probed once.
  void Start(absl::Duration max_lag = absl::Seconds(1),
             absl::Duration wait = absl::Milliseconds(200)) {
    RoutingOptions options;
    options.max_lag = max_lag;
    // Only the probes the tests ask for (the first comes at start).
    options.probe_interval = absl::Hours(1);
    options.wait = wait;
    options.transaction_lifetime = absl::Hours(1);
    router_ = std::make_unique<RoutingEngine>(
        primary_, std::vector<RoutingEngine::Replica>{{"r1:5432", &r1_}, {"r2:5432", &r2_}},
        options, [this](const std::string& target, RouteReason reason) {
          absl::MutexLock lock(&mu_);
          ++routes_[absl::StrCat(target, "/", RouteReasonName(reason))];
        });
    router_->ProbeNow();
  }

  struct Outcome {
    absl::Notification done;
    QueryResult result;
  };

  std::shared_ptr<Outcome> Send(QueryJob job) {
    auto outcome = std::make_shared<Outcome>();
    handles_.push_back(router_->Submit(std::move(job), [outcome](QueryResult r) {
      outcome->result = std::move(r);
      outcome->done.Notify();
    }));
    return outcome;
  }

  // Where the job ran ("primary", "r1", "r2"), or its error.
  std::string Run(QueryJob job) {
    std::shared_ptr<Outcome> o = Send(std::move(job));
    if (!o->done.WaitForNotificationWithTimeout(absl::Seconds(10))) return "no answer";
    if (!o->result.status.ok()) return o->result.status.ToString();
    return o->result.responses.at(0).rows(0).values(0).string_value();
  }

  static QueryJob Read(uint64_t min_lsn = 0) {
    QueryJob job;
    job.statements.resize(1);
    job.statements[0].request.set_sql("SELECT 1");
    job.read_only = true;
    job.min_lsn = min_lsn;
    job.deadline = absl::Now() + absl::Seconds(10);
    return job;
  }
  static QueryJob Write() {
    QueryJob job = Read();
    job.read_only = false;
    return job;
  }

  int Routes(const std::string& key) {
    absl::MutexLock lock(&mu_);
    return routes_[key];
  }

  ScriptedEngine primary_{"primary"};
  ScriptedEngine r1_{"r1"};
  ScriptedEngine r2_{"r2"};
  absl::Mutex mu_;
  std::map<std::string, int> routes_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<RoutingEngine> router_;
  std::vector<std::shared_ptr<QueryHandle>> handles_;
};

TEST_F(RoutingEngineTest, ReadsGoToReplicasWritesToThePrimaryWithAToken) {
  Start();
  EXPECT_THAT(Run(Read()), ::testing::AnyOf("r1", "r2"));
  primary_.set_lsn(0x2A00000123);
  std::shared_ptr<Outcome> write = Send(Write());
  ASSERT_TRUE(write->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(write->result.status.ok()) << write->result.status;
  EXPECT_EQ(write->result.responses[0].rows(0).values(0).string_value(), "primary");
  EXPECT_EQ(write->result.commit_lsn, "2A/123");
  EXPECT_EQ(Routes("primary/write"), 1);
  EXPECT_EQ(Routes("r1:5432/read") + Routes("r2:5432/read"), 1);
}

TEST_F(RoutingEngineTest, CallerCanInsistOnThePrimary) {
  Start();
  QueryJob job = Read();
  job.primary_only = true;
  EXPECT_EQ(Run(std::move(job)), "primary");
  EXPECT_EQ(Routes("primary/consistency"), 1);
}

TEST_F(RoutingEngineTest, ReadsGoToTheReplicaWithFewerCallsOutstanding) {
  Start();
  r1_.set_hold(true);
  r2_.set_hold(true);
  std::vector<std::shared_ptr<Outcome>> reads;
  for (int i = 0; i < 6; ++i) reads.push_back(Send(Read()));
  EXPECT_EQ(r1_.statements(), 3);
  EXPECT_EQ(r2_.statements(), 3);
  r1_.Release();
  r2_.Release();
  for (auto& r : reads) EXPECT_TRUE(r->done.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

TEST_F(RoutingEngineTest, ReadsThatNeverOverlapTakeTurns) {
  Start();
  for (int i = 0; i < 6; ++i) Run(Read());
  EXPECT_EQ(r1_.statements(), 3);
  EXPECT_EQ(r2_.statements(), 3);
}

TEST_F(RoutingEngineTest, ReplicaBehindMaxLagTakesNoReadsUntilItCatchesUp) {
  Start(/*max_lag=*/absl::Milliseconds(100));
  // The primary moves on; r1 replays, r2 does not.
  primary_.set_lsn(0x500);
  r1_.set_lsn(0x500);
  router_->ProbeNow();
  absl::SleepFor(absl::Milliseconds(150));
  router_->ProbeNow();
  std::vector<ReplicaState> replicas = router_->Replicas();
  ASSERT_EQ(replicas.size(), 2u);
  EXPECT_TRUE(replicas[0].routable);
  EXPECT_EQ(replicas[0].replay_lag, absl::ZeroDuration());
  EXPECT_FALSE(replicas[1].routable);
  EXPECT_GE(replicas[1].replay_lag, absl::Milliseconds(150));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Run(Read()), "r1");
  r2_.set_lsn(0x500);
  router_->ProbeNow();
  EXPECT_TRUE(router_->Replicas()[1].routable);
  EXPECT_EQ(router_->Replicas()[1].replay_lag, absl::ZeroDuration());
}

TEST_F(RoutingEngineTest, NoRoutableReplicaMeansThePrimary) {
  r1_.set_down(true);
  r2_.set_down(true);
  Start();
  EXPECT_EQ(Run(Read()), "primary");
  EXPECT_EQ(Routes("primary/no_replica"), 1);
  EXPECT_FALSE(router_->Replicas()[0].routable);
}

TEST_F(RoutingEngineTest, TokenReadGoesOnlyToAReplicaThatReplayedIt) {
  Start();
  r2_.set_lsn(0x900);
  primary_.set_lsn(0x900);
  router_->ProbeNow();
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Run(Read(0x800)), "r2");
}

TEST_F(RoutingEngineTest, TokenReadWaitsForAReplicaToReplayIt) {
  Start(absl::Seconds(1), /*wait=*/absl::Seconds(5));
  primary_.set_lsn(0x900);
  std::shared_ptr<Outcome> read = Send(Read(0x900));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_FALSE(read->done.HasBeenNotified()) << "no replica has 0/900 yet";
  r1_.set_lsn(0x900);
  ASSERT_TRUE(read->done.WaitForNotificationWithTimeout(absl::Seconds(2)));
  EXPECT_EQ(read->result.responses.at(0).rows(0).values(0).string_value(), "r1");
}

TEST_F(RoutingEngineTest, TokenReadNoReplicaReachesInTimeRunsOnThePrimary) {
  Start(absl::Seconds(1), /*wait=*/absl::Milliseconds(100));
  const absl::Time start = absl::Now();
  EXPECT_EQ(Run(Read(0x5000)), "primary");
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(100));
  EXPECT_EQ(Routes("primary/min_lsn"), 1);
}

TEST_F(RoutingEngineTest, CancelEndsAWaitingRead) {
  Start(absl::Seconds(1), /*wait=*/absl::Seconds(30));
  std::shared_ptr<Outcome> read = Send(Read(0x5000));
  handles_.back()->Cancel();
  ASSERT_TRUE(read->done.WaitForNotificationWithTimeout(absl::Seconds(2)));
  EXPECT_TRUE(absl::IsCancelled(read->result.status)) << read->result.status;
}

TEST_F(RoutingEngineTest, ReadLostWithItsReplicaRunsOnceMoreElsewhere) {
  Start();
  r1_.set_failure(absl::UnavailableError("server closed the connection"));
  r2_.set_failure(absl::UnavailableError("server closed the connection"));
  // Whichever replica it tried first, then the other, then no more.
  EXPECT_THAT(Run(Read()), ::testing::HasSubstr("server closed the connection"));
  EXPECT_EQ(r1_.statements() + r2_.statements(), 2);
  EXPECT_EQ(Routes("r1:5432/retry") + Routes("r2:5432/retry"), 1);
  // Both failed: neither takes reads until a probe finds them answering.
  EXPECT_EQ(Run(Read()), "primary");
  r1_.set_failure(absl::OkStatus());
  r2_.set_failure(absl::OkStatus());
  router_->ProbeNow();
  EXPECT_THAT(Run(Read()), ::testing::AnyOf("r1", "r2"));
}

TEST_F(RoutingEngineTest, StatementErrorIsNotRetried) {
  Start();
  r1_.set_failure(absl::InvalidArgumentError("syntax error"));
  r2_.set_failure(absl::InvalidArgumentError("syntax error"));
  EXPECT_THAT(Run(Read()), ::testing::HasSubstr("syntax error"));
  EXPECT_EQ(r1_.statements() + r2_.statements(), 1);
}

TEST_F(RoutingEngineTest, ReadOnlyTransactionLivesOnOneReplica) {
  Start();
  TransactionOptions options;
  options.read_only = true;
  absl::Notification begun;
  std::string id;
  router_->BeginTransaction(options, [&](absl::StatusOr<BegunTransaction> b) {
    ASSERT_TRUE(b.ok());
    id = b->transaction_id;
    begun.Notify();
  });
  ASSERT_TRUE(begun.WaitForNotificationWithTimeout(absl::Seconds(5)));
  const std::string node = id.substr(0, id.find('.'));
  ASSERT_THAT(node, ::testing::AnyOf("r1", "r2"));
  for (int i = 0; i < 3; ++i) {
    QueryJob job = Read();
    job.transaction_id = id;
    EXPECT_EQ(Run(std::move(job)), node);
  }
  absl::Notification ended;
  router_->EndTransaction(id, "", TransactionEnd::kCommit,
                          [&](absl::StatusOr<EndedTransaction> e) {
                            EXPECT_TRUE(e.ok());
                            EXPECT_EQ(e->commit_lsn, "") << "a read-only commit has no token";
                            ended.Notify();
                          });
  ASSERT_TRUE(ended.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_THAT((node == "r1" ? r1_ : r2_).ended(), ::testing::ElementsAre(id));
  EXPECT_EQ(Routes(absl::StrCat(node, ":5432/transaction")), 4);
}

TEST_F(RoutingEngineTest, CommitOnThePrimaryReturnsAToken) {
  Start();
  primary_.set_lsn(0x1234);
  absl::Notification begun;
  std::string id;
  router_->BeginTransaction(TransactionOptions{}, [&](absl::StatusOr<BegunTransaction> b) {
    ASSERT_TRUE(b.ok());
    id = b->transaction_id;
    begun.Notify();
  });
  ASSERT_TRUE(begun.WaitForNotificationWithTimeout(absl::Seconds(5)));
  EXPECT_THAT(primary_.begun(), ::testing::ElementsAre(id));
  absl::Notification ended;
  router_->EndTransaction(id, "", TransactionEnd::kCommit,
                          [&](absl::StatusOr<EndedTransaction> e) {
                            ASSERT_TRUE(e.ok());
                            EXPECT_EQ(e->commit_lsn, "0/1234");
                            ended.Notify();
                          });
  ASSERT_TRUE(ended.WaitForNotificationWithTimeout(absl::Seconds(5)));
}

TEST_F(RoutingEngineTest, ConcurrentWritesShareTokenReads) {
  Start();
  primary_.set_lsn(0x42);
  std::vector<std::shared_ptr<Outcome>> writes;
  for (int i = 0; i < 20; ++i) writes.push_back(Send(Write()));
  for (auto& w : writes) {
    ASSERT_TRUE(w->done.WaitForNotificationWithTimeout(absl::Seconds(5)));
    EXPECT_EQ(w->result.commit_lsn, "0/42");
  }
}

TEST(Lsn, ParsesAndFormatsPostgresqlsForm) {
  EXPECT_EQ(db::ParseLsn("16/B374D848"), (uint64_t{0x16} << 32) | 0xB374D848);
  EXPECT_EQ(db::ParseLsn("0/0"), 0u);
  EXPECT_EQ(db::FormatLsn((uint64_t{0x16} << 32) | 0xB374D848), "16/B374D848");
  EXPECT_EQ(db::ParseLsn(db::FormatLsn(~uint64_t{0})), ~uint64_t{0});
  for (const char* bad : {"", "/", "1/", "/1", "123456789/0", "1/2/3", "x/1", "1 /2", "-1/2"}) {
    EXPECT_EQ(db::ParseLsn(bad), std::nullopt) << bad;
  }
}

}  // namespace
}  // namespace dbpool::engine
