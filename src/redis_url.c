/* REDIS_URL parsing: redis://[[user]:pass@]host[:port][/db] and unix:///path[?db=N]. Pure: no
 * name resolution and no I/O; the queue decides which hosts it accepts. The parser is strict so
 * that a typo in the configuration stops start-up instead of pointing rivetd somewhere else. */
#include "rivet/redis_url.h"

#include <string.h>

#include "rivet/common.h"

/* No legitimate URL comes near this; it bounds every scan below. */
#define URL_MAX 2048
/* Redis's default is 16 databases; a server can be configured with more, never this many. */
#define DB_MAX  10000

/* Percent-decode s[0..n) into out (size cap, NUL-terminated). Rejects bad escapes, a decoded NUL
 * or control character, and anything that does not fit. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n) return RV_EINVAL;
            int hi = rv_hexval(s[i + 1]), lo = rv_hexval(s[i + 2]);
            if (hi < 0 || lo < 0) return RV_EINVAL;
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f) return RV_EINVAL;
        if (o + 1 >= cap) return RV_EINVAL;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

/* A decimal number of at most maxdigits digits, no sign, within [lo, hi]. */
static int parse_num(const char *s, size_t n, size_t maxdigits, long lo, long hi, int *out) {
    if (n == 0 || n > maxdigits) return RV_EINVAL;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return RV_EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi) return RV_EINVAL;
    *out = (int)v;
    return 0;
}

static int is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_';
}

static int is_v6_char(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' ||
           c == '.';
}

static int starts_with_ci(const char *s, const char *prefix) {
    return rv_strieq(s, strnlen(s, strlen(prefix)), prefix);
}

/* host[:port] or [v6][:port] in s[0..n). */
static int parse_hostport(const char *s, size_t n, rv_redis_url_t *out) {
    const char *host;
    size_t hlen;
    const char *rest;
    const char *end = s + n;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close) return RV_EINVAL;
        host = s + 1;
        hlen = (size_t)(close - host);
        /* The shortest IPv6 literal is "::". */
        if (hlen < 2 || !memchr(host, ':', hlen)) return RV_EINVAL;
        for (size_t i = 0; i < hlen; i++) {
            if (!is_v6_char(host[i])) return RV_EINVAL;
        }
        rest = close + 1;
    } else {
        const char *colon = memchr(s, ':', n);
        host = s;
        hlen = colon ? (size_t)(colon - s) : n;
        for (size_t i = 0; i < hlen; i++) {
            if (!is_name_char(host[i])) return RV_EINVAL;
        }
        rest = s + hlen;
    }
    if (hlen == 0 || hlen >= sizeof out->host) return RV_EINVAL;
    memcpy(out->host, host, hlen);
    out->host[hlen] = '\0';
    if (rest == end) return 0;
    if (*rest != ':') return RV_EINVAL;
    rest++;
    return parse_num(rest, (size_t)(end - rest), 5, 1, 65535, &out->port);
}

static int parse_tcp(const char *s, rv_redis_url_t *out) {
    size_t len = strlen(s);
    /* The authority ends at the first '/'; '?' and '#' have no meaning here. */
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    if (memchr(s, '?', len) || memchr(s, '#', len)) return RV_EINVAL;

    /* The last '@' separates credentials, so that a raw '@' in a password still parses. */
    const char *at = NULL;
    for (size_t i = alen; i > 0; i--) {
        if (s[i - 1] == '@') {
            at = s + i - 1;
            break;
        }
    }
    const char *hp = s;
    if (at) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        /* Credentials are [user]:pass; a user alone cannot authenticate. */
        if (!colon) return RV_EINVAL;
        if (pct_decode(s, (size_t)(colon - s), out->user, sizeof out->user)) return RV_EINVAL;
        if (pct_decode(colon + 1, (size_t)(at - colon - 1), out->pass, sizeof out->pass))
            return RV_EINVAL;
        if (!out->pass[0]) return RV_EINVAL;
        hp = at + 1;
    }
    int rc = parse_hostport(hp, (size_t)(s + alen - hp), out);
    if (rc) return rc;
    if (!slash) return 0;
    const char *db = slash + 1;
    size_t dblen = len - alen - 1;
    if (dblen == 0) return 0; /* "redis://host/" means database 0 */
    return parse_num(db, dblen, 5, 0, DB_MAX, &out->db);
}

/* unix:///path[?db=N]; user= and password= are accepted in the query as well, since a socket
 * can require authentication like a port can. */
static int parse_unix(const char *s, rv_redis_url_t *out) {
    size_t len = strlen(s);
    if (len == 0 || s[0] != '/') return RV_EINVAL;
    const char *q = memchr(s, '?', len);
    size_t plen = q ? (size_t)(q - s) : len;
    if (memchr(s, '#', len)) return RV_EINVAL;
    if (pct_decode(s, plen, out->path, sizeof out->path)) return RV_EINVAL;
    if (strlen(out->path) < 2) return RV_EINVAL;
    if (!q) return 0;

    const char *p = q + 1;
    const char *end = s + len;
    if (p == end) return RV_EINVAL;
    int seen_db = 0, seen_user = 0, seen_pass = 0;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *pend = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(pend - p));
        if (!eq) return RV_EINVAL;
        size_t klen = (size_t)(eq - p);
        const char *v = eq + 1;
        size_t vlen = (size_t)(pend - v);
        if (klen == 2 && memcmp(p, "db", 2) == 0 && !seen_db) {
            if (parse_num(v, vlen, 5, 0, DB_MAX, &out->db)) return RV_EINVAL;
            seen_db = 1;
        } else if (klen == 4 && memcmp(p, "user", 4) == 0 && !seen_user) {
            if (pct_decode(v, vlen, out->user, sizeof out->user)) return RV_EINVAL;
            seen_user = 1;
        } else if (klen == 8 && memcmp(p, "password", 8) == 0 && !seen_pass) {
            if (pct_decode(v, vlen, out->pass, sizeof out->pass) || !out->pass[0]) return RV_EINVAL;
            seen_pass = 1;
        } else {
            return RV_EINVAL;
        }
        if (!amp) break;
        p = amp + 1;
        if (p == end) return RV_EINVAL;
    }
    if (out->user[0] && !out->pass[0]) return RV_EINVAL;
    return 0;
}

int rv_redis_url_parse(const char *url, rv_redis_url_t *out) {
    rv_redis_url_t u;
    memset(&u, 0, sizeof u);
    u.port = 6379;
    if (!url || strnlen(url, URL_MAX + 1) > URL_MAX) return RV_EINVAL;
    int rc;
    if (starts_with_ci(url, "redis://")) {
        rc = parse_tcp(url + 8, &u);
    } else if (starts_with_ci(url, "unix://")) {
        u.port = 0;
        rc = parse_unix(url + 7, &u);
    } else {
        rc = RV_EINVAL;
    }
    if (rc) return RV_EINVAL;
    *out = u;
    return 0;
}
