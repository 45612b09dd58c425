/* Shared definitions for every rivetd module: error codes, version, helpers. */
#ifndef RIVET_COMMON_H
#define RIVET_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define RV_VERSION "0.1.0"
#define RV_SERVICE "rivet-api"

/* Errors are negative. libuv's UV_E* codes may also be returned where a libuv call failed;
 * RV_E* codes are below -10000 so the two ranges never collide. */
enum {
    RV_OK = 0,
    RV_ENOMEM = -10001,     /* allocation failed */
    RV_EINVAL = -10002,     /* malformed input */
    RV_ERANGE = -10003,     /* value out of bounds or too large */
    RV_ENOTFOUND = -10004,  /* no such thing (route, key, field) */
    RV_EMETHOD = -10005,    /* route exists, method does not */
    RV_ESIG = -10006,       /* signature missing or does not match */
    RV_ESTALE = -10007,     /* timestamp outside the tolerance */
    RV_EPAYLOAD = -10008,   /* body is not what was expected */
    RV_EIO = -10009,        /* network or peer failure */
    RV_ETIMEDOUT = -10010,  /* deadline passed */
    RV_ECANCELED = -10011,  /* the caller cancelled */
    RV_EUNAVAIL = -10012,   /* a dependency is down */
    RV_EIGNORED = -10013,   /* understood, deliberately not acted on */
    RV_EMALFORMED = -10014, /* well formed, but content no consumer should be given */
};

/* Closing a module (rv_<module>_close), the same contract everywhere: the call stops the module
 * at once and the object must not be used after it; no callback of the module runs from inside
 * the call; callbacks of work in flight either never run (Stripe calls, reads, reconciler runs,
 * sentinel queries) or run once, later, with an error (Redis commands: RV_EUNAVAIL), as each
 * header says; memory held by libuv handles is released from the loop, so the caller keeps the
 * loop running until it has no handles left. A done callback, where a module takes one, runs
 * from the loop once everything is released. */

/* A static English description of an RV_E* or UV_E* code. */
const char *rv_strerror(int err);

#define rv_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define RV_ARRAY_LEN(a)                    (sizeof(a) / sizeof((a)[0]))
#define RV_UNUSED(x)                       ((void)(x))

/* Constant-time comparison of two byte strings of the same length: 1 when equal, like every
 * rv_*eq function. */
int rv_memeq_ct(const void *a, const void *b, size_t n);

/* Case-insensitive ASCII comparison of a counted string with a C string: 1 when equal. */
int rv_strieq(const char *a, size_t alen, const char *b);

/* 1 when every byte of s is visible ASCII (0x21..0x7e), or also a space when spaces is 1; else
 * 0. Bytes above 0x7e count as visible: UTF-8 text passes. */
int rv_printable(const char *s, int spaces);

/* The value of a hexadecimal digit (either case), or -1. */
int rv_hexval(int c);

/* Milliseconds since an arbitrary point (CLOCK_MONOTONIC). */
uint64_t rv_now_ms(void);

/* Fill buf with n cryptographically random bytes (getrandom). Returns 0 or RV_EIO. */
int rv_random(void *buf, size_t n);

#endif
