/* Stripe event JSON -> provisioning event (the contract with consumers). Pure. */
#ifndef RIVET_PROVISION_H
#define RIVET_PROVISION_H

#include <stddef.h>
#include <stdint.h>

/* The configured price ids of the three plans (borrowed strings). */
typedef struct rv_prices_s {
    const char *basic;
    const char *pro;
    const char *enterprise;
} rv_prices_t;

typedef struct rv_prov_event_s {
    const char *type;          /* provisioning type ("user.provision", ...); static; NULL when
                                  ignored or refused */
    char event_id[256];        /* Stripe event id ("evt_...") */
    char stripe_type[128];     /* Stripe event type */
    int64_t created;           /* the Stripe event's created */
    int livemode;
    char customer_id[256];     /* "" when the event has none */
    char subscription_id[256]; /* "" when the event has none */
    char email[320];           /* "" when the event has none */
    char tier[32];             /* "basic" | "pro" | "enterprise" | "unknown" | "" */
    char status[64];           /* subscription or payment status, "" when none */
    int ordered;               /* 1 for subscription.updated: dropped when older than the last
                                  applied event of the same subscription */
    int sets_entitlement;      /* 1 when the customer hash should be updated from this event */
    char *data_json;           /* malloc'd: the entry's "data" field; NULL if ignored */
} rv_prov_event_t;

/* Map a verified Stripe event. Returns 0 with *out filled (enqueue it), RV_EIGNORED (acknowledge,
 * do not enqueue: another type, or a checkout that is not a subscription; event_id and
 * stripe_type are still filled for the log), RV_EPAYLOAD (not a Stripe event object: not a JSON
 * object, no string "id"/"type", no integral non-negative "created", no object "data.object", an
 * id or type that is empty, not printable ASCII or too long for its field, or any copied value
 * too long for its field), or RV_ENOMEM. On any error type and data_json are NULL.
 * Release with rv_prov_event_free on every return. */
int rv_provision_map(const char *json, size_t len, const rv_prices_t *prices, rv_prov_event_t *out);

/* Free what the event owns; safe on a zeroed event. */
void rv_prov_event_free(rv_prov_event_t *ev);

#endif
