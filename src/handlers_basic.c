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
    const char *why =
        app->stopping                                     ? "Shutting down"
        : app->queue && rv_queue_failing_over(app->queue) ? "Redis failover in progress"
        : app->queue && rv_queue_refusing(app->queue)     ? "Redis refuses writes"
        : app->queue && rv_queue_unconfirmed(app->queue)  ? "Redis replicas do not confirm writes"
        : !redis                                          ? "Redis unavailable"
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
    /* The workers' gauges are in the store (each worker keeps its own up to date, summed in the
     * answer); this worker's are made exact first. What is per process is given here. */
    rv_app_publish_gauges(app, 1);
    int qstate = app->queue ? rv_queue_state(app->queue) : 0;
    rv_gauge_t g[] = {
        {"rivet_build_info", "Build information.", "version=\"" RV_VERSION "\"", 1, NULL},
        {"rivet_redis_state",
         "Redis connection state of the worker that answered (0 down, 1 connecting, 2 "
         "connected).",
         "", (double)qstate, NULL},
        {"rivet_workers", "Worker processes serving.", "", (double)app->cfg.workers, NULL},
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
