/* A growable byte buffer with an optional hard limit; the buffer always stays NUL-terminated. */
#ifndef RIVET_BUF_H
#define RIVET_BUF_H

#include <stdarg.h>
#include <stddef.h>

typedef struct rv_buf_s {
    char *data;   /* owned; NULL until the first append */
    size_t len;   /* bytes used, not counting the terminating NUL */
    size_t cap;   /* bytes allocated */
    size_t limit; /* 0: unlimited; else appends past this length fail with RV_ERANGE */
} rv_buf_t;

#define RV_BUF_INIT                                                                                \
    { NULL, 0, 0, 0 }

/* Append n bytes. Returns 0, RV_ENOMEM or RV_ERANGE (limit); on error the buffer is unchanged. */
int rv_buf_append(rv_buf_t *b, const void *p, size_t n);
/* Append a C string. */
int rv_buf_puts(rv_buf_t *b, const char *s);
/* Append printf-style formatted text. */
int rv_buf_printf(rv_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Make room for n more bytes without changing len. */
int rv_buf_reserve(rv_buf_t *b, size_t n);
/* Forget the contents, keep the allocation. */
void rv_buf_reset(rv_buf_t *b);
/* Release the allocation; the buffer can be reused afterwards. */
void rv_buf_free(rv_buf_t *b);
/* Hand the allocation to the caller (who frees it with free()) and reset the buffer. */
char *rv_buf_steal(rv_buf_t *b, size_t *len);

#endif
