/* Stripe event JSON -> provisioning event (the contract with consumers). No I/O, but not
 * reentrant: mapping parses into a static bump arena, by setting cJSON's global allocation hooks
 * for the length of the call (and restoring them), so it must not run in two threads at once,
 * nor while another thread uses cJSON. The daemon maps on its loop's thread only. */
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
    const char *type;      /* provisioning type ("user.provision", ...); static; NULL when
                              ignored or refused */
    char event_id[256];    /* Stripe event id ("evt_...") */
    char stripe_type[128]; /* Stripe event type */
    int64_t created;       /* the Stripe event's created */
    int livemode;
    char customer_id[256];     /* "" when the event has none */
    char subscription_id[256]; /* "" when the event has none */
    char email[320];           /* "" when the event has none */
    char tier[32];             /* "basic" | "pro" | "enterprise" | "unknown" | "" */
    char status[64];           /* the object's status: a subscription's, a checkout's
                                  payment_status, an invoice's; "" when none */
    char session_id[256];      /* the Checkout Session of a checkout event, else "" */
    int has_state;             /* the object is a subscription: tier, status, period_end and
                                  cancel_at_period_end are its whole state */
    int64_t period_end;        /* current_period_end, when has_period_end */
    int has_period_end;
    int cancel_at_period_end; /* 0, 1, or -1 when absent */
    int fulfills;             /* a paid (or free) completed checkout: provisions its session */
    char *data_json;          /* malloc'd: the entry's "data" field; NULL if ignored */
    char reason[128];         /* why an event was refused (RV_EPAYLOAD, RV_EMALFORMED): one
                                 printable ASCII sentence that never quotes the input; else "" */
} rv_prov_event_t;

/* Map a verified Stripe event. Returns 0 with *out filled (enqueue it), RV_EIGNORED (acknowledge,
 * do not enqueue: another type, or a checkout that is not a subscription; event_id and
 * stripe_type are still filled for the log), RV_EPAYLOAD (not a Stripe event object: not a JSON
 * object, an id that is not a Stripe id, a type that is empty, not printable ASCII or too long,
 * no integral non-negative "created", no object "data.object"), RV_EMALFORMED (a Stripe event
 * whose content no consumer should be given: a customer, subscription, invoice or checkout
 * session id that is not a Stripe id ([A-Za-z0-9_], 1..255), an email or currency that is not
 * UTF-8 text free of control characters or too long for its field, a status that is not a word
 * of [a-z0-9_] (as all of Stripe's are) or too long, an escaped NUL, a
 * subscription-mode checkout or a subscription without a customer, a subscription without an
 * id), or RV_ENOMEM. With RV_EPAYLOAD and RV_EMALFORMED, reason says why, and event_id and
 * stripe_type are filled when they are themselves valid ("" otherwise), so that the event can be
 * dead-lettered and found again. On any error type and data_json are NULL.
 * Release with rv_prov_event_free on every return. */
int rv_provision_map(const char *json, size_t len, const rv_prices_t *prices, rv_prov_event_t *out);

/* Map a Stripe object that did not come in an event: a Checkout Session read from Stripe (the
 * success page; as_type "checkout.session.completed") or a subscription read from Stripe
 * (as_type "customer.subscription.updated"). event_id stays "", created is the caller's (the
 * time of the read). Returns as rv_provision_map. */
int rv_provision_map_object(const char *json, size_t len, const char *as_type, int64_t created,
                            const rv_prices_t *prices, rv_prov_event_t *out);

/* The "v" of every entry's data: 2 since entries carry "entitlement" and a subscription's status
 * is the only "status" (a checkout's is "payment_status", an invoice's "invoice_status"). */
#define RV_PROVISION_DATA_VERSION 2

/* The plan named, as a static string, when name is "basic", "pro" or "enterprise"; else NULL. */
const char *rv_provision_tier(const char *name);

/* Longest Stripe id taken. */
#define RV_PROVISION_ID_MAX 255

/* 1 when s is shaped like a Stripe id ([A-Za-z0-9_], 1..RV_PROVISION_ID_MAX), which is what makes
 * it safe inside a Redis key; else 0. */
int rv_provision_is_id(const char *s);

/* Free what the event owns; safe on a zeroed event. */
void rv_prov_event_free(rv_prov_event_t *ev);

#endif
