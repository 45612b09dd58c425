/* rivetd: the command line, the configuration, and the choice between one process and a
 * supervisor of WORKERS processes. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/ratelimit.h"
#include "rivet/reconcile.h"
#include "rivet/sd.h"

extern char **environ;

static void usage(FILE *f) {
    fprintf(f,
            "Usage: rivetd [--config FILE] [--check-config | --reconcile DURATION]\n"
            "       rivetd --help | --version\n"
            "\n"
            "The billing edge of Rivet: Stripe Checkout, signed webhooks turned into\n"
            "provisioning events in a Redis Stream, the success page and the billing portal.\n"
            "\n"
            "  --config FILE    read KEY=VALUE settings from FILE; the environment wins\n"
            "  --check-config   validate the configuration, print it with secrets redacted, exit\n"
            "  --reconcile DURATION\n"
            "                   recover the Stripe events of the last DURATION (90m, 72h, 30d;\n"
            "                   at most 30 days) that no webhook brought, print a summary, exit\n"
            "  --config-reference=markdown|env\n"
            "                   print the configuration keys as the README's table, or as\n"
            "                   conf/rivet.conf.example\n"
            "  --help           this text\n"
            "  --version        print the version\n"
            "\n"
            "Signals: SIGTERM/SIGINT finish requests in flight and stop; SIGHUP reloads FILE.\n"
            "Configuration keys are listed in README.md.\n");
}

/* The rate limiter is made before any worker is forked, so that all of them share it. */
static int start(rv_app_t *app) {
    /* Request bodies are the large allocations: with a fixed threshold they are always mapped
     * on their own and given back to the system when freed, so resident memory falls after a
     * burst instead of staying at its peak (glibc would otherwise raise the threshold as they
     * are freed and serve them from a heap it keeps). */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    int rc = rv_ratelimit_new(app->cfg.rate_limit_per_min, 20, 65536, &app->ratelimit);
    if (rc) {
        rv_error("rivetd: rate limiter: %s", rv_strerror(rc));
        return 1;
    }
    rc = app->cfg.workers > 1 ? rv_supervise(app) : rv_worker_run(app);
    rv_ratelimit_free(app->ratelimit);
    app->ratelimit = NULL;
    return rc;
}

int main(int argc, char **argv) {
    uint64_t reconcile_s = 0;
    static rv_app_t app;
    int check = 0;
    app.listen_fd = app.admin_fd = app.parent_fd = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            app.config_path = argv[++i];
        } else if (strncmp(argv[i], "--config=", 9) == 0) {
            app.config_path = argv[i] + 9;
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check = 1;
        } else if (strcmp(argv[i], "--reconcile") == 0 && i + 1 < argc) {
            if (rv_parse_duration(argv[++i], &reconcile_s) != 0) {
                fprintf(stderr, "rivetd: --reconcile takes a duration such as 72h, 90m or 30d\n");
                return 2;
            }
        } else if (strcmp(argv[i], "--config-reference=markdown") == 0 ||
                   strcmp(argv[i], "--config-reference=env") == 0) {
            /* The README's table and conf/rivet.conf.example, from the configuration table. */
            rv_buf_t ref = RV_BUF_INIT;
            int bad = rv_config_reference(&ref, argv[i][19] == 'm' ? RV_CONFIG_REF_MARKDOWN
                                                                   : RV_CONFIG_REF_ENV);
            if (!bad) fwrite(ref.data, 1, ref.len, stdout);
            rv_buf_free(&ref);
            return bad ? 1 : 0;
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
    if (app.config_path &&
        (app.config_text = rv_read_config_file(app.config_path, err, sizeof err)) == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int rc =
        rv_config_load(&app.cfg, (const char *const *)environ, app.config_text, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s\n", err);
        free(app.config_text);
        return 1;
    }
    app.config_loaded = 1;
    rv_log_set_level(app.cfg.log_level);
    if (reconcile_s) {
        rc = rv_worker_reconcile(&app, reconcile_s);
    } else if (check) {
        rv_buf_t b = RV_BUF_INIT;
        rc = rv_config_dump(&app.cfg, &b);
        if (rc == 0) fwrite(b.data, 1, b.len, stdout);
        rv_buf_free(&b);
        printf("# configuration OK\n");
    } else {
        /* Socket activation: fd 3 is the public listener, fd 4 (if passed) the admin one. */
        int nfds = rv_sd_listen_fds();
        if (nfds < 0) {
            rv_error("rivetd: LISTEN_FDS names descriptors that are not open");
            rc = 1;
        } else {
            if (nfds >= 1) app.listen_fd = 3;
            if (nfds >= 2) app.admin_fd = 4;
            app.watchdog_usec = rv_sd_watchdog_usec();
            rc = start(&app);
        }
    }
    rv_log_flush();
    rv_config_free(&app.cfg);
    free(app.config_text);
    return rc;
}
