/* Fuzz the HTTP request path in-process: bytes in, llhttp, the server's limits and checks,
 * routing, and handlers that answer at once, later, or after reading headers, query and body.
 *
 * One server listens on 127.0.0.1 with small limits and a few test routes, on a loop that the
 * harness runs itself. Per input, a client on the same loop connects, writes the input, shuts down
 * its sending side and reads until the server closes. The first input byte picks options: bit 0
 * splits the rest into two writes that reach the server in separate reads (the split point comes
 * from bits 2-7), and bit 1 holds the shutdown back until the first answer arrives (or a short
 * timer fires), so that delayed answers and pipelining on an open connection are exercised too.
 *
 * Properties: the server writes only complete answers, each "HTTP/1.1 " with a 3-digit status
 * and the reason the server itself gives for that status, a Content-Length that matches the body,
 * nothing between or after answers; handlers see NUL-terminated header names, a NUL-terminated
 * body within the limit; every connection and request is released once the client has gone. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "fuzz.h"
#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/server.h"
#include "rivet/validate.h"

#define MAX_BODY       8192
#define MAX_HEADER     4096
/* A loop iteration that makes no progress at all is impossible while the client is open: the
 * server's timers bound every wait. So many iterations mean the server is stuck. */
#define MAX_ITERATIONS 100000
#define WAIT_MS        2
#define CLIENT_BUF_MAX (4 * 1024 * 1024)

static uv_loop_t loop;
static rv_server_t server;
static struct sockaddr_in server_addr;
static size_t later_open; /* delayed answers whose timer handle is not yet closed */

/* ---- test routes ------------------------------------------------------------------------ */

static void route_now(rv_request_t *r) {
    static const char body[] = "{\"ok\":true}";
    rv_respond_json(r, 200, body, sizeof body - 1, NULL);
}

typedef struct later_s {
    uv_timer_t timer;
    rv_request_t *req; /* NULL once answered */
} later_t;

static void later_closed(uv_handle_t *h) {
    free(h->data);
    later_open--;
}

static void later_fire(uv_timer_t *t) {
    later_t *l = t->data;
    rv_request_t *r = l->req;
    l->req = NULL;
    uv_close((uv_handle_t *)&l->timer, later_closed);
    static const char body[] = "{\"later\":true}";
    rv_respond_json(r, 200, body, sizeof body - 1, "X-Later: 1\r\n");
}

/* The client went away first: cancel the timer and answer at once, as handlers must. */
static void later_gone(rv_request_t *r, void *data) {
    later_t *l = data;
    FUZZ_CHECK(l->req == r);
    l->req = NULL;
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, later_closed);
    rv_respond_error(r, 499, "Client Closed Request", NULL);
}

static void route_later(rv_request_t *r) {
    later_t *l = calloc(1, sizeof *l);
    if (l == NULL) {
        rv_respond_error(r, 503, "Server out of memory", NULL);
        return;
    }
    l->req = r;
    uv_timer_init(&loop, &l->timer);
    l->timer.data = l;
    later_open++;
    rv_request_on_gone(r, later_gone, l);
    uv_timer_start(&l->timer, later_fire, 0, 0);
}

/* Read everything a handler can read, checking what the server promises about it. */
static void route_read(rv_request_t *r) {
    for (size_t i = 0; i < r->nheaders; i++) {
        const rv_header_t *h = &r->headers[i];
        FUZZ_CHECK(h->name != NULL && strlen(h->name) == h->name_len && h->name_len > 0);
        FUZZ_CHECK(h->value != NULL);
    }
    FUZZ_CHECK(r->body != NULL || r->body_len == 0);
    if (r->body != NULL) FUZZ_CHECK(r->body[r->body_len] == '\0');
    FUZZ_CHECK(r->body_len <= MAX_BODY);
    FUZZ_CHECK(r->path[0] == '/' && strlen(r->path) == r->path_len);

    size_t n = 0;
    const char *host = rv_request_header(r, "host", &n);
    size_t hosts = rv_request_header_count(r, "host");
    FUZZ_CHECK((host == NULL) == (hosts == 0));
    /* One set of credentials at most: two are refused before any handler. */
    FUZZ_CHECK(rv_request_header_count(r, "authorization") <= 1);
    char a[64], sid[300];
    int qa = rv_request_query(r, "a", a, sizeof a);
    FUZZ_CHECK(qa == 0 || qa == RV_ENOTFOUND || qa == RV_ERANGE || qa == RV_EINVAL ||
               qa == RV_EMALFORMED);
    if (qa == 0) FUZZ_CHECK(strlen(a) < sizeof a);
    if (qa != 0) FUZZ_CHECK(a[0] == '\0' || qa == RV_ENOTFOUND);
    /* How many times "a" is given, counted here from the raw query. */
    int given = 0;
    for (const char *p = r->query; *p;) {
        size_t part = strcspn(p, "&"), key = strcspn(p, "=&");
        given += key == 1 && p[0] == 'a';
        p += part + (p[part] == '&');
    }
    if (given == 0) FUZZ_CHECK(qa == RV_ENOTFOUND);
    if (given == 1) FUZZ_CHECK(qa != RV_ENOTFOUND && qa != RV_EMALFORMED);
    if (given > 1) FUZZ_CHECK(qa == RV_EMALFORMED || qa == RV_ERANGE || qa == RV_EINVAL);
    int valid = rv_request_query(r, "session_id", sid, sizeof sid) == 0 && rv_valid_session_id(sid);

    rv_buf_t b = RV_BUF_INIT;
    int rc = rv_buf_printf(&b, "{\"headers\":%zu,\"hosts\":%zu,\"body\":%zu,\"session\":%d}",
                           r->nheaders, hosts, r->body_len, valid);
    if (rc) {
        rv_respond_error(r, 503, "Server out of memory", NULL);
    } else {
        rv_respond_json(r, 200, b.data, b.len, NULL);
    }
    rv_buf_free(&b);
}

static const rv_route_t routes[] = {
    {.method = "GET", .path = "/now", .fn = route_now, .name = "now"},
    {.method = "OPTIONS", .path = "/now", .fn = route_now, .name = "now"},
    {.method = "GET", .path = "/later", .fn = route_later, .name = "later"},
    {.method = "POST", .path = "/later", .fn = route_later, .name = "later"},
    {.method = "GET", .path = "/read", .fn = route_read, .name = "read"},
    {.method = "POST", .path = "/read", .fn = route_read, .name = "read"},
    {.method = "PUT", .path = "/read", .fn = route_read, .name = "read"},
};

/* ---- the client ------------------------------------------------------------------------- */

typedef struct client_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t write;
    uv_shutdown_t shutdown;
    const char *data;
    size_t size, split;
    int split_writes, wait_answer;
    int second_started, wrote_all, shut, eof;
    int open_handles;
    rv_buf_t in;
} client_t;

static char client_read_buf[65536];

static void client_closed(uv_handle_t *h) {
    client_t *c = h->data;
    c->open_handles--;
}

static void client_close(client_t *c) {
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, client_closed);
    if (!uv_is_closing((uv_handle_t *)&c->timer)) uv_close((uv_handle_t *)&c->timer, client_closed);
}

static void client_shutdown(client_t *c) {
    if (c->shut || c->eof) return;
    c->shut = 1;
    uv_timer_stop(&c->timer);
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, NULL) != 0) client_close(c);
}

static void on_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    buf->base = client_read_buf;
    buf->len = sizeof client_read_buf;
}

static void on_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    client_t *c = s->data;
    if (nread > 0) {
        FUZZ_CHECK(rv_buf_append(&c->in, buf->base, (size_t)nread) == 0);
        if (c->wrote_all) client_shutdown(c);
        return;
    }
    if (nread < 0) {
        c->eof = 1;
        client_close(c);
    }
}

static void on_wait_over(uv_timer_t *t) { client_shutdown(t->data); }

static void write_part(client_t *c, const char *p, size_t n);

static void on_second_part(uv_timer_t *t) {
    client_t *c = t->data;
    write_part(c, c->data + c->split, c->size - c->split);
}

static void on_written(uv_write_t *w, int status) {
    client_t *c = w->data;
    if (status < 0) {
        /* The server closed first (after a fatal error): what it answered is still read. */
        client_shutdown(c);
        return;
    }
    if (c->split_writes && !c->second_started) {
        /* Timers run before the next poll, which is after the server has read the first part. */
        c->second_started = 1;
        uv_timer_start(&c->timer, on_second_part, 0, 0);
        return;
    }
    c->wrote_all = 1;
    if (c->wait_answer && c->in.len == 0) {
        uv_timer_start(&c->timer, on_wait_over, WAIT_MS, 0);
    } else {
        client_shutdown(c);
    }
}

static void write_part(client_t *c, const char *p, size_t n) {
    c->write.data = c;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    if (n == 0 || uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0)
        on_written(&c->write, n == 0 ? 0 : -1);
}

static void on_connected(uv_connect_t *req, int status) {
    client_t *c = req->data;
    FUZZ_CHECK(status == 0);
    FUZZ_CHECK(uv_read_start((uv_stream_t *)&c->tcp, on_client_alloc, on_client_read) == 0);
    write_part(c, c->data, c->split_writes ? c->split : c->size);
}

/* ---- checking what the server wrote ----------------------------------------------------- */

static int digit(char c) { return c >= '0' && c <= '9'; }

static void check_answers(const char *p, size_t n) {
    const char *end = p + n;
    while (p < end) {
        size_t left = (size_t)(end - p);
        if (left < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0 || !digit(p[9]) || !digit(p[10]) ||
            !digit(p[11]) || p[12] != ' ') {
            fprintf(stderr, "fuzz: answer does not start with a status line: \"%.*s\"\n",
                    (int)(left > 64 ? 64 : left), p);
            FUZZ_CHECK(!"status line");
        }
        int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        const char *reason = rv_http_reason(status);
        FUZZ_CHECK(strcmp(reason, "Unknown") != 0);
        FUZZ_CHECK(left >= 13 + strlen(reason) + 2 && memcmp(p + 13, reason, strlen(reason)) == 0 &&
                   memcmp(p + 13 + strlen(reason), "\r\n", 2) == 0);
        const char *hend = memmem(p, left, "\r\n\r\n", 4);
        FUZZ_CHECK(hend != NULL);
        const char *body = hend + 4;
        if (status < 200) {
            p = body; /* 100 Continue: no header fields, no body */
            continue;
        }
        const char *cl = memmem(p, (size_t)(hend - p), "\r\nContent-Length: ", 18);
        FUZZ_CHECK(cl != NULL);
        size_t len = 0;
        for (const char *d = cl + 18; digit(*d); d++) len = len * 10 + (size_t)(*d - '0');
        /* Every body here is JSON; an answer to HEAD has none despite its Content-Length. */
        if (body < end && *body == '{') {
            FUZZ_CHECK((size_t)(end - body) >= len);
            p = body + len;
        } else {
            p = body;
        }
    }
}

/* ---- libFuzzer entry points ------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    signal(SIGPIPE, SIG_IGN);
    rv_log_set_level(RV_LOG_ERROR);
    FUZZ_CHECK(uv_loop_init(&loop) == 0);
    rv_server_opts_t opts = {
        .name = "fuzz",
        .max_url_bytes = 1024,
        .max_header_bytes = MAX_HEADER,
        .max_body_bytes = MAX_BODY,
        .max_connections = 4,
        .header_timeout_ms = 200,
        .body_timeout_ms = 200,
        .idle_timeout_ms = 200,
        .routes = routes,
        .nroutes = RV_ARRAY_LEN(routes),
    };
    FUZZ_CHECK(rv_server_init(&server, &loop, &opts) == 0);
    FUZZ_CHECK(uv_ip4_addr("127.0.0.1", 0, &server_addr) == 0);
    FUZZ_CHECK(rv_server_listen(&server, (const struct sockaddr *)&server_addr, 0) == 0);
    int len = sizeof server_addr;
    FUZZ_CHECK(uv_tcp_getsockname(&server.listener, (struct sockaddr *)&server_addr, &len) == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    client_t c;
    memset(&c, 0, sizeof c);
    c.split_writes = data[0] & 1;
    c.wait_answer = (data[0] >> 1) & 1;
    c.data = (const char *)data + 1;
    c.size = size - 1;
    c.split = c.size * (size_t)(data[0] >> 2) / 64;
    c.in.limit = CLIENT_BUF_MAX;
    FUZZ_CHECK(uv_tcp_init(&loop, &c.tcp) == 0);
    FUZZ_CHECK(uv_timer_init(&loop, &c.timer) == 0);
    uv_tcp_nodelay(&c.tcp, 1);
    c.tcp.data = c.timer.data = c.connect.data = &c;
    c.open_handles = 2;
    FUZZ_CHECK(uv_tcp_connect(&c.connect, &c.tcp, (const struct sockaddr *)&server_addr,
                              on_connected) == 0);

    unsigned long iterations = 0;
    while (c.open_handles > 0 || server.nconns > 0 || later_open > 0) {
        uv_run(&loop, UV_RUN_ONCE);
        if (++iterations > MAX_ITERATIONS) {
            fprintf(stderr, "fuzz: stuck: client %s, %zu connections, %zu requests in flight\n",
                    c.open_handles ? "open" : "closed", server.nconns, server.inflight);
            FUZZ_CHECK(!"the exchange ends");
        }
    }
    FUZZ_CHECK(server.inflight == 0);
    check_answers(c.in.data ? c.in.data : "", c.in.len);
    rv_log_flush();
    rv_buf_free(&c.in);
    return 0;
}
