/* Route tables, CORS decoration, and the daemon's start and orderly stop. */
#include "rivet/app.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/metrics.h"
#include "rivet/ratelimit.h"

extern char **environ;

const rv_route_t rv_public_routes[] = {
    {"GET", "/health", rv_handle_health, "health", 0},
    {"GET", "/ready", rv_handle_ready, "ready", 0},
    {"GET", "/", rv_handle_root, "root", 0},
    {"POST", "/api/checkout/create", rv_handle_checkout_create, "checkout_create", 0},
    {"OPTIONS", "/api/checkout/create", rv_handle_preflight, "preflight", 0},
    {"GET", "/api/checkout/success", rv_handle_checkout_success, "checkout_success", 0},
    {"OPTIONS", "/api/checkout/success", rv_handle_preflight, "preflight", 0},
    {"POST", "/api/billing/portal", rv_handle_billing_portal, "billing_portal", 0},
    {"OPTIONS", "/api/billing/portal", rv_handle_preflight, "preflight", 0},
    {"POST", "/api/webhooks/stripe", rv_handle_webhook, "webhook", RV_BODY_CONFIGURED},
    {"GET", "/openapi.json", rv_handle_openapi, "openapi", 0},
    {"GET", "/docs", rv_handle_docs, "docs", 0},
    {"POST", "/api/telegram/link", rv_handle_telegram_link, "telegram_link", 0},
    {"GET", "/api/entitlements", rv_handle_entitlements, "entitlements", 0},
};
const size_t rv_public_nroutes = RV_ARRAY_LEN(rv_public_routes);

const rv_route_t rv_admin_routes[] = {
    {"GET", "/health", rv_handle_health, "health", 0},
    {"GET", "/ready", rv_handle_ready, "ready", 0},
    {"GET", "/metrics", rv_handle_metrics, "metrics", 0},
};
const size_t rv_admin_nroutes = RV_ARRAY_LEN(rv_admin_routes);

void rv_app_decorate(rv_request_t *req, int status, rv_buf_t *headers) {
    rv_app_t *app = req->app;
    size_t olen;
    const char *origin = rv_request_header(req, "origin", &olen);
    if (origin == NULL || olen == 0) return;
    /* One Origin, or none that can be trusted: the answer still depends on the header. */
    if (olen > 255 || rv_request_header_count(req, "origin") != 1) {
        rv_buf_puts(headers, "Vary: Origin\r\n");
        return;
    }
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

/* The metric series of each (listener, route, status) answered, found once: formatting the
 * labels and scanning for them on every request was a measurable share of a /health answer. */
typedef struct done_series_s {
    const rv_server_t *srv;
    const rv_route_t *route;
    int status;
    rv_counter_series_t *requests;
    rv_hist_series_t *duration;
} done_series_t;

#define DONE_CACHE 256 /* a power of two; listeners x routes x statuses are far fewer */

static done_series_t done_cache[DONE_CACHE];

static done_series_t *done_series(const rv_server_t *s, const rv_route_t *route, int status) {
    uintptr_t h = ((uintptr_t)s >> 4) * 31u + ((uintptr_t)route >> 4) * 17u + (unsigned)status;
    done_series_t *d = &done_cache[h & (DONE_CACHE - 1)];
    if (d->requests && d->srv == s && d->route == route && d->status == status) return d;
    /* A miss, or a slot another triple used: (re)fill it. */
    const char *name = route ? route->name : "none";
    char labels[128];
    snprintf(labels, sizeof labels, "listener=\"%s\",route=\"%s\",status=\"%d\"", s->opts.name,
             name, status);
    d->requests = rv_metrics_counter_series(RV_M_HTTP_REQUESTS, labels);
    snprintf(labels, sizeof labels, "listener=\"%s\",route=\"%s\"", s->opts.name, name);
    d->duration = rv_metrics_hist_series(RV_H_HTTP_DURATION, labels);
    d->srv = s;
    d->route = route;
    d->status = status;
    return d;
}

void rv_app_on_done(rv_request_t *req, int status, size_t bytes, double ms) {
    done_series_t *d = done_series(req->server, req->route, status);
    rv_metrics_add(d->requests, 1);
    rv_metrics_observe_series(d->duration, ms / 1000.0);
}

void rv_app_publish_gauges(rv_app_t *app, int with_rss) {
    int slot = app->worker_index;
    rv_metrics_gauge_set(slot, RV_G_REDIS_UP, app->queue && rv_queue_ready(app->queue) ? 1 : 0);
    rv_metrics_gauge_set(slot, RV_G_REDIS_PENDING,
                         app->queue ? (double)rv_queue_pending(app->queue) : 0);
    rv_metrics_gauge_set(slot, RV_G_STRIPE_INFLIGHT,
                         app->stripe ? (double)rv_stripe_inflight(app->stripe) : 0);
    rv_metrics_gauge_set(slot, RV_G_CONNS_PUBLIC, (double)app->pub.nconns);
    rv_metrics_gauge_set(slot, RV_G_CONNS_ADMIN, (double)app->admin.nconns);
    rv_metrics_gauge_set(slot, RV_G_INFLIGHT, (double)(app->pub.inflight + app->admin.inflight));
    rv_metrics_gauge_set(
        slot, RV_G_INPUT_HELD,
        (double)(rv_server_input_held(&app->pub) + rv_server_input_held(&app->admin)));
    size_t rss;
    if (with_rss && uv_resident_set_memory(&rss) == 0)
        rv_metrics_gauge_set(slot, RV_G_RSS, (double)rss);
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

/* ---- reload ----------------------------------------------------------------------------- */

/* Sockets, processes, Redis and HTTP limits are fixed for the life of the process: next keeps
 * the running values, and the log says which changes wait for a restart. */
static void keep_start_only(rv_config_t *next, rv_config_t *running) {
    char names[512];
    if (rv_config_start_only_changed(next, running, names, sizeof names) > 0)
        rv_warn("rivetd: reload: %s take effect only after a restart", names);
    rv_config_keep_start_only(next, running);
}

int rv_app_reload(rv_app_t *app, const char *text, char *err, size_t errlen) {
    rv_config_t next;
    int rc = rv_app_load_config(&next, (const char *const *)environ, text, app->config_text, err,
                                errlen);
    if (rc) return rc;
    /* Everything that can fail comes first; once it has succeeded nothing else can, so a
     * refused reload leaves every part running as it was. */
    if (app->stripe) {
        rv_stripe_opts_t so = {next.stripe_api_base, next.stripe_secret_key,
                               next.stripe_api_version, next.stripe_timeout_ms,
                               next.stripe_max_retries};
        if ((rc = rv_stripe_configure(app->stripe, &so)) != 0) {
            snprintf(err, errlen, "the Stripe client did not take the new settings: %s",
                     rv_strerror(rc));
            rv_config_free(&next);
            return rc;
        }
    }
    if (app->ratelimit) rv_ratelimit_configure(app->ratelimit, next.rate_limit_per_min, 20);
    keep_start_only(&next, &app->cfg);
    rv_config_t old = app->cfg;
    app->cfg = next;
    rv_config_free(&old);
    /* app->config_text stays the file as it was at start: the environment was built from that
     * text (EnvironmentFile=), so every reload compares against it. */
    rv_log_set_level(app->cfg.log_level);
    return 0;
}

#define CONFIG_FILE_MAX (1024 * 1024)

/* Read a whole file of at most CONFIG_FILE_MAX bytes. Returns a malloc'd string or NULL. */
char *rv_read_config_file(const char *path, char *err, size_t errlen) {
    /* O_NONBLOCK: opening a FIFO that has no writer would otherwise wait for one. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        snprintf(err, errlen, "config: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "config: %s is not a regular file", path);
        close(fd);
        return NULL;
    }
    if (st.st_size > CONFIG_FILE_MAX) {
        snprintf(err, errlen, "config: %s is larger than %d bytes", path, CONFIG_FILE_MAX);
        close(fd);
        return NULL;
    }
    rv_buf_t b = RV_BUF_INIT;
    b.limit = CONFIG_FILE_MAX;
    char chunk[8192];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            snprintf(err, errlen, "config: cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0) break;
        if (rv_buf_append(&b, chunk, (size_t)n)) {
            snprintf(err, errlen, "config: %s is larger than %d bytes", path, CONFIG_FILE_MAX);
            goto fail;
        }
    }
    close(fd);
    if (b.data == NULL && rv_buf_append(&b, "", 0)) return NULL;
    if (strlen(b.data) != b.len) {
        snprintf(err, errlen, "config: %s contains a NUL byte", path);
        rv_buf_free(&b);
        return NULL;
    }
    return rv_buf_steal(&b, NULL);
fail:
    close(fd);
    rv_buf_free(&b);
    return NULL;
}

typedef struct kvlist_s {
    char **kv; /* "KEY=VALUE" */
    size_t n;
} kvlist_t;

static int collect(void *ud, const char *key, const char *val) {
    kvlist_t *l = ud;
    char **v = realloc(l->kv, (l->n + 1) * sizeof *v);
    if (v == NULL) return RV_ENOMEM;
    l->kv = v;
    size_t len = strlen(key) + strlen(val) + 2;
    if ((v[l->n] = malloc(len)) == NULL) return RV_ENOMEM;
    snprintf(v[l->n], len, "%s=%s", key, val);
    l->n++;
    return 0;
}

int rv_app_load_config(rv_config_t *cfg, const char *const *envp, const char *text,
                       const char *prev_text, char *err, size_t errlen) {
    kvlist_t prev = {0};
    const char **env = NULL;
    size_t n = 0;
    int rc = 0;
    if (prev_text && rv_config_parse_file(prev_text, collect, &prev, NULL) != 0) prev.n = 0;
    for (const char *const *e = envp; e && *e; e++) n++;
    env = calloc(n + 1, sizeof *env);
    if (env == NULL) {
        rc = RV_ENOMEM;
        snprintf(err, errlen, "config: out of memory");
        goto out;
    }
    n = 0;
    for (const char *const *e = envp; e && *e; e++) {
        int from_file = 0;
        for (size_t i = 0; i < prev.n && !from_file; i++) from_file = strcmp(prev.kv[i], *e) == 0;
        if (!from_file) env[n++] = *e;
    }
    rc = rv_config_load(cfg, env, text, err, errlen);
out:
    for (size_t i = 0; i < prev.n; i++) free(prev.kv[i]);
    free(prev.kv);
    free(env);
    return rc;
}
