// dbpool: the command-line client of dbpool.v1.DatabaseService.
//
//   dbpool [--target HOST:PORT] [--timeout 5s] [--json] COMMAND ...
//
// Runs one SQL statement (query), prints a pool snapshot (stats), follows
// the pool (watch) or load-tests the server (bench, in bench.cc). Output is
// a human table or proto3 JSON (--json). Exit status: 0 success, 1 RPC
// error, 2 usage error (bench adds 3: error rate above --max-error-rate).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "bench.h"
#include "connection.h"
#include "dbpool/v1/database_service.grpc.pb.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/text_format.h"
#include "google/protobuf/timestamp.pb.h"
#include "google/protobuf/util/json_util.h"
#include "google/protobuf/util/time_util.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace {

namespace v1 = ::dbpool::v1;
using ::dbpool::cli::Connection;
using google::protobuf::util::TimeUtil;

constexpr int kExitOk = 0;
constexpr int kExitRpcError = 1;
constexpr int kExitUsage = 2;

constexpr absl::string_view kDefaultTarget = "127.0.0.1:50051";
constexpr absl::Duration kDefaultTimeout = absl::Seconds(5);
// The ErrorInfo domain under which the server reports a SQLSTATE as reason.
constexpr absl::string_view kPostgresDomain = "postgresql";

constexpr absl::string_view kSynopsis =
    R"(usage: dbpool [--target HOST:PORT] [--timeout DURATION] [--json] COMMAND ...

commands:
  query SQL [--param VALUE [--param-type TYPE]]... [--read-only] [--max-rows N]
      run one SQL statement; $1..$n are bound to the --param values in order
  stats
      print a snapshot of the connection pool
  watch [--interval DURATION] [--only-on-change] [--count N]
      print pool snapshots until --count, Ctrl-C or an explicit --timeout
  bench --sql SQL [--param VALUE]... [--concurrency N | --rate R] [--duration 10s]
      load-test Query; run 'dbpool bench --help' for its flags
  help
      print the full help
)";

constexpr absl::string_view kDetails = R"(
global flags (before or after the command):
  --target HOST:PORT   server address (default $DBPOOL_TARGET, else 127.0.0.1:50051)
  --timeout DURATION   RPC deadline: 5s, 250ms, inf (default 5s; watch: none)
  --json               print responses, and errors on stderr, as one-line JSON

--param VALUE is typed by an optional KIND: prefix:
  int:42  float:1.5  bool:true  str:TEXT  bytes:DEADBEEF  json:{"a":1}
  decimal:12.50  ts:2024-01-02T03:04:05Z  null
Any other VALUE is sent as text and PostgreSQL infers its type; use str: to
send text that starts with one of the prefixes. --param-type TYPE binds the
preceding --param as that PostgreSQL type (uuid, jsonb, timestamptz, ...).

exit status: 0 success, 1 RPC error, 2 usage error
)";

// ---------------------------------------------------------------------------
// Command line

enum class Command { kNone, kQuery, kStats, kWatch };

struct Options {
  std::string target;
  absl::Duration timeout = kDefaultTimeout;
  // watch runs without a deadline unless --timeout is given.
  bool timeout_set = false;
  bool json = false;
  bool help = false;
  Command command = Command::kNone;
  v1::QueryRequest query;
  v1::StreamPoolStatsRequest watch;
  int64_t watch_count = 0;  // 0: until stopped.
};

absl::string_view CommandName(Command command) {
  switch (command) {
    case Command::kQuery:
      return "query";
    case Command::kStats:
      return "stats";
    case Command::kWatch:
      return "watch";
    case Command::kNone:
      break;
  }
  return "";
}

absl::StatusOr<absl::Duration> ParsePositiveDuration(absl::string_view text) {
  absl::Duration d;
  if (!absl::ParseDuration(text, &d) || d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "want a positive duration such as 5s or 250ms, got \"", text, "\""));
  }
  return d;
}

absl::StatusOr<int64_t> ParsePositiveInt(absl::string_view text) {
  int64_t n;
  if (!absl::SimpleAtoi(text, &n) || n <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("want a positive integer, got \"", text, "\""));
  }
  return n;
}

absl::Status BadParam(absl::string_view kind, absl::string_view text) {
  return absl::InvalidArgumentError(
      absl::StrCat("not a valid ", kind, ": \"", text, "\""));
}

// A KIND: prefix of --param and how to parse the text after it.
struct ParamKind {
  absl::string_view prefix;
  absl::Status (*parse)(absl::string_view text, v1::Value* value);
};

const ParamKind kParamKinds[] = {
    {"str:",
     [](absl::string_view t, v1::Value* v) {
       v->set_string_value(std::string(t));
       return absl::OkStatus();
     }},
    {"json:",
     [](absl::string_view t, v1::Value* v) {
       v->set_json_value(std::string(t));
       return absl::OkStatus();
     }},
    {"decimal:",
     [](absl::string_view t, v1::Value* v) {
       v->set_decimal_value(std::string(t));
       return absl::OkStatus();
     }},
    {"int:",
     [](absl::string_view t, v1::Value* v) {
       int64_t n;
       if (!absl::SimpleAtoi(t, &n)) return BadParam("int64", t);
       v->set_int64_value(n);
       return absl::OkStatus();
     }},
    {"float:",
     [](absl::string_view t, v1::Value* v) {
       double d;
       if (!absl::SimpleAtod(t, &d)) return BadParam("float", t);
       v->set_double_value(d);
       return absl::OkStatus();
     }},
    {"bool:",
     [](absl::string_view t, v1::Value* v) {
       bool b;
       if (!absl::SimpleAtob(t, &b)) return BadParam("bool", t);
       v->set_bool_value(b);
       return absl::OkStatus();
     }},
    {"bytes:",
     [](absl::string_view t, v1::Value* v) {
       // HexStringToBytes does not validate its input.
       if (t.size() % 2 != 0 ||
           !std::all_of(t.begin(), t.end(), absl::ascii_isxdigit)) {
         return BadParam("hex byte string", t);
       }
       v->set_bytes_value(absl::HexStringToBytes(t));
       return absl::OkStatus();
     }},
    {"ts:",
     [](absl::string_view t, v1::Value* v) {
       if (!TimeUtil::FromString(std::string(t), v->mutable_timestamp_value())) {
         return BadParam("RFC 3339 timestamp", t);
       }
       return absl::OkStatus();
     }},
};

absl::StatusOr<v1::Value> ParseParam(absl::string_view text) {
  v1::Value value;
  if (text == "null") {
    value.set_null_value(google::protobuf::NULL_VALUE);
    return value;
  }
  for (const ParamKind& kind : kParamKinds) {
    if (absl::ConsumePrefix(&text, kind.prefix)) {
      if (absl::Status s = kind.parse(text, &value); !s.ok()) return s;
      return value;
    }
  }
  // No known prefix: text, whose type PostgreSQL infers from the statement.
  value.set_string_value(std::string(text));
  return value;
}

using FlagSetter = absl::Status (*)(absl::string_view value, Options* options);

struct FlagSpec {
  absl::string_view name;
  // The command the flag belongs to; kNone for global flags.
  Command command;
  bool takes_value;
  FlagSetter set;
};

const FlagSpec kFlags[] = {
    {"--target", Command::kNone, true,
     [](absl::string_view v, Options* o) {
       if (v.empty()) return absl::InvalidArgumentError("must not be empty");
       o->target = std::string(v);
       return absl::OkStatus();
     }},
    {"--timeout", Command::kNone, true,
     [](absl::string_view v, Options* o) {
       absl::StatusOr<absl::Duration> d = ParsePositiveDuration(v);
       if (!d.ok()) return d.status();
       o->timeout = *d;
       o->timeout_set = true;
       return absl::OkStatus();
     }},
    {"--json", Command::kNone, false,
     [](absl::string_view, Options* o) {
       o->json = true;
       return absl::OkStatus();
     }},
    {"--help", Command::kNone, false,
     [](absl::string_view, Options* o) {
       o->help = true;
       return absl::OkStatus();
     }},
    {"-h", Command::kNone, false,
     [](absl::string_view, Options* o) {
       o->help = true;
       return absl::OkStatus();
     }},
    {"--param", Command::kQuery, true,
     [](absl::string_view v, Options* o) {
       absl::StatusOr<v1::Value> value = ParseParam(v);
       if (!value.ok()) return value.status();
       *o->query.add_params() = *std::move(value);
       return absl::OkStatus();
     }},
    {"--param-type", Command::kQuery, true,
     [](absl::string_view v, Options* o) {
       if (o->query.params().empty()) {
         return absl::InvalidArgumentError("must follow a --param");
       }
       o->query.mutable_params()->rbegin()->set_type_hint(std::string(v));
       return absl::OkStatus();
     }},
    {"--read-only", Command::kQuery, false,
     [](absl::string_view, Options* o) {
       o->query.set_read_only(true);
       return absl::OkStatus();
     }},
    {"--max-rows", Command::kQuery, true,
     [](absl::string_view v, Options* o) {
       absl::StatusOr<int64_t> n = ParsePositiveInt(v);
       if (!n.ok()) return n.status();
       o->query.set_max_rows(*n);
       return absl::OkStatus();
     }},
    {"--interval", Command::kWatch, true,
     [](absl::string_view v, Options* o) {
       absl::StatusOr<absl::Duration> d = ParsePositiveDuration(v);
       if (!d.ok()) return d.status();
       *o->watch.mutable_interval() =
           TimeUtil::NanosecondsToDuration(absl::ToInt64Nanoseconds(*d));
       return absl::OkStatus();
     }},
    {"--only-on-change", Command::kWatch, false,
     [](absl::string_view, Options* o) {
       o->watch.set_only_on_change(true);
       return absl::OkStatus();
     }},
    {"--count", Command::kWatch, true,
     [](absl::string_view v, Options* o) {
       absl::StatusOr<int64_t> n = ParsePositiveInt(v);
       if (!n.ok()) return n.status();
       o->watch_count = *n;
       return absl::OkStatus();
     }},
};

const FlagSpec* FindFlag(absl::string_view name) {
  for (const FlagSpec& spec : kFlags) {
    if (spec.name == name) return &spec;
  }
  return nullptr;
}

// Sets the command and its operands from the non-flag arguments.
absl::Status SetCommand(const std::vector<std::string>& positional,
                        Options* options) {
  if (positional.empty()) return absl::InvalidArgumentError("no command given");
  const std::string& name = positional[0];
  const size_t operands = positional.size() - 1;
  if (name == "query") {
    if (operands != 1) {
      return absl::InvalidArgumentError(
          "query takes exactly one SQL argument (quote the statement)");
    }
    options->command = Command::kQuery;
    options->query.set_sql(positional[1]);
    return absl::OkStatus();
  }
  if (name != "stats" && name != "watch") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown command \"", name, "\""));
  }
  options->command = name == "stats" ? Command::kStats : Command::kWatch;
  if (operands != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument \"", positional[1], "\""));
  }
  return absl::OkStatus();
}

// Applies one flag; *i moves past a value taken from the next argument.
absl::Status ApplyFlag(const std::vector<std::string>& args, size_t* i,
                       Options* options, std::vector<const FlagSpec*>* used) {
  const std::string& arg = args[*i];
  const size_t eq = arg.find('=');
  const std::string name = arg.substr(0, eq);
  const FlagSpec* spec = FindFlag(name);
  if (spec == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown flag ", name));
  }
  std::string value;
  if (eq != std::string::npos) {
    if (!spec->takes_value) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag ", name, " takes no value"));
    }
    value = arg.substr(eq + 1);
  } else if (spec->takes_value) {
    if (++*i == args.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag ", name, " needs a value"));
    }
    value = args[*i];
  }
  if (absl::Status s = spec->set(value, options); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": ", s.message()));
  }
  used->push_back(spec);
  return absl::OkStatus();
}

absl::StatusOr<Options> ParseArgs(const std::vector<std::string>& args) {
  Options options;
  const char* env_target = std::getenv("DBPOOL_TARGET");
  options.target = env_target != nullptr && *env_target != '\0'
                       ? env_target
                       : std::string(kDefaultTarget);
  std::vector<std::string> positional;
  std::vector<const FlagSpec*> used;
  bool flags_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (flags_done || arg.size() < 2 || arg[0] != '-') {
      positional.push_back(arg);
    } else if (arg == "--") {
      flags_done = true;
    } else if (absl::Status s = ApplyFlag(args, &i, &options, &used);
               !s.ok()) {
      return s;
    }
  }
  if (options.help || (!positional.empty() && positional[0] == "help")) {
    options.help = true;
    return options;
  }
  if (absl::Status s = SetCommand(positional, &options); !s.ok()) return s;
  for (const FlagSpec* spec : used) {
    if (spec->command != Command::kNone && spec->command != options.command) {
      return absl::InvalidArgumentError(
          absl::StrCat("flag ", spec->name, " belongs to \"",
                       CommandName(spec->command), "\", not \"",
                       CommandName(options.command), "\""));
    }
  }
  return options;
}

// ---------------------------------------------------------------------------
// Output

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Nanoseconds(TimeUtil::DurationToNanoseconds(d));
}

// Milliseconds with at most microsecond digits: "0.05", "12.5", "3".
std::string FormatMillis(absl::Duration d) {
  std::string s = absl::StrFormat("%.3f", absl::ToDoubleMilliseconds(d));
  s.erase(s.find_last_not_of('0') + 1);
  if (s.back() == '.') s.pop_back();
  return s;
}

// Few digits that still parse back to the same double, with PostgreSQL's
// spellings of the special values. Starting at 15 digits keeps %g from
// switching to an exponent for plain numbers such as 100000000.
std::string FormatDouble(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  std::string s;
  for (int precision = 15; precision <= 17; ++precision) {
    s = absl::StrFormat("%.*g", precision, d);
    if (std::strtod(s.c_str(), nullptr) == d) break;
  }
  return s;
}

std::string FormatValue(const v1::Value& value) {
  switch (value.kind_case()) {
    case v1::Value::kBoolValue:
      return value.bool_value() ? "true" : "false";
    case v1::Value::kInt64Value:
      return absl::StrCat(value.int64_value());
    case v1::Value::kDoubleValue:
      return FormatDouble(value.double_value());
    case v1::Value::kStringValue:
      return value.string_value();
    case v1::Value::kBytesValue:
      return absl::StrCat("\\x", absl::BytesToHexString(value.bytes_value()));
    case v1::Value::kTimestampValue:
      return TimeUtil::ToString(value.timestamp_value());
    case v1::Value::kDecimalValue:
      return value.decimal_value();
    case v1::Value::kJsonValue:
      return value.json_value();
    case v1::Value::kNullValue:
    case v1::Value::KIND_NOT_SET:
      break;
  }
  return "NULL";
}

bool IsNumber(const v1::Value& value) {
  return value.has_int64_value() || value.has_double_value() ||
         value.has_decimal_value();
}

// Counts code points, so that UTF-8 text lines up in a terminal.
size_t DisplayWidth(absl::string_view s) {
  return std::count_if(s.begin(), s.end(),
                       [](char c) { return (c & 0xC0) != 0x80; });
}

struct Cell {
  std::string text;
  bool right_aligned = false;
};

void PrintTableLine(const std::vector<Cell>& cells,
                    const std::vector<size_t>& widths) {
  std::string line;
  for (size_t i = 0; i < cells.size(); ++i) {
    const std::string pad(widths[i] - DisplayWidth(cells[i].text), ' ');
    absl::StrAppend(&line, i == 0 ? " " : " | ",
                    cells[i].right_aligned ? pad : "", cells[i].text,
                    cells[i].right_aligned ? "" : pad);
  }
  // Padding after the last column would only leave trailing blanks.
  absl::StripTrailingAsciiWhitespace(&line);
  std::cout << line << '\n';
}

// A psql-like table: header, rule, one line per row, numbers on the right.
void PrintTable(const v1::QueryResponse& response) {
  std::vector<std::vector<Cell>> lines(1);
  for (const v1::Column& column : response.columns()) {
    lines[0].push_back({column.name()});
  }
  for (const v1::Row& row : response.rows()) {
    std::vector<Cell>& cells = lines.emplace_back();
    for (const v1::Value& value : row.values()) {
      cells.push_back({FormatValue(value), IsNumber(value)});
    }
  }
  std::vector<size_t> widths;
  for (const std::vector<Cell>& cells : lines) {
    if (widths.size() < cells.size()) widths.resize(cells.size());
    for (size_t i = 0; i < cells.size(); ++i) {
      widths[i] = std::max(widths[i], DisplayWidth(cells[i].text));
    }
  }
  PrintTableLine(lines[0], widths);
  std::vector<std::string> rule;
  for (size_t width : widths) rule.push_back(std::string(width + 2, '-'));
  std::cout << absl::StrJoin(rule, "+") << '\n';
  for (size_t i = 1; i < lines.size(); ++i) PrintTableLine(lines[i], widths);
}

std::string Plural(int64_t n, absl::string_view noun) {
  return absl::StrCat(n, " ", noun, n == 1 ? "" : "s");
}

void PrintQueryResponse(const v1::QueryResponse& response) {
  std::vector<std::string> footer;
  if (response.columns().empty()) {
    footer.push_back(Plural(response.rows_affected(), "row") + " affected");
  } else {
    PrintTable(response);
    footer.push_back(Plural(response.rows_size(), "row"));
  }
  if (!response.command_tag().empty()) {
    footer.push_back(response.command_tag());
  }
  const v1::QueryTimings& timings = response.timings();
  footer.push_back(absl::StrCat(
      "acquire ", FormatMillis(FromProto(timings.acquire_wait())), " ms"));
  footer.push_back(absl::StrCat(
      "exec ", FormatMillis(FromProto(timings.execution())), " ms"));
  std::cout << "(" << absl::StrJoin(footer, ", ") << ")\n";
}

std::string FormatStatsField(const google::protobuf::Message& message,
                             const google::protobuf::FieldDescriptor* field) {
  const google::protobuf::Descriptor* type = field->message_type();
  if (type == google::protobuf::Duration::descriptor()) {
    const auto& d = static_cast<const google::protobuf::Duration&>(
        message.GetReflection()->GetMessage(message, field));
    return FormatMillis(FromProto(d)) + " ms";
  }
  if (type == google::protobuf::Timestamp::descriptor()) {
    const auto& t = static_cast<const google::protobuf::Timestamp&>(
        message.GetReflection()->GetMessage(message, field));
    return TimeUtil::ToString(t);
  }
  std::string text;
  google::protobuf::TextFormat::PrintFieldValueToString(message, field, -1,
                                                        &text);
  return text;
}

// Every field of `message` in declaration order, one per line; a nested
// message's fields (a read replica's, its pool's) under its name
// ("replicas[0].pool.active_connections"), so that fields added to the
// contract show up without changes here.
void PrintFields(const google::protobuf::Message& message, const std::string& prefix) {
  const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
  const google::protobuf::Reflection* reflection = message.GetReflection();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = descriptor->field(i);
    const google::protobuf::Descriptor* type = field->message_type();
    const bool scalar = type == nullptr || type == google::protobuf::Duration::descriptor() ||
                        type == google::protobuf::Timestamp::descriptor();
    if (field->is_repeated()) {
      for (int j = 0; j < reflection->FieldSize(message, field); ++j) {
        const std::string name = absl::StrCat(prefix, field->name(), "[", j, "]");
        if (type != nullptr) {
          PrintFields(reflection->GetRepeatedMessage(message, field, j), name + ".");
        } else {
          std::string text;
          google::protobuf::TextFormat::PrintFieldValueToString(message, field, j, &text);
          std::cout << name << ": " << text << '\n';
        }
      }
    } else if (!scalar) {
      PrintFields(reflection->GetMessage(message, field), prefix + field->name() + ".");
    } else {
      std::cout << prefix << field->name() << ": " << FormatStatsField(message, field)
                << '\n';
    }
  }
}

void PrintPoolStats(const v1::PoolStats& stats) { PrintFields(stats, ""); }

void PrintWatchLine(const v1::PoolStats& stats) {
  std::cout << TimeUtil::ToString(stats.time())
            << " active=" << stats.active_connections()
            << " idle=" << stats.idle_connections()
            << " waiting=" << stats.waiting_connections()
            << " total=" << stats.total_connections()
            << " max=" << stats.max_connections() << std::endl;
}

// Prints message as one line of proto3 JSON on stdout. Conversion fails only
// for out-of-range Timestamp or Duration values, which is reported as an
// error rather than printed as something that is not JSON.
bool PrintJson(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status =
      google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    std::cerr << "error: cannot print the response as JSON: "
              << status.ToString() << '\n';
    return false;
  }
  // Flushed so that watch output reaches a pipe line by line.
  std::cout << json << std::endl;
  return true;
}

// ---------------------------------------------------------------------------
// Errors

// The google.rpc.ErrorInfo in a status's binary details, if there is one.
google::rpc::ErrorInfo ErrorInfoOf(const grpc::Status& status) {
  google::rpc::Status details;
  google::rpc::ErrorInfo info;
  if (!details.ParseFromString(status.error_details())) return info;
  for (const google::protobuf::Any& any : details.details()) {
    if (any.UnpackTo(&info)) break;
  }
  return info;
}

// "sqlstate" for PostgreSQL errors, "reason" for any other ErrorInfo.
absl::string_view ReasonLabel(const google::rpc::ErrorInfo& info) {
  return info.domain() == kPostgresDomain ? "sqlstate" : "reason";
}

// A JSON string literal, escaped by the protobuf JSON printer.
std::string JsonString(const std::string& text) {
  google::protobuf::Value value;
  value.set_string_value(text);
  std::string json;
  // A string Value always converts.
  (void)google::protobuf::util::MessageToJsonString(value, &json);
  return json;
}

// Written by hand rather than through a Struct, whose map would print the
// keys in no fixed order.
void PrintErrorJson(const std::string& code, const grpc::Status& status,
                    const google::rpc::ErrorInfo& info,
                    const std::map<std::string, std::string>& metadata) {
  std::vector<std::string> members = {
      absl::StrCat("\"code\":", JsonString(code)),
      absl::StrCat("\"message\":", JsonString(status.error_message()))};
  if (!info.reason().empty()) {
    members.push_back(absl::StrCat("\"", ReasonLabel(info),
                                   "\":", JsonString(info.reason())));
  }
  if (!metadata.empty()) {
    std::vector<std::string> entries;
    for (const auto& [key, value] : metadata) {
      entries.push_back(absl::StrCat(JsonString(key), ":", JsonString(value)));
    }
    members.push_back(
        absl::StrCat("\"metadata\":{", absl::StrJoin(entries, ","), "}"));
  }
  std::cerr << "{" << absl::StrJoin(members, ",") << "}\n";
}

int ReportRpcError(const grpc::Status& status, bool json) {
  // gRPC and absl share the canonical code numbers.
  const std::string code = absl::StatusCodeToString(
      static_cast<absl::StatusCode>(status.error_code()));
  const google::rpc::ErrorInfo info = ErrorInfoOf(status);
  // Sorted, because the proto map has no stable order.
  const std::map<std::string, std::string> metadata(info.metadata().begin(),
                                                    info.metadata().end());
  if (json) {
    PrintErrorJson(code, status, info, metadata);
    return kExitRpcError;
  }
  std::cerr << "error: " << code << ": " << status.error_message() << '\n';
  if (!info.reason().empty()) {
    std::cerr << "  " << ReasonLabel(info) << ": " << info.reason() << '\n';
  }
  for (const auto& [key, value] : metadata) {
    std::cerr << "  " << key << ": " << value << '\n';
  }
  return kExitRpcError;
}

int ReportUsageError(absl::string_view message) {
  std::cerr << "dbpool: " << message << "\n\n"
            << kSynopsis << "\nrun 'dbpool --help' for flags and details\n";
  return kExitUsage;
}

// ---------------------------------------------------------------------------
// Commands

void ApplyDeadline(absl::Duration timeout, grpc::ClientContext* context) {
  if (timeout == absl::InfiniteDuration()) return;
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

int RunQuery(v1::DatabaseService::Stub& stub, const Connection& connection,
             const Options& options) {
  grpc::ClientContext context;
  ApplyDeadline(options.timeout, &context);
  connection.Authorize(&context);
  v1::QueryResponse response;
  const grpc::Status status = stub.Query(&context, options.query, &response);
  if (!status.ok()) return ReportRpcError(status, options.json);
  if (options.json) return PrintJson(response) ? kExitOk : kExitRpcError;
  PrintQueryResponse(response);
  return kExitOk;
}

int RunStats(v1::DatabaseService::Stub& stub, const Connection& connection,
             const Options& options) {
  grpc::ClientContext context;
  ApplyDeadline(options.timeout, &context);
  connection.Authorize(&context);
  v1::PoolStats stats;
  const grpc::Status status =
      stub.GetPoolStats(&context, v1::GetPoolStatsRequest(), &stats);
  if (!status.ok()) return ReportRpcError(status, options.json);
  if (options.json) return PrintJson(stats) ? kExitOk : kExitRpcError;
  PrintPoolStats(stats);
  return kExitOk;
}

// Ctrl-C keeps its default action: every line is already flushed, and the
// server sees the stream cancelled when the connection drops.
int RunWatch(v1::DatabaseService::Stub& stub, const Connection& connection,
             const Options& options) {
  grpc::ClientContext context;
  ApplyDeadline(options.timeout_set ? options.timeout : absl::InfiniteDuration(),
                &context);
  connection.Authorize(&context);
  std::unique_ptr<grpc::ClientReader<v1::PoolStats>> reader =
      stub.StreamPoolStats(&context, options.watch);
  v1::PoolStats stats;
  int64_t received = 0;
  const bool has_count = options.watch_count > 0;
  while ((!has_count || received < options.watch_count) &&
         reader->Read(&stats)) {
    ++received;
    if (options.json) {
      if (!PrintJson(stats)) return kExitRpcError;
    } else {
      PrintWatchLine(stats);
    }
  }
  if (has_count && received == options.watch_count) {
    context.TryCancel();
    reader->Finish();
    return kExitOk;
  }
  const grpc::Status status = reader->Finish();
  // An explicit --timeout on watch is how long to watch, not a failure.
  const bool watched_until_deadline =
      status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED &&
      received > 0;
  if (status.ok() || watched_until_deadline) return kExitOk;
  return ReportRpcError(status, options.json);
}

// The position of a "bench" command word, which may follow global flags.
// bench parses its own flags, so it is dispatched before ParseArgs.
std::optional<size_t> FindBenchCommand(const std::vector<std::string>& args) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") return std::nullopt;
    if (arg.size() < 2 || arg[0] != '-') {
      if (arg == "bench") return i;
      return std::nullopt;
    }
    const FlagSpec* spec = FindFlag(arg.substr(0, arg.find('=')));
    if (spec != nullptr && spec->takes_value &&
        arg.find('=') == std::string::npos) {
      ++i;  // the flag's value
    }
  }
  return std::nullopt;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (const std::optional<size_t> bench = FindBenchCommand(args)) {
    args.erase(args.begin() + static_cast<std::ptrdiff_t>(*bench));
    return dbpool::cli::RunBench(args, &ParseParam);
  }
  const absl::StatusOr<Options> options = ParseArgs(args);
  if (!options.ok()) return ReportUsageError(options.status().message());
  if (options->help) {
    std::cout << kSynopsis << kDetails << Connection::kHelp;
    return kExitOk;
  }
  const absl::StatusOr<Connection> connection = Connection::FromEnvironment();
  if (!connection.ok()) return ReportUsageError(connection.status().message());
  const std::unique_ptr<v1::DatabaseService::Stub> stub =
      v1::DatabaseService::NewStub(connection->Open(options->target));
  // ParseArgs leaves kNone only together with help.
  if (options->command == Command::kQuery) return RunQuery(*stub, *connection, *options);
  if (options->command == Command::kStats) return RunStats(*stub, *connection, *options);
  return RunWatch(*stub, *connection, *options);
}
