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
    struct read_s *reads;             /* reads of Stripe's state, waiting or in flight
                                         (entitlement.c) */
    struct rv_reconcile_s *reconcile; /* the periodic recovery from Stripe, or NULL */
    struct rv_entcache_s *entcache;   /* cached look-ups (entitlement.c), or NULL */
    size_t nreads;
    uv_timer_t read_timer; /* the next read of Stripe's state due (entitlement.c) */
    double read_tokens;    /* reads that may start now (STRIPE_READS_PER_SEC) */
    uint64_t read_refill;  /* loop time read_tokens was last refilled (0: the first fills it) */
    uv_signal_t sig_term;
    uv_signal_t sig_int;
    uv_signal_t sig_hup;
    uv_timer_t shutdown_timer;
    uv_timer_t watchdog_timer;
    uv_timer_t gauge_timer;
    uv_prepare_t log_flush;
    uv_work_t reload_work;                  /* reads the configuration file off the loop */
    int reloading;                          /* a reload is reading the file */
    struct rv_shared_text_s *shared_config; /* the supervisor's last good configuration text */
    uint64_t config_generation;             /* of the shared text this process runs */
    int reload_again;  /* SIGHUP came meanwhile: read once more when it is done */
    char *reload_text; /* what the read gave, or NULL with reload_err */
    char reload_err[256];
    int stopping;
    int exit_code;
    const char *config_path; /* --config FILE, or NULL */
    char *config_text;       /* the file as it was at start (for reloads), or NULL */
    int listen_fd;           /* inherited public socket, or -1 to bind LISTEN */
    int admin_fd;            /* inherited admin socket, or -1 to bind ADMIN_LISTEN */
    int worker_index;        /* 0 when single-process */
    int parent_fd;           /* pipe to the supervisor ("R" ready, "W" alive), or -1 */
    uint64_t watchdog_usec;  /* sd_notify watchdog interval, 0 when off */
} rv_app_t;

/* Load the configuration from envp and the file text, where a key whose environment value is
 * exactly the one prev_text gave it counts as coming from the file (so a reload sees a changed
 * file even when systemd also passed the old file as EnvironmentFile). */
int rv_app_load_config(rv_config_t *cfg, const char *const *envp, const char *text,
                       const char *prev_text, char *err, size_t errlen);

/* Put this worker's gauges (connections, requests in flight, Redis, Stripe, and with with_rss
 * the resident size, which costs a system call) into the metrics store. */
void rv_app_publish_gauges(rv_app_t *app, int with_rss);

/* Reload: load the configuration from the environment and text (NULL: no file), and apply it
 * whole, or nothing of it: returns 0, or an error with a one-line reason in err and everything
 * as it was. Keys fixed for the life of the process keep their running values. */
int rv_app_reload(rv_app_t *app, const char *text, char *err, size_t errlen);

/* rivetd --reconcile: one recovery run over the last lookback_s seconds, then exit (0 when the
 * whole range was covered). */
int rv_worker_reconcile(rv_app_t *app, uint64_t lookback_s);

/* Run one worker's loop until it stops; returns the exit status. */
int rv_worker_run(rv_app_t *app);

/* Run WORKERS processes sharing the listening sockets; returns the exit status. */
int rv_supervise(rv_app_t *app);

/* Read a whole configuration file (a regular file of at most 1 MiB: a FIFO or a device could
 * block the reader or never end). Returns a malloc'd string or NULL with a one-line reason in
 * err. It may block on a slow file system: the running daemon calls it off the loop. */
char *rv_read_config_file(const char *path, char *err, size_t errlen);

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
void rv_handle_telegram_link(rv_request_t *req);
void rv_handle_entitlements(rv_request_t *req);

/* Add CORS headers for an allowed Origin (the server's decorate hook). */
void rv_app_decorate(rv_request_t *req, int status, rv_buf_t *headers);

/* Count an answered request in the metrics (the server's on_done hook). */
void rv_app_on_done(rv_request_t *req, int status, size_t bytes, double ms);

/* Count a webhook delivery: type is the Stripe event type ("unknown" when unverified). */
void rv_app_webhook_outcome(rv_app_t *app, const char *type, const char *outcome);

#endif
