/* Route tables, CORS decoration, and the daemon's start and orderly stop. */
#include "rivet/app.h"

#include <string.h>

#include "rivet/common.h"
#include "rivet/log.h"

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
