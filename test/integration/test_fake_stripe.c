/* Tests of the fake Stripe server (test/fake_stripe.py): the other integration tests and the
 * benchmarks trust it to answer like Stripe, so its wire format, validation, idempotency and
 * fault injection are checked here over real sockets. */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "harness.h"

#define AUTH "Authorization: Bearer " TH_STRIPE_KEY "\r\n"
#define FORM "Content-Type: application/x-www-form-urlencoded\r\n"
#define SUCCESS_URL "https%3A%2F%2Frivet.io%2Fsuccess%3Fsession_id%3D%7BCHECKOUT_SESSION_ID%7D"
#define CHECKOUT_FORM                                                                           \
    "mode=subscription&payment_method_types%5B0%5D=card"                                        \
    "&line_items%5B0%5D%5Bprice%5D=" TH_PRICE_PRO "&line_items%5B0%5D%5Bquantity%5D=1"          \
    "&customer_email=ada%40example.com&success_url=" SUCCESS_URL                                \
    "&cancel_url=https%3A%2F%2Frivet.io%2Fpricing&metadata%5Btier%5D=pro"                       \
    "&metadata%5Bsource%5D=rivet_landing&subscription_data%5Bmetadata%5D%5Btier%5D=pro"         \
    "&allow_promotion_codes=true"

static th_proc_t fake;

static int group_setup(void **state)
{
    const char *args[] = {"--prices", TH_PRICE_BASIC "," TH_PRICE_PRO "," TH_PRICE_ENTERPRISE,
                          NULL};
    return th_fake_stripe_start(&fake, args);
}

static int group_teardown(void **state)
{
    /* The fake must exit cleanly on SIGTERM. */
    return th_stop(&fake, SIGTERM, 5000) == 0 ? 0 : -1;
}

static int reset(void **state)
{
    th_response_t r;
    if (th_request(fake.port, "POST", "/_fake/reset", NULL, "", &r) != 0) {
        return -1;
    }
    int status = r.status;
    th_response_free(&r);
    return status == 200 ? 0 : -1;
}

/* POST a form to the Stripe API with the test key and extra header lines. */
static void post_form(const char *path, const char *form, const char *headers, th_response_t *r)
{
    char h[1024];
    snprintf(h, sizeof(h), AUTH FORM "%s", headers != NULL ? headers : "");
    assert_int_equal(th_request(fake.port, "POST", path, h, form, r), 0);
}

static void control(const char *path, const char *json, th_response_t *r)
{
    assert_int_equal(th_request(fake.port, "POST", path, NULL, json, r), 0);
    assert_int_equal(r->status, 200);
}

static cJSON *body_json(const th_response_t *r)
{
    cJSON *j = cJSON_Parse(r->body);
    assert_non_null(j);
    return j;
}

static const char *str_at(const cJSON *obj, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Assert a Stripe error answer: status, error.type, and error.code / error.param when given. */
static void assert_stripe_error(const th_response_t *r, int status, const char *type,
                                const char *code, const char *param)
{
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
static char *create_session(const char *form)
{
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

static void test_create_session(void **state)
{
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

static void test_missing_success_url(void **state)
{
    th_response_t r;
    post_form("/v1/checkout/sessions",
              "mode=subscription&line_items[0][price]=" TH_PRICE_PRO "&line_items[0][quantity]=1",
              NULL, &r);
    assert_stripe_error(&r, 400, "invalid_request_error", "parameter_missing", "success_url");
    th_response_free(&r);
}

static void test_parameter_checks(void **state)
{
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

static void test_unknown_price(void **state)
{
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

static void test_bad_api_key(void **state)
{
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

    assert_int_equal(th_request(fake.port, "POST", "/v1/checkout/sessions", FORM, CHECKOUT_FORM,
                                &r),
                     0);
    assert_stripe_error(&r, 401, "invalid_request_error", NULL, NULL);
    th_response_free(&r);
}

static void test_retrieve(void **state)
{
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

    assert_int_equal(th_request(fake.port, "GET", "/v1/checkout/sessions/cs_test_nope", AUTH,
                                NULL, &r),
                     0);
    assert_stripe_error(&r, 404, "invalid_request_error", "resource_missing", NULL);
    assert_non_null(strstr(r.body, "No such checkout.session: 'cs_test_nope'"));
    th_response_free(&r);
    free(id);
}

static void test_idempotency(void **state)
{
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

static void test_fail_next(void **state)
{
    th_response_t r;
    control("/_fake/config", "{\"fail_next\": 1, \"fail_status\": 500, \"should_retry\": \"false\"}",
            &r);
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

static void test_drop_next(void **state)
{
    th_response_t r;
    control("/_fake/config", "{\"drop_next\": 1}", &r);
    th_response_free(&r);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /v1/checkout/sessions/cs_x HTTP/1.1\r\nHost: x\r\n" AUTH
                                     "\r\n"),
                     0);
    assert_int_equal(th_wait_closed(fd, 5000), 1);
    th_close(fd);
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
}

static void test_hang_next(void **state)
{
    th_response_t r;
    control("/_fake/config", "{\"hang_next\": 1}", &r);
    th_response_free(&r);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /v1/checkout/sessions/cs_x HTTP/1.1\r\nHost: x\r\n" AUTH
                                     "\r\n"),
                     0);
    assert_int_equal(th_read_response(fd, &r, 0, 300), -1);
    assert_int_equal(th_wait_closed(fd, 100), 0);
    th_close(fd);
    post_form("/v1/checkout/sessions", CHECKOUT_FORM, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
}

static void test_latency(void **state)
{
    th_response_t r;
    control("/_fake/config", "{\"latency_ms\": 200}", &r);
    th_response_free(&r);
    int fd = th_connect(fake.port);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, "GET /v1/checkout/sessions/cs_x HTTP/1.1\r\nHost: x\r\n" AUTH
                                     "\r\n"),
                     0);
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

static void test_complete_and_portal(void **state)
{
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

static void test_keep_alive_and_pipelining(void **state)
{
    char *id = create_session(CHECKOUT_FORM);
    char one[512], two[1024];
    snprintf(one, sizeof(one),
             "GET /v1/checkout/sessions/%s HTTP/1.1\r\nHost: x\r\n" AUTH "\r\n", id);
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

static void test_request_log(void **state)
{
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

int main(void)
{
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
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
