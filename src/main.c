/* rivetd: command line, start-up, signals and the orderly stop. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/ratelimit.h"

extern char **environ;

#define CONFIG_FILE_MAX (1024 * 1024)

static void usage(FILE *f) {
    fprintf(f,
            "Usage: rivetd [--config FILE] [--check-config]\n"
            "       rivetd --help | --version\n"
            "\n"
            "The billing edge of Rivet: Stripe Checkout, signed webhooks turned into\n"
            "provisioning events in a Redis Stream, the success page and the billing portal.\n"
            "\n"
            "  --config FILE    read KEY=VALUE settings from FILE; the environment wins\n"
            "  --check-config   validate the configuration, print it with secrets redacted, exit\n"
            "  --help           this text\n"
            "  --version        print the version\n"
            "\n"
            "Configuration keys are listed in README.md.\n");
}

/* Read a whole file of at most CONFIG_FILE_MAX bytes. Returns a malloc'd string or NULL. */
static char *read_file(const char *path, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "config: cannot open %s: %s", path, strerror(errno));
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

/* ---- stop ------------------------------------------------------------------------------- */

static void close_walk(uv_handle_t *h, void *arg) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void finish(rv_app_t *app) {
    if (app->stopping == 2) return;
    app->stopping = 2;
    uv_timer_stop(&app->shutdown_timer);
    if (app->stripe) rv_stripe_close(app->stripe);
    app->stripe = NULL;
    if (app->http) rv_http_client_close(app->http);
    app->http = NULL;
    if (app->queue) rv_queue_close(app->queue, NULL, NULL);
    app->queue = NULL;
    uv_close((uv_handle_t *)&app->sig_term, NULL);
    uv_close((uv_handle_t *)&app->sig_int, NULL);
    uv_close((uv_handle_t *)&app->shutdown_timer, NULL);
    uv_close((uv_handle_t *)&app->log_flush, NULL);
    rv_info("rivetd: stopped");
}

static void maybe_finish(rv_app_t *app) {
    if (app->pub.nconns || app->pub.inflight) return;
    if (app->admin_enabled && (app->admin.nconns || app->admin.inflight)) return;
    finish(app);
}

static void on_drained(rv_server_t *s) {
    rv_app_t *app = s->opts.app;
    maybe_finish(app);
}

static void on_shutdown_timeout(uv_timer_t *t) {
    rv_app_t *app = t->data;
    rv_warn("rivetd: shutdown timeout: closing %zu connections with %zu requests in flight",
            app->pub.nconns + app->admin.nconns, app->pub.inflight + app->admin.inflight);
    rv_server_close(&app->pub);
    if (app->admin_enabled) rv_server_close(&app->admin);
    /* Handlers told that their clients have gone answer at once or when their work fails. */
    finish(app);
}

static void on_signal(uv_signal_t *sig, int signum) {
    rv_app_t *app = sig->data;
    if (app->stopping) {
        rv_warn("rivetd: second signal: stopping now");
        on_shutdown_timeout(&app->shutdown_timer);
        return;
    }
    app->stopping = 1;
    rv_info("rivetd: %s: stopping (%zu requests in flight, up to %llu ms)", strsignal(signum),
            app->pub.inflight + app->admin.inflight,
            (unsigned long long)app->cfg.shutdown_timeout_ms);
    uv_timer_start(&app->shutdown_timer, on_shutdown_timeout, app->cfg.shutdown_timeout_ms, 0);
    rv_server_drain(&app->pub, on_drained);
    if (app->admin_enabled) rv_server_drain(&app->admin, on_drained);
}

static void on_prepare(uv_prepare_t *p) {
    rv_app_t *app = p->data;
    rv_log_flush();
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

static int start(rv_app_t *app) {
    rv_config_t *cfg = &app->cfg;
    rv_server_opts_t o;
    int rc;

    uv_prepare_init(app->loop, &app->log_flush);
    app->log_flush.data = app;
    uv_prepare_start(&app->log_flush, on_prepare);
    uv_timer_init(app->loop, &app->shutdown_timer);
    app->shutdown_timer.data = app;
    uv_signal_init(app->loop, &app->sig_term);
    uv_signal_init(app->loop, &app->sig_int);
    app->sig_term.data = app->sig_int.data = app;
    uv_signal_start(&app->sig_term, on_signal, SIGTERM);
    uv_signal_start(&app->sig_int, on_signal, SIGINT);

    rv_queue_opts_t qo = {cfg->redis_url, cfg->redis_stream, cfg->redis_dedupe_ttl,
                          cfg->redis_timeout_ms};
    if ((rc = rv_queue_init(app->loop, &qo, &app->queue)) != 0) {
        rv_error("rivetd: redis: %s", rv_strerror(rc));
        return rc;
    }
    if ((rc = rv_http_client_init(app->loop, &app->http)) != 0) {
        rv_error("rivetd: http client: %s", rv_strerror(rc));
        return rc;
    }
    rv_stripe_opts_t so = {cfg->stripe_api_base, cfg->stripe_secret_key, cfg->stripe_api_version,
                           cfg->stripe_timeout_ms, cfg->stripe_max_retries};
    if ((rc = rv_stripe_init(app->http, app->loop, &so, &app->stripe)) != 0) {
        rv_error("rivetd: stripe: %s", rv_strerror(rc));
        return rc;
    }

    if (cfg->rate_limit_per_min &&
        (rc = rv_ratelimit_new(cfg->rate_limit_per_min, 20, 65536, &app->ratelimit)) != 0) {
        rv_error("rivetd: rate limiter: %s", rv_strerror(rc));
        return rc;
    }

    server_opts(app, &o, "public", rv_public_routes, rv_public_nroutes);
    if ((rc = rv_server_init(&app->pub, app->loop, &o)) != 0 ||
        (rc = rv_server_listen(&app->pub, (struct sockaddr *)&cfg->listen_addr, 0)) != 0) {
        rv_error("rivetd: cannot listen on %s: %s", cfg->listen, uv_strerror(rc));
        return rc;
    }
    if (cfg->admin_listen[0]) {
        server_opts(app, &o, "admin", rv_admin_routes, rv_admin_nroutes);
        if ((rc = rv_server_init(&app->admin, app->loop, &o)) != 0 ||
            (rc = rv_server_listen(&app->admin, (struct sockaddr *)&cfg->admin_addr, 0)) != 0) {
            rv_error("rivetd: cannot listen on %s (ADMIN_LISTEN): %s", cfg->admin_listen,
                     uv_strerror(rc));
            return rc;
        }
        app->admin_enabled = 1;
    }
    rv_info("rivetd %s: listening on %s%s%s (stripe %s, redis stream %s)", RV_VERSION,
            cfg->listen, app->admin_enabled ? ", admin on " : "",
            app->admin_enabled ? cfg->admin_listen : "", cfg->stripe_api_base, cfg->redis_stream);
    return 0;
}

int main(int argc, char **argv) {
    const char *config_path = NULL;
    int check = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            config_path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            config_path = argv[i] + 9;
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("rivetd %s\n", RV_VERSION);
            return 0;
        } else {
            fprintf(stderr, "rivetd: unknown argument '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }

    char err[256];
    char *text = NULL;
    if (config_path && (text = read_file(config_path, err, sizeof err)) == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    static rv_app_t app;
    int rc = rv_config_load(&app.cfg, (const char *const *)environ, text, err, sizeof err);
    free(text);
    if (rc) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    app.config_loaded = 1;
    rv_log_set_level(app.cfg.log_level);
    if (check) {
        rv_buf_t b = RV_BUF_INIT;
        rc = rv_config_dump(&app.cfg, &b);
        if (rc == 0) fwrite(b.data, 1, b.len, stdout);
        rv_buf_free(&b);
        rv_config_free(&app.cfg);
        printf("# configuration OK\n");
        return rc ? 1 : 0;
    }

    signal(SIGPIPE, SIG_IGN);
    app.loop = uv_default_loop();
    if (start(&app) != 0) {
        app.exit_code = 1;
        rv_server_close(&app.pub);
        if (app.admin_enabled) rv_server_close(&app.admin);
        finish(&app);
    }
    uv_run(app.loop, UV_RUN_DEFAULT);
    /* Anything still open (a failed start) is closed here so the loop can be released. */
    uv_walk(app.loop, close_walk, NULL);
    uv_run(app.loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(app.loop);
    if (rc) rv_warn("rivetd: loop closed with handles open: %s", uv_strerror(rc));
    rv_log_flush();
    rv_ratelimit_free(app.ratelimit);
    rv_config_free(&app.cfg);
    return app.exit_code;
}
