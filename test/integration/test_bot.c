/* End-to-end tests of bot access: the way from a payment into the Telegram bot, as the customer,
 * the bot and a stream consumer see it. rivetd, a redis-server and the fake Stripe run as real
 * processes; the fake delivers its signed webhooks to rivetd, and the tests act as the customer
 * (checkout, paying at the fake, the success page), as the bot (POST /api/telegram/link, GET
 * /api/entitlements, the portal for a linked user) and as a consumer (a Redis consumer group on
 * the provisioning stream). Covered: the whole journey with a plan change and a cancellation,
 * one-time start tokens (unknown, used, expired, a Telegram user linked elsewhere), look-ups by
 * customer, Telegram user and email, the portal by Telegram user, and CHECKOUT_LINK_MAX_AGE.
 * Every wait polls with a deadline; every rivetd is stopped with SIGTERM and must exit 0, with
 * neither the API token nor a start token in its log. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "harness.h"
#include "rivet/common.h"

#define TO           10000 /* ms: the longest any awaited change may take */
#define APP_URL      "https://app.rivet.test"
#define BOT          "rivet_test_bot"
#define DEEP_LINK    "https://t.me/" BOT "?start="
#define STREAM       "rivet:provisioning"
#define GROUP        "cmms"
#define JSON_CT      "Content-Type: application/json\r\n"
#define BEARER       "Authorization: Bearer " TH_API_TOKEN "\r\n"
#define WRONG_BEARER "Authorization: Bearer rivet-test-token-0123456780\r\n"
#define PORTAL       "/v1/billing_portal/sessions"
#define LINK_TTL     300
#define LINK_TTL_ENV "TELEGRAM_LINK_TTL=300"

static th_proc_t fake;
static th_proc_t redis;
static th_proc_t rivetd;
static th_proc_t proxy; /* test/tcp_proxy.py */
static char api_base_env[64];
static char redis_url_env[64];

/* Start tokens handed out during a test: none may show up in rivetd's log. */
static char tokens_seen[16][80];
static int ntokens_seen;

/* ---- small utilities ---------------------------------------------------------------------- */

/* A whole file as a NUL-terminated malloc'd string (caller frees), or NULL. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) return NULL;
    size_t len = 0, cap = 65536;
    char *data = malloc(cap);
    size_t n;
    while (data != NULL && (n = fread(data + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 4096) {
            char *nd = realloc(data, cap * 2);
            if (nd == NULL) {
                free(data);
                data = NULL;
                break;
            }
            data = nd;
            cap *= 2;
        }
    }
    fclose(f);
    if (data != NULL) data[len] = '\0';
    return data;
}

/* Whether rivetd's log holds text. */
static int log_has(void *ud) {
    char *log = slurp(rivetd.log_path);
    int found = log && strstr(log, ud);
    free(log);
    return found;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const cJSON *jget(const cJSON *o, const char *key) {
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static void assert_status(const th_response_t *r, int status) {
    if (r->status != status)
        fail_msg("status %d, expected %d; body: %s", r->status, status, r->body ? r->body : "");
}

/* The body as JSON (caller frees). */
static cJSON *body_json(const th_response_t *r) {
    cJSON *j = cJSON_ParseWithLength(r->body, r->body_len);
    if (j == NULL) fail_msg("body is not JSON: %s", r->body ? r->body : "");
    return j;
}

/* The answer is status with {"detail": "<non-empty string>"}; the detail is copied to out. */
static void assert_detail(const th_response_t *r, int status, char *out, size_t outlen) {
    assert_status(r, status);
    cJSON *j = body_json(r);
    const char *d = jstr(j, "detail");
    if (d == NULL || d[0] == '\0') fail_msg("no detail string in %s", r->body);
    if (out) snprintf(out, outlen, "%s", d);
    cJSON_Delete(j);
}

/* The answer is a 422 whose detail lists an error at loc [where, field] (field NULL: [where]). */
static void assert_422_at(const th_response_t *r, const char *where, const char *field) {
    assert_status(r, 422);
    cJSON *j = body_json(r);
    const cJSON *errs = jget(j, "detail"), *e;
    if (!cJSON_IsArray(errs) || cJSON_GetArraySize(errs) < 1) fail_msg("422 body: %s", r->body);
    int found = 0;
    cJSON_ArrayForEach(e, errs) {
        const cJSON *loc = jget(e, "loc");
        if (!cJSON_IsString(jget(e, "msg")) || !cJSON_IsString(jget(e, "type")))
            fail_msg("an error without msg or type: %s", r->body);
        const cJSON *l0 = cJSON_GetArrayItem(loc, 0), *l1 = cJSON_GetArrayItem(loc, 1);
        if (!cJSON_IsString(l0) || strcmp(l0->valuestring, where) != 0) continue;
        if (field == NULL || (cJSON_IsString(l1) && strcmp(l1->valuestring, field) == 0)) found = 1;
    }
    if (!found) fail_msg("no error at [%s, %s] in %s", where, field ? field : "-", r->body);
    cJSON_Delete(j);
}

/* tmpl with its first "%s" replaced by value, into out. */
static void subst(char *out, size_t outlen, const char *tmpl, const char *value) {
    const char *at = strstr(tmpl, "%s");
    if (at == NULL) {
        snprintf(out, outlen, "%s", tmpl);
        return;
    }
    snprintf(out, outlen, "%.*s%s%s", (int)(at - tmpl), tmpl, value, at + 2);
}

/* ---- processes ---------------------------------------------------------------------------- */

static int ready_now(void *ud) {
    th_response_t r;
    if (th_request(rivetd.port, "GET", "/ready", NULL, NULL, &r) != 0) return 0;
    int ok = r.status == 200;
    th_response_free(&r);
    return ok;
}

/* rivetd against the fake and the group's Redis, ready (Redis connected), with env on top. */
static void start_rivetd(const char *const env[]) {
    const char *all[40];
    size_t k = 0;
    all[k++] = api_base_env;
    all[k++] = redis_url_env;
    all[k++] = "APP_URL=" APP_URL;
    all[k++] = "TELEGRAM_BOT=" BOT;
    all[k++] = "RATE_LIMIT_PER_MIN=0";
    all[k++] = "STRIPE_API_VERSION=";
    all[k++] = "TRUST_PROXY=";
    all[k++] = "REDIRECT_ORIGINS=";
    all[k++] = "CORS_ORIGINS=";
    all[k++] = LINK_TTL_ENV;
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        if (k + 1 >= RV_ARRAY_LEN(all)) fail_msg("too many settings");
        all[k++] = env[i];
    }
    all[k] = NULL;
    if (th_rivetd_start(&rivetd, all) != 0) fail_msg("rivetd did not start");
    if (!th_eventually(ready_now, NULL, TO)) fail_msg("rivetd never became ready (Redis)");
}

static void remember_token(const char *t) {
    if (ntokens_seen < (int)RV_ARRAY_LEN(tokens_seen))
        snprintf(tokens_seen[ntokens_seen++], sizeof tokens_seen[0], "%s", t);
}

/* Per test: a fresh fake and an empty Redis. */
static int setup(void **state) {
    th_response_t r;
    if (th_request(fake.port, "POST", "/_fake/reset", JSON_CT, "{}", &r) != 0) return -1;
    int ok = r.status == 200;
    th_response_free(&r);
    char out[64];
    if (th_redis(redis.port, out, sizeof out, "FLUSHALL") != 0 || strcmp(out, "OK") != 0) return -1;
    ntokens_seen = 0;
    return ok ? 0 : -1;
}

/* Per test: rivetd stops on SIGTERM with status 0 (a sanitizer report makes it non-zero); its
 * log holds neither the API token nor a start token (a one-time credential). */
static int teardown(void **state) {
    if (proxy.pid > 0) th_stop(&proxy, SIGTERM, 5000);
    if (rivetd.pid <= 0) return 0;
    int st = th_stop(&rivetd, SIGTERM, 10000);
    char *log = slurp(rivetd.log_path);
    if (log != NULL) {
        if (strstr(log, TH_API_TOKEN) != NULL) {
            fprintf(stderr, "rivetd's log contains the API token\n");
            st = -1;
        }
        for (int i = 0; i < ntokens_seen; i++) {
            if (strstr(log, tokens_seen[i]) != NULL) {
                fprintf(stderr, "rivetd's log contains the start token %s\n", tokens_seen[i]);
                st = -1;
            }
        }
        free(log);
    }
    if (st != 0) fprintf(stderr, "rivetd exited with status %d\n", st);
    return st == 0 ? 0 : -1;
}

/* ---- HTTP to rivetd ------------------------------------------------------------------------- */

static void request(const char *method, const char *path, const char *headers, const char *body,
                    th_response_t *r) {
    if (th_request(rivetd.port, method, path, headers, body, r) != 0)
        fail_msg("%s %s: no complete answer from rivetd", method, path);
}

static void post_json(const char *path, const char *headers, const char *body, th_response_t *r) {
    char h[512];
    snprintf(h, sizeof h, JSON_CT "%s", headers ? headers : "");
    request("POST", path, h, body, r);
}

/* The bot redeems a start token. */
static void tg_link(const char *headers, const char *token, long long user, long long chat,
                    th_response_t *r) {
    char body[256];
    snprintf(body, sizeof body, "{\"start\":\"%s\",\"telegram_user_id\":%lld,\"chat_id\":%lld}",
             token, user, chat);
    post_json("/api/telegram/link", headers, body, r);
}

/* GET /api/entitlements?<query> with the bearer. */
static void entitlements(const char *query, th_response_t *r) {
    char path[512];
    snprintf(path, sizeof path, "/api/entitlements%s%s", query[0] ? "?" : "", query);
    request("GET", path, BEARER, NULL, r);
}

/* The entitlement of a Telegram user, which must exist (caller frees). */
static cJSON *entitlement_of_user(long long user) {
    char q[64];
    snprintf(q, sizeof q, "telegram_user_id=%lld", user);
    th_response_t r;
    entitlements(q, &r);
    assert_status(&r, 200);
    cJSON *j = body_json(&r);
    th_response_free(&r);
    return j;
}

static cJSON *success_page(const char *sid, int status) {
    char path[512];
    snprintf(path, sizeof path, "/api/checkout/success?session_id=%s", sid);
    th_response_t r;
    request("GET", path, NULL, NULL, &r);
    assert_status(&r, status);
    cJSON *j = body_json(&r);
    th_response_free(&r);
    return j;
}

static void portal(const char *headers, const char *body, th_response_t *r) {
    post_json("/api/billing/portal", headers, body, r);
}

/* ---- the fake's control API ------------------------------------------------------------------ */

/* POST a control request; the answer's JSON (caller frees). */
static cJSON *fake_post(const char *path, const char *json) {
    th_response_t r;
    if (th_request(fake.port, "POST", path, JSON_CT, json, &r) != 0)
        fail_msg("fake: POST %s: no answer", path);
    if (r.status != 200) fail_msg("fake: POST %s: %d %s", path, r.status, r.body);
    cJSON *j = body_json(&r);
    th_response_free(&r);
    return j;
}

static cJSON *fake_get(const char *path) {
    th_response_t r;
    if (th_request(fake.port, "GET", path, NULL, NULL, &r) != 0)
        fail_msg("fake: GET %s: no answer", path);
    if (r.status != 200) fail_msg("fake: GET %s: %d", path, r.status);
    cJSON *j = body_json(&r);
    th_response_free(&r);
    return j;
}

static void fake_do(const char *path, const char *json) { cJSON_Delete(fake_post(path, json)); }

/* The fake signs and delivers its events to rivetd's webhook endpoint with secret. */
static void webhooks_to_rivetd(const char *secret) {
    char body[512];
    snprintf(body, sizeof body,
             "{\"url\":\"http://127.0.0.1:%d/api/webhooks/stripe\",\"secret\":\"%s\","
             "\"retry_ms\":100,\"max_attempts\":100}",
             rivetd.port, secret);
    fake_do("/_fake/webhooks", body);
}

/* Every event recorded since the endpoint was set has been delivered (answered 2xx). */
static int webhooks_settled(void *ud) {
    cJSON *w = fake_get("/_fake/webhooks");
    const cJSON *pending = jget(w, "pending"), *d;
    int ok =
        cJSON_IsNumber(pending) && pending->valuedouble == 0 && cJSON_IsNull(jget(w, "in_flight"));
    int n = 0;
    cJSON_ArrayForEach(d, jget(w, "deliveries")) {
        n++;
        const char *st = jstr(d, "state");
        if (st == NULL || strcmp(st, "delivered") != 0) ok = 0;
    }
    cJSON_Delete(w);
    return ok && n >= (ud ? *(int *)ud : 0);
}

static void wait_webhooks(void) {
    int one = 1;
    if (!th_eventually(webhooks_settled, &one, TO)) {
        cJSON *w = fake_get("/_fake/webhooks");
        char *s = cJSON_PrintUnformatted(w);
        fprintf(stderr, "webhooks: %.3000s\n", s ? s : "");
        free(s);
        cJSON_Delete(w);
        fail_msg("the fake's webhooks were not all delivered in time");
    }
}

/* Move the fake's clock (every later event's created); 0 back to real time. */
static void fake_clock_set(long long now) {
    char body[64];
    if (now)
        snprintf(body, sizeof body, "{\"now\":%lld}", now);
    else
        snprintf(body, sizeof body, "{\"now\":null}");
    fake_do("/_fake/clock", body);
}

static void fake_clock_advance(int seconds) {
    char body[64];
    snprintf(body, sizeof body, "{\"advance\":%d}", seconds);
    fake_do("/_fake/clock", body);
}

/* The portal sessions the fake created, by customer. */
static int fake_portals_for(const char *customer) {
    cJSON *log = fake_get("/_fake/requests");
    const cJSON *e;
    int n = 0;
    char want[96];
    snprintf(want, sizeof want, "customer=%s&", customer);
    cJSON_ArrayForEach(e, log) {
        const char *m = jstr(e, "method"), *p = jstr(e, "path"), *b = jstr(e, "raw_body");
        if (m && p && b && !strcmp(m, "POST") && !strcmp(p, PORTAL) && strstr(b, want) == b) n++;
    }
    cJSON_Delete(log);
    return n;
}

static int fake_portals(void) {
    cJSON *log = fake_get("/_fake/requests");
    const cJSON *e;
    int n = 0;
    cJSON_ArrayForEach(e, log) {
        const char *p = jstr(e, "path");
        if (p && !strcmp(p, PORTAL)) n++;
    }
    cJSON_Delete(log);
    return n;
}

/* ---- a customer's way from checkout to the bot ---------------------------------------------- */

typedef struct cust_s {
    char sid[128];  /* Checkout Session */
    char cus[64];   /* Stripe customer */
    char sub[64];   /* subscription */
    char link[256]; /* the success page's telegram_link */
    char token[80]; /* its start token */
} cust_t;

/* A start token: 22 or more characters of the base64url alphabet. */
static void assert_token(const char *t) {
    size_t n = strlen(t);
    if (n < 22 || n > 64 ||
        strspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != n)
        fail_msg("not a start token: \"%s\"", t);
}

/* The success page of a paid checkout offers the deep link; its token goes to c. */
static void success_deep_link(cust_t *c) {
    cJSON *j = success_page(c->sid, 200);
    assert_string_equal(jstr(j, "status"), "success");
    const char *link = jstr(j, "telegram_link");
    if (link == NULL || strncmp(link, DEEP_LINK, strlen(DEEP_LINK)) != 0)
        fail_msg("telegram_link is not a deep link into %s: %s", BOT, link ? link : "(none)");
    assert_true(cJSON_IsFalse(jget(j, "telegram_linked")));
    snprintf(c->link, sizeof c->link, "%s", link);
    snprintf(c->token, sizeof c->token, "%s", link + strlen(DEEP_LINK));
    assert_token(c->token);
    remember_token(c->token);
    cJSON_Delete(j);
}

/* Checkout through rivetd, then the customer pays at the fake. */
static void checkout_and_pay(const char *email, const char *tier, cust_t *c) {
    memset(c, 0, sizeof *c);
    char body[256], path[256];
    snprintf(body, sizeof body, "{\"email\":\"%s\",\"tier\":\"%s\"}", email, tier);
    th_response_t r;
    post_json("/api/checkout/create", NULL, body, &r);
    assert_status(&r, 200);
    cJSON *j = body_json(&r);
    const char *sid = jstr(j, "session_id");
    assert_non_null(sid);
    snprintf(c->sid, sizeof c->sid, "%s", sid);
    cJSON_Delete(j);
    th_response_free(&r);
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", c->sid);
    cJSON *s = fake_post(path, "{}");
    const char *cus = jstr(s, "customer"), *sub = jstr(s, "subscription");
    if (cus == NULL || sub == NULL) fail_msg("the fake's completed session has no customer");
    snprintf(c->cus, sizeof c->cus, "%s", cus);
    snprintf(c->sub, sizeof c->sub, "%s", sub);
    cJSON_Delete(s);
}

/* A paying customer whose webhooks have arrived, and the deep link its success page shows. */
static void buy(const char *email, const char *tier, cust_t *c) {
    checkout_and_pay(email, tier, c);
    wait_webhooks();
    success_deep_link(c);
}

static void assert_entitlement(const cJSON *e, const cust_t *c, const char *tier, int active,
                               long long user) {
    if (!cJSON_IsObject(e)) fail_msg("no entitlement object");
    assert_string_equal(jstr(e, "customer_id"), c->cus);
    assert_string_equal(jstr(e, "tier"), tier);
    const cJSON *a = jget(e, "active"), *u = jget(e, "telegram_user_id");
    if (!cJSON_IsBool(a) || cJSON_IsTrue(a) != active)
        fail_msg("active is not %s", active ? "true" : "false");
    if (user == 0) {
        if (!cJSON_IsNull(u)) fail_msg("telegram_user_id is not null");
    } else if (!cJSON_IsNumber(u) || u->valuedouble != (double)user) {
        fail_msg("telegram_user_id is not %lld", user);
    }
}

/* ---- the stream, read as a consumer would --------------------------------------------------- */

typedef struct seen_s {
    int provision, linked, updated, deprovision, created, payment, other;
    cJSON *provision_data, *linked_data, *updated_data, *deprovision_data; /* the last of each */
} seen_t;

static redisContext *redis_connect(void) {
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis.port, tv);
    if (c == NULL || c->err) fail_msg("cannot connect to Redis");
    redisSetTimeout(c, tv);
    return c;
}

static void group_create(void) {
    char out[256];
    if (th_redis(redis.port, out, sizeof out, "XGROUP CREATE %s %s 0 MKSTREAM", STREAM, GROUP) ||
        strcmp(out, "OK") != 0)
        fail_msg("XGROUP CREATE: %s", out);
}

static void keep_data(cJSON **slot, const char *data) {
    cJSON_Delete(*slot);
    *slot = cJSON_Parse(data);
    if (!cJSON_IsObject(*slot)) fail_msg("an entry's data is not a JSON object: %s", data);
}

/* Read every new entry through the consumer group (acknowledging each) and count by type. */
static void read_group(seen_t *s) {
    redisContext *c = redis_connect();
    for (;;) {
        redisReply *rep =
            redisCommand(c, "XREADGROUP GROUP %s bot-test COUNT 50 STREAMS %s >", GROUP, STREAM);
        if (rep == NULL) fail_msg("XREADGROUP: no answer");
        if (rep->type == REDIS_REPLY_NIL) {
            freeReplyObject(rep);
            break;
        }
        if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 1)
            fail_msg("XREADGROUP: unexpected reply type %d", rep->type);
        const redisReply *entries = rep->element[0]->element[1];
        if (entries->elements == 0) {
            freeReplyObject(rep);
            break;
        }
        for (size_t i = 0; i < entries->elements; i++) {
            const redisReply *e = entries->element[i];
            const redisReply *f = e->element[1];
            const char *type = NULL, *data = NULL, *evid = NULL;
            for (size_t k = 0; k + 1 < f->elements; k += 2) {
                if (!strcmp(f->element[k]->str, "type")) type = f->element[k + 1]->str;
                if (!strcmp(f->element[k]->str, "data")) data = f->element[k + 1]->str;
                if (!strcmp(f->element[k]->str, "stripe_event_id")) evid = f->element[k + 1]->str;
            }
            if (type == NULL || data == NULL || evid == NULL)
                fail_msg("entry %s lacks type, stripe_event_id or data", e->element[0]->str);
            cJSON *d = cJSON_Parse(data);
            if (!cJSON_IsObject(d) || jstr(d, "type") == NULL || strcmp(jstr(d, "type"), type))
                fail_msg("entry %s: data does not match its type %s: %s", e->element[0]->str, type,
                         data);
            const cJSON *v = jget(d, "v");
            if (!cJSON_IsNumber(v) || v->valuedouble != 2) fail_msg("data v is not 2: %s", data);
            if (!cJSON_IsObject(jget(d, "entitlement")))
                fail_msg("entry %s carries no entitlement: %s", type, data);
            if (jstr(d, "source") == NULL) fail_msg("entry %s carries no source: %s", type, data);
            cJSON_Delete(d);
            if (!strcmp(type, "user.provision")) {
                s->provision++;
                keep_data(&s->provision_data, data);
            } else if (!strcmp(type, "user.telegram_linked")) {
                s->linked++;
                keep_data(&s->linked_data, data);
            } else if (!strcmp(type, "subscription.updated")) {
                s->updated++;
                keep_data(&s->updated_data, data);
            } else if (!strcmp(type, "user.deprovision")) {
                s->deprovision++;
                keep_data(&s->deprovision_data, data);
            } else if (!strcmp(type, "subscription.created")) {
                s->created++;
            } else if (!strncmp(type, "payment.", 8)) {
                s->payment++;
            } else {
                s->other++;
            }
            redisReply *ack = redisCommand(c, "XACK %s %s %s", STREAM, GROUP, e->element[0]->str);
            if (ack == NULL || ack->type != REDIS_REPLY_INTEGER || ack->integer != 1)
                fail_msg("XACK %s failed", e->element[0]->str);
            freeReplyObject(ack);
        }
        freeReplyObject(rep);
    }
    redisFree(c);
}

static void seen_free(seen_t *s) {
    cJSON_Delete(s->provision_data);
    cJSON_Delete(s->linked_data);
    cJSON_Delete(s->updated_data);
    cJSON_Delete(s->deprovision_data);
}

/* ---- 1. the journey ----------------------------------------------------------------------------
 */

typedef struct poll_s {
    long long user;
    const char *tier;
    int active;
} poll_t;

static int entitlement_is(void *ud) {
    poll_t *p = ud;
    cJSON *e = entitlement_of_user(p->user);
    const char *tier = jstr(e, "tier");
    int ok = tier && !strcmp(tier, p->tier) && cJSON_IsBool(jget(e, "active")) &&
             cJSON_IsTrue(jget(e, "active")) == p->active;
    cJSON_Delete(e);
    return ok;
}

static void journey(void **state) {
    start_rivetd(NULL);
    webhooks_to_rivetd(TH_WEBHOOK_SECRET);
    group_create();
    const long long user = 5550001234LL, chat = 5550001234LL;

    /* The customer buys pro; Stripe's webhooks arrive; the success page shows the deep link. */
    cust_t a;
    buy("ana@example.com", "pro", &a);
    /* Reloading the page gives the same link while it is unused. */
    cJSON *j = success_page(a.sid, 200);
    assert_string_equal(jstr(j, "telegram_link"), a.link);
    cJSON_Delete(j);

    /* The customer opens the link; Telegram sends the bot "/start <token>"; the bot redeems it. */
    th_response_t r;
    tg_link(BEARER, a.token, user, chat, &r);
    assert_status(&r, 200);
    j = body_json(&r);
    assert_entitlement(j, &a, "pro", 1, user);
    assert_string_equal(jstr(j, "status"), "active");
    assert_string_equal(jstr(j, "subscription_id"), a.sub);
    cJSON_Delete(j);
    th_response_free(&r);

    /* On every message the bot asks what the user may use. */
    poll_t p = {user, "pro", 1};
    assert_true(entitlement_is(&p));

    /* The customer moves to enterprise (a later second than the purchase). */
    fake_clock_advance(5);
    char path[256];
    snprintf(path, sizeof path, "/_fake/subscriptions/%s/change_plan", a.sub);
    fake_do(path, "{\"price\":\"" TH_PRICE_ENTERPRISE "\"}");
    p.tier = "enterprise";
    if (!th_eventually(entitlement_is, &p, TO)) fail_msg("the plan change never reached the bot");

    /* The subscription is cancelled: access ends. */
    fake_clock_advance(5);
    snprintf(path, sizeof path, "/_fake/subscriptions/%s/cancel", a.sub);
    fake_do(path, "{}");
    p.active = 0;
    if (!th_eventually(entitlement_is, &p, TO)) fail_msg("the cancellation never reached the bot");
    j = entitlement_of_user(user);
    assert_string_equal(jstr(j, "status"), "canceled");
    cJSON_Delete(j);

    /* The token was for one use. */
    tg_link(BEARER, a.token, user, chat, &r);
    assert_detail(&r, 404, NULL, 0);
    th_response_free(&r);

    /* The consumer saw each step once, however many paths provisioned the checkout. */
    wait_webhooks();
    seen_t s = {0};
    read_group(&s);
    assert_int_equal(s.provision, 1);
    assert_int_equal(s.linked, 1);
    assert_int_equal(s.updated, 1);
    assert_int_equal(s.deprovision, 1);
    assert_int_equal(s.created, 1);
    assert_int_equal(s.other, 0);
    /* user.provision carries the deep link the page showed, and the entitlement. */
    assert_string_equal(jstr(s.provision_data, "telegram_link"), a.link);
    assert_string_equal(jstr(s.provision_data, "customer_id"), a.cus);
    assert_entitlement(jget(s.provision_data, "entitlement"), &a, "pro", 1, 0);
    /* user.telegram_linked names the chat. */
    assert_string_equal(jstr(s.linked_data, "customer_id"), a.cus);
    assert_string_equal(jstr(s.linked_data, "source"), "telegram");
    const cJSON *u = jget(s.linked_data, "telegram_user_id"), *ch = jget(s.linked_data, "chat_id");
    assert_true(cJSON_IsNumber(u) && u->valuedouble == (double)user);
    assert_true(cJSON_IsNumber(ch) && ch->valuedouble == (double)chat);
    assert_null(jget(s.linked_data, "telegram_link"));
    assert_entitlement(jget(s.linked_data, "entitlement"), &a, "pro", 1, user);
    assert_entitlement(jget(s.updated_data, "entitlement"), &a, "enterprise", 1, user);
    assert_entitlement(jget(s.deprovision_data, "entitlement"), &a, "enterprise", 0, user);
    assert_null(jget(s.updated_data, "telegram_link"));
    seen_free(&s);
    /* Nothing more arrives later (e.g. a read of Stripe that changed nothing). */
    memset(&s, 0, sizeof s);
    read_group(&s);
    assert_int_equal(s.provision + s.linked + s.updated + s.deprovision + s.other, 0);
    seen_free(&s);
}

/* The success page sees the payment before any webhook: it provisions, and the webhook that
 * arrives later does not provision again. */
static void success_page_first(void **state) {
    start_rivetd(NULL);
    group_create();
    /* Deliveries fail (wrong secret: 400) and are retried until the secret is right. */
    webhooks_to_rivetd("whsec_not_the_right_one");
    cust_t a;
    checkout_and_pay("first@example.com", "basic", &a);
    success_deep_link(&a);
    seen_t s = {0};
    read_group(&s);
    assert_int_equal(s.provision, 1);
    assert_string_equal(jstr(s.provision_data, "source"), "success_page");
    assert_string_equal(jstr(s.provision_data, "telegram_link"), a.link);
    /* Now Stripe's deliveries get through. */
    webhooks_to_rivetd(TH_WEBHOOK_SECRET);
    wait_webhooks();
    read_group(&s);
    assert_int_equal(s.provision, 1);
    assert_int_equal(s.created, 1);
    /* The page still shows the same token, and it works once. */
    cJSON *j = success_page(a.sid, 200);
    assert_string_equal(jstr(j, "telegram_link"), a.link);
    cJSON_Delete(j);
    th_response_t r;
    tg_link(BEARER, a.token, 777000111, 777000111, &r);
    assert_status(&r, 200);
    j = body_json(&r);
    assert_entitlement(j, &a, "basic", 1, 777000111);
    cJSON_Delete(j);
    th_response_free(&r);
    seen_free(&s);
}

/* ---- 2. POST /api/telegram/link
 * ------------------------------------------------------------------ */

static void link_auth_and_validation(void **state) {
    start_rivetd(NULL);
    webhooks_to_rivetd(TH_WEBHOOK_SECRET);
    cust_t a;
    buy("val@example.com", "pro", &a);
    th_response_t r;
    char body[512];

    /* Without the bearer, or with a wrong one: 401, and the token is untouched. */
    const char *const bad_auth[] = {NULL, WRONG_BEARER, "Authorization: Bearer\r\n",
                                    "Authorization: Basic " TH_API_TOKEN "\r\n"};
    for (size_t i = 0; i < RV_ARRAY_LEN(bad_auth); i++) {
        tg_link(bad_auth[i], a.token, 42, 42, &r);
        assert_detail(&r, 401, NULL, 0);
        assert_non_null(th_header(&r, "WWW-Authenticate"));
        th_response_free(&r);
    }

    /* Validation: 422 naming the field. */
    static const struct {
        const char *body;
        const char *field;
    } bad[] = {
        {"{\"telegram_user_id\":1,\"chat_id\":1}", "start"},
        {"{\"start\":null,\"telegram_user_id\":1,\"chat_id\":1}", "start"},
        {"{\"start\":\"\",\"telegram_user_id\":1,\"chat_id\":1}", "start"},
        {"{\"start\":\"has space\",\"telegram_user_id\":1,\"chat_id\":1}", "start"},
        {"{\"start\":\"a/b\",\"telegram_user_id\":1,\"chat_id\":1}", "start"},
        {"{\"start\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\","
         "\"telegram_user_id\":1,\"chat_id\":1}",
         "start"},
        {"{\"start\":12345,\"telegram_user_id\":1,\"chat_id\":1}", "start"},
        {"{\"start\":\"%s\",\"chat_id\":1}", "telegram_user_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":\"123\",\"chat_id\":1}", "telegram_user_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":1.5,\"chat_id\":1}", "telegram_user_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":-5,\"chat_id\":1}", "telegram_user_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":0,\"chat_id\":1}", "telegram_user_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":1e300,\"chat_id\":1}", "telegram_user_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":true,\"chat_id\":1}", "telegram_user_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":1}", "chat_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":1,\"chat_id\":\"-100\"}", "chat_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":1,\"chat_id\":2.5}", "chat_id"},
        {"{\"start\":\"%s\",\"telegram_user_id\":1,\"chat_id\":[1]}", "chat_id"},
        {"[1,2]", NULL},
        {"{\"start\":", NULL},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        subst(body, sizeof body, bad[i].body, a.token);
        post_json("/api/telegram/link", BEARER, body, &r);
        assert_422_at(&r, "body", bad[i].field);
        th_response_free(&r);
    }
    /* Nothing of that consumed the token; a group chat (negative id) is a valid chat_id. */
    tg_link(BEARER, a.token, 6001, -1001234567890LL, &r);
    assert_status(&r, 200);
    th_response_free(&r);
    char out[64];
    th_redis(redis.port, out, sizeof out, "HGET rivet:customer:%s chat_id", a.cus);
    assert_string_equal(out, "-1001234567890");
}

static int key_gone(void *ud) {
    char out[64];
    th_redis(redis.port, out, sizeof out, "EXISTS rivet:tg:start:%s", (const char *)ud);
    return strcmp(out, "0") == 0;
}

static void link_tokens(void **state) {
    start_rivetd(NULL);
    webhooks_to_rivetd(TH_WEBHOOK_SECRET);
    cust_t a, b, c;
    buy("a@example.com", "pro", &a);
    buy("b@example.com", "basic", &b);
    buy("c@example.com", "enterprise", &c);
    assert_true(strcmp(a.token, b.token) != 0 && strcmp(b.token, c.token) != 0);
    const long long ua = 111000111, ub = 222000222;
    th_response_t r;
    char unknown[256], used[256], expired[256], out[256];

    /* The token is kept TELEGRAM_LINK_TTL. */
    th_redis(redis.port, out, sizeof out, "TTL rivet:tg:start:%s", a.token);
    long ttl = strtol(out, NULL, 10);
    if (ttl <= LINK_TTL - 30 || ttl > LINK_TTL) fail_msg("the token's TTL is %s", out);
    th_redis(redis.port, out, sizeof out, "GET rivet:tg:start:%s", a.token);
    assert_string_equal(out, a.cus);

    /* A token never issued. */
    tg_link(BEARER, "AAAAAAAAAAAAAAAAAAAAAA", ua, ua, &r);
    assert_detail(&r, 404, unknown, sizeof unknown);
    th_response_free(&r);

    /* Redeemed once; then used, for anybody. */
    tg_link(BEARER, a.token, ua, ua, &r);
    assert_status(&r, 200);
    th_response_free(&r);
    th_redis(redis.port, out, sizeof out, "EXISTS rivet:tg:start:%s", a.token);
    assert_string_equal(out, "0");
    tg_link(BEARER, a.token, ua, ua, &r);
    assert_detail(&r, 404, used, sizeof used);
    th_response_free(&r);
    tg_link(BEARER, a.token, ub, ub, &r);
    assert_status(&r, 404);
    th_response_free(&r);
    assert_string_equal(used, unknown);

    /* A customer whose chat is linked gets no start link any more. */
    cJSON *j = success_page(a.sid, 200);
    assert_string_equal(jstr(j, "telegram_link"), "https://t.me/" BOT);
    assert_true(cJSON_IsTrue(jget(j, "telegram_linked")));
    cJSON_Delete(j);

    /* The Telegram user of a is linked: b's token is refused for that user (409) but not used
     * up, and b's own user redeems it. */
    tg_link(BEARER, b.token, ua, ua, &r);
    assert_detail(&r, 409, NULL, 0);
    th_response_free(&r);
    j = entitlement_of_user(ua);
    assert_string_equal(jstr(j, "customer_id"), a.cus);
    cJSON_Delete(j);
    tg_link(BEARER, b.token, ub, ub, &r);
    assert_status(&r, 200);
    j = body_json(&r);
    assert_entitlement(j, &b, "basic", 1, ub);
    cJSON_Delete(j);
    th_response_free(&r);
    j = entitlement_of_user(ub);
    assert_string_equal(jstr(j, "customer_id"), b.cus);
    cJSON_Delete(j);

    /* c's token expires unused: Redis drops the key after TELEGRAM_LINK_TTL and the customer's
     * record says it has expired (both done here as the passing of the TTL would). */
    th_redis(redis.port, out, sizeof out, "PEXPIRE rivet:tg:start:%s 1", c.token);
    assert_string_equal(out, "1");
    th_redis(redis.port, out, sizeof out, "HSET rivet:customer:%s tg_token_exp %lld", c.cus,
             (long long)time(NULL) - 1);
    if (!th_eventually(key_gone, c.token, TO)) fail_msg("the token's key did not expire");
    tg_link(BEARER, c.token, 333000333, 333000333, &r);
    assert_detail(&r, 404, expired, sizeof expired);
    th_response_free(&r);
    assert_string_equal(expired, unknown);
    /* The success page issues a fresh one, which works. */
    cust_t c2 = c;
    success_deep_link(&c2);
    if (strcmp(c2.token, c.token) == 0) fail_msg("the success page gave the expired token again");
    tg_link(BEARER, c.token, 333000333, 333000333, &r);
    assert_status(&r, 404);
    th_response_free(&r);
    tg_link(BEARER, c2.token, 333000333, 333000333, &r);
    assert_status(&r, 200);
    j = body_json(&r);
    assert_entitlement(j, &c, "enterprise", 1, 333000333);
    cJSON_Delete(j);
    th_response_free(&r);
}

/* ---- 3. GET /api/entitlements ------------------------------------------------------------------
 */

static void entitlement_fields(const char *body, const cust_t *c, long long user) {
    cJSON *j = cJSON_Parse(body);
    if (!cJSON_IsObject(j)) fail_msg("not a JSON object: %s", body);
    assert_entitlement(j, c, "pro", 1, user);
    assert_string_equal(jstr(j, "email"), "Dana.Lee@Example.com");
    assert_string_equal(jstr(j, "status"), "active");
    assert_string_equal(jstr(j, "subscription_id"), c->sub);
    const cJSON *pe = jget(j, "current_period_end");
    if (!cJSON_IsNumber(pe) || pe->valuedouble < (double)time(NULL) + 20 * 86400)
        fail_msg("current_period_end is not about a month ahead: %s", body);
    assert_true(cJSON_IsFalse(jget(j, "cancel_at_period_end")));
    cJSON_Delete(j);
}

static void lookups(void **state) {
    start_rivetd(NULL);
    webhooks_to_rivetd(TH_WEBHOOK_SECRET);
    cust_t a;
    buy("Dana.Lee@Example.com", "pro", &a);
    const long long user = 987654321;
    th_response_t r;
    char q[256];

    /* Before the chat is linked: by customer, with telegram_user_id null. */
    snprintf(q, sizeof q, "customer_id=%s", a.cus);
    entitlements(q, &r);
    assert_status(&r, 200);
    entitlement_fields(r.body, &a, 0);
    th_response_free(&r);
    tg_link(BEARER, a.token, user, user, &r);
    assert_status(&r, 200);
    char *linked = strdup(r.body);
    th_response_free(&r);
    entitlement_fields(linked, &a, user);

    /* The bearer is required. */
    snprintf(q, sizeof q, "/api/entitlements?customer_id=%s", a.cus);
    request("GET", q, NULL, NULL, &r);
    assert_detail(&r, 401, NULL, 0);
    th_response_free(&r);
    request("GET", q, WRONG_BEARER, NULL, &r);
    assert_detail(&r, 401, NULL, 0);
    th_response_free(&r);
    /* Two sets of credentials, in either order: neither is taken. */
    const char *const twice[] = {BEARER WRONG_BEARER, WRONG_BEARER BEARER};
    for (size_t i = 0; i < RV_ARRAY_LEN(twice); i++) {
        char detail[128];
        request("GET", q, twice[i], NULL, &r);
        assert_detail(&r, 400, detail, sizeof detail);
        assert_string_equal(detail, "More than one Authorization header");
        th_response_free(&r);
    }

    /* Exactly one valid parameter. */
    static const struct {
        const char *query;
        const char *field;
    } bad[] = {
        {"", NULL},
        {"other=1", NULL},
        {"customer_id=cus_A1&email=a%40example.com", NULL},
        {"telegram_user_id=1&email=a%40example.com", NULL},
        {"telegram_user_id=12a", "telegram_user_id"},
        {"telegram_user_id=-1", "telegram_user_id"},
        {"telegram_user_id=", "telegram_user_id"},
        {"telegram_user_id=12345678901234567890", "telegram_user_id"},
        /* Beyond what a link takes (1 to 2^53 - 1). */
        {"telegram_user_id=0", "telegram_user_id"},
        {"telegram_user_id=9007199254740992", "telegram_user_id"},
        {"telegram_user_id=1%002", "telegram_user_id"},
        {"customer_id=xyz", "customer_id"},
        {"customer_id=cus_a-b", "customer_id"},
        {"email=nobody", "email"},
        {"email=", "email"},
        /* Twice, even with the same value: no rule says which counts. */
        {"customer_id=cus_A1&customer_id=cus_B2", "customer_id"},
        {"email=a%40example.com&email=a%40example.com", "email"},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        entitlements(bad[i].query, &r);
        assert_422_at(&r, "query", bad[i].field);
        th_response_free(&r);
    }
    /* An encoded NUL is no valid value, whatever its length. */
    entitlements("email=a%00b%40example.com", &r);
    assert_422_at(&r, "query", "email");
    if (strstr(r.body, "Not a valid value") == NULL) fail_msg("NUL in a query: %s", r.body);
    th_response_free(&r);

    /* Unknown: 404. */
    const char *const unknown[] = {"customer_id=cus_Unknown000000", "telegram_user_id=424242",
                                   "email=nobody%40example.com"};
    for (size_t i = 0; i < RV_ARRAY_LEN(unknown); i++) {
        entitlements(unknown[i], &r);
        assert_detail(&r, 404, NULL, 0);
        th_response_free(&r);
    }

    /* By customer, Telegram user and email (any case, encoded or not): the same JSON. */
    char queries[7][128];
    snprintf(queries[0], sizeof queries[0], "customer_id=%s", a.cus);
    snprintf(queries[1], sizeof queries[1], "telegram_user_id=%lld", user);
    snprintf(queries[2], sizeof queries[2], "email=dana.lee%%40example.com");
    snprintf(queries[3], sizeof queries[3], "email=DANA.LEE@EXAMPLE.COM");
    snprintf(queries[4], sizeof queries[4], "email=Dana.Lee@Example.com");
    snprintf(queries[5], sizeof queries[5], "email=dAnA.lEe%%40eXaMpLe.CoM");
    /* A Telegram user id is a number: leading zeros do not make another user. */
    snprintf(queries[6], sizeof queries[6], "telegram_user_id=00%lld", user);
    for (size_t i = 0; i < RV_ARRAY_LEN(queries); i++) {
        entitlements(queries[i], &r);
        assert_status(&r, 200);
        if (strcmp(r.body, linked) != 0)
            fail_msg("?%s answers %s, the link answered %s", queries[i], r.body, linked);
        assert_string_equal(th_header(&r, "Content-Type"), "application/json");
        th_response_free(&r);
    }
    free(linked);
}

/* ---- 3b. look-ups from memory ------------------------------------------------------------- */

/* Look-up scripts Redis has run (EVALSHA and EVAL), from its command statistics. */
static long long redis_lookups(void) {
    char info[8192];
    if (th_redis(redis.port, info, sizeof info, "INFO commandstats") != 0) fail_msg("no Redis");
    long long n = 0;
    const char *const names[] = {"cmdstat_evalsha:calls=", "cmdstat_eval:calls="};
    for (size_t i = 0; i < RV_ARRAY_LEN(names); i++) {
        const char *p = strstr(info, names[i]);
        if (p) n += atoll(p + strlen(names[i]));
    }
    return n;
}

static void redis_do(const char *cmd, const char *a, const char *b, const char *c) {
    char out[256];
    int rc = c   ? th_redis(redis.port, out, sizeof out, cmd, a, b, c)
             : b ? th_redis(redis.port, out, sizeof out, cmd, a, b)
                 : th_redis(redis.port, out, sizeof out, cmd, a);
    if (rc != 0 || strncmp(out, "ERR", 3) == 0) fail_msg("redis %s: %s", cmd, out);
}

typedef struct answer_s {
    const char *query;
    int status;
    const char *body; /* the whole body, for a 200 */
    char got[512];
} answer_t;

static int answers(void *ud) {
    answer_t *a = ud;
    th_response_t r;
    entitlements(a->query, &r);
    snprintf(a->got, sizeof a->got, "%d %s", r.status, r.body ? r.body : "");
    int ok = r.status == a->status && (a->body == NULL || (r.body && !strcmp(r.body, a->body)));
    th_response_free(&r);
    return ok;
}

static void expect_answer(const char *query, int status, const char *body, int within_ms) {
    answer_t a = {query, status, body, ""};
    if (!th_eventually(answers, &a, within_ms))
        fail_msg("?%s: %s after %d ms, not %d %s", query, a.got, within_ms, status,
                 body ? body : "");
}

/* Repeated look-ups of one user cost Redis nothing: they are answered from memory. */
static int cached_now(void *ud) {
    const char *query = ud;
    long long before = redis_lookups();
    for (int i = 0; i < 5; i++) {
        answer_t a = {query, 200, NULL, ""};
        if (!answers(&a)) return 0;
    }
    return redis_lookups() == before;
}

/* Look-ups are answered from memory while Redis tells rivetd of every change to what they read:
 * whoever changes a customer, an index or the whole database, and when the connection that
 * listens is lost, no answer outlives the change by more than the time the word takes. */
static void lookup_cache(void **state) {
    const char *one = "{\"customer_id\":\"cus_C1\",\"n\":1}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_C1", one, NULL);
    redis_do("SET rivet:tg:user:%s %s", "555", "cus_C1", NULL);
    start_rivetd(NULL);
    const char *q = "telegram_user_id=555";
    expect_answer(q, 200, one, TO);
    if (!th_eventually(cached_now, (void *)q, TO))
        fail_msg("look-ups are never answered from memory");

    /* Another client changes the customer: the next answers say so. */
    const char *two = "{\"customer_id\":\"cus_C1\",\"n\":2}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_C1", two, NULL);
    expect_answer(q, 200, two, 2000);
    /* By customer and by user, both cached, and the user moved to another customer. */
    expect_answer("customer_id=cus_C1", 200, two, TO);
    if (!th_eventually(cached_now, "customer_id=cus_C1", TO)) fail_msg("not cached by customer");
    const char *three = "{\"customer_id\":\"cus_C2\",\"n\":3}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_C2", three, NULL);
    redis_do("SET rivet:tg:user:%s %s", "555", "cus_C2", NULL);
    expect_answer(q, 200, three, 2000);
    expect_answer("customer_id=cus_C1", 200, two, 2000);

    /* The listening connection is lost: answers come from Redis until it is back, which rivetd
     * tries a second later; so the change must show well before that. */
    if (!th_eventually(cached_now, (void *)q, TO)) fail_msg("not cached again");
    redis_do("CLIENT KILL TYPE %s", "pubsub", NULL, NULL);
    const char *four = "{\"customer_id\":\"cus_C2\",\"n\":4}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_C2", four, NULL);
    expect_answer(q, 200, four, 500);
    if (!th_eventually(cached_now, (void *)q, TO)) fail_msg("not cached after the watch came back");
    const char *five = "{\"customer_id\":\"cus_C2\",\"n\":5}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_C2", five, NULL);
    expect_answer(q, 200, five, 2000);

    /* The database is flushed: nobody is known. */
    redis_do("FLUSHALL%s", "", NULL, NULL);
    expect_answer(q, 404, NULL, 2000);
    expect_answer("customer_id=cus_C1", 404, NULL, 2000);
}

static int gone(void *ud) { return !th_alive(ud); }

/* Redis busy with a long script (BUSY to everything else) when the listening connection comes
 * back: a refusal that passes, not a Redis that cannot listen. Look-ups are answered from
 * memory again once Redis is free. */
static void lookup_cache_after_busy(void **state) {
    const char *one = "{\"customer_id\":\"cus_B1\",\"n\":1}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_B1", one, NULL);
    start_rivetd(NULL);
    const char *q = "customer_id=cus_B1";
    expect_answer(q, 200, one, TO);
    if (!th_eventually(cached_now, (void *)q, TO)) fail_msg("look-ups are never cached");
    redis_do("CONFIG SET busy-reply-threshold %s", "100", NULL, NULL);
    redis_do("CLIENT KILL TYPE %s", "pubsub", NULL, NULL);
    /* Busy for 3 s: the watch is tried again a second after it was lost. */
    char port[16];
    snprintf(port, sizeof port, "%d", redis.port);
    const char *argv[] = {"redis-cli",
                          "-p",
                          port,
                          "EVAL",
                          "local s = tonumber(redis.call('TIME')[1]) "
                          "while tonumber(redis.call('TIME')[1]) - s < 3 do end return 1",
                          "0",
                          NULL};
    th_proc_t busy = {0};
    if (th_spawn(&busy, argv, NULL) != 0) fail_msg("cannot start redis-cli");
    if (!th_eventually(gone, &busy, 10000)) fail_msg("the busy script did not end");
    th_stop(&busy, SIGKILL, 1000);
    redis_do("CONFIG SET busy-reply-threshold %s", "5000", NULL, NULL);
    if (!th_eventually(cached_now, (void *)q, 5000))
        fail_msg("look-ups are not cached again after Redis was busy");
    const char *two = "{\"customer_id\":\"cus_B1\",\"n\":2}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_B1", two, NULL);
    expect_answer(q, 200, two, 2000);
}

/* One line to the proxy's control port; its one-line answer into out. */
static void proxy_say(int port, const char *line, char *out, size_t n) {
    int fd = th_connect(port);
    if (fd < 0 || th_send_str(fd, line) != 0) fail_msg("the proxy's control port: no answer");
    ssize_t k = recv(fd, out, n - 1, 0);
    close(fd);
    if (k <= 0) fail_msg("the proxy said nothing to %s", line);
    out[k] = '\0';
    out[strcspn(out, "\n")] = '\0';
}

/* The proxy in front of the group's Redis, and rivetd through it; returns the control port. */
static int proxy_start(void) {
    int pport = th_free_port(), cport = th_free_port();
    char listen[16], to[32], control[16];
    snprintf(listen, sizeof listen, "%d", pport);
    snprintf(to, sizeof to, "127.0.0.1:%d", redis.port);
    snprintf(control, sizeof control, "%d", cport);
    const char *argv[] = {"python3", "test/tcp_proxy.py", "--listen", listen, "--to",
                          to,        "--control",         control,    NULL};
    if (th_spawn(&proxy, argv, NULL) != 0) fail_msg("cannot start the proxy");
    /* The control port opens after the forwarding one (a probe of the latter would count as a
     * connection). */
    if (th_wait_port(cport, 10000) != 0) fail_msg("the proxy did not listen");
    char url[96];
    snprintf(url, sizeof url, "REDIS_URL=redis://127.0.0.1:%d/0", pport);
    const char *env[] = {url, "RECONCILE_INTERVAL=0", NULL};
    start_rivetd(env);
    return cport;
}

/* The connection that listens goes silent (a NAT or a firewall that forgot it: nothing passes,
 * nothing is closed). rivetd writes a key of its own every 2 s and the watch must tell of it; a
 * watch that does not is connected again and the cache emptied, so a change shows within
 * seconds, not the minute a cached answer may live. */
static void lookup_cache_silent_watch(void **state) {
    const char *one = "{\"customer_id\":\"cus_S1\",\"n\":1}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_S1", one, NULL);
    int cport = proxy_start();
    const char *q = "customer_id=cus_S1";
    expect_answer(q, 200, one, TO);
    if (!th_eventually(cached_now, (void *)q, TO)) fail_msg("look-ups are never cached");
    char out[64];
    proxy_say(cport, "COUNT\n", out, sizeof out);
    if (strcmp(out, "2") != 0) fail_msg("%s connections through the proxy, not 2", out);
    /* The second, opened once the first was ready, is the one that listens. */
    proxy_say(cport, "SILENCE 2\n", out, sizeof out);
    assert_string_equal(out, "OK");
    const char *two = "{\"customer_id\":\"cus_S1\",\"n\":2}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_S1", two, NULL);
    expect_answer(q, 200, two, 10000);
    /* Listening again, through a new connection. */
    if (!th_eventually(cached_now, (void *)q, 10000)) fail_msg("not cached again");
    const char *three = "{\"customer_id\":\"cus_S1\",\"n\":3}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_S1", three, NULL);
    expect_answer(q, 200, three, 2000);
}

typedef struct proxy_count_s {
    int port, at_least;
} proxy_count_t;

static int proxy_count_reached(void *ud) {
    proxy_count_t *c = ud;
    char out[32];
    proxy_say(c->port, "COUNT\n", out, sizeof out);
    return atoi(out) >= c->at_least;
}

/* The listening connection goes silent, and so does every new one from its start: the setup of
 * the next watch never finishes. It has a deadline, like a command: rivetd connects again until
 * one is set up, and look-ups are answered from memory again. */
static void lookup_cache_watch_setup_stalls(void **state) {
    const char *one = "{\"customer_id\":\"cus_W1\",\"n\":1}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_W1", one, NULL);
    int cport = proxy_start();
    const char *q = "customer_id=cus_W1";
    expect_answer(q, 200, one, TO);
    if (!th_eventually(cached_now, (void *)q, TO)) fail_msg("look-ups are never cached");
    char out[64];
    proxy_say(cport, "SILENCE NEW\n", out, sizeof out);
    proxy_say(cport, "SILENCE 2\n", out, sizeof out);
    assert_string_equal(out, "OK");
    /* The silent watch is found (connection 3), whose setup stalls and is given up (4). */
    proxy_count_t c = {cport, 4};
    if (!th_eventually(proxy_count_reached, &c, 30000))
        fail_msg("a watch whose setup stalled was never tried again");
    proxy_say(cport, "PASS NEW\n", out, sizeof out);
    if (!th_eventually(cached_now, (void *)q, 20000)) fail_msg("not cached again");
    const char *two = "{\"customer_id\":\"cus_W1\",\"n\":2}";
    redis_do("HSET rivet:customer:%s ent %s", "cus_W1", two, NULL);
    expect_answer(q, 200, two, 2000);
}

/* ENTITLEMENT_CACHE=0: every look-up asks Redis. */
static void lookup_cache_off(void **state) {
    redis_do("HSET rivet:customer:%s ent %s", "cus_C1", "{\"n\":1}", NULL);
    const char *const env[] = {"ENTITLEMENT_CACHE=0", NULL};
    start_rivetd(env);
    expect_answer("customer_id=cus_C1", 200, "{\"n\":1}", TO);
    long long before = redis_lookups();
    for (int i = 0; i < 5; i++) expect_answer("customer_id=cus_C1", 200, "{\"n\":1}", TO);
    assert_int_equal(redis_lookups() - before, 5);
}

/* The ACL user conf/redis-rivet.conf suggests is all rivetd needs: payment, webhooks and the
 * apply script, the success page, the link, look-ups from memory (the watch), the reconciler. */
static void acl_user(void **state) {
    char *conf = slurp("conf/redis-rivet.conf");
    if (conf == NULL) fail_msg("conf/redis-rivet.conf is missing");
    const char *line = strstr(conf, "\n# user rivet ");
    if (line == NULL) fail_msg("conf/redis-rivet.conf suggests no ACL user");
    line += strlen("\n# user rivet ");
    const char *argv[64] = {"ACL", "SETUSER", "rivet"};
    size_t argc = 3;
    char *rules = strndup(line, strcspn(line, "\n"));
    for (char *tok = strtok(rules, " "); tok; tok = strtok(NULL, " ")) {
        if (argc >= RV_ARRAY_LEN(argv)) fail_msg("too many rules");
        argv[argc++] = strcmp(tok, ">CHANGE-ME") == 0 ? ">acl-test-password" : tok;
    }
    redisContext *rc = redis_connect();
    redisReply *rep = redisCommandArgv(rc, (int)argc, argv, NULL);
    if (rep == NULL || rep->type != REDIS_REPLY_STATUS)
        fail_msg("ACL SETUSER: %s", rep && rep->str ? rep->str : "no answer");
    freeReplyObject(rep);
    free(rules);
    free(conf);

    char url[96];
    snprintf(url, sizeof url, "REDIS_URL=redis://rivet:acl-test-password@127.0.0.1:%d/0",
             redis.port);
    const char *const env[] = {url, "RECONCILE_INTERVAL=1", "LOG_LEVEL=debug", NULL};
    start_rivetd(env);
    webhooks_to_rivetd(TH_WEBHOOK_SECRET);
    cust_t a;
    buy("acl@example.com", "pro", &a);
    th_response_t r;
    tg_link(BEARER, a.token, 4242, 4242, &r);
    assert_status(&r, 200);
    th_response_free(&r);
    expect_answer("telegram_user_id=4242", 200, NULL, TO);
    if (!th_eventually(cached_now, "telegram_user_id=4242", TO))
        fail_msg("look-ups are not answered from memory under the ACL user");
    if (!th_eventually(log_has, "reconcile: done:", TO)) fail_msg("no reconciler run finished");

    char *log = slurp(rivetd.log_path);
    assert_non_null(log);
    const char *const bad[] = {"NOPERM", "not cached", "no permissions", "not stored"};
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++)
        if (strstr(log, bad[i])) fail_msg("rivetd logged \"%s\" under the ACL user", bad[i]);
    free(log);
    rep = redisCommand(rc, "ACL DELUSER rivet");
    freeReplyObject(rep);
    redisFree(rc);
}

/* ---- 4. the portal for a linked Telegram user
 * ------------------------------------------------------ */

static void portal_by_telegram_user(void **state) {
    start_rivetd(NULL);
    webhooks_to_rivetd(TH_WEBHOOK_SECRET);
    cust_t a, b;
    buy("pa@example.com", "pro", &a);
    buy("pb@example.com", "pro", &b);
    th_response_t r;
    tg_link(BEARER, a.token, 1001, 1001, &r);
    assert_status(&r, 200);
    th_response_free(&r);
    tg_link(BEARER, b.token, 2002, 2002, &r);
    assert_status(&r, 200);
    th_response_free(&r);

    /* Without the bearer, or a wrong one: 401, and Stripe is not asked. */
    portal(NULL, "{\"telegram_user_id\":2002}", &r);
    assert_detail(&r, 401, NULL, 0);
    th_response_free(&r);
    portal(WRONG_BEARER, "{\"telegram_user_id\":2002}", &r);
    assert_detail(&r, 401, NULL, 0);
    th_response_free(&r);
    /* Unknown Telegram user: 404; malformed: 422. */
    portal(BEARER, "{\"telegram_user_id\":3003}", &r);
    assert_detail(&r, 404, NULL, 0);
    th_response_free(&r);
    portal(BEARER, "{\"telegram_user_id\":-4}", &r);
    assert_422_at(&r, "body", "telegram_user_id");
    th_response_free(&r);
    portal(BEARER, "{\"telegram_user_id\":\"2002\"}", &r);
    assert_422_at(&r, "body", "telegram_user_id");
    th_response_free(&r);
    assert_int_equal(fake_portals(), 0);

    /* The bot opens the portal of b's customer for b's Telegram user. */
    portal(BEARER, "{\"telegram_user_id\":2002}", &r);
    assert_status(&r, 200);
    cJSON *j = body_json(&r);
    const char *url = jstr(j, "portal_url");
    if (url == NULL || strncmp(url, "https://billing.stripe.com/", 27) != 0)
        fail_msg("portal_url in %s", r.body);
    cJSON_Delete(j);
    th_response_free(&r);
    assert_int_equal(fake_portals(), 1);
    assert_int_equal(fake_portals_for(b.cus), 1);
    assert_int_equal(fake_portals_for(a.cus), 0);
}

/* ---- 5. CHECKOUT_LINK_MAX_AGE -------------------------------------------------------------------
 */

/* A paid checkout whose session was created age seconds ago (by the fake's clock). */
static void old_checkout(int age, cust_t *c) {
    fake_clock_set((long long)time(NULL) - age);
    checkout_and_pay("old@example.com", "pro", c);
    fake_clock_set(0);
}

static void checkout_link_max_age(void **state) {
    const char *const env[] = {"CHECKOUT_LINK_MAX_AGE=60", NULL};
    start_rivetd(env);
    cust_t old, recent;
    old_checkout(120, &old);
    old_checkout(30, &recent);
    char body[256], detail[256];
    th_response_t r;

    /* Too old: the page shows nothing personal and points to the bot; no portal. */
    snprintf(body, sizeof body, "/api/checkout/success?session_id=%s", old.sid);
    request("GET", body, NULL, NULL, &r);
    assert_detail(&r, 410, detail, sizeof detail);
    if (strstr(detail, "bot") == NULL) fail_msg("the 410 does not mention the bot: %s", detail);
    if (strstr(r.body, "old@example.com") != NULL) fail_msg("410 with personal data: %s", r.body);
    th_response_free(&r);
    snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", old.sid);
    portal(NULL, body, &r);
    assert_detail(&r, 410, NULL, 0);
    th_response_free(&r);
    snprintf(body, sizeof body, "/api/billing/portal?session_id=%s", old.sid);
    request("POST", body, NULL, NULL, &r);
    assert_detail(&r, 410, NULL, 0);
    th_response_free(&r);
    assert_int_equal(fake_portals(), 0);
    /* Nothing was provisioned from the expired link. */
    char out[64];
    th_redis(redis.port, out, sizeof out, "EXISTS rivet:customer:%s", old.cus);
    assert_string_equal(out, "0");

    /* Within the age, both work. */
    cJSON *j = success_page(recent.sid, 200);
    assert_string_equal(jstr(j, "status"), "success");
    assert_string_equal(jstr(j, "email"), "old@example.com");
    const char *link = jstr(j, "telegram_link");
    assert_true(link != NULL && strncmp(link, DEEP_LINK, strlen(DEEP_LINK)) == 0);
    remember_token(link + strlen(DEEP_LINK));
    cJSON_Delete(j);
    snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", recent.sid);
    portal(NULL, body, &r);
    assert_status(&r, 200);
    th_response_free(&r);
    assert_int_equal(fake_portals_for(recent.cus), 1);
}

/* ---- main ----------------------------------------------------------------------------------- */

static int group_setup(void **state) {
    if (th_fake_stripe_start(&fake, NULL) != 0) {
        fprintf(stderr, "the fake Stripe did not start\n");
        return -1;
    }
    if (th_redis_start(&redis) != 0) {
        fprintf(stderr, "redis-server did not start\n");
        return -1;
    }
    snprintf(api_base_env, sizeof api_base_env, "STRIPE_API_BASE=http://127.0.0.1:%d", fake.port);
    snprintf(redis_url_env, sizeof redis_url_env, "REDIS_URL=redis://127.0.0.1:%d/0", redis.port);
    return 0;
}

static int group_teardown(void **state) {
    if (rivetd.pid > 0) th_stop(&rivetd, SIGKILL, 1000);
    th_stop(&redis, SIGTERM, 5000);
    th_stop(&fake, SIGTERM, 5000);
    return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(journey),
        T(success_page_first),
        T(link_auth_and_validation),
        T(link_tokens),
        T(lookups),
        T(acl_user),
        T(lookup_cache),
        T(lookup_cache_after_busy),
        T(lookup_cache_silent_watch),
        T(lookup_cache_watch_setup_stalls),
        T(lookup_cache_off),
        T(portal_by_telegram_user),
        T(checkout_link_max_age),
    };
    /* BOT_ONLY=<pattern> runs only the matching tests. */
    if (getenv("BOT_ONLY")) cmocka_set_test_filter(getenv("BOT_ONLY"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
