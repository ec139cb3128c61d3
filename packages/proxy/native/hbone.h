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
//
// The files, by concern (this header is what they share, and only they):
//   queue.c    byte queues and copies of text
//   io.c       poll handles and sockets
//   tls.c      TLS contexts (createContext)
//   h2.c       nghttp2: callbacks, settings, GOAWAY
//   pipe.c     a tunnel: one stream spliced with one socket
//   session.c  a session: TLS, reading, flushing, teardown
//   worker.c   data-path threads and the commands JavaScript sends them
//   events.c   events: queued by sessions, delivered to JavaScript
//   js.c       N-API helpers: checked calls, values, arguments, faults (test builds)
//   addon.c    the exported functions, load-time checks, module init

#ifndef AMBIENT_HBONE_H
#define AMBIENT_HBONE_H

#include <node_api.h>
#include <uv.h>
#include <openssl/ssl.h>
#include <nghttp2/nghttp2.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

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
// Request headers kept for JavaScript, and extra headers open() takes: HBONE needs a handful.
#define MAX_HEADERS 32

// Shared with JavaScript: NativeEvent and NativeOutcome in src/hbone/native.ts.
// The addon exports them (`constants`) and the loader refuses an addon whose
// numbers differ from its own (constants_object in addon.c).
enum { EV_HANDSHAKE = 1, EV_REQUEST, EV_RESPONSE, EV_STREAM_CLOSE, EV_CLOSE, EV_GOAWAY, EV_PING_ACK, EV_SETTINGS };
// OUT_REFUSED: a client stream the server never processed (REFUSED_STREAM, or a GOAWAY below
// its id: RFC 9113 §8.7), or a CONNECT never sent. Its socket goes back to JavaScript, untouched,
// for another session.
enum { OUT_CLOSED = 0, OUT_SOCKET_RESET, OUT_STREAM_RESET, OUT_REJECTED, OUT_REFUSED };
enum { S_HANDSHAKE, S_OPEN, S_CLOSED };
// What JavaScript asks of a session, run on the session's thread.
enum { CMD_START, CMD_VERDICT, CMD_OPEN, CMD_RESPOND, CMD_SPLICE, CMD_RESET, CMD_PING, CMD_SHUTDOWN, CMD_DESTROY };

typedef struct {
  uint8_t *data;
  size_t start, end, cap;
} bq_t;

typedef struct session_s session_t;
typedef struct command_s command_t;
typedef struct event_s event_t;
typedef struct pipe_s pipe_t;

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
} instance_t;

// Every poll handle of ours, so that its close callback can count it off
// (handles on the environment's loop only: `instance` is NULL on a data-path thread).
typedef struct {
  uv_poll_t poll;
  instance_t *instance;
} handle_box_t;

// An event for JavaScript: queued while OpenSSL or nghttp2 is on the stack,
// moved to the environment's inbox once they returned. The terminal ones
// (a stream's StreamClose, a session's Close) are allocated with what they
// end, so that no allocation failure can lose them.
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
  event_t *closed;  // open: the tunnel's StreamClose, whatever becomes of it
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
  uint64_t last_moved;  // the loop's time when a byte last moved through the socket: the idle and stall timeouts
  int status;      // client: the response status
  int outcome;
  char *error;
  event_t *closed; // its StreamClose, queued by pipe_finish
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
  command_t *verdict;   // allocated with the session: the answer to Handshake cannot be lost
  command_t *destroy;   // allocated with the session: destroy() cannot be lost; NULL once sent
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
  event_t *closed;      // its Close, allocated with the session (`a` 1 and `text` the reason once one is given); NULL once queued
  const char *failure;  // why a callback of nghttp2 failed (out of memory): what the session fails with
  int depth;            // > 0 while OpenSSL or nghttp2 is on the stack for this session
  // Stream window, connection window, max frame size, max concurrent streams,
  // then the tunnels' idle and stall timeouts in milliseconds (0: none).
  int32_t settings[6];
  uv_timer_t *timer;    // checks the tunnels' timeouts, while the session is open and has any
  instance_t *instance;
  session_t *live_prev, *live_next;  // the instance's list of sessions not yet torn down
  int goaway_sent;
  int goaway_received;
};

// A session's Close reason: longer ones are cut.
#define CLOSE_REASON_MAX 256

// queue.c
size_t bq_len(const bq_t *q);
int bq_reserve(bq_t *q, size_t n);
int bq_append(bq_t *q, const uint8_t *src, size_t n);
void bq_consume(bq_t *q, size_t n);
void bq_free(bq_t *q);
char *dup_text(const char *text);
char *dup_bytes(const uint8_t *data, size_t len);

// io.c
int socket_error(int fd, int status);
void set_poll(uv_poll_t *poll, int *current, int wanted, uv_poll_cb cb);
uv_poll_t *new_poll(uv_loop_t *loop, instance_t *instance, int fd, void *data);
void close_poll(uv_poll_t **poll);
void close_fd_reset(int fd);

// tls.c
const char *tls_error(char *buffer, size_t size, const char *what);
napi_value create_context(napi_env env, napi_callback_info info);

// h2.c
int session_start_h2(session_t *s);
ssize_t on_read_data(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length, uint32_t *flags, nghttp2_data_source *source, void *user);
void submit_goaway(session_t *s);

// pipe.c
pipe_t *new_pipe(session_t *s, event_t *closed);
pipe_t *find_pipe(session_t *s, int32_t handle);
pipe_t *pipe_hold(pipe_t *p);
int pipe_release(pipe_t *p);
void pipe_finish(pipe_t *p);
void pipe_check_done(pipe_t *p);
void pipe_set_error(pipe_t *p, const char *message);
void pipe_flush_down(pipe_t *p);
void pipe_update_poll(pipe_t *p);
void pipe_poll_cb(uv_poll_t *handle, int status, int events);
void pipe_start(pipe_t *p);
void remote_ended(pipe_t *p);
void flush_dirty(session_t *s);
void pipe_check_timeouts(session_t *s, uint64_t now);

// session.c
void session_begin(session_t *s);
void session_teardown(session_t *s, const char *reason);
void session_fail(session_t *s, const char *reason);
void session_flush(session_t *s);
void session_read(session_t *s);
void session_maybe_close(session_t *s);
void session_poll_cb(uv_poll_t *handle, int status, int events);
void session_finalize(napi_env env, void *data, void *hint);
int net_flush(session_t *s);

// worker.c
int threads_wanted(void);
int worker_threads(void);
worker_t *pick_worker(int server);
command_t *new_command(session_t *s, int type);
void free_command(command_t *c);
void post_command(command_t *c);
bool send_command(session_t *s, int type, int32_t stream, int32_t number, char *text);
void session_post_destroy(session_t *s, char *reason);

// events.c
event_t *new_event(int type, int32_t stream);
event_t *queue_event(session_t *s, int type, int32_t stream);
void push_event(session_t *s, event_t *e);
void free_event(event_t *e);
void session_unref(session_t *s);
void session_settle(session_t *s);
void inbox_cb(uv_async_t *handle);
void finish_cleanup(instance_t *instance);

// js.c
//
// Every napi_* status is checked. Where a JavaScript caller waits (an
// exported function), NAPI_CALL throws an Error naming the call and returns
// NULL from the function. Where none does (an event delivered from the
// loop), NAPI_TRY records the first failure in `failed` (and skips the calls
// after it), and the caller fails what it was doing visibly (events.c).
// Finalizers and the environment's teardown use NAPI_CLEANUP: no JavaScript
// is left to tell then, so a failure is written to stderr.
napi_status napi_checked(napi_status status, const char *call);
void throw_napi_failure(napi_env env, const char *call);
#define NAPI_CALL(env, call)                              \
  do {                                                    \
    if (napi_checked((call), #call) != napi_ok) {         \
      throw_napi_failure((env), #call);                   \
      return NULL;                                        \
    }                                                     \
  } while (0)
#define NAPI_TRY(failed, call)                                                        \
  do {                                                                                \
    if ((failed) == NULL && napi_checked((call), #call) != napi_ok) (failed) = #call;  \
  } while (0)
#define NAPI_CLEANUP(call)                                                                 \
  do {                                                                                     \
    if (napi_checked((call), #call) != napi_ok) fprintf(stderr, "ambient_hbone: %s failed\n", #call); \
  } while (0)
napi_status make_string(napi_env env, const char *text, napi_value *result);
napi_status make_number(napi_env env, double n, napi_value *result);
char *get_string(napi_env env, napi_value value);
napi_value throw_oom(napi_env env);
void raise_uncaught(napi_env env, napi_value exception);
void raise_pending(napi_env env);
napi_value throw_error(napi_env env, const char *code, const char *message);
napi_value throw_type_error(napi_env env, const char *message);
napi_value throw_range_error(napi_env env, const char *code, const char *message);

// addon.c: the externals JavaScript holds are tagged with their kind.
extern const napi_type_tag SESSION_TAG, CONTEXT_TAG, ACCEPTOR_TAG;
void *tagged_external(napi_env env, napi_value value, const napi_type_tag *tag, const char *what);
// Test builds (HBONE_FAULTS) make allocations and N-API calls fail on request (injectFaults).
bool fault_event_alloc(void);
#ifdef HBONE_FAULTS
napi_value js_inject_faults(napi_env env, napi_callback_info info);
#endif

#endif
