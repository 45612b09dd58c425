/* Topology tests: several rivetd (each standing for a machine) on one Redis deployment, and that
 * deployment failing over. Real processes on free loopback ports: rivetd, redis-server (each in
 * its own temporary directory, appendonly yes), three redis-server --sentinel, and the fake
 * Stripe (test/fake_stripe.py).
 *
 * 1. Several instances, one Redis: the same events posted to both instances at once, and again,
 *    land once; both reconcilers run every second and never overlap (one Redis lock); both answer
 *    the same entitlements.
 * 2. Discovery: the primary is found through REDIS_SENTINELS when the first address is dead.
 * 3. A duplicate acknowledged through the other instance waits for the replica like the
 *    original (REDIS_MIN_REPLICAS covers the event, not only this connection's own writes).
 * 4. Failover: primary, replica, three sentinels, two rivetd with REDIS_MIN_REPLICAS=1 and a
 *    steady stream of webhooks; kill -9 of the primary; the sentinels promote the replica and
 *    rivetd follows; the old primary restarts and rejoins as a replica. Every event answered 200
 *    is in the final primary's stream exactly once; every other one lands exactly once when
 *    redelivered; nothing else is there. The refusal window is printed.
 *
 * Tests 2-4 share one deployment (started by the first that needs it). Every wait is a polled
 * deadline; nothing sleeps for a guessed time except the senders' pacing. TOPO_VERBOSE=1 prints
 * an instance's Redis log lines after the failover. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <arpa/inet.h>
#include <cJSON.h>
#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "rivet/common.h"
#include "rivet/webhook_sig.h"

#define STREAM      "rivet:provisioning"
#define WEBHOOK     "/api/webhooks/stripe"
#define MASTER      "rivetm"
#define STOP_MS     10000
#define JSON_CT     "Content-Type: application/json\r\n"
#define FORM_CT     "Content-Type: application/x-www-form-urlencoded\r\n"
#define STRIPE_AUTH "Authorization: Bearer " TH_STRIPE_KEY "\r\n"
#define BEARER      "Authorization: Bearer " TH_API_TOKEN "\r\n"
/* The prices of test/events/, which the events of tests 2-4 carry. */
#define LOCAL_PRICES                                                                               \
    "STRIPE_PRICE_BASIC=price_basic_local", "STRIPE_PRICE_PRO=price_pro_local",                    \
        "STRIPE_PRICE_ENTERPRISE=price_enterprise_local"

/* ---- small utilities ---------------------------------------------------------------------- */

static void nap_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A whole file as a malloc'd string, or NULL. */
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

static int log_count(const th_proc_t *p, const char *needle) {
    char *log = slurp(p->log_path);
    if (log == NULL) return 0;
    int n = 0;
    for (char *s = log; (s = strstr(s, needle)) != NULL; s += strlen(needle)) n++;
    free(log);
    return n;
}

static int streq(const char *a, const char *b) {
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* Directories this file made (data and sentinel directories), removed by the teardowns. */
static char dirs[8][64];
static int ndirs;

static const char *make_dir(void) {
    if (ndirs >= (int)RV_ARRAY_LEN(dirs)) fail_msg("too many directories");
    char *d = dirs[ndirs++];
    snprintf(d, sizeof dirs[0], "/tmp/rivet-topo-XXXXXX");
    if (mkdtemp(d) == NULL) fail_msg("mkdtemp: %s", strerror(errno));
    return d;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void remove_dirs(void) {
    for (int i = 0; i < ndirs; i++)
        if (strncmp(dirs[i], "/tmp/rivet-topo-", 16) == 0)
            nftw(dirs[i], rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    ndirs = 0;
}

/* ---- HTTP without the harness's per-descriptor buffers, so that threads can post ----------- */

/* POST body to 127.0.0.1:port path on a new connection (Connection: close). Returns the status,
 * or -1 when no complete answer came within timeout_ms. */
static int post_status(int port, const char *path, const char *headers, const char *body,
                       int timeout_ms) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    size_t blen = strlen(body);
    size_t cap = blen + 1024;
    char *req = malloc(cap);
    if (req == NULL) {
        close(fd);
        return -1;
    }
    int n = snprintf(req, cap,
                     "POST %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n",
                     path, port, headers, blen);
    memcpy(req + n, body, blen);
    size_t total = (size_t)n + blen, off = 0;
    while (off < total) {
        ssize_t w = send(fd, req + off, total - off, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR) continue;
            free(req);
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    free(req);
    char buf[8192];
    size_t got = 0;
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (r < 0 && errno == EINTR && th_now_ms() < deadline) continue;
        if (r <= 0) break;
        got += (size_t)r;
        if (got == sizeof buf - 1) break;
    }
    close(fd);
    buf[got] = '\0';
    /* The whole answer is there once the headers ended and the peer closed. */
    if (got < 12 || strncmp(buf, "HTTP/1.1 ", 9) != 0 || strstr(buf, "\r\n\r\n") == NULL) return -1;
    return atoi(buf + 9);
}

/* POST a webhook body signed as Stripe signs it, now. */
static int post_signed(int port, const char *body, int timeout_ms) {
    char sig[128], headers[256];
    if (rv_webhook_sign(TH_WEBHOOK_SECRET, (int64_t)time(NULL), body, strlen(body), sig,
                        sizeof sig) != 0)
        return -1;
    snprintf(headers, sizeof headers, JSON_CT "Stripe-Signature: %s\r\n", sig);
    return post_status(port, WEBHOOK, headers, body, timeout_ms);
}

static cJSON *http_json(int port, const char *method, const char *path, const char *headers,
                        const char *body, int want) {
    th_response_t r;
    if (th_request(port, method, path, headers, body, &r) != 0)
        fail_msg("%s %s (port %d): no complete answer", method, path, port);
    if (r.status != want)
        fail_msg("%s %s: %d, expected %d: %.300s", method, path, r.status, want,
                 r.body ? r.body : "");
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    th_response_free(&r);
    if (j == NULL) fail_msg("%s %s: the answer is not JSON", method, path);
    return j;
}

static const char *str_at(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- Redis -------------------------------------------------------------------------------- */

static void redis_text(int port, char *out, size_t n, const char *fmt, const char *arg) {
    if (th_redis(port, out, n, fmt, arg) != 0) fail_msg("redis on %d unreachable", port);
}

/* The value of "field:value" in an INFO text, or "" (copied to out). */
static void info_field(const char *info, const char *field, char *out, size_t n) {
    out[0] = '\0';
    size_t fl = strlen(field);
    for (const char *s = info; (s = strstr(s, field)) != NULL; s += fl) {
        if ((s == info || s[-1] == '\n') && s[fl] == ':') {
            size_t l = strcspn(s + fl + 1, "\r\n");
            snprintf(out, n, "%.*s", (int)l, s + fl + 1);
            return;
        }
    }
}

/* A stream's entries as "stripe_event_id" -> how many times. */
typedef struct tally_s {
    char (*id)[96];
    int *count;
    int n;
    int no_id; /* entries without an event id */
} tally_t;

static void tally_free(tally_t *t) {
    free(t->id);
    free(t->count);
    memset(t, 0, sizeof *t);
}

static int tally_of(const tally_t *t, const char *id) {
    for (int i = 0; i < t->n; i++)
        if (strcmp(t->id[i], id) == 0) return t->count[i];
    return 0;
}

static void stream_tally(int port, tally_t *t) {
    memset(t, 0, sizeof *t);
    struct timeval tv = {5, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL || c->err) fail_msg("redis on %d unreachable", port);
    redisReply *r = redisCommand(c, "XRANGE %s - +", STREAM);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) fail_msg("XRANGE failed on %d", port);
    t->id = calloc(r->elements + 1, sizeof *t->id);
    t->count = calloc(r->elements + 1, sizeof *t->count);
    assert_true(t->id != NULL && t->count != NULL);
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *f = r->element[i]->element[1];
        const char *id = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "stripe_event_id") == 0) id = f->element[k + 1]->str;
        if (id == NULL || id[0] == '\0') {
            t->no_id++;
            continue;
        }
        int j;
        for (j = 0; j < t->n; j++)
            if (strcmp(t->id[j], id) == 0) break;
        if (j == t->n) snprintf(t->id[t->n++], sizeof t->id[0], "%s", id);
        t->count[j]++;
    }
    freeReplyObject(r);
    redisFree(c);
}

/* ---- events --------------------------------------------------------------------------------- */

static cJSON *template_ev; /* test/events/customer.subscription.created.json */

/* A distinct subscription event (own event id, subscription and customer, so that events never
 * contend for one record): its JSON text (caller frees) and id. Safe from several threads. */
static char *make_event(const char *tag, int n, char *id, size_t idlen) {
    cJSON *ev = cJSON_Duplicate(template_ev, 1);
    if (ev == NULL) return NULL;
    char sub[64], cus[64];
    snprintf(id, idlen, "evt_topo_%s_%d_%d", tag, (int)getpid(), n);
    snprintf(sub, sizeof sub, "sub_topo%s%d", tag, n);
    snprintf(cus, sizeof cus, "cus_topo%s%d", tag, n);
    cJSON *o =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(ev, "data"), "object");
    cJSON_ReplaceItemInObjectCaseSensitive(ev, "id", cJSON_CreateString(id));
    cJSON_ReplaceItemInObjectCaseSensitive(o, "id", cJSON_CreateString(sub));
    cJSON_ReplaceItemInObjectCaseSensitive(o, "customer", cJSON_CreateString(cus));
    char *s = cJSON_PrintUnformatted(ev);
    cJSON_Delete(ev);
    return s;
}

/* ---- processes ---------------------------------------------------------------------------- */

static th_proc_t redis1, fake, riv[2];

/* The sentinel deployment: a primary and a replica (data directories kept across restarts) and
 * three sentinels. */
typedef struct node_s {
    th_proc_t p;
    int port;
    const char *dir;
} node_t;

static node_t prim, repl;
static th_proc_t sent[3];
static th_proc_t fake_sent; /* test/fake_sentinel.py */
static int fake_sent_port;
static int sent_port[3];
static int deployed;
static char sentinels_env[256];

static void node_start(node_t *n, int replica_of) {
    char port[16], master[16];
    snprintf(port, sizeof port, "%d", n->port);
    snprintf(master, sizeof master, "%d", replica_of);
    const char *argv[] = {"redis-server",
                          "--port",
                          port,
                          "--bind",
                          "127.0.0.1",
                          "--dir",
                          n->dir,
                          "--appendonly",
                          "yes",
                          "--appendfsync",
                          "everysec",
                          "--save",
                          "",
                          "--repl-diskless-sync-delay",
                          "0",
                          "--replica-announce-ip",
                          "127.0.0.1",
                          "--daemonize",
                          "no",
                          replica_of ? "--replicaof" : NULL,
                          "127.0.0.1",
                          master,
                          NULL};
    if (th_spawn(&n->p, argv, NULL) != 0) fail_msg("cannot start redis-server");
    if (th_wait_port(n->port, 10000) != 0) fail_msg("redis-server did not listen on %d", n->port);
}

static void sentinel_start(int i, int master_port) {
    const char *dir = make_dir();
    sent_port[i] = th_free_port();
    char conf[128];
    snprintf(conf, sizeof conf, "%s/sentinel.conf", dir);
    FILE *f = fopen(conf, "w");
    assert_non_null(f);
    /* Short timings: down after 1 s, a failover given 3 s before another may be tried. */
    fprintf(f,
            "port %d\nbind 127.0.0.1\ndaemonize no\ndir %s\n"
            "sentinel monitor " MASTER " 127.0.0.1 %d 2\n"
            "sentinel down-after-milliseconds " MASTER " 1000\n"
            "sentinel failover-timeout " MASTER " 3000\n"
            "sentinel parallel-syncs " MASTER " 1\n",
            sent_port[i], dir, master_port);
    fclose(f);
    const char *argv[] = {"redis-server", conf, "--sentinel", NULL};
    if (th_spawn(&sent[i], argv, NULL) != 0) fail_msg("cannot start a sentinel");
    if (th_wait_port(sent_port[i], 10000) != 0) fail_msg("the sentinel did not listen");
}

/* Every sentinel knows the primary's replica and the two other sentinels. */
static int sentinels_settled(void *ud) {
    (void)ud;
    for (int i = 0; i < 3; i++) {
        char out[4096];
        if (th_redis(sent_port[i], out, sizeof out, "SENTINEL MASTER %s", MASTER) != 0) return 0;
        if (strstr(out, "num-slaves\n1\n") == NULL ||
            strstr(out, "num-other-sentinels\n2\n") == NULL)
            return 0;
    }
    return 1;
}

static int replica_linked(void *ud) {
    const node_t *n = ud;
    char info[8192], link[32], role[32];
    if (th_redis(n->port, info, sizeof info, "INFO %s", "replication") != 0) return 0;
    info_field(info, "role", role, sizeof role);
    info_field(info, "master_link_status", link, sizeof link);
    return streq(role, "slave") && streq(link, "up");
}

static void deploy_up(void) {
    if (deployed) return;
    prim.dir = make_dir();
    repl.dir = make_dir();
    prim.port = th_free_port();
    repl.port = th_free_port();
    node_start(&prim, 0);
    node_start(&repl, prim.port);
    if (!th_eventually(replica_linked, &repl, 15000)) fail_msg("the replica did not sync");
    for (int i = 0; i < 3; i++) sentinel_start(i, prim.port);
    if (!th_eventually(sentinels_settled, NULL, 20000))
        fail_msg("the sentinels did not find the replica and each other");
    /* A dead address first: discovery must move past it. */
    int dead = th_free_port();
    snprintf(sentinels_env, sizeof sentinels_env,
             "REDIS_SENTINELS=127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d", dead,
             sent_port[0], sent_port[1], sent_port[2]);
    deployed = 1;
}

static void deploy_down(void) {
    for (int i = 0; i < 3; i++) th_stop(&sent[i], SIGTERM, 5000);
    th_stop(&prim.p, SIGTERM, 5000);
    th_stop(&repl.p, SIGTERM, 5000);
    deployed = 0;
}

static int ready(void *ud) {
    const th_proc_t *p = ud;
    th_response_t r;
    if (th_request(p->port, "GET", "/ready", NULL, NULL, &r) != 0) return 0;
    int ok = r.status == 200;
    th_response_free(&r);
    return ok;
}

static void rivetd_up(th_proc_t *p, const char *const env[]) {
    if (th_rivetd_start(p, env) != 0) fail_msg("rivetd did not start");
    if (!th_eventually(ready, p, 15000)) fail_msg("rivetd did not become ready");
}

/* Stop a rivetd; it must exit 0 (a sanitizer report or a crash makes it not). */
static void rivetd_down(th_proc_t *p) {
    if (p->pid <= 0) return;
    int st = th_stop(p, SIGTERM, STOP_MS);
    p->pid = 0;
    if (st != 0) fail_msg("rivetd exited with status %d", st);
}

/* rivetd through the sentinels, with REDIS_MIN_REPLICAS=min. */
static void rivetd_sentinel_up(th_proc_t *p, const char *min) {
    char minenv[32];
    snprintf(minenv, sizeof minenv, "REDIS_MIN_REPLICAS=%s", min);
    const char *env[] = {sentinels_env, "REDIS_SENTINEL_MASTER=" MASTER,
                         minenv,        "RECONCILE_INTERVAL=0",
                         LOCAL_PRICES,  NULL};
    rivetd_up(p, env);
}

/* The primary the sentinels name now: its port, or 0. */
static int sentinel_primary(int i) {
    char out[128];
    if (th_redis(sent_port[i], out, sizeof out, "SENTINEL get-master-addr-by-name %s", MASTER))
        return 0;
    char *nl = strchr(out, '\n');
    return nl ? atoi(nl + 1) : 0;
}

/* ---- fixtures ------------------------------------------------------------------------------ */

static int group_setup(void **state) {
    (void)state;
    char *text = slurp("test/events/customer.subscription.created.json");
    if (text == NULL) return -1;
    template_ev = cJSON_Parse(text);
    free(text);
    return template_ev ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    deploy_down();
    remove_dirs();
    cJSON_Delete(template_ev);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    for (int i = 0; i < 2; i++)
        if (riv[i].pid > 0) {
            th_stop(&riv[i], SIGTERM, STOP_MS);
            riv[i].pid = 0;
        }
    th_stop(&fake, SIGTERM, 5000);
    th_stop(&redis1, SIGTERM, 5000);
    th_stop(&fake_sent, SIGTERM, 5000);
    return 0;
}

/* ---- 1. several instances on one Redis ------------------------------------------------------ */

static const char *const TIERS[3] = {"basic", "pro", "enterprise"};
static const char *const PRICES[3] = {TH_PRICE_BASIC, TH_PRICE_PRO, TH_PRICE_ENTERPRISE};

static void fake_post(const char *path, const char *headers, const char *body, cJSON **out) {
    cJSON *j = http_json(fake.port, "POST", path, headers, body, 200);
    if (out)
        *out = j;
    else
        cJSON_Delete(j);
}

/* A paid subscription at the fake: its customer id. */
static void customer_life(int i, char *cus, size_t n) {
    char form[1024];
    snprintf(form, sizeof form,
             "mode=subscription&payment_method_types%%5B0%%5D=card"
             "&line_items%%5B0%%5D%%5Bprice%%5D=%s&line_items%%5B0%%5D%%5Bquantity%%5D=1"
             "&customer_email=topo%d%%40example.com&metadata%%5Btier%%5D=%s"
             "&success_url=https%%3A%%2F%%2Frivet.io%%2Fsuccess&cancel_url=https%%3A%%2F%%2F"
             "rivet.io%%2Fpricing"
             "&subscription_data%%5Bmetadata%%5D%%5Btier%%5D=%s",
             PRICES[i % 3], i, TIERS[i % 3], TIERS[i % 3]);
    cJSON *s;
    fake_post("/v1/checkout/sessions", STRIPE_AUTH FORM_CT, form, &s);
    char path[256];
    snprintf(path, sizeof path, "/_fake/sessions/%s/complete", str_at(s, "id"));
    cJSON_Delete(s);
    cJSON *c;
    fake_post(path, JSON_CT, "{\"payment_status\": \"paid\"}", &c);
    snprintf(cus, n, "%s", str_at(c, "customer"));
    if (i % 2) {
        char body[96];
        snprintf(path, sizeof path, "/_fake/subscriptions/%s/change_plan",
                 str_at(c, "subscription"));
        snprintf(body, sizeof body, "{\"price\": \"%s\"}", PRICES[(i + 1) % 3]);
        fake_post(path, JSON_CT, body, NULL);
    }
    cJSON_Delete(c);
}

static const char *mapped_type(const char *t) {
    static const char *const map[][2] = {
        {"checkout.session.completed", "user.provision"},
        {"checkout.session.async_payment_succeeded", "user.provision"},
        {"checkout.session.async_payment_failed", "payment.failed"},
        {"customer.subscription.created", "subscription.created"},
        {"customer.subscription.updated", "subscription.updated"},
        {"customer.subscription.deleted", "user.deprovision"},
        {"invoice.payment_succeeded", "payment.succeeded"},
        {"invoice.payment_failed", "payment.failed"},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(map); i++)
        if (streq(t, map[i][0])) return map[i][1];
    return NULL;
}

typedef struct deliverer_s {
    int port;
    char **bodies;
    int n;
    int reverse;
    int bad; /* answers other than 200 */
} deliverer_t;

/* Each event twice (a redelivery), to one instance, while the other thread does the same to
 * the other instance in the opposite order. */
static void *deliver_all(void *arg) {
    deliverer_t *d = arg;
    for (int round = 0; round < 2; round++)
        for (int k = 0; k < d->n; k++) {
            int i = d->reverse ? d->n - 1 - k : k;
            if (post_signed(d->port, d->bodies[i], 10000) != 200) d->bad++;
        }
    return NULL;
}

typedef struct landed_s {
    cJSON *ids;
} landed_t;

static int all_landed(void *ud) {
    landed_t *l = ud;
    tally_t t;
    stream_tally(redis1.port, &t);
    int ok = 1;
    const cJSON *id;
    cJSON_ArrayForEach(id, l->ids) if (tally_of(&t, id->valuestring) == 0) ok = 0;
    tally_free(&t);
    return ok;
}

static int runs_done(void *ud) {
    int *done = ud;
    int d = log_count(&riv[0], "reconcile: done:") + log_count(&riv[1], "reconcile: done:");
    int locked = log_count(&riv[0], "another reconciler is running") +
                 log_count(&riv[1], "another reconciler is running");
    *done = d;
    return d >= 3 && locked >= 1 && log_count(&riv[0], "reconcile: run:") > 0 &&
           log_count(&riv[1], "reconcile: run:") > 0;
}

typedef struct same_s {
    const char (*cus)[64];
    int n;
    char why[600];
} same_t;

/* GET /api/entitlements?customer_id= answers the same, 200, from both instances. */
static int entitlements_agree(void *ud) {
    same_t *s = ud;
    for (int i = 0; i < s->n; i++) {
        char path[160];
        snprintf(path, sizeof path, "/api/entitlements?customer_id=%s", s->cus[i]);
        th_response_t r[2];
        if (th_request(riv[0].port, "GET", path, BEARER, NULL, &r[0]) != 0) return 0;
        if (th_request(riv[1].port, "GET", path, BEARER, NULL, &r[1]) != 0) {
            th_response_free(&r[0]);
            return 0;
        }
        int same = r[0].status == 200 && r[1].status == 200 && streq(r[0].body, r[1].body);
        if (!same)
            snprintf(s->why, sizeof s->why, "%s: %d %.200s / %d %.200s", s->cus[i], r[0].status,
                     r[0].body, r[1].status, r[1].body);
        th_response_free(&r[0]);
        th_response_free(&r[1]);
        if (!same) return 0;
    }
    return 1;
}

static void several_instances(void **state) {
    (void)state;
    if (th_redis_start(&redis1) != 0) fail_msg("redis-server did not start");
    const char *args[] = {"--prices", TH_PRICE_BASIC "," TH_PRICE_PRO "," TH_PRICE_ENTERPRISE,
                          NULL};
    if (th_fake_stripe_start(&fake, args) != 0) fail_msg("the fake Stripe did not start");

    /* Customers' lives two minutes ago (inside every run's range, past its settling time):
     * more than one page of events (Stripe's limit is 100), so a run has two pages. */
    char b[64];
    snprintf(b, sizeof b, "{\"now\": %lld}", (long long)time(NULL) - 120);
    fake_post("/_fake/clock", JSON_CT, b, NULL);
    enum { C = 16 };
    char cus[C][64];
    for (int i = 0; i < C; i++) customer_life(i, cus[i], sizeof cus[i]);
    cJSON *all = http_json(fake.port, "GET", "/_fake/events", NULL, NULL, 200);
    int nev = cJSON_GetArraySize(all);
    assert_true(nev > 100 && nev <= 200);
    const char *page2_after = str_at(cJSON_GetArrayItem(all, nev - 100), "id");
    cJSON *ids = cJSON_CreateArray();
    const cJSON *ev;
    cJSON_ArrayForEach(ev, all) if (mapped_type(str_at(ev, "type")))
        cJSON_AddItemToArray(ids, cJSON_CreateString(str_at(ev, "id")));
    /* Slow list answers make a run longer than the interval: without the lock, runs of the two
     * instances would overlap. */
    fake_post("/_fake/config", JSON_CT, "{\"latency_ms\": 500}", NULL);

    char url[80], base[80];
    snprintf(url, sizeof url, "REDIS_URL=redis://127.0.0.1:%d/0", redis1.port);
    snprintf(base, sizeof base, "STRIPE_API_BASE=http://127.0.0.1:%d", fake.port);
    const char *env[] = {
        url, base, "RECONCILE_INTERVAL=1", "RATE_LIMIT_PER_MIN=0", "STRIPE_API_VERSION=", NULL};
    rivetd_up(&riv[0], env);
    rivetd_up(&riv[1], env);

    /* The first half of the events by webhook: each to both instances at once, twice. The rest
     * only through recovery. */
    int half = nev / 2;
    char **bodies = calloc((size_t)half, sizeof *bodies);
    assert_non_null(bodies);
    for (int i = 0; i < half; i++) bodies[i] = cJSON_PrintUnformatted(cJSON_GetArrayItem(all, i));
    deliverer_t d[2] = {{riv[0].port, bodies, half, 0, 0}, {riv[1].port, bodies, half, 1, 0}};
    pthread_t th[2];
    for (int k = 0; k < 2; k++)
        assert_int_equal(pthread_create(&th[k], NULL, deliver_all, &d[k]), 0);
    for (int k = 0; k < 2; k++) pthread_join(th[k], NULL);
    for (int i = 0; i < half; i++) free(bodies[i]);
    free(bodies);
    if (d[0].bad || d[1].bad) fail_msg("%d + %d deliveries not answered 200", d[0].bad, d[1].bad);

    landed_t l = {ids};
    if (!th_eventually(all_landed, &l, 30000)) fail_msg("the events did not all land");
    int done = 0;
    if (!th_eventually(runs_done, &done, 30000))
        fail_msg("%d runs done (runs begun: %d and %d, lock found taken: %d + %d times); both "
                 "instances must run and one must find the lock taken",
                 done, log_count(&riv[0], "reconcile: run:"), log_count(&riv[1], "reconcile: run:"),
                 log_count(&riv[0], "another reconciler is running"),
                 log_count(&riv[1], "another reconciler is running"));

    same_t same = {(const char(*)[64])cus, C, ""};
    if (!th_eventually(entitlements_agree, &same, 10000))
        fail_msg("the instances answer different entitlements: %s", same.why);

    int run0 = log_count(&riv[0], "reconcile: run:"), run1 = log_count(&riv[1], "reconcile: run:");
    int locked = log_count(&riv[0], "another reconciler is running") +
                 log_count(&riv[1], "another reconciler is running");
    rivetd_down(&riv[0]);
    rivetd_down(&riv[1]);

    /* Each event once; no event id that Stripe did not record. */
    tally_t t;
    stream_tally(redis1.port, &t);
    const cJSON *id;
    cJSON_ArrayForEach(id, ids) {
        int c = tally_of(&t, id->valuestring);
        if (c != 1) fail_msg("event %s is in the stream %d times", id->valuestring, c);
    }
    if (t.n != cJSON_GetArraySize(ids))
        fail_msg("%d event ids in the stream, %d mapped events", t.n, cJSON_GetArraySize(ids));
    printf("[ several  ] %d events (%d mapped), half by webhook to both instances twice: each "
           "once; reconcile runs %d + %d, %d found the lock taken; entitlements of %d customers "
           "agree\n",
           nev, cJSON_GetArraySize(ids), run0, run1, locked, C);
    tally_free(&t);

    /* Runs never overlapped: in the order the fake received them, every run's first page is
     * followed by its own second page before any run starts (a run cut by the stop may lack its
     * second page). */
    cJSON *log = http_json(fake.port, "GET", "/_fake/requests", NULL, NULL, 200);
    int starts = 0, expect_second = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, log) {
        if (!streq(str_at(e, "path"), "/v1/events")) continue;
        const char *after = str_at(cJSON_GetObjectItemCaseSensitive(e, "params"), "starting_after");
        if (after == NULL) {
            if (expect_second) fail_msg("a run started while another was between its pages");
            starts++;
            expect_second = 1;
        } else {
            if (!expect_second || !streq(after, page2_after))
                fail_msg("a second page out of its run (starting_after %s)", after);
            expect_second = 0;
        }
    }
    cJSON_Delete(log);
    /* The logs were counted before the stop: each instance may have begun one more run since
     * (and a run cut by the stop may not have listed anything). */
    if (starts > run0 + run1 + 2 || starts < run0 + run1 - 2)
        fail_msg("%d runs listed events, %d runs logged", starts, run0 + run1);
    cJSON_Delete(ids);
    cJSON_Delete(all);
}

/* ---- 2. discovery ---------------------------------------------------------------------------- */

static void discovery(void **state) {
    (void)state;
    deploy_up();
    rivetd_sentinel_up(&riv[0], "0");
    char id[96];
    char *body = make_event("disc", 0, id, sizeof id);
    assert_non_null(body);
    int st = post_signed(riv[0].port, body, 10000);
    free(body);
    if (st != 200) fail_msg("the event was answered %d", st);
    tally_t t;
    stream_tally(prim.port, &t);
    assert_int_equal(tally_of(&t, id), 1);
    tally_free(&t);
    char where[64];
    snprintf(where, sizeof where, "connected to 127.0.0.1:%d", prim.port);
    if (log_count(&riv[0], where) != 1) fail_msg("rivetd's log does not say \"%s\"", where);
    rivetd_down(&riv[0]);
}

/* ---- 3. a duplicate waits for the replica too ----------------------------------------------- */

static void duplicate_waits(void **state) {
    (void)state;
    deploy_up();
    rivetd_sentinel_up(&riv[0], "1");
    rivetd_sentinel_up(&riv[1], "1");
    char id[96];
    char *warm = make_event("dupw", 0, id, sizeof id);
    char *body = make_event("dupw", 1, id, sizeof id);
    assert_true(warm != NULL && body != NULL);
    /* Instance 1 has written before, and the replica has acknowledged that write. */
    assert_int_equal(post_signed(riv[1].port, warm, 10000), 200);
    /* The replica stops: the event stored through instance 0 is not confirmed. */
    kill(repl.p.pid, SIGSTOP);
    int st0 = post_signed(riv[0].port, body, 10000);
    /* The same event again through instance 1: a duplicate, but not on the replica either. */
    int st1 = post_signed(riv[1].port, body, 10000);
    kill(repl.p.pid, SIGCONT);
    if (st0 == 200 || st1 == 200)
        fail_msg("acknowledged (%d, %d) while the replica could not have the event", st0, st1);
    /* Once the replica is back, the redelivery is acknowledged, and the event is there once. */
    int st = 0;
    int64_t deadline = th_now_ms() + 10000;
    while ((st = post_signed(riv[1].port, body, 10000)) != 200 && th_now_ms() < deadline)
        nap_ms(50);
    assert_int_equal(st, 200);
    tally_t t;
    stream_tally(repl.port, &t);
    assert_int_equal(tally_of(&t, id), 1);
    tally_free(&t);
    printf("[ dup-wait ] stopped replica: %d through the writer, %d for the duplicate through the "
           "other instance; 200 once the replica was back\n",
           st0, st1);
    free(warm);
    free(body);
    rivetd_down(&riv[0]);
    rivetd_down(&riv[1]);
}

/* ---- 4. failover under load -------------------------------------------------------------------
 */

#define MAX_SENT 6000

typedef struct sent_s {
    int status;    /* the first answer: 200, another status, -1 no answer; 0 not sent */
    int64_t at_ms; /* when it came */
} sent_t;

static sent_t sent_ev[MAX_SENT];
static const char *send_tag = "fo"; /* the events' ids: evt_topo_<tag>_<pid>_<n> */
static atomic_int next_ev, stop_send, acks;
static atomic_llong acks_after; /* 200s answered after mark_ms */
static atomic_llong mark_ms;

static void *sender(void *arg) {
    (void)arg;
    while (!atomic_load(&stop_send)) {
        int n = atomic_fetch_add(&next_ev, 1);
        if (n >= MAX_SENT) break;
        char id[96];
        char *body = make_event(send_tag, n, id, sizeof id);
        if (body == NULL) break;
        int st = post_signed(riv[n % 2].port, body, 5000);
        free(body);
        int64_t now = th_now_ms();
        sent_ev[n].at_ms = now;
        sent_ev[n].status = st;
        if (st == 200) {
            atomic_fetch_add(&acks, 1);
            if (now > atomic_load(&mark_ms)) atomic_fetch_add(&acks_after, 1);
        }
        nap_ms(25);
    }
    return NULL;
}

static int enough_acks(void *ud) { return atomic_load(&acks_after) >= *(int *)ud; }

typedef struct moved_s {
    int port;
} moved_t;

static int sentinels_moved(void *ud) {
    moved_t *m = ud;
    for (int i = 0; i < 3; i++)
        if (sentinel_primary(i) != m->port) return 0;
    return 1;
}

static int rivetd_moved(void *ud) {
    moved_t *m = ud;
    char where[64];
    snprintf(where, sizeof where, "reconnected to 127.0.0.1:%d", m->port);
    return log_count(&riv[0], where) > 0 && log_count(&riv[1], where) > 0;
}

static int old_primary_rejoined(void *ud) {
    (void)ud;
    char info[8192], slaves[16];
    if (!replica_linked(&prim)) return 0;
    if (th_redis(repl.port, info, sizeof info, "INFO %s", "replication") != 0) return 0;
    info_field(info, "connected_slaves", slaves, sizeof slaves);
    return atoi(slaves) >= 1;
}

enum { SENDERS = 4 };

/* SENDERS threads post distinct events with ids of tag to both instances, until load_end. */
static void load_begin(const char *tag, pthread_t *th) {
    send_tag = tag;
    atomic_store(&next_ev, 0);
    atomic_store(&stop_send, 0);
    atomic_store(&acks, 0);
    atomic_store(&acks_after, 0);
    atomic_store(&mark_ms, 0);
    memset(sent_ev, 0, sizeof sent_ev);
    for (int k = 0; k < SENDERS; k++)
        assert_int_equal(pthread_create(&th[k], NULL, sender, NULL), 0);
}

static void load_end(pthread_t *th) {
    atomic_store(&stop_send, 1);
    for (int k = 0; k < SENDERS; k++) pthread_join(th[k], NULL);
}

typedef struct outcome_s {
    int sent, ok, refused, other, redelivered;
    int64_t first_bad, last_bad; /* when the first and the last non-200 came */
} outcome_t;

/* After the load: what was answered; Stripe's redeliveries of whatever was not acknowledged
 * (until 200, to the other instance); then the final primary's stream must hold every event
 * sent exactly once, and nothing else. */
static outcome_t settle_and_check(int final_port) {
    int total = atomic_load(&next_ev);
    if (total > MAX_SENT) total = MAX_SENT;

    int ok = 0, refused = 0, other = 0;
    int64_t first_bad = 0, last_bad = 0;
    for (int n = 0; n < total; n++) {
        if (sent_ev[n].status == 0) continue; /* taken but not sent when the load stopped */
        if (sent_ev[n].status == 200) {
            ok++;
            continue;
        }
        if (sent_ev[n].status == 503)
            refused++;
        else
            other++;
        if (first_bad == 0 || sent_ev[n].at_ms < first_bad) first_bad = sent_ev[n].at_ms;
        if (sent_ev[n].at_ms > last_bad) last_bad = sent_ev[n].at_ms;
    }

    /* Stripe delivers again whatever was not acknowledged: until 200 (to the other instance). */
    int64_t deadline = th_now_ms() + 20000;
    int redelivered = 0;
    for (int n = 0; n < total; n++) {
        if (sent_ev[n].status == 0 || sent_ev[n].status == 200) continue;
        char id[96];
        char *body = make_event(send_tag, n, id, sizeof id);
        assert_non_null(body);
        int st;
        while ((st = post_signed(riv[(n + 1) % 2].port, body, 5000)) != 200 &&
               th_now_ms() < deadline)
            nap_ms(50);
        free(body);
        if (st != 200) fail_msg("event %s: redelivery answered %d", id, st);
        redelivered++;
    }

    /* The final primary's stream: every event sent, exactly once, and nothing else. */
    tally_t t;
    stream_tally(final_port, &t);
    int sent_n = 0;
    for (int n = 0; n < total; n++) {
        if (sent_ev[n].status == 0) continue;
        sent_n++;
        char id[96];
        snprintf(id, sizeof id, "evt_topo_%s_%d_%d", send_tag, (int)getpid(), n);
        int c = tally_of(&t, id);
        if (c != 1)
            fail_msg("event %s (first answered %d) is in the stream %d times", id,
                     sent_ev[n].status, c);
    }
    if (t.n != sent_n || t.no_id != 0)
        fail_msg("%d event ids (+%d entries without one) in the stream, %d events sent", t.n,
                 t.no_id, sent_n);
    tally_free(&t);

    outcome_t o = {sent_n, ok, refused, other, redelivered, first_bad, last_bad};
    return o;
}

static void failover(void **state) {
    (void)state;
    deploy_up();
    rivetd_sentinel_up(&riv[0], "1");
    rivetd_sentinel_up(&riv[1], "1");
    /* The stream holds this test's events only (the earlier tests' are gone, on the replica too).
     */
    char out[64];
    redis_text(prim.port, out, sizeof out, "DEL %s", STREAM);
    pthread_t th[SENDERS];
    load_begin("fo", th);

    /* Under load, the primary dies. */
    int want = 40;
    if (!th_eventually(enough_acks, &want, 15000)) fail_msg("no load before the failover");
    int64_t t_kill = th_now_ms();
    kill(prim.p.pid, SIGKILL);
    th_stop(&prim.p, SIGKILL, 5000);

    moved_t to_replica = {repl.port};
    if (!th_eventually(sentinels_moved, &to_replica, 20000))
        fail_msg("the sentinels did not promote the replica");
    int64_t t_promoted = th_now_ms();
    if (!th_eventually(rivetd_moved, &to_replica, 15000))
        fail_msg("the instances did not move to the new primary");
    int64_t t_followed = th_now_ms();

    /* The old primary comes back (same port, same directory: its AOF) as a primary of nothing;
     * the sentinels turn it into a replica of the new one. */
    node_start(&prim, 0);
    int64_t t_restart = th_now_ms();
    if (!th_eventually(old_primary_rejoined, NULL, 30000))
        fail_msg("the old primary did not rejoin as a replica");
    int64_t t_rejoined = th_now_ms();
    char role[256];
    redis_text(prim.port, role, sizeof role, "ROLE%s", "");
    if (strncmp(role, "slave\n", 6) != 0) fail_msg("ROLE on the old primary: %s", role);

    /* Acknowledged writes again, then the load stops. */
    atomic_store(&mark_ms, th_now_ms());
    atomic_store(&acks_after, 0);
    want = 40;
    if (!th_eventually(enough_acks, &want, 20000))
        fail_msg("webhooks were not acknowledged after the old primary rejoined");
    load_end(th);
    outcome_t o = settle_and_check(repl.port);
    int sent_n = o.sent, ok = o.ok, refused = o.refused, other = o.other;
    int redelivered = o.redelivered;
    int64_t first_bad = o.first_bad, last_bad = o.last_bad;

    printf("[ failover ] %d events to 2 instances: %d answered 200, %d refused (503), %d other; "
           "%d redelivered until 200; every one in the new primary's stream exactly once\n",
           sent_n, ok, refused, other, redelivered);
    printf("[ failover ] kill -9 -> sentinels promoted the replica: %lld ms; -> both instances "
           "reconnected: %lld ms; restart -> rejoined as a replica: %lld ms\n",
           (long long)(t_promoted - t_kill), (long long)(t_followed - t_kill),
           (long long)(t_rejoined - t_restart));
    printf("[ failover ] webhooks refused for %lld ms (first non-200 to last non-200; "
           "REDIS_MIN_REPLICAS=1 refuses until a replica is back)\n",
           (long long)(first_bad ? last_bad - first_bad : 0));
    if (getenv("TOPO_VERBOSE")) {
        char *log = slurp(riv[0].log_path);
        for (char *line = log ? strtok(log, "\n") : NULL; line; line = strtok(NULL, "\n"))
            if (strstr(line, "redis:") || strstr(line, "sentinel"))
                printf("  rivetd 0: %s\n", line);
        free(log);
    }
    if (refused + other == 0) fail_msg("nothing was refused: the primary died under no load?");
    rivetd_down(&riv[0]);
    rivetd_down(&riv[1]);
}

/* A planned failover (SENTINEL FAILOVER) under load, REDIS_MIN_REPLICAS=0. The old primary stays
 * up and takes writes until the sentinels make it a replica of the new one, which drops whatever
 * the new primary did not have. rivetd hears the failover start from the sentinel that runs it
 * (here the one it would ask last) and acknowledges nothing from then until it is on the new
 * primary: every 200 is in the new primary's stream, exactly once. */
static void planned_failover(void **state) {
    (void)state;
    deploy_up();
    int old_port = sentinel_primary(0);
    node_t *old = old_port == prim.port ? &prim : &repl, *next = old == &prim ? &repl : &prim;
    if (old_port != prim.port && old_port != repl.port)
        fail_msg("the sentinels name %d as the primary", old_port);
    if (!th_eventually(replica_linked, next, 30000)) fail_msg("no replica follows the primary");
    rivetd_sentinel_up(&riv[0], "0");
    rivetd_sentinel_up(&riv[1], "0");
    char out[64];
    redis_text(old->port, out, sizeof out, "DEL %s", STREAM);
    pthread_t th[SENDERS];
    load_begin("pf", th);
    int want = 40;
    if (!th_eventually(enough_acks, &want, 15000)) fail_msg("no load before the failover");
    int64_t t_start = th_now_ms();
    if (th_redis(sent_port[2], out, sizeof out, "SENTINEL FAILOVER %s", MASTER) != 0 ||
        strncmp(out, "OK", 2) != 0)
        fail_msg("SENTINEL FAILOVER: %s", out);
    moved_t to_next = {next->port};
    if (!th_eventually(sentinels_moved, &to_next, 20000))
        fail_msg("the sentinels did not promote the replica");
    int64_t t_promoted = th_now_ms();
    if (!th_eventually(rivetd_moved, &to_next, 15000))
        fail_msg("the instances did not move to the new primary");
    int64_t t_followed = th_now_ms();
    atomic_store(&mark_ms, th_now_ms());
    atomic_store(&acks_after, 0);
    if (!th_eventually(enough_acks, &want, 20000))
        fail_msg("webhooks were not acknowledged on the new primary");
    load_end(th);
    outcome_t o = settle_and_check(next->port);
    int heard = log_count(&riv[0], "a failover of") + log_count(&riv[1], "a failover of");
    printf("[ planned  ] %d events to 2 instances: %d answered 200, %d refused (503), %d other; "
           "%d redelivered until 200; every one in the new primary's stream exactly once\n",
           o.sent, o.ok, o.refused, o.other, o.redelivered);
    printf("[ planned  ] SENTINEL FAILOVER -> promoted: %lld ms; -> both instances on it: %lld ms; "
           "webhooks refused for %lld ms; %d instances heard the start\n",
           (long long)(t_promoted - t_start), (long long)(t_followed - t_start),
           (long long)(o.first_bad ? o.last_bad - o.first_bad : 0), heard);
    /* The old primary, alive all along, is made a replica of the new one. */
    if (!th_eventually(replica_linked, old, 30000))
        fail_msg("the old primary did not become a replica");
    rivetd_down(&riv[0]);
    rivetd_down(&riv[1]);
}

/* ---- 6. sentinels that mislead ------------------------------------------------------------- */

/* The fake sentinel, answering host:port for the primary; then rivetd with it first in
 * REDIS_SENTINELS, the three real ones after it. */
static void fake_sentinel_first(const char *host, int port) {
    fake_sent_port = th_free_port();
    char portarg[16], primary[96];
    snprintf(portarg, sizeof portarg, "%d", fake_sent_port);
    snprintf(primary, sizeof primary, "%s:%d", host, port);
    const char *argv[] = {"python3",   "test/fake_sentinel.py",
                          "--port",    portarg,
                          "--master",  MASTER,
                          "--primary", primary,
                          NULL};
    if (th_spawn(&fake_sent, argv, NULL) != 0) fail_msg("cannot start the fake sentinel");
    if (th_wait_port(fake_sent_port, 10000) != 0) fail_msg("the fake sentinel did not listen");
    char env_s[256];
    snprintf(env_s, sizeof env_s,
             "REDIS_SENTINELS=127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d", fake_sent_port,
             sent_port[0], sent_port[1], sent_port[2]);
    const char *env[] = {env_s,
                         "REDIS_SENTINEL_MASTER=" MASTER,
                         "REDIS_MIN_REPLICAS=0",
                         "RECONCILE_INTERVAL=0",
                         LOCAL_PRICES,
                         NULL};
    rivetd_up(&riv[0], env);
}

static int other_node(int port) { return port == prim.port ? repl.port : prim.port; }

/* A stale sentinel asked first (it missed a failover) names a replica: ROLE says so, and the
 * sentinel is asked last from then on, so rivetd reaches the primary the others name. */
static void stale_sentinel_first(void **state) {
    (void)state;
    deploy_up();
    int primary = sentinel_primary(0);
    /* The other node is a replica by now (after a failover, the sentinels convert the old
     * primary a few seconds later). */
    node_t *other = other_node(primary) == prim.port ? &prim : &repl;
    if (!th_eventually(replica_linked, other, 30000)) fail_msg("the other node is no replica");
    fake_sentinel_first("127.0.0.1", other_node(primary));
    if (log_count(&riv[0], "is asked last from now on") < 1)
        fail_msg("the stale sentinel was not moved to the back");
    char where[64];
    snprintf(where, sizeof where, "connected to 127.0.0.1:%d", primary);
    if (log_count(&riv[0], where) < 1) fail_msg("rivetd's log does not say \"%s\"", where);
    rivetd_down(&riv[0]);
}

/* A sentinel that names the primary by a host name would have rivetd resolve it on its loop: the
 * answer is refused, and the next sentinel asked. */
static void sentinel_host_name(void **state) {
    (void)state;
    deploy_up();
    fake_sentinel_first("redis.invalid", sentinel_primary(0));
    if (log_count(&riv[0], "by a host name (redis.invalid)") < 1)
        fail_msg("the host name was not refused");
    rivetd_down(&riv[0]);
}

typedef struct announce_s {
    const char *channel;
    char msg[128];
} announce_t;

/* Publish on the fake sentinel; 1 once some rivetd subscription received it. */
static int announced(void *ud) {
    announce_t *a = ud;
    char out[32];
    if (th_redis(fake_sent_port, out, sizeof out, "FAKE.PUBLISH %s %s", a->channel, a->msg) != 0)
        return 0;
    return atoi(out) >= 1;
}

typedef struct ready_is_s {
    int status;
    const char *body_has;
} ready_is_t;

static int ready_is(void *ud) {
    ready_is_t *w = ud;
    th_response_t r;
    if (th_request(riv[0].port, "GET", "/ready", NULL, NULL, &r) != 0) return 0;
    int ok = r.status == w->status && (!w->body_has || (r.body && strstr(r.body, w->body_has)));
    th_response_free(&r);
    return ok;
}

static int post_one(const char *tag, int n) {
    char id[96];
    char *body = make_event(tag, n, id, sizeof id);
    assert_non_null(body);
    int st = post_signed(riv[0].port, body, 10000);
    free(body);
    return st;
}

/* A failover of the primary announced by any sentinel (here the fake one, which runs nothing):
 * from its start nothing is acknowledged, and /ready says why; when it stops short, webhooks are
 * taken again. A failover of another address is not rivetd's. */
static void failover_announced(void **state) {
    (void)state;
    deploy_up();
    int primary = sentinel_primary(0);
    fake_sentinel_first("127.0.0.1", primary);
    assert_int_equal(post_one("ann", 0), 200);

    announce_t other = {"+try-failover", ""};
    snprintf(other.msg, sizeof other.msg, "master " MASTER " 127.0.0.1 %d", other_node(primary));
    if (!th_eventually(announced, &other, 10000)) fail_msg("rivetd did not subscribe");
    assert_int_equal(post_one("ann", 1), 200);

    announce_t start = {"+try-failover", ""};
    snprintf(start.msg, sizeof start.msg, "master " MASTER " 127.0.0.1 %d", primary);
    assert_true(announced(&start));
    ready_is_t held = {503, "Redis failover in progress"};
    if (!th_eventually(ready_is, &held, 5000)) fail_msg("/ready does not say a failover runs");
    assert_int_equal(post_one("ann", 2), 503);

    announce_t abort_ = {"-failover-abort-not-elected", ""};
    snprintf(abort_.msg, sizeof abort_.msg, "master " MASTER " 127.0.0.1 %d", primary);
    assert_true(announced(&abort_));
    ready_is_t back = {200, NULL};
    if (!th_eventually(ready_is, &back, 5000)) fail_msg("/ready did not come back");
    assert_int_equal(post_one("ann", 2), 200);
    rivetd_down(&riv[0]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(several_instances, teardown),
        cmocka_unit_test_teardown(discovery, teardown),
        cmocka_unit_test_teardown(duplicate_waits, teardown),
        cmocka_unit_test_teardown(failover, teardown),
        cmocka_unit_test_teardown(planned_failover, teardown),
        cmocka_unit_test_teardown(stale_sentinel_first, teardown),
        cmocka_unit_test_teardown(sentinel_host_name, teardown),
        cmocka_unit_test_teardown(failover_announced, teardown),
    };
    /* TOPO_ONLY=<pattern> runs only the matching tests. */
    if (getenv("TOPO_ONLY")) cmocka_set_test_filter(getenv("TOPO_ONLY"));
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
