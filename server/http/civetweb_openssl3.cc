// Lets Debian 12's civetweb serve HTTPS with OpenSSL 3.
//
// civetweb 1.15 there is built against the OpenSSL 1.1 API and loads
// "libssl.so" at run time, then looks up SSL_get_peer_certificate, which
// OpenSSL 3 renamed SSL_get1_peer_certificate (the only one of its 59
// names that is missing). The lookup fails and civetweb refuses every TLS
// listener. This library's SONAME is "libssl.so" and the server links it,
// so civetweb's dlopen finds it already loaded; its lookups reach the real
// libssl.so.3 through this library's dependency on it.
//
// openssl/ssl.h is not included: it defines the old name as a macro.
extern "C" {
struct ssl_st;
struct x509_st;
x509_st* SSL_get1_peer_certificate(const ssl_st* ssl);

__attribute__((visibility("default"))) x509_st* SSL_get_peer_certificate(
    const ssl_st* ssl) {
  return SSL_get1_peer_certificate(ssl);
}
}
