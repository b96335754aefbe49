// Value conversion on the Query path: result cells from PostgreSQL's text
// form and parameters to libpq's.
#include <benchmark/benchmark.h>

#include "server/db/value_codec.h"

namespace dbpool::db {
namespace {

void BM_Decode(benchmark::State& state, Oid type, const char* text) {
  v1::Value value;
  for (auto _ : state) {
    value.Clear();
    benchmark::DoNotOptimize(DecodeCell(type, text, &value));
  }
}
BENCHMARK_CAPTURE(BM_Decode, int8, kInt8Oid, "-9223372036854775808");
BENCHMARK_CAPTURE(BM_Decode, float8, kFloat8Oid, "3.1415926535897931");
BENCHMARK_CAPTURE(BM_Decode, numeric, kNumericOid, "123456789012345678901234567890.5");
BENCHMARK_CAPTURE(BM_Decode, text, kTextOid, "a moderately long text value");
BENCHMARK_CAPTURE(BM_Decode, timestamptz, kTimestamptzOid, "2024-05-06 07:08:09.123456+00");
BENCHMARK_CAPTURE(BM_Decode, bytea, kByteaOid, "\\x000102030405060708090a0b0c0d0e0f");

void BM_EncodeInt(benchmark::State& state) {
  v1::Value value;
  value.set_int64_value(123456789);
  EncodedParam out;
  for (auto _ : state) benchmark::DoNotOptimize(EncodeParam(value, &out));
}
BENCHMARK(BM_EncodeInt);

void BM_EncodeHintedString(benchmark::State& state) {
  v1::Value value;
  value.set_string_value("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  value.set_type_hint("uuid");
  EncodedParam out;
  for (auto _ : state) benchmark::DoNotOptimize(EncodeParam(value, &out));
}
BENCHMARK(BM_EncodeHintedString);

}  // namespace
}  // namespace dbpool::db
