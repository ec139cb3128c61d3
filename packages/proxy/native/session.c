// A session: one TLS connection carrying one HTTP/2 session, from the
// handshake to its teardown, on its data-path thread.

#include "hbone.h"

#include <errno.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// Resets every pipe and closes the connection, then queues Close (allocated
// with the session, its reason written into it: the first reason given).
static void free_timer(uv_handle_t *handle) { free(handle); }

void session_teardown(session_t *s, const char *reason) {
  if (s->state == S_CLOSED) return;
  if (reason != NULL && s->closed != NULL && s->closed->a == 0) {
    snprintf(s->closed->text, CLOSE_REASON_MAX, "%s", reason);
    s->closed->a = 1;
  }
  if (reason != NULL && s->depth == 0 && s->state == S_OPEN && s->h2 != NULL && !s->peer_eof) {
    // Destroyed while the peer is there: GOAWAY with the last stream processed, best effort, before
    // the connection goes. Streams the peer sent after it are refused, and a client may send them
    // again on another connection (RFC 9113 §6.8). Only outside a read or a flush (depth 0):
    // nghttp2 is not re-entrant, and a write failing in this flush tears down again, without one.
    submit_goaway(s);
    s->depth++;
    session_flush(s);
    s->depth--;
    if (s->state == S_CLOSED) return;  // the flush failed and tore the session down
  }
  s->state = S_CLOSED;
  instance_t *instance = s->instance;
  uv_mutex_lock(&instance->lock);
  if (s->live_prev != NULL) s->live_prev->live_next = s->live_next;
  else if (instance->sessions == s) instance->sessions = s->live_next;
  if (s->live_next != NULL) s->live_next->live_prev = s->live_prev;
  s->live_prev = s->live_next = NULL;
  uv_mutex_unlock(&instance->lock);
  while (s->pipes != NULL) {
    pipe_t *p = s->pipes;
    if (!p->reset && !(p->stream_closed && p->fd_eof && p->fin_sent)) {
      p->reset = 1;
      if (p->outcome == OUT_CLOSED) p->outcome = OUT_STREAM_RESET;
      pipe_set_error(p, reason != NULL ? reason : "session closed");
    }
    p->stream_closed = 1;
    pipe_finish(p);
  }
  close_poll(&s->poll);
  if (s->timer != NULL) {
    uv_timer_stop(s->timer);
    uv_close((uv_handle_t *)s->timer, free_timer);
    s->timer = NULL;
  }
  if (s->ssl != NULL) {
    // close_notify on a clean close, best effort: the socket is non-blocking and closed next.
    if (reason == NULL && SSL_is_init_finished(s->ssl)) {
      SSL_shutdown(s->ssl);
      s->blocked = 0;
      net_flush(s);
    }
    SSL_free(s->ssl);
    s->ssl = NULL;
  }
  if (s->net != NULL) {
    BIO_free(s->net);
    s->net = NULL;
  }
  if (s->fd >= 0) {
    close(s->fd);
    s->fd = -1;
  }
  if (s->h2 != NULL) {
    nghttp2_session_del(s->h2);
    s->h2 = NULL;
  }
  bq_free(&s->tls_out);
  if (s->closed != NULL) {
    push_event(s, s->closed);
    s->closed = NULL;
  }
}

void session_fail(session_t *s, const char *reason) { session_teardown(s, reason); }

static void session_update_poll(session_t *s) {
  if (s->state == S_CLOSED) return;
  // Until JavaScript accepted the peer, what it sends waits in the socket.
  int wanted = s->peer_eof || s->verifying ? 0 : UV_READABLE;
  if (s->blocked) wanted |= UV_WRITABLE;
  set_poll(s->poll, &s->events, wanted, session_poll_cb);
}

// Writes the TLS records OpenSSL produced to the socket, until it would block.
int net_flush(session_t *s) {
  for (;;) {
    char *ptr;
    int n = BIO_nread0(s->net, &ptr);
    if (n <= 0) return 0;
    ssize_t w = write(s->fd, ptr, (size_t)n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        s->blocked = 1;
        return 0;
      }
      char buffer[96];
      snprintf(buffer, sizeof(buffer), "write to the peer failed: %s", strerror(errno));
      session_fail(s, buffer);
      return -1;
    }
    BIO_nread(s->net, &ptr, (int)w);
    if (w < n) {
      s->blocked = 1;
      return 0;
    }
  }
}

// Reads what the socket holds into the BIO pair; returns the bytes read, -1
// on failure. `*drained` tells whether the socket is known to be empty now.
static ssize_t net_fill(session_t *s, int *drained) {
  ssize_t total = 0;
  *drained = 0;
  while (!s->peer_eof) {
    char *ptr;
    int space = BIO_nwrite0(s->net, &ptr);
    if (space <= 0) break;  // full: OpenSSL reads first
    ssize_t n = read(s->fd, ptr, (size_t)space);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        *drained = 1;
        break;
      }
      char buffer[96];
      snprintf(buffer, sizeof(buffer), "read from the peer failed: %s", strerror(errno));
      session_fail(s, buffer);
      return -1;
    }
    if (n == 0) {
      s->peer_eof = 1;
      break;
    }
    BIO_nwrite(s->net, &ptr, (int)n);
    total += n;
    if (n < space) {
      // A short read of a stream socket means it had no more.
      *drained = 1;
      break;
    }
  }
  return total;
}

// Encrypts what nghttp2 has to send and writes it, until the socket would block.
void session_flush(session_t *s) {
  if (s->state != S_OPEN || s->verifying) return;
  s->depth++;
  for (int round = 0; round < 4096 && s->state == S_OPEN; round++) {
    if (bq_len(&s->tls_out) == 0) {
      int rv = nghttp2_session_send(s->h2);
      if (rv != 0) {
        session_fail(s, s->failure != NULL ? s->failure : nghttp2_strerror(rv));
        break;
      }
      if (bq_len(&s->tls_out) == 0) break;
    }
    ERR_clear_error();
    int n = SSL_write(s->ssl, s->tls_out.data + s->tls_out.start, (int)bq_len(&s->tls_out));
    if (n > 0) {
      bq_consume(&s->tls_out, (size_t)n);
      continue;
    }
    int err = SSL_get_error(s->ssl, n);
    if (err == SSL_ERROR_WANT_WRITE) {
      // The BIO pair is full: move records to the socket, and go on unless it is full too.
      if (net_flush(s) != 0 || s->blocked) break;
      continue;
    }
    char buffer[256];
    session_fail(s, tls_error(buffer, sizeof(buffer), "TLS write failed"));
  }
  if (s->state == S_OPEN) net_flush(s);
  s->depth--;
  session_maybe_close(s);
  session_update_poll(s);
}

void session_read(session_t *s) {
  for (int round = 0; round < 64; round++) {
    int drained;
    ssize_t filled = net_fill(s, &drained);
    if (filled < 0) return;
    for (;;) {
      ERR_clear_error();
      uint8_t *read_buffer = s->worker->read_buffer;
      int n = SSL_read(s->ssl, read_buffer, NET_BUFFER);
      if (n > 0) {
        ssize_t rv = nghttp2_session_mem_recv(s->h2, read_buffer, (size_t)n);
        if (rv < 0) {
          session_fail(s, s->failure != NULL ? s->failure : nghttp2_strerror((int)rv));
          return;
        }
        if (s->state != S_OPEN) return;
        continue;
      }
      int err = SSL_get_error(s->ssl, n);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) break;
      if (err == SSL_ERROR_ZERO_RETURN) {
        flush_dirty(s);
        session_fail(s, "the peer closed the connection");
        return;
      }
      char buffer[256];
      session_fail(s, tls_error(buffer, sizeof(buffer), "TLS read failed"));
      return;
    }
    flush_dirty(s);
    if (s->peer_eof) {
      session_fail(s, "the peer closed the connection");
      return;
    }
    if (filled == 0 || drained) return;
  }
}

// Closes once nghttp2 has nothing more to do: GOAWAY exchanged and every stream ended. A
// stream still waiting for its upstream (no descriptor spliced yet) has nothing to carry once
// nghttp2 is done, as after a connection error: it does not keep the connection open (its
// StreamClose tells JavaScript, which drops the upstream when it connects).
void session_maybe_close(session_t *s) {
  if (s->state != S_OPEN || s->depth > 0) return;
  if (bq_len(&s->tls_out) > 0) return;
  if (nghttp2_session_want_read(s->h2) || nghttp2_session_want_write(s->h2)) return;
  for (pipe_t *p = s->pipes; p != NULL; p = p->next)
    if (p->fd >= 0) return;
  session_teardown(s, NULL);
}

// The peer's chain, leaf first, as DER: what JavaScript makes its SPIFFE checks on.
static int chain_event(session_t *s, X509 *leaf, STACK_OF(X509) *chain) {
  event_t *e = fault_event_alloc() ? NULL : new_event(EV_HANDSHAKE, 0);
  if (e == NULL || (e->headers = calloc(16, sizeof(char *))) == NULL || (e->lengths = calloc(16, sizeof(size_t))) == NULL) {
    if (e != NULL) free_event(e);
    return -1;
  }
  int first_is_leaf = chain != NULL && sk_X509_num(chain) > 0 && X509_cmp(sk_X509_value(chain, 0), leaf) == 0;
  for (int i = first_is_leaf ? 0 : -1; chain != NULL ? i < sk_X509_num(chain) : i < 0; i++) {
    if (e->header_count == 16) break;
    unsigned char *der = NULL;
    int len = i2d_X509(i < 0 ? leaf : sk_X509_value(chain, i), &der);
    char *copy = len > 0 ? malloc((size_t)len) : NULL;
    if (copy == NULL) {
      OPENSSL_free(der);
      free_event(e);
      return -1;
    }
    memcpy(copy, der, (size_t)len);
    OPENSSL_free(der);
    e->headers[e->header_count] = copy;
    e->lengths[e->header_count++] = (size_t)len;
  }
  push_event(s, e);
  return 0;
}

// The handshake is done: JavaScript hears of the peer's chain and answers
// with a verdict (CMD_VERDICT). Until then nothing is read from the peer
// and nothing is sent but the handshake's own bytes.
static void handshake_done(session_t *s) {
  const unsigned char *alpn = NULL;
  unsigned int alpn_len = 0;
  SSL_get0_alpn_selected(s->ssl, &alpn, &alpn_len);
  if (alpn_len != 2 || memcmp(alpn, "h2", 2) != 0) {
    session_fail(s, "the peer did not negotiate ALPN h2");
    return;
  }
  X509 *leaf = SSL_get0_peer_certificate(s->ssl);
  if (leaf == NULL) {
    session_fail(s, "the peer presented no certificate");
    return;
  }
  // The HTTP/2 session is up before JavaScript hears of the handshake, so
  // that it may open streams from the callback or any promise it settles;
  // they are sent once the peer is accepted, and a refused peer closes the
  // session before anything was sent on it.
  if (session_start_h2(s) != 0) {
    session_fail(s, "cannot start the HTTP/2 session");
    return;
  }
  if (chain_event(s, leaf, SSL_get_peer_cert_chain(s->ssl)) != 0) {
    session_fail(s, "out of memory: the peer's certificates could not be kept for JavaScript");
    return;
  }
  s->state = S_OPEN;
  s->verifying = 1;
  session_update_poll(s);
}

static void session_handshake(session_t *s) {
  int drained;
  if (net_fill(s, &drained) < 0) return;
  ERR_clear_error();
  int rv = SSL_do_handshake(s->ssl);
  int err = rv == 1 ? SSL_ERROR_NONE : SSL_get_error(s->ssl, rv);
  if (net_flush(s) != 0) return;
  if (rv == 1) {
    handshake_done(s);
    return;
  }
  if ((err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) && !s->peer_eof) {
    set_poll(s->poll, &s->events, UV_READABLE | (s->blocked ? UV_WRITABLE : 0), session_poll_cb);
    return;
  }
  char buffer[256];
  session_fail(s, s->peer_eof && ERR_peek_error() == 0 ? "TLS handshake failed: the peer closed the connection" : tls_error(buffer, sizeof(buffer), "TLS handshake failed"));
}

void session_poll_cb(uv_poll_t *handle, int status, int events) {
  session_t *s = handle->data;
  if (events & UV_WRITABLE) s->blocked = 0;
  if (status < 0) {
    char buffer[96];
    snprintf(buffer, sizeof(buffer), "connection to the peer failed: %s", strerror(socket_error(s->fd, status)));
    session_fail(s, buffer);
  } else if (s->state == S_HANDSHAKE) session_handshake(s);
  else if (s->verifying) {
    // Only the handshake's last bytes may still be on their way out.
    if (net_flush(s) == 0) session_update_poll(s);
  } else if (s->state == S_OPEN) {
    s->depth++;
    if (events & UV_READABLE) session_read(s);
    s->depth--;
    session_flush(s);
  }
  session_settle(s);
}

// JavaScript dropped its handle (only possible once Close was delivered, or
// when the environment ends): the napi references go, and the session is
// freed once its thread and the commands and events in flight let go too.
void session_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  session_t *s = data;
  if (s->callback) NAPI_CLEANUP(napi_delete_reference(env, s->callback));
  if (s->async) NAPI_CLEANUP(napi_async_destroy(env, s->async));
  s->callback = NULL;
  s->async = NULL;
  session_unref(s);
}

static void session_timer_cb(uv_timer_t *timer) {
  session_t *s = timer->data;
  if (s->state != S_OPEN) return;
  s->depth++;
  pipe_check_timeouts(s, uv_now(timer->loop));
  s->depth--;
  session_flush(s);
  session_settle(s);
}

// A quarter of the shorter tunnel timeout, from 10 ms to a second: a tunnel ends at most that late.
static void session_start_timer(session_t *s) {
  int32_t idle = s->settings[4], stall = s->settings[5];
  if (idle <= 0 && stall <= 0) return;
  int32_t shortest = idle <= 0 ? stall : stall <= 0 ? idle : (idle < stall ? idle : stall);
  uint64_t every = (uint64_t)shortest / 4;
  if (every < 10) every = 10;
  if (every > 1000) every = 1000;
  s->timer = malloc(sizeof(*s->timer));
  if (s->timer == NULL || uv_timer_init(&s->worker->loop, s->timer) != 0) {
    free(s->timer);
    s->timer = NULL;
    session_fail(s, "cannot set up the tunnel timeouts: out of memory");
    return;
  }
  s->timer->data = s;
  uv_timer_start(s->timer, session_timer_cb, every, every);
}

// CMD_START: the poll handle goes on the session's thread; the handshake starts from its first callback.
void session_begin(session_t *s) {
  if (s->state == S_CLOSED) return;  // destroyed before it started
  if (s->ssl == NULL || s->net == NULL || (s->poll = new_poll(&s->worker->loop, NULL, s->fd, s)) == NULL) {
    session_fail(s, "cannot set up the TLS connection");
    return;
  }
  set_poll(s->poll, &s->events, UV_WRITABLE | UV_READABLE, session_poll_cb);
  session_start_timer(s);
}

