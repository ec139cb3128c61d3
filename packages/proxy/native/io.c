// Poll handles and sockets.

#include "hbone.h"

#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

// The close callback of every poll handle: on the environment's loop, the
// last one closed during a shutdown lets the environment finish it.
static void free_handle(uv_handle_t *handle) {
  handle_box_t *box = (handle_box_t *)handle;
  instance_t *instance = box->instance;
  free(box);
  if (instance != NULL && --instance->handles == 0 && instance->shutting_down) NAPI_CLEANUP(napi_remove_async_cleanup_hook(instance->cleanup));
}

// libuv reports a socket error (EPOLLERR) as UV_EBADF: the socket's own error says what happened.
int socket_error(int fd, int status) {
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0) return err;
  return -status;
}

void set_poll(uv_poll_t *poll, int *current, int wanted, uv_poll_cb cb) {
  if (poll == NULL || *current == wanted) return;
  *current = wanted;
  if (wanted == 0) uv_poll_stop(poll);
  else uv_poll_start(poll, wanted, cb);
}

// A poll handle on `loop`; `instance` counts it when the loop is the environment's.
uv_poll_t *new_poll(uv_loop_t *loop, instance_t *instance, int fd, void *data) {
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

void close_poll(uv_poll_t **poll) {
  if (*poll == NULL) return;
  uv_poll_stop(*poll);
  uv_close((uv_handle_t *)*poll, free_handle);
  *poll = NULL;
}

// Closes with RST rather than FIN (SO_LINGER 0): what a reset propagates as.
void close_fd_reset(int fd) {
  struct linger linger = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
  close(fd);
}

