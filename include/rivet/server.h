/* HTTP/1.1 server on libuv + llhttp: listeners, connections, limits, timeouts, keep-alive,
 * pipelining (answered in order), and requests that handlers may answer later. */
#ifndef RIVET_SERVER_H
#define RIVET_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#include "rivet/buf.h"
#include "rivet/router.h"

typedef struct rv_server_s rv_server_t;
typedef struct rv_conn_s rv_conn_t;

typedef struct rv_header_s {
    const char *name; /* NUL-terminated, as the client sent it */
    const char *value;
    size_t name_len;
    size_t value_len;
} rv_header_t;

typedef void (*rv_request_gone_cb)(rv_request_t *req, void *data);

struct rv_request_s {
    const char *method; /* "GET", "POST", ... */
    const char *path;   /* NUL-terminated, no query */
    size_t path_len;
    const char *query; /* after '?', "" when none */
    rv_header_t *headers;
    size_t nheaders;
    char *body; /* NUL-terminated (the NUL is not counted) */
    size_t body_len;
    char request_id[72];
    char peer[64];           /* the TCP peer's address, without port */
    const rv_route_t *route; /* NULL for answers given before routing */
    int head;                /* HEAD: the answer carries no body */
    int keep_alive;
    uint64_t start_ms; /* loop time when the request began */
    void *app;         /* the server's opts.app */
    rv_server_t *server;

    /* Private to the server. */
    rv_conn_t *conn; /* NULL once the client has gone */
    int owned;       /* a handler has it (until it answers) */
    rv_request_gone_cb gone_cb;
    void *gone_data;
    rv_buf_t url;
    rv_buf_t hbuf;
    size_t *hoff; /* 4 offsets per header while parsing */
    size_t hcap;
    int last_cb;
    rv_buf_t bodybuf;
    int saw_cl;
    int saw_te;
    int saw_version; /* the request line had an HTTP-version (not HTTP/0.9 style) */
    char version[4]; /* its digits as sent ("1.1"), for telling 505 from 400 */
    int expect_continue;
    int in_trailers;      /* the header section is complete; fields now are trailers */
    size_t trailer_bytes; /* trailer section so far, bounded like headers and discarded */
    size_t ntrailers;
    size_t ext_bytes;        /* chunk extensions of the current chunk */
    const rv_route_t *match; /* the route found when the headers completed, or NULL */
    int match_rc;            /* 0, RV_ENOTFOUND or RV_EMETHOD */
    size_t held_head;        /* bytes of its URL and header buffers, counted in the budget */
    size_t held_body;        /* bytes of body that arrived, counted in the budget */
    uint64_t t0_ns;
};

typedef struct rv_server_opts_s {
    const char *name;           /* "public", "admin": for logs */
    size_t max_url_bytes;       /* 414 */
    size_t max_header_bytes;    /* 431, request line and headers together */
    size_t max_body_bytes;      /* 413; a route's own limit (rv_route_t.max_body) is lower */
    size_t max_input_buffer;    /* request bodies held at once by all connections together (503
                                   with Retry-After beyond); URLs and headers, and pipelined
                                   input, have a quarter of it each; 0: unlimited */
    unsigned max_connections;   /* beyond: answered 503 and closed */
    uint64_t header_timeout_ms; /* request line and headers: 408 */
    uint64_t body_timeout_ms;   /* body: 408 */
    uint64_t idle_timeout_ms;   /* between requests, and for a client not reading: close */
    const rv_route_t *routes;
    size_t nroutes;
    void *app;
    /* Called before every answer's header block is finished; may append header lines. */
    void (*decorate)(rv_request_t *req, int status, rv_buf_t *headers);
    /* Called once per answered request (metrics); the access log is written by the server. */
    void (*on_done)(rv_request_t *req, int status, size_t bytes, double ms);
} rv_server_opts_t;

struct rv_server_s {
    uv_loop_t *loop;
    rv_server_opts_t opts;
    uv_tcp_t listener;
    rv_conn_t *conns; /* doubly linked list of open connections */
    size_t nconns;
    size_t inflight; /* requests handed to handlers and not yet answered */
    size_t held[3];  /* request input held: headers, bodies, pipelined input */
    int draining;    /* shutting down: no new requests on kept-alive connections */
    void (*drained_cb)(rv_server_t *s);
};

/* Initialise s (owned by the caller, who keeps it alive until the loop has run after
 * rv_server_close or a drain's callback: the handles close through the loop). opts is copied;
 * its routes and app are borrowed. */
int rv_server_init(rv_server_t *s, uv_loop_t *loop, const rv_server_opts_t *opts);

/* Bind and listen on addr (SO_REUSEADDR; SO_REUSEPORT when reuseport). Returns 0 or UV_E*. */
int rv_server_listen(rv_server_t *s, const struct sockaddr *addr, int reuseport);

/* Listen on an already bound and listening socket (socket activation, inherited sockets). */
int rv_server_listen_fd(rv_server_t *s, int fd);

/* Stop accepting, close idle connections, let requests in flight finish (their connections
 * close after the answer). cb runs when no connection is left. */
void rv_server_drain(rv_server_t *s, void (*cb)(rv_server_t *s));

/* Close every connection now; requests still with their handlers are told the client has gone
 * (they still answer, and the answer is dropped). The listener is closed too. Memory is released
 * through the loop's close callbacks (the close contract: common.h). */
void rv_server_close(rv_server_t *s);

/* The first header named name (case-insensitive), or NULL; *len gets its length if given. */
const char *rv_request_header(const rv_request_t *r, const char *name, size_t *len);

/* Every line of a header, joined with ", " in the order received, into out (RFC 9110 §5.3: field
 * lines of one name are one list). Returns the number of lines (0 when absent; out is then
 * empty), or RV_ENOMEM / RV_ERANGE (past out's limit). */
int rv_request_header_join(const rv_request_t *r, const char *name, rv_buf_t *out);

/* Bytes of request input s holds now (headers, bodies and pipelined input). */
size_t rv_server_input_held(const rv_server_t *s);

/* How many times a header occurs. */
size_t rv_request_header_count(const rv_request_t *r, const char *name);

/* The percent-decoded value of query parameter name into out. Returns 0, RV_ENOTFOUND,
 * RV_ERANGE (does not fit), RV_EINVAL (decodes to a NUL byte) or RV_EMALFORMED (given more than
 * once); out is "" on an error. */
int rv_request_query(const rv_request_t *r, const char *name, char *out, size_t outlen);

/* Be told (once) when the client disconnects before the answer; cb should cancel the work and
 * may answer at once. */
void rv_request_on_gone(rv_request_t *r, rv_request_gone_cb cb, void *data);

/* Answer the request. Ownership of r ends here: it is freed, now or once written.
 * extra_headers: complete header lines ("Name: value\r\n"), or NULL. */
void rv_respond(rv_request_t *r, int status, const char *content_type, const char *body,
                size_t body_len, const char *extra_headers);

/* As rv_respond, for a body in storage that lives as long as the process (an embedded file, a
 * page rendered once): it is written from where it is, never copied, so a client that does not
 * read makes the server hold only the header block. */
void rv_respond_static(rv_request_t *r, int status, const char *content_type, const char *body,
                       size_t body_len, const char *extra_headers);

/* Answer with a JSON text body. */
void rv_respond_json(rv_request_t *r, int status, const char *json, size_t len,
                     const char *extra_headers);

/* Answer {"detail": "<detail>"}. */
void rv_respond_error(rv_request_t *r, int status, const char *detail, const char *extra_headers);

/* The reason phrase of a status code. */
const char *rv_http_reason(int status);

#endif
