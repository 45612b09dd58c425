/* Redis Sentinel client on the loop, after the Sentinel client guide: ask each sentinel in turn,
 * with a short timeout, SENTINEL get-master-addr-by-name; the first that answers is asked first
 * next time; the caller confirms the primary with ROLE and asks again at every reconnect. One
 * more connection per sentinel subscribes to its failover events: the sentinel that runs a
 * failover announces its start (+try-failover) and its end (+switch-master) first, and any of
 * them may be the one, or may be slow or frozen. So a failover is heard as it starts, before a
 * replica is promoted, rather than at the next failed command.
 *
 * hiredis frees a context itself after a failed connect and after a disconnect; every context's
 * data pointer is cleared before rivetd frees it, so late callbacks see a detached context and
 * return. Nothing is freed from inside a connect callback: a timer at 0 ms moves on instead. */
#include "rivet/sentinel.h"

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/redis_uv.h"

#define WATCH_RETRY_MS 1000

struct rv_sentinel_s {
    uv_loop_t *loop;
    rv_sentinel_addr_t addr[RV_SENTINEL_MAX];
    int order[RV_SENTINEL_MAX]; /* the order in which they are asked */
    int n;
    char master[128];
    uint64_t timeout_ms;
    rv_sentinel_switch_cb on_switch;
    void *data;
    int closing, handles;

    /* A query: one sentinel at a time. */
    redisAsyncContext *q_ac;
    uv_timer_t q_timer;
    int q_pos;     /* position in order of the sentinel being asked; -1: no query */
    int q_advance; /* the timer moves on to the next sentinel (0 only to start a query) */
    rv_sentinel_found_cb found;
    void *found_data;

    /* The subscriptions, one per sentinel (addr[i]: watch[i]). */
    rv_sentinel_failover_cb on_failover;
    struct watch_s {
        rv_sentinel_t *s;
        int idx;
        redisAsyncContext *ac;
        uv_timer_t timer; /* the confirmation's deadline, or the wait before trying again */
        int ok;           /* the sentinel confirmed the subscription */
    } watch[RV_SENTINEL_MAX];
};

typedef struct watch_s watch_t;

int rv_sentinel_parse(const char *list, rv_sentinel_addr_t *out, int max) {
    int n = 0;
    const char *p = list;
    while (*p) {
        const char *end = p + strcspn(p, ",");
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t')) a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
        if (a < b) {
            if (n >= max) return RV_EINVAL;
            const char *colon = b;
            while (colon > a && colon[-1] != ':') colon--;
            if (colon == a || colon == b) return RV_EINVAL;
            const char *h = a, *he = colon - 1;
            if (*h == '[') {
                if (he[-1] != ']') return RV_EINVAL;
                h++;
                he--;
            }
            size_t hl = (size_t)(he - h);
            if (hl == 0 || hl >= sizeof out[n].host) return RV_EINVAL;
            unsigned char tmp[16];
            memcpy(out[n].host, h, hl);
            out[n].host[hl] = '\0';
            if (inet_pton(AF_INET, out[n].host, tmp) != 1 &&
                inet_pton(AF_INET6, out[n].host, tmp) != 1)
                return RV_EINVAL;
            int port = 0;
            for (const char *d = colon; d < b; d++) {
                if (*d < '0' || *d > '9' || port > 65535) return RV_EINVAL;
                port = port * 10 + (*d - '0');
            }
            if (port < 1 || port > 65535) return RV_EINVAL;
            out[n++].port = port;
        }
        p = *end ? end + 1 : end;
    }
    return n > 0 ? n : RV_EINVAL;
}

/* ---- life ---------------------------------------------------------------------------------- */

static void on_closed(uv_handle_t *h) {
    rv_sentinel_t *s = h->data;
    if (--s->handles == 0) free(s);
}

/* Forget and free a context of ours (not from a connect callback). */
static void drop(redisAsyncContext **acp) {
    redisAsyncContext *ac = *acp;
    *acp = NULL;
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
}

static redisAsyncContext *open_ctx(rv_sentinel_t *s, const rv_sentinel_addr_t *a,
                                   redisConnectCallback *on_connect,
                                   redisDisconnectCallback *on_disconnect) {
    redisAsyncContext *ac = redisAsyncConnect(a->host, a->port);
    if (ac == NULL) return NULL;
    if (ac->err || rv_redis_uv_attach(ac, s->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    ac->data = s;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

/* An IP address literal: a sentinel configured to announce host names would have rivetd resolve
 * them on the loop, which blocks. */
static int is_ip(const char *host) {
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

/* ---- finding the primary ------------------------------------------------------------------- */

static void query_try(rv_sentinel_t *s);

static void query_finish(rv_sentinel_t *s, int err, const char *host, int port) {
    s->q_pos = -1;
    uv_timer_stop(&s->q_timer);
    rv_sentinel_found_cb found = s->found;
    s->found = NULL;
    if (found) found(s->found_data, err, host, port);
}

/* The sentinel being asked failed or timed out: ask the next. */
static void on_query_timer(uv_timer_t *t) {
    rv_sentinel_t *s = t->data;
    if (s->closing || s->q_pos < 0) return;
    drop(&s->q_ac);
    if (s->q_advance) s->q_pos++;
    s->q_advance = 1;
    query_try(s);
}

static void query_next_soon(rv_sentinel_t *s) { uv_timer_start(&s->q_timer, on_query_timer, 0, 0); }

static void on_query_connect(const redisAsyncContext *ac, int status) {
    rv_sentinel_t *s = ac->data;
    if (s == NULL || status == REDIS_OK) return;
    /* hiredis frees this context when the callback returns. */
    ((redisAsyncContext *)ac)->data = NULL;
    s->q_ac = NULL;
    query_next_soon(s);
}

static void on_query_disconnect(const redisAsyncContext *ac, int status) {
    rv_sentinel_t *s = ac->data;
    if (s == NULL) return;
    ((redisAsyncContext *)ac)->data = NULL;
    s->q_ac = NULL;
    query_next_soon(s);
}

static void on_query_reply(redisAsyncContext *ac, void *r, void *privdata) {
    rv_sentinel_t *s = privdata;
    redisReply *reply = r;
    if (ac->data != s || reply == NULL) return;
    const rv_sentinel_addr_t *a = &s->addr[s->order[s->q_pos]];
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        rv_warn("redis: sentinel %s:%d does not know the master %s", a->host, a->port, s->master);
        drop(&s->q_ac);
        query_next_soon(s);
        return;
    }
    char host[64];
    snprintf(host, sizeof host, "%s", reply->element[0]->str);
    int port = atoi(reply->element[1]->str);
    if (!is_ip(host)) {
        rv_error("redis: sentinel %s:%d names the primary of %s by a host name (%.64s); rivetd "
                 "takes IP addresses only (sentinel announce-hostnames no)",
                 a->host, a->port, s->master, reply->element[0]->str);
        drop(&s->q_ac);
        query_next_soon(s);
        return;
    }
    /* The guide: a sentinel that answered goes first next time. */
    int k = s->order[s->q_pos];
    memmove(&s->order[1], &s->order[0], (size_t)s->q_pos * sizeof s->order[0]);
    s->order[0] = k;
    drop(&s->q_ac);
    query_finish(s, 0, host, port);
}

static void query_try(rv_sentinel_t *s) {
    while (s->q_pos < s->n) {
        const rv_sentinel_addr_t *a = &s->addr[s->order[s->q_pos]];
        redisAsyncContext *ac = open_ctx(s, a, on_query_connect, on_query_disconnect);
        if (ac && redisAsyncCommand(ac, on_query_reply, s, "SENTINEL get-master-addr-by-name %s",
                                    s->master) == REDIS_OK) {
            s->q_ac = ac;
            uv_timer_start(&s->q_timer, on_query_timer, s->timeout_ms, 0);
            return;
        }
        if (ac) {
            ac->data = NULL;
            redisAsyncFree(ac);
        }
        s->q_pos++;
    }
    query_finish(s, RV_EUNAVAIL, NULL, 0);
}

void rv_sentinel_distrust(rv_sentinel_t *s) {
    if (s == NULL || s->n < 2) return;
    int k = s->order[0];
    memmove(&s->order[0], &s->order[1], (size_t)(s->n - 1) * sizeof s->order[0]);
    s->order[s->n - 1] = k;
    rv_warn("redis: sentinel %s:%d named a primary that is not one; it is asked last from now on",
            s->addr[k].host, s->addr[k].port);
}

int rv_sentinel_find(rv_sentinel_t *s, rv_sentinel_found_cb found, void *data) {
    if (s == NULL || s->closing || found == NULL) return RV_EINVAL;
    if (s->q_pos >= 0) return RV_EUNAVAIL;
    s->found = found;
    s->found_data = data;
    s->q_pos = 0;
    s->q_advance = 0;
    query_next_soon(s); /* from the loop: the callback never comes from inside this call */
    return 0;
}

/* ---- failover events ----------------------------------------------------------------------- */

/* The channels: a failover's start, its end (the new primary), and the ways it can stop short. */
#define WATCH_CHANNELS                                                                             \
    "SUBSCRIBE +switch-master +try-failover -failover-abort-not-elected "                          \
    "-failover-abort-no-good-slave -failover-abort-slave-timeout +failover-end-for-timeout"

static void watch_start(watch_t *w);

/* Start the subscription, or give up one that was not confirmed in time: a connect that hangs
 * (a sentinel's machine gone) is reported by nothing, so without this the subscription would
 * wait on a dead sentinel for ever. */
static void on_watch_timer(uv_timer_t *t) {
    watch_t *w = t->data;
    rv_sentinel_t *s = w->s;
    if (s->closing) return;
    if (w->ac != NULL) {
        if (w->ok) return;
        rv_debug("redis: sentinel %s:%d did not confirm the subscription in %llu ms",
                 s->addr[w->idx].host, s->addr[w->idx].port, (unsigned long long)s->timeout_ms);
        drop(&w->ac);
    }
    watch_start(w);
}

static void watch_retry(watch_t *w) {
    w->ok = 0;
    uv_timer_start(&w->timer, on_watch_timer, WATCH_RETRY_MS, 0);
}

static void on_watch_connect(const redisAsyncContext *ac, int status) {
    watch_t *w = ac->data;
    if (w == NULL || status == REDIS_OK) return;
    ((redisAsyncContext *)ac)->data = NULL;
    w->ac = NULL;
    watch_retry(w);
}

static void on_watch_disconnect(const redisAsyncContext *ac, int status) {
    watch_t *w = ac->data;
    if (w == NULL) return;
    ((redisAsyncContext *)ac)->data = NULL;
    w->ac = NULL;
    watch_retry(w);
}

/* "+switch-master <name> <old ip> <old port> <new ip> <new port>"; the others, about a master:
 * "master <name> <ip> <port>". */
static void on_watch_message(redisAsyncContext *ac, void *r, void *privdata) {
    watch_t *w = privdata;
    rv_sentinel_t *s = w->s;
    redisReply *reply = r;
    if (ac->data != w || reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        reply->elements != 3 || reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    if (strcmp(reply->element[0]->str, "subscribe") == 0) {
        w->ok = 1;
        uv_timer_stop(&w->timer);
        return;
    }
    if (strcmp(reply->element[0]->str, "message") != 0 ||
        reply->element[1]->type != REDIS_REPLY_STRING ||
        reply->element[2]->type != REDIS_REPLY_STRING)
        return;
    const char *channel = reply->element[1]->str, *msg = reply->element[2]->str;
    const rv_sentinel_addr_t *from = &s->addr[w->idx];
    char name[128], host[64], new_host[64], kind[16];
    int port, new_port;
    if (strcmp(channel, "+switch-master") == 0) {
        if (sscanf(msg, "%127s %63s %d %63s %d", name, host, &port, new_host, &new_port) != 5 ||
            strcmp(name, s->master) != 0)
            return;
        if (!is_ip(new_host)) {
            rv_error("redis: sentinel %s:%d names the primary of %s by a host name (%s); rivetd "
                     "takes IP addresses only (sentinel announce-hostnames no)",
                     from->host, from->port, name, new_host);
            return;
        }
        rv_warn("redis: sentinel %s:%d: the primary of %s moved from %s:%d to %s:%d", from->host,
                from->port, name, host, port, new_host, new_port);
        if (s->on_switch) s->on_switch(s->data, new_host, new_port);
        return;
    }
    if (sscanf(msg, "%15s %127s %63s %d", kind, name, host, &port) != 4 ||
        strcmp(kind, "master") != 0 || strcmp(name, s->master) != 0)
        return;
    int started = strcmp(channel, "+try-failover") == 0;
    rv_warn("redis: sentinel %s:%d: %s %s (primary %s:%d)", from->host, from->port, channel, name,
            host, port);
    if (s->on_failover) s->on_failover(s->data, started, host, port);
}

static void watch_start(watch_t *w) {
    rv_sentinel_t *s = w->s;
    redisAsyncContext *ac = open_ctx(s, &s->addr[w->idx], on_watch_connect, on_watch_disconnect);
    if (ac) ac->data = w;
    if (ac && redisAsyncCommand(ac, on_watch_message, w, WATCH_CHANNELS) == REDIS_OK) {
        w->ac = ac;
        w->ok = 0;
        uv_timer_start(&w->timer, on_watch_timer, s->timeout_ms, 0);
        return;
    }
    if (ac) {
        ac->data = NULL;
        redisAsyncFree(ac);
    }
    watch_retry(w);
}

/* ---- entry points -------------------------------------------------------------------------- */

int rv_sentinel_init(uv_loop_t *loop, const rv_sentinel_addr_t *sentinels, int n,
                     const char *master, uint64_t timeout_ms, rv_sentinel_switch_cb on_switch,
                     rv_sentinel_failover_cb on_failover, void *data, rv_sentinel_t **out) {
    if (n < 1 || n > RV_SENTINEL_MAX || master == NULL || master[0] == '\0' ||
        strlen(master) >= 128)
        return RV_EINVAL;
    rv_sentinel_t *s = calloc(1, sizeof *s);
    if (s == NULL) return RV_ENOMEM;
    s->loop = loop;
    memcpy(s->addr, sentinels, (size_t)n * sizeof *sentinels);
    for (int i = 0; i < n; i++) s->order[i] = i;
    s->n = n;
    snprintf(s->master, sizeof s->master, "%s", master);
    s->timeout_ms = timeout_ms ? timeout_ms : 1000;
    s->on_switch = on_switch;
    s->on_failover = on_failover;
    s->data = data;
    s->q_pos = -1;
    uv_timer_init(loop, &s->q_timer);
    s->q_timer.data = s;
    s->handles = 1 + n;
    for (int i = 0; i < n; i++) {
        watch_t *w = &s->watch[i];
        w->s = s;
        w->idx = i;
        uv_timer_init(loop, &w->timer);
        w->timer.data = w;
        uv_timer_start(&w->timer, on_watch_timer, 0, 0);
    }
    *out = s;
    return 0;
}

void rv_sentinel_close(rv_sentinel_t *s) {
    if (s == NULL || s->closing) return;
    s->closing = 1;
    s->found = NULL;
    drop(&s->q_ac);
    uv_close((uv_handle_t *)&s->q_timer, on_closed);
    for (int i = 0; i < s->n; i++) {
        drop(&s->watch[i].ac);
        s->watch[i].timer.data = s; /* on_closed's */
        uv_close((uv_handle_t *)&s->watch[i].timer, on_closed);
    }
}
