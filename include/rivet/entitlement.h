/* Keeping entitlements right beyond single events: reading a subscription from Stripe when an
 * event leaves its state in doubt, and provisioning a paid Checkout Session that the success page
 * saw before any webhook. Both run after the request that caused them has been answered. */
#ifndef RIVET_ENTITLEMENT_H
#define RIVET_ENTITLEMENT_H

#include <cjson/cJSON.h>

#include "rivet/app.h"

/* Read subscription sub_id from Stripe and apply what Stripe says (rv_queue_apply, mode STATE):
 * an entry "subscription.updated" with source "stripe" follows only when the entitlement
 * changed. What Stripe says is applied only when its Date is later than the second of every
 * event applied to the subscription; otherwise it is read again once that second has passed.
 * customer_id, when the asker knows it (else NULL or ""), is the customer the subscription must
 * belong to: an answer about another customer's is not applied (a subscription never changes
 * customer). At most one read per subscription is in flight, and an ask meanwhile joins it.
 * Returns 0, or RV_EUNAVAIL (no Stripe or Redis client, or too many reads in flight) /
 * RV_EINVAL / RV_ENOMEM. */
int rv_entitlement_ask_stripe(rv_app_t *app, const char *sub_id, const char *customer_id);

/* Reads of Stripe whose answer is awaited now, or not tried yet: waiting for their turn under
 * STRIPE_READS_PER_SEC or for Stripe's second to pass (not those waiting to be tried again
 * after a failure). */
size_t rv_entitlement_reads_in_flight(const rv_app_t *app);

/* Reads of Stripe not tried yet (waiting for their turn, or for Stripe's second to pass). */
size_t rv_entitlement_reads_waiting(const rv_app_t *app);

/* Provision a Checkout Session read from Stripe, if it is complete and paid (or free), unless
 * it already was: one user.provision per session, whichever of the success page, a webhook or
 * recovery comes first. done is called once, later, as rv_fulfill_cb (with the customer's deep
 * link into the bot), unless this returns an error: RV_EIGNORED for a session that is not a
 * completed subscription checkout, RV_EUNAVAIL, RV_ENOMEM, or a mapping error. */
int rv_entitlement_fulfill(rv_app_t *app, const cJSON *session, rv_fulfill_cb done, void *data);

/* How rv_entitlement_lookup finds a customer. */
enum rv_lookup_kind { RV_BY_CUSTOMER, RV_BY_TELEGRAM, RV_BY_EMAIL };

/* A look-up's answer: err 0 with customer_id and the entitlement JSON (both NULL when nobody is
 * known by that key), or an error (Redis unavailable). Valid only during the call. */
typedef void (*rv_lookup_cb)(void *data, int err, const char *customer_id, const char *entitlement);

/* Find a customer's entitlement in Redis (never Stripe): by customer id, Telegram user id
 * (digits) or email (any case). Returns 0 (cb once, later) or an error (cb never). */
int rv_entitlement_lookup(rv_app_t *app, int kind, const char *value, rv_lookup_cb cb, void *data);

/* The answer to a look-up from memory, when there is one that Redis keeps right: 1 with the
 * customer id and the entitlement JSON (valid until the loop runs again), else 0. */
int rv_entitlement_cached(rv_app_t *app, int kind, const char *value, const char **customer_id,
                          const char **entitlement);

/* Start the look-up cache (ENTITLEMENT_CACHE entries; none when 0) on the app's queue. */
int rv_entitlement_cache_start(rv_app_t *app);

enum rv_link_result {
    RV_LINK_LINKED = 1,    /* linked now (a user.telegram_linked entry was appended) */
    RV_LINK_UNKNOWN = 2,   /* no such token: never issued, used, or expired */
    RV_LINK_ELSEWHERE = 3, /* the Telegram user, or the customer, is linked to another */
    RV_LINK_AGAIN = 4,     /* the same user and customer were linked already */
};

/* The answer to rv_entitlement_link: err 0 with an rv_link_result and, when linked, the
 * entitlement JSON; or an error. */
typedef void (*rv_link_cb)(void *data, int err, int result, const char *entitlement);

/* Redeem a start token for a Telegram user and chat (digits), once, atomically: the token is
 * consumed, the ids recorded in the entitlement, an index from the Telegram user to the customer
 * kept. Returns 0 (cb once, later) or an error (cb never). */
int rv_entitlement_link(rv_app_t *app, const char *token, const char *telegram_user_id,
                        const char *chat_id, rv_link_cb cb, void *data);

/* Cancel the reads of Stripe in flight (their callbacks never run) and free what they hold, at
 * once (the close contract: common.h). Look-ups and links in flight are Redis commands: the
 * queue answers them. */
void rv_entitlement_close(rv_app_t *app);

#endif
