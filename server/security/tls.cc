#include "server/security/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"

namespace dbpool::security {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct CtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

// OpenSSL's reason for the last failure, and clears its error queue.
std::string OpenSslError() {
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return "unknown error";
  char text[256];
  ERR_error_string_n(code, text, sizeof text);
  return text;
}

std::unique_ptr<BIO, BioFree> MemoryBio(const std::string& pem) {
  return std::unique_ptr<BIO, BioFree>(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// Every certificate in `pem`, in order.
std::vector<X509Ptr> Certificates(const std::string& pem) {
  std::vector<X509Ptr> out;
  auto bio = MemoryBio(pem);
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
    out.emplace_back(x);
  }
  // Reading stops with "no start line" at the end of the text.
  ERR_clear_error();
  return out;
}

absl::StatusOr<std::string> ReadFile(const char* setting, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat(setting, ": cannot read \"", path, "\""));
  }
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace

absl::Status ConfigureServerContext(SSL_CTX* context, const TlsSettings& tls) {
  SSL_CTX_set_min_proto_version(context, TLS1_2_VERSION);
  std::vector<X509Ptr> chain = Certificates(tls.cert_chain_pem);
  if (chain.empty()) {
    return absl::InvalidArgumentError("no PEM certificate in the certificate file");
  }
  if (SSL_CTX_use_certificate(context, chain.front().get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("certificate refused: ", OpenSslError()));
  }
  SSL_CTX_clear_chain_certs(context);
  for (size_t i = 1; i < chain.size(); ++i) {
    // add1 takes its own reference.
    if (SSL_CTX_add1_chain_cert(context, chain[i].get()) != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("intermediate certificate refused: ", OpenSslError()));
    }
  }
  auto key_bio = MemoryBio(tls.private_key_pem);
  std::unique_ptr<EVP_PKEY, KeyFree> key(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no unencrypted PEM private key in the key file: ", OpenSslError()));
  }
  if (SSL_CTX_use_PrivateKey(context, key.get()) != 1 ||
      SSL_CTX_check_private_key(context) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the private key does not belong to the certificate: ", OpenSslError()));
  }
  if (tls.mutual()) {
    std::vector<X509Ptr> cas = Certificates(tls.client_ca_pem);
    if (cas.empty()) {
      return absl::InvalidArgumentError("no PEM certificate in the client CA file");
    }
    X509_STORE* store = SSL_CTX_get_cert_store(context);
    for (const X509Ptr& ca : cas) {
      if (X509_STORE_add_cert(store, ca.get()) != 1 ||
          SSL_CTX_add_client_CA(context, ca.get()) != 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("client CA refused: ", OpenSslError()));
      }
    }
    SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                       nullptr);
  }
  return absl::OkStatus();
}

absl::StatusOr<TlsSettings> LoadTls(const std::string& cert_file,
                                    const std::string& key_file,
                                    const std::string& client_ca_file) {
  TlsSettings tls;
  absl::StatusOr<std::string> cert = ReadFile("DBPOOL_TLS_CERT_FILE", cert_file);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile("DBPOOL_TLS_KEY_FILE", key_file);
  if (!key.ok()) return key.status();
  tls.cert_chain_pem = *std::move(cert);
  tls.private_key_pem = *std::move(key);
  if (!client_ca_file.empty()) {
    absl::StatusOr<std::string> ca =
        ReadFile("DBPOOL_TLS_CLIENT_CA_FILE", client_ca_file);
    if (!ca.ok()) return ca.status();
    tls.client_ca_pem = *std::move(ca);
  }
  // The same checks the listeners will make, done now.
  std::unique_ptr<SSL_CTX, CtxFree> probe(SSL_CTX_new(TLS_server_method()));
  if (probe == nullptr) return absl::InternalError(OpenSslError());
  if (absl::Status s = ConfigureServerContext(probe.get(), tls); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS files ", cert_file, ", ", key_file,
                     client_ca_file.empty() ? "" : ", ", client_ca_file, ": ",
                     s.message()));
  }
  return tls;
}

}  // namespace dbpool::security
