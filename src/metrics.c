/* Metrics storage and the Prometheus text format. Series are found by a linear scan of a small
 * fixed table per family: label sets are few (routes x statuses), and no allocation happens.
 *
 * The store may live in memory shared with the workers. Values are updated with atomic adds;
 * a new series is added under the store's lock and published by storing the family's count
 * after its labels are written, so a reader never sees a series without its labels. Histogram
 * sums are kept in whole nanoseconds, which atomic integer adds can merge. */
#include "rivet/metrics.h"

#include <stdio.h>
#include <string.h>

#include "rivet/common.h"
#include "rivet/shared.h"

#define MAX_SERIES 128
#define LABELS_MAX 160

static const double bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                0.25,   0.5,   1,      2.5,   5,    10,    30};
#define NBOUNDS RV_ARRAY_LEN(bounds)

struct rv_counter_series_s {
    char labels[LABELS_MAX];
    uint64_t value;
};

struct rv_hist_series_s {
    char labels[LABELS_MAX];
    uint64_t buckets[NBOUNDS]; /* non-cumulative; summed when rendered */
    uint64_t count;
    uint64_t sum_ns;
};

static const struct {
    const char *name;
    const char *help;
} counter_info[RV_M_COUNTERS] = {
    {"rivet_http_requests_total", "HTTP requests answered, by listener, route and status."},
    {"rivet_stripe_calls_total", "Stripe API calls finished, by operation and outcome."},
    {"rivet_stripe_retries_total", "Stripe API retries (tries after the first), by operation."},
    {"rivet_webhook_events_total", "Stripe webhook deliveries, by event type and outcome."},
    {"rivet_redis_reconnects_total", "Redis reconnections."},
    {"rivet_reconcile_events_total",
     "Events read by recovery from Stripe, by outcome (recovered: no webhook had brought it)."},
    {"rivet_reconcile_runs_total", "Recovery runs, by outcome."},
};

static const struct {
    const char *name;
    const char *help;
} hist_info[RV_H_HISTOGRAMS] = {
    {"rivet_http_request_duration_seconds", "Time from request start to answer, by route."},
    {"rivet_stripe_call_duration_seconds", "Stripe call time, all tries included, by operation."},
};

static const struct {
    const char *name;
    const char *labels;
    const char *help;
} gauge_info[RV_G_GAUGES] = {
    {"rivet_redis_up", "", "Workers whose Redis connection is ready (script loaded)."},
    {"rivet_redis_pending_commands", "", "Redis commands waiting for an answer."},
    {"rivet_stripe_calls_in_flight", "", "Stripe calls in flight."},
    {"rivet_http_open_connections", "listener=\"public\"", "Open client connections."},
    {"rivet_http_open_connections", "listener=\"admin\"", "Open client connections."},
    {"rivet_http_requests_in_flight", "", "Requests with their handlers."},
    {"rivet_http_input_buffered_bytes", "", "Request input held (bodies, headers, pipelined)."},
    {"rivet_process_resident_memory_bytes", "", "Resident set size of the workers."},
    {"rivet_reconcile_last_success_timestamp_seconds", "",
     "When recovery from Stripe last completed a run (Unix time; 0: never)."},
};

typedef struct store_s {
    pthread_mutex_t lock; /* taken only to add a series */
    size_t ncounters[RV_M_COUNTERS];
    size_t nhists[RV_H_HISTOGRAMS];
    struct rv_counter_series_s counters[RV_M_COUNTERS][MAX_SERIES];
    struct rv_hist_series_s hists[RV_H_HISTOGRAMS][MAX_SERIES];
    int gauges_used;
    double gauges[RV_METRICS_MAX_WORKERS][RV_G_GAUGES];
} store_t;

static store_t own_store = {.lock = PTHREAD_MUTEX_INITIALIZER};
static store_t *st = &own_store;

static const char overflow_labels[] = "overflow=\"true\"";

/* Both series types begin with their labels, so one scan serves both tables. The index of the
 * series with labels want among the first n, or n. */
static size_t scan(const char *table, size_t stride, size_t n, const char *want) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(table + i * stride, want) == 0) return i;
    return n;
}

/* Find or add the series with labels want in a family whose published count is *np; the last
 * slot is the overflow series. */
static void *find_series(void *table, size_t stride, size_t *np, const char *want) {
    char *t = table;
    size_t n = __atomic_load_n(np, __ATOMIC_ACQUIRE);
    size_t i = scan(t, stride, n, want);
    if (i < n) return t + i * stride;
    rv_shared_lock(&st->lock);
    n = *np;
    i = scan(t, stride, n, want);
    if (i == n && (n >= MAX_SERIES - 1 || strlen(want) >= LABELS_MAX)) {
        want = overflow_labels;
        i = scan(t, stride, n, want);
    }
    if (i == n) {
        strcpy(t + n * stride, want);
        __atomic_store_n(np, n + 1, __ATOMIC_RELEASE);
    }
    rv_shared_unlock(&st->lock);
    return t + i * stride;
}

rv_counter_series_t *rv_metrics_counter_series(int c, const char *labels) {
    if (c < 0 || c >= RV_M_COUNTERS) return NULL;
    return find_series(st->counters[c], sizeof st->counters[c][0], &st->ncounters[c], labels);
}

rv_hist_series_t *rv_metrics_hist_series(int h, const char *labels) {
    if (h < 0 || h >= RV_H_HISTOGRAMS) return NULL;
    return find_series(st->hists[h], sizeof st->hists[h][0], &st->nhists[h], labels);
}

void rv_metrics_add(rv_counter_series_t *s, uint64_t delta) {
    if (s) __atomic_fetch_add(&s->value, delta, __ATOMIC_RELAXED);
}

void rv_metrics_observe_series(rv_hist_series_t *s, double seconds) {
    if (s == NULL) return;
    size_t b = 0;
    while (b < NBOUNDS && seconds > bounds[b]) b++;
    if (b < NBOUNDS) __atomic_fetch_add(&s->buckets[b], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&s->count, 1, __ATOMIC_RELAXED);
    if (seconds > 0)
        __atomic_fetch_add(&s->sum_ns, (uint64_t)(seconds * 1e9 + 0.5), __ATOMIC_RELAXED);
}

void rv_metrics_count(int c, const char *labels, uint64_t delta) {
    rv_metrics_add(rv_metrics_counter_series(c, labels), delta);
}

void rv_metrics_observe(int h, const char *labels, double seconds) {
    rv_metrics_observe_series(rv_metrics_hist_series(h, labels), seconds);
}

void rv_metrics_gauge_set(int slot, int g, double value) {
    if (slot < 0 || slot >= RV_METRICS_MAX_WORKERS || g < 0 || g >= RV_G_GAUGES) return;
    st->gauges[slot][g] = value;
    if (!st->gauges_used) st->gauges_used = 1;
}

void rv_metrics_gauges_clear(int slot) {
    if (slot < 0 || slot >= RV_METRICS_MAX_WORKERS) return;
    for (int g = 0; g < RV_G_GAUGES; g++) st->gauges[slot][g] = 0;
}

static int render_counters(rv_buf_t *out) {
    int rc = 0;
    for (int c = 0; rc == 0 && c < RV_M_COUNTERS; c++) {
        size_t n = __atomic_load_n(&st->ncounters[c], __ATOMIC_ACQUIRE);
        rc = rv_buf_printf(out, "# HELP %s %s\n# TYPE %s counter\n", counter_info[c].name,
                           counter_info[c].help, counter_info[c].name);
        for (size_t i = 0; rc == 0 && i < n; i++) {
            const rv_counter_series_t *s = &st->counters[c][i];
            const char *open = s->labels[0] ? "{" : "", *close = s->labels[0] ? "}" : "";
            rc = rv_buf_printf(out, "%s%s%s%s %llu\n", counter_info[c].name, open, s->labels, close,
                               (unsigned long long)__atomic_load_n(&s->value, __ATOMIC_RELAXED));
        }
    }
    return rc;
}

static int render_histograms(rv_buf_t *out) {
    int rc = 0;
    for (int h = 0; rc == 0 && h < RV_H_HISTOGRAMS; h++) {
        const char *name = hist_info[h].name;
        size_t n = __atomic_load_n(&st->nhists[h], __ATOMIC_ACQUIRE);
        rc = rv_buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, hist_info[h].help,
                           name);
        for (size_t i = 0; rc == 0 && i < n; i++) {
            const rv_hist_series_t *s = &st->hists[h][i];
            const char *sep = s->labels[0] ? "," : "";
            /* One consistent-enough snapshot: buckets first, the count as their total, so that
             * the +Inf bucket never disagrees with _count. */
            uint64_t cum = 0;
            for (size_t b = 0; rc == 0 && b < NBOUNDS; b++) {
                cum += __atomic_load_n(&s->buckets[b], __ATOMIC_RELAXED);
                rc = rv_buf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, s->labels, sep,
                                   bounds[b], (unsigned long long)cum);
            }
            uint64_t count = __atomic_load_n(&s->count, __ATOMIC_RELAXED);
            if (count < cum) count = cum;
            double sum = (double)__atomic_load_n(&s->sum_ns, __ATOMIC_RELAXED) / 1e9;
            if (rc == 0)
                rc = rv_buf_printf(out,
                                   "%s_bucket{%s%sle=\"+Inf\"} %llu\n%s_sum{%s} %.6f\n"
                                   "%s_count{%s} %llu\n",
                                   name, s->labels, sep, (unsigned long long)count, name, s->labels,
                                   sum, name, s->labels, (unsigned long long)count);
        }
    }
    return rc;
}

static int render_gauge(rv_buf_t *out, const rv_gauge_t *g, const rv_gauge_t *prev) {
    int rc = 0;
    /* Gauges of one name come together; HELP and TYPE once per name. */
    if (prev == NULL || strcmp(prev->name, g->name) != 0)
        rc = rv_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", g->name, g->help, g->name,
                           g->type ? g->type : "gauge");
    if (rc == 0)
        rc = rv_buf_printf(out, "%s%s%s%s %.17g\n", g->name, g->labels[0] ? "{" : "", g->labels,
                           g->labels[0] ? "}" : "", g->value);
    return rc;
}

int rv_metrics_render(rv_buf_t *out, const rv_gauge_t *gauges, size_t ngauges) {
    int rc = render_counters(out);
    if (rc == 0) rc = render_histograms(out);
    const rv_gauge_t *prev = NULL;
    rv_gauge_t sums[RV_G_GAUGES];
    for (int g = 0; rc == 0 && st->gauges_used && g < RV_G_GAUGES; g++) {
        double v = 0;
        for (int w = 0; w < RV_METRICS_MAX_WORKERS; w++) {
            double x = st->gauges[w][g];
            if (g == RV_G_RECONCILE_LAST_OK)
                v = x > v ? x : v;
            else
                v += x;
        }
        sums[g] =
            (rv_gauge_t){gauge_info[g].name, gauge_info[g].help, gauge_info[g].labels, v, NULL};
        rc = render_gauge(out, &sums[g], prev);
        prev = &sums[g];
    }
    for (size_t g = 0; rc == 0 && g < ngauges; g++) {
        rc = render_gauge(out, &gauges[g], prev);
        prev = &gauges[g];
    }
    return rc;
}

int rv_metrics_share(void) {
    if (st != &own_store) return 0;
    store_t *s = rv_shared_alloc(sizeof *s);
    if (s == NULL) return RV_ENOMEM;
    memcpy((char *)s + sizeof s->lock, (char *)&own_store + sizeof s->lock,
           sizeof *s - sizeof s->lock);
    if (rv_shared_mutex_init(&s->lock) != 0) {
        rv_shared_free(s, sizeof *s);
        return RV_EIO;
    }
    st = s;
    return 0;
}

void rv_metrics_reset(void) {
    rv_shared_lock(&st->lock);
    memset(st->ncounters, 0, sizeof st->ncounters);
    memset(st->nhists, 0, sizeof st->nhists);
    memset(st->counters, 0, sizeof st->counters);
    memset(st->hists, 0, sizeof st->hists);
    memset(st->gauges, 0, sizeof st->gauges);
    st->gauges_used = 0;
    rv_shared_unlock(&st->lock);
}
