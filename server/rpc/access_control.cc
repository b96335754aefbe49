#include "server/rpc/access_control.h"

#include <optional>
#include <utility>

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/security/forwarded_client.h"

namespace dbpool::rpc {
namespace {

std::optional<absl::string_view> Metadata(const grpc::ServerContextBase& context,
                                          absl::string_view key) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(grpc::string_ref(key.data(), key.size()));
  if (it == metadata.end()) return std::nullopt;
  return absl::string_view(it->second.data(), it->second.size());
}

// Who is calling when no token says so.
std::string AnonymousName(const grpc::ServerContextBase& context,
                          absl::string_view forwarding_secret) {
  if (auto value = Metadata(context, security::kForwardedClientKey)) {
    if (auto client = security::ForwardedClient(*value, forwarding_secret)) {
      return *std::move(client);
    }
  }
  if (auto auth = context.auth_context(); auth != nullptr) {
    const auto names = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
    if (!names.empty()) {
      return absl::StrCat("cn:", absl::string_view(names.front().data(),
                                                   names.front().size()));
    }
  }
  std::string host = PeerHost(context.peer());
  // Never empty: an empty name would look like "nobody" to a transaction.
  return host.empty() ? std::string("unknown") : host;
}

}  // namespace

std::string PeerHost(absl::string_view peer) {
  if (const auto colon = peer.rfind(':');
      colon != absl::string_view::npos && colon > peer.find(':')) {
    peer = peer.substr(0, colon);
  }
  return std::string(peer);
}

AccessControl::AccessControl(security::TokenTable tokens, int max_calls_per_caller,
                             std::string forwarding_secret)
    : tokens_(std::move(tokens)),
      max_calls_per_caller_(max_calls_per_caller),
      forwarding_secret_(std::move(forwarding_secret)) {}

absl::StatusOr<security::Caller> AccessControl::Check(
    const grpc::ServerContextBase& context, Need need, Naming naming) const {
  if (tokens_.empty()) {
    // Only the per-caller limit and transactions need the name; working it
    // out on every call (the peer string, an auth context) would cost for
    // nothing.
    const bool named = max_calls_per_caller_ > 0 || naming == Naming::kAlways;
    return security::Caller{
        named ? AnonymousName(context, forwarding_secret_) : std::string(),
        security::Role::kReadWrite};
  }
  absl::StatusOr<security::Caller> caller =
      tokens_.Authenticate(Metadata(context, "authorization"));
  if (!caller.ok()) return caller;
  if (need == Need::kQuery && caller->role == security::Role::kMonitor) {
    return absl::PermissionDeniedError(absl::StrCat(
        "caller \"", caller->name,
        "\" has role monitor, which may read pool stats and health only"));
  }
  return caller;
}

absl::StatusOr<AccessControl::Slot> AccessControl::Admit(
    const security::Caller& caller) {
  if (max_calls_per_caller_ == 0) return Slot();
  absl::MutexLock lock(&mu_);
  int& count = in_flight_[caller.name];
  if (count >= max_calls_per_caller_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "caller \"", caller.name, "\" already has ", count,
        " queries in flight, the most one caller may have "
        "(DBPOOL_MAX_CALLS_PER_CALLER)"));
  }
  ++count;
  return Slot(this, caller.name);
}

void AccessControl::Release(const std::string& caller) {
  absl::MutexLock lock(&mu_);
  auto it = in_flight_.find(caller);
  if (--it->second == 0) in_flight_.erase(it);
}

AccessControl::Slot::Slot(AccessControl* owner, std::string caller)
    : owner_(owner), caller_(std::move(caller)) {}

AccessControl::Slot::Slot(Slot&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)),
      caller_(std::move(other.caller_)) {}

AccessControl::Slot& AccessControl::Slot::operator=(Slot&& other) noexcept {
  if (this != &other) {
    if (owner_ != nullptr) owner_->Release(caller_);
    owner_ = std::exchange(other.owner_, nullptr);
    caller_ = std::move(other.caller_);
  }
  return *this;
}

AccessControl::Slot::~Slot() {
  if (owner_ != nullptr) owner_->Release(caller_);
}

}  // namespace dbpool::rpc
