/* Unit tests of the metrics store and its Prometheus text rendering: HELP and TYPE once per
 * family and before its samples, counters per label set, cumulative histogram buckets whose +Inf
 * bucket equals the count, sums, the overflow series of a family past its label-set limit, gauges
 * with their optional type, render errors, and reset. The exposition is parsed, not compared as
 * a whole, so every check names the sample it is about. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/metrics.h"

#define REQ_LABELS "listener=\"public\",route=\"health\",status=\"200\""

/* ---- a small exposition parser --------------------------------------------------------------- */

typedef struct sample_s {
    char key[700]; /* name{labels} as written */
    char name[128];
    double value;
} sample_t;

typedef struct expo_s {
    char *text;
    sample_t *s;
    size_t n;
    char types[64][128]; /* family names with their TYPE, in order */
    char kinds[64][16];
    size_t ntypes;
} expo_t;

static int family_index(const expo_t *e, const char *name) {
    for (size_t i = 0; i < e->ntypes; i++)
        if (strcmp(e->types[i], name) == 0) return (int)i;
    return -1;
}

/* The family a sample belongs to: its name, or for a histogram's _bucket/_sum/_count series the
 * name without the suffix. */
static int sample_family(const expo_t *e, const char *name) {
    int i = family_index(e, name);
    if (i >= 0) return i;
    static const char *const sfx[] = {"_bucket", "_sum", "_count"};
    size_t nl = strlen(name);
    for (size_t k = 0; k < RV_ARRAY_LEN(sfx); k++) {
        size_t sl = strlen(sfx[k]);
        if (nl <= sl || strcmp(name + nl - sl, sfx[k]) != 0) continue;
        char base[128];
        snprintf(base, sizeof base, "%.*s", (int)(nl - sl), name);
        i = family_index(e, base);
        if (i >= 0 && strcmp(e->kinds[i], "histogram") == 0) return i;
    }
    return -1;
}

/* Parse text and check the format rules every exposition must keep: each line a comment or a
 * sample `name[{labels}] value`; HELP and TYPE at most once per family, TYPE before the family's
 * samples; no sample key twice. */
static void expo_parse(expo_t *e, const char *text) {
    memset(e, 0, sizeof *e);
    e->text = strdup(text);
    assert_non_null(e->text);
    size_t cap = 64;
    e->s = calloc(cap, sizeof *e->s);
    assert_non_null(e->s);
    char helps[64][128];
    size_t nhelps = 0;
    const char *line = text;
    while (*line) {
        const char *eol = strchr(line, '\n');
        if (eol == NULL) fail_msg("the exposition does not end with a newline: '%s'", line);
        size_t len = (size_t)(eol - line);
        char l[700];
        if (len >= sizeof l) fail_msg("line too long: %.80s...", line);
        memcpy(l, line, len);
        l[len] = '\0';
        line = eol + 1;
        if (strncmp(l, "# HELP ", 7) == 0 || strncmp(l, "# TYPE ", 7) == 0) {
            char name[128], rest[256];
            if (sscanf(l + 7, "%127s %255[^\n]", name, rest) != 2)
                fail_msg("comment without name and text: '%s'", l);
            if (l[2] == 'H') {
                for (size_t i = 0; i < nhelps; i++)
                    if (strcmp(helps[i], name) == 0) fail_msg("HELP twice for %s", name);
                assert_true(nhelps < RV_ARRAY_LEN(helps));
                snprintf(helps[nhelps++], sizeof helps[0], "%s", name);
            } else {
                if (family_index(e, name) >= 0) fail_msg("TYPE twice for %s", name);
                if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram"))
                    fail_msg("unknown TYPE '%s' for %s", rest, name);
                for (size_t i = 0; i < e->n; i++)
                    if (strcmp(e->s[i].name, name) == 0)
                        fail_msg("TYPE of %s after its samples", name);
                assert_true(e->ntypes < RV_ARRAY_LEN(e->types));
                snprintf(e->types[e->ntypes], sizeof e->types[0], "%s", name);
                snprintf(e->kinds[e->ntypes++], sizeof e->kinds[0], "%.15s", rest);
            }
            continue;
        }
        if (l[0] == '#') fail_msg("unexpected comment: '%s'", l);
        char *sp = strrchr(l, ' ');
        if (sp == NULL || sp == l) fail_msg("sample without a value: '%s'", l);
        *sp = '\0';
        char *end;
        double v = strtod(sp + 1, &end);
        if (*end != '\0' || end == sp + 1) fail_msg("sample value is not a number: '%s'", sp + 1);
        size_t nl = strcspn(l, "{");
        if (nl == 0 || nl >= sizeof e->s[0].name) fail_msg("bad sample name: '%s'", l);
        if (l[nl] == '{' && l[strlen(l) - 1] != '}') fail_msg("unclosed labels: '%s'", l);
        if (e->n == cap) {
            cap *= 2;
            sample_t *ns = realloc(e->s, cap * sizeof *ns);
            assert_non_null(ns);
            e->s = ns;
        }
        sample_t *s = &e->s[e->n];
        snprintf(s->key, sizeof s->key, "%s", l);
        snprintf(s->name, sizeof s->name, "%.*s", (int)nl, l);
        s->value = v;
        for (size_t i = 0; i < e->n; i++)
            if (strcmp(e->s[i].key, s->key) == 0) fail_msg("sample %s twice", s->key);
        if (sample_family(e, s->name) < 0) fail_msg("sample %s before or without TYPE", s->key);
        e->n++;
    }
}

static void expo_free(expo_t *e) {
    free(e->text);
    free(e->s);
    memset(e, 0, sizeof *e);
}

/* The sample with exactly this key, or NULL. */
static const sample_t *find(const expo_t *e, const char *key) {
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->s[i].key, key) == 0) return &e->s[i];
    return NULL;
}

static double value_of(const expo_t *e, const char *key) {
    const sample_t *s = find(e, key);
    if (s == NULL) fail_msg("no sample %s in:\n%s", key, e->text);
    return s->value;
}

/* How many samples have this name and contain needle in their key (NULL: any). */
static size_t count_samples(const expo_t *e, const char *name, const char *needle) {
    size_t n = 0;
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->s[i].name, name) == 0 && (needle == NULL || strstr(e->s[i].key, needle))) n++;
    return n;
}

static size_t count_lines(const char *text, const char *line) {
    size_t n = 0, ll = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p += ll)
        if ((p == text || p[-1] == '\n') && p[ll] == '\n') n++;
    return n;
}

static void render(expo_t *e, const rv_gauge_t *g, size_t ng) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_metrics_render(&b, g, ng), 0);
    assert_non_null(b.data);
    expo_parse(e, b.data);
    rv_buf_free(&b);
}

static int setup(void **state) {
    rv_metrics_reset();
    return 0;
}

/* ---- counters -------------------------------------------------------------------------------- */

static void counter_families_typed_once(void **state) {
    expo_t e;
    render(&e, NULL, 0);
    /* Every family is described even before it has a sample. */
    static const char *const counters[] = {"rivet_http_requests_total", "rivet_stripe_calls_total",
                                           "rivet_stripe_retries_total",
                                           "rivet_webhook_events_total"};
    for (size_t i = 0; i < RV_ARRAY_LEN(counters); i++) {
        char l[160];
        snprintf(l, sizeof l, "# TYPE %s counter", counters[i]);
        assert_int_equal(count_lines(e.text, l), 1);
        snprintf(l, sizeof l, "# HELP %s ", counters[i]);
        const char *h = strstr(e.text, l);
        if (h == NULL) fail_msg("no HELP for %s", counters[i]);
        assert_true(h[strlen(l)] != '\n'); /* a text, not an empty help */
    }
    assert_int_equal(count_lines(e.text, "# TYPE rivet_http_request_duration_seconds histogram"),
                     1);
    assert_int_equal(count_lines(e.text, "# TYPE rivet_stripe_call_duration_seconds histogram"), 1);
    assert_int_equal(e.n, 0);
    expo_free(&e);
}

static void counter_values(void **state) {
    for (int i = 0; i < 3; i++) rv_metrics_count(RV_M_HTTP_REQUESTS, REQ_LABELS, 1);
    rv_metrics_count(RV_M_HTTP_REQUESTS, REQ_LABELS, 5);
    rv_metrics_count(RV_M_STRIPE_RETRIES, "operation=\"checkout.sessions.create\"", 2);
    expo_t e;
    render(&e, NULL, 0);
    assert_true(value_of(&e, "rivet_http_requests_total{" REQ_LABELS "}") == 8);
    assert_true(
        value_of(&e, "rivet_stripe_retries_total{operation=\"checkout.sessions.create\"}") == 2);
    /* One series per label set: nothing else appears. */
    assert_int_equal(e.n, 2);
    /* HELP and TYPE still once each with samples present, and before them. */
    assert_int_equal(count_lines(e.text, "# TYPE rivet_http_requests_total counter"), 1);
    const char *type = strstr(e.text, "# TYPE rivet_http_requests_total counter");
    const char *sample = strstr(e.text, "\nrivet_http_requests_total{");
    assert_non_null(sample);
    assert_true(type < sample);
    expo_free(&e);
}

static void counter_large_values_exact(void **state) {
    /* Counters are integers: a large total must not turn into a rounded float. */
    rv_metrics_count(RV_M_WEBHOOK_EVENTS, "type=\"a\",outcome=\"b\"", 9007199254740993ULL);
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_metrics_render(&b, NULL, 0), 0);
    assert_non_null(strstr(b.data, "\nrivet_webhook_events_total{type=\"a\",outcome=\"b\"} "
                                   "9007199254740993\n"));
    rv_buf_free(&b);
}

static void label_sets_kept_apart(void **state) {
    rv_metrics_count(RV_M_HTTP_REQUESTS, "listener=\"public\",route=\"health\",status=\"200\"", 3);
    rv_metrics_count(RV_M_HTTP_REQUESTS, "listener=\"public\",route=\"none\",status=\"404\"", 1);
    rv_metrics_count(RV_M_HTTP_REQUESTS, "listener=\"admin\",route=\"health\",status=\"200\"", 2);
    /* A label value that is a prefix of another is still its own series. */
    rv_metrics_count(RV_M_WEBHOOK_EVENTS, "type=\"invoice\",outcome=\"ok\"", 1);
    rv_metrics_count(RV_M_WEBHOOK_EVENTS, "type=\"invoice.paid\",outcome=\"ok\"", 4);
    /* The same labels under another family do not share its value. */
    rv_metrics_count(RV_M_STRIPE_CALLS, "listener=\"public\",route=\"health\",status=\"200\"", 7);
    expo_t e;
    render(&e, NULL, 0);
    assert_true(value_of(&e, "rivet_http_requests_total{listener=\"public\",route=\"health\","
                             "status=\"200\"}") == 3);
    assert_true(value_of(&e, "rivet_http_requests_total{listener=\"public\",route=\"none\","
                             "status=\"404\"}") == 1);
    assert_true(value_of(&e, "rivet_http_requests_total{listener=\"admin\",route=\"health\","
                             "status=\"200\"}") == 2);
    assert_true(value_of(&e, "rivet_webhook_events_total{type=\"invoice\",outcome=\"ok\"}") == 1);
    assert_true(value_of(&e, "rivet_webhook_events_total{type=\"invoice.paid\",outcome=\"ok\"}") ==
                4);
    assert_true(value_of(&e, "rivet_stripe_calls_total{listener=\"public\",route=\"health\","
                             "status=\"200\"}") == 7);
    assert_int_equal(e.n, 6);
    expo_free(&e);
}

static void bad_family_ignored(void **state) {
    rv_metrics_count(-1, "a=\"1\"", 1);
    rv_metrics_count(RV_M_COUNTERS, "a=\"1\"", 1);
    rv_metrics_observe(-1, "a=\"1\"", 1);
    rv_metrics_observe(RV_H_HISTOGRAMS, "a=\"1\"", 1);
    expo_t e;
    render(&e, NULL, 0);
    assert_int_equal(e.n, 0);
    expo_free(&e);
}

/* ---- histograms ------------------------------------------------------------------------------ */

/* Check one histogram series: cumulative buckets with increasing bounds, each counting the
 * observations at or below its bound; +Inf equal to _count; _sum. */
static void check_histogram(const expo_t *e, const char *name, const char *labels,
                            const double *obs, size_t nobs) {
    char prefix[300];
    snprintf(prefix, sizeof prefix, "%s_bucket{%s%sle=\"", name, labels, labels[0] ? "," : "");
    size_t pl = strlen(prefix);
    double prev_le = -INFINITY, prev_count = -1;
    size_t nbuckets = 0;
    int saw_inf = 0;
    for (size_t i = 0; i < e->n; i++) {
        const sample_t *s = &e->s[i];
        if (strncmp(s->key, prefix, pl) != 0) continue;
        if (saw_inf) fail_msg("%s: a bucket after +Inf", s->key);
        const char *le = s->key + pl;
        double bound;
        if (strncmp(le, "+Inf\"}", 6) == 0) {
            bound = INFINITY;
            saw_inf = 1;
        } else {
            char *end;
            bound = strtod(le, &end);
            if (end == le || strcmp(end, "\"}") != 0) fail_msg("%s: bad le", s->key);
        }
        if (!(bound > prev_le)) fail_msg("%s: le not increasing", s->key);
        size_t expect = 0;
        for (size_t k = 0; k < nobs; k++) expect += obs[k] <= bound;
        if (s->value != (double)expect)
            fail_msg("%s is %g, expected %zu (cumulative)", s->key, s->value, expect);
        if (s->value < prev_count) fail_msg("%s: bucket counts decrease", s->key);
        prev_le = bound;
        prev_count = s->value;
        nbuckets++;
    }
    if (!saw_inf) fail_msg("%s{%s}: no +Inf bucket", name, labels);
    assert_true(nbuckets >= 5); /* a useful spread of bounds, not just +Inf */
    char key[300];
    snprintf(key, sizeof key, "%s_count{%s}", name, labels);
    double count = value_of(e, key);
    assert_true(count == (double)nobs);
    assert_true(prev_count == count); /* +Inf equals the count */
    snprintf(key, sizeof key, "%s_sum{%s}", name, labels);
    double sum = 0;
    for (size_t k = 0; k < nobs; k++) sum += obs[k];
    double got = value_of(e, key);
    if (fabs(got - sum) > 1e-5) fail_msg("%s is %.9f, expected %.9f", key, got, sum);
}

static void histogram_buckets_cumulative(void **state) {
    /* Values below, on and between bounds, and beyond the largest finite bound. */
    static const double obs[] = {0.0001, 0.0005, 0.001, 0.003, 0.2, 0.2, 0.7, 45.0};
    const char *labels = "listener=\"public\",route=\"health\"";
    for (size_t i = 0; i < RV_ARRAY_LEN(obs); i++)
        rv_metrics_observe(RV_H_HTTP_DURATION, labels, obs[i]);
    expo_t e;
    render(&e, NULL, 0);
    check_histogram(&e, "rivet_http_request_duration_seconds", labels, obs, RV_ARRAY_LEN(obs));
    /* The largest observation is counted only in +Inf. */
    assert_true(value_of(&e, "rivet_http_request_duration_seconds_bucket{listener=\"public\","
                             "route=\"health\",le=\"+Inf\"}") == 8);
    expo_free(&e);
}

static void histogram_label_sets_apart(void **state) {
    static const double a[] = {0.002, 0.002, 0.002};
    static const double b[] = {1.5};
    static const double c[] = {0.04, 12};
    for (size_t i = 0; i < RV_ARRAY_LEN(a); i++)
        rv_metrics_observe(RV_H_HTTP_DURATION, "listener=\"public\",route=\"health\"", a[i]);
    rv_metrics_observe(RV_H_HTTP_DURATION, "listener=\"public\",route=\"checkout_create\"", b[0]);
    for (size_t i = 0; i < RV_ARRAY_LEN(c); i++)
        rv_metrics_observe(RV_H_STRIPE_DURATION, "operation=\"checkout.sessions.create\"", c[i]);
    expo_t e;
    render(&e, NULL, 0);
    check_histogram(&e, "rivet_http_request_duration_seconds",
                    "listener=\"public\",route=\"health\"", a, RV_ARRAY_LEN(a));
    check_histogram(&e, "rivet_http_request_duration_seconds",
                    "listener=\"public\",route=\"checkout_create\"", b, RV_ARRAY_LEN(b));
    check_histogram(&e, "rivet_stripe_call_duration_seconds",
                    "operation=\"checkout.sessions.create\"", c, RV_ARRAY_LEN(c));
    assert_int_equal(count_samples(&e, "rivet_http_request_duration_seconds_count", NULL), 2);
    assert_int_equal(count_samples(&e, "rivet_stripe_call_duration_seconds_count", NULL), 1);
    expo_free(&e);
}

/* ---- the overflow series --------------------------------------------------------------------- */

#define OVERFLOW "overflow=\"true\""
#define DISTINCT 300 /* far more label sets than a family keeps */

static void counter_overflow(void **state) {
    char labels[64];
    for (int i = 0; i < DISTINCT; i++) {
        snprintf(labels, sizeof labels, "route=\"r%d\"", i);
        rv_metrics_count(RV_M_HTTP_REQUESTS, labels, 1);
    }
    expo_t e;
    render(&e, NULL, 0);
    size_t own = count_samples(&e, "rivet_http_requests_total", "route=\"r");
    double over = value_of(&e, "rivet_http_requests_total{" OVERFLOW "}");
    assert_int_equal(count_samples(&e, "rivet_http_requests_total", OVERFLOW), 1);
    /* Bounded, yet room for a real set of routes x statuses. */
    assert_in_range(own, 64, DISTINCT - 1);
    /* No count is lost: what has no series of its own is in the overflow series. */
    assert_true(over == (double)(DISTINCT - own));
    /* The first label sets kept their series; the later ones have none. */
    assert_non_null(find(&e, "rivet_http_requests_total{route=\"r0\"}"));
    snprintf(labels, sizeof labels, "rivet_http_requests_total{route=\"r%d\"}", DISTINCT - 1);
    assert_null(find(&e, labels));
    expo_free(&e);

    /* A label set with a series keeps counting into it; a new one counts as overflow. */
    rv_metrics_count(RV_M_HTTP_REQUESTS, "route=\"r0\"", 10);
    rv_metrics_count(RV_M_HTTP_REQUESTS, "route=\"brand-new\"", 2);
    render(&e, NULL, 0);
    assert_true(value_of(&e, "rivet_http_requests_total{route=\"r0\"}") == 11);
    assert_true(value_of(&e, "rivet_http_requests_total{" OVERFLOW "}") == over + 2);
    assert_null(find(&e, "rivet_http_requests_total{route=\"brand-new\"}"));
    assert_int_equal(count_samples(&e, "rivet_http_requests_total", OVERFLOW), 1);
    /* Other families are untouched by this one's overflow. */
    assert_int_equal(count_samples(&e, "rivet_webhook_events_total", NULL), 0);
    rv_metrics_count(RV_M_WEBHOOK_EVENTS, "type=\"x\",outcome=\"y\"", 1);
    expo_free(&e);
    render(&e, NULL, 0);
    assert_true(value_of(&e, "rivet_webhook_events_total{type=\"x\",outcome=\"y\"}") == 1);
    expo_free(&e);
}

static void histogram_overflow(void **state) {
    char labels[64];
    for (int i = 0; i < DISTINCT; i++) {
        snprintf(labels, sizeof labels, "route=\"r%d\"", i);
        rv_metrics_observe(RV_H_HTTP_DURATION, labels, 0.003);
    }
    expo_t e;
    render(&e, NULL, 0);
    size_t own = count_samples(&e, "rivet_http_request_duration_seconds_count", "route=\"r");
    assert_in_range(own, 64, DISTINCT - 1);
    size_t nover = DISTINCT - own;
    double obs[DISTINCT];
    for (size_t i = 0; i < nover; i++) obs[i] = 0.003;
    check_histogram(&e, "rivet_http_request_duration_seconds", OVERFLOW, obs, nover);
    expo_free(&e);
}

static void overlong_labels_overflow(void **state) {
    /* A label string too long to store is counted, as overflow, not dropped or cut. */
    char labels[400];
    memset(labels, 0, sizeof labels);
    strcpy(labels, "route=\"");
    memset(labels + 7, 'x', 300);
    strcat(labels, "\"");
    rv_metrics_count(RV_M_HTTP_REQUESTS, labels, 3);
    rv_metrics_count(RV_M_HTTP_REQUESTS, "route=\"short\"", 1);
    expo_t e;
    render(&e, NULL, 0);
    assert_true(value_of(&e, "rivet_http_requests_total{" OVERFLOW "}") == 3);
    assert_true(value_of(&e, "rivet_http_requests_total{route=\"short\"}") == 1);
    assert_int_equal(count_samples(&e, "rivet_http_requests_total", NULL), 2);
    assert_null(strstr(e.text, "xxxxxxxxxx"));
    expo_free(&e);
}

/* ---- gauges ---------------------------------------------------------------------------------- */

static void gauges_rendered(void **state) {
    rv_metrics_count(RV_M_HTTP_REQUESTS, REQ_LABELS, 1);
    const rv_gauge_t g[] = {
        {"rivet_build_info", "Build information.", "version=\"1.2.3\"", 1, NULL},
        {"rivet_redis_up", "Redis is up.", "", 0, NULL},
        {"rivet_kept_elsewhere_total", "Reconnections.", "", 4, "counter"},
        {"rivet_http_open_connections", "Open.", "listener=\"public\"", 12, NULL},
        {"rivet_http_open_connections", "Open.", "listener=\"admin\"", 1, NULL},
        {"rivet_process_resident_memory_bytes", "RSS.", "", 123456789012.0, NULL},
        {"rivet_ratio", "A fraction.", "", 0.25, NULL},
    };
    expo_t e;
    render(&e, g, RV_ARRAY_LEN(g));
    assert_int_equal(count_lines(e.text, "# TYPE rivet_build_info gauge"), 1);
    assert_int_equal(count_lines(e.text, "# TYPE rivet_redis_up gauge"), 1);
    /* The optional type names totals kept elsewhere. */
    assert_int_equal(count_lines(e.text, "# TYPE rivet_kept_elsewhere_total counter"), 1);
    assert_int_equal(count_lines(e.text, "# HELP rivet_kept_elsewhere_total Reconnections."), 1);
    /* Two label sets of one gauge: one HELP and one TYPE. */
    assert_int_equal(count_lines(e.text, "# TYPE rivet_http_open_connections gauge"), 1);
    assert_int_equal(count_lines(e.text, "# HELP rivet_http_open_connections Open."), 1);
    assert_true(value_of(&e, "rivet_build_info{version=\"1.2.3\"}") == 1);
    assert_true(value_of(&e, "rivet_redis_up") == 0);
    assert_true(value_of(&e, "rivet_kept_elsewhere_total") == 4);
    assert_true(value_of(&e, "rivet_http_open_connections{listener=\"public\"}") == 12);
    assert_true(value_of(&e, "rivet_http_open_connections{listener=\"admin\"}") == 1);
    assert_true(value_of(&e, "rivet_ratio") == 0.25);
    /* Whole byte counts are written whole, not in exponent form. */
    assert_int_equal(count_lines(e.text, "rivet_process_resident_memory_bytes 123456789012"), 1);
    /* Stored families still come first and keep their values. */
    assert_true(value_of(&e, "rivet_http_requests_total{" REQ_LABELS "}") == 1);
    assert_true(strstr(e.text, "rivet_http_requests_total{") < strstr(e.text, "rivet_build_info{"));
    expo_free(&e);
}

static void render_error_reported(void **state) {
    rv_metrics_count(RV_M_HTTP_REQUESTS, REQ_LABELS, 1);
    rv_buf_t b = RV_BUF_INIT;
    b.limit = 100; /* far less than the exposition */
    assert_true(rv_metrics_render(&b, NULL, 0) < 0);
    rv_buf_free(&b);
}

/* ---- reset ----------------------------------------------------------------------------------- */

static void reset_forgets_everything(void **state) {
    rv_metrics_count(RV_M_HTTP_REQUESTS, REQ_LABELS, 5);
    rv_metrics_count(RV_M_WEBHOOK_EVENTS, "type=\"unknown\",outcome=\"rejected\"", 2);
    rv_metrics_observe(RV_H_HTTP_DURATION, "listener=\"public\",route=\"health\"", 0.01);
    char labels[64];
    for (int i = 0; i < DISTINCT; i++) {
        snprintf(labels, sizeof labels, "route=\"r%d\"", i);
        rv_metrics_count(RV_M_STRIPE_CALLS, labels, 1);
    }
    rv_metrics_reset();
    expo_t e;
    render(&e, NULL, 0);
    assert_int_equal(e.n, 0);
    assert_int_equal(count_lines(e.text, "# TYPE rivet_http_requests_total counter"), 1);
    expo_free(&e);

    /* Counting starts again from zero, and the family has its full room again. */
    rv_metrics_count(RV_M_HTTP_REQUESTS, REQ_LABELS, 1);
    rv_metrics_observe(RV_H_HTTP_DURATION, "listener=\"public\",route=\"health\"", 0.02);
    rv_metrics_count(RV_M_STRIPE_CALLS, "route=\"late\"", 1);
    render(&e, NULL, 0);
    assert_true(value_of(&e, "rivet_http_requests_total{" REQ_LABELS "}") == 1);
    static const double one[] = {0.02};
    check_histogram(&e, "rivet_http_request_duration_seconds",
                    "listener=\"public\",route=\"health\"", one, 1);
    assert_true(value_of(&e, "rivet_stripe_calls_total{route=\"late\"}") == 1);
    assert_null(find(&e, "rivet_stripe_calls_total{" OVERFLOW "}"));
    expo_free(&e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(counter_families_typed_once, setup),
        cmocka_unit_test_setup(counter_values, setup),
        cmocka_unit_test_setup(counter_large_values_exact, setup),
        cmocka_unit_test_setup(label_sets_kept_apart, setup),
        cmocka_unit_test_setup(bad_family_ignored, setup),
        cmocka_unit_test_setup(histogram_buckets_cumulative, setup),
        cmocka_unit_test_setup(histogram_label_sets_apart, setup),
        cmocka_unit_test_setup(counter_overflow, setup),
        cmocka_unit_test_setup(histogram_overflow, setup),
        cmocka_unit_test_setup(overlong_labels_overflow, setup),
        cmocka_unit_test_setup(gauges_rendered, setup),
        cmocka_unit_test_setup(render_error_reported, setup),
        cmocka_unit_test_setup(reset_forgets_everything, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
