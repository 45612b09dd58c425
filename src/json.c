/* JSON text helpers: parsing a whole text, string escaping and the two error shapes of the API. */
#include "rivet/json.h"

#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "rivet/common.h"

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when it is not valid UTF-8. */
static size_t utf8_len(const unsigned char *p) {
    unsigned char c = p[0];
    if (c < 0x80) return 1;
    size_t n;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
        n = 2;
        cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
        n = 3;
        cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
        n = 4;
        cp = c & 0x07;
    } else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    /* Reject overlong forms, surrogates and values past U+10FFFF. */
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
        return 0;
    return n;
}

int rv_json_escape(rv_buf_t *out, const char *s) {
    static const char hex[] = "0123456789abcdef";
    int rc = rv_buf_append(out, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (rc == 0 && *p) {
        /* A run of printable ASCII goes in one piece. */
        const unsigned char *run = p;
        while (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') p++;
        if (p > run && (rc = rv_buf_append(out, run, (size_t)(p - run))) != 0) break;
        unsigned char c = *p;
        if (c == '\0') break;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            rc = rv_buf_append(out, e, 2);
            p++;
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            rc = rv_buf_append(out, e, 6);
            p++;
        } else {
            size_t n = utf8_len(p);
            if (n == 0) {
                rc = rv_buf_append(out, "\\ufffd", 6);
                p++;
            } else {
                rc = rv_buf_append(out, p, n);
                p += n;
            }
        }
    }
    return rc ? rc : rv_buf_append(out, "\"", 1);
}

int rv_json_error(rv_buf_t *out, const char *detail) {
    int rc = rv_buf_puts(out, "{\"detail\":");
    if (rc == 0) rc = rv_json_escape(out, detail);
    return rc ? rc : rv_buf_puts(out, "}");
}

int rv_json_validation(rv_buf_t *out, const rv_json_verr_t *errs, size_t n) {
    int rc = rv_buf_puts(out, "{\"detail\":[");
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = rv_buf_puts(out, i ? ",{\"loc\":[" : "{\"loc\":[");
        for (size_t j = 0; rc == 0 && j < 4 && errs[i].loc[j]; j++) {
            if (j) rc = rv_buf_puts(out, ",");
            if (rc == 0) rc = rv_json_escape(out, errs[i].loc[j]);
        }
        if (rc == 0) rc = rv_buf_puts(out, "],\"msg\":");
        if (rc == 0) rc = rv_json_escape(out, errs[i].msg);
        if (rc == 0) rc = rv_buf_puts(out, ",\"type\":");
        if (rc == 0) rc = rv_json_escape(out, errs[i].type);
        if (rc == 0) rc = rv_buf_puts(out, "}");
    }
    return rc ? rc : rv_buf_puts(out, "]}");
}

cJSON *rv_json_parse(const char *text, size_t len) {
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (j == NULL) return NULL;
    for (const char *p = end; p < text + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') {
            cJSON_Delete(j);
            return NULL;
        }
    }
    return j;
}

/* 1 when p (at least 6 bytes before end) starts the escape \u0000. */
static int nul_escape_at(const char *p, const char *end) {
    return end - p >= 6 && p[0] == '\\' && p[1] == 'u' && memcmp(p + 2, "0000", 4) == 0;
}

cJSON *rv_json_parse_nul_visible(const char *text, size_t len) {
    const char *end = text + len;
    char *copy = NULL;
    /* A backslash in JSON starts an escape of two characters or \uXXXX: stepping over both
     * characters keeps an escaped backslash from being read as the start of another escape. */
    for (const char *p = text; (p = memchr(p, '\\', (size_t)(end - p))) != NULL;) {
        if (nul_escape_at(p, end)) {
            if (copy == NULL) {
                if ((copy = malloc(len)) == NULL) return NULL;
                memcpy(copy, text, len);
            }
            copy[p - text + 5] = '1';
        }
        if (end - p <= 2) break;
        p += 2;
    }
    if (copy == NULL) return rv_json_parse(text, len);
    cJSON *j = rv_json_parse(copy, len);
    free(copy);
    return j;
}
