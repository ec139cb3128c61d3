// Byte queues (what a tunnel or a session holds on its way through) and copies of text.

#include "hbone.h"

#include <stdlib.h>
#include <string.h>

size_t bq_len(const bq_t *q) { return q->end - q->start; }

int bq_reserve(bq_t *q, size_t n) {
  if (q->cap - q->end >= n) return 0;
  if (q->start > 0) {
    memmove(q->data, q->data + q->start, q->end - q->start);
    q->end -= q->start;
    q->start = 0;
    if (q->cap - q->end >= n) return 0;
  }
  size_t cap = q->cap ? q->cap : 16 * 1024;
  while (cap - q->end < n) cap *= 2;
  uint8_t *data = realloc(q->data, cap);
  if (data == NULL) return -1;
  q->data = data;
  q->cap = cap;
  return 0;
}

int bq_append(bq_t *q, const uint8_t *src, size_t n) {
  if (bq_reserve(q, n) != 0) return -1;
  memcpy(q->data + q->end, src, n);
  q->end += n;
  return 0;
}

// Consumed bytes; an emptied queue gives its memory back, so an idle tunnel holds none.
void bq_consume(bq_t *q, size_t n) {
  q->start += n;
  if (q->start == q->end) {
    free(q->data);
    q->data = NULL;
    q->start = q->end = q->cap = 0;
  }
}

void bq_free(bq_t *q) {
  free(q->data);
  q->data = NULL;
  q->start = q->end = q->cap = 0;
}

char *dup_text(const char *text) { return text == NULL ? NULL : strdup(text); }

char *dup_bytes(const uint8_t *data, size_t len) {
  char *copy = malloc(len + 1);
  if (copy == NULL) return NULL;
  memcpy(copy, data, len);
  copy[len] = 0;
  return copy;
}
