/* HTTP/1.1 server: one llhttp parser per connection on the libuv loop.
 *
 * A connection handles one request at a time. When llhttp completes a message it pauses; the
 * bytes after it (pipelined requests) wait in the connection's pending buffer until the answer
 * has been written, so answers go out in order and a client that does not read its answers can
 * make the server hold at most one answer and PENDING_MAX bytes of input. The request object
 * belongs to the handler until it answers; if the client resets the connection first, the
 * request is detached from the connection (req->conn = NULL) and the later answer is dropped.
 * A client that only shuts down its sending side still gets its answers.
 *
 * Input is refused strictly (RFC 9112): llhttp runs without any lenient flag, and what it lets
 * through that a server must refuse is refused here: a missing, repeated or malformed Host,
 * obs-fold line folding, HTTP/0.9 request lines and versions other than 1.0 and 1.1, transfer
 * codings other than chunked and Transfer-Encoding in HTTP/1.0, unbounded chunk extensions.
 * llhttp is built in its strict mode (see the Makefile), which checks the CRLF after each chunk.
 * Trailer fields are read, bounded like headers, and discarded. Every byte of request input held is
 * counted in one budget for the process (max_input_buffer), so no number of clients can make it
 * hold more. */
#include "rivet/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rivet/common.h"
#include "rivet/json.h"
#include "rivet/list.h"
#include "rivet/log.h"

#define READ_BUF_SIZE 65536
#define MAX_HEADERS   100
#define PENDING_MAX   (READ_BUF_SIZE * 2)
#define LINGER_MS     2000
/* Stripe sends no chunk extensions; a few hundred bytes covers any legitimate use, and an
 * unbounded extension would be read without ever being stored or limited. */
#define MAX_CHUNK_EXT 1024
/* Reads of a connection whose input cannot be parsed now, or while the budget is spent, are
 * kept this small so that what they stash stays within reach of the budget. */
#define MIN_READ      1024

enum conn_state {
    CONN_IDLE,     /* waiting for the first byte of a request */
    CONN_READING,  /* a request is being parsed */
    CONN_HANDLING, /* the handler has the request */
    CONN_WRITING,  /* the answer is being written */
    CONN_LINGER,   /* answered with Connection: close; draining input until EOF */
    CONN_CLOSING,
};

enum timer_kind { T_NONE, T_HEADER, T_BODY, T_IDLE, T_WRITE, T_LINGER };

struct rv_conn_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    llhttp_t parser;
    rv_server_t *srv;
    rv_conn_t *prev, *next;
    rv_request_t *req;
    int state;
    int timer_kind;
    int handles; /* open handles; the connection is freed when both have closed */
    int reading;
    int advancing;
    int error_status; /* set by a parser callback that rejects the request */
    const char *error_detail;
    const char *error_headers; /* extra header lines for that answer, or NULL */
    int close_after;           /* the answer being written is the connection's last */
    int peer_eof; /* the client shut down its sending side: answer what it sent, then close */
    char *wbuf;   /* the answer being written */
    char *pbuf;   /* unparsed input: pbuf[poff .. plen) */
    size_t poff, plen;
    const char *exec_base; /* the input llhttp_execute is running over */
    char prev_nonws;       /* the last byte before exec_base that was not SP or HTAB */
    char peer[64];
};

static char read_buf[READ_BUF_SIZE];
static int read_buf_busy;
static llhttp_settings_t settings;
static uint64_t rid_seed;
static uint32_t rid_counter;

static void conn_close(rv_conn_t *c);
static void conn_advance(rv_conn_t *c);
static void conn_fail(rv_conn_t *c, int status, const char *detail);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* ---- small helpers ------------------------------------------------------------------------ */

const char *rv_http_reason(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 499: return "Client Closed Request";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* The Date header's value, formatted once per second. */
static const char *http_date(void) {
    static char buf[40];
    static time_t last;
    time_t now = time(NULL);
    if (now != last) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        last = now;
    }
    return buf;
}

static uint64_t now_ns(void) { return uv_hrtime(); }

/* A request id from the client is echoed only when it is short and plain. */
static int request_id_sane(const char *s, size_t n) {
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':'))
            return 0;
    }
    return 1;
}

static const char hexdigits[] = "0123456789abcdef";

/* n lowercase hex digits of v at out (no NUL). */
static void put_hex(char *out, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--, v >>= 4) out[i] = hexdigits[v & 15];
}

/* 16 hex digits of a random seed, the same for the process, then 8 of a counter: unique per
 * answer, and cheap enough to make for every one. */
static void request_id_generate(char *out) {
    static char prefix[16];
    if (rid_seed == 0) {
        if (rv_random(&rid_seed, sizeof rid_seed)) rid_seed = (uint64_t)getpid();
        put_hex(prefix, rid_seed, 16);
    }
    memcpy(out, prefix, 16);
    put_hex(out + 16, ++rid_counter, 8);
    out[24] = '\0';
}

static void timer_set(rv_conn_t *c, int kind, uint64_t ms);

/* ---- the input budget -------------------------------------------------------------------- */

/* Request input a server holds is counted in three pools, so that one kind of abuse cannot
 * starve the others: bodies (max_input_buffer, counted by the bytes that arrived, not by what
 * Content-Length announced, so announcing costs nothing), URLs and headers (a quarter of it),
 * and pipelined input waiting its turn (a quarter of it). */
enum { POOL_HEAD, POOL_BODY, POOL_PENDING };

size_t rv_server_input_held(const rv_server_t *s) {
    return s->held[POOL_HEAD] + s->held[POOL_BODY] + s->held[POOL_PENDING];
}

static size_t pool_room(const rv_server_t *s, int pool) {
    size_t limit = s->opts.max_input_buffer;
    if (limit == 0) return SIZE_MAX;
    if (pool != POOL_BODY) limit /= 4;
    return s->held[pool] < limit ? limit - s->held[pool] : 0;
}

/* Count n more bytes in a pool, and in *mine (what the request or connection gives back when
 * it is freed). Returns RV_EUNAVAIL when that passes the pool's limit: the caller refuses the
 * request, and freeing it gives the bytes back. */
static int pool_add(rv_server_t *s, int pool, size_t *mine, size_t n) {
    int over = n > pool_room(s, pool);
    *mine += n;
    s->held[pool] += n;
    return over ? RV_EUNAVAIL : 0;
}

static void pool_release(rv_server_t *s, int pool, size_t *mine) {
    s->held[pool] -= *mine;
    *mine = 0;
}

/* Append to the URL or header buffer of r, counting what the buffer grew by. */
static int head_append(rv_server_t *s, rv_request_t *r, rv_buf_t *b, const char *at, size_t len) {
    size_t cap = b->cap;
    int rc = rv_buf_append(b, at, len);
    if (rc) return rc;
    return pool_add(s, POOL_HEAD, &r->held_head, b->cap - cap);
}

static void pending_free(rv_conn_t *c) {
    pool_release(c->srv, POOL_PENDING, &c->plen);
    free(c->pbuf);
    c->pbuf = NULL;
    c->poff = 0;
}

/* ---- requests ----------------------------------------------------------------------------- */

static rv_request_t *request_new(rv_conn_t *c) {
    rv_request_t *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->conn = c;
    r->server = c->srv;
    r->app = c->srv->opts.app;
    r->query = "";
    r->path = "";
    r->method = "";
    r->start_ms = uv_now(c->srv->loop);
    r->t0_ns = now_ns();
    r->keep_alive = 0;
    memcpy(r->peer, c->peer, sizeof r->peer);
    r->url.limit = c->srv->opts.max_url_bytes;
    r->hbuf.limit = c->srv->opts.max_header_bytes;
    rv_buf_reserve(&r->hbuf, 1024); /* most requests' headers fit: no regrowth */
    pool_add(c->srv, POOL_HEAD, &r->held_head, r->hbuf.cap);
    r->bodybuf.limit = RV_BODY_SMALL; /* until the route is known */
    return r;
}

static void request_free(rv_request_t *r) {
    pool_release(r->server, POOL_HEAD, &r->held_head);
    pool_release(r->server, POOL_BODY, &r->held_body);
    rv_buf_free(&r->url);
    rv_buf_free(&r->hbuf);
    rv_buf_free(&r->bodybuf);
    free(r->hoff);
    free(r->headers);
    free(r);
}

const char *rv_request_header(const rv_request_t *r, const char *name, size_t *len) {
    if (r->headers == NULL) return NULL; /* headers not complete: an early error answer */
    for (size_t i = 0; i < r->nheaders; i++) {
        if (rv_strieq(r->headers[i].name, r->headers[i].name_len, name)) {
            if (len) *len = r->headers[i].value_len;
            return r->headers[i].value;
        }
    }
    return NULL;
}

int rv_request_header_join(const rv_request_t *r, const char *name, rv_buf_t *out) {
    int n = 0;
    rv_buf_reset(out);
    for (size_t i = 0; r->headers && i < r->nheaders; i++) {
        if (!rv_strieq(r->headers[i].name, r->headers[i].name_len, name)) continue;
        int rc = n ? rv_buf_append(out, ", ", 2) : 0;
        if (rc == 0) rc = rv_buf_append(out, r->headers[i].value, r->headers[i].value_len);
        if (rc) return rc;
        n++;
    }
    return n;
}

size_t rv_request_header_count(const rv_request_t *r, const char *name) {
    size_t n = 0;
    if (r->headers == NULL) return 0;
    for (size_t i = 0; i < r->nheaders; i++)
        n += (size_t)rv_strieq(r->headers[i].name, r->headers[i].name_len, name);
    return n;
}

int rv_request_query(const rv_request_t *r, const char *name, char *out, size_t outlen) {
    size_t nl = strlen(name);
    const char *p = r->query;
    while (*p) {
        const char *end = p + strcspn(p, "&");
        const char *eq = memchr(p, '=', (size_t)(end - p));
        const char *kend = eq ? eq : end;
        if ((size_t)(kend - p) == nl && memcmp(p, name, nl) == 0) {
            size_t k = 0;
            for (const char *v = eq ? eq + 1 : end; v < end; v++) {
                int ch = (unsigned char)*v;
                if (ch == '+') {
                    ch = ' ';
                } else if (ch == '%' && end - v >= 3 && rv_hexval(v[1]) >= 0 &&
                           rv_hexval(v[2]) >= 0) {
                    ch = rv_hexval(v[1]) * 16 + rv_hexval(v[2]);
                    v += 2;
                }
                if (ch == 0 || k + 1 >= outlen) {
                    if (outlen) out[0] = '\0';
                    return ch == 0 ? RV_EINVAL : RV_ERANGE;
                }
                out[k++] = (char)ch;
            }
            out[k] = '\0';
            /* Given twice, it names nothing: two values, and no rule for which one counts. */
            for (p = *end ? end + 1 : end; *p;) {
                const char *e2 = p + strcspn(p, "&");
                const char *q2 = memchr(p, '=', (size_t)(e2 - p));
                if ((size_t)((q2 ? q2 : e2) - p) == nl && memcmp(p, name, nl) == 0) {
                    if (outlen) out[0] = '\0';
                    return RV_EMALFORMED;
                }
                p = *e2 ? e2 + 1 : e2;
            }
            return 0;
        }
        p = *end ? end + 1 : end;
    }
    return RV_ENOTFOUND;
}

void rv_request_on_gone(rv_request_t *r, rv_request_gone_cb cb, void *data) {
    r->gone_cb = cb;
    r->gone_data = data;
}

/* ---- llhttp callbacks -------------------------------------------------------------------- */

static int reject(rv_conn_t *c, int status, const char *detail) {
    c->error_status = status;
    c->error_detail = detail;
    c->error_headers = NULL;
    return HPE_USER;
}

/* The answer for a buffer that could not take more input. */
static int reject_buf(rv_conn_t *c, int rc, int too_large, const char *detail) {
    static rv_log_limit_t busy = {.what = "http: input budget spent"};
    if (rc == RV_ERANGE) return reject(c, too_large, detail);
    if (rc == RV_EUNAVAIL) {
        rv_warn_limited(&busy,
                        "http: %s: %zu bytes of request input held, the most allowed: "
                        "refusing new input with 503 (MAX_BODY_BUFFER)",
                        c->peer, rv_server_input_held(c->srv));
        reject(c, 503, "Server busy: too much request input is buffered; retry later");
        c->error_headers = "Retry-After: 1\r\n";
        return HPE_USER;
    }
    return reject(c, 503, "Server out of memory");
}

static int on_message_begin(llhttp_t *p) {
    rv_conn_t *c = p->data;
    if (c->req == NULL && (c->req = request_new(c)) == NULL)
        return reject(c, 503, "Server out of memory");
    c->state = CONN_READING;
    timer_set(c, T_HEADER, c->srv->opts.header_timeout_ms);
    if (pool_room(c->srv, POOL_HEAD) == 0) return reject_buf(c, RV_EUNAVAIL, 0, NULL);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
    rv_conn_t *c = p->data;
    /* A request-target is visible ASCII (RFC 9112 §3.2, RFC 3986): llhttp lets a tab and bytes
     * above 0x7f through, which no route has and no log should carry raw. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)at[i];
        if (ch <= 0x20 || ch >= 0x7f) return reject(c, 400, "Invalid character in request target");
    }
    c->req->method = llhttp_method_name((llhttp_method_t)p->method);
    int rc = head_append(c->srv, c->req, &c->req->url, at, len);
    if (rc) return reject_buf(c, rc, 414, "Request URL too long");
    return 0;
}

static int on_version(llhttp_t *p, const char *at, size_t len) {
    rv_conn_t *c = p->data;
    rv_request_t *r = c->req;
    /* Kept to tell a well-formed version this server does not speak (505) from a malformed
     * request line (400) when llhttp refuses either. */
    for (size_t i = 0; i < len && r->saw_version < (int)sizeof r->version - 1; i++)
        r->version[r->saw_version++] = at[i];
    if (r->saw_version == 0) r->saw_version = 1;
    return 0;
}

/* obs-fold (RFC 9112 §5.2): a field line that begins with SP or HTAB continues the previous
 * value. llhttp accepts it and drops the line break, so a folded "Transfer-Encoding:\r\n chunked"
 * would be read as chunked here and perhaps not by a proxy in front: a smuggling vector. A value
 * piece is folded when the last byte before it, skipping blanks, ends a line. An empty value
 * ("X:\r\n") comes as an empty piece placed after its line's end: it carries nothing, and is not
 * a fold. */
static int folded(rv_conn_t *c, const char *at) {
    const char *q = at;
    while (q > c->exec_base && (q[-1] == ' ' || q[-1] == '\t')) q--;
    char before = q > c->exec_base ? q[-1] : c->prev_nonws;
    return before == '\n';
}

/* Trailer fields (after the last chunk) are never headers: count them against the header
 * limits and forget them. */
static int trailer_piece(rv_conn_t *c, int is_value, const char *at, size_t len) {
    rv_request_t *r = c->req;
    if (is_value && len > 0 && folded(c, at))
        return reject(c, 400, "Obsolete line folding is not allowed");
    if (!is_value && r->last_cb != 1) {
        if (++r->ntrailers > MAX_HEADERS) return reject(c, 431, "Too many trailer fields");
    }
    r->last_cb = is_value ? 2 : 1;
    r->trailer_bytes += len;
    if (r->trailer_bytes > c->srv->opts.max_header_bytes)
        return reject(c, 431, "Request trailer fields too large");
    return 0;
}

/* Headers are gathered in one buffer as "name\0value\0" with four offsets per header. */
static int header_piece(rv_conn_t *c, int is_value, const char *at, size_t len) {
    rv_request_t *r = c->req;
    rv_server_t *s = c->srv;
    int rc = 0;
    if (r->in_trailers) return trailer_piece(c, is_value, at, len);
    if (is_value && len > 0 && folded(c, at))
        return reject(c, 400, "Obsolete line folding is not allowed");
    if (r->url.len + r->hbuf.len + len > s->opts.max_header_bytes)
        return reject(c, 431, "Request headers too large");
    if (!is_value && r->last_cb != 1) {
        /* A new header begins: close the previous value. */
        if (r->nheaders >= MAX_HEADERS) return reject(c, 431, "Too many request headers");
        if (r->last_cb == 2) rc = head_append(s, r, &r->hbuf, "", 1);
        if (rc) return reject_buf(c, rc, 431, "Request headers too large");
        if (r->nheaders == r->hcap) {
            size_t cap = r->hcap ? r->hcap * 2 : 16;
            size_t *h = realloc(r->hoff, cap * 4 * sizeof *h);
            if (h == NULL) return reject(c, 503, "Server out of memory");
            r->hoff = h;
            if ((rc = pool_add(s, POOL_HEAD, &r->held_head, (cap - r->hcap) * 4 * sizeof *h))) {
                r->hcap = cap;
                return reject_buf(c, rc, 431, NULL);
            }
            r->hcap = cap;
        }
        r->hoff[r->nheaders * 4] = r->hbuf.len;
        r->hoff[r->nheaders * 4 + 1] = 0;
        r->hoff[r->nheaders * 4 + 2] = 0;
        r->hoff[r->nheaders * 4 + 3] = 0;
        r->nheaders++;
        r->last_cb = 1;
    } else if (is_value && r->nheaders == 0) {
        return reject(c, 400, "Invalid header name");
    } else if (is_value && r->last_cb == 1) {
        rc = head_append(s, r, &r->hbuf, "", 1);
        r->hoff[(r->nheaders - 1) * 4 + 2] = r->hbuf.len;
        r->last_cb = 2;
    }
    if (rc == 0) rc = head_append(s, r, &r->hbuf, at, len);
    if (rc) return reject_buf(c, rc, 431, "Request headers too large");
    r->hoff[(r->nheaders - 1) * 4 + (is_value ? 3 : 1)] += len;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    return header_piece(p->data, 0, at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    return header_piece(p->data, 1, at, len);
}

static int on_chunk_extension(llhttp_t *p, const char *at, size_t len) {
    rv_conn_t *c = p->data;
    /* The ";" or "=" before each piece counts too: ";a;a;a..." is all separators. */
    c->req->ext_bytes += len + 1;
    if (c->req->ext_bytes > MAX_CHUNK_EXT) return reject(c, 400, "Chunk extensions too long");
    return 0;
}

static int on_chunk_complete(llhttp_t *p) {
    rv_conn_t *c = p->data;
    c->req->ext_bytes = 0;
    return 0;
}

/* 1 when each of the n bytes is an ASCII letter, a digit or one of extra. */
static int chars_in(const char *s, size_t n, const char *extra) {
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              (ch && strchr(extra, ch))))
            return 0;
    }
    return 1;
}

/* RFC 9110 token: the only characters a header name may have. */
static int token(const char *s, size_t n) { return n > 0 && chars_in(s, n, "!#$%&'*+-.^_`|~"); }

/* RFC 9112 §3.2: Host = uri-host [ ":" port ]; a reg-name, an IPv4 address or an IP-literal in
 * brackets. No userinfo, path, blanks or controls. An empty value is allowed. */
static int host_valid(const char *s, size_t n) { return chars_in(s, n, "-._~!$&'()*+,;=%:[]"); }

/* Skip optional whitespace at both ends of [*s, *s + *n). */
static void trim_ows(const char **s, size_t *n) {
    while (*n && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t')) (*n)--;
}

/* The path of the request target. origin-form is "/path?query"; absolute-form (RFC 9112
 * §3.2.2, which a server must accept) is "http://authority/path?query", whose authority is then
 * the target's host. Returns 0 with *path set inside url, or -1 for any other form. */
static int target_path(char *url, char **path) {
    if (url[0] == '/') {
        *path = url;
        return 0;
    }
    size_t skip;
    if (strncasecmp(url, "http://", 7) == 0)
        skip = 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        skip = 8;
    else
        return -1;
    char *p = url + skip + strcspn(url + skip, "/?#");
    if (p == url + skip || *p == '#') return -1;
    if (*p == '/') {
        *path = p;
        return 0;
    }
    /* "http://host?q": the path is "/". The authority is not used, so its last byte can
     * become that "/". */
    p[-1] = '/';
    *path = p - 1;
    return 0;
}

/* Check what llhttp lets through but RFC 9112 says a server must refuse; find the route, whose
 * body limit then applies. */
static int on_headers_complete(llhttp_t *p) {
    rv_conn_t *c = p->data;
    rv_request_t *r = c->req;
    rv_server_t *s = c->srv;
    int rc = head_append(s, r, &r->hbuf, "", 1);
    if (rc) return reject_buf(c, rc, 431, "Request headers too large");
    if (!r->saw_version) return reject(c, 400, "HTTP/0.9 requests are not supported");
    if (p->http_major != 1 || p->http_minor > 1)
        return reject(c, 505, "Only HTTP/1.0 and HTTP/1.1 are supported");
    /* A header with an empty value never saw on_header_value: its value offset is still 0. */
    r->headers = calloc(r->nheaders ? r->nheaders : 1, sizeof *r->headers);
    if (r->headers == NULL) return reject(c, 503, "Server out of memory");
    int hosts = 0, tes = 0, auths = 0;
    for (size_t i = 0; i < r->nheaders; i++) {
        size_t *o = &r->hoff[i * 4];
        rv_header_t *h = &r->headers[i];
        h->name = r->hbuf.data + o[0];
        h->name_len = o[1];
        h->value = o[2] ? r->hbuf.data + o[2] : "";
        h->value_len = o[2] ? o[3] : 0;
        if (o[2] == 0) r->hbuf.data[o[0] + o[1]] = '\0';
        if (!token(h->name, h->name_len)) return reject(c, 400, "Invalid header name");
        if (rv_strieq(h->name, h->name_len, "host")) {
            hosts++;
            if (!host_valid(h->value, h->value_len)) return reject(c, 400, "Invalid Host header");
        }
        if (rv_strieq(h->name, h->name_len, "authorization")) auths++;
        if (rv_strieq(h->name, h->name_len, "content-length")) r->saw_cl = 1;
        if (rv_strieq(h->name, h->name_len, "transfer-encoding")) {
            r->saw_te = 1;
            tes++;
            const char *v = h->value;
            size_t vl = h->value_len;
            trim_ows(&v, &vl);
            /* llhttp refuses codings that do not end in chunked; the others it would pass on
             * still encoded, which this server cannot decode (RFC 9112 §6.1: 501). */
            if (!rv_strieq(v, vl, "chunked"))
                return reject(c, 501, "Transfer codings other than chunked are not supported");
        }
        if (rv_strieq(h->name, h->name_len, "expect")) {
            if (!rv_strieq(h->value, h->value_len, "100-continue"))
                return reject(c, 417, "Unsupported Expect header");
            r->expect_continue = 1;
        }
    }
    if (hosts > 1) return reject(c, 400, "More than one Host header");
    /* RFC 9110 §11.6.2: one set of credentials; with two, a proxy and rivetd could each take a
     * different one. */
    if (auths > 1) return reject(c, 400, "More than one Authorization header");
    if (hosts == 0 && p->http_minor == 1) return reject(c, 400, "Missing Host header");
    if (tes > 1) return reject(c, 400, "More than one Transfer-Encoding header");
    /* RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing. */
    if (tes && p->http_minor == 0)
        return reject(c, 400, "Transfer-Encoding is not allowed in an HTTP/1.0 request");
    if (r->saw_cl && r->saw_te)
        return reject(c, 400, "Content-Length and Transfer-Encoding together are not allowed");
    if (p->upgrade) return reject(c, 400, "Protocol upgrades are not supported");
    r->method = llhttp_method_name((llhttp_method_t)p->method);
    r->head = p->method == HTTP_HEAD;
    r->keep_alive = llhttp_should_keep_alive(p);

    /* Route now: the route decides how large a body may be. */
    if ((rc = head_append(s, r, &r->url, "", 0)) != 0) return reject_buf(c, rc, 414, NULL);
    char *path;
    if (target_path(r->url.data, &path) != 0)
        return reject(c, 400, "Request target must be a path");
    char *q = strchr(path, '?');
    if (q) {
        *q = '\0';
        r->query = q + 1;
    }
    r->path = path;
    r->path_len = strlen(path);
    r->match_rc = rv_router_match(s->opts.routes, s->opts.nroutes, r->method, r->path, r->path_len,
                                  &r->match, NULL, 0);
    size_t limit = RV_BODY_SMALL;
    if (r->match_rc == 0 && r->match->max_body) limit = r->match->max_body;
    if (limit > s->opts.max_body_bytes) limit = s->opts.max_body_bytes;
    r->bodybuf.limit = limit;

    if (r->saw_cl && p->content_length > limit) return reject(c, 413, "Request body too large");
    /* One allocation for a body whose size is announced (and within the limit). Its pages
     * become resident only as bytes arrive, and only arriving bytes count in the budget. */
    if (r->saw_cl && p->content_length > 0 && rv_buf_reserve(&r->bodybuf, p->content_length))
        return reject(c, 503, "Server out of memory");
    r->in_trailers = 1;
    r->last_cb = 0;
    int has_body = (r->saw_cl && p->content_length > 0) || r->saw_te;
    if (has_body) {
        timer_set(c, T_BODY, s->opts.body_timeout_ms);
        if (r->expect_continue && r->bodybuf.len == 0) {
            /* The client waits for this before sending the body it announced. It is the first
             * thing written on a connection whose previous answers are all out, so the socket
             * takes it whole; a client that cannot take 25 bytes is cut off. */
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
            if (uv_try_write((uv_stream_t *)&c->tcp, &b, 1) != (int)b.len)
                return reject(c, 400, "Client does not read");
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    rv_conn_t *c = p->data;
    rv_request_t *r = c->req;
    int rc = rv_buf_append(&r->bodybuf, at, len);
    if (rc == 0) rc = pool_add(c->srv, POOL_BODY, &r->held_body, len);
    if (rc) return reject_buf(c, rc, 413, "Request body too large");
    return 0;
}

/* A chunk that cannot fit is refused when announced, not after the client has sent it. */
static int on_chunk_header(llhttp_t *p) {
    rv_conn_t *c = p->data;
    rv_buf_t *b = &c->req->bodybuf;
    if (p->content_length > b->limit - b->len) return reject(c, 413, "Request body too large");
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    rv_conn_t *c = p->data;
    c->req->keep_alive = llhttp_should_keep_alive(p);
    return HPE_PAUSED;
}

static void settings_init(void) {
    static int done;
    if (done) return;
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_version = on_version;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_chunk_extension_name = on_chunk_extension;
    settings.on_chunk_extension_value = on_chunk_extension;
    settings.on_chunk_header = on_chunk_header;
    settings.on_chunk_complete = on_chunk_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    done = 1;
}
/* ---- answers ------------------------------------------------------------------------------ */

static void access_log(rv_request_t *r, int status, size_t bytes, double ms) {
    if (!rv_log_enabled(RV_LOG_INFO)) return;
    rv_info("access %s %.*s %d %zu %.3fms rid=%s peer=%s%s", r->method[0] ? r->method : "-",
            (int)(r->path_len > 256 ? 256 : r->path_len), r->path, status, bytes, ms, r->request_id,
            r->peer, r->conn ? "" : " client-gone");
}

static void on_written(uv_write_t *w, int status);

static void finish_write(rv_conn_t *c, int status) {
    free(c->wbuf);
    c->wbuf = NULL;
    if (c->state == CONN_CLOSING) return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->close_after) {
        /* Send FIN, then read and discard until the client closes, so that input still in
         * flight does not turn into a reset that destroys the answer before it is read. */
        c->state = CONN_LINGER;
        pending_free(c);
        if (uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, NULL) != 0) {
            conn_close(c);
            return;
        }
        if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
        timer_set(c, T_LINGER, LINGER_MS);
        return;
    }
    c->state = CONN_IDLE;
    llhttp_resume(&c->parser);
    conn_advance(c);
}

static void on_written(uv_write_t *w, int status) {
    rv_conn_t *c = rv_container_of(w, rv_conn_t, wreq);
    finish_write(c, status);
}

/* Write the header block data (which the connection now owns) and then body, which is either
 * inside data already (body_len 0) or static storage that outlives the write. */
static void send_answer(rv_conn_t *c, char *data, size_t len, const char *body, size_t body_len) {
    c->state = CONN_WRITING;
    c->wbuf = data;
    uv_buf_t b[2] = {uv_buf_init(data, (unsigned)len),
                     uv_buf_init((char *)body, (unsigned)body_len)};
    unsigned nb = body_len ? 2 : 1, first = 0;
    int n = uv_try_write((uv_stream_t *)&c->tcp, b, nb);
    if (n >= 0 && (size_t)n == len + body_len) {
        finish_write(c, 0);
        return;
    }
    if (n > 0) {
        size_t done = (size_t)n;
        while (done >= b[first].len) done -= b[first++].len;
        b[first].base += done;
        b[first].len -= done;
    } else if (n != UV_EAGAIN) {
        finish_write(c, n);
        return;
    }
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, b + first, nb - first, on_written) != 0) {
        finish_write(c, -1);
        return;
    }
    timer_set(c, T_WRITE, c->srv->opts.idle_timeout_ms);
}

/* Decimal digits of v into out (at least 21 bytes); returns their number. */
static size_t put_dec(char *out, uint64_t v) {
    char tmp[21];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* The status line and the headers every answer has, assembled without printf: formatting them
 * was a measurable share of the time a small answer takes. */
static int header_block(rv_buf_t *h, int status, const char *content_type, size_t body_len,
                        const char *request_id) {
    const char *reason = rv_http_reason(status);
    const char *date = http_date();
    size_t ctl = strlen(content_type), rl = strlen(reason), dl = strlen(date);
    size_t il = strlen(request_id);
    int rc = rv_buf_reserve(h, 9 + 4 + rl + 16 + ctl + 18 + 21 + 8 + dl + 16 + il + 16 + 256);
    if (rc) return rc;
    char *p = h->data + h->len;
    char code[3] = {(char)('0' + status / 100 % 10), (char)('0' + status / 10 % 10),
                    (char)('0' + status % 10)};
#define PUT(s, n)                                                                                  \
    do {                                                                                           \
        memcpy(p, (s), (n));                                                                       \
        p += (n);                                                                                  \
    } while (0)
    PUT("HTTP/1.1 ", 9);
    PUT(code, 3);
    PUT(" ", 1);
    PUT(reason, rl);
    PUT("\r\nContent-Type: ", 16);
    PUT(content_type, ctl);
    PUT("\r\nContent-Length: ", 18);
    p += put_dec(p, body_len);
    PUT("\r\nDate: ", 8);
    PUT(date, dl);
    PUT("\r\nX-Request-Id: ", 16);
    PUT(request_id, il);
    PUT("\r\n", 2);
#undef PUT
    h->len = (size_t)(p - h->data);
    h->data[h->len] = '\0';
    return 0;
}

static void respond(rv_request_t *r, int status, const char *content_type, const char *body,
                    size_t body_len, const char *extra_headers, int borrow) {
    rv_conn_t *c = r->conn;
    rv_server_t *s = r->server;
    double ms = (double)(now_ns() - r->t0_ns) / 1e6;
    if (r->owned) s->inflight--;
    if (r->request_id[0] == '\0') request_id_generate(r->request_id);
    if (c == NULL) {
        /* The client has gone: nothing to write to. */
        access_log(r, status, 0, ms);
        if (s->opts.on_done) s->opts.on_done(r, status, 0, ms);
        request_free(r);
        return;
    }
    int close_after = !r->keep_alive || s->draining || c->error_status || status == 408;
    rv_buf_t h = RV_BUF_INIT;
    int rc = header_block(&h, status, content_type, body_len, r->request_id);
    if (rc == 0 && close_after) rc = rv_buf_puts(&h, "Connection: close\r\n");
    if (rc == 0 && extra_headers) rc = rv_buf_puts(&h, extra_headers);
    if (rc == 0 && s->opts.decorate) s->opts.decorate(r, status, &h);
    if (rc == 0) rc = rv_buf_append(&h, "\r\n", 2);
    if (rc == 0 && !r->head && body_len && !borrow) rc = rv_buf_append(&h, body, body_len);
    size_t bytes = r->head ? 0 : body_len;
    access_log(r, status, bytes, ms);
    if (s->opts.on_done) s->opts.on_done(r, status, bytes, ms);
    c->req = NULL;
    request_free(r);
    if (rc) {
        rv_buf_free(&h);
        conn_close(c);
        return;
    }
    c->close_after = close_after;
    size_t len;
    char *data = rv_buf_steal(&h, &len);
    send_answer(c, data, len, body, borrow ? bytes : 0);
}

void rv_respond(rv_request_t *r, int status, const char *content_type, const char *body,
                size_t body_len, const char *extra_headers) {
    respond(r, status, content_type, body, body_len, extra_headers, 0);
}

void rv_respond_static(rv_request_t *r, int status, const char *content_type, const char *body,
                       size_t body_len, const char *extra_headers) {
    respond(r, status, content_type, body, body_len, extra_headers, 1);
}

void rv_respond_json(rv_request_t *r, int status, const char *json, size_t len,
                     const char *extra_headers) {
    rv_respond(r, status, "application/json", json, len, extra_headers);
}

void rv_respond_error(rv_request_t *r, int status, const char *detail, const char *extra_headers) {
    rv_buf_t b = RV_BUF_INIT;
    if (rv_json_error(&b, detail)) {
        rv_buf_free(&b);
        rv_respond(r, 500, "application/json", "{\"detail\":\"Internal error\"}", 27, NULL);
        return;
    }
    rv_respond(r, status, "application/json", b.data, b.len, extra_headers);
    rv_buf_free(&b);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

static void dispatch(rv_conn_t *c) {
    rv_request_t *r = c->req;
    rv_server_t *s = c->srv;
    timer_set(c, T_NONE, 0);
    c->state = CONN_HANDLING;
    int rc = rv_buf_append(&r->bodybuf, "", 0);
    if (rc) {
        reject_buf(c, rc, 413, "Request body too large");
        conn_fail(c, c->error_status, c->error_detail);
        return;
    }
    r->body = r->bodybuf.data;
    r->body_len = r->bodybuf.len;
    size_t idlen;
    const char *rid = rv_request_header(r, "x-request-id", &idlen);
    if (rid && request_id_sane(rid, idlen)) {
        memcpy(r->request_id, rid, idlen);
        r->request_id[idlen] = '\0';
    } else {
        request_id_generate(r->request_id);
    }
    if (r->match_rc == RV_ENOTFOUND) {
        rv_respond_error(r, 404, "Not Found", NULL);
        return;
    }
    if (r->match_rc == RV_EMETHOD) {
        char allow[128], hdr[160];
        const rv_route_t *none;
        rv_router_match(s->opts.routes, s->opts.nroutes, r->method, r->path, r->path_len, &none,
                        allow, sizeof allow);
        snprintf(hdr, sizeof hdr, "Allow: %s\r\n", allow);
        rv_respond_error(r, 405, "Method Not Allowed", hdr);
        return;
    }
    r->route = r->match;
    r->owned = 1;
    s->inflight++;
    r->route->fn(r);
}

/* The status for a parse error llhttp found itself: 505 for a well-formed version other than
 * 1.0 and 1.1 ("HTTP/1.2"); 400 for anything else, a request line with junk after the version
 * included. An unknown method is a 400 too: llhttp cannot tell a method it does not know from
 * bytes that are not HTTP at all. */
static int parse_error_status(const rv_conn_t *c, llhttp_errno_t err) {
    const char *v = c->req ? c->req->version : "";
    int well_formed =
        strlen(v) == 3 && v[0] >= '0' && v[0] <= '9' && v[1] == '.' && v[2] >= '0' && v[2] <= '9';
    return err == HPE_INVALID_VERSION && well_formed && strcmp(v, "1.0") && strcmp(v, "1.1") ? 505
                                                                                             : 400;
}

/* Remember the last byte before the next input that is not a blank (see folded()). */
static void note_tail(rv_conn_t *c, const char *data, size_t used) {
    while (used > 0 && (data[used - 1] == ' ' || data[used - 1] == '\t')) used--;
    if (used > 0) c->prev_nonws = data[used - 1];
}

/* Parse input from data; returns the number of bytes consumed. A completed request is
 * dispatched; a malformed one is answered with an error. */
static size_t conn_parse(rv_conn_t *c, const char *data, size_t len) {
    c->exec_base = data;
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    c->exec_base = NULL;
    if (err == HPE_OK) {
        note_tail(c, data, len);
        return len;
    }
    if (err == HPE_PAUSED) {
        size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
        note_tail(c, data, used);
        dispatch(c);
        return used;
    }
    if (c->error_status) {
        conn_fail(c, c->error_status, c->error_detail);
    } else {
        int status = parse_error_status(c, err);
        rv_debug("http: %s: parse error %s (%s)", c->peer, llhttp_errno_name(err),
                 llhttp_get_error_reason(&c->parser));
        conn_fail(c, status,
                  status == 505 ? "Only HTTP/1.0 and HTTP/1.1 are supported"
                                : "Malformed HTTP request");
    }
    return len;
}

/* The client sent all it will send: a request it left unfinished is answered 400. */
static void conn_input_ended(rv_conn_t *c) {
    if (c->state == CONN_READING) {
        /* llhttp_finish tells a message that ends at EOF from one cut short; a request is
         * never complete at EOF without having completed before, so this is an error. */
        llhttp_errno_t err = llhttp_finish(&c->parser);
        rv_debug("http: %s: input ended inside a request (%s)", c->peer, llhttp_errno_name(err));
        conn_fail(c, 400, "Incomplete request");
        return;
    }
    conn_close(c);
}

/* Parse pending input while the connection is ready for a new request; start reading when
 * there is none. Iterative, so answers given at once do not recurse through pipelined input. */
static void conn_advance(rv_conn_t *c) {
    if (c->advancing) return;
    c->advancing = 1;
    while (c->state == CONN_IDLE || c->state == CONN_READING) {
        if (c->srv->draining && c->state == CONN_IDLE) {
            conn_close(c);
            break;
        }
        if (c->pbuf == NULL) {
            if (c->peer_eof) {
                conn_input_ended(c);
                break;
            }
            if (!c->reading && uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
                c->reading = 1;
            if (c->state == CONN_IDLE) timer_set(c, T_IDLE, c->srv->opts.idle_timeout_ms);
            break;
        }
        char *buf = c->pbuf;
        size_t off = c->poff, len = c->plen;
        size_t used = conn_parse(c, buf + off, len - off);
        if (c->pbuf != buf) break; /* closed meanwhile */
        c->poff += used;
        if (c->poff >= c->plen) pending_free(c);
    }
    c->advancing = 0;
}

/* Keep bytes the parser must not see yet (a request is being answered). Bytes already read are
 * always kept; reads are sized (on_alloc) so that this stays within PENDING_MAX and the input
 * budget. */
static int stash(rv_conn_t *c, const char *data, size_t len) {
    size_t have = c->plen - c->poff;
    char *p = malloc(have + len);
    if (p == NULL) return RV_ENOMEM;
    if (have) memcpy(p, c->pbuf + c->poff, have);
    memcpy(p + have, data, len);
    pending_free(c);
    c->pbuf = p;
    pool_add(c->srv, POOL_PENDING, &c->plen, have + len);
    return 0;
}

/* ---- connection I/O ----------------------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    rv_conn_t *c = h->data;
    /* One buffer for every connection: read callbacks consume or copy it before returning. */
    if (read_buf_busy) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    size_t room = pool_room(c->srv, POOL_PENDING);
    size_t want = READ_BUF_SIZE;
    if (c->state == CONN_HANDLING || c->state == CONN_WRITING || c->pbuf) {
        /* Whatever is read now is held until the request before it is answered. */
        size_t have = c->plen - c->poff;
        want = have < PENDING_MAX ? PENDING_MAX - have : 0;
        if (want > room) want = room;
        if (want == 0) {
            buf->base = NULL; /* on_read stops reading; the next answer resumes it */
            buf->len = 0;
            return;
        }
    } else if (c->state != CONN_LINGER && room < READ_BUF_SIZE) {
        /* Input parsed at once is counted as it is stored; what a read leaves over after a
         * request (held as pipelined input) is kept small while that pool is full. */
        want = room > MIN_READ ? room : MIN_READ;
    }
    if (want > READ_BUF_SIZE) want = READ_BUF_SIZE;
    read_buf_busy = 1;
    buf->base = read_buf;
    buf->len = want;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    rv_conn_t *c = rv_container_of((uv_tcp_t *)st, rv_conn_t, tcp);
    if (buf->base == read_buf) read_buf_busy = 0;
    if (nread == 0 || c->state == CONN_CLOSING) return;
    if (nread == UV_ENOBUFS) {
        /* No room for input held: wait until this connection's answer is out. */
        uv_read_stop(st);
        c->reading = 0;
        return;
    }
    if (nread == UV_EOF) {
        /* The client will send nothing more; it may still be reading (a half-close). Answer
         * what it sent, then close. */
        uv_read_stop(st);
        c->reading = 0;
        c->peer_eof = 1;
        if (c->state == CONN_LINGER) {
            conn_close(c);
        } else if (c->state == CONN_IDLE || c->state == CONN_READING) {
            if (c->pbuf == NULL) conn_input_ended(c);
        }
        /* Handling or writing: finish_write closes once the answers are out. */
        return;
    }
    if (nread < 0) {
        /* A reset or another error: the client is gone. */
        conn_close(c);
        return;
    }
    if (c->state == CONN_LINGER || c->error_status) return; /* closing: input is discarded */
    if (c->state == CONN_HANDLING || c->state == CONN_WRITING || c->pbuf) {
        /* Pipelined input while a request is answered: hold it, within bounds. */
        if (stash(c, buf->base, (size_t)nread)) {
            conn_close(c);
            return;
        }
        if (c->plen - c->poff >= PENDING_MAX) {
            /* Backpressure: read no more until the held input has been answered. */
            uv_read_stop(st);
            c->reading = 0;
        }
        return;
    }
    size_t used = conn_parse(c, buf->base, (size_t)nread);
    if (used < (size_t)nread && c->state != CONN_CLOSING && c->state != CONN_LINGER) {
        if (stash(c, buf->base + used, (size_t)nread - used)) {
            conn_close(c);
            return;
        }
        if (c->state == CONN_IDLE) conn_advance(c);
    }
}

static void on_timer(uv_timer_t *t) {
    rv_conn_t *c = rv_container_of(t, rv_conn_t, timer);
    int kind = c->timer_kind;
    c->timer_kind = T_NONE;
    switch (kind) {
    case T_HEADER:
    case T_BODY:
        rv_debug("http: %s: %s timeout", c->peer, kind == T_HEADER ? "header" : "body");
        conn_fail(c, 408, "Request timeout");
        break;
    default: conn_close(c); break;
    }
}

static void timer_set(rv_conn_t *c, int kind, uint64_t ms) {
    if (kind == T_NONE) {
        if (c->timer_kind != T_NONE) uv_timer_stop(&c->timer);
    } else {
        uv_timer_start(&c->timer, on_timer, ms, 0);
    }
    c->timer_kind = kind;
}

/* Answer a request that cannot go on (malformed, too large, too slow) and close. */
static void conn_fail(rv_conn_t *c, int status, const char *detail) {
    if (c->state == CONN_CLOSING || c->state == CONN_LINGER || c->state == CONN_WRITING) return;
    if (c->req && c->req->owned) return; /* the handler has the request; it will answer */
    rv_request_t *r = c->req;
    if (r == NULL && (r = c->req = request_new(c)) == NULL) {
        conn_close(c);
        return;
    }
    if (c->error_status == 0) c->error_status = status;
    timer_set(c, T_NONE, 0);
    /* Reading goes on during the answer only to notice the close; input is discarded (on_read
     * drops what comes once error_status is set). */
    pending_free(c);
    r->keep_alive = 0;
    if (r->path == NULL || r->path[0] == '\0') {
        r->path = "-";
        r->path_len = 1;
    }
    rv_respond_error(r, status, detail, status == c->error_status ? c->error_headers : NULL);
}

static void on_conn_closed(uv_handle_t *h) {
    rv_conn_t *c = h->data;
    if (--c->handles > 0) return;
    rv_server_t *s = c->srv;
    free(c);
    if (s->draining && s->nconns == 0 && s->drained_cb) {
        void (*cb)(rv_server_t *) = s->drained_cb;
        s->drained_cb = NULL;
        cb(s);
    }
}

static void conn_close(rv_conn_t *c) {
    if (c->state == CONN_CLOSING) return;
    rv_server_t *s = c->srv;
    c->state = CONN_CLOSING;
    rv_request_t *r = c->req;
    c->req = NULL;
    if (r) {
        if (r->owned) {
            /* The handler still owns the request: detach it and tell the handler. */
            r->conn = NULL;
            if (r->gone_cb) r->gone_cb(r, r->gone_data);
        } else {
            request_free(r);
        }
    }
    pending_free(c);
    RV_LIST_REMOVE(s->conns, c);
    s->nconns--;
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void peer_name(uv_tcp_t *tcp, char *out, size_t outlen) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    out[0] = '\0';
    if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0) {
        snprintf(out, outlen, "unknown");
        return;
    }
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, out, outlen);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, out, outlen);
    else
        snprintf(out, outlen, "local");
}

static void free_handle(uv_handle_t *h) { free(h); }

/* Over the connection limit: say so in one write and close. The socket is not read. */
static void refuse(rv_server_t *s) {
    uv_tcp_t *t = malloc(sizeof *t);
    if (t == NULL || uv_tcp_init(s->loop, t) != 0) {
        free(t);
        return;
    }
    if (uv_accept((uv_stream_t *)&s->listener, (uv_stream_t *)t) == 0) {
        static const char msg[] =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            "Content-Length: 34\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
            "{\"detail\":\"Too many connections\"}\n";
        uv_buf_t b = uv_buf_init((char *)msg, sizeof msg - 1);
        uv_try_write((uv_stream_t *)t, &b, 1);
    }
    uv_close((uv_handle_t *)t, free_handle);
}

static void on_connection(uv_stream_t *ls, int status) {
    rv_server_t *s = ls->data;
    static rv_log_limit_t accept_failed = {.what = "http: accept failed"};
    static rv_log_limit_t conn_limit = {.what = "http: connection limit reached"};
    if (status < 0) {
        rv_warn_limited(&accept_failed, "http: accept failed: %s", uv_strerror(status));
        return;
    }
    if (s->nconns >= s->opts.max_connections) {
        rv_warn_limited(&conn_limit, "http: %s: connection limit (%u) reached, refusing",
                        s->opts.name, s->opts.max_connections);
        refuse(s);
        return;
    }
    rv_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) return;
    c->srv = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles = 2;
    RV_LIST_PUSH(s->conns, c);
    s->nconns++;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    peer_name(&c->tcp, c->peer, sizeof c->peer);
    llhttp_init(&c->parser, HTTP_REQUEST, &settings);
    c->parser.data = c;
    c->state = CONN_IDLE;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    c->reading = 1;
    /* The first request must arrive within the header timeout. */
    timer_set(c, T_HEADER, s->opts.header_timeout_ms);
}

/* ---- server ------------------------------------------------------------------------------- */

int rv_server_init(rv_server_t *s, uv_loop_t *loop, const rv_server_opts_t *opts) {
    memset(s, 0, sizeof *s);
    settings_init();
    s->loop = loop;
    s->opts = *opts;
    if (s->opts.max_url_bytes == 0) s->opts.max_url_bytes = 8192;
    if (s->opts.name == NULL) s->opts.name = "http";
    int rc = uv_tcp_init(loop, &s->listener);
    if (rc) return rc;
    s->listener.data = s;
    return 0;
}

int rv_server_listen(rv_server_t *s, const struct sockaddr *addr, int reuseport) {
    int rc;
    if (reuseport) {
        /* SO_REUSEPORT must be set before bind, so the socket is made here. */
        int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd < 0) return uv_translate_sys_error(errno);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if ((rc = uv_tcp_open(&s->listener, fd)) != 0) {
            close(fd);
            return rc;
        }
    }
    if ((rc = uv_tcp_bind(&s->listener, addr, 0)) != 0) return rc;
    if ((rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection)) != 0) return rc;
    return 0;
}

int rv_server_listen_fd(rv_server_t *s, int fd) {
    int rc = uv_tcp_open(&s->listener, fd);
    if (rc) return rc;
    if ((rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection)) != 0) return rc;
    return 0;
}

static void stop_listening(rv_server_t *s) {
    if (!uv_is_closing((uv_handle_t *)&s->listener)) uv_close((uv_handle_t *)&s->listener, NULL);
}

void rv_server_drain(rv_server_t *s, void (*cb)(rv_server_t *s)) {
    s->draining = 1;
    s->drained_cb = cb;
    stop_listening(s);
    rv_conn_t *c = s->conns;
    while (c) {
        rv_conn_t *next = c->next;
        if (c->state == CONN_IDLE) conn_close(c);
        c = next;
    }
    if (s->nconns == 0 && s->drained_cb) {
        s->drained_cb = NULL;
        cb(s);
    }
}

void rv_server_close(rv_server_t *s) {
    s->draining = 1;
    s->drained_cb = NULL;
    stop_listening(s);
    while (s->conns) conn_close(s->conns);
}
