#include "connection.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace dbpool::cli {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

absl::StatusOr<std::string> ReadFile(const char* variable, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return absl::InvalidArgumentError(
        absl::StrCat(variable, ": cannot read \"", path, "\""));
  }
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

}  // namespace

const char Connection::kHelp[] = R"(
environment:
  DBPOOL_TOKEN            bearer token sent with every call (kept out of the
                          command line, where other users could read it)
  DBPOOL_TLS_CA           PEM CA bundle: speak TLS and trust these CAs
  DBPOOL_TLS_CLIENT_CERT  PEM client certificate and key, for servers that
  DBPOOL_TLS_CLIENT_KEY   require mutual TLS
)";

absl::StatusOr<Connection> Connection::FromEnvironment() {
  Connection c;
  if (const std::string token = Env("DBPOOL_TOKEN"); !token.empty()) {
    c.authorization_ = absl::StrCat("Bearer ", token);
  }
  const std::string ca = Env("DBPOOL_TLS_CA");
  const std::string cert = Env("DBPOOL_TLS_CLIENT_CERT");
  const std::string key = Env("DBPOOL_TLS_CLIENT_KEY");
  if (ca.empty()) {
    if (!cert.empty() || !key.empty()) {
      return absl::InvalidArgumentError(
          "DBPOOL_TLS_CLIENT_CERT and DBPOOL_TLS_CLIENT_KEY need DBPOOL_TLS_CA");
    }
    c.credentials_ = grpc::InsecureChannelCredentials();
    return c;
  }
  if (cert.empty() != key.empty()) {
    return absl::InvalidArgumentError(
        "DBPOOL_TLS_CLIENT_CERT and DBPOOL_TLS_CLIENT_KEY go together");
  }
  grpc::SslCredentialsOptions options;
  auto roots = ReadFile("DBPOOL_TLS_CA", ca);
  if (!roots.ok()) return roots.status();
  options.pem_root_certs = *std::move(roots);
  if (!cert.empty()) {
    auto chain = ReadFile("DBPOOL_TLS_CLIENT_CERT", cert);
    if (!chain.ok()) return chain.status();
    auto private_key = ReadFile("DBPOOL_TLS_CLIENT_KEY", key);
    if (!private_key.ok()) return private_key.status();
    options.pem_cert_chain = *std::move(chain);
    options.pem_private_key = *std::move(private_key);
  }
  c.credentials_ = grpc::SslCredentials(options);
  return c;
}

std::shared_ptr<grpc::Channel> Connection::Open(
    const std::string& target, const grpc::ChannelArguments& args) const {
  return grpc::CreateCustomChannel(target, credentials_, args);
}

void Connection::Authorize(grpc::ClientContext* context) const {
  if (!authorization_.empty()) context->AddMetadata("authorization", authorization_);
}

}  // namespace dbpool::cli
