/* Redis: the provisioning stream. hiredis async on the daemon's libuv loop, reconnecting with
 * backoff; one Lua script does the duplicate check, the ordering check, the entitlement hash and
 * the XADD atomically. Signed events that cannot be provisioned go, with the reason, to the
 * dead-letter stream "<stream>:dead" instead. */
#ifndef RIVET_QUEUE_H
#define RIVET_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rivet/provision.h"

typedef struct rv_queue_s rv_queue_t;

typedef struct rv_queue_opts_s {
    const char *url;        /* REDIS_URL */
    const char *stream;     /* REDIS_STREAM */
    uint64_t dedupe_ttl;    /* seconds an event id is remembered */
    uint64_t timeout_ms;    /* per command */
} rv_queue_opts_t;

/* The dead-letter stream keeps about this many entries, the newest (XADD MAXLEN ~, so Redis
 * trims whole nodes and the length may exceed it by up to a node). It is a bound, not a
 * retention policy: whoever holds the webhook secret could otherwise grow it without end, and a
 * Redis full with noeviction refuses the main stream too. At a few KB per Stripe event it is tens
 * of MB; each dead letter is also logged at error level and counted, so an operator hears of it
 * long before it is trimmed. */
#define RV_QUEUE_DEAD_MAX 10000

enum rv_enqueue_result {
    RV_ENQ_ADDED = 1,     /* new event, appended to the stream */
    RV_ENQ_DUPLICATE = 2, /* event id seen before: nothing written */
    RV_ENQ_STALE = 3,     /* older than what was applied for the subscription: remembered, not appended */
};

/* err is 0 (result is valid, Redis confirmed), RV_EUNAVAIL (not connected, the connection
 * failed, or Redis answered with an error) or RV_ETIMEDOUT (no answer within timeout_ms).
 * stream_id is the entry id when ADDED, else NULL; it is valid only during the callback. */
typedef void (*rv_enqueue_cb)(void *data, int err, int result, const char *stream_id);

/* Create the queue and start connecting (from the loop, not inside this call). Options are
 * copied. The host of a redis:// URL must be an IP address or "localhost" (127.0.0.1): hiredis
 * resolves names synchronously, which would stall the loop, so names are refused (RV_EINVAL).
 * Returns 0, RV_EINVAL (bad URL or options) or RV_ENOMEM. */
int rv_queue_init(uv_loop_t *loop, const rv_queue_opts_t *opts, rv_queue_t **out);

/* 1 when connected and the script is loaded. */
int rv_queue_ready(const rv_queue_t *q);

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

/* Submit an event. When it returns 0 the callback is called exactly once, later, never from
 * inside this call. When it returns an error (RV_EUNAVAIL when not connected or too many commands
 * are waiting, RV_EINVAL when the event has no type, id or data, or an event, customer or
 * subscription id that is not a Stripe id, RV_ENOMEM) it is never called. The event is copied. */
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
 * called then. q must not be used after this call. */
void rv_queue_close(rv_queue_t *q, void (*done)(void *data), void *data);

#endif
