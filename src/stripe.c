/* Stripe API calls on top of the HTTP client. The pure part encodes forms in Stripe's bracket
 * notation and decides about retries; the rest runs one call as a series of tries inside a single
 * deadline: every try carries the same Idempotency-Key, waits between tries grow exponentially
 * with jitter, and Stripe's error object is read back for the caller and the log. The secret key
 * and request bodies are never logged. */
#include "rivet/stripe.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rivet/common.h"
#include "rivet/json.h"
#include "rivet/list.h"
#include "rivet/log.h"

#define BACKOFF_FIRST_MS 500u
#define BACKOFF_MAX_MS   8000u
#define IDEM_KEY_MAX     255
#define MAX_HEADERS      8

/* ---- pure part -------------------------------------------------------------------------- */

static int unreserved(unsigned char ch) {
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

/* Append s percent-encoded: RFC 3986 unreserved characters as they are, every other byte as
 * %XX with upper-case hex. */
static int pct_encode(rv_buf_t *out, const char *s) {
    static const char hex[] = "0123456789ABCDEF";
    size_t need = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) need += unreserved(*p) ? 1 : 3;
    int rc = rv_buf_reserve(out, need);
    if (rc != 0) return rc;
    char *w = out->data + out->len;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (unreserved(*p)) {
            *w++ = (char)*p;
        } else {
            *w++ = '%';
            *w++ = hex[*p >> 4];
            *w++ = hex[*p & 15];
        }
    }
    out->len += need;
    out->data[out->len] = '\0';
    return 0;
}

int rv_form_encode(const rv_form_kv_t *kv, size_t n, rv_buf_t *out) {
    if (out == NULL || (kv == NULL && n > 0)) return RV_EINVAL;
    size_t start = out->len;
    /* Even with no pairs the result is a string, never NULL. */
    int rc = rv_buf_append(out, "", 0);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (kv[i].key == NULL || kv[i].key[0] == '\0') {
            rc = RV_EINVAL;
            break;
        }
        if (i > 0) rc = rv_buf_append(out, "&", 1);
        if (rc == 0) rc = pct_encode(out, kv[i].key);
        if (rc == 0) rc = rv_buf_append(out, "=", 1);
        if (rc == 0) rc = pct_encode(out, kv[i].value != NULL ? kv[i].value : "");
    }
    if (rc != 0 && out->data != NULL) {
        /* Leave the buffer as it was. */
        out->len = start;
        out->data[start] = '\0';
    }
    return rc;
}

int rv_url_escape(const char *s, rv_buf_t *out) {
    if (s == NULL || out == NULL) return RV_EINVAL;
    return pct_encode(out, s);
}

uint64_t rv_stripe_backoff_ms(unsigned retry, double rnd) {
    uint64_t base = BACKOFF_FIRST_MS;
    for (unsigned i = 1; i < retry && base < BACKOFF_MAX_MS; i++) base *= 2;
    if (base > BACKOFF_MAX_MS) base = BACKOFF_MAX_MS;
    /* NaN fails every comparison: treat it like 0. */
    if (!(rnd >= 0.0)) rnd = 0.0;
    if (rnd > 1.0) rnd = 1.0;
    return (uint64_t)((double)base * (0.5 + 0.5 * rnd));
}

static int word_is(const char *s, const char *word) {
    while (*s == ' ' || *s == '\t') s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    return rv_strieq(s, n, word);
}

int rv_stripe_should_retry(int err, int status, const char *should_retry_hdr) {
    if (should_retry_hdr != NULL) {
        if (word_is(should_retry_hdr, "true")) return 1;
        if (word_is(should_retry_hdr, "false")) return 0;
    }
    if (err != 0) return 1;
    return status == 409 || status == 429 || status >= 500;
}

/* ---- configuration ---------------------------------------------------------------------- */

/* Shared, reference-counted settings: a reload swaps in new ones while calls in flight keep
 * theirs. */
typedef struct conf_s {
    unsigned refs;
    char *api_base;
    char *auth;    /* "Authorization: Bearer <key>" */
    char *version; /* "Stripe-Version: <v>", NULL when not sent */
    uint64_t timeout_ms;
    unsigned max_retries;
} conf_t;

static void conf_release(conf_t *f) {
    if (f == NULL || --f->refs > 0) return;
    if (f->auth != NULL) {
        /* The key should not linger in freed memory. */
        memset(f->auth, 0, strlen(f->auth));
    }
    free(f->auth);
    free(f->api_base);
    free(f->version);
    free(f);
}

static int printable(const char *s) { return rv_printable(s, 1); }

static char *join(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s == NULL) return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

static int conf_new(const rv_stripe_opts_t *o, conf_t **out) {
    if (o == NULL || o->api_base == NULL || o->secret_key == NULL) return RV_EINVAL;
    if (strncmp(o->api_base, "https://", 8) != 0 && strncmp(o->api_base, "http://", 7) != 0) {
        return RV_EINVAL;
    }
    if (!printable(o->api_base) || strchr(o->api_base, ' ') != NULL) return RV_EINVAL;
    if (o->secret_key[0] == '\0' || !printable(o->secret_key) || strchr(o->secret_key, ' ')) {
        return RV_EINVAL;
    }
    const char *version = o->api_version != NULL ? o->api_version : "";
    if (!printable(version)) return RV_EINVAL;
    if (o->timeout_ms == 0) return RV_EINVAL;
    conf_t *f = calloc(1, sizeof *f);
    if (f == NULL) return RV_ENOMEM;
    f->refs = 1;
    f->timeout_ms = o->timeout_ms;
    f->max_retries = o->max_retries;
    f->api_base = strdup(o->api_base);
    f->auth = join("Authorization: Bearer ", o->secret_key);
    if (version[0] != '\0') f->version = join("Stripe-Version: ", version);
    if (f->api_base == NULL || f->auth == NULL || (version[0] != '\0' && f->version == NULL)) {
        conf_release(f);
        return RV_ENOMEM;
    }
    size_t n = strlen(f->api_base);
    while (n > 0 && f->api_base[n - 1] == '/') f->api_base[--n] = '\0';
    *out = f;
    return 0;
}

/* ---- calls ------------------------------------------------------------------------------ */

enum call_state { CALL_TRY, CALL_WAIT, CALL_DONE };

struct rv_stripe_s {
    rv_http_client_t *http;
    uv_loop_t *loop;
    conf_t *conf;
    rv_stripe_call_t *calls;
    size_t inflight;
};

/* What the last try brought back. */
typedef struct outcome_s {
    int err;
    int status;
    cJSON *json;
    char *request_id;
    int64_t date; /* the answer's Date header, Unix seconds; 0 when absent */
} outcome_t;

struct rv_stripe_call_s {
    rv_stripe_t *s; /* NULL once unlinked */
    conf_t *conf;
    int state;
    int post;
    int once;   /* no retries: the caller paces its own tries */
    char *path; /* for the log */
    char *url;
    char *body;
    size_t body_len;
    char *idem;        /* "Idempotency-Key: <key>", POST only */
    uint64_t deadline; /* rv_now_ms() */
    unsigned attempts;
    rv_http_req_t *req; /* the try in flight */
    uv_timer_t timer;   /* the wait before a retry */
    int timer_inited;
    outcome_t last;
    rv_stripe_cb cb;
    void *data;
    rv_stripe_call_t *prev, *next;
};

/* An IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") as Unix seconds; 0 when absent or not one. */
static int64_t http_date(const char *v) {
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (v == NULL) return 0;
    const char *end = strptime(v, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0') return 0;
    time_t t = timegm(&tm);
    return t > 0 ? (int64_t)t : 0;
}

static void outcome_clear(outcome_t *o) {
    cJSON_Delete(o->json);
    free(o->request_id);
    memset(o, 0, sizeof *o);
}

static void call_link(rv_stripe_t *s, rv_stripe_call_t *c) {
    c->s = s;
    RV_LIST_PUSH(s->calls, c);
    s->inflight++;
}

static void call_unlink(rv_stripe_call_t *c) {
    rv_stripe_t *s = c->s;
    if (s == NULL) return;
    RV_LIST_REMOVE(s->calls, c);
    c->s = NULL;
    s->inflight--;
}

static void on_call_closed(uv_handle_t *h) {
    free(rv_container_of((uv_timer_t *)h, rv_stripe_call_t, timer));
}

/* Release everything but the struct, which waits for its timer to close when it has one. */
static void call_free(rv_stripe_call_t *c) {
    outcome_clear(&c->last);
    conf_release(c->conf);
    free(c->path);
    free(c->url);
    free(c->body);
    free(c->idem);
    if (c->timer_inited) {
        uv_close((uv_handle_t *)&c->timer, on_call_closed);
    } else {
        free(c);
    }
}

static const char *jstr(const cJSON *obj, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const cJSON *error_object(const outcome_t *o) {
    if (o->err != 0 || (o->status >= 200 && o->status < 300)) return NULL;
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(o->json, "error");
    return cJSON_IsObject(e) ? e : NULL;
}

/* Report the last try's outcome, with err in place of its own; the call is freed after. */
static void finish(rv_stripe_call_t *c, int err) {
    call_unlink(c);
    c->state = CALL_DONE;
    rv_stripe_result_t res;
    memset(&res, 0, sizeof res);
    res.err = err;
    res.status = c->last.status;
    res.json = c->last.json;
    res.request_id = c->last.request_id;
    res.date = c->last.date;
    res.attempts = c->attempts;
    const cJSON *e = error_object(&c->last);
    if (e != NULL) {
        res.err_type = jstr(e, "type");
        res.err_code = jstr(e, "code");
        res.err_message = jstr(e, "message");
        res.err_param = jstr(e, "param");
    }
    c->cb(c->data, &res);
    call_free(c);
}

static void log_failed_try(const rv_stripe_call_t *c, const rv_http_response_t *res) {
    static rv_log_limit_t lim = {.what = "stripe: tries failed"};
    const char *method = c->post ? "POST" : "GET";
    if (res->err != 0) {
        rv_warn_limited(&lim, "stripe: %s %s try %u failed: %s (%s)", method, c->path, c->attempts,
                        rv_strerror(res->err), res->err_text ? res->err_text : "-");
        return;
    }
    const cJSON *e = error_object(&c->last);
    const char *type = e ? jstr(e, "type") : NULL;
    const char *code = e ? jstr(e, "code") : NULL;
    const char *msg = e ? jstr(e, "message") : NULL;
    rv_warn_limited(&lim,
                    "stripe: %s %s try %u failed: HTTP %d type=%s code=%s request_id=%s "
                    "message=%.300s",
                    method, c->path, c->attempts, res->status, type ? type : "-", code ? code : "-",
                    c->last.request_id ? c->last.request_id : "-", msg ? msg : "-");
}

static double jitter(void) {
    uint32_t v;
    if (rv_random(&v, sizeof v) != 0) return 0.5;
    return (double)v / 4294967296.0;
}

static void on_http(void *data, const rv_http_response_t *res);

static int start_try(rv_stripe_call_t *c) {
    uint64_t now = rv_now_ms();
    if (now >= c->deadline) return RV_ETIMEDOUT;
    const char *headers[MAX_HEADERS];
    size_t n = 0;
    headers[n++] = c->conf->auth;
    headers[n++] = "User-Agent: rivetd/" RV_VERSION;
    headers[n++] = "Accept: application/json";
    if (c->conf->version != NULL) headers[n++] = c->conf->version;
    if (c->post) {
        headers[n++] = "Content-Type: application/x-www-form-urlencoded";
        headers[n++] = c->idem;
    }
    headers[n] = NULL;
    rv_http_opts_t o;
    memset(&o, 0, sizeof o);
    o.method = c->post ? "POST" : "GET";
    o.url = c->url;
    o.headers = headers;
    o.body = c->post ? c->body : NULL;
    o.body_len = c->post ? c->body_len : 0;
    /* Each try may use whatever is left of the call's deadline. */
    o.timeout_ms = c->deadline - now;
    int rc = rv_http_request(c->s->http, &o, on_http, c, &c->req);
    if (rc != 0) return rc;
    c->attempts++;
    c->state = CALL_TRY;
    return 0;
}

/* The deadline leaves no room for another try: a timeout when the last try got no answer,
 * else that answer. */
static void finish_at_deadline(rv_stripe_call_t *c) {
    finish(c, c->last.err != 0 ? RV_ETIMEDOUT : 0);
}

static void on_backoff(uv_timer_t *t) {
    rv_stripe_call_t *c = rv_container_of(t, rv_stripe_call_t, timer);
    int rc = start_try(c);
    if (rc == 0) return;
    if (rc == RV_ETIMEDOUT) {
        finish_at_deadline(c);
        return;
    }
    rv_warn("stripe: %s %s: cannot start try %u: %s", c->post ? "POST" : "GET", c->path,
            c->attempts + 1, rv_strerror(rc));
    finish(c, c->last.err);
}

static void on_http(void *data, const rv_http_response_t *res) {
    rv_stripe_call_t *c = data;
    c->req = NULL;
    outcome_clear(&c->last);
    c->last.err = res->err;
    c->last.status = res->err ? 0 : res->status;
    if (res->err == 0 && res->body_len > 0) {
        c->last.json = rv_json_parse_nul_visible(res->body, res->body_len);
    }
    const char *rid = rv_http_response_header(res, "Request-Id");
    if (rid != NULL) c->last.request_id = strdup(rid);
    c->last.date = http_date(rv_http_response_header(res, "Date"));
    if (res->err == 0 && res->status >= 200 && res->status < 300) {
        finish(c, 0);
        return;
    }
    log_failed_try(c, res);
    const char *hint = res->err == 0 ? rv_http_response_header(res, "Stripe-Should-Retry") : NULL;
    if (c->once || !rv_stripe_should_retry(res->err, res->status, hint) ||
        c->attempts > c->conf->max_retries) {
        finish(c, res->err);
        return;
    }
    uint64_t wait = rv_stripe_backoff_ms(c->attempts, jitter());
    uint64_t now = rv_now_ms();
    if (now >= c->deadline || c->deadline - now <= wait) {
        finish_at_deadline(c);
        return;
    }
    if (!c->timer_inited) {
        uv_timer_init(c->s->loop, &c->timer);
        c->timer_inited = 1;
    }
    int rc = uv_timer_start(&c->timer, on_backoff, wait, 0);
    if (rc != 0) {
        rv_error("stripe: uv_timer_start: %s", uv_strerror(rc));
        finish(c, res->err);
        return;
    }
    c->state = CALL_WAIT;
}

static int path_ok(const char *path) {
    if (path == NULL || path[0] != '/') return 0;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f) return 0;
    }
    return 1;
}

static int idem_new(const char *given, char **out) {
    if (given != NULL) {
        size_t n = strlen(given);
        if (n == 0 || n > IDEM_KEY_MAX || !printable(given)) return RV_EINVAL;
        *out = join("Idempotency-Key: ", given);
        return *out != NULL ? 0 : RV_ENOMEM;
    }
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[16];
    char key[7 + 2 * sizeof rnd + 1] = "rivetd-";
    if (rv_random(rnd, sizeof rnd) != 0) return RV_EIO;
    for (size_t i = 0; i < sizeof rnd; i++) {
        key[7 + 2 * i] = hex[rnd[i] >> 4];
        key[8 + 2 * i] = hex[rnd[i] & 15];
    }
    key[sizeof key - 1] = '\0';
    *out = join("Idempotency-Key: ", key);
    return *out != NULL ? 0 : RV_ENOMEM;
}

static int call_start(rv_stripe_t *s, rv_stripe_call_t *c, rv_stripe_cb cb, void *data,
                      rv_stripe_call_t **out) {
    c->s = s;
    c->cb = cb;
    c->data = data;
    c->conf = s->conf;
    c->conf->refs++;
    c->deadline = rv_now_ms() + c->conf->timeout_ms;
    c->url = join(c->conf->api_base, c->path);
    int rc = c->url != NULL ? start_try(c) : RV_ENOMEM;
    if (rc != 0) {
        c->s = NULL;
        call_free(c);
        return rc;
    }
    call_link(s, c);
    if (out != NULL) *out = c;
    return 0;
}

int rv_stripe_post(rv_stripe_t *s, const char *path, const rv_form_kv_t *params, size_t n,
                   const char *idem_key, rv_stripe_cb cb, void *data, rv_stripe_call_t **out) {
    if (s == NULL || !path_ok(path) || cb == NULL || (params == NULL && n > 0)) return RV_EINVAL;
    rv_stripe_call_t *c = calloc(1, sizeof *c);
    if (c == NULL) return RV_ENOMEM;
    c->post = 1;
    rv_buf_t body = RV_BUF_INIT;
    int rc = rv_form_encode(params, n, &body);
    if (rc == 0) rc = idem_new(idem_key, &c->idem);
    if (rc == 0 && (c->path = strdup(path)) == NULL) rc = RV_ENOMEM;
    if (rc != 0) {
        rv_buf_free(&body);
        free(c->idem);
        free(c->path);
        free(c);
        return rc;
    }
    c->body = rv_buf_steal(&body, &c->body_len);
    return call_start(s, c, cb, data, out);
}

static int get(rv_stripe_t *s, const char *path, int once, rv_stripe_cb cb, void *data,
               rv_stripe_call_t **out) {
    if (s == NULL || !path_ok(path) || cb == NULL) return RV_EINVAL;
    rv_stripe_call_t *c = calloc(1, sizeof *c);
    if (c == NULL) return RV_ENOMEM;
    c->once = once;
    c->path = strdup(path);
    if (c->path == NULL) {
        free(c);
        return RV_ENOMEM;
    }
    return call_start(s, c, cb, data, out);
}

int rv_stripe_get(rv_stripe_t *s, const char *path, rv_stripe_cb cb, void *data,
                  rv_stripe_call_t **out) {
    return get(s, path, 0, cb, data, out);
}

int rv_stripe_get_once(rv_stripe_t *s, const char *path, rv_stripe_cb cb, void *data,
                       rv_stripe_call_t **out) {
    return get(s, path, 1, cb, data, out);
}

void rv_stripe_cancel(rv_stripe_call_t *c) {
    /* During its own callback the call is over already and freed right after. */
    if (c == NULL || c->state == CALL_DONE) return;
    if (c->state == CALL_TRY && c->req != NULL) rv_http_cancel(c->req);
    if (c->state == CALL_WAIT) uv_timer_stop(&c->timer);
    c->req = NULL;
    c->state = CALL_DONE;
    call_unlink(c);
    call_free(c);
}

size_t rv_stripe_inflight(const rv_stripe_t *s) { return s != NULL ? s->inflight : 0; }

int rv_stripe_init(rv_http_client_t *http, uv_loop_t *loop, const rv_stripe_opts_t *opts,
                   rv_stripe_t **out) {
    if (http == NULL || loop == NULL || out == NULL) return RV_EINVAL;
    rv_stripe_t *s = calloc(1, sizeof *s);
    if (s == NULL) return RV_ENOMEM;
    int rc = conf_new(opts, &s->conf);
    if (rc != 0) {
        free(s);
        return rc;
    }
    s->http = http;
    s->loop = loop;
    *out = s;
    return 0;
}

int rv_stripe_configure(rv_stripe_t *s, const rv_stripe_opts_t *opts) {
    if (s == NULL) return RV_EINVAL;
    conf_t *f;
    int rc = conf_new(opts, &f);
    if (rc != 0) return rc;
    conf_release(s->conf);
    s->conf = f;
    return 0;
}

void rv_stripe_close(rv_stripe_t *s) {
    if (s == NULL) return;
    while (s->calls != NULL) rv_stripe_cancel(s->calls);
    conf_release(s->conf);
    free(s);
}
