// Streamed results (SubmitStream) on the event-loop engine against a real
// PostgreSQL: every row arrives in bounded chunks with the columns first,
// a reader that stops taking chunks stops the database read, a cancel
// stops the statement on the server, and errors after rows end the stream.
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/db/async_query.h"
#include "server/db/sql_state.h"
#include "tests/integration/engine_fixture.h"
#include "tests/support/pg_cluster.h"

namespace dbpool::engine {
namespace {

using testing::PgCluster;

// generate_series in the select list is read as it runs; in FROM it would
// be materialized before the first row.

// Collects a stream; asks for the next chunk at once unless told to stop
// after `pause_after` chunks.
class Collector : public StreamSink {
 public:
  explicit Collector(int pause_after = -1) : pause_after_(pause_after) {}

  void Attach(std::shared_ptr<StreamHandle> handle) {
    std::lock_guard<std::mutex> lock(mu_);
    handle_ = std::move(handle);
    if (owed_) {
      owed_ = false;
      handle_->Next();
    }
  }

  void OnChunk(v1::QueryResponse chunk) override {
    std::shared_ptr<StreamHandle> next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (chunks_ == 0) columns_ = chunk.columns_size();
      if (chunks_ > 0 && chunk.columns_size() > 0) columns_in_later_chunks_ = true;
      ++chunks_;
      rows_ += chunk.rows_size();
      largest_chunk_ = std::max(largest_chunk_, chunk.rows_size());
      if (chunk.rows_size() > 0) last_value_ = chunk.rows(chunk.rows_size() - 1).values(0);
      if (first_chunk_.columns_size() == 0 && chunks_ == 1) first_chunk_ = chunk;
      if (pause_after_ >= 0 && chunks_ >= pause_after_) {
        paused_ = true;
        return;
      }
      if (handle_ == nullptr) {
        owed_ = true;
        return;
      }
      next = handle_;
    }
    next->Next();
  }

  void OnDone(QueryResult result) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      result_ = std::move(result);
    }
    done_.Set();
  }

  // Lets a paused stream go on, to its end.
  void Continue() {
    std::shared_ptr<StreamHandle> handle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pause_after_ = -1;
      paused_ = false;
      handle = handle_;
    }
    handle->Next();
  }

  bool WaitDone(absl::Duration limit = absl::Seconds(120)) { return done_.WaitFor(limit); }
  int chunks() {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_;
  }
  int64_t rows() {
    std::lock_guard<std::mutex> lock(mu_);
    return rows_;
  }

  std::mutex mu_;
  int pause_after_;
  std::shared_ptr<StreamHandle> handle_;
  bool owed_ = false;
  bool paused_ = false;
  int chunks_ = 0;
  int64_t rows_ = 0;
  int columns_ = 0;
  bool columns_in_later_chunks_ = false;
  int largest_chunk_ = 0;
  v1::Value last_value_;
  v1::QueryResponse first_chunk_;
  Flag done_;
  QueryResult result_;
};

class StreamTest : public EngineTest {
 protected:
  std::shared_ptr<StreamHandle> Stream(const std::string& sql, Collector& sink,
                                       absl::Duration deadline = absl::Seconds(120)) {
    std::shared_ptr<StreamHandle> handle = engine_->SubmitStream(Job(sql, deadline), sink);
    sink.Attach(handle);
    return handle;
  }

  // Connections the pool has closed, for whatever reason.
  int64_t Closed() {
    int64_t n = 0;
    for (int64_t c : pool_->Snapshot().connections_closed) n += c;
    return n;
  }

  // Statements of this test's connections that are running `needle`.
  static int64_t Running(const std::string& needle) {
    return PgCluster::Get().Int(absl::StrCat(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
        "'dbpool-engine-test' AND state = 'active' AND query LIKE '%", needle, "%'"));
  }
};

TEST_F(StreamTest, EveryRowArrivesInBoundedChunksWithTheColumnsFirst) {
  Make(2, 1);
  Collector sink;
  Stream("SELECT g, 'row ' || g AS label FROM generate_series(1, 250000) AS g", sink);
  ASSERT_TRUE(sink.WaitDone());
  ASSERT_TRUE(sink.result_.status.ok()) << sink.result_.status;
  EXPECT_EQ(sink.rows(), 250000);
  EXPECT_EQ(sink.last_value_.int64_value(), 250000);
  EXPECT_EQ(sink.columns_, 2);
  EXPECT_FALSE(sink.columns_in_later_chunks_);
  EXPECT_EQ(sink.first_chunk_.columns(0).name(), "g");
  EXPECT_EQ(sink.first_chunk_.columns(1).type_name(), "text");
  EXPECT_LE(sink.largest_chunk_, db::kChunkRows);
  EXPECT_GE(sink.chunks(), 250000 / db::kChunkRows);
  ASSERT_EQ(sink.result_.responses.size(), 1u);
  EXPECT_EQ(sink.result_.responses[0].command_tag(), "SELECT 250000");
  EXPECT_EQ(sink.result_.responses[0].rows_affected(), 250000);
  EXPECT_EQ(sink.result_.responses[0].rows_size(), 0);
  // The connection went back clean.
  EXPECT_TRUE(Run(Job("SELECT 1")).status.ok());
}

TEST_F(StreamTest, AnEmptyResultStillSendsItsColumnsAndUserTypesHaveNames) {
  Make(2, 1);
  PgCluster::Get().Scalar("DROP TYPE IF EXISTS stream_mood");
  PgCluster::Get().Scalar("CREATE TYPE stream_mood AS ENUM ('calm', 'busy')");
  Collector empty;
  Stream("SELECT 'calm'::stream_mood AS mood WHERE false", empty);
  ASSERT_TRUE(empty.WaitDone());
  ASSERT_TRUE(empty.result_.status.ok()) << empty.result_.status;
  EXPECT_EQ(empty.chunks(), 1);
  EXPECT_EQ(empty.rows(), 0);
  ASSERT_EQ(empty.first_chunk_.columns_size(), 1);
  EXPECT_EQ(empty.first_chunk_.columns(0).type_name(), "stream_mood");
  EXPECT_EQ(empty.result_.responses[0].command_tag(), "SELECT 0");
}

TEST_F(StreamTest, AReaderThatStopsTakingChunksStopsTheDatabaseRead) {
  Make(2, 1);
  Collector sink(/*pause_after=*/2);
  Stream("SELECT generate_series(1, 1000000) AS paused_stream", sink);
  // Two chunks, then nothing more while the reader waits.
  const absl::Time limit = absl::Now() + absl::Seconds(20);
  while (sink.chunks() < 2 && absl::Now() < limit) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(sink.chunks(), 2);
  absl::SleepFor(absl::Milliseconds(500));
  EXPECT_EQ(sink.chunks(), 2);
  EXPECT_EQ(sink.rows(), 2 * db::kChunkRows);
  // PostgreSQL is still on the statement, waiting to send.
  EXPECT_EQ(Running("paused_stream"), 1);
  sink.Continue();
  ASSERT_TRUE(sink.WaitDone());
  ASSERT_TRUE(sink.result_.status.ok()) << sink.result_.status;
  EXPECT_EQ(sink.rows(), 1000000);
}

TEST_F(StreamTest, CancelMidStreamStopsTheStatementOnTheServer) {
  // PostgreSQL, blocked writing to a full socket, sees the cancel only once
  // the reader has drained that socket's worth of rows; under the
  // sanitizers that takes longer than the default 2 s grace.
  cancel_grace_ = absl::Seconds(20);
  Make(2, 1);
  Collector sink(/*pause_after=*/3);
  std::shared_ptr<StreamHandle> handle =
      Stream("SELECT generate_series(1, 50000000) AS cancelled_stream", sink);
  const absl::Time limit = absl::Now() + absl::Seconds(20);
  while (sink.chunks() < 3 && absl::Now() < limit) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_EQ(sink.chunks(), 3);
  const int64_t closed = Closed();
  handle->Cancel();
  ASSERT_TRUE(sink.WaitDone(absl::Seconds(20)));
  EXPECT_EQ(sink.result_.status.code(), absl::StatusCode::kCancelled) << sink.result_.status;
  const absl::Time gone = absl::Now() + absl::Seconds(5);
  while (Running("cancelled_stream") > 0 && absl::Now() < gone) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(Running("cancelled_stream"), 0);
  // Stopped by the cancel request, not by closing the connection.
  EXPECT_EQ(Closed(), closed);
  EXPECT_TRUE(Run(Job("SELECT 1")).status.ok());
}

TEST_F(StreamTest, AnErrorAfterSomeRowsEndsTheStreamWithIt) {
  Make(2, 1);
  Collector sink;
  Stream("SELECT 10 / (5000 - g) FROM generate_series(1, 10000) AS g", sink);
  ASSERT_TRUE(sink.WaitDone());
  EXPECT_EQ(db::SqlStateOf(sink.result_.status), "22012") << sink.result_.status;
  EXPECT_GE(sink.rows(), db::kChunkRows);
  EXPECT_LT(sink.rows(), 5000);
  EXPECT_TRUE(Run(Job("SELECT 1")).status.ok());
}

TEST_F(StreamTest, AStreamInsideATransactionSeesItsWrites) {
  TransactionLimits limits;
  limits.max_open = 1;
  limits.instance = "stream-test";
  Make(2, 1, 1000, 1, limits);
  PgCluster::Get().Scalar("DROP TABLE IF EXISTS stream_tx");
  PgCluster::Get().Scalar("CREATE TABLE stream_tx (x int)");
  auto tx = Begin();
  ASSERT_TRUE(tx.ok()) << tx.status();
  ASSERT_TRUE(Run(InTx(tx->transaction_id,
                       "INSERT INTO stream_tx SELECT generate_series(1, 3000)"))
                  .status.ok());
  Collector sink;
  QueryJob job = InTx(tx->transaction_id, "SELECT x FROM stream_tx ORDER BY x");
  sink.Attach(engine_->SubmitStream(std::move(job), sink));
  ASSERT_TRUE(sink.WaitDone());
  ASSERT_TRUE(sink.result_.status.ok()) << sink.result_.status;
  EXPECT_EQ(sink.rows(), 3000);
  ASSERT_TRUE(End(tx->transaction_id, TransactionEnd::kRollback).ok());
  EXPECT_EQ(PgCluster::Get().Int("SELECT count(*) FROM stream_tx"), 0);
}

}  // namespace
}  // namespace dbpool::engine
