/* Stripe API calls: form encoding in Stripe's bracket notation, authentication, Idempotency-Key,
 * retries with backoff and jitter inside one deadline, Stripe's error object. */
#ifndef RIVET_STRIPE_H
#define RIVET_STRIPE_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include <uv.h>

#include "rivet/buf.h"
#include "rivet/http_client.h"

typedef struct rv_stripe_s rv_stripe_t;
typedef struct rv_stripe_call_s rv_stripe_call_t;

/* One form parameter; key in bracket notation ("line_items[0][price]"). Borrowed strings. */
typedef struct rv_form_kv_s {
    const char *key;
    const char *value;
} rv_form_kv_t;

/* Append "k=v&k=v" with keys and values percent-encoded (RFC 3986 unreserved characters kept,
 * everything else, brackets included, as %XX of the UTF-8 bytes). Returns 0 or RV_ENOMEM. */
int rv_form_encode(const rv_form_kv_t *kv, size_t n, rv_buf_t *out);

/* Percent-encode one path segment (for ids placed in a URL path). */
int rv_url_escape(const char *s, rv_buf_t *out);

/* Delay before retry number `retry` (1 for the first retry): 500 ms doubling, capped at 8 s,
 * scaled by a jitter factor in [0.5, 1.0] taken from rnd (a uniform value in [0, 1)). */
uint64_t rv_stripe_backoff_ms(unsigned retry, double rnd);

/* Decide whether a finished try should be retried: network errors, 409, 429 and 5xx, unless
 * Stripe-Should-Retry (should_retry_hdr, may be NULL) says "true" or "false", which wins.
 * Never other 4xx. err is the rv_http_response_t err. Returns 1 or 0. */
int rv_stripe_should_retry(int err, int status, const char *should_retry_hdr);

typedef struct rv_stripe_opts_s {
    const char *api_base; /* "https://api.stripe.com", no trailing slash */
    const char *secret_key;
    const char *api_version; /* "" or NULL: not sent */
    uint64_t timeout_ms;     /* all tries together */
    unsigned max_retries;    /* retries after the first try */
} rv_stripe_opts_t;

typedef struct rv_stripe_result_s {
    int err;              /* 0: Stripe answered (see status); RV_ETIMEDOUT: the deadline
                             passed; RV_EIO: no answer after every try */
    int status;           /* HTTP status of the last try, 0 when none */
    cJSON *json;          /* the parsed body (object or error), NULL if none; freed after cb */
    const char *err_type; /* Stripe's error.type, code, message, param; NULL when absent */
    const char *err_code;
    const char *err_message;
    const char *err_param;
    const char *request_id; /* Stripe's Request-Id header, NULL when absent */
    int64_t date;           /* the answer's Date header (Stripe's clock), Unix seconds; 0
                               when absent */
    unsigned attempts;      /* tries made */
} rv_stripe_result_t;

/* Called exactly once per started call unless it was cancelled; res is valid during the call. */
typedef void (*rv_stripe_cb)(void *data, const rv_stripe_result_t *res);

/* Options are copied. http is borrowed and must outlive the stripe object. */
int rv_stripe_init(rv_http_client_t *http, uv_loop_t *loop, const rv_stripe_opts_t *opts,
                   rv_stripe_t **out);

/* Replace key, version, timeouts (configuration reload); calls in flight keep the old ones. */
int rv_stripe_configure(rv_stripe_t *s, const rv_stripe_opts_t *opts);

/* POST form parameters to path ("/v1/checkout/sessions"). idem_key: the caller's
 * Idempotency-Key, or NULL to generate one; the same key is sent on every retry. Returns 0
 * (cb will be called once, later) or an error (cb never called). *out, if given, is a handle for
 * rv_stripe_cancel, valid until cb. */
int rv_stripe_post(rv_stripe_t *s, const char *path, const rv_form_kv_t *params, size_t n,
                   const char *idem_key, rv_stripe_cb cb, void *data, rv_stripe_call_t **out);

/* GET path (already escaped, query included). Same contract as rv_stripe_post. */
int rv_stripe_get(rv_stripe_t *s, const char *path, rv_stripe_cb cb, void *data,
                  rv_stripe_call_t **out);

/* rv_stripe_get with one try only, for a caller that paces its own tries (a retry the client
 * made on its own would not be counted against the caller's rate). */
int rv_stripe_get_once(rv_stripe_t *s, const char *path, rv_stripe_cb cb, void *data,
                       rv_stripe_call_t **out);

/* Abort a call (its try in flight or its backoff wait); its callback is never called. */
void rv_stripe_cancel(rv_stripe_call_t *c);

/* Calls in flight (tries and waits). */
size_t rv_stripe_inflight(const rv_stripe_t *s);

/* Cancel every call (their callbacks never run) and release the object at once (the close
 * contract: common.h). The http client is not closed: close it after this, since calls in flight
 * hold its requests. */
void rv_stripe_close(rv_stripe_t *s);

#endif
