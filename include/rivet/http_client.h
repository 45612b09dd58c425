/* Asynchronous HTTP client: one curl multi handle bridged to the libuv loop (a uv_poll_t per
 * socket, one uv_timer_t). Connections are reused; HTTP/2 is used when offered; TLS is verified. */
#ifndef RIVET_HTTP_CLIENT_H
#define RIVET_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct rv_http_client_s rv_http_client_t;
typedef struct rv_http_req_s rv_http_req_t;

typedef struct rv_http_response_s {
    int err;          /* 0: an HTTP answer arrived; RV_ETIMEDOUT; RV_EIO (connect, reset) */
    int status;       /* HTTP status, 0 when err != 0 */
    const char *body; /* NUL-terminated; valid during the callback only */
    size_t body_len;
    const char *err_text;            /* curl's description when err != 0 */
    const struct rv_http_req_s *req; /* for rv_http_response_header */
} rv_http_response_t;

/* Called exactly once per started request unless it was cancelled. */
typedef void (*rv_http_cb)(void *data, const rv_http_response_t *res);

typedef struct rv_http_opts_s {
    const char *method; /* "GET", "POST" */
    const char *url;
    const char *const *headers; /* "Name: value" strings, NULL-terminated; copied */
    const char *body;           /* copied; may be NULL */
    size_t body_len;
    uint64_t timeout_ms;       /* this request, connect included */
    size_t max_response_bytes; /* 0: 1 MiB */
} rv_http_opts_t;

/* Create a client on loop; the first call in the process also runs curl_global_init. */
int rv_http_client_init(uv_loop_t *loop, rv_http_client_t **out);

/* Start a request. Returns 0 (cb will be called once, never from inside this call) or an error
 * (cb is never called). *out, if given, receives a handle for rv_http_cancel, valid until cb. */
int rv_http_request(rv_http_client_t *c, const rv_http_opts_t *opts, rv_http_cb cb, void *data,
                    rv_http_req_t **out);

/* A response header of the request (case-insensitive name), or NULL. Valid during the callback. */
const char *rv_http_response_header(const rv_http_response_t *res, const char *name);

/* Abort a request in flight; its callback is never called. */
void rv_http_cancel(rv_http_req_t *r);

/* Number of requests in flight. */
size_t rv_http_inflight(const rv_http_client_t *c);

/* Abort every request (their callbacks never run) and release the client once its handles have
 * closed through the loop (the close contract: common.h). */
void rv_http_client_close(rv_http_client_t *c);

/* curl_global_cleanup, once every client has been closed, at process exit. */
void rv_http_global_cleanup(void);

#endif
