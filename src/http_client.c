/* The outbound HTTP client: one libcurl multi handle driven by the libuv loop, so calls to Stripe
 * never block the loop. libcurl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION: one
 * uv_poll_t per socket) and when to wake it up (CURLMOPT_TIMERFUNCTION: one uv_timer_t); the loop
 * tells libcurl what happened with curl_multi_socket_action, and every such call is followed by
 * draining curl_multi_info_read for finished transfers. Callbacks of our callers only ever run
 * from that drain, never from inside a libcurl callback, so callers may start, cancel or close
 * anything from their callbacks.
 *
 * curl_global_init is called by the first rv_http_client_init of the process (rivetd has one
 * thread per process); rv_http_global_cleanup undoes it at exit. */
#include "rivet/http_client.h"

#include <curl/curl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/list.h"
#include "rivet/log.h"

#define DEFAULT_MAX_RESPONSE   (1024u * 1024u)
#define MAX_RESPONSE_HEADERS   (64u * 1024u)
/* Enough connections for a burst of checkouts over HTTP/1.1; over HTTP/2 one connection carries
 * up to 100 streams, so this is rarely reached. The cache keeps as many as may be open at once:
 * a smaller cache closes connections after a burst only for the next burst to open them again,
 * a TLS handshake each. Idle ones are closed by libcurl after its idle time (118 s). */
#define MAX_HOST_CONNECTIONS   1024L
#define MAX_CACHED_CONNECTIONS MAX_HOST_CONNECTIONS

typedef struct sock_s {
    uv_poll_t poll;
    curl_socket_t fd;
    rv_http_client_t *c;
    int closing;
    struct sock_s *prev, *next;
} sock_t;

struct rv_http_req_s {
    rv_http_client_t *c;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    rv_buf_t resp;         /* the body, bounded by max_response_bytes */
    rv_buf_t hdrs;         /* the last response's headers as "name\0value\0" pairs, bounded */
    const char *fail_text; /* set when we abort the transfer ourselves */
    int failed_later;      /* its socket could not be watched: finish it from the reap timer */
    int done;              /* its callback is running */
    rv_http_cb cb;
    void *data;
    rv_http_req_t *prev, *next;
    char errbuf[CURL_ERROR_SIZE];
};

struct rv_http_client_s {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer;    /* libcurl's timeout */
    uv_timer_t reap;     /* finishes requests that failed inside a libcurl callback */
    rv_http_req_t *reqs; /* in flight */
    sock_t *socks;       /* every poll handle not yet freed, closing ones included */
    size_t inflight;
    size_t open_handles;  /* timers and polls whose close callback has not run */
    unsigned dispatching; /* > 0 while callers' callbacks may run */
    int closing;          /* rv_http_client_close was called */
    int torn_down;        /* the multi handle is gone and the handles are closing */
};

static int curl_ready;

static void drain(rv_http_client_t *c);
static void teardown(rv_http_client_t *c);

/* ---- process-wide set-up ---------------------------------------------------------------- */

static int global_init(void) {
    if (curl_ready) return 0;
    CURLcode e = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (e != CURLE_OK) {
        rv_error("http: curl_global_init: %s", curl_easy_strerror(e));
        return RV_EIO;
    }
    curl_ready = 1;
    /* Without an asynchronous resolver a name lookup would stop the whole loop. */
    const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
    if (v == NULL || !(v->features & CURL_VERSION_ASYNCHDNS)) {
        rv_warn("http: libcurl has no asynchronous resolver: name lookups block the loop");
    } else {
        rv_debug("http: libcurl %s, %s resolver", v->version, v->ares ? "c-ares" : "threaded");
    }
    return 0;
}

void rv_http_global_cleanup(void) {
    if (!curl_ready) return;
    curl_global_cleanup();
    curl_ready = 0;
}

/* ---- handles ---------------------------------------------------------------------------- */

static void handle_closed(rv_http_client_t *c) {
    c->open_handles--;
    if (c->torn_down && c->open_handles == 0) free(c);
}

static void on_timer_closed(uv_handle_t *h) { handle_closed(h->data); }

static void on_sock_closed(uv_handle_t *h) {
    sock_t *s = rv_container_of((uv_poll_t *)h, sock_t, poll);
    rv_http_client_t *c = s->c;
    RV_LIST_REMOVE(c->socks, s);
    free(s);
    handle_closed(c);
}

static void sock_close(sock_t *s) {
    if (s->closing) return;
    s->closing = 1;
    uv_close((uv_handle_t *)&s->poll, on_sock_closed);
}

/* A poll handle for fd. libuv refuses a second watcher on one descriptor (UV_EEXIST): if an
 * open poll of ours still has this fd, libcurl closed that socket without announcing it and
 * the descriptor number was reused, so the old handle is taken over. */
static sock_t *sock_open(rv_http_client_t *c, curl_socket_t fd) {
    for (sock_t *s = c->socks; s != NULL; s = s->next) {
        if (s->fd == fd && !s->closing) return s;
    }
    sock_t *s = calloc(1, sizeof *s);
    if (s == NULL) return NULL;
    int rc = uv_poll_init_socket(c->loop, &s->poll, fd);
    if (rc != 0) {
        rv_error("http: cannot watch socket %d: %s", (int)fd, uv_strerror(rc));
        free(s);
        return NULL;
    }
    s->fd = fd;
    s->c = c;
    s->poll.data = s;
    RV_LIST_PUSH(c->socks, s);
    c->open_handles++;
    return s;
}

/* ---- requests --------------------------------------------------------------------------- */

static void req_link(rv_http_client_t *c, rv_http_req_t *r) {
    RV_LIST_PUSH(c->reqs, r);
    c->inflight++;
}

static void req_unlink(rv_http_req_t *r) {
    rv_http_client_t *c = r->c;
    RV_LIST_REMOVE(c->reqs, r);
    c->inflight--;
}

static void req_free(rv_http_req_t *r) {
    if (r->easy) curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    rv_buf_free(&r->resp);
    rv_buf_free(&r->hdrs);
    free(r);
}

static void detach(rv_http_req_t *r) {
    CURLMcode mc = curl_multi_remove_handle(r->c->multi, r->easy);
    if (mc != CURLM_OK) rv_error("http: curl_multi_remove_handle: %s", curl_multi_strerror(mc));
}

/* The transfer is over: hand its outcome to the caller, then free it. Runs outside libcurl's
 * callbacks only. */
static void complete(rv_http_req_t *r, CURLcode result) {
    req_unlink(r);
    detach(r);
    rv_http_response_t res;
    memset(&res, 0, sizeof res);
    res.req = r;
    if (r->fail_text != NULL) {
        res.err = RV_EIO;
        res.err_text = r->fail_text;
    } else if (result != CURLE_OK) {
        res.err = result == CURLE_OPERATION_TIMEDOUT ? RV_ETIMEDOUT : RV_EIO;
        res.err_text = r->errbuf[0] ? r->errbuf : curl_easy_strerror(result);
    } else {
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        res.status = (int)status;
    }
    if (res.err == 0 && r->resp.data != NULL) {
        res.body = r->resp.data;
        res.body_len = r->resp.len;
    } else {
        res.body = "";
    }
    r->done = 1;
    r->cb(r->data, &res);
    req_free(r);
}

static rv_http_req_t *req_of(CURL *easy) {
    char *priv = NULL;
    if (easy == NULL || curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv) != CURLE_OK) return NULL;
    return (rv_http_req_t *)priv;
}

/* Finished transfers, after every curl_multi_socket_action. Callers' callbacks run here and may
 * cancel other requests (curl_multi_remove_handle also drops their queued messages) or close the
 * client, which is then torn down once the drain is over. */
static void drain(rv_http_client_t *c) {
    CURLMsg *msg;
    int left;
    c->dispatching++;
    while (!c->closing && (msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) continue;
        /* The message belongs to the easy handle and dies with its removal: copy first. */
        CURLcode result = msg->data.result;
        rv_http_req_t *r = req_of(msg->easy_handle);
        if (r == NULL) {
            rv_error("http: finished transfer without a request");
            continue;
        }
        complete(r, result);
    }
    c->dispatching--;
    if (c->closing && c->dispatching == 0) teardown(c);
}

static void socket_action(rv_http_client_t *c, curl_socket_t fd, int flags) {
    int running = 0;
    CURLMcode mc = curl_multi_socket_action(c->multi, fd, flags, &running);
    if (mc != CURLM_OK) rv_error("http: curl_multi_socket_action: %s", curl_multi_strerror(mc));
    drain(c);
}

static void on_poll(uv_poll_t *h, int status, int events) {
    sock_t *s = h->data;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    /* s may be closed by libcurl's socket callback during the action: use nothing of it after. */
    socket_action(s->c, s->fd, flags);
}

static void on_timeout(uv_timer_t *t) {
    rv_http_client_t *c = t->data;
    socket_action(c, CURL_SOCKET_TIMEOUT, 0);
}

static rv_http_req_t *first_failed(rv_http_client_t *c) {
    for (rv_http_req_t *r = c->reqs; r != NULL; r = r->next) {
        if (r->failed_later) return r;
    }
    return NULL;
}

static void on_reap(uv_timer_t *t) {
    rv_http_client_t *c = t->data;
    rv_http_req_t *r;
    c->dispatching++;
    /* Callbacks may cancel any request: search again after each one. */
    while (!c->closing && (r = first_failed(c)) != NULL) complete(r, CURLE_OK);
    c->dispatching--;
    if (c->closing && c->dispatching == 0) teardown(c);
}

/* A transfer cannot proceed and we are inside a libcurl callback, where removing it is not
 * allowed: mark it and finish it from the reap timer. */
static void fail_later(rv_http_client_t *c, CURL *easy, const char *why) {
    rv_http_req_t *r = req_of(easy);
    if (r == NULL || r->done) {
        rv_error("http: %s", why);
        return;
    }
    r->fail_text = why;
    r->failed_later = 1;
    int rc = uv_timer_start(&c->reap, on_reap, 0, 0);
    if (rc != 0) rv_error("http: %s; cannot schedule: %s", why, uv_strerror(rc));
}

/* ---- libcurl's callbacks: no libcurl calls in here except curl_multi_assign ------------- */

static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
    rv_http_client_t *c = userp;
    sock_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        /* libcurl forgets its association right after this call, before closing the socket. */
        if (s != NULL) sock_close(s);
        return 0;
    }
    if (s == NULL) {
        s = sock_open(c, fd);
        if (s == NULL) {
            fail_later(c, easy, "cannot watch the connection's socket");
            return 0;
        }
        CURLMcode mc = curl_multi_assign(c->multi, fd, s);
        if (mc != CURLM_OK) {
            rv_error("http: curl_multi_assign: %s", curl_multi_strerror(mc));
            sock_close(s);
            fail_later(c, easy, "cannot watch the connection's socket");
            return 0;
        }
    }
    int events = 0;
    if (what & CURL_POLL_IN) events |= UV_READABLE;
    if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
    int rc = uv_poll_start(&s->poll, events, on_poll);
    if (rc != 0) {
        rv_error("http: uv_poll_start: %s", uv_strerror(rc));
        fail_later(c, easy, "cannot watch the connection's socket");
    }
    return 0;
}

/* libcurl wants to be woken after timeout_ms (0: as soon as possible, from the next loop
 * iteration; never by calling it from here), or never (-1). */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
    rv_http_client_t *c = userp;
    if (timeout_ms < 0) {
        uv_timer_stop(&c->timer);
        return 0;
    }
    int rc = uv_timer_start(&c->timer, on_timeout, (uint64_t)timeout_ms, 0);
    if (rc != 0) rv_error("http: uv_timer_start: %s", uv_strerror(rc));
    return 0;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata) {
    rv_http_req_t *r = userdata;
    size_t n = size * nmemb;
    int rc = rv_buf_append(&r->resp, ptr, n);
    if (rc != 0) {
        /* A short count makes libcurl abort the transfer with CURLE_WRITE_ERROR. */
        r->fail_text = rc == RV_ERANGE ? "response body too large" : "out of memory";
        return 0;
    }
    return n;
}

/* Keep the headers of the last response only: a new status line (after a 100 Continue, or an
 * interim response) starts over. */
static size_t on_header(char *ptr, size_t size, size_t nmemb, void *userdata) {
    rv_http_req_t *r = userdata;
    size_t n = size * nmemb;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        rv_buf_reset(&r->hdrs);
        return n;
    }
    size_t len = n;
    while (len > 0 && (ptr[len - 1] == '\r' || ptr[len - 1] == '\n')) len--;
    /* The blank line ending the block, and obsolete folded continuations, are not headers. */
    if (len == 0 || ptr[0] == ' ' || ptr[0] == '\t') return n;
    const char *colon = memchr(ptr, ':', len);
    if (colon == NULL || colon == ptr || memchr(ptr, '\0', len) != NULL) return n;
    size_t klen = (size_t)(colon - ptr);
    const char *v = colon + 1;
    const char *end = ptr + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    size_t vlen = (size_t)(end - v);
    if (rv_buf_reserve(&r->hdrs, klen + vlen + 2) != 0) {
        r->fail_text = "response headers too large";
        return 0;
    }
    rv_buf_append(&r->hdrs, ptr, klen);
    rv_buf_append(&r->hdrs, "", 1);
    rv_buf_append(&r->hdrs, v, vlen);
    rv_buf_append(&r->hdrs, "", 1);
    return n;
}

/* ---- public ----------------------------------------------------------------------------- */

int rv_http_client_init(uv_loop_t *loop, rv_http_client_t **out) {
    if (loop == NULL || out == NULL) return RV_EINVAL;
    int rc = global_init();
    if (rc != 0) return rc;
    rv_http_client_t *c = calloc(1, sizeof *c);
    if (c == NULL) return RV_ENOMEM;
    c->loop = loop;
    c->multi = curl_multi_init();
    if (c->multi == NULL) {
        free(c);
        return RV_ENOMEM;
    }
    CURLMcode mc = CURLM_OK;
    if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    if (mc == CURLM_OK) mc = curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    if (mc == CURLM_OK) {
        mc = curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, MAX_HOST_CONNECTIONS);
    }
    if (mc == CURLM_OK) {
        mc = curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, MAX_CACHED_CONNECTIONS);
    }
    if (mc != CURLM_OK) {
        rv_error("http: curl_multi_setopt: %s", curl_multi_strerror(mc));
        curl_multi_cleanup(c->multi);
        free(c);
        return RV_EIO;
    }
    /* uv_timer_init cannot fail on Unix (it only fills the struct). */
    uv_timer_init(loop, &c->timer);
    uv_timer_init(loop, &c->reap);
    c->timer.data = c;
    c->reap.data = c;
    c->open_handles = 2;
    *out = c;
    return 0;
}

static int header_ok(const char *h) {
    for (const char *p = h; *p; p++) {
        if (*p == '\r' || *p == '\n') return 0;
    }
    return 1;
}

static int has_header(const char *const *headers, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':') return 1;
    }
    return 0;
}

static int method_ok(const char *m) {
    if (*m == '\0') return 0;
    for (const char *p = m; *p; p++) {
        if (!((*p >= 'A' && *p <= 'Z') || *p == '-' || *p == '_')) return 0;
    }
    return 1;
}

#define SETOPT(opt, val)                                                                           \
    do {                                                                                           \
        if ((e = curl_easy_setopt(easy, opt, val)) != CURLE_OK) goto bad;                          \
    } while (0)

static int setup_easy(rv_http_req_t *r, const rv_http_opts_t *o, const char *method) {
    CURL *easy = r->easy;
    CURLcode e;
    long timeout = o->timeout_ms > (uint64_t)LONG_MAX ? LONG_MAX : (long)o->timeout_ms;
    SETOPT(CURLOPT_URL, o->url);
    SETOPT(CURLOPT_PRIVATE, (char *)r);
    SETOPT(CURLOPT_ERRORBUFFER, r->errbuf);
    SETOPT(CURLOPT_WRITEFUNCTION, on_write);
    SETOPT(CURLOPT_WRITEDATA, r);
    SETOPT(CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(CURLOPT_HEADERDATA, r);
    SETOPT(CURLOPT_HTTPHEADER, r->headers);
    SETOPT(CURLOPT_TIMEOUT_MS, timeout);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Wait for a connection that may multiplex rather than open one per request at once. */
    SETOPT(CURLOPT_PIPEWAIT, 1L);
    SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(CURLOPT_TCP_KEEPIDLE, 60L);
    SETOPT(CURLOPT_TCP_KEEPINTVL, 30L);
    if (strcmp(method, "GET") == 0) {
        SETOPT(CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        SETOPT(CURLOPT_NOBODY, 1L);
    } else {
        if (strcmp(method, "POST") != 0) SETOPT(CURLOPT_CUSTOMREQUEST, method);
        if (strcmp(method, "POST") == 0 || r->body != NULL) {
            SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
            SETOPT(CURLOPT_POSTFIELDS, r->body != NULL ? r->body : "");
        }
    }
    return 0;
bad:
    rv_error("http: curl_easy_setopt: %s", curl_easy_strerror(e));
    return e == CURLE_OUT_OF_MEMORY ? RV_ENOMEM : RV_EINVAL;
}

int rv_http_request(rv_http_client_t *c, const rv_http_opts_t *opts, rv_http_cb cb, void *data,
                    rv_http_req_t **out) {
    if (c == NULL || opts == NULL || opts->url == NULL || cb == NULL) return RV_EINVAL;
    if (opts->body == NULL && opts->body_len != 0) return RV_EINVAL;
    if (c->closing) return RV_ECANCELED;
    const char *method = opts->method != NULL ? opts->method : "GET";
    if (!method_ok(method)) return RV_EINVAL;
    rv_http_req_t *r = calloc(1, sizeof *r);
    if (r == NULL) return RV_ENOMEM;
    r->c = c;
    r->cb = cb;
    r->data = data;
    r->resp.limit = opts->max_response_bytes ? opts->max_response_bytes : DEFAULT_MAX_RESPONSE;
    r->hdrs.limit = MAX_RESPONSE_HEADERS;
    int rc = RV_ENOMEM;
    for (size_t i = 0; opts->headers != NULL && opts->headers[i] != NULL; i++) {
        if (!header_ok(opts->headers[i])) {
            rc = RV_EINVAL;
            goto fail;
        }
        struct curl_slist *l = curl_slist_append(r->headers, opts->headers[i]);
        if (l == NULL) goto fail;
        r->headers = l;
    }
    /* No "Expect: 100-continue" round trip before a body: our bodies are small. */
    if (!has_header(opts->headers, "Expect")) {
        struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
        if (l == NULL) goto fail;
        r->headers = l;
    }
    if (opts->body != NULL) {
        r->body = malloc(opts->body_len + 1);
        if (r->body == NULL) goto fail;
        memcpy(r->body, opts->body, opts->body_len);
        r->body[opts->body_len] = '\0';
    }
    r->easy = curl_easy_init();
    if (r->easy == NULL) goto fail;
    if ((rc = setup_easy(r, opts, method)) != 0) goto fail;
    CURLMcode mc = curl_multi_add_handle(c->multi, r->easy);
    if (mc != CURLM_OK) {
        rv_error("http: curl_multi_add_handle: %s", curl_multi_strerror(mc));
        rc = mc == CURLM_OUT_OF_MEMORY ? RV_ENOMEM : RV_EIO;
        goto fail;
    }
    req_link(c, r);
    if (out != NULL) *out = r;
    return 0;
fail:
    req_free(r);
    return rc;
}

const char *rv_http_response_header(const rv_http_response_t *res, const char *name) {
    if (res == NULL || res->req == NULL || name == NULL) return NULL;
    const rv_buf_t *h = &res->req->hdrs;
    size_t off = 0;
    while (off < h->len) {
        const char *k = h->data + off;
        size_t klen = strlen(k);
        const char *v = k + klen + 1;
        if (rv_strieq(k, klen, name)) return v;
        off += klen + strlen(v) + 2;
    }
    return NULL;
}

void rv_http_cancel(rv_http_req_t *r) {
    /* During its own callback the request is already finished; it is freed right after. */
    if (r == NULL || r->done) return;
    req_unlink(r);
    detach(r);
    req_free(r);
}

size_t rv_http_inflight(const rv_http_client_t *c) { return c != NULL ? c->inflight : 0; }

/* Release libcurl, then the loop's handles; the client is freed by the last close callback. */
static void teardown(rv_http_client_t *c) {
    if (c->torn_down) return;
    c->torn_down = 1;
    /* Closing cached connections may still call on_curl_socket with CURL_POLL_REMOVE. */
    CURLMcode mc = curl_multi_cleanup(c->multi);
    if (mc != CURLM_OK) rv_error("http: curl_multi_cleanup: %s", curl_multi_strerror(mc));
    c->multi = NULL;
    for (sock_t *s = c->socks; s != NULL; s = s->next) sock_close(s);
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->reap, on_timer_closed);
}

void rv_http_client_close(rv_http_client_t *c) {
    if (c == NULL || c->closing) return;
    c->closing = 1;
    while (c->reqs != NULL) rv_http_cancel(c->reqs);
    /* Inside a drain, libcurl's state is still in use up the stack: the drain tears down. */
    if (c->dispatching == 0) teardown(c);
}
