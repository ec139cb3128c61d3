// A tunnel: one HTTP/2 stream spliced with one TCP socket, both directions
// with backpressure, half-close and resets carried across.

#include "hbone.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

// A pipe for a stream, on the session's list; `closed` (its StreamClose) is its own from here on.
pipe_t *new_pipe(session_t *s, event_t *closed) {
  pipe_t *p = calloc(1, sizeof(*p));
  if (p == NULL) return NULL;
  p->s = s;
  p->fd = -1;
  p->closed = closed;
  p->next = s->pipes;
  s->pipes = p;
  atomic_fetch_add(&s->pipe_count, 1);
  return p;
}

// The pipe JavaScript calls `handle`.
pipe_t *find_pipe(session_t *s, int32_t handle) {
  for (pipe_t *p = s->pipes; p != NULL; p = p->next)
    if (p->handle == handle) return p;
  return NULL;
}

void pipe_update_poll(pipe_t *p) {
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
  if (p->closed != NULL) free_event(p->closed);
  free(p);
}

// Removes a finished pipe: its socket closed (with RST after a reset), StreamClose queued.
void pipe_finish(pipe_t *p) {
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
    if (p->reset && !p->fin_sent) {
      close_fd_reset(p->fd);
    } else {
      // An orderly end: the kernel sends what is still queued, then FIN.
      struct linger orderly = {0, 0};
      if (p->splicing) setsockopt(p->fd, SOL_SOCKET, SO_LINGER, &orderly, sizeof(orderly));
      close(p->fd);
    }
    p->fd = -1;
  }
  event_t *e = p->closed;
  if (e != NULL) {
    p->closed = NULL;
    e->a = p->outcome;
    e->b = (int64_t)p->from_fd;
    e->c = (int64_t)p->to_fd;
    e->text = p->error;
    p->error = NULL;
    e->d = p->status;
    e->fd = handed_back;
    push_event(s, e);
  } else if (handed_back >= 0) {
    close_fd_reset(handed_back);
  }
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
pipe_t *pipe_hold(pipe_t *p) {
  p->in_use = 1;
  return p;
}

// Ends a pipe_hold: frees the pipe if it finished meanwhile. Returns whether it is still alive.
int pipe_release(pipe_t *p) {
  p->in_use = 0;
  if (!p->finished) return 1;
  pipe_free(p);
  return 0;
}

// Both directions done cleanly (or a reset already decided): finishes when nothing is pending.
void pipe_check_done(pipe_t *p) {
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

void pipe_set_error(pipe_t *p, const char *message) {
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
void pipe_flush_down(pipe_t *p) {
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
    p->last_moved = uv_now(&s->worker->loop);
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
      p->last_moved = uv_now(&s->worker->loop);
    }
    if ((size_t)n < want) break;
  }
  if (bq_len(&p->up) == 0 && !p->fd_eof) bq_free(&p->up);
  if (p->deferred && (bq_len(&p->up) > 0 || p->fd_eof) && !p->stream_closed) {
    p->deferred = 0;
    nghttp2_session_resume_data(s->h2, p->id);
  }
}

void pipe_poll_cb(uv_poll_t *handle, int status, int events) {
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
void pipe_start(pipe_t *p) {
  p->splicing = 1;
  p->last_moved = uv_now(&p->s->worker->loop);
  // A proxy must not hold back a small write its peer already sent.
  int one = 1;
  setsockopt(p->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // Should this process die (SIGKILL, OOM), the kernel closes the socket: with
  // SO_LINGER 0 it resets it, so neither end mistakes a cut transfer for a
  // complete one (a FIN). pipe_finish turns it off for an orderly end.
  struct linger abortive = {1, 0};
  setsockopt(p->fd, SOL_SOCKET, SO_LINGER, &abortive, sizeof(abortive));
  p->poll = new_poll(&p->s->worker->loop, NULL, p->fd, p);
  if (p->poll == NULL) {
    pipe_socket_failed(p, ENOMEM);
    return;
  }
  // Data that arrived before the socket was attached.
  pipe_flush_down(p);
  pipe_update_poll(p);
}

// Writes what this read pass received to each socket.
void flush_dirty(session_t *s) {
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

void remote_ended(pipe_t *p) {
  p->remote_ended = 1;
  if (p->splicing && p->fd >= 0 && !p->reset) {
    pipe_flush_down(p);
    pipe_update_poll(p);
  }
}

// Resets, both ways, a tunnel that moved no byte for the idle timeout, or whose
// peer took none of what waits for it for the stall timeout. What a stalled
// tunnel holds meanwhile is bounded: UP_LIMIT one way, the stream window the other.
void pipe_check_timeouts(session_t *s, uint64_t now) {
  char message[96];
  pipe_t *next;
  for (pipe_t *p = s->pipes; p != NULL; p = next) {
    next = p->next;
    if (!p->splicing || p->reset || p->finished) continue;
    int waiting = bq_len(&p->up) > 0 || bq_len(&p->down) > 0;
    int32_t limit = waiting ? s->settings[5] : s->settings[4];
    if (limit <= 0 || now - p->last_moved < (uint64_t)limit) continue;
    snprintf(message, sizeof(message), waiting ? "the tunnel's peer took no byte for %d ms (tunnelStallTimeout)" : "the tunnel moved no byte for %d ms (tunnelIdleTimeout)", limit);
    pipe_hold(p);
    p->reset = 1;
    if (p->outcome == OUT_CLOSED) p->outcome = OUT_STREAM_RESET;
    pipe_set_error(p, message);
    if (!p->stream_closed && s->h2 != NULL) nghttp2_submit_rst_stream(s->h2, NGHTTP2_FLAG_NONE, p->id, NGHTTP2_CONNECT_ERROR);
    set_poll(p->poll, &p->events, 0, pipe_poll_cb);
    pipe_check_done(p);
    pipe_release(p);
  }
}
