// Events: queued by a session on its thread, moved to its environment's
// inbox, and delivered to the session's JavaScript callback on Node's loop.

#include "hbone.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// An event not yet queued (fd -1): a terminal one is allocated this way with what it ends.
event_t *new_event(int type, int32_t stream) {
  event_t *e = calloc(1, sizeof(*e));
  if (e == NULL) return NULL;
  e->type = type;
  e->stream = stream;
  e->fd = -1;
  return e;
}

void push_event(session_t *s, event_t *e) {
  if (s->events_tail) s->events_tail->next = e;
  else s->events_head = e;
  s->events_tail = e;
}

// Allocates and queues an event that ends nothing; NULL when memory ran out,
// and the caller then fails the session (whose terminal events cannot be lost).
event_t *queue_event(session_t *s, int type, int32_t stream) {
  event_t *e = fault_event_alloc() ? NULL : new_event(type, stream);
  if (e != NULL) push_event(s, e);
  return e;
}

void free_event(event_t *e) {
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
void session_unref(session_t *s) {
  if (atomic_fetch_sub(&s->refs, 1) != 1) return;
  while (s->events_head != NULL) {
    event_t *e = s->events_head;
    s->events_head = e->next;
    free_event(e);
  }
  if (s->closed != NULL) free_event(s->closed);
  if (s->verdict != NULL) free_command(s->verdict);
  if (s->destroy != NULL) free_command(s->destroy);
  free(s);
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
void session_settle(session_t *s) {
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

// The event's arguments after its number; `failed` names the first N-API call that failed.
static size_t event_arguments(napi_env env, event_t *e, napi_value *argv, const char **failed) {
  switch (e->type) {
    case EV_HANDSHAKE:
      NAPI_TRY(*failed, napi_create_array_with_length(env, (size_t)e->header_count, &argv[0]));
      for (int i = 0; i < e->header_count; i++) {
        napi_value buffer;
        NAPI_TRY(*failed, napi_create_buffer_copy(env, e->lengths[i], e->headers[i], NULL, &buffer));
        NAPI_TRY(*failed, napi_set_element(env, argv[0], (uint32_t)i, buffer));
      }
      return 1;
    case EV_REQUEST:
      NAPI_TRY(*failed, make_number(env, e->stream, &argv[0]));
      NAPI_TRY(*failed, make_string(env, e->text ? e->text : "", &argv[1]));
      NAPI_TRY(*failed, make_string(env, e->text2 ? e->text2 : "", &argv[2]));
      NAPI_TRY(*failed, napi_create_array_with_length(env, (size_t)e->header_count, &argv[3]));
      for (int i = 0; i < e->header_count; i++) {
        napi_value header;
        NAPI_TRY(*failed, make_string(env, e->headers[i], &header));
        NAPI_TRY(*failed, napi_set_element(env, argv[3], (uint32_t)i, header));
      }
      return 4;
    case EV_RESPONSE:
      NAPI_TRY(*failed, make_number(env, e->stream, &argv[0]));
      NAPI_TRY(*failed, make_number(env, (double)e->a, &argv[1]));
      return 2;
    case EV_STREAM_CLOSE:
      NAPI_TRY(*failed, make_number(env, e->stream, &argv[0]));
      NAPI_TRY(*failed, make_number(env, (double)e->a, &argv[1]));
      NAPI_TRY(*failed, make_number(env, (double)e->b, &argv[2]));
      NAPI_TRY(*failed, make_number(env, (double)e->c, &argv[3]));
      NAPI_TRY(*failed, make_string(env, e->text, &argv[4]));
      NAPI_TRY(*failed, make_number(env, (double)e->d, &argv[5]));
      NAPI_TRY(*failed, make_number(env, e->fd, &argv[6]));
      return 7;
    case EV_CLOSE:
      NAPI_TRY(*failed, make_string(env, e->a ? e->text : NULL, &argv[0]));
      return 1;
    case EV_GOAWAY:
      NAPI_TRY(*failed, make_number(env, e->stream, &argv[0]));
      return 1;
    case EV_SETTINGS:
      NAPI_TRY(*failed, make_number(env, (double)e->a, &argv[0]));
      return 1;
    default:
      return 0;
  }
}

// An event JavaScript could not be given (an N-API call failed): nothing waits on a return
// value here, so the session is destroyed, which JavaScript hears of by its Close, and the
// failure is raised as an uncaught exception.
static void delivery_failed(napi_env env, session_t *s, const char *failed) {
  char message[240];
  snprintf(message, sizeof(message), "ambient_hbone: an event could not be delivered to JavaScript: %.150s failed", failed);
  session_post_destroy(s, dup_text(message));
  napi_value text, error;
  if (napi_checked(napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text), "napi_create_string_utf8") == napi_ok &&
      napi_checked(napi_create_error(env, NULL, text, &error), "napi_create_error") == napi_ok) {
    raise_uncaught(env, error);
  } else {
    fprintf(stderr, "%s\n", message);
  }
}

// The peer's verdict from Handshake's return value: NULL (accepted) or why it was refused.
static char *verdict_of(napi_env env, napi_status status, napi_value result) {
  if (status == napi_pending_exception) {
    napi_value exception;
    NAPI_CLEANUP(napi_get_and_clear_last_exception(env, &exception));
    return dup_text("the identity check threw");
  }
  napi_valuetype type;
  if (status != napi_ok || napi_checked(napi_typeof(env, result, &type), "napi_typeof") != napi_ok) return dup_text("ambient_hbone: the identity check could not be called");
  if (type != napi_string) return NULL;
  char text[512];
  size_t len;
  if (napi_checked(napi_get_value_string_utf8(env, result, text, sizeof(text), &len), "napi_get_value_string_utf8") != napi_ok) return dup_text("the peer's identity was refused");
  return dup_text(len == 0 ? "the peer's identity was refused" : text);
}

// Calls the session's callback with one event. Handshake's return value is
// the verdict on the peer, sent back to the session's thread (by a command
// allocated with the session: the verdict cannot be lost).
static void deliver_event(napi_env env, event_t *e) {
  session_t *s = e->s;
  const char *failed = NULL;
  napi_handle_scope scope;
  if (napi_checked(napi_open_handle_scope(env, &scope), "napi_open_handle_scope") != napi_ok) {
    if (e->type != EV_CLOSE) delivery_failed(env, s, "napi_open_handle_scope");
    return;
  }
  napi_value callback, recv, argv[8], result = NULL;
  NAPI_TRY(failed, napi_get_reference_value(env, s->callback, &callback));
  NAPI_TRY(failed, napi_get_global(env, &recv));
  NAPI_TRY(failed, make_number(env, e->type, &argv[0]));
  size_t argc = 1 + event_arguments(env, e, argv + 1, &failed);
  napi_status status = napi_generic_failure;
  if (failed == NULL) {
    if (e->type == EV_STREAM_CLOSE) e->fd = -1;  // JavaScript's now
    status = napi_checked(napi_make_callback(env, s->async, recv, callback, argc, argv, &result), "napi_make_callback");
    if (status != napi_ok && status != napi_pending_exception) failed = "napi_make_callback";
  }
  if (e->type == EV_HANDSHAKE) {
    command_t *verdict = s->verdict;
    s->verdict = NULL;
    if (verdict != NULL && !s->js_closed) {
      verdict->text = failed != NULL ? dup_text("ambient_hbone: the identity check could not be called") : verdict_of(env, status, result);
      post_command(verdict);
    } else if (verdict != NULL) {
      free_command(verdict);
    }
  } else if (failed != NULL) {
    delivery_failed(env, s, failed);
  } else if (status == napi_pending_exception) {
    // A throwing handler must not stop the data path: report it like Node reports
    // an exception in an event listener, as uncaught.
    raise_pending(env);
  }
  NAPI_CLEANUP(napi_close_handle_scope(env, scope));
}

static void inbox_closed(uv_handle_t *handle) {
  instance_t *instance = handle->data;
  if (--instance->handles == 0) NAPI_CLEANUP(napi_remove_async_cleanup_hook(instance->cleanup));
}

// An ending environment finishes once every session's thread let go of it:
// what is left in the inbox is dropped, and the inbox closes.
void finish_cleanup(instance_t *instance) {
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
void inbox_cb(uv_async_t *handle) {
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
      if (s->self != NULL) NAPI_CLEANUP(napi_delete_reference(env, s->self));
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

