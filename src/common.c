/* Small helpers every module uses: error strings, constant-time compare, clocks, randomness. */
#include "rivet/common.h"

#include <errno.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <uv.h>

const char *rv_strerror(int err) {
    switch (err) {
    case RV_OK: return "ok";
    case RV_ENOMEM: return "out of memory";
    case RV_EINVAL: return "invalid input";
    case RV_ERANGE: return "value out of range";
    case RV_ENOTFOUND: return "not found";
    case RV_EMETHOD: return "method not allowed";
    case RV_ESIG: return "invalid signature";
    case RV_ESTALE: return "timestamp outside tolerance";
    case RV_EPAYLOAD: return "invalid payload";
    case RV_EIO: return "input/output error";
    case RV_ETIMEDOUT: return "timed out";
    case RV_ECANCELED: return "cancelled";
    case RV_EUNAVAIL: return "unavailable";
    case RV_EIGNORED: return "ignored";
    case RV_EMALFORMED: return "malformed content";
    default: break;
    }
    if (err < 0 && err > -10000) return uv_strerror(err);
    return "unknown error";
}

int rv_memeq_ct(const void *a, const void *b, size_t n) {
    const volatile unsigned char *x = a, *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++) d |= x[i] ^ y[i];
    return d == 0;
}

int rv_strieq(const char *a, size_t alen, const char *b) {
    size_t blen = strlen(b);
    if (alen != blen) return 0;
    for (size_t i = 0; i < alen; i++) {
        unsigned char c1 = (unsigned char)a[i], c2 = (unsigned char)b[i];
        if (c1 >= 'A' && c1 <= 'Z') c1 += 32;
        if (c2 >= 'A' && c2 <= 'Z') c2 += 32;
        if (c1 != c2) return 0;
    }
    return 1;
}

int rv_printable(const char *s, int spaces) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (*p == ' ' && !spaces)) return 0;
    return 1;
}

int rv_hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

uint64_t rv_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int rv_random(void *buf, size_t n) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return RV_EIO;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}
