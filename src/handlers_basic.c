/* Liveness, readiness and the service description. */
#include <string.h>

#include "rivet/app.h"
#include "rivet/common.h"

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
