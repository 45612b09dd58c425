/* Recovery of missed webhooks: Stripe is the source of truth. A run pages through
 * GET /v1/events (newest first) from a cursor kept in Redis, never more than 30 days back, and
 * gives every event the same mapping and the same exactly-once script as a webhook, so an event
 * already delivered changes nothing and one that never was is applied now. One run at a time
 * across workers and machines: a Redis lock with an expiry, renewed while the run goes on, so a
 * crashed holder cannot keep it. */
#ifndef RIVET_RECONCILE_H
#define RIVET_RECONCILE_H

#include <stdint.h>

#include "rivet/app.h"

typedef struct rv_reconcile_s rv_reconcile_t;

typedef struct rv_reconcile_stats_s {
    int ok;     /* the run covered its whole range */
    int locked; /* another reconciler held the lock: nothing was done */
    uint64_t pages;
    uint64_t events;     /* events read */
    uint64_t recovered;  /* applied now: no webhook had brought them */
    uint64_t duplicates; /* delivered before */
    uint64_t ignored;    /* types rivetd does not provision from */
    uint64_t dead;       /* signed by Stripe but unusable: dead-lettered */
    uint64_t doubts;     /* subscriptions left in doubt earlier, asked again of Stripe */
    int64_t from, upto;  /* the range of created covered */
    char error[160];     /* why a run stopped, when !ok and !locked */
} rv_reconcile_stats_t;

typedef void (*rv_reconcile_done_cb)(void *data, const rv_reconcile_stats_t *stats);

/* Run every interval_s seconds, the first run soon after start (0: never). Returns 0 or
 * RV_ENOMEM. */
int rv_reconcile_start(rv_app_t *app, uint64_t interval_s, rv_reconcile_t **out);

/* One run over the last lookback_s seconds (at most 30 days), whatever the cursor says; waits up
 * to wait_ms for a lock another reconciler holds. Progress is logged per page; done is called
 * once with the summary. */
int rv_reconcile_once(rv_app_t *app, uint64_t lookback_s, uint64_t wait_ms,
                      rv_reconcile_done_cb done, void *data, rv_reconcile_t **out);

/* Stop: a run in progress is abandoned (its lock expires), done never runs, and memory is
 * released once the loop has answered what is in flight. r must not be used after this call
 * (the close contract: common.h). */
void rv_reconcile_close(rv_reconcile_t *r);

/* Parse a duration: "90s", "15m", "72h", "30d", or plain seconds. Returns 0 or RV_EINVAL. */
int rv_parse_duration(const char *s, uint64_t *seconds);

#endif
