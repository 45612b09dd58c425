/* Integration tests of the Stripe client and the curl-multi/libuv HTTP client underneath, run on
 * a real libuv loop in this process against the fake Stripe server: headers and encoding on the
 * wire, retries with one Idempotency-Key, errors Stripe reports, deadlines, cancellation, many
 * calls at once. Each test closes everything and checks that the loop ends with no handle left. */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <cmocka.h>

#include "harness.h"
#include "rivet/common.h"
#include "rivet/http_client.h"
#include "rivet/stripe.h"

#define API_VERSION "2024-06-20"
#define LIMIT_MS    30000 /* a watchdog, far beyond anything a passing test needs */

static th_proc_t fake;
static char api_base[64];
static uv_loop_t loop;
static uv_timer_t watchdog;
static int watchdog_fired;
static rv_http_client_t *http;
static rv_stripe_t *stripe;

/* What a call's callback saw, copied out of the result. */
typedef struct outcome_s {
    int called;
    int err;
    int status;
    unsigned attempts;
    char id[128];
    char err_type[64];
    char err_code[64];
    char err_param[128];
    char err_message[512];
    char request_id[64];
    uint64_t at; /* loop time of the callback */
} outcome_t;

static void copy_str(char *dst, size_t n, const char *src) {
    snprintf(dst, n, "%s", src != NULL ? src : "");
}

/* Test callbacks end the loop's current run so that run_until looks at its counter again:
 * UV_RUN_ONCE could otherwise wait for I/O after a callback that ran from a timer. */
static void on_result(void *data, const rv_stripe_result_t *res) {
    outcome_t *o = data;
    uv_stop(&loop);
    o->called++;
    o->err = res->err;
    o->status = res->status;
    o->attempts = res->attempts;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(res->json, "id");
    copy_str(o->id, sizeof o->id, cJSON_IsString(id) ? id->valuestring : NULL);
    copy_str(o->err_type, sizeof o->err_type, res->err_type);
    copy_str(o->err_code, sizeof o->err_code, res->err_code);
    copy_str(o->err_param, sizeof o->err_param, res->err_param);
    copy_str(o->err_message, sizeof o->err_message, res->err_message);
    copy_str(o->request_id, sizeof o->request_id, res->request_id);
    uv_update_time(&loop);
    o->at = uv_now(&loop);
}

static uint64_t loop_now(void) {
    uv_update_time(&loop);
    return uv_now(&loop);
}

static void on_watchdog(uv_timer_t *t) {
    watchdog_fired = 1;
    uv_stop(&loop);
}

/* Run the loop until *counter reaches target; fail if the watchdog fires first. */
static void run_until(const int *counter, int target) {
    watchdog_fired = 0;
    assert_int_equal(uv_timer_start(&watchdog, on_watchdog, LIMIT_MS, 0), 0);
    while (*counter < target && !watchdog_fired) uv_run(&loop, UV_RUN_DEFAULT);
    uv_timer_stop(&watchdog);
    if (watchdog_fired) fail_msg("gave up after %d ms: %d of %d done", LIMIT_MS, *counter, target);
}

/* Run the loop without waiting until nothing is active: closing handles finish closing, and a
 * callback that should never come would have its chance to run. */
static void settle(void) {
    for (int i = 0; i < 100 && uv_run(&loop, UV_RUN_NOWAIT) != 0; i++) continue;
}

/* ---- the fake's control API -------------------------------------------------------------- */

static void fake_post(const char *path, const char *json) {
    th_response_t r;
    assert_int_equal(th_request(fake.port, "POST", path, NULL, json, &r), 0);
    int status = r.status;
    th_response_free(&r);
    assert_int_equal(status, 200);
}

static void fake_config(const char *json) { fake_post("/_fake/config", json); }

/* The API requests the fake received, oldest first (caller frees). */
static cJSON *fake_requests(void) {
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", "/_fake/requests", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    cJSON *j = cJSON_Parse(r.body);
    th_response_free(&r);
    assert_true(cJSON_IsArray(j));
    return j;
}

static const char *jstr(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *req_header(const cJSON *req, const char *lower_name) {
    return jstr(cJSON_GetObjectItemCaseSensitive(req, "headers"), lower_name);
}

/* ---- fixtures ---------------------------------------------------------------------------- */

static void default_opts(rv_stripe_opts_t *o) {
    memset(o, 0, sizeof *o);
    o->api_base = api_base;
    o->secret_key = TH_STRIPE_KEY;
    o->api_version = API_VERSION;
    o->timeout_ms = 10000;
    o->max_retries = 2;
}

static int group_setup(void **state) {
    if (th_fake_stripe_start(&fake, NULL) != 0) return -1;
    snprintf(api_base, sizeof api_base, "http://127.0.0.1:%d", fake.port);
    return 0;
}

static int group_teardown(void **state) {
    rv_http_global_cleanup();
    return th_stop(&fake, SIGTERM, 5000) == 0 ? 0 : -1;
}

static int setup(void **state) {
    th_response_t r;
    if (th_request(fake.port, "POST", "/_fake/reset", NULL, "", &r) != 0) return -1;
    int status = r.status;
    th_response_free(&r);
    if (status != 200) return -1;
    if (uv_loop_init(&loop) != 0) return -1;
    uv_timer_init(&loop, &watchdog);
    if (rv_http_client_init(&loop, &http) != 0) return -1;
    rv_stripe_opts_t o;
    default_opts(&o);
    return rv_stripe_init(http, &loop, &o, &stripe) == 0 ? 0 : -1;
}

/* Close the Stripe object and the client, run the loop until every handle has closed, and
 * check that the loop can be closed: nothing was left behind. */
static int teardown(void **state) {
    rv_stripe_close(stripe);
    rv_http_client_close(http);
    stripe = NULL;
    http = NULL;
    uv_close((uv_handle_t *)&watchdog, NULL);
    settle();
    int rc = uv_loop_close(&loop);
    if (rc != 0) fprintf(stderr, "uv_loop_close: %s\n", uv_strerror(rc));
    return rc == 0 ? 0 : -1;
}

static const rv_form_kv_t checkout[] = {
    {"mode", "subscription"},
    {"line_items[0][price]", "price_x"},
    {"line_items[0][quantity]", "1"},
    {"success_url", "https://rivet.io/success?session_id={CHECKOUT_SESSION_ID}"},
    {"metadata[note]", "Ren\xc3\xa9 & co"},
};
#define NCHECKOUT RV_ARRAY_LEN(checkout)

static void post_checkout(outcome_t *o, const char *idem) {
    assert_int_equal(rv_stripe_post(stripe, "/v1/checkout/sessions", checkout, NCHECKOUT, idem,
                                    on_result, o, NULL),
                     0);
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_post_success(void **state) {
    outcome_t o = {0};
    post_checkout(&o, NULL);
    /* The callback never runs inside the call that starts it. */
    assert_int_equal(o.called, 0);
    assert_int_equal(rv_stripe_inflight(stripe), 1);
    run_until(&o.called, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.attempts, 1);
    assert_memory_equal(o.id, "cs_test_", 8);
    assert_memory_equal(o.request_id, "req_", 4);
    assert_int_equal(rv_stripe_inflight(stripe), 0);
    assert_int_equal(rv_http_inflight(http), 0);

    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 1);
    const cJSON *req = cJSON_GetArrayItem(log, 0);
    assert_string_equal(jstr(req, "method"), "POST");
    assert_string_equal(jstr(req, "path"), "/v1/checkout/sessions");
    assert_string_equal(req_header(req, "authorization"), "Bearer " TH_STRIPE_KEY);
    assert_string_equal(req_header(req, "content-type"), "application/x-www-form-urlencoded");
    assert_string_equal(req_header(req, "stripe-version"), API_VERSION);
    assert_string_equal(req_header(req, "user-agent"), "rivetd/" RV_VERSION);
    assert_string_equal(req_header(req, "accept"), "application/json");
    const char *idem = req_header(req, "idempotency-key");
    assert_non_null(idem);
    assert_int_equal(strlen(idem), 7 + 32);
    assert_memory_equal(idem, "rivetd-", 7);
    assert_int_equal(strspn(idem + 7, "0123456789abcdef"), 32);
    /* The fake decoded our bracket notation and percent-encoding back to the values. */
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(req, "params");
    assert_string_equal(jstr(params, "mode"), "subscription");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(params, "line_items");
    const cJSON *item = cJSON_GetArrayItem(items, 0);
    assert_string_equal(jstr(item, "price"), "price_x");
    assert_string_equal(jstr(item, "quantity"), "1");
    assert_string_equal(jstr(params, "success_url"),
                        "https://rivet.io/success?session_id={CHECKOUT_SESSION_ID}");
    assert_string_equal(jstr(cJSON_GetObjectItemCaseSensitive(params, "metadata"), "note"),
                        "Ren\xc3\xa9 & co");
    assert_non_null(strstr(jstr(req, "raw_body"), "line_items%5B0%5D%5Bprice%5D=price_x"));
    cJSON_Delete(log);
}

static void test_get_after_post(void **state) {
    outcome_t created = {0}, got = {0};
    post_checkout(&created, NULL);
    run_until(&created.called, 1);
    assert_int_equal(created.status, 200);

    char path[256];
    snprintf(path, sizeof path, "/v1/checkout/sessions/%s", created.id);
    assert_int_equal(rv_stripe_get(stripe, path, on_result, &got, NULL), 0);
    run_until(&got.called, 1);
    assert_int_equal(got.err, 0);
    assert_int_equal(got.status, 200);
    assert_string_equal(got.id, created.id);

    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 2);
    const cJSON *req = cJSON_GetArrayItem(log, 1);
    assert_string_equal(jstr(req, "method"), "GET");
    assert_string_equal(jstr(req, "path"), path);
    assert_string_equal(req_header(req, "authorization"), "Bearer " TH_STRIPE_KEY);
    /* Idempotency keys belong to POSTs only. */
    assert_null(req_header(req, "idempotency-key"));
    cJSON_Delete(log);

    /* An unknown id: Stripe's 404, not retried. */
    outcome_t missing = {0};
    assert_int_equal(
        rv_stripe_get(stripe, "/v1/checkout/sessions/cs_test_nope", on_result, &missing, NULL), 0);
    run_until(&missing.called, 1);
    assert_int_equal(missing.err, 0);
    assert_int_equal(missing.status, 404);
    assert_int_equal(missing.attempts, 1);
    assert_string_equal(missing.err_code, "resource_missing");
}

static void test_retry_after_two_500s(void **state) {
    fake_config("{\"fail_next\":2,\"fail_status\":500}");
    outcome_t o = {0};
    post_checkout(&o, NULL);
    run_until(&o.called, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.attempts, 3);
    assert_memory_equal(o.id, "cs_test_", 8);

    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 3);
    const char *first = req_header(cJSON_GetArrayItem(log, 0), "idempotency-key");
    assert_non_null(first);
    for (int i = 1; i < 3; i++) {
        const char *k = req_header(cJSON_GetArrayItem(log, i), "idempotency-key");
        assert_non_null(k);
        assert_string_equal(k, first);
        assert_string_equal(jstr(cJSON_GetArrayItem(log, i), "raw_body"),
                            jstr(cJSON_GetArrayItem(log, 0), "raw_body"));
    }
    cJSON_Delete(log);
}

static void test_400_not_retried(void **state) {
    /* No success_url: Stripe refuses the parameters. */
    outcome_t o = {0};
    assert_int_equal(
        rv_stripe_post(stripe, "/v1/checkout/sessions", checkout, 3, NULL, on_result, &o, NULL), 0);
    run_until(&o.called, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 400);
    assert_int_equal(o.attempts, 1);
    assert_string_equal(o.err_type, "invalid_request_error");
    assert_string_equal(o.err_code, "parameter_missing");
    assert_string_equal(o.err_param, "success_url");
    assert_non_null(strstr(o.err_message, "success_url"));
    assert_memory_equal(o.request_id, "req_", 4);
    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 1);
    cJSON_Delete(log);
}

static void test_should_retry_false_wins(void **state) {
    fake_config("{\"fail_next\":1,\"fail_status\":500,\"should_retry\":\"false\"}");
    outcome_t o = {0};
    post_checkout(&o, NULL);
    run_until(&o.called, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 500);
    assert_int_equal(o.attempts, 1);
    assert_string_equal(o.err_type, "api_error");
    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 1);
    cJSON_Delete(log);
}

static void test_429_retried_with_callers_key(void **state) {
    fake_config("{\"fail_next\":1,\"fail_status\":429}");
    outcome_t o = {0};
    post_checkout(&o, "order-42");
    run_until(&o.called, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 200);
    assert_int_equal(o.attempts, 2);
    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 2);
    assert_string_equal(req_header(cJSON_GetArrayItem(log, 0), "idempotency-key"), "order-42");
    assert_string_equal(req_header(cJSON_GetArrayItem(log, 1), "idempotency-key"), "order-42");
    cJSON_Delete(log);
}

/* A GET made once is never tried again by the client, whatever the answer: its caller paces its
 * own tries. The same GET otherwise is. */
static void test_get_once_not_retried(void **state) {
    fake_config("{\"fail_next\":1,\"fail_status\":429}");
    outcome_t once = {0};
    assert_int_equal(
        rv_stripe_get_once(stripe, "/v1/checkout/sessions/cs_none", on_result, &once, NULL), 0);
    run_until(&once.called, 1);
    assert_int_equal(once.err, 0);
    assert_int_equal(once.status, 429);
    assert_int_equal(once.attempts, 1);
    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 1);
    cJSON_Delete(log);

    fake_config("{\"fail_next\":1,\"fail_status\":429}");
    outcome_t again = {0};
    assert_int_equal(
        rv_stripe_get(stripe, "/v1/checkout/sessions/cs_none", on_result, &again, NULL), 0);
    run_until(&again.called, 1);
    assert_int_equal(again.attempts, 2);
    assert_int_equal(again.status, 404);
}

static void test_retries_exhausted(void **state) {
    /* Three 503s for three tries: the last answer is reported as it is. */
    fake_config("{\"fail_next\":3,\"fail_status\":503}");
    outcome_t o = {0};
    post_checkout(&o, NULL);
    run_until(&o.called, 1);
    assert_int_equal(o.err, 0);
    assert_int_equal(o.status, 503);
    assert_int_equal(o.attempts, 3);
    assert_string_equal(o.err_type, "api_error");
}

static void test_fake_down(void **state) {
    char base[64];
    snprintf(base, sizeof base, "http://127.0.0.1:%d", th_free_port());
    rv_stripe_opts_t opts;
    default_opts(&opts);
    opts.api_base = base;
    assert_int_equal(rv_stripe_configure(stripe, &opts), 0);
    outcome_t o = {0};
    post_checkout(&o, NULL);
    run_until(&o.called, 1);
    assert_int_equal(o.err, RV_EIO);
    assert_int_equal(o.status, 0);
    assert_int_equal(o.attempts, 3);
    assert_string_equal(o.request_id, "");
}

static void test_hang_hits_deadline(void **state) {
    fake_config("{\"hang_next\":1}");
    rv_stripe_opts_t opts;
    default_opts(&opts);
    opts.timeout_ms = 800;
    assert_int_equal(rv_stripe_configure(stripe, &opts), 0);
    outcome_t o = {0};
    uint64_t start = loop_now();
    post_checkout(&o, NULL);
    run_until(&o.called, 1);
    assert_int_equal(o.called, 1);
    assert_int_equal(o.err, RV_ETIMEDOUT);
    assert_int_equal(o.status, 0);
    /* The hung try used up the deadline, leaving no room for a retry. */
    assert_int_equal(o.attempts, 1);
    assert_true(o.at - start >= 700);
}

/* ---- cancellation ---- */

typedef struct cancel_ctx_s {
    rv_stripe_call_t *call;
    int cancelled;
    int in_try; /* http requests in flight when cancelled */
    uv_timer_t timer;
} cancel_ctx_t;

static void on_cancel_in_try(uv_timer_t *t) {
    cancel_ctx_t *c = t->data;
    uv_stop(&loop);
    c->in_try = (int)rv_http_inflight(http);
    rv_stripe_cancel(c->call);
    c->cancelled = 1;
}

static void test_cancel_during_try(void **state) {
    fake_config("{\"hang_next\":1}");
    outcome_t o = {0};
    cancel_ctx_t c = {0};
    assert_int_equal(rv_stripe_post(stripe, "/v1/checkout/sessions", checkout, NCHECKOUT, NULL,
                                    on_result, &o, &c.call),
                     0);
    assert_non_null(c.call);
    uv_timer_init(&loop, &c.timer);
    c.timer.data = &c;
    uv_timer_start(&c.timer, on_cancel_in_try, 100, 0);
    run_until(&c.cancelled, 1);
    uv_close((uv_handle_t *)&c.timer, NULL);
    assert_int_equal(c.in_try, 1);
    assert_int_equal(rv_stripe_inflight(stripe), 0);
    assert_int_equal(rv_http_inflight(http), 0);
    /* Nothing is left to call back: the loop ends once the handles have closed. */
    settle();
    assert_int_equal(o.called, 0);
}

static void on_check_backoff(uv_timer_t *t) {
    cancel_ctx_t *c = t->data;
    uv_stop(&loop);
    if (c->cancelled) {
        /* Past the longest first backoff: a retry would have reached the fake by now. */
        c->cancelled = 2;
        uv_timer_stop(t);
        return;
    }
    /* Waiting between tries: the call is alive with no request in flight. */
    if (rv_stripe_inflight(stripe) == 1 && rv_http_inflight(http) == 0) {
        rv_stripe_cancel(c->call);
        c->cancelled = 1;
        uv_timer_start(t, on_check_backoff, 700, 0);
    }
}

static void test_cancel_during_backoff(void **state) {
    fake_config("{\"fail_next\":1,\"fail_status\":500}");
    outcome_t o = {0};
    cancel_ctx_t c = {0};
    assert_int_equal(rv_stripe_post(stripe, "/v1/checkout/sessions", checkout, NCHECKOUT, NULL,
                                    on_result, &o, &c.call),
                     0);
    uv_timer_init(&loop, &c.timer);
    c.timer.data = &c;
    uv_timer_start(&c.timer, on_check_backoff, 5, 5);
    run_until(&c.cancelled, 2);
    uv_close((uv_handle_t *)&c.timer, NULL);
    settle();
    assert_int_equal(o.called, 0);
    assert_int_equal(rv_stripe_inflight(stripe), 0);
    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 1);
    cJSON_Delete(log);
}

/* ---- configuration reload ---- */

static void on_reload_check(uv_timer_t *t) {
    cancel_ctx_t *c = t->data;
    if (rv_stripe_inflight(stripe) == 1 && rv_http_inflight(http) == 0) {
        c->cancelled = 1;
        uv_stop(&loop);
        uv_timer_stop(t);
    }
}

static void test_configure_keeps_calls_in_flight(void **state) {
    fake_config("{\"fail_next\":1,\"fail_status\":500}");
    outcome_t a = {0}, b = {0};
    cancel_ctx_t c = {0};
    post_checkout(&a, "call-a");
    /* Wait until call A is between tries, then reload with another key and no version. */
    uv_timer_init(&loop, &c.timer);
    c.timer.data = &c;
    uv_timer_start(&c.timer, on_reload_check, 5, 5);
    run_until(&c.cancelled, 1);
    uv_close((uv_handle_t *)&c.timer, NULL);
    rv_stripe_opts_t opts;
    default_opts(&opts);
    opts.secret_key = "sk_test_rotated";
    opts.api_version = NULL;
    assert_int_equal(rv_stripe_configure(stripe, &opts), 0);
    post_checkout(&b, "call-b");
    run_until(&a.called, 1);
    run_until(&b.called, 1);
    assert_int_equal(a.status, 200);
    assert_int_equal(a.attempts, 2);
    assert_int_equal(b.status, 200);

    cJSON *log = fake_requests();
    assert_int_equal(cJSON_GetArraySize(log), 3);
    int seen_a = 0, seen_b = 0;
    for (int i = 0; i < 3; i++) {
        const cJSON *req = cJSON_GetArrayItem(log, i);
        const char *idem = req_header(req, "idempotency-key");
        assert_non_null(idem);
        if (strcmp(idem, "call-a") == 0) {
            seen_a++;
            assert_string_equal(req_header(req, "authorization"), "Bearer " TH_STRIPE_KEY);
            assert_string_equal(req_header(req, "stripe-version"), API_VERSION);
        } else {
            assert_string_equal(idem, "call-b");
            seen_b++;
            assert_string_equal(req_header(req, "authorization"), "Bearer sk_test_rotated");
            assert_null(req_header(req, "stripe-version"));
        }
    }
    assert_int_equal(seen_a, 2);
    assert_int_equal(seen_b, 1);
    cJSON_Delete(log);
}

static void test_invalid_arguments(void **state) {
    outcome_t o = {0};
    /* Refused calls never call back. */
    assert_int_equal(rv_stripe_post(stripe, "v1/no-slash", checkout, 1, NULL, on_result, &o, NULL),
                     RV_EINVAL);
    assert_int_equal(
        rv_stripe_post(stripe, "/v1/x\r\nX-Evil: 1", checkout, 1, NULL, on_result, &o, NULL),
        RV_EINVAL);
    assert_int_equal(rv_stripe_post(stripe, "/v1/checkout/sessions", checkout, 1, "bad\r\nkey",
                                    on_result, &o, NULL),
                     RV_EINVAL);
    rv_stripe_opts_t opts;
    default_opts(&opts);
    opts.secret_key = "sk_test_x\r\nX-Evil: 1";
    assert_int_equal(rv_stripe_configure(stripe, &opts), RV_EINVAL);
    default_opts(&opts);
    opts.api_base = "ftp://example.com";
    assert_int_equal(rv_stripe_configure(stripe, &opts), RV_EINVAL);
    assert_int_equal(rv_stripe_inflight(stripe), 0);
    settle();
    assert_int_equal(o.called, 0);
}

/* ---- many at once ---- */

#define NCONCURRENT 200

typedef struct many_s {
    int done;
    int ok;
    outcome_t each[NCONCURRENT];
} many_t;

static many_t many;

static void on_many(void *data, const rv_stripe_result_t *res) {
    outcome_t *o = data;
    on_result(o, res);
    many.done++;
    if (res->err == 0 && res->status == 200 && o->id[0] != '\0') many.ok++;
}

static void test_concurrent_calls(void **state) {
    fake_config("{\"latency_ms\":100}");
    memset(&many, 0, sizeof many);
    for (int i = 0; i < NCONCURRENT; i++) {
        assert_int_equal(rv_stripe_post(stripe, "/v1/checkout/sessions", checkout, NCHECKOUT, NULL,
                                        on_many, &many.each[i], NULL),
                         0);
    }
    assert_int_equal(rv_stripe_inflight(stripe), NCONCURRENT);
    run_until(&many.done, NCONCURRENT);
    assert_int_equal(many.ok, NCONCURRENT);
    for (int i = 0; i < NCONCURRENT; i++) assert_int_equal(many.each[i].attempts, 1);
    /* Every call created its own session. */
    for (int i = 1; i < NCONCURRENT; i++) assert_string_not_equal(many.each[i].id, many.each[0].id);
}

/* ---- the HTTP client directly ---- */

typedef struct http_outcome_s {
    int called;
    int err;
    int status;
    char err_text[256];
    char content_type[64];
    size_t body_len;
} http_outcome_t;

static void on_http(void *data, const rv_http_response_t *res) {
    http_outcome_t *o = data;
    uv_stop(&loop);
    o->called++;
    o->err = res->err;
    o->status = res->status;
    o->body_len = res->body_len;
    copy_str(o->err_text, sizeof o->err_text, res->err_text);
    copy_str(o->content_type, sizeof o->content_type, rv_http_response_header(res, "content-TYPE"));
}

static void test_http_response_limit(void **state) {
    char url[128];
    snprintf(url, sizeof url, "%s/_fake/config", api_base);
    rv_http_opts_t o = {"GET", url, NULL, NULL, 0, 5000, 0};
    http_outcome_t full = {0}, small = {0};
    assert_int_equal(rv_http_request(http, &o, on_http, &full, NULL), 0);
    o.max_response_bytes = 16;
    assert_int_equal(rv_http_request(http, &o, on_http, &small, NULL), 0);
    assert_int_equal(rv_http_inflight(http), 2);
    run_until(&full.called, 1);
    run_until(&small.called, 1);
    assert_int_equal(full.err, 0);
    assert_int_equal(full.status, 200);
    assert_true(full.body_len > 16);
    assert_string_equal(full.content_type, "application/json");
    assert_int_equal(small.err, RV_EIO);
    assert_int_equal(small.status, 0);
    assert_non_null(strstr(small.err_text, "too large"));
}

static void test_http_close_with_requests_in_flight(void **state) {
    /* Closing the client with requests in flight calls no callback and leaks nothing; the
     * teardown then finds the client closed already. */
    fake_config("{\"latency_ms\":2000}");
    char url[128];
    snprintf(url, sizeof url, "%s/v1/customers/cus_x", api_base);
    rv_http_opts_t o = {"GET", url, NULL, NULL, 0, 5000, 0};
    http_outcome_t r[3] = {{0}};
    rv_http_req_t *first = NULL;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rv_http_request(http, &o, on_http, &r[i], i == 0 ? &first : NULL), 0);
    }
    /* Let the requests go out. */
    for (int i = 0; i < 20; i++) uv_run(&loop, UV_RUN_NOWAIT);
    rv_http_cancel(first);
    assert_int_equal(rv_http_inflight(http), 2);
    rv_stripe_close(stripe);
    stripe = NULL;
    rv_http_client_close(http);
    http = NULL;
    settle();
    for (int i = 0; i < 3; i++) assert_int_equal(r[i].called, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_post_success, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_after_post, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_after_two_500s, setup, teardown),
        cmocka_unit_test_setup_teardown(test_400_not_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_should_retry_false_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_429_retried_with_callers_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_once_not_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retries_exhausted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fake_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hang_hits_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_during_try, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_during_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_configure_keeps_calls_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_response_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_http_close_with_requests_in_flight, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
