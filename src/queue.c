/* The provisioning queue: one hiredis async connection on the daemon's libuv loop, and the Lua
 * script that turns a mapped Stripe event into at most one stream entry.
 *
 * Connection life: DISCONNECTED -> (reconnect timer) -> CONNECTING -> CONNECTED -> AUTH, SELECT,
 * CONFIG GET (durability check), SCRIPT LOAD -> ready. Any failure (connect error, lost
 * connection, AUTH refused, a command without an answer in time) drops the connection and
 * schedules the next attempt with exponential backoff and jitter. hiredis frees its context by
 * itself after a failed connect and after a disconnect, and calls every pending callback with a
 * NULL reply when a context is freed; the context's data pointer is cleared before any free so
 * that late callbacks see a detached context and return early. The context is never freed from
 * inside the connect callback (hiredis 0.14 keeps using it when that callback returns), only from
 * timers and reply callbacks, where hiredis defers the free itself.
 *
 * Timeouts: commands on one connection are answered in order, so the enqueue and dead-letter
 * commands in flight form a FIFO and one timer watching its head is enough. The handshake has its
 * own timer. */
#include "rivet/queue.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "rivet/common.h"
#include "rivet/incbin.h"
#include "rivet/list.h"
#include "rivet/log.h"
#include "rivet/metrics.h"
#include "rivet/redis_url.h"
#include "rivet/redis_uv.h"
#include "rivet/sentinel.h"

#define BACKOFF_MIN_MS     100
#define BACKOFF_MAX_MS     5000
#define DEFAULT_TIMEOUT_MS 2000
/* Beyond this many unanswered commands Redis is not keeping up: refuse (the webhook answers 503
 * and Stripe retries) rather than buffer without bound. */
#define MAX_PENDING        65536
#define STREAM_MAX         512
/* Stands in for the subscription or customer key of an event that has none, so that the script
 * always receives every key it could touch through KEYS. The script never reads or writes it. */
#define DUMMY_KEY          "rivet:none"
#define DEAD_SUFFIX        ":dead"
/* Bound on the short text fields of a dead letter (reason, event type). */
#define DEAD_FIELD_MAX     255
#define STRINGIFY_(x)      #x
#define STRINGIFY(x)       STRINGIFY_(x)

/* The script that applies an event to the customer's entitlement and appends its entry
 * (src/apply.lua: its head says what it takes and returns). No MAXLEN on XADD: trimming could
 * delete entries consumers have not acknowledged yet. */
RV_INCBIN(rv_apply_lua, "src/apply.lua");
#define APPLY_SCRIPT ((const char *)rv_apply_lua)

/* KEYS: 1 event key (or the dummy), 2 dead-letter stream. ARGV: 1 ttl, 2 max entries, 3 reason,
 * 4 event id ('' when unknown: no de-duplication), 5 event type, 6 received, 7 body. Returns
 * {code, entry id}: 1 added, 2 duplicate. The event key is the main script's, so that an event id
 * ends either in the stream or here, once. Dead letters are rare, so this script is sent whole
 * with EVAL (Redis caches it by its digest) rather than loaded at every connection. */
static const char dead_script[] =
    "local dedupe = ARGV[4] ~= ''\n"
    "if dedupe and redis.call('EXISTS', KEYS[1]) == 1 then return {2, ''} end\n"
    "local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'reason', ARGV[3],\n"
    "  'stripe_event_id', ARGV[4], 'stripe_event_type', ARGV[5], 'received', ARGV[6],\n"
    "  'body', ARGV[7])\n"
    "if dedupe then redis.call('SET', KEYS[1], 'dead', 'EX', tonumber(ARGV[1])) end\n"
    "return {1, id}\n";

enum {
    DARG_CMD,
    DARG_SCRIPT,
    DARG_NUMKEYS,
    DARG_KEY_EVENT,
    DARG_KEY_STREAM,
    DARG_TTL,
    DARG_MAX,
    DARG_REASON,
    DARG_ID,
    DARG_TYPE,
    DARG_RECEIVED,
    DARG_BODY,
    DARGS
};

/* EVALSHA sha numkeys + 7 keys + 18 arguments, in the script's order. */
enum {
    ARG_CMD,
    ARG_SCRIPT,
    ARG_NUMKEYS,
    ARG_KEY_EVENT,
    ARG_KEY_STREAM,
    ARG_KEY_CUST,
    ARG_KEY_CHECKOUT,
    ARG_KEY_TOKEN,
    ARG_KEY_EMAIL,
    ARG_KEY_DOUBTS,
    ARG_TTL,
    ARG_MODE,
    ARG_TYPE,
    ARG_ID,
    ARG_DATA,
    ARG_VERSION,
    ARG_CUST,
    ARG_EMAIL,
    ARG_SUB,
    ARG_STATE,
    ARG_PLAN,
    ARG_FULFILLS,
    ARG_PAST_DUE,
    ARG_SOURCE,
    ARG_TOKEN,
    ARG_LINK,
    ARG_TOKEN_TTL,
    ARG_NOW,
    NARGS
};

_Static_assert((int)DARGS <= (int)NARGS,
               "a dead-letter command fits in a command's argument arrays");

typedef struct cmd_s cmd_t;
struct cmd_s {
    cmd_t *prev, *next;
    rv_queue_t *q;
    uint64_t deadline; /* loop time (uv_now) by which Redis must have answered */
    int fail_err;      /* what a NULL reply means: RV_EUNAVAIL, or RV_ETIMEDOUT once overdue */
    int retried;       /* the script was sent again after NOSCRIPT */
    int waiting;       /* the script answered; WAIT for replicas is in flight */
    int result;        /* the script's result, kept while WAIT runs */
    char stream_id[48];
    char telegram[200];
    rv_enqueue_cb cb;
    rv_reply_cb raw_cb;       /* a plain command's callback (rv_queue_call), else NULL */
    rv_fulfill_cb fulfill_cb; /* an apply whose caller wants the Telegram link, else NULL */
    void *data;
    const char *argv[NARGS];
    size_t argvlen[NARGS];
    char strs[]; /* the copied argument bytes, each NUL-terminated */
};

struct rv_queue_s {
    uv_loop_t *loop;
    rv_redis_url_t url; /* host holds the numeric address */
    char where[300];    /* address for log lines, never with credentials */
    char *stream;
    char *dead_stream; /* stream + ":dead" */
    char ttl[24];
    uint64_t timeout_ms;
    int past_due_active;
    char link_prefix[160]; /* "https://t.me/<bot>?start=", or "" for no start tokens */
    char token_ttl[24];
    rv_sentinel_t *sentinel; /* finds the primary, when REDIS_SENTINELS is set */
    unsigned min_replicas;   /* WAIT for this many replicas before an apply is confirmed */
    char wait_args[2][24];   /* WAIT's arguments: replicas, milliseconds */

    redisAsyncContext *ac; /* NULL when there is no connection */
    int state;             /* enum rv_queue_state */
    int ready;
    int closing;
    char sha[48];
    uint64_t refused_at;     /* loop time of the last write Redis refused (0: none since a store) */
    uint64_t unconfirmed_at; /* loop time WAIT last fell short (0: none since one that did not) */
    uint64_t failover_at;    /* loop time a failover of our primary was announced (0: none) */
    char failover_host[64];  /* the primary being failed over */
    int failover_port;

    uv_timer_t reconnect_timer;
    uv_timer_t connect_timer; /* connect plus handshake */
    uv_timer_t cmd_timer;     /* deadline of the oldest enqueue command */
    int open_handles;

    cmd_t *head, *tail; /* enqueue commands in flight, oldest first */
    size_t npending;
    cmd_t *dead, *dead_tail; /* failed while closing; answered from the close callback */

    uint64_t backoff_ms;
    uint64_t readies; /* connections that became ready */
    char last_err[256];
    int aof_seen, policy_seen, cfg_seen; /* last durability finding, to log changes only */

    rv_invalidate_cb inval_cb; /* the look-up cache's, or NULL: no watch */
    void *inval_data;
    redisAsyncContext *wac; /* the watch connection, or NULL */
    int watching;           /* subscribed: every change to a watched key will be told */
    int watch_off;          /* this Redis cannot watch (too old, or not allowed): stop trying */
    uv_timer_t watch_timer; /* the next try of the watch connection, or the next probe */
    char probe_key[48];     /* rivet:watch:<the watch connection's id> */
    uint64_t probe_sent;    /* loop time of the probe not told of yet (0: none) */
    unsigned probe_seq;

    void (*done)(void *data);
    void *done_data;
};

static void watch_start(rv_queue_t *q);
static void watch_drop(rv_queue_t *q);
static int send_argv(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, int argc,
                     const char **argv, const size_t *len);

static void conn_start(rv_queue_t *q);
static void on_cmd_timer(uv_timer_t *t);

/* ---- small helpers ------------------------------------------------------------------------ */

/* Log a connection failure at warn when it differs from the previous one, else at debug, so that
 * a Redis that stays down costs one line per change rather than one per attempt. */
static void __attribute__((format(printf, 2, 3))) log_failure(rv_queue_t *q, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (strcmp(msg, q->last_err) != 0) {
        rv_warn("%s", msg);
        memcpy(q->last_err, msg, sizeof msg);
    } else {
        rv_debug("%s", msg);
    }
}

static void list_push(rv_queue_t *q, cmd_t *c) {
    RV_LIST_APPEND(q->head, q->tail, c);
    q->npending++;
}

static void list_unlink(rv_queue_t *q, cmd_t *c) {
    RV_LIST_UNLINK(q->head, q->tail, c);
    q->npending--;
}

/* Answer a command and free it. While the queue closes, answers wait for the close callback so
 * that the caller of rv_queue_close is never called back from inside it. */
static void cmd_finish(cmd_t *c, int err, int result, const char *stream_id) {
    rv_queue_t *q = c->q;
    if (q->closing) {
        c->fail_err = RV_EUNAVAIL;
        RV_LIST_APPEND(q->dead, q->dead_tail, c);
        return;
    }
    if (c->raw_cb)
        c->raw_cb(c->data, err, NULL);
    else if (c->fulfill_cb)
        c->fulfill_cb(c->data, err, result, NULL);
    else
        c->cb(c->data, err, result, stream_id);
    free(c);
}

static void cmd_timer_arm(rv_queue_t *q) {
    if (!q->head || q->closing || uv_is_active((uv_handle_t *)&q->cmd_timer)) return;
    uint64_t now = uv_now(q->loop);
    uint64_t delay = q->head->deadline > now ? q->head->deadline - now : 0;
    uv_timer_start(&q->cmd_timer, on_cmd_timer, delay, 0);
}

/* ---- connection ----------------------------------------------------------------------------- */

static void on_reconnect_timer(uv_timer_t *t) {
    rv_queue_t *q = t->data;
    if (q->closing || q->ac) return;
    conn_start(q);
}

static void schedule_reconnect(rv_queue_t *q) {
    if (q->closing) return;
    uint64_t base = q->backoff_ms;
    uint32_t r = 0;
    if (rv_random(&r, sizeof r) != 0) r = (uint32_t)rv_now_ms();
    /* Half fixed, half random: many rivetd processes do not reconnect in lockstep. */
    uint64_t delay = base / 2 + r % (base / 2 + 1);
    q->backoff_ms = base * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : base * 2;
    uv_timer_start(&q->reconnect_timer, on_reconnect_timer, delay, 0);
}

/* Detach and free the current context, then schedule a reconnect. Pending commands are answered
 * from inside redisAsyncFree (now, or right after the current reply callback returns). Never call
 * this from the connect callback. */
static void conn_drop(rv_queue_t *q) {
    watch_drop(q);
    redisAsyncContext *ac = q->ac;
    q->ac = NULL;
    q->ready = 0;
    q->state = RV_QUEUE_DISCONNECTED;
    uv_timer_stop(&q->connect_timer);
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    schedule_reconnect(q);
}

static void on_connect_timer(uv_timer_t *t) {
    rv_queue_t *q = t->data;
    if (!q->ac || q->ready) return;
    if (q->state == RV_QUEUE_CONNECTING) {
        log_failure(q, "redis: connecting to %s timed out after %llu ms", q->where,
                    (unsigned long long)q->timeout_ms);
    } else {
        log_failure(q, "redis: %s did not complete the handshake within %llu ms", q->where,
                    (unsigned long long)q->timeout_ms);
    }
    conn_drop(q);
}

static void on_cmd_timer(uv_timer_t *t) {
    rv_queue_t *q = t->data;
    if (!q->head) return;
    uint64_t now = uv_now(q->loop);
    if (q->head->deadline > now) {
        cmd_timer_arm(q);
        return;
    }
    size_t overdue = 0;
    for (cmd_t *c = q->head; c; c = c->next) {
        if (c->deadline <= now) {
            c->fail_err = RV_ETIMEDOUT;
            overdue++;
        }
    }
    /* Redis may be stuck (a slow script, CLIENT PAUSE, swapping): answers that arrive late would
     * belong to callers already told "timed out", so the connection is given up. */
    rv_warn("redis: %zu command(s) got no answer from %s within %llu ms; reconnecting", overdue,
            q->where, (unsigned long long)q->timeout_ms);
    if (q->ac) {
        conn_drop(q);
        return;
    }
    /* Commands never outlive their context; this only guards that invariant. */
    while (q->head) {
        cmd_t *c = q->head;
        list_unlink(q, c);
        cmd_finish(c, c->fail_err, 0, NULL);
    }
}

/* Common checks for a handshake reply: 1 when it can be used; 0 when the connection is going away
 * or the reply was an error (then the connection is dropped). */
static int setup_reply_ok(rv_queue_t *q, redisAsyncContext *ac, redisReply *reply,
                          const char *what) {
    if (!reply || ac->data != q) return 0;
    if (reply->type != REDIS_REPLY_ERROR) return 1;
    log_failure(q, "redis: %s refused by %s: %.160s", what, q->where, reply->str);
    conn_drop(q);
    return 0;
}

static void on_auth(redisAsyncContext *ac, void *r, void *privdata) {
    setup_reply_ok(privdata, ac, r, "AUTH");
}

static void on_select(redisAsyncContext *ac, void *r, void *privdata) {
    setup_reply_ok(privdata, ac, r, "SELECT");
}

/* The value of a CONFIG GET reply (an array name, value), or NULL. */
static const char *config_value(redisReply *reply) {
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) return NULL;
    redisReply *v = reply->element[1];
    if (!v || (v->type != REDIS_REPLY_STRING && v->type != REDIS_REPLY_STATUS)) return NULL;
    return v->str;
}

/* CONFIG may be renamed, disabled or denied by an ACL on a managed Redis: then durability
 * cannot be checked, which is worth one line at info, never a failure. */
static void config_unknown(rv_queue_t *q, redisReply *reply) {
    if (q->cfg_seen == 2) return;
    q->cfg_seen = 2;
    rv_info("redis: durability could not be checked (CONFIG GET: %.120s); make sure %s runs "
            "with appendonly yes and maxmemory-policy noeviction, see conf/redis-rivet.conf",
            reply && reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply", q->where);
}

/* The value of a CONFIG GET reply for q, or NULL when there is none to judge (the connection is
 * going away, or Redis did not say: then that is logged once). */
static const char *config_of(rv_queue_t *q, redisAsyncContext *ac, redisReply *reply) {
    if (!reply || ac->data != q) return NULL;
    const char *v = config_value(reply);
    if (!v) {
        config_unknown(q, reply);
        return NULL;
    }
    q->cfg_seen = 1;
    return v;
}

static void on_config_aof(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    const char *v = config_of(q, ac, r);
    if (!v) return;
    int off = strcasecmp(v, "no") == 0;
    if (off && q->aof_seen != 2) {
        rv_warn("redis: appendonly is off: an acknowledged provisioning event can be lost if Redis "
                "restarts; see conf/redis-rivet.conf");
    }
    q->aof_seen = off ? 2 : 1;
}

static void on_config_policy(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    const char *v = config_of(q, ac, r);
    if (!v) return;
    int evicts = strcasecmp(v, "noeviction") != 0;
    if (evicts && q->policy_seen != 2) {
        rv_warn("redis: maxmemory-policy is %.64s: under memory pressure Redis can evict event "
                "ids (duplicates get through) or whole keys; use noeviction, see "
                "conf/redis-rivet.conf",
                v);
    }
    q->policy_seen = evicts ? 2 : 1;
}

static void on_role(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    redisReply *reply = r;
    if (!setup_reply_ok(q, ac, reply, "ROLE")) return;
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
        reply->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(reply->element[0]->str, "master") == 0)
        return;
    log_failure(q, "redis: %s is not the primary (ROLE); asking the sentinels again", q->where);
    rv_sentinel_distrust(q->sentinel);
    conn_drop(q);
}

static void on_script_load(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    redisReply *reply = r;
    if (!setup_reply_ok(q, ac, reply, "SCRIPT LOAD")) return;
    if (reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        log_failure(q, "redis: unexpected answer to SCRIPT LOAD from %s", q->where);
        conn_drop(q);
        return;
    }
    memcpy(q->sha, reply->str, 40);
    q->sha[40] = '\0';
    q->ready = 1;
    q->backoff_ms = BACKOFF_MIN_MS;
    q->last_err[0] = '\0';
    uv_timer_stop(&q->connect_timer);
    /* On a primary other than the one being failed over (ROLE confirmed it): the failover is
     * over for rivetd. */
    if (q->failover_at &&
        (strcmp(q->url.host, q->failover_host) != 0 || q->url.port != q->failover_port)) {
        rv_warn("redis: on the new primary %s: webhooks are taken again", q->where);
        q->failover_at = 0;
    }
    q->watch_off = 0; /* another connection, perhaps another server: it may watch */
    if (q->readies++ == 0) {
        rv_info("redis: connected to %s", q->where);
    } else {
        rv_info("redis: reconnected to %s", q->where);
        rv_metrics_count(RV_M_REDIS_RECONNECTS, "", 1);
    }
    watch_start(q);
}

/* Pipeline the handshake. The durability check comes before SCRIPT LOAD so that its findings are
 * logged by the time the queue reports ready. */
static int send_handshake(rv_queue_t *q, redisAsyncContext *ac) {
    int rc = REDIS_OK;
    if (q->url.pass[0] && q->url.user[0]) {
        rc |= redisAsyncCommand(ac, on_auth, q, "AUTH %s %s", q->url.user, q->url.pass);
    } else if (q->url.pass[0]) {
        rc |= redisAsyncCommand(ac, on_auth, q, "AUTH %s", q->url.pass);
    }
    if (q->url.db != 0) rc |= redisAsyncCommand(ac, on_select, q, "SELECT %d", q->url.db);
    rc |= redisAsyncCommand(ac, on_config_aof, q, "CONFIG GET appendonly");
    rc |= redisAsyncCommand(ac, on_config_policy, q, "CONFIG GET maxmemory-policy");
    /* Sentinel's guide: what a sentinel said may be stale; the server itself confirms. */
    if (q->sentinel) rc |= redisAsyncCommand(ac, on_role, q, "ROLE");
    rc |= redisAsyncCommand(ac, on_script_load, q, "SCRIPT LOAD %s", APPLY_SCRIPT);
    return rc == REDIS_OK ? 0 : RV_ENOMEM;
}

static void on_connect(const redisAsyncContext *cac, int status) {
    rv_queue_t *q = cac->data;
    if (!q) return;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns. */
        ac->data = NULL;
        q->ac = NULL;
        q->state = RV_QUEUE_DISCONNECTED;
        uv_timer_stop(&q->connect_timer);
        log_failure(q, "redis: cannot connect to %s: %s", q->where,
                    cac->c.errstr[0] ? cac->c.errstr : "connection failed");
        rv_sentinel_distrust(q->sentinel);
        schedule_reconnect(q);
        return;
    }
    q->state = RV_QUEUE_CONNECTED;
    if (send_handshake(q, ac) != 0) {
        /* Freeing the context here is unsafe; let the connect timer drop it on the next tick. */
        log_failure(q, "redis: cannot send the handshake to %s: out of memory", q->where);
        uv_timer_start(&q->connect_timer, on_connect_timer, 0, 0);
    }
}

static void on_disconnect(const redisAsyncContext *cac, int status) {
    rv_queue_t *q = cac->data;
    if (!q) return;
    /* hiredis frees the context when this returns. */
    ((redisAsyncContext *)cac)->data = NULL;
    q->ac = NULL;
    watch_drop(q);
    q->ready = 0;
    q->state = RV_QUEUE_DISCONNECTED;
    uv_timer_stop(&q->connect_timer);
    log_failure(q, "redis: connection to %s lost: %s", q->where,
                cac->c.errstr[0] ? cac->c.errstr : "closed");
    schedule_reconnect(q);
}

static void conn_open(rv_queue_t *q);

/* The sentinels named the primary: connect to it. */
static void on_primary(void *data, int err, const char *host, int port) {
    rv_queue_t *q = data;
    if (q->closing || q->ac) return;
    if (err || strlen(host) >= sizeof q->url.host || port < 1 || port > 65535) {
        q->state = RV_QUEUE_DISCONNECTED;
        log_failure(q, "redis: no sentinel named the primary; retrying");
        schedule_reconnect(q);
        return;
    }
    snprintf(q->url.host, sizeof q->url.host, "%s", host);
    q->url.port = port;
    snprintf(q->where, sizeof q->where, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    conn_open(q);
}

/* How long an announced failover holds acknowledgments at most, should neither its end nor its
 * abort be heard (a sentinel gone in the middle of it). */
#define FAILOVER_HOLD_MS 60000

static int failover_held(const rv_queue_t *q) {
    return q->failover_at && uv_now(q->loop) - q->failover_at < FAILOVER_HOLD_MS;
}

/* A sentinel announced that a failover of the primary at host:port starts, or stopped short.
 * From its start no write is acknowledged until rivetd is on the primary that comes out of it:
 * a replica promoted meanwhile would not have what the old primary still takes, and a replica
 * that still follows the old primary (so WAIT counts it) is made to follow the new one and drops
 * it. A webhook refused meanwhile is delivered again by Stripe. */
static void on_failover(void *data, int started, const char *host, int port) {
    rv_queue_t *q = data;
    if (q->closing) return;
    if (started) {
        /* Only a failover of the primary this queue writes to, or may be about to. */
        if (q->ac && (strcmp(q->url.host, host) != 0 || q->url.port != port)) return;
        if (!failover_held(q))
            rv_warn("redis: a failover of %s:%d started: webhooks are refused until rivetd is "
                    "on the new primary",
                    host, port);
        q->failover_at = uv_now(q->loop);
        if (q->failover_at == 0) q->failover_at = 1;
        snprintf(q->failover_host, sizeof q->failover_host, "%s", host);
        q->failover_port = port;
    } else if (q->failover_at && strcmp(q->failover_host, host) == 0 && q->failover_port == port) {
        rv_warn("redis: the failover of %s:%d stopped short: webhooks are taken again", host, port);
        q->failover_at = 0;
    }
}

/* A sentinel announced a failover: leave the old primary now rather than at the next failure. */
static void on_switch(void *data, const char *host, int port) {
    rv_queue_t *q = data;
    if (q->closing) return;
    if (q->ac && strcmp(q->url.host, host) == 0 && q->url.port == port) return;
    q->backoff_ms = BACKOFF_MIN_MS;
    if (q->ac) {
        conn_drop(q);
    } else if (q->state == RV_QUEUE_DISCONNECTED) {
        /* A wait grown while the old primary refused connections (up to BACKOFF_MAX_MS) would
         * keep webhooks refused that long after the new primary is known: try now. */
        uv_timer_stop(&q->reconnect_timer);
        schedule_reconnect(q);
    }
}

/* Connect: through the sentinels, asked again at every connection, or to REDIS_URL's host. */
static void conn_start(rv_queue_t *q) {
    if (q->sentinel) {
        q->state = RV_QUEUE_CONNECTING;
        if (rv_sentinel_find(q->sentinel, on_primary, q) != 0) schedule_reconnect(q);
        return;
    }
    conn_open(q);
}

static void conn_open(rv_queue_t *q) {
    redisAsyncContext *ac;
    q->state = RV_QUEUE_CONNECTING;
    if (q->url.path[0])
        ac = redisAsyncConnectUnix(q->url.path);
    else
        ac = redisAsyncConnect(q->url.host, q->url.port);
    if (!ac) {
        log_failure(q, "redis: cannot connect to %s: out of memory", q->where);
        goto retry;
    }
    if (ac->err) {
        log_failure(q, "redis: cannot connect to %s: %s", q->where, ac->errstr);
        redisAsyncFree(ac);
        goto retry;
    }
    if (rv_redis_uv_attach(ac, q->loop) != REDIS_OK) {
        log_failure(q, "redis: cannot watch the connection to %s", q->where);
        redisAsyncFree(ac);
        goto retry;
    }
    ac->data = q;
    q->ac = ac;
    /* The connect callback must be set after attaching: setting it asks the adapter to wait for
     * writability, which is how hiredis notices that connect(2) finished. */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    uv_timer_start(&q->connect_timer, on_connect_timer, q->timeout_ms, 0);
    return;
retry:
    q->state = RV_QUEUE_DISCONNECTED;
    schedule_reconnect(q);
}

/* ---- the watch ------------------------------------------------------------------------- */

#define WATCH_RETRY_MS 1000
/* A connection that only listens can die without a word (a NAT or a firewall that forgets it):
 * every WATCH_PROBE_MS the queue writes a key of the watch's own, which the watch must tell of
 * within a command's timeout; one that does not is connected again, and the cache emptied. The
 * probe also keeps the connection from looking idle to whatever is in between. */
#define WATCH_PROBE_MS 2000

static void watch_silent(rv_queue_t *q);
static void watch_retry(rv_queue_t *q);

/* A probe Redis refused (an ACL without the key, out of memory) says nothing of the watch. */
static void on_probe_reply(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    redisReply *reply = r;
    if (ac->data != q || reply == NULL || reply->type != REDIS_REPLY_ERROR) return;
    static rv_log_limit_t lim = {.what = "redis: probes of the watch refused"};
    rv_warn_limited(&lim, "redis: the probe of the watch (SET %s) was refused: %.200s",
                    q->probe_key, reply->str);
    q->probe_sent = 0;
}

static void on_watch_timer(uv_timer_t *t) {
    rv_queue_t *q = t->data;
    if (!q->wac) {
        watch_start(q);
        return;
    }
    if (!q->watching) {
        /* Connected, perhaps, but the setup never finished (a connection that went silent on
         * the way, a Redis stalled): a setup has a deadline like any command. */
        static rv_log_limit_t lim = {.what = "redis: the watch's setup did not finish"};
        rv_warn_limited(&lim,
                        "redis: the connection that listens to %s was not set up within %llu ms; "
                        "connecting it again",
                        q->where, (unsigned long long)(q->timeout_ms + WATCH_PROBE_MS));
        watch_drop(q);
        watch_retry(q);
        return;
    }
    uint64_t now = uv_now(q->loop);
    if (q->probe_sent) {
        if (now - q->probe_sent >= q->timeout_ms + WATCH_PROBE_MS) {
            watch_silent(q);
            return;
        }
    } else if (q->ready && q->ac &&
               redisAsyncCommand(q->ac, on_probe_reply, q, "SET %s %u PX 60000", q->probe_key,
                                 ++q->probe_seq) == REDIS_OK) {
        q->probe_sent = now ? now : 1;
    }
    uv_timer_start(&q->watch_timer, on_watch_timer, WATCH_PROBE_MS, 0);
}

static void watch_retry(rv_queue_t *q) {
    if (!q->closing && q->ready && !q->watch_off)
        uv_timer_start(&q->watch_timer, on_watch_timer, WATCH_RETRY_MS, 0);
}

/* Forget the watch: nothing is told from now on, so whatever was cached may go stale. */
static void watch_lost(rv_queue_t *q) {
    int was = q->watching;
    q->watching = 0;
    if (was && q->inval_cb) q->inval_cb(q->inval_data, NULL, 0);
}

static void watch_drop(rv_queue_t *q) {
    uv_timer_stop(&q->watch_timer);
    watch_lost(q);
    redisAsyncContext *ac = q->wac;
    q->wac = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
}

/* The watch was refused. For a while (Redis busy with a script, loading its data, a replica
 * cut off from its primary): try again later. For good (a Redis too old to track keys, a user
 * not allowed to): say why once, and look everything up in Redis until the next connection. */
static void watch_refused(rv_queue_t *q, redisAsyncContext *ac, const char *what,
                          const redisReply *reply) {
    static const char *const passing[] = {"BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN"};
    if (ac->data != q) return;
    const char *err = reply && reply->type == REDIS_REPLY_ERROR ? reply->str : NULL;
    for (size_t i = 0; err && i < RV_ARRAY_LEN(passing); i++) {
        size_t n = strlen(passing[i]);
        if (strncmp(err, passing[i], n) == 0 && (err[n] == ' ' || err[n] == '\0')) {
            rv_info("redis: look-ups are not cached for now: %s refused by %s: %.200s; trying "
                    "again",
                    what, q->where, err);
            watch_drop(q);
            watch_retry(q);
            return;
        }
    }
    rv_info("redis: look-ups are not cached: %s refused by %s: %.200s", what, q->where,
            err ? err : "unexpected answer");
    q->watch_off = 1;
    watch_drop(q);
}

/* The watch told nothing of the last probe in time: connected again, and the cache emptied
 * meanwhile (watch_drop). */
static void watch_silent(rv_queue_t *q) {
    static rv_log_limit_t lim = {.what = "redis: the watch of look-ups went silent"};
    rv_warn_limited(&lim,
                    "redis: the connection that listens to %s told nothing of a write in %llu ms; "
                    "connecting it again",
                    q->where, (unsigned long long)(uv_now(q->loop) - q->probe_sent));
    watch_drop(q);
    watch_retry(q);
}

static void on_watch_message(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    redisReply *reply = r;
    if (reply == NULL || ac->data != q) return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING) {
        watch_refused(q, ac, "SUBSCRIBE", reply);
        return;
    }
    if (strcmp(reply->element[0]->str, "subscribe") == 0) {
        q->watching = 1;
        q->probe_sent = 0;
        if (q->inval_cb) q->inval_cb(q->inval_data, NULL, 0);
        rv_debug("redis: watching the look-ups' keys on %s", q->where);
        uv_timer_start(&q->watch_timer, on_watch_timer, WATCH_PROBE_MS, 0);
        return;
    }
    if (strcmp(reply->element[0]->str, "message") != 0 || !q->inval_cb) return;
    const redisReply *keys = reply->element[2];
    if (keys->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < keys->elements; i++) {
            const redisReply *k = keys->element[i];
            if (k->type != REDIS_REPLY_STRING) continue;
            if (strcmp(k->str, q->probe_key) == 0)
                q->probe_sent = 0; /* told: the watch works */
            else
                q->inval_cb(q->inval_data, k->str, k->len);
        }
    } else {
        /* nil: the database was flushed. */
        q->inval_cb(q->inval_data, NULL, 0);
    }
}

static void on_watch_tracking(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    redisReply *reply = r;
    if (reply == NULL || ac->data != q) return;
    if (reply->type != REDIS_REPLY_STATUS) {
        watch_refused(q, ac, "CLIENT TRACKING", reply);
        return;
    }
    if (redisAsyncCommand(ac, on_watch_message, q, "SUBSCRIBE __redis__:invalidate") != REDIS_OK)
        watch_refused(q, ac, "SUBSCRIBE", NULL);
}

static void on_watch_id(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    redisReply *reply = r;
    if (reply == NULL || ac->data != q) return;
    if (reply->type != REDIS_REPLY_INTEGER) {
        watch_refused(q, ac, "CLIENT ID", reply);
        return;
    }
    snprintf(q->probe_key, sizeof q->probe_key, "rivet:watch:%lld", reply->integer);
    /* Broadcast mode: every change to keys under these prefixes is told, read or not, so that
     * nothing depends on which connection read what. */
    if (redisAsyncCommand(ac, on_watch_tracking, q,
                          "CLIENT TRACKING ON REDIRECT %lld BCAST PREFIX rivet:customer: "
                          "PREFIX rivet:tg:user: PREFIX rivet:email: PREFIX rivet:watch:",
                          reply->integer) != REDIS_OK)
        watch_refused(q, ac, "CLIENT TRACKING", NULL);
}

static void on_watch_auth(redisAsyncContext *ac, void *r, void *privdata) {
    rv_queue_t *q = privdata;
    redisReply *reply = r;
    if (reply == NULL || ac->data != q) return;
    if (reply->type == REDIS_REPLY_ERROR) watch_refused(q, ac, "AUTH", reply);
}

static void on_watch_connect(const redisAsyncContext *cac, int status) {
    rv_queue_t *q = cac->data;
    if (!q) return;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (status != REDIS_OK) {
        /* hiredis frees the context when this returns. */
        ac->data = NULL;
        q->wac = NULL;
        watch_retry(q);
        return;
    }
    int rc = REDIS_OK;
    if (q->url.pass[0] && q->url.user[0])
        rc |= redisAsyncCommand(ac, on_watch_auth, q, "AUTH %s %s", q->url.user, q->url.pass);
    else if (q->url.pass[0])
        rc |= redisAsyncCommand(ac, on_watch_auth, q, "AUTH %s", q->url.pass);
    rc |= redisAsyncCommand(ac, on_watch_id, q, "CLIENT ID");
    if (rc != REDIS_OK) watch_retry(q); /* the context stays until the queue drops it */
}

static void on_watch_disconnect(const redisAsyncContext *cac, int status) {
    rv_queue_t *q = cac->data;
    if (!q) return;
    ((redisAsyncContext *)cac)->data = NULL;
    q->wac = NULL;
    watch_lost(q);
    watch_retry(q);
}

/* Open the watch connection to where the queue is connected. */
static void watch_start(rv_queue_t *q) {
    if (!q->inval_cb || q->wac || q->closing || !q->ready || q->watch_off) return;
    redisAsyncContext *ac = q->url.path[0] ? redisAsyncConnectUnix(q->url.path)
                                           : redisAsyncConnect(q->url.host, q->url.port);
    if (ac == NULL || ac->err || rv_redis_uv_attach(ac, q->loop) != REDIS_OK) {
        if (ac) redisAsyncFree(ac);
        watch_retry(q);
        return;
    }
    ac->data = q;
    q->wac = ac;
    redisAsyncSetConnectCallback(ac, on_watch_connect);
    redisAsyncSetDisconnectCallback(ac, on_watch_disconnect);
    /* The setup's deadline; the subscription's confirmation sets the first probe instead. */
    uv_timer_start(&q->watch_timer, on_watch_timer, q->timeout_ms + WATCH_PROBE_MS, 0);
}

void rv_queue_watch(rv_queue_t *q, rv_invalidate_cb cb, void *data) {
    if (!q) return;
    q->inval_cb = cb;
    q->inval_data = data;
}

int rv_queue_watching(const rv_queue_t *q) { return q && q->watching && q->ready; }

/* What this queue's own script wrote is told at once: the watch's word may come a little
 * later, and whoever asked for the write may look it up as soon as it is answered. */
static void told_own_write(rv_queue_t *q, const cmd_t *c) {
    if (!q->inval_cb) return;
    static const int keys[] = {ARG_KEY_CUST, ARG_KEY_EMAIL};
    for (size_t i = 0; i < RV_ARRAY_LEN(keys); i++) {
        const char *k = c->argv[keys[i]];
        if (k && strcmp(k, DUMMY_KEY) != 0) q->inval_cb(q->inval_data, k, c->argvlen[keys[i]]);
    }
}

/* ---- enqueue ---------------------------------------------------------------------------- */

/* WAIT's answer: how many replicas have every write made before it. Fewer than asked: not
 * confirmed (the caller answers 503 and Stripe delivers again; the event key keeps it once). */
static void on_wait_reply(redisAsyncContext *ac, void *r, void *privdata) {
    static rv_log_limit_t lim = {.what = "redis: WAIT short of replicas"};
    cmd_t *c = privdata;
    rv_queue_t *q = c->q;
    redisReply *reply = r;
    list_unlink(q, c);
    if (!reply) {
        q->ready = 0;
        cmd_finish(c, c->fail_err, 0, NULL);
        return;
    }
    if (failover_held(q)) {
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_INTEGER || reply->integer < (long long)q->min_replicas) {
        q->unconfirmed_at = uv_now(q->loop);
        if (q->unconfirmed_at == 0) q->unconfirmed_at = 1;
        rv_warn_limited(&lim,
                        "redis: %lld of %u replicas confirmed within %s ms: the event is not "
                        "acknowledged",
                        reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1LL, q->min_replicas,
                        q->wait_args[1]);
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
        return;
    }
    q->unconfirmed_at = 0;
    if (c->fulfill_cb && !q->closing) {
        c->fulfill_cb(c->data, 0, c->result, c->telegram);
        free(c);
        return;
    }
    cmd_finish(c, 0, c->result, c->stream_id[0] ? c->stream_id : NULL);
}

/* How long after a write Redis refused the queue is not ready, unless a write is stored first. */
#define REFUSED_MS 5000

/* Remember a refusal of writes by a Redis that is otherwise there: out of memory, a replica, a
 * failed snapshot that stops writes, or too few replicas for min-replicas-to-write. */
static void note_write_error(rv_queue_t *q, const char *err) {
    static const char *const refusals[] = {"OOM ", "READONLY ", "MISCONF ", "NOREPLICAS "};
    for (size_t i = 0; i < RV_ARRAY_LEN(refusals); i++) {
        if (strncmp(err, refusals[i], strlen(refusals[i])) == 0) {
            q->refused_at = uv_now(q->loop);
            if (q->refused_at == 0) q->refused_at = 1;
            return;
        }
    }
}

static void on_enqueue_reply(redisAsyncContext *ac, void *r, void *privdata) {
    cmd_t *c = privdata;
    rv_queue_t *q = c->q;
    redisReply *reply = r;
    list_unlink(q, c);
    told_own_write(q, c);
    if (!reply) {
        /* The context is being freed: the connection is gone whatever the reason. */
        q->ready = 0;
        cmd_finish(c, c->fail_err, 0, NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        /* The script cache was flushed (SCRIPT FLUSH, a restart that kept the connection's
         * address, a failover): send the source itself once, which also caches it again. */
        if (!c->retried && strncmp(reply->str, "NOSCRIPT", 8) == 0 && ac->data == q &&
            !q->closing) {
            c->retried = 1;
            c->argv[ARG_CMD] = "EVAL";
            c->argvlen[ARG_CMD] = 4;
            c->argv[ARG_SCRIPT] = APPLY_SCRIPT;
            c->argvlen[ARG_SCRIPT] = rv_apply_lua_len;
            if (send_argv(ac, on_enqueue_reply, c, NARGS, c->argv, c->argvlen) == REDIS_OK) {
                c->deadline = uv_now(q->loop) + q->timeout_ms;
                list_push(q, c);
                cmd_timer_arm(q);
                rv_info("redis: script not in the cache of %s; sent it again", q->where);
                return;
            }
        }
        rv_warn("redis: event %s not stored: %.200s", c->argv[ARG_ID], reply->str);
        note_write_error(q, reply->str);
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 4 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[2]->type != REDIS_REPLY_INTEGER ||
        reply->element[3]->type != REDIS_REPLY_STRING ||
        reply->element[0]->integer < RV_ENQ_ADDED || reply->element[0]->integer > RV_ENQ_RECORDED) {
        rv_warn("redis: event %s: unexpected answer from the script", c->argv[ARG_ID]);
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
        return;
    }
    q->refused_at = 0;
    if (failover_held(q)) {
        /* Written, perhaps to a primary being replaced: not confirmed (a redelivery finds it, or
         * writes it on the new primary). */
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
        return;
    }
    int result = (int)reply->element[0]->integer;
    const char *id = result == RV_ENQ_ADDED ? reply->element[1]->str : NULL;
    if (reply->element[2]->integer) result |= RV_ENQ_ASK_STRIPE;
    if (q->min_replicas && ac->data == q && !q->closing) {
        /* Confirmed only once enough replicas have it. WAIT covers this connection's writes;
         * a duplicate's script wrote nothing, and the original may have been written through
         * another connection (another instance) and not be on any replica yet. Redis 7.0 lets
         * WAIT after any command cover everything written before it, newer versions only the
         * client's own writes: setting the event key's TTL again is a write that replicas
         * receive after the original, so WAIT covers the original on every version. */
        if ((result & RV_ENQ_MASK) == RV_ENQ_DUPLICATE &&
            redisAsyncCommand(ac, NULL, NULL, "EXPIRE %b %s", c->argv[ARG_KEY_EVENT],
                              c->argvlen[ARG_KEY_EVENT], q->ttl) != REDIS_OK) {
            cmd_finish(c, RV_EUNAVAIL, 0, NULL);
            return;
        }
        c->waiting = 1;
        c->result = result;
        snprintf(c->stream_id, sizeof c->stream_id, "%s", id ? id : "");
        snprintf(c->telegram, sizeof c->telegram, "%s", reply->element[3]->str);
        const char *argv[] = {"WAIT", q->wait_args[0], q->wait_args[1]};
        for (int i = 0; i < 3; i++) {
            c->argv[i] = argv[i];
            c->argvlen[i] = strlen(argv[i]);
        }
        if (send_argv(ac, on_wait_reply, c, 3, c->argv, c->argvlen) != REDIS_OK) {
            cmd_finish(c, RV_EUNAVAIL, 0, NULL);
            return;
        }
        c->deadline = uv_now(q->loop) + q->timeout_ms;
        list_push(q, c);
        cmd_timer_arm(q);
        return;
    }
    if (c->fulfill_cb && !q->closing) {
        c->fulfill_cb(c->data, 0, result, reply->element[3]->str);
        free(c);
        return;
    }
    cmd_finish(c, 0, result, id);
}

/* Copy n bytes as argument i into the command's string area at *off. */
static void put_arg(cmd_t *c, size_t *off, int i, const char *s, size_t n) {
    memcpy(c->strs + *off, s, n);
    c->strs[*off + n] = '\0';
    c->argv[i] = c->strs + *off;
    c->argvlen[i] = n;
    *off += n + 1;
}

static void set_arg(cmd_t *c, int i, const char *s) {
    c->argv[i] = s;
    c->argvlen[i] = strlen(s);
}

/* A command with room for extra bytes of copied arguments; NULL when out of memory. */
static cmd_t *cmd_new(rv_queue_t *q, size_t extra, void *data) {
    cmd_t *c = malloc(sizeof *c + extra);
    if (!c) return NULL;
    memset(c, 0, sizeof *c);
    c->q = q;
    c->data = data;
    c->fail_err = RV_EUNAVAIL;
    return c;
}

/* Send c's first argc arguments with fn as the reply callback, and watch its deadline. On
 * failure c is freed and its callback never called. */
/* Append n's digits and "\r\n" at p; the new end. */
static char *put_len(char *p, size_t n) {
    char d[24];
    int k = 0;
    do d[k++] = (char)('0' + n % 10);
    while ((n /= 10) != 0);
    while (k > 0) *p++ = d[--k];
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

/* Send a command in Redis's protocol, written in one pass: hiredis formats each argument with
 * its own printf-like sdscatfmt, which cost more than everything else about sending it. */
static int send_argv(redisAsyncContext *ac, redisCallbackFn *fn, void *priv, int argc,
                     const char **argv, const size_t *len) {
    size_t total = 32;
    for (int i = 0; i < argc; i++) total += len[i] + 32;
    char stack[8192], *buf = total <= sizeof stack ? stack : malloc(total);
    if (buf == NULL) return REDIS_ERR;
    char *p = buf;
    *p++ = '*';
    p = put_len(p, (size_t)argc);
    for (int i = 0; i < argc; i++) {
        *p++ = '$';
        p = put_len(p, len[i]);
        memcpy(p, argv[i], len[i]);
        p += len[i];
        *p++ = '\r';
        *p++ = '\n';
    }
    int rc = redisAsyncFormattedCommand(ac, fn, priv, buf, (size_t)(p - buf));
    if (buf != stack) free(buf);
    return rc;
}

static int cmd_send(rv_queue_t *q, cmd_t *c, int argc, redisCallbackFn *fn) {
    if (send_argv(q->ac, fn, c, argc, c->argv, c->argvlen) != REDIS_OK) {
        free(c);
        return RV_EUNAVAIL;
    }
    c->deadline = uv_now(q->loop) + q->timeout_ms;
    list_push(q, c);
    cmd_timer_arm(q);
    return 0;
}

/* A key "<prefix><id>" as argument i, built in the command's string area. */
static void put_key(cmd_t *c, size_t *off, int i, const char *prefix, const char *id) {
    size_t pl = strlen(prefix), il = strlen(id);
    memcpy(c->strs + *off, prefix, pl);
    memcpy(c->strs + *off + pl, id, il + 1);
    c->argv[i] = c->strs + *off;
    c->argvlen[i] = pl + il;
    *off += pl + il + 1;
}

static const char *const mode_names[] = {"event", "fulfill", "state"};

/* A Telegram start token: 128 random bits from the OS, base64url without padding (22
 * characters of A-Z a-z 0-9 - _, within Telegram's 64 for a start parameter). */
static int start_token(char out[23]) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    unsigned char raw[18]; /* 144 bits: a whole number of base64 digits, 132 of them used */
    if (rv_random(raw, sizeof raw) != 0) return RV_EIO;
    for (int i = 0, o = 0; i < 18 && o < 22; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];
        for (int k = 3; k >= 0 && o < 22; k--) out[o++] = b64[(v >> (6 * k)) & 63];
    }
    out[22] = '\0';
    return 0;
}

static int apply(rv_queue_t *q, const rv_prov_event_t *ev, int mode, const char *source,
                 rv_enqueue_cb cb, rv_fulfill_cb fcb, void *data) {
    if (!q || !ev || (!cb && !fcb) || !ev->type || !ev->data_json || mode < RV_APPLY_EVENT ||
        mode > RV_APPLY_STATE || !source)
        return RV_EINVAL;
    if (mode == RV_APPLY_EVENT && !rv_provision_is_id(ev->event_id)) return RV_EINVAL;
    if (mode != RV_APPLY_EVENT && ev->event_id[0]) return RV_EINVAL;
    if (failover_held(q)) return RV_EUNAVAIL;
    /* These become keys: the mapping checked them already, and the queue does not rely on it. */
    if (ev->customer_id[0] && !rv_provision_is_id(ev->customer_id)) return RV_EINVAL;
    if (ev->subscription_id[0] && !rv_provision_is_id(ev->subscription_id)) return RV_EINVAL;
    if (ev->session_id[0] && !rv_provision_is_id(ev->session_id)) return RV_EINVAL;
    size_t datalen = strlen(ev->data_json);
    if (datalen < 2 || ev->data_json[datalen - 1] != '}') return RV_EINVAL;
    if (q->closing || !q->ready || !q->ac) return RV_EUNAVAIL;
    if (q->npending >= MAX_PENDING) return RV_EUNAVAIL;

    static const char source_key[] = ",\"source\":\"";
    char version[24], state[400] = "", plan[40] = "";
    snprintf(version, sizeof version, "%lld", (long long)ev->created);
    if (ev->has_state) {
        char pe[24] = "";
        if (ev->has_period_end) snprintf(pe, sizeof pe, "%lld", (long long)ev->period_end);
        snprintf(state, sizeof state, "%s|%s|%s|%s", ev->tier, ev->status, pe,
                 ev->cancel_at_period_end < 0 ? ""
                 : ev->cancel_at_period_end   ? "1"
                                              : "0");
    } else if (ev->session_id[0]) {
        snprintf(plan, sizeof plan, "%s", ev->tier[0] ? ev->tier : "unknown");
    }
    /* The state's fields are joined with '|': a status or tier with one would shift them. */
    if (strchr(ev->status, '|') || strchr(ev->tier, '|')) return RV_EINVAL;

    /* A token for the customer's way into the bot, used by the script only if one is needed. */
    char token[23] = "", now[24], email_key[16 + sizeof ev->email];
    if (ev->fulfills && q->link_prefix[0] && start_token(token) != 0) return RV_EIO;
    snprintf(now, sizeof now, "%lld", (long long)time(NULL));
    size_t el = strlen(ev->email);
    for (size_t i = 0; i <= el; i++) {
        unsigned char ch = (unsigned char)ev->email[i];
        email_key[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }

    const char *const copied[] = {
        ev->type, ev->event_id, version, ev->customer_id, ev->email, ev->subscription_id, state,
        plan,     token,        now};
    size_t total = 4 * 64 + strlen(ev->event_id) + strlen(ev->customer_id) +
                   strlen(ev->session_id) + 2 * el + 6 + datalen + sizeof source_key +
                   strlen(source) + 1;
    for (size_t i = 0; i < RV_ARRAY_LEN(copied); i++) total += strlen(copied[i]) + 1;
    cmd_t *c = cmd_new(q, total, data);
    if (!c) return RV_ENOMEM;
    c->cb = cb;
    c->fulfill_cb = fcb;

    size_t off = 0;
    set_arg(c, ARG_CMD, "EVALSHA");
    set_arg(c, ARG_SCRIPT, q->sha);
    set_arg(c, ARG_NUMKEYS, "7");
    if (ev->event_id[0])
        put_key(c, &off, ARG_KEY_EVENT, "rivet:event:", ev->event_id);
    else
        set_arg(c, ARG_KEY_EVENT, DUMMY_KEY);
    set_arg(c, ARG_KEY_STREAM, q->stream);
    if (ev->customer_id[0])
        put_key(c, &off, ARG_KEY_CUST, "rivet:customer:", ev->customer_id);
    else
        set_arg(c, ARG_KEY_CUST, DUMMY_KEY);
    if (ev->session_id[0])
        put_key(c, &off, ARG_KEY_CHECKOUT, "rivet:checkout:", ev->session_id);
    else
        set_arg(c, ARG_KEY_CHECKOUT, DUMMY_KEY);
    if (token[0])
        put_key(c, &off, ARG_KEY_TOKEN, "rivet:tg:start:", token);
    else
        set_arg(c, ARG_KEY_TOKEN, DUMMY_KEY);
    if (el)
        put_key(c, &off, ARG_KEY_EMAIL, "rivet:email:", email_key);
    else
        set_arg(c, ARG_KEY_EMAIL, DUMMY_KEY);
    set_arg(c, ARG_KEY_DOUBTS, RV_DOUBTS_KEY);
    set_arg(c, ARG_TTL, q->ttl);
    set_arg(c, ARG_MODE, mode_names[mode]);
    static const int at[] = {ARG_TYPE, ARG_ID,    ARG_VERSION, ARG_CUST,  ARG_EMAIL,
                             ARG_SUB,  ARG_STATE, ARG_PLAN,    ARG_TOKEN, ARG_NOW};
    for (size_t i = 0; i < RV_ARRAY_LEN(copied); i++)
        put_arg(c, &off, at[i], copied[i], strlen(copied[i]));
    /* The data without its closing brace, with the source: the script adds the entitlement. */
    size_t head = datalen - 1;
    const char *sk = head > 1 ? source_key : source_key + 1; /* no comma after a bare "{" */
    size_t skl = strlen(sk), sl = strlen(source);
    char *d = c->strs + off;
    memcpy(d, ev->data_json, head);
    memcpy(d + head, sk, skl);
    memcpy(d + head + skl, source, sl);
    memcpy(d + head + skl + sl, "\"", 2);
    c->argv[ARG_DATA] = d;
    c->argvlen[ARG_DATA] = head + skl + sl + 1;
    off += head + skl + sl + 2;
    set_arg(c, ARG_FULFILLS, ev->fulfills ? "1" : "0");
    set_arg(c, ARG_PAST_DUE, q->past_due_active ? "1" : "0");
    set_arg(c, ARG_SOURCE, source);
    set_arg(c, ARG_LINK, q->link_prefix);
    set_arg(c, ARG_TOKEN_TTL, q->token_ttl);

    return cmd_send(q, c, NARGS, on_enqueue_reply);
}

int rv_queue_apply(rv_queue_t *q, const rv_prov_event_t *ev, int mode, const char *source,
                   rv_enqueue_cb cb, void *data) {
    if (!cb) return RV_EINVAL;
    return apply(q, ev, mode, source, cb, NULL, data);
}

int rv_queue_fulfill(rv_queue_t *q, const rv_prov_event_t *ev, rv_fulfill_cb cb, void *data) {
    if (!cb) return RV_EINVAL;
    return apply(q, ev, RV_APPLY_FULFILL, "success_page", NULL, cb, data);
}

int rv_queue_enqueue(rv_queue_t *q, const rv_prov_event_t *ev, rv_enqueue_cb cb, void *data) {
    return rv_queue_apply(q, ev, RV_APPLY_EVENT, "webhook", cb, data);
}

/* ---- plain commands ---------------------------------------------------------------------- */

static void on_raw_reply(redisAsyncContext *ac, void *r, void *privdata) {
    cmd_t *c = privdata;
    rv_queue_t *q = c->q;
    redisReply *reply = r;
    list_unlink(q, c);
    if (!reply || q->closing) {
        if (!reply) q->ready = 0;
        cmd_finish(c, reply ? RV_EUNAVAIL : c->fail_err, 0, NULL);
        return;
    }
    c->raw_cb(c->data, reply->type == REDIS_REPLY_ERROR ? RV_EUNAVAIL : 0, reply);
    free(c);
}

int rv_queue_call(rv_queue_t *q, int argc, const char *const *argv, rv_reply_cb cb, void *data) {
    if (!q || !cb || argc < 1 || argc > NARGS) return RV_EINVAL;
    if (q->closing || !q->ready || !q->ac) return RV_EUNAVAIL;
    if (q->npending >= MAX_PENDING) return RV_EUNAVAIL;
    size_t total = 0;
    for (int i = 0; i < argc; i++) total += strlen(argv[i]) + 1;
    cmd_t *c = cmd_new(q, total, data);
    if (!c) return RV_ENOMEM;
    c->raw_cb = cb;
    size_t off = 0;
    for (int i = 0; i < argc; i++) put_arg(c, &off, i, argv[i], strlen(argv[i]));
    return cmd_send(q, c, argc, on_raw_reply);
}

/* ---- dead letters --------------------------------------------------------------------------- */

static void on_dead_reply(redisAsyncContext *ac, void *r, void *privdata) {
    cmd_t *c = privdata;
    rv_queue_t *q = c->q;
    redisReply *reply = r;
    const char *id = c->argvlen[DARG_ID] ? c->argv[DARG_ID] : "-";
    list_unlink(q, c);
    if (!reply) {
        q->ready = 0;
        cmd_finish(c, c->fail_err, 0, NULL);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        rv_warn("redis: dead letter for event %s not stored: %.200s", id, reply->str);
        note_write_error(q, reply->str);
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[0]->integer < RV_ENQ_ADDED ||
        reply->element[0]->integer > RV_ENQ_DUPLICATE) {
        rv_warn("redis: dead letter for event %s: unexpected answer from the script", id);
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
        return;
    }
    int result = (int)reply->element[0]->integer;
    cmd_finish(c, 0, result, result == RV_ENQ_ADDED ? reply->element[1]->str : NULL);
}

int rv_queue_dead_letter(rv_queue_t *q, const char *event_id, const char *stripe_type,
                         const char *reason, const void *body, size_t len, rv_enqueue_cb cb,
                         void *data) {
    if (!q || !cb || !reason || (!body && len > 0)) return RV_EINVAL;
    if (!event_id) event_id = "";
    if (!stripe_type) stripe_type = "";
    size_t idlen = strnlen(event_id, RV_PROVISION_ID_MAX + 1);
    size_t typelen = strnlen(stripe_type, DEAD_FIELD_MAX + 1);
    size_t reasonlen = strnlen(reason, DEAD_FIELD_MAX + 1);
    if (idlen > 0 && !rv_provision_is_id(event_id)) return RV_EINVAL;
    if (reasonlen == 0 || reasonlen > DEAD_FIELD_MAX || typelen > DEAD_FIELD_MAX) {
        return RV_EINVAL;
    }
    if (q->closing || !q->ready || !q->ac) return RV_EUNAVAIL;
    if (q->npending >= MAX_PENDING) return RV_EUNAVAIL;

    static const char ekey_prefix[] = "rivet:event:";
    char received[24];
    int recvlen = snprintf(received, sizeof received, "%lld", (long long)time(NULL));
    size_t total = sizeof ekey_prefix + idlen + reasonlen + 1 + idlen + 1 + typelen + 1 +
                   (size_t)recvlen + 1 + len + 1;
    cmd_t *c = cmd_new(q, total, data);
    if (!c) return RV_ENOMEM;
    c->cb = cb;

    size_t off = 0;
    c->argv[DARG_CMD] = "EVAL";
    c->argvlen[DARG_CMD] = 4;
    c->argv[DARG_SCRIPT] = dead_script;
    c->argvlen[DARG_SCRIPT] = sizeof dead_script - 1;
    set_arg(c, DARG_NUMKEYS, "2");
    if (idlen) {
        memcpy(c->strs, ekey_prefix, sizeof ekey_prefix - 1);
        off = sizeof ekey_prefix - 1;
        put_arg(c, &off, DARG_KEY_EVENT, event_id, idlen);
        c->argv[DARG_KEY_EVENT] = c->strs;
        c->argvlen[DARG_KEY_EVENT] = sizeof ekey_prefix - 1 + idlen;
    } else {
        set_arg(c, DARG_KEY_EVENT, DUMMY_KEY);
    }
    set_arg(c, DARG_KEY_STREAM, q->dead_stream);
    set_arg(c, DARG_TTL, q->ttl);
    set_arg(c, DARG_MAX, STRINGIFY(RV_QUEUE_DEAD_MAX));
    put_arg(c, &off, DARG_REASON, reason, reasonlen);
    put_arg(c, &off, DARG_ID, event_id, idlen);
    put_arg(c, &off, DARG_TYPE, stripe_type, typelen);
    put_arg(c, &off, DARG_RECEIVED, received, (size_t)recvlen);
    put_arg(c, &off, DARG_BODY, len ? body : "", len);

    return cmd_send(q, c, DARGS, on_dead_reply);
}

/* ---- life cycle ----------------------------------------------------------------------------- */

/* Check the host: an IP literal, or "localhost" for 127.0.0.1. Fills q->url.host with the numeric
 * form and q->where. */
static int check_host(rv_queue_t *q) {
    if (q->url.path[0]) {
        snprintf(q->where, sizeof q->where, "unix:%s", q->url.path);
        return 0;
    }
    if (strcasecmp(q->url.host, "localhost") == 0) strcpy(q->url.host, "127.0.0.1");
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_flags = AI_NUMERICHOST;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(q->url.host, NULL, &hints, &res) != 0 || !res) {
        rv_error("redis: REDIS_URL host \"%s\" is not an IP address; name lookups would block "
                 "the loop, so use an address (or localhost)",
                 q->url.host);
        return RV_EINVAL;
    }
    char num[NI_MAXHOST];
    int rc = getnameinfo(res->ai_addr, res->ai_addrlen, num, sizeof num, NULL, 0, NI_NUMERICHOST);
    int v6 = res->ai_family == AF_INET6;
    freeaddrinfo(res);
    if (rc != 0 || strlen(num) >= sizeof q->url.host) return RV_EINVAL;
    strcpy(q->url.host, num);
    snprintf(q->where, sizeof q->where, v6 ? "[%s]:%d" : "%s:%d", q->url.host, q->url.port);
    return 0;
}

int rv_queue_init(uv_loop_t *loop, const rv_queue_opts_t *opts, rv_queue_t **out) {
    if (!loop || !opts || !out || !opts->url || !opts->stream) return RV_EINVAL;
    size_t slen = strnlen(opts->stream, STREAM_MAX + 1);
    if (slen == 0 || slen > STREAM_MAX || opts->dedupe_ttl == 0) return RV_EINVAL;

    rv_queue_t *q = calloc(1, sizeof *q);
    if (!q) return RV_ENOMEM;
    if (rv_redis_url_parse(opts->url, &q->url) != 0 || check_host(q) != 0) {
        free(q);
        return RV_EINVAL;
    }
    q->stream = strdup(opts->stream);
    q->dead_stream = malloc(slen + sizeof DEAD_SUFFIX);
    if (!q->stream || !q->dead_stream) {
        free(q->stream);
        free(q->dead_stream);
        free(q);
        return RV_ENOMEM;
    }
    memcpy(q->dead_stream, q->stream, slen);
    memcpy(q->dead_stream + slen, DEAD_SUFFIX, sizeof DEAD_SUFFIX);
    q->loop = loop;
    snprintf(q->ttl, sizeof q->ttl, "%llu", (unsigned long long)opts->dedupe_ttl);
    q->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    q->past_due_active = opts->past_due_active;
    if (opts->telegram_bot && opts->telegram_bot[0])
        snprintf(q->link_prefix, sizeof q->link_prefix,
                 "https://t.me/%s?start=", opts->telegram_bot);
    snprintf(q->token_ttl, sizeof q->token_ttl, "%llu",
             (unsigned long long)(opts->telegram_link_ttl ? opts->telegram_link_ttl : 604800));
    q->backoff_ms = BACKOFF_MIN_MS;
    q->state = RV_QUEUE_DISCONNECTED;
    q->min_replicas = opts->min_replicas;
    snprintf(q->wait_args[0], sizeof q->wait_args[0], "%u", opts->min_replicas);
    /* WAIT gives up a little before the command's own deadline, so that a slow replica is a
     * refused event, not a connection dropped for silence. */
    snprintf(q->wait_args[1], sizeof q->wait_args[1], "%llu",
             (unsigned long long)(q->timeout_ms * 3 / 4 ? q->timeout_ms * 3 / 4 : 1));
    if (opts->sentinels && opts->sentinels[0]) {
        rv_sentinel_addr_t addrs[RV_SENTINEL_MAX];
        int n = rv_sentinel_parse(opts->sentinels, addrs, RV_SENTINEL_MAX);
        uint64_t t = q->timeout_ms < 1000 ? q->timeout_ms : 1000;
        int rc = n < 1 ? RV_EINVAL
                       : rv_sentinel_init(loop, addrs, n, opts->sentinel_master, t, on_switch,
                                          on_failover, q, &q->sentinel);
        if (rc) {
            free(q->stream);
            free(q->dead_stream);
            free(q);
            return rc;
        }
        snprintf(q->where, sizeof q->where, "the primary of %s", opts->sentinel_master);
    }

    /* uv_timer_init cannot fail. */
    uv_timer_init(loop, &q->reconnect_timer);
    uv_timer_init(loop, &q->connect_timer);
    uv_timer_init(loop, &q->cmd_timer);
    uv_timer_init(loop, &q->watch_timer);
    q->reconnect_timer.data = q->connect_timer.data = q->cmd_timer.data = q;
    q->watch_timer.data = q;
    q->open_handles = 4;
    /* Connect from the loop, so that init does no I/O and reports nothing twice. */
    uv_timer_start(&q->reconnect_timer, on_reconnect_timer, 0, 0);
    *out = q;
    return 0;
}

int rv_queue_ready(const rv_queue_t *q) {
    return q && q->ready && !rv_queue_refusing(q) && !rv_queue_unconfirmed(q) && !failover_held(q);
}

int rv_queue_unconfirmed(const rv_queue_t *q) {
    return q && q->ready && q->unconfirmed_at && uv_now(q->loop) - q->unconfirmed_at < REFUSED_MS;
}

int rv_queue_failing_over(const rv_queue_t *q) { return q && failover_held(q); }

int rv_queue_refusing(const rv_queue_t *q) {
    return q && q->ready && q->refused_at && uv_now(q->loop) - q->refused_at < REFUSED_MS;
}

uint64_t rv_queue_reconnects(const rv_queue_t *q) {
    return q && q->readies > 0 ? q->readies - 1 : 0;
}

int rv_queue_state(const rv_queue_t *q) { return q ? q->state : RV_QUEUE_DISCONNECTED; }

size_t rv_queue_pending(const rv_queue_t *q) { return q ? q->npending : 0; }

static void on_timer_closed(uv_handle_t *h) {
    rv_queue_t *q = h->data;
    if (--q->open_handles > 0) return;
    /* Commands never outlive their context, which is gone; this only guards that invariant. */
    while (q->head) {
        cmd_t *c = q->head;
        list_unlink(q, c);
        cmd_finish(c, RV_EUNAVAIL, 0, NULL);
    }
    while (q->dead) {
        cmd_t *c = q->dead;
        RV_LIST_UNLINK(q->dead, q->dead_tail, c);
        if (c->raw_cb)
            c->raw_cb(c->data, RV_EUNAVAIL, NULL);
        else if (c->fulfill_cb)
            c->fulfill_cb(c->data, RV_EUNAVAIL, 0, NULL);
        else
            c->cb(c->data, RV_EUNAVAIL, 0, NULL);
        free(c);
    }
    void (*done)(void *) = q->done;
    void *done_data = q->done_data;
    free(q->stream);
    free(q->dead_stream);
    free(q);
    if (done) done(done_data);
}

void rv_queue_close(rv_queue_t *q, void (*done)(void *data), void *data) {
    if (!q || q->closing) return;
    q->closing = 1;
    rv_sentinel_close(q->sentinel);
    q->sentinel = NULL;
    q->ready = 0;
    q->done = done;
    q->done_data = data;
    uv_timer_stop(&q->reconnect_timer);
    uv_timer_stop(&q->connect_timer);
    uv_timer_stop(&q->cmd_timer);
    watch_drop(q);
    redisAsyncContext *ac = q->ac;
    q->ac = NULL;
    q->state = RV_QUEUE_DISCONNECTED;
    if (ac) {
        /* Pending commands are answered from inside this free (or right after the reply
         * callback this is called from returns); cmd_finish holds their answers until the
         * handles below are closed. */
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    uv_close((uv_handle_t *)&q->reconnect_timer, on_timer_closed);
    uv_close((uv_handle_t *)&q->connect_timer, on_timer_closed);
    uv_close((uv_handle_t *)&q->cmd_timer, on_timer_closed);
    uv_close((uv_handle_t *)&q->watch_timer, on_timer_closed);
}
