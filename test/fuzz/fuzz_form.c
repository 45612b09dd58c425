/* Fuzz the form encoder that writes every request body sent to Stripe, and the path escaper.
 *
 * The input is a sequence of NUL-separated strings taken in pairs as keys and values (a missing
 * last value is NULL, which the encoder sends as empty). The property is a round trip: the output
 * contains only unreserved characters, '%', '&' and '=', and decoding it gives back exactly the
 * pairs. An empty key must be refused with the buffer left as it was. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/stripe.h"

#define MAX_PAIRS 64
#define PREFIX    "prefix-kept&"

static int unreserved(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

static int upper_hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode s[0..n) into out (at least n + 1 bytes); -1 on anything that is not unreserved or an
 * upper-case %XX, so that a stray character in the encoder's output is caught. */
static int decode(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (n - i < 3) return -1;
            int hi = upper_hex(s[i + 1]), lo = upper_hex(s[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = (unsigned char)(hi << 4 | lo);
            /* An unreserved byte must never be escaped, a reserved one always. */
            if (unreserved(c) || c == 0) return -1;
            i += 2;
        } else if (!unreserved(c)) {
            return -1;
        }
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* Check one "k=v" item of the output against the pair it came from. */
static void check_item(const char *item, size_t n, const rv_form_kv_t *kv) {
    const char *eq = memchr(item, '=', n);
    FUZZ_CHECK(eq != NULL);
    char *buf = malloc(n + 1);
    FUZZ_CHECK(buf != NULL);
    FUZZ_CHECK(decode(item, (size_t)(eq - item), buf) == 0);
    FUZZ_CHECK(strcmp(buf, kv->key) == 0);
    FUZZ_CHECK(decode(eq + 1, n - (size_t)(eq + 1 - item), buf) == 0);
    FUZZ_CHECK(strcmp(buf, kv->value ? kv->value : "") == 0);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (text == NULL) return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    /* Cut the text at its NULs into at most 2 * MAX_PAIRS strings. */
    const char *strs[2 * MAX_PAIRS];
    size_t nstr = 0;
    for (size_t i = 0; i <= size && nstr < 2 * MAX_PAIRS;) {
        strs[nstr++] = text + i;
        i += strlen(text + i) + 1;
    }
    rv_form_kv_t kv[MAX_PAIRS];
    size_t n = (nstr + 1) / 2;
    int empty_key = 0;
    for (size_t i = 0; i < n; i++) {
        kv[i].key = strs[2 * i];
        kv[i].value = 2 * i + 1 < nstr ? strs[2 * i + 1] : NULL;
        if (kv[i].key[0] == '\0') empty_key = 1;
    }

    /* The encoder appends: what was in the buffer before must survive, even on failure. */
    rv_buf_t out = RV_BUF_INIT;
    FUZZ_CHECK(rv_buf_puts(&out, PREFIX) == 0);
    int rc = rv_form_encode(kv, n, &out);
    FUZZ_CHECK(out.len >= strlen(PREFIX) && memcmp(out.data, PREFIX, strlen(PREFIX)) == 0);
    if (empty_key) {
        FUZZ_CHECK(rc == RV_EINVAL);
        FUZZ_CHECK(out.len == strlen(PREFIX) && out.data[out.len] == '\0');
    } else {
        FUZZ_CHECK(rc == 0);
        FUZZ_CHECK(strlen(out.data) == out.len);
        const char *p = out.data + strlen(PREFIX), *end = out.data + out.len;
        size_t items = 0;
        while (p <= end && items < n) {
            const char *amp = memchr(p, '&', (size_t)(end - p));
            const char *item_end = amp ? amp : end;
            check_item(p, (size_t)(item_end - p), &kv[items]);
            items++;
            p = item_end + 1;
        }
        FUZZ_CHECK(items == n && p == end + 1);
    }
    rv_buf_free(&out);

    /* Each string alone as a path segment. */
    for (size_t i = 0; i < nstr; i++) {
        rv_buf_t seg = RV_BUF_INIT;
        FUZZ_CHECK(rv_url_escape(strs[i], &seg) == 0);
        if (seg.data == NULL) {
            FUZZ_CHECK(strs[i][0] == '\0');
        } else {
            char *back = malloc(seg.len + 1);
            FUZZ_CHECK(back != NULL);
            FUZZ_CHECK(decode(seg.data, seg.len, back) == 0);
            FUZZ_CHECK(strcmp(back, strs[i]) == 0);
            free(back);
        }
        rv_buf_free(&seg);
    }
    free(text);
    return 0;
}
