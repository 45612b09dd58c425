/* One worker: the libuv loop with its listeners, Redis and Stripe clients; readiness and
 * watchdog notifications; SIGHUP reload; SIGTERM drains requests in flight, then stops. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/entitlement.h"
#include "rivet/log.h"
#include "rivet/ratelimit.h"
#include "rivet/reconcile.h"
#include "rivet/sd.h"
#include "rivet/shared.h"

extern char **environ;

static void tell_parent(rv_app_t *app, char what) {
    if (app->parent_fd < 0) return;
    ssize_t n;
    do {
        n = write(app->parent_fd, &what, 1);
    } while (n < 0 && errno == EINTR);
}

/* ---- stop ------------------------------------------------------------------------------- */

static void finish(rv_app_t *app) {
    if (app->stopping == 2) return;
    app->stopping = 2;
    uv_timer_stop(&app->shutdown_timer);
    rv_reconcile_close(app->reconcile);
    app->reconcile = NULL;
    rv_entitlement_close(app);
    if (app->stripe) rv_stripe_close(app->stripe);
    app->stripe = NULL;
    if (app->http) rv_http_client_close(app->http);
    app->http = NULL;
    if (app->queue) rv_queue_close(app->queue, NULL, NULL);
    app->queue = NULL;
    uv_close((uv_handle_t *)&app->sig_term, NULL);
    uv_close((uv_handle_t *)&app->sig_int, NULL);
    uv_close((uv_handle_t *)&app->sig_hup, NULL);
    uv_close((uv_handle_t *)&app->shutdown_timer, NULL);
    uv_close((uv_handle_t *)&app->watchdog_timer, NULL);
    uv_close((uv_handle_t *)&app->gauge_timer, NULL);
    uv_close((uv_handle_t *)&app->log_flush, NULL);
    rv_info("rivetd: stopped");
}

static void maybe_finish(rv_app_t *app) {
    if (app->pub.nconns || app->pub.inflight) return;
    if (app->admin_enabled && (app->admin.nconns || app->admin.inflight)) return;
    finish(app);
}

static void on_drained(rv_server_t *s) { maybe_finish(s->opts.app); }

static void on_shutdown_timeout(uv_timer_t *t) {
    rv_app_t *app = t->data;
    rv_warn("rivetd: shutdown timeout: closing %zu connections with %zu requests in flight",
            app->pub.nconns + app->admin.nconns, app->pub.inflight + app->admin.inflight);
    rv_server_close(&app->pub);
    if (app->admin_enabled) rv_server_close(&app->admin);
    /* Handlers told that their clients have gone answer at once or when their work fails. */
    finish(app);
}

static void begin_stop(rv_app_t *app, int signum) {
    if (app->stopping) {
        rv_warn("rivetd: second signal: stopping now");
        on_shutdown_timeout(&app->shutdown_timer);
        return;
    }
    app->stopping = 1;
    rv_sd_notify("STOPPING=1\nSTATUS=Stopping: finishing requests in flight");
    rv_info("rivetd: %s: stopping (%zu requests in flight, up to %llu ms)", strsignal(signum),
            app->pub.inflight + app->admin.inflight,
            (unsigned long long)app->cfg.shutdown_timeout_ms);
    uv_timer_start(&app->shutdown_timer, on_shutdown_timeout, app->cfg.shutdown_timeout_ms, 0);
    rv_server_drain(&app->pub, on_drained);
    if (app->admin_enabled) rv_server_drain(&app->admin, on_drained);
}

/* ---- reload ----------------------------------------------------------------------------- */

/* Apply the configuration file's text (NULL when there is no file); text is freed. */
static void reload_apply(rv_app_t *app, char *text) {
    char err[256];
    if (rv_app_reload(app, text, err, sizeof err) != 0)
        rv_error("rivetd: reload refused, keeping the running configuration: %s", err);
    else
        rv_info("rivetd: configuration reloaded");
    free(text);
}

/* The file is read in libuv's thread pool: a path on a hung network file system must not stop
 * the loop. rv_read_config_file refuses anything but a regular file, so a FIFO fails at once. */
static void reload_read(uv_work_t *w) {
    rv_app_t *app = w->data;
    app->reload_text =
        rv_read_config_file(app->config_path, app->reload_err, sizeof app->reload_err);
}

static void reload_start(rv_app_t *app);

static void reload_read_done(uv_work_t *w, int status) {
    rv_app_t *app = w->data;
    char *text = app->reload_text;
    app->reload_text = NULL;
    app->reloading = 0;
    if (status != 0 || app->stopping) {
        free(text);
        return;
    }
    if (text == NULL) {
        rv_error("rivetd: reload refused, keeping the running configuration: %s", app->reload_err);
    } else {
        reload_apply(app, text);
    }
    if (app->reload_again) {
        app->reload_again = 0;
        reload_start(app);
    }
}

static void reload_start(rv_app_t *app) {
    if (app->shared_config) {
        /* Supervised: the supervisor has read and validated the file, and published it; every
         * worker applies that same text, whenever it reads it. */
        char *text = NULL;
        uint64_t gen = 0;
        if (rv_shared_text_get(app->shared_config, &text, &gen) != 0) {
            rv_error("rivetd: reload refused: out of memory");
            return;
        }
        if (gen == app->config_generation && text) {
            free(text);
            return; /* nothing newer than what runs */
        }
        app->config_generation = gen;
        if (text || app->config_path == NULL) reload_apply(app, text);
        return;
    }
    if (app->config_path == NULL) {
        reload_apply(app, NULL);
        return;
    }
    if (app->reloading) {
        /* At most one read at a time, however often SIGHUP comes; the last one is not lost. */
        app->reload_again = 1;
        return;
    }
    app->reload_work.data = app;
    int rc = uv_queue_work(app->loop, &app->reload_work, reload_read, reload_read_done);
    if (rc) {
        rv_error("rivetd: reload refused: cannot read the configuration: %s", uv_strerror(rc));
        return;
    }
    app->reloading = 1;
}

/* ---- signals, watchdog, log flushing ----------------------------------------------------- */

static void on_signal(uv_signal_t *sig, int signum) {
    rv_app_t *app = sig->data;
    if (signum == SIGHUP) {
        reload_start(app);
        return;
    }
    begin_stop(app, signum);
}

static void on_gauges(uv_timer_t *t) { rv_app_publish_gauges(t->data, 1); }

static void on_watchdog(uv_timer_t *t) {
    rv_app_t *app = t->data;
    /* Sent from the loop itself: a loop that stops turning stops these, and is restarted. */
    if (app->parent_fd >= 0) {
        tell_parent(app, 'W');
        return;
    }
    char status[256];
    snprintf(status, sizeof status,
             "WATCHDOG=1\nSTATUS=%zu connections, %zu requests in flight, Redis %s, %zu Stripe "
             "calls in flight",
             app->pub.nconns + app->admin.nconns, app->pub.inflight + app->admin.inflight,
             app->queue && rv_queue_ready(app->queue) ? "connected" : "unavailable",
             app->stripe ? rv_stripe_inflight(app->stripe) : (size_t)0);
    rv_sd_notify(status);
}

static void on_prepare(uv_prepare_t *p) {
    rv_app_t *app = p->data;
    rv_log_flush();
    rv_app_publish_gauges(app, 0);
    /* A handler may have answered its last request after the listeners drained. */
    if (app->stopping == 1) maybe_finish(app);
}

/* ---- start ------------------------------------------------------------------------------ */

static void server_opts(rv_app_t *app, rv_server_opts_t *o, const char *name,
                        const rv_route_t *routes, size_t n) {
    memset(o, 0, sizeof *o);
    o->name = name;
    o->max_url_bytes = app->cfg.max_header_bytes < 8192 ? app->cfg.max_header_bytes : 8192;
    o->max_header_bytes = app->cfg.max_header_bytes;
    o->max_body_bytes = app->cfg.max_body_bytes;
    o->max_input_buffer = app->cfg.max_body_buffer;
    o->max_connections = app->cfg.max_connections;
    o->header_timeout_ms = app->cfg.header_timeout_ms;
    o->body_timeout_ms = app->cfg.body_timeout_ms;
    o->idle_timeout_ms = app->cfg.idle_timeout_ms;
    o->routes = routes;
    o->nroutes = n;
    o->app = app;
    o->decorate = rv_app_decorate;
    o->on_done = rv_app_on_done;
}

static int listen_on(rv_server_t *s, int fd, const struct sockaddr_storage *addr,
                     const char *what) {
    int rc = fd >= 0 ? rv_server_listen_fd(s, fd) : rv_server_listen(s, (struct sockaddr *)addr, 0);
    if (rc) rv_error("rivetd: cannot listen on %s: %s", what, uv_strerror(rc));
    return rc;
}

/* Each connection is a descriptor: take the hard limit, and say so when MAX_CONNECTIONS cannot
 * be reached within it. */
static void raise_fd_limit(const rv_config_t *cfg) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)cfg->max_connections + 256 > rl.rlim_cur)
        rv_warn("rivetd: MAX_CONNECTIONS=%u but only %llu file descriptors are allowed; raise "
                "LimitNOFILE",
                cfg->max_connections, (unsigned long long)rl.rlim_cur);
}

/* The loop's own handles: log flushing, timers and signal watchers (not yet started). */
static void handles_init(rv_app_t *app) {
    uv_prepare_init(app->loop, &app->log_flush);
    app->log_flush.data = app;
    uv_prepare_start(&app->log_flush, on_prepare);
    uv_timer_init(app->loop, &app->shutdown_timer);
    uv_timer_init(app->loop, &app->watchdog_timer);
    uv_timer_init(app->loop, &app->gauge_timer);
    uv_timer_init(app->loop, &app->read_timer);
    app->shutdown_timer.data = app->watchdog_timer.data = app->gauge_timer.data = app;
    uv_signal_init(app->loop, &app->sig_term);
    uv_signal_init(app->loop, &app->sig_int);
    uv_signal_init(app->loop, &app->sig_hup);
    app->sig_term.data = app->sig_int.data = app->sig_hup.data = app;
}

/* The clients of Redis and Stripe. Returns 0 or an error (logged). */
static int clients_open(rv_app_t *app) {
    const rv_config_t *cfg = &app->cfg;
    rv_queue_opts_t qo = {.url = cfg->redis_url,
                          .stream = cfg->redis_stream,
                          .dedupe_ttl = cfg->redis_dedupe_ttl,
                          .timeout_ms = cfg->redis_timeout_ms,
                          .past_due_active = cfg->past_due_active,
                          .telegram_bot = cfg->telegram_bot,
                          .telegram_link_ttl = cfg->telegram_link_ttl,
                          .sentinels = cfg->redis_sentinels,
                          .sentinel_master = cfg->redis_sentinel_master,
                          .min_replicas = cfg->redis_min_replicas};
    rv_stripe_opts_t so = {cfg->stripe_api_base, cfg->stripe_secret_key, cfg->stripe_api_version,
                           cfg->stripe_timeout_ms, cfg->stripe_max_retries};
    int rc;
    if ((rc = rv_queue_init(app->loop, &qo, &app->queue)) != 0) {
        rv_error("rivetd: redis: %s", rv_strerror(rc));
    } else if ((rc = rv_entitlement_cache_start(app)) != 0) {
        rv_error("rivetd: look-up cache: %s", rv_strerror(rc));
    } else if ((rc = rv_http_client_init(app->loop, &app->http)) != 0) {
        rv_error("rivetd: http client: %s", rv_strerror(rc));
    } else if ((rc = rv_stripe_init(app->http, app->loop, &so, &app->stripe)) != 0) {
        rv_error("rivetd: stripe: %s", rv_strerror(rc));
    }
    return rc;
}

static int start(rv_app_t *app) {
    rv_config_t *cfg = &app->cfg;
    rv_server_opts_t o;
    int rc;

    raise_fd_limit(cfg);
    handles_init(app);
    /* The resident size costs a system call: once a second, not every iteration. */
    uv_timer_start(&app->gauge_timer, on_gauges, 0, 1000);
    uv_unref((uv_handle_t *)&app->gauge_timer);
    uv_signal_start(&app->sig_term, on_signal, SIGTERM);
    uv_signal_start(&app->sig_int, on_signal, SIGINT);
    uv_signal_start(&app->sig_hup, on_signal, SIGHUP);
    /* A reload the supervisor published between this worker's fork and now came as a SIGHUP
     * that was ignored: catch up with it. */
    if (app->shared_config) reload_start(app);

    if ((rc = clients_open(app)) != 0) return rc;
    if ((rc = rv_reconcile_start(app, cfg->reconcile_interval, &app->reconcile)) != 0) {
        rv_error("rivetd: reconciler: %s", rv_strerror(rc));
        return rc;
    }

    server_opts(app, &o, "public", rv_public_routes, rv_public_nroutes);
    if ((rc = rv_server_init(&app->pub, app->loop, &o)) != 0) return rc;
    if ((rc = listen_on(&app->pub, app->listen_fd, &cfg->listen_addr, cfg->listen)) != 0) return rc;
    if (cfg->admin_listen[0] || app->admin_fd >= 0) {
        server_opts(app, &o, "admin", rv_admin_routes, rv_admin_nroutes);
        if ((rc = rv_server_init(&app->admin, app->loop, &o)) != 0) return rc;
        app->admin_enabled = 1;
        if ((rc = listen_on(&app->admin, app->admin_fd, &cfg->admin_addr, cfg->admin_listen)) != 0)
            return rc;
    }
    if (app->watchdog_usec || app->parent_fd >= 0) {
        uint64_t ms = app->watchdog_usec ? app->watchdog_usec / 2000 : 1000;
        if (app->parent_fd >= 0) ms = 1000;
        uv_timer_start(&app->watchdog_timer, on_watchdog, ms ? ms : 1, ms ? ms : 1);
    }
    rv_info("rivetd %s: %s %s%s%s%s (stripe %s, redis stream %s)", RV_VERSION,
            app->listen_fd >= 0 ? "serving inherited socket for" : "listening on", cfg->listen,
            app->admin_enabled ? ", admin " : "", app->admin_enabled ? cfg->admin_listen : "",
            app->worker_index ? " (worker)" : "", cfg->stripe_api_base, cfg->redis_stream);
    char status[300];
    snprintf(status, sizeof status, "READY=1\nSTATUS=Listening on %s; Redis %s", cfg->listen,
             rv_queue_ready(app->queue) ? "connected" : "connecting");
    if (app->parent_fd >= 0) {
        tell_parent(app, 'R');
    } else {
        rv_sd_notify(status);
    }
    return 0;
}

static void close_walk(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

int rv_worker_run(rv_app_t *app) {
    signal(SIGPIPE, SIG_IGN);
    app->loop = uv_default_loop();
    if (start(app) != 0) {
        app->exit_code = 1;
        if (app->pub.loop) rv_server_close(&app->pub);
        if (app->admin_enabled) rv_server_close(&app->admin);
        finish(app);
    }
    uv_run(app->loop, UV_RUN_DEFAULT);
    /* Anything still open (after a failed start) is closed here so the loop can be released. */
    uv_walk(app->loop, close_walk, NULL);
    uv_run(app->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(app->loop);
    if (rc) rv_warn("rivetd: loop closed with handles open: %s", uv_strerror(rc));
    rv_log_flush();
    rv_http_global_cleanup();
    return app->exit_code;
}

/* ---- rivetd --reconcile DURATION ------------------------------------------------------------ */

static void on_reconciled(void *data, const rv_reconcile_stats_t *st) {
    rv_app_t *app = data;
    printf("reconcile: %s: %llu events read in %llu pages (created %lld..%lld): %llu recovered, "
           "%llu delivered before, %llu ignored, %llu dead-lettered, %llu doubts asked again%s%s\n",
           st->ok ? "done" : "stopped", (unsigned long long)st->events,
           (unsigned long long)st->pages, (long long)st->from, (long long)st->upto,
           (unsigned long long)st->recovered, (unsigned long long)st->duplicates,
           (unsigned long long)st->ignored, (unsigned long long)st->dead,
           (unsigned long long)st->doubts, st->ok ? "" : ": ", st->ok ? "" : st->error);
    fflush(stdout);
    app->exit_code = st->ok ? 0 : 1;
    finish(app);
}

int rv_worker_reconcile(rv_app_t *app, uint64_t lookback_s) {
    signal(SIGPIPE, SIG_IGN);
    app->loop = uv_default_loop();
    app->exit_code = 1;
    handles_init(app);
    rv_reconcile_t *r = NULL;
    int rc = clients_open(app);
    if (rc == 0) rc = rv_reconcile_once(app, lookback_s, 60000, on_reconciled, app, &r);
    if (rc) {
        fprintf(stderr, "rivetd: --reconcile: cannot start: %s\n", rv_strerror(rc));
        finish(app);
    } else {
        app->reconcile = r;
        fprintf(stderr, "rivetd: recovering the events of the last %llu s from %s\n",
                (unsigned long long)lookback_s, app->cfg.stripe_api_base);
    }
    uv_run(app->loop, UV_RUN_DEFAULT);
    uv_walk(app->loop, close_walk, NULL);
    uv_run(app->loop, UV_RUN_DEFAULT);
    uv_loop_close(app->loop);
    rv_log_flush();
    rv_http_global_cleanup();
    return app->exit_code;
}
