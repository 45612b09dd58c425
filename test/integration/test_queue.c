/* Integration tests for the provisioning queue: a real libuv loop in this process runs rv_queue
 * against a real redis-server, which the tests inspect with blocking commands, stop, restart,
 * pause and lock with a password. Every test closes the queue and runs the loop until every
 * handle is closed, so that uv_loop_close succeeds and the sanitizer build sees no leak. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

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

#define STREAM "rivet:test:provisioning"
#define DEAD STREAM ":dead"
#define TTL 1000
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
    rv_queue_opts_t o = {url, STREAM, TTL, timeout_ms};
    rv_queue_t *q = NULL;
    assert_int_equal(rv_queue_init(&f->loop, &o, &q), 0);
    assert_non_null(q);
    return q;
}

static void queue_open_ready(fixture_t *f, const char *url) {
    f->q = queue_open(f, url, 2000);
    if (!run_until(f, is_ready, f->q, WAIT_MS)) fail_msg("queue not ready for %s", url);
}

static void queue_close(fixture_t *f, rv_queue_t *q) {
    int closed = 0;
    rv_queue_close(q, on_closed, &closed);
    assert_int_equal(closed, 0); /* done comes from the loop, not from inside close */
    assert_true(run_until(f, is_set, &closed, WAIT_MS));
}

/* ---- events ------------------------------------------------------------------------------ */

typedef struct evspec_s {
    const char *id;
    const char *type;
    int64_t created;
    const char *sub;
    const char *cust;
    int ordered;
    int sets;
    const char *email;
    const char *tier;
    const char *status;
} evspec_t;

static void make_event(rv_prov_event_t *ev, const evspec_t *s) {
    memset(ev, 0, sizeof *ev);
    ev->type = s->type ? s->type : "subscription.updated";
    snprintf(ev->event_id, sizeof ev->event_id, "%s", s->id);
    snprintf(ev->stripe_type, sizeof ev->stripe_type, "customer.subscription.updated");
    ev->created = s->created;
    snprintf(ev->customer_id, sizeof ev->customer_id, "%s", s->cust ? s->cust : "");
    snprintf(ev->subscription_id, sizeof ev->subscription_id, "%s", s->sub ? s->sub : "");
    snprintf(ev->email, sizeof ev->email, "%s", s->email ? s->email : "");
    snprintf(ev->tier, sizeof ev->tier, "%s", s->tier ? s->tier : "");
    snprintf(ev->status, sizeof ev->status, "%s", s->status ? s->status : "");
    ev->ordered = s->ordered;
    ev->sets_entitlement = s->sets;
    char json[512];
    snprintf(json, sizeof json,
             "{\"v\":1,\"type\":\"%s\",\"stripe_event_id\":\"%s\",\"created\":%lld}", ev->type,
             s->id, (long long)s->created);
    ev->data_json = strdup(json);
    assert_non_null(ev->data_json);
}

/* Enqueue and wait for the answer; checks the callback comes later and exactly once. */
static result_t enqueue_wait(fixture_t *f, rv_queue_t *q, const evspec_t *s) {
    rv_prov_event_t ev;
    make_event(&ev, s);
    result_t r = {0};
    int rc = rv_queue_enqueue(q, &ev, on_enqueued, &r);
    /* The queue copied the event: it can go now. */
    free(ev.data_json);
    memset(&ev, 0x55, sizeof ev);
    if (rc != 0) fail_msg("enqueue %s: %s", s->id, rv_strerror(rc));
    assert_int_equal(r.called, 0);
    if (!run_until(f, is_called, &r, WAIT_MS)) fail_msg("no answer for %s", s->id);
    assert_int_equal(r.called, 1);
    return r;
}

static void expect_added(fixture_t *f, const evspec_t *s) {
    result_t r = enqueue_wait(f, f->q, s);
    if (r.err != 0) fail_msg("%s: %s", s->id, rv_strerror(r.err));
    assert_int_equal(r.result, RV_ENQ_ADDED);
    assert_non_null(strchr(r.id, '-')); /* a stream id: ms-seq */
}

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
    result_t r = dead_wait(f, "evt_dl1", "customer.subscription.created", reason, body,
                           sizeof body - 1);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.result, RV_ENQ_ADDED);
    assert_non_null(strchr(r.id, '-'));
    expect_dead_entry(f->redis.port, r.id, "evt_dl1", "customer.subscription.created", reason,
                      body, sizeof body - 1);
    long long ttl = redis_int(f->redis.port, "TTL %s", "rivet:event:evt_dl1");
    assert_true(ttl > TTL - 30 && ttl <= TTL);

    /* Stripe's redelivery of the same event: nothing more. */
    result_t d = dead_wait(f, "evt_dl1", "customer.subscription.created", reason, body,
                           sizeof body - 1);
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
    assert_int_equal(rv_queue_dead_letter(q, "evt_r", "t", "", "b", 1, on_enqueued, &r),
                     RV_EINVAL);
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
    assert_int_equal(rv_queue_dead_letter(q, big, "t", "why", "b", 1, on_enqueued, &r),
                     RV_EINVAL);

    /* The same holds for the ids the enqueue script turns into keys. */
    static const evspec_t bad_events[] = {
        {.id = "evt\r\nx", .created = 1},
        {.id = "evt_ok", .created = 1, .cust = "cus\r\nFLUSHALL", .sets = 1},
        {.id = "evt_ok", .created = 1, .sub = "sub 1"},
        {.id = "evt_ok", .created = 1, .sub = "sub_*"},
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

    evspec_t s = {.id = "evt_dup_1", .type = "user.provision", .created = 1700000000,
                  .cust = "cus_A", .sub = "sub_A"};
    result_t r = enqueue_wait(f, f->q, &s);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.result, RV_ENQ_ADDED);
    assert_int_equal(rv_queue_pending(f->q), 0);

    char out[2048], expect[2048];
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 1);
    redis_str(f->redis.port, out, sizeof out, "XRANGE %s - +", STREAM);
    snprintf(expect, sizeof expect,
             "%s\ntype\nuser.provision\nstripe_event_id\nevt_dup_1\ndata\n"
             "{\"v\":1,\"type\":\"user.provision\",\"stripe_event_id\":\"evt_dup_1\","
             "\"created\":1700000000}",
             r.id);
    assert_string_equal(out, expect);
    /* The event key remembers the entry, for the configured time. */
    redis_str(f->redis.port, out, sizeof out, "GET %s", "rivet:event:evt_dup_1");
    assert_string_equal(out, r.id);
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

static void test_ordering(void **state) {
    fixture_t *f = *state;
    char url[64], out[256];
    snprintf(url, sizeof url, "redis://localhost:%d", f->redis.port);
    queue_open_ready(f, url);

    expect_added(f, &(evspec_t){.id = "evt_o1", .created = 200, .sub = "sub_O", .ordered = 1});
    redis_str(f->redis.port, out, sizeof out, "GET %s", "rivet:subscription:sub_O");
    assert_string_equal(out, "200");
    long long ttl = redis_int(f->redis.port, "TTL %s", "rivet:subscription:sub_O");
    assert_true(ttl > TTL - 30 && ttl <= TTL);

    /* Older than what was applied: remembered, acknowledged, not appended. */
    const evspec_t old = {.id = "evt_o0", .created = 100, .sub = "sub_O", .ordered = 1};
    result_t r = enqueue_wait(f, f->q, &old);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.result, RV_ENQ_STALE);
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 1);
    assert_int_equal(redis_int(f->redis.port, "EXISTS %s", "rivet:event:evt_o0"), 1);
    redis_str(f->redis.port, out, sizeof out, "GET %s", "rivet:subscription:sub_O");
    assert_string_equal(out, "200");
    /* A stale event delivered again is a duplicate. */
    r = enqueue_wait(f, f->q, &old);
    assert_int_equal(r.result, RV_ENQ_DUPLICATE);

    /* Same second: not older, so applied. */
    expect_added(f, &(evspec_t){.id = "evt_o2", .created = 200, .sub = "sub_O", .ordered = 1});
    expect_added(f, &(evspec_t){.id = "evt_o3", .created = 300, .sub = "sub_O", .ordered = 1});
    redis_str(f->redis.port, out, sizeof out, "GET %s", "rivet:subscription:sub_O");
    assert_string_equal(out, "300");

    /* An unordered event is appended even when older, and never lowers the mark. */
    expect_added(f, &(evspec_t){.id = "evt_o4", .type = "payment.succeeded", .created = 250,
                                .sub = "sub_O"});
    redis_str(f->redis.port, out, sizeof out, "GET %s", "rivet:subscription:sub_O");
    assert_string_equal(out, "300");
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 4);

    /* Another subscription has its own mark; an event without one touches none. */
    expect_added(f, &(evspec_t){.id = "evt_o5", .created = 50, .sub = "sub_P", .ordered = 1});
    expect_added(f, &(evspec_t){.id = "evt_o6", .created = 10, .ordered = 1});
    assert_int_equal(redis_int(f->redis.port, "EXISTS %s", "rivet:none"), 0);
    assert_int_equal(redis_int(f->redis.port, "XLEN %s", STREAM), 6);
}

static void test_customer_hash(void **state) {
    fixture_t *f = *state;
    char url[64], out[256];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", f->redis.port);
    queue_open_ready(f, url);
    const char *key = "rivet:customer:cus_H";
    int port = f->redis.port;

    /* The first event has no email. */
    expect_added(f, &(evspec_t){.id = "evt_h1", .created = 100, .cust = "cus_H", .sub = "sub_H",
                                .sets = 1, .tier = "basic", .status = "active"});
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "tier");
    assert_string_equal(out, "basic");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "customer_id");
    assert_string_equal(out, "cus_H");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "subscription_id");
    assert_string_equal(out, "sub_H");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "event_id");
    assert_string_equal(out, "evt_h1");
    assert_int_equal(redis_int(port, "HEXISTS rivet:customer:cus_H %s", "email"), 0);
    assert_int_equal(redis_int(port, "TTL %s", key), -1);

    /* Newer: non-empty fields win, empty ones leave what is there. */
    expect_added(f, &(evspec_t){.id = "evt_h2", .created = 200, .cust = "cus_H", .sets = 1,
                                .tier = "pro"});
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "tier");
    assert_string_equal(out, "pro");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "status");
    assert_string_equal(out, "active");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "event_created");
    assert_string_equal(out, "200");

    /* Older, arriving late: fills the missing email, rolls nothing back. */
    expect_added(f, &(evspec_t){.id = "evt_h0", .created = 150, .cust = "cus_H", .sets = 1,
                                .email = "a@example.com", .tier = "enterprise",
                                .status = "past_due", .sub = "sub_OLD"});
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "email");
    assert_string_equal(out, "a@example.com");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "tier");
    assert_string_equal(out, "pro");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "status");
    assert_string_equal(out, "active");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "subscription_id");
    assert_string_equal(out, "sub_H");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "event_created");
    assert_string_equal(out, "200");
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "event_id");
    assert_string_equal(out, "evt_h2");

    /* An event that does not set the entitlement leaves the hash alone. */
    expect_added(f, &(evspec_t){.id = "evt_h3", .created = 300, .cust = "cus_H",
                                .status = "canceled"});
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "status");
    assert_string_equal(out, "active");

    /* Setting the entitlement needs a customer. */
    expect_added(f, &(evspec_t){.id = "evt_h4", .created = 400, .sets = 1, .tier = "basic"});
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:customer:"), 0);
    assert_int_equal(redis_int(port, "EXISTS %s", "rivet:none"), 0);
    redis_str(port, out, sizeof out, "HGET rivet:customer:cus_H %s", "tier");
    assert_string_equal(out, "pro");
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
    ev.event_id[0] = '\0';
    assert_int_equal(rv_queue_enqueue(f->q, &ev, on_enqueued, &r), RV_EINVAL);
    free(data);
    assert_int_equal(r.called, 0);
    assert_int_equal(rv_queue_pending(f->q), 0);

    /* Names would be resolved synchronously: refused. So are bad URLs and options. */
    rv_queue_t *q2 = NULL;
    rv_queue_opts_t o = {"redis://redis.example.com:6379", STREAM, TTL, 100};
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

    assert_int_equal(th_redis(f->redis.port, out, sizeof out,
                              "CONFIG SET maxmemory-policy allkeys-lru"), 0);
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
