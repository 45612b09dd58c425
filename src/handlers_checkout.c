/* Checkout, success page, billing portal and CORS preflight: the routes that call Stripe.
 *
 * Each call runs on the loop through the stripe module. The handler keeps a small context with
 * the request and the call; if the client disconnects first, the call is cancelled and the
 * request released at once, so no later callback can touch it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/entitlement.h"
#include "rivet/handlers.h"
#include "rivet/json.h"
#include "rivet/log.h"
#include "rivet/metrics.h"
#include "rivet/provision.h"
#include "rivet/ratelimit.h"
#include "rivet/validate.h"

enum call_kind { CALL_CREATE, CALL_SUCCESS, CALL_PORTAL_LOOKUP, CALL_PORTAL_CREATE };

typedef struct call_ctx_s {
    rv_request_t *req;
    rv_stripe_call_t *call;
    int kind;
    uint64_t t0_ns;
    char session_id[256];
} call_ctx_t;

static const char *const op_names[] = {"checkout.sessions.create", "checkout.sessions.retrieve",
                                       "checkout.sessions.retrieve",
                                       "billing_portal.sessions.create"};

/* ---- shared pieces ------------------------------------------------------------------------ */

static void on_gone(rv_request_t *req, void *data) {
    call_ctx_t *ctx = data;
    char labels[96];
    snprintf(labels, sizeof labels, "operation=\"%s\",outcome=\"cancelled\"", op_names[ctx->kind]);
    rv_metrics_count(RV_M_STRIPE_CALLS, labels, 1);
    if (ctx->call) rv_stripe_cancel(ctx->call);
    rv_respond_error(req, 499, "Client closed request", NULL);
    free(ctx);
}

static call_ctx_t *ctx_new(rv_request_t *req, int kind) {
    call_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) return NULL;
    ctx->req = req;
    ctx->kind = kind;
    ctx->t0_ns = uv_hrtime();
    rv_request_on_gone(req, on_gone, ctx);
    return ctx;
}

/* The call has finished (its callback runs, res != NULL) or never started (res == NULL): the
 * context and request part ways; a finished call is counted. */
static rv_request_t *ctx_end(call_ctx_t *ctx, const rv_stripe_result_t *res) {
    rv_request_t *req = ctx->req;
    if (res) {
        const char *outcome = res->err == RV_ETIMEDOUT                   ? "timeout"
                              : res->err                                 ? "unreachable"
                              : res->status >= 200 && res->status < 300  ? "ok"
                              : res->status >= 500 || res->status == 429 ? "stripe_error"
                                                                         : "rejected";
        char labels[96];
        snprintf(labels, sizeof labels, "operation=\"%s\",outcome=\"%s\"", op_names[ctx->kind],
                 outcome);
        rv_metrics_count(RV_M_STRIPE_CALLS, labels, 1);
        snprintf(labels, sizeof labels, "operation=\"%s\"", op_names[ctx->kind]);
        if (res->attempts > 1) rv_metrics_count(RV_M_STRIPE_RETRIES, labels, res->attempts - 1);
        rv_metrics_observe(RV_H_STRIPE_DURATION, labels, (double)(uv_hrtime() - ctx->t0_ns) / 1e9);
    }
    rv_request_on_gone(req, NULL, NULL);
    free(ctx);
    return req;
}

/* Stripe could not do it: 502 (504 when the deadline passed), with Stripe's request id for
 * support, never Stripe's message or anything about keys. */
/* Stripe's Request-Id ("req_" and letters and digits) is passed on to the caller, for support;
 * anything else in that header is not. */
static int stripe_request_id_ok(const char *id) {
    if (id == NULL || strncmp(id, "req_", 4) != 0) return 0;
    size_t n = strlen(id);
    return n <= 64 && strspn(id + 4, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                     "0123456789") == n - 4;
}

/* A page Stripe hosts, which a customer's browser is sent to: https and nothing odd. */
static int stripe_url_ok(const char *url) {
    if (url == NULL || strncmp(url, "https://", 8) != 0) return 0;
    size_t n = strlen(url);
    if (n > 2048) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f || url[i] == '"' ||
            url[i] == '\\' || url[i] == '<' || url[i] == '>')
            return 0;
    return 1;
}

static void stripe_failed(rv_request_t *req, const rv_stripe_result_t *res, const char *op) {
    /* One line per failed call of an anonymous client: bounded while Stripe is down. */
    static rv_log_limit_t lim = {.what = "stripe: calls failed"};
    int status = res->err == RV_ETIMEDOUT ? 504 : 502;
    rv_warn_limited(&lim,
                    "stripe: %s failed: %s, HTTP %d, type=%s code=%s param=%s request_id=%s "
                    "attempts=%u message=%s",
                    op, res->err ? rv_strerror(res->err) : "answered", res->status,
                    res->err_type ? res->err_type : "-", res->err_code ? res->err_code : "-",
                    res->err_param ? res->err_param : "-", res->request_id ? res->request_id : "-",
                    res->attempts, res->err_message ? res->err_message : "-");
    rv_buf_t b = RV_BUF_INIT;
    int rc = rv_buf_puts(&b, status == 504 ? "{\"detail\":\"Payment service timeout\""
                                           : "{\"detail\":\"Payment service error\"");
    if (rc == 0) rc = rv_buf_puts(&b, ",\"request_id\":");
    if (rc == 0)
        rc = stripe_request_id_ok(res->request_id) ? rv_json_escape(&b, res->request_id)
                                                   : rv_buf_puts(&b, "null");
    if (rc == 0) rc = rv_buf_puts(&b, "}");
    rv_respond_buf(req, status, &b, rc);
}

static int answered_ok(const rv_stripe_result_t *res) {
    return res->err == 0 && res->status >= 200 && res->status < 300 && cJSON_IsObject(res->json);
}

static const char *jstr(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A customer is an id, or an expanded object with one. */
static const char *jcustomer(const cJSON *obj) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(obj, "customer");
    if (cJSON_IsString(c)) return c->valuestring;
    if (cJSON_IsObject(c)) return jstr(c, "id");
    return NULL;
}

/* ---- POST /api/checkout/create ------------------------------------------------------------ */

static void on_created(void *data, const rv_stripe_result_t *res) {
    rv_request_t *req = ctx_end(data, res);
    if (!answered_ok(res)) {
        if (res->err == 0 && res->err_type && strcmp(res->err_type, "idempotency_error") == 0) {
            /* The caller reused its Idempotency-Key for another checkout: its mistake. */
            rv_respond_error(req, 409, "Idempotency-Key was already used with other parameters",
                             NULL);
            return;
        }
        if (res->err == 0 && res->status == 400 && res->err_param &&
            strncmp(res->err_param, "line_items", 10) == 0) {
            /* Stripe does not know the configured price of this tier. */
            rv_warn("stripe: checkout: price rejected by Stripe (param %s, request_id %s): check "
                    "STRIPE_PRICE_*",
                    res->err_param, res->request_id ? res->request_id : "-");
            rv_verrs_t v = {0};
            rv_verr(&v, "body", "tier", "No purchasable price is configured for this tier",
                    "value_error");
            rv_respond_verrs(req, &v);
            return;
        }
        stripe_failed(req, res, "checkout.sessions.create");
        return;
    }
    const char *url = jstr(res->json, "url");
    const char *id = jstr(res->json, "id");
    if (!stripe_url_ok(url) || id == NULL || !rv_valid_session_id(id)) {
        rv_warn("stripe: checkout: answer without an https url or a session id (request_id %s)",
                stripe_request_id_ok(res->request_id) ? res->request_id : "-");
        rv_respond_error(req, 502, "Payment service error", NULL);
        return;
    }
    rv_buf_t b = RV_BUF_INIT;
    int rc = rv_buf_puts(&b, "{\"checkout_url\":");
    if (rc == 0) rc = rv_json_escape(&b, url);
    if (rc == 0) rc = rv_buf_puts(&b, ",\"session_id\":");
    if (rc == 0) rc = rv_json_escape(&b, id);
    if (rc == 0) rc = rv_buf_puts(&b, "}");
    rv_respond_buf(req, 200, &b, rc);
}

/* A caller's Idempotency-Key is passed on to Stripe when it is plain and bounded. */
static int idem_key(rv_request_t *req, char *out, size_t outlen, rv_verrs_t *v) {
    size_t n;
    const char *k = rv_request_header(req, "idempotency-key", &n);
    out[0] = '\0';
    if (k == NULL) return 0;
    int ok = n >= 1 && n <= 255 && n < outlen;
    for (size_t i = 0; ok && i < n; i++) ok = k[i] > 0x20 && k[i] < 0x7f;
    if (!ok) {
        rv_verr(v, "header", "Idempotency-Key", "Must be 1-255 printable characters",
                "value_error");
        return -1;
    }
    memcpy(out, k, n);
    out[n] = '\0';
    return 0;
}

void rv_handle_checkout_create(rv_request_t *req) {
    rv_app_t *app = req->app;
    const rv_config_t *cfg = &app->cfg;
    if (rv_rate_limited(req)) return;
    cJSON *j = rv_body_object(req, 0);
    if (j == NULL) return;

    rv_verrs_t v = {0};
    const cJSON *email_j = cJSON_GetObjectItemCaseSensitive(j, "email");
    const cJSON *tier_j = cJSON_GetObjectItemCaseSensitive(j, "tier");
    const char *email = NULL, *tier = NULL;
    if (email_j == NULL) {
        rv_verr(&v, "body", "email", "Field required", "missing");
    } else if (!cJSON_IsString(email_j)) {
        rv_verr(&v, "body", "email", "Input should be a valid string", "string_type");
    } else if (!rv_valid_email(email_j->valuestring)) {
        rv_verr(&v, "body", "email", "value is not a valid email address", "value_error");
    } else {
        email = email_j->valuestring;
    }
    if (tier_j == NULL) {
        rv_verr(&v, "body", "tier", "Field required", "missing");
    } else if (!cJSON_IsString(tier_j) ||
               rv_config_price_of_tier(cfg, tier_j->valuestring) == NULL) {
        rv_verr(&v, "body", "tier", "Input should be 'basic', 'pro' or 'enterprise'", "enum");
    } else {
        tier = tier_j->valuestring;
    }
    const char *success = rv_opt_string(j, "success_url", &v);
    const char *cancel = rv_opt_string(j, "cancel_url", &v);
    if (success && !rv_valid_redirect(success, &cfg->redirect_origins))
        rv_verr(&v, "body", "success_url", "URL must be on an allowed origin", "value_error");
    if (cancel && !rv_valid_redirect(cancel, &cfg->redirect_origins))
        rv_verr(&v, "body", "cancel_url", "URL must be on an allowed origin", "value_error");
    char key[256];
    idem_key(req, key, sizeof key, &v);
    if (v.n) {
        cJSON_Delete(j);
        rv_respond_verrs(req, &v);
        return;
    }

    /* APP_URL may be up to 4096 bytes: the defaults are built to size, never cut short. */
    rv_buf_t def_success = RV_BUF_INIT, def_cancel = RV_BUF_INIT;
    if (rv_buf_printf(&def_success, "%s/success?session_id={CHECKOUT_SESSION_ID}", cfg->app_url) ||
        rv_buf_printf(&def_cancel, "%s/pricing", cfg->app_url)) {
        rv_buf_free(&def_success);
        rv_buf_free(&def_cancel);
        cJSON_Delete(j);
        rv_respond_error(req, 500, "Internal error", NULL);
        return;
    }
    const rv_form_kv_t params[] = {
        {"mode", "subscription"},
        {"payment_method_types[0]", "card"},
        {"line_items[0][price]", rv_config_price_of_tier(cfg, tier)},
        {"line_items[0][quantity]", "1"},
        {"customer_email", email},
        {"success_url", success ? success : def_success.data},
        {"cancel_url", cancel ? cancel : def_cancel.data},
        {"metadata[tier]", tier},
        {"metadata[source]", "rivet_landing"},
        {"subscription_data[metadata][tier]", tier},
        {"allow_promotion_codes", "true"},
    };
    call_ctx_t *ctx = ctx_new(req, CALL_CREATE);
    int rc =
        ctx ? rv_stripe_post(app->stripe, "/v1/checkout/sessions", params, RV_ARRAY_LEN(params),
                             key[0] ? key : NULL, on_created, ctx, &ctx->call)
            : RV_ENOMEM;
    /* The parameters were copied into the request. */
    rv_buf_free(&def_success);
    rv_buf_free(&def_cancel);
    cJSON_Delete(j);
    if (rc) {
        if (ctx) ctx_end(ctx, NULL);
        rv_warn("stripe: checkout: cannot start the call: %s", rv_strerror(rc));
        rv_respond_error(req, 502, "Payment service error", NULL);
    }
}

/* ---- GET /api/checkout/success ------------------------------------------------------------ */

static const char *session_tier(const cJSON *s) {
    const cJSON *md = cJSON_GetObjectItemCaseSensitive(s, "metadata");
    const char *t = rv_provision_tier(md ? jstr(md, "tier") : NULL);
    return t ? t : "unknown";
}

static const char *session_email(const cJSON *s) {
    const char *e = jstr(s, "customer_email");
    if (e) return e;
    const cJSON *cd = cJSON_GetObjectItemCaseSensitive(s, "customer_details");
    return cd ? jstr(cd, "email") : NULL;
}

/* What the success page says, gathered from the session while Stripe's answer is at hand. */
typedef struct success_s {
    rv_request_t *req;
    const char *status; /* "success", "pending", "expired" (static) */
    char email[330];    /* "" when none */
    char tier[16];
    char session_status[24], payment_status[32]; /* "" when none */
} success_t;

/* A session id is a bearer of personal data (a success URL ends up in histories, Referers and
 * logs): it serves only within CHECKOUT_LINK_MAX_AGE of the checkout. */
static int session_too_old(rv_request_t *req, const cJSON *session) {
    rv_app_t *app = req->app;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(session, "created");
    if (!cJSON_IsNumber(c)) return 0;
    if ((double)time(NULL) - c->valuedouble <= (double)app->cfg.checkout_link_max_age) return 0;
    rv_respond_error(req, 410,
                     "This checkout link has expired; open the Rivet bot in Telegram to manage "
                     "your plan",
                     NULL);
    return 1;
}

/* Answer the success page; telegram is the deep link into the bot, "linked", or NULL (none). */
static void success_answer(success_t *s, const char *telegram) {
    rv_request_t *req = s->req;
    rv_app_t *app = req->app;
    int linked = telegram && strcmp(telegram, "linked") == 0;
    char bot_url[96], step2[160];
    snprintf(bot_url, sizeof bot_url, "https://t.me/%s", app->cfg.telegram_bot);
    const char *link = telegram && !linked && telegram[0] ? telegram : bot_url;
    if (linked)
        snprintf(step2, sizeof step2, "Your Telegram chat is linked: open @%s to start",
                 app->cfg.telegram_bot);
    else
        snprintf(step2, sizeof step2, "Open Telegram with the link and press Start in @%s",
                 app->cfg.telegram_bot);
    const char *steps_ok[] = {"Check your email for your receipt", step2,
                              "Tell the bot about your first asset or work order by voice"};
    const char *steps_open[] = {"Finish the payment on the checkout page"};
    const char *steps_expired[] = {"The checkout expired: start a new one from the pricing page"};
    const char **steps = steps_ok;
    size_t nsteps = 3;
    if (!strcmp(s->status, "pending")) {
        steps = steps_open;
        nsteps = 1;
    }
    if (!strcmp(s->status, "expired")) {
        steps = steps_expired;
        nsteps = 1;
    }

    rv_buf_t b = RV_BUF_INIT;
    int rc = rv_buf_puts(&b, "{\"status\":");
    if (rc == 0) rc = rv_json_escape(&b, s->status);
    if (rc == 0) rc = rv_buf_puts(&b, ",\"email\":");
    if (rc == 0) rc = s->email[0] ? rv_json_escape(&b, s->email) : rv_buf_puts(&b, "null");
    if (rc == 0) rc = rv_buf_puts(&b, ",\"tier\":");
    if (rc == 0) rc = rv_json_escape(&b, s->tier);
    if (rc == 0) rc = rv_buf_puts(&b, ",\"telegram_link\":");
    if (rc == 0) rc = rv_json_escape(&b, link);
    if (rc == 0) rc = rv_buf_printf(&b, ",\"telegram_linked\":%s", linked ? "true" : "false");
    if (rc == 0) rc = rv_buf_puts(&b, ",\"next_steps\":[");
    for (size_t i = 0; rc == 0 && i < nsteps; i++) {
        if (i) rc = rv_buf_puts(&b, ",");
        if (rc == 0) rc = rv_json_escape(&b, steps[i]);
    }
    if (rc == 0) rc = rv_buf_puts(&b, "],\"session_status\":");
    if (rc == 0)
        rc = s->session_status[0] ? rv_json_escape(&b, s->session_status) : rv_buf_puts(&b, "null");
    if (rc == 0) rc = rv_buf_puts(&b, ",\"payment_status\":");
    if (rc == 0)
        rc = s->payment_status[0] ? rv_json_escape(&b, s->payment_status) : rv_buf_puts(&b, "null");
    if (rc == 0) rc = rv_buf_puts(&b, "}");
    rv_respond_buf(req, 200, &b, rc);
    free(s);
}

static void on_fulfilled(void *data, int err, int result, const char *telegram) {
    success_t *s = data;
    if (err) rv_warn("checkout: success page: provisioning not confirmed: %s", rv_strerror(err));
    success_answer(s, err ? NULL : telegram);
}

/* 1 when Stripe's answer is the session asked for, with a created; else answer 502. A broken
 * or hostile answer about another session would show and provision someone else's checkout, and
 * one without a created would escape CHECKOUT_LINK_MAX_AGE. */
static int session_is(rv_request_t *req, const cJSON *session, const char *asked) {
    const char *id = jstr(session, "id");
    if (id && strcmp(id, asked) == 0 &&
        cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(session, "created")))
        return 1;
    static rv_log_limit_t lim = {.what = "checkout: Stripe's answers about other sessions"};
    rv_warn_limited(&lim, "checkout: Stripe's answer about %s is not that session with a created",
                    asked);
    rv_respond_error(req, 502, "Payment service error", NULL);
    return 0;
}

static void on_session(void *data, const rv_stripe_result_t *res) {
    call_ctx_t *ctx = data;
    char sid[sizeof ctx->session_id];
    memcpy(sid, ctx->session_id, sizeof sid);
    rv_request_t *req = ctx_end(ctx, res);
    rv_app_t *app = req->app;
    if (res->err == 0 && res->status == 404) {
        rv_respond_error(req, 404, "Checkout session not found", NULL);
        return;
    }
    if (!answered_ok(res)) {
        stripe_failed(req, res, "checkout.sessions.retrieve");
        return;
    }
    if (!session_is(req, res->json, sid) || session_too_old(req, res->json)) return;
    success_t *s = calloc(1, sizeof *s);
    if (s == NULL) {
        rv_respond_error(req, 500, "Internal error", NULL);
        return;
    }
    s->req = req;
    const char *st = jstr(res->json, "status");
    const char *pay = jstr(res->json, "payment_status");
    const char *email = session_email(res->json);
    /* "success" only for a completed checkout; an open or expired one says so. */
    s->status = "pending";
    if (st && strcmp(st, "complete") == 0)
        s->status = "success";
    else if (st && strcmp(st, "expired") == 0)
        s->status = "expired";
    snprintf(s->email, sizeof s->email, "%s",
             email && strlen(email) < sizeof s->email ? email : "");
    snprintf(s->tier, sizeof s->tier, "%s", session_tier(res->json));
    snprintf(s->session_status, sizeof s->session_status, "%s", st && strlen(st) < 24 ? st : "");
    snprintf(s->payment_status, sizeof s->payment_status, "%s", pay && strlen(pay) < 32 ? pay : "");
    /* Stripe's fulfillment guide: the success page may see the payment before any webhook, so it
     * provisions the session too (once per session, whichever path comes first), and answers
     * the customer's deep link into the bot. */
    int rc = rv_entitlement_fulfill(app, res->json, on_fulfilled, s);
    if (rc == 0) return;
    if (rc != RV_EIGNORED && rc != RV_EUNAVAIL)
        rv_warn("checkout: success page: cannot provision: %s", rv_strerror(rc));
    success_answer(s, NULL);
}

static void retrieve_session(rv_request_t *req, const char *id, int kind, rv_stripe_cb cb) {
    rv_app_t *app = req->app;
    rv_buf_t path = RV_BUF_INIT;
    int rc = rv_buf_puts(&path, "/v1/checkout/sessions/");
    if (rc == 0) rc = rv_url_escape(id, &path);
    call_ctx_t *ctx = rc == 0 ? ctx_new(req, kind) : NULL;
    if (ctx) {
        snprintf(ctx->session_id, sizeof ctx->session_id, "%s", id);
        rc = rv_stripe_get(app->stripe, path.data, cb, ctx, &ctx->call);
    } else {
        rc = RV_ENOMEM;
    }
    rv_buf_free(&path);
    if (rc) {
        if (ctx) ctx_end(ctx, NULL);
        rv_warn("stripe: cannot start the call: %s", rv_strerror(rc));
        rv_respond_error(req, 502, "Payment service error", NULL);
    }
}

void rv_handle_checkout_success(rv_request_t *req) {
    /* Anyone may ask, and every question is a read of Stripe with the secret key: limited per
     * address like checkouts, so that no client can spend the account's Stripe allowance. */
    if (rv_rate_limited(req)) return;
    char id[300];
    rv_verrs_t v = {0};
    int rc = rv_request_query(req, "session_id", id, sizeof id);
    if (rc == RV_ENOTFOUND) {
        rv_verr(&v, "query", "session_id", "Field required", "missing");
    } else if (rc || !rv_valid_session_id(id)) {
        rv_verr(&v, "query", "session_id", "Must be a Checkout Session id (cs_...)", "value_error");
    }
    if (v.n) {
        rv_respond_verrs(req, &v);
        return;
    }
    retrieve_session(req, id, CALL_SUCCESS, on_session);
}

/* ---- POST /api/billing/portal --------------------------------------------------------------- */

static void on_portal(void *data, const rv_stripe_result_t *res) {
    rv_request_t *req = ctx_end(data, res);
    if (res->err == 0 && res->status == 400 && res->err_code && res->err_param &&
        strcmp(res->err_code, "resource_missing") == 0 && strcmp(res->err_param, "customer") == 0) {
        /* A customer id Stripe does not know: the caller's mistake. */
        rv_respond_error(req, 404, "Unknown customer", NULL);
        return;
    }
    if (!answered_ok(res)) {
        stripe_failed(req, res, "billing_portal.sessions.create");
        return;
    }
    const char *url = jstr(res->json, "url");
    if (!stripe_url_ok(url)) {
        rv_warn("stripe: portal: answer without an https url");
        rv_respond_error(req, 502, "Payment service error", NULL);
        return;
    }
    rv_buf_t b = RV_BUF_INIT;
    int rc = rv_buf_puts(&b, "{\"portal_url\":");
    if (rc == 0) rc = rv_json_escape(&b, url);
    if (rc == 0) rc = rv_buf_puts(&b, "}");
    rv_respond_buf(req, 200, &b, rc);
}

static void create_portal(rv_request_t *req, const char *customer) {
    rv_app_t *app = req->app;
    char ret[2200];
    snprintf(ret, sizeof ret, "%s/account", app->cfg.app_url);
    const rv_form_kv_t params[] = {{"customer", customer}, {"return_url", ret}};
    call_ctx_t *ctx = ctx_new(req, CALL_PORTAL_CREATE);
    int rc = ctx ? rv_stripe_post(app->stripe, "/v1/billing_portal/sessions", params, 2, NULL,
                                  on_portal, ctx, &ctx->call)
                 : RV_ENOMEM;
    if (rc) {
        if (ctx) ctx_end(ctx, NULL);
        rv_warn("stripe: portal: cannot start the call: %s", rv_strerror(rc));
        rv_respond_error(req, 502, "Payment service error", NULL);
    }
}

static void on_portal_session(void *data, const rv_stripe_result_t *res) {
    call_ctx_t *ctx = data;
    char sid[256];
    memcpy(sid, ctx->session_id, sizeof sid);
    rv_request_t *req = ctx_end(ctx, res);
    if (res->err == 0 && res->status == 404) {
        rv_respond_error(req, 401, "Unknown checkout session", "WWW-Authenticate: Bearer\r\n");
        return;
    }
    if (!answered_ok(res)) {
        stripe_failed(req, res, "checkout.sessions.retrieve");
        return;
    }
    if (!session_is(req, res->json, sid) || session_too_old(req, res->json)) return;
    const char *st = jstr(res->json, "status");
    const char *cus = jcustomer(res->json);
    if (st == NULL || strcmp(st, "complete") != 0 || cus == NULL) {
        rv_info("portal: session %s is not a completed checkout with a customer", sid);
        rv_respond_error(req, 401, "Checkout session is not complete",
                         "WWW-Authenticate: Bearer\r\n");
        return;
    }
    create_portal(req, cus);
}

/* The bot opens the portal for a linked Telegram user: the customer comes from Redis. */
static void on_portal_user(void *data, int err, const char *customer_id, const char *entitlement) {
    rv_request_t *req = data;
    if (err) {
        rv_respond_error(req, 503, "Entitlements unavailable; retry later", "Retry-After: 1\r\n");
    } else if (customer_id == NULL) {
        rv_respond_error(req, 404, "No customer is linked to this Telegram user", NULL);
    } else {
        create_portal(req, customer_id);
    }
}

void rv_handle_billing_portal(rv_request_t *req) {
    /* The bot and other servers with the API token call for many customers from one address:
     * the per-address limit is for anonymous callers. */
    if (!rv_bearer_ok(req) && rv_rate_limited(req)) return;
    cJSON *j = rv_body_object(req, 1);
    if (j == NULL) return;
    rv_verrs_t v = {0};
    char customer[300] = "", session[300] = "", user[32] = "";
    const char *bc = rv_opt_string(j, "customer_id", &v);
    const char *bs = rv_opt_string(j, "session_id", &v);
    if (bc) snprintf(customer, sizeof customer, "%s", bc);
    if (bs) snprintf(session, sizeof session, "%s", bs);
    const cJSON *tu = cJSON_GetObjectItemCaseSensitive(j, "telegram_user_id");
    if (cJSON_IsNumber(tu) && tu->valuedouble >= 1 && tu->valuedouble < 9007199254740992.0 &&
        tu->valuedouble == (double)(long long)tu->valuedouble)
        snprintf(user, sizeof user, "%lld", (long long)tu->valuedouble);
    else if (tu && !cJSON_IsNull(tu))
        rv_verr(&v, "body", "telegram_user_id", "Input should be a positive integer", "int_type");
    cJSON_Delete(j);
    if (user[0]) {
        /* Naming a Telegram user is for the bot only, like naming a customer. */
        if (!rv_bearer_ok(req)) {
            rv_respond_error(req, 401, "A telegram_user_id requires the API token",
                             "WWW-Authenticate: Bearer\r\n");
            return;
        }
        if (v.n) {
            rv_respond_verrs(req, &v);
            return;
        }
        int rc = rv_entitlement_lookup(req->app, RV_BY_TELEGRAM, user, on_portal_user, req);
        if (rc)
            rv_respond_error(req, 503, "Entitlements unavailable; retry later",
                             "Retry-After: 1\r\n");
        return;
    }
    int qc = customer[0] ? 0 : rv_request_query(req, "customer_id", customer, sizeof customer);
    int qs = session[0] ? 0 : rv_request_query(req, "session_id", session, sizeof session);
    static const char *const why[] = {"Too long", "Not a valid value", "Given more than once"};
    if (qc == RV_ERANGE || qc == RV_EINVAL || qc == RV_EMALFORMED)
        rv_verr(&v, "query", "customer_id",
                why[qc == RV_ERANGE   ? 0
                    : qc == RV_EINVAL ? 1
                                      : 2],
                "value_error");
    if (qs == RV_ERANGE || qs == RV_EINVAL || qs == RV_EMALFORMED)
        rv_verr(&v, "query", "session_id",
                why[qs == RV_ERANGE   ? 0
                    : qs == RV_EINVAL ? 1
                                      : 2],
                "value_error");
    if (v.n) {
        rv_respond_verrs(req, &v);
        return;
    }
    if (customer[0]) {
        /* Naming a customer is only for trusted servers: anyone else could open any billing. */
        if (!rv_bearer_ok(req)) {
            rv_respond_error(req, 401, "A customer_id requires the API token",
                             "WWW-Authenticate: Bearer\r\n");
            return;
        }
        if (!rv_valid_customer_id(customer)) {
            rv_verr(&v, "body", "customer_id", "Must be a Stripe customer id (cus_...)",
                    "value_error");
            rv_respond_verrs(req, &v);
            return;
        }
        create_portal(req, customer);
        return;
    }
    if (session[0]) {
        if (!rv_valid_session_id(session)) {
            rv_verr(&v, "body", "session_id", "Must be a Checkout Session id (cs_...)",
                    "value_error");
            rv_respond_verrs(req, &v);
            return;
        }
        retrieve_session(req, session, CALL_PORTAL_LOOKUP, on_portal_session);
        return;
    }
    rv_respond_error(req, 401, "Authentication required", "WWW-Authenticate: Bearer\r\n");
}

/* ---- OPTIONS (CORS preflight) --------------------------------------------------------------- */

void rv_handle_preflight(rv_request_t *req) {
    rv_app_t *app = req->app;
    size_t n;
    const char *origin = rv_request_header(req, "origin", &n);
    char o[256];
    /* A request has one Origin (RFC 6454): with two, which one is the page's is anyone's guess. */
    if (origin == NULL || n == 0 || n >= sizeof o || rv_request_header_count(req, "origin") != 1) {
        rv_respond_error(req, 400, "Not a CORS preflight request", NULL);
        return;
    }
    memcpy(o, origin, n);
    o[n] = '\0';
    if (!rv_strlist_contains(&app->cfg.cors_origins, o)) {
        /* rv_app_decorate adds Vary: Origin. */
        rv_respond_error(req, 403, "Origin not allowed", NULL);
        return;
    }
    rv_respond(req, 204, "text/plain", "", 0,
               "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
               "Access-Control-Allow-Headers: Content-Type, Authorization, Idempotency-Key, "
               "X-Request-Id\r\n"
               "Access-Control-Max-Age: 600\r\n");
}
