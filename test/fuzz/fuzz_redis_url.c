/* Fuzz the REDIS_URL parser.
 *
 * The input is the URL. Beyond "no crash", an accepted URL must describe something the queue
 * can use (exactly one of a host or a socket path, a port and database in range, credentials only
 * with a password, no control characters), and writing the parsed result back as a URL, with the
 * credentials and path percent-encoded, must parse to the same result: the parser and the
 * encoding the documentation describes agree. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rivet/buf.h"
#include "rivet/redis_url.h"

/* 1 when the field is NUL-terminated inside its array and free of control characters. */
static int clean_field(const char *s, size_t size) {
    size_t n = strnlen(s, size);
    if (n == size) return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return 0;
    }
    return 1;
}

/* Percent-encode everything but unreserved characters (and '/' when keep_slash). */
static int encode(rv_buf_t *out, const char *s, int keep_slash) {
    int rc = 0;
    for (const unsigned char *p = (const unsigned char *)s; rc == 0 && *p; p++) {
        unsigned char c = *p;
        int plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/');
        rc = plain ? rv_buf_append(out, p, 1) : rv_buf_printf(out, "%%%02X", c);
    }
    return rc;
}

static int same(const rv_redis_url_t *a, const rv_redis_url_t *b) {
    return strcmp(a->host, b->host) == 0 && a->port == b->port && strcmp(a->path, b->path) == 0 &&
           strcmp(a->user, b->user) == 0 && strcmp(a->pass, b->pass) == 0 && a->db == b->db;
}

/* The URL that should parse to u. */
static int unparse(const rv_redis_url_t *u, rv_buf_t *out) {
    int rc;
    if (u->path[0]) {
        rc = rv_buf_puts(out, "unix://");
        if (rc == 0) rc = encode(out, u->path, 1);
        if (rc == 0) rc = rv_buf_printf(out, "?db=%d", u->db);
        if (rc == 0 && u->user[0]) rc = rv_buf_puts(out, "&user=");
        if (rc == 0 && u->user[0]) rc = encode(out, u->user, 0);
        if (rc == 0 && u->pass[0]) rc = rv_buf_puts(out, "&password=");
        if (rc == 0 && u->pass[0]) rc = encode(out, u->pass, 0);
        return rc;
    }
    rc = rv_buf_puts(out, "redis://");
    if (rc == 0 && (u->user[0] || u->pass[0])) {
        rc = encode(out, u->user, 0);
        if (rc == 0) rc = rv_buf_puts(out, ":");
        if (rc == 0) rc = encode(out, u->pass, 0);
        if (rc == 0) rc = rv_buf_puts(out, "@");
    }
    if (rc == 0) {
        int v6 = strchr(u->host, ':') != NULL;
        rc = rv_buf_printf(out, "%s%s%s:%d/%d", v6 ? "[" : "", u->host, v6 ? "]" : "", u->port,
                           u->db);
    }
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *url = malloc(size + 1);
    if (url == NULL) return 0;
    memcpy(url, data, size);
    url[size] = '\0';

    rv_redis_url_t u;
    memset(&u, 0x5a, sizeof u);
    if (rv_redis_url_parse(url, &u) != 0) {
        free(url);
        return 0;
    }
    FUZZ_CHECK(clean_field(u.host, sizeof u.host));
    FUZZ_CHECK(clean_field(u.path, sizeof u.path));
    FUZZ_CHECK(clean_field(u.user, sizeof u.user));
    FUZZ_CHECK(clean_field(u.pass, sizeof u.pass));
    FUZZ_CHECK((u.host[0] != '\0') != (u.path[0] != '\0'));
    FUZZ_CHECK(u.path[0] ? u.port == 0 && u.path[0] == '/' : u.port >= 1 && u.port <= 65535);
    FUZZ_CHECK(u.db >= 0 && u.db <= 10000);
    FUZZ_CHECK(u.user[0] == '\0' || u.pass[0] != '\0');

    rv_buf_t again = RV_BUF_INIT;
    FUZZ_CHECK(unparse(&u, &again) == 0);
    rv_redis_url_t v;
    int rc = rv_redis_url_parse(again.data, &v);
    if (rc != 0 || !same(&u, &v))
        fprintf(stderr, "fuzz: \"%s\" written back as \"%s\" parses differently (%d)\n", url,
                again.data, rc);
    FUZZ_CHECK(rc == 0 && same(&u, &v));
    rv_buf_free(&again);
    free(url);
    return 0;
}
