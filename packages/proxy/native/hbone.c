// The native HBONE data path: mutual TLS 1.3 (the OpenSSL Node links) and
// HTTP/2 CONNECT streams (the nghttp2 Node links), spliced with plain TCP
// sockets. Bytes of a tunnel never reach JavaScript; JavaScript verifies the
// peer's SPIFFE ID, decides each CONNECT and reads the counters (see
// src/hbone/native.ts).
//
// Threads. Sessions run on a small pool of data-path threads, each with its
// own libuv loop (AMBIENTKIT_HBONE_THREADS, by default one per CPU up to
// four): a session, its streams and their sockets belong to one thread for
// their whole life, so nothing inside a session locks. JavaScript stays on
// its own thread and talks to a session only through messages: a call from
// JavaScript (open, respond, splice, ...) becomes a command queued to the
// session's thread; what a session has to tell JavaScript becomes an event
// queued to the environment's inbox and delivered on its loop. The two
// queues are the only state shared between threads, each behind its mutex;
// a session is freed once neither side holds a reference (an atomic count).
// Spreading sessions over threads is what lets the two ends of a same-node
// tunnel, or two busy sessions, encrypt on two cores at once.

#include <node_api.h>
#include <uv.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <nghttp2/nghttp2.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#define CHECK_NAPI(env, call)                                        \
  do {                                                               \
    if ((call) != napi_ok) {                                         \
      napi_throw_error((env), NULL, "N-API call failed: " #call);    \
      return NULL;                                                   \
    }                                                                \
  } while (0)

// The most a stream holds before it stops reading its socket until HTTP/2
// has taken some; a read(2) asks for all the room left. Reads of at most
// 64 KiB measured ≈9% more CPU per byte (more reads, more wake-ups of the
// writer); letting the buffer start small and grow measured ≈5% more. The
// buffer is freed whenever it empties, so an idle stream holds none.
#define UP_LIMIT (256 * 1024)
// HTTP/2 output queued for TLS before nghttp2 is paused.
#define TLS_OUT_LIMIT (256 * 1024)
// Each side of the BIO pair between OpenSSL and the socket: TLS records are
// read and written in batches of up to this much, one system call each,
// rather than one or two per 16 KiB record.
#define NET_BUFFER (256 * 1024)
// Request headers kept for JavaScript: HBONE needs a handful.
#define MAX_HEADERS 32

enum { EV_HANDSHAKE = 1, EV_REQUEST, EV_RESPONSE, EV_STREAM_CLOSE, EV_CLOSE, EV_GOAWAY, EV_PING_ACK };
// OUT_REFUSED: a client stream the server never processed (REFUSED_STREAM, or a GOAWAY below
// its id: RFC 9113 §8.7), or a CONNECT never sent. Its socket goes back to JavaScript, untouched,
// for another session.
enum { OUT_CLOSED = 0, OUT_SOCKET_RESET, OUT_STREAM_RESET, OUT_REJECTED, OUT_REFUSED };
enum { S_HANDSHAKE, S_OPEN, S_CLOSED };

// ---- byte queue -------------------------------------------------------------

typedef struct {
  uint8_t *data;
  size_t start, end, cap;
} bq_t;

static size_t bq_len(const bq_t *q) { return q->end - q->start; }

static int bq_reserve(bq_t *q, size_t n) {
  if (q->cap - q->end >= n) return 0;
  if (q->start > 0) {
    memmove(q->data, q->data + q->start, q->end - q->start);
    q->end -= q->start;
    q->start = 0;
    if (q->cap - q->end >= n) return 0;
  }
  size_t cap = q->cap ? q->cap : 16 * 1024;
  while (cap - q->end < n) cap *= 2;
  uint8_t *data = realloc(q->data, cap);
  if (data == NULL) return -1;
  q->data = data;
  q->cap = cap;
  return 0;
}

static int bq_append(bq_t *q, const uint8_t *src, size_t n) {
  if (bq_reserve(q, n) != 0) return -1;
  memcpy(q->data + q->end, src, n);
  q->end += n;
  return 0;
}

// Consumed bytes; an emptied queue gives its memory back, so an idle tunnel holds none.
static void bq_consume(bq_t *q, size_t n) {
  q->start += n;
  if (q->start == q->end) {
    free(q->data);
    q->data = NULL;
    q->start = q->end = q->cap = 0;
  }
}

static void bq_free(bq_t *q) {
  free(q->data);
  q->data = NULL;
  q->start = q->end = q->cap = 0;
}

// ---- structures ------------------------------------------------------------------

typedef struct session_s session_t;
typedef struct acceptor_s acceptor_t;
typedef struct command_s command_t;
typedef struct event_s event_t;

// A data-path thread: its own loop, the commands JavaScript sent to its
// sessions, and the buffer TLS records are decrypted into (only ever used
// between a read and its processing).
typedef struct {
  uv_loop_t loop;
  uv_async_t wake;  // commands arrived
  uv_mutex_t lock;  // guards the command list
  command_t *head, *tail;
  atomic_int sessions;  // assigned and not yet let go: how new sessions are balanced
  uv_thread_t thread;
  int index;
  uint8_t read_buffer[NET_BUFFER];
} worker_t;

// What one Node environment (the main thread, or a worker thread with its
// own loop) shares with the data-path threads: the inbox of events for its
// JavaScript, and what must be closed when it shuts down while sessions or
// listeners are still open (libuv refuses to close a loop with handles).
typedef struct {
  napi_env env;
  uv_mutex_t lock;        // guards the inbox, the live list and live
  event_t *inbox_head, *inbox_tail;
  uv_async_t inbox_wake;  // on the environment's loop
  int inbox_referenced;   // inbox_wake keeps the loop alive: sessions are live
  session_t *sessions;    // not yet torn down
  int live;               // sessions their thread has not let go of yet
  int handles;            // our libuv handles on the environment's loop not yet closed
  int shutting_down;
  int finishing;
  napi_async_cleanup_hook_handle cleanup;
  acceptor_t *acceptors;  // still listening
} instance_t;

// Every poll handle of ours, so that its close callback can count it off
// (handles on the environment's loop only: `instance` is NULL on a data-path thread).
typedef struct {
  uv_poll_t poll;
  instance_t *instance;
} handle_box_t;
typedef struct pipe_s pipe_t;

// An event for JavaScript: queued while OpenSSL or nghttp2 is on the stack,
// moved to the environment's inbox once they returned.
struct event_s {
  event_t *next;
  session_t *s;  // set in the inbox, which holds a reference for it
  int type;
  int32_t stream;
  int64_t a, b, c, d;
  char *text;   // error message, :method or close reason
  char *text2;  // :authority
  int fd;       // StreamClose of a refused client stream: the application's socket, now JavaScript's (else -1)
  char **headers;  // [name, value, ...], or the peer's chain as DER (Handshake)
  size_t *lengths; // Handshake: the length of each certificate
  int header_count;
};

// What JavaScript asks of a session, run on the session's thread.
enum { CMD_START, CMD_VERDICT, CMD_OPEN, CMD_RESPOND, CMD_SPLICE, CMD_RESET, CMD_PING, CMD_SHUTDOWN, CMD_DESTROY };
struct command_s {
  command_t *next;
  int type;
  session_t *s;     // the command holds a reference
  int32_t stream;   // the stream (server) or the tunnel handle (client)
  int32_t fd;
  int32_t number;   // a status or a reset code
  char *text;       // an authority or a reason
  char **headers;   // open: [name, value, ...]
  int header_count;
};

// One tunnel: an HTTP/2 stream and the TCP socket it is spliced with.
struct pipe_s {
  session_t *s;
  pipe_t *next;
  int32_t id;
  int32_t handle;  // what JavaScript calls it: the stream id (server), or the handle open() returned (client)
  int fd;
  uv_poll_t *poll;
  int events;      // what the poll handle watches now
  bq_t up;         // read from the socket, not yet framed
  bq_t down;       // received from the stream, not yet written to the socket
  uint64_t from_fd, to_fd;
  int status;      // client: the response status
  int outcome;
  char *error;
  // Server: the request's headers, until they are handed to JavaScript.
  char *method, *authority;
  char **headers;  // [name, value, ...], allocated only while a request is read
  int header_count;
  unsigned fd_eof : 1;        // the socket sent FIN (read returned 0)
  unsigned eof_sent : 1;      // END_STREAM went out
  unsigned fin_sent : 1;      // shutdown(SHUT_WR) done
  unsigned remote_ended : 1;  // END_STREAM arrived
  unsigned stream_closed : 1; // nghttp2 closed the stream
  unsigned deferred : 1;      // the data provider is waiting for bytes
  unsigned splicing : 1;      // the socket is attached and bytes flow
  unsigned reset : 1;         // ended by a reset (either side)
  unsigned reported : 1;      // StreamClose queued
  unsigned dirty : 1;         // on the session's list of sockets to write after this read pass
  unsigned in_use : 1;        // a function working on it is on the stack: pipe_finish must not free it
  unsigned finished : 1;      // pipe_finish ran while in use: freed by pipe_release
  pipe_t *dirty_next;
};

struct session_s {
  atomic_int refs;      // JavaScript's handle, the thread until it lets go, each command and event in flight
  // Touched on the environment's thread only.
  napi_ref callback;
  napi_ref self;        // keeps the JS handle alive until Close is delivered
  napi_async_context async;
  int32_t next_handle;  // the next client tunnel handle
  int js_closed;        // Close was delivered, or destroy() called
  int js_goaway;        // GoAway was delivered, or shutdown() called
  atomic_int pipe_count;
  // Everything below belongs to the session's thread.
  worker_t *worker;
  int verifying;        // the handshake is done and JavaScript has not yet accepted the peer
  int released;         // the thread let go of the session (after Close)
  int server;
  int state;
  int fd;
  uv_poll_t *poll;
  int events;
  SSL *ssl;
  BIO *net;             // our end of the BIO pair whose other end OpenSSL reads and writes
  int peer_eof;         // the socket read returned 0
  int blocked;          // the socket's send buffer is full: wait for writable
  nghttp2_session *h2;
  pipe_t *dirty;        // pipes with received bytes to write once the read pass ends
  bq_t tls_out;
  pipe_t *pipes;
  event_t *events_head, *events_tail;
  int depth;            // > 0 while OpenSSL or nghttp2 is on the stack for this session
  int32_t settings[4];
  char *close_reason;
  instance_t *instance;
  session_t *live_prev, *live_next;  // the instance's list of sessions not yet torn down
  int close_queued;
  int goaway_sent;
  int goaway_received;
};


static char *dup_text(const char *text) { return text == NULL ? NULL : strdup(text); }

static char *dup_bytes(const uint8_t *data, size_t len) {
  char *copy = malloc(len + 1);
  if (copy == NULL) return NULL;
  memcpy(copy, data, len);
  copy[len] = 0;
  return copy;
}

// ---- events ---------------------------------------------------------------------

static event_t *queue_event(session_t *s, int type, int32_t stream) {
  event_t *e = calloc(1, sizeof(*e));
  if (e == NULL) return NULL;
  e->type = type;
  e->stream = stream;
  e->fd = -1;
  if (s->events_tail) s->events_tail->next = e;
  else s->events_head = e;
  s->events_tail = e;
  return e;
}

static void close_fd_reset(int fd);

static void free_event(event_t *e) {
  if (e->fd >= 0) close_fd_reset(e->fd);  // never delivered: the environment is ending
  free(e->text);
  free(e->text2);
  for (int i = 0; i < e->header_count; i++) free(e->headers[i]);
  free(e->headers);
  free(e->lengths);
  free(e);
}

// Drops a reference; the last one frees the session. By then its thread
// has let go of it and its JavaScript handle was finalized, so no napi
// reference is left to delete.
static void session_unref(session_t *s) {
  if (atomic_fetch_sub(&s->refs, 1) != 1) return;
  while (s->events_head != NULL) {
    event_t *e = s->events_head;
    s->events_head = e->next;
    free_event(e);
  }
  free(s->close_reason);
  free(s);
}

// ---- polling ----------------------------------------------------------------------

static void session_poll_cb(uv_poll_t *handle, int status, int events);
static void pipe_poll_cb(uv_poll_t *handle, int status, int events);

static void finish_cleanup(instance_t *instance);

// The close callback of every poll handle: on the environment's loop, the
// last one closed during a shutdown lets the environment finish it.
static void free_handle(uv_handle_t *handle) {
  handle_box_t *box = (handle_box_t *)handle;
  instance_t *instance = box->instance;
  free(box);
  if (instance != NULL && --instance->handles == 0 && instance->shutting_down) napi_remove_async_cleanup_hook(instance->cleanup);
}

static instance_t *instance_of(napi_env env) {
  void *data = NULL;
  napi_get_instance_data(env, &data);
  return data;
}

// libuv reports a socket error (EPOLLERR) as UV_EBADF: the socket's own error says what happened.
static int socket_error(int fd, int status) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) return err;
  return -status;
}

static void set_poll(uv_poll_t *poll, int *current, int wanted, uv_poll_cb cb) {
  if (poll == NULL || *current == wanted) return;
  *current = wanted;
  if (wanted == 0) uv_poll_stop(poll);
  else uv_poll_start(poll, wanted, cb);
}

// A poll handle on `loop`; `instance` counts it when the loop is the environment's.
static uv_poll_t *new_poll(uv_loop_t *loop, instance_t *instance, int fd, void *data) {
  handle_box_t *box = malloc(sizeof(*box));
  if (box == NULL) return NULL;
  if (uv_poll_init_socket(loop, &box->poll, fd) != 0) {
    free(box);
    return NULL;
  }
  box->instance = instance;
  if (instance != NULL) instance->handles++;
  box->poll.data = data;
  return &box->poll;
}

static void close_poll(uv_poll_t **poll) {
  if (*poll == NULL) return;
  uv_poll_stop(*poll);
  uv_close((uv_handle_t *)*poll, free_handle);
  *poll = NULL;
}

// Closes with RST rather than FIN (SO_LINGER 0): what a reset propagates as.
static void close_fd_reset(int fd) {
  struct linger linger = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
  close(fd);
}

// ---- pipes ---------------------------------------------------------------------------

static void session_flush(session_t *s);
static void session_fail(session_t *s, const char *reason);
static int net_flush(session_t *s);
static void session_maybe_close(session_t *s);

// The pipe JavaScript calls `handle`.
static pipe_t *find_pipe(session_t *s, int32_t handle) {
  for (pipe_t *p = s->pipes; p != NULL; p = p->next)
    if (p->handle == handle) return p;
  return NULL;
}

static void pipe_set_error(pipe_t *p, const char *message);
static void session_settle(session_t *s);

static void pipe_update_poll(pipe_t *p) {
  if (p->fd < 0 || !p->splicing) return;
  int wanted = 0;
  if (!p->fd_eof && !p->reset && bq_len(&p->up) < UP_LIMIT) wanted |= UV_READABLE;
  if (bq_len(&p->down) > 0) wanted |= UV_WRITABLE;
  set_poll(p->poll, &p->events, wanted, pipe_poll_cb);
}

static void pipe_free(pipe_t *p) {
  bq_free(&p->up);
  bq_free(&p->down);
  free(p->error);
  free(p->method);
  free(p->authority);
  for (int i = 0; i < p->header_count; i++) free(p->headers[i]);
  free(p->headers);
  free(p);
}

// Removes a finished pipe: its socket closed (with RST after a reset), StreamClose queued.
static void pipe_finish(pipe_t *p) {
  session_t *s = p->s;
  if (p->dirty) {
    for (pipe_t **link = &s->dirty; *link != NULL; link = &(*link)->dirty_next) {
      if (*link == p) {
        *link = p->dirty_next;
        break;
      }
    }
  }
  close_poll(&p->poll);
  int handed_back = -1;
  if (p->outcome == OUT_REFUSED) {
    handed_back = p->fd;
    p->fd = -1;
  }
  if (p->fd >= 0) {
    if (p->reset && !p->fin_sent) close_fd_reset(p->fd);
    else close(p->fd);
    p->fd = -1;
  }
  if (!p->reported) {
    p->reported = 1;
    event_t *e = queue_event(s, EV_STREAM_CLOSE, p->handle);
    if (e != NULL) {
      e->a = p->outcome;
      e->b = (int64_t)p->from_fd;
      e->c = (int64_t)p->to_fd;
      e->text = p->error;
      p->error = NULL;
      e->d = p->status;
      e->fd = handed_back;
      handed_back = -1;
    }
  }
  if (handed_back >= 0) close_fd_reset(handed_back);
  for (pipe_t **link = &s->pipes; *link != NULL; link = &(*link)->next) {
    if (*link == p) {
      *link = p->next;
      atomic_fetch_sub(&s->pipe_count, 1);
      break;
    }
  }
  // Only a closed stream's pipe is finished (teardown closes them all first),
  // so nghttp2 no longer points at it.
  if (p->in_use) p->finished = 1;
  else pipe_free(p);
}

// Marks a pipe in use while code that may finish it runs; returns it for pipe_release.
static pipe_t *pipe_hold(pipe_t *p) {
  p->in_use = 1;
  return p;
}

// Ends a pipe_hold: frees the pipe if it finished meanwhile. Returns whether it is still alive.
static int pipe_release(pipe_t *p) {
  p->in_use = 0;
  if (!p->finished) return 1;
  pipe_free(p);
  return 0;
}

// Both directions done cleanly (or a reset already decided): finishes when nothing is pending.
static void pipe_check_done(pipe_t *p) {
  if (p->reset) {
    if (p->stream_closed) pipe_finish(p);
    return;
  }
  if (!p->stream_closed) return;
  if (p->fd < 0 || !p->splicing) {
    // Closed before a tunnel existed: the peer cancelled (server) or reset before answering (client).
    p->reset = 1;
    if (p->outcome == OUT_CLOSED) p->outcome = OUT_STREAM_RESET;
    pipe_set_error(p, "the stream closed before the tunnel was established");
    pipe_finish(p);
    return;
  }
  if (bq_len(&p->down) > 0) return;
  if (p->remote_ended && !p->fin_sent) {
    shutdown(p->fd, SHUT_WR);
    p->fin_sent = 1;
  }
  if (p->fd_eof && p->fin_sent) pipe_finish(p);
  else if (!p->remote_ended || !p->eof_sent) {
    // The stream closed without both END_STREAMs (a reset we sent or a refused stream).
    p->reset = 1;
    if (p->outcome == OUT_CLOSED) p->outcome = OUT_STREAM_RESET;
    pipe_finish(p);
  }
}

static void pipe_set_error(pipe_t *p, const char *message) {
  if (p->error == NULL) p->error = dup_text(message);
}

// The TCP side failed: RST_STREAM CONNECT_ERROR (RFC 9113 §8.5), then the socket is closed.
static void pipe_socket_failed(pipe_t *p, int err) {
  session_t *s = p->s;
  if (p->reset) return;
  p->reset = 1;
  if (p->outcome == OUT_CLOSED) p->outcome = OUT_SOCKET_RESET;
  pipe_set_error(p, strerror(err));
  if (!p->stream_closed && s->h2 != NULL) nghttp2_submit_rst_stream(s->h2, NGHTTP2_FLAG_NONE, p->id, NGHTTP2_CONNECT_ERROR);
  set_poll(p->poll, &p->events, 0, pipe_poll_cb);
  pipe_check_done(p);
}

// Writes what the stream delivered to the socket; gives the window back for what was written.
static void pipe_flush_down(pipe_t *p) {
  session_t *s = p->s;
  if (p->fd < 0 || !p->splicing) return;
  while (bq_len(&p->down) > 0) {
    ssize_t n = write(p->fd, p->down.data + p->down.start, bq_len(&p->down));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      pipe_socket_failed(p, errno);
      return;
    }
    bq_consume(&p->down, (size_t)n);
    p->to_fd += (uint64_t)n;
    if (!p->stream_closed && s->h2 != NULL) nghttp2_session_consume(s->h2, p->id, (size_t)n);
    else if (s->h2 != NULL) nghttp2_session_consume_connection(s->h2, (size_t)n);
  }
  if (bq_len(&p->down) == 0 && p->remote_ended && !p->fin_sent && !p->reset) {
    shutdown(p->fd, SHUT_WR);
    p->fin_sent = 1;
  }
}

static void pipe_read(pipe_t *p) {
  session_t *s = p->s;
  while (!p->fd_eof && !p->reset && bq_len(&p->up) < UP_LIMIT) {
    // As much as the socket may hold, up to the limit: one read for all of it.
    size_t want = UP_LIMIT - bq_len(&p->up);
    if (bq_reserve(&p->up, want) != 0) {
      pipe_socket_failed(p, ENOMEM);
      return;
    }
    ssize_t n = read(p->fd, p->up.data + p->up.end, want);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      pipe_socket_failed(p, errno);
      return;
    }
    if (n == 0) {
      p->fd_eof = 1;
    } else {
      p->up.end += (size_t)n;
      p->from_fd += (uint64_t)n;
    }
    if ((size_t)n < want) break;
  }
  if (bq_len(&p->up) == 0 && !p->fd_eof) bq_free(&p->up);
  if (p->deferred && (bq_len(&p->up) > 0 || p->fd_eof) && !p->stream_closed) {
    p->deferred = 0;
    nghttp2_session_resume_data(s->h2, p->id);
  }
}

static void pipe_poll_cb(uv_poll_t *handle, int status, int events) {
  pipe_t *p = handle->data;
  session_t *s = p->s;
  s->depth++;
  pipe_hold(p);
  if (status < 0) pipe_socket_failed(p, socket_error(p->fd, status));
  else {
    if (events & UV_WRITABLE) pipe_flush_down(p);
    if (!p->finished && !p->reset && (events & UV_READABLE)) pipe_read(p);
    if (p->finished) {
      // done above
    } else if (p->reset || p->stream_closed) pipe_check_done(p);
    else pipe_update_poll(p);
  }
  pipe_release(p);
  s->depth--;
  session_flush(s);
  session_settle(s);
}

// Attaches the socket: bytes flow both ways from here on.
static void pipe_start(pipe_t *p) {
  p->splicing = 1;
  // A proxy must not hold back a small write its peer already sent.
  int one = 1;
  setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  p->poll = new_poll(&p->s->worker->loop, NULL, p->fd, p);
  if (p->poll == NULL) {
    pipe_socket_failed(p, ENOMEM);
    return;
  }
  // Data that arrived before the socket was attached.
  pipe_flush_down(p);
  pipe_update_poll(p);
}

// ---- nghttp2 callbacks -----------------------------------------------------------------

static ssize_t on_send(nghttp2_session *h2, const uint8_t *data, size_t length, int flags, void *user) {
  (void)h2, (void)flags;
  session_t *s = user;
  if (bq_len(&s->tls_out) >= TLS_OUT_LIMIT) return NGHTTP2_ERR_WOULDBLOCK;
  if (bq_append(&s->tls_out, data, length) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  return (ssize_t)length;
}

// DATA frames without a copy through nghttp2's buffer: header and payload go straight to the TLS queue.
static int on_send_data(nghttp2_session *h2, nghttp2_frame *frame, const uint8_t *framehd, size_t length, nghttp2_data_source *source, void *user) {
  (void)h2;
  session_t *s = user;
  pipe_t *p = source->ptr;
  if (bq_len(&s->tls_out) >= TLS_OUT_LIMIT) return NGHTTP2_ERR_WOULDBLOCK;
  if (bq_reserve(&s->tls_out, 9 + length) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  memcpy(s->tls_out.data + s->tls_out.end, framehd, 9);
  memcpy(s->tls_out.data + s->tls_out.end + 9, p->up.data + p->up.start, length);
  s->tls_out.end += 9 + length;
  bq_consume(&p->up, length);
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) p->eof_sent = 1;
  pipe_update_poll(p);
  return 0;
}

static ssize_t on_read_data(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length, uint32_t *flags, nghttp2_data_source *source, void *user) {
  (void)h2, (void)id, (void)buf, (void)user;
  pipe_t *p = source->ptr;
  size_t available = bq_len(&p->up);
  if (!p->splicing || (available == 0 && !p->fd_eof)) {
    p->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  size_t n = available < length ? available : length;
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (p->fd_eof && n == available) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return (ssize_t)n;
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
  session_t *s = user;
  if (!s->server || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  pipe_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return NGHTTP2_ERR_CALLBACK_FAILURE;
  p->s = s;
  p->id = p->handle = frame->hd.stream_id;
  p->fd = -1;
  p->next = s->pipes;
  s->pipes = p;
  atomic_fetch_add(&s->pipe_count, 1);
  nghttp2_session_set_stream_user_data(h2, p->id, p);
  return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *user) {
  (void)flags, (void)user;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  pipe_t *p = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (p == NULL) return 0;
  if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
    p->status = 0;
    for (size_t i = 0; i < valuelen && i < 3; i++) p->status = p->status * 10 + (value[i] - '0');
  } else if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
    free(p->method);
    p->method = dup_bytes(value, valuelen);
  } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
    free(p->authority);
    p->authority = dup_bytes(value, valuelen);
  } else if (namelen > 0 && name[0] != ':' && p->header_count < MAX_HEADERS * 2) {
    if (p->headers == NULL && (p->headers = calloc(MAX_HEADERS * 2, sizeof(char *))) == NULL) return NGHTTP2_ERR_CALLBACK_FAILURE;
    p->headers[p->header_count++] = dup_bytes(name, namelen);
    p->headers[p->header_count++] = dup_bytes(value, valuelen);
  }
  return 0;
}

static void remote_ended(pipe_t *p) {
  p->remote_ended = 1;
  if (p->splicing && p->fd >= 0 && !p->reset) {
    pipe_flush_down(p);
    pipe_update_poll(p);
  }
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
  session_t *s = user;
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    s->goaway_received = 1;
    queue_event(s, EV_GOAWAY, frame->goaway.last_stream_id);
    return 0;
  }
  if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK)) {
    queue_event(s, EV_PING_ACK, 0);
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  pipe_t *p = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (p == NULL) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS) {
    if (s->server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      event_t *e = queue_event(s, EV_REQUEST, p->id);
      if (e != NULL) {
        e->text = p->method;
        e->text2 = p->authority;
        p->method = p->authority = NULL;
        // The event takes the headers over.
        e->headers = p->headers;
        e->header_count = p->header_count;
        p->headers = NULL;
        p->header_count = 0;
      }
    } else if (!s->server && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      // 1xx responses are interim; CONNECT never gets one that matters.
      if (p->status >= 100 && p->status < 200) return 0;
      event_t *e = queue_event(s, EV_RESPONSE, p->handle);
      if (e != NULL) e->a = p->status;
      if (p->status == 200) {
        pipe_start(p);
      } else {
        p->outcome = OUT_REJECTED;
        p->reset = 1;
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, p->id, NGHTTP2_CANCEL);
      }
    }
  }
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) remote_ended(p);
  return 0;
}

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *user) {
  (void)flags;
  session_t *s = user;
  pipe_t *p = nghttp2_session_get_stream_user_data(h2, id);
  if (p == NULL || p->reset) {
    nghttp2_session_consume(h2, id, len);
    return 0;
  }
  // Written once the read pass ends, one write per socket; the stream's
  // window stays closed for these bytes until the socket took them.
  if (bq_append(&p->down, data, len) != 0) return NGHTTP2_ERR_CALLBACK_FAILURE;
  if (!p->dirty && p->splicing) {
    p->dirty = 1;
    p->dirty_next = s->dirty;
    s->dirty = p;
  }
  return 0;
}

// Writes what this read pass received to each socket.
static void flush_dirty(session_t *s) {
  while (s->dirty != NULL) {
    pipe_t *p = pipe_hold(s->dirty);
    s->dirty = p->dirty_next;
    p->dirty = 0;
    pipe_flush_down(p);
    if (p->finished) {
      // its socket failed and the stream was already closed
    } else if (p->reset || p->stream_closed) pipe_check_done(p);
    else pipe_update_poll(p);
    pipe_release(p);
  }
}

// A final answer without a tunnel went out: release the stream with
// RST_STREAM NO_ERROR rather than wait for the client's END_STREAM (RFC 9113
// §8.1). Submitted only now because nghttp2 sends RST_STREAM ahead of
// queued HEADERS, and the client would never see the status.
static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
  session_t *s = user;
  if (!s->server || frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) return 0;
  pipe_t *p = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (p != NULL && p->outcome == OUT_REJECTED && !p->stream_closed) nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, p->id, NGHTTP2_NO_ERROR);
  return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t code, void *user) {
  (void)user;
  pipe_t *p = nghttp2_session_get_stream_user_data(h2, id);
  if (p == NULL) return 0;
  p->stream_closed = 1;
  if (code != NGHTTP2_NO_ERROR && !p->reset) {
    p->reset = 1;
    // Never processed by the server, and nothing read from the socket yet (it is read from the 200 on).
    if (code == NGHTTP2_REFUSED_STREAM && !p->s->server && !p->splicing && p->outcome == OUT_CLOSED) p->outcome = OUT_REFUSED;
    if (p->outcome == OUT_CLOSED) p->outcome = OUT_STREAM_RESET;
    char message[64];
    snprintf(message, sizeof(message), "stream reset with code %u", code);
    pipe_set_error(p, message);
  }
  pipe_check_done(p);
  return 0;
}

// ---- sessions ------------------------------------------------------------------------------

static nghttp2_session_callbacks *cbs;

// Built once for the process: environments on other threads share it, read-only.
static void make_callbacks(void) {
  if (nghttp2_session_callbacks_new(&cbs) == 0) {
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  }
}

static nghttp2_session_callbacks *callbacks(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, make_callbacks);
  return cbs;
}

static int session_start_h2(session_t *s) {
  nghttp2_option *option;
  if (nghttp2_option_new(&option) != 0) return -1;
  // Windows are given back only once bytes reached the socket: that is the backpressure.
  nghttp2_option_set_no_auto_window_update(option, 1);
  nghttp2_option_set_peer_max_concurrent_streams(option, 100);
  nghttp2_session_callbacks *shared = callbacks();
  int rv = shared == NULL ? -1 : s->server ? nghttp2_session_server_new2(&s->h2, shared, s, option) : nghttp2_session_client_new2(&s->h2, shared, s, option);
  nghttp2_option_del(option);
  if (rv != 0) return -1;
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)s->settings[0]},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, (uint32_t)s->settings[2]},
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)s->settings[3]},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
  };
  if (nghttp2_submit_settings(s->h2, NGHTTP2_FLAG_NONE, settings, 4) != 0) return -1;
  if (nghttp2_session_set_local_window_size(s->h2, NGHTTP2_FLAG_NONE, 0, s->settings[1]) != 0) return -1;
  return 0;
}

// GOAWAY naming the last stream this side processed: streams the peer sent after it were not.
static void submit_goaway(session_t *s) {
  s->goaway_sent = 1;
  nghttp2_submit_goaway(s->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->h2), NGHTTP2_NO_ERROR, NULL, 0);
}

// Resets every pipe and closes the connection; Close is queued once.
static void session_teardown(session_t *s, const char *reason) {
  if (s->state == S_CLOSED) return;
  if (reason != NULL && s->close_reason == NULL) s->close_reason = dup_text(reason);
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
  if (!s->close_queued) {
    s->close_queued = 1;
    event_t *e = queue_event(s, EV_CLOSE, 0);
    if (e != NULL) {
      e->text = s->close_reason;
      s->close_reason = NULL;
    }
  }
}

static void session_fail(session_t *s, const char *reason) { session_teardown(s, reason); }

static void session_update_poll(session_t *s) {
  if (s->state == S_CLOSED) return;
  // Until JavaScript accepted the peer, what it sends waits in the socket.
  int wanted = s->peer_eof || s->verifying ? 0 : UV_READABLE;
  if (s->blocked) wanted |= UV_WRITABLE;
  set_poll(s->poll, &s->events, wanted, session_poll_cb);
}

static const char *tls_error(char *buffer, size_t size, const char *what) {
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

// Writes the TLS records OpenSSL produced to the socket, until it would block.
static int net_flush(session_t *s) {
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
static void session_flush(session_t *s) {
  if (s->state != S_OPEN || s->verifying) return;
  s->depth++;
  for (int round = 0; round < 4096 && s->state == S_OPEN; round++) {
    if (bq_len(&s->tls_out) == 0) {
      int rv = nghttp2_session_send(s->h2);
      if (rv != 0) {
        session_fail(s, nghttp2_strerror(rv));
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

static void session_read(session_t *s) {
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
          session_fail(s, nghttp2_strerror((int)rv));
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

// Closes once nghttp2 has nothing more to do: GOAWAY exchanged and every stream ended.
static void session_maybe_close(session_t *s) {
  if (s->state != S_OPEN || s->depth > 0) return;
  if (bq_len(&s->tls_out) > 0) return;
  if (!nghttp2_session_want_read(s->h2) && !nghttp2_session_want_write(s->h2) && s->pipes == NULL) session_teardown(s, NULL);
}

// The peer's chain, leaf first, as DER: what JavaScript makes its SPIFFE checks on.
static int chain_event(session_t *s, X509 *leaf, STACK_OF(X509) *chain) {
  event_t *e = queue_event(s, EV_HANDSHAKE, 0);
  if (e == NULL || (e->headers = calloc(16, sizeof(char *))) == NULL || (e->lengths = calloc(16, sizeof(size_t))) == NULL) return -1;
  int first_is_leaf = chain != NULL && sk_X509_num(chain) > 0 && X509_cmp(sk_X509_value(chain, 0), leaf) == 0;
  for (int i = first_is_leaf ? 0 : -1; chain != NULL ? i < sk_X509_num(chain) : i < 0; i++) {
    if (e->header_count == 16) break;
    unsigned char *der = NULL;
    int len = i2d_X509(i < 0 ? leaf : sk_X509_value(chain, i), &der);
    if (len <= 0) continue;
    e->headers[e->header_count] = malloc((size_t)len);
    if (e->headers[e->header_count] != NULL) {
      memcpy(e->headers[e->header_count], der, (size_t)len);
      e->lengths[e->header_count++] = (size_t)len;
    }
    OPENSSL_free(der);
  }
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
    session_fail(s, "out of memory");
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

static void session_poll_cb(uv_poll_t *handle, int status, int events) {
  session_t *s = handle->data;
  if (events & UV_WRITABLE) s->blocked = 0;
  if (status < 0) {
    char buffer[96];
    snprintf(buffer, sizeof(buffer), "connection to the peer failed: %s", strerror(socket_error(s->fd, status)));
    session_fail(s, buffer);
  }
  else if (s->state == S_HANDSHAKE) session_handshake(s);
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
static void session_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  session_t *s = data;
  if (s->callback) napi_delete_reference(env, s->callback);
  if (s->async) napi_async_destroy(env, s->async);
  s->callback = NULL;
  s->async = NULL;
  session_unref(s);
}

// ---- TLS contexts ------------------------------------------------------------------------------

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

static char *get_string(napi_env env, napi_value value) {
  size_t len;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok) return NULL;
  char *text = malloc(len + 1);
  if (text == NULL) return NULL;
  napi_get_value_string_utf8(env, value, text, len + 1, &len);
  return text;
}

static napi_value throw_tls(napi_env env, const char *what) {
  char buffer[320];
  napi_throw_error(env, "ERR_AMBIENT_HBONE_TLS_CONTEXT", tls_error(buffer, sizeof(buffer), what));
  return NULL;
}

// createContext(server, certificateChainPem, privateKeyPem, rootsPem)
static napi_value create_context(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool server;
  if (argc < 4 || napi_get_value_bool(env, argv[0], &server) != napi_ok) {
    napi_throw_type_error(env, NULL, "createContext(server, certificateChainPem, privateKeyPem, rootsPem)");
    return NULL;
  }
  char *pem[3];
  for (int i = 0; i < 3; i++) pem[i] = get_string(env, argv[i + 1]);
  napi_value result = NULL;
  SSL_CTX *ctx = NULL;
  BIO *bio = NULL;
  if (pem[0] == NULL || pem[1] == NULL || pem[2] == NULL) {
    napi_throw_type_error(env, NULL, "createContext: the PEM arguments must be strings");
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
    napi_throw_error(env, "ERR_AMBIENT_HBONE_TLS_CONTEXT", "createContext: no root certificate in rootsPem");
    goto done;
  }
  if (napi_create_external(env, ctx, context_finalize, NULL, &result) != napi_ok) {
    result = NULL;
    goto done;
  }
  ctx = NULL;
done:
  BIO_free(bio);
  SSL_CTX_free(ctx);
  for (int i = 0; i < 3; i++) free(pem[i]);
  return result;
}

// ---- threads, commands and the inbox --------------------------------------------------

static worker_t *workers;
static int worker_count;
static uv_once_t workers_once = UV_ONCE_INIT;

static void run_command(command_t *c);

static void worker_wake(uv_async_t *handle) {
  worker_t *w = handle->data;
  uv_mutex_lock(&w->lock);
  command_t *c = w->head;
  w->head = w->tail = NULL;
  uv_mutex_unlock(&w->lock);
  while (c != NULL) {
    command_t *next = c->next;
    run_command(c);
    c = next;
  }
}

static void worker_main(void *arg) {
  worker_t *w = arg;
  // ak-hbone-N in top -H, ps -T and /proc/<pid>/task/*/comm.
  char name[16];
  snprintf(name, sizeof(name), "ak-hbone-%d", w->index);
  pthread_setname_np(pthread_self(), name);
  uv_run(&w->loop, UV_RUN_DEFAULT);  // for the life of the process: the wake handle keeps the loop alive
}

// The data-path threads to start: AMBIENTKIT_HBONE_THREADS, or one per CPU
// up to four; 0 when the variable is set to anything but 1-64.
static int threads_wanted(void) {
  const char *text = getenv("AMBIENTKIT_HBONE_THREADS");
  if (text == NULL || *text == 0) {
    unsigned n = uv_available_parallelism();
    return n > 4 ? 4 : n < 1 ? 1 : (int)n;
  }
  char *end;
  long n = strtol(text, &end, 10);
  return *end == 0 && n >= 1 && n <= 64 ? (int)n : 0;
}

static void start_workers(void) {
  int wanted = threads_wanted();
  if (wanted == 0) return;  // refused when the addon was loaded
  worker_t *list = calloc((size_t)wanted, sizeof(worker_t));
  if (list == NULL) return;
  // Signals stay with Node's threads: the data-path threads start with all of them blocked.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &previous);
  int started = 0;
  for (int i = 0; i < wanted; i++) {
    worker_t *w = &list[started];
    if (uv_loop_init(&w->loop) != 0) break;
    if (uv_async_init(&w->loop, &w->wake, worker_wake) != 0 || uv_mutex_init(&w->lock) != 0) {
      uv_loop_close(&w->loop);
      break;
    }
    w->wake.data = w;
    w->index = started;
    atomic_init(&w->sessions, 0);
    if (uv_thread_create(&w->thread, worker_main, w) != 0) break;
    started++;
  }
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  workers = list;
  worker_count = started;
}

// The thread a new session runs on: the one with the fewest sessions. Ties
// go to the first thread for a client and the last for a server, so that
// the two ends of a tunnel within one process start on different threads.
static worker_t *pick_worker(int server) {
  uv_once(&workers_once, start_workers);
  worker_t *best = NULL;
  int fewest = INT_MAX;
  for (int k = 0; k < worker_count; k++) {
    worker_t *w = &workers[server ? worker_count - 1 - k : k];
    int n = atomic_load(&w->sessions);
    if (n < fewest) {
      best = w;
      fewest = n;
    }
  }
  if (best != NULL) atomic_fetch_add(&best->sessions, 1);
  return best;
}

static command_t *new_command(session_t *s, int type) {
  command_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->type = type;
  c->s = s;
  c->fd = -1;
  return c;
}

static void free_command(command_t *c) {
  free(c->text);
  for (int i = 0; i < c->header_count; i++) free(c->headers[i]);
  free(c->headers);
  free(c);
}

// Queues a command to the session's thread; the command holds a reference.
static void post_command(command_t *c) {
  worker_t *w = c->s->worker;
  atomic_fetch_add(&c->s->refs, 1);
  uv_mutex_lock(&w->lock);
  if (w->tail != NULL) w->tail->next = c;
  else w->head = c;
  w->tail = c;
  uv_mutex_unlock(&w->lock);
  uv_async_send(&w->wake);
}

// A command without arguments but a number and a text (which it takes over); false when out of memory.
static bool send_command(session_t *s, int type, int32_t stream, int32_t number, char *text) {
  command_t *c = new_command(s, type);
  if (c == NULL) {
    free(text);
    return false;
  }
  c->stream = stream;
  c->number = number;
  c->text = text;
  post_command(c);
  return true;
}

// Session's thread: moves what the session queued to its environment's inbox.
static void post_events(session_t *s) {
  if (s->depth > 0 || s->events_head == NULL) return;
  event_t *head = s->events_head, *tail = s->events_tail;
  int count = 0;
  for (event_t *e = head; e != NULL; e = e->next) {
    e->s = s;
    count++;
  }
  atomic_fetch_add(&s->refs, count);
  s->events_head = s->events_tail = NULL;
  instance_t *instance = s->instance;
  uv_mutex_lock(&instance->lock);
  if (instance->inbox_tail != NULL) instance->inbox_tail->next = head;
  else instance->inbox_head = head;
  instance->inbox_tail = tail;
  uv_async_send(&instance->inbox_wake);
  uv_mutex_unlock(&instance->lock);
}

// Session's thread, at the end of everything that ran for a session: its
// events go out, and a closed session is let go of (after its Close).
static void session_settle(session_t *s) {
  if (s->depth > 0) return;
  post_events(s);
  if (s->state != S_CLOSED || s->released) return;
  s->released = 1;
  atomic_fetch_sub(&s->worker->sessions, 1);
  instance_t *instance = s->instance;
  uv_mutex_lock(&instance->lock);
  // The environment's loop no longer needs to stay alive for it: tell it, and an ending environment may finish.
  instance->live--;
  uv_async_send(&instance->inbox_wake);
  uv_mutex_unlock(&instance->lock);
  session_unref(s);
}

// CMD_START: the poll handle goes on the session's thread; the handshake starts from its first callback.
static void session_begin(session_t *s) {
  if (s->state == S_CLOSED) return;  // destroyed before it started
  if (s->ssl == NULL || s->net == NULL || (s->poll = new_poll(&s->worker->loop, NULL, s->fd, s)) == NULL) {
    session_fail(s, "cannot set up the TLS connection");
    return;
  }
  set_poll(s->poll, &s->events, UV_WRITABLE | UV_READABLE, session_poll_cb);
}

// A client tunnel that was never sent (the session is closing, or closed): JavaScript hears of it as
// a refused stream and gets its socket back, even after Close (each open gets its StreamClose).
static void open_failed(session_t *s, command_t *c, const char *why) {
  event_t *e = queue_event(s, EV_STREAM_CLOSE, c->stream);
  if (e == NULL) {
    close_fd_reset(c->fd);
  } else {
    e->a = OUT_REFUSED;
    e->text = dup_text(why);
    e->fd = c->fd;
  }
  c->fd = -1;
}

static void command_open(session_t *s, command_t *c) {
  if (s->server || s->state != S_OPEN || s->goaway_sent || s->goaway_received) return open_failed(s, c, "the session is closing");
  nghttp2_nv nv[2 + MAX_HEADERS];
  size_t nvlen = 0;
  nv[nvlen++] = (nghttp2_nv){(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE};
  nv[nvlen++] = (nghttp2_nv){(uint8_t *)":authority", (uint8_t *)c->text, 10, strlen(c->text), NGHTTP2_NV_FLAG_NONE};
  for (int i = 0; i + 1 < c->header_count; i += 2) {
    nv[nvlen++] = (nghttp2_nv){(uint8_t *)c->headers[i], (uint8_t *)c->headers[i + 1], strlen(c->headers[i]), strlen(c->headers[i + 1]), NGHTTP2_NV_FLAG_NONE};
  }
  pipe_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return open_failed(s, c, "out of memory");
  p->s = s;
  p->fd = c->fd;
  p->handle = c->stream;
  nghttp2_data_provider provider = {.source = {.ptr = p}, .read_callback = on_read_data};
  int32_t id = nghttp2_submit_request(s->h2, NULL, nv, nvlen, &provider, p);
  if (id < 0) {
    free(p);
    return open_failed(s, c, nghttp2_strerror(id));
  }
  c->fd = -1;
  p->id = id;
  p->next = s->pipes;
  s->pipes = p;
  atomic_fetch_add(&s->pipe_count, 1);
  session_flush(s);
}

static void command_respond(session_t *s, command_t *c) {
  pipe_t *p = s->state == S_OPEN ? find_pipe(s, c->stream) : NULL;
  if (p == NULL || p->stream_closed || p->splicing) return;
  char text[4];
  snprintf(text, sizeof(text), "%d", c->number);
  nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)text, 7, 3, NGHTTP2_NV_FLAG_NONE}};
  p->outcome = OUT_REJECTED;
  p->status = c->number;
  p->reset = 1;  // nothing to splice: the pipe ends with the stream
  p->fin_sent = 1;
  nghttp2_submit_response(s->h2, p->id, nv, 1, NULL);
  session_flush(s);
}

static void command_splice(session_t *s, command_t *c) {
  pipe_t *p = s->state == S_OPEN ? find_pipe(s, c->stream) : NULL;
  // Gone meanwhile: its StreamClose is already on its way to JavaScript.
  if (p == NULL || p->stream_closed || p->reset || p->splicing) return;
  p->fd = c->fd;
  p->status = 200;
  nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE}};
  nghttp2_data_provider provider = {.source = {.ptr = p}, .read_callback = on_read_data};
  if (nghttp2_submit_response(s->h2, p->id, nv, 1, &provider) != 0) {
    p->fd = -1;
    return;
  }
  c->fd = -1;
  s->depth++;
  pipe_start(p);
  if (p->remote_ended) remote_ended(p);
  s->depth--;
  session_flush(s);
}

static void command_reset(session_t *s, command_t *c) {
  pipe_t *p = s->state == S_OPEN ? find_pipe(s, c->stream) : NULL;
  if (p == NULL || p->reported) return;
  s->depth++;
  if (!p->reset) {
    p->reset = 1;
    if (p->outcome == OUT_CLOSED) p->outcome = OUT_SOCKET_RESET;
    pipe_set_error(p, "reset by the proxy");
  }
  if (!p->stream_closed) nghttp2_submit_rst_stream(s->h2, NGHTTP2_FLAG_NONE, p->id, (uint32_t)c->number);
  set_poll(p->poll, &p->events, 0, pipe_poll_cb);
  pipe_check_done(p);
  s->depth--;
  session_flush(s);
}

// Runs on the session's thread, in the order JavaScript sent them.
static void run_command(command_t *c) {
  session_t *s = c->s;
  switch (c->type) {
    case CMD_START:
      session_begin(s);
      break;
    case CMD_VERDICT:
      if (s->state != S_OPEN || !s->verifying) break;
      if (c->text != NULL) {
        session_fail(s, c->text);
        break;
      }
      // Accepted: what the peer sent meanwhile is read, and what JavaScript queued is sent.
      s->verifying = 0;
      s->depth++;
      session_read(s);
      s->depth--;
      session_flush(s);
      break;
    case CMD_OPEN:
      command_open(s, c);
      break;
    case CMD_RESPOND:
      command_respond(s, c);
      break;
    case CMD_SPLICE:
      command_splice(s, c);
      break;
    case CMD_RESET:
      command_reset(s, c);
      break;
    case CMD_PING:
      if (s->state == S_OPEN) {
        nghttp2_submit_ping(s->h2, NGHTTP2_FLAG_NONE, NULL);
        session_flush(s);
      }
      break;
    case CMD_SHUTDOWN:
      if (s->state == S_HANDSHAKE) session_teardown(s, NULL);
      else if (s->state == S_OPEN && !s->goaway_sent) {
        submit_goaway(s);
        session_flush(s);
      }
      break;
    case CMD_DESTROY:
      session_teardown(s, c->text != NULL ? c->text : "destroyed");
      break;
  }
  if (c->fd >= 0) close(c->fd);  // a descriptor no tunnel took
  session_settle(s);
  free_command(c);
  session_unref(s);
}

// ---- delivery to JavaScript -------------------------------------------------------------

static napi_value make_string(napi_env env, const char *text) {
  napi_value value;
  if (text == NULL) napi_get_null(env, &value);
  else napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &value);
  return value;
}

static napi_value make_number(napi_env env, double n) {
  napi_value value;
  napi_create_double(env, n, &value);
  return value;
}

// Calls the session's callback with one event. Handshake's return value is
// the verdict on the peer, sent back to the session's thread.
static void deliver_event(napi_env env, event_t *e) {
  session_t *s = e->s;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value callback, recv, argv[8];
  size_t argc = 0;
  napi_get_reference_value(env, s->callback, &callback);
  napi_get_global(env, &recv);
  argv[argc++] = make_number(env, e->type);
  switch (e->type) {
    case EV_HANDSHAKE: {
      napi_value chain;
      napi_create_array_with_length(env, (size_t)e->header_count, &chain);
      for (int i = 0; i < e->header_count; i++) {
        napi_value buffer;
        napi_create_buffer_copy(env, e->lengths[i], e->headers[i], NULL, &buffer);
        napi_set_element(env, chain, (uint32_t)i, buffer);
      }
      argv[argc++] = chain;
      break;
    }
    case EV_REQUEST: {
      argv[argc++] = make_number(env, e->stream);
      argv[argc++] = make_string(env, e->text ? e->text : "");
      argv[argc++] = make_string(env, e->text2 ? e->text2 : "");
      napi_value headers;
      napi_create_array_with_length(env, (size_t)e->header_count, &headers);
      for (int i = 0; i < e->header_count; i++) napi_set_element(env, headers, (uint32_t)i, make_string(env, e->headers[i]));
      argv[argc++] = headers;
      break;
    }
    case EV_RESPONSE:
      argv[argc++] = make_number(env, e->stream);
      argv[argc++] = make_number(env, (double)e->a);
      break;
    case EV_STREAM_CLOSE:
      argv[argc++] = make_number(env, e->stream);
      argv[argc++] = make_number(env, (double)e->a);
      argv[argc++] = make_number(env, (double)e->b);
      argv[argc++] = make_number(env, (double)e->c);
      argv[argc++] = make_string(env, e->text);
      argv[argc++] = make_number(env, (double)e->d);
      argv[argc++] = make_number(env, e->fd);
      e->fd = -1;  // JavaScript's now
      break;
    case EV_CLOSE:
      argv[argc++] = make_string(env, e->text);
      break;
    case EV_GOAWAY:
      argv[argc++] = make_number(env, e->stream);
      break;
  }
  napi_value result;
  napi_status status = napi_make_callback(env, s->async, recv, callback, argc, argv, &result);
  if (e->type == EV_HANDSHAKE) {
    char *reason = NULL;
    if (status == napi_pending_exception) {
      napi_value exception;
      napi_get_and_clear_last_exception(env, &exception);
      reason = dup_text("the identity check threw");
    } else {
      napi_valuetype type;
      napi_typeof(env, result, &type);
      if (type == napi_string) {
        char text[512];
        size_t len;
        napi_get_value_string_utf8(env, result, text, sizeof(text), &len);
        reason = dup_text(len == 0 ? "the peer's identity was refused" : text);
      }
    }
    if (!s->js_closed) send_command(s, CMD_VERDICT, 0, 0, reason);
    else free(reason);
  } else if (status == napi_pending_exception) {
    // A throwing handler must not stop the data path: report it like Node reports
    // an exception in an event listener, as uncaught.
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
  napi_close_handle_scope(env, scope);
}

static void inbox_closed(uv_handle_t *handle) {
  instance_t *instance = handle->data;
  if (--instance->handles == 0) napi_remove_async_cleanup_hook(instance->cleanup);
}

// An ending environment finishes once every session's thread let go of it:
// what is left in the inbox is dropped, and the inbox closes.
static void finish_cleanup(instance_t *instance) {
  if (!instance->shutting_down || instance->finishing) return;
  uv_mutex_lock(&instance->lock);
  int live = instance->live;
  event_t *e = live == 0 ? instance->inbox_head : NULL;
  if (live == 0) instance->inbox_head = instance->inbox_tail = NULL;
  uv_mutex_unlock(&instance->lock);
  if (live > 0) return;
  instance->finishing = 1;
  while (e != NULL) {
    event_t *next = e->next;
    session_t *s = e->s;
    free_event(e);
    session_unref(s);
    e = next;
  }
  uv_close((uv_handle_t *)&instance->inbox_wake, inbox_closed);
}

// On the environment's loop: delivers every event in the inbox, in order.
static void inbox_cb(uv_async_t *handle) {
  instance_t *instance = handle->data;
  napi_env env = instance->env;
  uv_mutex_lock(&instance->lock);
  event_t *e = instance->inbox_head;
  instance->inbox_head = instance->inbox_tail = NULL;
  uv_mutex_unlock(&instance->lock);
  while (e != NULL) {
    event_t *next = e->next;
    session_t *s = e->s;
    // Before the handler runs: it, and what its promises run, see the session as it is now.
    if (e->type == EV_GOAWAY) s->js_goaway = 1;
    if (e->type == EV_CLOSE) s->js_closed = 1;
    // During a shutdown nothing is delivered: JavaScript is going away.
    // A session JavaScript dropped (after its Close) hears nothing more; a socket handed back is reset by free_event.
    if (!instance->shutting_down && s->callback != NULL) deliver_event(env, e);
    if (e->type == EV_CLOSE) {
      // JavaScript may drop the session now: its finalizer releases it.
      if (s->self != NULL) napi_delete_reference(env, s->self);
      s->self = NULL;
    }
    free_event(e);
    session_unref(s);
    e = next;
  }
  if (instance->shutting_down) {
    finish_cleanup(instance);
    return;
  }
  // Open sessions keep the environment's loop alive, as open sockets do.
  uv_mutex_lock(&instance->lock);
  int live = instance->live;
  uv_mutex_unlock(&instance->lock);
  if (live == 0 && instance->inbox_referenced) {
    uv_unref((uv_handle_t *)handle);
    instance->inbox_referenced = 0;
  }
}

// ---- exported session functions ----------------------------------------------------------------

static session_t *get_session(napi_env env, napi_value value) {
  void *data = NULL;
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_external || napi_get_value_external(env, value, &data) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected a native HBONE session");
    return NULL;
  }
  return data;
}

// The session of a function whose only argument is one; NULL with an exception pending otherwise.
static session_t *session_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1) {
    napi_throw_type_error(env, NULL, "expected a native HBONE session");
    return NULL;
  }
  return get_session(env, argv[0]);
}

// A descriptor argument (an integer >= 0); false with an exception pending otherwise.
static bool fd_arg(napi_env env, napi_callback_info info, const char *usage, int32_t *fd) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_get_value_int32(env, argv[0], fd) != napi_ok || *fd < 0) {
    napi_throw_type_error(env, NULL, usage);
    return false;
  }
  return true;
}

static napi_value js_bool(napi_env env, bool value) {
  napi_value result;
  napi_get_boolean(env, value, &result);
  return result;
}

static napi_value js_int(napi_env env, int32_t value) {
  napi_value result;
  napi_create_int32(env, value, &result);
  return result;
}

// clientSession / serverSession(context, fd, settings[4], callback)
static napi_value new_session(napi_env env, napi_callback_info info, int server) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *ctx = NULL;
  int32_t fd;
  int32_t settings[4];
  napi_valuetype type;
  if (argc < 4 || napi_get_value_external(env, argv[0], &ctx) != napi_ok || napi_get_value_int32(env, argv[1], &fd) != napi_ok ||
      napi_typeof(env, argv[3], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, NULL, "session(context, fd, settings, callback)");
    return NULL;
  }
  for (uint32_t i = 0; i < 4; i++) {
    napi_value element;
    if (napi_get_element(env, argv[2], i, &element) != napi_ok || napi_get_value_int32(env, element, &settings[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "settings must be [streamWindow, connectionWindow, maxFrameSize, maxConcurrentStreams]");
      return NULL;
    }
  }
  session_t *s = calloc(1, sizeof(*s));
  worker_t *worker = s != NULL ? pick_worker(server) : NULL;
  if (worker == NULL) {
    free(s);
    napi_throw_error(env, NULL, s == NULL ? "out of memory" : "cannot start the HBONE data-path threads");
    return NULL;
  }
  atomic_init(&s->refs, 2);  // JavaScript's handle, and the thread until it lets go
  atomic_init(&s->pipe_count, 0);
  s->server = server;
  s->fd = fd;
  s->next_handle = 1;
  s->worker = worker;
  memcpy(s->settings, settings, sizeof(settings));
  instance_t *instance = s->instance = instance_of(env);
  uv_mutex_lock(&instance->lock);
  s->live_next = instance->sessions;
  if (s->live_next != NULL) s->live_next->live_prev = s;
  instance->sessions = s;
  instance->live++;
  uv_mutex_unlock(&instance->lock);
  if (!instance->inbox_referenced) {
    uv_ref((uv_handle_t *)&instance->inbox_wake);
    instance->inbox_referenced = 1;
  }
  napi_value name, handle;
  napi_create_string_utf8(env, "ambientkit.hbone", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &s->async);
  napi_create_reference(env, argv[3], 1, &s->callback);
  napi_create_external(env, s, session_finalize, NULL, &handle);
  napi_create_reference(env, handle, 1, &s->self);
  // The TLS objects are made here and used only on the session's thread from
  // CMD_START on (queuing the command orders the two). A failure here is
  // reported by that thread, as a Close.
  s->ssl = SSL_new(ctx);
  BIO *internal = NULL;
  if (s->ssl != NULL && BIO_new_bio_pair(&internal, NET_BUFFER, &s->net, NET_BUFFER) == 1) SSL_set_bio(s->ssl, internal, internal);
  if (s->ssl != NULL) {
    if (server) SSL_set_accept_state(s->ssl);
    else SSL_set_connect_state(s->ssl);
  }
  // Frames of many tunnels share this connection: none may wait for an ACK (Nagle).
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  s->state = S_HANDSHAKE;
  if (!send_command(s, CMD_START, 0, 0, NULL)) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  return handle;
}

static napi_value client_session(napi_env env, napi_callback_info info) { return new_session(env, info, 0); }
static napi_value server_session(napi_env env, napi_callback_info info) { return new_session(env, info, 1); }

// open(session, fd, authority, headers[]) → the tunnel's handle, or -1 (fd reset) when the session takes no more streams.
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = get_session(env, argv[0]);
  if (s == NULL) return NULL;
  int32_t fd;
  uint32_t count = 0;
  napi_valuetype type;
  if (argc < 4 || napi_get_value_int32(env, argv[1], &fd) != napi_ok || napi_typeof(env, argv[2], &type) != napi_ok || type != napi_string ||
      napi_get_array_length(env, argv[3], &count) != napi_ok || count % 2 != 0 || count > MAX_HEADERS * 2) {
    napi_throw_type_error(env, NULL, "open(session, fd, authority, [name, value, ...])");
    return NULL;
  }
  command_t *c = s->server || s->js_closed || s->js_goaway ? NULL : new_command(s, CMD_OPEN);
  if (c != NULL) {
    c->text = get_string(env, argv[2]);
    c->headers = count > 0 ? calloc(count, sizeof(char *)) : NULL;
    for (uint32_t i = 0; c->headers != NULL && i < count; i++) {
      napi_value element;
      napi_get_element(env, argv[3], i, &element);
      c->headers[c->header_count++] = get_string(env, element);
    }
    bool complete = c->text != NULL && c->header_count == (int)count;
    for (int i = 0; complete && i < c->header_count; i++) complete = c->headers[i] != NULL;
    if (!complete) {
      free_command(c);
      c = NULL;
    }
  }
  if (c == NULL) {
    close_fd_reset(fd);
    return js_int(env, -1);
  }
  int32_t handle = s->next_handle;
  s->next_handle += 2;
  c->fd = fd;
  c->stream = handle;
  post_command(c);  // c belongs to the session's thread from here on
  return js_int(env, handle);
}

static napi_value stream_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, session_t **s, int32_t *id) {
  size_t argc = want;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  *s = get_session(env, argv[0]);
  if (*s == NULL) return NULL;
  if (argc < want || napi_get_value_int32(env, argv[1], id) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected (session, stream, ...)");
    *s = NULL;
    return NULL;
  }
  return argv[0];
}

// respond(session, stream, status): a final answer without a tunnel.
static napi_value js_respond(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  session_t *s;
  int32_t id, status;
  if (stream_args(env, info, 3, argv, &s, &id) == NULL || s == NULL) return NULL;
  if (napi_get_value_int32(env, argv[2], &status) != napi_ok || status < 200 || status > 599) {
    napi_throw_range_error(env, NULL, "status must be 200-599");
    return NULL;
  }
  return js_bool(env, !s->js_closed && send_command(s, CMD_RESPOND, id, status, NULL));
}

// splice(session, stream, fd): 200, then bytes flow between the stream and fd.
static napi_value js_splice(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  session_t *s;
  int32_t id, fd;
  if (stream_args(env, info, 3, argv, &s, &id) == NULL || s == NULL) return NULL;
  if (napi_get_value_int32(env, argv[2], &fd) != napi_ok) {
    napi_throw_type_error(env, NULL, "splice(session, stream, fd)");
    return NULL;
  }
  command_t *c = s->js_closed ? NULL : new_command(s, CMD_SPLICE);
  if (c == NULL) {
    close(fd);
    return js_bool(env, false);
  }
  c->stream = id;
  c->fd = fd;
  post_command(c);
  return js_bool(env, true);
}

// resetStream(session, stream, code)
static napi_value js_reset_stream(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  session_t *s;
  int32_t id;
  uint32_t code;
  if (stream_args(env, info, 3, argv, &s, &id) == NULL || s == NULL) return NULL;
  if (napi_get_value_uint32(env, argv[2], &code) != napi_ok) code = NGHTTP2_CONNECT_ERROR;
  return js_bool(env, !s->js_closed && send_command(s, CMD_RESET, id, (int32_t)code, NULL));
}

static napi_value js_ping(napi_env env, napi_callback_info info) {
  session_t *s = session_arg(env, info);
  if (s != NULL && !s->js_closed) send_command(s, CMD_PING, 0, 0, NULL);
  return NULL;
}

static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  session_t *s = session_arg(env, info);
  if (s != NULL && !s->js_closed && !s->js_goaway) {
    s->js_goaway = 1;
    send_command(s, CMD_SHUTDOWN, 0, 0, NULL);
  }
  return NULL;
}

static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = get_session(env, argv[0]);
  if (s == NULL) return NULL;
  napi_valuetype type = napi_undefined;
  if (argc > 1) napi_typeof(env, argv[1], &type);
  if (!s->js_closed) {
    s->js_closed = 1;
    send_command(s, CMD_DESTROY, 0, 0, type == napi_string ? get_string(env, argv[1]) : NULL);
  }
  return NULL;
}

static napi_value js_streams(napi_env env, napi_callback_info info) {
  session_t *s = session_arg(env, info);
  if (s == NULL) return NULL;
  return js_int(env, atomic_load(&s->pipe_count));
}

// threads(): how many data-path threads sessions are spread over.
static napi_value js_threads(napi_env env, napi_callback_info info) {
  (void)info;
  uv_once(&workers_once, start_workers);
  return js_int(env, worker_count);
}

static napi_value js_dup_fd(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, "dupFd(fd)", &fd)) return NULL;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0 || fcntl(copy, F_SETFL, fcntl(copy, F_GETFL) | O_NONBLOCK) < 0) {
    if (copy >= 0) close(copy);
    napi_throw_error(env, NULL, strerror(errno));
    return NULL;
  }
  napi_value result;
  napi_create_int32(env, copy, &result);
  return result;
}

// resetFd(fd): closes a connected socket with RST (SO_LINGER 0), as a refused or reset connection is closed.
static napi_value js_reset_fd(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, "resetFd(fd)", &fd)) return NULL;
  close_fd_reset(fd);
  return NULL;
}

// ---- accepting ----------------------------------------------------------------------------------

// A listening socket whose connections go straight to JavaScript as
// descriptors: no net.Socket is built for a connection the addon will carry.
struct acceptor_s {
  napi_env env;
  napi_ref callback;
  napi_ref self;  // a listening acceptor stays alive without a JavaScript reference, as a listening net.Server does
  napi_async_context async;
  int fd;
  uv_poll_t *poll;
  int events;
  instance_t *instance;
  acceptor_t *next;  // the instance's list of listening acceptors
};

// Stops listening: the socket closes, and the acceptor leaves its instance's list.
static void acceptor_stop(acceptor_t *a) {
  if (a->fd < 0) return;
  close_poll(&a->poll);
  close(a->fd);
  a->fd = -1;
  for (acceptor_t **link = &a->instance->acceptors; *link != NULL; link = &(*link)->next) {
    if (*link == a) {
      *link = a->next;
      break;
    }
  }
}

static void acceptor_poll_cb(uv_poll_t *handle, int status, int events) {
  (void)events;
  acceptor_t *a = handle->data;
  if (status < 0) return;  // a listening socket's error is transient (ECONNABORTED and the like)
  napi_env env = a->env;
  // Bounded, so that a flood of connections cannot starve the rest of the loop.
  for (int i = 0; i < 64; i++) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof(peer);
    int fd = accept4(a->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      break;  // EAGAIN, or EMFILE and the like: tried again on the next readiness
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char address[INET6_ADDRSTRLEN] = "";
    int port = 0, family = 4;
    if (peer.ss_family == AF_INET) {
      struct sockaddr_in *in = (struct sockaddr_in *)&peer;
      inet_ntop(AF_INET, &in->sin_addr, address, sizeof(address));
      port = ntohs(in->sin_port);
    } else if (peer.ss_family == AF_INET6) {
      struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&peer;
      family = 6;
      // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: give the IPv4 form.
      if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
        inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], address, sizeof(address));
        family = 4;
      } else {
        inet_ntop(AF_INET6, &in6->sin6_addr, address, sizeof(address));
      }
      port = ntohs(in6->sin6_port);
    }
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    napi_value callback, recv, argv[4], result;
    napi_get_reference_value(env, a->callback, &callback);
    napi_get_global(env, &recv);
    napi_create_int32(env, fd, &argv[0]);
    argv[1] = make_string(env, address);
    napi_create_int32(env, port, &argv[2]);
    napi_create_int32(env, family, &argv[3]);
    if (napi_make_callback(env, a->async, recv, callback, 4, argv, &result) == napi_pending_exception) {
      napi_value exception;
      napi_get_and_clear_last_exception(env, &exception);
      napi_fatal_exception(env, exception);
    }
    napi_close_handle_scope(env, scope);
    if (a->fd < 0) return;  // closed from the callback
  }
}

static void acceptor_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  acceptor_t *a = data;
  acceptor_stop(a);
  napi_delete_reference(env, a->callback);
  napi_async_destroy(env, a->async);
  free(a);
}

// accept(listenFd, callback(fd, address, port, family)) → handle; the listening socket becomes the addon's.
static napi_value js_accept(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_valuetype type;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, NULL, "accept(listenFd, callback)");
    return NULL;
  }
  acceptor_t *a = calloc(1, sizeof(*a));
  if (a == NULL) {
    napi_throw_error(env, NULL, "out of memory");
    return NULL;
  }
  a->env = env;
  a->fd = fd;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  napi_value name, handle;
  napi_create_string_utf8(env, "ambientkit.accept", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &a->async);
  napi_create_reference(env, argv[1], 1, &a->callback);
  uv_loop_t *loop;
  a->instance = instance_of(env);
  a->poll = napi_get_uv_event_loop(env, &loop) == napi_ok ? new_poll(loop, a->instance, fd, a) : NULL;
  if (a->poll == NULL) {
    napi_delete_reference(env, a->callback);
    napi_async_destroy(env, a->async);
    free(a);
    napi_throw_error(env, NULL, "cannot poll the listening socket");
    return NULL;
  }
  set_poll(a->poll, &a->events, UV_READABLE, acceptor_poll_cb);
  a->next = a->instance->acceptors;
  a->instance->acceptors = a;
  napi_create_external(env, a, acceptor_finalize, NULL, &handle);
  napi_create_reference(env, handle, 1, &a->self);
  return handle;
}

// stopAccepting(handle): closes the listening socket. Idempotent.
static napi_value js_stop_accepting(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void *data = NULL;
  CHECK_NAPI(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_external(env, argv[0], &data) != napi_ok) {
    napi_throw_type_error(env, NULL, "stopAccepting(handle)");
    return NULL;
  }
  acceptor_t *a = data;
  acceptor_stop(a);
  if (a->self != NULL) {
    napi_delete_reference(env, a->self);
    a->self = NULL;
  }
  return NULL;
}

static void instance_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  instance_t *instance = data;
  uv_mutex_destroy(&instance->lock);
  free(instance);
}

// The environment is shutting down (a worker thread ends, or the process
// exits normally): listeners close, every session still open is destroyed on
// its thread, and the environment is told once the last has let go and our
// last handle on its loop has closed.
static void env_cleanup(napi_async_cleanup_hook_handle handle, void *data) {
  instance_t *instance = data;
  instance->cleanup = handle;
  instance->shutting_down = 1;
  while (instance->acceptors != NULL) acceptor_stop(instance->acceptors);
  uv_mutex_lock(&instance->lock);
  for (session_t *s = instance->sessions; s != NULL; s = s->live_next) {
    s->js_closed = 1;
    send_command(s, CMD_DESTROY, 0, 0, dup_text("the environment is shutting down"));
  }
  uv_mutex_unlock(&instance->lock);
  finish_cleanup(instance);
}

NAPI_MODULE_INIT() {
  if (threads_wanted() == 0) {
    char message[200];
    snprintf(message, sizeof(message), "AMBIENTKIT_HBONE_THREADS must be a whole number from 1 to 64 (the HBONE data-path threads), got '%.40s'",
             getenv("AMBIENTKIT_HBONE_THREADS"));
    napi_throw_range_error(env, "ERR_AMBIENT_HBONE_THREADS", message);
    return NULL;
  }
  uv_loop_t *loop;
  instance_t *instance = calloc(1, sizeof(*instance));
  if (instance == NULL || napi_get_uv_event_loop(env, &loop) != napi_ok || uv_mutex_init(&instance->lock) != 0) {
    free(instance);
    napi_throw_error(env, NULL, "ambient_hbone: cannot set up its environment");
    return NULL;
  }
  instance->env = env;
  uv_async_init(loop, &instance->inbox_wake, inbox_cb);
  instance->inbox_wake.data = instance;
  uv_unref((uv_handle_t *)&instance->inbox_wake);  // referenced only while sessions are live
  instance->handles = 1;
  if (napi_set_instance_data(env, instance, instance_finalize, NULL) != napi_ok) {
    napi_throw_error(env, NULL, "ambient_hbone: cannot set up its environment");
    return NULL;
  }
  napi_add_async_cleanup_hook(env, env_cleanup, instance, NULL);
  napi_property_descriptor functions[] = {
      {"createContext", NULL, create_context, NULL, NULL, NULL, napi_enumerable, NULL},
      {"clientSession", NULL, client_session, NULL, NULL, NULL, napi_enumerable, NULL},
      {"serverSession", NULL, server_session, NULL, NULL, NULL, napi_enumerable, NULL},
      {"open", NULL, js_open, NULL, NULL, NULL, napi_enumerable, NULL},
      {"respond", NULL, js_respond, NULL, NULL, NULL, napi_enumerable, NULL},
      {"splice", NULL, js_splice, NULL, NULL, NULL, napi_enumerable, NULL},
      {"resetStream", NULL, js_reset_stream, NULL, NULL, NULL, napi_enumerable, NULL},
      {"ping", NULL, js_ping, NULL, NULL, NULL, napi_enumerable, NULL},
      {"shutdown", NULL, js_shutdown, NULL, NULL, NULL, napi_enumerable, NULL},
      {"destroy", NULL, js_destroy, NULL, NULL, NULL, napi_enumerable, NULL},
      {"streams", NULL, js_streams, NULL, NULL, NULL, napi_enumerable, NULL},
      {"threads", NULL, js_threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"dupFd", NULL, js_dup_fd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"resetFd", NULL, js_reset_fd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"accept", NULL, js_accept, NULL, NULL, NULL, napi_enumerable, NULL},
      {"stopAccepting", NULL, js_stop_accepting, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof(functions) / sizeof(functions[0]), functions);
  return exports;
}
