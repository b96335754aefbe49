// AccessControl: who is calling DatabaseService, what they may do, and how
// many queries they may have in flight.
//
// With a token table, a caller is the name its bearer token maps to, and
// its role decides: monitor reads stats, read_only also queries (every
// query in a READ ONLY transaction), read_write may do anything. Without
// one, everyone is read_write and a caller is known by its client
// certificate's name under mutual TLS, else by its address. Calls that the
// HTTP gateway makes carry the HTTP client's identity in metadata, trusted
// only with the gateway's secret (security/forwarded_client.h).
//
// Owned by the service; thread-safe. Nothing blocks: the in-flight count
// is a short critical section.
#ifndef DBPOOL_SERVER_RPC_ACCESS_CONTROL_H_
#define DBPOOL_SERVER_RPC_ACCESS_CONTROL_H_

#include <string>

#include <grpcpp/server_context.h>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/security/tokens.h"

namespace dbpool::rpc {

enum class Need { kStats, kQuery };

// Whether a call needs the caller's name even when nothing else would
// (no tokens, no per-caller limit). Calls that touch a transaction do: a
// transaction belongs to the caller that began it, and the engine compares
// names.
enum class Naming { kIfUsed, kAlways };

// A gRPC peer string without its port ("ipv4:127.0.0.1:53422" ->
// "ipv4:127.0.0.1", "ipv6:[::1]:5000" -> "ipv6:[::1]"), so that an anonymous
// caller is one per host, not one per connection.
std::string PeerHost(absl::string_view peer);

class AccessControl {
 public:
  // An empty table turns authentication off; max_calls_per_caller 0 turns
  // the in-flight limit off. `forwarding_secret` is the HTTP gateway's
  // (empty: forwarded names are never trusted).
  AccessControl(security::TokenTable tokens, int max_calls_per_caller,
                std::string forwarding_secret);

  // UNAUTHENTICATED without a valid token (when tokens are configured),
  // PERMISSION_DENIED when the caller's role does not cover `need`.
  // The caller's name is the token's; without tokens it is the client
  // certificate's ("cn:NAME") under mutual TLS, else the peer's host, or
  // the HTTP client the gateway names. Working that out costs, so with
  // Naming::kIfUsed and neither tokens nor a per-caller limit the name is
  // left empty; with Naming::kAlways it is never empty.
  absl::StatusOr<security::Caller> Check(const grpc::ServerContextBase& context,
                                         Need need,
                                         Naming naming = Naming::kIfUsed) const;

  // Holds one of a caller's in-flight query slots until destroyed.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& other) noexcept;
    Slot& operator=(Slot&& other) noexcept;
    ~Slot();

   private:
    friend class AccessControl;
    Slot(AccessControl* owner, std::string caller);
    AccessControl* owner_ = nullptr;
    std::string caller_;
  };

  // RESOURCE_EXHAUSTED when `caller` already has the maximum in flight.
  absl::StatusOr<Slot> Admit(const security::Caller& caller);

 private:
  void Release(const std::string& caller);

  const security::TokenTable tokens_;
  const int max_calls_per_caller_;
  const std::string forwarding_secret_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, int> in_flight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace dbpool::rpc

#endif  // DBPOOL_SERVER_RPC_ACCESS_CONTROL_H_
