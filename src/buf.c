/* Growable, optionally bounded byte buffer. */
#include "rivet/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rivet/common.h"

int rv_buf_reserve(rv_buf_t *b, size_t n) {
    if (b->limit && (n > b->limit || b->len > b->limit - n)) return RV_ERANGE;
    if (n > SIZE_MAX / 2 - b->len) return RV_ERANGE; /* no size arithmetic may wrap */
    size_t need = b->len + n + 1;
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap *= 2;
    char *p = realloc(b->data, cap);
    if (p == NULL) return RV_ENOMEM;
    b->data = p;
    b->cap = cap;
    return 0;
}

int rv_buf_append(rv_buf_t *b, const void *p, size_t n) {
    int rc = rv_buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

int rv_buf_puts(rv_buf_t *b, const char *s) { return rv_buf_append(b, s, strlen(s)); }

int rv_buf_printf(rv_buf_t *b, const char *fmt, ...) {
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return RV_EINVAL;
    if ((size_t)n < sizeof small) return rv_buf_append(b, small, (size_t)n);
    int rc = rv_buf_reserve(b, (size_t)n);
    if (rc) return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void rv_buf_reset(rv_buf_t *b) {
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

void rv_buf_free(rv_buf_t *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

char *rv_buf_steal(rv_buf_t *b, size_t *len) {
    char *p = b->data;
    if (len) *len = b->len;
    b->data = NULL;
    b->len = b->cap = 0;
    return p;
}
