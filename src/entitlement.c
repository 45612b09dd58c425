/* Reads of Stripe's state that keep entitlements right: a subscription whose state an event left
 * in doubt (unknown to rivetd, or two states in the same second), and a Checkout Session the
 * success page found paid. Both go through the same mapping and the same Redis script as
 * webhooks. Reads of subscriptions, waiting or in flight, are kept in a list owned by the app, so
 * that a stopping worker can cancel them and free what they hold (a cancelled Stripe call never
 * calls back). They start no faster than STRIPE_READS_PER_SEC (the instance's, shared among its
 * workers), oldest due first: a recovery that finds many doubts at once never takes the rate
 * limit Stripe gives the whole account. */
#include "rivet/entitlement.h"

#include <hiredis/hiredis.h>
#include <mbedtls/sha1.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rivet/common.h"
#include "rivet/entcache.h"
#include "rivet/list.h"
#include "rivet/log.h"
#include "rivet/provision.h"

/* Far more than doubt ever produces at once; past it, the next event asks again. */
#define MAX_READS      1024
/* A read Stripe did not answer (down, rate limited) is tried again later, MAX_READ_TRIES tries
 * in all, each a single request paced like the first, so that a doubt is not left to the next
 * event. */
#define MAX_READ_TRIES 6
static const uint64_t read_backoff_ms[MAX_READ_TRIES] = {0, 1000, 3000, 10000, 30000, 60000};
/* A read that was not newer than the subscription's events (answered in the second of the last
 * one, or before it) is not applied: the subscription is read again once Stripe's second has
 * passed, at most MAX_SETTLE_ROUNDS times in a row. Only a Stripe whose clock stands still needs
 * more; the events' word stands then. */
#define MAX_SETTLE_ROUNDS 5
#define SETTLE_WAIT_MS    1100

typedef struct read_s {
    struct read_s *prev, *next;
    rv_app_t *app;
    rv_stripe_call_t *call; /* NULL while waiting to be tried again */
    uint64_t due;           /* loop time of the next try, while waiting */
    unsigned tries;
    unsigned rounds; /* reads before this one that were not newer than the events */
    char sub_id[RV_PROVISION_ID_MAX + 1];
    char cust[RV_PROVISION_ID_MAX + 1]; /* the subscription's customer, if known ("") */
} read_t;

/* A read's answer on its way into Redis. */
typedef struct applying_s {
    rv_app_t *app;
    unsigned rounds;
    char sub_id[RV_PROVISION_ID_MAX + 1];
    char cust[RV_PROVISION_ID_MAX + 1];
} applying_t;

static int read_start(read_t *r);

static void read_free(read_t *r) {
    rv_app_t *app = r->app;
    RV_LIST_REMOVE(app->reads, r);
    app->nreads--;
    free(r);
}

static void on_doubt_dropped(void *data, int err, const struct redisReply *reply) {
    if (err) rv_debug("entitlement: a doubt not dropped: redis %s", rv_strerror(err));
}

/* A doubt no read can settle (Stripe has no such subscription, or cannot give a state rivetd can
 * use, or its clock stands still) is dropped, so that recovery does not ask again forever: the
 * events' state stands. */
static void doubt_drop(rv_app_t *app, const char *sub_id, const char *cust) {
    char member[2 * RV_PROVISION_ID_MAX + 2];
    snprintf(member, sizeof member, "%s %s", sub_id, cust);
    const char *argv[] = {"ZREM", RV_DOUBTS_KEY, member};
    if (app->queue && cust[0]) rv_queue_call(app->queue, 3, argv, on_doubt_dropped, NULL);
}

static rv_prices_t prices_of(const rv_app_t *app) {
    rv_prices_t p = {app->cfg.price_basic, app->cfg.price_pro, app->cfg.price_enterprise};
    return p;
}

static void read_settle(rv_app_t *app, const char *sub_id, const char *cust, unsigned rounds);

static void on_state_applied(void *data, int err, int result, const char *stream_id) {
    applying_t *a = data;
    if (err) {
        rv_warn("entitlement: %s: Stripe's state not stored: redis %s", a->sub_id,
                rv_strerror(err));
    } else if ((result & RV_ENQ_MASK) == RV_ENQ_ADDED) {
        rv_info("entitlement: %s: Stripe's state changed the entitlement (entry %s)", a->sub_id,
                stream_id);
    } else if (result & RV_ENQ_ASK_STRIPE) {
        rv_debug("entitlement: %s: Stripe's state is not newer than its events: read again",
                 a->sub_id);
        read_settle(a->app, a->sub_id, a->cust, a->rounds + 1);
    } else {
        rv_debug("entitlement: %s: Stripe's state confirms the entitlement", a->sub_id);
    }
    free(a);
}

/* Apply a Stripe object read at time version (Stripe's clock), in mode, from source. */
static int apply_object(rv_app_t *app, const cJSON *obj, const char *as_type, int64_t version,
                        int mode, const char *source, rv_enqueue_cb cb, void *data, char *reason,
                        size_t reason_len) {
    char *text = cJSON_PrintUnformatted(obj);
    if (text == NULL) return RV_ENOMEM;
    rv_prices_t prices = prices_of(app);
    rv_prov_event_t ev;
    int rc = rv_provision_map_object(text, strlen(text), as_type, version, &prices, &ev);
    free(text);
    if (rc == 0) {
        rc = app->queue ? rv_queue_apply(app->queue, &ev, mode, source, cb, data) : RV_EUNAVAIL;
    } else if (reason) {
        snprintf(reason, reason_len, "%s", ev.reason[0] ? ev.reason : rv_strerror(rc));
    }
    rv_prov_event_free(&ev);
    return rc;
}

/* How far Stripe's Date may be behind this clock and still be believed (the webhook signature's
 * tolerance: a clock further off fails signatures too), and how far ahead. Ahead is what does
 * harm: a read counted as newer than it is outranks the subscription's events until then, and a
 * cancellation among them would be taken as older news. Stripe's clock and a machine kept by NTP
 * agree to well within a second; a Date further ahead than this is not Stripe's clock. */
#define DATE_SKEW_S  300
#define DATE_AHEAD_S 10

/* Reads a millisecond this worker may start: its share of the instance's rate. */
static double reads_per_ms(const rv_app_t *app) {
    unsigned workers = app->cfg.workers ? app->cfg.workers : 1;
    unsigned rate = app->cfg.stripe_reads_per_sec ? app->cfg.stripe_reads_per_sec : 1;
    return (double)rate / workers / 1000.0;
}

static void on_read_timer(uv_timer_t *t);

/* Start the reads that are due, oldest due first, while the rate allows; then arm the timer for
 * the next one due, or for the next token when due reads wait for one. Each try of a read is
 * one try at Stripe (rv_stripe_get_once) and takes a token; the bucket holds one, so that no
 * second ever sees more reads than the rate, a first burst included. */
static void reads_pump(rv_app_t *app) {
    uint64_t now = uv_now(app->loop);
    double per_ms = reads_per_ms(app);
    app->read_tokens += (double)(now - app->read_refill) * per_ms;
    if (app->read_tokens > 1.0) app->read_tokens = 1.0;
    app->read_refill = now;
    uint64_t next = UINT64_MAX;
    for (;;) {
        read_t *first = NULL;
        next = UINT64_MAX;
        for (read_t *r = app->reads; r; r = r->next) {
            if (r->call != NULL) continue;
            if (r->due <= now && (first == NULL || r->due < first->due)) first = r;
            if (r->due > now && r->due < next) next = r->due;
        }
        if (first == NULL) break;
        if (app->read_tokens < 1.0) {
            uint64_t wait = (uint64_t)((1.0 - app->read_tokens) / per_ms) + 1;
            if (now + wait < next) next = now + wait;
            break;
        }
        app->read_tokens -= 1.0;
        if (read_start(first) != 0) read_free(first);
    }
    if (next == UINT64_MAX) {
        uv_timer_stop(&app->read_timer);
        return;
    }
    uv_timer_start(&app->read_timer, on_read_timer, next - now, 0);
}

static void on_read_timer(uv_timer_t *t) { reads_pump(rv_container_of(t, rv_app_t, read_timer)); }

/* Try r again later, if it has tries left; else forget it. Reads of many subscriptions that
 * failed together (a rate limit) are spread over the second half of the wait. */
static void read_later(read_t *r) {
    rv_app_t *app = r->app;
    if (r->tries >= MAX_READ_TRIES || app->stopping) {
        read_free(r);
        return;
    }
    uint64_t base = read_backoff_ms[r->tries], h = 1469598103934665603ull;
    for (const char *p = r->sub_id; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    r->call = NULL;
    r->due = uv_now(app->loop) + base / 2 + h % (base / 2 + 1);
    reads_pump(app);
}

static void on_subscription(void *data, const rv_stripe_result_t *res) {
    read_t *r = data;
    rv_app_t *app = r->app;
    static rv_log_limit_t lim = {.what = "entitlement: reads of Stripe failed"};
    r->call = NULL;
    if (res->err || res->status != 200 || !cJSON_IsObject(res->json)) {
        /* Stripe unreachable, rate limited or failing: later. A 4xx other than 429 (no such
         * subscription) will not change. */
        int again = res->err || res->status == 429 || res->status >= 500;
        rv_warn_limited(&lim,
                        "entitlement: %s: cannot read it from Stripe (try %u of %d): %s, HTTP %d",
                        r->sub_id, r->tries, MAX_READ_TRIES,
                        res->err ? rv_strerror(res->err) : "answered", res->status);
        if (again) {
            read_later(r);
        } else {
            doubt_drop(app, r->sub_id, r->cust);
            read_free(r);
        }
        return;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(res->json, "id");
    if (!cJSON_IsString(id) || strcmp(id->valuestring, r->sub_id) != 0) {
        /* Never applied as this subscription's state, nor as the one it names. */
        rv_warn_limited(&lim, "entitlement: %s: Stripe answered about another subscription",
                        r->sub_id);
        doubt_drop(app, r->sub_id, r->cust);
        read_free(r);
        return;
    }
    const cJSON *cust = cJSON_GetObjectItemCaseSensitive(res->json, "customer");
    if (cJSON_IsObject(cust)) cust = cJSON_GetObjectItemCaseSensitive(cust, "id");
    if (r->cust[0] && (!cJSON_IsString(cust) || strcmp(cust->valuestring, r->cust) != 0)) {
        /* A subscription never changes customer: not applied to the one the answer names. */
        static rv_log_limit_t clim = {.what = "entitlement: answers with another customer"};
        rv_warn_limited(&clim, "entitlement: %s: Stripe answered with another customer than %s",
                        r->sub_id, r->cust);
        doubt_drop(app, r->sub_id, r->cust);
        read_free(r);
        return;
    }
    applying_t *a = calloc(1, sizeof *a);
    if (a) {
        a->app = app;
        a->rounds = r->rounds;
        memcpy(a->sub_id, r->sub_id, sizeof a->sub_id);
        memcpy(a->cust, r->cust, sizeof a->cust);
    }
    char reason[128] = "";
    /* The read is as new as Stripe's clock says (its Date header), so that it compares with
     * events' created, which are Stripe's too; rivetd's own clock when there is none, or when
     * the two differ by more than a signature's tolerance behind or DATE_AHEAD_S ahead. */
    int64_t now = (int64_t)time(NULL), version = res->date ? res->date : now;
    if (version > now + DATE_AHEAD_S || version < now - DATE_SKEW_S) {
        static rv_log_limit_t dlim = {.what = "entitlement: Stripe's Date far from the clock"};
        rv_warn_limited(&dlim,
                        "entitlement: %s: Stripe's Date (%lld) is %lld s from this clock; the read "
                        "counts as of now",
                        r->sub_id, (long long)version, (long long)(version - now));
        version = now;
    }
    int rc = a ? apply_object(app, res->json, "customer.subscription.updated", version,
                              RV_APPLY_STATE, "stripe", on_state_applied, a, reason, sizeof reason)
               : RV_ENOMEM;
    if (rc) {
        rv_warn("entitlement: %s: Stripe's state cannot be applied: %s", r->sub_id,
                reason[0] ? reason : rv_strerror(rc));
        if (rc != RV_EUNAVAIL && rc != RV_ENOMEM) doubt_drop(app, r->sub_id, r->cust);
        free(a);
    }
    read_free(r);
}

/* A new read of sub_id, after its previous read (round rounds - 1) was not newer than its
 * events. Asks that come meanwhile join it, as any read. */
static void read_settle(rv_app_t *app, const char *sub_id, const char *cust, unsigned rounds) {
    if (app->stopping || app->stripe == NULL) return;
    if (rounds > MAX_SETTLE_ROUNDS) {
        rv_warn("entitlement: %s: Stripe answered %d reads in the second of the subscription's "
                "last event or before it; its events' state stands",
                sub_id, MAX_SETTLE_ROUNDS + 1);
        doubt_drop(app, sub_id, cust);
        return;
    }
    for (read_t *r = app->reads; r; r = r->next)
        if (strcmp(r->sub_id, sub_id) == 0) return; /* one is coming: it settles this too */
    if (app->nreads >= MAX_READS) return;
    read_t *r = calloc(1, sizeof *r);
    if (r == NULL) return;
    r->app = app;
    r->rounds = rounds;
    snprintf(r->sub_id, sizeof r->sub_id, "%s", sub_id);
    snprintf(r->cust, sizeof r->cust, "%s", cust);
    /* Spread, so that the reads of many subscriptions settled together do not come at once. */
    uint64_t h = 1469598103934665603ull;
    for (const char *p = sub_id; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    r->due = uv_now(app->loop) + SETTLE_WAIT_MS + h % 300;
    RV_LIST_PUSH(app->reads, r);
    app->nreads++;
    reads_pump(app);
}

int rv_entitlement_ask_stripe(rv_app_t *app, const char *sub_id, const char *customer_id) {
    if (!rv_provision_is_id(sub_id)) return RV_EINVAL;
    if (customer_id && customer_id[0] && !rv_provision_is_id(customer_id)) return RV_EINVAL;
    if (app->stripe == NULL || app->queue == NULL || app->stopping) return RV_EUNAVAIL;
    for (read_t *r = app->reads; r; r = r->next) {
        if (strcmp(r->sub_id, sub_id) != 0) continue;
        /* Its answer will do for both. */
        if (!r->cust[0] && customer_id) snprintf(r->cust, sizeof r->cust, "%s", customer_id);
        return 0;
    }
    if (app->nreads >= MAX_READS) return RV_EUNAVAIL;
    read_t *r = calloc(1, sizeof *r);
    if (r == NULL) return RV_ENOMEM;
    r->app = app;
    r->due = uv_now(app->loop);
    snprintf(r->sub_id, sizeof r->sub_id, "%s", sub_id);
    snprintf(r->cust, sizeof r->cust, "%s", customer_id ? customer_id : "");
    RV_LIST_PUSH(app->reads, r);
    app->nreads++;
    reads_pump(app);
    return 0;
}

size_t rv_entitlement_reads_in_flight(const rv_app_t *app) {
    size_t n = 0;
    /* Not tried yet: waiting for its turn, or for Stripe's second to pass. */
    for (const read_t *r = app->reads; r; r = r->next) n += r->call != NULL || r->tries == 0;
    return n;
}

size_t rv_entitlement_reads_waiting(const rv_app_t *app) {
    size_t n = 0;
    for (const read_t *r = app->reads; r; r = r->next) n += r->call == NULL && r->tries == 0;
    return n;
}

static int read_start(read_t *r) {
    char path[64 + RV_PROVISION_ID_MAX];
    snprintf(path, sizeof path, "/v1/subscriptions/%s", r->sub_id);
    r->tries++;
    return rv_stripe_get_once(r->app->stripe, path, on_subscription, r, &r->call);
}

typedef struct fulfill_s {
    rv_fulfill_cb done;
    void *data;
    char session_id[RV_PROVISION_ID_MAX + 1];
    char sub_id[RV_PROVISION_ID_MAX + 1];
    char cust[RV_PROVISION_ID_MAX + 1];
    rv_app_t *app;
} fulfill_t;

static void on_fulfilled(void *data, int err, int result, const char *telegram) {
    fulfill_t *f = data;
    if (err) {
        rv_warn("entitlement: %s not provisioned from the success page: redis %s", f->session_id,
                rv_strerror(err));
    } else if ((result & RV_ENQ_MASK) == RV_ENQ_ADDED) {
        rv_info("entitlement: %s provisioned from the success page", f->session_id);
    }
    if (!err && (result & RV_ENQ_ASK_STRIPE) && f->sub_id[0])
        rv_entitlement_ask_stripe(f->app, f->sub_id, f->cust);
    f->done(f->data, err, err ? 0 : result & RV_ENQ_MASK, telegram);
    free(f);
}

int rv_entitlement_fulfill(rv_app_t *app, const cJSON *session, rv_fulfill_cb done, void *data) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(session, "status");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(session, "mode");
    if (!done || !cJSON_IsString(st) || strcmp(st->valuestring, "complete") != 0 ||
        !cJSON_IsString(mode) || strcmp(mode->valuestring, "subscription") != 0)
        return RV_EIGNORED;
    if (app->queue == NULL) return RV_EUNAVAIL;
    fulfill_t *f = calloc(1, sizeof *f);
    if (f == NULL) return RV_ENOMEM;
    f->done = done;
    f->data = data;
    f->app = app;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(session, "id");
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(session, "subscription");
    if (cJSON_IsObject(sub)) sub = cJSON_GetObjectItemCaseSensitive(sub, "id");
    if (cJSON_IsString(id)) snprintf(f->session_id, sizeof f->session_id, "%s", id->valuestring);
    if (cJSON_IsString(sub) && rv_provision_is_id(sub->valuestring))
        snprintf(f->sub_id, sizeof f->sub_id, "%s", sub->valuestring);
    const cJSON *cus = cJSON_GetObjectItemCaseSensitive(session, "customer");
    if (cJSON_IsObject(cus)) cus = cJSON_GetObjectItemCaseSensitive(cus, "id");
    if (cJSON_IsString(cus) && rv_provision_is_id(cus->valuestring))
        snprintf(f->cust, sizeof f->cust, "%s", cus->valuestring);
    char *text = cJSON_PrintUnformatted(session);
    if (text == NULL) {
        free(f);
        return RV_ENOMEM;
    }
    rv_prices_t prices = prices_of(app);
    rv_prov_event_t ev;
    int rc = rv_provision_map_object(text, strlen(text), "checkout.session.completed",
                                     (int64_t)time(NULL), &prices, &ev);
    free(text);
    if (rc == 0)
        rc = rv_queue_fulfill(app->queue, &ev, on_fulfilled, f);
    else
        rv_warn("entitlement: %s: the session cannot be provisioned: %s", f->session_id,
                ev.reason[0] ? ev.reason : rv_strerror(rc));
    rv_prov_event_free(&ev);
    if (rc) free(f);
    return rc;
}

void rv_entitlement_close(rv_app_t *app) {
    if (uv_is_active((uv_handle_t *)&app->read_timer)) uv_timer_stop(&app->read_timer);
    while (app->reads) {
        read_t *r = app->reads;
        if (r->call) rv_stripe_cancel(r->call);
        read_free(r);
    }
    if (app->entcache) {
        rv_queue_watch(app->queue, NULL, NULL);
        rv_entcache_free(app->entcache);
        app->entcache = NULL;
    }
}

/* ---- the bot's look-ups -----------------------------------------------------------------------
 */

/* One round trip whatever the key: the bot asks on every message, and each Redis command costs
 * rivetd more than the answer itself. KEYS: 1 the customer hash, or an index (Telegram user,
 * email) naming the customer. ARGV: 1 "c" or "i". Returns {customer id, entitlement JSON} or
 * nil. The hash an index names is read by name: rivetd runs on one Redis, not a cluster. */
static const char lookup_script[] = "local key = KEYS[1]\n"
                                    "if ARGV[1] == 'i' then\n"
                                    "  local id = redis.call('GET', key)\n"
                                    "  if not id then return false end\n"
                                    "  key = 'rivet:customer:' .. id\n"
                                    "end\n"
                                    "local ent = redis.call('HGET', key, 'ent')\n"
                                    "if not ent then return false end\n"
                                    "return {key:sub(16), ent}\n";

/* The script's SHA-1, as Redis names it: EVALSHA sends 40 bytes instead of the script. */
static const char *lookup_sha(void) {
    static char hex[41];
    if (hex[0] == '\0') {
        unsigned char d[20];
        mbedtls_sha1_ret((const unsigned char *)lookup_script, sizeof lookup_script - 1, d);
        for (int i = 0; i < 20; i++) snprintf(hex + 2 * i, 3, "%02x", d[i]);
    }
    return hex;
}

typedef struct lookup_s {
    rv_app_t *app;
    rv_lookup_cb cb;
    void *data;
    int retried;
    uint64_t epoch; /* of the cache when the look-up began */
    char key[400];
    char mode[2];
} lookup_t;

/* ---- the look-up cache ---------------------------------------------------------------------- */

/* How long a cached answer may live at most, should Redis's word of a change ever be lost. */
#define CACHE_TTL_MS 60000

static void on_invalidate(void *data, const char *key, size_t len) {
    rv_app_t *app = data;
    if (key == NULL)
        rv_entcache_clear(app->entcache);
    else
        rv_entcache_invalidate(app->entcache, key, len);
}

int rv_entitlement_cache_start(rv_app_t *app) {
    if (app->cfg.entitlement_cache == 0 || app->queue == NULL) return 0;
    app->entcache = rv_entcache_new(app->cfg.entitlement_cache, CACHE_TTL_MS);
    if (app->entcache == NULL) return RV_ENOMEM;
    rv_queue_watch(app->queue, on_invalidate, app);
    return 0;
}

/* The Redis key a look-up starts from; 0, or RV_EINVAL. */
static int lookup_key(int kind, const char *value, char *key, size_t size) {
    if (kind == RV_BY_CUSTOMER && !rv_provision_is_id(value)) return RV_EINVAL;
    if (strlen(value) > 320 || size < 340) return RV_EINVAL;
    static const char *const prefix[] = {"rivet:customer:", "rivet:tg:user:", "rivet:email:"};
    int n = snprintf(key, size, "%s", prefix[kind]);
    /* Emails are kept in lower case; ids are left as they are. */
    for (const char *p = value; *p && (size_t)n < size - 1; p++)
        key[n++] = kind == RV_BY_EMAIL && *p >= 'A' && *p <= 'Z' ? (char)(*p + 32) : *p;
    key[n] = '\0';
    return 0;
}

int rv_entitlement_cached(rv_app_t *app, int kind, const char *value, const char **customer_id,
                          const char **entitlement) {
    char key[400];
    if (app->entcache == NULL || !rv_queue_watching(app->queue) ||
        lookup_key(kind, value, key, sizeof key) != 0)
        return 0;
    return rv_entcache_get(app->entcache, key, uv_now(app->loop), customer_id, entitlement);
}

static int lookup_send(lookup_t *l, const char *cmd, const char *script);

static void on_lookup_reply(void *data, int err, const struct redisReply *reply) {
    lookup_t *l = data;
    /* Redis lost its script cache (a restart, SCRIPT FLUSH): send the script itself once, which
     * caches it again. */
    if (err && reply && reply->type == REDIS_REPLY_ERROR && !l->retried &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        l->retried = 1;
        if (lookup_send(l, "EVAL", lookup_script) == 0) return;
    }
    if (!err && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        reply->element[1]->type == REDIS_REPLY_STRING) {
        /* Kept only while Redis tells of changes, and only if none came meanwhile. */
        if (l->app->entcache && rv_queue_watching(l->app->queue))
            rv_entcache_put(l->app->entcache, l->epoch, l->key, reply->element[0]->str,
                            reply->element[1]->str, uv_now(l->app->loop));
        l->cb(l->data, 0, reply->element[0]->str, reply->element[1]->str);
    } else
        l->cb(l->data, err, NULL, NULL);
    free(l);
}

static int lookup_send(lookup_t *l, const char *cmd, const char *script) {
    const char *argv[] = {cmd, script, "1", l->key, l->mode};
    return rv_queue_call(l->app->queue, 5, argv, on_lookup_reply, l);
}

int rv_entitlement_lookup(rv_app_t *app, int kind, const char *value, rv_lookup_cb cb, void *data) {
    if (app->queue == NULL) return RV_EUNAVAIL;
    lookup_t *l = calloc(1, sizeof *l);
    if (l == NULL) return RV_ENOMEM;
    if (lookup_key(kind, value, l->key, sizeof l->key) != 0) {
        free(l);
        return RV_EINVAL;
    }
    l->app = app;
    l->cb = cb;
    l->data = data;
    l->epoch = rv_entcache_epoch(app->entcache);
    l->mode[0] = kind == RV_BY_CUSTOMER ? 'c' : 'i';
    int rc = lookup_send(l, "EVALSHA", lookup_sha());
    if (rc) free(l);
    return rc;
}

/* ---- redeeming a start token ------------------------------------------------------------------
 */

/* KEYS: 1 the token, 2 the stream, 3 the customer hash, 4 the Telegram user's index.
 * ARGV: 1 the customer the token named when read, 2 Telegram user id, 3 chat id, 4 the entry's
 * data without its entitlement. Returns {result, entitlement}. */
static const char link_script[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {2, ''} end\n"
    "local other = redis.call('GET', KEYS[4])\n"
    "local prev = redis.call('HGET', KEYS[3], 'telegram_user_id')\n"
    "if (other and other ~= ARGV[1]) or (prev and prev ~= ARGV[2]) then return {3, ''} end\n"
    "redis.call('DEL', KEYS[1])\n"
    "local ent = redis.call('HGET', KEYS[3], 'ent') or ''\n"
    "ent = ent:gsub('\"telegram_user_id\":[^,}]*}$', '\"telegram_user_id\":' .. ARGV[2] .. '}')\n"
    "redis.call('HSET', KEYS[3], 'telegram_user_id', ARGV[2], 'chat_id', ARGV[3], 'ent', ent)\n"
    "redis.call('HDEL', KEYS[3], 'tg_token', 'tg_token_exp')\n"
    "redis.call('SET', KEYS[4], ARGV[1])\n"
    "if prev == ARGV[2] then return {4, ent} end\n"
    "local data = ARGV[4]:sub(1, -2) .. ',\"entitlement\":' .. ent .. '}'\n"
    "redis.call('XADD', KEYS[2], '*', 'type', 'user.telegram_linked', 'stripe_event_id', '',\n"
    "  'data', data)\n"
    "return {1, ent}\n";

typedef struct link_s {
    rv_app_t *app;
    rv_link_cb cb;
    void *data;
    char token[80];
    char user[24], chat[24];
    char cust[RV_PROVISION_ID_MAX + 1];
} link_t;

static void on_linked(void *data, int err, const struct redisReply *reply) {
    link_t *k = data;
    /* What the script may have written is forgotten here at once, not when Redis's word of it
     * comes: the bot may look the user up as soon as it has the answer. */
    if (k->app->entcache) {
        char key[64 + RV_PROVISION_ID_MAX];
        int n = snprintf(key, sizeof key, "rivet:customer:%s", k->cust);
        rv_entcache_invalidate(k->app->entcache, key, (size_t)n);
        n = snprintf(key, sizeof key, "rivet:tg:user:%s", k->user);
        rv_entcache_invalidate(k->app->entcache, key, (size_t)n);
    }
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        k->cb(k->data, err ? err : RV_EUNAVAIL, 0, NULL);
    } else {
        int result = (int)reply->element[0]->integer;
        k->cb(k->data, 0, result,
              result == RV_LINK_LINKED || result == RV_LINK_AGAIN ? reply->element[1]->str : NULL);
    }
    free(k);
}

/* The token named a customer: redeem it atomically, checking it still does. */
static void on_token(void *data, int err, const struct redisReply *reply) {
    link_t *k = data;
    if (err || !reply || reply->type != REDIS_REPLY_STRING || !rv_provision_is_id(reply->str)) {
        k->cb(k->data, err, err ? 0 : RV_LINK_UNKNOWN, NULL);
        free(k);
        return;
    }
    char *cust = k->cust;
    snprintf(k->cust, sizeof k->cust, "%s", reply->str);
    char tkey[128], ckey[32 + RV_PROVISION_ID_MAX], ukey[48], entry[512];
    snprintf(tkey, sizeof tkey, "rivet:tg:start:%s", k->token);
    snprintf(ckey, sizeof ckey, "rivet:customer:%s", cust);
    snprintf(ukey, sizeof ukey, "rivet:tg:user:%s", k->user);
    snprintf(entry, sizeof entry,
             "{\"v\":%d,\"type\":\"user.telegram_linked\",\"stripe_event_id\":\"\","
             "\"created\":%lld,\"customer_id\":\"%s\",\"telegram_user_id\":%s,\"chat_id\":%s,"
             "\"source\":\"telegram\"}",
             RV_PROVISION_DATA_VERSION, (long long)time(NULL), cust, k->user, k->chat);
    const char *argv[] = {"EVAL", link_script, "4",     tkey, k->app->cfg.redis_stream, ckey, ukey,
                          cust,   k->user,     k->chat, entry};
    int rc = rv_queue_call(k->app->queue, 11, argv, on_linked, k);
    if (rc) {
        k->cb(k->data, rc, 0, NULL);
        free(k);
    }
}

/* Digits only, at most 19 (a signed 64-bit number): Telegram's ids. A chat id may be negative
 * (a group); a user id may not. */
static int is_id_number(const char *s, int may_be_negative) {
    if (may_be_negative && *s == '-') s++;
    size_t n = strlen(s);
    if (n == 0 || n > 19) return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9') return 0;
    return 1;
}

int rv_entitlement_link(rv_app_t *app, const char *token, const char *telegram_user_id,
                        const char *chat_id, rv_link_cb cb, void *data) {
    if (app->queue == NULL) return RV_EUNAVAIL;
    size_t tl = strlen(token);
    if (tl == 0 || tl > 64 ||
        strspn(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                      "0123456789_-") != tl)
        return RV_EINVAL;
    if (!is_id_number(telegram_user_id, 0) || !is_id_number(chat_id, 1)) return RV_EINVAL;
    link_t *k = calloc(1, sizeof *k);
    if (k == NULL) return RV_ENOMEM;
    k->app = app;
    k->cb = cb;
    k->data = data;
    snprintf(k->token, sizeof k->token, "%s", token);
    snprintf(k->user, sizeof k->user, "%s", telegram_user_id);
    snprintf(k->chat, sizeof k->chat, "%s", chat_id);
    char tkey[128];
    snprintf(tkey, sizeof tkey, "rivet:tg:start:%s", token);
    const char *argv[] = {"GET", tkey};
    int rc = rv_queue_call(app->queue, 2, argv, on_token, k);
    if (rc) free(k);
    return rc;
}
