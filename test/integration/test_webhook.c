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

#define STREAM         "rivet:provisioning"
#define DEAD           STREAM ":dead"
#define WEBHOOK        "/api/webhooks/stripe"
#define WAIT_MS        10000
#define STOP_MS        5000
#define MAX_EVENT_FILE (1024 * 1024)
#define MAX_ENTRIES    16

/* The price ids of the example events in test/events/, which conf/rivet.local.env uses too. */
#define PRICE_BASIC      "price_basic_local"
#define PRICE_PRO        "price_pro_local"
#define PRICE_ENTERPRISE "price_enterprise_local"
/* Customer and subscription of the example events in test/events/. */
#define EV_CUSTOMER      "cus_QXg1o8vcGmoR32"
#define EV_SUBSCRIPTION  "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"
#define EV_SESSION       "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY"

#define SECRET_OLD "whsec_rotation_old_0123456789abcdef"
#define SECRET_NEW "whsec_rotation_new_fedcba9876543210"

/* The shared processes, and the extra ones a test starts (stopped by the teardown when a test
 * fails before stopping them itself). */
typedef struct world_s {
    th_proc_t redis;
    th_proc_t rivetd;
    th_proc_t xredis;
    th_proc_t xrivetd;
    th_proc_t xstripe;
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
    const char *argv[] = {"redis-server", "--port",      portstr, "--bind",
                          "127.0.0.1",    "--save",      "",      "--appendonly",
                          "no",           "--daemonize", "no",    NULL};
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

static long long xlen(int port, const char *stream) { return redis_int(port, "XLEN %s", stream); }

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

/* The data field of an entry against what the event should have produced: a webhook's entry,
 * with the record of the example events' customer after it. tier may be NULL (not checked). */
static void check_data(const char *data, const char *type, const char *event_id,
                       const char *stripe_type, const char *tier) {
    cJSON *d = cJSON_Parse(data);
    if (!cJSON_IsObject(d)) fail_msg("data is not a JSON object: %s", data);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, "v");
    assert_true(cJSON_IsNumber(v));
    assert_int_equal(v->valueint, 2);
    const cJSON *ent = cJSON_GetObjectItemCaseSensitive(d, "entitlement");
    if (!cJSON_IsObject(ent)) fail_msg("data has no entitlement: %s", data);
    const cJSON *owner = cJSON_GetObjectItemCaseSensitive(ent, "customer_id");
    assert_true(cJSON_IsString(owner) && strcmp(owner->valuestring, EV_CUSTOMER) == 0);
    const char *keys[] = {"type", "stripe_event_id", "stripe_event_type", "customer_id",
                          "tier", "source"};
    const char *want[] = {type, event_id, stripe_type, EV_CUSTOMER, tier, "webhook"};
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

/* The entitlement an entry's data carries: tier and sub NULL mean null. */
static void check_entitlement(const char *data, const char *tier, const char *status, int active,
                              const char *sub) {
    cJSON *d = cJSON_Parse(data);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(d, "entitlement");
    if (!cJSON_IsObject(e)) fail_msg("data has no entitlement: %s", data);
    const struct {
        const char *key, *want;
    } strs[] = {{"tier", tier}, {"status", status}, {"subscription_id", sub}};
    int ok = 1;
    for (size_t i = 0; i < RV_ARRAY_LEN(strs); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, strs[i].key);
        if (strs[i].want == NULL)
            ok &= cJSON_IsNull(v);
        else
            ok &= cJSON_IsString(v) && strcmp(v->valuestring, strs[i].want) == 0;
    }
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(e, "active");
    ok &= cJSON_IsBool(a) && cJSON_IsTrue(a) == active;
    cJSON_Delete(d);
    if (!ok) {
        fail_msg("entitlement is not %s/%s/%s/%s in %s", tier ? tier : "null",
                 status ? status : "null", active ? "active" : "inactive", sub ? sub : "null",
                 data);
    }
}

/* data.<key> is the string want. */
static void check_member(const char *data, const char *key, const char *want) {
    cJSON *d = cJSON_Parse(data);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, key);
    int ok = cJSON_IsString(v) && strcmp(v->valuestring, want) == 0;
    cJSON_Delete(d);
    if (!ok) fail_msg("data.%s is not \"%s\" in %s", key, want, data);
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
    cJSON *o =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ev, "data"), "object");
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
    cJSON *items =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "items"), "data");
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

static void expect_bad_signature(th_response_t *r) { expect_detail(r, 400, "Invalid signature"); }

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
    if (W.xstripe.pid > 0) th_stop(&W.xstripe, SIGTERM, STOP_MS);
    memset(&W.xrivetd, 0, sizeof W.xrivetd);
    memset(&W.xredis, 0, sizeof W.xredis);
    memset(&W.xstripe, 0, sizeof W.xstripe);
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
    check_member(e[0].data, "email", "example@example.com");
    check_member(e[0].data, "subscription_id", EV_SUBSCRIPTION);
    check_member(e[0].data, "payment_status", "paid");
    check_member(e[0].data, "checkout_session_id", EV_SESSION);
    /* The subscription is known only from the checkout so far: its plan, paid. */
    check_entitlement(e[0].data, "pro", "active", 1, EV_SUBSCRIPTION);
    /* The session is provisioned, by this entry. */
    char v[64];
    if (th_redis(W.redis.port, v, sizeof v, "GET %s", "rivet:checkout:" EV_SESSION) != 0) {
        fail_msg("redis unreachable");
    }
    assert_string_equal(v, e[0].id);
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
    /* In the order Stripe would send them for one customer's life; each entry carries the
     * customer's record after it (ent_*), which only the subscription events move. */
    static const struct {
        const char *stripe_type, *type, *tier;
        const char *ent_tier, *ent_status;
        int ent_active;
    } cases[] = {
        {"checkout.session.completed", "user.provision", "pro", "pro", "active", 1},
        {"customer.subscription.created", "subscription.created", "pro", "pro", "active", 1},
        {"invoice.payment_succeeded", "payment.succeeded", "pro", "pro", "active", 1},
        {"customer.subscription.updated", "subscription.updated", "enterprise", "enterprise",
         "active", 1},
        {"invoice.payment_failed", "payment.failed", "enterprise", "enterprise", "active", 1},
        {"customer.subscription.deleted", "user.deprovision", "enterprise", "enterprise",
         "canceled", 0},
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
        check_entitlement(e[i].data, cases[i].ent_tier, cases[i].ent_status, cases[i].ent_active,
                          EV_SUBSCRIPTION);
    }
    entries_free(e, n);

    /* The entitlement follows the newest state: the subscription was deleted. */
    char v[64];
    hget(W.redis.port, "rivet:customer:" EV_CUSTOMER, "status", v, sizeof v);
    assert_string_equal(v, "canceled");
    hget(W.redis.port, "rivet:customer:" EV_CUSTOMER, "active", v, sizeof v);
    assert_string_equal(v, "false");
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

/* An update delivered after a newer one is appended all the same (consumers see every event),
 * and carries the newer state, which it does not replace. */
static void test_out_of_order_update_recorded(void **state) {
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
    assert_int_equal(n, 2);
    assert_string_equal(e[0].event_id, newer);
    check_data(e[0].data, "subscription.updated", newer, type, "pro");
    check_entitlement(e[0].data, "pro", "active", 1, EV_SUBSCRIPTION);
    /* The older event's own data says what it said; its entitlement is the newer state. */
    assert_string_equal(e[1].event_id, older);
    check_data(e[1].data, "subscription.updated", older, type, "basic");
    check_member(e[1].data, "status", "past_due");
    check_entitlement(e[1].data, "pro", "active", 1, EV_SUBSCRIPTION);
    entries_free(e, n);
    char v[64];
    const char *key = "rivet:customer:" EV_CUSTOMER;
    hget(W.redis.port, key, "tier", v, sizeof v);
    assert_string_equal(v, "pro");
    hget(W.redis.port, key, "status", v, sizeof v);
    assert_string_equal(v, "active");

    /* A later one moves the entitlement, so the checks above could fail. */
    ev = load_event(type, newest, t + 20);
    set_subscription(ev, PRICE_ENTERPRISE, "active");
    char *body3 = event_text(ev);
    post_event(body3, &r);
    expect_ok(&r, type);
    assert_int_equal(xlen(W.redis.port, STREAM), 3);
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

/* ---- dead letters ------------------------------------------------------------------------- */

typedef struct dead_s {
    char reason[256];
    char event_id[256];
    char event_type[128];
    long long received;
    char *body; /* malloc'd, body_len bytes plus a NUL */
    size_t body_len;
} dead_t;

static void dead_free(dead_t *d, int n) {
    for (int i = 0; i < n; i++) free(d[i].body);
}

/* Read the whole dead-letter stream. Every entry must have exactly the fields reason,
 * stripe_event_id, stripe_event_type, received and body. Returns the number of entries. */
static int read_dead(int port, dead_t *out, int max) {
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_non_null(c);
    if (c->err) {
        redisFree(c);
        fail_msg("redis on %d unreachable", port);
    }
    redisReply *r = redisCommand(c, "XRANGE %s - +", DEAD);
    redisFree(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    int n = (int)r->elements;
    if (n > max) {
        freeReplyObject(r);
        fail_msg("%d entries in %s, more than expected", n, DEAD);
    }
    memset(out, 0, sizeof *out * (size_t)max);
    for (int i = 0; i < n; i++) {
        const redisReply *f = r->element[i]->element[1];
        assert_int_equal(f->type, REDIS_REPLY_ARRAY);
        if (f->elements != 10) fail_msg("a dead letter has %zu fields, not 5", f->elements / 2);
        int seen = 0;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            const char *name = f->element[k]->str;
            const redisReply *v = f->element[k + 1];
            char num[32];
            if (strcmp(name, "reason") == 0) {
                copy_field(out[i].reason, sizeof out[i].reason, v);
                seen |= 1;
            } else if (strcmp(name, "stripe_event_id") == 0) {
                copy_field(out[i].event_id, sizeof out[i].event_id, v);
                seen |= 2;
            } else if (strcmp(name, "stripe_event_type") == 0) {
                copy_field(out[i].event_type, sizeof out[i].event_type, v);
                seen |= 4;
            } else if (strcmp(name, "received") == 0) {
                copy_field(num, sizeof num, v);
                out[i].received = atoll(num);
                seen |= 8;
            } else if (strcmp(name, "body") == 0) {
                assert_int_equal(v->type, REDIS_REPLY_STRING);
                out[i].body = malloc(v->len + 1);
                assert_non_null(out[i].body);
                memcpy(out[i].body, v->str, v->len);
                out[i].body[v->len] = '\0';
                out[i].body_len = v->len;
                seen |= 16;
            } else {
                fail_msg("unexpected field \"%s\" in a dead letter", name);
            }
        }
        assert_int_equal(seen, 31);
    }
    freeReplyObject(r);
    return n;
}

/* A dead letter against what was sent: the body byte for byte, the identity, a reason that
 * names the defect (want_reason is a substring of it), received about now. */
static void check_dead(const dead_t *d, const char *body, size_t len, const char *event_id,
                       const char *event_type, const char *want_reason) {
    if (d->body_len != len || memcmp(d->body, body, len) != 0) {
        fail_msg("dead letter body differs from what was sent (%zu bytes, sent %zu)", d->body_len,
                 len);
    }
    assert_string_equal(d->event_id, event_id);
    assert_string_equal(d->event_type, event_type);
    if (strstr(d->reason, want_reason) == NULL) {
        fail_msg("reason \"%s\" does not mention \"%s\"", d->reason, want_reason);
    }
    for (const char *p = d->reason; *p; p++) {
        if (*p < 0x20 || *p > 0x7e) fail_msg("reason \"%s\" is not printable ASCII", d->reason);
    }
    long long now = (long long)time(NULL);
    if (d->received < now - 60 || d->received > now + 5) {
        fail_msg("received %lld is not about now (%lld)", d->received, now);
    }
}

/* Nothing under the keys a mapped event would have written. */
static void expect_no_entitlement_keys(int port) {
    static const char *const patterns[] = {"rivet:customer:*", "rivet:checkout:*", "rivet:email:*"};
    for (size_t i = 0; i < RV_ARRAY_LEN(patterns); i++) {
        char out[512];
        if (th_redis(port, out, sizeof out, "KEYS %s", patterns[i]) != 0) {
            fail_msg("redis unreachable");
        }
        if (out[0] != '\0') fail_msg("keys %s exist: %s", patterns[i], out);
    }
}

/* The answer to a dead-lettered delivery: 200 {"status":"ok",...}. Frees r. */
static void expect_ack(th_response_t *r) {
    if (r->status != 200) fail_msg("status %d, body %s; expected 200", r->status, r->body);
    cJSON *j = cJSON_Parse(r->body);
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "status");
    int ok = cJSON_IsString(st) && strcmp(st->valuestring, "ok") == 0 &&
             cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "event_type"));
    cJSON_Delete(j);
    if (!ok) fail_msg("unexpected answer %s", r->body);
    th_response_free(r);
}

/* POST len bytes (which may hold NULs) signed with the shared secret, on a new connection. */
static void post_bytes(int port, const char *body, size_t len, th_response_t *r) {
    char sig[128], head[512];
    assert_int_equal(
        rv_webhook_sign(TH_WEBHOOK_SECRET, (int64_t)time(NULL), body, len, sig, sizeof sig), 0);
    snprintf(head, sizeof head,
             "POST " WEBHOOK " HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
             "Content-Type: application/json\r\nStripe-Signature: %s\r\n"
             "Content-Length: %zu\r\n\r\n",
             port, sig, len);
    int fd = th_connect(port);
    assert_true(fd >= 0);
    assert_int_equal(th_send_str(fd, head), 0);
    assert_int_equal(th_send(fd, body, len), 0);
    int rc = th_read_response(fd, r, 0, WAIT_MS);
    th_close(fd);
    if (rc != 0) fail_msg("no answer from rivetd on port %d", port);
}

typedef struct log_probe_s {
    const char *path;
    const char *needle;
} log_probe_t;

static int log_has(void *ud) {
    log_probe_t *p = ud;
    FILE *f = fopen(p->path, "rb");
    if (f == NULL) return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f) != NULL) found = strstr(line, p->needle) != NULL;
    fclose(f);
    return found;
}

/* A subscription event whose customer id would have become the key
 * "rivet:customer:cus\r\nFLUSHALL". */
static char *poisoned_customer(const char *id) {
    cJSON *ev = load_event("customer.subscription.created", id, -1);
    set_string(object_of(ev), "customer", "cus\r\nFLUSHALL");
    return event_text(ev);
}

static void test_malformed_customer_dead_lettered(void **state) {
    RV_UNUSED(state);
    /* A valid event first, so that "the main stream is unchanged" means something. */
    char good[64], id[64];
    fresh_id(good, sizeof good, "before");
    char *valid = event_from_file("invoice.payment_succeeded", good);
    th_response_t r;
    post_event(valid, &r);
    expect_ok(&r, "invoice.payment_succeeded");

    fresh_id(id, sizeof id, "poison");
    char *body = poisoned_customer(id);
    post_event(body, &r);
    expect_ok(&r, "customer.subscription.created");

    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].event_id, good);
    entries_free(e, n);
    /* The valid invoice wrote its own customer's record only; the poisoned event wrote no key
     * at all. */
    char out[512];
    assert_int_equal(th_redis(W.redis.port, out, sizeof out, "KEYS %s", "rivet:customer:*"), 0);
    assert_string_equal(out, "rivet:customer:" EV_CUSTOMER);
    assert_int_equal(th_redis(W.redis.port, out, sizeof out, "KEYS %s", "*FLUSHALL*"), 0);
    assert_string_equal(out, "");
    dead_t d[MAX_ENTRIES];
    n = read_dead(W.redis.port, d, MAX_ENTRIES);
    assert_int_equal(n, 1);
    check_dead(&d[0], body, strlen(body), id, "customer.subscription.created", "customer");
    dead_free(d, n);

    /* Stripe delivers the same event again (it does, for days): still one dead letter. */
    post_signed_at(W.rivetd.port, TH_WEBHOOK_SECRET, (int64_t)time(NULL) - 7, body, &r);
    expect_ok(&r, "customer.subscription.created");
    post_event(body, &r);
    expect_ok(&r, "customer.subscription.created");
    assert_int_equal(xlen(W.redis.port, DEAD), 1);
    assert_int_equal(xlen(W.redis.port, STREAM), 1);

    /* The operator learns of it from the log, at error level, with the event's identity. */
    char needle[128];
    snprintf(needle, sizeof needle, "error webhook: %s customer.subscription.created", id);
    log_probe_t lp = {W.rivetd.log_path, needle};
    if (!th_eventually(log_has, &lp, WAIT_MS)) fail_msg("no line \"%s\" in the log", needle);
    free(valid);
    free(body);
}

static void test_malformed_content_dead_lettered(void **state) {
    RV_UNUSED(state);
    static const struct {
        const char *stripe_type;
        const char *path[3]; /* where in data.object, up to three members deep */
        const char *value;   /* NULL: JSON null */
        const char *reason;
    } cases[] = {
        /* A subscription-mode checkout nobody can be provisioned from. */
        {"checkout.session.completed", {"customer"}, NULL, "customer"},
        /* Overlong UTF-8 for '/', in the newer place of a checkout's email. */
        {"checkout.session.completed",
         {"customer_details", "email"},
         "\xC0\xAFx@example.com",
         "email"},
        /* A UTF-16 surrogate encoded in UTF-8, in the older place of an invoice's email. */
        {"invoice.payment_failed", {"customer_email"}, "x\xED\xA0\x80@example.com", "email"},
        /* A subscription id with a blank, in the newer place of an invoice's subscription. */
        {"invoice.payment_succeeded",
         {"parent", "subscription_details", "subscription"},
         "sub_1 2",
         "subscription"},
        /* A customer id that is not ASCII. */
        {"customer.subscription.updated", {"customer"}, "cus_\xC3\xBC", "customer"},
        /* A status with a C1 control character (NEL). */
        {"customer.subscription.deleted", {"status"}, "canceled\xC2\x85", "status"},
        /* Statuses are Stripe's lower-case words: a quote, a backslash, a '|' (which separates
         * a subscription's state in the record) or a blank is no status. */
        {"customer.subscription.updated", {"status"}, "act\"ive", "status"},
        {"customer.subscription.updated", {"status"}, "active\\", "status"},
        {"customer.subscription.created", {"status"}, "active|x", "status"},
        {"invoice.payment_failed", {"status"}, "open|x", "status"},
        {"checkout.session.completed", {"payment_status"}, "no payment", "status"},
        /* A subscription's state is taken whole, and has a status. */
        {"customer.subscription.updated", {"status"}, NULL, "status"},
        {"customer.subscription.updated", {"status"}, "", "status"},
    };
    dead_t d[MAX_ENTRIES];
    char *bodies[RV_ARRAY_LEN(cases)];
    char ids[RV_ARRAY_LEN(cases)][64];
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        fresh_id(ids[i], sizeof ids[i], "content");
        cJSON *ev = load_event(cases[i].stripe_type, ids[i], -1);
        cJSON *o = object_of(ev);
        size_t depth = 0;
        while (depth + 1 < RV_ARRAY_LEN(cases[i].path) && cases[i].path[depth + 1] != NULL) {
            o = cJSON_GetObjectItemCaseSensitive(o, cases[i].path[depth++]);
            assert_true(cJSON_IsObject(o));
        }
        cJSON *v = cases[i].value ? cJSON_CreateString(cases[i].value) : cJSON_CreateNull();
        assert_true(cJSON_ReplaceItemInObjectCaseSensitive(o, cases[i].path[depth], v));
        bodies[i] = event_text(ev);
        th_response_t r;
        post_event(bodies[i], &r);
        expect_ok(&r, cases[i].stripe_type);
    }
    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    expect_no_entitlement_keys(W.redis.port);
    int n = read_dead(W.redis.port, d, MAX_ENTRIES);
    assert_int_equal(n, (int)RV_ARRAY_LEN(cases));
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        check_dead(&d[i], bodies[i], strlen(bodies[i]), ids[i], cases[i].stripe_type,
                   cases[i].reason);
        free(bodies[i]);
    }
    dead_free(d, n);
}

/* A signed body that is not a Stripe event at all: Stripe signed it, so delivering it again
 * cannot change it. It is kept, with the reason, and acknowledged. */
static void test_signed_non_event_dead_lettered(void **state) {
    RV_UNUSED(state);
    static const struct {
        const char *body;
        const char *id, *type; /* what can be read of its identity */
    } cases[] = {
        {"this is not JSON {", "", ""},
        {"{\"hello\":\"world\"}", "", ""},
        {"[1,2,3]", "", ""},
        {"\"evt_string\"", "", ""},
        /* An event envelope without data.object: the id is known, so redeliveries are one. */
        {"{\"id\":\"evt_itest_noobj\",\"object\":\"event\",\"type\":"
         "\"customer.subscription.created\",\"created\":1721954054,\"data\":{}}",
         "evt_itest_noobj", "customer.subscription.created"},
        /* created is not a number. */
        {"{\"id\":\"evt_itest_nocreated\",\"object\":\"event\",\"type\":"
         "\"customer.subscription.created\",\"created\":\"yesterday\",\"data\":{\"object\":{}}}",
         "evt_itest_nocreated", "customer.subscription.created"},
        /* Something after the event: no one JSON value, so nothing in it is trusted. */
        {"{\"id\":\"evt_itest_trailing\",\"object\":\"event\",\"type\":"
         "\"customer.subscription.created\",\"created\":1721954054,\"data\":{\"object\":{}}}xyz",
         "", ""},
        /* An event id that is not Stripe's shape is not trusted as a key. */
        {"{\"id\":\"evt\\r\\nDEL x\",\"object\":\"event\",\"type\":"
         "\"customer.subscription.created\",\"created\":1721954054,\"data\":{\"object\":{}}}",
         "", "customer.subscription.created"},
    };
    th_response_t r;
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        post_event(cases[i].body, &r);
        expect_ack(&r);
    }
    /* Bytes that are no text at all, NULs included, are kept exactly. */
    static const char binary[] = "\x00\xff{\"id\":\"evt_bin\"}\r\n\x00\x80\xfe";
    post_bytes(W.rivetd.port, binary, sizeof binary - 1, &r);
    expect_ack(&r);
    /* A redelivery of the envelope whose id is known adds nothing. */
    post_event(cases[4].body, &r);
    expect_ack(&r);

    assert_int_equal(xlen(W.redis.port, STREAM), 0);
    dead_t d[MAX_ENTRIES];
    int n = read_dead(W.redis.port, d, MAX_ENTRIES);
    assert_int_equal(n, (int)RV_ARRAY_LEN(cases) + 1);
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        check_dead(&d[i], cases[i].body, strlen(cases[i].body), cases[i].id, cases[i].type, "");
        if (d[i].reason[0] == '\0') fail_msg("no reason for %s", cases[i].body);
    }
    check_dead(&d[n - 1], binary, sizeof binary - 1, "", "", "JSON");
    dead_free(d, n);
}

static void test_dead_letter_redis_down(void **state) {
    RV_UNUSED(state);
    assert_int_equal(th_redis_start(&W.xredis), 0);
    int port = W.xredis.port;
    assert_int_equal(rivetd_start(&W.xrivetd, port, NULL), 0);
    wait_ready(&W.xrivetd, 200);
    assert_true(th_stop(&W.xredis, SIGTERM, STOP_MS) >= 0);
    W.xredis.pid = 0;

    char id[64];
    fresh_id(id, sizeof id, "deaddown");
    char *body = poisoned_customer(id);
    th_response_t r;
    /* It cannot be kept, so it is not acknowledged: Stripe delivers it again. */
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    assert_non_null(th_header(&r, "Retry-After"));
    expect_detail(&r, 503, "Provisioning queue unavailable; retry later");
    wait_ready(&W.xrivetd, 503);
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, "not an event", &r);
    expect_detail(&r, 503, "Provisioning queue unavailable; retry later");

    redis_spawn(&W.xredis, port);
    wait_ready(&W.xrivetd, 200);
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    expect_ok(&r, "customer.subscription.created");
    assert_int_equal(xlen(port, STREAM), 0);
    dead_t d[MAX_ENTRIES];
    int n = read_dead(port, d, MAX_ENTRIES);
    assert_int_equal(n, 1);
    check_dead(&d[0], body, strlen(body), id, "customer.subscription.created", "customer");
    dead_free(d, n);
    rivetd_stop_clean(&W.xrivetd);
    free(body);
}

/* Connected is not enough to be ready: a Redis that refuses writes (out of memory, a replica, a
 * failed save) takes no webhook, so the instance leaves the edge's rotation until one is stored
 * again. */
static void test_ready_when_redis_refuses_writes(void **state) {
    RV_UNUSED(state);
    assert_int_equal(th_redis_start(&W.xredis), 0);
    int port = W.xredis.port;
    assert_int_equal(rivetd_start(&W.xrivetd, port, NULL), 0);
    wait_ready(&W.xrivetd, 200);
    char out[256];
    /* Out of memory, then a replica. */
    for (int i = 0; i < 2; i++) {
        char id[64];
        fresh_id(id, sizeof id, "refused");
        cJSON *ev = load_event("customer.subscription.created", id, -1);
        char *body = event_text(ev);
        int rc = i == 0 ? th_redis(port, out, sizeof out, "CONFIG SET maxmemory 1")
                        : th_redis(port, out, sizeof out, "REPLICAOF 127.0.0.1 1");
        if (rc != 0 || strcmp(out, "OK") != 0) fail_msg("Redis: %s", out);
        th_response_t r;
        post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
        expect_detail(&r, 503, "Provisioning queue unavailable; retry later");
        th_request(W.xrivetd.port, "GET", "/ready", NULL, NULL, &r);
        expect_detail(&r, 503, "Redis refuses writes");
        /* Writes are taken again: the next event stored makes it ready at once. */
        rc = i == 0 ? th_redis(port, out, sizeof out, "CONFIG SET maxmemory 0")
                    : th_redis(port, out, sizeof out, "REPLICAOF NO ONE");
        if (rc != 0 || strcmp(out, "OK") != 0) fail_msg("Redis: %s", out);
        post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
        expect_ok(&r, "customer.subscription.created");
        th_request(W.xrivetd.port, "GET", "/ready", NULL, NULL, &r);
        assert_int_equal(r.status, 200);
        th_response_free(&r);
        free(body);
    }
    assert_int_equal(xlen(port, STREAM), 2);
    rivetd_stop_clean(&W.xrivetd);
}

typedef struct linked_s {
    int replica_port;
} linked_t;

static int replica_up(void *ud) {
    const linked_t *l = ud;
    char out[4096];
    if (th_redis(l->replica_port, out, sizeof out, "INFO %s", "replication") != 0) return 0;
    return strstr(out, "master_link_status:up") != NULL;
}

/* With REDIS_MIN_REPLICAS and no replica to confirm, every webhook is refused: /ready says so,
 * so that the edge stops routing webhooks to an instance that cannot take them; a replica that
 * comes makes the next webhook confirmed and the instance ready again. */
static void test_ready_when_replicas_do_not_confirm(void **state) {
    RV_UNUSED(state);
    assert_int_equal(th_redis_start(&W.xredis), 0);
    int port = W.xredis.port;
    const char *extra[] = {"REDIS_MIN_REPLICAS=1", "REDIS_TIMEOUT_MS=400", NULL};
    assert_int_equal(rivetd_start(&W.xrivetd, port, extra), 0);
    wait_ready(&W.xrivetd, 200);
    char id[64];
    fresh_id(id, sizeof id, "unconfirmed");
    cJSON *ev = load_event("customer.subscription.created", id, -1);
    char *body = event_text(ev);
    th_response_t r;
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    expect_detail(&r, 503, "Provisioning queue unavailable; retry later");
    th_request(W.xrivetd.port, "GET", "/ready", NULL, NULL, &r);
    expect_detail(&r, 503, "Redis replicas do not confirm writes");

    th_proc_t replica = {0};
    assert_int_equal(th_redis_start(&replica), 0);
    char out[256];
    assert_int_equal(th_redis(replica.port, out, sizeof out, "REPLICAOF 127.0.0.1 %d", port), 0);
    linked_t l = {replica.port};
    if (!th_eventually(replica_up, &l, 10000)) fail_msg("the replica did not sync");
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    expect_ok(&r, "customer.subscription.created");
    th_request(W.xrivetd.port, "GET", "/ready", NULL, NULL, &r);
    assert_int_equal(r.status, 200);
    th_response_free(&r);
    free(body);
    rivetd_stop_clean(&W.xrivetd);
    th_stop(&replica, SIGTERM, STOP_MS);
}

/* The sample key's value in the admin listener's /metrics, 0 when absent. */
static double metric_value(int admin_port, const char *key) {
    th_response_t r;
    if (th_request(admin_port, "GET", "/metrics", NULL, NULL, &r) != 0) fail_msg("no /metrics");
    assert_int_equal(r.status, 200);
    double v = 0;
    size_t kl = strlen(key);
    const char *p = r.body;
    while (p != NULL && *p) {
        if (strncmp(p, key, kl) == 0 && p[kl] == ' ') v = strtod(p + kl + 1, NULL);
        p = strchr(p, '\n');
        if (p != NULL) p++;
    }
    th_response_free(&r);
    return v;
}

static void test_dead_letter_metric(void **state) {
    RV_UNUSED(state);
    const char *key = "rivet_webhook_events_total{type=\"customer.subscription.created\","
                      "outcome=\"dead_letter\"}";
    assert_true(W.rivetd.port2 > 0);
    double before = metric_value(W.rivetd.port2, key);
    char id[64];
    fresh_id(id, sizeof id, "metric");
    char *body = poisoned_customer(id);
    th_response_t r;
    post_event(body, &r);
    expect_ok(&r, "customer.subscription.created");
    if (metric_value(W.rivetd.port2, key) != before + 1) {
        fail_msg("%s is %g, expected %g", key, metric_value(W.rivetd.port2, key), before + 1);
    }
    /* A redelivery is a duplicate, not a second dead letter. */
    post_event(body, &r);
    expect_ok(&r, "customer.subscription.created");
    assert_true(metric_value(W.rivetd.port2, key) == before + 1);
    free(body);
}

/* ---- Redis trouble ------------------------------------------------------------------------- */

/* How many lines of a process's log contain text. */
static int log_lines(const th_proc_t *p, const char *text) {
    FILE *f = fopen(p->log_path, "r");
    if (f == NULL) return -1;
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, text) != NULL;
    fclose(f);
    return n;
}

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
    /* A burst of deliveries meanwhile is refused each, but the log says so about once a second,
     * not once a delivery. */
    for (int i = 0; i < 30; i++) {
        post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
        assert_int_equal(r.status, 503);
        th_response_free(&r);
    }
    int lines = log_lines(&W.xrivetd, "not stored: redis");
    if (lines < 1 || lines > 4) fail_msg("%d log lines for 32 refused deliveries", lines);

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
    int64_t start = th_now_ms();
    th_response_t r;
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    int64_t elapsed = th_now_ms() - start;
    expect_detail(&r, 503, "Provisioning queue unavailable; retry later");
    /* Told after about REDIS_TIMEOUT_MS, well before Redis could have answered. */
    if (elapsed >= 1200) fail_msg("503 came after %lld ms", (long long)elapsed);

    /* Stripe retries; once Redis answers again the event is taken, once. */
    retry_t t = {.port = W.xrivetd.port, .body = body};
    if (!th_eventually(delivered, &t, WAIT_MS)) {
        fail_msg("never accepted after the pause (%d tries, first %d)", t.tries, t.statuses[0]);
    }
    assert_true(th_now_ms() - start >= 1000);
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

/* ---- one provision per session, reads of Stripe --------------------------------------------- */

/* One user.provision per Checkout Session: the same session under another event is recorded
 * without an entry, and an unpaid session is recorded until its payment succeeds. */
static void test_checkout_once_per_session(void **state) {
    RV_UNUSED(state);
    const char *rec_async = "rivet_webhook_events_total{type=\"checkout.session."
                            "async_payment_succeeded\",outcome=\"recorded\"}";
    const char *rec_done = "rivet_webhook_events_total{type=\"checkout.session.completed\","
                           "outcome=\"recorded\"}";
    double async_before = metric_value(W.rivetd.port2, rec_async);
    double done_before = metric_value(W.rivetd.port2, rec_done);
    char id1[64], id2[64], id3[64], id4[64];
    fresh_id(id1, sizeof id1, "session");
    fresh_id(id2, sizeof id2, "session_again");
    fresh_id(id3, sizeof id3, "unpaid");
    fresh_id(id4, sizeof id4, "unpaid_paid");
    th_response_t r;
    char *b1 = event_from_file("checkout.session.completed", id1);
    post_event(b1, &r);
    expect_ok(&r, "checkout.session.completed");
    assert_int_equal(xlen(W.redis.port, STREAM), 1);

    /* The same session's async_payment_succeeded: acknowledged, recorded, not appended. */
    cJSON *ev = load_event("checkout.session.completed", id2, -1);
    set_string(ev, "type", "checkout.session.async_payment_succeeded");
    char *b2 = event_text(ev);
    post_event(b2, &r);
    expect_ok(&r, "checkout.session.async_payment_succeeded");
    assert_int_equal(xlen(W.redis.port, STREAM), 1);
    assert_true(metric_value(W.rivetd.port2, rec_async) == async_before + 1);

    /* Another customer's session that completed unpaid (a delayed payment method). */
    ev = load_event("checkout.session.completed", id3, -1);
    cJSON *o = object_of(ev);
    set_string(o, "id", "cs_itest_unpaid");
    set_string(o, "customer", "cus_itest_unpaid");
    set_string(o, "subscription", "sub_itest_unpaid");
    set_string(o, "payment_status", "unpaid");
    char *b3 = event_text(ev);
    post_event(b3, &r);
    expect_ok(&r, "checkout.session.completed");
    assert_int_equal(xlen(W.redis.port, STREAM), 1);
    assert_true(metric_value(W.rivetd.port2, rec_done) == done_before + 1);
    char v[64];
    hget(W.redis.port, "rivet:customer:cus_itest_unpaid", "active", v, sizeof v);
    assert_string_equal(v, "false");
    assert_int_equal(redis_int(W.redis.port, "EXISTS %s", "rivet:checkout:cs_itest_unpaid"), 0);

    /* Its payment succeeds: now it is provisioned, once. */
    ev = load_event("checkout.session.completed", id4, -1);
    set_string(ev, "type", "checkout.session.async_payment_succeeded");
    o = object_of(ev);
    set_string(o, "id", "cs_itest_unpaid");
    set_string(o, "customer", "cus_itest_unpaid");
    set_string(o, "subscription", "sub_itest_unpaid");
    char *b4 = event_text(ev);
    post_event(b4, &r);
    expect_ok(&r, "checkout.session.async_payment_succeeded");
    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 2);
    assert_string_equal(e[1].type, "user.provision");
    assert_string_equal(e[1].event_id, id4);
    check_member(e[1].data, "stripe_event_type", "checkout.session.async_payment_succeeded");
    check_member(e[1].data, "source", "webhook");
    check_entitlement(e[1].data, "pro", "active", 1, "sub_itest_unpaid");
    entries_free(e, n);
    hget(W.redis.port, "rivet:customer:cus_itest_unpaid", "active", v, sizeof v);
    assert_string_equal(v, "true");
    free(b1);
    free(b2);
    free(b3);
    free(b4);
}

/* POST a request to the fake Stripe and return its JSON answer (the caller deletes it). */
static cJSON *fake_post(const char *path, const char *headers, const char *body) {
    th_response_t r;
    if (th_request(W.xstripe.port, "POST", path, headers, body, &r) != 0) {
        fail_msg("no answer from the fake Stripe for %s", path);
    }
    if (r.status != 200) fail_msg("the fake Stripe answered %d to %s: %s", r.status, path, r.body);
    cJSON *j = cJSON_Parse(r.body);
    th_response_free(&r);
    if (!cJSON_IsObject(j)) fail_msg("the fake Stripe's answer to %s is not an object", path);
    return j;
}

static const char *json_str(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) fail_msg("no string %s in the fake Stripe's answer", key);
    return v->valuestring;
}

/* An event about a subscription rivetd has not seen is acknowledged first; then rivetd reads
 * the subscription from Stripe and appends what Stripe says, marked as from Stripe. */
static void test_unknown_subscription_read_from_stripe(void **state) {
    RV_UNUSED(state);
    const char *fargs[] = {"--prices",
                           PRICE_BASIC ":2900:basic," PRICE_PRO ":4900:pro," PRICE_ENTERPRISE
                                       ":19900:enterprise",
                           NULL};
    if (th_fake_stripe_start(&W.xstripe, fargs) != 0) fail_msg("the fake Stripe did not start");
    /* A customer pays for pro at the fake Stripe; no webhook endpoint is set there, so rivetd
     * hears of it only through the event below. */
    cJSON *cs = fake_post("/v1/checkout/sessions",
                          "Authorization: Bearer " TH_STRIPE_KEY "\r\n"
                          "Content-Type: application/x-www-form-urlencoded\r\n",
                          "mode=subscription&line_items[0][price]=" PRICE_PRO
                          "&line_items[0][quantity]=1&success_url=https%3A%2F%2Fexample.com%2Fok");
    char path[256], cust[64], sub[64];
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", json_str(cs, "id"));
    cJSON_Delete(cs);
    cs = fake_post(path, "Content-Type: application/json\r\n", "{\"payment_status\":\"paid\"}");
    snprintf(cust, sizeof cust, "%s", json_str(cs, "customer"));
    snprintf(sub, sizeof sub, "%s", json_str(cs, "subscription"));
    cJSON_Delete(cs);

    char base[64];
    snprintf(base, sizeof base, "STRIPE_API_BASE=http://127.0.0.1:%d", W.xstripe.port);
    const char *env[] = {base, NULL};
    assert_int_equal(rivetd_start(&W.xrivetd, W.redis.port, env), 0);
    wait_ready(&W.xrivetd, 200);

    char id[64];
    fresh_id(id, sizeof id, "unknown_sub");
    cJSON *ev = load_event("invoice.payment_succeeded", id, (int64_t)time(NULL));
    cJSON *o = object_of(ev);
    set_string(o, "customer", cust);
    cJSON *details = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(o, "parent"),
                                                      "subscription_details");
    assert_true(cJSON_IsObject(details));
    set_string(details, "subscription", sub);
    char *body = event_text(ev);
    th_response_t r;
    post_signed(W.xrivetd.port, TH_WEBHOOK_SECRET, body, &r);
    expect_ok(&r, "invoice.payment_succeeded");

    len_probe_t p = {W.redis.port, 2};
    if (!th_eventually(xlen_is, &p, WAIT_MS)) fail_msg("Stripe's state was never appended");
    entry_t e[MAX_ENTRIES];
    int n = read_stream(W.redis.port, STREAM, e, MAX_ENTRIES);
    assert_int_equal(n, 2);
    /* The invoice's entry: nothing is known of the subscription yet. */
    assert_string_equal(e[0].type, "payment.succeeded");
    assert_string_equal(e[0].event_id, id);
    check_entitlement(e[0].data, NULL, NULL, 0, NULL);
    /* Then what Stripe says of it: not a Stripe event, so no event id. */
    assert_string_equal(e[1].type, "subscription.updated");
    assert_string_equal(e[1].event_id, "");
    check_member(e[1].data, "source", "stripe");
    check_member(e[1].data, "stripe_event_type", "customer.subscription.updated");
    check_member(e[1].data, "subscription_id", sub);
    check_member(e[1].data, "status", "active");
    check_entitlement(e[1].data, "pro", "active", 1, sub);
    entries_free(e, n);
    char v[64];
    snprintf(path, sizeof path, "rivet:customer:%s", cust);
    hget(W.redis.port, path, "tier", v, sizeof v);
    assert_string_equal(v, "pro");

    /* Stripe was asked for exactly that subscription. */
    th_response_t q;
    assert_int_equal(th_request(W.xstripe.port, "GET", "/_fake/requests", NULL, NULL, &q), 0);
    snprintf(path, sizeof path, "/v1/subscriptions/%s", sub);
    if (strstr(q.body, path) == NULL) fail_msg("the fake Stripe never saw GET %s", path);
    th_response_free(&q);
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
        cmocka_unit_test_setup_teardown(test_out_of_order_update_recorded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_missing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_header_repeated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_wrong_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_time_tolerance, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_v0_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_body_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signature_rotated_secret, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_customer_dead_lettered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_content_dead_lettered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_signed_non_event_dead_lettered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_redis_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ready_when_redis_refuses_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ready_when_replicas_do_not_confirm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_metric, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down_then_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_slower_than_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_disconnects_after_sending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_key_configured, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkout_once_per_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_subscription_read_from_stripe, setup,
                                        teardown),
    };
    return cmocka_run_group_tests_name("webhook", tests, group_setup, group_teardown);
}
