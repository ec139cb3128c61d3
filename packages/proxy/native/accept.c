// Listening sockets whose connections go to JavaScript as bare descriptors.

#include "hbone.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

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
void acceptor_stop(acceptor_t *a) {
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

// The accepted connection's descriptor and peer go to JavaScript. Nothing
// waits on a return value here: when the arguments cannot be made, the
// connection is reset and the failure is raised as an uncaught exception.
static void hand_over(acceptor_t *a, int fd, const char *address, int port, int family) {
  napi_env env = a->env;
  const char *failed = NULL;
  napi_handle_scope scope;
  if (napi_checked(napi_open_handle_scope(env, &scope), "napi_open_handle_scope") != napi_ok) {
    close_fd_reset(fd);
    return;
  }
  napi_value callback, recv, argv[4], result;
  NAPI_TRY(failed, napi_get_reference_value(env, a->callback, &callback));
  NAPI_TRY(failed, napi_get_global(env, &recv));
  NAPI_TRY(failed, napi_create_int32(env, fd, &argv[0]));
  NAPI_TRY(failed, make_string(env, address, &argv[1]));
  NAPI_TRY(failed, napi_create_int32(env, port, &argv[2]));
  NAPI_TRY(failed, napi_create_int32(env, family, &argv[3]));
  napi_status status = napi_generic_failure;
  if (failed == NULL) {
    status = napi_checked(napi_make_callback(env, a->async, recv, callback, 4, argv, &result), "napi_make_callback");
    if (status != napi_ok && status != napi_pending_exception) failed = "napi_make_callback";
  }
  if (failed != NULL) {
    close_fd_reset(fd);
    throw_napi_failure(env, failed);
  }
  bool pending = false;
  if (napi_checked(napi_is_exception_pending(env, &pending), "napi_is_exception_pending") == napi_ok && pending) raise_pending(env);
  NAPI_CLEANUP(napi_close_handle_scope(env, scope));
}

static void acceptor_poll_cb(uv_poll_t *handle, int status, int events) {
  (void)events;
  acceptor_t *a = handle->data;
  if (status < 0) return;  // a listening socket's error is transient (ECONNABORTED and the like)
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
    hand_over(a, fd, address, port, family);
    if (a->fd < 0) return;  // closed from the callback
  }
}

static void acceptor_free(napi_env env, acceptor_t *a) {
  acceptor_stop(a);
  if (a->callback != NULL) NAPI_CLEANUP(napi_delete_reference(env, a->callback));
  if (a->async != NULL) NAPI_CLEANUP(napi_async_destroy(env, a->async));
  free(a);
}

static void acceptor_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  acceptor_free(env, data);
}

// accept(listenFd, callback(fd, address, port, family)) → handle; the listening socket becomes the addon's.
napi_value js_accept(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t fd;
  napi_valuetype type;
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_typeof(env, argv[1], &type) != napi_ok || type != napi_function) {
    return throw_type_error(env, "accept(listenFd, callback)");
  }
  instance_t *instance;
  uv_loop_t *loop;
  NAPI_CALL(env, napi_get_instance_data(env, (void **)&instance));
  NAPI_CALL(env, napi_get_uv_event_loop(env, &loop));
  acceptor_t *a = calloc(1, sizeof(*a));
  if (a == NULL) return throw_oom(env);
  a->env = env;
  a->fd = -1;  // not ours until everything below worked
  a->instance = instance;
  const char *failed = NULL;
  napi_value name, handle;
  NAPI_TRY(failed, napi_create_string_utf8(env, "ambientkit.accept", NAPI_AUTO_LENGTH, &name));
  NAPI_TRY(failed, napi_async_init(env, NULL, name, &a->async));
  NAPI_TRY(failed, napi_create_reference(env, argv[1], 1, &a->callback));
  NAPI_TRY(failed, napi_create_external(env, a, acceptor_finalize, NULL, &handle));
  if (failed != NULL) {
    // The external (made last) never exists when anything failed: no finalizer will run.
    acceptor_free(env, a);
    throw_napi_failure(env, failed);
    return NULL;
  }
  // From here the finalizer frees it.
  NAPI_CALL(env, napi_type_tag_object(env, handle, &ACCEPTOR_TAG));
  NAPI_CALL(env, napi_create_reference(env, handle, 1, &a->self));
  a->poll = new_poll(loop, instance, fd, a);
  if (a->poll == NULL) {
    NAPI_CLEANUP(napi_delete_reference(env, a->self));
    a->self = NULL;
    return throw_error(env, NULL, "cannot poll the listening socket");
  }
  a->fd = fd;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  set_poll(a->poll, &a->events, UV_READABLE, acceptor_poll_cb);
  a->next = instance->acceptors;
  instance->acceptors = a;
  return handle;
}

// stopAccepting(handle): closes the listening socket. Idempotent.
napi_value js_stop_accepting(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 1) return throw_type_error(env, "stopAccepting(handle)");
  acceptor_t *a = tagged_external(env, argv[0], &ACCEPTOR_TAG, "an acceptor from accept");
  if (a == NULL) return NULL;
  acceptor_stop(a);
  if (a->self != NULL) {
    NAPI_CALL(env, napi_delete_reference(env, a->self));
    a->self = NULL;
  }
  return NULL;
}
