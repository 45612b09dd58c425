/* End-to-end tests of the Stripe webhook: a real rivetd and a real redis-server on free loopback
 * ports, events from test/events/ signed with rv_webhook_sign and sent over real sockets, and
 * the provisioning stream inspected in Redis afterwards. Most tests share one rivetd and one
 * Redis (emptied before each test); those that need another configuration, or a Redis that
 * stops, pauses or comes back, start their own. Every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "rivet/common.h"
#include "rivet/webhook_sig.h"

#define STREAM "rivet:provisioning"
#define WEBHOOK "/api/webhooks/stripe"
#define WAIT_MS 10000
#define STOP_MS 5000
#define MAX_EVENT_FILE (1024 * 1024)
#define MAX_ENTRIES 16

/* The price ids of the example events in test/events/, which conf/rivet.local.env uses too. */
#define PRICE_BASIC "price_basic_local"
#define PRICE_PRO "price_pro_local"
#define PRICE_ENTERPRISE "price_enterprise_local"
/* Customer and subscription of the example events in test/events/. */
#define EV_CUSTOMER "cus_QXg1o8vcGmoR32"
#define EV_SUBSCRIPTION "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"

#define SECRET_OLD "whsec_rotation_old_0123456789abcdef"
#define SECRET_NEW "whsec_rotation_new_fedcba9876543210"

/* The shared processes, and the extra ones a test starts (stopped by the teardown when a test
 * fails before stopping them itself). */
typedef struct world_s {
    th_proc_t redis;
    th_proc_t rivetd;
    th_proc_t xredis;
    th_proc_t xrivetd;
    char redis_url[64];
} world_t;

static world_t W;
static unsigned id_counter;

/* ---- processes ----------------------------------------------------------------------------- */

/* The environment of a rivetd that talks to the Redis on port: the prices of test/events/, plus
 * extra "K=V" entries (NULL-terminated, may be NULL). */
static int rivetd_start(th_proc_t *p, int redis_port, const char *const extra[]) {
    char url[64];
    snprintf(url, sizeof url, "REDIS_URL=redis://127.0.0.1:%d/0", redis_port);
    const char *env[24] = {url, "STRIPE_PRICE_BASIC=" PRICE_BASIC, "STRIPE_PRICE_PRO=" PRICE_PRO,
                           "STRIPE_PRICE_ENTERPRISE=" PRICE_ENTERPRISE};
    size_t n = 4;
    for (size_t i = 0; extra != NULL && extra[i] != NULL && n < RV_ARRAY_LEN(env) - 1; i++) {
        env[n++] = extra[i];
    }
    env[n] = NULL;
    return th_rivetd_start(p, env);
}

/* redis-server on a given port, as the harness starts it (no persistence). */
static void redis_spawn(th_proc_t *p, int port) {
    char portstr[16];
    snprintf(portstr, sizeof portstr, "%d", port);
    const char *argv[] = {"redis-server", "--port", portstr, "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--daemonize", "no", NULL};
    assert_int_equal(th_spawn(p, argv, NULL), 0);
    p->port = port;
    if (th_wait_port(port, WAIT_MS) != 0) fail_msg("redis-server did not listen on %d", port);
}

/* Stop a rivetd and require a clean exit: status 0, so no sanitizer report and no crash. */
static void rivetd_stop_clean(th_proc_t *p) {
    int st = th_stop(p, SIGTERM, STOP_MS);
    p->pid = 0;
    if (st != 0) fail_msg("rivetd exited with status %d (log above)", st);
}

/* ---- Redis inspection ---------------------------------------------------------------------- */

static long long redis_int(int port, const char *fmt, const char *arg) {
    char out[64];
    if (th_redis(port, out, sizeof out, fmt, arg) != 0) fail_msg("redis on %d unreachable", port);
    char *end;
    long long v = strtoll(out, &end, 10);
    if (end == out || *end != '\0') fail_msg("not an integer from redis: \"%s\"", out);
    return v;
}

static long long xlen(int port, const char *stream) {
    return redis_int(port, "XLEN %s", stream);
}

/* HGET key field into out ("(nil)" when absent). */
static void hget(int port, const char *key, const char *field, char *out, size_t outlen) {
    if (th_redis(port, out, outlen, "HGET %s %s", key, field) != 0) fail_msg("redis unreachable");
}

typedef struct entry_s {
    char id[64];
    char type[64];
    char event_id[256];
    char *data; /* malloc'd */
} entry_t;

static void entries_free(entry_t *e, int n) {
    for (int i = 0; i < n; i++) free(e[i].data);
}

static void copy_field(char *dst, size_t size, const redisReply *v) {
    assert_int_equal(v->type, REDIS_REPLY_STRING);
    assert_true(v->len < size);
    memcpy(dst, v->str, v->len);
    dst[v->len] = '\0';
}

/* Read the whole stream. Every entry must have exactly the fields type, stripe_event_id and
 * data. Returns the number of entries. */
static int read_stream(int port, const char *stream, entry_t *out, int max) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_non_null(c);
    if (c->err) {
        redisFree(c);
        fail_msg("redis on %d unreachable", port);
    }
    redisReply *r = redisCommand(c, "XRANGE %s - +", stream);
    redisFree(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    int n = (int)r->elements;
    if (n > max) {
        freeReplyObject(r);
        fail_msg("%d entries in %s, more than expected", n, stream);
    }
    memset(out, 0, sizeof *out * (size_t)max);
    for (int i = 0; i < n; i++) {
        const redisReply *e = r->element[i];
        assert_int_equal(e->type, REDIS_REPLY_ARRAY);
        assert_int_equal(e->elements, 2);
        copy_field(out[i].id, sizeof out[i].id, e->element[0]);
        const redisReply *f = e->element[1];
        assert_int_equal(f->type, REDIS_REPLY_ARRAY);
        assert_int_equal(f->elements, 6);
        int seen = 0;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            const char *name = f->element[k]->str;
            const redisReply *v = f->element[k + 1];
            if (strcmp(name, "type") == 0) {
                copy_field(out[i].type, sizeof out[i].type, v);
                seen |= 1;
            } else if (strcmp(name, "stripe_event_id") == 0) {
                copy_field(out[i].event_id, sizeof out[i].event_id, v);
                seen |= 2;
            } else if (strcmp(name, "data") == 0) {
                assert_int_equal(v->type, REDIS_REPLY_STRING);
                out[i].data = strndup(v->str, v->len);
                assert_non_null(out[i].data);
                seen |= 4;
            } else {
                fail_msg("unexpected field \"%s\" in a stream entry", name);
            }
        }
        assert_int_equal(seen, 7);
    }
    freeReplyObject(r);
    return n;
}

/* The data field of an entry against what the event should have produced. tier may be NULL
 * (not checked). */
static void check_data(const char *data, const char *type, const char *event_id,
                       const char *stripe_type, const char *tier) {
    cJSON *d = cJSON_Parse(data);
    if (!cJSON_IsObject(d)) fail_msg("data is not a JSON object: %s", data);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, "v");
    assert_true(cJSON_IsNumber(v));
    assert_int_equal(v->valueint, 1);
    const char *keys[] = {"type", "stripe_event_id", "stripe_event_type", "customer_id", "tier"};
    const char *want[] = {type, event_id, stripe_type, EV_CUSTOMER, tier};
    for (size_t i = 0; i < RV_ARRAY_LEN(keys); i++) {
        if (want[i] == NULL) continue;
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(d, keys[i]);
        if (!cJSON_IsString(s) || strcmp(s->valuestring, want[i]) != 0) {
            cJSON_Delete(d);
            fail_msg("data.%s is not \"%s\" in %s", keys[i], want[i], data);
        }
    }
    assert_true(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(d, "created")));
    assert_true(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(d, "livemode")));
    cJSON_Delete(d);
}

/* ---- events -------------------------------------------------------------------------------- */

static void fresh_id(char *out, size_t size, const char *tag) {
    snprintf(out, size, "evt_itest_%s_%ld_%u", tag, (long)getpid(), ++id_counter);
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) fail_msg("cannot open %s (run from the repository root)", path);
    char *buf = malloc(MAX_EVENT_FILE + 1);
    assert_non_null(buf);
    size_t n = fread(buf, 1, MAX_EVENT_FILE + 1, f);
    fclose(f);
    assert_true(n > 0 && n <= MAX_EVENT_FILE);
    buf[n] = '\0';
    return buf;
}

/* test/events/<stripe_type>.json with its id replaced, and its created too when created >= 0.
 * The caller deletes it. */
static cJSON *load_event(const char *stripe_type, const char *id, int64_t created) {
    char path[256];
    snprintf(path, sizeof path, "test/events/%s.json", stripe_type);
    char *text = read_file(path);
    cJSON *ev = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(ev)) fail_msg("%s is not a JSON object", path);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
    assert_true(cJSON_IsString(type));
    assert_string_equal(type->valuestring, stripe_type);
    assert_true(cJSON_ReplaceItemInObjectCaseSensitive(ev, "id", cJSON_CreateString(id)));
    if (created >= 0) {
        cJSON_ReplaceItemInObjectCaseSensitive(ev, "created", cJSON_CreateNumber((double)created));
    }
    return ev;
}

static cJSON *object_of(cJSON *ev) {
    cJSON *o = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ev, "data"),
                                                "object");
    assert_true(cJSON_IsObject(o));
    return o;
}

static void set_string(cJSON *o, const char *key, const char *value) {
    assert_true(cJSON_ReplaceItemInObjectCaseSensitive(o, key, cJSON_CreateString(value)));
}

/* Set the price and status of a subscription event's object. */
static void set_subscription(cJSON *ev, const char *price, const char *status) {
    cJSON *o = object_of(ev);
    set_string(o, "status", status);
    cJSON *items = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "items"),
                                                    "data");
    cJSON *price_obj = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(items, 0), "price");
    assert_true(cJSON_IsObject(price_obj));
    set_string(price_obj, "id", price);
}

/* Serialise and delete ev. The caller frees the text. */
static char *event_text(cJSON *ev) {
    char *s = cJSON_PrintUnformatted(ev);
    cJSON_Delete(ev);
    assert_non_null(s);
    return s;
}

static char *event_from_file(const char *stripe_type, const char *id) {
    return event_text(load_event(stripe_type, id, -1));
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

/* POST body with these extra header lines (may be NULL). */
static void post_raw(int port, const char *headers, const char *body, th_response_t *r) {
    char h[2048];
    snprintf(h, sizeof h, "Content-Type: application/json; charset=utf-8\r\n%s",
             headers != NULL ? headers : "");
    if (th_request(port, "POST", WEBHOOK, h, body, r) != 0) {
        fail_msg("no answer from rivetd on port %d", port);
    }
}

static void sig_header(char *out, size_t size, const char *secret, int64_t t, const char *body) {
    char sig[128];
    assert_int_equal(rv_webhook_sign(secret, t, body, strlen(body), sig, sizeof sig), 0);
    snprintf(out, size, "Stripe-Signature: %s\r\n", sig);
}

static void post_signed_at(int port, const char *secret, int64_t t, const char *body,
                           th_response_t *r) {
    char h[256];
    sig_header(h, sizeof h, secret, t, body);
    post_raw(port, h, body, r);
}

static void post_signed(int port, const char *secret, const char *body, th_response_t *r) {
    post_signed_at(port, secret, (int64_t)time(NULL), body, r);
}

static void post_event(const char *body, th_response_t *r) {
    post_signed(W.rivetd.port, TH_WEBHOOK_SECRET, body, r);
}

/* The response must be 200 {"status":"ok","event_type":stripe_type}. Frees r. */
static void expect_ok(th_response_t *r, const char *stripe_type) {
    if (r->status != 200) {
        fail_msg("status %d, body %s; expected 200 for %s", r->status, r->body, stripe_type);
    }
    const char *ct = th_header(r, "Content-Type");
    assert_non_null(ct);
    assert_non_null(strstr(ct, "application/json"));
    cJSON *j = cJSON_Parse(r->body);
    assert_true(cJSON_IsObject(j));
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    const cJSON *et = cJSON_GetObjectItemCaseSensitive(j, "event_type");
    int ok = cJSON_IsString(st) && strcmp(st->valuestring, "ok") == 0 && cJSON_IsString(et) &&
             strcmp(et->valuestring, stripe_type) == 0 && cJSON_GetArraySize(j) == 2;
    cJSON_Delete(j);
    if (!ok) fail_msg("unexpected answer %s for %s", r->body, stripe_type);
    th_response_free(r);
}

/* The response must be status with {"detail":detail}. Frees r. */
static void expect_detail(th_response_t *r, int status, const char *detail) {
    if (r->status != status) {
        fail_msg("status %d, body %s; expected %d \"%s\"", r->status, r->body, status, detail);
    }
    cJSON *j = cJSON_Parse(r->body);
    assert_true(cJSON_IsObject(j));
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
    int ok = cJSON_IsString(d) && strcmp(d->valuestring, detail) == 0;
    cJSON_Delete(j);
    if (!ok) fail_msg("unexpected answer %s; expected detail \"%s\"", r->body, detail);
    th_response_free(r);
}

static void expect_bad_signature(th_response_t *r) {
    expect_detail(r, 400, "Invalid signature");
}

static int get_status(int port, const char *path) {
    th_response_t r;
    if (th_request(port, "GET", path, NULL, NULL, &r) != 0) return -1;
    int st = r.status;
    th_response_free(&r);
    return st;
}

typedef struct ready_probe_s {
    int port;
    int want;
} ready_probe_t;

static int ready_is(void *ud) {
    ready_probe_t *p = ud;
    return get_status(p->port, "/ready") == p->want;
}

static void wait_ready(const th_proc_t *rivetd, int want) {
    ready_probe_t p = {rivetd->port, want};
    if (!th_eventually(ready_is, &p, WAIT_MS)) fail_msg("/ready never answered %d", want);
}

/* ---- fixtures ------------------------------------------------------------------------------ */

static int group_setup(void **state) {
    RV_UNUSED(state);
    memset(&W, 0, sizeof W);
    if (th_redis_start(&W.redis) != 0) return -1;
    if (rivetd_start(&W.rivetd, W.redis.port, NULL) != 0) return -1;
    ready_probe_t p = {W.rivetd.port, 200};
    return th_eventually(ready_is, &p, WAIT_MS) ? 0 : -1;
}

static int group_teardown(void **state) {
    RV_UNUSED(state);
    int st = th_stop(&W.rivetd, SIGTERM, STOP_MS);
    th_stop(&W.redis, SIGTERM, STOP_MS);
    if (st != 0) fprintf(stderr, "shared rivetd exited with status %d\n", st);
    return st == 0 ? 0 : -1;
}

static int setup(void **state) {
    RV_UNUSED(state);
    char out[64];
    if (th_redis(W.redis.port, out, sizeof out, "FLUSHALL") != 0 || strcmp(out, "OK") != 0) {
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    RV_UNUSED(state);
    char out[64];
    /* A test that failed during a pause must not leave the shared Redis paused. */
    th_redis(W.redis.port, out, sizeof out, "CLIENT UNPAUSE");
    if (W.xrivetd.pid > 0) th_stop(&W.xrivetd, SIGTERM, STOP_MS);
    if (W.xredis.pid > 0) th_stop(&W.xredis, SIGTERM, STOP_MS);
    memset(&W.xrivetd, 0, sizeof W.xrivetd);
    memset(&W.xredis, 0, sizeof W.xredis);
    return 0;
}

/* ---- valid events, deduplication, mapping -------------------------------------------------- */

static void test_valid_event_enqueued_once(void **state) {
    RV_UNUSED(state);
    char id[64];
    fresh_id(id, sizeof id, "valid");
    char *body = event_from_file("checkout.session.completed", id);
    th_response_t r;
    post_event(body, &r);
    expect_ok(&r, "checkout.session.completed");

    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].type, "user.provision");
    assert_string_equal(e[0].event_id, id);
    check_data(e[0].data, "user.provision", id, "checkout.session.completed", "pro");
    cJSON *d = cJSON_Parse(e[0].data);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(d, "email")->valuestring,
                        "example@example.com");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(d, "subscription_id")->valuestring,
                        EV_SUBSCRIPTION);
    cJSON_Delete(d);
    entries_free(e, n);
    free(body);
}

static void test_duplicate_delivery_enqueued_once(void **state) {
    RV_UNUSED(state);
    char id[64];
    fresh_id(id, sizeof id, "dup");
    char *body = event_from_file("invoice.payment_succeeded", id);
    th_response_t r;
    post_event(body, &r);
    expect_ok(&r, "invoice.payment_succeeded");
    assert_int_equal(xlen(W.redis.port, STREAM), 1);

    /* Stripe's retry carries the same body under a new signature time. */
    post_signed_at(W.rivetd.port, TH_WEBHOOK_SECRET, (int64_t)time(NULL) - 5, body, &r);
    expect_ok(&r, "invoice.payment_succeeded");
    post_event(body, &r);
    expect_ok(&r, "invoice.payment_succeeded");
    assert_int_equal(xlen(W.redis.port, STREAM), 1);
    free(body);
}

static void test_six_types_map(void **state) {
    RV_UNUSED(state);
    /* In the order Stripe would send them for one customer's life, so that the ordered
     * subscription.updated is not older than what came before it. */
    static const struct {
        const char *stripe_type, *type, *tier;
    } cases[] = {
        {"checkout.session.completed", "user.provision", "pro"},
        {"customer.subscription.created", "subscription.created", "pro"},
        {"invoice.payment_succeeded", "payment.succeeded", "pro"},
        {"customer.subscription.updated", "subscription.updated", "enterprise"},
        {"invoice.payment_failed", "payment.failed", "enterprise"},
        {"customer.subscription.deleted", "user.deprovision", "enterprise"},
    };
    char ids[RV_ARRAY_LEN(cases)][64];
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        fresh_id(ids[i], sizeof ids[i], "six");
        char *body = event_from_file(cases[i].stripe_type, ids[i]);
        th_response_t r;
        post_event(body, &r);
        expect_ok(&r, cases[i].stripe_type);
        free(body);
    }
    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, (int)RV_ARRAY_LEN(cases));
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        if (strcmp(e[i].type, cases[i].type) != 0) {
            fail_msg("%s became \"%s\", expected \"%s\"", cases[i].stripe_type, e[i].type,
                     cases[i].type);
        }
        assert_string_equal(e[i].event_id, ids[i]);
        check_data(e[i].data, cases[i].type, ids[i], cases[i].stripe_type, cases[i].tier);
    }
    entries_free(e, n);

    /* The entitlement follows the newest event: the subscription was deleted. */
    char v[64];
    hget(W.redis.port, "rivet:customer:" EV_CUSTOMER, "status", v, sizeof v);
    assert_string_equal(v, "canceled");
}

static void test_unknown_type_acknowledged(void **state) {
    RV_UNUSED(state);
    char id[64];
    fresh_id(id, sizeof id, "unknown");
    cJSON *ev = load_event("customer.subscription.created", id, -1);
    set_string(ev, "type", "customer.subscription.trial_will_end");
    char *body = event_text(ev);
    th_response_t r;
    post_event(body, &r);
    expect_ok(&r, "customer.subscription.trial_will_end");
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    assert_int_equal(redis_int(W.redis.port, "EXISTS %s", "rivet:customer:" EV_CUSTOMER), 0);
    free(body);
}

static void test_payment_mode_checkout_not_enqueued(void **state) {
    RV_UNUSED(state);
    char id[64];
    fresh_id(id, sizeof id, "payment");
    cJSON *ev = load_event("checkout.session.completed", id, -1);
    set_string(object_of(ev), "mode", "payment");
    char *body = event_text(ev);
    th_response_t r;
    post_event(body, &r);
    expect_ok(&r, "checkout.session.completed");
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    assert_int_equal(redis_int(W.redis.port, "EXISTS %s", "rivet:customer:" EV_CUSTOMER), 0);
    free(body);
}

static void test_out_of_order_update_dropped(void **state) {
    RV_UNUSED(state);
    const int64_t t = 1750000000;
    char newer[64], older[64], newest[64];
    fresh_id(newer, sizeof newer, "newer");
    fresh_id(older, sizeof older, "older");
    fresh_id(newest, sizeof newest, "newest");
    const char *type = "customer.subscription.updated";

    cJSON *ev = load_event(type, newer, t + 10);
    set_subscription(ev, PRICE_PRO, "active");
    char *body1 = event_text(ev);
    ev = load_event(type, older, t);
    set_subscription(ev, PRICE_BASIC, "past_due");
    char *body2 = event_text(ev);

    th_response_t r;
    post_event(body1, &r);
    expect_ok(&r, type);
    post_event(body2, &r);
    expect_ok(&r, type);

    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].event_id, newer);
    check_data(e[0].data, "subscription.updated", newer, type, "pro");
    entries_free(e, n);
    char v[64];
    const char *key = "rivet:customer:" EV_CUSTOMER;
    hget(W.redis.port, key, "tier", v, sizeof v);
    assert_string_equal(v, "pro");
    hget(W.redis.port, key, "status", v, sizeof v);
    assert_string_equal(v, "active");

    /* A later one does get through and moves the entitlement, so the checks above could fail. */
    ev = load_event(type, newest, t + 20);
    set_subscription(ev, PRICE_ENTERPRISE, "active");
    char *body3 = event_text(ev);
    post_event(body3, &r);
    expect_ok(&r, type);
    assert_int_equal(xlen(W.redis.port, STREAM), 2);
    hget(W.redis.port, key, "tier", v, sizeof v);
    assert_string_equal(v, "enterprise");
    free(body1);
    free(body2);
    free(body3);
}

/* ---- signatures ---------------------------------------------------------------------------- */

/* A valid event body for the signature tests; nothing may be enqueued from a rejected one. */
static char *sig_body(char *id, size_t idsize) {
    fresh_id(id, idsize, "sig");
    return event_from_file("customer.subscription.created", id);
}

static void test_signature_missing(void **state) {
    RV_UNUSED(state);
    char id[64];
    char *body = sig_body(id, sizeof id);
    th_response_t r;
    post_raw(W.rivetd.port, NULL, body, &r);
    expect_bad_signature(&r);
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    free(body);
}

static void test_signature_header_repeated(void **state) {
    RV_UNUSED(state);
    char id[64], h[256];
    char *body = sig_body(id, sizeof id);
    /* Both lines are valid on their own: the repetition itself is refused. */
    sig_header(h, sizeof h, TH_WEBHOOK_SECRET, (int64_t)time(NULL), body);
    char two[512];
    snprintf(two, sizeof two, "%s%s", h, h);
    th_response_t r;
    post_raw(W.rivetd.port, two, body, &r);
    expect_bad_signature(&r);
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    post_raw(W.rivetd.port, h, body, &r);
    expect_ok(&r, "customer.subscription.created");
    free(body);
}

static void test_signature_wrong_secret(void **state) {
    RV_UNUSED(state);
    char id[64];
    char *body = sig_body(id, sizeof id);
    th_response_t r;
    post_signed(W.rivetd.port, "whsec_not_the_configured_secret", body, &r);
    expect_bad_signature(&r);
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    free(body);
}

static void test_signature_time_tolerance(void **state) {
    RV_UNUSED(state);
    char id[64];
    char *body = sig_body(id, sizeof id);
    int64_t now = (int64_t)time(NULL);
    th_response_t r;
    /* WEBHOOK_TOLERANCE is 300 s by default: one second beyond it either way is refused. */
    post_signed_at(W.rivetd.port, TH_WEBHOOK_SECRET, now - 301, body, &r);
    expect_bad_signature(&r);
    post_signed_at(W.rivetd.port, TH_WEBHOOK_SECRET, now + 301, body, &r);
    expect_bad_signature(&r);
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    /* Within it, both ways, the same body is accepted. */
    post_signed_at(W.rivetd.port, TH_WEBHOOK_SECRET, now - 290, body, &r);
    expect_ok(&r, "customer.subscription.created");
    post_signed_at(W.rivetd.port, TH_WEBHOOK_SECRET, now + 290, body, &r);
    expect_ok(&r, "customer.subscription.created");
    assert_int_equal(xlen(W.redis.port, STREAM), 1);
    free(body);
}

static void test_signature_v0_only(void **state) {
    RV_UNUSED(state);
    char id[64], sig[128], h[256];
    char *body = sig_body(id, sizeof id);
    assert_int_equal(rv_webhook_sign(TH_WEBHOOK_SECRET, (int64_t)time(NULL), body, strlen(body),
                                     sig, sizeof sig),
                     0);
    /* The right digest under the wrong scheme name. */
    char *v1 = strstr(sig, ",v1=");
    assert_non_null(v1);
    v1[2] = '0';
    snprintf(h, sizeof h, "Stripe-Signature: %s\r\n", sig);
    th_response_t r;
    post_raw(W.rivetd.port, h, body, &r);
    expect_bad_signature(&r);
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    free(body);
}

static void test_signature_body_changed(void **state) {
    RV_UNUSED(state);
    char id[64], h[256];
    char *body = sig_body(id, sizeof id);
    sig_header(h, sizeof h, TH_WEBHOOK_SECRET, (int64_t)time(NULL), body);
    /* One byte of the status, still valid JSON: "active" -> "bctive". */
    char *changed = strdup(body);
    assert_non_null(changed);
    char *p = strstr(changed, "\"status\":\"active\"");
    assert_non_null(p);
    p[10] = 'b';
    th_response_t r;
    post_raw(W.rivetd.port, h, changed, &r);
    expect_bad_signature(&r);
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    post_raw(W.rivetd.port, h, body, &r);
    expect_ok(&r, "customer.subscription.created");
    assert_int_equal(xlen(W.redis.port, STREAM), 1);
    free(changed);
    free(body);
}

static void test_signature_rotated_secret(void **state) {
    RV_UNUSED(state);
    const char *env[] = {"STRIPE_WEBHOOK_SECRET=" SECRET_OLD "," SECRET_NEW, NULL};
    assert_int_equal(rivetd_start(&W.xrivetd, W.redis.port, env), 0);
    wait_ready(&W.xrivetd, 200);
    char id1[64], id2[64], id3[64];
    char *b1 = sig_body(id1, sizeof id1);
    char *b2 = sig_body(id2, sizeof id2);
    char *b3 = sig_body(id3, sizeof id3);
    th_response_t r;
    post_signed(W.xrivetd.port, SECRET_NEW, b1, &r);
    expect_ok(&r, "customer.subscription.created");
    post_signed(W.xrivetd.port, SECRET_OLD, b2, &r);
    expect_ok(&r, "customer.subscription.created");
    /* A secret outside the list still fails, even the one the shared rivetd uses. */
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, b3, &r);
    expect_bad_signature(&r);
    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 2);
    assert_string_equal(e[0].event_id, id1);
    assert_string_equal(e[1].event_id, id2);
    entries_free(e, n);
    rivetd_stop_clean(&W.xrivetd);
    free(b1);
    free(b2);
    free(b3);
}

/* ---- payloads ------------------------------------------------------------------------------ */

static void test_signed_non_json_refused(void **state) {
    RV_UNUSED(state);
    th_response_t r;
    post_signed(W.rivetd.port, TH_WEBHOOK_SECRET, "this is not JSON {", &r);
    expect_detail(&r, 400, "Invalid payload");
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
}

static void test_signed_json_not_event_refused(void **state) {
    RV_UNUSED(state);
    static const char *bodies[] = {
        "{\"hello\":\"world\"}",
        "[1,2,3]",
        "\"evt_string\"",
        /* An event envelope without data.object. */
        "{\"id\":\"evt_itest_noobj\",\"object\":\"event\",\"type\":"
        "\"customer.subscription.created\",\"created\":1721954054,\"data\":{}}",
        /* created is not a number. */
        "{\"id\":\"evt_itest_nocreated\",\"object\":\"event\",\"type\":"
        "\"customer.subscription.created\",\"created\":\"yesterday\",\"data\":{\"object\":{}}}",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bodies); i++) {
        th_response_t r;
        post_signed(W.rivetd.port, TH_WEBHOOK_SECRET, bodies[i], &r);
        if (r.status != 400) fail_msg("%s: status %d, expected 400", bodies[i], r.status);
        expect_detail(&r, 400, "Invalid payload");
    }
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
}

/* ---- Redis trouble ------------------------------------------------------------------------- */

static void test_redis_down_then_back(void **state) {
    RV_UNUSED(state);
    assert_int_equal(th_redis_start(&W.xredis), 0);
    int port = W.xredis.port;
    assert_int_equal(rivetd_start(&W.xrivetd, port, NULL), 0);
    wait_ready(&W.xrivetd, 200);

    assert_true(th_stop(&W.xredis, SIGTERM, STOP_MS) >= 0);
    W.xredis.pid = 0;
    char id[64];
    fresh_id(id, sizeof id, "down");
    char *body = event_from_file("customer.subscription.created", id);
    th_response_t r;
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    assert_non_null(th_header(&r, "Retry-After"));
    expect_detail(&r, 503, "Provisioning queue unavailable; retry later");
    wait_ready(&W.xrivetd, 503);
    /* Still down after rivetd has noticed: refused up front, not taken and lost. */
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    assert_int_equal(r.status, 503);
    th_response_free(&r);

    /* Back on the same port, empty: rivetd reconnects by itself and Stripe's retry lands. */
    redis_spawn(&W.xredis, port);
    wait_ready(&W.xrivetd, 200);
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    expect_ok(&r, "customer.subscription.created");
    entry_t e[MAX_ENTRIES];
    int n = read_stream(port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].event_id, id);
    entries_free(e, n);
    rivetd_stop_clean(&W.xrivetd);
    free(body);
}

static int64_t mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct retry_s {
    int port;
    const char *body;
    int statuses[64]; /* what each try got, for the failure message */
    int tries;
} retry_t;

/* One Stripe retry: 1 once it was answered 200. */
static int delivered(void *ud) {
    retry_t *t = ud;
    th_response_t r;
    post_signed(t->port, TH_WEBHOOK_SECRET, t->body, &r);
    if (t->tries < (int)RV_ARRAY_LEN(t->statuses)) t->statuses[t->tries] = r.status;
    t->tries++;
    int ok = r.status == 200;
    th_response_free(&r);
    return ok;
}

static void test_redis_slower_than_timeout(void **state) {
    RV_UNUSED(state);
    const char *env[] = {"REDIS_TIMEOUT_MS=200", NULL};
    assert_int_equal(rivetd_start(&W.xrivetd, W.redis.port, env), 0);
    wait_ready(&W.xrivetd, 200);
    char id[64], out[64];
    fresh_id(id, sizeof id, "slow");
    char *body = event_from_file("customer.subscription.created", id);

    assert_int_equal(th_redis(W.redis.port, out, sizeof out, "CLIENT PAUSE 1500 WRITE"), 0);
    assert_string_equal(out, "OK");
    int64_t start = mono_ms();
    th_response_t r;
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    int64_t elapsed = mono_ms() - start;
    expect_detail(&r, 503, "Provisioning queue unavailable; retry later");
    /* Told after about REDIS_TIMEOUT_MS, well before Redis could have answered. */
    if (elapsed >= 1200) fail_msg("503 came after %lld ms", (long long)elapsed);

    /* Stripe retries; once Redis answers again the event is taken, once. */
    retry_t t = {.port = W.xrivetd.port, .body = body};
    if (!th_eventually(delivered, &t, WAIT_MS)) {
        fail_msg("never accepted after the pause (%d tries, first %d)", t.tries, t.statuses[0]);
    }
    assert_true(mono_ms() - start >= 1000);
    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].event_id, id);
    entries_free(e, n);
    rivetd_stop_clean(&W.xrivetd);
    free(body);
}

typedef struct len_probe_s {
    int port;
    long long want;
} len_probe_t;

static int xlen_is(void *ud) {
    len_probe_t *p = ud;
    char out[64];
    if (th_redis(p->port, out, sizeof out, "XLEN %s", STREAM) != 0) return 0;
    return atoll(out) == p->want;
}

/* Send a signed request on a new connection and close it without reading the answer. */
static void send_and_vanish(int port, const char *body) {
    char sig[256];
    sig_header(sig, sizeof sig, TH_WEBHOOK_SECRET, (int64_t)time(NULL), body);
    char head[512];
    snprintf(head, sizeof head,
             "POST " WEBHOOK " HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
             "Content-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n",
             port, sig, strlen(body));
    int fd = th_connect(port);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, head), 0);
    assert_int_equal(th_send_str(fd, body), 0);
    th_close(fd);
}

static void test_client_disconnects_after_sending(void **state) {
    RV_UNUSED(state);
    char id1[64], id2[64], out[64];
    fresh_id(id1, sizeof id1, "gone");
    fresh_id(id2, sizeof id2, "gone_paused");
    char *b1 = event_from_file("invoice.payment_succeeded", id1);
    char *b2 = event_from_file("invoice.payment_failed", id2);

    send_and_vanish(W.rivetd.port, b1);
    len_probe_t p = {W.redis.port, 1};
    if (!th_eventually(xlen_is, &p, WAIT_MS)) fail_msg("the event of a vanished client was lost");

    /* With Redis paused the client is surely gone before the enqueue is answered. */
    assert_int_equal(th_redis(W.redis.port, out, sizeof out, "CLIENT PAUSE 300 WRITE"), 0);
    assert_string_equal(out, "OK");
    send_and_vanish(W.rivetd.port, b2);
    p.want = 2;
    if (!th_eventually(xlen_is, &p, WAIT_MS)) fail_msg("the event of a vanished client was lost");

    /* Exactly once each, and rivetd is fine. */
    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 2);
    assert_string_equal(e[0].event_id, id1);
    assert_string_equal(e[1].event_id, id2);
    entries_free(e, n);
    assert_true(th_alive(&W.rivetd));
    assert_int_equal(get_status(W.rivetd.port, "/health"), 200);
    th_response_t r;
    post_event(b1, &r);
    expect_ok(&r, "invoice.payment_succeeded");
    assert_int_equal(xlen(W.redis.port, STREAM), 2);
    free(b1);
    free(b2);
}

static void test_stream_key_configured(void **state) {
    RV_UNUSED(state);
    const char *other = "rivet:itest:other-stream";
    const char *env[] = {"REDIS_STREAM=rivet:itest:other-stream", NULL};
    assert_int_equal(rivetd_start(&W.xrivetd, W.redis.port, env), 0);
    wait_ready(&W.xrivetd, 200);
    char id[64];
    fresh_id(id, sizeof id, "stream");
    char *body = event_from_file("customer.subscription.deleted", id);
    th_response_t r;
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    expect_ok(&r, "customer.subscription.deleted");
    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, other, e, MAX_ENTRIES);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].type, "user.deprovision");
    check_data(e[0].data, "user.deprovision", id, "customer.subscription.deleted", "enterprise");
    entries_free(e, n);
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    rivetd_stop_clean(&W.xrivetd);
    free(body);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_valid_event_enqueued_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_delivery_enqueued_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_six_types_map, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_type_acknowledged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_payment_mode_checkout_not_enqueued, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_order_update_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_header_repeated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_wrong_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_time_tolerance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_v0_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_body_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_rotated_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signed_non_json_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signed_json_not_event_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down_then_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_slower_than_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_disconnects_after_sending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_key_configured, setup, teardown),
    };
    return cmocka_run_group_tests_name("webhook", tests, group_setup, group_teardown);
}
