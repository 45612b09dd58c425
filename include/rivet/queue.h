/* Redis: the provisioning stream. hiredis async on the daemon's libuv loop, reconnecting with
 * backoff; one Lua script does the duplicate check, the ordering check, the entitlement hash and
 * the XADD atomically. */
#ifndef RIVET_QUEUE_H
#define RIVET_QUEUE_H

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

enum rv_enqueue_result {
    RV_ENQ_ADDED = 1,     /* new event, appended to the stream */
    RV_ENQ_DUPLICATE = 2, /* event id seen before: nothing written */
    RV_ENQ_STALE = 3,     /* older than what was applied for the subscription: remembered, not appended */
};

/* err is 0 (result is valid, Redis confirmed), RV_EUNAVAIL (not connected, or the connection
 * failed) or RV_ETIMEDOUT (no answer within timeout_ms). stream_id is the entry id when ADDED. */
typedef void (*rv_enqueue_cb)(void *data, int err, int result, const char *stream_id);

/* Create the queue and start connecting. Options are copied. Returns 0 or a negative code. */
int rv_queue_init(uv_loop_t *loop, const rv_queue_opts_t *opts, rv_queue_t **out);

/* 1 when connected and the script is loaded. */
int rv_queue_ready(const rv_queue_t *q);

/* Number of reconnections since start. */
uint64_t rv_queue_reconnects(const rv_queue_t *q);

/* Submit an event. When it returns 0 the callback is called exactly once, later, never from
 * inside this call. When it returns an error (RV_EUNAVAIL when not connected) it is never called.
 * The event is copied. */
int rv_queue_enqueue(rv_queue_t *q, const rv_prov_event_t *ev, rv_enqueue_cb cb, void *data);

/* Disconnect, fail pending commands (their callbacks get RV_EUNAVAIL), release everything once
 * the loop has closed the handles; done (may be NULL) is called then. */
void rv_queue_close(rv_queue_t *q, void (*done)(void *data), void *data);

#endif
