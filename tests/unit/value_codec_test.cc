#include "server/db/value_codec.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace dbpool::db {
namespace {

v1::Value Decode(Oid type, absl::string_view text) {
  v1::Value v;
  EXPECT_TRUE(DecodeCell(type, text, &v).ok()) << type << " " << text;
  return v;
}

TEST(DecodeCell, MapsEveryKind) {
  EXPECT_TRUE(Decode(kBoolOid, "t").bool_value());
  EXPECT_FALSE(Decode(kBoolOid, "f").bool_value());
  EXPECT_EQ(Decode(kInt8Oid, "-9223372036854775808").int64_value(),
            std::numeric_limits<int64_t>::min());
  EXPECT_EQ(Decode(kInt2Oid, "32767").int64_value(), 32767);
  EXPECT_EQ(Decode(kFloat8Oid, "1.5").double_value(), 1.5);
  EXPECT_TRUE(std::isnan(Decode(kFloat8Oid, "NaN").double_value()));
  EXPECT_EQ(Decode(kFloat8Oid, "-Infinity").double_value(),
            -std::numeric_limits<double>::infinity());
  EXPECT_EQ(Decode(kNumericOid, "123456789012345678901234567890.5").decimal_value(),
            "123456789012345678901234567890.5");
  EXPECT_EQ(Decode(kTextOid, "héllo").string_value(), "héllo");
  EXPECT_EQ(Decode(kByteaOid, "\\x00ff41").bytes_value(), std::string("\0\xff" "A", 3));
  EXPECT_EQ(Decode(kJsonbOid, "{\"a\": 1}").json_value(), "{\"a\": 1}");
  // Types without a mapping travel as text.
  EXPECT_EQ(Decode(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").string_value(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  EXPECT_EQ(Decode(99999, "(1,2)").string_value(), "(1,2)");
}

TEST(DecodeCell, TimestampsBecomeUtcInstants) {
  v1::Value tz = Decode(kTimestamptzOid, "2024-05-06 07:08:09.123456+02");
  EXPECT_EQ(tz.timestamp_value().seconds(), 1714972089);  // 05:08:09 UTC
  EXPECT_EQ(tz.timestamp_value().nanos(), 123456000);
  v1::Value plain = Decode(kTimestampOid, "1970-01-01 00:00:01");
  EXPECT_EQ(plain.timestamp_value().seconds(), 1);
  v1::Value before_epoch = Decode(kTimestamptzOid, "1969-12-31 23:59:59.5+00");
  EXPECT_EQ(before_epoch.timestamp_value().seconds(), -1);
  EXPECT_EQ(before_epoch.timestamp_value().nanos(), 500000000);
  EXPECT_EQ(Decode(kTimestamptzOid, "2024-01-01 00:00:00-05:30").timestamp_value().seconds(),
            1704067200 + 5 * 3600 + 30 * 60);
  EXPECT_EQ(Decode(kTimestamptzOid, "1900-01-01 00:00:00+00:09:21").timestamp_value().seconds(),
            -2208988800 - 561);
  EXPECT_EQ(Decode(kTimestamptzOid, "infinity").string_value(), "infinity");
  EXPECT_EQ(Decode(kTimestamptzOid, "2024-01-01 00:00:00+0x").string_value(),
            "2024-01-01 00:00:00+0x");
  EXPECT_EQ(Decode(kTimestampOid, "0044-03-15 00:00:00 BC").string_value(),
            "0044-03-15 00:00:00 BC");
}

TEST(DecodeCell, RejectsCorruptBytea) {
  v1::Value v;
  EXPECT_FALSE(DecodeCell(kByteaOid, "\\x0g", &v).ok());
}

TEST(EncodeParam, NaturalTypesPerKind) {
  EncodedParam p;
  v1::Value v;
  v.set_int64_value(-7);
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_EQ(p.data, "-7");
  EXPECT_EQ(p.type, kInt8Oid);
  v.set_double_value(std::numeric_limits<double>::infinity());
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_EQ(p.data, "Infinity");
  v.set_double_value(0.1);
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_EQ(std::stod(p.data), 0.1) << "round-trips exactly";
  v.set_string_value("x");
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_EQ(p.type, kUnspecifiedOid) << "the server infers string types";
  v.set_bytes_value(std::string("\0\1", 2));
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_TRUE(p.binary);
  EXPECT_EQ(p.data.size(), 2u);
  v.mutable_timestamp_value()->set_seconds(1);
  v.mutable_timestamp_value()->set_nanos(500000000);
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_EQ(p.data, "1970-01-01T00:00:01.500000Z");
  EXPECT_EQ(p.type, kTimestamptzOid);
  v.set_null_value(google::protobuf::NULL_VALUE);
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_TRUE(p.is_null);
  v.Clear();
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_TRUE(p.is_null) << "an unset value is NULL";
}

TEST(EncodeParam, TypeHints) {
  EncodedParam p;
  v1::Value v;
  v.set_string_value("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
  v.set_type_hint("uuid");
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_EQ(p.type, 2950u);
  v.set_type_hint("Timestamp With Time Zone");
  ASSERT_TRUE(EncodeParam(v, &p).ok());
  EXPECT_EQ(p.type, kTimestamptzOid);
  v.set_type_hint("no_such_type");
  absl::Status s = EncodeParam(v, &p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("no_such_type"), absl::string_view::npos);
  v.set_bytes_value("x");
  v.set_type_hint("int4");
  EXPECT_EQ(EncodeParam(v, &p).code(), absl::StatusCode::kInvalidArgument);
}

TEST(EncodeParam, RejectsNulInTextAndBadTimestamps) {
  EncodedParam p;
  v1::Value v;
  v.set_string_value(std::string("a\0b", 3));
  EXPECT_EQ(EncodeParam(v, &p).code(), absl::StatusCode::kInvalidArgument);
  v.mutable_timestamp_value()->set_seconds(253402300800);  // year 10000
  EXPECT_EQ(EncodeParam(v, &p).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TypeNames, TableIsConsistent) {
  EXPECT_EQ(TypeNameForOid(kInt8Oid), "int8");
  EXPECT_EQ(OidForTypeName("bigint"), kInt8Oid);
  EXPECT_EQ(OidForTypeName(*TypeNameForOid(kJsonbOid)), kJsonbOid);
  EXPECT_FALSE(TypeNameForOid(123456).has_value());
}

}  // namespace
}  // namespace dbpool::db
