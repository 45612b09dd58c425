/* Prometheus metrics: counters and histograms keyed by a preformatted label string, rendered in
 * the text exposition format, and gauges that each worker publishes. Bounded (a family past its
 * label-set limit counts into an overflow series).
 *
 * The store is the process's own until rv_metrics_share() moves it into shared memory; the
 * supervisor does that before forking, so that every worker counts into one store and one
 * scrape of any worker shows the whole daemon: counters summed, histograms merged, gauges summed
 * over the workers. */
#ifndef RIVET_METRICS_H
#define RIVET_METRICS_H

#include <stdint.h>

#include "rivet/buf.h"

enum rv_counter {
    RV_M_HTTP_REQUESTS,    /* listener, route, status */
    RV_M_STRIPE_CALLS,     /* operation, outcome */
    RV_M_STRIPE_RETRIES,   /* operation */
    RV_M_WEBHOOK_EVENTS,   /* type, outcome */
    RV_M_REDIS_RECONNECTS, /* no labels */
    RV_M_RECONCILE_EVENTS, /* outcome */
    RV_M_RECONCILE_RUNS,   /* outcome */
    RV_M_COUNTERS
};

enum rv_histogram {
    RV_H_HTTP_DURATION,   /* listener, route */
    RV_H_STRIPE_DURATION, /* operation */
    RV_H_HISTOGRAMS
};

/* Gauges each worker sets for itself; a scrape shows their sum over the workers (the last
 * success time: their maximum). */
enum rv_gauge_id {
    RV_G_REDIS_UP,          /* workers whose Redis connection is ready */
    RV_G_REDIS_PENDING,     /* Redis commands waiting for an answer */
    RV_G_STRIPE_INFLIGHT,   /* Stripe calls in flight */
    RV_G_CONNS_PUBLIC,      /* open connections on the public listener */
    RV_G_CONNS_ADMIN,       /* open connections on the admin listener */
    RV_G_INFLIGHT,          /* requests with their handlers */
    RV_G_INPUT_HELD,        /* bytes of request input held */
    RV_G_RSS,               /* resident set size in bytes */
    RV_G_RECONCILE_LAST_OK, /* Unix time of the last complete recovery run (the newest wins) */
    RV_G_GAUGES
};

/* Most workers a shared store keeps gauges for; slot 0 is a process without a supervisor. */
#define RV_METRICS_MAX_WORKERS 64

typedef struct rv_counter_series_s rv_counter_series_t;
typedef struct rv_hist_series_s rv_hist_series_t;

/* Add delta to the series of counter c with labels (e.g. `route="health",status="200"`). */
void rv_metrics_count(int c, const char *labels, uint64_t delta);

/* Record one observation, in seconds. */
void rv_metrics_observe(int h, const char *labels, double seconds);

/* The series of counter c or histogram h with labels, found or created once: a caller that
 * records the same labels again and again keeps the handle and skips the look-up. NULL only
 * for an unknown c or h. Handles stay valid for the life of the store. */
rv_counter_series_t *rv_metrics_counter_series(int c, const char *labels);
rv_hist_series_t *rv_metrics_hist_series(int h, const char *labels);
void rv_metrics_add(rv_counter_series_t *s, uint64_t delta);
void rv_metrics_observe_series(rv_hist_series_t *s, double seconds);

/* Set gauge g of worker slot (0..RV_METRICS_MAX_WORKERS-1; 0 without a supervisor). */
void rv_metrics_gauge_set(int slot, int g, double value);

/* Forget a worker slot's gauges (the supervisor, when that worker has died). */
void rv_metrics_gauges_clear(int slot);

/* A gauge value supplied at render time. */
typedef struct rv_gauge_s {
    const char *name;
    const char *help;
    const char *labels; /* "" for none */
    double value;
    const char *type; /* NULL: "gauge"; "counter" for totals kept elsewhere */
} rv_gauge_t;

/* Append the exposition text of every counter and histogram, the workers' gauges summed, then
 * the gauges given. */
int rv_metrics_render(rv_buf_t *out, const rv_gauge_t *gauges, size_t ngauges);

/* Move the store into memory shared with processes forked later (what was counted so far comes
 * along). Returns 0 or RV_ENOMEM / RV_EIO. */
int rv_metrics_share(void);

/* Forget every series and gauge (tests). */
void rv_metrics_reset(void);

#endif
