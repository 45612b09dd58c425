/* Provisioning: turn a verified Stripe event into the provisioning event consumers read from the
 * stream. Stripe's payloads differ across API versions, so every field is looked for in each
 * place a version puts it. Pure: JSON in, struct and JSON text out.
 *
 * A signature proves who sent the bytes, not that they are fit to pass on: every value copied
 * into the entry is checked here, because ids become Redis keys and the entry is read by
 * consumers that may reject (and then stall on) anything that is not clean UTF-8 text. What
 * fails is refused with a reason, for the dead-letter stream, and never reaches the main one. */
#include "rivet/provision.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/json.h"

/* Bound on strings copied into data_json that have no field in the struct (ids, currency). */
#define MAX_EXTRA_STR 255
/* Stripe's ids (evt_, cus_, sub_, in_, cs_, ...) are letters, digits and underscores. */
#define ID_SHAPE      "1 to 255 letters, digits or underscores"

typedef enum { KIND_CHECKOUT, KIND_SUBSCRIPTION, KIND_INVOICE } kind_t;

typedef struct route_s {
    const char *stripe_type;
    const char *type;
    kind_t kind;
} route_t;

static const route_t routes[] = {
    {"checkout.session.completed", "user.provision", KIND_CHECKOUT},
    {"checkout.session.async_payment_succeeded", "user.provision", KIND_CHECKOUT},
    {"checkout.session.async_payment_failed", "payment.failed", KIND_CHECKOUT},
    {"customer.subscription.created", "subscription.created", KIND_SUBSCRIPTION},
    {"customer.subscription.updated", "subscription.updated", KIND_SUBSCRIPTION},
    {"customer.subscription.deleted", "user.deprovision", KIND_SUBSCRIPTION},
    {"invoice.payment_succeeded", "payment.succeeded", KIND_INVOICE},
    {"invoice.payment_failed", "payment.failed", KIND_INVOICE},
};

/* Values that go only into data_json; a has_* flag of 0 or a NULL string means absent. */
typedef struct extra_s {
    int has_amount_total, has_amount_paid, has_amount_due, has_attempt_count;
    int64_t amount_total, amount_paid, amount_due, attempt_count;
    const char *currency;
    const char *invoice_id;
    const char *checkout_session_id;
} extra_t;

static const cJSON *get(const cJSON *o, const char *key) {
    if (!cJSON_IsObject(o)) return NULL;
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

/* A non-empty string member, or NULL. */
static const char *get_str(const cJSON *o, const char *key) {
    const cJSON *v = get(o, key);
    if (!cJSON_IsString(v) || v->valuestring == NULL || v->valuestring[0] == '\0') return NULL;
    return v->valuestring;
}

/* An expandable reference: Stripe sends either the id as a string or the expanded object. */
static const char *get_ref(const cJSON *o, const char *key) {
    const cJSON *v = get(o, key);
    if (cJSON_IsObject(v)) return get_str(v, "id");
    return get_str(o, key);
}

/* The first element of a Stripe list object ({"object":"list","data":[...]}), if an object. */
static const cJSON *first_of(const cJSON *list) {
    const cJSON *data = get(list, "data");
    if (!cJSON_IsArray(data)) return NULL;
    const cJSON *first = cJSON_GetArrayItem(data, 0);
    return cJSON_IsObject(first) ? first : NULL;
}

/* An integral JSON number of at most 15 digits; 0 when present and valid. Stripe's times and
 * amounts are far shorter, and cJSON writes a number with 15 significant digits: a longer one
 * would reach the entry changed (found by fuzzing). */
static int get_int(const cJSON *o, const char *key, int64_t *out) {
    const cJSON *v = get(o, key);
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 999999999999999.0) return -1;
    *out = (int64_t)d;
    return 0;
}

/* Copy src into a fixed field; a value that does not fit is refused, never truncated. */
static int copy_str(char *dst, size_t size, const char *src) {
    if (src == NULL) {
        dst[0] = '\0';
        return 0;
    }
    size_t n = strlen(src);
    if (n >= size) return RV_EPAYLOAD;
    memcpy(dst, src, n + 1);
    return 0;
}

/* Event types end up in logs and metrics: only printable ASCII without blanks. */
static int is_token(const char *s) {
    if (s[0] == '\0') return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x21 || *p > 0x7e) return 0;
    }
    return 1;
}

/* Ids become Redis keys ("rivet:customer:<id>"): only Stripe's own alphabet, so that no id can
 * carry a separator, a blank, a glob character or a protocol line break. */
int rv_provision_is_id(const char *s) {
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++) {
        unsigned char c = *p;
        int ok =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        if (!ok || n == RV_PROVISION_ID_MAX) return 0;
    }
    return n > 0;
}

/* NULL when s is well-formed UTF-8 (RFC 3629: shortest form, no surrogates, nothing above
 * U+10FFFF) free of control characters (C0, DEL, C1); else what is wrong, as a phrase. Strict
 * consumers refuse the first kind, and the second has no place in a name, an email or a status. */
static const char *text_defect(const char *s) {
    static const char not_utf8[] = "is not valid UTF-8";
    static const char control[] = "contains a control character";
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p;
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f) return control;
            p++;
            continue;
        }
        size_t more;
        uint32_t cp, min;
        if (c >= 0xc2 && c <= 0xdf) {
            more = 1, cp = c & 0x1f, min = 0x80;
        } else if (c >= 0xe0 && c <= 0xef) {
            more = 2, cp = c & 0x0f, min = 0x800;
        } else if (c >= 0xf0 && c <= 0xf4) {
            more = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return not_utf8; /* a continuation byte, C0/C1 (always overlong), or F5..FF */
        }
        /* The terminating NUL is no continuation byte, so a truncated sequence stops here. */
        for (size_t i = 1; i <= more; i++) {
            if ((p[i] & 0xc0) != 0x80) return not_utf8;
            cp = (cp << 6) | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return not_utf8;
        if (cp <= 0x9f) return control;
        p += more + 1;
    }
    return NULL;
}

/* 1 when the JSON text has a \u0000 escape. cJSON decodes it into a NUL that silently ends the C
 * string, so a value would reach the entry cut short. The text has parsed as JSON, where a
 * backslash only ever starts an escape of two characters or \uXXXX; skipping both characters
 * keeps an escaped backslash from being read as the start of the next escape. */
static int has_escaped_nul(const char *json, size_t len) {
    const char *end = json + len;
    const char *p = json;
    while ((p = memchr(p, '\\', (size_t)(end - p))) != NULL) {
        if (end - p >= 6 && p[1] == 'u' && memcmp(p + 2, "0000", 4) == 0) return 1;
        if (end - p <= 2) break;
        p += 2;
    }
    return 0;
}

/* Fill out->reason and return rc. Reasons name the field and the defect and never quote the
 * value: they go to logs and the dead-letter stream, and the value may be anything. */
static int __attribute__((format(printf, 3, 4)))
refuse(rv_prov_event_t *out, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out->reason, sizeof out->reason, fmt, ap);
    va_end(ap);
    return rc;
}

/* Copy a Stripe id (NULL when absent) into a fixed field, or refuse it. */
static int take_id(rv_prov_event_t *out, char *dst, size_t size, const char *src,
                   const char *what) {
    if (src != NULL && (!rv_provision_is_id(src) || strlen(src) >= size)) {
        return refuse(out, RV_EMALFORMED, "%s is not a Stripe id (" ID_SHAPE ")", what);
    }
    return copy_str(dst, size, src);
}

/* Copy a text value (NULL when absent) into a fixed field, or refuse it. */
static int take_text(rv_prov_event_t *out, char *dst, size_t size, const char *src,
                     const char *what) {
    if (src == NULL) return copy_str(dst, size, src);
    const char *defect = text_defect(src);
    if (defect != NULL) return refuse(out, RV_EMALFORMED, "%s %s", what, defect);
    if (strlen(src) >= size) {
        return refuse(out, RV_EMALFORMED, "%s is longer than %zu bytes", what, size - 1);
    }
    return copy_str(dst, size, src);
}

/* Copy a status (NULL or "" when absent) into out->status, or refuse it. Stripe's statuses are
 * lower-case words joined by '_' (active, past_due, no_payment_required, uncollectible); a status
 * is kept whole in the customer's record and copied into the entitlement as it is, so nothing
 * else is taken: no quote, backslash, blank or '|'. */
static int take_status(rv_prov_event_t *out, const char *src) {
    if (src == NULL) return copy_str(out->status, sizeof out->status, src);
    size_t n = 0;
    for (const char *p = src; *p; p++, n++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) {
            return refuse(out, RV_EMALFORMED, "status is not a Stripe status word ([a-z0-9_])");
        }
    }
    if (n >= sizeof out->status) {
        return refuse(out, RV_EMALFORMED, "status is longer than %zu bytes",
                      sizeof out->status - 1);
    }
    return copy_str(out->status, sizeof out->status, src);
}

/* Check a value that goes only into data_json; NULL is absent and fine. */
static int check_id(rv_prov_event_t *out, const char *s, const char *what) {
    if (s == NULL || rv_provision_is_id(s)) return 0;
    return refuse(out, RV_EMALFORMED, "%s is not a Stripe id (" ID_SHAPE ")", what);
}

static int check_text(rv_prov_event_t *out, const char *s, const char *what) {
    if (s == NULL) return 0;
    const char *defect = text_defect(s);
    if (defect != NULL) return refuse(out, RV_EMALFORMED, "%s %s", what, defect);
    if (strlen(s) > MAX_EXTRA_STR) {
        return refuse(out, RV_EMALFORMED, "%s is longer than %d bytes", what, MAX_EXTRA_STR);
    }
    return 0;
}

static int price_is(const char *configured, const char *price) {
    return configured != NULL && configured[0] != '\0' && strcmp(configured, price) == 0;
}

static const char *tier_of_price(const rv_prices_t *prices, const char *price) {
    if (prices != NULL) {
        if (price_is(prices->basic, price)) return "basic";
        if (price_is(prices->pro, price)) return "pro";
        if (price_is(prices->enterprise, price)) return "enterprise";
    }
    return "unknown";
}

const char *rv_provision_tier(const char *name) {
    static const char *const tiers[] = {"basic", "pro", "enterprise"};
    for (size_t i = 0; name != NULL && i < RV_ARRAY_LEN(tiers); i++)
        if (strcmp(name, tiers[i]) == 0) return tiers[i];
    return NULL;
}

/* metadata.tier of o, only when it names one of the three plans. */
static const char *metadata_tier(const cJSON *o) {
    return rv_provision_tier(get_str(get(o, "metadata"), "tier"));
}

/* The price of a subscription item or an invoice line: "price" (older and current subscription
 * items, older invoice lines), "pricing.price_details.price" (newer invoice lines), then the
 * legacy "plan". */
static const char *price_of_line(const cJSON *line) {
    const char *p = get_ref(line, "price");
    if (p == NULL) p = get_ref(get(get(line, "pricing"), "price_details"), "price");
    if (p == NULL) p = get_ref(line, "plan");
    return p;
}

/* The customer id, and the expanded customer's email as a last resort for the email. */
static const char *customer_email_expanded(const cJSON *o) {
    const cJSON *c = get(o, "customer");
    return cJSON_IsObject(c) ? get_str(c, "email") : NULL;
}

static int read_checkout(const cJSON *o, rv_prov_event_t *out, extra_t *x, const char **tier) {
    const char *email = get_str(o, "customer_email");
    if (email == NULL) email = get_str(get(o, "customer_details"), "email");
    if (email == NULL) email = customer_email_expanded(o);
    int rc;
    if ((rc = take_text(out, out->email, sizeof out->email, email, "email"))) return rc;
    const char *sub = get_ref(o, "subscription");
    if ((rc = take_id(out, out->subscription_id, sizeof out->subscription_id, sub,
                      "subscription id"))) {
        return rc;
    }
    /* A completed session carries no line items unless expanded, so the tier comes from the
     * metadata the checkout endpoint wrote. */
    *tier = metadata_tier(o);
    const char *status = get_str(o, "payment_status");
    if ((rc = take_status(out, status))) return rc;
    x->has_amount_total = get_int(o, "amount_total", &x->amount_total) == 0;
    x->currency = get_str(o, "currency");
    x->checkout_session_id = get_str(o, "id");
    if ((rc = take_id(out, out->session_id, sizeof out->session_id, x->checkout_session_id,
                      "checkout session id"))) {
        return rc;
    }
    /* Stripe's fulfillment rule: a completed session provisions once it is paid, or needs no
     * payment; an unpaid one (a delayed payment method) waits for async_payment_succeeded. */
    out->fulfills = status != NULL && out->session_id[0] &&
                    (strcmp(status, "paid") == 0 || strcmp(status, "no_payment_required") == 0);
    return 0;
}

static int read_subscription(const cJSON *o, const rv_prices_t *prices, rv_prov_event_t *out,
                             extra_t *x, const char **tier) {
    const char *id = get_str(o, "id");
    /* Without its id a subscription event cannot be ordered or applied to anything. */
    if (id == NULL) return refuse(out, RV_EMALFORMED, "subscription without an id");
    int rc;
    if ((rc = take_id(out, out->subscription_id, sizeof out->subscription_id, id,
                      "subscription id"))) {
        return rc;
    }
    const char *email = customer_email_expanded(o);
    if ((rc = take_text(out, out->email, sizeof out->email, email, "email"))) return rc;

    /* The price is what the customer pays for, so it wins over metadata, which a plan change
     * in the dashboard leaves stale. */
    const cJSON *item = first_of(get(o, "items"));
    const char *price = price_of_line(item);
    *tier = price != NULL ? tier_of_price(prices, price) : metadata_tier(o);

    const char *status = get_str(o, "status");
    if ((rc = take_status(out, status))) return rc;
    /* The state is taken whole: without a status it would read as "not active". */
    if (out->status[0] == '\0') return refuse(out, RV_EMALFORMED, "the subscription has no status");
    /* Newer API versions moved the billing period from the subscription to its items. */
    out->has_period_end = get_int(o, "current_period_end", &out->period_end) == 0;
    if (!out->has_period_end) {
        out->has_period_end = get_int(item, "current_period_end", &out->period_end) == 0;
    }
    const cJSON *cap = get(o, "cancel_at_period_end");
    out->cancel_at_period_end = cJSON_IsBool(cap) ? cJSON_IsTrue(cap) : -1;
    x->currency = get_str(o, "currency");
    out->has_state = 1;
    return 0;
}

static int read_invoice(const cJSON *o, const rv_prices_t *prices, rv_prov_event_t *out, extra_t *x,
                        const char **tier) {
    const char *email = get_str(o, "customer_email");
    if (email == NULL) email = customer_email_expanded(o);
    int rc;
    if ((rc = take_text(out, out->email, sizeof out->email, email, "email"))) return rc;

    /* Older versions: invoice.subscription; newer: invoice.parent.subscription_details. */
    const cJSON *details = get(get(o, "parent"), "subscription_details");
    const char *sub = get_ref(o, "subscription");
    if (sub == NULL) sub = get_ref(details, "subscription");
    if ((rc = take_id(out, out->subscription_id, sizeof out->subscription_id, sub,
                      "subscription id"))) {
        return rc;
    }

    const char *price = price_of_line(first_of(get(o, "lines")));
    if (price != NULL) {
        *tier = tier_of_price(prices, price);
    } else {
        *tier = metadata_tier(details);
        if (*tier == NULL) *tier = metadata_tier(get(o, "subscription_details"));
    }

    const char *status = get_str(o, "status");
    if ((rc = take_status(out, status))) return rc;
    x->has_amount_paid = get_int(o, "amount_paid", &x->amount_paid) == 0;
    x->has_amount_due = get_int(o, "amount_due", &x->amount_due) == 0;
    x->has_attempt_count = get_int(o, "attempt_count", &x->attempt_count) == 0;
    x->currency = get_str(o, "currency");
    x->invoice_id = get_str(o, "id");
    return check_id(out, x->invoice_id, "invoice id");
}

/* Helpers that add a member and remember whether any allocation failed. */
/* The entry's data is written directly: keys are literals, values are checked strings, integers
 * of at most 15 digits and booleans, so no tree is needed to get it right. */
typedef struct writer_s {
    rv_buf_t b;
    int fail;
} writer_t;

static void put_key(writer_t *w, const char *k) {
    w->fail |= rv_buf_append(&w->b, w->b.len > 1 ? ",\"" : "\"", w->b.len > 1 ? 2 : 1);
    w->fail |= rv_buf_puts(&w->b, k);
    w->fail |= rv_buf_append(&w->b, "\":", 2);
}

static void add_str(writer_t *w, const char *k, const char *v) {
    put_key(w, k);
    w->fail |= rv_json_escape(&w->b, v);
}

static void add_num(writer_t *w, const char *k, int64_t v) {
    char digits[24], *p = digits + sizeof digits;
    uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
    do *--p = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    if (v < 0) *--p = '-';
    put_key(w, k);
    w->fail |= rv_buf_append(&w->b, p, (size_t)(digits + sizeof digits - p));
}

static void add_bool(writer_t *w, const char *k, int v) {
    put_key(w, k);
    w->fail |= rv_buf_puts(&w->b, v ? "true" : "false");
}

/* Write the stream entry's "data" object (malloc'd); absent values are left out, never written
 * as null. */
static char *build_data(const rv_prov_event_t *ev, const extra_t *x, kind_t kind) {
    writer_t w = {RV_BUF_INIT, 0};
    w.fail |= rv_buf_reserve(&w.b, 640);
    w.fail |= rv_buf_append(&w.b, "{", 1);
    add_num(&w, "v", RV_PROVISION_DATA_VERSION);
    add_str(&w, "type", ev->type);
    add_str(&w, "stripe_event_id", ev->event_id);
    add_str(&w, "stripe_event_type", ev->stripe_type);
    add_num(&w, "created", ev->created);
    add_bool(&w, "livemode", ev->livemode);
    add_str(&w, "customer_id", ev->customer_id);
    if (ev->email[0]) add_str(&w, "email", ev->email);
    if (ev->subscription_id[0]) add_str(&w, "subscription_id", ev->subscription_id);
    if (ev->tier[0]) add_str(&w, "tier", ev->tier);
    /* Each status under its own name: only a subscription's is "status". */
    static const char *const status_name[] = {"payment_status", "status", "invoice_status"};
    if (ev->status[0]) add_str(&w, status_name[kind], ev->status);
    if (ev->has_period_end) add_num(&w, "current_period_end", ev->period_end);
    if (ev->cancel_at_period_end >= 0)
        add_bool(&w, "cancel_at_period_end", ev->cancel_at_period_end);
    if (x->has_amount_total) add_num(&w, "amount_total", x->amount_total);
    if (x->has_amount_paid) add_num(&w, "amount_paid", x->amount_paid);
    if (x->has_amount_due) add_num(&w, "amount_due", x->amount_due);
    if (x->currency) add_str(&w, "currency", x->currency);
    if (x->invoice_id) add_str(&w, "invoice_id", x->invoice_id);
    if (x->checkout_session_id) add_str(&w, "checkout_session_id", x->checkout_session_id);
    if (x->has_attempt_count) add_num(&w, "attempt_count", x->attempt_count);
    w.fail |= rv_buf_append(&w.b, "}", 1);
    if (w.fail) {
        rv_buf_free(&w.b);
        return NULL;
    }
    return rv_buf_steal(&w.b, NULL);
}

/* Everything after the envelope has been checked: find the route and read the object. */
static int map_object(const cJSON *obj, const rv_prices_t *prices, rv_prov_event_t *out) {
    const route_t *r = NULL;
    for (size_t i = 0; i < RV_ARRAY_LEN(routes); i++) {
        if (strcmp(routes[i].stripe_type, out->stripe_type) == 0) {
            r = &routes[i];
            break;
        }
    }
    if (r == NULL) return RV_EIGNORED;
    /* Only subscription checkouts provision a user; one-off payments are not this product's. */
    if (r->kind == KIND_CHECKOUT) {
        const char *mode = get_str(obj, "mode");
        if (mode == NULL || strcmp(mode, "subscription") != 0) return RV_EIGNORED;
    }

    const char *customer = get_ref(obj, "customer");
    int rc = take_id(out, out->customer_id, sizeof out->customer_id, customer, "customer id");
    if (rc != 0) return rc;
    /* Provisioning and entitlements are per customer: an entry that changes access without
     * saying whose is of no use to anyone. An invoice may have no customer in Stripe's API; its
     * entry then says "" and changes no entitlement. */
    if (customer == NULL && r->kind == KIND_CHECKOUT) {
        return refuse(out, RV_EMALFORMED, "completed subscription checkout without a customer");
    }
    if (customer == NULL && r->kind == KIND_SUBSCRIPTION) {
        return refuse(out, RV_EMALFORMED, "subscription without a customer");
    }
    extra_t x;
    memset(&x, 0, sizeof x);
    out->cancel_at_period_end = -1;
    const char *tier = NULL;
    switch (r->kind) {
    case KIND_CHECKOUT: rc = read_checkout(obj, out, &x, &tier); break;
    case KIND_SUBSCRIPTION: rc = read_subscription(obj, prices, out, &x, &tier); break;
    default: rc = read_invoice(obj, prices, out, &x, &tier); break;
    }
    if (rc != 0) return rc;
    /* The tier is one of the plan names or "unknown", never Stripe's text. */
    if (copy_str(out->tier, sizeof out->tier, tier) != 0) return RV_EPAYLOAD;
    if ((rc = check_text(out, x.currency, "currency"))) return rc;

    out->type = r->type;
    /* async_payment_succeeded is the payment of a session that completed unpaid. */
    if (strcmp(out->stripe_type, "checkout.session.async_payment_succeeded") == 0)
        out->fulfills = out->session_id[0] != '\0';
    if (strcmp(out->stripe_type, "checkout.session.async_payment_failed") == 0) out->fulfills = 0;
    out->data_json = build_data(out, &x, r->kind);
    if (out->data_json == NULL) {
        out->type = NULL;
        return RV_ENOMEM;
    }
    return 0;
}

/* Check the envelope (id, type, created, data.object). The id and the type are filled as soon
 * as each is valid, even when something else is wrong, so that a refused event stays findable. */
static int read_envelope(const cJSON *root, rv_prov_event_t *out, const cJSON **obj) {
    const cJSON *id = get(root, "id");
    const cJSON *type = get(root, "type");
    int id_ok = cJSON_IsString(id) && rv_provision_is_id(id->valuestring) &&
                copy_str(out->event_id, sizeof out->event_id, id->valuestring) == 0;
    int type_ok = cJSON_IsString(type) && is_token(type->valuestring) &&
                  copy_str(out->stripe_type, sizeof out->stripe_type, type->valuestring) == 0;
    if (!id_ok) {
        return refuse(out, RV_EPAYLOAD,
                      "the event id is missing or not a Stripe id (" ID_SHAPE ")");
    }
    if (!type_ok) {
        return refuse(out, RV_EPAYLOAD,
                      "the event type is missing, empty, longer than %zu bytes or not printable "
                      "ASCII",
                      sizeof out->stripe_type - 1);
    }
    int64_t created;
    if (get_int(root, "created", &created) != 0 || created < 0) {
        return refuse(out, RV_EPAYLOAD, "the event's created is not a whole non-negative number");
    }
    *obj = get(get(root, "data"), "object");
    if (!cJSON_IsObject(*obj)) return refuse(out, RV_EPAYLOAD, "the event has no data.object");
    out->created = created;
    out->livemode = cJSON_IsTrue(get(root, "livemode"));
    return 0;
}

/* Map an event (as_type NULL: json is the event envelope) or a bare object of type as_type. */
static int map_event(const char *json, size_t len, const char *as_type, int64_t created,
                     const rv_prices_t *prices, rv_prov_event_t *out) {
    memset(out, 0, sizeof *out);
    if (json == NULL || len == 0) return refuse(out, RV_EPAYLOAD, "the body is empty");
    cJSON *root = rv_json_parse(json, len);
    if (!cJSON_IsObject(root)) {
        int rc = refuse(out, RV_EPAYLOAD,
                        root ? "the body is not a JSON object" : "the body is not JSON");
        cJSON_Delete(root);
        return rc;
    }

    const cJSON *obj = root;
    int rc = 0;
    if (as_type == NULL) {
        rc = read_envelope(root, out, &obj);
    } else if (copy_str(out->stripe_type, sizeof out->stripe_type, as_type) != 0) {
        rc = RV_EINVAL;
    } else {
        out->created = created;
        out->livemode = cJSON_IsTrue(get(root, "livemode"));
    }
    if (rc == 0) rc = map_object(obj, prices, out);
    if (rc == 0 && has_escaped_nul(json, len)) {
        rc = refuse(out, RV_EMALFORMED, "a string in the event has an escaped NUL (\\u0000)");
    }

    if (rc != 0) {
        /* Only the identity of the event and the reason survive a refusal. */
        out->type = NULL;
        out->customer_id[0] = out->subscription_id[0] = out->email[0] = '\0';
        out->tier[0] = out->status[0] = out->session_id[0] = '\0';
        out->has_state = out->has_period_end = out->fulfills = 0;
        free(out->data_json);
        out->data_json = NULL;
    }
    cJSON_Delete(root);
    return rc;
}

/* A webhook's JSON tree lives only while it is mapped: its many small nodes are taken from a
 * bump arena that is reset afterwards, instead of one malloc and free each. Allocations that do
 * not fit fall back to malloc. Single-threaded, and nothing else uses cJSON meanwhile. */
#define ARENA_SIZE (256 * 1024)
static _Alignas(16) unsigned char arena[ARENA_SIZE];
static size_t arena_used;

static void *arena_alloc(size_t n) {
    size_t need = (n + 15) & ~(size_t)15;
    if (need >= n && need <= ARENA_SIZE - arena_used) {
        void *p = arena + arena_used;
        arena_used += need;
        return p;
    }
    return malloc(n);
}

static void arena_free(void *p) {
    unsigned char *c = p;
    if (c >= arena && c < arena + ARENA_SIZE) return;
    free(p);
}

static int map_in_arena(const char *json, size_t len, const char *as_type, int64_t created,
                        const rv_prices_t *prices, rv_prov_event_t *out) {
    cJSON_Hooks hooks = {arena_alloc, arena_free};
    arena_used = 0;
    cJSON_InitHooks(&hooks);
    int rc = map_event(json, len, as_type, created, prices, out);
    cJSON_InitHooks(NULL);
    arena_used = 0;
    return rc;
}

int rv_provision_map(const char *json, size_t len, const rv_prices_t *prices,
                     rv_prov_event_t *out) {
    return map_in_arena(json, len, NULL, 0, prices, out);
}

int rv_provision_map_object(const char *json, size_t len, const char *as_type, int64_t created,
                            const rv_prices_t *prices, rv_prov_event_t *out) {
    if (as_type == NULL) return RV_EINVAL;
    return map_in_arena(json, len, as_type, created, prices, out);
}

void rv_prov_event_free(rv_prov_event_t *ev) {
    if (ev == NULL) return;
    free(ev->data_json);
    ev->data_json = NULL;
    ev->type = NULL;
}
