/* End-to-end tests of the edge in front of rivetd: Caddy (Debian's caddy package) terminates TLS
 * with its internal CA on a free loopback port and balances over two rivetd that share one Redis.
 * Its site imports the shipped conf/Caddyfile.rivetd, so the proxy, load-balancing and health
 * check settings under test are the ones deployed, not a copy. The tests speak HTTPS through
 * libcurl, verifying Caddy's certificate against the root of its internal CA, and check that a
 * signed webhook lands in Redis, that the rate limit sees each client's own address and not one
 * the client claims, that an instance whose /ready fails leaves the rotation and comes back, and
 * that an instance that stops costs at most one webhook delivery, which Stripe's redelivery makes
 * good. Caddy's configuration and storage live in a temporary directory. Skipped only when caddy is
 * not installed (deps/install.sh installs it). Every wait is bounded. */
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>
#include <curl/curl.h>

#include "harness.h"
#include "rivet/common.h"
#include "rivet/webhook_sig.h"

#define TO       10000 /* ms: the longest any single answer may take */
#define START_MS 15000 /* ms: for Caddy to listen and hold its certificate */
#define STOP_MS  5000
#define STREAM   "rivet:provisioning"
#define WEBHOOK  "/api/webhooks/stripe"
#define CHECKOUT "/api/checkout/create"
#define JSON_CT  "Content-Type: application/json"
#define SNIPPET  "conf/Caddyfile.rivetd"

/* rivetd's rate limit lets a client address make bursts of 20 calls; at one a minute the
 * allowance does not grow noticeably while a test runs. */
#define BURST      20
#define RATE_LIMIT "RATE_LIMIT_PER_MIN=1"

/* The second instance logs in to Redis as its own user, so that disabling the user takes its
 * Redis away (and its /ready to 503) while the first keeps working. */
#define B_USER "edge_b"
#define B_PASS "edge-b-password-0123456789"

/* The price ids of the example events in test/events/. */
#define PRICE_BASIC      "price_basic_local"
#define PRICE_PRO        "price_pro_local"
#define PRICE_ENTERPRISE "price_enterprise_local"

enum { INST_A, INST_B };

typedef struct edge_s {
    int have_caddy;
    th_proc_t redis, a, b, caddy;
    char dir[64]; /* Caddy's Caddyfile and storage; removed at the end */
    char ca[128]; /* the root certificate of Caddy's internal CA */
    int https_port;
    char rid[2][17]; /* each instance's X-Request-Id prefix: a random seed per process */
    /* health_interval and health_timeout of conf/Caddyfile.rivetd: together the longest an
     * instance that stopped being ready may still get requests. */
    int health_interval_ms, health_timeout_ms;
} edge_t;

static edge_t E;
static unsigned id_counter;

/* One libcurl handle per client source address, kept so that its connection to Caddy is
 * reused like a real client's. */
typedef struct client_s {
    const char *src; /* NULL: the default source address */
    CURL *curl;
} client_t;

static client_t clients[4];

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

static int log_has(const th_proc_t *p, const char *text) {
    char *log = slurp(p->log_path);
    int found = log != NULL && strstr(log, text) != NULL;
    free(log);
    return found;
}

typedef struct log_probe_s {
    const th_proc_t *p;
    const char *text;
} log_probe_t;

static int log_probe(void *ud) {
    const log_probe_t *lp = ud;
    return log_has(lp->p, lp->text);
}

/* rivetd writes its log lines out after the answers of the same turn of its loop: wait for
 * one. */
static void wait_log(const th_proc_t *p, const char *text) {
    log_probe_t lp = {p, text};
    if (!th_eventually(log_probe, &lp, TO)) fail_msg("no \"%s\" in %s", text, p->log_path);
}

/* 1 when name is an executable on PATH. */
static int on_path(const char *name) {
    const char *path = getenv("PATH");
    if (path == NULL) path = "/usr/local/bin:/usr/bin:/bin";
    while (*path != '\0') {
        const char *colon = strchr(path, ':');
        size_t dl = colon != NULL ? (size_t)(colon - path) : strlen(path);
        char full[PATH_MAX];
        int n = snprintf(full, sizeof full, "%.*s/%s", (int)dl, dl > 0 ? path : ".", name);
        if (n > 0 && (size_t)n < sizeof full && access(full, X_OK) == 0) return 1;
        if (colon == NULL) break;
        path = colon + 1;
    }
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    RV_UNUSED(st);
    RV_UNUSED(flag);
    RV_UNUSED(ftw);
    remove(path);
    return 0;
}

/* A duration setting of conf/Caddyfile.rivetd ("\tkey 2s" or "\tkey 500ms") in milliseconds, or
 * -1 when it is missing or in another unit. */
static int snippet_ms(const char *key) {
    char *text = slurp(SNIPPET);
    if (text == NULL) return -1;
    int ms = -1;
    size_t kl = strlen(key);
    for (char *line = text; line != NULL && ms < 0;) {
        char *nl = strchr(line, '\n');
        if (nl != NULL) *nl = '\0';
        while (*line == '\t' || *line == ' ') line++;
        if (strncmp(line, key, kl) == 0 && line[kl] == ' ') {
            char *end;
            long v = strtol(line + kl + 1, &end, 10);
            if (strcmp(end, "s") == 0) ms = (int)(v * 1000);
            if (strcmp(end, "ms") == 0) ms = (int)v;
        }
        line = nl != NULL ? nl + 1 : NULL;
    }
    free(text);
    return ms;
}

/* ---- HTTPS through Caddy ------------------------------------------------------------------- */

typedef struct reply_s {
    long status;
    char rid[80];    /* X-Request-Id */
    char body[4096]; /* the start of the body, NUL-terminated */
    size_t body_len;
} reply_t;

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
    reply_t *r = ud;
    size_t len = size * n;
    size_t room = sizeof r->body - 1 - r->body_len;
    size_t take = len < room ? len : room;
    memcpy(r->body + r->body_len, data, take);
    r->body_len += take;
    r->body[r->body_len] = '\0';
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud) {
    reply_t *r = ud;
    size_t len = size * n;
    static const char name[] = "x-request-id:";
    if (len > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
        size_t a = sizeof name - 1, b = len;
        while (a < b && data[a] == ' ') a++;
        while (b > a && (data[b - 1] == '\r' || data[b - 1] == '\n' || data[b - 1] == ' ')) b--;
        snprintf(r->rid, sizeof r->rid, "%.*s", (int)(b - a), data + a);
    }
    return len;
}

static CURL *client_for(const char *src) {
    for (size_t i = 0; i < RV_ARRAY_LEN(clients); i++) {
        client_t *c = &clients[i];
        if (c->curl != NULL && (c->src == src || (c->src && src && strcmp(c->src, src) == 0))) {
            return c->curl;
        }
        if (c->curl == NULL) {
            c->src = src;
            c->curl = curl_easy_init();
            if (c->curl == NULL) fail_msg("curl_easy_init failed");
            return c->curl;
        }
    }
    fail_msg("too many client addresses");
    return NULL;
}

/* One request to Caddy over HTTPS from source address src (NULL: the default): a GET, or a
 * POST of body when body is not NULL, with extra header lines (NULL-terminated, may be NULL), in
 * HTTP version (a CURL_HTTP_VERSION_*; 0: HTTP/2 when Caddy offers it). The peer is verified
 * against Caddy's root certificate. Returns the curl result. */
static CURLcode https_try(const char *src, const char *path, const char *const hdrs[],
                          const char *body, long version, reply_t *r) {
    CURL *c = client_for(src);
    curl_easy_reset(c);
    memset(r, 0, sizeof *r);
    char url[128], iface[64];
    snprintf(url, sizeof url, "https://127.0.0.1:%d%s", E.https_port, path);
    /* No "Expect: 100-continue" round trip before bodies. */
    struct curl_slist *h = curl_slist_append(NULL, "Expect:");
    for (size_t i = 0; hdrs != NULL && hdrs[i] != NULL && h != NULL; i++) {
        struct curl_slist *nh = curl_slist_append(h, hdrs[i]);
        if (nh == NULL) curl_slist_free_all(h);
        h = nh;
    }
    if (h == NULL) fail_msg("curl_slist_append failed");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CAINFO, E.ca);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTP_VERSION, version);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)TO);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    if (src != NULL) {
        /* Loopback accepts any 127.x.y.z as a source: each stands for another client. */
        snprintf(iface, sizeof iface, "host!%s", src);
        curl_easy_setopt(c, CURLOPT_INTERFACE, iface);
    }
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    return rc;
}

static void https(const char *src, const char *path, const char *const hdrs[], const char *body,
                  long version, reply_t *r) {
    CURLcode rc = https_try(src, path, hdrs, body, version, r);
    if (rc != CURLE_OK) fail_msg("%s through Caddy: %s", path, curl_easy_strerror(rc));
}

/* Which rivetd answered: the process's seed starts every X-Request-Id it makes. */
static int instance_of(const reply_t *r) {
    for (int i = INST_A; i <= INST_B; i++)
        if (strncmp(r->rid, E.rid[i], 16) == 0) return i;
    fail_msg("X-Request-Id \"%s\" is from neither rivetd (status %ld)", r->rid, r->status);
    return -1;
}

/* ---- webhooks ------------------------------------------------------------------------------ */

static void fresh_id(char *out, size_t size) {
    snprintf(out, size, "evt_edge_%ld_%u", (long)getpid(), ++id_counter);
}

/* test/events/checkout.session.completed.json with its id, and its session's, made unique: rivetd
 * provisions a Checkout Session once. The caller frees it. */
static char *event_body(const char *id) {
    char *text = slurp("test/events/checkout.session.completed.json");
    if (text == NULL) fail_msg("cannot read test/events/ (run from the repository root)");
    cJSON *ev = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(ev)) fail_msg("the example event is not a JSON object");
    assert_true(cJSON_ReplaceItemInObjectCaseSensitive(ev, "id", cJSON_CreateString(id)));
    char session[96];
    snprintf(session, sizeof session, "cs_test_%s", id);
    cJSON *obj =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ev, "data"), "object");
    assert_true(cJSON_IsObject(obj));
    assert_true(cJSON_ReplaceItemInObjectCaseSensitive(obj, "id", cJSON_CreateString(session)));
    char *s = cJSON_PrintUnformatted(ev);
    cJSON_Delete(ev);
    assert_non_null(s);
    return s;
}

/* A webhook signed as Stripe signs it, posted to Caddy over HTTPS in HTTP version. */
static void post_webhook(const char *id, long version, reply_t *r) {
    char *body = event_body(id);
    char sig[160], hdr[200];
    int64_t now = (int64_t)time(NULL);
    int rc = rv_webhook_sign(TH_WEBHOOK_SECRET, now, body, strlen(body), sig, sizeof sig);
    assert_int_equal(rc, 0);
    snprintf(hdr, sizeof hdr, "Stripe-Signature: %s", sig);
    const char *const hdrs[] = {JSON_CT, hdr, NULL};
    https(NULL, WEBHOOK, hdrs, body, version, r);
    free(body);
}

static void expect_webhook_ok(const reply_t *r, const char *id) {
    if (r->status != 200 || strstr(r->body, "\"status\":\"ok\"") == NULL) {
        fail_msg("webhook %s: status %ld, body %s", id, r->status, r->body);
    }
}

/* 1 when the provisioning stream holds an entry for the Stripe event id. */
static int in_stream(const char *id) {
    static char out[1 << 20];
    if (th_redis(E.redis.port, out, sizeof out, "XRANGE %s - +", STREAM) != 0) {
        fail_msg("redis unreachable");
    }
    /* The reply is flattened one element a line: a field name, then its value. */
    char needle[256];
    snprintf(needle, sizeof needle, "stripe_event_id\n%s", id);
    size_t nl = strlen(needle);
    for (const char *p = strstr(out, needle); p != NULL; p = strstr(p + 1, needle))
        if (p[nl] == '\n' || p[nl] == '\0') return 1;
    return 0;
}

/* ---- processes ----------------------------------------------------------------------------- */

static int rivetd_start(th_proc_t *p, const char *redis_url) {
    const char *const env[] = {redis_url,
                               "TRUST_PROXY=127.0.0.1",
                               RATE_LIMIT,
                               "STRIPE_PRICE_BASIC=" PRICE_BASIC,
                               "STRIPE_PRICE_PRO=" PRICE_PRO,
                               "STRIPE_PRICE_ENTERPRISE=" PRICE_ENTERPRISE,
                               "RECONCILE_INTERVAL=0",
                               "LOG_LEVEL=info",
                               NULL};
    return th_rivetd_start(p, env);
}

/* The X-Request-Id prefix of a rivetd, asked directly. */
static int record_rid(const th_proc_t *p, char out[17]) {
    th_response_t r;
    if (th_request(p->port, "GET", "/health", NULL, NULL, &r) != 0) return -1;
    const char *rid = th_header(&r, "X-Request-Id");
    int ok = r.status == 200 && rid != NULL && strlen(rid) >= 16;
    if (ok) snprintf(out, 17, "%.16s", rid);
    th_response_free(&r);
    return ok ? 0 : -1;
}

static int direct_ready_status(const th_proc_t *p) {
    th_response_t r;
    if (th_request(p->port, "GET", "/ready", NULL, NULL, &r) != 0) return -1;
    int st = r.status;
    th_response_free(&r);
    return st;
}

typedef struct ready_probe_s {
    const th_proc_t *p;
    int want;
} ready_probe_t;

static int ready_is(void *ud) {
    const ready_probe_t *rp = ud;
    return direct_ready_status(rp->p) == rp->want;
}

/* Wait until a rivetd's own /ready answers want. */
static int wait_ready(const th_proc_t *p, int want, int timeout_ms) {
    ready_probe_t rp = {p, want};
    return th_eventually(ready_is, &rp, timeout_ms);
}

/* Write the test site: HTTPS on 127.0.0.1:https_port with a certificate from Caddy's internal
 * CA, the shipped proxy settings imported from conf/Caddyfile.rivetd. */
static int write_caddyfile(const char *path, int http_port, int https_port, const char *snippet) {
    FILE *f = fopen(path, "w");
    if (f == NULL) return -1;
    fprintf(f,
            "{\n"
            /* Nothing to reconfigure at run time, and no admin port to collide with. */
            "\tadmin off\n"
            /* Certificates from the internal CA; as root, Caddy would otherwise add that CA to
             * the system's trust store. */
            "\tlocal_certs\n"
            "\tskip_install_trust\n"
            /* No listener on port 80: only the HTTPS port, a free one. */
            "\tauto_https disable_redirects\n"
            "\thttp_port %d\n"
            "\thttps_port %d\n"
            /* HTTP/3 would also need the UDP port, which nothing checked is free. */
            "\tservers {\n"
            "\t\tprotocols h1 h2\n"
            "\t}\n"
            "}\n"
            "\n"
            "https://127.0.0.1:%d {\n"
            "\tbind 127.0.0.1\n"
            "\ttls internal\n"
            "\timport %s\n"
            "}\n",
            http_port, https_port, https_port, snippet);
    return fclose(f) == 0 ? 0 : -1;
}

/* Start Caddy in front of both rivetd and wait until it answers over verified HTTPS. */
static int caddy_start(void) {
    char snippet[PATH_MAX];
    if (realpath(SNIPPET, snippet) == NULL) {
        fprintf(stderr, "test_edge: %s not found (run from the repository root)\n", SNIPPET);
        return -1;
    }
    snprintf(E.dir, sizeof E.dir, "/tmp/rivet-edge-XXXXXX");
    if (mkdtemp(E.dir) == NULL) {
        E.dir[0] = '\0';
        return -1;
    }
    /* Caddy keeps its CA, certificates and state under these, all in the temporary directory. */
    char data[128], config[128], home[128], upstreams[128], caddyfile[128];
    snprintf(data, sizeof data, "XDG_DATA_HOME=%s/data", E.dir);
    snprintf(config, sizeof config, "XDG_CONFIG_HOME=%s/config", E.dir);
    snprintf(home, sizeof home, "HOME=%s", E.dir);
    snprintf(upstreams, sizeof upstreams, "RIVET_UPSTREAMS=127.0.0.1:%d 127.0.0.1:%d", E.a.port,
             E.b.port);
    snprintf(caddyfile, sizeof caddyfile, "%s/Caddyfile", E.dir);
    snprintf(E.ca, sizeof E.ca, "%s/data/caddy/pki/authorities/local/root.crt", E.dir);
    const char *const env[] = {data, config, home, upstreams, NULL};
    const char *const argv[] = {"caddy", "run", "--config", caddyfile, NULL};
    /* A free port can be taken between the check and the bind: try a few. */
    for (int attempt = 0; attempt < 3; attempt++) {
        int http_port = th_free_port(), https_port = th_free_port();
        if (http_port < 0 || https_port < 0 || http_port == https_port) continue;
        if (write_caddyfile(caddyfile, http_port, https_port, snippet) != 0) return -1;
        if (th_spawn(&E.caddy, argv, env) != 0) return -1;
        E.https_port = https_port;
        int64_t deadline = th_now_ms() + START_MS;
        CURLcode rc = CURLE_OK;
        reply_t r;
        memset(&r, 0, sizeof r);
        while (th_now_ms() < deadline && th_alive(&E.caddy)) {
            /* The certificate is issued just after start: until then the handshake fails. */
            rc = https_try(NULL, "/health", NULL, NULL, 0, &r);
            if (rc == CURLE_OK && r.status == 200) return 0;
            pause_ms(50);
        }
        if (th_alive(&E.caddy)) {
            fprintf(stderr, "test_edge: caddy on port %d: %s, status %ld %s\n", https_port,
                    curl_easy_strerror(rc), r.status, r.body);
            th_stop(&E.caddy, SIGTERM, STOP_MS);
            return -1;
        }
        /* It exited: perhaps the port was taken meanwhile. The harness shows its log. */
        th_stop(&E.caddy, SIGTERM, STOP_MS);
    }
    return -1;
}

/* ---- fixtures ------------------------------------------------------------------------------ */

static int group_teardown(void **state) {
    RV_UNUSED(state);
    int rc = 0;
    if (E.caddy.pid > 0) th_stop(&E.caddy, SIGTERM, STOP_MS);
    th_proc_t *rivetds[] = {&E.a, &E.b};
    for (size_t i = 0; i < RV_ARRAY_LEN(rivetds); i++) {
        if (rivetds[i]->pid <= 0) continue;
        int st = th_stop(rivetds[i], SIGTERM, STOP_MS);
        /* A sanitizer report or a crash makes the status non-zero. */
        if (st != 0) {
            fprintf(stderr, "rivetd %zu exited with status %d\n", i, st);
            rc = -1;
        }
    }
    if (E.redis.pid > 0) th_stop(&E.redis, SIGTERM, STOP_MS);
    if (strncmp(E.dir, "/tmp/rivet-edge-", 16) == 0)
        nftw(E.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    E.dir[0] = '\0';
    for (size_t i = 0; i < RV_ARRAY_LEN(clients); i++) {
        if (clients[i].curl != NULL) curl_easy_cleanup(clients[i].curl);
        clients[i].curl = NULL;
    }
    curl_global_cleanup();
    return rc;
}

static int group_setup(void **state) {
    memset(&E, 0, sizeof E);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
    if (!on_path("caddy")) {
        fprintf(stderr, "test_edge: caddy is not installed (deps/install.sh installs it); "
                        "skipping the edge tests\n");
        return 0;
    }
    E.have_caddy = 1;
    E.health_interval_ms = snippet_ms("health_interval");
    E.health_timeout_ms = snippet_ms("health_timeout");
    if (E.health_interval_ms <= 0 || E.health_timeout_ms <= 0) {
        fprintf(stderr, "test_edge: no health_interval or health_timeout in %s\n", SNIPPET);
        return -1;
    }
    char out[256] = "", url_a[128], url_b[128];
    if (th_redis_start(&E.redis) != 0) goto fail;
    if (th_redis(E.redis.port, out, sizeof out, "ACL SETUSER %s on >%s ~* &* +@all", B_USER,
                 B_PASS) != 0 ||
        strcmp(out, "OK") != 0) {
        fprintf(stderr, "test_edge: ACL SETUSER: %s\n", out);
        goto fail;
    }
    snprintf(url_a, sizeof url_a, "REDIS_URL=redis://127.0.0.1:%d/0", E.redis.port);
    snprintf(url_b, sizeof url_b, "REDIS_URL=redis://%s:%s@127.0.0.1:%d/0", B_USER, B_PASS,
             E.redis.port);
    if (rivetd_start(&E.a, url_a) != 0 || rivetd_start(&E.b, url_b) != 0) goto fail;
    if (record_rid(&E.a, E.rid[INST_A]) != 0 || record_rid(&E.b, E.rid[INST_B]) != 0 ||
        strcmp(E.rid[INST_A], E.rid[INST_B]) == 0) {
        fprintf(stderr, "test_edge: cannot tell the two rivetd apart by X-Request-Id\n");
        goto fail;
    }
    if (!wait_ready(&E.a, 200, TO) || !wait_ready(&E.b, 200, TO)) {
        fprintf(stderr, "test_edge: a rivetd never became ready\n");
        goto fail;
    }
    if (caddy_start() != 0) goto fail;
    return 0;
fail:
    group_teardown(state);
    return -1;
}

#define NEED_CADDY()                                                                               \
    do {                                                                                           \
        if (!E.have_caddy) skip();                                                                 \
    } while (0)

/* ---- tests --------------------------------------------------------------------------------- */

/* Signed webhooks over HTTPS, HTTP/2 and HTTP/1.1, reach rivetd intact (the signature covers the
 * exact body) and are in the provisioning stream once answered 200, whichever instance took
 * them. */
static void webhook_over_https(void **state) {
    RV_UNUSED(state);
    NEED_CADDY();
    int by[2] = {0, 0};
    for (int i = 0; i < 6; i++) {
        char id[64];
        fresh_id(id, sizeof id);
        reply_t r;
        post_webhook(id, i % 2 ? CURL_HTTP_VERSION_1_1 : CURL_HTTP_VERSION_2TLS, &r);
        expect_webhook_ok(&r, id);
        by[instance_of(&r)]++;
        if (!in_stream(id)) fail_msg("event %s answered 200 but is not in %s", id, STREAM);
    }
    assert_int_equal(by[INST_A] + by[INST_B], 6);
}

/* Per-instance counts of checkouts let through (422: the empty body fails validation after the
 * rate limit, so nothing reaches Stripe) and refused with 429. */
typedef struct tally_s {
    int pass[2];
    int limited[2];
} tally_t;

static void checkout(const char *src, const char *xff, tally_t *t) {
    char h[160];
    const char *hdrs[3] = {JSON_CT, NULL, NULL};
    if (xff != NULL) {
        snprintf(h, sizeof h, "X-Forwarded-For: %s", xff);
        hdrs[1] = h;
    }
    reply_t r;
    https(src, CHECKOUT, hdrs, "{}", 0, &r);
    int i = instance_of(&r);
    if (r.status == 422) {
        t->pass[i]++;
    } else if (r.status == 429) {
        t->limited[i]++;
    } else {
        fail_msg("checkout from %s: status %ld, body %s", src, r.status, r.body);
    }
}

/* Checkouts from src until each instance has refused it once. */
static tally_t exhaust(const char *src) {
    tally_t t = {{0, 0}, {0, 0}};
    for (int n = 0; n < 8 * BURST && (t.limited[INST_A] == 0 || t.limited[INST_B] == 0); n++) {
        checkout(src, NULL, &t);
    }
    if (t.limited[INST_A] == 0 || t.limited[INST_B] == 0) {
        fail_msg("%s was not refused by both instances: %d/%d passed, %d/%d limited", src,
                 t.pass[INST_A], t.pass[INST_B], t.limited[INST_A], t.limited[INST_B]);
    }
    return t;
}

/* Caddy passes each client's own address on in X-Forwarded-For, and rivetd, trusting Caddy,
 * limits each address on its own: two clients behind the same proxy do not share an allowance,
 * and what a client writes into X-Forwarded-For itself gets it nothing. */
static void rate_limit_per_client(void **state) {
    RV_UNUSED(state);
    NEED_CADDY();
    /* Each instance keeps its own counts: a client gets exactly a burst from each. */
    tally_t t = exhaust("127.0.0.2");
    assert_int_equal(t.pass[INST_A], BURST);
    assert_int_equal(t.pass[INST_B], BURST);
    /* Claims of another address, alone or followed by the proxy's own, change nothing. */
    static const char *const spoof[] = {"203.0.113.77", "198.51.100.9, 127.0.0.1", "127.0.0.1",
                                        "unknown"};
    tally_t s = {{0, 0}, {0, 0}};
    for (size_t i = 0; i < RV_ARRAY_LEN(spoof); i++) {
        for (int k = 0; k < 3; k++) checkout("127.0.0.2", spoof[i], &s);
    }
    assert_int_equal(s.pass[INST_A] + s.pass[INST_B], 0);
    /* Another client has its whole allowance, though it reaches rivetd through the same Caddy. */
    t = exhaust("127.0.0.3");
    assert_int_equal(t.pass[INST_A], BURST);
    assert_int_equal(t.pass[INST_B], BURST);
    /* rivetd's own account of whom it limited: the clients' addresses, never a claimed one nor
     * Caddy's. The last line is there once those before it are. */
    const th_proc_t *both[] = {&E.a, &E.b};
    for (size_t i = 0; i < RV_ARRAY_LEN(both); i++) {
        wait_log(both[i], "ratelimit: 127.0.0.3 limited");
        assert_true(log_has(both[i], "ratelimit: 127.0.0.2 limited"));
        assert_false(log_has(both[i], "ratelimit: 127.0.0.1 "));
        assert_false(log_has(both[i], "ratelimit: 203.0.113.77"));
        assert_false(log_has(both[i], "ratelimit: 198.51.100.9"));
        assert_false(log_has(both[i], "ratelimit: unknown"));
    }
}

/* GET / through Caddy; it must succeed. Returns the instance that answered. */
static int get_root(void) {
    reply_t r;
    https(NULL, "/", NULL, NULL, 0, &r);
    if (r.status != 200) fail_msg("GET / through Caddy: status %ld, body %s", r.status, r.body);
    return instance_of(&r);
}

/* An instance whose /ready fails (here: it lost Redis) gets no requests once Caddy's active
 * health check has seen it, the other one answers everything meanwhile, and the instance
 * rejoins when it is ready again. */
static void unready_instance_leaves_rotation(void **state) {
    RV_UNUSED(state);
    NEED_CADDY();
    char out[256];
    int seen[2] = {0, 0};
    for (int n = 0; n < 60 && (seen[INST_A] == 0 || seen[INST_B] == 0); n++) seen[get_root()]++;
    if (seen[INST_A] == 0 || seen[INST_B] == 0) fail_msg("one instance never answered");

    /* B's Redis user is disabled and its connection closed: it cannot log in again. */
    assert_int_equal(th_redis(E.redis.port, out, sizeof out, "ACL SETUSER %s off", B_USER), 0);
    assert_string_equal(out, "OK");
    assert_int_equal(th_redis(E.redis.port, out, sizeof out, "CLIENT KILL USER %s", B_USER), 0);
    if (!wait_ready(&E.b, 503, TO)) fail_msg("B's /ready never answered 503");

    /* Within one interval plus the check's timeout Caddy has seen it; until then B may still
     * answer (GET / needs no Redis). Twenty answers in a row from A mark the change. */
    int64_t deadline = th_now_ms() + 2 * E.health_interval_ms + E.health_timeout_ms + 1000;
    int run = 0;
    while (run < 20) {
        if (th_now_ms() > deadline) fail_msg("B still gets requests after its /ready failed");
        run = get_root() == INST_A ? run + 1 : 0;
    }
    /* From then on A answers everything, webhooks included, and nothing fails. */
    for (int n = 0; n < 40; n++) assert_int_equal(get_root(), INST_A);
    for (int n = 0; n < 5; n++) {
        char id[64];
        fresh_id(id, sizeof id);
        reply_t r;
        post_webhook(id, 0, &r);
        expect_webhook_ok(&r, id);
        assert_int_equal(instance_of(&r), INST_A);
        assert_true(in_stream(id));
    }

    /* With its user enabled again B reconnects, passes the check and gets requests again. */
    assert_int_equal(th_redis(E.redis.port, out, sizeof out, "ACL SETUSER %s on", B_USER), 0);
    assert_string_equal(out, "OK");
    if (!wait_ready(&E.b, 200, 3 * TO / 2)) fail_msg("B's /ready never answered 200 again");
    deadline = th_now_ms() + 2 * E.health_interval_ms + E.health_timeout_ms + 1000;
    while (get_root() != INST_B) {
        if (th_now_ms() > deadline) fail_msg("B did not rejoin the rotation once ready");
        pause_ms(20);
    }
}

/* An instance that stops (SIGTERM, no socket unit keeping its port) refuses connections: Caddy
 * leaves it out after the first refusal, so at most one webhook meets it and gets 502 (Caddy
 * does not retry, see conf/Caddyfile.rivetd); Stripe would deliver it again, and the redelivery
 * lands. No event is lost or recorded twice, and the other instance stays in the rotation. The
 * webhooks go over HTTP/1.1: over HTTP/2, Caddy 2.6 resets the stream of a request that could not
 * reach an instance while its body is still arriving, which libcurl reports as a transport error
 * instead of the 502. */
static void webhook_when_instance_stops(void **state) {
    RV_UNUSED(state);
    NEED_CADDY();
    int st = th_stop(&E.b, SIGTERM, STOP_MS);
    if (st != 0) fail_msg("B exited with status %d", st);
    int failed = 0;
    for (int n = 0; n < 10; n++) {
        char id[64];
        fresh_id(id, sizeof id);
        reply_t r;
        post_webhook(id, CURL_HTTP_VERSION_1_1, &r);
        if (r.status == 502) {
            failed++;
            post_webhook(id, CURL_HTTP_VERSION_1_1, &r);
        }
        expect_webhook_ok(&r, id);
        assert_int_equal(instance_of(&r), INST_A);
        assert_true(in_stream(id));
    }
    assert_true(failed <= 1);
    /* Each event once: the stream holds exactly the entries of the answered events. */
    char out[64];
    assert_int_equal(th_redis(E.redis.port, out, sizeof out, "XLEN %s", STREAM), 0);
    assert_int_equal(strtol(out, NULL, 10), (long)id_counter);
    for (int n = 0; n < 20; n++) assert_int_equal(get_root(), INST_A);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(webhook_over_https),
        cmocka_unit_test(rate_limit_per_client),
        cmocka_unit_test(unready_instance_leaves_rotation),
        cmocka_unit_test(webhook_when_instance_stops),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
