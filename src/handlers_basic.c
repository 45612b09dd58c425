/* Liveness, readiness and the service description. */
#include <string.h>
#include <uv.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/metrics.h"

void rv_handle_health(rv_request_t *req) {
    static const char body[] = "{\"status\":\"healthy\",\"service\":\"" RV_SERVICE "\"}";
    rv_respond_json(req, 200, body, sizeof body - 1, NULL);
}

void rv_handle_ready(rv_request_t *req) {
    rv_app_t *app = req->app;
    int redis = app->queue && rv_queue_ready(app->queue);
    if (app->config_loaded && redis && !app->stopping) {
        static const char body[] = "{\"status\":\"ready\",\"redis\":\"connected\"}";
        rv_respond_json(req, 200, body, sizeof body - 1, NULL);
        return;
    }
    const char *why = app->stopping ? "Shutting down" : !redis ? "Redis unavailable"
                                                               : "Configuration not loaded";
    rv_respond_error(req, 503, why, "Retry-After: 1\r\n");
}

void rv_handle_root(rv_request_t *req) {
    static const char body[] =
        "{\"service\":\"Rivet API\",\"version\":\"" RV_VERSION "\",\"docs\":\"/docs\"}";
    rv_respond_json(req, 200, body, sizeof body - 1, NULL);
}

/* Prometheus text format; served on the admin listener only. */
void rv_handle_metrics(rv_request_t *req) {
    rv_app_t *app = req->app;
    int qstate = app->queue ? rv_queue_state(app->queue) : 0;
    double up = app->queue && rv_queue_ready(app->queue) ? 1 : 0;
    double rss = 0;
    size_t rss_bytes;
    if (uv_resident_set_memory(&rss_bytes) == 0) rss = (double)rss_bytes;
    rv_gauge_t g[] = {
        {"rivet_build_info", "Build information.", "version=\"" RV_VERSION "\"", 1, NULL},
        {"rivet_redis_up", "1 when Redis is connected and the script loaded.", "", up, NULL},
        {"rivet_redis_state", "Redis connection state (0 down, 1 connecting, 2 connected).", "",
         (double)qstate, NULL},
        {"rivet_redis_reconnects_total", "Redis reconnections since start.", "",
         app->queue ? (double)rv_queue_reconnects(app->queue) : 0, "counter"},
        {"rivet_redis_pending_commands", "Redis commands waiting for an answer.", "",
         app->queue ? (double)rv_queue_pending(app->queue) : 0, NULL},
        {"rivet_stripe_calls_in_flight", "Stripe calls in flight.", "",
         app->stripe ? (double)rv_stripe_inflight(app->stripe) : 0, NULL},
        {"rivet_http_open_connections", "Open client connections.", "listener=\"public\"",
         (double)app->pub.nconns, NULL},
        {"rivet_http_open_connections", "Open client connections.", "listener=\"admin\"",
         (double)app->admin.nconns, NULL},
        {"rivet_http_requests_in_flight", "Requests with their handlers.", "",
         (double)(app->pub.inflight + app->admin.inflight), NULL},
        {"rivet_process_resident_memory_bytes", "Resident set size.", "", rss, NULL},
    };
    rv_buf_t b = RV_BUF_INIT;
    if (rv_metrics_render(&b, g, RV_ARRAY_LEN(g))) {
        rv_buf_free(&b);
        rv_respond_error(req, 500, "Internal error", NULL);
        return;
    }
    rv_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len, NULL);
    rv_buf_free(&b);
}
