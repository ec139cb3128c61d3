// The data-path threads, and the commands JavaScript sends to the sessions on them.

#include "hbone.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
int threads_wanted(void) {
  const char *text = getenv("AMBIENTKIT_HBONE_THREADS");
  if (text == NULL || *text == 0) {
    unsigned n = uv_available_parallelism();
    return n > 4 ? 4 : n < 1 ? 1 : (int)n;
  }
  char *end;
  long n = strtol(text, &end, 10);
  return *end == 0 && n >= 1 && n <= 64 ? (int)n : 0;
}

// The data-path threads run this library's code for the life of the
// process, so the library must never be unloaded. Node unloads an addon when
// the last environment that loaded it ends: a Worker that alone loaded it
// would take the threads' code with it (SIGSEGV at their next wake-up).
// RTLD_NODELETE on the library already loaded keeps it mapped.
static void pin_library(void) {
  Dl_info info;
  if (dladdr((void *)pin_library, &info) != 0 && info.dli_fname != NULL) (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}

static void start_workers(void) {
  int wanted = threads_wanted();
  if (wanted == 0) return;  // refused when the addon was loaded
  pin_library();
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

// How many data-path threads sessions are spread over (started on first use).
int worker_threads(void) {
  uv_once(&workers_once, start_workers);
  return worker_count;
}

// The thread a new session runs on: the one with the fewest sessions. Ties
// go to the first thread for a client and the last for a server, so that
// the two ends of a tunnel within one process start on different threads.
worker_t *pick_worker(int server) {
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

command_t *new_command(session_t *s, int type) {
  command_t *c = calloc(1, sizeof(*c));
  if (c == NULL) return NULL;
  c->type = type;
  c->s = s;
  c->fd = -1;
  return c;
}

void free_command(command_t *c) {
  free(c->text);
  for (int i = 0; i < c->header_count; i++) free(c->headers[i]);
  free(c->headers);
  if (c->closed != NULL) free_event(c->closed);
  free(c);
}

// Queues a command to the session's thread; the command holds a reference.
void post_command(command_t *c) {
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
bool send_command(session_t *s, int type, int32_t stream, int32_t number, char *text) {
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

// Sends the session's destroy command, allocated with it: once (later calls do nothing), and never
// lost to a failed allocation. Takes `reason` over (NULL: "destroyed").
void session_post_destroy(session_t *s, char *reason) {
  command_t *c = s->destroy;
  if (c == NULL) {
    free(reason);
    return;
  }
  s->destroy = NULL;
  c->text = reason;
  post_command(c);
}

// A client tunnel that was never sent (the session is closing, or closed): JavaScript hears of it as
// a refused stream and gets its socket back, even after Close (each open gets its StreamClose).
static void open_failed(session_t *s, command_t *c, const char *why) {
  event_t *e = c->closed;
  c->closed = NULL;
  e->a = OUT_REFUSED;
  e->text = dup_text(why);
  e->fd = c->fd;
  c->fd = -1;
  push_event(s, e);
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
  pipe_t *p = new_pipe(s, c->closed);
  if (p == NULL) return open_failed(s, c, "out of memory");
  c->closed = NULL;
  p->fd = c->fd;
  c->fd = -1;
  p->handle = c->stream;
  nghttp2_data_provider provider = {.source = {.ptr = p}, .read_callback = on_read_data};
  int32_t id = nghttp2_submit_request(s->h2, NULL, nv, nvlen, &provider, p);
  if (id < 0) {
    // Never sent: its socket goes back to JavaScript with its StreamClose.
    p->outcome = OUT_REFUSED;
    p->reset = 1;
    pipe_set_error(p, nghttp2_strerror(id));
    pipe_finish(p);
    return;
  }
  p->id = id;
  session_flush(s);
}

// The answer to a request could not be submitted: the stream is reset, and its StreamClose follows.
static void response_failed(session_t *s, pipe_t *p, int rv) {
  p->reset = 1;
  p->outcome = OUT_STREAM_RESET;
  pipe_set_error(p, nghttp2_strerror(rv));
  nghttp2_submit_rst_stream(s->h2, NGHTTP2_FLAG_NONE, p->id, NGHTTP2_INTERNAL_ERROR);
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
  int rv = nghttp2_submit_response(s->h2, p->id, nv, 1, NULL);
  if (rv != 0) return response_failed(s, p, rv);
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
  int rv = nghttp2_submit_response(s->h2, p->id, nv, 1, &provider);
  if (rv != 0) {
    p->fd = -1;
    return response_failed(s, p, rv);
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
  if (p == NULL || p->closed == NULL) return;
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
