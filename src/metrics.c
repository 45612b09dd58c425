/* Metrics storage and the Prometheus text format. Series are found by a linear scan of a small
 * fixed table per family: label sets are few (routes x statuses), and no allocation happens. */
#include "rivet/metrics.h"

#include <string.h>

#include "rivet/common.h"

#define MAX_SERIES 128
#define LABELS_MAX 160

static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                0.25,   0.5,   1,      2.5,   5,    10,    30};
#define NBOUNDS RV_ARRAY_LEN(bounds)

typedef struct counter_series_s {
    char labels[LABELS_MAX];
    uint64_t value;
} counter_series_t;

typedef struct hist_series_s {
    char labels[LABELS_MAX];
    uint64_t buckets[NBOUNDS]; /* non-cumulative; summed when rendered */
    uint64_t count;
    double sum;
} hist_series_t;

static const struct {
    const char *name;
    const char *help;
} counter_info[RV_M_COUNTERS] = {
    {"rivet_http_requests_total", "HTTP requests answered, by listener, route and status."},
    {"rivet_stripe_calls_total", "Stripe API calls finished, by operation and outcome."},
    {"rivet_stripe_retries_total", "Stripe API retries (tries after the first), by operation."},
    {"rivet_webhook_events_total", "Stripe webhook deliveries, by event type and outcome."},
};

static const struct {
    const char *name;
    const char *help;
} hist_info[RV_H_HISTOGRAMS] = {
    {"rivet_http_request_duration_seconds", "Time from request start to answer, by route."},
    {"rivet_stripe_call_duration_seconds", "Stripe call time, all tries included, by operation."},
};

static counter_series_t counters[RV_M_COUNTERS][MAX_SERIES];
static size_t ncounters[RV_M_COUNTERS];
static hist_series_t hists[RV_H_HISTOGRAMS][MAX_SERIES];
static size_t nhists[RV_H_HISTOGRAMS];

static const char overflow_labels[] = "overflow=\"true\"";

/* Find or add the series with labels in a table; the last slot is the overflow series. */
#define FIND_SERIES(table, n, labels, out)                                                    \
    do {                                                                                      \
        (out) = NULL;                                                                         \
        for (size_t i_ = 0; i_ < (n); i_++) {                                                 \
            if (strcmp((table)[i_].labels, (labels)) == 0) {                                  \
                (out) = &(table)[i_];                                                         \
                break;                                                                        \
            }                                                                                 \
        }                                                                                     \
        if ((out) == NULL) {                                                                  \
            const char *l_ = (labels);                                                        \
            if ((n) >= MAX_SERIES - 1 || strlen(l_) >= LABELS_MAX) l_ = overflow_labels;      \
            for (size_t i_ = 0; i_ < (n) && (out) == NULL; i_++)                              \
                if (strcmp((table)[i_].labels, l_) == 0) (out) = &(table)[i_];                \
            if ((out) == NULL) {                                                              \
                (out) = &(table)[(n)++];                                                      \
                strcpy((out)->labels, l_);                                                    \
            }                                                                                 \
        }                                                                                     \
    } while (0)

void rv_metrics_count(int c, const char *labels, uint64_t delta) {
    if (c < 0 || c >= RV_M_COUNTERS) return;
    counter_series_t *s;
    FIND_SERIES(counters[c], ncounters[c], labels, s);
    s->value += delta;
}

void rv_metrics_observe(int h, const char *labels, double seconds) {
    if (h < 0 || h >= RV_H_HISTOGRAMS) return;
    hist_series_t *s;
    FIND_SERIES(hists[h], nhists[h], labels, s);
    size_t b = 0;
    while (b < NBOUNDS && seconds > bounds[b]) b++;
    if (b < NBOUNDS) s->buckets[b]++;
    s->count++;
    s->sum += seconds;
}

int rv_metrics_render(rv_buf_t *out, const rv_gauge_t *gauges, size_t ngauges) {
    int rc = 0;
    for (int c = 0; rc == 0 && c < RV_M_COUNTERS; c++) {
        rc = rv_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", counter_info[c].name,
                           counter_info[c].help, counter_info[c].name);
        for (size_t i = 0; rc == 0 && i < ncounters[c]; i++)
            rc = rv_buf_printf(out, "%s{%s} %llu\n", counter_info[c].name, counters[c][i].labels,
                               (unsigned long long)counters[c][i].value);
    }
    for (int h = 0; rc == 0 && h < RV_H_HISTOGRAMS; h++) {
        const char *name = hist_info[h].name;
        rc = rv_buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, hist_info[h].help,
                           name);
        for (size_t i = 0; rc == 0 && i < nhists[h]; i++) {
            hist_series_t *s = &hists[h][i];
            const char *sep = s->labels[0] ? "," : "";
            uint64_t cum = 0;
            for (size_t b = 0; rc == 0 && b < NBOUNDS; b++) {
                cum += s->buckets[b];
                rc = rv_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, s->labels, sep,
                                   bounds[b], (unsigned long long)cum);
            }
            if (rc == 0)
                rc = rv_buf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n%s_sum{%s} %.6f\n"
                                        "%s_count{%s} %llu\n",
                                   name, s->labels, sep, (unsigned long long)s->count, name,
                                   s->labels, s->sum, name, s->labels,
                                   (unsigned long long)s->count);
        }
    }
    for (size_t g = 0; rc == 0 && g < ngauges; g++) {
        /* Gauges of one name are given together; HELP and TYPE once per name. */
        if (g == 0 || strcmp(gauges[g - 1].name, gauges[g].name) != 0)
            rc = rv_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", gauges[g].name,
                               gauges[g].help, gauges[g].name,
                               gauges[g].type ? gauges[g].type : "gauge");
        if (rc == 0)
            rc = rv_buf_printf(out, "%s%s%s%s %.17g\n", gauges[g].name,
                               gauges[g].labels[0] ? "{" : "", gauges[g].labels,
                               gauges[g].labels[0] ? "}" : "", gauges[g].value);
    }
    return rc;
}

void rv_metrics_reset(void) {
    memset(ncounters, 0, sizeof ncounters);
    memset(nhists, 0, sizeof nhists);
    memset(counters, 0, sizeof counters);
    memset(hists, 0, sizeof hists);
}
