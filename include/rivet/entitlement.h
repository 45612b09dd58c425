/* Keeping entitlements right beyond single events: reading a subscription from Stripe when an
 * event leaves its state in doubt, and provisioning a paid Checkout Session that the success page
 * saw before any webhook. Both run after the request that caused them has been answered. */
#ifndef RIVET_ENTITLEMENT_H
#define RIVET_ENTITLEMENT_H

#include <cjson/cJSON.h>

#include "rivet/app.h"

/* Read subscription sub_id from Stripe and apply what Stripe says (rv_queue_apply, mode STATE):
 * an entry "subscription.updated" with source "stripe" follows only when the entitlement
 * changed. At most one read per subscription is in flight; returns 0, or RV_EUNAVAIL (no Stripe
 * or Redis client, or too many reads in flight) / RV_EINVAL / RV_ENOMEM. */
int rv_entitlement_ask_stripe(rv_app_t *app, const char *sub_id);

/* Provision a Checkout Session read from Stripe, if it is complete and paid (or free), unless
 * it already was: one user.provision per session, whichever of the success page, a webhook or
 * recovery comes first. done (may be NULL) is called once with 0 and the rv_enqueue_result, or
 * an error (also for a session that does not provision). */
int rv_entitlement_fulfill(rv_app_t *app, const cJSON *session,
                           void (*done)(void *data, int err, int result), void *data);

/* Cancel the reads in flight and free what they hold (the worker, stopping). */
void rv_entitlement_close(rv_app_t *app);

#endif
