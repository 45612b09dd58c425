/* Prometheus metrics: counters and histograms keyed by a preformatted label string, rendered in
 * the text exposition format. One set per process; bounded (a family past its label-set limit
 * counts into an overflow series). */
#ifndef RIVET_METRICS_H
#define RIVET_METRICS_H

#include <stdint.h>

#include "rivet/buf.h"

enum rv_counter {
    RV_M_HTTP_REQUESTS,      /* listener, route, status */
    RV_M_STRIPE_CALLS,       /* operation, outcome */
    RV_M_STRIPE_RETRIES,     /* operation */
    RV_M_WEBHOOK_EVENTS,     /* type, outcome */
    RV_M_COUNTERS
};

enum rv_histogram {
    RV_H_HTTP_DURATION,      /* listener, route */
    RV_H_STRIPE_DURATION,    /* operation */
    RV_H_HISTOGRAMS
};

/* Add delta to the series of counter c with labels (e.g. `route="health",status="200"`). */
void rv_metrics_count(int c, const char *labels, uint64_t delta);

/* Record one observation, in seconds. */
void rv_metrics_observe(int h, const char *labels, double seconds);

/* A gauge value supplied at render time. */
typedef struct rv_gauge_s {
    const char *name;
    const char *help;
    const char *labels; /* "" for none */
    double value;
    const char *type;   /* NULL: "gauge"; "counter" for totals kept elsewhere */
} rv_gauge_t;

/* Append the exposition text of every counter and histogram, then the gauges given. */
int rv_metrics_render(rv_buf_t *out, const rv_gauge_t *gauges, size_t ngauges);

/* Forget every series (tests). */
void rv_metrics_reset(void);

#endif
