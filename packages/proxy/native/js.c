// N-API helpers: the status check every call goes through, values, and the
// fault injection of test builds.

#include "hbone.h"

#include <stdlib.h>
#include <string.h>

#ifdef HBONE_FAULTS
// Test builds only (build-native.mjs --variant faults): injectFaults({ eventAlloc, napi, count })
// makes event allocations on the data-path threads fail, and the next `count` N-API calls whose
// text starts with `napi` report a failure (after running), so that tests can see what a real
// failure would do. Never compiled into a build that ships.
static atomic_bool faulty_event_alloc;
static char faulty_call[64];
static atomic_int faulty_calls;

bool fault_event_alloc(void) { return atomic_load(&faulty_event_alloc); }

napi_status napi_checked(napi_status status, const char *call) {
  if (status != napi_ok || atomic_load(&faulty_calls) <= 0 || strncmp(call, faulty_call, strlen(faulty_call)) != 0) return status;
  atomic_fetch_sub(&faulty_calls, 1);
  return napi_generic_failure;
}

// injectFaults({ eventAlloc?: boolean, napi?: string, count?: number })
napi_value js_inject_faults(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value options, value;
  bool flag = false, has;
  int32_t count = 1;
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, &options, NULL, NULL));
  NAPI_CALL(env, napi_has_named_property(env, options, "eventAlloc", &has));
  if (has) {
    NAPI_CALL(env, napi_get_named_property(env, options, "eventAlloc", &value));
    NAPI_CALL(env, napi_get_value_bool(env, value, &flag));
    atomic_store(&faulty_event_alloc, flag);
  }
  NAPI_CALL(env, napi_has_named_property(env, options, "count", &has));
  if (has) {
    NAPI_CALL(env, napi_get_named_property(env, options, "count", &value));
    NAPI_CALL(env, napi_get_value_int32(env, value, &count));
  }
  NAPI_CALL(env, napi_has_named_property(env, options, "napi", &has));
  if (has) {
    size_t len;
    NAPI_CALL(env, napi_get_named_property(env, options, "napi", &value));
    NAPI_CALL(env, napi_get_value_string_utf8(env, value, faulty_call, sizeof(faulty_call), &len));
    atomic_store(&faulty_calls, count);
  }
  return NULL;
}
#else
bool fault_event_alloc(void) { return false; }

napi_status napi_checked(napi_status status, const char *call) {
  (void)call;
  return status;
}
#endif

// Throws an Error naming the call, unless the call left an exception of its own pending.
void throw_napi_failure(napi_env env, const char *call) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  char message[200];
  snprintf(message, sizeof(message), "ambient_hbone: N-API call failed: %.150s", call);
  throw_error(env, "ERR_AMBIENT_HBONE_NAPI", message);
}

// The throw_* helpers return NULL, for `return throw_...(...)`. A throw that fails itself leaves
// nothing to tell JavaScript with: it is written to stderr.
napi_value throw_error(napi_env env, const char *code, const char *message) {
  if (napi_throw_error(env, code, message) != napi_ok) fprintf(stderr, "ambient_hbone: %s\n", message);
  return NULL;
}

napi_value throw_type_error(napi_env env, const char *message) {
  if (napi_throw_type_error(env, NULL, message) != napi_ok) fprintf(stderr, "ambient_hbone: %s\n", message);
  return NULL;
}

napi_value throw_range_error(napi_env env, const char *code, const char *message) {
  if (napi_throw_range_error(env, code, message) != napi_ok) fprintf(stderr, "ambient_hbone: %s\n", message);
  return NULL;
}

napi_value throw_oom(napi_env env) { return throw_error(env, "ERR_AMBIENT_HBONE_NAPI", "ambient_hbone: out of memory"); }

// Reports `exception` as uncaught, as Node reports one thrown by an event listener. An
// environment that is ending (a worker being terminated) runs no JavaScript any more, and
// Node reports the failure as a pending exception then: nothing is left to report to.
void raise_uncaught(napi_env env, napi_value exception) {
  napi_status status = napi_checked(napi_fatal_exception(env, exception), "napi_fatal_exception");
  if (status != napi_ok && status != napi_pending_exception && status != napi_cannot_run_js) fprintf(stderr, "ambient_hbone: napi_fatal_exception failed\n");
}

// The exception a callback left pending, raised as uncaught.
void raise_pending(napi_env env) {
  napi_value exception;
  if (napi_checked(napi_get_and_clear_last_exception(env, &exception), "napi_get_and_clear_last_exception") == napi_ok) raise_uncaught(env, exception);
}

napi_status make_string(napi_env env, const char *text, napi_value *result) {
  return text == NULL ? napi_get_null(env, result) : napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, result);
}

napi_status make_number(napi_env env, double n, napi_value *result) { return napi_create_double(env, n, result); }

// A copy of a JavaScript string, or NULL (with no exception) when it is not one or memory ran out.
char *get_string(napi_env env, napi_value value) {
  size_t len;
  if (napi_checked(napi_get_value_string_utf8(env, value, NULL, 0, &len), "napi_get_value_string_utf8") != napi_ok) return NULL;
  char *text = malloc(len + 1);
  if (text == NULL) return NULL;
  if (napi_checked(napi_get_value_string_utf8(env, value, text, len + 1, &len), "napi_get_value_string_utf8") != napi_ok) {
    free(text);
    return NULL;
  }
  return text;
}
