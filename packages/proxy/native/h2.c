// nghttp2: the callbacks of every session, its settings, and GOAWAY.

#include "hbone.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Fails the nghttp2 call on the stack; the session then fails with `why` (session_read, session_flush).
static int callback_failed(session_t *s, const char *why) {
  if (s->failure == NULL) s->failure = why;
  return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static const char OUT_OF_MEMORY[] = "out of memory";

static ssize_t on_send(nghttp2_session *h2, const uint8_t *data, size_t length, int flags, void *user) {
  (void)h2, (void)flags;
  session_t *s = user;
  if (bq_len(&s->tls_out) >= TLS_OUT_LIMIT) return NGHTTP2_ERR_WOULDBLOCK;
  if (bq_append(&s->tls_out, data, length) != 0) return callback_failed(s, OUT_OF_MEMORY);
  return (ssize_t)length;
}

// DATA frames without a copy through nghttp2's buffer: header and payload go straight to the TLS queue.
static int on_send_data(nghttp2_session *h2, nghttp2_frame *frame, const uint8_t *framehd, size_t length, nghttp2_data_source *source, void *user) {
  (void)h2;
  session_t *s = user;
  pipe_t *p = source->ptr;
  if (bq_len(&s->tls_out) >= TLS_OUT_LIMIT) return NGHTTP2_ERR_WOULDBLOCK;
  if (bq_reserve(&s->tls_out, 9 + length) != 0) return callback_failed(s, OUT_OF_MEMORY);
  memcpy(s->tls_out.data + s->tls_out.end, framehd, 9);
  memcpy(s->tls_out.data + s->tls_out.end + 9, p->up.data + p->up.start, length);
  s->tls_out.end += 9 + length;
  bq_consume(&p->up, length);
  if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) p->eof_sent = 1;
  pipe_update_poll(p);
  return 0;
}

ssize_t on_read_data(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t length, uint32_t *flags, nghttp2_data_source *source, void *user) {
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
  // Its StreamClose comes with it: once the stream exists, JavaScript hears of its end.
  event_t *closed = new_event(EV_STREAM_CLOSE, frame->hd.stream_id);
  pipe_t *p = closed != NULL ? new_pipe(s, closed) : NULL;
  if (p == NULL) {
    free(closed);
    return callback_failed(s, OUT_OF_MEMORY);
  }
  p->id = p->handle = frame->hd.stream_id;
  nghttp2_session_set_stream_user_data(h2, p->id, p);
  return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *user) {
  (void)flags;
  session_t *s = user;
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  pipe_t *p = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (p == NULL) return 0;
  if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
    p->status = 0;
    for (size_t i = 0; i < valuelen && i < 3; i++) p->status = p->status * 10 + (value[i] - '0');
  } else if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
    free(p->method);
    if ((p->method = dup_bytes(value, valuelen)) == NULL) return callback_failed(s, OUT_OF_MEMORY);
  } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
    free(p->authority);
    if ((p->authority = dup_bytes(value, valuelen)) == NULL) return callback_failed(s, OUT_OF_MEMORY);
  } else if (namelen > 0 && name[0] != ':' && p->header_count < MAX_HEADERS * 2) {
    if (p->headers == NULL && (p->headers = calloc(MAX_HEADERS * 2, sizeof(char *))) == NULL) return callback_failed(s, OUT_OF_MEMORY);
    char *copied_name = dup_bytes(name, namelen), *copied_value = dup_bytes(value, valuelen);
    if (copied_name == NULL || copied_value == NULL) {
      free(copied_name);
      free(copied_value);
      return callback_failed(s, OUT_OF_MEMORY);
    }
    p->headers[p->header_count++] = copied_name;
    p->headers[p->header_count++] = copied_value;
  }
  return 0;
}

// A field nghttp2 finds invalid (RFC 9113 §8.2.1: a name with an uppercase letter or a space,
// a value with CR, LF or NUL) makes the request or response malformed (§8.1.1). Without this
// callback nghttp2 drops the field and serves the rest; failing it resets the stream with
// PROTOCOL_ERROR instead, as the RFC requires.
static int on_invalid_header(nghttp2_session *h2, const nghttp2_frame *frame, const uint8_t *name, size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *user) {
  (void)h2;
  (void)frame;
  (void)name;
  (void)namelen;
  (void)value;
  (void)valuelen;
  (void)flags;
  (void)user;
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

// An event that is not the end of something: when it cannot be queued, the session fails
// (its streams' StreamClose and its Close cannot be lost: they were allocated with them).
static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *frame, void *user) {
  session_t *s = user;
  event_t *e;
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    s->goaway_received = 1;
    if (queue_event(s, EV_GOAWAY, frame->goaway.last_stream_id) == NULL) return callback_failed(s, OUT_OF_MEMORY);
    return 0;
  }
  if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK)) {
    if (queue_event(s, EV_PING_ACK, 0) == NULL) return callback_failed(s, OUT_OF_MEMORY);
    return 0;
  }
  if (frame->hd.type == NGHTTP2_SETTINGS && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
    // nghttp2 applied them before this callback: what the peer allows now (a client opens no more streams than this).
    if ((e = queue_event(s, EV_SETTINGS, 0)) == NULL) return callback_failed(s, OUT_OF_MEMORY);
    e->a = nghttp2_session_get_remote_settings(h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  pipe_t *p = nghttp2_session_get_stream_user_data(h2, frame->hd.stream_id);
  if (p == NULL) return 0;
  if (frame->hd.type == NGHTTP2_HEADERS) {
    if (s->server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
      if ((e = queue_event(s, EV_REQUEST, p->id)) == NULL) return callback_failed(s, OUT_OF_MEMORY);
      e->text = p->method;
      e->text2 = p->authority;
      p->method = p->authority = NULL;
      // The event takes the headers over.
      e->headers = p->headers;
      e->header_count = p->header_count;
      p->headers = NULL;
      p->header_count = 0;
    } else if (!s->server && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
      // 1xx responses are interim; CONNECT never gets one that matters.
      if (p->status >= 100 && p->status < 200) return 0;
      if ((e = queue_event(s, EV_RESPONSE, p->handle)) == NULL) return callback_failed(s, OUT_OF_MEMORY);
      e->a = p->status;
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
  if (bq_append(&p->down, data, len) != 0) return callback_failed(s, OUT_OF_MEMORY);
  if (!p->dirty && p->splicing) {
    p->dirty = 1;
    p->dirty_next = s->dirty;
    s->dirty = p;
  }
  return 0;
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

static nghttp2_session_callbacks *cbs;

// Built once for the process: environments on other threads share it, read-only.
static void make_callbacks(void) {
  if (nghttp2_session_callbacks_new(&cbs) == 0) {
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_invalid_header_callback(cbs, on_invalid_header);
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

int session_start_h2(session_t *s) {
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
void submit_goaway(session_t *s) {
  s->goaway_sent = 1;
  nghttp2_submit_goaway(s->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->h2), NGHTTP2_NO_ERROR, NULL, 0);
}
