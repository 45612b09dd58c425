/* Reads of Stripe's state that keep entitlements right: a subscription whose state an event left
 * in doubt (unknown to rivetd, or two states in the same second), and a Checkout Session the
 * success page found paid. Both go through the same mapping and the same Redis script as
 * webhooks. Reads in flight are kept in a list owned by the app, so that a stopping worker can
 * cancel them and free what they hold (a cancelled Stripe call never calls back). */
#include "rivet/entitlement.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/provision.h"

/* Far more than doubt ever produces at once; past it, the next event asks again. */
#define MAX_READS 1024

typedef struct read_s {
    struct read_s *prev, *next;
    rv_app_t *app;
    rv_stripe_call_t *call;
    char sub_id[RV_PROVISION_ID_MAX + 1];
} read_t;

static void read_free(read_t *r) {
    rv_app_t *app = r->app;
    if (r->prev) r->prev->next = r->next;
    else app->reads = r->next;
    if (r->next) r->next->prev = r->prev;
    app->nreads--;
    free(r);
}

static rv_prices_t prices_of(const rv_app_t *app) {
    rv_prices_t p = {app->cfg.price_basic, app->cfg.price_pro, app->cfg.price_enterprise};
    return p;
}

static void on_state_applied(void *data, int err, int result, const char *stream_id) {
    char *sub_id = data;
    if (err) {
        rv_warn("entitlement: %s: Stripe's state not stored: redis %s", sub_id, rv_strerror(err));
    } else if ((result & RV_ENQ_MASK) == RV_ENQ_ADDED) {
        rv_info("entitlement: %s: Stripe's state changed the entitlement (entry %s)", sub_id,
                stream_id);
    } else {
        rv_debug("entitlement: %s: Stripe's state confirms the entitlement", sub_id);
    }
    free(sub_id);
}

/* Apply a Stripe object read now, in mode, from source. */
static int apply_object(rv_app_t *app, const cJSON *obj, const char *as_type, int mode,
                        const char *source, rv_enqueue_cb cb, void *data, char *reason,
                        size_t reason_len) {
    char *text = cJSON_PrintUnformatted(obj);
    if (text == NULL) return RV_ENOMEM;
    rv_prices_t prices = prices_of(app);
    rv_prov_event_t ev;
    int rc = rv_provision_map_object(text, strlen(text), as_type, (int64_t)time(NULL), &prices,
                                     &ev);
    free(text);
    if (rc == 0) {
        rc = app->queue ? rv_queue_apply(app->queue, &ev, mode, source, cb, data) : RV_EUNAVAIL;
    } else if (reason) {
        snprintf(reason, reason_len, "%s", ev.reason[0] ? ev.reason : rv_strerror(rc));
    }
    rv_prov_event_free(&ev);
    return rc;
}

static void on_subscription(void *data, const rv_stripe_result_t *res) {
    read_t *r = data;
    rv_app_t *app = r->app;
    static rv_log_limit_t lim = {.what = "entitlement: reads of Stripe failed"};
    if (res->err || res->status != 200 || !cJSON_IsObject(res->json)) {
        rv_warn_limited(&lim, "entitlement: %s: cannot read it from Stripe: %s, HTTP %d", r->sub_id,
                        res->err ? rv_strerror(res->err) : "answered", res->status);
        read_free(r);
        return;
    }
    char *sub_id = strdup(r->sub_id);
    char reason[128] = "";
    int rc = sub_id ? apply_object(app, res->json, "customer.subscription.updated",
                                   RV_APPLY_STATE, "stripe", on_state_applied, sub_id, reason,
                                   sizeof reason)
                    : RV_ENOMEM;
    if (rc) {
        rv_warn("entitlement: %s: Stripe's state cannot be applied: %s", r->sub_id,
                reason[0] ? reason : rv_strerror(rc));
        free(sub_id);
    }
    read_free(r);
}

int rv_entitlement_ask_stripe(rv_app_t *app, const char *sub_id) {
    if (!rv_provision_is_id(sub_id)) return RV_EINVAL;
    if (app->stripe == NULL || app->queue == NULL || app->stopping) return RV_EUNAVAIL;
    for (read_t *r = app->reads; r; r = r->next)
        if (strcmp(r->sub_id, sub_id) == 0) return 0; /* its answer will do for both */
    if (app->nreads >= MAX_READS) return RV_EUNAVAIL;
    read_t *r = calloc(1, sizeof *r);
    if (r == NULL) return RV_ENOMEM;
    r->app = app;
    snprintf(r->sub_id, sizeof r->sub_id, "%s", sub_id);
    char path[64 + RV_PROVISION_ID_MAX];
    snprintf(path, sizeof path, "/v1/subscriptions/%s", sub_id);
    int rc = rv_stripe_get(app->stripe, path, on_subscription, r, &r->call);
    if (rc) {
        free(r);
        return rc;
    }
    r->next = app->reads;
    if (app->reads) app->reads->prev = r;
    app->reads = r;
    app->nreads++;
    return 0;
}

typedef struct fulfill_s {
    void (*done)(void *data, int err, int result);
    void *data;
    char session_id[RV_PROVISION_ID_MAX + 1];
    char sub_id[RV_PROVISION_ID_MAX + 1];
    rv_app_t *app;
} fulfill_t;

static void on_fulfilled(void *data, int err, int result, const char *stream_id) {
    fulfill_t *f = data;
    if (err) {
        rv_warn("entitlement: %s not provisioned from the success page: redis %s", f->session_id,
                rv_strerror(err));
    } else if ((result & RV_ENQ_MASK) == RV_ENQ_ADDED) {
        rv_info("entitlement: %s provisioned from the success page (entry %s)", f->session_id,
                stream_id);
    }
    if (!err && (result & RV_ENQ_ASK_STRIPE) && f->sub_id[0])
        rv_entitlement_ask_stripe(f->app, f->sub_id);
    if (f->done) f->done(f->data, err, err ? 0 : result & RV_ENQ_MASK);
    free(f);
}

int rv_entitlement_fulfill(rv_app_t *app, const cJSON *session,
                           void (*done)(void *data, int err, int result), void *data) {
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(session, "status");
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(session, "mode");
    if (!cJSON_IsString(st) || strcmp(st->valuestring, "complete") != 0 || !cJSON_IsString(mode) ||
        strcmp(mode->valuestring, "subscription") != 0)
        return RV_EIGNORED;
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
    char reason[128] = "";
    int rc = apply_object(app, session, "checkout.session.completed", RV_APPLY_FULFILL,
                          "success_page", on_fulfilled, f, reason, sizeof reason);
    if (rc) {
        if (rc != RV_EUNAVAIL)
            rv_warn("entitlement: %s: the session cannot be provisioned: %s", f->session_id,
                    reason[0] ? reason : rv_strerror(rc));
        free(f);
    }
    return rc;
}

void rv_entitlement_close(rv_app_t *app) {
    while (app->reads) {
        read_t *r = app->reads;
        if (r->call) rv_stripe_cancel(r->call);
        read_free(r);
    }
}
