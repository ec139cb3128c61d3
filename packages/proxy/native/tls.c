// TLS contexts: the SVID a side presents and the roots it verifies the peer against.

#include "hbone.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl, (void)arg;
  for (unsigned int i = 0; i < inlen; i += 1u + in[i]) {
    if (in[i] == 2 && i + 3 <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
  }
  // HBONE is h2 only: no_application_protocol (RFC 7301 §3.2).
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static void context_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  SSL_CTX_free(data);
}

// The first error OpenSSL queued (or errno), after `what`; the queue is cleared.
const char *tls_error(char *buffer, size_t size, const char *what) {
  unsigned long code = ERR_get_error();
  if (code == 0) snprintf(buffer, size, "%s: %s", what, errno ? strerror(errno) : "connection closed");
  else {
    char reason[200];
    ERR_error_string_n(code, reason, sizeof(reason));
    snprintf(buffer, size, "%s: %s", what, reason);
  }
  ERR_clear_error();
  return buffer;
}

static napi_value throw_tls(napi_env env, const char *what) {
  char buffer[320];
  return throw_error(env, "ERR_AMBIENT_HBONE_TLS_CONTEXT", tls_error(buffer, sizeof(buffer), what));
}

// createContext(server, certificateChainPem, privateKeyPem, rootsPem)
napi_value create_context(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool server;
  if (argc < 4 || napi_get_value_bool(env, argv[0], &server) != napi_ok) return throw_type_error(env, "createContext(server, certificateChainPem, privateKeyPem, rootsPem)");
  char *pem[3];
  for (int i = 0; i < 3; i++) pem[i] = get_string(env, argv[i + 1]);
  napi_value result = NULL;
  SSL_CTX *ctx = NULL;
  BIO *bio = NULL;
  if (pem[0] == NULL || pem[1] == NULL || pem[2] == NULL) {
    throw_type_error(env, "createContext: the PEM arguments must be strings");
    goto done;
  }
  ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == NULL) {
    throw_tls(env, "SSL_CTX_new");
    goto done;
  }
  // TLS 1.3 only: what HBONE and ztunnel speak.
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  // A peer closing TCP without close_notify is an ordinary close for a tunnel carrier.
  SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (server) {
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
  } else if (SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2", 3) != 0) {
    throw_tls(env, "ALPN");
    goto done;
  }
  bio = BIO_new_mem_buf(pem[0], -1);
  X509 *cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
  if (cert == NULL || SSL_CTX_use_certificate(ctx, cert) != 1) {
    X509_free(cert);
    throw_tls(env, "the certificate chain");
    goto done;
  }
  X509_free(cert);
  while ((cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    if (SSL_CTX_add0_chain_cert(ctx, cert) != 1) {
      X509_free(cert);
      throw_tls(env, "the certificate chain");
      goto done;
    }
  }
  ERR_clear_error();
  BIO_free(bio);
  bio = BIO_new_mem_buf(pem[1], -1);
  EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
  if (key == NULL || SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    EVP_PKEY_free(key);
    throw_tls(env, "the private key");
    goto done;
  }
  EVP_PKEY_free(key);
  BIO_free(bio);
  bio = BIO_new_mem_buf(pem[2], -1);
  X509_STORE *store = SSL_CTX_get_cert_store(ctx);
  int roots = 0;
  while ((cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
    X509_STORE_add_cert(store, cert);
    X509_free(cert);
    roots++;
  }
  ERR_clear_error();
  if (roots == 0) {
    throw_error(env, "ERR_AMBIENT_HBONE_TLS_CONTEXT", "createContext: no root certificate in rootsPem");
    goto done;
  }
  if (napi_checked(napi_create_external(env, ctx, context_finalize, NULL, &result), "napi_create_external") != napi_ok) {
    throw_napi_failure(env, "napi_create_external(context)");
    result = NULL;
    goto done;
  }
  ctx = NULL;  // the external's finalizer frees it from here on
  if (napi_checked(napi_type_tag_object(env, result, &CONTEXT_TAG), "napi_type_tag_object") != napi_ok) {
    throw_napi_failure(env, "napi_type_tag_object(context)");
    result = NULL;
  }
done:
  BIO_free(bio);
  SSL_CTX_free(ctx);
  for (int i = 0; i < 3; i++) free(pem[i]);
  return result;
}
