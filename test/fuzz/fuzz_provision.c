/* Fuzz the mapping of a verified Stripe event (JSON) to a provisioning event.
 *
 * The input is the event's body. Properties: the result is one of the documented codes; an event
 * that is enqueued has a type, Stripe-shaped ids, text fields that are UTF-8 without control
 * characters, a tier that is a plan name or "unknown", and a "data" entry that is a JSON object
 * agreeing with the struct; a refused event keeps only its identity and a printable reason; the
 * mapping is the same when repeated (the parse arena is reset between events) and when the input
 * is reformatted by cJSON (so that no decision depends on layout); and the event's data.object,
 * read alone as an object from Stripe is (rv_provision_map_object: a fetched subscription, a
 * session on the success page), maps as it did inside the event. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rivet/common.h"
#include "rivet/json.h"
#include "rivet/provision.h"

static const rv_prices_t prices = {"price_basic", "price_pro", "price_enterprise"};

/* Well-formed UTF-8 with no C0, DEL or C1 control character. */
static int clean_text(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        if (*p < 0x80) {
            if (*p < 0x20 || *p == 0x7f) return 0;
            p++;
            continue;
        }
        size_t n = (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : (*p & 0xf8) == 0xf0 ? 4 : 0;
        if (n == 0) return 0;
        uint32_t cp = *p & (0x7fu >> n);
        for (size_t i = 1; i < n; i++) {
            if ((p[i] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (p[i] & 0x3fu);
        }
        static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) || cp <= 0x9f) return 0;
        p += n;
    }
    return 1;
}

/* What a status may be: "" or Stripe's lower-case words joined by '_'. */
static int status_word(const char *s) {
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
    return 1;
}

static int printable_ascii(const char *s) {
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e) return 0;
    return 1;
}

static int id_or_empty(const char *s) { return s[0] == '\0' || rv_provision_is_id(s); }

static const char *jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A string member of data that must be present exactly when the struct's field is non-empty. */
static void check_member(const cJSON *d, const char *key, const char *field) {
    const char *v = jstr(d, key);
    if (field[0] == '\0') {
        FUZZ_CHECK(cJSON_GetObjectItemCaseSensitive(d, key) == NULL);
    } else {
        FUZZ_CHECK(v != NULL && strcmp(v, field) == 0);
    }
}

static void check_mapped(const rv_prov_event_t *ev) {
    FUZZ_CHECK(ev->type != NULL && ev->data_json != NULL && ev->reason[0] == '\0');
    FUZZ_CHECK(rv_provision_is_id(ev->event_id));
    FUZZ_CHECK(ev->stripe_type[0] != '\0' && printable_ascii(ev->stripe_type));
    FUZZ_CHECK(id_or_empty(ev->customer_id) && id_or_empty(ev->subscription_id));
    FUZZ_CHECK(clean_text(ev->email) && status_word(ev->status));
    FUZZ_CHECK(ev->created >= 0);
    static const char *const tiers[] = {"basic", "pro", "enterprise", "unknown", ""};
    int tier_ok = 0;
    for (size_t i = 0; i < RV_ARRAY_LEN(tiers); i++) tier_ok |= strcmp(ev->tier, tiers[i]) == 0;
    FUZZ_CHECK(tier_ok);

    FUZZ_CHECK(clean_text(ev->data_json));
    cJSON *d = cJSON_Parse(ev->data_json);
    FUZZ_CHECK(cJSON_IsObject(d));
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, "v");
    FUZZ_CHECK(cJSON_IsNumber(v) && v->valuedouble == RV_PROVISION_DATA_VERSION);
    FUZZ_CHECK(jstr(d, "type") != NULL && strcmp(jstr(d, "type"), ev->type) == 0);
    FUZZ_CHECK(jstr(d, "stripe_event_id") != NULL &&
               strcmp(jstr(d, "stripe_event_id"), ev->event_id) == 0);
    FUZZ_CHECK(jstr(d, "stripe_event_type") != NULL &&
               strcmp(jstr(d, "stripe_event_type"), ev->stripe_type) == 0);
    const cJSON *created = cJSON_GetObjectItemCaseSensitive(d, "created");
    FUZZ_CHECK(cJSON_IsNumber(created) && created->valuedouble == (double)ev->created);
    FUZZ_CHECK(cJSON_IsBool(cJSON_GetObjectItemCaseSensitive(d, "livemode")));
    FUZZ_CHECK(jstr(d, "customer_id") != NULL &&
               strcmp(jstr(d, "customer_id"), ev->customer_id) == 0);
    check_member(d, "email", ev->email);
    check_member(d, "subscription_id", ev->subscription_id);
    check_member(d, "tier", ev->tier);
    /* The object's status is under one name, the one its kind uses (a subscription's "status",
     * a checkout's "payment_status", an invoice's "invoice_status"), or absent. */
    int statuses = 0;
    for (const char *const *k =
             (const char *const[]){"status", "payment_status", "invoice_status", NULL};
         *k; k++) {
        const char *st = jstr(d, *k);
        if (st == NULL) continue;
        statuses++;
        FUZZ_CHECK(strcmp(st, ev->status) == 0);
    }
    FUZZ_CHECK(statuses == (ev->status[0] ? 1 : 0));
    for (const char *const *k = (const char *const[]){"invoice_id", "checkout_session_id", NULL};
         *k; k++) {
        const char *id = jstr(d, *k);
        if (id != NULL) FUZZ_CHECK(rv_provision_is_id(id));
    }
    const char *currency = jstr(d, "currency");
    if (currency != NULL) FUZZ_CHECK(clean_text(currency));
    cJSON_Delete(d);
}

static void check_refused(int rc, const rv_prov_event_t *ev) {
    FUZZ_CHECK(ev->type == NULL && ev->data_json == NULL);
    FUZZ_CHECK(ev->customer_id[0] == '\0' && ev->subscription_id[0] == '\0');
    FUZZ_CHECK(ev->email[0] == '\0' && ev->tier[0] == '\0' && ev->status[0] == '\0');
    FUZZ_CHECK(id_or_empty(ev->event_id));
    FUZZ_CHECK(printable_ascii(ev->stripe_type) && strchr(ev->stripe_type, ' ') == NULL);
    if (rc == RV_EPAYLOAD || rc == RV_EMALFORMED) {
        FUZZ_CHECK(ev->reason[0] != '\0' && printable_ascii(ev->reason));
        FUZZ_CHECK(strnlen(ev->reason, sizeof ev->reason) < sizeof ev->reason);
    }
    if (rc == RV_EIGNORED) FUZZ_CHECK(ev->event_id[0] != '\0' && ev->stripe_type[0] != '\0');
}

static int same_event(int rc1, const rv_prov_event_t *a, int rc2, const rv_prov_event_t *b) {
    if (rc1 != rc2 || a->type != b->type || a->created != b->created) return 0;
    if (strcmp(a->event_id, b->event_id) || strcmp(a->stripe_type, b->stripe_type)) return 0;
    if (strcmp(a->customer_id, b->customer_id) || strcmp(a->email, b->email)) return 0;
    if (strcmp(a->reason, b->reason)) return 0;
    if ((a->data_json == NULL) != (b->data_json == NULL)) return 0;
    return a->data_json == NULL || strcmp(a->data_json, b->data_json) == 0;
}

/* The event's object, as Stripe answers a read of it, under the event's type and created. */
static void check_as_object(const char *json, size_t size, int rc, const rv_prov_event_t *ev) {
    /* Without an envelope there is no type to read it as; cJSON cannot print an escaped NUL. */
    if (rc == RV_EPAYLOAD || rc == RV_ENOMEM || memmem(json, size, "\\u0000", 6) != NULL) return;
    cJSON *root = rv_json_parse(json, size);
    const cJSON *obj =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "data"), "object");
    char *text = cJSON_IsObject(obj) ? cJSON_PrintUnformatted(obj) : NULL;
    if (text != NULL) {
        rv_prov_event_t o;
        int orc =
            rv_provision_map_object(text, strlen(text), ev->stripe_type, ev->created, &prices, &o);
        if (orc != RV_ENOMEM) {
            FUZZ_CHECK(orc == rc);
            FUZZ_CHECK(o.event_id[0] == '\0' && strcmp(o.stripe_type, ev->stripe_type) == 0);
        }
        if (orc == 0 && rc == 0) {
            FUZZ_CHECK(o.type == ev->type && o.created == ev->created);
            FUZZ_CHECK(strcmp(o.customer_id, ev->customer_id) == 0);
            FUZZ_CHECK(strcmp(o.subscription_id, ev->subscription_id) == 0);
            FUZZ_CHECK(strcmp(o.email, ev->email) == 0 && strcmp(o.tier, ev->tier) == 0);
            FUZZ_CHECK(strcmp(o.status, ev->status) == 0);
            FUZZ_CHECK(strcmp(o.session_id, ev->session_id) == 0);
            FUZZ_CHECK(o.has_state == ev->has_state && o.fulfills == ev->fulfills);
            FUZZ_CHECK(o.has_period_end == ev->has_period_end &&
                       (!o.has_period_end || o.period_end == ev->period_end));
            FUZZ_CHECK(o.cancel_at_period_end == ev->cancel_at_period_end);
            FUZZ_CHECK(o.data_json != NULL);
        }
        rv_prov_event_free(&o);
    }
    free(text);
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A copy of exactly the input's length, so that reading past it is caught. */
    char *json = malloc(size ? size : 1);
    if (json == NULL) return 0;
    memcpy(json, data, size);

    rv_prov_event_t ev, again;
    int rc = rv_provision_map(json, size, &prices, &ev);
    FUZZ_CHECK(rc == 0 || rc == RV_EIGNORED || rc == RV_EPAYLOAD || rc == RV_EMALFORMED ||
               rc == RV_ENOMEM);
    if (rc == 0) {
        check_mapped(&ev);
    } else {
        check_refused(rc, &ev);
    }

    int rc2 = rv_provision_map(json, size, &prices, &again);
    FUZZ_CHECK(same_event(rc, &ev, rc2, &again));
    rv_prov_event_free(&again);

    /* The same event, reformatted. An escaped NUL is refused by looking at the text itself, and
     * cJSON cannot write it back, so such inputs are left out. */
    /* Only one JSON value with nothing but white space after it is an event. */
    cJSON *tree = rv_json_parse(json, size);
    if (tree == NULL) FUZZ_CHECK(rc == RV_EPAYLOAD || rc == RV_ENOMEM);
    char *text = tree ? cJSON_PrintUnformatted(tree) : NULL;
    if (text != NULL && memmem(json, size, "\\u0000", 6) == NULL) {
        rc2 = rv_provision_map(text, strlen(text), &prices, &again);
        if (!same_event(rc, &ev, rc2, &again))
            fprintf(stderr, "fuzz: reformatted event maps differently (%d, %d): %s / %s\n", rc, rc2,
                    ev.reason, again.reason);
        FUZZ_CHECK(same_event(rc, &ev, rc2, &again));
        rv_prov_event_free(&again);
    }
    free(text);
    cJSON_Delete(tree);

    check_as_object(json, size, rc, &ev);

    rv_prov_event_free(&ev);
    rv_prov_event_free(&ev);
    free(json);
    return 0;
}
