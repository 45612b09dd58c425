/* End-to-end tests of the routes that call Stripe: rivetd and the fake Stripe run as real
 * processes on free loopback ports, the tests speak HTTP to rivetd and then read the fake's log
 * of what it received. Covered: the Checkout Session parameters and headers on the wire,
 * validation (and that nothing reaches Stripe when it fails), retries with one Idempotency-Key,
 * Stripe down, deadlines, clients that leave mid-call, a thousand calls in flight beside
 * /health, the success page, the billing portal's authentication, CORS, and rate limiting. Every
 * wait is bounded; every daemon is stopped with SIGTERM and must exit cleanly, and its log must
 * never contain a secret. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "harness.h"
#include "rivet/common.h"

#define TO            10000 /* ms: the longest any single answer may take in these tests */
#define APP_URL       "https://app.rivet.test"
#define BOT           "rivet_test_bot"
#define EMAIL         "jane.doe@example.com"
#define CHECKOUT_BODY "{\"email\":\"" EMAIL "\",\"tier\":\"pro\"}"
#define JSON_CT       "Content-Type: application/json\r\n"
#define SESSIONS      "/v1/checkout/sessions"
#define PORTAL        "/v1/billing_portal/sessions"

static th_proc_t fake;
static th_proc_t rivetd;
static char api_base_env[64];

/* ---- small utilities ---------------------------------------------------------------------- */

static void pause_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) continue;
}

/* A whole file as a NUL-terminated malloc'd string (caller frees), or NULL. */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) return NULL;
    size_t len = 0, cap = 65536;
    char *data = malloc(cap);
    size_t n;
    while (data != NULL && (n = fread(data + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 4096) {
            char *nd = realloc(data, cap * 2);
            if (nd == NULL) {
                free(data);
                data = NULL;
                break;
            }
            data = nd;
            cap *= 2;
        }
    }
    fclose(f);
    if (data != NULL) data[len] = '\0';
    return data;
}

/* 1 when some line of rivetd's log contains both a and b (b may be NULL). */
static int log_line_has(const char *a, const char *b) {
    char *log = slurp(rivetd.log_path);
    if (log == NULL) return 0;
    int found = 0;
    for (char *line = log; line != NULL && *line && !found;) {
        char *nl = strchr(line, '\n');
        if (nl != NULL) *nl = '\0';
        found = strstr(line, a) != NULL && (b == NULL || strstr(line, b) != NULL);
        line = nl != NULL ? nl + 1 : NULL;
    }
    free(log);
    return found;
}

/* ---- processes ---------------------------------------------------------------------------- */

/* Start rivetd against the fake with the tests' baseline settings, then env on top (later
 * entries win; "K=" removes K). */
static void start_rivetd(const char *const env[]) {
    const char *all[48];
    size_t k = 0;
    all[k++] = api_base_env;
    all[k++] = "APP_URL=" APP_URL;
    all[k++] = "TELEGRAM_BOT=" BOT;
    all[k++] = "RATE_LIMIT_PER_MIN=0";
    all[k++] = "STRIPE_API_VERSION=";
    all[k++] = "TRUST_PROXY=";
    all[k++] = "REDIRECT_ORIGINS=";
    all[k++] = "CORS_ORIGINS=";
    all[k++] = "STRIPE_TIMEOUT_MS=";
    all[k++] = "STRIPE_MAX_RETRIES=";
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        if (k + 1 >= RV_ARRAY_LEN(all)) fail_msg("too many settings");
        all[k++] = env[i];
    }
    all[k] = NULL;
    if (th_rivetd_start(&rivetd, all) != 0) fail_msg("rivetd did not start");
}

/* Any text that would reveal a secret if it showed up in an answer or a log. */
static const char *const secrets[] = {TH_STRIPE_KEY, "rivet_integration", TH_API_TOKEN};

static void assert_no_secret(const char *what, const char *text) {
    for (size_t i = 0; i < RV_ARRAY_LEN(secrets); i++)
        if (text != NULL && strstr(text, secrets[i]) != NULL)
            fail_msg("%s contains the secret \"%s\"", what, secrets[i]);
}

/* Per-test teardown: stop rivetd with SIGTERM; it must exit with status 0 (a sanitizer report
 * makes it non-zero) and its log must hold no secret. */
static int stop_rivetd(void **state) {
    if (rivetd.pid <= 0) return 0;
    char *log = slurp(rivetd.log_path);
    int st = th_stop(&rivetd, SIGTERM, 10000);
    if (log != NULL) {
        for (size_t i = 0; i < RV_ARRAY_LEN(secrets); i++) {
            if (strstr(log, secrets[i]) != NULL) {
                fprintf(stderr, "rivetd's log contains the secret \"%s\"\n", secrets[i]);
                st = -1;
            }
        }
        free(log);
    }
    if (st != 0) fprintf(stderr, "rivetd exited with status %d\n", st);
    return st == 0 ? 0 : -1;
}

/* ---- HTTP to rivetd ------------------------------------------------------------------------- */

static void request(const char *method, const char *path, const char *headers, const char *body,
                    th_response_t *r) {
    if (th_request(rivetd.port, method, path, headers, body, r) != 0)
        fail_msg("%s %s: no complete answer from rivetd", method, path);
}

/* POST a JSON body to /api/checkout/create with optional extra header lines. */
static void checkout(const char *headers, const char *body, th_response_t *r) {
    char h[1024];
    snprintf(h, sizeof h, JSON_CT "%s", headers ? headers : "");
    request("POST", "/api/checkout/create", h, body, r);
}

static void assert_status(const th_response_t *r, int status) {
    if (r->status != status)
        fail_msg("status %d, expected %d; body: %s", r->status, status, r->body ? r->body : "");
}

/* The body as JSON (caller frees). */
static cJSON *body_json(const th_response_t *r) {
    cJSON *j = cJSON_ParseWithLength(r->body, r->body_len);
    if (j == NULL) fail_msg("body is not JSON: %s", r->body ? r->body : "");
    return j;
}

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* The answer is status with {"detail": "<non-empty string>"}. */
static void assert_detail(const th_response_t *r, int status) {
    assert_status(r, status);
    cJSON *j = body_json(r);
    const char *d = jstr(j, "detail");
    if (d == NULL || d[0] == '\0') fail_msg("no detail string in %s", r->body);
    cJSON_Delete(j);
}

/* A checkout that must succeed; its session id goes to sid. */
static void checkout_ok(const char *body, char *sid, size_t sidlen) {
    th_response_t r;
    checkout(NULL, body, &r);
    assert_status(&r, 200);
    cJSON *j = body_json(&r);
    const char *url = jstr(j, "checkout_url");
    const char *id = jstr(j, "session_id");
    if (url == NULL || strncmp(url, "https://", 8) != 0) fail_msg("checkout_url in %s", r.body);
    if (id == NULL || strncmp(id, "cs_test_", 8) != 0) fail_msg("session_id in %s", r.body);
    /* The URL is the one Stripe gave for this very session. */
    assert_non_null(strstr(url, id));
    snprintf(sid, sidlen, "%s", id);
    cJSON_Delete(j);
    th_response_free(&r);
}

/* ---- the fake's control API and request log ------------------------------------------------- */

static void fake_post(const char *path, const char *json) {
    th_response_t r;
    if (th_request(fake.port, "POST", path, JSON_CT, json, &r) != 0)
        fail_msg("fake: POST %s: no answer", path);
    int status = r.status;
    if (status != 200) fail_msg("fake: POST %s: %d %s", path, status, r.body);
    th_response_free(&r);
}

static void fake_config(const char *json) { fake_post("/_fake/config", json); }

static int fake_setup(void **state) {
    fake_post("/_fake/reset", "{}");
    return 0;
}

/* The API requests the fake received, oldest first (caller frees). */
static cJSON *fake_log(void) {
    th_response_t r;
    if (th_request(fake.port, "GET", "/_fake/requests", NULL, NULL, &r) != 0)
        fail_msg("fake: GET /_fake/requests: no answer");
    assert_int_equal(r.status, 200);
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    th_response_free(&r);
    if (!cJSON_IsArray(j)) fail_msg("fake: request log is not a JSON array");
    return j;
}

/* How many API requests the fake received with method and a path starting with prefix (either
 * may be NULL for any). */
static int fake_count(const char *method, const char *prefix) {
    cJSON *log = fake_log();
    int n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, log) {
        const char *m = jstr(e, "method"), *p = jstr(e, "path");
        if ((method == NULL || (m && !strcmp(m, method))) &&
            (prefix == NULL || (p && !strncmp(p, prefix, strlen(prefix)))))
            n++;
    }
    cJSON_Delete(log);
    return n;
}

static int fake_total(void) { return fake_count(NULL, NULL); }

/* A request header as the fake logged it (names in lower case), or NULL. */
static const char *req_header(const cJSON *req, const char *name) {
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(req, "headers");
    return jstr(h, name);
}

/* ---- form bodies as sent on the wire ------------------------------------------------------- */

typedef struct kv_s {
    char key[128];
    char val[2200];
} kv_t;

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode application/x-www-form-urlencoded [s, s+n) into out (bounded). */
static void form_unescape(const char *s, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++) {
        if (s[i] == '+') {
            out[k++] = ' ';
        } else if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            out[k++] = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            i += 2;
        } else {
            out[k++] = s[i];
        }
    }
    out[k] = '\0';
}

static size_t form_decode(const char *body, kv_t *out, size_t max) {
    size_t n = 0;
    const char *p = body;
    while (*p && n < max) {
        const char *amp = strchr(p, '&');
        size_t len = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        size_t kl = eq ? (size_t)(eq - p) : len;
        form_unescape(p, kl, out[n].key, sizeof out[n].key);
        if (eq)
            form_unescape(eq + 1, len - kl - 1, out[n].val, sizeof out[n].val);
        else
            out[n].val[0] = '\0';
        n++;
        p += len;
        if (*p == '&') p++;
    }
    return n;
}

/* The raw form body of req holds exactly the pairs in want (n of them), each once. */
static void assert_form_exact(const cJSON *req, const char *const want[][2], size_t n) {
    const char *raw = jstr(req, "raw_body");
    if (raw == NULL) fail_msg("the fake logged no body");
    static kv_t got[64];
    size_t ng = form_decode(raw, got, RV_ARRAY_LEN(got));
    if (ng != n) fail_msg("%zu parameters sent, expected %zu: %s", ng, n, raw);
    for (size_t i = 0; i < n; i++) {
        int seen = 0;
        for (size_t j = 0; j < ng; j++) {
            if (strcmp(got[j].key, want[i][0]) != 0) continue;
            seen++;
            if (strcmp(got[j].val, want[i][1]) != 0)
                fail_msg("%s=\"%s\", expected \"%s\"", want[i][0], got[j].val, want[i][1]);
        }
        if (seen != 1) fail_msg("%s sent %d times, expected once: %s", want[i][0], seen, raw);
    }
}

/* The value of one parameter in the raw form body of req, copied to out; 0 or -1. */
static int form_param(const cJSON *req, const char *key, char *out, size_t cap) {
    const char *raw = jstr(req, "raw_body");
    static kv_t got[64];
    size_t ng = raw ? form_decode(raw, got, RV_ARRAY_LEN(got)) : 0;
    for (size_t j = 0; j < ng; j++) {
        if (strcmp(got[j].key, key) == 0) {
            snprintf(out, cap, "%s", got[j].val);
            return 0;
        }
    }
    return -1;
}

/* ---- POST /api/checkout/create: the call Stripe receives ----------------------------------- */

static void create_sends_prototype_params(void **state) {
    start_rivetd(NULL);
    static const struct {
        const char *tier, *price;
    } tiers[] = {
        {"pro", TH_PRICE_PRO}, {"basic", TH_PRICE_BASIC}, {"enterprise", TH_PRICE_ENTERPRISE}};
    for (size_t t = 0; t < RV_ARRAY_LEN(tiers); t++) {
        fake_post("/_fake/reset", "{}");
        char body[256], sid[128];
        snprintf(body, sizeof body, "{\"email\":\"" EMAIL "\",\"tier\":\"%s\"}", tiers[t].tier);
        checkout_ok(body, sid, sizeof sid);

        cJSON *log = fake_log();
        assert_int_equal(cJSON_GetArraySize(log), 1);
        const cJSON *req = cJSON_GetArrayItem(log, 0);
        assert_string_equal(jstr(req, "method"), "POST");
        assert_string_equal(jstr(req, "path"), SESSIONS);
        const char *const want[][2] = {
            {"mode", "subscription"},
            {"payment_method_types[0]", "card"},
            {"line_items[0][price]", tiers[t].price},
            {"line_items[0][quantity]", "1"},
            {"customer_email", EMAIL},
            {"success_url", APP_URL "/success?session_id={CHECKOUT_SESSION_ID}"},
            {"cancel_url", APP_URL "/pricing"},
            {"metadata[tier]", tiers[t].tier},
            {"metadata[source]", "rivet_landing"},
            {"subscription_data[metadata][tier]", tiers[t].tier},
            {"allow_promotion_codes", "true"},
        };
        assert_form_exact(req, want, RV_ARRAY_LEN(want));
        /* The fake read the same thing in Stripe's bracket notation. */
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(req, "params");
        const cJSON *li =
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(params, "line_items"), 0);
        assert_string_equal(jstr(li, "price"), tiers[t].price);

        const char *auth = req_header(req, "authorization");
        assert_non_null(auth);
        assert_string_equal(auth, "Bearer " TH_STRIPE_KEY);
        const char *ua = req_header(req, "user-agent");
        if (ua == NULL || strstr(ua, "rivetd") == NULL)
            fail_msg("User-Agent \"%s\" does not name rivetd", ua ? ua : "(none)");
        const char *idem = req_header(req, "idempotency-key");
        if (idem == NULL || strlen(idem) < 16) fail_msg("Idempotency-Key \"%s\"", idem ? idem : "");
        assert_null(req_header(req, "stripe-version"));
        const char *ct = req_header(req, "content-type");
        assert_non_null(ct);
        assert_int_equal(strncmp(ct, "application/x-www-form-urlencoded", 33), 0);
        cJSON_Delete(log);

        /* The session exists at Stripe with what was asked for. */
        char path[256];
        snprintf(path, sizeof path, "/api/checkout/success?session_id=%s", sid);
        th_response_t r;
        request("GET", path, NULL, NULL, &r);
        assert_status(&r, 200);
        cJSON *j = body_json(&r);
        assert_string_equal(jstr(j, "tier"), tiers[t].tier);
        assert_string_equal(jstr(j, "email"), EMAIL);
        cJSON_Delete(j);
        th_response_free(&r);
    }
}

static void create_idempotency_keys_differ(void **state) {
    start_rivetd(NULL);
    char sid1[128], sid2[128];
    checkout_ok(CHECKOUT_BODY, sid1, sizeof sid1);
    checkout_ok(CHECKOUT_BODY, sid2, sizeof sid2);
    /* Two checkouts are two sessions: rivetd's own keys are fresh per call. */
    assert_string_not_equal(sid1, sid2);
    cJSON *log = fake_log();
    assert_int_equal(cJSON_GetArraySize(log), 2);
    const char *k1 = req_header(cJSON_GetArrayItem(log, 0), "idempotency-key");
    const char *k2 = req_header(cJSON_GetArrayItem(log, 1), "idempotency-key");
    assert_non_null(k1);
    assert_non_null(k2);
    assert_string_not_equal(k1, k2);
    cJSON_Delete(log);
}

static void create_stripe_version(void **state) {
    const char *const env[] = {"STRIPE_API_VERSION=2023-10-16", NULL};
    start_rivetd(env);
    char sid[128];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    cJSON *log = fake_log();
    assert_int_equal(cJSON_GetArraySize(log), 1);
    const char *v = req_header(cJSON_GetArrayItem(log, 0), "stripe-version");
    assert_non_null(v);
    assert_string_equal(v, "2023-10-16");
    cJSON_Delete(log);
}

static void create_passes_caller_idempotency_key(void **state) {
    start_rivetd(NULL);
    const char *key = "Idempotency-Key: order-42-7f3c9a\r\n";
    th_response_t r1, r2;
    checkout(key, CHECKOUT_BODY, &r1);
    assert_status(&r1, 200);
    checkout(key, CHECKOUT_BODY, &r2);
    assert_status(&r2, 200);
    cJSON *j1 = body_json(&r1), *j2 = body_json(&r2);
    /* Stripe replays the first answer for the same key: one session, not two. */
    assert_string_equal(jstr(j1, "session_id"), jstr(j2, "session_id"));
    cJSON_Delete(j1);
    cJSON_Delete(j2);
    th_response_free(&r1);
    th_response_free(&r2);
    cJSON *log = fake_log();
    assert_int_equal(cJSON_GetArraySize(log), 2);
    for (int i = 0; i < 2; i++) {
        const char *k = req_header(cJSON_GetArrayItem(log, i), "idempotency-key");
        assert_non_null(k);
        assert_string_equal(k, "order-42-7f3c9a");
    }
    cJSON_Delete(log);
}

/* The same caller key with other parameters is the caller's mistake: 409, not a Stripe error. */
static void create_reused_idempotency_key_conflicts(void **state) {
    start_rivetd(NULL);
    const char *key = "Idempotency-Key: shared-key-1\r\n";
    th_response_t r1, r2;
    checkout(key, "{\"email\":\"a@example.com\",\"tier\":\"pro\"}", &r1);
    assert_status(&r1, 200);
    checkout(key, "{\"email\":\"b@example.com\",\"tier\":\"pro\"}", &r2);
    assert_detail(&r2, 409);
    th_response_free(&r1);
    th_response_free(&r2);
    /* Stripe was asked twice and refused the second: nothing was retried. */
    assert_int_equal(fake_count("POST", "/v1/checkout/sessions"), 2);
}

/* ---- validation --------------------------------------------------------------------------- */

/* The answer is 422 with FastAPI's shape: {"detail": [{"loc": [...], "msg", "type"}...]}, with
 * exactly nerr errors whose locations, in order, are the strings in locs ("body.email" for
 * ["body","email"]) and, where types[i] is not NULL, whose types match. */
static void assert_422(const th_response_t *r, size_t nerr, const char *const *locs,
                       const char *const *types) {
    assert_status(r, 422);
    const char *ct = th_header(r, "Content-Type");
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0)
        fail_msg("Content-Type %s", ct ? ct : "(none)");
    cJSON *j = body_json(r);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
    if (!cJSON_IsArray(d)) fail_msg("detail is not a list: %s", r->body);
    if ((size_t)cJSON_GetArraySize(d) != nerr)
        fail_msg("%d errors, expected %zu: %s", cJSON_GetArraySize(d), nerr, r->body);
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, d) {
        const cJSON *loc = cJSON_GetObjectItemCaseSensitive(e, "loc");
        const char *msg = jstr(e, "msg"), *type = jstr(e, "type");
        if (!cJSON_IsArray(loc) || cJSON_GetArraySize(loc) < 1 || msg == NULL || !msg[0] ||
            type == NULL || !type[0])
            fail_msg("error %zu lacks loc/msg/type: %s", i, r->body);
        char joined[128] = "";
        const cJSON *part;
        cJSON_ArrayForEach(part, loc) {
            if (!cJSON_IsString(part)) fail_msg("loc holds a non-string: %s", r->body);
            if (joined[0]) strncat(joined, ".", sizeof joined - strlen(joined) - 1);
            strncat(joined, part->valuestring, sizeof joined - strlen(joined) - 1);
        }
        if (strcmp(joined, locs[i]) != 0)
            fail_msg("error %zu at %s, expected %s: %s", i, joined, locs[i], r->body);
        if (types != NULL && types[i] != NULL && strcmp(type, types[i]) != 0)
            fail_msg("error %zu of type %s, expected %s: %s", i, type, types[i], r->body);
        i++;
    }
    cJSON_Delete(j);
}

static void create_validation(void **state) {
    start_rivetd(NULL);
    static const struct {
        const char *body;
        size_t n;
        const char *locs[4];
        const char *types[4];
    } cases[] = {
        {"{\"email\": ", 1, {"body"}, {"json_invalid"}},
        {"not json at all", 1, {"body"}, {"json_invalid"}},
        /* One JSON value, and nothing after it but white space. */
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\"}x", 1, {"body"}, {"json_invalid"}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\"}{}", 1, {"body"}, {"json_invalid"}},
        {"", 1, {"body"}, {NULL}},
        {"[\"" EMAIL "\", \"pro\"]", 1, {"body"}, {"model_attributes_type"}},
        {"\"" EMAIL "\"", 1, {"body"}, {"model_attributes_type"}},
        {"{\"tier\":\"pro\"}", 1, {"body.email"}, {"missing"}},
        {"{\"email\":\"not-an-address\",\"tier\":\"pro\"}", 1, {"body.email"}, {"value_error"}},
        {"{\"email\":\"jane@localhost\",\"tier\":\"pro\"}", 1, {"body.email"}, {"value_error"}},
        {"{\"email\":42,\"tier\":\"pro\"}", 1, {"body.email"}, {"string_type"}},
        {"{\"email\":[\"" EMAIL "\"],\"tier\":\"pro\"}", 1, {"body.email"}, {"string_type"}},
        {"{\"email\":\"" EMAIL "\"}", 1, {"body.tier"}, {"missing"}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"gold\"}", 1, {"body.tier"}, {"enum"}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"Pro\"}", 1, {"body.tier"}, {"enum"}},
        {"{\"email\":\"" EMAIL "\",\"tier\":7}", 1, {"body.tier"}, {NULL}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\",\"success_url\":\"https://evil.example/ok\"}",
         1,
         {"body.success_url"},
         {NULL}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\",\"success_url\":\"https://app.rivet.test@evil."
         "example/\"}",
         1,
         {"body.success_url"},
         {NULL}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\",\"success_url\":\"javascript:alert(1)\"}",
         1,
         {"body.success_url"},
         {NULL}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\",\"cancel_url\":\"https://evil.example/no\"}",
         1,
         {"body.cancel_url"},
         {NULL}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\",\"cancel_url\":\"//evil.example/no\"}",
         1,
         {"body.cancel_url"},
         {NULL}},
        {"{\"email\":\"" EMAIL "\",\"tier\":\"pro\",\"cancel_url\":5}",
         1,
         {"body.cancel_url"},
         {"string_type"}},
        {"{\"email\":\"nope\",\"tier\":\"gold\",\"success_url\":\"https://evil.example/\","
         "\"cancel_url\":\"https://evil.example/\"}",
         4,
         {"body.email", "body.tier", "body.success_url", "body.cancel_url"},
         {"value_error", "enum", NULL, NULL}},
        {"{}", 2, {"body.email", "body.tier"}, {"missing", "missing"}},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        th_response_t r;
        checkout(NULL, cases[i].body, &r);
        assert_422(&r, cases[i].n, cases[i].locs, cases[i].types);
        th_response_free(&r);
    }
    /* A bad Idempotency-Key is refused the same way. */
    th_response_t r;
    checkout("Idempotency-Key: has space\r\n", CHECKOUT_BODY, &r);
    static const char *const hloc[] = {"header.Idempotency-Key"};
    assert_422(&r, 1, hloc, NULL);
    th_response_free(&r);
    /* None of these reached Stripe. */
    assert_int_equal(fake_total(), 0);
}

static void create_redirect_on_allowed_origin(void **state) {
    const char *const env[] = {"REDIRECT_ORIGINS=" APP_URL ",https://partner.example", NULL};
    start_rivetd(env);
    char sid[128];
    checkout_ok("{\"email\":\"" EMAIL "\",\"tier\":\"basic\","
                "\"success_url\":\"https://partner.example/done?sid={CHECKOUT_SESSION_ID}\","
                "\"cancel_url\":\"" APP_URL "/plans?from=checkout\"}",
                sid, sizeof sid);
    cJSON *log = fake_log();
    assert_int_equal(cJSON_GetArraySize(log), 1);
    char v[2200];
    const cJSON *req = cJSON_GetArrayItem(log, 0);
    assert_int_equal(form_param(req, "success_url", v, sizeof v), 0);
    assert_string_equal(v, "https://partner.example/done?sid={CHECKOUT_SESSION_ID}");
    assert_int_equal(form_param(req, "cancel_url", v, sizeof v), 0);
    assert_string_equal(v, APP_URL "/plans?from=checkout");
    cJSON_Delete(log);
    /* An origin that is not listed is still refused. */
    th_response_t r;
    checkout(NULL,
             "{\"email\":\"" EMAIL
             "\",\"tier\":\"pro\",\"success_url\":\"https://other.example/\"}",
             &r);
    static const char *const loc[] = {"body.success_url"};
    assert_422(&r, 1, loc, NULL);
    th_response_free(&r);
    assert_int_equal(fake_total(), 1);
}

/* ---- retries and failures ----------------------------------------------------------------- */

/* Every logged request is a POST to SESSIONS carrying the same Idempotency-Key; returns how
 * many there are. */
static int tries_with_one_key(void) {
    cJSON *log = fake_log();
    int n = cJSON_GetArraySize(log);
    const char *first = NULL;
    const cJSON *e;
    cJSON_ArrayForEach(e, log) {
        assert_string_equal(jstr(e, "path"), SESSIONS);
        const char *k = req_header(e, "idempotency-key");
        assert_non_null(k);
        if (first == NULL) first = k;
        if (strcmp(first, k) != 0) fail_msg("tries used keys %s and %s", first, k);
    }
    cJSON_Delete(log);
    return n;
}

static void retry_500_then_success(void **state) {
    start_rivetd(NULL);
    fake_config("{\"fail_next\":2,\"fail_status\":500}");
    char sid[128];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    assert_int_equal(tries_with_one_key(), 3);
}

static void retry_429(void **state) {
    start_rivetd(NULL);
    fake_config("{\"fail_next\":1,\"fail_status\":429}");
    char sid[128];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    assert_int_equal(tries_with_one_key(), 2);
}

static void retries_exhausted(void **state) {
    const char *const env[] = {"STRIPE_MAX_RETRIES=1", NULL};
    start_rivetd(env);
    fake_config("{\"fail_next\":5,\"fail_status\":503}");
    th_response_t r;
    checkout(NULL, CHECKOUT_BODY, &r);
    assert_detail(&r, 502);
    th_response_free(&r);
    assert_int_equal(tries_with_one_key(), 2);
}

static void no_retry_on_400(void **state) {
    start_rivetd(NULL);
    fake_config("{\"fail_next\":1,\"fail_status\":400}");
    th_response_t r;
    checkout(NULL, CHECKOUT_BODY, &r);
    assert_detail(&r, 502);
    assert_no_secret("the answer", r.body);
    th_response_free(&r);
    assert_int_equal(tries_with_one_key(), 1);
}

static void no_retry_when_stripe_says_so(void **state) {
    start_rivetd(NULL);
    fake_config("{\"fail_next\":1,\"fail_status\":500,\"should_retry\":\"false\"}");
    th_response_t r;
    checkout(NULL, CHECKOUT_BODY, &r);
    assert_detail(&r, 502);
    th_response_free(&r);
    assert_int_equal(tries_with_one_key(), 1);
}

static void stripe_down(void **state) {
    char base[64];
    int dead = th_free_port();
    assert_true(dead > 0);
    snprintf(base, sizeof base, "STRIPE_API_BASE=http://127.0.0.1:%d", dead);
    const char *const env[] = {base, "STRIPE_TIMEOUT_MS=5000", NULL};
    start_rivetd(env);
    th_response_t r;
    checkout(NULL, CHECKOUT_BODY, &r);
    assert_status(&r, 502);
    cJSON *j = body_json(&r);
    const char *d = jstr(j, "detail");
    assert_non_null(d);
    assert_string_equal(d, "Payment service error");
    const cJSON *rid = cJSON_GetObjectItemCaseSensitive(j, "request_id");
    if (rid == NULL || !(cJSON_IsString(rid) || cJSON_IsNull(rid)))
        fail_msg("no request_id in %s", r.body);
    cJSON_Delete(j);
    assert_no_secret("the answer", r.body);
    for (int i = 0; i < r.nheaders; i++) assert_no_secret("a header", r.headers[i].value);
    th_response_free(&r);
    /* The failure is logged (and the teardown checks the log holds no secret). */
    assert_true(log_line_has("stripe", NULL));
    char *log = slurp(rivetd.log_path);
    assert_non_null(log);
    assert_no_secret("rivetd's log", log);
    free(log);
    /* The success page fails the same way. */
    request("GET", "/api/checkout/success?session_id=cs_test_abc123", NULL, NULL, &r);
    assert_detail(&r, 502);
    th_response_free(&r);
}

static void deadline(void **state) {
    const char *const env[] = {"STRIPE_TIMEOUT_MS=800", NULL};
    start_rivetd(env);
    fake_config("{\"hang_next\":1}");
    int64_t t0 = th_now_ms();
    th_response_t r;
    checkout(NULL, CHECKOUT_BODY, &r);
    int64_t took = th_now_ms() - t0;
    assert_detail(&r, 504);
    th_response_free(&r);
    if (took > 2000) fail_msg("504 after %lld ms, expected about 800", (long long)took);
    if (took < 700) fail_msg("504 after %lld ms, before the 800 ms deadline", (long long)took);
    /* The hung call was given up, not retried on a fresh connection past the deadline. */
    assert_int_equal(tries_with_one_key(), 1);
    /* And the next call works. */
    char sid[128];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
}

/* Leave with a reset (SO_LINGER of 0): how a client that is gone looks to the server. A plain
 * close only ends the client's sending side, and the server still answers. */
static void reset_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    th_close(fd);
}

static int gone_logged(void *ud) { return log_line_has("/api/checkout/create 499", "client-gone"); }

static void client_gone_mid_call(void **state) {
    start_rivetd(NULL);
    fake_config("{\"latency_ms\":1000}");
    int fd = th_connect(rivetd.port);
    assert_true(fd >= 0);
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/checkout/create HTTP/1.1\r\nHost: t\r\n" JSON_CT
             "Content-Length: %zu\r\n\r\n%s",
             strlen(CHECKOUT_BODY), CHECKOUT_BODY);
    assert_int_equal(th_send_str(fd, req), 0);
    pause_ms(100);
    reset_close(fd);
    if (!th_eventually(gone_logged, NULL, 3000))
        fail_msg("rivetd did not log the checkout as 499 client-gone");
    /* A checkout that also waits a second spans the moment the first call's answer arrives, so
     * a callback that survived its request would run meanwhile. */
    char sid[128];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    assert_true(th_alive(&rivetd));
    th_response_t r;
    request("GET", "/health", NULL, NULL, &r);
    assert_status(&r, 200);
    th_response_free(&r);
    /* Leaving just after sending, and many at once. */
    fake_config("{\"latency_ms\":300}");
    for (int i = 0; i < 50; i++) {
        fd = th_connect(rivetd.port);
        assert_true(fd >= 0);
        assert_int_equal(th_send_str(fd, req), 0);
        reset_close(fd);
    }
    /* Again a checkout that outlasts the abandoned calls' answers. */
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    assert_true(th_alive(&rivetd));
    request("GET", "/health", NULL, NULL, &r);
    assert_status(&r, 200);
    th_response_free(&r);
}

/* ---- a thousand calls in flight ---------------------------------------------------------------
 */

#define INFLIGHT      1000
#define HEALTH_CHECKS 50

static int fake_has_one(void *ud) { return fake_count("POST", SESSIONS) >= 1; }

static void thousand_in_flight(void **state) {
    const char *const env[] = {"MAX_CONNECTIONS=4000", "LOG_LEVEL=info", NULL};
    start_rivetd(env);
    fake_config("{\"latency_ms\":2000}");
    static int fds[INFLIGHT];
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/checkout/create HTTP/1.1\r\nHost: t\r\n" JSON_CT
             "Content-Length: %zu\r\n\r\n%s",
             strlen(CHECKOUT_BODY), CHECKOUT_BODY);
    for (int i = 0; i < INFLIGHT; i++) {
        fds[i] = th_connect(rivetd.port);
        if (fds[i] < 0) fail_msg("connection %d: %s", i, strerror(errno));
        if (th_send_str(fds[i], req) != 0) fail_msg("send %d: %s", i, strerror(errno));
    }
    int64_t sent = th_now_ms();
    if (!th_eventually(fake_has_one, NULL, 5000)) fail_msg("no call reached the fake");

    /* /health on its own connection, while the calls wait on Stripe. */
    int hfd = th_connect(rivetd.port);
    assert_true(hfd >= 0);
    int64_t worst = 0;
    for (int i = 0; i < HEALTH_CHECKS; i++) {
        int64_t t0 = th_now_ms();
        assert_int_equal(th_send_str(hfd, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"), 0);
        th_response_t r;
        if (th_read_response(hfd, &r, 0, 1000) != 0)
            fail_msg("/health %d gave no answer within 1 s with %d checkouts in flight", i,
                     INFLIGHT);
        int64_t took = th_now_ms() - t0;
        if (took > worst) worst = took;
        assert_status(&r, 200);
        th_response_free(&r);
    }
    th_close(hfd);
    /* The checks ran while checkouts were still waiting: not every answer is in yet. */
    static struct pollfd pfds[INFLIGHT];
    for (int i = 0; i < INFLIGHT; i++) pfds[i] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    int ready = poll(pfds, INFLIGHT, 0);
    assert_true(ready < INFLIGHT);
    int64_t health_done = th_now_ms() - sent;

    int64_t deadline = th_now_ms() + 60000;
    int ok = 0;
    for (int i = 0; i < INFLIGHT; i++) {
        int64_t left = deadline - th_now_ms();
        th_response_t r;
        if (left <= 0 || th_read_response(fds[i], &r, 0, (int)left) != 0)
            fail_msg("checkout %d: no answer (%d of %d answered)", i, ok, INFLIGHT);
        assert_status(&r, 200);
        cJSON *j = body_json(&r);
        assert_non_null(jstr(j, "session_id"));
        cJSON_Delete(j);
        th_response_free(&r);
        th_close(fds[i]);
        ok++;
    }
    print_message("%d checkouts answered in %lld ms; %d /health checks done %lld ms after "
                  "sending, the slowest in %lld ms\n",
                  ok, (long long)(th_now_ms() - sent), HEALTH_CHECKS, (long long)health_done,
                  (long long)worst);
    assert_int_equal(ok, INFLIGHT);
    assert_int_equal(fake_count("POST", SESSIONS), INFLIGHT);
}

/* ---- connections to Stripe are kept for the next burst ---------------------------------------
 */

#define BURST 300

static int fake_connections_opened(void) {
    th_response_t r;
    if (th_request(fake.port, "GET", "/_fake/stats", NULL, NULL, &r) != 0)
        fail_msg("fake: GET /_fake/stats: no answer");
    assert_int_equal(r.status, 200);
    cJSON *j = body_json(&r);
    th_response_free(&r);
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, "connections_opened");
    if (!cJSON_IsNumber(n)) fail_msg("fake: stats without connections_opened");
    int v = n->valueint;
    cJSON_Delete(j);
    return v;
}

/* BURST checkouts at once, every one answered 200. */
static void checkout_burst(void) {
    static int fds[BURST];
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/checkout/create HTTP/1.1\r\nHost: t\r\n" JSON_CT
             "Content-Length: %zu\r\n\r\n%s",
             strlen(CHECKOUT_BODY), CHECKOUT_BODY);
    for (int i = 0; i < BURST; i++) {
        fds[i] = th_connect(rivetd.port);
        if (fds[i] < 0) fail_msg("connection %d: %s", i, strerror(errno));
        if (th_send_str(fds[i], req) != 0) fail_msg("send %d: %s", i, strerror(errno));
    }
    for (int i = 0; i < BURST; i++) {
        th_response_t r;
        if (th_read_response(fds[i], &r, 0, 30000) != 0) fail_msg("checkout %d: no answer", i);
        assert_status(&r, 200);
        th_response_free(&r);
        th_close(fds[i]);
    }
}

/* A burst of checkouts larger than a small connection cache would make libcurl close what it
 * cannot keep and open new connections for the next burst: against Stripe, a TLS handshake
 * each. Two bursts of BURST concurrent calls: the second one reuses what the first opened (a
 * connection or two may be replaced: libcurl may open one while another is being returned). */
static void stripe_connections_reused(void **state) {
    const char *const env[] = {"MAX_CONNECTIONS=4000", NULL};
    start_rivetd(env);
    fake_config("{\"latency_ms\":300}");
    checkout_burst();
    int first = fake_connections_opened();
    checkout_burst();
    /* Each stats request comes on a connection of its own. */
    int second = fake_connections_opened() - first - 1;
    print_message("burst 1 opened %d connections to Stripe, burst 2 opened %d\n", first, second);
    if (first < BURST / 2) fail_msg("the calls were not concurrent (%d connections)", first);
    if (second > BURST / 100)
        fail_msg("the second burst of %d checkouts opened %d new connections to Stripe", BURST,
                 second);
}

/* ---- GET /api/checkout/success ------------------------------------------------------------ */

static cJSON *success_page(const char *sid, int status) {
    char path[512];
    snprintf(path, sizeof path, "/api/checkout/success?session_id=%s", sid);
    th_response_t r;
    request("GET", path, NULL, NULL, &r);
    assert_status(&r, status);
    cJSON *j = body_json(&r);
    th_response_free(&r);
    return j;
}

/* The fake's own record of a session, as Stripe would answer a read of it (caller frees). */
static cJSON *fake_session(const char *sid) {
    char path[256];
    snprintf(path, sizeof path, "/v1/checkout/sessions/%s", sid);
    th_response_t r;
    if (th_request(fake.port, "GET", path, "Authorization: Bearer " TH_STRIPE_KEY "\r\n", NULL,
                   &r) != 0)
        fail_msg("fake: GET %s: no answer", path);
    assert_int_equal(r.status, 200);
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    th_response_free(&r);
    assert_true(cJSON_IsObject(j));
    return j;
}

/* The next read of session sid at the fake answers body (consumed) instead. */
static void fake_answer_session(const char *sid, cJSON *body) {
    cJSON *o = cJSON_CreateObject();
    char path[256];
    snprintf(path, sizeof path, "/v1/checkout/sessions/%s", sid);
    cJSON_AddStringToObject(o, "method", "GET");
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddItemToObject(o, "body", body);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    fake_post("/_fake/override", text);
    free(text);
}

/* Stripe's answer must be the session asked for, with a created: another customer's paid
 * session (a broken or hostile Stripe) is not shown or provisioned, and a session without a
 * numeric created does not escape CHECKOUT_LINK_MAX_AGE. */
static void success_answer_checked(void **state) {
    start_rivetd(NULL);
    char mine[128], other[128], path[256];
    checkout_ok(CHECKOUT_BODY, mine, sizeof mine);
    checkout_ok(CHECKOUT_BODY, other, sizeof other);
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", other);
    fake_post(path, "{\"customer\":\"cus_Other000001\",\"email\":\"other@example.com\"}");
    fake_answer_session(mine, fake_session(other));
    cJSON *j = success_page(mine, 502);
    cJSON_Delete(j);
    cJSON *s = fake_session(mine);
    cJSON_ReplaceItemInObjectCaseSensitive(s, "created", cJSON_CreateString("1500000000"));
    fake_answer_session(mine, s);
    j = success_page(mine, 502);
    cJSON_Delete(j);
    s = fake_session(mine);
    cJSON_DeleteItemFromObjectCaseSensitive(s, "created");
    fake_answer_session(mine, s);
    j = success_page(mine, 502);
    cJSON_Delete(j);
    /* The real answer again. */
    j = success_page(mine, 200);
    cJSON_Delete(j);
}

/* What Stripe answers is passed to browsers only when it is what Stripe sends: an https page,
 * a session id, a Request-Id of Stripe's shape. */
static void stripe_answers_passed_on_checked(void **state) {
    start_rivetd(NULL);
    static const char *const urls[] = {"javascript:alert(document.cookie)", "http://evil.example/",
                                       "https://checkout.stripe.com/\"><script>"};
    for (size_t i = 0; i < RV_ARRAY_LEN(urls); i++) {
        char o[512];
        snprintf(o, sizeof o,
                 "{\"method\":\"POST\",\"path\":\"" SESSIONS "\",\"body\":{\"id\":"
                 "\"cs_test_hostile1\",\"object\":\"checkout.session\",\"url\":\"%s\"}}",
                 i == 2 ? "https://checkout.stripe.com/\\\"><script>" : urls[i]);
        fake_post("/_fake/override", o);
        th_response_t r;
        checkout(NULL, CHECKOUT_BODY, &r);
        assert_detail(&r, 502);
        th_response_free(&r);
    }
    fake_post("/_fake/override",
              "{\"method\":\"POST\",\"path\":\"" SESSIONS "\",\"body\":{\"id\":\"../../admin\","
              "\"url\":\"https://checkout.stripe.com/c/pay/x\"}}");
    th_response_t r;
    checkout(NULL, CHECKOUT_BODY, &r);
    assert_detail(&r, 502);
    th_response_free(&r);
    /* A failure's Request-Id goes to the caller only in Stripe's shape. */
    fake_post("/_fake/override",
              "{\"method\":\"POST\",\"path\":\"" SESSIONS "\",\"status\":400,\"times\":3,"
              "\"headers\":{\"Request-Id\":\"<img src=x onerror=alert(1)>\"},\"body\":{\"error\":"
              "{\"type\":\"invalid_request_error\",\"message\":\"no\"}}}");
    checkout(NULL, CHECKOUT_BODY, &r);
    assert_detail(&r, 502);
    cJSON *j = body_json(&r);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "request_id")));
    cJSON_Delete(j);
    th_response_free(&r);
    fake_post("/_fake/override", "{\"clear\": true}");
    /* The portal's page likewise. */
    char sid[128], path[256];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", sid);
    fake_post(path, "{\"customer\":\"cus_Portal00001\",\"email\":\"" EMAIL "\"}");
    fake_post("/_fake/override", "{\"method\":\"POST\",\"path\":\"" PORTAL "\",\"body\":{\"id\":"
                                 "\"bps_1\",\"url\":\"javascript:alert(1)\"}}");
    request("POST", "/api/billing/portal", JSON_CT "Authorization: Bearer " TH_API_TOKEN "\r\n",
            "{\"customer_id\":\"cus_Portal00001\"}", &r);
    assert_detail(&r, 502);
    th_response_free(&r);
}

static void assert_next_steps(const cJSON *j) {
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(j, "next_steps");
    assert_true(cJSON_IsArray(steps));
    assert_true(cJSON_GetArraySize(steps) >= 1);
    const cJSON *s;
    cJSON_ArrayForEach(s, steps) {
        assert_true(cJSON_IsString(s));
        assert_true(strlen(s->valuestring) > 0);
    }
}

static void success_open(void **state) {
    start_rivetd(NULL);
    char sid[128];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    cJSON *j = success_page(sid, 200);
    assert_string_equal(jstr(j, "status"), "pending");
    assert_string_equal(jstr(j, "session_status"), "open");
    assert_string_equal(jstr(j, "tier"), "pro");
    assert_next_steps(j);
    cJSON_Delete(j);
    /* It asked Stripe for exactly this session. */
    char path[256];
    snprintf(path, sizeof path, SESSIONS "/%s", sid);
    assert_int_equal(fake_count("GET", path), 1);
}

static void success_completed(void **state) {
    start_rivetd(NULL);
    char sid[128], path[256];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", sid);
    fake_post(path, "{\"email\":\"" EMAIL "\"}");
    cJSON *j = success_page(sid, 200);
    assert_string_equal(jstr(j, "status"), "success");
    assert_string_equal(jstr(j, "email"), EMAIL);
    assert_string_equal(jstr(j, "tier"), "pro");
    assert_string_equal(jstr(j, "telegram_link"), "https://t.me/" BOT);
    assert_next_steps(j);
    cJSON_Delete(j);
}

static void success_expired(void **state) {
    start_rivetd(NULL);
    char sid[128], path[256];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    snprintf(path, sizeof path, "/_fake/sessions/%s/expire", sid);
    fake_post(path, "{}");
    cJSON *j = success_page(sid, 200);
    assert_string_equal(jstr(j, "status"), "expired");
    cJSON_Delete(j);
}

/* A session made straight at the fake without customer_email, then completed with an email:
 * only customer_details.email has it. Its id goes to sid. */
static void session_without_customer_email(const char *tier, const char *email, char *sid,
                                           size_t len) {
    char body[512];
    snprintf(body, sizeof body,
             "mode=subscription&line_items[0][price]=%s&line_items[0][quantity]=1&"
             "success_url=https%%3A%%2F%%2Fapp.rivet.test%%2Fsuccess&metadata[tier]=%s",
             TH_PRICE_BASIC, tier);
    th_response_t r;
    if (th_request(fake.port, "POST", SESSIONS,
                   "Authorization: Bearer " TH_STRIPE_KEY
                   "\r\nContent-Type: application/x-www-form-urlencoded\r\n",
                   body, &r) != 0)
        fail_msg("fake: cannot create a session");
    assert_status(&r, 200);
    cJSON *j = body_json(&r);
    assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "customer_email")));
    snprintf(sid, len, "%s", jstr(j, "id"));
    cJSON_Delete(j);
    th_response_free(&r);
    char path[256], cbody[256];
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", sid);
    snprintf(cbody, sizeof cbody, "{\"email\":\"%s\"}", email);
    fake_post(path, cbody);
}

static void success_email_from_customer_details(void **state) {
    start_rivetd(NULL);
    char sid[128];
    session_without_customer_email("basic", "details@example.org", sid, sizeof sid);
    cJSON *j = success_page(sid, 200);
    assert_string_equal(jstr(j, "status"), "success");
    assert_string_equal(jstr(j, "email"), "details@example.org");
    assert_string_equal(jstr(j, "tier"), "basic");
    cJSON_Delete(j);
}

static void success_bad_ids(void **state) {
    start_rivetd(NULL);
    static const char *const bad[] = {
        "cs_test_abc-def",
        "cs_test_",
        "cus_abc123",
        "cs_test_..%2F..%2Fv1%2Fcustomers",
        "cs_test_abc%26expand[]%3Dcustomer",
        "cs_test_abc%20def",
        "",
    };
    static const char *const loc[] = {"query.session_id"};
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        char path[256];
        snprintf(path, sizeof path, "/api/checkout/success?session_id=%s", bad[i]);
        th_response_t r;
        request("GET", path, NULL, NULL, &r);
        assert_422(&r, 1, loc, NULL);
        th_response_free(&r);
    }
    /* Too long to be an id. */
    char path[700] = "/api/checkout/success?session_id=cs_test_";
    size_t n = strlen(path);
    memset(path + n, 'a', 600);
    path[n + 600] = '\0';
    th_response_t r;
    request("GET", path, NULL, NULL, &r);
    assert_422(&r, 1, loc, NULL);
    th_response_free(&r);
    /* Missing. */
    request("GET", "/api/checkout/success", NULL, NULL, &r);
    static const char *const missing[] = {"missing"};
    assert_422(&r, 1, loc, missing);
    th_response_free(&r);
    request("GET", "/api/checkout/success?other=cs_test_abc", NULL, NULL, &r);
    assert_422(&r, 1, loc, missing);
    th_response_free(&r);
    assert_int_equal(fake_total(), 0);
}

static void success_unknown_session(void **state) {
    start_rivetd(NULL);
    cJSON *j = success_page("cs_test_doesNotExist0123456789", 404);
    const char *d = jstr(j, "detail");
    assert_non_null(d);
    cJSON_Delete(j);
    assert_int_equal(fake_count("GET", SESSIONS "/cs_test_doesNotExist0123456789"), 1);
}

/* ---- POST /api/billing/portal --------------------------------------------------------------- */

static void portal(const char *query, const char *headers, const char *body, th_response_t *r) {
    char path[256], h[512];
    snprintf(path, sizeof path, "/api/billing/portal%s", query ? query : "");
    snprintf(h, sizeof h, "%s%s", body ? JSON_CT : "", headers ? headers : "");
    request("POST", path, h, body, r);
}

static void assert_401(const th_response_t *r) {
    assert_detail(r, 401);
    assert_no_secret("the answer", r->body);
}

static void portal_anonymous(void **state) {
    start_rivetd(NULL);
    /* A customer that exists, so that only authentication stands in the way. */
    char sid[128], path[256];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", sid);
    fake_post(path, "{\"customer\":\"cus_Victim0001\",\"email\":\"" EMAIL "\"}");
    int before = fake_total();

    th_response_t r;
    portal("?customer_id=cus_Victim0001", NULL, NULL, &r);
    assert_401(&r);
    th_response_free(&r);
    portal(NULL, NULL, "{\"customer_id\":\"cus_Victim0001\"}", &r);
    assert_401(&r);
    th_response_free(&r);
    portal(NULL, "Authorization: Bearer wrong-token-0123456789\r\n",
           "{\"customer_id\":\"cus_Victim0001\"}", &r);
    assert_401(&r);
    th_response_free(&r);
    portal(NULL, "Authorization: Bearer " TH_API_TOKEN "x\r\n",
           "{\"customer_id\":\"cus_Victim0001\"}", &r);
    assert_401(&r);
    th_response_free(&r);
    portal("?customer_id=cus_Victim0001", "Authorization: Basic " TH_API_TOKEN "\r\n", NULL, &r);
    assert_401(&r);
    th_response_free(&r);
    /* Nothing at all. */
    portal(NULL, NULL, NULL, &r);
    assert_401(&r);
    th_response_free(&r);
    portal(NULL, NULL, "{}", &r);
    assert_401(&r);
    th_response_free(&r);
    assert_int_equal(fake_total(), before);
}

static void portal_with_token(void **state) {
    start_rivetd(NULL);
    char sid[128], path[256];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", sid);
    fake_post(path, "{\"customer\":\"cus_Server0001\",\"email\":\"" EMAIL "\"}");
    int before = fake_total();

    const char *const forms[][3] = {
        {NULL, "Authorization: Bearer " TH_API_TOKEN "\r\n",
         "{\"customer_id\":\"cus_Server0001\"}"},
        {"?customer_id=cus_Server0001", "Authorization: Bearer " TH_API_TOKEN "\r\n", NULL},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(forms); i++) {
        th_response_t r;
        portal(forms[i][0], forms[i][1], forms[i][2], &r);
        assert_status(&r, 200);
        cJSON *j = body_json(&r);
        const char *url = jstr(j, "portal_url");
        if (url == NULL || strncmp(url, "https://", 8) != 0) fail_msg("portal_url in %s", r.body);
        cJSON_Delete(j);
        th_response_free(&r);
    }
    cJSON *log = fake_log();
    assert_int_equal(cJSON_GetArraySize(log), before + 2);
    for (int i = before; i < before + 2; i++) {
        const cJSON *req = cJSON_GetArrayItem(log, i);
        assert_string_equal(jstr(req, "method"), "POST");
        assert_string_equal(jstr(req, "path"), PORTAL);
        const char *const want[][2] = {{"customer", "cus_Server0001"},
                                       {"return_url", APP_URL "/account"}};
        assert_form_exact(req, want, RV_ARRAY_LEN(want));
        assert_string_equal(req_header(req, "authorization"), "Bearer " TH_STRIPE_KEY);
    }
    cJSON_Delete(log);
    /* With the token, a malformed id is a validation error and goes nowhere. */
    th_response_t r;
    portal(NULL, "Authorization: Bearer " TH_API_TOKEN "\r\n", "{\"customer_id\":\"cus_a&b=c\"}",
           &r);
    assert_status(&r, 422);
    th_response_free(&r);
    assert_int_equal(fake_total(), before + 2);
    /* A customer Stripe does not know (400 resource_missing on "customer") is the caller's
     * mistake, not the payment service's. */
    portal(NULL, "Authorization: Bearer " TH_API_TOKEN "\r\n",
           "{\"customer_id\":\"cus_NobodyKnows01\"}", &r);
    assert_detail(&r, 404);
    assert_string_equal(r.body, "{\"detail\":\"Unknown customer\"}");
    th_response_free(&r);
    assert_int_equal(fake_count("POST", PORTAL), 3);
}

static void portal_by_session(void **state) {
    start_rivetd(NULL);
    char sid[128], path[256], body[256];
    checkout_ok(CHECKOUT_BODY, sid, sizeof sid);
    snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", sid);
    /* Open: nobody has paid, nothing to manage. */
    th_response_t r;
    portal(NULL, NULL, body, &r);
    assert_401(&r);
    th_response_free(&r);
    assert_int_equal(fake_count("POST", PORTAL), 0);
    /* Completed: the portal of that session's customer. */
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", sid);
    fake_post(path, "{\"customer\":\"cus_Payer0001\",\"email\":\"" EMAIL "\"}");
    portal(NULL, NULL, body, &r);
    assert_status(&r, 200);
    cJSON *j = body_json(&r);
    assert_non_null(jstr(j, "portal_url"));
    cJSON_Delete(j);
    th_response_free(&r);
    cJSON *log = fake_log();
    const cJSON *last = cJSON_GetArrayItem(log, cJSON_GetArraySize(log) - 1);
    assert_string_equal(jstr(last, "path"), PORTAL);
    const char *const want[][2] = {{"customer", "cus_Payer0001"},
                                   {"return_url", APP_URL "/account"}};
    assert_form_exact(last, want, RV_ARRAY_LEN(want));
    cJSON_Delete(log);
    /* By query string too. */
    snprintf(path, sizeof path, "?session_id=%s", sid);
    portal(path, NULL, NULL, &r);
    assert_status(&r, 200);
    th_response_free(&r);
    assert_int_equal(fake_count("POST", PORTAL), 2);
    /* An unknown session is no credential. */
    portal(NULL, NULL, "{\"session_id\":\"cs_test_Unknown000000000001\"}", &r);
    assert_401(&r);
    th_response_free(&r);
    /* An expired one neither. */
    char sid2[128];
    checkout_ok(CHECKOUT_BODY, sid2, sizeof sid2);
    snprintf(path, sizeof path, "/_fake/sessions/%s/expire", sid2);
    fake_post(path, "{}");
    snprintf(body, sizeof body, "{\"session_id\":\"%s\"}", sid2);
    portal(NULL, NULL, body, &r);
    assert_401(&r);
    th_response_free(&r);
    assert_int_equal(fake_count("POST", PORTAL), 2);
}

/* ---- CORS --------------------------------------------------------------------------------- */

static void assert_never_star(const th_response_t *r) {
    const char *a = th_header(r, "Access-Control-Allow-Origin");
    if (a != NULL && strchr(a, '*') != NULL) fail_msg("Access-Control-Allow-Origin: %s", a);
}

static int header_lists(const th_response_t *r, const char *name, const char *token) {
    const char *v = th_header(r, name);
    if (v == NULL) return 0;
    size_t tl = strlen(token);
    for (const char *p = v; (p = strcasestr(p, token)) != NULL; p += tl) {
        int start = p == v || p[-1] == ' ' || p[-1] == ',';
        int end = p[tl] == '\0' || p[tl] == ',' || p[tl] == ' ';
        if (start && end) return 1;
    }
    return 0;
}

/* How many times the answer carries a header. */
static int header_count(const th_response_t *r, const char *name) {
    int n = 0;
    for (int i = 0; i < r->nheaders; i++) n += strcasecmp(r->headers[i].name, name) == 0;
    return n;
}

static void cors(void **state) {
    start_rivetd(NULL);
    static const char *const routes[] = {"/api/checkout/create", "/api/checkout/success",
                                         "/api/billing/portal"};
    static const char *const listed[] = {"https://rivet.io", "https://www.rivet.io",
                                         "http://localhost:3000"};
    for (size_t i = 0; i < RV_ARRAY_LEN(routes); i++) {
        for (size_t o = 0; o < RV_ARRAY_LEN(listed); o++) {
            char h[512];
            snprintf(h, sizeof h,
                     "Origin: %s\r\nAccess-Control-Request-Method: POST\r\n"
                     "Access-Control-Request-Headers: content-type\r\n",
                     listed[o]);
            th_response_t r;
            request("OPTIONS", routes[i], h, NULL, &r);
            assert_status(&r, 204);
            assert_never_star(&r);
            const char *a = th_header(&r, "Access-Control-Allow-Origin");
            assert_non_null(a);
            assert_string_equal(a, listed[o]);
            const char *c = th_header(&r, "Access-Control-Allow-Credentials");
            assert_non_null(c);
            assert_string_equal(c, "true");
            assert_true(header_lists(&r, "Access-Control-Allow-Methods", "POST"));
            assert_true(header_lists(&r, "Access-Control-Allow-Methods", "GET"));
            assert_true(header_lists(&r, "Access-Control-Allow-Headers", "Content-Type"));
            assert_true(header_lists(&r, "Access-Control-Allow-Headers", "Authorization"));
            th_response_free(&r);
        }
        static const char *const unlisted[] = {"https://evil.example",
                                               "https://rivet.io.evil.example", "http://rivet.io",
                                               "null", "*"};
        for (size_t o = 0; o < RV_ARRAY_LEN(unlisted); o++) {
            char h[512];
            snprintf(h, sizeof h, "Origin: %s\r\nAccess-Control-Request-Method: POST\r\n",
                     unlisted[o]);
            th_response_t r;
            request("OPTIONS", routes[i], h, NULL, &r);
            assert_status(&r, 403);
            assert_null(th_header(&r, "Access-Control-Allow-Origin"));
            assert_null(th_header(&r, "Access-Control-Allow-Credentials"));
            assert_int_equal(header_count(&r, "Vary"), 1);
            th_response_free(&r);
        }
        /* Two Origin headers name no origin: a listed one first does not make it allowed. */
        th_response_t r;
        request("OPTIONS", routes[i],
                "Origin: https://rivet.io\r\nOrigin: https://evil.example\r\n"
                "Access-Control-Request-Method: POST\r\n",
                NULL, &r);
        assert_status(&r, 400);
        assert_null(th_header(&r, "Access-Control-Allow-Origin"));
        th_response_free(&r);
    }
    {
        th_response_t r;
        checkout("Origin: https://rivet.io\r\nOrigin: https://evil.example\r\n", CHECKOUT_BODY, &r);
        assert_status(&r, 200);
        assert_null(th_header(&r, "Access-Control-Allow-Origin"));
        th_response_free(&r);
    }
    /* A real call from a listed origin carries the header; from another, it does not. */
    th_response_t r;
    checkout("Origin: https://www.rivet.io\r\n", CHECKOUT_BODY, &r);
    assert_status(&r, 200);
    assert_never_star(&r);
    const char *a = th_header(&r, "Access-Control-Allow-Origin");
    assert_non_null(a);
    assert_string_equal(a, "https://www.rivet.io");
    assert_string_equal(th_header(&r, "Access-Control-Allow-Credentials"), "true");
    th_response_free(&r);
    checkout("Origin: https://evil.example\r\n", CHECKOUT_BODY, &r);
    assert_status(&r, 200);
    assert_null(th_header(&r, "Access-Control-Allow-Origin"));
    th_response_free(&r);
    /* Errors too, so that the page can read them. */
    checkout("Origin: http://localhost:3000\r\n", "{}", &r);
    assert_status(&r, 422);
    a = th_header(&r, "Access-Control-Allow-Origin");
    assert_non_null(a);
    assert_string_equal(a, "http://localhost:3000");
    th_response_free(&r);
}

static void cors_configured(void **state) {
    const char *const env[] = {"CORS_ORIGINS=https://shop.example", NULL};
    start_rivetd(env);
    th_response_t r;
    request("OPTIONS", "/api/checkout/create",
            "Origin: https://shop.example\r\nAccess-Control-Request-Method: POST\r\n", NULL, &r);
    assert_status(&r, 204);
    assert_string_equal(th_header(&r, "Access-Control-Allow-Origin"), "https://shop.example");
    th_response_free(&r);
    /* A default origin is no longer listed. */
    request("OPTIONS", "/api/checkout/create",
            "Origin: https://rivet.io\r\nAccess-Control-Request-Method: POST\r\n", NULL, &r);
    assert_status(&r, 403);
    assert_null(th_header(&r, "Access-Control-Allow-Origin"));
    th_response_free(&r);
}

/* ---- rate limiting ------------------------------------------------------------------------- */

/* Send n checkouts at once, each on its own connection with its own extra header lines
 * (xff[i], may be NULL), then read every answer: counts of 200s and 429s, and the smallest
 * Retry-After seen on a 429 (0 when none). */
typedef struct burst_s {
    int ok, limited, other;
    int min_retry_after;
} burst_t;

static burst_t send_burst(int n, const char *const *xff) {
    burst_t b = {0, 0, 0, 0};
    int fds[64];
    assert_true(n <= (int)RV_ARRAY_LEN(fds));
    for (int i = 0; i < n; i++) {
        char req[1024], h[256] = "";
        if (xff != NULL && xff[i] != NULL) snprintf(h, sizeof h, "X-Forwarded-For: %s\r\n", xff[i]);
        snprintf(req, sizeof req,
                 "POST /api/checkout/create HTTP/1.1\r\nHost: t\r\n" JSON_CT
                 "%sContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
                 h, strlen(CHECKOUT_BODY), CHECKOUT_BODY);
        fds[i] = th_connect(rivetd.port);
        assert_true(fds[i] >= 0);
        assert_int_equal(th_send_str(fds[i], req), 0);
    }
    for (int i = 0; i < n; i++) {
        th_response_t r;
        if (th_read_response(fds[i], &r, 0, TO) != 0) fail_msg("request %d: no answer", i);
        th_close(fds[i]);
        if (r.status == 200) {
            b.ok++;
        } else if (r.status == 429) {
            b.limited++;
            const char *ra = th_header(&r, "Retry-After");
            if (ra == NULL) fail_msg("429 without Retry-After");
            char *end;
            long v = strtol(ra, &end, 10);
            if (end == ra || *end != '\0') fail_msg("Retry-After: %s", ra);
            if (b.min_retry_after == 0 || v < b.min_retry_after) b.min_retry_after = (int)v;
            assert_detail(&r, 429);
        } else {
            b.other++;
            fail_msg("status %d: %s", r.status, r.body);
        }
        th_response_free(&r);
    }
    return b;
}

static void rate_limit(void **state) {
    const char *const env[] = {"RATE_LIMIT_PER_MIN=60", NULL};
    start_rivetd(env);
    /* The burst of 20 passes, the 21st is refused. */
    burst_t b = send_burst(21, NULL);
    assert_int_equal(b.ok, 20);
    assert_int_equal(b.limited, 1);
    assert_true(b.min_retry_after >= 1);
    assert_int_equal(fake_count("POST", SESSIONS), 20);
    /* Without TRUST_PROXY, X-Forwarded-For is the client's word and changes nothing. */
    static const char *const spoof[] = {"198.51.100.1", "198.51.100.2", "198.51.100.3"};
    b = send_burst(3, spoof);
    assert_int_equal(b.ok, 0);
    assert_int_equal(b.limited, 3);
    assert_int_equal(fake_count("POST", SESSIONS), 20);
    /* The portal shares the limit. */
    th_response_t r;
    portal(NULL, NULL, "{}", &r);
    assert_status(&r, 429);
    th_response_free(&r);
    /* Other routes do not. */
    request("GET", "/health", NULL, NULL, &r);
    assert_status(&r, 200);
    th_response_free(&r);
}

/* The success page is anonymous and every call reads Stripe with the secret key: without a limit,
 * one client could spend the account's Stripe read allowance (and have Stripe refuse checkouts). */
static void rate_limit_success_page(void **state) {
    const char *const env[] = {"RATE_LIMIT_PER_MIN=60", NULL};
    start_rivetd(env);
    int answered = 0, limited = 0;
    for (int i = 0; i < 25; i++) {
        char path[128];
        snprintf(path, sizeof path, "/api/checkout/success?session_id=cs_test_flood%d", i);
        th_response_t r;
        request("GET", path, NULL, NULL, &r);
        if (r.status == 404) {
            answered++;
        } else if (r.status == 429) {
            limited++;
            assert_non_null(th_header(&r, "Retry-After"));
            assert_detail(&r, 429);
        } else {
            fail_msg("success page %d: status %d: %s", i, r.status, r.body);
        }
        th_response_free(&r);
    }
    assert_int_equal(answered, 20);
    assert_int_equal(limited, 5);
    assert_int_equal(fake_count("GET", SESSIONS), 20);
}

static void rate_limit_behind_proxy(void **state) {
    const char *const env[] = {"RATE_LIMIT_PER_MIN=60", "TRUST_PROXY=127.0.0.1", NULL};
    start_rivetd(env);
    const char *a[21], *c[21];
    for (int i = 0; i < 21; i++) {
        a[i] = "203.0.113.10";
        /* A client's own claim on the left is ignored; the proxy's entry is on the right. */
        c[i] = i % 2 ? "1.1.1.1, 203.0.113.30" : "2.2.2.2, 203.0.113.30";
    }
    burst_t b = send_burst(21, a);
    assert_int_equal(b.ok, 20);
    assert_int_equal(b.limited, 1);
    /* Another forwarded address has its own allowance, though the peer is the same. */
    static const char *const other[] = {"203.0.113.20"};
    b = send_burst(1, other);
    assert_int_equal(b.ok, 1);
    b = send_burst(21, c);
    assert_int_equal(b.ok, 20);
    assert_int_equal(b.limited, 1);
    /* The proxy itself (no header) is one more client. */
    b = send_burst(1, NULL);
    assert_int_equal(b.ok, 1);
    assert_int_equal(fake_count("POST", SESSIONS), 42);
}

/* ---- main ----------------------------------------------------------------------------------- */

static int group_setup(void **state) {
    /* A thousand sockets here, as many in rivetd (which inherits the limit), and its calls. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 4096) {
        rl.rlim_cur = rl.rlim_max < 4096 ? rl.rlim_max : 4096;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (th_fake_stripe_start(&fake, NULL) != 0) {
        fprintf(stderr, "the fake Stripe did not start\n");
        return -1;
    }
    snprintf(api_base_env, sizeof api_base_env, "STRIPE_API_BASE=http://127.0.0.1:%d", fake.port);
    return 0;
}

static int group_teardown(void **state) {
    if (rivetd.pid > 0) th_stop(&rivetd, SIGKILL, 1000);
    th_stop(&fake, SIGTERM, 5000);
    return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, fake_setup, stop_rivetd)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(create_sends_prototype_params),
        T(create_idempotency_keys_differ),
        T(create_stripe_version),
        T(create_passes_caller_idempotency_key),
        T(create_reused_idempotency_key_conflicts),
        T(create_validation),
        T(create_redirect_on_allowed_origin),
        T(retry_500_then_success),
        T(retry_429),
        T(retries_exhausted),
        T(no_retry_on_400),
        T(no_retry_when_stripe_says_so),
        T(stripe_down),
        T(deadline),
        T(client_gone_mid_call),
        T(thousand_in_flight),
        T(stripe_connections_reused),
        T(success_open),
        T(success_completed),
        T(success_expired),
        T(success_email_from_customer_details),
        T(success_bad_ids),
        T(success_unknown_session),
        T(portal_anonymous),
        T(portal_with_token),
        T(portal_by_session),
        T(cors),
        T(cors_configured),
        T(rate_limit),
        T(success_answer_checked),
        T(stripe_answers_passed_on_checked),
        T(rate_limit_success_page),
        T(rate_limit_behind_proxy),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
