/* Route tables, CORS decoration, and the daemon's start and orderly stop. */
#include "rivet/app.h"

#include <stdio.h>
#include <string.h>

#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/metrics.h"

const rv_route_t rv_public_routes[] = {
    {"GET", "/health", rv_handle_health, "health"},
    {"GET", "/ready", rv_handle_ready, "ready"},
    {"GET", "/", rv_handle_root, "root"},
    {"POST", "/api/checkout/create", rv_handle_checkout_create, "checkout_create"},
    {"OPTIONS", "/api/checkout/create", rv_handle_preflight, "preflight"},
    {"GET", "/api/checkout/success", rv_handle_checkout_success, "checkout_success"},
    {"OPTIONS", "/api/checkout/success", rv_handle_preflight, "preflight"},
    {"POST", "/api/billing/portal", rv_handle_billing_portal, "billing_portal"},
    {"OPTIONS", "/api/billing/portal", rv_handle_preflight, "preflight"},
    {"POST", "/api/webhooks/stripe", rv_handle_webhook, "webhook"},
};
const size_t rv_public_nroutes = RV_ARRAY_LEN(rv_public_routes);

const rv_route_t rv_admin_routes[] = {
    {"GET", "/health", rv_handle_health, "health"},
    {"GET", "/ready", rv_handle_ready, "ready"},
    {"GET", "/metrics", rv_handle_metrics, "metrics"},
};
const size_t rv_admin_nroutes = RV_ARRAY_LEN(rv_admin_routes);

void rv_app_decorate(rv_request_t *req, int status, rv_buf_t *headers) {
    rv_app_t *app = req->app;
    size_t olen;
    const char *origin = rv_request_header(req, "origin", &olen);
    if (origin == NULL || olen == 0 || olen > 255) return;
    char o[256];
    memcpy(o, origin, olen);
    o[olen] = '\0';
    /* Only listed origins are ever named; never "*". Vary tells caches the answer depends on it. */
    if (!rv_strlist_contains(&app->cfg.cors_origins, o)) {
        rv_buf_puts(headers, "Vary: Origin\r\n");
        return;
    }
    rv_buf_printf(headers,
                  "Access-Control-Allow-Origin: %s\r\nAccess-Control-Allow-Credentials: true\r\n"
                  "Access-Control-Expose-Headers: X-Request-Id, Retry-After\r\nVary: Origin\r\n",
                  o);
}

void rv_app_on_done(rv_request_t *req, int status, size_t bytes, double ms) {
    rv_server_t *s = req->server;
    const char *route = req->route ? req->route->name : "none";
    char labels[128];
    snprintf(labels, sizeof labels, "listener=\"%s\",route=\"%s\",status=\"%d\"",
             s->opts.name, route, status);
    rv_metrics_count(RV_M_HTTP_REQUESTS, labels, 1);
    snprintf(labels, sizeof labels, "listener=\"%s\",route=\"%s\"", s->opts.name, route);
    rv_metrics_observe(RV_H_HTTP_DURATION, labels, ms / 1000.0);
}

void rv_app_webhook_outcome(rv_app_t *app, const char *type, const char *outcome) {
    RV_UNUSED(app);
    /* Event types are Stripe's (after verification) and short; anything odd is not a label. */
    size_t n = strlen(type);
    for (size_t i = 0; i < n; i++) {
        char c = type[i];
        if (!((c >= 'a' && c <= 'z') || c == '.' || c == '_')) {
            type = "other";
            break;
        }
    }
    if (n == 0 || n > 64) type = "other";
    char labels[128];
    snprintf(labels, sizeof labels, "type=\"%s\",outcome=\"%s\"", type, outcome);
    rv_metrics_count(RV_M_WEBHOOK_EVENTS, labels, 1);
}
