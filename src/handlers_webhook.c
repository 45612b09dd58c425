/* POST /api/webhooks/stripe: verify the signature over the raw body, map the event, and answer
 * 200 only once Redis has durably taken it (or already had it); 503 otherwise, so that Stripe
 * delivers it again. A signed body that cannot be provisioned goes to the dead-letter stream
 * with the reason and is acknowledged the same way. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/entitlement.h"
#include "rivet/json.h"
#include "rivet/log.h"
#include "rivet/provision.h"
#include "rivet/webhook_sig.h"

typedef struct webhook_ctx_s {
    rv_request_t *req;
    char event_id[256];
    char event_type[128];
    char reason[128];
    char sub_id[256];
    char cust_id[256];
} webhook_ctx_t;

static void answer_ok(rv_request_t *req, const char *event_type) {
    rv_buf_t b = RV_BUF_INIT;
    if (rv_buf_puts(&b, "{\"status\":\"ok\",\"event_type\":") || rv_json_escape(&b, event_type) ||
        rv_buf_puts(&b, "}")) {
        rv_buf_free(&b);
        rv_respond_error(req, 500, "Internal error", NULL);
        return;
    }
    rv_respond_json(req, 200, b.data, b.len, NULL);
    rv_buf_free(&b);
}

static void unavailable(rv_request_t *req, const char *event_type) {
    rv_app_t *app = req->app;
    rv_app_webhook_outcome(app, event_type, "unavailable");
    rv_respond_error(req, 503, "Provisioning queue unavailable; retry later", "Retry-After: 5\r\n");
}

static void on_dead_lettered(void *data, int err, int result, const char *stream_id) {
    webhook_ctx_t *ctx = data;
    rv_request_t *req = ctx->req;
    rv_app_t *app = req->app;
    const char *id = ctx->event_id[0] ? ctx->event_id : "-";
    const char *type = ctx->event_type[0] ? ctx->event_type : "-";
    if (err) {
        rv_warn("webhook: %s %s not dead-lettered: redis %s", id, type, rv_strerror(err));
        unavailable(req, ctx->event_type);
    } else if (result == RV_ENQ_ADDED) {
        rv_app_webhook_outcome(app, ctx->event_type, "dead_letter");
        rv_error("webhook: %s %s dead-lettered as %s: %s", id, type, stream_id ? stream_id : "?",
                 ctx->reason);
        answer_ok(req, ctx->event_type);
    } else {
        rv_app_webhook_outcome(app, ctx->event_type, "duplicate");
        rv_info("webhook: %s %s duplicate, already dead-lettered or enqueued", id, type);
        answer_ok(req, ctx->event_type);
    }
    free(ctx);
}

/* Keep a signed body that cannot be provisioned, with the reason; answer once Redis has it. */
static void dead_letter(rv_request_t *req, const rv_prov_event_t *ev) {
    rv_app_t *app = req->app;
    webhook_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        unavailable(req, ev->stripe_type);
        return;
    }
    ctx->req = req;
    memcpy(ctx->event_id, ev->event_id, sizeof ctx->event_id);
    memcpy(ctx->event_type, ev->stripe_type, sizeof ctx->event_type);
    memcpy(ctx->reason, ev->reason, sizeof ctx->reason);
    int rc = app->queue
                 ? rv_queue_dead_letter(app->queue, ev->event_id, ev->stripe_type, ev->reason,
                                        req->body, req->body_len, on_dead_lettered, ctx)
                 : RV_EUNAVAIL;
    if (rc != 0) {
        rv_warn("webhook: %s %s not dead-lettered (%s): redis %s",
                ev->event_id[0] ? ev->event_id : "-", ev->stripe_type[0] ? ev->stripe_type : "-",
                ev->reason, rv_strerror(rc));
        unavailable(req, ev->stripe_type);
        free(ctx);
    }
}

/* While Redis is away every delivery would say so: one line a second names an event, the
 * count of the others comes with the next (each is counted in rivet_webhook_events_total too). */
static rv_log_limit_t not_stored = {.what = "webhook: events not stored"};

static void on_enqueued(void *data, int err, int result, const char *stream_id) {
    webhook_ctx_t *ctx = data;
    rv_request_t *req = ctx->req;
    rv_app_t *app = req->app;
    if (err) {
        rv_warn_limited(&not_stored, "webhook: %s %s not stored: redis %s", ctx->event_id,
                        ctx->event_type, rv_strerror(err));
        unavailable(req, ctx->event_type);
    } else {
        int code = result & RV_ENQ_MASK;
        if (code == RV_ENQ_ADDED) {
            rv_app_webhook_outcome(app, ctx->event_type, "enqueued");
            rv_info("webhook: %s %s enqueued as %s", ctx->event_id, ctx->event_type,
                    stream_id ? stream_id : "?");
        } else if (code == RV_ENQ_DUPLICATE) {
            rv_app_webhook_outcome(app, ctx->event_type, "duplicate");
            rv_info("webhook: %s %s duplicate, already enqueued", ctx->event_id, ctx->event_type);
        } else {
            rv_app_webhook_outcome(app, ctx->event_type, "recorded");
            rv_info("webhook: %s %s applied; no entry (its session was provisioned already, or "
                    "it is not paid yet)",
                    ctx->event_id, ctx->event_type);
        }
        answer_ok(req, ctx->event_type);
        /* The answer is out: Stripe never waits on Stripe. */
        if ((result & RV_ENQ_ASK_STRIPE) && ctx->sub_id[0]) {
            int rc = rv_entitlement_ask_stripe(app, ctx->sub_id, ctx->cust_id);
            if (rc)
                rv_info("webhook: %s: Stripe not asked for %s now (%s); recovery asks again",
                        ctx->event_id, ctx->sub_id, rv_strerror(rc));
        }
    }
    free(ctx);
}

void rv_handle_webhook(rv_request_t *req) {
    rv_app_t *app = req->app;
    const rv_config_t *cfg = &app->cfg;
    size_t hlen;
    const char *sig = rv_request_header(req, "stripe-signature", &hlen);
    if (sig == NULL || rv_request_header_count(req, "stripe-signature") != 1 ||
        rv_webhook_verify(sig, hlen, req->body, req->body_len,
                          (const char *const *)cfg->webhook_secrets.v, cfg->webhook_secrets.n,
                          (int64_t)time(NULL), cfg->webhook_tolerance) != 0) {
        rv_app_webhook_outcome(app, "unknown", "rejected");
        rv_info("webhook: rejected: invalid signature (peer %s)", req->peer);
        rv_respond_error(req, 400, "Invalid signature", NULL);
        return;
    }

    rv_prices_t prices = {cfg->price_basic, cfg->price_pro, cfg->price_enterprise};
    rv_prov_event_t ev;
    memset(&ev, 0, sizeof ev);
    int rc = rv_provision_map(req->body, req->body_len, &prices, &ev);
    /* The signature says Stripe sent exactly these bytes, so a delivery again brings the same
     * bytes: a 4xx would only have Stripe retry for days and then flag the endpoint, and the
     * event would be lost with the retries. Content that cannot be provisioned, and a signed body
     * that is not a Stripe event at all, are kept in the dead-letter stream with the reason and
     * acknowledged, and never reach the main stream, where one bad entry could stall a consumer
     * group. An unsigned body was refused above and is never stored. */
    if (rc == RV_EPAYLOAD || rc == RV_EMALFORMED) {
        dead_letter(req, &ev);
        rv_prov_event_free(&ev);
        return;
    }
    if (rc == RV_EIGNORED) {
        rv_app_webhook_outcome(app, ev.stripe_type, "ignored");
        rv_info("webhook: %s %s acknowledged, nothing to provision", ev.event_id, ev.stripe_type);
        answer_ok(req, ev.stripe_type);
        rv_prov_event_free(&ev);
        return;
    }
    if (rc != 0) {
        rv_prov_event_free(&ev);
        rv_respond_error(req, 500, "Internal error", NULL);
        return;
    }

    webhook_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        unavailable(req, ev.stripe_type);
        rv_prov_event_free(&ev);
        return;
    }
    ctx->req = req;
    memcpy(ctx->event_id, ev.event_id, sizeof ctx->event_id);
    memcpy(ctx->event_type, ev.stripe_type, sizeof ctx->event_type);
    memcpy(ctx->sub_id, ev.subscription_id, sizeof ctx->sub_id);
    memcpy(ctx->cust_id, ev.customer_id, sizeof ctx->cust_id);
    rc = app->queue ? rv_queue_enqueue(app->queue, &ev, on_enqueued, ctx) : RV_EUNAVAIL;
    rv_prov_event_free(&ev);
    if (rc != 0) {
        rv_warn_limited(&not_stored, "webhook: %s %s not stored: redis %s", ctx->event_id,
                        ctx->event_type, rv_strerror(rc));
        unavailable(req, ctx->event_type);
        free(ctx);
    }
    /* Otherwise on_enqueued answers; if the client goes meanwhile the answer is dropped, but the
     * event is stored all the same. */
}
