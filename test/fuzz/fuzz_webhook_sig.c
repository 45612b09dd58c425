/* Fuzz the Stripe-Signature parser and the HMAC verifier.
 *
 * The input is "<header>\n<secret>\n<body>": the header value as a client sends it, the secret
 * the server holds and the raw body. Besides "no crash", three properties are checked: the result
 * is one of the documented codes; what rv_webhook_sign produces verifies, and stops verifying
 * when the body, the secret or the clock changes; and appending the fuzzed header's items to a
 * correct header changes the verdict exactly when the items repeat "t" (a malformed header) or
 * make the header longer than the bound, since other items are ignored or are extra v1 entries. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rivet/common.h"
#include "rivet/webhook_sig.h"

#define NOW          ((int64_t)1700000000)
#define FIXED_SECRET "whsec_fuzz_0123456789abcdef"

/* Split off the part of [*p, end) up to the next newline; the rest starts after it. */
static void take_line(const char **p, const char *end, const char **part, size_t *len) {
    const char *nl = memchr(*p, '\n', (size_t)(end - *p));
    *part = *p;
    *len = nl ? (size_t)(nl - *p) : (size_t)(end - *p);
    *p = nl ? nl + 1 : end;
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* 1 when some comma-separated item of h has the key "t" (blanks around the key ignored): the
 * documented rule by which a second t makes a header malformed. */
static int has_t_item(const char *h, size_t n) {
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && h[j] != ',') j++;
        const char *eq = memchr(h + i, '=', j - i);
        if (eq != NULL) {
            size_t a = i, b = (size_t)(eq - h);
            while (a < b && is_blank(h[a])) a++;
            while (b > a && is_blank(h[b - 1])) b--;
            if (b - a == 1 && h[a] == 't') return 1;
        }
        i = j + 1;
    }
    return 0;
}

static int known_result(int rc) {
    return rc == 0 || rc == RV_ESIG || rc == RV_ESTALE || rc == RV_ENOMEM || rc == RV_EINVAL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = (const char *)data, *end = p + size;
    const char *header, *secret_raw;
    size_t header_len, secret_len;
    take_line(&p, end, &header, &header_len);
    take_line(&p, end, &secret_raw, &secret_len);
    size_t body_len = (size_t)(end - p);

    /* The verifier reads the secret as a C string and the body by length: give each its own
     * allocation so that ASan sees any read past either. */
    char *secret = malloc(secret_len + 1);
    char *body = malloc(body_len ? body_len : 1);
    if (secret == NULL || body == NULL) {
        free(secret);
        free(body);
        return 0;
    }
    memcpy(secret, secret_raw, secret_len);
    secret[secret_len] = '\0';
    if (body_len) memcpy(body, p, body_len);

    /* The fuzzed header against several secrets, some of which must be skipped. */
    const char *secrets[] = {secret, NULL, "", FIXED_SECRET};
    int rc = rv_webhook_verify(header, header_len, body, body_len, secrets, 4, NOW, 300);
    FUZZ_CHECK(known_result(rc));
    rc = rv_webhook_verify(header, header_len, body, body_len, secrets, 4, NOW, -5);
    FUZZ_CHECK(known_result(rc));

    if (secret[0] != '\0') {
        int64_t t = NOW + (int64_t)(body_len % 1000);
        char signed_hdr[128];
        FUZZ_CHECK(rv_webhook_sign(secret, t, body, body_len, signed_hdr, sizeof signed_hdr) == 0);
        size_t sl = strlen(signed_hdr);
        const char *mine[] = {secret};

        FUZZ_CHECK(rv_webhook_verify(signed_hdr, sl, body, body_len, mine, 1, t, 0) == 0);
        FUZZ_CHECK(rv_webhook_verify(signed_hdr, sl, body, body_len, mine, 1, t + 301, 300) ==
                   RV_ESTALE);
        FUZZ_CHECK(rv_webhook_verify(signed_hdr, sl, body, body_len, mine, 1, t - 301, 300) ==
                   RV_ESTALE);

        /* Another secret, and the same secret with one more byte, must both fail. */
        const char *fixed[] = {FIXED_SECRET};
        if (strcmp(secret, FIXED_SECRET) != 0)
            FUZZ_CHECK(rv_webhook_verify(signed_hdr, sl, body, body_len, fixed, 1, t, 0) ==
                       RV_ESIG);
        char *longer = malloc(secret_len + 2);
        if (longer != NULL) {
            snprintf(longer, secret_len + 2, "%sx", secret);
            const char *other[] = {longer};
            FUZZ_CHECK(rv_webhook_verify(signed_hdr, sl, body, body_len, other, 1, t, 0) ==
                       RV_ESIG);
            free(longer);
        }

        /* A body with one byte changed no longer matches. */
        if (body_len > 0) {
            body[body_len - 1] ^= 0x01;
            FUZZ_CHECK(rv_webhook_verify(signed_hdr, sl, body, body_len, mine, 1, t, 0) == RV_ESIG);
            body[body_len - 1] ^= 0x01;
        }

        /* The correct header followed by the fuzzed items. */
        size_t cl = sl + 1 + header_len;
        char *combined = malloc(cl);
        if (combined != NULL) {
            memcpy(combined, signed_hdr, sl);
            combined[sl] = ',';
            memcpy(combined + sl + 1, header, header_len);
            int expect = 0;
            if (cl > RV_WEBHOOK_MAX_HEADER || has_t_item(header, header_len)) expect = RV_ESIG;
            rc = rv_webhook_verify(combined, cl, body, body_len, mine, 1, t, 0);
            if (rc != expect)
                fprintf(stderr, "fuzz: combined header verified %d, expected %d\n", rc, expect);
            FUZZ_CHECK(rc == expect);
            free(combined);
        }
    }
    free(secret);
    free(body);
    return 0;
}
