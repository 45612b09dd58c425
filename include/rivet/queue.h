/* Redis: the provisioning stream and the customers' entitlements. hiredis async on the daemon's
 * libuv loop, reconnecting with backoff; one Lua script (src/apply.lua) does the duplicate check,
 * the entitlement update, the one-provision-per-checkout check and the XADD atomically. Signed
 * events that cannot be provisioned go, with the reason, to the dead-letter stream
 * "<stream>:dead" instead. */
#ifndef RIVET_QUEUE_H
#define RIVET_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rivet/provision.h"

typedef struct rv_queue_s rv_queue_t;

typedef struct rv_queue_opts_s {
    const char *url;            /* REDIS_URL */
    const char *stream;         /* REDIS_STREAM */
    uint64_t dedupe_ttl;        /* seconds an event id is remembered */
    uint64_t timeout_ms;        /* per command */
    int past_due_active;        /* a past_due subscription keeps the customer's access */
    const char *telegram_bot;   /* the bot a start token is for; NULL or "": no tokens */
    uint64_t telegram_link_ttl; /* seconds a start token lives (0: a week) */
    const char *sentinels;      /* "ip:port,..." of Redis Sentinels, or NULL/"": REDIS_URL's host */
    const char *sentinel_master; /* the master name the sentinels know */
    unsigned min_replicas;       /* an apply is confirmed only once this many replicas have it */
} rv_queue_opts_t;

/* The dead-letter stream keeps about this many entries, the newest (XADD MAXLEN ~, so Redis
 * trims whole nodes and the length may exceed it by up to a node). It is a bound, not a
 * retention policy: whoever holds the webhook secret could otherwise grow it without end, and a
 * Redis full with noeviction refuses the main stream too. At a few KB per Stripe event it is tens
 * of MB; each dead letter is also logged at error level and counted, so an operator hears of it
 * long before it is trimmed. */
#define RV_QUEUE_DEAD_MAX 10000

/* The subscriptions whose state an event left in doubt, until a read of Stripe settles it: a
 * sorted set, "<subscription id> <customer id>" -> when first doubted (Unix seconds). The apply
 * script adds and removes; a recovery run asks Stripe again for those left over. */
#define RV_DOUBTS_KEY "rivet:doubts"

enum rv_enqueue_result {
    RV_ENQ_ADDED = 1,     /* applied, and its entry appended to the stream */
    RV_ENQ_DUPLICATE = 2, /* event id seen before: nothing written */
    RV_ENQ_RECORDED = 3,  /* applied, no entry: its session was provisioned already, it is an
                             unpaid checkout, or a read of Stripe that changed nothing */
    RV_ENQ_MASK = 0xff,
    RV_ENQ_ASK_STRIPE = 0x100, /* or'd in: the subscription is unknown, two states carry the
                                  same second, or a read of it was not newer than its events;
                                  its state should be read from Stripe */
};

/* What rv_queue_apply applies. */
enum rv_apply_mode {
    RV_APPLY_EVENT = 0,   /* a Stripe event (webhook or recovery): at most once per event id */
    RV_APPLY_FULFILL = 1, /* a paid Checkout Session read from Stripe (the success page) */
    RV_APPLY_STATE = 2,   /* a subscription read from Stripe: applied only when newer than
                             its events, an entry only when it changed the entitlement; created
                             is the time of the read */
};

/* err is 0 (result is valid, Redis confirmed), RV_EUNAVAIL (not connected, the connection
 * failed, or Redis answered with an error) or RV_ETIMEDOUT (no answer within timeout_ms).
 * result is an rv_enqueue_result, with RV_ENQ_ASK_STRIPE or'd in when set. stream_id is the entry
 * id when ADDED, else NULL; it is valid only during the callback. */
typedef void (*rv_enqueue_cb)(void *data, int err, int result, const char *stream_id);

struct redisReply;

/* A plain command's answer: err 0 with Redis's reply (valid during the call), or RV_EUNAVAIL
 * (Redis answered an error, then reply is that error; or no connection, then reply is NULL) or
 * RV_ETIMEDOUT (reply NULL). */
typedef void (*rv_reply_cb)(void *data, int err, const struct redisReply *reply);

/* Send one command (argc NUL-terminated strings, at most 21), with the queue's timeout and the
 * same contract as rv_queue_enqueue: cb exactly once, later, unless it returns an error. */
int rv_queue_call(rv_queue_t *q, int argc, const char *const *argv, rv_reply_cb cb, void *data);

/* A key Redis says changed (len bytes), or key NULL: anything may have changed (the watch was
 * lost or is new, or the database was flushed). */
typedef void (*rv_invalidate_cb)(void *data, const char *key, size_t len);

/* Watch the keys entitlement look-ups read (rivet:customer:, rivet:tg:user:, rivet:email:):
 * once the queue is ready, a second connection asks Redis to tell of every change to them
 * (CLIENT TRACKING in broadcast mode, to itself, subscribed to __redis__:invalidate), and cb
 * hears each; writes through this queue's own scripts are told as soon as their answer comes.
 * Set before the queue connects; cb NULL detaches (nothing is told any more). */
void rv_queue_watch(rv_queue_t *q, rv_invalidate_cb cb, void *data);

/* 1 while every change to a watched key will be told: the watch is subscribed and its
 * connection up. */
int rv_queue_watching(const rv_queue_t *q);

/* Create the queue and start connecting (from the loop, not inside this call). Options are
 * copied. The host of a redis:// URL must be an IP address or "localhost" (127.0.0.1): hiredis
 * resolves names synchronously, which would stall the loop, so names are refused (RV_EINVAL).
 * Returns 0, RV_EINVAL (bad URL or options) or RV_ENOMEM. */
int rv_queue_init(uv_loop_t *loop, const rv_queue_opts_t *opts, rv_queue_t **out);

/* 1 when connected, the script is loaded and Redis takes writes: not within 5 s of a write it
 * refused (out of memory, a read-only replica, MISCONF, NOREPLICAS) or replicas did not confirm
 * unless a write was stored (confirmed) since, and not while a failover of the primary runs. */
int rv_queue_ready(const rv_queue_t *q);

/* 1 when connected but Redis refused a write within the last 5 s and took none since. */
int rv_queue_refusing(const rv_queue_t *q);

/* 1 when connected, with REDIS_MIN_REPLICAS, but WAIT fell short within the last 5 s and no
 * write was confirmed since. */
int rv_queue_unconfirmed(const rv_queue_t *q);

/* 1 while a sentinel's announced failover of the primary runs (from +try-failover until rivetd
 * is on another primary, the failover stops short, or 60 s): nothing is applied or
 * acknowledged then. */
int rv_queue_failing_over(const rv_queue_t *q);

/* Number of reconnections since start: connections that became ready after the first one. */
uint64_t rv_queue_reconnects(const rv_queue_t *q);

enum rv_queue_state {
    RV_QUEUE_DISCONNECTED = 0, /* no connection; a reconnect may be scheduled */
    RV_QUEUE_CONNECTING = 1,   /* connect(2) in progress */
    RV_QUEUE_CONNECTED = 2,    /* connected; ready once AUTH, SELECT and SCRIPT LOAD succeeded */
};

/* The connection state (enum rv_queue_state), for metrics. */
int rv_queue_state(const rv_queue_t *q);

/* Enqueue commands sent and not yet answered, for metrics. */
size_t rv_queue_pending(const rv_queue_t *q);

/* Apply ev (mapped by rv_provision_map or rv_provision_map_object) in mode, with source named
 * in its entry ("webhook", "recovery", "success_page", "stripe"): the customer's entitlement is
 * updated by what is newer than what it has, and the entry carries the entitlement after it.
 * Contract as rv_queue_enqueue. */
int rv_queue_apply(rv_queue_t *q, const rv_prov_event_t *ev, int mode, const char *source,
                   rv_enqueue_cb cb, void *data);

/* The answer to rv_queue_fulfill: as rv_enqueue_cb, and telegram: the deep link into the bot
 * for the customer ("https://t.me/<bot>?start=<token>", a token that lives, issued now if it had
 * to be), "linked" when a chat is linked already, "" when none applies (an unpaid session);
 * NULL with an error. Valid only during the call. */
typedef void (*rv_fulfill_cb)(void *data, int err, int result, const char *telegram);

/* rv_queue_apply in RV_APPLY_FULFILL mode, source "success_page", answering the customer's
 * Telegram link too. */
int rv_queue_fulfill(rv_queue_t *q, const rv_prov_event_t *ev, rv_fulfill_cb cb, void *data);

/* Submit an event (rv_queue_apply in RV_APPLY_EVENT mode, source "webhook"). When it returns 0
 * the callback is called exactly once, later, never from inside this call. When it returns an
 * error (RV_EUNAVAIL when not connected or too many commands are waiting, RV_EINVAL when the
 * event has no type, id or data, or an event, customer, subscription or session id that is not a
 * Stripe id, RV_ENOMEM) it is never called. The event is copied. */
int rv_queue_enqueue(rv_queue_t *q, const rv_prov_event_t *ev, rv_enqueue_cb cb, void *data);

/* Keep a signed body that cannot be provisioned: XADD to "<stream>:dead" the fields reason,
 * stripe_event_id, stripe_event_type, received (Unix seconds, now) and body (the len raw bytes,
 * binary-safe). When event_id is a Stripe id it is de-duplicated with the main stream, in the
 * same script: if "rivet:event:<id>" exists nothing is written (RV_ENQ_DUPLICATE), else it is set
 * for dedupe_ttl, so a redelivery never adds a second dead letter and an id has one outcome only.
 * An empty or NULL event_id or stripe_type is stored as "" (no de-duplication). The result is
 * RV_ENQ_ADDED (stream_id is the dead letter's id) or RV_ENQ_DUPLICATE. The callback and error
 * contract is rv_queue_enqueue's; RV_EINVAL also for an event_id that is not a Stripe id, an
 * empty reason, or a reason or stripe_type longer than 255 bytes. Everything is copied. */
int rv_queue_dead_letter(rv_queue_t *q, const char *event_id, const char *stripe_type,
                         const char *reason, const void *body, size_t len, rv_enqueue_cb cb,
                         void *data);

/* Disconnect, fail pending commands (their callbacks get RV_EUNAVAIL, from the loop, not inside
 * this call), release everything once the loop has closed the handles; done (may be NULL) is
 * called then. q must not be used after this call (the close contract: common.h). */
void rv_queue_close(rv_queue_t *q, void (*done)(void *data), void *data);

#endif
