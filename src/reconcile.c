/* The reconciler: missed webhooks recovered from Stripe's list of events.
 *
 * A run: take the lock (free, or already this reconciler's; it expires), read the cursor, then
 * page through GET /v1/events from the cursor (less an overlap) up to a little before now, newest
 * first, one page at a time with a pause between pages, far below Stripe's read rate limit (and
 * waiting while the reads of Stripe its events asked for pile up). The events of a page are applied
 * together (the script is order-proof: an older event never undoes a newer one, and entries carry
 * the entitlement as it stands), and the next page is asked for once Redis has answered for all
 * of them. The lock is renewed after every page; when the run is done the cursor moves to the
 * end of the range, and the lock is released. Any failure ends the run without moving the cursor:
 * the next run covers the same range again, and the exactly-once script makes that harmless.
 *
 * Memory: the reconciler is freed only once its timer has closed and nothing it started is still
 * in flight (Redis answers every command, also while closing; a cancelled Stripe call never calls
 * back, so it is counted out when cancelled). */
#include "rivet/reconcile.h"

#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rivet/common.h"
#include "rivet/entitlement.h"
#include "rivet/log.h"
#include "rivet/metrics.h"
#include "rivet/provision.h"

#define LOCK_KEY         "rivet:reconcile:lock"
#define CURSOR_KEY       "rivet:reconcile:cursor"
#define LOCK_TTL_MS      "120000"
#define MAX_AGE_S        (30 * 86400 - 600) /* Stripe lists 30 days of events; keep clear of the edge */
#define FIRST_LOOKBACK_S (3 * 86400)        /* no cursor yet: Stripe's retry window */
#define OVERLAP_S        300 /* each run starts this much before the last one ended */
#define SETTLE_S         30  /* events this fresh may still be on their way as webhooks */
#define PAGE_LIMIT       100
#define MAX_PAGES        20000 /* two million events in one run: no list is that long */
#define PAGE_GAP_MS      100   /* at most ten list calls a second */
#define HOLD_S           10    /* no next page while the reads of Stripe waiting take longer */
#define HOLD_MS          1000  /* how often a run that holds looks again (and renews its lock) */
#define HOLD_MAX         500   /* nor more than this many (entitlement.c keeps at most 1024) */
#define DOUBT_AGE_S      10    /* doubts younger than this are likely being settled */
#define DOUBTS_PER_RUN   "500" /* doubts a run asks Stripe about again, the oldest first */
#define FIRST_RUN_MS     5000
#define LOCK_RETRY_MS    1000

/* The lock is taken when free, or when it is already this reconciler's: a run that could not
 * release it (Redis stalled or gone at its end), or whose SET was done but not answered, leaves
 * it to this reconciler's next run, not to two minutes of expiry. */
static const char take_script[] = "local v = redis.call('GET', KEYS[1])\n"
                                  "if v and v ~= ARGV[1] then return 0 end\n"
                                  "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                                  "return 1\n";
static const char renew_script[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                   "  return redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                   "end\n"
                                   "return 0\n";
static const char release_script[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n";
static const char cursor_script[] =
    "local c = tonumber(redis.call('GET', KEYS[1]) or '')\n"
    "if c == nil or c < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "return 1\n";

enum { IDLE, LOCKING, CURSOR, PAGING, APPLYING, FINISHING, DRAINING };
#define DRAIN_POLL_MS 50 /* one run: how often it looks whether Stripe's answers are in */

struct rv_reconcile_s {
    rv_app_t *app;
    uv_timer_t timer;
    int closing;
    int timer_closed;
    int inflight; /* Redis commands and Stripe calls whose answer is awaited */
    int state;
    uint64_t interval_ms; /* 0: one run only */
    uint64_t lookback_s;  /* one run: its range */
    uint64_t wait_until;  /* one run: give up waiting for the lock then */
    int holding;          /* waiting for the reads of Stripe its events asked for */
    rv_reconcile_done_cb done;
    void *done_data;
    rv_stripe_call_t *call;
    char token[33]; /* this reconciler's, for all its runs: the lock's value while it holds it */
    int held;       /* the lock may be held by this run: released at its end */
    int applying;   /* events of the page not answered yet */
    int page_failed;
    char last_id[RV_PROVISION_ID_MAX + 1];
    int64_t last_created; /* of the last event listed in this run; INT64_MAX before the first */
    int has_more;
    rv_reconcile_stats_t st;
};

static void run_start(rv_reconcile_t *r);
static void next_page(rv_reconcile_t *r);
static void one_run_done(rv_reconcile_t *r);

/* ---- life ---------------------------------------------------------------------------------- */

static void maybe_free(rv_reconcile_t *r) {
    if (r->closing && r->timer_closed && r->inflight == 0) free(r);
}

static void on_timer_closed(uv_handle_t *h) {
    rv_reconcile_t *r = h->data;
    r->timer_closed = 1;
    maybe_free(r);
}

/* An answer arrived: 1 when the reconciler is going away and the answer is to be ignored. */
static int answer_arrived(rv_reconcile_t *r) {
    r->inflight--;
    if (!r->closing) return 0;
    maybe_free(r);
    return 1;
}

static void on_timer(uv_timer_t *t) {
    rv_reconcile_t *r = t->data;
    if (r->state == IDLE)
        run_start(r);
    else if (r->state == PAGING)
        next_page(r);
    else if (r->state == DRAINING)
        one_run_done(r);
}

static void schedule(rv_reconcile_t *r, uint64_t ms) {
    if (!r->closing) uv_timer_start(&r->timer, on_timer, ms, 0);
}

/* The next run, an interval from now give or take a tenth: instances on a fixed period could
 * fall into step so that one always meets the other's lock and never runs itself. */
static void schedule_next(rv_reconcile_t *r) {
    uint32_t j = 0;
    rv_random(&j, sizeof j);
    uint64_t spread = r->interval_ms / 5;
    schedule(r, r->interval_ms - spread / 2 + (spread ? j % spread : 0));
}

static rv_reconcile_t *create(rv_app_t *app) {
    rv_reconcile_t *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->app = app;
    unsigned char raw[16];
    if (rv_random(raw, sizeof raw) != 0) {
        free(r);
        return NULL;
    }
    for (int i = 0; i < 16; i++) snprintf(r->token + 2 * i, 3, "%02x", raw[i]);
    uv_timer_init(app->loop, &r->timer);
    r->timer.data = r;
    return r;
}

void rv_reconcile_close(rv_reconcile_t *r) {
    if (r == NULL || r->closing) return;
    r->closing = 1;
    if (r->call) {
        rv_stripe_cancel(r->call);
        r->call = NULL;
        r->inflight--;
    }
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

/* ---- the end of a run ---------------------------------------------------------------------- */

static void report(rv_reconcile_t *r) {
    rv_reconcile_stats_t *st = &r->st;
    char labels[48];
    const char *outcome = st->ok ? "ok" : st->locked ? "locked" : "error";
    snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome);
    rv_metrics_count(RV_M_RECONCILE_RUNS, labels, 1);
    if (st->ok) {
        rv_metrics_gauge_set(r->app->worker_index, RV_G_RECONCILE_LAST_OK, (double)time(NULL));
        rv_info("reconcile: done: %llu events in %llu pages, %llu recovered, %llu delivered "
                "before, %llu ignored, %llu dead-lettered, %llu doubts asked again",
                (unsigned long long)st->events, (unsigned long long)st->pages,
                (unsigned long long)st->recovered, (unsigned long long)st->duplicates,
                (unsigned long long)st->ignored, (unsigned long long)st->dead,
                (unsigned long long)st->doubts);
        if (st->recovered)
            rv_warn("reconcile: %llu events had not come as webhooks: webhook deliveries are "
                    "failing or were missed; check the endpoint in the Stripe dashboard",
                    (unsigned long long)st->recovered);
    } else if (!st->locked) {
        rv_warn("reconcile: run stopped: %s (the next run covers the range again)", st->error);
    }
}

static void on_released(void *data, int err, const struct redisReply *reply) {
    rv_reconcile_t *r = data;
    if (answer_arrived(r)) return;
    r->state = IDLE;
    report(r);
    if (r->interval_ms)
        schedule_next(r);
    else
        one_run_done(r);
}

/* One run (--reconcile) ends once Stripe has answered what the run asked it and Redis has what
 * Stripe said (the caller stops everything then: a read or a command still in flight would be
 * dropped). Both are bounded by their timeouts; a read Stripe did not answer is not waited for
 * again (the doubt stays for the next event or run, and the log says so). */
static void one_run_done(rv_reconcile_t *r) {
    if ((rv_entitlement_reads_in_flight(r->app) > 0 || rv_queue_pending(r->app->queue) > 0) &&
        !r->app->stopping) {
        r->state = DRAINING;
        schedule(r, DRAIN_POLL_MS);
        return;
    }
    r->state = IDLE;
    if (r->done) {
        rv_reconcile_done_cb done = r->done;
        r->done = NULL;
        done(r->done_data, &r->st);
    }
}

/* Release the lock (if held) and finish the run with what st says. */
static void run_end(rv_reconcile_t *r) {
    r->state = FINISHING;
    const char *argv[] = {"EVAL", release_script, "1", LOCK_KEY, r->token};
    if (r->held && rv_queue_call(r->app->queue, 5, argv, on_released, r) == 0) {
        r->inflight++;
        return;
    }
    r->inflight++;
    on_released(r, 0, NULL);
}

static void __attribute__((format(printf, 2, 3)))
run_fail(rv_reconcile_t *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->st.error, sizeof r->st.error, fmt, ap);
    va_end(ap);
    r->st.ok = 0;
    run_end(r);
}

/* Doubts an earlier event raised and nothing settled (Stripe was down, Redis stalled, rivetd
 * restarted, too many at once): asked again, through the same paced reads. */
static void on_doubts(void *data, int err, const struct redisReply *reply) {
    rv_reconcile_t *r = data;
    if (answer_arrived(r)) return;
    if (err || reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        rv_warn("reconcile: the subscriptions in doubt could not be read: redis %s",
                rv_strerror(err ? err : RV_EUNAVAIL));
    } else {
        for (size_t i = 0; i < reply->elements; i++) {
            /* "<subscription> <customer>": the read must name that customer. */
            const struct redisReply *e = reply->element[i];
            char sub[RV_PROVISION_ID_MAX + 1], cust[RV_PROVISION_ID_MAX + 1];
            const char *sp = e->type == REDIS_REPLY_STRING ? strchr(e->str, ' ') : NULL;
            if (sp == NULL || (size_t)(sp - e->str) >= sizeof sub || strlen(sp + 1) >= sizeof cust)
                continue;
            memcpy(sub, e->str, (size_t)(sp - e->str));
            sub[sp - e->str] = '\0';
            snprintf(cust, sizeof cust, "%s", sp + 1);
            if (!rv_provision_is_id(sub) || !rv_provision_is_id(cust)) continue;
            if (rv_entitlement_ask_stripe(r->app, sub, cust) == 0) r->st.doubts++;
        }
        if (r->st.doubts)
            rv_info("reconcile: asking Stripe again for %llu subscriptions left in doubt",
                    (unsigned long long)r->st.doubts);
    }
    r->st.ok = 1;
    run_end(r);
}

static void on_cursor_set(void *data, int err, const struct redisReply *reply) {
    rv_reconcile_t *r = data;
    if (answer_arrived(r)) return;
    if (err) {
        run_fail(r, "the cursor could not be stored: redis %s", rv_strerror(err));
        return;
    }
    char upto[24];
    snprintf(upto, sizeof upto, "(%lld", (long long)time(NULL) - DOUBT_AGE_S);
    const char *argv[] = {"ZRANGEBYSCORE", RV_DOUBTS_KEY, "-inf",        upto,
                          "LIMIT",         "0",           DOUBTS_PER_RUN};
    if (rv_queue_call(r->app->queue, 7, argv, on_doubts, r) != 0) {
        r->st.ok = 1;
        run_end(r);
        return;
    }
    r->inflight++;
}

static void finish_range(rv_reconcile_t *r) {
    char upto[24];
    snprintf(upto, sizeof upto, "%lld", (long long)r->st.upto);
    const char *argv[] = {"EVAL", cursor_script, "1", CURSOR_KEY, upto};
    if (rv_queue_call(r->app->queue, 5, argv, on_cursor_set, r) != 0) {
        run_fail(r, "Redis is unavailable");
        return;
    }
    r->inflight++;
}

/* ---- pages --------------------------------------------------------------------------------- */

static void page_done(rv_reconcile_t *r) {
    if (r->page_failed) {
        run_fail(r, "Redis did not take every event of page %llu", (unsigned long long)r->st.pages);
        return;
    }
    if (!r->has_more) {
        finish_range(r);
        return;
    }
    r->state = PAGING;
    schedule(r, PAGE_GAP_MS);
}

/* An event of a page on its way through the script. */
typedef struct applied_s {
    rv_reconcile_t *r;
    char sub_id[RV_PROVISION_ID_MAX + 1];
    char cust_id[RV_PROVISION_ID_MAX + 1];
} applied_t;

static void on_event_applied(void *data, int err, int result, const char *stream_id) {
    applied_t *a = data;
    rv_reconcile_t *r = a->r;
    if (answer_arrived(r)) {
        free(a);
        return;
    }
    /* As for a webhook: a subscription not known yet, or a state that ties with one a webhook
     * brought in the same second, is settled by asking Stripe. */
    if (!err && (result & RV_ENQ_ASK_STRIPE) && a->sub_id[0]) {
        int rc = rv_entitlement_ask_stripe(r->app, a->sub_id, a->cust_id);
        if (rc)
            rv_info("reconcile: Stripe not asked for %s now (%s); the next run asks again",
                    a->sub_id, rv_strerror(rc));
    }
    free(a);
    if (err) {
        r->page_failed = 1;
    } else {
        int code = result & RV_ENQ_MASK;
        if (code == RV_ENQ_DUPLICATE)
            r->st.duplicates++;
        else
            r->st.recovered++;
        const char *labels =
            code == RV_ENQ_DUPLICATE ? "outcome=\"duplicate\"" : "outcome=\"recovered\"";
        rv_metrics_count(RV_M_RECONCILE_EVENTS, labels, 1);
    }
    if (--r->applying == 0) page_done(r);
}

static void on_dead_applied(void *data, int err, int result, const char *stream_id) {
    rv_reconcile_t *r = data;
    if (answer_arrived(r)) return;
    if (err) r->page_failed = 1;
    if (--r->applying == 0) page_done(r);
}

/* Apply one event of a page the way a webhook would be. */
static void apply_event(rv_reconcile_t *r, const cJSON *event) {
    rv_app_t *app = r->app;
    char *text = cJSON_PrintUnformatted(event);
    if (text == NULL) {
        r->page_failed = 1;
        return;
    }
    rv_prices_t prices = {app->cfg.price_basic, app->cfg.price_pro, app->cfg.price_enterprise};
    rv_prov_event_t ev;
    int rc = rv_provision_map(text, strlen(text), &prices, &ev);
    r->st.events++;
    if (rc == RV_EIGNORED) {
        r->st.ignored++;
        rv_metrics_count(RV_M_RECONCILE_EVENTS, "outcome=\"ignored\"", 1);
    } else if (rc == RV_EPAYLOAD || rc == RV_EMALFORMED) {
        r->st.dead++;
        rv_metrics_count(RV_M_RECONCILE_EVENTS, "outcome=\"dead_letter\"", 1);
        rv_error("reconcile: %s %s dead-lettered: %s", ev.event_id[0] ? ev.event_id : "-",
                 ev.stripe_type[0] ? ev.stripe_type : "-", ev.reason);
        if (rv_queue_dead_letter(app->queue, ev.event_id, ev.stripe_type, ev.reason, text,
                                 strlen(text), on_dead_applied, r) == 0) {
            r->inflight++;
            r->applying++;
        } else {
            r->page_failed = 1;
        }
    } else if (rc == 0) {
        applied_t *a = malloc(sizeof *a);
        if (a) {
            a->r = r;
            snprintf(a->sub_id, sizeof a->sub_id, "%s", ev.subscription_id);
            snprintf(a->cust_id, sizeof a->cust_id, "%s", ev.customer_id);
        }
        if (a &&
            rv_queue_apply(app->queue, &ev, RV_APPLY_EVENT, "recovery", on_event_applied, a) == 0) {
            r->inflight++;
            r->applying++;
        } else {
            free(a);
            r->page_failed = 1;
        }
    } else {
        r->page_failed = 1;
    }
    rv_prov_event_free(&ev);
    free(text);
}

static void on_page(void *data, const rv_stripe_result_t *res) {
    rv_reconcile_t *r = data;
    r->call = NULL;
    if (answer_arrived(r)) return;
    if (res->err || res->status != 200) {
        run_fail(r, "listing events failed: %s, HTTP %d, %s",
                 res->err ? rv_strerror(res->err) : "answered", res->status,
                 res->err_message ? res->err_message : "-");
        return;
    }
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(res->json, "data");
    const cJSON *more = cJSON_GetObjectItemCaseSensitive(res->json, "has_more");
    if (!cJSON_IsArray(list)) {
        run_fail(r, "Stripe's list of events has no data array");
        return;
    }
    /* The page is checked whole before any of it is applied. Stripe lists events newest first,
     * at most the limit asked for, each with an id and a created, every page after the event
     * it was asked to start after: anything else is a list that cannot be trusted to end or to
     * be complete, and the run stops without moving the cursor. */
    const char *bad = NULL;
    int n = 0;
    int64_t prev = r->last_created;
    const char *prev_id = r->last_id;
    const cJSON *e;
    cJSON_ArrayForEach(e, list) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *created = cJSON_GetObjectItemCaseSensitive(e, "created");
        if (++n > PAGE_LIMIT) {
            bad = "has more events than the limit asked for";
        } else if (!cJSON_IsString(id) || !rv_provision_is_id(id->valuestring) ||
                   !cJSON_IsNumber(created) || !(created->valuedouble >= 0) ||
                   created->valuedouble > 9007199254740992.0 ||
                   created->valuedouble != (double)(int64_t)created->valuedouble) {
            bad = "has an element that is not an event with an id and a created";
        } else if (strcmp(id->valuestring, prev_id) == 0) {
            bad = "repeats an event (the one before it, or the one it was to start after)";
        } else if (created->valuedouble > (double)prev) {
            bad = "is not in the order of creation, newest first";
        } else {
            prev = (int64_t)created->valuedouble;
            prev_id = id->valuestring;
        }
        if (bad) break;
    }
    if (!bad && n == 0 && cJSON_IsTrue(more)) bad = "is empty but says there is more";
    if (!bad && r->st.pages >= MAX_PAGES) bad = "goes on past the most pages a run reads";
    if (bad) {
        run_fail(r, "Stripe's page of events %s", bad);
        return;
    }
    r->st.pages++;
    r->has_more = cJSON_IsTrue(more) && n > 0;
    r->page_failed = 0;
    r->applying = 1; /* held until every event of the page is started */
    r->state = APPLYING;
    cJSON_ArrayForEach(e, list) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        snprintf(r->last_id, sizeof r->last_id, "%s", id->valuestring);
        r->last_created = (int64_t)cJSON_GetObjectItemCaseSensitive(e, "created")->valuedouble;
        /* Only what was asked for: an event outside the range is not Stripe's answer to it. */
        if (r->last_created < r->st.from || r->last_created > r->st.upto) {
            rv_warn("reconcile: %s is outside the range asked for (created %lld); not applied",
                    id->valuestring, (long long)r->last_created);
            r->st.events++;
            r->st.ignored++;
            continue;
        }
        apply_event(r, e);
    }
    rv_info("reconcile: page %llu: %d events (%llu read, %llu recovered so far)",
            (unsigned long long)r->st.pages, n, (unsigned long long)r->st.events,
            (unsigned long long)r->st.recovered);
    if (--r->applying == 0) page_done(r);
}

static void on_renewed(void *data, int err, const struct redisReply *reply) {
    rv_reconcile_t *r = data;
    if (answer_arrived(r)) return;
    if (err || reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != 1) {
        run_fail(r, "the lock was lost");
        return;
    }
    /* The events of a page may each ask Stripe for a subscription, and those reads are paced
     * (STRIPE_READS_PER_SEC): the run waits for them rather than pile up more than HOLD_S
     * seconds of them, or more than HOLD_MAX. The lock is renewed meanwhile. */
    size_t waiting = rv_entitlement_reads_waiting(r->app);
    unsigned workers = r->app->cfg.workers ? r->app->cfg.workers : 1;
    size_t most = (size_t)r->app->cfg.stripe_reads_per_sec * HOLD_S / workers;
    if (most < HOLD_S) most = HOLD_S;
    if (most > HOLD_MAX) most = HOLD_MAX;
    if (waiting > most) {
        if (!r->holding)
            rv_info("reconcile: page %llu: waiting for %zu reads of Stripe before the next page",
                    (unsigned long long)r->st.pages, waiting);
        r->holding = 1;
        schedule(r, HOLD_MS);
        return;
    }
    r->holding = 0;
    char path[512];
    int n = snprintf(path, sizeof path,
                     "/v1/events?limit=%d&created%%5Bgte%%5D=%lld&created%%5Blte%%5D=%lld",
                     PAGE_LIMIT, (long long)r->st.from, (long long)r->st.upto);
    if (r->last_id[0])
        snprintf(path + n, sizeof path - (size_t)n, "&starting_after=%s", r->last_id);
    if (rv_stripe_get(r->app->stripe, path, on_page, r, &r->call) != 0) {
        run_fail(r, "cannot call Stripe");
        return;
    }
    r->inflight++;
}

/* Renew the lock, then ask for the next page. */
static void next_page(rv_reconcile_t *r) {
    r->state = PAGING;
    const char *argv[] = {"EVAL", renew_script, "1", LOCK_KEY, r->token, LOCK_TTL_MS};
    if (rv_queue_call(r->app->queue, 6, argv, on_renewed, r) != 0) {
        run_fail(r, "Redis is unavailable");
        return;
    }
    r->inflight++;
}

/* ---- the start of a run -------------------------------------------------------------------- */

static void on_cursor(void *data, int err, const struct redisReply *reply) {
    rv_reconcile_t *r = data;
    if (answer_arrived(r)) return;
    if (err) {
        run_fail(r, "the cursor could not be read: redis %s", rv_strerror(err));
        return;
    }
    int64_t now = (int64_t)time(NULL);
    int64_t from = now - FIRST_LOOKBACK_S;
    if (r->lookback_s) {
        from = now - (int64_t)r->lookback_s;
    } else if (reply && reply->type == REDIS_REPLY_STRING) {
        from = strtoll(reply->str, NULL, 10) - OVERLAP_S;
    }
    if (from < now - MAX_AGE_S) from = now - MAX_AGE_S;
    r->st.from = from;
    r->st.upto = now - SETTLE_S;
    r->last_id[0] = '\0';
    r->last_created = INT64_MAX;
    rv_info("reconcile: run: events created from %lld to %lld", (long long)r->st.from,
            (long long)r->st.upto);
    next_page(r);
}

static void on_locked(void *data, int err, const struct redisReply *reply) {
    rv_reconcile_t *r = data;
    if (answer_arrived(r)) return;
    if (err) {
        /* Perhaps taken all the same: released at the end, or taken again by the next run. */
        run_fail(r, "the lock could not be taken: redis %s", rv_strerror(err));
        return;
    }
    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER || reply->integer != 1) {
        /* Another worker or machine runs: wait for the next interval, or (one run) retry. */
        r->held = 0;
        if (!r->interval_ms && rv_now_ms() < r->wait_until) {
            r->state = IDLE;
            schedule(r, LOCK_RETRY_MS);
            return;
        }
        r->st.locked = 1;
        snprintf(r->st.error, sizeof r->st.error, "another reconciler holds the lock");
        rv_debug("reconcile: another reconciler is running");
        run_end(r);
        return;
    }
    r->state = CURSOR;
    const char *argv[] = {"GET", CURSOR_KEY};
    if (rv_queue_call(r->app->queue, 2, argv, on_cursor, r) != 0) {
        run_fail(r, "Redis is unavailable");
        return;
    }
    r->inflight++;
}

static void run_start(rv_reconcile_t *r) {
    memset(&r->st, 0, sizeof r->st);
    r->holding = 0;
    if (r->app->queue == NULL || !rv_queue_ready(r->app->queue) || r->app->stripe == NULL) {
        if (!r->interval_ms && rv_now_ms() < r->wait_until) {
            schedule(r, LOCK_RETRY_MS);
            return;
        }
        r->held = 0;
        snprintf(r->st.error, sizeof r->st.error, "Redis is not connected");
        r->inflight++;
        on_released(r, 0, NULL);
        return;
    }
    r->state = LOCKING;
    r->held = 1;
    const char *argv[] = {"EVAL", take_script, "1", LOCK_KEY, r->token, LOCK_TTL_MS};
    if (rv_queue_call(r->app->queue, 6, argv, on_locked, r) != 0) {
        r->held = 0;
        run_fail(r, "Redis is unavailable");
        return;
    }
    r->inflight++;
}

/* ---- entry points -------------------------------------------------------------------------- */

int rv_reconcile_start(rv_app_t *app, uint64_t interval_s, rv_reconcile_t **out) {
    *out = NULL;
    if (interval_s == 0) return 0;
    rv_reconcile_t *r = create(app);
    if (r == NULL) return RV_ENOMEM;
    r->interval_ms = interval_s * 1000;
    /* Soon after start, so that a restart recovers what was missed while it was down; with a
     * little jitter so that workers starting together do not all knock on the lock at once. */
    uint32_t j = 0;
    rv_random(&j, sizeof j);
    schedule(r, FIRST_RUN_MS + j % 1000);
    *out = r;
    return 0;
}

int rv_reconcile_once(rv_app_t *app, uint64_t lookback_s, uint64_t wait_ms,
                      rv_reconcile_done_cb done, void *data, rv_reconcile_t **out) {
    if (lookback_s == 0) return RV_EINVAL;
    rv_reconcile_t *r = create(app);
    if (r == NULL) return RV_ENOMEM;
    r->lookback_s = lookback_s > MAX_AGE_S ? MAX_AGE_S : lookback_s;
    r->wait_until = rv_now_ms() + wait_ms;
    r->done = done;
    r->done_data = data;
    schedule(r, 0);
    *out = r;
    return 0;
}

int rv_parse_duration(const char *s, uint64_t *seconds) {
    char *end;
    if (s == NULL || *s < '0' || *s > '9') return RV_EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    uint64_t unit = 1;
    if (*end == 's')
        unit = 1, end++;
    else if (*end == 'm')
        unit = 60, end++;
    else if (*end == 'h')
        unit = 3600, end++;
    else if (*end == 'd')
        unit = 86400, end++;
    if (*end != '\0' || v == 0 || v > UINT64_MAX / unit / 1000) return RV_EINVAL;
    *seconds = v * unit;
    return 0;
}
