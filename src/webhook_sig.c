/* Stripe webhook signatures: parse the Stripe-Signature header, verify the HMAC-SHA256 of
 * "<t>.<raw body>" against every configured secret, and enforce the timestamp tolerance.
 * Pure: no I/O, no clock (the caller passes now). */
#include "rivet/webhook_sig.h"

#include <inttypes.h>
#include <mbedtls/md.h>
#include <stdio.h>
#include <string.h>

#include "rivet/common.h"

#define SIG_LEN 32 /* bytes of an HMAC-SHA256 */

/* The parsed header: the timestamp's digits as they were signed, and up to the first
 * RV_WEBHOOK_MAX_V1 v1 signatures, each decoded (or marked unusable). */
typedef struct sig_header_s {
    const char *t;
    size_t t_len;
    int64_t t_val;
    size_t nv1;
    unsigned char v1[RV_WEBHOOK_MAX_V1][SIG_LEN];
    int v1_ok[RV_WEBHOOK_MAX_V1];
} sig_header_t;

static int is_space(char c) { return c == ' ' || c == '\t'; }

static void trim(const char **p, size_t *n) {
    while (*n > 0 && is_space(**p)) {
        (*p)++;
        (*n)--;
    }
    while (*n > 0 && is_space((*p)[*n - 1])) (*n)--;
}

/* Only lowercase hex digits are accepted: Stripe sends lowercase, and its own libraries compare
 * the lowercase hex string, so an uppercase signature is not one Stripe produced. */
static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

/* Decode exactly 64 lowercase hex digits into 32 bytes; anything else does not decode. The
 * signature is the sender's claim, not a secret, so decoding need not be constant time. */
static int decode_sig(const char *s, size_t n, unsigned char out[SIG_LEN]) {
    if (n != 2 * SIG_LEN) return -1;
    for (size_t i = 0; i < SIG_LEN; i++) {
        int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

/* A plain decimal integer: digits only, no sign, no spaces inside, no overflow. */
static int parse_t(const char *s, size_t n, int64_t *out) {
    if (n == 0) return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        int d = s[i] - '0';
        if (v > (INT64_MAX - d) / 10) return -1;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

/* Items are "key=value" separated by commas, in any order, with blanks tolerated around items,
 * keys and values. Items without '=' and unknown schemes (v0 included) are skipped, as Stripe's
 * libraries do; a bad or repeated t makes the whole header malformed. */
static int parse_header(const char *h, size_t len, sig_header_t *sh) {
    const char *end = h + len;
    const char *p = h;
    while (p <= end) {
        const char *comma = memchr(p, ',', (size_t)(end - p));
        const char *item_end = comma ? comma : end;
        const char *eq = memchr(p, '=', (size_t)(item_end - p));
        if (eq != NULL) {
            const char *k = p, *v = eq + 1;
            size_t kn = (size_t)(eq - p), vn = (size_t)(item_end - v);
            trim(&k, &kn);
            trim(&v, &vn);
            if (kn == 1 && k[0] == 't') {
                if (sh->t != NULL) return RV_ESIG;
                if (parse_t(v, vn, &sh->t_val) != 0) return RV_ESIG;
                sh->t = v;
                sh->t_len = vn;
            } else if (kn == 2 && k[0] == 'v' && k[1] == '1' && sh->nv1 < RV_WEBHOOK_MAX_V1) {
                sh->v1_ok[sh->nv1] = decode_sig(v, vn, sh->v1[sh->nv1]) == 0;
                sh->nv1++;
            }
        }
        if (comma == NULL) break;
        p = comma + 1;
    }
    if (sh->t == NULL || sh->nv1 == 0) return RV_ESIG;
    return 0;
}

/* HMAC-SHA256(key, t "." body) computed incrementally, so the body is never copied. */
static int hmac_payload(mbedtls_md_context_t *ctx, const char *key, size_t keylen, const char *t,
                        size_t t_len, const char *body, size_t body_len,
                        unsigned char mac[SIG_LEN]) {
    if (mbedtls_md_hmac_starts(ctx, (const unsigned char *)key, keylen) != 0) return -1;
    if (mbedtls_md_hmac_update(ctx, (const unsigned char *)t, t_len) != 0) return -1;
    if (mbedtls_md_hmac_update(ctx, (const unsigned char *)".", 1) != 0) return -1;
    if (body_len > 0 && mbedtls_md_hmac_update(ctx, (const unsigned char *)body, body_len) != 0) {
        return -1;
    }
    if (mbedtls_md_hmac_finish(ctx, mac) != 0) return -1;
    return 0;
}

static int setup_ctx(mbedtls_md_context_t *ctx) {
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    mbedtls_md_init(ctx);
    if (info == NULL) return RV_EINVAL;
    int rc = mbedtls_md_setup(ctx, info, 1);
    if (rc == MBEDTLS_ERR_MD_ALLOC_FAILED) return RV_ENOMEM;
    return rc == 0 ? 0 : RV_EINVAL;
}

/* 1 when t lies within tolerance of now in either direction; computed without overflow. */
static int within_tolerance(int64_t t, int64_t now, int64_t tolerance) {
    int64_t diff;
    if (tolerance < 0) tolerance = 0;
    if (t <= now) {
        if (__builtin_sub_overflow(now, t, &diff)) return 0;
    } else {
        if (__builtin_sub_overflow(t, now, &diff)) return 0;
    }
    return diff <= tolerance;
}

int rv_webhook_verify(const char *header, size_t header_len, const char *body, size_t body_len,
                      const char *const *secrets, size_t nsecrets, int64_t now, int64_t tolerance) {
    if (header == NULL || header_len == 0 || header_len > RV_WEBHOOK_MAX_HEADER) return RV_ESIG;
    if (body == NULL && body_len > 0) return RV_ESIG;
    if (secrets == NULL) return RV_ESIG;

    sig_header_t sh;
    memset(&sh, 0, sizeof sh);
    int rc = parse_header(header, header_len, &sh);
    if (rc != 0) return rc;

    mbedtls_md_context_t ctx;
    rc = setup_ctx(&ctx);
    if (rc != 0) {
        mbedtls_md_free(&ctx);
        return rc;
    }

    /* Every secret is tried against every v1 without stopping at the first match, so the time
     * taken does not tell which secret or which signature matched. */
    int matched = 0;
    unsigned char mac[SIG_LEN];
    for (size_t i = 0; i < nsecrets; i++) {
        const char *key = secrets[i];
        /* An empty key is known to everyone: it can never authenticate anything. */
        if (key == NULL || key[0] == '\0') continue;
        if (hmac_payload(&ctx, key, strlen(key), sh.t, sh.t_len, body, body_len, mac) != 0) {
            rc = RV_EINVAL;
            break;
        }
        for (size_t j = 0; j < sh.nv1; j++) {
            int eq = rv_memeq_ct(mac, sh.v1[j], SIG_LEN);
            matched |= eq & sh.v1_ok[j];
        }
    }
    mbedtls_md_free(&ctx);
    memset(mac, 0, sizeof mac);
    if (rc != 0) return rc;

    if (!matched) return RV_ESIG;
    if (!within_tolerance(sh.t_val, now, tolerance)) return RV_ESTALE;
    return 0;
}

int rv_webhook_sign(const char *secret, int64_t t, const char *body, size_t body_len, char *out,
                    size_t outlen) {
    if (secret == NULL || secret[0] == '\0' || out == NULL) return RV_EINVAL;
    if (body == NULL && body_len > 0) return RV_EINVAL;
    if (t < 0) return RV_ERANGE;

    char ts[24];
    int tn = snprintf(ts, sizeof ts, "%" PRId64, t);
    if (tn < 0 || (size_t)tn >= sizeof ts) return RV_ERANGE;
    /* "t=" digits ",v1=" 64 hex and the NUL. */
    size_t need = 2 + (size_t)tn + 4 + 2 * SIG_LEN + 1;
    if (outlen < need) return RV_ERANGE;

    mbedtls_md_context_t ctx;
    int rc = setup_ctx(&ctx);
    unsigned char mac[SIG_LEN];
    if (rc == 0 &&
        hmac_payload(&ctx, secret, strlen(secret), ts, (size_t)tn, body, body_len, mac) != 0) {
        rc = RV_EINVAL;
    }
    mbedtls_md_free(&ctx);
    if (rc != 0) return rc;

    static const char digits[] = "0123456789abcdef";
    char *p = out;
    memcpy(p, "t=", 2);
    p += 2;
    memcpy(p, ts, (size_t)tn);
    p += tn;
    memcpy(p, ",v1=", 4);
    p += 4;
    for (size_t i = 0; i < SIG_LEN; i++) {
        *p++ = digits[mac[i] >> 4];
        *p++ = digits[mac[i] & 0x0f];
    }
    *p = '\0';
    return 0;
}
