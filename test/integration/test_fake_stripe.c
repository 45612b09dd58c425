/* Tests of the fake Stripe server (test/fake_stripe.py): the other integration tests and the
 * benchmarks trust it to answer like Stripe, so its wire format, validation, idempotency, fault
 * injection, subscription life cycle, events, clock and webhook deliveries are checked here over
 * real sockets. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "rivet/common.h"
#include "rivet/webhook_sig.h"

#define AUTH        "Authorization: Bearer " TH_STRIPE_KEY "\r\n"
#define FORM        "Content-Type: application/x-www-form-urlencoded\r\n"
#define SUCCESS_URL "https%3A%2F%2Frivet.io%2Fsuccess%3Fsession_id%3D%7BCHECKOUT_SESSION_ID%7D"
#define CHECKOUT_FORM                                                                              \
    "mode=subscription&payment_method_types%5B0%5D=card"                                           \
    "&line_items%5B0%5D%5Bprice%5D=" TH_PRICE_PRO "&line_items%5B0%5D%5Bquantity%5D=1"             \
    "&customer_email=ada%40example.com&success_url=" SUCCESS_URL                                   \
    "&cancel_url=https%3A%2F%2Frivet.io%2Fpricing&metadata%5Btier%5D=pro"                          \
    "&metadata%5Bsource%5D=rivet_landing&subscription_data%5Bmetadata%5D%5Btier%5D=pro"            \
    "&allow_promotion_codes=true"

static th_proc_t fake;

static int group_setup(void **state) {
    const char *args[] = {"--prices", TH_PRICE_BASIC "," TH_PRICE_PRO "," TH_PRICE_ENTERPRISE,
                          NULL};
    return th_fake_stripe_start(&fake, args);
}

static int group_teardown(void **state) {
    /* The fake must exit cleanly on SIGTERM. */
    return th_stop(&fake, SIGTERM, 5000) == 0 ? 0 : -1;
}

static int reset(void **state) {
    th_response_t r;
    if (th_request(fake.port, "POST", "/_fake/reset", NULL, "", &r) != 0) {
        return -1;
    }
    int status = r.status;
    th_response_free(&r);
    return status == 200 ? 0 : -1;
}

/* POST a form to the Stripe API with the test key and extra header lines. */
static void post_form(const char *path, const char *form, const char *headers, th_response_t *r) {
    char h[1024];
    snprintf(h, sizeof(h), AUTH FORM "%s", headers != NULL ? headers : "");
    assert_int_equal(th_request(fake.port, "POST", path, h, form, r), 0);
}

static void control(const char *path, const char *json, th_response_t *r) {
    assert_int_equal(th_request(fake.port, "POST", path, NULL, json, r), 0);
    assert_int_equal(r->status, 200);
}

static cJSON *body_json(const th_response_t *r) {
    cJSON *j = cJSON_Parse(r->body);
    assert_non_null(j);
    return j;
}

static const char *str_at(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Assert a Stripe error answer: status, error.type, and error.code / error.param when given. */
static void assert_stripe_error(const th_response_t *r, int status, const char *type,
                                const char *code, const char *param) {
    assert_int_equal(r->status, status);
    cJSON *j = body_json(r);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    assert_true(cJSON_IsObject(err));
    assert_string_equal(str_at(err, "type"), type);
    assert_non_null(str_at(err, "message"));
    if (code != NULL) {
        assert_non_null(str_at(err, "code"));
        assert_string_equal(str_at(err, "code"), code);
    }
    if (param != NULL) {
        assert_non_null(str_at(err, "param"));
        assert_string_equal(str_at(err, "param"), param);
    }
    cJSON_Delete(j);
}

/* Create a checkout session and return its id (caller frees). */
static char *create_session(const char *form) {
    th_response_t r;
    post_form("/v1/checkout/sessions", form, NULL, &r);
    assert_int_equal(r.status, 200);
    cJSON *j = body_json(&r);
    assert_non_null(str_at(j, "id"));
    char *id = strdup(str_at(j, "id"));
    assert_non_null(id);
    cJSON_Delete(j);
    th_response_free(&r);
    return id;
}

static void test_create_session(void **state) {
    th_response_t r;
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, NULL, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(th_header(&r, "Request-Id"));
    assert_memory_equal(th_header(&r, "Request-Id"), "req_", 4);
    assert_non_null(th_header(&r, "Content-Type"));
    assert_string_equal(th_header(&r, "Content-Type"), "application/json");
    cJSON *j = body_json(&r);
    const char *id = str_at(j, "id");
    assert_non_null(id);
    assert_memory_equal(id, "cs_test_", 8);
    assert_string_equal(str_at(j, "object"), "checkout.session");
    char url[512];
    snprintf(url, sizeof(url), "https://checkout.stripe.com/c/pay/%s", id);
    assert_string_equal(str_at(j, "url"), url);
    assert_string_equal(str_at(j, "status"), "open");
    assert_string_equal(str_at(j, "payment_status"), "unpaid");
    assert_string_equal(str_at(j, "mode"), "subscription");
    assert_string_equal(str_at(j, "customer_email"), "ada@example.com");
    assert_string_equal(str_at(j, "success_url"),
                        "https://rivet.io/success?session_id={CHECKOUT_SESSION_ID}");
    assert_string_equal(str_at(j, "cancel_url"), "https://rivet.io/pricing");
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(j, "metadata");
    assert_string_equal(str_at(md, "tier"), "pro");
    assert_string_equal(str_at(md, "source"), "rivet_landing");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "allow_promotion_codes")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(j, "livemode")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "subscription")));
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "customer")));
    const cJSON *created = cJSON_GetObjectItemCaseSensitive(j, "created");
    const cJSON *expires = cJSON_GetObjectItemCaseSensitive(j, "expires_at");
    assert_true(cJSON_IsNumber(created) && cJSON_IsNumber(expires));
    assert_true(expires->valuedouble > created->valuedouble);
    cJSON_Delete(j);
    th_response_free(&r);
}

static void test_missing_success_url(void **state) {
    th_response_t r;
    post_form("/v1/checkout/sessions",
              "mode=subscription&line_items[0][price]=" TH_PRICE_PRO "&line_items[0][quantity]=1",
              NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "parameter_missing", "success_url");
    th_response_free(&r);
}

static void test_parameter_checks(void **state) {
    static const struct {
        const char *form;
        const char *code;
        const char *param;
    } cases[] = {
        {"line_items[0][price]=" TH_PRICE_PRO "&line_items[0][quantity]=1&success_url=https://a.io",
         "parameter_missing", "mode"},
        {"mode=&success_url=https://a.io", "parameter_invalid_empty", "mode"},
        {"mode=subscription&success_url=https://a.io", "parameter_missing", "line_items"},
        {"mode=payment&line_items[0][price]=" TH_PRICE_PRO
         "&line_items[0][quantity]=0&success_url=https://a.io",
         "parameter_invalid_integer", "line_items[0][quantity]"},
        {"mode=payment&line_items[0][price]=" TH_PRICE_PRO
         "&line_items[0][quantity]=1&success_url=/relative",
         "url_invalid", "success_url"},
        {"mode=payment&line_items[0][price]=" TH_PRICE_PRO
         "&line_items[0][quantity]=1&success_url=https://a.io&customer_email=not-an-email",
         "email_invalid", "customer_email"},
        {"mode=payment&line_items[0][price]=" TH_PRICE_PRO
         "&line_items[0][quantity]=1&success_url=https://a.io&no_such_param=1",
         "parameter_unknown", "no_such_param"},
        {"mode=payment&line_items[0][price]=" TH_PRICE_PRO
         "&line_items[0][quantity]=1&success_url=https://a.io"
         "&metadata[k2345678901234567890123456789012345678901]=v",
         NULL, "metadata[k234567890123456789012345678901234567890]"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        th_response_t r;
        post_form("/v1/checkout/sessions", cases[i].form, NULL, &r);
        assert_stripe_error(&r, 400, "invalid_request_error", cases[i].code, cases[i].param);
        th_response_free(&r);
    }
    /* A bad mode is named in the message. */
    th_response_t r;
    post_form("/v1/checkout/sessions", "mode=rental&success_url=https://a.io", NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", NULL, "mode");
    th_response_free(&r);
}

static void test_unknown_price(void **state) {
    th_response_t r;
    post_form("/v1/checkout/sessions",
              "mode=subscription&line_items[0][price]=price_not_configured"
              "&line_items[0][quantity]=1&success_url=https://rivet.io/s",
              NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "resource_missing",
                        "line_items[0][price]");
    assert_non_null(strstr(r.body, "No such price: 'price_not_configured'"));
    th_response_free(&r);
    /* The same form with a configured price goes through. */
    post_form("/v1/checkout/sessions",
              "mode=subscription&line_items[0][price]=" TH_PRICE_BASIC
              "&line_items[0][quantity]=1&success_url=https://rivet.io/s",
              NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
}

static void test_bad_api_key(void **state) {
    const char *key = "sk_live_VerySecretValue9876";
    th_response_t r;
    assert_int_equal(th_request(fake.port, "POST", "/v1/checkout/sessions",
                                "Authorization: Bearer sk_live_VerySecretValue9876\r\n" FORM,
                                CHECKOUT_FORM, &r),
                     0);
    assert_stripe_error(&r, 401, "invalid_request_error", NULL, NULL);
    assert_non_null(strstr(r.body, "Invalid API Key provided"));
    assert_null(strstr(r.body, key));
    assert_null(strstr(r.body, "VerySecretValue"));
    assert_non_null(th_header(&r, "Request-Id"));
    th_response_free(&r);

    assert_int_equal(
        th_request(fake.port, "POST", "/v1/checkout/sessions", FORM, CHECKOUT_FORM, &r), 0);
    assert_stripe_error(&r, 401, "invalid_request_error", NULL, NULL);
    th_response_free(&r);
}

static void test_retrieve(void **state) {
    char *id = create_session(CHECKOUT_FORM);
    char path[256];
    snprintf(path, sizeof(path), "/v1/checkout/sessions/%s", id);
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", path, AUTH, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    cJSON *j = body_json(&r);
    assert_string_equal(str_at(j, "id"), id);
    assert_string_equal(str_at(j, "customer_email"), "ada@example.com");
    cJSON_Delete(j);
    th_response_free(&r);

    assert_int_equal(
        th_request(fake.port, "GET", "/v1/checkout/sessions/cs_test_nope", AUTH, NULL, &r), 0);
    assert_stripe_error(&r, 404, "invalid_request_error", "resource_missing", NULL);
    assert_non_null(strstr(r.body, "No such checkout.session: 'cs_test_nope'"));
    th_response_free(&r);
    free(id);
}

static void test_idempotency(void **state) {
    th_response_t a, b, c;
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, "Idempotency-Key: key-1\r\n", &a);
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, "Idempotency-Key: key-1\r\n", &b);
    assert_int_equal(a.status, 200);
    assert_int_equal(b.status, 200);
    assert_null(th_header(&a, "Idempotent-Replayed"));
    assert_non_null(th_header(&b, "Idempotent-Replayed"));
    assert_string_equal(th_header(&b, "Idempotent-Replayed"), "true");
    assert_int_equal(a.body_len, b.body_len);
    assert_memory_equal(a.body, b.body, a.body_len);

    /* Another key creates another session. */
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, "Idempotency-Key: key-2\r\n", &c);
    assert_int_equal(c.status, 200);
    cJSON *ja = body_json(&a), *jc = body_json(&c);
    assert_string_not_equal(str_at(ja, "id"), str_at(jc, "id"));
    cJSON_Delete(ja);
    cJSON_Delete(jc);
    th_response_free(&a);
    th_response_free(&b);
    th_response_free(&c);

    /* The same key with other parameters is refused. */
    post_form("/v1/checkout/sessions", CHECKOUT_FORM "&client_reference_id=other",
              "Idempotency-Key: key-1\r\n", &a);
    assert_stripe_error(&a, 400, "idempotency_error", NULL, NULL);
    assert_non_null(strstr(a.body, "same parameters"));
    th_response_free(&a);

    /* 4xx answers are remembered too. */
    post_form("/v1/checkout/sessions", "mode=bogus", "Idempotency-Key: key-3\r\n", &a);
    post_form("/v1/checkout/sessions", "mode=bogus", "Idempotency-Key: key-3\r\n", &b);
    assert_int_equal(a.status, 400);
    assert_int_equal(b.status, 400);
    assert_non_null(th_header(&b, "Idempotent-Replayed"));
    th_response_free(&a);
    th_response_free(&b);
}

static void test_fail_next(void **state) {
    th_response_t r;
    control("/_fake/config",
            "{\"fail_next\": 1, \"fail_status\": 500, \"should_retry\": \"false\"}", &r);
    th_response_free(&r);
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, "Idempotency-Key: retry-1\r\n", &r);
    assert_stripe_error(&r, 500, "api_error", NULL, NULL);
    assert_non_null(th_header(&r, "Stripe-Should-Retry"));
    assert_string_equal(th_header(&r, "Stripe-Should-Retry"), "false");
    th_response_free(&r);
    /* The failure was not stored under the key: the retry runs for real. */
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, "Idempotency-Key: retry-1\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_null(th_header(&r, "Idempotent-Replayed"));
    th_response_free(&r);

    control("/_fake/config", "{\"fail_next\": 2, \"fail_status\": 429, \"should_retry\": null}",
            &r);
    th_response_free(&r);
    for (int i = 0; i < 2; i++) {
        post_form("/v1/checkout/sessions", CHECKOUT_FORM, NULL, &r);
        assert_stripe_error(&r, 429, "invalid_request_error", "rate_limit", NULL);
        assert_null(th_header(&r, "Stripe-Should-Retry"));
        th_response_free(&r);
    }
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
}

static void test_drop_next(void **state) {
    th_response_t r;
    control("/_fake/config", "{\"drop_next\": 1}", &r);
    th_response_free(&r);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(
        th_send_str(fd, "GET /v1/checkout/sessions/cs_x HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n"), 0);
    assert_int_equal(th_wait_closed(fd, 5000), 1);
    th_close(fd);
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
}

static void test_hang_next(void **state) {
    th_response_t r;
    control("/_fake/config", "{\"hang_next\": 1}", &r);
    th_response_free(&r);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(
        th_send_str(fd, "GET /v1/checkout/sessions/cs_x HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n"), 0);
    assert_int_equal(th_read_response(fd, &r, 0, 300), -1);
    assert_int_equal(th_wait_closed(fd, 100), 0);
    th_close(fd);
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
}

static void test_latency(void **state) {
    th_response_t r;
    control("/_fake/config", "{\"latency_ms\": 200}", &r);
    th_response_free(&r);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(
        th_send_str(fd, "GET /v1/checkout/sessions/cs_x HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n"), 0);
    /* Not within 100 ms, but it does come. */
    assert_int_equal(th_read_response(fd, &r, 0, 100), -1);
    assert_int_equal(th_read_response(fd, &r, 0, 5000), 0);
    assert_int_equal(r.status, 404);
    th_response_free(&r);
    th_close(fd);
    /* Control requests are never delayed. */
    fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /_fake/config HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
    assert_int_equal(th_read_response(fd, &r, 0, 5000), 0);
    assert_int_equal(r.status, 200);
    cJSON *j = body_json(&r);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(j, "latency_ms")->valueint, 200);
    cJSON_Delete(j);
    th_response_free(&r);
    th_close(fd);
}

static void test_complete_and_portal(void **state) {
    char *id = create_session(CHECKOUT_FORM);
    th_response_t r;

    post_form("/v1/billing_portal/sessions", "return_url=https://rivet.io/account", NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "parameter_missing", "customer");
    th_response_free(&r);
    post_form("/v1/billing_portal/sessions", "customer=cus_unknown", NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "resource_missing", "customer");
    th_response_free(&r);

    char path[256];
    snprintf(path, sizeof(path), "/_fake/sessions/%s/complete", id);
    control(path, "{\"email\": \"ada@example.com\"}", &r);
    cJSON *j = body_json(&r);
    assert_string_equal(str_at(j, "status"), "complete");
    assert_string_equal(str_at(j, "payment_status"), "paid");
    assert_non_null(str_at(j, "customer"));
    assert_memory_equal(str_at(j, "customer"), "cus_", 4);
    assert_non_null(str_at(j, "subscription"));
    assert_memory_equal(str_at(j, "subscription"), "sub_", 4);
    const cJSON *details = cJSON_GetObjectItemCaseSensitive(j, "customer_details");
    assert_string_equal(str_at(details, "email"), "ada@example.com");
    char *customer = strdup(str_at(j, "customer"));
    assert_non_null(customer);
    cJSON_Delete(j);
    th_response_free(&r);

    /* Retrieval shows the completed session. */
    snprintf(path, sizeof(path), "/v1/checkout/sessions/%s", id);
    assert_int_equal(th_request(fake.port, "GET", path, AUTH, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    assert_string_equal(str_at(j, "status"), "complete");
    assert_string_equal(str_at(j, "customer"), customer);
    cJSON_Delete(j);
    th_response_free(&r);

    char form[256];
    snprintf(form, sizeof(form), "customer=%s&return_url=https%%3A%%2F%%2Frivet.io%%2Faccount",
             customer);
    post_form("/v1/billing_portal/sessions", form, NULL, &r);
    assert_int_equal(r.status, 200);
    j = body_json(&r);
    assert_memory_equal(str_at(j, "id"), "bps_", 4);
    assert_string_equal(str_at(j, "object"), "billing_portal.session");
    assert_string_equal(str_at(j, "customer"), customer);
    assert_string_equal(str_at(j, "return_url"), "https://rivet.io/account");
    const char *url = str_at(j, "url");
    assert_non_null(url);
    assert_memory_equal(url, "https://billing.stripe.com/p/session/", 37);
    cJSON_Delete(j);
    th_response_free(&r);

    /* An expired session cannot be completed. */
    char *id2 = create_session(CHECKOUT_FORM);
    snprintf(path, sizeof(path), "/_fake/sessions/%s/expire", id2);
    control(path, "", &r);
    j = body_json(&r);
    assert_string_equal(str_at(j, "status"), "expired");
    cJSON_Delete(j);
    th_response_free(&r);
    snprintf(path, sizeof(path), "/_fake/sessions/%s/complete", id2);
    assert_int_equal(th_request(fake.port, "POST", path, NULL, "", &r), 0);
    assert_int_equal(r.status, 400);
    th_response_free(&r);

    free(customer);
    free(id);
    free(id2);
}

static void test_keep_alive_and_pipelining(void **state) {
    char *id = create_session(CHECKOUT_FORM);
    char one[512], two[1024];
    snprintf(one, sizeof(one), "GET /v1/checkout/sessions/%s HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n",
             id);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    th_response_t r;
    /* Two requests one after the other on one connection. */
    for (int i = 0; i < 2; i++) {
        assert_int_equal(th_send_str(fd, one), 0);
        assert_int_equal(th_read_response(fd, &r, 0, 5000), 0);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, id));
        th_response_free(&r);
    }
    /* Two in one write: answered in order. */
    snprintf(two, sizeof(two),
             "%sGET /v1/checkout/sessions/cs_test_missing HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n",
             one);
    assert_int_equal(th_send_str(fd, two), 0);
    assert_int_equal(th_read_response(fd, &r, 0, 5000), 0);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
    assert_int_equal(th_read_response(fd, &r, 0, 5000), 0);
    assert_int_equal(r.status, 404);
    th_response_free(&r);
    assert_int_equal(th_wait_closed(fd, 100), 0);
    th_close(fd);
    free(id);
}

static void test_request_log(void **state) {
    th_response_t r;
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, "Idempotency-Key: log-1\r\n", &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
    assert_int_equal(th_request(fake.port, "GET", "/_fake/requests", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    cJSON *j = body_json(&r);
    /* Only Stripe API requests are logged, not control requests. */
    assert_true(cJSON_IsArray(j));
    assert_int_equal(cJSON_GetArraySize(j), 1);
    const cJSON *e = cJSON_GetArrayItem(j, 0);
    assert_string_equal(str_at(e, "method"), "POST");
    assert_string_equal(str_at(e, "path"), "/v1/checkout/sessions");
    assert_string_equal(str_at(e, "raw_body"), CHECKOUT_FORM);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "headers");
    assert_string_equal(str_at(h, "authorization"), "Bearer " TH_STRIPE_KEY);
    assert_string_equal(str_at(h, "idempotency-key"), "log-1");
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "params");
    assert_string_equal(str_at(p, "mode"), "subscription");
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(p, "line_items");
    assert_true(cJSON_IsArray(items));
    assert_string_equal(str_at(cJSON_GetArrayItem(items, 0), "price"), TH_PRICE_PRO);
    assert_string_equal(str_at(cJSON_GetArrayItem(items, 0), "quantity"), "1");
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(p, "subscription_data");
    assert_string_equal(str_at(cJSON_GetObjectItemCaseSensitive(sub, "metadata"), "tier"), "pro");
    const cJSON *types = cJSON_GetObjectItemCaseSensitive(p, "payment_method_types");
    assert_true(cJSON_IsArray(types));
    assert_string_equal(cJSON_GetArrayItem(types, 0)->valuestring, "card");
    assert_string_equal(str_at(p, "success_url"),
                        "https://rivet.io/success?session_id={CHECKOUT_SESSION_ID}");
    cJSON_Delete(j);
    th_response_free(&r);

    /* Reset empties it. */
    assert_int_equal(reset(state), 0);
    assert_int_equal(th_request(fake.port, "GET", "/_fake/requests", NULL, NULL, &r), 0);
    assert_string_equal(r.body, "[]");
    th_response_free(&r);
}

/* ---- subscriptions, events, clock, webhooks ------------------------------------------------ */

#define PAID_TYPES                                                                                 \
    "customer.created customer.subscription.created invoice.created invoice.finalized "            \
    "invoice.paid invoice.payment_succeeded checkout.session.completed"
#define INVOICE_PAID_TYPES                                                                         \
    "invoice.created invoice.finalized invoice.paid invoice.payment_succeeded"
#define BASIL          "2025-03-31.basil"
#define T0             1767225600 /* 2026-01-01T00:00:00Z */
#define DAY            86400
#define MONTH_LATER_T0 1769904000 /* 2026-02-01T00:00:00Z */
#define TWO_MONTHS_T0  1772323200 /* 2026-03-01T00:00:00Z */

/* The member at a dotted path ("data.object.items.data.0.price.id"; digits index arrays). */
static const cJSON *at(const cJSON *o, const char *path) {
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    char *save = NULL;
    for (char *part = strtok_r(buf, ".", &save); part != NULL && o != NULL;
         part = strtok_r(NULL, ".", &save)) {
        if (cJSON_IsArray(o)) {
            o = cJSON_GetArrayItem(o, atoi(part));
        } else {
            o = cJSON_GetObjectItemCaseSensitive(o, part);
        }
    }
    return o;
}

static const char *str_path(const cJSON *o, const char *path) {
    const cJSON *v = at(o, path);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A number at path; fails the test when it is not one. */
static long long num_path(const cJSON *o, const char *path) {
    const cJSON *v = at(o, path);
    if (!cJSON_IsNumber(v)) {
        fail_msg("no number at %s", path);
    }
    return (long long)v->valuedouble;
}

/* GET a Stripe API path with the test key and extra header lines. */
static void api_get(const char *path, const char *headers, th_response_t *r) {
    char h[512];
    snprintf(h, sizeof(h), AUTH "%s", headers != NULL ? headers : "");
    assert_int_equal(th_request(fake.port, "GET", path, h, NULL, r), 0);
}

/* GET a Stripe API path that must answer 200; its JSON. */
static cJSON *api_json(const char *path, const char *headers) {
    th_response_t r;
    api_get(path, headers, &r);
    if (r.status != 200) {
        fail_msg("GET %s: %d %s", path, r.status, r.body);
    }
    cJSON *j = body_json(&r);
    th_response_free(&r);
    return j;
}

/* A control request that must answer 200; its JSON. */
static cJSON *control_json(const char *path, const char *json) {
    th_response_t r;
    assert_int_equal(th_request(fake.port, "POST", path, NULL, json, &r), 0);
    if (r.status != 200) {
        fail_msg("POST %s %s: %d %s", path, json, r.status, r.body);
    }
    cJSON *j = body_json(&r);
    th_response_free(&r);
    return j;
}

/* A control request that must be refused with status. */
static void control_refused(const char *path, const char *json, int status) {
    th_response_t r;
    assert_int_equal(th_request(fake.port, "POST", path, NULL, json, &r), 0);
    assert_int_equal(r.status, status);
    th_response_free(&r);
}

static void set_clock(const char *json) { cJSON_Delete(control_json("/_fake/clock", json)); }

/* Every event the fake recorded, oldest first. */
static cJSON *all_events(void) {
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", "/_fake/events", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    cJSON *j = body_json(&r);
    assert_true(cJSON_IsArray(j));
    th_response_free(&r);
    return j;
}

/* The types of events from..end of an array, space-separated, into buf. */
static const char *types_from(const cJSON *events, int from, char *buf, size_t n) {
    buf[0] = '\0';
    size_t len = 0;
    for (int i = from; i < cJSON_GetArraySize(events); i++) {
        const char *t = str_at(cJSON_GetArrayItem(events, i), "type");
        int w = snprintf(buf + len, n - len, "%s%s", len > 0 ? " " : "", t != NULL ? t : "?");
        assert_true(w > 0 && (size_t)w < n - len);
        len += (size_t)w;
    }
    return buf;
}

/* The types of the last count recorded events. */
static const char *last_types(int count, char *buf, size_t n) {
    cJSON *ev = all_events();
    int size = cJSON_GetArraySize(ev);
    assert_true(size >= count);
    types_from(ev, size - count, buf, n);
    cJSON_Delete(ev);
    return buf;
}

static int event_count(void) {
    cJSON *ev = all_events();
    int n = cJSON_GetArraySize(ev);
    cJSON_Delete(ev);
    return n;
}

/* The most recent recorded event of a type (caller deletes the returned root *root). */
static const cJSON *last_event(const char *type, cJSON **root) {
    *root = all_events();
    const cJSON *found = NULL;
    const cJSON *e;
    cJSON_ArrayForEach(e, *root) {
        if (strcmp(str_at(e, "type"), type) == 0) {
            found = e;
        }
    }
    if (found == NULL) {
        fail_msg("no %s event", type);
    }
    return found;
}

/* Create a subscription-mode session for the pro plan and complete it with body; the completed
 * session (caller deletes). */
static cJSON *checkout_complete(const char *body) {
    char *id = create_session(CHECKOUT_FORM);
    char path[256];
    snprintf(path, sizeof(path), "/_fake/sessions/%s/complete", id);
    cJSON *s = control_json(path, body);
    assert_string_equal(str_at(s, "id"), id);
    free(id);
    return s;
}

/* A paid pro subscription; its id into out. */
static void paid_subscription(char *out, size_t n) {
    cJSON *s = checkout_complete("{}");
    assert_non_null(str_at(s, "subscription"));
    snprintf(out, n, "%s", str_at(s, "subscription"));
    cJSON_Delete(s);
}

/* A control operation on a subscription; its answer {"subscription", "events"}. */
static cJSON *sub_op(const char *sub, const char *op, const char *json) {
    char path[256];
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/%s", sub, op);
    cJSON *j = control_json(path, json);
    assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "subscription")));
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "events")));
    return j;
}

/* The types of the events an operation answered, checked against the recorded log. */
static const char *op_types(const cJSON *answer, char *buf, size_t n) {
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(answer, "events");
    int count = cJSON_GetArraySize(ids);
    cJSON *ev = all_events();
    int size = cJSON_GetArraySize(ev);
    assert_true(size >= count);
    for (int i = 0; i < count; i++) {
        assert_string_equal(str_at(cJSON_GetArrayItem(ev, size - count + i), "id"),
                            cJSON_GetArrayItem(ids, i)->valuestring);
    }
    types_from(ev, size - count, buf, n);
    cJSON_Delete(ev);
    return buf;
}

static void test_clock(void **state) {
    cJSON *c = control_json("/_fake/clock", "{\"now\": 1700000000}");
    assert_int_equal(num_path(c, "now"), 1700000000);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c, "frozen")));
    cJSON_Delete(c);

    /* Objects and events take their times from it: all in one second while frozen. */
    cJSON *s = checkout_complete("{}");
    assert_int_equal(num_path(s, "created"), 1700000000);
    char sub[64];
    snprintf(sub, sizeof(sub), "%s", str_at(s, "subscription"));
    cJSON_Delete(s);
    cJSON *ev = all_events();
    assert_int_equal(cJSON_GetArraySize(ev), 7);
    const cJSON *e;
    cJSON_ArrayForEach(e, ev) { assert_int_equal(num_path(e, "created"), 1700000000); }
    cJSON_Delete(ev);
    char path[128];
    snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
    cJSON *o = api_json(path, NULL);
    assert_int_equal(num_path(o, "created"), 1700000000);
    assert_int_equal(num_path(o, "current_period_start"), 1700000000);
    cJSON_Delete(o);

    /* advance moves it; the next event has the new time. */
    c = control_json("/_fake/clock", "{\"advance\": 90}");
    assert_int_equal(num_path(c, "now"), 1700000090);
    cJSON_Delete(c);
    cJSON_Delete(sub_op(sub, "cancel_at_period_end", "{\"value\": true}"));
    cJSON *root;
    const cJSON *upd = last_event("customer.subscription.updated", &root);
    assert_int_equal(num_path(upd, "created"), 1700000090);
    assert_int_equal(num_path(upd, "data.object.canceled_at"), 1700000090);
    cJSON_Delete(root);

    /* null returns to real time; advance then shifts real time. */
    c = control_json("/_fake/clock", "{\"now\": null}");
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "frozen")));
    long long now = (long long)time(NULL);
    assert_true(llabs(num_path(c, "now") - now) <= 2);
    cJSON_Delete(c);
    c = control_json("/_fake/clock", "{\"advance\": 3600}");
    assert_true(llabs(num_path(c, "now") - (now + 3600)) <= 2);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "frozen")));
    cJSON_Delete(c);
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", "/_fake/clock", NULL, NULL, &r), 0);
    c = body_json(&r);
    assert_true(llabs(num_path(c, "now") - (now + 3600)) <= 2);
    cJSON_Delete(c);
    th_response_free(&r);

    control_refused("/_fake/clock", "{\"now\": \"soon\"}", 400);
    control_refused("/_fake/clock", "{\"advance\": 1.5}", 400);
    control_refused("/_fake/clock", "{\"speed\": 2}", 400);
}

static void test_complete_paid_events(void **state) {
    th_response_t rc, r;
    char *id = create_session(CHECKOUT_FORM);
    char path[256];
    snprintf(path, sizeof(path), "/_fake/sessions/%s/complete", id);
    control(path, "{\"email\": \"ada@example.com\"}", &rc);
    cJSON *s = body_json(&rc);
    assert_string_equal(str_at(s, "payment_status"), "paid");
    assert_int_equal(num_path(s, "amount_total"), 7900);
    assert_string_equal(str_at(s, "currency"), "usd");
    const char *fake_events = th_header(&rc, "Fake-Events");
    assert_non_null(fake_events);
    const char *sub = str_at(s, "subscription");
    const char *inv = str_at(s, "invoice");
    const char *cus = str_at(s, "customer");
    assert_memory_equal(inv, "in_", 3);

    char types[1024];
    cJSON *ev = all_events();
    assert_string_equal(types_from(ev, 0, types, sizeof(types)), PAID_TYPES);
    /* The answer's Fake-Events header lists the same events in order. */
    char ids[1024] = "";
    const cJSON *e;
    cJSON_ArrayForEach(e, ev) {
        size_t len = strlen(ids);
        snprintf(ids + len, sizeof(ids) - len, "%s%s", len > 0 ? "," : "", str_at(e, "id"));
    }
    assert_string_equal(fake_events, ids);
    cJSON_ArrayForEach(e, ev) {
        /* Stripe's event envelope. */
        assert_memory_equal(str_at(e, "id"), "evt_", 4);
        assert_string_equal(str_at(e, "object"), "event");
        assert_string_equal(str_at(e, "api_version"), "2024-06-20");
        assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(e, "livemode")));
        assert_int_equal(num_path(e, "pending_webhooks"), 0);
        assert_true(cJSON_IsNull(at(e, "request.id")));
        assert_true(cJSON_IsNull(at(e, "request.idempotency_key")));
        assert_true(cJSON_IsObject(at(e, "data.object")));
        assert_null(at(e, "data.previous_attributes"));
    }
    const cJSON *cust = cJSON_GetArrayItem(ev, 0);
    assert_string_equal(str_path(cust, "data.object.object"), "customer");
    assert_string_equal(str_path(cust, "data.object.id"), cus);
    assert_string_equal(str_path(cust, "data.object.email"), "ada@example.com");
    const cJSON *created = cJSON_GetArrayItem(ev, 1);
    assert_string_equal(str_path(created, "data.object.object"), "subscription");
    assert_string_equal(str_path(created, "data.object.id"), sub);
    assert_string_equal(str_path(created, "data.object.status"), "active");
    assert_string_equal(str_path(created, "data.object.customer"), cus);
    assert_string_equal(str_path(created, "data.object.metadata.tier"), "pro");
    assert_string_equal(str_path(created, "data.object.items.data.0.price.id"), TH_PRICE_PRO);
    assert_string_equal(str_path(created, "data.object.items.object"), "list");
    assert_true(num_path(created, "data.object.current_period_end") >
                num_path(created, "data.object.current_period_start"));
    assert_true(cJSON_IsFalse(at(created, "data.object.cancel_at_period_end")));
    assert_string_equal(str_path(cJSON_GetArrayItem(ev, 2), "data.object.status"), "draft");
    assert_string_equal(str_path(cJSON_GetArrayItem(ev, 3), "data.object.status"), "open");
    const cJSON *paid = cJSON_GetArrayItem(ev, 4);
    assert_string_equal(str_path(paid, "data.object.object"), "invoice");
    assert_string_equal(str_path(paid, "data.object.id"), inv);
    assert_string_equal(str_path(paid, "data.object.status"), "paid");
    assert_string_equal(str_path(paid, "data.object.subscription"), sub);
    assert_string_equal(str_path(paid, "data.object.customer_email"), "ada@example.com");
    assert_string_equal(str_path(paid, "data.object.billing_reason"), "subscription_create");
    assert_int_equal(num_path(paid, "data.object.amount_due"), 7900);
    assert_int_equal(num_path(paid, "data.object.amount_paid"), 7900);
    assert_string_equal(str_path(paid, "data.object.currency"), "usd");
    const cJSON *done = cJSON_GetArrayItem(ev, 6);
    assert_string_equal(str_path(done, "data.object.object"), "checkout.session");
    assert_string_equal(str_path(done, "data.object.id"), id);
    assert_string_equal(str_path(done, "data.object.subscription"), sub);
    assert_string_equal(str_path(done, "data.object.payment_status"), "paid");
    assert_string_equal(str_path(done, "data.object.metadata.tier"), "pro");
    cJSON_Delete(ev);

    /* The objects can be retrieved. */
    snprintf(path, sizeof(path), "/v1/customers/%s", cus);
    cJSON *o = api_json(path, NULL);
    assert_string_equal(str_at(o, "email"), "ada@example.com");
    cJSON_Delete(o);
    snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
    o = api_json(path, NULL);
    assert_string_equal(str_at(o, "status"), "active");
    assert_string_equal(str_at(o, "latest_invoice"), inv);
    cJSON_Delete(o);
    snprintf(path, sizeof(path), "/v1/invoices/%s", inv);
    o = api_json(path, NULL);
    assert_string_equal(str_at(o, "status"), "paid");
    cJSON_Delete(o);
    api_get("/v1/invoices/in_nope", NULL, &r);
    assert_stripe_error(&r, 404, "invalid_request_error", "resource_missing", NULL);
    th_response_free(&r);

    /* A returning customer: no customer.created. */
    char body[128];
    snprintf(body, sizeof(body), "{\"customer\": \"%s\"}", cus);
    cJSON_Delete(s);
    th_response_free(&rc);
    s = checkout_complete(body);
    assert_string_equal(last_types(6, types, sizeof(types)),
                        "customer.subscription.created " INVOICE_PAID_TYPES
                        " checkout.session.completed");
    assert_int_equal(event_count(), 13);
    cJSON_Delete(s);
    free(id);
}

static void test_complete_unpaid_settle(void **state) {
    char types[1024], path[256];
    cJSON *s = checkout_complete("{\"payment_status\": \"unpaid\"}");
    assert_string_equal(str_at(s, "status"), "complete");
    assert_string_equal(str_at(s, "payment_status"), "unpaid");
    char sid[128], sub[64];
    snprintf(sid, sizeof(sid), "%s", str_at(s, "id"));
    snprintf(sub, sizeof(sub), "%s", str_at(s, "subscription"));
    cJSON_Delete(s);
    cJSON *ev = all_events();
    assert_string_equal(types_from(ev, 0, types, sizeof(types)),
                        "customer.created customer.subscription.created invoice.created "
                        "invoice.finalized checkout.session.completed");
    assert_string_equal(str_path(cJSON_GetArrayItem(ev, 1), "data.object.status"), "incomplete");
    assert_string_equal(str_path(cJSON_GetArrayItem(ev, 3), "data.object.status"), "open");
    assert_string_equal(str_path(cJSON_GetArrayItem(ev, 4), "data.object.payment_status"),
                        "unpaid");
    cJSON_Delete(ev);

    /* The delayed payment succeeds. */
    snprintf(path, sizeof(path), "/_fake/sessions/%s/settle", sid);
    s = control_json(path, "{\"outcome\": \"succeeded\"}");
    assert_string_equal(str_at(s, "payment_status"), "paid");
    cJSON_Delete(s);
    ev = all_events();
    assert_string_equal(types_from(ev, 5, types, sizeof(types)),
                        "customer.subscription.updated invoice.paid invoice.payment_succeeded "
                        "checkout.session.async_payment_succeeded");
    const cJSON *upd = cJSON_GetArrayItem(ev, 5);
    assert_string_equal(str_path(upd, "data.object.status"), "active");
    assert_string_equal(str_path(upd, "data.previous_attributes.status"), "incomplete");
    assert_string_equal(str_path(cJSON_GetArrayItem(ev, 8), "data.object.payment_status"), "paid");
    cJSON_Delete(ev);
    /* Only an unpaid session settles. */
    control_refused(path, "{\"outcome\": \"succeeded\"}", 400);
    control_refused(path, "{\"outcome\": \"maybe\"}", 400);

    /* It fails: the subscription expires. */
    s = checkout_complete("{\"payment_status\": \"unpaid\"}");
    snprintf(path, sizeof(path), "/_fake/sessions/%s/settle", str_at(s, "id"));
    cJSON_Delete(s);
    s = control_json(path, "{\"outcome\": \"failed\"}");
    assert_string_equal(str_at(s, "payment_status"), "unpaid");
    cJSON_Delete(s);
    assert_string_equal(last_types(4, types, sizeof(types)),
                        "invoice.payment_failed checkout.session.async_payment_failed "
                        "invoice.voided customer.subscription.deleted");
    cJSON *root;
    const cJSON *del = last_event("customer.subscription.deleted", &root);
    assert_string_equal(str_path(del, "data.object.status"), "incomplete_expired");
    cJSON_Delete(root);

    /* Or is canceled. */
    s = checkout_complete("{\"payment_status\": \"unpaid\"}");
    snprintf(path, sizeof(path), "/_fake/sessions/%s/settle", str_at(s, "id"));
    cJSON_Delete(s);
    cJSON_Delete(control_json(path, "{\"outcome\": \"failed\", \"subscription\": \"canceled\"}"));
    assert_string_equal(last_types(3, types, sizeof(types)),
                        "invoice.payment_failed checkout.session.async_payment_failed "
                        "customer.subscription.deleted");
    del = last_event("customer.subscription.deleted", &root);
    assert_string_equal(str_path(del, "data.object.status"), "canceled");
    cJSON_Delete(root);

    /* A paid session does not settle. */
    s = checkout_complete("{}");
    snprintf(path, sizeof(path), "/_fake/sessions/%s/settle", str_at(s, "id"));
    cJSON_Delete(s);
    control_refused(path, "{\"outcome\": \"failed\"}", 400);
    control_refused("/_fake/sessions/cs_test_nope/settle", "{\"outcome\": \"failed\"}", 404);
}

static void test_complete_trial(void **state) {
    char types[1024], path[256];
    set_clock("{\"now\": 1767225600}");
    cJSON *s = checkout_complete("{\"payment_status\": \"no_payment_required\", "
                                 "\"trial_days\": 7}");
    assert_string_equal(str_at(s, "payment_status"), "no_payment_required");
    assert_int_equal(num_path(s, "amount_total"), 0);
    char sub[64];
    snprintf(sub, sizeof(sub), "%s", str_at(s, "subscription"));
    cJSON_Delete(s);
    cJSON *ev = all_events();
    assert_string_equal(types_from(ev, 0, types, sizeof(types)), PAID_TYPES);
    const cJSON *created = cJSON_GetArrayItem(ev, 1);
    assert_string_equal(str_path(created, "data.object.status"), "trialing");
    assert_int_equal(num_path(created, "data.object.trial_start"), T0);
    assert_int_equal(num_path(created, "data.object.trial_end"), T0 + 7 * DAY);
    assert_int_equal(num_path(created, "data.object.current_period_end"), T0 + 7 * DAY);
    assert_int_equal(num_path(cJSON_GetArrayItem(ev, 4), "data.object.amount_paid"), 0);
    cJSON_Delete(ev);

    /* The trial ends: the first real invoice is paid and the subscription is active. */
    set_clock("{\"advance\": 604800}");
    cJSON *a = sub_op(sub, "renew", "{}");
    assert_string_equal(op_types(a, types, sizeof(types)),
                        "customer.subscription.updated " INVOICE_PAID_TYPES);
    assert_string_equal(str_path(a, "subscription.status"), "active");
    assert_int_equal(num_path(a, "subscription.current_period_start"), T0 + 7 * DAY);
    cJSON_Delete(a);
    cJSON *root;
    const cJSON *upd = last_event("customer.subscription.updated", &root);
    assert_string_equal(str_path(upd, "data.previous_attributes.status"), "trialing");
    cJSON_Delete(root);
    const cJSON *paid = last_event("invoice.paid", &root);
    assert_int_equal(num_path(paid, "data.object.amount_paid"), 7900);
    assert_string_equal(str_path(paid, "data.object.billing_reason"), "subscription_cycle");
    cJSON_Delete(root);
    snprintf(path, sizeof(path), "/_fake/sessions/%s/complete", "cs_test_nope");
    control_refused(path, "{}", 404);
}

static void test_change_plan(void **state) {
    char types[1024], sub[64];
    set_clock("{\"now\": 1767225600}");
    paid_subscription(sub, sizeof(sub));
    cJSON *a = sub_op(sub, "change_plan", "{\"price\": \"" TH_PRICE_ENTERPRISE "\"}");
    assert_string_equal(op_types(a, types, sizeof(types)),
                        "customer.subscription.updated " INVOICE_PAID_TYPES);
    assert_string_equal(str_path(a, "subscription.items.data.0.price.id"), TH_PRICE_ENTERPRISE);
    assert_string_equal(str_path(a, "subscription.metadata.tier"), "enterprise");
    cJSON_Delete(a);
    cJSON *root;
    const cJSON *upd = last_event("customer.subscription.updated", &root);
    assert_string_equal(str_path(upd, "data.object.items.data.0.price.id"), TH_PRICE_ENTERPRISE);
    assert_string_equal(str_path(upd, "data.object.plan.id"), TH_PRICE_ENTERPRISE);
    assert_string_equal(str_path(upd, "data.previous_attributes.items.data.0.price.id"),
                        TH_PRICE_PRO);
    assert_string_equal(str_path(upd, "data.previous_attributes.plan.id"), TH_PRICE_PRO);
    assert_string_equal(str_path(upd, "data.previous_attributes.metadata.tier"), "pro");
    assert_string_equal(str_path(upd, "data.object.metadata.tier"), "enterprise");
    /* The update names the proration invoice that follows. */
    const char *latest = str_path(upd, "data.object.latest_invoice");
    assert_non_null(latest);
    cJSON *root2;
    const cJSON *paid = last_event("invoice.paid", &root2);
    assert_string_equal(str_path(paid, "data.object.id"), latest);
    assert_string_equal(str_path(paid, "data.object.billing_reason"), "subscription_update");
    /* At the very start of the period: the whole difference, 199.00 - 79.00. */
    assert_int_equal(num_path(paid, "data.object.amount_paid"), 12000);
    assert_true(cJSON_IsTrue(at(paid, "data.object.lines.data.1.proration")));
    cJSON_Delete(root2);
    cJSON_Delete(root);

    char path[128];
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/change_plan", sub);
    control_refused(path, "{\"price\": \"" TH_PRICE_ENTERPRISE "\"}", 400);
    control_refused(path, "{\"price\": \"price_unknown\"}", 400);
    control_refused(path, "{}", 400);
    control_refused("/_fake/subscriptions/sub_nope/change_plan", "{\"price\": \"x\"}", 404);
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/explode", sub);
    control_refused(path, "{}", 404);
}

static void test_renew_fail_recover(void **state) {
    char types[1024], sub[64];
    set_clock("{\"now\": 1767225600}");
    paid_subscription(sub, sizeof(sub));
    set_clock("{\"now\": 1769904000}");
    cJSON *a = sub_op(sub, "renew", "{}");
    assert_string_equal(op_types(a, types, sizeof(types)),
                        "customer.subscription.updated " INVOICE_PAID_TYPES);
    assert_int_equal(num_path(a, "subscription.current_period_start"), MONTH_LATER_T0);
    assert_int_equal(num_path(a, "subscription.current_period_end"), TWO_MONTHS_T0);
    assert_string_equal(str_path(a, "subscription.status"), "active");
    cJSON_Delete(a);
    cJSON *root;
    const cJSON *upd = last_event("customer.subscription.updated", &root);
    assert_int_equal(num_path(upd, "data.previous_attributes.current_period_end"), MONTH_LATER_T0);
    assert_int_equal(num_path(upd, "data.previous_attributes.current_period_start"), T0);
    cJSON_Delete(root);
    const cJSON *paid = last_event("invoice.paid", &root);
    assert_string_equal(str_path(paid, "data.object.billing_reason"), "subscription_cycle");
    assert_int_equal(num_path(paid, "data.object.lines.data.0.period.start"), MONTH_LATER_T0);
    assert_int_equal(num_path(paid, "data.object.lines.data.0.period.end"), TWO_MONTHS_T0);
    cJSON_Delete(root);

    /* The next renewal's payment fails: past_due. */
    set_clock("{\"now\": 1772323200}");
    a = sub_op(sub, "fail_payment", "{}");
    assert_string_equal(op_types(a, types, sizeof(types)),
                        "customer.subscription.updated invoice.created invoice.finalized "
                        "invoice.payment_failed customer.subscription.updated");
    assert_string_equal(str_path(a, "subscription.status"), "past_due");
    cJSON_Delete(a);
    upd = last_event("customer.subscription.updated", &root);
    assert_string_equal(str_path(upd, "data.object.status"), "past_due");
    assert_string_equal(str_path(upd, "data.previous_attributes.status"), "active");
    cJSON_Delete(root);
    const cJSON *failed = last_event("invoice.payment_failed", &root);
    assert_string_equal(str_path(failed, "data.object.status"), "open");
    assert_int_equal(num_path(failed, "data.object.attempt_count"), 1);
    assert_int_equal(num_path(failed, "data.object.amount_paid"), 0);
    cJSON_Delete(root);

    /* A retry fails again: only the invoice event. */
    a = sub_op(sub, "fail_payment", "{}");
    assert_string_equal(op_types(a, types, sizeof(types)), "invoice.payment_failed");
    cJSON_Delete(a);
    failed = last_event("invoice.payment_failed", &root);
    assert_int_equal(num_path(failed, "data.object.attempt_count"), 2);
    cJSON_Delete(root);

    /* The customer pays. */
    a = sub_op(sub, "recover", "{}");
    assert_string_equal(op_types(a, types, sizeof(types)),
                        "customer.subscription.updated invoice.paid invoice.payment_succeeded");
    assert_string_equal(str_path(a, "subscription.status"), "active");
    cJSON_Delete(a);
    upd = last_event("customer.subscription.updated", &root);
    assert_string_equal(str_path(upd, "data.previous_attributes.status"), "past_due");
    cJSON_Delete(root);
    char path[128];
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/recover", sub);
    control_refused(path, "{}", 400);

    /* Retries exhausted: unpaid, then canceled. */
    a = sub_op(sub, "fail_payment", "{\"then\": \"unpaid\"}");
    assert_string_equal(str_path(a, "subscription.status"), "unpaid");
    assert_string_equal(op_types(a, types, sizeof(types)),
                        "customer.subscription.updated invoice.created invoice.finalized "
                        "invoice.payment_failed customer.subscription.updated");
    cJSON_Delete(a);
    a = sub_op(sub, "fail_payment", "{\"then\": \"canceled\"}");
    assert_string_equal(op_types(a, types, sizeof(types)),
                        "invoice.payment_failed customer.subscription.deleted");
    assert_string_equal(str_path(a, "subscription.status"), "canceled");
    assert_string_equal(str_path(a, "subscription.cancellation_details.reason"), "payment_failed");
    cJSON_Delete(a);
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/renew", sub);
    control_refused(path, "{}", 400);
}

static void test_cancel_ops(void **state) {
    char types[1024], sub[64], path[128];
    set_clock("{\"now\": 1767225600}");
    paid_subscription(sub, sizeof(sub));
    cJSON *a = sub_op(sub, "cancel_at_period_end", "{\"value\": true}");
    assert_string_equal(op_types(a, types, sizeof(types)), "customer.subscription.updated");
    assert_true(cJSON_IsTrue(at(a, "subscription.cancel_at_period_end")));
    assert_int_equal(num_path(a, "subscription.cancel_at"), MONTH_LATER_T0);
    assert_string_equal(str_path(a, "subscription.status"), "active");
    cJSON_Delete(a);
    cJSON *root;
    const cJSON *upd = last_event("customer.subscription.updated", &root);
    assert_true(cJSON_IsFalse(at(upd, "data.previous_attributes.cancel_at_period_end")));
    assert_true(cJSON_IsNull(at(upd, "data.previous_attributes.cancel_at")));
    cJSON_Delete(root);
    /* The same value again changes nothing. */
    a = sub_op(sub, "cancel_at_period_end", "{\"value\": true}");
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(a, "events")), 0);
    cJSON_Delete(a);
    a = sub_op(sub, "cancel_at_period_end", "{\"value\": false}");
    assert_string_equal(op_types(a, types, sizeof(types)), "customer.subscription.updated");
    assert_true(cJSON_IsFalse(at(a, "subscription.cancel_at_period_end")));
    cJSON_Delete(a);
    upd = last_event("customer.subscription.updated", &root);
    assert_true(cJSON_IsTrue(at(upd, "data.previous_attributes.cancel_at_period_end")));
    cJSON_Delete(root);
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/cancel_at_period_end", sub);
    control_refused(path, "{\"value\": \"yes\"}", 400);

    /* Set again, the period's end ends it. */
    cJSON_Delete(sub_op(sub, "cancel_at_period_end", "{}"));
    set_clock("{\"now\": 1769904000}");
    a = sub_op(sub, "renew", "{}");
    assert_string_equal(op_types(a, types, sizeof(types)), "customer.subscription.deleted");
    assert_string_equal(str_path(a, "subscription.status"), "canceled");
    assert_int_equal(num_path(a, "subscription.ended_at"), MONTH_LATER_T0);
    cJSON_Delete(a);

    /* Canceled now. */
    paid_subscription(sub, sizeof(sub));
    a = sub_op(sub, "cancel", "{}");
    assert_string_equal(op_types(a, types, sizeof(types)), "customer.subscription.deleted");
    assert_string_equal(str_path(a, "subscription.status"), "canceled");
    assert_int_equal(num_path(a, "subscription.ended_at"), MONTH_LATER_T0);
    cJSON_Delete(a);
    cJSON *root2;
    const cJSON *del = last_event("customer.subscription.deleted", &root2);
    assert_null(at(del, "data.previous_attributes"));
    assert_string_equal(str_path(del, "data.object.id"), sub);
    cJSON_Delete(root2);
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/cancel", sub);
    control_refused(path, "{}", 400);
    snprintf(path, sizeof(path), "/_fake/subscriptions/%s/cancel_at_period_end", sub);
    control_refused(path, "{}", 400);
}

/* POST a form to a subscription; the answer. */
static void post_sub(const char *sub, const char *form, const char *headers, th_response_t *r) {
    char path[128];
    snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
    post_form(path, form, headers, r);
}

static void test_subscription_api(void **state) {
    char types[1024], sub[64], path[128], form[256];
    th_response_t r;
    api_get("/v1/subscriptions/sub_nope", NULL, &r);
    assert_stripe_error(&r, 404, "invalid_request_error", "resource_missing", NULL);
    assert_non_null(strstr(r.body, "No such subscription: 'sub_nope'"));
    th_response_free(&r);
    post_sub("sub_nope", "metadata[a]=b", NULL, &r);
    assert_stripe_error(&r, 404, "invalid_request_error", "resource_missing", NULL);
    th_response_free(&r);

    paid_subscription(sub, sizeof(sub));
    snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
    cJSON *o = api_json(path, NULL);
    char item[64];
    snprintf(item, sizeof(item), "%s", str_path(o, "items.data.0.id"));
    assert_memory_equal(item, "si_", 3);
    cJSON_Delete(o);
    int before = event_count();

    /* Metadata: an update event naming the request and its idempotency key. */
    post_sub(sub, "metadata[note]=vip", "Idempotency-Key: meta-1\r\n", &r);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_string_equal(str_path(o, "metadata.note"), "vip");
    assert_string_equal(str_path(o, "metadata.tier"), "pro");
    cJSON_Delete(o);
    assert_int_equal(event_count(), before + 1);
    cJSON *root;
    const cJSON *upd = last_event("customer.subscription.updated", &root);
    assert_string_equal(str_path(upd, "request.id"), th_header(&r, "Request-Id"));
    assert_string_equal(str_path(upd, "request.idempotency_key"), "meta-1");
    assert_true(cJSON_IsNull(at(upd, "data.previous_attributes.metadata.note")));
    assert_null(at(upd, "data.previous_attributes.metadata.tier"));
    cJSON_Delete(root);
    th_response_free(&r);
    /* A replay records nothing. */
    post_sub(sub, "metadata[note]=vip", "Idempotency-Key: meta-1\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_non_null(th_header(&r, "Idempotent-Replayed"));
    th_response_free(&r);
    assert_int_equal(event_count(), before + 1);

    /* Items: the item id is required (without it Stripe would add a second item). */
    post_sub(sub, "items[0][price]=" TH_PRICE_ENTERPRISE, NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", NULL, "items[0][id]");
    th_response_free(&r);
    post_sub(sub, "items[0][id]=si_other&items[0][price]=" TH_PRICE_ENTERPRISE, NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "resource_missing", "items[0][id]");
    th_response_free(&r);
    snprintf(form, sizeof(form), "items[0][id]=%s&items[0][price]=price_nope", item);
    post_sub(sub, form, NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "resource_missing", "items[0][price]");
    th_response_free(&r);
    snprintf(form, sizeof(form), "items[0][id]=%s&proration_behavior=sometimes", item);
    post_sub(sub, form, NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", NULL, "proration_behavior");
    th_response_free(&r);
    post_sub(sub, "colour=blue", NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "parameter_unknown", "colour");
    th_response_free(&r);
    post_sub(sub, "cancel_at_period_end=perhaps", NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", NULL, "cancel_at_period_end");
    th_response_free(&r);
    assert_int_equal(event_count(), before + 1);

    /* always_invoice: the update, then the proration invoice. */
    snprintf(form, sizeof(form),
             "items[0][id]=%s&items[0][price]=" TH_PRICE_ENTERPRISE
             "&proration_behavior=always_invoice&metadata[tier]=enterprise",
             item);
    post_sub(sub, form, NULL, &r);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_string_equal(str_path(o, "items.data.0.price.id"), TH_PRICE_ENTERPRISE);
    assert_string_equal(str_path(o, "metadata.tier"), "enterprise");
    assert_string_equal(last_types(5, types, sizeof(types)),
                        "customer.subscription.updated " INVOICE_PAID_TYPES);
    const cJSON *paid = last_event("invoice.paid", &root);
    assert_string_equal(str_path(paid, "data.object.id"), str_at(o, "latest_invoice"));
    assert_string_equal(str_path(paid, "request.id"), th_header(&r, "Request-Id"));
    cJSON_Delete(root);
    upd = last_event("customer.subscription.updated", &root);
    assert_string_equal(str_path(upd, "data.previous_attributes.metadata.tier"), "pro");
    assert_string_equal(str_path(upd, "data.previous_attributes.items.data.0.price.id"),
                        TH_PRICE_PRO);
    cJSON_Delete(root);
    cJSON_Delete(o);
    th_response_free(&r);
    /* The default (create_prorations) invoices nothing now. */
    before = event_count();
    snprintf(form, sizeof(form), "items[0][id]=%s&items[0][price]=" TH_PRICE_BASIC, item);
    post_sub(sub, form, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
    assert_int_equal(event_count(), before + 1);

    post_sub(sub, "cancel_at_period_end=true", NULL, &r);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "cancel_at_period_end")));
    assert_int_equal(num_path(o, "cancel_at"), num_path(o, "current_period_end"));
    cJSON_Delete(o);
    th_response_free(&r);
    assert_string_equal(last_types(1, types, sizeof(types)), "customer.subscription.updated");

    /* DELETE cancels now. */
    assert_int_equal(th_request(fake.port, "DELETE", path, AUTH, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_string_equal(str_at(o, "status"), "canceled");
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "ended_at")));
    cJSON_Delete(o);
    const cJSON *del = last_event("customer.subscription.deleted", &root);
    assert_string_equal(str_path(del, "request.id"), th_header(&r, "Request-Id"));
    cJSON_Delete(root);
    th_response_free(&r);
    assert_int_equal(th_request(fake.port, "DELETE", path, AUTH, NULL, &r), 0);
    assert_stripe_error(&r, 400, "invalid_request_error", NULL, NULL);
    th_response_free(&r);
    /* A canceled subscription takes metadata only. */
    post_sub(sub, "cancel_at_period_end=false", NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", NULL, NULL);
    th_response_free(&r);
    post_sub(sub, "metadata[note]=", NULL, &r);
    assert_int_equal(r.status, 200);
    o = body_json(&r);
    assert_null(str_path(o, "metadata.note"));
    cJSON_Delete(o);
    th_response_free(&r);
    upd = last_event("customer.subscription.updated", &root);
    assert_string_equal(str_path(upd, "data.previous_attributes.metadata.note"), "vip");
    cJSON_Delete(root);
}

static void test_api_versions(void **state) {
    char path[128];
    cJSON *s = checkout_complete("{\"email\": \"ada@example.com\"}");
    char sub[64], inv[64];
    snprintf(sub, sizeof(sub), "%s", str_at(s, "subscription"));
    snprintf(inv, sizeof(inv), "%s", str_at(s, "invoice"));
    cJSON_Delete(s);

    /* The account's default: invoice.subscription, subscription.current_period_end. */
    snprintf(path, sizeof(path), "/v1/invoices/%s", inv);
    cJSON *o = api_json(path, NULL);
    assert_string_equal(str_at(o, "subscription"), sub);
    assert_null(at(o, "parent"));
    assert_string_equal(str_path(o, "subscription_details.metadata.tier"), "pro");
    cJSON_Delete(o);
    th_response_t r;
    api_get(path, "Stripe-Version: " BASIL "\r\n", &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(th_header(&r, "Stripe-Version"), BASIL);
    o = body_json(&r);
    assert_null(at(o, "subscription"));
    assert_string_equal(str_path(o, "parent.subscription_details.subscription"), sub);
    assert_string_equal(str_path(o, "parent.subscription_details.metadata.tier"), "pro");
    assert_string_equal(str_path(o, "parent.type"), "subscription_details");
    assert_string_equal(str_at(o, "customer_email"), "ada@example.com");
    assert_string_equal(str_path(o, "lines.data.0.parent.subscription_item_details.subscription"),
                        sub);
    cJSON_Delete(o);
    th_response_free(&r);

    snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
    o = api_json(path, "Stripe-Version: 2024-06-20\r\n");
    long long end = num_path(o, "current_period_end");
    assert_null(at(o, "items.data.0.current_period_end"));
    cJSON_Delete(o);
    o = api_json(path, "Stripe-Version: " BASIL "\r\n");
    assert_null(at(o, "current_period_end"));
    assert_int_equal(num_path(o, "items.data.0.current_period_end"), end);
    cJSON_Delete(o);

    /* Events take the account's version when they are recorded. */
    cJSON *root;
    const cJSON *paid = last_event("invoice.paid", &root);
    assert_string_equal(str_path(paid, "data.object.subscription"), sub);
    cJSON_Delete(root);
    cJSON_Delete(control_json("/_fake/config", "{\"api_version\": \"" BASIL "\"}"));
    s = checkout_complete("{}");
    snprintf(sub, sizeof(sub), "%s", str_at(s, "subscription"));
    snprintf(inv, sizeof(inv), "%s", str_at(s, "invoice"));
    cJSON_Delete(s);
    paid = last_event("invoice.paid", &root);
    assert_string_equal(str_at(paid, "api_version"), BASIL);
    assert_null(at(paid, "data.object.subscription"));
    assert_string_equal(str_path(paid, "data.object.parent.subscription_details.subscription"),
                        sub);
    cJSON_Delete(root);
    const cJSON *created = last_event("customer.subscription.created", &root);
    assert_null(at(created, "data.object.current_period_end"));
    assert_true(cJSON_IsNumber(at(created, "data.object.items.data.0.current_period_end")));
    cJSON_Delete(root);
    /* Without a Stripe-Version header an answer has the account's version. */
    snprintf(path, sizeof(path), "/v1/invoices/%s", inv);
    api_get(path, NULL, &r);
    assert_string_equal(th_header(&r, "Stripe-Version"), BASIL);
    o = body_json(&r);
    assert_null(at(o, "subscription"));
    cJSON_Delete(o);
    th_response_free(&r);
    /* ... and a request can still ask for the old shape. */
    o = api_json(path, "Stripe-Version: 2023-10-16\r\n");
    assert_string_equal(str_at(o, "subscription"), sub);
    cJSON_Delete(o);
    control_refused("/_fake/config", "{\"api_version\": \"basil\"}", 400);
}

/* Record 21 events in one frozen second: three paid checkouts. */
static cJSON *three_checkouts(void) {
    set_clock("{\"now\": 1767225600}");
    for (int i = 0; i < 3; i++) {
        cJSON_Delete(checkout_complete("{}"));
    }
    cJSON *ev = all_events();
    assert_int_equal(cJSON_GetArraySize(ev), 21);
    return ev;
}

static const char *id_at(const cJSON *array, int i) {
    return str_at(cJSON_GetArrayItem(array, i), "id");
}

/* GET /v1/events with a query that must answer 200; the list. */
static cJSON *list_events(const char *query) {
    char path[512];
    snprintf(path, sizeof(path), "/v1/events%s", query);
    cJSON *l = api_json(path, NULL);
    assert_string_equal(str_at(l, "object"), "list");
    assert_string_equal(str_at(l, "url"), "/v1/events");
    assert_true(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(l, "data")));
    assert_true(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(l, "has_more")));
    return l;
}

static int list_size(const cJSON *l) {
    return cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(l, "data"));
}

static int has_more(const cJSON *l) {
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(l, "has_more"));
}

/* GET /v1/events with a query that must be refused: 400 with param (and code when given). */
static void list_refused(const char *query, const char *code, const char *param) {
    char path[512];
    snprintf(path, sizeof(path), "/v1/events%s", query);
    th_response_t r;
    api_get(path, NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", code, param);
    th_response_free(&r);
}

static void test_events_list_paging(void **state) {
    cJSON *all = three_checkouts();
    /* Default: the 10 newest, newest first. */
    cJSON *l = list_events("");
    assert_int_equal(list_size(l), 10);
    assert_true(has_more(l));
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(l, "data");
    for (int i = 0; i < 10; i++) {
        assert_string_equal(id_at(data, i), id_at(all, 20 - i));
    }
    cJSON_Delete(l);

    /* starting_after pages through everything once, newest first. */
    char query[256] = "?limit=4";
    int seen = 0, pages = 0;
    for (;;) {
        l = list_events(query);
        data = cJSON_GetObjectItemCaseSensitive(l, "data");
        for (int i = 0; i < list_size(l); i++) {
            assert_string_equal(id_at(data, i), id_at(all, 20 - seen));
            seen++;
        }
        pages++;
        int more = has_more(l);
        if (more) {
            snprintf(query, sizeof(query), "?limit=4&starting_after=%s",
                     id_at(data, list_size(l) - 1));
        }
        cJSON_Delete(l);
        if (!more) {
            break;
        }
    }
    assert_int_equal(seen, 21);
    assert_int_equal(pages, 6);

    /* ending_before: the events just newer than the cursor, still newest first. */
    snprintf(query, sizeof(query), "?limit=5&ending_before=%s", id_at(all, 0));
    l = list_events(query);
    data = cJSON_GetObjectItemCaseSensitive(l, "data");
    assert_int_equal(list_size(l), 5);
    for (int i = 0; i < 5; i++) {
        assert_string_equal(id_at(data, i), id_at(all, 5 - i));
    }
    assert_true(has_more(l));
    cJSON_Delete(l);
    snprintf(query, sizeof(query), "?limit=5&ending_before=%s", id_at(all, 17));
    l = list_events(query);
    data = cJSON_GetObjectItemCaseSensitive(l, "data");
    assert_int_equal(list_size(l), 3);
    assert_string_equal(id_at(data, 0), id_at(all, 20));
    assert_string_equal(id_at(data, 2), id_at(all, 18));
    assert_false(has_more(l));
    cJSON_Delete(l);
    snprintf(query, sizeof(query), "?ending_before=%s", id_at(all, 20));
    l = list_events(query);
    assert_int_equal(list_size(l), 0);
    assert_false(has_more(l));
    cJSON_Delete(l);
    snprintf(query, sizeof(query), "?starting_after=%s", id_at(all, 0));
    l = list_events(query);
    assert_int_equal(list_size(l), 0);
    assert_false(has_more(l));
    cJSON_Delete(l);

    /* limit's bounds. */
    l = list_events("?limit=100");
    assert_int_equal(list_size(l), 21);
    assert_false(has_more(l));
    cJSON_Delete(l);
    l = list_events("?limit=1");
    assert_int_equal(list_size(l), 1);
    assert_true(has_more(l));
    cJSON_Delete(l);
    l = list_events("?limit=21");
    assert_int_equal(list_size(l), 21);
    assert_false(has_more(l));
    cJSON_Delete(l);
    list_refused("?limit=0", NULL, "limit");
    list_refused("?limit=101", NULL, "limit");
    list_refused("?limit=-3", NULL, "limit");
    list_refused("?limit=ten", "parameter_invalid_integer", "limit");
    snprintf(query, sizeof(query), "?starting_after=%s&ending_before=%s", id_at(all, 3),
             id_at(all, 1));
    list_refused(query, "parameters_exclusive", NULL);
    list_refused("?starting_after=evt_nope", "resource_missing", "starting_after");
    list_refused("?ending_before=evt_nope", "resource_missing", "ending_before");
    list_refused("?colour=blue", "parameter_unknown", "colour");
    cJSON_Delete(all);
}

static void test_events_list_filters(void **state) {
    char query[256];
    set_clock("{\"now\": 1767225600}");
    char sub[64];
    paid_subscription(sub, sizeof(sub)); /* 7 events at T0 */
    set_clock("{\"now\": 1767225700}");
    cJSON_Delete(sub_op(sub, "renew", "{}")); /* 5 at T0 + 100 */
    set_clock("{\"now\": 1767225800}");
    cJSON_Delete(sub_op(sub, "cancel", "{}")); /* 1 at T0 + 200 */

    static const struct {
        const char *query;
        int count;
    } cases[] = {
        {"?limit=100&created=1767225700", 5},
        {"?limit=100&created[gte]=1767225700", 6},
        {"?limit=100&created[gt]=1767225700", 1},
        {"?limit=100&created[lt]=1767225700", 7},
        {"?limit=100&created[lte]=1767225700", 12},
        {"?limit=100&created[gte]=1767225700&created[lte]=1767225700", 5},
        {"?limit=100&created[gt]=1767225800", 0},
        {"?limit=100&type=invoice.paid", 2},
        {"?limit=100&type=customer.subscription.*", 3},
        {"?limit=100&type=*.paid", 2},
        {"?limit=100&type=invoice.*&created=1767225700", 4},
        {"?limit=100&types[]=customer.created&types[]=customer.subscription.deleted", 2},
        {"?limit=100&types[0]=invoice.payment_succeeded", 2},
        {"?limit=100&type=charge.succeeded", 0},
        {"?limit=100&delivery_success=true", 13},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cJSON *l = list_events(cases[i].query);
        if (list_size(l) != cases[i].count) {
            fail_msg("%s: %d events, not %d", cases[i].query, list_size(l), cases[i].count);
        }
        cJSON_Delete(l);
    }
    /* A filtered page: has_more counts only matching events. */
    cJSON *l = list_events("?limit=2&type=customer.subscription.*");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(l, "data");
    assert_string_equal(str_at(cJSON_GetArrayItem(data, 0), "type"),
                        "customer.subscription.deleted");
    assert_string_equal(str_at(cJSON_GetArrayItem(data, 1), "type"),
                        "customer.subscription.updated");
    assert_true(has_more(l));
    snprintf(query, sizeof(query), "?limit=2&type=customer.subscription.*&starting_after=%s",
             str_at(cJSON_GetArrayItem(data, 1), "id"));
    cJSON_Delete(l);
    l = list_events(query);
    assert_int_equal(list_size(l), 1);
    assert_false(has_more(l));
    cJSON_Delete(l);

    list_refused("?created=yesterday", "parameter_invalid_integer", "created");
    list_refused("?created[gt]=x", "parameter_invalid_integer", "created[gt]");
    list_refused("?created[after]=1", "parameter_unknown", "created[after]");
    list_refused("?type=invoice.paid&types[]=invoice.paid", "parameters_exclusive", NULL);
    list_refused("?delivery_success=maybe", NULL, "delivery_success");

    /* Events older than 30 days are not listed, nor retrieved. */
    cJSON *all = all_events();
    set_clock("{\"now\": 1769817750}"); /* T0 + 30 days + 150 s */
    l = list_events("?limit=100");
    assert_int_equal(list_size(l), 1);
    assert_string_equal(str_path(l, "data.0.type"), "customer.subscription.deleted");
    cJSON_Delete(l);
    char path[128];
    snprintf(path, sizeof(path), "/v1/events/%s", id_at(all, 0));
    th_response_t r;
    api_get(path, NULL, &r);
    assert_stripe_error(&r, 404, "invalid_request_error", "resource_missing", NULL);
    th_response_free(&r);
    snprintf(path, sizeof(path), "/v1/events/%s", id_at(all, 12));
    cJSON *e = api_json(path, NULL);
    assert_string_equal(str_at(e, "type"), "customer.subscription.deleted");
    cJSON_Delete(e);
    assert_int_equal(event_count(), 13);
    cJSON_Delete(all);
}

static void test_event_retrieve(void **state) {
    cJSON *s = checkout_complete("{}");
    cJSON_Delete(s);
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", "/_fake/events", NULL, NULL, &r), 0);
    cJSON *all = body_json(&r);
    char path[128];
    for (int i = 0; i < cJSON_GetArraySize(all); i++) {
        snprintf(path, sizeof(path), "/v1/events/%s", id_at(all, i));
        th_response_t one;
        api_get(path, NULL, &one);
        assert_int_equal(one.status, 200);
        /* The same bytes as recorded. */
        assert_non_null(strstr(r.body, one.body));
        cJSON *e = body_json(&one);
        assert_string_equal(str_at(e, "id"), id_at(all, i));
        cJSON_Delete(e);
        th_response_free(&one);
    }
    cJSON_Delete(all);
    th_response_free(&r);
    api_get("/v1/events/evt_nope", NULL, &r);
    assert_stripe_error(&r, 404, "invalid_request_error", "resource_missing", NULL);
    assert_non_null(strstr(r.body, "No such event: 'evt_nope'"));
    th_response_free(&r);
}

static void test_events_forget(void **state) {
    set_clock("{\"now\": 1767225600}");
    char sub[64];
    paid_subscription(sub, sizeof(sub));
    cJSON *all = all_events();
    set_clock("{\"advance\": 10}");
    cJSON_Delete(sub_op(sub, "cancel", "{}"));
    cJSON *j = control_json("/_fake/events/forget", "{\"before\": 1767225610}");
    assert_int_equal(num_path(j, "forgotten"), 7);
    cJSON_Delete(j);
    assert_int_equal(event_count(), 1);
    cJSON *l = list_events("");
    assert_int_equal(list_size(l), 1);
    cJSON_Delete(l);
    char query[128];
    snprintf(query, sizeof(query), "?starting_after=%s", id_at(all, 0));
    list_refused(query, "resource_missing", "starting_after");
    control_refused("/_fake/events/forget", "{}", 400);
    cJSON_Delete(all);
}

/* ---- a webhook endpoint the fake delivers to ----------------------------------------------- */

typedef struct hook_req_s {
    char method[16];
    char path[256];
    char signature[512];
    char content_type[128];
    char user_agent[128];
    char *body; /* malloc'd, NUL-terminated */
    size_t body_len;
} hook_req_t;

/* A listening socket on a free loopback port. */
static int hook_listen(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fd, 64), 0);
    socklen_t len = sizeof(a);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void copy_header(const char *line, size_t len, const char *name, char *out, size_t n) {
    size_t nl = strlen(name);
    if (len > nl + 1 && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
        const char *v = line + nl + 1;
        while (*v == ' ') {
            v++;
        }
        size_t vl = len - (size_t)(v - line);
        if (vl >= n) {
            vl = n - 1;
        }
        memcpy(out, v, vl);
        out[vl] = '\0';
    }
}

/* Wait up to timeout_ms for one delivery, read it and answer status. Returns 0, or -1 when none
 * came. */
static int hook_accept(int lfd, int timeout_ms, int status, hook_req_t *req) {
    memset(req, 0, sizeof(*req));
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) != 1) {
        return -1;
    }
    int fd = accept(lfd, NULL, NULL);
    assert_true(fd >= 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    size_t cap = 1 << 20, len = 0, need = 0, head = 0;
    char *buf = malloc(cap + 1);
    assert_non_null(buf);
    for (;;) {
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        assert_true(n > 0);
        len += (size_t)n;
        buf[len] = '\0';
        if (head == 0) {
            char *end = strstr(buf, "\r\n\r\n");
            if (end == NULL) {
                continue;
            }
            head = (size_t)(end - buf) + 4;
            const char *cl = strcasestr(buf, "\r\nContent-Length:");
            assert_non_null(cl);
            need = head + (size_t)strtoul(cl + 17, NULL, 10);
            assert_true(need <= cap);
        }
        if (len >= need) {
            break;
        }
    }
    sscanf(buf, "%15s %255s", req->method, req->path);
    const char *line = strstr(buf, "\r\n") + 2;
    while (line < buf + head - 2) {
        const char *eol = strstr(line, "\r\n");
        size_t ll = (size_t)(eol - line);
        copy_header(line, ll, "Stripe-Signature", req->signature, sizeof(req->signature));
        copy_header(line, ll, "Content-Type", req->content_type, sizeof(req->content_type));
        copy_header(line, ll, "User-Agent", req->user_agent, sizeof(req->user_agent));
        line = eol + 2;
    }
    req->body_len = need - head;
    req->body = malloc(req->body_len + 1);
    assert_non_null(req->body);
    memcpy(req->body, buf + head, req->body_len);
    req->body[req->body_len] = '\0';
    free(buf);
    char answer[128];
    int n = snprintf(answer, sizeof(answer),
                     "HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", status);
    assert_int_equal(send(fd, answer, (size_t)n, MSG_NOSIGNAL), n);
    close(fd);
    return 0;
}

/* The event id of a delivery. */
static char *hook_event_id(const hook_req_t *req) {
    cJSON *j = cJSON_Parse(req->body);
    assert_non_null(j);
    char *id = strdup(str_at(j, "id"));
    cJSON_Delete(j);
    return id;
}

static void hook_free(hook_req_t *req) {
    free(req->body);
    req->body = NULL;
}

static void webhooks_on(int port, const char *extra) {
    char json[512];
    snprintf(json, sizeof(json),
             "{\"url\": \"http://127.0.0.1:%d/api/webhooks/stripe\", "
             "\"secret\": \"" TH_WEBHOOK_SECRET "\"%s}",
             port, extra != NULL ? extra : "");
    cJSON *j = control_json("/_fake/webhooks", json);
    cJSON_Delete(j);
}

typedef struct delivery_probe_s {
    const char *event_id;
    const char *state;
} delivery_probe_t;

/* The fake's record of an event's deliveries (caller deletes *root). */
static const cJSON *delivery_of(const char *event_id, cJSON **root) {
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", "/_fake/webhooks", NULL, NULL, &r), 0);
    assert_int_equal(r.status, 200);
    *root = body_json(&r);
    th_response_free(&r);
    return at(cJSON_GetObjectItemCaseSensitive(*root, "deliveries"), event_id);
}

static int delivery_in_state(void *ud) {
    const delivery_probe_t *p = ud;
    cJSON *root;
    const cJSON *d = delivery_of(p->event_id, &root);
    int ok = d != NULL && str_at(d, "state") != NULL && strcmp(str_at(d, "state"), p->state) == 0;
    cJSON_Delete(root);
    return ok;
}

static void wait_delivery(const char *event_id, const char *want) {
    delivery_probe_t p = {event_id, want};
    if (!th_eventually(delivery_in_state, &p, 5000)) {
        fail_msg("delivery of %s never %s", event_id, want);
    }
}

/* Check a delivery's signature with rivetd's own verifier, at time now. */
static void assert_signed(const hook_req_t *req, int64_t now) {
    const char *secrets[] = {TH_WEBHOOK_SECRET};
    assert_int_equal(rv_webhook_verify(req->signature, strlen(req->signature), req->body,
                                       req->body_len, secrets, 1, now, 300),
                     0);
    const char *wrong[] = {"whsec_some_other_secret"};
    assert_int_equal(rv_webhook_verify(req->signature, strlen(req->signature), req->body,
                                       req->body_len, wrong, 1, now, 300),
                     RV_ESIG);
    /* Exactly the header rivetd's signer makes for that timestamp. */
    assert_memory_equal(req->signature, "t=", 2);
    int64_t t = strtoll(req->signature + 2, NULL, 10);
    char expect[128];
    assert_int_equal(
        rv_webhook_sign(TH_WEBHOOK_SECRET, t, req->body, req->body_len, expect, sizeof(expect)), 0);
    assert_string_equal(req->signature, expect);
}

static void test_webhook_signed_delivery(void **state) {
    int port;
    int lfd = hook_listen(&port);
    webhooks_on(port, NULL);
    cJSON_Delete(checkout_complete("{}"));
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", "/_fake/events", NULL, NULL, &r), 0);
    cJSON *all = body_json(&r);
    assert_int_equal(cJSON_GetArraySize(all), 7);
    for (int i = 0; i < 7; i++) {
        hook_req_t req;
        assert_int_equal(hook_accept(lfd, 5000, 200, &req), 0);
        assert_string_equal(req.method, "POST");
        assert_string_equal(req.path, "/api/webhooks/stripe");
        assert_string_equal(req.content_type, "application/json; charset=utf-8");
        assert_string_equal(req.user_agent, "Stripe/1.0 (+https://stripe.com/docs/webhooks)");
        assert_signed(&req, (int64_t)time(NULL));
        /* In creation order, the body exactly the recorded event. */
        char *id = hook_event_id(&req);
        assert_string_equal(id, id_at(all, i));
        assert_non_null(strstr(r.body, req.body));
        assert_int_equal(num_path(cJSON_GetArrayItem(all, i), "pending_webhooks"), 1);
        free(id);
        hook_free(&req);
    }
    th_response_free(&r);
    wait_delivery(id_at(all, 6), "delivered");
    cJSON *root;
    const cJSON *d = delivery_of(id_at(all, 0), &root);
    assert_int_equal(num_path(d, "attempts"), 1);
    assert_int_equal(num_path(d, "last_status"), 200);
    assert_string_equal(str_at(d, "type"), "customer.created");
    assert_int_equal(num_path(root, "pending"), 0);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(root, "log")), 7);
    cJSON_Delete(root);

    /* The signature's timestamp is the fake's clock. */
    set_clock("{\"now\": 1700000000}");
    cJSON *s = checkout_complete("{}");
    cJSON_Delete(s);
    for (int i = 0; i < 7; i++) {
        hook_req_t req;
        assert_int_equal(hook_accept(lfd, 5000, 200, &req), 0);
        assert_memory_equal(req.signature, "t=1700000000,", 13);
        assert_signed(&req, 1700000000);
        const char *secrets[] = {TH_WEBHOOK_SECRET};
        assert_int_equal(rv_webhook_verify(req.signature, strlen(req.signature), req.body,
                                           req.body_len, secrets, 1, (int64_t)time(NULL), 300),
                         RV_ESTALE);
        hook_free(&req);
    }
    cJSON_Delete(all);
    close(lfd);
}

static void test_webhook_retry(void **state) {
    char sub[64];
    paid_subscription(sub, sizeof(sub)); /* before the endpoint: never delivered */
    int port;
    int lfd = hook_listen(&port);
    webhooks_on(port, ", \"retry_ms\": 100, \"max_attempts\": 3");
    cJSON *a = sub_op(sub, "cancel_at_period_end", "{\"value\": true}");
    const char *id =
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "events"), 0)->valuestring;
    /* 500, 500, then 200: the same event three times, backing off. */
    static const int answers[] = {500, 500, 200};
    struct timespec prev = {0}, now;
    for (int i = 0; i < 3; i++) {
        hook_req_t req;
        assert_int_equal(hook_accept(lfd, 5000, answers[i], &req), 0);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (i > 0) {
            long ms = (now.tv_sec - prev.tv_sec) * 1000 + (now.tv_nsec - prev.tv_nsec) / 1000000;
            assert_true(ms >= 80);
        }
        prev = now;
        char *got = hook_event_id(&req);
        assert_string_equal(got, id);
        assert_signed(&req, (int64_t)time(NULL));
        free(got);
        hook_free(&req);
    }
    wait_delivery(id, "delivered");
    cJSON *root;
    const cJSON *d = delivery_of(id, &root);
    assert_int_equal(num_path(d, "attempts"), 3);
    assert_int_equal(num_path(d, "last_status"), 200);
    const cJSON *log = cJSON_GetObjectItemCaseSensitive(root, "log");
    assert_int_equal(cJSON_GetArraySize(log), 3);
    assert_int_equal(num_path(log, "0.status"), 500);
    assert_int_equal(num_path(log, "2.status"), 200);
    cJSON_Delete(root);
    cJSON_Delete(a);

    /* Failing every time: given up after max_attempts. */
    a = sub_op(sub, "cancel_at_period_end", "{\"value\": false}");
    id = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "events"), 0)->valuestring;
    for (int i = 0; i < 3; i++) {
        hook_req_t req;
        assert_int_equal(hook_accept(lfd, 5000, 503, &req), 0);
        hook_free(&req);
    }
    wait_delivery(id, "failed");
    hook_req_t extra;
    assert_int_equal(hook_accept(lfd, 700, 200, &extra), -1);
    d = delivery_of(id, &root);
    assert_int_equal(num_path(d, "attempts"), 3);
    assert_int_equal(num_path(d, "last_status"), 503);
    cJSON_Delete(root);
    cJSON_Delete(a);
    close(lfd);

    /* Nobody listening: connection errors are retried too, then given up. */
    webhooks_on(port, ", \"retry_ms\": 50, \"max_attempts\": 2");
    a = sub_op(sub, "cancel", "{}");
    id = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "events"), 0)->valuestring;
    wait_delivery(id, "failed");
    d = delivery_of(id, &root);
    assert_int_equal(num_path(d, "attempts"), 2);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(d, "last_status")));
    assert_non_null(str_at(d, "last_error"));
    cJSON_Delete(root);
    cJSON_Delete(a);
}

static void test_webhook_disabled(void **state) {
    int port;
    int lfd = hook_listen(&port);
    webhooks_on(port, ", \"enabled\": false");
    cJSON_Delete(checkout_complete("{}"));
    hook_req_t req;
    assert_int_equal(hook_accept(lfd, 500, 200, &req), -1);
    /* Recorded and listed all the same, with no webhook pending. */
    cJSON *l = list_events("?limit=100");
    assert_int_equal(list_size(l), 7);
    assert_int_equal(num_path(l, "data.0.pending_webhooks"), 0);
    cJSON_Delete(l);
    cJSON *root;
    delivery_of("x", &root);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(root, "deliveries")), 0);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "enabled")));
    cJSON_Delete(root);

    /* Enabled again: what happened meanwhile is not delivered, what happens next is. */
    webhooks_on(port, ", \"enabled\": true");
    assert_int_equal(hook_accept(lfd, 300, 200, &req), -1);
    char sub[64];
    cJSON *s = checkout_complete("{}");
    snprintf(sub, sizeof(sub), "%s", str_at(s, "subscription"));
    cJSON_Delete(s);
    for (int i = 0; i < 7; i++) {
        assert_int_equal(hook_accept(lfd, 5000, 200, &req), 0);
        hook_free(&req);
    }
    assert_int_equal(hook_accept(lfd, 300, 200, &req), -1);
    control_refused("/_fake/webhooks", "{\"url\": \"ftp://x\", \"secret\": \"whsec_x\"}", 400);
    control_refused("/_fake/webhooks", "{\"duplicate\": 2}", 400);
    control_refused("/_fake/webhooks", "{\"retry_ms\": 0}", 400);
    control_refused("/_fake/webhooks", "{\"colour\": 1}", 400);
    close(lfd);
}

static void test_webhook_duplicate_and_shuffle(void **state) {
    char sub[64];
    paid_subscription(sub, sizeof(sub));
    int port;
    int lfd = hook_listen(&port);
    webhooks_on(port, ", \"duplicate\": 1.0");
    cJSON *a = sub_op(sub, "cancel_at_period_end", "{}");
    const char *id =
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(a, "events"), 0)->valuestring;
    for (int i = 0; i < 2; i++) {
        hook_req_t req;
        assert_int_equal(hook_accept(lfd, 5000, 200, &req), 0);
        char *got = hook_event_id(&req);
        assert_string_equal(got, id);
        free(got);
        hook_free(&req);
    }
    hook_req_t req;
    assert_int_equal(hook_accept(lfd, 500, 200, &req), -1);
    cJSON *root;
    const cJSON *d = delivery_of(id, &root);
    assert_int_equal(num_path(d, "delivered"), 2);
    cJSON_Delete(root);
    cJSON_Delete(a);

    /* Shuffled: two checkouts' 14 events, each once, not in creation order. */
    webhooks_on(port, ", \"duplicate\": 0, \"shuffle\": true");
    int before = event_count();
    cJSON_Delete(checkout_complete("{}"));
    cJSON_Delete(checkout_complete("{}"));
    cJSON *all = all_events();
    int n = cJSON_GetArraySize(all) - before;
    assert_int_equal(n, 14);
    int seen[14] = {0};
    int in_order = 1;
    for (int i = 0; i < n; i++) {
        assert_int_equal(hook_accept(lfd, 5000, 200, &req), 0);
        char *got = hook_event_id(&req);
        int k = -1;
        for (int j = 0; j < n; j++) {
            if (strcmp(got, id_at(all, before + j)) == 0) {
                k = j;
            }
        }
        assert_true(k >= 0);
        seen[k]++;
        if (k != i) {
            in_order = 0;
        }
        free(got);
        hook_free(&req);
    }
    for (int j = 0; j < n; j++) {
        assert_int_equal(seen[j], 1);
    }
    assert_false(in_order);
    assert_int_equal(hook_accept(lfd, 300, 200, &req), -1);
    cJSON_Delete(all);
    close(lfd);
}

static void test_faults_on_new_routes(void **state) {
    char sub[64], path[128];
    paid_subscription(sub, sizeof(sub));
    th_response_t r;
    control("/_fake/config", "{\"fail_next\": 2, \"fail_status\": 503}", &r);
    th_response_free(&r);
    api_get("/v1/events", NULL, &r);
    assert_stripe_error(&r, 503, "api_error", NULL, NULL);
    th_response_free(&r);
    snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
    api_get(path, NULL, &r);
    assert_stripe_error(&r, 503, "api_error", NULL, NULL);
    th_response_free(&r);
    api_get(path, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
    /* A failed update records nothing. */
    int before = event_count();
    control("/_fake/config", "{\"fail_next\": 1}", &r);
    th_response_free(&r);
    post_sub(sub, "metadata[a]=b", NULL, &r);
    assert_stripe_error(&r, 503, "api_error", NULL, NULL);
    th_response_free(&r);
    assert_int_equal(event_count(), before);

    control("/_fake/config", "{\"drop_next\": 1}", &r);
    th_response_free(&r);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /v1/events HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n"), 0);
    assert_int_equal(th_wait_closed(fd, 5000), 1);
    th_close(fd);
    api_get("/v1/events", NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
}

static void test_reset_clears_state(void **state) {
    char sub[64], path[128];
    int port;
    int lfd = hook_listen(&port);
    set_clock("{\"now\": 1700000000}");
    cJSON_Delete(control_json("/_fake/config", "{\"api_version\": \"" BASIL "\"}"));
    webhooks_on(port, ", \"enabled\": false");
    paid_subscription(sub, sizeof(sub));
    assert_int_equal(reset(state), 0);

    assert_int_equal(event_count(), 0);
    cJSON *root;
    delivery_of("x", &root);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "url")));
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "enabled")));
    cJSON_Delete(root);
    th_response_t r;
    assert_int_equal(th_request(fake.port, "GET", "/_fake/clock", NULL, NULL, &r), 0);
    cJSON *c = body_json(&r);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(c, "frozen")));
    cJSON_Delete(c);
    th_response_free(&r);
    assert_int_equal(th_request(fake.port, "GET", "/_fake/config", NULL, NULL, &r), 0);
    c = body_json(&r);
    assert_string_equal(str_at(c, "api_version"), "2024-06-20");
    cJSON_Delete(c);
    th_response_free(&r);
    snprintf(path, sizeof(path), "/v1/subscriptions/%s", sub);
    api_get(path, NULL, &r);
    assert_int_equal(r.status, 404);
    th_response_free(&r);
    /* With no endpoint, new events go nowhere. */
    cJSON_Delete(checkout_complete("{}"));
    hook_req_t req;
    assert_int_equal(hook_accept(lfd, 300, 200, &req), -1);
    close(lfd);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_create_session, reset),
        cmocka_unit_test_setup(test_missing_success_url, reset),
        cmocka_unit_test_setup(test_parameter_checks, reset),
        cmocka_unit_test_setup(test_unknown_price, reset),
        cmocka_unit_test_setup(test_bad_api_key, reset),
        cmocka_unit_test_setup(test_retrieve, reset),
        cmocka_unit_test_setup(test_idempotency, reset),
        cmocka_unit_test_setup(test_fail_next, reset),
        cmocka_unit_test_setup(test_drop_next, reset),
        cmocka_unit_test_setup(test_hang_next, reset),
        cmocka_unit_test_setup(test_latency, reset),
        cmocka_unit_test_setup(test_complete_and_portal, reset),
        cmocka_unit_test_setup(test_keep_alive_and_pipelining, reset),
        cmocka_unit_test_setup(test_request_log, reset),
        cmocka_unit_test_setup(test_clock, reset),
        cmocka_unit_test_setup(test_complete_paid_events, reset),
        cmocka_unit_test_setup(test_complete_unpaid_settle, reset),
        cmocka_unit_test_setup(test_complete_trial, reset),
        cmocka_unit_test_setup(test_change_plan, reset),
        cmocka_unit_test_setup(test_renew_fail_recover, reset),
        cmocka_unit_test_setup(test_cancel_ops, reset),
        cmocka_unit_test_setup(test_subscription_api, reset),
        cmocka_unit_test_setup(test_api_versions, reset),
        cmocka_unit_test_setup(test_events_list_paging, reset),
        cmocka_unit_test_setup(test_events_list_filters, reset),
        cmocka_unit_test_setup(test_event_retrieve, reset),
        cmocka_unit_test_setup(test_events_forget, reset),
        cmocka_unit_test_setup(test_webhook_signed_delivery, reset),
        cmocka_unit_test_setup(test_webhook_retry, reset),
        cmocka_unit_test_setup(test_webhook_disabled, reset),
        cmocka_unit_test_setup(test_webhook_duplicate_and_shuffle, reset),
        cmocka_unit_test_setup(test_faults_on_new_routes, reset),
        cmocka_unit_test_setup(test_reset_clears_state, reset),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
