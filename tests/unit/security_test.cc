#include "server/security/tokens.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/security/forwarded_client.h"

namespace dbpool::security {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kTable[] =
    "# name role token\n"
    "\n"
    "grafana   monitor     mon-aaaaaaaaaaaaaaaa\n"
    "reports\tread_only   ro-bbbbbbbbbbbbbbbbb\n"
    "orders    read_write  rw-ccccccccccccccccc   \n";

TEST(TokenTable, MapsEachTokenToItsCallerAndRole) {
  auto table = TokenTable::Parse(kTable);
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ(table->size(), 3u);
  struct Case {
    const char* header;
    const char* name;
    Role role;
  } cases[] = {{"Bearer mon-aaaaaaaaaaaaaaaa", "grafana", Role::kMonitor},
               {"bearer ro-bbbbbbbbbbbbbbbbb", "reports", Role::kReadOnly},
               {"Bearer  rw-ccccccccccccccccc ", "orders", Role::kReadWrite}};
  for (const Case& c : cases) {
    auto caller = table->Authenticate(c.header);
    ASSERT_TRUE(caller.ok()) << c.header << ": " << caller.status();
    EXPECT_EQ(caller->name, c.name);
    EXPECT_EQ(caller->role, c.role);
  }
}

TEST(TokenTable, RefusesWhatIsNotAKnownBearerToken) {
  auto table = TokenTable::Parse(kTable);
  ASSERT_TRUE(table.ok());
  EXPECT_EQ(table->Authenticate(std::nullopt).status().code(),
            absl::StatusCode::kUnauthenticated);
  for (const char* header :
       {"mon-aaaaaaaaaaaaaaaa", "Basic mon-aaaaaaaaaaaaaaaa", "Bearer",
        "Bearer mon-aaaaaaaaaaaaaaab", "Bearer mon-aaaaaaaaaaaaaaa",
        "Bearer MON-AAAAAAAAAAAAAAAA"}) {
    auto caller = table->Authenticate(header);
    EXPECT_EQ(caller.status().code(), absl::StatusCode::kUnauthenticated) << header;
    EXPECT_THAT(std::string(caller.status().message()), Not(HasSubstr("aaaa")))
        << "token text in the error";
  }
}

TEST(TokenTable, ReportsEveryBadLineWithoutTokenText) {
  auto table = TokenTable::Parse(
      "a read_write short\n"
      "b superuser bbbbbbbbbbbbbbbbbbbb\n"
      "c read_only\n"
      "d read_only dddddddddddddddddddd\n"
      "d monitor eeeeeeeeeeeeeeeeeeee\n"
      "f monitor dddddddddddddddddddd\n");
  ASSERT_FALSE(table.ok());
  const std::string m(table.status().message());
  EXPECT_THAT(m, AllOf(HasSubstr("line 1"), HasSubstr("shorter than 16"),
                       HasSubstr("line 2"), HasSubstr("superuser"),
                       HasSubstr("line 3"), HasSubstr("line 5: name \"d\" appears twice"),
                       HasSubstr("line 6"), HasSubstr("another caller's")));
  EXPECT_THAT(m, AllOf(Not(HasSubstr("short ")), Not(HasSubstr("bbbb")),
                       Not(HasSubstr("dddd")), Not(HasSubstr("eeee"))));
}

TEST(TokenTable, AFileWithoutTokensIsAnError) {
  // Otherwise a truncated file would quietly switch authentication off.
  EXPECT_FALSE(TokenTable::Parse("# nothing yet\n\n").ok());
  EXPECT_EQ(TokenTable::Load("/nonexistent/tokens").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(ForwardedClient, TrustsOnlyNamesThatCarryTheSecret) {
  const std::string secret = NewForwardingSecret();
  EXPECT_EQ(secret.size(), 32u);
  EXPECT_NE(secret, NewForwardingSecret());
  EXPECT_EQ(ForwardedClient(ForwardedClientValue(secret, "cn:web"), secret), "cn:web");
  EXPECT_EQ(ForwardedClient(ForwardedClientValue("guess", "cn:web"), secret), std::nullopt);
  EXPECT_EQ(ForwardedClient(secret, secret), std::nullopt) << "no name";
  EXPECT_EQ(ForwardedClient(secret + "xcn:web", secret), std::nullopt);
  EXPECT_EQ(ForwardedClient(" cn:web", ""), std::nullopt) << "no secret, no trust";
}

}  // namespace
}  // namespace dbpool::security
