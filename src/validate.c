/* Validation of what callers send: e-mail addresses, ids, redirect URLs, client addresses. */
#include "rivet/validate.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

static int atext(int c) { return isalnum(c) || (c && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL); }

int rv_valid_email(const char *s) {
    size_t n = strlen(s);
    if (n < 3 || n > 254) return 0;
    const char *at = strrchr(s, '@');
    if (at == NULL || at == s || (size_t)(at - s) > 64) return 0;
    /* Local part: dot-atom. */
    for (const char *p = s; p < at; p++) {
        if (*p == '.') {
            if (p == s || p + 1 == at || p[1] == '.') return 0;
        } else if (!atext((unsigned char)*p)) {
            return 0;
        }
    }
    /* Domain: labels of 1-63 characters, no leading or trailing hyphen, at least two. */
    const char *d = at + 1;
    int labels = 0;
    const char *label = d;
    for (const char *p = d;; p++) {
        if (*p == '.' || *p == '\0') {
            size_t ll = (size_t)(p - label);
            if (ll == 0 || ll > 63 || label[0] == '-' || p[-1] == '-') return 0;
            labels++;
            if (*p == '\0') break;
            label = p + 1;
        } else if (!(isalnum((unsigned char)*p) || *p == '-')) {
            return 0;
        }
    }
    if (labels < 2) return 0;
    /* The top-level label is alphabetic (or an IDN "xn--" label). */
    if (strncmp(label, "xn--", 4) == 0) return 1;
    for (const char *p = label; *p; p++)
        if (!isalpha((unsigned char)*p)) return 0;
    return strlen(label) >= 2;
}

static int id_with_prefix(const char *s, const char *prefix, size_t maxlen) {
    size_t pl = strlen(prefix);
    if (strncmp(s, prefix, pl) != 0) return 0;
    size_t n = 0;
    for (const char *p = s + pl; *p; p++, n++)
        if (!isalnum((unsigned char)*p)) return 0;
    return n >= 1 && n <= maxlen;
}

int rv_valid_session_id(const char *s) {
    return id_with_prefix(s, "cs_test_", 250) || id_with_prefix(s, "cs_live_", 250);
}

int rv_valid_customer_id(const char *s) { return id_with_prefix(s, "cus_", 250); }

int rv_valid_redirect(const char *url, const rv_strlist_t *origins) {
    size_t n = strlen(url);
    if (n == 0 || n > 2048) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c == 0x7f || c == '\\') return 0;
    }
    char origin[512];
    if (rv_url_origin(url, origin, sizeof origin)) return 0;
    return rv_strlist_contains(origins, origin);
}

static int is_ip(const char *s) {
    unsigned char tmp[16];
    return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

void rv_client_addr(const char *peer, const char *xff, size_t xff_len, const rv_strlist_t *trusted,
                    char *out, size_t outlen) {
    snprintf(out, outlen, "%s", peer);
    if (xff == NULL || !rv_strlist_contains(trusted, peer)) return;
    /* Walk from the right: each hop appended the address it saw. */
    size_t end = xff_len;
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',') start--;
        size_t a = start, b = end;
        while (a < b && (xff[a] == ' ' || xff[a] == '\t')) a++;
        while (b > a && (xff[b - 1] == ' ' || xff[b - 1] == '\t')) b--;
        char ip[64];
        if (b - a == 0 || b - a >= sizeof ip) return;
        memcpy(ip, xff + a, b - a);
        ip[b - a] = '\0';
        if (!is_ip(ip)) return; /* garbage: keep the last address known to be real */
        snprintf(out, outlen, "%s", ip);
        if (!rv_strlist_contains(trusted, ip)) return;
        end = start ? start - 1 : 0;
    }
}
