/* The daemon's state: configuration, listeners, clients of Redis and Stripe, shared by every
 * handler through req->app. */
#ifndef RIVET_APP_H
#define RIVET_APP_H

#include <stdint.h>
#include <uv.h>

#include "rivet/config.h"
#include "rivet/http_client.h"
#include "rivet/queue.h"
#include "rivet/server.h"
#include "rivet/stripe.h"

typedef struct rv_app_s {
    uv_loop_t *loop;
    rv_config_t cfg;
    int config_loaded;
    rv_server_t pub;
    rv_server_t admin;
    int admin_enabled;
    rv_queue_t *queue;
    rv_http_client_t *http;
    rv_stripe_t *stripe;
    struct rv_ratelimit_s *ratelimit;
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_timer_t shutdown_timer;
    uv_prepare_t log_flush;
    int stopping;
    int exit_code;
} rv_app_t;

/* The route tables of the public and the admin listener. */
extern const rv_route_t rv_public_routes[];
extern const size_t rv_public_nroutes;
extern const rv_route_t rv_admin_routes[];
extern const size_t rv_admin_nroutes;

/* Handlers (src/handlers_*.c). */
void rv_handle_health(rv_request_t *req);
void rv_handle_ready(rv_request_t *req);
void rv_handle_root(rv_request_t *req);
void rv_handle_webhook(rv_request_t *req);
void rv_handle_checkout_create(rv_request_t *req);
void rv_handle_checkout_success(rv_request_t *req);
void rv_handle_billing_portal(rv_request_t *req);
void rv_handle_preflight(rv_request_t *req);
void rv_handle_openapi(rv_request_t *req);
void rv_handle_docs(rv_request_t *req);
void rv_handle_metrics(rv_request_t *req);

/* Add CORS headers for an allowed Origin (the server's decorate hook). */
void rv_app_decorate(rv_request_t *req, int status, rv_buf_t *headers);

/* Count an answered request in the metrics (the server's on_done hook). */
void rv_app_on_done(rv_request_t *req, int status, size_t bytes, double ms);

/* Count a webhook delivery: type is the Stripe event type ("unknown" when unverified). */
void rv_app_webhook_outcome(rv_app_t *app, const char *type, const char *outcome);

#endif
