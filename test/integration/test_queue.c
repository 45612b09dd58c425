/* Integration tests for the provisioning queue: a real libuv loop in this process runs rv_queue
 * against a real redis-server, which the tests inspect with blocking commands, stop, restart,
 * pause and lock with a password. Every test closes the queue and runs the loop until every
 * handle is closed, so that uv_loop_close succeeds and the sanitizer build sees no leak. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "harness.h"
#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/queue.h"

#define STREAM  "rivet:test:provisioning"
#define DEAD    STREAM ":dead"
#define TTL     1000
#define WAIT_MS 10000

typedef struct fixture_s {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps UV_RUN_ONCE from blocking while a test polls a condition */
    th_proc_t redis;
    rv_queue_t *q;
    char tmpdir[64]; /* for unix sockets; removed in teardown */
} fixture_t;

typedef struct result_s {
    int called;
    int err;
    int result;
    char id[64];
} result_t;

/* ---- loop helpers ------------------------------------------------------------------------ */

static void on_tick(uv_timer_t *t) { RV_UNUSED(t); }

/* Run the loop until fn(ud) is true or timeout_ms pass. Returns 1 when the condition held. */
static int run_until(fixture_t *f, int (*fn)(void *), void *ud, int timeout_ms) {
    uint64_t deadline = rv_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (fn(ud)) return 1;
        if (rv_now_ms() > deadline) return 0;
        uv_run(&f->loop, UV_RUN_ONCE);
        rv_log_flush();
    }
}

static int is_ready(void *ud) { return rv_queue_ready(ud); }
static int is_not_ready(void *ud) { return !rv_queue_ready(ud); }
static int is_called(void *ud) { return ((result_t *)ud)->called > 0; }
static int is_set(void *ud) { return *(int *)ud != 0; }

static void on_enqueued(void *data, int err, int result, const char *stream_id) {
    result_t *r = data;
    r->called++;
    r->err = err;
    r->result = result;
    snprintf(r->id, sizeof r->id, "%s", stream_id ? stream_id : "");
}

static void on_closed(void *data) { *(int *)data = 1; }

static rv_queue_t *queue_open(fixture_t *f, const char *url, uint64_t timeout_ms) {
    rv_queue_opts_t o = {.url = url, .stream = STREAM, .dedupe_ttl = TTL, .timeout_ms = timeout_ms};
    rv_queue_t *q = NULL;
    assert_int_equal(rv_queue_init(&f->loop, &o, &q), 0);
    assert_non_null(q);
    return q;
}

static void queue_open_ready(fixture_t *f, const char *url) {
    f->q = queue_open(f, url, 2000);
    if (!run_until(f, is_ready, f->q, WAIT_MS)) fail_msg("queue not ready for %s", url);
}

/* The fixture's queue, ready, with past_due counted as active or not (held by the fixture, so
 * that a failure still closes it). */
static void queue_open_past_due(fixture_t *f, const char *url, int past_due_active) {
    rv_queue_opts_t o = {.url = url,
                         .stream = STREAM,
                         .dedupe_ttl = TTL,
                         .timeout_ms = 2000,
                         .past_due_active = past_due_active};
    assert_int_equal(rv_queue_init(&f->loop, &o, &f->q), 0);
    if (!run_until(f, is_ready, f->q, WAIT_MS)) fail_msg("queue not ready for %s", url);
}

static void queue_close(fixture_t *f, rv_queue_t *q) {
    int closed = 0;
    rv_queue_close(q, on_closed, &closed);
    assert_int_equal(closed, 0); /* done comes from the loop, not from inside close */
    assert_true(run_until(f, is_set, &closed, WAIT_MS));
}

/* ---- events ------------------------------------------------------------------------------ */

/* A mapped event as rv_provision_map would give it. state: the object is a subscription (tier,
 * status, period_end and cap are its whole state; period_end 0 is absent, cap is
 * cancel_at_period_end). session: the Checkout Session of a checkout event. */
typedef struct evspec_s {
    const char *id;
    const char *type;
    const char *stripe_type;
    int64_t created;
    const char *sub;
    const char *cust;
    const char *email;
    const char *tier;
    const char *status;
    const char *session;
    int state;
    int64_t period_end;
    int cap;
    int fulfills;
} evspec_t;

static void make_event(rv_prov_event_t *ev, const evspec_t *s) {
    memset(ev, 0, sizeof *ev);
    ev->type = s->type ? s->type : "subscription.updated";
    snprintf(ev->event_id, sizeof ev->event_id, "%s", s->id ? s->id : "");
    snprintf(ev->stripe_type, sizeof ev->stripe_type, "%s",
             s->stripe_type ? s->stripe_type : "customer.subscription.updated");
    ev->created = s->created;
    snprintf(ev->customer_id, sizeof ev->customer_id, "%s", s->cust ? s->cust : "");
    snprintf(ev->subscription_id, sizeof ev->subscription_id, "%s", s->sub ? s->sub : "");
    snprintf(ev->email, sizeof ev->email, "%s", s->email ? s->email : "");
    snprintf(ev->tier, sizeof ev->tier, "%s", s->tier ? s->tier : "");
    snprintf(ev->status, sizeof ev->status, "%s", s->status ? s->status : "");
    snprintf(ev->session_id, sizeof ev->session_id, "%s", s->session ? s->session : "");
    ev->has_state = s->state;
    ev->period_end = s->period_end;
    ev->has_period_end = s->state && s->period_end != 0;
    ev->cancel_at_period_end = s->state ? s->cap : -1;
    ev->fulfills = s->fulfills;
    char json[512];
    snprintf(json, sizeof json,
             "{\"v\":2,\"type\":\"%s\",\"stripe_event_id\":\"%s\",\"created\":%lld}", ev->type,
             ev->event_id, (long long)s->created);
    ev->data_json = strdup(json);
    assert_non_null(ev->data_json);
}

/* Apply in mode from source and wait for the answer; checks the callback comes later and
 * exactly once. */
static result_t apply_wait(fixture_t *f, rv_queue_t *q, const evspec_t *s, int mode,
                           const char *source) {
    rv_prov_event_t ev;
    make_event(&ev, s);
    result_t r = {0};
    int rc = mode == RV_APPLY_EVENT && strcmp(source, "webhook") == 0
                 ? rv_queue_enqueue(q, &ev, on_enqueued, &r)
                 : rv_queue_apply(q, &ev, mode, source, on_enqueued, &r);
    /* The queue copied the event: it can go now. */
    free(ev.data_json);
    memset(&ev, 0x55, sizeof ev);
    if (rc != 0) fail_msg("apply %s: %s", s->id ? s->id : "(no id)", rv_strerror(rc));
    assert_int_equal(r.called, 0);
    if (!run_until(f, is_called, &r, WAIT_MS)) fail_msg("no answer for %s", s->id);
    assert_int_equal(r.called, 1);
    return r;
}

static result_t enqueue_wait(fixture_t *f, rv_queue_t *q, const evspec_t *s) {
    return apply_wait(f, q, s, RV_APPLY_EVENT, "webhook");
}

/* Apply s and require exactly the result want (RV_ENQ_ASK_STRIPE included or not); returns the
 * entry id ("" unless added). */
static result_t expect_result_on(fixture_t *f, rv_queue_t *q, const evspec_t *s, int mode,
                                 const char *source, int want) {
    result_t r = apply_wait(f, q, s, mode, source);
    if (r.err != 0) fail_msg("%s: %s", s->id, rv_strerror(r.err));
    if (r.result != want) {
        fail_msg("%s: result %#x, want %#x", s->id ? s->id : "(no id)", (unsigned)r.result,
                 (unsigned)want);
    }
    if ((want & RV_ENQ_MASK) == RV_ENQ_ADDED) {
        assert_non_null(strchr(r.id, '-')); /* a stream id: ms-seq */
    } else {
        assert_string_equal(r.id, "");
    }
    return r;
}

static result_t expect_result(fixture_t *f, const evspec_t *s, int want) {
    return expect_result_on(f, f->q, s, RV_APPLY_EVENT, "webhook", want);
}

static void expect_added(fixture_t *f, const evspec_t *s) { expect_result(f, s, RV_ENQ_ADDED); }

/* ---- blocking Redis helpers ---------------------------------------------------------------- */

static long long redis_int(int port, const char *fmt, const char *arg) {
    char out[256];
    assert_int_equal(th_redis(port, out, sizeof out, fmt, arg), 0);
    char *end;
    long long v = strtoll(out, &end, 10);
    if (end == out || *end) fail_msg("expected a number from \"%s\", got \"%s\"", fmt, out);
    return v;
}

static void redis_str(int port, char *out, size_t n, const char *fmt, const char *arg) {
    assert_int_equal(th_redis(port, out, n, fmt, arg), 0);
}

/* A blocking hiredis command on an existing context, answered as text (strings, statuses,
 * errors and numbers; arrays as their count). */
static void ctx_cmd(redisContext *c, char *out, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    switch (r->type) {
    case REDIS_REPLY_INTEGER: snprintf(out, n, "%lld", r->integer); break;
    case REDIS_REPLY_ARRAY: snprintf(out, n, "%zu", r->elements); break;
    case REDIS_REPLY_NIL: snprintf(out, n, "(nil)"); break;
    default: snprintf(out, n, "%s", r->str); break;
    }
    freeReplyObject(r);
}

/* The stream entry with id entry: its type into type, and its data parsed (the caller deletes
 * it). Every entry has exactly the fields type, stripe_event_id and data, in that order. */
static cJSON *entry_data(int port, const char *entry, char *type, size_t tn) {
    redisContext *c = redisConnect("127.0.0.1", port);
    assert_true(c != NULL && !c->err);
    redisReply *r = redisCommand(c, "XRANGE %s %s %s", STREAM, entry, entry);
    redisFree(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    if (r->elements != 1) fail_msg("no entry %s in the stream", entry);
    const redisReply *fl = r->element[0]->element[1];
    assert_int_equal(fl->elements, 6);
    assert_string_equal(fl->element[0]->str, "type");
    assert_string_equal(fl->element[2]->str, "stripe_event_id");
    assert_string_equal(fl->element[4]->str, "data");
    if (type) snprintf(type, tn, "%s", fl->element[1]->str);
    cJSON *d = cJSON_Parse(fl->element[5]->str);
    if (!cJSON_IsObject(d)) fail_msg("data of %s is not JSON: %s", entry, fl->element[5]->str);
    freeReplyObject(r);
    return d;
}

/* The id of the newest entry of the stream. */
static void last_entry(int port, char *out, size_t n) {
    redisContext *c = redisConnect("127.0.0.1", port);
    assert_true(c != NULL && !c->err);
    redisReply *r = redisCommand(c, "XREVRANGE %s + - COUNT 1", STREAM);
    redisFree(c);
    assert_true(r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 1);
    snprintf(out, n, "%s", r->element[0]->element[0]->str);
    freeReplyObject(r);
}

static const char *dstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v)) fail_msg("%s is not a string", key);
    return v->valuestring;
}

/* data.entitlement says exactly this: tier, status and sub NULL mean null; period_end 0 means
 * null; cap is cancel_at_period_end; no Telegram chat is linked. */
static void expect_entitlement(const cJSON *data, const char *cust, const char *tier,
                               const char *status, int active, const char *sub, int64_t period_end,
                               int cap) {
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(data, "entitlement");
    if (!cJSON_IsObject(e)) fail_msg("the entry has no entitlement");
    assert_int_equal(cJSON_GetArraySize(e), 9);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(e, "telegram_user_id")));
    assert_string_equal(dstr(e, "customer_id"), cust);
    const struct {
        const char *key, *want;
    } strs[] = {{"tier", tier}, {"status", status}, {"subscription_id", sub}};
    for (size_t i = 0; i < RV_ARRAY_LEN(strs); i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, strs[i].key);
        if (strs[i].want == NULL) {
            if (!cJSON_IsNull(v)) fail_msg("entitlement.%s is not null", strs[i].key);
        } else if (!cJSON_IsString(v) || strcmp(v->valuestring, strs[i].want) != 0) {
            fail_msg("entitlement.%s is not \"%s\"", strs[i].key, strs[i].want);
        }
    }
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(e, "active");
    if (!cJSON_IsBool(a) || cJSON_IsTrue(a) != active) {
        fail_msg("entitlement.active is not %s", active ? "true" : "false");
    }
    const cJSON *pe = cJSON_GetObjectItemCaseSensitive(e, "current_period_end");
    if (period_end == 0) {
        assert_true(cJSON_IsNull(pe));
    } else {
        assert_true(cJSON_IsNumber(pe) && pe->valuedouble == (double)period_end);
    }
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "cancel_at_period_end");
    assert_true(cJSON_IsBool(c) && cJSON_IsTrue(c) == cap);
    assert_true(cJSON_HasObjectItem(e, "email"));
}

/* The entry with id entry has type and source, and its entitlement says tier, status, active
 * and subscription sub of customer cust. */
static void expect_entry(int port, const char *entry, const char *type, const char *source,
                         const char *cust, const char *tier, const char *status, int active,
                         const char *sub) {
    char t[64];
    cJSON *d = entry_data(port, entry, t, sizeof t);
    assert_string_equal(t, type);
    assert_string_equal(dstr(d, "source"), source);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(d, "v")->valueint, 2);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(d, "entitlement");
    const cJSON *pe = cJSON_GetObjectItemCaseSensitive(e, "current_period_end");
    const cJSON *cap = cJSON_GetObjectItemCaseSensitive(e, "cancel_at_period_end");
    expect_entitlement(d, cust, tier, status, active, sub,
                       cJSON_IsNumber(pe) ? (int64_t)pe->valuedouble : 0, cJSON_IsTrue(cap));
    cJSON_Delete(d);
}

/* HGET rivet:customer:<cust> field must be want ("(nil)": absent). */
static void expect_hash(int port, const char *cust, const char *field, const char *want) {
    char out[256];
    assert_int_equal(th_redis(port, out, sizeof out, "HGET rivet:customer:%s %s", cust, field), 0);
    if (strcmp(out, want) != 0) {
        fail_msg("rivet:customer:%s %s is \"%s\", want \"%s\"", cust, field, out, want);
    }
}

/* redis-server with the harness's defaults plus extra arguments on a given port (0: none). */
static void redis_spawn(th_proc_t *p, int port, const char *const extra[]) {
    const char *argv[32];
    char portstr[16];
    size_t n = 0;
    snprintf(portstr, sizeof portstr, "%d", port);
    argv[n++] = "redis-server";
    argv[n++] = "--port";
    argv[n++] = portstr;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--daemonize";
    argv[n++] = "no";
    for (size_t i = 0; extra && extra[i] && n < RV_ARRAY_LEN(argv) - 1; i++) argv[n++] = extra[i];
    argv[n] = NULL;
    assert_int_equal(th_spawn(p, argv, NULL), 0);
    p->port = port;
    if (port) assert_int_equal(th_wait_port(port, WAIT_MS), 0);
}

/* ---- fixture --------------------------------------------------------------------------- */

static int setup(void **state) {
    fixture_t *f = calloc(1, sizeof *f);
    if (!f) return -1;
    if (uv_loop_init(&f->loop) != 0) return -1;
    uv_timer_init(&f->loop, &f->tick);
    uv_timer_start(&f->tick, on_tick, 5, 5);
    *state = f;
    return 0;
}

static int setup_redis(void **state) {
    if (setup(state) != 0) return -1;
    fixture_t *f = *state;
    return th_redis_start(&f->redis) == 0 ? 0 : -1;
}

static int teardown(void **state) {
    fixture_t *f = *state;
    if (f->q) queue_close(f, f->q);
    uv_close((uv_handle_t *)&f->tick, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&f->loop);
    if (f->redis.pid) th_stop(&f->redis, SIGTERM, 5000);
    if (f->tmpdir[0]) rmdir(f->tmpdir);
    rv_log_flush();
    free(f);
    /* Every handle, the adapter's included, must be gone. */
    return rc == 0 ? 0 : -1;
}

/* ---- dead letters ------------------------------------------------------------------------ */

/* Dead-letter len bytes and wait for the answer; checks the callback comes later, once. */
static result_t dead_wait(fixture_t *f, const char *id, const char *type, const char *reason,
                          const void *body, size_t len) {
    result_t r = {0};
    int rc = rv_queue_dead_letter(f->q, id, type, reason, body, len, on_enqueued, &r);
    if (rc != 0) fail_msg("dead letter %s: %s", id ? id : "(null)", rv_strerror(rc));
    assert_int_equal(r.called, 0);
    if (!run_until(f, is_called, &r, WAIT_MS)) fail_msg("no answer for dead letter");
    assert_int_equal(r.called, 1);
    return r;
}

/* The fields of the dead letter with entry id, in order, checked against what was sent. */
static void expect_dead_entry(int port, const char *entry, const char *id, const char *type,
                              const char *reason, const void *body, size_t len) {
    redisContext *c = redisConnect("127.0.0.1", port);
    assert_true(c != NULL && !c->err);
    redisReply *r = redisCommand(c, "XRANGE %s %s %s", DEAD, entry, entry);
    redisFree(c);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 1);
    const redisReply *f = r->element[0]->element[1];
    assert_int_equal(f->elements, 10);
    static const char *const names[] = {"reason", "stripe_event_id", "stripe_event_type",
                                        "received", "body"};
    for (size_t i = 0; i < 5; i++) assert_string_equal(f->element[2 * i]->str, names[i]);
    assert_string_equal(f->element[1]->str, reason);
    assert_string_equal(f->element[3]->str, id);
    assert_string_equal(f->element[5]->str, type);
    long long received = atoll(f->element[7]->str);
    long long now = (long long)time(NULL);
    assert_true(received > now - 60 && received <= now + 1);
    const redisReply *b = f->element[9];
    if (b->len != len || memcmp(b->str, body, len) != 0) {
        fail_msg("body of %s differs: %zu bytes, sent %zu", entry, b->len, len);
    }
    freeReplyObject(r);
}

static void test_dead_letter(void **state) {
    fixture_t *f = *state;
    char url[64], out[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    queue_open_ready(f, url);

    /* Raw bytes, NULs, CR LF and invalid UTF-8 included, are kept as they are. */
    static const char body[] = "{\"id\":\"evt_dl1\"}\x00\r\nFLUSHALL\r\n\xff\xc0\xaf";
    const char *reason = "customer id is not a Stripe id";
    result_t r =
        dead_wait(f, "evt_dl1", "customer.subscription.created", reason, body, sizeof body - 1);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.result, RV_ENQ_ADDED);
    assert_non_null(strchr(r.id, '-'));
    expect_dead_entry(f->redis.port, r.id, "evt_dl1", "customer.subscription.created", reason, body,
                      sizeof body - 1);
    long long ttl = redis_int(f->redis.port, "TTL %s", "rivet:event:evt_dl1");
    assert_true(ttl > TTL - 30 && ttl <= TTL);

    /* Stripe's redelivery of the same event: nothing more. */
    result_t d =
        dead_wait(f, "evt_dl1", "customer.subscription.created", reason, body, sizeof body - 1);
    assert_int_equal(d.err, 0);
    assert_int_equal(d.result, RV_ENQ_DUPLICATE);
    assert_string_equal(d.id, "");
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", DEAD), 1);

    /* Without an id there is nothing to de-duplicate by: every delivery is kept. */
    result_t n1 = dead_wait(f, "", "", "the body is not JSON", "x", 1);
    result_t n2 = dead_wait(f, NULL, NULL, "the body is not JSON", "x", 1);
    assert_int_equal(n1.result, RV_ENQ_ADDED);
    assert_int_equal(n2.result, RV_ENQ_ADDED);
    expect_dead_entry(f->redis.port, n2.id, "", "", "the body is not JSON", "x", 1);
    result_t n3 = dead_wait(f, NULL, NULL, "the body is empty", NULL, 0);
    expect_dead_entry(f->redis.port, n3.id, "", "", "the body is empty", "", 0);
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", DEAD), 4);
    assert_int_equal(redis_int(f->redis.port, "EXISTS %s", "rivet:none"), 0);

    /* One outcome per event id, across both streams. */
    expect_added(f, &(evspec_t){.id = "evt_dl2", .created = 1});
    d = dead_wait(f, "evt_dl2", "invoice.payment_failed", reason, "y", 1);
    assert_int_equal(d.result, RV_ENQ_DUPLICATE);
    d = dead_wait(f, "evt_dl3", "invoice.payment_failed", reason, "y", 1);
    assert_int_equal(d.result, RV_ENQ_ADDED);
    result_t e = enqueue_wait(f, f->q, &(evspec_t){.id = "evt_dl3", .created = 1});
    assert_int_equal(e.result, RV_ENQ_DUPLICATE);
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 1);
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", DEAD), 5);
    redis_str(f->redis.port, out, sizeof out, "TYPE %s", DEAD);
    assert_string_equal(out, "stream");
}

static void test_dead_letter_refused(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    f->q = queue_open(f, url, 2000);
    result_t r = {0};
    /* Not connected yet: refused at once. */
    assert_int_equal(rv_queue_dead_letter(f->q, "evt_r", "t", "why", "b", 1, on_enqueued, &r),
                     RV_EUNAVAIL);
    assert_true(run_until(f, is_ready, f->q, WAIT_MS));

    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    rv_queue_t *q = f->q;
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", "why", "b", 1, NULL, &r), RV_EINVAL);
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", NULL, "b", 1, on_enqueued, &r),
                     RV_EINVAL);
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", "", "b", 1, on_enqueued, &r), RV_EINVAL);
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", big, "b", 1, on_enqueued, &r),
                     RV_EINVAL);
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", big, "why", "b", 1, on_enqueued, &r),
                     RV_EINVAL);
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", "why", NULL, 1, on_enqueued, &r),
                     RV_EINVAL);
    /* An id that is not a Stripe id would become a key: refused. */
    static const char *const bad_ids[] = {"evt 1", "evt\r\nFLUSHALL", "evt:*", "evt_\xc3\xbc"};
    for (size_t i = 0; i < RV_ARRAY_LEN(bad_ids); i++) {
        assert_int_equal(rv_queue_dead_letter(q, bad_ids[i], "t", "why", "b", 1, on_enqueued, &r),
                         RV_EINVAL);
    }
    assert_int_equal(rv_queue_dead_letter(q, big, "t", "why", "b", 1, on_enqueued, &r), RV_EINVAL);

    /* The same holds for the ids the enqueue script turns into keys, and for a status that
     * would shift the fields of a subscription's state. */
    static const evspec_t bad_events[] = {
        {.id = "evt\r\nx", .created = 1},
        {.id = "evt_ok", .created = 1, .cust = "cus\r\nFLUSHALL", .sub = "sub_1", .state = 1},
        {.id = "evt_ok", .created = 1, .sub = "sub 1"},
        {.id = "evt_ok", .created = 1, .sub = "sub_*"},
        {.id = "evt_ok",
         .created = 1,
         .cust = "cus_1",
         .session = "cs_\r\nDEL x",
         .type = "user.provision",
         .fulfills = 1},
        {.id = "evt_ok",
         .created = 1,
         .cust = "cus_1",
         .sub = "sub_1",
         .state = 1,
         .status = "active|pro"},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bad_events); i++) {
        rv_prov_event_t ev;
        make_event(&ev, &bad_events[i]);
        assert_int_equal(rv_queue_enqueue(q, &ev, on_enqueued, &r), RV_EINVAL);
        free(ev.data_json);
    }
    assert_int_equal(r.called, 0);
    assert_int_equal(rv_queue_pending(q), 0);
    char out[64];
    assert_int_equal(th_redis(f->redis.port, out, sizeof out, "DBSIZE"), 0);
    assert_string_equal(out, "0");

    /* In flight when Redis dies: the callback says so, once; while down: refused at once. */
    result_t d = {0};
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", "why", "b", 1, on_enqueued, &d), 0);
    th_stop(&f->redis, SIGKILL, 5000);
    assert_true(run_until(f, is_called, &d, WAIT_MS));
    assert_int_equal(d.called, 1);
    assert_int_equal(d.err, RV_EUNAVAIL);
    assert_true(run_until(f, is_not_ready, q, WAIT_MS));
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", "why", "b", 1, on_enqueued, &r),
                     RV_EUNAVAIL);
    assert_int_equal(r.called, 0);
}

typedef struct many_s {
    int called;
    int failed;
} many_t;

static void on_many(void *data, int err, int result, const char *stream_id) {
    many_t *m = data;
    m->called++;
    if (err != 0 || result != RV_ENQ_ADDED) m->failed++;
}

static int many_done(void *ud) { return ((many_t *)ud)->called == RV_QUEUE_DEAD_MAX + 300; }

/* Whoever holds the webhook secret cannot grow the dead-letter stream without end. */
static void test_dead_letter_bounded(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    queue_open_ready(f, url);
    many_t m = {0};
    for (int i = 0; i < RV_QUEUE_DEAD_MAX + 300; i++) {
        if (rv_queue_dead_letter(f->q, NULL, NULL, "the body is not JSON", "junk", 4, on_many,
                                 &m) != 0) {
            fail_msg("dead letter %d refused", i);
        }
    }
    if (!run_until(f, many_done, &m, 60000)) fail_msg("only %d answers", m.called);
    assert_int_equal(m.failed, 0);
    /* Trimmed by whole nodes (MAXLEN ~): at least the bound, at most a node of 100 more. */
    long long n = redis_int(f->redis.port, "XLEN %s", DEAD);
    if (n < RV_QUEUE_DEAD_MAX || n > RV_QUEUE_DEAD_MAX + 100) {
        fail_msg("%lld dead letters kept, expected about %d", n, RV_QUEUE_DEAD_MAX);
    }
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_added_then_duplicate(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    queue_open_ready(f, url);
    assert_int_equal(rv_queue_state(f->q), RV_QUEUE_CONNECTED);
    assert_int_equal(rv_queue_reconnects(f->q), 0);

    evspec_t s = {.id = "evt_dup_1",
                  .type = "subscription.created",
                  .created = 1700000000,
                  .cust = "cus_A",
                  .sub = "sub_A",
                  .state = 1,
                  .tier = "pro",
                  .status = "active",
                  .period_end = 1702592000};
    result_t r = enqueue_wait(f, f->q, &s);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.result, RV_ENQ_ADDED);
    assert_int_equal(rv_queue_pending(f->q), 0);

    char out[2048], expect[2048];
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 1);
    redis_str(f->redis.port, out, sizeof out, "XRANGE %s - +", STREAM);
    /* The mapped data, then where it came from and the customer's record after it. */
    snprintf(expect, sizeof expect,
             "%s\ntype\nsubscription.created\nstripe_event_id\nevt_dup_1\ndata\n"
             "{\"v\":2,\"type\":\"subscription.created\",\"stripe_event_id\":\"evt_dup_1\","
             "\"created\":1700000000,\"source\":\"webhook\",\"entitlement\":{"
             "\"customer_id\":\"cus_A\",\"email\":null,\"tier\":\"pro\",\"status\":\"active\","
             "\"active\":true,\"subscription_id\":\"sub_A\",\"current_period_end\":1702592000,"
             "\"cancel_at_period_end\":false,\"telegram_user_id\":null}}",
             r.id);
    assert_string_equal(out, expect);
    /* The record keeps the same entitlement whole, as the entry carries it. */
    redis_str(f->redis.port, out, sizeof out, "HGET rivet:customer:cus_A %s", "ent");
    const char *ent = strstr(expect, "\"entitlement\":");
    assert_non_null(ent);
    ent += strlen("\"entitlement\":");
    assert_int_equal(strlen(out), strlen(ent) - 1);
    assert_memory_equal(out, ent, strlen(out));
    redis_str(f->redis.port, out, sizeof out, "HGET rivet:customer:cus_A %s", "s:sub_A");
    assert_string_equal(out, "1700000000|pro|active|1702592000|0");
    /* The event key remembers how the event came, for the configured time. */
    redis_str(f->redis.port, out, sizeof out, "GET %s", "rivet:event:evt_dup_1");
    assert_string_equal(out, "webhook");
    long long ttl = redis_int(f->redis.port, "TTL %s", "rivet:event:evt_dup_1");
    assert_true(ttl > TTL - 30 && ttl <= TTL);

    result_t d = enqueue_wait(f, f->q, &s);
    assert_int_equal(d.err, 0);
    assert_int_equal(d.result, RV_ENQ_DUPLICATE);
    assert_string_equal(d.id, "");
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 1);
    /* The first callback was not called again meanwhile. */
    assert_int_equal(r.called, 1);
}

/* Stripe delivers in no guaranteed order: every event is appended, and only newer information
 * moves the record; an entry carries the record as it stands after it. */
static void test_ordering(void **state) {
    fixture_t *f = *state;
    char url[64], out[256];
    snprintf(url, sizeof url, "redis://localhost:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    const evspec_t o1 = {.id = "evt_o1",
                         .created = 200,
                         .cust = "cus_O",
                         .sub = "sub_O",
                         .state = 1,
                         .tier = "pro",
                         .status = "active",
                         .period_end = 5000};
    expect_added(f, &o1);
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_O %s", "s:sub_O");
    assert_string_equal(out, "200|pro|active|5000|0");

    /* Older than what was applied: appended, remembered, and the record is not moved back. */
    const evspec_t old = {.id = "evt_o0",
                          .type = "subscription.created",
                          .created = 100,
                          .cust = "cus_O",
                          .sub = "sub_O",
                          .state = 1,
                          .tier = "basic",
                          .status = "incomplete",
                          .period_end = 4000,
                          .cap = 1};
    result_t r = expect_result(f, &old, RV_ENQ_ADDED);
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 2);
    redis_str(port, out, sizeof out, "GET %s", "rivet:event:evt_o0");
    assert_string_equal(out, "webhook");
    /* Its entry carries the newer state, which is what a consumer applying it must end with. */
    cJSON *d = entry_data(port, r.id, NULL, 0);
    assert_string_equal(dstr(d, "stripe_event_id"), "evt_o0");
    expect_entitlement(d, "cus_O", "pro", "active", 1, "sub_O", 5000, 0);
    cJSON_Delete(d);
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_O %s", "s:sub_O");
    assert_string_equal(out, "200|pro|active|5000|0");
    expect_hash(port, "cus_O", "tier", "pro");
    expect_hash(port, "cus_O", "status", "active");
    expect_hash(port, "cus_O", "current_period_end", "5000");
    expect_hash(port, "cus_O", "cancel_at_period_end", "0");
    /* An old event delivered again is a duplicate. */
    r = enqueue_wait(f, f->q, &old);
    assert_int_equal(r.result, RV_ENQ_DUPLICATE);
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 2);

    /* The same second with the same state agrees with what is there: nothing to ask. */
    expect_added(f, &(evspec_t){.id = "evt_o2",
                                .created = 200,
                                .cust = "cus_O",
                                .sub = "sub_O",
                                .state = 1,
                                .tier = "pro",
                                .status = "active",
                                .period_end = 5000});
    /* Newer: applied. */
    r = expect_result(f,
                      &(evspec_t){.id = "evt_o3",
                                  .created = 300,
                                  .cust = "cus_O",
                                  .sub = "sub_O",
                                  .state = 1,
                                  .tier = "enterprise",
                                  .status = "active",
                                  .period_end = 6000,
                                  .cap = 1},
                      RV_ENQ_ADDED);
    expect_hash(port, "cus_O", "tier", "enterprise");
    expect_hash(port, "cus_O", "current_period_end", "6000");
    expect_hash(port, "cus_O", "cancel_at_period_end", "1");
    d = entry_data(port, r.id, NULL, 0);
    expect_entitlement(d, "cus_O", "enterprise", "active", 1, "sub_O", 6000, 1);
    cJSON_Delete(d);

    /* An invoice says nothing of the state: appended, whatever its time, and moves nothing. */
    r = expect_result(f,
                      &(evspec_t){.id = "evt_o4",
                                  .type = "payment.succeeded",
                                  .stripe_type = "invoice.payment_succeeded",
                                  .created = 250,
                                  .cust = "cus_O",
                                  .sub = "sub_O",
                                  .tier = "basic",
                                  .status = "paid"},
                      RV_ENQ_ADDED);
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_O %s", "s:sub_O");
    assert_string_equal(out, "300|enterprise|active|6000|1");
    expect_hash(port, "cus_O", "tier", "enterprise");
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 5);

    /* Another customer's subscription is its own; an event without a customer touches no
     * record and its entry says where it came from, without an entitlement. */
    expect_added(f, &(evspec_t){.id = "evt_o5",
                                .created = 50,
                                .cust = "cus_P",
                                .sub = "sub_P",
                                .state = 1,
                                .tier = "basic",
                                .status = "active"});
    expect_hash(port, "cus_P", "tier", "basic");
    expect_hash(port, "cus_O", "tier", "enterprise");
    r = expect_result(f, &(evspec_t){.id = "evt_o6", .created = 10}, RV_ENQ_ADDED);
    d = entry_data(port, r.id, NULL, 0);
    assert_string_equal(dstr(d, "source"), "webhook");
    assert_false(cJSON_HasObjectItem(d, "entitlement"));
    cJSON_Delete(d);
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:none"), 0);
    /* Subscriptions have no keys of their own any more. */
    redis_str(port, out, sizeof out, "KEYS %s", "rivet:subscription:*");
    assert_string_equal(out, "");
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 7);
}

static void test_customer_hash(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    const char *key = "rivet:customer:cus_H";
    int port = f->redis.port;

    /* The first event has no email. */
    expect_added(f, &(evspec_t){.id = "evt_h1",
                                .created = 100,
                                .cust = "cus_H",
                                .sub = "sub_H",
                                .state = 1,
                                .tier = "basic",
                                .status = "active",
                                .period_end = 1000});
    expect_hash(port, "cus_H", "customer_id", "cus_H");
    expect_hash(port, "cus_H", "tier", "basic");
    expect_hash(port, "cus_H", "status", "active");
    expect_hash(port, "cus_H", "active", "true");
    expect_hash(port, "cus_H", "subscription_id", "sub_H");
    expect_hash(port, "cus_H", "current_period_end", "1000");
    expect_hash(port, "cus_H", "cancel_at_period_end", "0");
    expect_hash(port, "cus_H", "email", "(nil)");
    expect_hash(port, "cus_H", "email_v", "(nil)");
    assert_int_equal(redis_int(port, "TTL %s", key), -1);

    /* Newer: the subscription's new state replaces the old one. */
    expect_added(f, &(evspec_t){.id = "evt_h2",
                                .created = 200,
                                .cust = "cus_H",
                                .sub = "sub_H",
                                .state = 1,
                                .tier = "pro",
                                .status = "active",
                                .period_end = 2000});
    expect_hash(port, "cus_H", "tier", "pro");
    expect_hash(port, "cus_H", "current_period_end", "2000");

    /* Older, arriving late: fills the missing email, rolls nothing back. */
    result_t r = expect_result(f,
                               &(evspec_t){.id = "evt_h0",
                                           .created = 150,
                                           .cust = "cus_H",
                                           .email = "a@example.com",
                                           .sub = "sub_H",
                                           .state = 1,
                                           .tier = "enterprise",
                                           .status = "past_due"},
                               RV_ENQ_ADDED);
    expect_hash(port, "cus_H", "email", "a@example.com");
    expect_hash(port, "cus_H", "email_v", "150");
    expect_hash(port, "cus_H", "tier", "pro");
    expect_hash(port, "cus_H", "status", "active");
    expect_hash(port, "cus_H", "subscription_id", "sub_H");
    expect_hash(port, "cus_H", "s:sub_H", "200|pro|active|2000|0");
    cJSON *d = entry_data(port, r.id, NULL, 0);
    expect_entitlement(d, "cus_H", "pro", "active", 1, "sub_H", 2000, 0);
    assert_string_equal(dstr(cJSON_GetObjectItemCaseSensitive(d, "entitlement"), "email"),
                        "a@example.com");
    cJSON_Delete(d);

    /* An email is replaced by a newer one only. */
    expect_added(f, &(evspec_t){.id = "evt_h5",
                                .type = "payment.succeeded",
                                .created = 300,
                                .cust = "cus_H",
                                .sub = "sub_H",
                                .email = "b@example.com"});
    expect_hash(port, "cus_H", "email", "b@example.com");
    expect_added(f, &(evspec_t){.id = "evt_h6",
                                .type = "payment.succeeded",
                                .created = 250,
                                .cust = "cus_H",
                                .sub = "sub_H",
                                .email = "c@example.com"});
    expect_hash(port, "cus_H", "email", "b@example.com");
    expect_hash(port, "cus_H", "email_v", "300");

    /* An invoice's status is not the subscription's: the record keeps what it has. */
    expect_added(f, &(evspec_t){.id = "evt_h3",
                                .type = "payment.failed",
                                .created = 400,
                                .cust = "cus_H",
                                .sub = "sub_H",
                                .status = "canceled"});
    expect_hash(port, "cus_H", "status", "active");

    /* A record needs a customer. */
    expect_added(f, &(evspec_t){.id = "evt_h4",
                                .created = 500,
                                .sub = "sub_Z",
                                .state = 1,
                                .tier = "basic",
                                .status = "active"});
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:customer:"), 0);
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:none"), 0);
    expect_hash(port, "cus_H", "tier", "pro");
    expect_hash(port, "cus_H", "s:sub_Z", "(nil)");
}

/* The dropped upgrade: Stripe sent the checkout (pro) at T, the subscription's upgrade to
 * enterprise at T+300 and the invoice at T+302, and the invoice arrived before the upgrade. */
static void test_upgrade_after_newer_invoice(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    const int64_t t = 1750000000;

    /* The checkout names a subscription nobody has seen: provisional, and Stripe is asked. */
    result_t r = expect_result(f,
                               &(evspec_t){.id = "evt_u1",
                                           .type = "user.provision",
                                           .stripe_type = "checkout.session.completed",
                                           .created = t,
                                           .cust = "cus_U",
                                           .sub = "sub_U",
                                           .session = "cs_U",
                                           .tier = "pro",
                                           .status = "paid",
                                           .fulfills = 1},
                               RV_ENQ_ADDED | RV_ENQ_ASK_STRIPE);
    expect_entry(port, r.id, "user.provision", "webhook", "cus_U", "pro", "active", 1, "sub_U");
    expect_result(f,
                  &(evspec_t){.id = "evt_u3",
                              .type = "payment.succeeded",
                              .stripe_type = "invoice.payment_succeeded",
                              .created = t + 302,
                              .cust = "cus_U",
                              .sub = "sub_U",
                              .tier = "pro",
                              .status = "paid"},
                  RV_ENQ_ADDED);
    expect_hash(port, "cus_U", "tier", "pro");

    r = expect_result(f,
                      &(evspec_t){.id = "evt_u2",
                                  .created = t + 300,
                                  .cust = "cus_U",
                                  .sub = "sub_U",
                                  .state = 1,
                                  .tier = "enterprise",
                                  .status = "active",
                                  .period_end = t + 2592000},
                      RV_ENQ_ADDED);
    expect_hash(port, "cus_U", "tier", "enterprise");
    expect_hash(port, "cus_U", "active", "true");
    cJSON *d = entry_data(port, r.id, NULL, 0);
    assert_string_equal(dstr(d, "stripe_event_id"), "evt_u2");
    expect_entitlement(d, "cus_U", "enterprise", "active", 1, "sub_U", t + 2592000, 0);
    cJSON_Delete(d);

    /* The subscription's creation, older, arriving last, does not undo the upgrade. */
    r = expect_result(f,
                      &(evspec_t){.id = "evt_u0",
                                  .type = "subscription.created",
                                  .created = t + 1,
                                  .cust = "cus_U",
                                  .sub = "sub_U",
                                  .state = 1,
                                  .tier = "pro",
                                  .status = "active",
                                  .period_end = t + 2592000},
                      RV_ENQ_ADDED);
    expect_entry(port, r.id, "subscription.created", "webhook", "cus_U", "enterprise", "active", 1,
                 "sub_U");
    expect_hash(port, "cus_U", "tier", "enterprise");
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 4);
}

/* A checkout delivered after its subscription was deleted provisions nobody. */
static void test_late_checkout_after_deletion(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    const int64_t t = 1750000000;

    expect_added(f, &(evspec_t){.id = "evt_l1",
                                .type = "subscription.created",
                                .created = t,
                                .cust = "cus_L",
                                .sub = "sub_L",
                                .state = 1,
                                .tier = "pro",
                                .status = "active",
                                .period_end = t + 1000});
    expect_added(f, &(evspec_t){.id = "evt_l2",
                                .type = "user.deprovision",
                                .created = t + 100,
                                .cust = "cus_L",
                                .sub = "sub_L",
                                .state = 1,
                                .tier = "pro",
                                .status = "canceled",
                                .period_end = t + 1000});
    expect_hash(port, "cus_L", "active", "false");

    /* Its one user.provision is still appended (once per session), saying the truth. */
    result_t r = expect_result(f,
                               &(evspec_t){.id = "evt_l0",
                                           .type = "user.provision",
                                           .stripe_type = "checkout.session.completed",
                                           .created = t - 5,
                                           .cust = "cus_L",
                                           .sub = "sub_L",
                                           .session = "cs_L",
                                           .tier = "pro",
                                           .status = "paid",
                                           .fulfills = 1},
                               RV_ENQ_ADDED);
    cJSON *d = entry_data(port, r.id, NULL, 0);
    expect_entitlement(d, "cus_L", "pro", "canceled", 0, "sub_L", t + 1000, 0);
    cJSON_Delete(d);
    expect_hash(port, "cus_L", "active", "false");
    expect_hash(port, "cus_L", "status", "canceled");
    expect_hash(port, "cus_L", "s:sub_L", "1750000100|pro|canceled|1750001000|0");
}

/* Whether "<subscription> <customer>" is in the set of subscriptions in doubt. */
static int in_doubt(int port, const char *member) {
    char out[64];
    redis_str(port, out, sizeof out, "ZSCORE rivet:doubts %s", member);
    return strcmp(out, "(nil)") != 0;
}

/* Two different states in the same second cannot be ordered: Stripe is asked. */
static void test_same_second_asks_stripe(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    evspec_t s = {.id = "evt_s1",
                  .created = 700,
                  .cust = "cus_S",
                  .sub = "sub_S",
                  .state = 1,
                  .tier = "pro",
                  .status = "active"};
    expect_result(f, &s, RV_ENQ_ADDED);
    s.id = "evt_s2";
    s.tier = "enterprise";
    assert_false(in_doubt(port, "sub_S cus_S"));
    result_t r = expect_result(f, &s, RV_ENQ_ADDED | RV_ENQ_ASK_STRIPE);
    /* The doubt is kept with the event that raised it, until a read settles it. */
    assert_true(in_doubt(port, "sub_S cus_S"));
    /* Nothing is guessed meanwhile: the first state stands until Stripe says. */
    expect_hash(port, "cus_S", "tier", "pro");
    expect_entry(port, r.id, "subscription.updated", "webhook", "cus_S", "pro", "active", 1,
                 "sub_S");
    /* The same second with another cancel_at_period_end is another state too. */
    s.id = "evt_s3";
    s.tier = "pro";
    s.cap = 1;
    expect_result(f, &s, RV_ENQ_ADDED | RV_ENQ_ASK_STRIPE);
    expect_hash(port, "cus_S", "cancel_at_period_end", "0");
    /* What Stripe says, read in the same second, may come from before or after the events of
     * that second: not applied, and Stripe is asked again. */
    s.id = NULL;
    s.tier = "enterprise";
    s.cap = 0;
    expect_result_on(f, f->q, &s, RV_APPLY_STATE, "stripe", RV_ENQ_RECORDED | RV_ENQ_ASK_STRIPE);
    expect_hash(port, "cus_S", "tier", "pro");
    expect_hash(port, "cus_S", "s:sub_S", "700|pro|active||0");
    /* Even when it says what rivetd has. */
    s.tier = "pro";
    expect_result_on(f, f->q, &s, RV_APPLY_STATE, "stripe", RV_ENQ_RECORDED | RV_ENQ_ASK_STRIPE);
    assert_true(in_doubt(port, "sub_S cus_S"));
    /* Read a second later, it is newer than every event of that second: applied, settled. */
    s.tier = "enterprise";
    s.created = 701;
    r = expect_result_on(f, f->q, &s, RV_APPLY_STATE, "stripe", RV_ENQ_ADDED);
    expect_hash(port, "cus_S", "tier", "enterprise");
    assert_false(in_doubt(port, "sub_S cus_S"));
    expect_entry(port, r.id, "subscription.updated", "stripe", "cus_S", "enterprise", "active", 1,
                 "sub_S");
}

/* An invoice of a subscription rivetd has not seen: Stripe is asked for it. */
static void test_unknown_subscription_asks_stripe(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    evspec_t in = {.id = "evt_i1",
                   .type = "payment.succeeded",
                   .stripe_type = "invoice.payment_succeeded",
                   .created = 900,
                   .cust = "cus_I",
                   .sub = "sub_I",
                   .tier = "pro",
                   .status = "paid",
                   .email = "i@example.com"};
    result_t r = expect_result(f, &in, RV_ENQ_ADDED | RV_ENQ_ASK_STRIPE);
    /* The record knows the customer and nothing of an entitlement. */
    cJSON *d = entry_data(port, r.id, NULL, 0);
    expect_entitlement(d, "cus_I", NULL, NULL, 0, NULL, 0, 0);
    cJSON_Delete(d);
    expect_hash(port, "cus_I", "customer_id", "cus_I");
    expect_hash(port, "cus_I", "email", "i@example.com");
    expect_hash(port, "cus_I", "tier", "(nil)");
    expect_hash(port, "cus_I", "s:sub_I", "(nil)");
    assert_true(in_doubt(port, "sub_I cus_I"));

    /* Once the subscription is known an invoice needs nothing more. */
    expect_added(f, &(evspec_t){.id = "evt_i2",
                                .type = "subscription.created",
                                .created = 899,
                                .cust = "cus_I",
                                .sub = "sub_I",
                                .state = 1,
                                .tier = "pro",
                                .status = "active"});
    in.id = "evt_i3";
    expect_result(f, &in, RV_ENQ_ADDED);
    /* Only a read of Stripe settles a doubt (recovery asks again for those left). */
    assert_true(in_doubt(port, "sub_I cus_I"));
    /* An invoice without a subscription has nothing to ask about. */
    in.id = "evt_i4";
    in.sub = NULL;
    expect_result(f, &in, RV_ENQ_ADDED);
}

/* One user.provision per Checkout Session, whichever of the success page, a webhook or
 * recovery comes first; an unpaid session waits for its payment. */
static void test_one_provision_per_session(void **state) {
    fixture_t *f = *state;
    char url[64], out[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    evspec_t cs = {.type = "user.provision",
                   .stripe_type = "checkout.session.completed",
                   .created = 1000,
                   .cust = "cus_F",
                   .sub = "sub_F",
                   .session = "cs_F",
                   .tier = "basic",
                   .status = "paid",
                   .fulfills = 1};

    /* The success page first: the subscription is unknown, so Stripe is asked too. */
    result_t r = expect_result_on(f, f->q, &cs, RV_APPLY_FULFILL, "success_page",
                                  RV_ENQ_ADDED | RV_ENQ_ASK_STRIPE);
    expect_entry(port, r.id, "user.provision", "success_page", "cus_F", "basic", "active", 1,
                 "sub_F");
    redis_str(port, out, sizeof out, "GET %s", "rivet:checkout:cs_F");
    assert_string_equal(out, r.id);
    long long ttl = redis_int(port, "TTL %s", "rivet:checkout:cs_F");
    assert_true(ttl > TTL - 30 && ttl <= TTL);
    /* A reload of the success page. */
    cs.created = 1001;
    expect_result_on(f, f->q, &cs, RV_APPLY_FULFILL, "success_page",
                     RV_ENQ_RECORDED | RV_ENQ_ASK_STRIPE);
    /* Then Stripe's webhook for the same session: recorded, once, without an entry. */
    cs.id = "evt_F";
    cs.created = 999;
    expect_result(f, &cs, RV_ENQ_RECORDED | RV_ENQ_ASK_STRIPE);
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:event:evt_F"), 1);
    r = enqueue_wait(f, f->q, &cs);
    assert_int_equal(r.result, RV_ENQ_DUPLICATE);
    /* Recovery finds the same session under async_payment_succeeded: still one. */
    cs.id = "evt_F2";
    cs.stripe_type = "checkout.session.async_payment_succeeded";
    expect_result_on(f, f->q, &cs, RV_APPLY_EVENT, "recovery", RV_ENQ_RECORDED | RV_ENQ_ASK_STRIPE);
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 1);

    /* An unpaid completed session is recorded without an entry, and gives no access. */
    evspec_t unpaid = {.id = "evt_G1",
                       .type = "user.provision",
                       .stripe_type = "checkout.session.completed",
                       .created = 2000,
                       .cust = "cus_G",
                       .sub = "sub_G",
                       .session = "cs_G",
                       .tier = "pro",
                       .status = "unpaid"};
    expect_result(f, &unpaid, RV_ENQ_RECORDED | RV_ENQ_ASK_STRIPE);
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 1);
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:checkout:cs_G"), 0);
    expect_hash(port, "cus_G", "active", "false");
    expect_hash(port, "cus_G", "status", "incomplete");
    /* Its payment provisions it. */
    evspec_t paid = unpaid;
    paid.id = "evt_G2";
    paid.stripe_type = "checkout.session.async_payment_succeeded";
    paid.created = 2100;
    paid.status = "paid";
    paid.fulfills = 1;
    r = expect_result(f, &paid, RV_ENQ_ADDED | RV_ENQ_ASK_STRIPE);
    expect_entry(port, r.id, "user.provision", "webhook", "cus_G", "pro", "active", 1, "sub_G");
    expect_hash(port, "cus_G", "active", "true");
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:checkout:cs_G"), 1);
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 2);
}

/* A subscription read from Stripe: an entry only when it changes the entitlement. */
static void test_state_from_stripe(void **state) {
    fixture_t *f = *state;
    char url[64], last[64], out[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    evspec_t sub = {.id = "evt_st1",
                    .type = "subscription.created",
                    .created = 3000,
                    .cust = "cus_T",
                    .sub = "sub_T",
                    .state = 1,
                    .tier = "pro",
                    .status = "active",
                    .period_end = 9000};
    expect_added(f, &sub);

    /* What rivetd has already: recorded, no entry. */
    sub.id = NULL;
    sub.type = "subscription.updated";
    sub.created = 3050;
    expect_result_on(f, f->q, &sub, RV_APPLY_STATE, "stripe", RV_ENQ_RECORDED);
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 1);
    /* The read is newer information all the same. */
    expect_hash(port, "cus_T", "s:sub_T", "3050|pro|active|9000|0");
    /* Reads are not Stripe events: no event key. */
    redis_str(port, out, sizeof out, "KEYS %s", "rivet:event:*");
    assert_string_equal(out, "rivet:event:evt_st1");

    /* A tier Stripe has and rivetd had not: applied, with an entry from "stripe". */
    sub.created = 3060;
    sub.tier = "enterprise";
    result_t r = expect_result_on(f, f->q, &sub, RV_APPLY_STATE, "stripe", RV_ENQ_ADDED);
    last_entry(port, last, sizeof last);
    assert_string_equal(last, r.id);
    expect_entry(port, r.id, "subscription.updated", "stripe", "cus_T", "enterprise", "active", 1,
                 "sub_T");
    cJSON *d = entry_data(port, r.id, NULL, 0);
    assert_string_equal(dstr(d, "stripe_event_id"), "");
    cJSON_Delete(d);
    expect_hash(port, "cus_T", "tier", "enterprise");

    /* A read older than what rivetd has is not applied; Stripe is asked again, since a doubt it
     * was to settle may still stand. */
    sub.created = 3055;
    sub.tier = "basic";
    expect_result_on(f, f->q, &sub, RV_APPLY_STATE, "stripe", RV_ENQ_RECORDED | RV_ENQ_ASK_STRIPE);
    expect_hash(port, "cus_T", "tier", "enterprise");
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), 2);
}

/* past_due keeps access only where the operator says so. */
static void test_past_due_active(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    int port = f->redis.port;
    for (int pda = 0; pda < 2; pda++) {
        queue_open_past_due(f, url, pda);
        rv_queue_t *q = f->q;
        char id[32], cust[32];
        snprintf(id, sizeof id, "evt_pd%d", pda);
        snprintf(cust, sizeof cust, "cus_PD%d", pda);
        evspec_t s = {.id = id,
                      .created = 100,
                      .cust = cust,
                      .sub = "sub_PD",
                      .state = 1,
                      .tier = "pro",
                      .status = "past_due"};
        result_t r = expect_result_on(f, q, &s, RV_APPLY_EVENT, "webhook", RV_ENQ_ADDED);
        expect_entry(port, r.id, "subscription.updated", "webhook", cust, "pro", "past_due", pda,
                     "sub_PD");
        expect_hash(port, cust, "active", pda ? "true" : "false");
        /* Whatever the setting, active and trialing give access and unpaid does not. */
        static const struct {
            const char *status;
            int active;
        } others[] = {{"trialing", 1}, {"active", 1}, {"unpaid", 0}, {"incomplete", 0}};
        for (size_t i = 0; i < RV_ARRAY_LEN(others); i++) {
            snprintf(id, sizeof id, "evt_pd%d_%zu", pda, i);
            s.created++;
            s.status = others[i].status;
            r = expect_result_on(f, q, &s, RV_APPLY_EVENT, "webhook", RV_ENQ_ADDED);
            expect_entry(port, r.id, "subscription.updated", "webhook", cust, "pro",
                         others[i].status, others[i].active, "sub_PD");
        }
        queue_close(f, q);
        f->q = NULL;
    }
}

/* A customer with a canceled and an active subscription is entitled by the active one, in
 * whichever order the events come, even when the canceled one's is newer. Each order is tried
 * with the two subscription ids either way round, so that the outcome cannot hang on the order
 * in which the record's fields happen to be read. */
static void test_two_subscriptions(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    static const char *const subs[] = {"sub_one", "sub_two"};
    for (int variant = 0; variant < 4; variant++) {
        int order = variant & 1, swap = variant >> 1;
        const char *live = subs[swap], *gone = subs[1 - swap];
        char cust[32], id[2][32], field[32];
        snprintf(cust, sizeof cust, "cus_two%d", variant);
        snprintf(id[0], sizeof id[0], "evt_two%d_a", variant);
        snprintf(id[1], sizeof id[1], "evt_two%d_b", variant);
        const evspec_t active = {.id = id[order],
                                 .created = 5000,
                                 .cust = cust,
                                 .sub = live,
                                 .state = 1,
                                 .tier = "basic",
                                 .status = "active",
                                 .period_end = 8000};
        const evspec_t canceled = {.id = id[1 - order],
                                   .type = "user.deprovision",
                                   .created = 6000,
                                   .cust = cust,
                                   .sub = gone,
                                   .state = 1,
                                   .tier = "enterprise",
                                   .status = "canceled",
                                   .period_end = 7000};
        result_t r;
        if (order == 0) {
            expect_added(f, &canceled);
            expect_hash(port, cust, "active", "false");
            r = expect_result(f, &active, RV_ENQ_ADDED);
        } else {
            expect_added(f, &active);
            r = expect_result(f, &canceled, RV_ENQ_ADDED);
        }
        cJSON *d = entry_data(port, r.id, NULL, 0);
        expect_entitlement(d, cust, "basic", "active", 1, live, 8000, 0);
        cJSON_Delete(d);
        expect_hash(port, cust, "subscription_id", live);
        expect_hash(port, cust, "tier", "basic");
        expect_hash(port, cust, "active", "true");
        snprintf(field, sizeof field, "s:%s", gone);
        expect_hash(port, cust, field, "6000|enterprise|canceled|7000|0");
    }
    /* Between two inactive ones the newer speaks. */
    for (int swap = 0; swap < 2; swap++) {
        char cust[32], id[32];
        snprintf(cust, sizeof cust, "cus_inactive%d", swap);
        snprintf(id, sizeof id, "evt_inactive%d_a", swap);
        expect_added(f, &(evspec_t){.id = id,
                                    .created = 100,
                                    .cust = cust,
                                    .sub = subs[swap],
                                    .state = 1,
                                    .tier = "pro",
                                    .status = "canceled"});
        snprintf(id, sizeof id, "evt_inactive%d_b", swap);
        expect_added(f, &(evspec_t){.id = id,
                                    .created = 50,
                                    .cust = cust,
                                    .sub = subs[1 - swap],
                                    .state = 1,
                                    .tier = "basic",
                                    .status = "unpaid"});
        expect_hash(port, cust, "subscription_id", subs[swap]);
        expect_hash(port, cust, "status", "canceled");
    }
}

/* The script counts a customer's subscriptions and remembers the past_due rule it derived the
 * entitlement under, so that most events read only a few fields. A changed rule, or a record
 * kept without the count (as earlier versions kept it), is derived again from all the
 * subscriptions by the next event of that customer, whatever the event says. */
static void test_rule_change_and_older_records(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    int port = f->redis.port;
    evspec_t s = {.id = "evt_rc0",
                  .created = 100,
                  .cust = "cus_RC",
                  .sub = "sub_RC",
                  .state = 1,
                  .tier = "pro",
                  .status = "past_due"};
    for (int pda = 0; pda < 2; pda++) {
        queue_open_past_due(f, url, pda);
        if (pda == 0) {
            result_t r = expect_result_on(f, f->q, &s, RV_APPLY_EVENT, "webhook", RV_ENQ_ADDED);
            expect_entry(port, r.id, "subscription.updated", "webhook", "cus_RC", "pro", "past_due",
                         0, "sub_RC");
            expect_hash(port, "cus_RC", "subs", "1");
        } else {
            /* An older event changes no subscription, yet the entitlement follows the rule. */
            s.id = "evt_rc1";
            s.created = 50;
            s.status = "active";
            result_t r = expect_result_on(f, f->q, &s, RV_APPLY_EVENT, "webhook", RV_ENQ_ADDED);
            expect_entry(port, r.id, "subscription.updated", "webhook", "cus_RC", "pro", "past_due",
                         1, "sub_RC");
            expect_hash(port, "cus_RC", "active", "true");
            expect_hash(port, "cus_RC", "pd", "1");
        }
        queue_close(f, f->q);
        f->q = NULL;
    }

    /* A record without the count, holding a canceled subscription as its entitlement and an
     * active one beside it: the next event, even a stale one, puts the active one first. */
    queue_open_ready(f, url);
    char out[64];
    assert_int_equal(th_redis(port, out, sizeof out,
                              "HSET rivet:customer:cus_OLD customer_id cus_OLD "
                              "s:sub_gone 300|enterprise|canceled|400|0 "
                              "s:sub_live 200|basic|active|900|0 subscription_id sub_gone "
                              "tier enterprise status canceled active false "
                              "current_period_end 400 cancel_at_period_end 0 ent {}"),
                     0);
    result_t r = expect_result(f,
                               &(evspec_t){.id = "evt_old1",
                                           .created = 10,
                                           .cust = "cus_OLD",
                                           .sub = "sub_gone",
                                           .state = 1,
                                           .tier = "pro",
                                           .status = "active"},
                               RV_ENQ_ADDED);
    cJSON *d = entry_data(port, r.id, NULL, 0);
    expect_entitlement(d, "cus_OLD", "basic", "active", 1, "sub_live", 900, 0);
    cJSON_Delete(d);
    expect_hash(port, "cus_OLD", "subscription_id", "sub_live");
    expect_hash(port, "cus_OLD", "subs", "2");
    expect_hash(port, "cus_OLD", "s:sub_gone", "300|enterprise|canceled|400|0");
}

/* ---- the script against a model ----------------------------------------------------------- */

/* Whatever the order and however often events come, each customer's record, and the last entry
 * of each customer in the stream, say what the newest state of each of its subscriptions says:
 * an active one before an inactive one, then the newest, then the larger id; and the newest
 * email. Random customers with one to three subscriptions, each through a run of states at
 * distinct seconds (seconds may repeat across a customer's subscriptions), emails changing on
 * the way, delivered shuffled with a third of them again later. QUEUE_SEED=<n> replays. */
#define M_CUST   24
#define M_SUBS   3
#define M_STATES 5
#define M_EMAILS 2

typedef struct m_state_s {
    int64_t v;
    const char *tier, *status;
    int64_t pe;
    int cap;
} m_state_t;

typedef struct m_event_s {
    char id[48];
    int cust, sub, k; /* sub -1: an email event, k its index */
} m_event_t;

typedef struct m_cust_s {
    char id[32];
    char sub[M_SUBS][32];
    int nsub;
    m_state_t st[M_SUBS][M_STATES];
    int nst[M_SUBS];
    char email[M_EMAILS][48];
    int64_t email_v[M_EMAILS];
    int nemail;
} m_cust_t;

static uint64_t m_rng;
static uint32_t m_below(uint32_t n) {
    m_rng ^= m_rng << 13;
    m_rng ^= m_rng >> 7;
    m_rng ^= m_rng << 17;
    return (uint32_t)(m_rng % n);
}

static int m_active(const char *status) {
    return !strcmp(status, "active") || !strcmp(status, "trialing");
}

/* The model: the entitlement a customer's subscriptions give; NULL when it has none. */
static const m_state_t *m_expect(const m_cust_t *c, int *which) {
    const m_state_t *best = NULL;
    int best_i = -1;
    for (int i = 0; i < c->nsub; i++) {
        const m_state_t *newest = &c->st[i][0];
        for (int k = 1; k < c->nst[i]; k++)
            if (c->st[i][k].v > newest->v) newest = &c->st[i][k];
        int a = m_active(newest->status);
        int ba = best ? m_active(best->status) : 0;
        if (best == NULL || (a && !ba) ||
            (a == ba && (newest->v > best->v ||
                         (newest->v == best->v && strcmp(c->sub[i], c->sub[best_i]) > 0)))) {
            best = newest;
            best_i = i;
        }
    }
    *which = best_i;
    return best;
}

static void test_model_random_orders(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    int port = f->redis.port;
    const char *env = getenv("QUEUE_SEED");
    uint64_t seed =
        env ? strtoull(env, NULL, 10) : ((uint64_t)time(NULL) << 16) ^ (uint64_t)getpid();
    if (seed == 0) seed = 1;
    m_rng = seed;
    printf("[ seed     ] QUEUE_SEED=%llu replays this test\n", (unsigned long long)seed);

    static const char *const tiers[] = {"basic", "pro", "enterprise"};
    static const char *const statuses[] = {"active", "trialing", "past_due",  "canceled",
                                           "unpaid", "active",   "incomplete"};
    static m_cust_t cs[M_CUST];
    static m_event_t evs[2 * M_CUST * (M_SUBS * M_STATES + M_EMAILS)];
    int nev = 0;
    memset(cs, 0, sizeof cs);
    for (int c = 0; c < M_CUST; c++) {
        m_cust_t *cu = &cs[c];
        snprintf(cu->id, sizeof cu->id, "cus_M%d", c);
        cu->nsub = 1 + (int)m_below(M_SUBS);
        for (int i = 0; i < cu->nsub; i++) {
            /* Ids in either order of creation, so the tie-break by id is tried both ways. */
            snprintf(cu->sub[i], sizeof cu->sub[i], "sub_M%d_%c", c, "xyz"[m_below(3)] + 0);
            for (int j = 0; j < i; j++)
                if (!strcmp(cu->sub[i], cu->sub[j]))
                    snprintf(cu->sub[i], sizeof cu->sub[i], "sub_M%d_%d", c, i);
            cu->nst[i] = 1 + (int)m_below(M_STATES);
            int64_t v = 1000 + m_below(4);
            for (int k = 0; k < cu->nst[i]; k++) {
                m_state_t *st = &cu->st[i][k];
                st->v = v;
                v += 1 + m_below(3);
                st->tier = tiers[m_below(3)];
                st->status = statuses[m_below(RV_ARRAY_LEN(statuses))];
                st->pe = m_below(4) ? 5000 + (int64_t)m_below(1000) : 0;
                st->cap = (int)m_below(2);
                m_event_t *e = &evs[nev++];
                snprintf(e->id, sizeof e->id, "evt_M%d_%d_%d", c, i, k);
                e->cust = c, e->sub = i, e->k = k;
            }
        }
        /* Half the customers' subscriptions all end in the same second: the tie-break decides. */
        if (m_below(2))
            for (int i = 0; i < cu->nsub; i++) cu->st[i][cu->nst[i] - 1].v = 2000;
        cu->nemail = (int)m_below(M_EMAILS + 1);
        for (int k = 0; k < cu->nemail; k++) {
            snprintf(cu->email[k], sizeof cu->email[k], "m%d.%d@example.com", c, k);
            cu->email_v[k] = 1000 + 10 * k + m_below(10);
            m_event_t *e = &evs[nev++];
            snprintf(e->id, sizeof e->id, "evt_M%d_e%d", c, k);
            e->cust = c, e->sub = -1, e->k = k;
        }
    }
    /* Shuffle, then deliver a third again at a random later place. */
    for (int i = nev - 1; i > 0; i--) {
        int j = (int)m_below((uint32_t)i + 1);
        m_event_t t = evs[i];
        evs[i] = evs[j];
        evs[j] = t;
    }
    int first = nev;
    for (int i = 0; i < first; i++) {
        if (m_below(3)) continue;
        int at = i + 1 + (int)m_below((uint32_t)(nev - i));
        memmove(&evs[at + 1], &evs[at], (size_t)(nev - at) * sizeof evs[0]);
        evs[at] = evs[i];
        nev++;
    }

    int added = 0, dups = 0;
    for (int i = 0; i < nev; i++) {
        const m_event_t *e = &evs[i];
        const m_cust_t *cu = &cs[e->cust];
        evspec_t s = {.id = e->id, .cust = cu->id};
        if (e->sub >= 0) {
            const m_state_t *st = &cu->st[e->sub][e->k];
            s.created = st->v;
            s.sub = cu->sub[e->sub];
            s.state = 1;
            s.tier = st->tier;
            s.status = st->status;
            s.period_end = st->pe;
            s.cap = st->cap;
        } else {
            s.type = "payment.succeeded";
            s.stripe_type = "invoice.paid";
            s.created = cu->email_v[e->k];
            s.email = cu->email[e->k];
        }
        result_t r = enqueue_wait(f, f->q, &s);
        if (r.err)
            fail_msg("%s: %s (QUEUE_SEED=%llu)", e->id, rv_strerror(r.err),
                     (unsigned long long)seed);
        int code = r.result & RV_ENQ_MASK;
        if (code == RV_ENQ_ADDED)
            added++;
        else if (code == RV_ENQ_DUPLICATE)
            dups++;
        else
            fail_msg("%s: result %#x (QUEUE_SEED=%llu)", e->id, (unsigned)r.result,
                     (unsigned long long)seed);
    }
    assert_int_equal(added, first);
    assert_int_equal(dups, nev - first);
    assert_int_equal(redis_int(port, "XLEN %s", STREAM), first);

    /* The last entry of each customer. */
    redisContext *rc = redisConnect("127.0.0.1", port);
    assert_true(rc != NULL && !rc->err);
    redisReply *all = redisCommand(rc, "XRANGE %s - +", STREAM);
    assert_true(all != NULL && all->type == REDIS_REPLY_ARRAY);
    for (int c = 0; c < M_CUST; c++) {
        const m_cust_t *cu = &cs[c];
        int which;
        const m_state_t *want = m_expect(cu, &which);
        const char *want_email = NULL;
        int64_t ev_max = -1;
        for (int k = 0; k < cu->nemail; k++)
            if (cu->email_v[k] > ev_max) ev_max = cu->email_v[k], want_email = cu->email[k];
        char why[128];
        snprintf(why, sizeof why, "%.31s (QUEUE_SEED=%llu)", cu->id, (unsigned long long)seed);

        cJSON *last = NULL;
        for (size_t i = 0; i < all->elements; i++) {
            const redisReply *fl = all->element[i]->element[1];
            cJSON *d = cJSON_Parse(fl->element[5]->str);
            const cJSON *ent = cJSON_GetObjectItemCaseSensitive(d, "entitlement");
            if (ent && !strcmp(dstr(ent, "customer_id"), cu->id)) {
                cJSON_Delete(last);
                last = d;
            } else {
                cJSON_Delete(d);
            }
        }
        if (last == NULL) fail_msg("%s: no entry", why);
        const cJSON *ent = cJSON_GetObjectItemCaseSensitive(last, "entitlement");
        char hash[256], *text = cJSON_PrintUnformatted(ent);
        assert_int_equal(th_redis(port, hash, sizeof hash, "HGET rivet:customer:%s ent", cu->id),
                         0);
        if (strcmp(hash, text) != 0) fail_msg("%s: ent %s, last entry %s", why, hash, text);
        free(text);
        const cJSON *em = cJSON_GetObjectItemCaseSensitive(ent, "email");
        if (want_email ? !cJSON_IsString(em) || strcmp(em->valuestring, want_email)
                       : !cJSON_IsNull(em))
            fail_msg("%s: email is not %s", why, want_email ? want_email : "null");
        if (want == NULL) {
            if (!cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(ent, "subscription_id")))
                fail_msg("%s: an entitlement without subscriptions", why);
        } else {
            const char *sub = dstr(ent, "subscription_id"), *tier = dstr(ent, "tier"),
                       *status = dstr(ent, "status");
            if (!sub || strcmp(sub, cu->sub[which]) || !tier || strcmp(tier, want->tier) ||
                !status || strcmp(status, want->status))
                fail_msg("%s: entitlement %s %s %s, the model says %s %s %s", why,
                         sub ? sub : "null", tier ? tier : "null", status ? status : "null",
                         cu->sub[which], want->tier, want->status);
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ent, "active")) !=
                m_active(want->status))
                fail_msg("%s: active is wrong", why);
            const cJSON *pe = cJSON_GetObjectItemCaseSensitive(ent, "current_period_end");
            if (want->pe ? !cJSON_IsNumber(pe) || pe->valuedouble != (double)want->pe
                         : !cJSON_IsNull(pe))
                fail_msg("%s: current_period_end is wrong", why);
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ent, "cancel_at_period_end")) !=
                want->cap)
                fail_msg("%s: cancel_at_period_end is wrong", why);
            char n[8];
            snprintf(n, sizeof n, "%d", cu->nsub);
            expect_hash(port, cu->id, "subs", n);
            expect_hash(port, cu->id, "subscription_id", cu->sub[which]);
            expect_hash(port, cu->id, "active", m_active(want->status) ? "true" : "false");
        }
        cJSON_Delete(last);
    }
    freeReplyObject(all);
    redisFree(rc);
    printf("[ model    ] %d customers, %d events, %d delivered again: every record and every "
           "customer's last entry as the model says\n",
           M_CUST, first, nev - first);
}

static void test_noscript_recovery(void **state) {
    fixture_t *f = *state;
    char url[64], out[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    queue_open_ready(f, url);
    expect_added(f, &(evspec_t){.id = "evt_ns1", .created = 1});
    assert_int_equal(th_redis(f->redis.port, out, sizeof out, "SCRIPT FLUSH"), 0);
    assert_string_equal(out, "OK");
    expect_added(f, &(evspec_t){.id = "evt_ns2", .created = 2});
    /* Sending the source cached it again: the next EVALSHA works as is, so the source went
     * exactly once. */
    expect_added(f, &(evspec_t){.id = "evt_ns3", .created = 3});
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 3);
    char stats[8192];
    redis_str(f->redis.port, stats, sizeof stats, "INFO %s", "commandstats");
    assert_non_null(strstr(stats, "cmdstat_eval:calls=1,"));
    assert_non_null(strstr(stats, "cmdstat_evalsha:calls=3,"));
    assert_true(rv_queue_ready(f->q));
    assert_int_equal(rv_queue_reconnects(f->q), 0);
}

static void test_redis_error_reply(void **state) {
    fixture_t *f = *state;
    char url[64], out[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    queue_open_ready(f, url);
    /* The stream key holding a string makes XADD fail inside the script. */
    assert_int_equal(th_redis(f->redis.port, out, sizeof out, "SET %s x", STREAM), 0);
    result_t r = enqueue_wait(f, f->q, &(evspec_t){.id = "evt_wt", .created = 1});
    assert_int_equal(r.err, RV_EUNAVAIL);
    /* The script aborted before remembering the id: Stripe's retry will be taken. */
    assert_int_equal(redis_int(f->redis.port, "EXISTS %s", "rivet:event:evt_wt"), 0);
    assert_true(rv_queue_ready(f->q));
    assert_int_equal(th_redis(f->redis.port, out, sizeof out, "DEL %s", STREAM), 0);
    expect_added(f, &(evspec_t){.id = "evt_wt", .created = 1});
}

static void test_not_ready_and_bad_input(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    f->q = queue_open(f, url, 2000);
    rv_prov_event_t ev;
    make_event(&ev, &(evspec_t){.id = "evt_nr", .created = 1});
    result_t r = {0};
    /* Not connected yet: refused at once, callback never called. */
    assert_false(rv_queue_ready(f->q));
    assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r), RV_EUNAVAIL);
    assert_true(run_until(f, is_ready, f->q, WAIT_MS));
    assert_int_equal(r.called, 0);

    char *data = ev.data_json;
    ev.data_json = NULL;
    assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r), RV_EINVAL);
    ev.data_json = data;
    /* A mode that does not exist, no source. */
    assert_int_equal(rv_queue_apply(f->q, &ev, RV_APPLY_STATE + 1, "stripe", on_enqueued, &r),
                     RV_EINVAL);
    assert_int_equal(rv_queue_apply(f->q, &ev, -1, "stripe", on_enqueued, &r), RV_EINVAL);
    assert_int_equal(rv_queue_apply(f->q, &ev, RV_APPLY_EVENT, NULL, on_enqueued, &r), RV_EINVAL);
    /* Reads of Stripe are no events: an event id there would be a mix-up. */
    assert_int_equal(rv_queue_apply(f->q, &ev, RV_APPLY_STATE, "stripe", on_enqueued, &r),
                     RV_EINVAL);
    assert_int_equal(rv_queue_apply(f->q, &ev, RV_APPLY_FULFILL, "success_page", on_enqueued, &r),
                     RV_EINVAL);
    /* And an event needs its id, which is what makes it at most once. */
    ev.event_id[0] = '\0';
    assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r), RV_EINVAL);
    assert_int_equal(rv_queue_apply(f->q, &ev, RV_APPLY_EVENT, "recovery", on_enqueued, &r),
                     RV_EINVAL);
    free(data);
    assert_int_equal(r.called, 0);
    assert_int_equal(rv_queue_pending(f->q), 0);

    /* Names would be resolved synchronously: refused. So are bad URLs and options. */
    rv_queue_t *q2 = NULL;
    rv_queue_opts_t o = {.url = "redis://redis.example.com:6379",
                         .stream = STREAM,
                         .dedupe_ttl = TTL,
                         .timeout_ms = 100};
    assert_int_equal(rv_queue_init(&f->loop, &o, &q2), RV_EINVAL);
    o.url = "redis://127.0.0.1:0";
    assert_int_equal(rv_queue_init(&f->loop, &o, &q2), RV_EINVAL);
    o.url = "redis://127.0.0.1";
    o.stream = "";
    assert_int_equal(rv_queue_init(&f->loop, &o, &q2), RV_EINVAL);
    o.stream = STREAM;
    o.dedupe_ttl = 0;
    assert_int_equal(rv_queue_init(&f->loop, &o, &q2), RV_EINVAL);
    assert_null(q2);
}

static void test_close_with_pending(void **state) {
    fixture_t *f = *state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    queue_open_ready(f, url);
    result_t r[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        rv_prov_event_t ev;
        char id[32];
        snprintf(id, sizeof id, "evt_cl%d", i);
        make_event(&ev, &(evspec_t){.id = id, .created = 1});
        assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r[i]), 0);
        free(ev.data_json);
    }
    assert_int_equal(rv_queue_pending(f->q), 3);
    int closed = 0;
    rv_queue_close(f->q, on_closed, &closed);
    f->q = NULL;
    /* Answers come from the loop, never from inside close. */
    for (int i = 0; i < 3; i++) assert_int_equal(r[i].called, 0);
    assert_true(run_until(f, is_set, &closed, WAIT_MS));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].called, 1);
        assert_int_equal(r[i].err, RV_EUNAVAIL);
    }
}

static void test_redis_down_and_back(void **state) {
    fixture_t *f = *state;
    char url[64];
    int port = f->redis.port;
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    queue_open_ready(f, url);
    expect_added(f, &(evspec_t){.id = "evt_db1", .created = 1});
    uint64_t before = rv_queue_reconnects(f->q);

    /* A command in flight when Redis dies gets an error. */
    rv_prov_event_t ev;
    make_event(&ev, &(evspec_t){.id = "evt_db2", .created = 2});
    result_t r = {0};
    assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r), 0);
    th_stop(&f->redis, SIGKILL, 5000);
    assert_true(run_until(f, is_called, &r, WAIT_MS));
    assert_int_equal(r.called, 1);
    assert_int_equal(r.err, RV_EUNAVAIL);
    assert_true(run_until(f, is_not_ready, f->q, WAIT_MS));

    /* While it is down: refused at once. */
    result_t r2 = {0};
    assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r2), RV_EUNAVAIL);
    assert_int_equal(rv_queue_state(f->q) == RV_QUEUE_CONNECTED, 0);

    /* Back on the same port: the queue reconnects by itself. */
    redis_spawn(&f->redis, port, NULL);
    assert_true(run_until(f, is_ready, f->q, WAIT_MS));
    assert_true(rv_queue_reconnects(f->q) > before);
    result_t r3 = enqueue_wait(f, f->q, &(evspec_t){.id = "evt_db2", .created = 2});
    assert_int_equal(r3.err, 0);
    assert_int_equal(r3.result, RV_ENQ_ADDED);
    assert_int_equal(r2.called, 0);
    free(ev.data_json);
}

static void test_timeout_and_recovery(void **state) {
    fixture_t *f = *state;
    char url[64], out[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);
    f->q = queue_open(f, url, 200);
    assert_true(run_until(f, is_ready, f->q, WAIT_MS));

    /* Redis stops answering for a second; the queue waits 200 ms. */
    assert_int_equal(th_redis(f->redis.port, out, sizeof out, "CLIENT PAUSE 1000"), 0);
    assert_string_equal(out, "OK");
    uint64_t start = rv_now_ms();
    result_t r[2] = {{0}};
    for (int i = 0; i < 2; i++) {
        rv_prov_event_t ev;
        char id[32];
        snprintf(id, sizeof id, "evt_to%d", i);
        make_event(&ev, &(evspec_t){.id = id, .created = 1});
        assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r[i]), 0);
        free(ev.data_json);
    }
    assert_true(run_until(f, is_called, &r[1], WAIT_MS));
    uint64_t elapsed = rv_now_ms() - start;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(r[i].called, 1);
        assert_int_equal(r[i].err, RV_ETIMEDOUT);
    }
    /* Told before Redis woke up, which an answer from Redis could not have been. */
    assert_true(elapsed < 1000);
    assert_false(rv_queue_ready(f->q));

    /* After the pause the queue comes back and works. */
    assert_true(run_until(f, is_ready, f->q, WAIT_MS));
    assert_true(rv_queue_reconnects(f->q) >= 1);
    expect_added(f, &(evspec_t){.id = "evt_to_after", .created = 2});
    assert_int_equal(r[0].called, 1);
    assert_int_equal(r[1].called, 1);
}

/* Open a queue with stderr going to a file until it is ready, close it, and return what was
 * logged meanwhile (malloc'd). */
static char *capture_stderr_ready(fixture_t *f, const char *url) {
    char path[] = "/tmp/rivet-queue-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    rv_log_flush();
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    dup2(fd, STDERR_FILENO);
    rv_queue_t *q = queue_open(f, url, 2000);
    int ok = run_until(f, is_ready, q, WAIT_MS);
    rv_log_flush();
    dup2(saved, STDERR_FILENO);
    close(saved);
    queue_close(f, q);
    assert_true(ok);
    off_t len = lseek(fd, 0, SEEK_END);
    assert_true(len >= 0);
    char *buf = calloc(1, (size_t)len + 1);
    assert_non_null(buf);
    assert_int_equal(pread(fd, buf, (size_t)len, 0), len);
    close(fd);
    return buf;
}

static void test_durability_warning(void **state) {
    fixture_t *f = *state;
    char url[64], out[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", f->redis.port);

    /* The test Redis runs without an AOF and with the default noeviction. */
    char *log = capture_stderr_ready(f, url);
    assert_non_null(strstr(log, "redis: appendonly is off"));
    assert_null(strstr(log, "maxmemory-policy is"));
    free(log);

    assert_int_equal(
        th_redis(f->redis.port, out, sizeof out, "CONFIG SET maxmemory-policy allkeys-lru"), 0);
    assert_int_equal(th_redis(f->redis.port, out, sizeof out, "CONFIG SET appendonly yes"), 0);
    log = capture_stderr_ready(f, url);
    assert_non_null(strstr(log, "redis: maxmemory-policy is allkeys-lru"));
    assert_null(strstr(log, "appendonly is off"));
    free(log);
    /* Redis refuses SIGTERM while it writes its first AOF; turn it off for a clean stop. */
    assert_int_equal(th_redis(f->redis.port, out, sizeof out, "CONFIG SET appendonly no"), 0);
}

static void test_durability_unknown(void **state) {
    fixture_t *f = *state;
    int port = th_free_port();
    assert_true(port > 0);
    /* A managed Redis often renames or hides CONFIG. */
    redis_spawn(&f->redis, port, (const char *const[]){"--rename-command", "CONFIG", "", NULL});
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    char *log = capture_stderr_ready(f, url);
    assert_non_null(strstr(log, "durability could not be checked"));
    assert_null(strstr(log, "appendonly is off"));
    free(log);
}

static int unix_socket_up(void *ud) {
    const char *path = ud;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    int ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

static void test_unix_socket_and_db(void **state) {
    fixture_t *f = *state;
    snprintf(f->tmpdir, sizeof f->tmpdir, "/tmp/rivet-q-XXXXXX");
    assert_non_null(mkdtemp(f->tmpdir));
    char sock[128], url[160], out[64];
    snprintf(sock, sizeof sock, "%s/redis.sock", f->tmpdir);
    redis_spawn(&f->redis, 0,
                (const char *const[]){"--unixsocket", sock, "--unixsocketperm", "700", NULL});
    assert_true(th_eventually(unix_socket_up, sock, WAIT_MS));

    snprintf(url, sizeof url, "unix://%s?db=3", sock);
    queue_open_ready(f, url);
    expect_added(f, &(evspec_t){.id = "evt_unix", .created = 1});

    redisContext *c = redisConnectUnix(sock);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    ctx_cmd(c, out, sizeof out, "XLEN %s", STREAM);
    assert_string_equal(out, "0");
    ctx_cmd(c, out, sizeof out, "SELECT 3");
    assert_string_equal(out, "OK");
    ctx_cmd(c, out, sizeof out, "XLEN %s", STREAM);
    assert_string_equal(out, "1");
    redisFree(c);

    queue_close(f, f->q);
    f->q = NULL;
    th_stop(&f->redis, SIGTERM, 5000);
    unlink(sock);
}

/* Refused logins so far, from Redis's ACL log. */
static long long auth_failures(int port, const char *pass) {
    redisContext *c = redisConnect("127.0.0.1", port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    char out[128];
    ctx_cmd(c, out, sizeof out, "AUTH %s", pass);
    assert_string_equal(out, "OK");
    redisReply *r = redisCommand(c, "ACL LOG");
    assert_non_null(r);
    long long count = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *e = r->element[i];
        for (size_t k = 0; e->type == REDIS_REPLY_ARRAY && k + 1 < e->elements; k += 2) {
            if (e->element[k]->type == REDIS_REPLY_STRING &&
                strcmp(e->element[k]->str, "count") == 0 &&
                e->element[k + 1]->type == REDIS_REPLY_INTEGER) {
                count += e->element[k + 1]->integer;
            }
        }
    }
    freeReplyObject(r);
    redisFree(c);
    return count;
}

typedef struct authwait_s {
    fixture_t *f;
    rv_queue_t *q;
    int port;
    int was_ready;
} authwait_t;

static int refused_twice(void *ud) {
    authwait_t *w = ud;
    if (rv_queue_ready(w->q)) w->was_ready = 1;
    return auth_failures(w->port, "s3cret") >= 2;
}

static void test_auth(void **state) {
    fixture_t *f = *state;
    int port = th_free_port();
    assert_true(port > 0);
    redis_spawn(&f->redis, port,
                (const char *const[]){"--requirepass", "s3cret", "--user", "rivet", "on",
                                      ">p@ss:w/rd", "~*", "&*", "+@all", NULL});
    char url[128];

    /* Password only, the default user. */
    snprintf(url, sizeof url, "redis://:s3cret@127.0.0.1:%d/1", port);
    queue_open_ready(f, url);
    expect_added(f, &(evspec_t){.id = "evt_auth1", .created = 1});
    queue_close(f, f->q);
    f->q = NULL;

    /* An ACL user with a password that needs percent-encoding. */
    snprintf(url, sizeof url, "redis://rivet:p%%40ss%%3Aw%%2Frd@127.0.0.1:%d/1", port);
    queue_open_ready(f, url);
    result_t r = enqueue_wait(f, f->q, &(evspec_t){.id = "evt_auth1", .created = 1});
    assert_int_equal(r.result, RV_ENQ_DUPLICATE);
    queue_close(f, f->q);
    f->q = NULL;

    /* A wrong password: refused, again after the backoff, never ready. */
    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d/1", port);
    authwait_t w = {f, queue_open(f, url, 2000), port, 0};
    long long base = auth_failures(port, "s3cret");
    assert_int_equal(base, 0);
    assert_true(run_until(f, refused_twice, &w, WAIT_MS));
    assert_false(w.was_ready);
    assert_false(rv_queue_ready(w.q));
    rv_prov_event_t ev;
    make_event(&ev, &(evspec_t){.id = "evt_auth2", .created = 1});
    assert_int_equal(rv_queue_enqueue(w.q, &ev, on_enqueued, &r), RV_EUNAVAIL);
    free(ev.data_json);
    queue_close(f, w.q);
}

int main(void) {
    /* As in rivetd (main.c): hiredis writes with write(2), and a write to a Redis that was just
     * killed must fail with EPIPE instead of ending the process. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_added_then_duplicate, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_ordering, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_customer_hash, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_after_newer_invoice, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_late_checkout_after_deletion, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_same_second_asks_stripe, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_subscription_asks_stripe, setup_redis,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_one_provision_per_session, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_state_from_stripe, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_past_due_active, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_rule_change_and_older_records, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_model_random_orders, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_two_subscriptions, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_noscript_recovery, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_error_reply, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_not_ready_and_bad_input, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_close_with_pending, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down_and_back, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_and_recovery, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_durability_warning, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_durability_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_socket_and_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_refused, setup_redis, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter_bounded, setup_redis, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
