// The functions JavaScript calls (src/hbone/native.ts describes each), the
// checks made when the addon is loaded, and the module's initialisation.

#include "hbone.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

// Tags of the externals JavaScript holds, so that one kind is never taken for another.
const napi_type_tag SESSION_TAG = {0x616d6269656e746bULL, 0x68626f6e65736573ULL};
const napi_type_tag CONTEXT_TAG = {0x616d6269656e746bULL, 0x68626f6e65637478ULL};
const napi_type_tag ACCEPTOR_TAG = {0x616d6269656e746bULL, 0x68626f6e65616363ULL};

// An external of the given kind, or NULL with a TypeError pending.
void *tagged_external(napi_env env, napi_value value, const napi_type_tag *tag, const char *what) {
  napi_valuetype type;
  bool tagged = false;
  void *data = NULL;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_external || napi_check_object_type_tag(env, value, tag, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, value, &data) != napi_ok) {
    char message[80];
    snprintf(message, sizeof(message), "expected %s", what);
    throw_type_error(env, message);
    return NULL;
  }
  return data;
}

static session_t *get_session(napi_env env, napi_value value) { return tagged_external(env, value, &SESSION_TAG, "a native HBONE session"); }

// The session of a function whose only argument is one; NULL with an exception pending otherwise.
static session_t *session_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) {
    throw_type_error(env, "expected a native HBONE session");
    return NULL;
  }
  return get_session(env, argv[0]);
}

// A descriptor argument (an integer >= 0); false with an exception pending otherwise.
static bool fd_arg(napi_env env, napi_callback_info info, const char *usage, int32_t *fd) {
  size_t argc = 1;
  napi_value argv[1];
  if (napi_checked(napi_get_cb_info(env, info, &argc, argv, NULL, NULL), "napi_get_cb_info") != napi_ok) {
    throw_napi_failure(env, "napi_get_cb_info");
    return false;
  }
  if (argc < 1 || napi_get_value_int32(env, argv[0], fd) != napi_ok || *fd < 0) {
    throw_type_error(env, usage);
    return false;
  }
  return true;
}

static napi_value js_bool(napi_env env, bool value) {
  napi_value result;
  NAPI_CALL(env, napi_get_boolean(env, value, &result));
  return result;
}

static napi_value js_int(napi_env env, int32_t value) {
  napi_value result;
  NAPI_CALL(env, napi_create_int32(env, value, &result));
  return result;
}

// What a session is allocated with, so that nothing it owes JavaScript or
// JavaScript owes it can be lost to a failed allocation later: its Close
// (with room for the reason), the command carrying the verdict on its peer,
// and the one carrying destroy().
static session_t *alloc_session(void) {
  session_t *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->closed = new_event(EV_CLOSE, 0);
  s->verdict = new_command(s, CMD_VERDICT);
  s->destroy = new_command(s, CMD_DESTROY);
  char *reason = s->closed != NULL ? calloc(1, CLOSE_REASON_MAX) : NULL;
  if (reason == NULL || s->verdict == NULL || s->destroy == NULL) {
    free(reason);
    if (s->closed != NULL) free_event(s->closed);
    if (s->verdict != NULL) free_command(s->verdict);
    if (s->destroy != NULL) free_command(s->destroy);
    free(s);
    return NULL;
  }
  s->closed->text = reason;
  return s;
}

// clientSession / serverSession(context, fd, settings[6], callback). The fd
// is the session's once this returned; when it throws, it is still the caller's.
static napi_value new_session(napi_env env, napi_callback_info info, int server) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  int32_t settings[6];
  napi_valuetype type;
  if (argc < 4) return throw_type_error(env, "session(context, fd, settings, callback)");
  SSL_CTX *ctx = tagged_external(env, argv[0], &CONTEXT_TAG, "a TLS context from createContext");
  if (ctx == NULL) return NULL;
  if (napi_get_value_int32(env, argv[1], &fd) != napi_ok || napi_typeof(env, argv[3], &type) != napi_ok || type != napi_function) {
    return throw_type_error(env, "session(context, fd, settings, callback)");
  }
  // The tunnel timeouts may be left out (none): a client's sessions have none.
  uint32_t count = 0;
  if (napi_get_array_length(env, argv[2], &count) != napi_ok || (count != 4 && count != 6)) count = 0;
  memset(settings, 0, sizeof(settings));
  for (uint32_t i = 0; i < count || count == 0; i++) {
    napi_value element;
    if (count == 0 || napi_get_element(env, argv[2], i, &element) != napi_ok || napi_get_value_int32(env, element, &settings[i]) != napi_ok || settings[i] < 0) {
      return throw_type_error(env, "settings must be [streamWindow, connectionWindow, maxFrameSize, maxConcurrentStreams] or those and [tunnelIdleMs, tunnelStallMs]");
    }
  }
  instance_t *instance;
  NAPI_CALL(env, napi_get_instance_data(env, (void **)&instance));
  session_t *s = alloc_session();
  if (s == NULL) return throw_oom(env);
  command_t *start = new_command(s, CMD_START);
  if (start == NULL) {
    atomic_init(&s->refs, 1);
    session_unref(s);
    return throw_oom(env);
  }
  // JavaScript's handle; the thread's reference is added once the session is started.
  atomic_init(&s->refs, 1);
  atomic_init(&s->pipe_count, 0);
  s->server = server;
  s->fd = -1;
  s->next_handle = 1;
  s->instance = instance;
  memcpy(s->settings, settings, sizeof(settings));
  const char *failed = NULL;
  napi_value name, handle;
  NAPI_TRY(failed, napi_create_string_utf8(env, "ambientkit.hbone", NAPI_AUTO_LENGTH, &name));
  NAPI_TRY(failed, napi_async_init(env, NULL, name, &s->async));
  NAPI_TRY(failed, napi_create_reference(env, argv[3], 1, &s->callback));
  NAPI_TRY(failed, napi_create_external(env, s, session_finalize, NULL, &handle));
  if (failed != NULL) {
    // No external, so no finalizer: the session goes now.
    if (s->callback != NULL) NAPI_CLEANUP(napi_delete_reference(env, s->callback));
    if (s->async != NULL) NAPI_CLEANUP(napi_async_destroy(env, s->async));
    free_command(start);
    session_unref(s);
    throw_napi_failure(env, failed);
    return NULL;
  }
  // From here on the external's finalizer releases JavaScript's reference.
  NAPI_TRY(failed, napi_type_tag_object(env, handle, &SESSION_TAG));
  NAPI_TRY(failed, napi_create_reference(env, handle, 1, &s->self));
  worker_t *worker = failed == NULL ? pick_worker(server) : NULL;
  if (worker == NULL) {
    free_command(start);
    if (s->self != NULL) NAPI_CLEANUP(napi_delete_reference(env, s->self));
    s->self = NULL;
    if (failed != NULL) throw_napi_failure(env, failed);
    else throw_error(env, NULL, "cannot start the HBONE data-path threads");
    return NULL;
  }
  s->worker = worker;
  s->fd = fd;
  atomic_fetch_add(&s->refs, 1);  // the thread's, until it lets go
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
  post_command(start);
  return handle;
}

static napi_value client_session(napi_env env, napi_callback_info info) { return new_session(env, info, 0); }
static napi_value server_session(napi_env env, napi_callback_info info) { return new_session(env, info, 1); }

// open(session, fd, authority, headers[]) → the tunnel's handle, or -1 (fd reset) when the session takes no more streams.
static napi_value js_open(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) return throw_type_error(env, "open(session, fd, authority, [name, value, ...])");
  session_t *s = get_session(env, argv[0]);
  if (s == NULL) return NULL;
  int32_t fd;
  uint32_t count = 0;
  napi_valuetype type;
  if (napi_get_value_int32(env, argv[1], &fd) != napi_ok || napi_typeof(env, argv[2], &type) != napi_ok || type != napi_string ||
      napi_get_array_length(env, argv[3], &count) != napi_ok || count % 2 != 0 || count > MAX_HEADERS * 2) {
    return throw_type_error(env, "open(session, fd, authority, [name, value, ...])");
  }
  for (uint32_t i = 0; i < count; i++) {
    napi_value element;
    NAPI_CALL(env, napi_get_element(env, argv[3], i, &element));
    NAPI_CALL(env, napi_typeof(env, element, &type));
    if (type != napi_string) return throw_type_error(env, "open: headers must be [name, value, ...] strings");
  }
  if (s->server || s->js_closed || s->js_goaway) {
    close_fd_reset(fd);
    return js_int(env, -1);
  }
  int32_t handle = s->next_handle;
  command_t *c = new_command(s, CMD_OPEN);
  if (c == NULL) return throw_oom(env);
  // Whatever becomes of the tunnel, JavaScript hears of its end by this StreamClose.
  c->closed = new_event(EV_STREAM_CLOSE, handle);
  c->text = get_string(env, argv[2]);
  c->headers = count > 0 ? calloc(count, sizeof(char *)) : NULL;
  bool complete = c->closed != NULL && c->text != NULL && (count == 0 || c->headers != NULL);
  for (uint32_t i = 0; complete && i < count; i++) {
    napi_value element;
    if (napi_checked(napi_get_element(env, argv[3], i, &element), "napi_get_element") != napi_ok) {
      free_command(c);
      throw_napi_failure(env, "napi_get_element");
      return NULL;
    }
    complete = (c->headers[c->header_count++] = get_string(env, element)) != NULL;
  }
  if (!complete) {
    free_command(c);
    return throw_oom(env);
  }
  napi_value result;
  if (napi_checked(napi_create_int32(env, handle, &result), "napi_create_int32") != napi_ok) {
    free_command(c);
    throw_napi_failure(env, "napi_create_int32");
    return NULL;
  }
  s->next_handle += 2;
  c->fd = fd;
  c->stream = handle;
  post_command(c);  // c belongs to the session's thread from here on
  return result;
}

static napi_value stream_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, session_t **s, int32_t *id) {
  size_t argc = want;
  *s = NULL;
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < want) return throw_type_error(env, "expected (session, stream, ...)");
  *s = get_session(env, argv[0]);
  if (*s == NULL) return NULL;
  if (napi_get_value_int32(env, argv[1], id) != napi_ok) {
    *s = NULL;
    return throw_type_error(env, "expected (session, stream, ...)");
  }
  return argv[0];
}

// A command to the session's thread on behalf of a JavaScript call: false when the session is
// closed, and an exception (out of memory) when it cannot be sent.
static napi_value command_result(napi_env env, session_t *s, int type, int32_t stream, int32_t number) {
  if (s->js_closed) return js_bool(env, false);
  if (!send_command(s, type, stream, number, NULL)) return throw_oom(env);
  return js_bool(env, true);
}

// respond(session, stream, status): a final answer without a tunnel.
static napi_value js_respond(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  session_t *s;
  int32_t id, status;
  if (stream_args(env, info, 3, argv, &s, &id) == NULL || s == NULL) return NULL;
  if (napi_get_value_int32(env, argv[2], &status) != napi_ok || status < 200 || status > 599) return throw_range_error(env, NULL, "status must be 200-599");
  return command_result(env, s, CMD_RESPOND, id, status);
}

// splice(session, stream, fd): 200, then bytes flow between the stream and fd.
static napi_value js_splice(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  session_t *s;
  int32_t id, fd;
  if (stream_args(env, info, 3, argv, &s, &id) == NULL || s == NULL) return NULL;
  if (napi_get_value_int32(env, argv[2], &fd) != napi_ok) return throw_type_error(env, "splice(session, stream, fd)");
  if (s->js_closed) {
    close(fd);
    return js_bool(env, false);
  }
  command_t *c = new_command(s, CMD_SPLICE);
  if (c == NULL) {
    close(fd);
    return throw_oom(env);
  }
  c->stream = id;
  c->fd = fd;
  post_command(c);
  return js_bool(env, true);
}

// resetStream(session, stream, code): a code that is not a uint32 resets with CONNECT_ERROR.
static napi_value js_reset_stream(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  session_t *s;
  int32_t id;
  uint32_t code;
  if (stream_args(env, info, 3, argv, &s, &id) == NULL || s == NULL) return NULL;
  if (napi_get_value_uint32(env, argv[2], &code) != napi_ok) code = NGHTTP2_CONNECT_ERROR;
  return command_result(env, s, CMD_RESET, id, (int32_t)code);
}

static napi_value js_ping(napi_env env, napi_callback_info info) {
  session_t *s = session_arg(env, info);
  if (s != NULL && !s->js_closed && !send_command(s, CMD_PING, 0, 0, NULL)) return throw_oom(env);
  return NULL;
}

static napi_value js_shutdown(napi_env env, napi_callback_info info) {
  session_t *s = session_arg(env, info);
  if (s == NULL || s->js_closed || s->js_goaway) return NULL;
  if (!send_command(s, CMD_SHUTDOWN, 0, 0, NULL)) return throw_oom(env);
  s->js_goaway = 1;
  return NULL;
}

// destroy(session, reason): sent with the command allocated with the session, so it cannot fail.
static napi_value js_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return throw_type_error(env, "destroy(session, reason)");
  session_t *s = get_session(env, argv[0]);
  if (s == NULL) return NULL;
  napi_valuetype type = napi_undefined;
  if (argc > 1) NAPI_CALL(env, napi_typeof(env, argv[1], &type));
  if (!s->js_closed) {
    s->js_closed = 1;
    // A reason that cannot be copied (out of memory) becomes "destroyed".
    session_post_destroy(s, type == napi_string ? get_string(env, argv[1]) : NULL);
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
  return js_int(env, worker_threads());
}

static napi_value js_dup_fd(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, "dupFd(fd)", &fd)) return NULL;
  int copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0 || fcntl(copy, F_SETFL, fcntl(copy, F_GETFL) | O_NONBLOCK) < 0) {
    if (copy >= 0) close(copy);
    return throw_error(env, NULL, strerror(errno));
  }
  napi_value result;
  if (napi_checked(napi_create_int32(env, copy, &result), "napi_create_int32") != napi_ok) {
    close(copy);
    throw_napi_failure(env, "napi_create_int32");
    return NULL;
  }
  return result;
}

// resetFd(fd): closes a connected socket with RST (SO_LINGER 0), as a refused or reset connection is closed.
static napi_value js_reset_fd(napi_env env, napi_callback_info info) {
  int32_t fd;
  if (!fd_arg(env, info, "resetFd(fd)", &fd)) return NULL;
  close_fd_reset(fd);
  return NULL;
}

// ---- load-time checks --------------------------------------------------------------------------

// The oldest nghttp2, OpenSSL and libuv this build works with: the major and
// minor version of the headers it was compiled against (test builds may ask
// for more). The addon calls into the copies Node links, whichever version
// they are; an older minor may lack what the headers declared, and another
// major is another ABI.
#ifndef HBONE_NGHTTP2_MIN
#define HBONE_NGHTTP2_MIN (NGHTTP2_VERSION_NUM & 0xffff00)
#endif
#ifndef HBONE_OPENSSL_MIN
#define HBONE_OPENSSL_MIN (OPENSSL_VERSION_NUMBER & 0xfff00000UL)
#endif
#ifndef HBONE_UV_MIN
#define HBONE_UV_MIN (UV_VERSION_HEX & 0xffff00)
#endif

// The nghttp2 Node links, as 0xMMmmpp from process.versions.nghttp2 (Node does not export
// nghttp2_version()); 0 when it cannot be read.
static unsigned long node_nghttp2_version(napi_env env, char *text, size_t size) {
  napi_value global, process, versions, value;
  size_t len;
  unsigned major, minor, patch;
  if (napi_checked(napi_get_global(env, &global), "napi_get_global") != napi_ok ||
      napi_checked(napi_get_named_property(env, global, "process", &process), "napi_get_named_property") != napi_ok ||
      napi_checked(napi_get_named_property(env, process, "versions", &versions), "napi_get_named_property") != napi_ok ||
      napi_checked(napi_get_named_property(env, versions, "nghttp2", &value), "napi_get_named_property") != napi_ok ||
      napi_checked(napi_get_value_string_utf8(env, value, text, size, &len), "napi_get_value_string_utf8") != napi_ok ||
      sscanf(text, "%u.%u.%u", &major, &minor, &patch) != 3) {
    snprintf(text, size, "unknown");
    return 0;
  }
  return (major << 16) | (minor << 8) | patch;
}

// NULL when the libraries Node links fit, else why not (in `buffer`).
static const char *library_mismatch(napi_env env, char *buffer, size_t size) {
  char have_text[32], need_text[32];
  unsigned long nghttp2 = node_nghttp2_version(env, have_text, sizeof(have_text));
  unsigned long openssl = OpenSSL_version_num();
  unsigned long uv = uv_version();
  const char *what = NULL;
  if ((nghttp2 >> 16) != ((unsigned long)HBONE_NGHTTP2_MIN >> 16) || nghttp2 < (unsigned long)HBONE_NGHTTP2_MIN) {
    what = "nghttp2";
    snprintf(need_text, sizeof(need_text), "%lu.%lu", (unsigned long)HBONE_NGHTTP2_MIN >> 16, ((unsigned long)HBONE_NGHTTP2_MIN >> 8) & 0xff);
  } else if ((openssl >> 28) != (HBONE_OPENSSL_MIN >> 28) || openssl < HBONE_OPENSSL_MIN) {
    what = "OpenSSL";
    snprintf(have_text, sizeof(have_text), "%lu.%lu.%lu", openssl >> 28, (openssl >> 20) & 0xff, (openssl >> 4) & 0xff);
    snprintf(need_text, sizeof(need_text), "%lu.%lu", HBONE_OPENSSL_MIN >> 28, (HBONE_OPENSSL_MIN >> 20) & 0xff);
  } else if ((uv >> 16) != ((unsigned long)HBONE_UV_MIN >> 16) || uv < (unsigned long)HBONE_UV_MIN) {
    what = "libuv";
    snprintf(have_text, sizeof(have_text), "%s", uv_version_string());
    snprintf(need_text, sizeof(need_text), "%lu.%lu", (unsigned long)HBONE_UV_MIN >> 16, ((unsigned long)HBONE_UV_MIN >> 8) & 0xff);
  }
  if (what == NULL) return NULL;
  snprintf(buffer, size, "ambient_hbone was built for %s %s (that major version, this minor or later), but this Node links %s %s", what, need_text, what,
           have_text);
  return buffer;
}

#ifdef HBONE_TEST_MISSING_SYMBOL
// Test builds only: a symbol nothing defines, so that loading must fail (linked with -z now).
extern void ambientkit_symbol_node_does_not_export(void);
static napi_value js_missing(napi_env env, napi_callback_info info) {
  (void)env, (void)info;
  ambientkit_symbol_node_does_not_export();
  return NULL;
}
#endif

// constants: the numbers JavaScript and the addon share (NativeEvent, NativeOutcome, the most
// extra headers open() takes). The loader refuses an addon whose numbers differ from its own.
static napi_status constants_object(napi_env env, napi_value *result) {
  static const struct {
    const char *group, *name;
    int value;
  } table[] = {
      {"events", "Handshake", EV_HANDSHAKE},
      {"events", "Request", EV_REQUEST},
      {"events", "Response", EV_RESPONSE},
      {"events", "StreamClose", EV_STREAM_CLOSE},
      {"events", "Close", EV_CLOSE},
      {"events", "GoAway", EV_GOAWAY},
      {"events", "PingAck", EV_PING_ACK},
      {"events", "Settings", EV_SETTINGS},
      {"outcomes", "Closed", OUT_CLOSED},
      {"outcomes", "SocketReset", OUT_SOCKET_RESET},
      {"outcomes", "StreamReset", OUT_STREAM_RESET},
      {"outcomes", "Rejected", OUT_REJECTED},
      {"outcomes", "Refused", OUT_REFUSED},
  };
  napi_status status;
  napi_value events, outcomes, value;
  if ((status = napi_create_object(env, result)) != napi_ok || (status = napi_create_object(env, &events)) != napi_ok ||
      (status = napi_create_object(env, &outcomes)) != napi_ok || (status = napi_set_named_property(env, *result, "events", events)) != napi_ok ||
      (status = napi_set_named_property(env, *result, "outcomes", outcomes)) != napi_ok) {
    return status;
  }
  for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
    if ((status = napi_create_int32(env, table[i].value, &value)) != napi_ok ||
        (status = napi_set_named_property(env, table[i].group[0] == 'e' ? events : outcomes, table[i].name, value)) != napi_ok) {
      return status;
    }
  }
  if ((status = napi_create_int32(env, MAX_HEADERS, &value)) != napi_ok) return status;
  return napi_set_named_property(env, *result, "maxHeaders", value);
}

static void instance_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  instance_t *instance = data;
  uv_mutex_destroy(&instance->lock);
  free(instance);
}

// The environment is shutting down (a worker thread ends, or the process
// exits normally): every session still open is destroyed on
// its thread, and the environment is told once the last has let go and our
// last handle on its loop has closed.
static void env_cleanup(napi_async_cleanup_hook_handle handle, void *data) {
  instance_t *instance = data;
  instance->cleanup = handle;
  instance->shutting_down = 1;
  uv_mutex_lock(&instance->lock);
  for (session_t *s = instance->sessions; s != NULL; s = s->live_next) {
    s->js_closed = 1;
    session_post_destroy(s, dup_text("the environment is shutting down"));
  }
  uv_mutex_unlock(&instance->lock);
  finish_cleanup(instance);
}

NAPI_MODULE_INIT() {
  char message[240];
  if (library_mismatch(env, message, sizeof(message)) != NULL) return throw_error(env, NULL, message);
  if (threads_wanted() == 0) {
    snprintf(message, sizeof(message), "AMBIENTKIT_HBONE_THREADS must be a whole number from 1 to 64 (the HBONE data-path threads), got '%.40s'",
             getenv("AMBIENTKIT_HBONE_THREADS"));
    return throw_range_error(env, "ERR_AMBIENT_HBONE_THREADS", message);
  }
  uv_loop_t *loop;
  NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
  instance_t *instance = calloc(1, sizeof(*instance));
  if (instance == NULL) return throw_oom(env);
  if (uv_mutex_init(&instance->lock) != 0 || uv_async_init(loop, &instance->inbox_wake, inbox_cb) != 0) {
    free(instance);
    return throw_error(env, NULL, "ambient_hbone: cannot set up its environment");
  }
  instance->env = env;
  instance->inbox_wake.data = instance;
  uv_unref((uv_handle_t *)&instance->inbox_wake);  // referenced only while sessions are live
  instance->handles = 1;
  // From here the instance belongs to the environment, which frees it.
  NAPI_CALL(env, napi_set_instance_data(env, instance, instance_finalize, NULL));
  NAPI_CALL(env, napi_add_async_cleanup_hook(env, env_cleanup, instance, NULL));
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
#ifdef HBONE_FAULTS
      {"injectFaults", NULL, js_inject_faults, NULL, NULL, NULL, napi_enumerable, NULL},
#endif
#ifdef HBONE_TEST_MISSING_SYMBOL
      {"missing", NULL, js_missing, NULL, NULL, NULL, napi_enumerable, NULL},
#endif
  };
  NAPI_CALL(env, napi_define_properties(env, exports, sizeof(functions) / sizeof(functions[0]), functions));
  napi_value constants;
  NAPI_CALL(env, constants_object(env, &constants));
  NAPI_CALL(env, napi_set_named_property(env, exports, "constants", constants));
  return exports;
}
