// TLS settings shared by the gRPC and HTTP listeners: the server's
// certificate chain and key, and optionally the CAs whose client
// certificates are accepted (mutual TLS). Read from PEM files once at
// startup and checked there, so a bad file stops the server before it
// listens instead of failing every handshake later.
//
// A plain value; thread-safe to share once loaded. Loading reads files.
#ifndef DBPOOL_SERVER_SECURITY_TLS_H_
#define DBPOOL_SERVER_SECURITY_TLS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

typedef struct ssl_ctx_st SSL_CTX;

namespace dbpool::security {

struct TlsSettings {
  std::string cert_chain_pem;  // leaf first, then intermediates
  std::string private_key_pem;
  std::string client_ca_pem;  // empty: client certificates are not asked for

  bool mutual() const { return !client_ca_pem.empty(); }
};

// Reads the files (client_ca_file may be empty) and checks that they hold
// PEM certificates and a key that belongs to the leaf certificate. Errors
// name the file and what is wrong with it, never its contents.
absl::StatusOr<TlsSettings> LoadTls(const std::string& cert_file,
                                    const std::string& key_file,
                                    const std::string& client_ca_file);

// Sets up an OpenSSL server context with `tls`: TLS 1.2 or newer, the
// certificate chain and key, and for mutual TLS the client CAs with
// verification required.
absl::Status ConfigureServerContext(SSL_CTX* context, const TlsSettings& tls);

}  // namespace dbpool::security

#endif  // DBPOOL_SERVER_SECURITY_TLS_H_
