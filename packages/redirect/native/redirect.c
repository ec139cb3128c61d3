/*
 * Kernel-facing socket and namespace primitives for @ambientkit/redirect.
 *
 * setns(2) changes the network namespace of the calling thread only, and a
 * socket belongs for life to the namespace its creating thread was in. So
 * everything here that must happen "inside" a namespace enters it, does the
 * work synchronously on the JS thread, and always switches back before
 * returning, even when the work failed or JS threw.
 *
 * Errors are thrown as plain JS errors carrying `errno` (positive) and
 * `syscall`; the TypeScript layer turns them into AmbientError codes.
 */
#include <node_api.h>
#include <uv.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef IPV6_FREEBIND
#define IPV6_FREEBIND 78
#endif

#define CHECK(call)                                                   \
  do {                                                                \
    if ((call) != napi_ok) {                                          \
      napi_throw_error(env, NULL, "native call failed: " #call);      \
      return NULL;                                                    \
    }                                                                 \
  } while (0)

/* Throws an Error with errno and syscall properties; returns NULL for `return throw_errno(...)`. */
static napi_value throw_errno(napi_env env, int err, const char* syscall) {
  char message[256];
  snprintf(message, sizeof message, "%s: %s", syscall, strerror(err));
  napi_value msg, error, errno_value, syscall_value;
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok) return NULL;
  if (napi_create_error(env, NULL, msg, &error) != napi_ok) return NULL;
  napi_create_int32(env, err, &errno_value);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_set_named_property(env, error, "syscall", syscall_value);
  napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char* message) {
  napi_throw_type_error(env, NULL, message);
  return NULL;
}

static int get_int(napi_env env, napi_value value, int32_t* out) {
  napi_valuetype type;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number) return 0;
  return napi_get_value_int32(env, value, out) == napi_ok;
}

static int get_prop_int(napi_env env, napi_value object, const char* name, int32_t fallback, int32_t* out) {
  napi_value value;
  napi_valuetype type;
  if (napi_get_named_property(env, object, name, &value) != napi_ok) return 0;
  if (napi_typeof(env, value, &type) != napi_ok) return 0;
  if (type == napi_undefined) {
    *out = fallback;
    return 1;
  }
  return get_int(env, value, out);
}

static int get_prop_uint(napi_env env, napi_value object, const char* name, int64_t* out) {
  napi_value value;
  napi_valuetype type;
  if (napi_get_named_property(env, object, name, &value) != napi_ok) return 0;
  if (napi_typeof(env, value, &type) != napi_ok) return 0;
  if (type == napi_undefined) {
    *out = -1;
    return 1;
  }
  if (type != napi_number) return 0;
  return napi_get_value_int64(env, value, out) == napi_ok;
}

static int get_prop_bool(napi_env env, napi_value object, const char* name, int* out) {
  napi_value value;
  napi_valuetype type;
  bool result = false;
  if (napi_get_named_property(env, object, name, &value) != napi_ok) return 0;
  if (napi_typeof(env, value, &type) != napi_ok) return 0;
  if (type == napi_undefined) {
    *out = 0;
    return 1;
  }
  if (type != napi_boolean || napi_get_value_bool(env, value, &result) != napi_ok) return 0;
  *out = result ? 1 : 0;
  return 1;
}

/* Copies a string property into buf; an absent property leaves buf empty. */
static int get_prop_string(napi_env env, napi_value object, const char* name, char* buf, size_t size) {
  napi_value value;
  napi_valuetype type;
  size_t length = 0;
  buf[0] = '\0';
  if (napi_get_named_property(env, object, name, &value) != napi_ok) return 0;
  if (napi_typeof(env, value, &type) != napi_ok) return 0;
  if (type == napi_undefined) return 1;
  if (type != napi_string) return 0;
  return napi_get_value_string_utf8(env, value, buf, size, &length) == napi_ok;
}

/* A JS string as a malloc'd C string, whatever its length; NULL when it is not a string. */
static char* get_string_copy(napi_env env, napi_value value) {
  napi_valuetype type;
  size_t length = 0;
  char* copy = NULL;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_string || napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok ||
      (copy = malloc(length + 1)) == NULL)
    return NULL;
  if (napi_get_value_string_utf8(env, value, copy, length + 1, &length) != napi_ok) {
    free(copy);
    return NULL;
  }
  return copy;
}

/* ---- entering and leaving a namespace ---- */

typedef struct {
  int home;
} netns_guard;

/* Enters the namespace `target`; returns 0, or an errno with nothing changed. */
static int netns_enter(netns_guard* guard, int target, const char** failed) {
  guard->home = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (guard->home < 0) {
    *failed = "open(/proc/thread-self/ns/net)";
    return errno;
  }
  if (setns(target, CLONE_NEWNET) != 0) {
    int err = errno;
    close(guard->home);
    guard->home = -1;
    *failed = "setns";
    return err;
  }
  return 0;
}

/*
 * Goes back home. If that fails the thread would keep running in a foreign
 * namespace and every later socket would silently land there: that must
 * never go unnoticed, so it is fatal.
 */
static void netns_leave(netns_guard* guard) {
  if (guard->home < 0) return;
  if (setns(guard->home, CLONE_NEWNET) != 0) {
    napi_fatal_error("ambient_redirect", NAPI_AUTO_LENGTH, "setns back to the original network namespace failed",
                     NAPI_AUTO_LENGTH);
  }
  close(guard->home);
  guard->home = -1;
}

/* runInNetns(nsFd, fn): calls fn() with this thread inside the namespace, and always comes back. */
static napi_value run_in_netns(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], global, result = NULL;
  int32_t ns_fd;
  napi_valuetype type;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_int(env, argv[0], &ns_fd)) return throw_type(env, "runInNetns: nsFd must be a number");
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function)
    return throw_type(env, "runInNetns: fn must be a function");
  CHECK(napi_get_global(env, &global));
  netns_guard guard;
  const char* failed = NULL;
  int err = netns_enter(&guard, ns_fd, &failed);
  if (err != 0) return throw_errno(env, err, failed);
  napi_status status = napi_call_function(env, global, argv[1], 0, NULL, &result);
  netns_leave(&guard);
  /* A pending JS exception propagates by itself once we return. */
  if (status != napi_ok) return NULL;
  return result;
}

/* ---- sockets ---- */

typedef union {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
  struct sockaddr_storage storage;
} any_addr;

static int make_addr(int family, const char* text, int port, any_addr* out, socklen_t* len) {
  memset(out, 0, sizeof *out);
  if (family == 4) {
    out->v4.sin_family = AF_INET;
    out->v4.sin_port = htons((uint16_t)port);
    *len = sizeof out->v4;
    return inet_pton(AF_INET, text, &out->v4.sin_addr) == 1;
  }
  out->v6.sin6_family = AF_INET6;
  out->v6.sin6_port = htons((uint16_t)port);
  *len = sizeof out->v6;
  return inet_pton(AF_INET6, text, &out->v6.sin6_addr) == 1;
}

typedef struct {
  int family;
  int64_t mark;
  int transparent;
  int freebind;
  int reuse_port;
  int v6_only; /* -1: kernel default */
  char bind_address[64];
  int bind_port;
  int backlog; /* listen only */
  char connect_address[64];
  int connect_port;
} socket_spec;

static int read_spec(napi_env env, napi_value object, int connecting, socket_spec* spec) {
  int32_t family, v6_only;
  if (!get_prop_int(env, object, "family", 0, &family) || (family != 4 && family != 6)) return 0;
  spec->family = family;
  if (!get_prop_uint(env, object, "mark", &spec->mark)) return 0;
  if (!get_prop_bool(env, object, "transparent", &spec->transparent)) return 0;
  if (!get_prop_bool(env, object, "freebind", &spec->freebind)) return 0;
  if (!get_prop_bool(env, object, "reusePort", &spec->reuse_port)) return 0;
  if (!get_prop_int(env, object, "v6Only", -1, &v6_only)) return 0;
  spec->v6_only = v6_only;
  if (!get_prop_string(env, object, "bindAddress", spec->bind_address, sizeof spec->bind_address)) return 0;
  if (!get_prop_int(env, object, "bindPort", 0, &spec->bind_port)) return 0;
  if (!get_prop_int(env, object, "backlog", 511, &spec->backlog)) return 0;
  if (connecting) {
    if (!get_prop_string(env, object, "connectAddress", spec->connect_address, sizeof spec->connect_address)) return 0;
    if (!get_prop_int(env, object, "connectPort", 0, &spec->connect_port)) return 0;
    if (spec->connect_address[0] == '\0') return 0;
  }
  return 1;
}

static int set_int_opt(int fd, int level, int name, int value, const char** failed, const char* what) {
  if (setsockopt(fd, level, name, &value, sizeof value) != 0) {
    *failed = what;
    return errno;
  }
  return 0;
}

/*
 * Creates a TCP or UDP socket (non-blocking, close-on-exec) in the current
 * namespace and applies the spec's options. Options go on before bind and
 * connect because they decide what those do: a mark routes the SYN (or
 * every datagram), and IP_TRANSPARENT lets bind() take a foreign source address.
 */
static int open_socket(const socket_spec* spec, int udp, int* out_fd, const char** failed) {
  int domain = spec->family == 4 ? AF_INET : AF_INET6;
  int fd = udp ? socket(domain, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_UDP)
               : socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0) {
    *failed = "socket";
    return errno;
  }
  int err = 0;
  if (spec->mark >= 0) err = set_int_opt(fd, SOL_SOCKET, SO_MARK, (int)(uint32_t)spec->mark, failed, "setsockopt(SO_MARK)");
  if (!err && spec->transparent) {
    err = spec->family == 4 ? set_int_opt(fd, SOL_IP, IP_TRANSPARENT, 1, failed, "setsockopt(IP_TRANSPARENT)")
                            : set_int_opt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, failed, "setsockopt(IPV6_TRANSPARENT)");
  }
  if (!err && spec->freebind) {
    err = spec->family == 4 ? set_int_opt(fd, SOL_IP, IP_FREEBIND, 1, failed, "setsockopt(IP_FREEBIND)")
                            : set_int_opt(fd, SOL_IPV6, IPV6_FREEBIND, 1, failed, "setsockopt(IPV6_FREEBIND)");
  }
  if (!err && spec->reuse_port) err = set_int_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1, failed, "setsockopt(SO_REUSEPORT)");
  if (!err && spec->family == 6 && spec->v6_only >= 0)
    err = set_int_opt(fd, SOL_IPV6, IPV6_V6ONLY, spec->v6_only ? 1 : 0, failed, "setsockopt(IPV6_V6ONLY)");
  if (err) {
    close(fd);
    return err;
  }
  *out_fd = fd;
  return 0;
}

static int bind_socket(int fd, const socket_spec* spec, int listening, const char** failed) {
  if (spec->bind_address[0] == '\0' && spec->bind_port == 0) return 0;
  any_addr addr;
  socklen_t len;
  const char* text = spec->bind_address[0] != '\0' ? spec->bind_address : (spec->family == 4 ? "0.0.0.0" : "::");
  if (listening) {
    int err = set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1, failed, "setsockopt(SO_REUSEADDR)");
    if (err) return err;
  }
  if (!make_addr(spec->family, text, spec->bind_port, &addr, &len)) {
    *failed = "inet_pton(bindAddress)";
    return EINVAL;
  }
  if (bind(fd, &addr.sa, len) != 0) {
    *failed = "bind";
    return errno;
  }
  return 0;
}

/* What socket_call makes: a listening TCP socket, a connecting TCP socket, or a bound UDP socket. */
typedef enum { MAKE_TCP_LISTENER, MAKE_TCP_CONNECTION, MAKE_UDP_SOCKET } socket_kind;

static napi_value socket_call(napi_env env, napi_callback_info info, socket_kind kind) {
  int connecting = kind == MAKE_TCP_CONNECTION;
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t ns_fd;
  napi_valuetype type;
  socket_spec spec;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_int(env, argv[0], &ns_fd)) return throw_type(env, "nsFd must be a number");
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_object || !read_spec(env, argv[1], connecting, &spec))
    return throw_type(env, "invalid socket spec");
  any_addr target;
  socklen_t target_len = 0;
  if (connecting && !make_addr(spec.family, spec.connect_address, spec.connect_port, &target, &target_len))
    return throw_type(env, "invalid connect address");

  netns_guard guard;
  const char* failed = NULL;
  int fd = -1;
  int err = ns_fd >= 0 ? netns_enter(&guard, ns_fd, &failed) : 0;
  if (ns_fd < 0) guard.home = -1;
  if (err != 0) return throw_errno(env, err, failed);
  err = open_socket(&spec, kind == MAKE_UDP_SOCKET, &fd, &failed);
  if (!err) err = bind_socket(fd, &spec, kind == MAKE_TCP_LISTENER, &failed);
  if (!err && kind == MAKE_TCP_LISTENER && listen(fd, spec.backlog) != 0) {
    err = errno;
    failed = "listen";
  }
  if (!err && connecting && connect(fd, &target.sa, target_len) != 0 && errno != EINPROGRESS) {
    err = errno;
    failed = "connect";
  }
  netns_leave(&guard);
  if (err != 0) {
    if (fd >= 0) close(fd);
    return throw_errno(env, err, failed);
  }
  CHECK(napi_create_int32(env, fd, &result));
  return result;
}

/* listenTcp(nsFd, spec) → fd of a listening socket created in the namespace (nsFd -1: here). */
static napi_value listen_tcp(napi_env env, napi_callback_info info) { return socket_call(env, info, MAKE_TCP_LISTENER); }

/* connectTcp(nsFd, spec) → fd of a socket created in the namespace, connect() started (non-blocking). */
static napi_value connect_tcp(napi_env env, napi_callback_info info) { return socket_call(env, info, MAKE_TCP_CONNECTION); }

/*
 * bindUdp(nsFd, spec) → fd of a UDP socket created in the namespace and
 * bound there (port 0: an ephemeral port). Unlike a TCP listener it gets no
 * SO_REUSEADDR: two UDP sockets on one port would split its datagrams.
 */
static napi_value bind_udp(napi_env env, napi_callback_info info) { return socket_call(env, info, MAKE_UDP_SOCKET); }

/* ---- waiting for a non-blocking connect ---- */

/*
 * Shared by the uv handle and the JS external that can cancel it; freed
 * when both are gone, so a late cancel never touches freed memory.
 */
typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int fd;
  int closing;
  int refs;
} connect_wait;

static void wait_release(connect_wait* wait) {
  if (--wait->refs == 0) free(wait);
}

static void wait_closed(uv_handle_t* handle) { wait_release((connect_wait*)handle->data); }

static void wait_finalize(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  wait_release((connect_wait*)data);
}

static void wait_stop(connect_wait* wait) {
  wait->closing = 1;
  uv_poll_stop(&wait->poll);
  uv_close((uv_handle_t*)&wait->poll, wait_closed);
}

static void wait_done(uv_poll_t* poll, int status, int events) {
  (void)events;
  connect_wait* wait = (connect_wait*)poll->data;
  if (wait->closing) return;
  int err = 0;
  socklen_t len = sizeof err;
  /* libuv reports POLLERR as UV_EBADF: the socket's own error says what really happened. */
  if (getsockopt(wait->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
    err = errno;
  } else if (err == 0 && status < 0) {
    err = -status;
  }
  wait_stop(wait);
  napi_env env = wait->env;
  napi_handle_scope scope;
  napi_value callback, global, argv[1], ignored;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  if (napi_get_reference_value(env, wait->callback, &callback) == napi_ok && napi_get_global(env, &global) == napi_ok &&
      napi_create_int32(env, err, &argv[0]) == napi_ok) {
    napi_make_callback(env, wait->context, global, callback, 1, argv, &ignored);
  }
  napi_delete_reference(env, wait->callback);
  napi_async_destroy(env, wait->context);
  napi_close_handle_scope(env, scope);
}

/* One-shot wait for `events` on a descriptor; see waitConnected and waitReadable. */
static napi_value wait_for(napi_env env, napi_callback_info info, int events, const char* what) {
  size_t argc = 2;
  napi_value argv[2], handle, name;
  int32_t fd;
  napi_valuetype type;
  char message[96];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  snprintf(message, sizeof message, "%s(fd, callback)", what);
  if (argc < 2 || !get_int(env, argv[0], &fd)) return throw_type(env, message);
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) return throw_type(env, message);
  uv_loop_t* loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  connect_wait* wait = calloc(1, sizeof *wait);
  if (wait == NULL) return throw_errno(env, ENOMEM, "calloc");
  wait->env = env;
  wait->fd = fd;
  wait->refs = 1;
  int rc = uv_poll_init_socket(loop, &wait->poll, fd);
  if (rc != 0) {
    free(wait);
    return throw_errno(env, -rc, "uv_poll_init_socket");
  }
  wait->poll.data = wait;
  wait->refs = 2;
  rc = uv_poll_start(&wait->poll, events | UV_DISCONNECT, wait_done);
  if (rc != 0) {
    wait->refs = 1;
    wait_stop(wait);
    return throw_errno(env, -rc, "uv_poll_start");
  }
  CHECK(napi_create_reference(env, argv[1], 1, &wait->callback));
  CHECK(napi_create_string_utf8(env, "ambientkit:connect", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &wait->context));
  CHECK(napi_create_external(env, wait, wait_finalize, NULL, &handle));
  return handle;
}

/* waitConnected(fd, callback(errno)) → handle for cancelWait. Calls back once with 0 or the connect errno. */
static napi_value wait_connected(napi_env env, napi_callback_info info) { return wait_for(env, info, UV_WRITABLE, "waitConnected"); }

/*
 * waitReadable(fd, callback(errno)) → handle for cancelWait. Calls back once
 * when the socket has something to read (data, or the peer hung up), with 0
 * or the socket's pending error.
 */
static napi_value wait_readable(napi_env env, napi_callback_info info) { return wait_for(env, info, UV_READABLE, "waitReadable"); }

/* cancelWait(handle): stops a wait that has not called back yet; its callback will never run. Idempotent. */
static napi_value cancel_wait(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void* data = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_external(env, argv[0], &data) != napi_ok) return throw_type(env, "cancelWait: bad handle");
  connect_wait* wait = (connect_wait*)data;
  if (!wait->closing) {
    wait_stop(wait);
    napi_delete_reference(env, wait->callback);
    napi_async_destroy(env, wait->context);
  }
  return NULL;
}

/* ---- accepting connections as descriptors ---- */

/*
 * A listening socket whose connections go to JavaScript as descriptors, with
 * the peer's address: no net.Socket is built for a connection that a native
 * data path carries, and the descriptor of one that JavaScript carries is
 * known (SO_ORIGINAL_DST is read from it) without Node's internals.
 *
 * Shared by the uv handles and the JS external: freed when all are gone.
 */
typedef struct {
  uv_poll_t poll;
  uv_timer_t pause;
  napi_env env;
  napi_ref callback;
  napi_ref self; /* while listening: the acceptor lives on without a JS reference, as a listening net.Server does */
  napi_async_context context;
  int fd;
  int closing;
  int refs;
} acceptor;

/* Descriptors accepted per readiness: a flood of connections must not starve the rest of the loop. */
#define ACCEPT_BATCH 64
/* How long accepting pauses when the process or system is out of descriptors or memory. */
#define ACCEPT_PAUSE_MS 100

static void acceptor_release(acceptor* a) {
  if (--a->refs == 0) free(a);
}

static void acceptor_handle_closed(uv_handle_t* handle) { acceptor_release((acceptor*)handle->data); }

static void acceptor_finalize(napi_env env, void* data, void* hint) {
  (void)env;
  (void)hint;
  acceptor_release((acceptor*)data);
}

static void acceptor_poll_cb(uv_poll_t* poll, int status, int events);

static void acceptor_cleanup_hook(void* data);

/* Stops accepting and closes the listening socket. Idempotent. */
static void acceptor_stop(acceptor* a) {
  if (a->closing) return;
  a->closing = 1;
  napi_remove_env_cleanup_hook(a->env, acceptor_cleanup_hook, a);
  uv_poll_stop(&a->poll);
  uv_timer_stop(&a->pause);
  uv_close((uv_handle_t*)&a->poll, acceptor_handle_closed);
  uv_close((uv_handle_t*)&a->pause, acceptor_handle_closed);
  if (a->fd >= 0) close(a->fd);
  a->fd = -1;
  napi_delete_reference(a->env, a->callback);
  napi_async_destroy(a->env, a->context);
  if (a->self != NULL) {
    napi_delete_reference(a->env, a->self);
    a->self = NULL;
  }
}

static void acceptor_cleanup_hook(void* data) { acceptor_stop((acceptor*)data); }

static void acceptor_resume(uv_timer_t* timer) {
  acceptor* a = (acceptor*)timer->data;
  if (!a->closing) uv_poll_start(&a->poll, UV_READABLE, acceptor_poll_cb);
}

/* Calls back with (fd, address, port, family), or (-errno) when accepting pauses. False once the acceptor was stopped meanwhile. */
static int acceptor_deliver(acceptor* a, int fd, const char* address, int port, int family) {
  napi_env env = a->env;
  napi_handle_scope scope;
  napi_value callback, global, argv[4], ignored;
  size_t argc = fd < 0 ? 1 : 4;
  if (napi_open_handle_scope(env, &scope) != napi_ok) {
    if (fd >= 0) close(fd);
    return !a->closing;
  }
  if (napi_get_reference_value(env, a->callback, &callback) != napi_ok || napi_get_global(env, &global) != napi_ok ||
      napi_create_int32(env, fd, &argv[0]) != napi_ok ||
      (fd >= 0 && (napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &argv[1]) != napi_ok ||
                   napi_create_int32(env, port, &argv[2]) != napi_ok || napi_create_int32(env, family, &argv[3]) != napi_ok))) {
    /* Nobody will own the descriptor: close it rather than leak it. */
    if (fd >= 0) close(fd);
  } else if (napi_make_callback(env, a->context, global, callback, argc, argv, &ignored) == napi_pending_exception) {
    napi_value exception;
    if (napi_get_and_clear_last_exception(env, &exception) == napi_ok) napi_fatal_exception(env, exception);
  }
  napi_close_handle_scope(env, scope);
  return !a->closing;
}

static void acceptor_poll_cb(uv_poll_t* poll, int status, int events) {
  (void)events;
  acceptor* a = (acceptor*)poll->data;
  if (a->closing || status < 0) return; /* a listening socket's error is transient (ECONNABORTED and the like) */
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    any_addr peer;
    socklen_t len = sizeof peer;
    int fd = accept4(a->fd, &peer.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == EINTR || err == ECONNABORTED) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      /* Out of descriptors or memory: readiness stays, so polling on would spin. Pause, and say so once. */
      uv_poll_stop(&a->poll);
      uv_timer_start(&a->pause, acceptor_resume, ACCEPT_PAUSE_MS, 0);
      acceptor_deliver(a, -err, NULL, 0, 0);
      return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char address[INET6_ADDRSTRLEN] = "";
    int port = 0, family = 4;
    if (peer.sa.sa_family == AF_INET) {
      inet_ntop(AF_INET, &peer.v4.sin_addr, address, sizeof address);
      port = ntohs(peer.v4.sin_port);
    } else if (peer.sa.sa_family == AF_INET6) {
      /* A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d: give the IPv4 form. */
      if (IN6_IS_ADDR_V4MAPPED(&peer.v6.sin6_addr)) {
        inet_ntop(AF_INET, &peer.v6.sin6_addr.s6_addr[12], address, sizeof address);
      } else {
        inet_ntop(AF_INET6, &peer.v6.sin6_addr, address, sizeof address);
        family = 6;
      }
      port = ntohs(peer.v6.sin6_port);
    }
    if (!acceptor_deliver(a, fd, address, port, family)) return; /* stopped from the callback */
  }
}

/*
 * acceptTcp(listenFd, callback(fd, address, port, family) | callback(-errno)) → handle.
 * The listening socket becomes the addon's; each connection is handed over
 * as a non-blocking, close-on-exec descriptor with TCP_NODELAY set, which
 * the callback owns. IPv4 peers of a dual-stack listener come as family 4.
 */
static napi_value accept_tcp(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], handle, name;
  int32_t fd;
  napi_valuetype type;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_int(env, argv[0], &fd) || fd < 0) return throw_type(env, "acceptTcp: listenFd must be a descriptor");
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) return throw_type(env, "acceptTcp: callback must be a function");
  uv_loop_t* loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return throw_errno(env, errno, "fcntl(O_NONBLOCK)");
  acceptor* a = calloc(1, sizeof *a);
  if (a == NULL) return throw_errno(env, ENOMEM, "calloc");
  a->env = env;
  a->fd = fd;
  int rc = uv_poll_init_socket(loop, &a->poll, fd);
  if (rc != 0) {
    free(a);
    return throw_errno(env, -rc, "uv_poll_init_socket");
  }
  rc = uv_timer_init(loop, &a->pause);
  if (rc != 0) {
    a->refs = 1;
    a->poll.data = a;
    uv_close((uv_handle_t*)&a->poll, acceptor_handle_closed);
    return throw_errno(env, -rc, "uv_timer_init");
  }
  a->poll.data = a;
  a->pause.data = a;
  a->refs = 2; /* the two uv handles; the external adds one below */
  if (napi_create_reference(env, argv[1], 1, &a->callback) != napi_ok ||
      napi_create_string_utf8(env, "ambientkit:accept", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &a->context) != napi_ok) {
    a->closing = 1;
    uv_close((uv_handle_t*)&a->poll, acceptor_handle_closed);
    uv_close((uv_handle_t*)&a->pause, acceptor_handle_closed);
    napi_throw_error(env, NULL, "acceptTcp: cannot set up the callback");
    return NULL;
  }
  if (napi_create_external(env, a, acceptor_finalize, NULL, &handle) != napi_ok) {
    a->fd = -1; /* the caller still owns the listening socket */
    acceptor_stop(a);
    napi_throw_error(env, NULL, "acceptTcp: cannot create the handle");
    return NULL;
  }
  a->refs++;
  if (napi_create_reference(env, handle, 1, &a->self) != napi_ok || napi_add_env_cleanup_hook(env, acceptor_cleanup_hook, a) != napi_ok) {
    a->fd = -1;
    acceptor_stop(a);
    napi_throw_error(env, NULL, "acceptTcp: cannot keep the handle");
    return NULL;
  }
  rc = uv_poll_start(&a->poll, UV_READABLE, acceptor_poll_cb);
  if (rc != 0) {
    a->fd = -1;
    acceptor_stop(a);
    return throw_errno(env, -rc, "uv_poll_start");
  }
  return handle;
}

/* stopAccepting(handle): stops accepting and closes the listening socket. Idempotent. */
static napi_value stop_accepting(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  void* data = NULL;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || napi_get_value_external(env, argv[0], &data) != napi_ok) return throw_type(env, "stopAccepting: bad handle");
  acceptor_stop((acceptor*)data);
  return NULL;
}

/* ---- SOCK_SEQPACKET unix sockets with descriptor passing (ZDS) ----
 *
 * Node has neither SOCK_SEQPACKET nor SCM_RIGHTS. Istio's CNI plugin hands
 * each pod's network namespace to the node proxy as a descriptor riding on
 * a seqpacket message. Sockets are non-blocking and close-on-exec; received
 * descriptors are close-on-exec from the start (MSG_CMSG_CLOEXEC), and
 * every one of them is handed to JS, which owns it (closeFd), even when the
 * message was truncated.
 */

/* seqpacketConnect(path) → fd: a connected AF_UNIX SOCK_SEQPACKET socket. */
static napi_value seqpacket_connect(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  struct sockaddr_un addr;
  size_t length = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (argc < 1 || napi_get_value_string_utf8(env, argv[0], addr.sun_path, sizeof addr.sun_path, &length) != napi_ok || length == 0)
    return throw_type(env, "seqpacketConnect(path)");
  if (length >= sizeof addr.sun_path - 1) return throw_errno(env, ENAMETOOLONG, "connect");
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, errno, "socket(AF_UNIX, SOCK_SEQPACKET)");
  if (connect(fd, (struct sockaddr*)&addr, sizeof addr) != 0) {
    int err = errno;
    close(fd);
    return throw_errno(env, err, "connect");
  }
  CHECK(napi_create_int32(env, fd, &result));
  return result;
}

/* seqpacketSend(fd, buffer) → bytes sent, as one message; throws EAGAIN when the peer's queue is full (wait writable and retry). */
static napi_value seqpacket_send(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result;
  int32_t fd;
  void* data = NULL;
  size_t length = 0;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_int(env, argv[0], &fd) || napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok)
    return throw_type(env, "seqpacketSend(fd, buffer)");
  ssize_t sent = send(fd, data, length, MSG_NOSIGNAL | MSG_DONTWAIT);
  if (sent < 0) return throw_errno(env, errno, "send");
  CHECK(napi_create_int64(env, sent, &result));
  return result;
}

#define RECV_MAX_FDS 16

/*
 * seqpacketRecv(fd, maxBytes) → null when nothing is waiting, else
 * { data: Buffer, fds: number[], truncated, controlTruncated }. An empty
 * data with no descriptors is the end of the stream. Descriptors beyond
 * RECV_MAX_FDS are closed by the kernel (controlTruncated is then true).
 */
static napi_value seqpacket_recv(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], result, buffer, fds_array, value;
  int32_t fd, max_bytes;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_int(env, argv[0], &fd) || !get_int(env, argv[1], &max_bytes) || max_bytes < 1 || max_bytes > (1 << 20))
    return throw_type(env, "seqpacketRecv(fd, maxBytes 1..1048576)");
  char* data = malloc((size_t)max_bytes);
  if (data == NULL) return throw_errno(env, ENOMEM, "malloc");
  union {
    char buf[CMSG_SPACE(sizeof(int) * RECV_MAX_FDS)];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = data, .iov_len = (size_t)max_bytes};
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.buf;
  msg.msg_controllen = sizeof control.buf;
  ssize_t received;
  do {
    received = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  } while (received < 0 && errno == EINTR);
  if (received < 0) {
    int err = errno;
    free(data);
    if (err == EAGAIN || err == EWOULDBLOCK) {
      CHECK(napi_get_null(env, &result));
      return result;
    }
    return throw_errno(env, err, "recvmsg");
  }
  int fds[RECV_MAX_FDS];
  int count = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < n; i++) {
      int received_fd;
      memcpy(&received_fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (count < RECV_MAX_FDS) fds[count++] = received_fd;
      else close(received_fd);
    }
  }
  /* From here on the descriptors are JS's: build the result without failing half-way. */
  napi_status status = napi_create_buffer_copy(env, (size_t)received, data, NULL, &buffer);
  free(data);
  if (status != napi_ok || napi_create_object(env, &result) != napi_ok || napi_create_array_with_length(env, (size_t)count, &fds_array) != napi_ok) {
    for (int i = 0; i < count; i++) close(fds[i]);
    napi_throw_error(env, NULL, "seqpacketRecv: cannot build the result");
    return NULL;
  }
  for (int i = 0; i < count; i++) {
    napi_create_int32(env, fds[i], &value);
    napi_set_element(env, fds_array, (uint32_t)i, value);
  }
  napi_set_named_property(env, result, "data", buffer);
  napi_set_named_property(env, result, "fds", fds_array);
  napi_get_boolean(env, (msg.msg_flags & MSG_TRUNC) != 0, &value);
  napi_set_named_property(env, result, "truncated", value);
  napi_get_boolean(env, (msg.msg_flags & MSG_CTRUNC) != 0, &value);
  napi_set_named_property(env, result, "controlTruncated", value);
  return result;
}

/* ---- socket options on existing sockets ---- */

static napi_value address_object(napi_env env, const any_addr* addr) {
  char text[INET6_ADDRSTRLEN];
  napi_value object, address, port, family;
  int port_number, family_number;
  if (addr->sa.sa_family == AF_INET) {
    inet_ntop(AF_INET, &addr->v4.sin_addr, text, sizeof text);
    port_number = ntohs(addr->v4.sin_port);
    family_number = 4;
  } else {
    inet_ntop(AF_INET6, &addr->v6.sin6_addr, text, sizeof text);
    port_number = ntohs(addr->v6.sin6_port);
    family_number = 6;
  }
  CHECK(napi_create_object(env, &object));
  CHECK(napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &address));
  CHECK(napi_create_int32(env, port_number, &port));
  CHECK(napi_create_int32(env, family_number, &family));
  CHECK(napi_set_named_property(env, object, "address", address));
  CHECK(napi_set_named_property(env, object, "port", port));
  CHECK(napi_set_named_property(env, object, "family", family));
  return object;
}

/*
 * originalDst(fd, family) → { address, port, family }: the destination a
 * connection had before nat REDIRECT rewrote it, read from conntrack.
 */
static napi_value original_dst(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd, family;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_int(env, argv[0], &fd) || !get_int(env, argv[1], &family) || (family != 4 && family != 6))
    return throw_type(env, "originalDst(fd, family 4|6)");
  any_addr addr;
  memset(&addr, 0, sizeof addr);
  socklen_t len;
  int rc;
  if (family == 4) {
    len = sizeof addr.v4;
    rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &addr.v4, &len);
  } else {
    len = sizeof addr.v6;
    rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &addr.v6, &len);
  }
  if (rc != 0) return throw_errno(env, errno, family == 4 ? "getsockopt(SO_ORIGINAL_DST)" : "getsockopt(IP6T_SO_ORIGINAL_DST)");
  return address_object(env, &addr);
}

/* localAddress(fd) → { address, port, family }: where the socket is bound (getsockname). */
static napi_value local_address(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_int(env, argv[0], &fd)) return throw_type(env, "localAddress(fd)");
  any_addr addr;
  memset(&addr, 0, sizeof addr);
  socklen_t len = sizeof addr;
  if (getsockname(fd, &addr.sa, &len) != 0) return throw_errno(env, errno, "getsockname");
  if (addr.sa.sa_family != AF_INET && addr.sa.sa_family != AF_INET6) return throw_errno(env, EAFNOSUPPORT, "getsockname");
  return address_object(env, &addr);
}

/* getMark(fd) → the socket's SO_MARK. */
static napi_value get_mark(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result;
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_int(env, argv[0], &fd)) return throw_type(env, "getMark(fd)");
  uint32_t mark = 0;
  socklen_t len = sizeof mark;
  if (getsockopt(fd, SOL_SOCKET, SO_MARK, &mark, &len) != 0) return throw_errno(env, errno, "getsockopt(SO_MARK)");
  CHECK(napi_create_uint32(env, mark, &result));
  return result;
}

/* peerCredentials(fd): SO_PEERCRED of a connected unix socket, the peer's pid,
 * uid and gid as the kernel recorded them at connect(2), the pid translated
 * into our pid namespace (0 when the peer is outside it). */
static napi_value peer_credentials(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], result, value;
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_int(env, argv[0], &fd)) return throw_type(env, "peerCredentials(fd)");
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return throw_errno(env, errno, "getsockopt(SO_PEERCRED)");
  CHECK(napi_create_object(env, &result));
  CHECK(napi_create_int32(env, cred.pid, &value));
  CHECK(napi_set_named_property(env, result, "pid", value));
  CHECK(napi_create_uint32(env, cred.uid, &value));
  CHECK(napi_set_named_property(env, result, "uid", value));
  CHECK(napi_create_uint32(env, cred.gid, &value));
  CHECK(napi_set_named_property(env, result, "gid", value));
  return result;
}

/* setMark(fd, mark): sets SO_MARK (needs CAP_NET_ADMIN). */
static napi_value set_mark(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  uint32_t mark;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2 || !get_int(env, argv[0], &fd) || napi_get_value_uint32(env, argv[1], &mark) != napi_ok)
    return throw_type(env, "setMark(fd, mark)");
  if (setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark) != 0) return throw_errno(env, errno, "setsockopt(SO_MARK)");
  return NULL;
}

static int get_bool_opt(int fd, int level, int name) {
  int value = 0;
  socklen_t len = sizeof value;
  if (getsockopt(fd, level, name, &value, &len) != 0) return -1;
  return value != 0;
}

/* socketOptions(fd) → { mark, transparent, freebind, reusePort, family }: what the kernel holds, for checks. */
static napi_value socket_options(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1], object, value;
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_int(env, argv[0], &fd)) return throw_type(env, "socketOptions(fd)");
  any_addr local;
  socklen_t len = sizeof local;
  if (getsockname(fd, &local.sa, &len) != 0) return throw_errno(env, errno, "getsockname");
  int v6 = local.sa.sa_family == AF_INET6;
  uint32_t mark = 0;
  len = sizeof mark;
  if (getsockopt(fd, SOL_SOCKET, SO_MARK, &mark, &len) != 0) return throw_errno(env, errno, "getsockopt(SO_MARK)");
  CHECK(napi_create_object(env, &object));
  CHECK(napi_create_uint32(env, mark, &value));
  CHECK(napi_set_named_property(env, object, "mark", value));
  CHECK(napi_get_boolean(env, get_bool_opt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_TRANSPARENT : IP_TRANSPARENT) == 1, &value));
  CHECK(napi_set_named_property(env, object, "transparent", value));
  CHECK(napi_get_boolean(env, get_bool_opt(fd, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_FREEBIND : IP_FREEBIND) == 1, &value));
  CHECK(napi_set_named_property(env, object, "freebind", value));
  CHECK(napi_get_boolean(env, get_bool_opt(fd, SOL_SOCKET, SO_REUSEPORT) == 1, &value));
  CHECK(napi_set_named_property(env, object, "reusePort", value));
  CHECK(napi_create_int32(env, v6 ? 6 : 4, &value));
  CHECK(napi_set_named_property(env, object, "family", value));
  return object;
}

/* closeFd(fd): closes a descriptor the addon handed out and JS did not give to Node. */
static napi_value close_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1 || !get_int(env, argv[0], &fd)) return throw_type(env, "closeFd(fd)");
  if (close(fd) != 0 && errno != EINTR) return throw_errno(env, errno, "close");
  return NULL;
}

/* ---- nftables in-process ----
 *
 * Running the `nft` program costs a fork and exec, and its exit waits for the
 * kernel: when the last netlink socket of a process that committed an
 * nf_tables transaction closes, the kernel first flushes the transaction's
 * deferred destruction, which waits for an RCU grace period (10-20 ms on the
 * reference machine). With libnftables (the library `nft` itself is built
 * on, package libnftables1, a dependency of nftables) the same script runs
 * in this process, on a thread that enters the namespace. The context is freed
 * right away, under the same lock as runs (libnftables keeps a process-wide
 * interface cache that freeing a context clears, and that must not leak
 * from one namespace's run into the next), but its netlink socket is kept
 * open by a duplicate descriptor, so that the close that waits comes later
 * and nobody waits for it.
 *
 * Each run has a thread of its own with a descriptor table of its own
 * (close_range with CLOSE_RANGE_UNSHARE: a private table holding only 0-2).
 * In it the context's socket is found by listing a handful of descriptors,
 * whatever the process holds, and it is numbered low: libnftables (1.0.x)
 * waits with select(), and glibc aborts the process for a descriptor at or
 * past FD_SETSIZE (1,024), which a proxy with a few hundred pods holds. No
 * other thread opens descriptors in that table, so what appears there
 * during the run is the context's. The worker waits for the run's result,
 * not for the thread: the thread ends by dropping its table, and with it
 * the duplicate, which is the close that waits for the kernel. The library
 * is loaded with dlopen so that neither building nor loading the addon
 * needs it; the TypeScript layer falls back to the program when it is
 * missing.
 */

struct nft_ctx;

static struct {
  struct nft_ctx* (*ctx_new)(uint32_t flags);
  void (*ctx_free)(struct nft_ctx* ctx);
  int (*buffer_output)(struct nft_ctx* ctx);
  int (*buffer_error)(struct nft_ctx* ctx);
  const char* (*get_output)(struct nft_ctx* ctx);
  const char* (*get_error)(struct nft_ctx* ctx);
  int (*run)(struct nft_ctx* ctx, const char* script);
} nftlib;

static pthread_once_t nftlib_once = PTHREAD_ONCE_INIT;
static char nftlib_error[512];
/* Serializes contexts: each is private, but libnftables keeps process-wide caches. */
static pthread_mutex_t nftlib_lock = PTHREAD_MUTEX_INITIALIZER;

static void nftlib_load(void) {
  void* handle = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle == NULL) {
    snprintf(nftlib_error, sizeof nftlib_error, "%s", dlerror());
    return;
  }
  struct {
    void** slot;
    const char* name;
  } symbols[] = {
      {(void**)&nftlib.ctx_new, "nft_ctx_new"},
      {(void**)&nftlib.ctx_free, "nft_ctx_free"},
      {(void**)&nftlib.buffer_output, "nft_ctx_buffer_output"},
      {(void**)&nftlib.buffer_error, "nft_ctx_buffer_error"},
      {(void**)&nftlib.get_output, "nft_ctx_get_output_buffer"},
      {(void**)&nftlib.get_error, "nft_ctx_get_error_buffer"},
      {(void**)&nftlib.run, "nft_run_cmd_from_buffer"},
  };
  for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
    *symbols[i].slot = dlsym(handle, symbols[i].name);
    if (*symbols[i].slot == NULL) {
      snprintf(nftlib_error, sizeof nftlib_error, "libnftables.so.1 has no %s", symbols[i].name);
      nftlib.run = NULL;
      return;
    }
  }
}

/* nftAvailable(): null when libnftables is usable, else why not (the dlopen error). */
static napi_value nft_available(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  pthread_once(&nftlib_once, nftlib_load);
  if (nftlib.run != NULL) {
    CHECK(napi_get_null(env, &result));
  } else {
    CHECK(napi_create_string_utf8(env, nftlib_error, NAPI_AUTO_LENGTH, &result));
  }
  return result;
}

typedef struct {
  napi_async_work work;
  napi_ref callback;
  int ns_fd;
  char* script;
  int status;
  int err;
  const char* failed;
  char* output;
  char* error;
  /* Posted by the run's thread once the fields above are filled in. */
  sem_t done;
} nft_job;

/* In the run's own table there is none before the run and one after (the context's). */
#define MAX_NETFILTER_SOCKETS 8

/* The NETLINK_NETFILTER sockets in the calling thread's descriptor table, up to `max`. */
static int netfilter_sockets(int* fds, int max) {
  DIR* dir = opendir("/proc/thread-self/fd");
  if (dir == NULL) return 0;
  int count = 0;
  struct dirent* entry;
  while (count < max && (entry = readdir(dir)) != NULL) {
    int fd = atoi(entry->d_name), domain = 0, protocol = 0;
    socklen_t length = sizeof domain;
    if (entry->d_name[0] == '.' || fd == dirfd(dir)) continue;
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &length) != 0 || domain != AF_NETLINK) continue;
    length = sizeof protocol;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &length) == 0 && protocol == NETLINK_NETFILTER) fds[count++] = fd;
  }
  closedir(dir);
  return count;
}

/*
 * A duplicate of the one netfilter socket in `after` that is not in
 * `before` (the context's), or -1 when that is not exactly one socket.
 * In the run's own descriptor table, only the context makes one.
 */
static int keep_new_socket(const int* before, int before_count, const int* after, int after_count) {
  int found = -1;
  for (int i = 0; i < after_count; i++) {
    int seen = 0;
    for (int j = 0; j < before_count && !seen; j++) seen = after[i] == before[j];
    if (seen) continue;
    if (found >= 0) return -1;
    found = after[i];
  }
  return found < 0 ? -1 : fcntl(found, F_DUPFD_CLOEXEC, 0);
}

// A run's thread (nft_thread) runs this library's code after the worker
// stopped waiting for it: the library must not be unloaded under it, which
// Node does when the last environment that loaded it ends (a Worker that
// alone loaded it). RTLD_NODELETE keeps it mapped.
static void pin_library(void) {
  Dl_info info;
  if (dladdr((void*)pin_library, &info) != 0 && info.dli_fname != NULL) (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
}
static pthread_once_t pinned = PTHREAD_ONCE_INIT;

static char* copy_or_empty(const char* text) { return strdup(text != NULL ? text : ""); }

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

/* Gives the calling thread a descriptor table of its own holding only 0-2; 0 or an errno. */
static int private_descriptor_table(void) {
  if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_UNSHARE) == 0) return 0;
  /* Kernels before 5.9: unshare, then close what the copy holds (once a run, on those kernels only). */
  if (unshare(CLONE_FILES) != 0) return errno;
  DIR* dir = opendir("/proc/thread-self/fd");
  if (dir == NULL) return errno;
  struct dirent* entry;
  while ((entry = readdir(dir)) != NULL) {
    int fd = atoi(entry->d_name);
    if (entry->d_name[0] != '.' && fd > 2 && fd != dirfd(dir)) close(fd);
  }
  closedir(dir);
  return 0;
}

/* The run's thread: everything it opens, it opens in its own table, which goes when it ends. */
static void* nft_thread(void* data) {
  nft_job* job = data;
  int before[MAX_NETFILTER_SOCKETS], after[MAX_NETFILTER_SOCKETS];
  pthread_mutex_lock(&nftlib_lock);
  /* Entered first (the namespace descriptor is not in the private table); the thread never goes back. */
  if (setns(job->ns_fd, CLONE_NEWNET) != 0) {
    job->err = errno;
    job->failed = "setns";
  } else if ((job->err = private_descriptor_table()) != 0) {
    job->failed = "close_range(CLOSE_RANGE_UNSHARE)";
  } else {
    int before_count = netfilter_sockets(before, MAX_NETFILTER_SOCKETS);
    /* The context's netlink socket is made here, so it belongs to the namespace. */
    struct nft_ctx* ctx = nftlib.ctx_new(0);
    if (ctx == NULL) {
      job->err = ENOMEM;
      job->failed = "nft_ctx_new";
    } else {
      nftlib.buffer_output(ctx);
      nftlib.buffer_error(ctx);
      job->status = nftlib.run(ctx, job->script);
      job->output = copy_or_empty(nftlib.get_output(ctx));
      job->error = copy_or_empty(nftlib.get_error(ctx));
      /* Left open in this table until the thread ends; -1 (not found) only makes ctx_free wait. */
      keep_new_socket(before, before_count, after, netfilter_sockets(after, MAX_NETFILTER_SOCKETS));
      nftlib.ctx_free(ctx);
    }
  }
  pthread_mutex_unlock(&nftlib_lock);
  /* The job is the worker's again from here on. */
  sem_post(&job->done);
  return NULL;
}

/* Worker thread: no N-API calls here. Starts the run's thread and waits for its result. */
static void nft_execute(napi_env env, void* data) {
  (void)env;
  nft_job* job = data;
  pthread_once(&pinned, pin_library);
  pthread_t thread;
  pthread_attr_t attr;
  sigset_t all, previous;
  sigfillset(&all);
  /* Signals go to the threads that handle them, never to this one. */
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  int err = pthread_attr_init(&attr);
  if (err == 0) {
    err = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (err == 0) err = pthread_create(&thread, &attr, nft_thread, job);
    pthread_attr_destroy(&attr);
  }
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  if (err != 0) {
    job->err = err;
    job->failed = "pthread_create";
    return;
  }
  while (sem_wait(&job->done) != 0 && errno == EINTR) {
  }
}

static void nft_job_free(napi_env env, nft_job* job) {
  if (job->callback != NULL) napi_delete_reference(env, job->callback);
  if (job->work != NULL) napi_delete_async_work(env, job->work);
  if (job->ns_fd >= 0) close(job->ns_fd);
  free(job->script);
  free(job->output);
  free(job->error);
  sem_destroy(&job->done);
  free(job);
}

/* Main thread: callback(null, { status, output, error }) or callback(errnoError). */
static void nft_complete(napi_env env, napi_status status, void* data) {
  nft_job* job = data;
  napi_value callback, global, argv[2], value;
  if (status == napi_ok && napi_get_reference_value(env, job->callback, &callback) == napi_ok &&
      napi_get_global(env, &global) == napi_ok) {
    if (job->err != 0) {
      char message[256];
      snprintf(message, sizeof message, "%s: %s", job->failed, strerror(job->err));
      napi_value msg;
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
      napi_create_error(env, NULL, msg, &argv[0]);
      napi_create_int32(env, job->err, &value);
      napi_set_named_property(env, argv[0], "errno", value);
      napi_create_string_utf8(env, job->failed, NAPI_AUTO_LENGTH, &value);
      napi_set_named_property(env, argv[0], "syscall", value);
      napi_get_undefined(env, &argv[1]);
    } else {
      napi_get_null(env, &argv[0]);
      napi_create_object(env, &argv[1]);
      napi_create_int32(env, job->status, &value);
      napi_set_named_property(env, argv[1], "status", value);
      napi_create_string_utf8(env, job->output, NAPI_AUTO_LENGTH, &value);
      napi_set_named_property(env, argv[1], "output", value);
      napi_create_string_utf8(env, job->error, NAPI_AUTO_LENGTH, &value);
      napi_set_named_property(env, argv[1], "error", value);
    }
    napi_call_function(env, global, callback, 2, argv, NULL);
  }
  nft_job_free(env, job);
}

/* nftRun(nsFd, script, callback): runs an nft script with libnftables inside the namespace, off the JS thread. */
static napi_value nft_run(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], name;
  int32_t ns_fd;
  napi_valuetype type;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || !get_int(env, argv[0], &ns_fd)) return throw_type(env, "nftRun: nsFd must be a number");
  if (napi_typeof(env, argv[1], &type) != napi_ok || type != napi_string) return throw_type(env, "nftRun: script must be a string");
  if (napi_typeof(env, argv[2], &type) != napi_ok || type != napi_function)
    return throw_type(env, "nftRun: callback must be a function");
  pthread_once(&nftlib_once, nftlib_load);
  if (nftlib.run == NULL) return throw_errno(env, ENOSYS, "dlopen(libnftables.so.1)");
  nft_job* job = calloc(1, sizeof *job);
  if (job == NULL) return throw_errno(env, ENOMEM, "nftRun");
  /* Our own descriptor: the caller may close its Netns while the job waits for a thread. */
  job->ns_fd = fcntl(ns_fd, F_DUPFD_CLOEXEC, 0);
  if (job->ns_fd < 0) {
    int err = errno;
    free(job);
    return throw_errno(env, err, "dup");
  }
  sem_init(&job->done, 0, 0);
  if ((job->script = get_string_copy(env, argv[1])) == NULL || napi_create_reference(env, argv[2], 1, &job->callback) != napi_ok ||
      napi_create_string_utf8(env, "ambientkit:nft", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_async_work(env, NULL, name, nft_execute, nft_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    nft_job_free(env, job);
    return throw_errno(env, ENOMEM, "nftRun");
  }
  return NULL;
}

/* ---- programs run inside a namespace ---- */

/*
 * Node's child_process forks the whole process on the JS thread (≈1 ms for
 * a process of Node's size); posix_spawn uses vfork, so the JS thread only
 * waits for the child's execve. The child starts in the calling thread's
 * network namespace, which is why this enters the pod's namespace around it.
 */

/* Frees a NULL-terminated array of strings. */
static void free_strings(char** list) {
  if (list == NULL) return;
  for (char** item = list; *item != NULL; item++) free(*item);
  free(list);
}

/* A JS array of strings as a NULL-terminated array; NULL when it is not one. */
static char** get_strings(napi_env env, napi_value array) {
  uint32_t count = 0;
  bool is_array = false;
  if (napi_is_array(env, array, &is_array) != napi_ok || !is_array || napi_get_array_length(env, array, &count) != napi_ok) return NULL;
  char** list = calloc(count + 1, sizeof *list);
  if (list == NULL) return NULL;
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    if (napi_get_element(env, array, i, &item) != napi_ok || (list[i] = get_string_copy(env, item)) == NULL) {
      free_strings(list);
      return NULL;
    }
  }
  return list;
}

/* posix_spawn of `file`, searched in `path` (a PATH value) unless it names a path; returns 0 or an errno. */
static int spawn_program(pid_t* pid, const char* file, const char* path, const posix_spawn_file_actions_t* actions,
                         const posix_spawnattr_t* attr, char** argv, char** envp) {
  if (strchr(file, '/') != NULL) return posix_spawn(pid, file, actions, attr, argv, envp);
  int result = ENOENT;
  size_t file_length = strlen(file);
  for (const char* dir = path; dir != NULL;) {
    const char* end = strchr(dir, ':');
    size_t dir_length = end != NULL ? (size_t)(end - dir) : strlen(dir);
    char candidate[4096];
    /* An empty entry means the current directory, as in execvp. */
    if (dir_length + file_length + 2 <= sizeof candidate) {
      memcpy(candidate, dir_length > 0 ? dir : ".", dir_length > 0 ? dir_length : 1);
      size_t at = dir_length > 0 ? dir_length : 1;
      candidate[at] = '/';
      memcpy(candidate + at + 1, file, file_length + 1);
      /*
       * Looked at before spawning: a spawn that fails costs a whole process
       * start, whose copy and release of the descriptor table grow with what
       * this process holds (a node proxy: four descriptors a pod), and a PATH
       * has many entries before /usr/sbin.
       */
      int err = faccessat(AT_FDCWD, candidate, X_OK, AT_EACCESS) == 0 ? posix_spawn(pid, candidate, actions, attr, argv, envp) : errno;
      if (err == 0) return 0;
      /* Keep looking after these, as execvp does; remember that one was there but not runnable. */
      if (err == EACCES) result = EACCES;
      else if (err != ENOENT && err != ENOTDIR) return err;
    }
    dir = end != NULL ? end + 1 : NULL;
  }
  return result;
}

static void close_all(int* fds, int count) {
  for (int i = 0; i < count; i++)
    if (fds[i] >= 0) close(fds[i]);
}

/*
 * spawnInNetns(nsFd, file, argv, envp, path) → { pid, pidfd, stdin, stdout, stderr }:
 * starts a program inside the namespace with its stdio on socket pairs. The
 * returned descriptors are the parent's ends (close-on-exec); `pidfd`
 * becomes readable when the program exits (see waitExit).
 */
static napi_value spawn_in_netns(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5], result, value;
  int32_t ns_fd;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 5 || !get_int(env, argv[0], &ns_fd)) return throw_type(env, "spawnInNetns: nsFd must be a number");
  napi_valuetype type;
  int has_path = napi_typeof(env, argv[4], &type) == napi_ok && type == napi_string;
  char* file = get_string_copy(env, argv[1]);
  char* path = has_path ? get_string_copy(env, argv[4]) : NULL;
  char** child_argv = get_strings(env, argv[2]);
  char** child_envp = get_strings(env, argv[3]);
  if (file == NULL || file[0] == '\0' || (has_path && path == NULL) || child_argv == NULL || child_envp == NULL) {
    free(file);
    free(path);
    free_strings(child_argv);
    free_strings(child_envp);
    return throw_type(env, "spawnInNetns: file must be a non-empty string, argv and envp arrays of strings, path a string or null");
  }

  /*
   * fds[0..5]: the child's and our end of stdin, stdout, stderr. Socket
   * pairs, as libuv makes for child_process: unlike a pipe, our end of
   * stdin can be shut down (end of input) by net.Socket.
   */
  int fds[6] = {-1, -1, -1, -1, -1, -1};
  int err = 0;
  const char* failed = "socketpair";
  for (int i = 0; i < 3 && err == 0; i++)
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, &fds[2 * i]) != 0) err = errno;
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  int ready = 0;
  if (err == 0) {
    failed = "posix_spawn setup";
    err = posix_spawn_file_actions_init(&actions);
    if (err == 0) {
      err = posix_spawnattr_init(&attr);
      if (err != 0) posix_spawn_file_actions_destroy(&actions);
    }
    ready = err == 0;
  }
  if (err == 0) {
    /* dup2 clears close-on-exec on the child's copies; every other descriptor of ours stays behind. */
    err = posix_spawn_file_actions_adddup2(&actions, fds[0], 0);
    if (err == 0) err = posix_spawn_file_actions_adddup2(&actions, fds[2], 1);
    if (err == 0) err = posix_spawn_file_actions_adddup2(&actions, fds[4], 2);
    /* Node ignores SIGPIPE and libuv blocks signals on its threads: the program gets the defaults. */
    if (err == 0) err = posix_spawnattr_setsigmask(&attr, &none);
    if (err == 0) err = posix_spawnattr_setsigdefault(&attr, &all);
    if (err == 0) err = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  }
  pid_t pid = -1;
  int pidfd = -1;
  if (err == 0) {
    netns_guard guard;
    err = netns_enter(&guard, ns_fd, &failed);
    if (err == 0) {
      failed = "posix_spawn";
      err = spawn_program(&pid, file, has_path ? path : "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", &actions,
                          &attr, child_argv, child_envp);
      netns_leave(&guard);
    }
  }
  if (ready) {
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  free(file);
  free(path);
  free_strings(child_argv);
  free_strings(child_envp);
  if (err == 0) {
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) {
      err = errno;
      failed = "pidfd_open";
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
    }
  }
  /* The child's ends are the child's now (or nobody's). */
  int child_ends[3] = {fds[0], fds[2], fds[4]};
  close_all(child_ends, 3);
  if (err != 0) {
    int parent_ends[3] = {fds[1], fds[3], fds[5]};
    close_all(parent_ends, 3);
    return throw_errno(env, err, failed);
  }
  CHECK(napi_create_object(env, &result));
  const char* names[] = {"pid", "pidfd", "stdin", "stdout", "stderr"};
  int numbers[] = {pid, pidfd, fds[1], fds[3], fds[5]};
  for (int i = 0; i < 5; i++) {
    CHECK(napi_create_int32(env, numbers[i], &value));
    CHECK(napi_set_named_property(env, result, names[i], value));
  }
  return result;
}

typedef struct {
  uv_poll_t poll;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  int pidfd;
  pid_t pid;
} exit_wait;

static void exit_wait_closed(uv_handle_t* handle) { free(handle->data); }

static void exit_done(uv_poll_t* poll, int status, int events) {
  (void)status;
  (void)events;
  exit_wait* wait = (exit_wait*)poll->data;
  siginfo_t info;
  memset(&info, 0, sizeof info);
  /* pidfd readable: the program has exited; reap it (it is ours, nobody else waits for it). */
  if (waitid(P_PID, (id_t)wait->pid, &info, WEXITED | WNOHANG) != 0 || info.si_pid == 0) return;
  uv_poll_stop(&wait->poll);
  close(wait->pidfd);
  napi_env env = wait->env;
  napi_handle_scope scope;
  napi_value callback, global, argv[2], ignored;
  if (napi_open_handle_scope(env, &scope) == napi_ok) {
    int exited = info.si_code == CLD_EXITED;
    if (napi_get_reference_value(env, wait->callback, &callback) == napi_ok && napi_get_global(env, &global) == napi_ok &&
        (exited ? napi_create_int32(env, info.si_status, &argv[0]) : napi_get_null(env, &argv[0])) == napi_ok &&
        (exited ? napi_get_null(env, &argv[1]) : napi_create_int32(env, info.si_status, &argv[1])) == napi_ok) {
      napi_make_callback(env, wait->context, global, callback, 2, argv, &ignored);
    }
    napi_close_handle_scope(env, scope);
  }
  napi_delete_reference(env, wait->callback);
  napi_async_destroy(env, wait->context);
  uv_close((uv_handle_t*)&wait->poll, exit_wait_closed);
}

/*
 * waitExit(pidfd, pid, callback(exitCode, signal)): calls back once, when the
 * program has exited and been reaped: the exit code, or null and the number
 * of the signal that ended it. Closes the pidfd.
 */
static napi_value wait_exit(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3], name;
  int32_t pidfd, pid;
  napi_valuetype type;
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3 || !get_int(env, argv[0], &pidfd) || !get_int(env, argv[1], &pid))
    return throw_type(env, "waitExit: pidfd and pid must be numbers");
  if (napi_typeof(env, argv[2], &type) != napi_ok || type != napi_function) return throw_type(env, "waitExit: callback must be a function");
  uv_loop_t* loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  exit_wait* wait = calloc(1, sizeof *wait);
  if (wait == NULL) return throw_errno(env, ENOMEM, "calloc");
  wait->env = env;
  wait->pidfd = pidfd;
  wait->pid = pid;
  int rc = uv_poll_init(loop, &wait->poll, pidfd);
  if (rc != 0) {
    free(wait);
    return throw_errno(env, -rc, "uv_poll_init");
  }
  wait->poll.data = wait;
  CHECK(napi_create_reference(env, argv[2], 1, &wait->callback));
  CHECK(napi_create_string_utf8(env, "ambientkit:exit", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, NULL, name, &wait->context));
  rc = uv_poll_start(&wait->poll, UV_READABLE, exit_done);
  if (rc != 0) {
    napi_delete_reference(env, wait->callback);
    napi_async_destroy(env, wait->context);
    uv_close((uv_handle_t*)&wait->poll, exit_wait_closed);
    return throw_errno(env, -rc, "uv_poll_start");
  }
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"runInNetns", NULL, run_in_netns, NULL, NULL, NULL, napi_enumerable, NULL},
      {"listenTcp", NULL, listen_tcp, NULL, NULL, NULL, napi_enumerable, NULL},
      {"connectTcp", NULL, connect_tcp, NULL, NULL, NULL, napi_enumerable, NULL},
      {"bindUdp", NULL, bind_udp, NULL, NULL, NULL, napi_enumerable, NULL},
      {"waitConnected", NULL, wait_connected, NULL, NULL, NULL, napi_enumerable, NULL},
      {"cancelWait", NULL, cancel_wait, NULL, NULL, NULL, napi_enumerable, NULL},
      {"acceptTcp", NULL, accept_tcp, NULL, NULL, NULL, napi_enumerable, NULL},
      {"stopAccepting", NULL, stop_accepting, NULL, NULL, NULL, napi_enumerable, NULL},
      {"waitReadable", NULL, wait_readable, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seqpacketConnect", NULL, seqpacket_connect, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seqpacketSend", NULL, seqpacket_send, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seqpacketRecv", NULL, seqpacket_recv, NULL, NULL, NULL, napi_enumerable, NULL},
      {"originalDst", NULL, original_dst, NULL, NULL, NULL, napi_enumerable, NULL},
      {"localAddress", NULL, local_address, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getMark", NULL, get_mark, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setMark", NULL, set_mark, NULL, NULL, NULL, napi_enumerable, NULL},
      {"peerCredentials", NULL, peer_credentials, NULL, NULL, NULL, napi_enumerable, NULL},
      {"socketOptions", NULL, socket_options, NULL, NULL, NULL, napi_enumerable, NULL},
      {"closeFd", NULL, close_fd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"nftAvailable", NULL, nft_available, NULL, NULL, NULL, napi_enumerable, NULL},
      {"nftRun", NULL, nft_run, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spawnInNetns", NULL, spawn_in_netns, NULL, NULL, NULL, napi_enumerable, NULL},
      {"waitExit", NULL, wait_exit, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties) != napi_ok) return NULL;
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
