/* Unit tests for provision: Stripe events built around Stripe's own example objects
 * (test/fixtures/stripe, read relative to the repository root) mapped to provisioning events,
 * across the payload shapes of older and newer Stripe API versions. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>
#include <cmocka.h>

#include "rivet/common.h"
#include "rivet/provision.h"

#define FIXTURES "test/fixtures/stripe/"

#define PRICE_BASIC "price_basic_test_0001"
#define PRICE_PRO   "price_1PgafmB7WZ01zgkW6dKueIc5" /* the price in Stripe's example objects */
#define PRICE_ENT   "price_enterprise_test_0003"

static const rv_prices_t prices = {PRICE_BASIC, PRICE_PRO, PRICE_ENT};

/* Fixture values the assertions rely on, as they appear in Stripe's example objects. */
#define FX_CUSTOMER        "cus_QXg1o8vcGmoR32"
#define FX_SUB             "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"
#define FX_CHECKOUT        "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY"
#define FX_INVOICE         "in_1Pgc6tB7WZ01zgkWu9fdqL6I"
#define FX_ITEM_PERIOD_END 976287773

static cJSON *load_fixture(const char *name) {
    char path[256];
    snprintf(path, sizeof path, FIXTURES "%s.json", name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) fail_msg("cannot open %s (tests run from the repository root)", path);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    assert_true(n > 0 && n < sizeof buf - 1);
    buf[n] = '\0';
    cJSON *j = cJSON_Parse(buf);
    if (j == NULL) fail_msg("%s is not JSON", path);
    return j;
}

/* Wrap obj (consumed) in an event envelope based on Stripe's example event. */
static char *make_event(const char *type, cJSON *obj) {
    cJSON *ev = load_fixture("event");
    cJSON_ReplaceItemInObjectCaseSensitive(ev, "id", cJSON_CreateString("evt_test_provision_1"));
    cJSON_ReplaceItemInObjectCaseSensitive(ev, "type", cJSON_CreateString(type));
    cJSON_ReplaceItemInObjectCaseSensitive(ev, "created", cJSON_CreateNumber(1700000123));
    cJSON *data = cJSON_GetObjectItemCaseSensitive(ev, "data");
    assert_non_null(data);
    cJSON_ReplaceItemInObjectCaseSensitive(data, "object", obj);
    char *s = cJSON_PrintUnformatted(ev);
    assert_non_null(s);
    cJSON_Delete(ev);
    return s;
}

static int map_str(const char *json, rv_prov_event_t *ev) {
    return rv_provision_map(json, strlen(json), &prices, ev);
}

/* Map an event of type around obj (consumed). */
static int map_obj(const char *type, cJSON *obj, rv_prov_event_t *ev) {
    char *s = make_event(type, obj);
    int rc = map_str(s, ev);
    free(s);
    return rc;
}

/* Parse data_json, check the members every entry has (the envelope's id and created as given)
 * and that nothing is null. */
static cJSON *data_check(const rv_prov_event_t *ev, const char *stripe_type, const char *event_id,
                         double created_want) {
    assert_non_null(ev->data_json);
    cJSON *d = cJSON_Parse(ev->data_json);
    assert_non_null(d);
    assert_true(cJSON_IsObject(d));
    for (const cJSON *c = d->child; c != NULL; c = c->next) {
        if (cJSON_IsNull(c)) fail_msg("member %s is null", c->string);
    }
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, "v");
    assert_true(cJSON_IsNumber(v));
    /* 2 since entries carry the entitlement and each status has its own name. */
    assert_int_equal(v->valueint, 2);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "type")),
                        ev->type);
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "stripe_event_id")), event_id);
    assert_string_equal(
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(d, "stripe_event_type")),
        stripe_type);
    const cJSON *created = cJSON_GetObjectItemCaseSensitive(d, "created");
    assert_true(cJSON_IsNumber(created));
    assert_true(created->valuedouble == created_want);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(d, "livemode")));
    assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(d, "customer_id")));
    return d;
}

static cJSON *data_of(const rv_prov_event_t *ev, const char *stripe_type) {
    return data_check(ev, stripe_type, "evt_test_provision_1", 1700000123.0);
}

static void assert_dstr(const cJSON *d, const char *key, const char *want) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, key);
    if (!cJSON_IsString(v)) fail_msg("data.%s is not a string", key);
    assert_string_equal(v->valuestring, want);
}

static void assert_dnum(const cJSON *d, const char *key, double want) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(d, key);
    if (!cJSON_IsNumber(v)) fail_msg("data.%s is not a number", key);
    if (v->valuedouble != want) fail_msg("data.%s is %.17g, want %.17g", key, v->valuedouble, want);
}

static void assert_dabsent(const cJSON *d, const char *key) {
    if (cJSON_HasObjectItem(d, key)) fail_msg("data.%s should be absent", key);
}

static void set(cJSON *o, const char *key, cJSON *v) {
    assert_non_null(v);
    if (cJSON_HasObjectItem(o, key)) {
        cJSON_ReplaceItemInObjectCaseSensitive(o, key, v);
    } else {
        cJSON_AddItemToObject(o, key, v);
    }
}

static cJSON *item0(cJSON *o, const char *list) {
    cJSON *l = cJSON_GetObjectItemCaseSensitive(o, list);
    cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l, "data"), 0);
    assert_non_null(first);
    return first;
}

/* --- checkout.session.completed --- */

static cJSON *checkout_subscription(void) {
    cJSON *cs = load_fixture("checkout_session");
    set(cs, "mode", cJSON_CreateString("subscription"));
    set(cs, "customer", cJSON_CreateString("cus_checkout_1"));
    set(cs, "subscription", cJSON_CreateString("sub_checkout_1"));
    set(cs, "payment_status", cJSON_CreateString("paid"));
    set(cs, "amount_total", cJSON_CreateNumber(2900));
    set(cs, "currency", cJSON_CreateString("usd"));
    cJSON *md = cJSON_CreateObject();
    cJSON_AddStringToObject(md, "tier", "pro");
    cJSON_AddStringToObject(md, "source", "rivet_landing");
    set(cs, "metadata", md);
    return cs;
}

static void test_checkout_completed(void **state) {
    rv_prov_event_t ev;
    /* Stripe's example has customer_email null and the email in customer_details (newer). */
    assert_int_equal(map_obj("checkout.session.completed", checkout_subscription(), &ev), 0);
    assert_string_equal(ev.type, "user.provision");
    assert_string_equal(ev.event_id, "evt_test_provision_1");
    assert_string_equal(ev.stripe_type, "checkout.session.completed");
    assert_int_equal(ev.created, 1700000123);
    assert_int_equal(ev.livemode, 0);
    assert_string_equal(ev.customer_id, "cus_checkout_1");
    assert_string_equal(ev.subscription_id, "sub_checkout_1");
    assert_string_equal(ev.email, "example@example.com");
    assert_string_equal(ev.tier, "pro");
    assert_string_equal(ev.status, "paid");
    assert_string_equal(ev.session_id, FX_CHECKOUT);
    assert_int_equal(ev.fulfills, 1);
    /* A checkout is no subscription: it says nothing of the subscription's whole state. */
    assert_int_equal(ev.has_state, 0);
    assert_int_equal(ev.has_period_end, 0);
    assert_int_equal(ev.cancel_at_period_end, -1);

    cJSON *d = data_of(&ev, "checkout.session.completed");
    assert_dstr(d, "customer_id", "cus_checkout_1");
    assert_dstr(d, "email", "example@example.com");
    assert_dstr(d, "subscription_id", "sub_checkout_1");
    assert_dstr(d, "tier", "pro");
    /* Only a subscription's status is "status". */
    assert_dstr(d, "payment_status", "paid");
    assert_dabsent(d, "status");
    assert_dabsent(d, "invoice_status");
    assert_dnum(d, "amount_total", 2900);
    assert_dstr(d, "currency", "usd");
    assert_dstr(d, "checkout_session_id", FX_CHECKOUT);
    assert_dabsent(d, "amount_paid");
    assert_dabsent(d, "invoice_id");
    assert_dabsent(d, "current_period_end");
    assert_dabsent(d, "attempt_count");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);
    assert_null(ev.data_json);
}

static void test_checkout_email_shapes(void **state) {
    rv_prov_event_t ev;
    /* Older shape: customer_email set; it wins over customer_details. */
    cJSON *cs = checkout_subscription();
    set(cs, "customer_email", cJSON_CreateString("buyer@example.org"));
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
    assert_string_equal(ev.email, "buyer@example.org");
    rv_prov_event_free(&ev);

    /* Only customer_email, no customer_details at all. */
    cs = checkout_subscription();
    set(cs, "customer_email", cJSON_CreateString("only@example.org"));
    cJSON_DeleteItemFromObjectCaseSensitive(cs, "customer_details");
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
    assert_string_equal(ev.email, "only@example.org");
    rv_prov_event_free(&ev);

    /* Neither: the email is left out of data rather than written as null. */
    cs = checkout_subscription();
    cJSON_DeleteItemFromObjectCaseSensitive(cs, "customer_details");
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
    assert_string_equal(ev.email, "");
    cJSON *d = data_of(&ev, "checkout.session.completed");
    assert_dabsent(d, "email");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);
}

static void test_checkout_expanded_refs(void **state) {
    rv_prov_event_t ev;
    cJSON *cs = checkout_subscription();
    set(cs, "customer", load_fixture("customer"));
    cJSON *sub = load_fixture("subscription");
    set(cs, "subscription", sub);
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
    assert_string_equal(ev.customer_id, FX_CUSTOMER);
    assert_string_equal(ev.subscription_id, FX_SUB);
    rv_prov_event_free(&ev);
}

static void test_checkout_metadata_tier(void **state) {
    static const char *const tiers[] = {"basic", "pro", "enterprise"};
    rv_prov_event_t ev;
    for (size_t i = 0; i < RV_ARRAY_LEN(tiers); i++) {
        cJSON *cs = checkout_subscription();
        cJSON *md = cJSON_GetObjectItemCaseSensitive(cs, "metadata");
        cJSON_ReplaceItemInObjectCaseSensitive(md, "tier", cJSON_CreateString(tiers[i]));
        assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
        assert_string_equal(ev.tier, tiers[i]);
        rv_prov_event_free(&ev);
    }
    /* A tier that is not one of the three plans is not believed. */
    const char *bad[] = {"gold", "Pro", ""};
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        cJSON *cs = checkout_subscription();
        cJSON *md = cJSON_GetObjectItemCaseSensitive(cs, "metadata");
        cJSON_ReplaceItemInObjectCaseSensitive(md, "tier", cJSON_CreateString(bad[i]));
        assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
        assert_string_equal(ev.tier, "");
        cJSON *d = data_of(&ev, "checkout.session.completed");
        assert_dabsent(d, "tier");
        cJSON_Delete(d);
        rv_prov_event_free(&ev);
    }
}

static void test_checkout_not_subscription(void **state) {
    rv_prov_event_t ev;
    /* Stripe's example session is a one-off payment. */
    assert_int_equal(map_obj("checkout.session.completed", load_fixture("checkout_session"), &ev),
                     RV_EIGNORED);
    assert_null(ev.type);
    assert_null(ev.data_json);
    assert_string_equal(ev.event_id, "evt_test_provision_1");
    assert_string_equal(ev.stripe_type, "checkout.session.completed");
    rv_prov_event_free(&ev);

    cJSON *cs = checkout_subscription();
    set(cs, "mode", cJSON_CreateString("setup"));
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), RV_EIGNORED);
    rv_prov_event_free(&ev);

    cs = checkout_subscription();
    cJSON_DeleteItemFromObjectCaseSensitive(cs, "mode");
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), RV_EIGNORED);
    rv_prov_event_free(&ev);
}

/* A completed session provisions once it is paid or needs no payment; an unpaid one (a delayed
 * payment method) waits for async_payment_succeeded. */
static void test_checkout_fulfills(void **state) {
    static const struct {
        const char *payment_status; /* NULL: absent */
        int fulfills;
    } cases[] = {
        {"paid", 1},
        {"no_payment_required", 1},
        {"unpaid", 0},
        {NULL, 0},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        rv_prov_event_t ev;
        cJSON *cs = checkout_subscription();
        if (cases[i].payment_status) {
            set(cs, "payment_status", cJSON_CreateString(cases[i].payment_status));
        } else {
            cJSON_DeleteItemFromObjectCaseSensitive(cs, "payment_status");
        }
        assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
        /* Still a user.provision: whether it is appended is the queue's decision. */
        assert_string_equal(ev.type, "user.provision");
        assert_string_equal(ev.session_id, FX_CHECKOUT);
        if (ev.fulfills != cases[i].fulfills) {
            fail_msg("payment_status %s: fulfills %d, want %d",
                     cases[i].payment_status ? cases[i].payment_status : "(absent)", ev.fulfills,
                     cases[i].fulfills);
        }
        cJSON *d = data_of(&ev, "checkout.session.completed");
        if (cases[i].payment_status) {
            assert_dstr(d, "payment_status", cases[i].payment_status);
        } else {
            assert_dabsent(d, "payment_status");
        }
        assert_dabsent(d, "status");
        cJSON_Delete(d);
        rv_prov_event_free(&ev);
    }

    /* A session without an id cannot be provisioned once per session, so it never fulfills. */
    rv_prov_event_t ev;
    cJSON *cs = checkout_subscription();
    cJSON_DeleteItemFromObjectCaseSensitive(cs, "id");
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
    assert_string_equal(ev.session_id, "");
    assert_int_equal(ev.fulfills, 0);
    cJSON *d = data_of(&ev, "checkout.session.completed");
    assert_dabsent(d, "checkout_session_id");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);
}

static void test_checkout_async_payment(void **state) {
    rv_prov_event_t ev;
    /* The delayed payment of a session that completed unpaid provisions it. */
    cJSON *cs = checkout_subscription();
    assert_int_equal(map_obj("checkout.session.async_payment_succeeded", cs, &ev), 0);
    assert_string_equal(ev.type, "user.provision");
    assert_string_equal(ev.stripe_type, "checkout.session.async_payment_succeeded");
    assert_string_equal(ev.session_id, FX_CHECKOUT);
    assert_string_equal(ev.customer_id, "cus_checkout_1");
    assert_string_equal(ev.subscription_id, "sub_checkout_1");
    assert_string_equal(ev.tier, "pro");
    assert_int_equal(ev.fulfills, 1);
    assert_int_equal(ev.has_state, 0);
    cJSON *d = data_of(&ev, "checkout.session.async_payment_succeeded");
    assert_dstr(d, "checkout_session_id", FX_CHECKOUT);
    assert_dstr(d, "payment_status", "paid");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);
    /* The event is the payment: it provisions even when the session it carries was captured
     * before payment_status changed. */
    cs = checkout_subscription();
    set(cs, "payment_status", cJSON_CreateString("unpaid"));
    assert_int_equal(map_obj("checkout.session.async_payment_succeeded", cs, &ev), 0);
    assert_int_equal(ev.fulfills, 1);
    rv_prov_event_free(&ev);

    /* Its failure is a failed payment and provisions nothing, whatever payment_status says. */
    static const char *const statuses[] = {"unpaid", "paid"};
    for (size_t i = 0; i < RV_ARRAY_LEN(statuses); i++) {
        cs = checkout_subscription();
        set(cs, "payment_status", cJSON_CreateString(statuses[i]));
        assert_int_equal(map_obj("checkout.session.async_payment_failed", cs, &ev), 0);
        assert_string_equal(ev.type, "payment.failed");
        assert_string_equal(ev.session_id, FX_CHECKOUT);
        assert_int_equal(ev.fulfills, 0);
        d = data_of(&ev, "checkout.session.async_payment_failed");
        assert_dstr(d, "payment_status", statuses[i]);
        assert_dstr(d, "subscription_id", "sub_checkout_1");
        cJSON_Delete(d);
        rv_prov_event_free(&ev);
    }

    /* Like a completed session, only subscription checkouts are this product's. */
    cs = checkout_subscription();
    set(cs, "mode", cJSON_CreateString("payment"));
    assert_int_equal(map_obj("checkout.session.async_payment_succeeded", cs, &ev), RV_EIGNORED);
    assert_null(ev.data_json);
    rv_prov_event_free(&ev);
    cs = checkout_subscription();
    set(cs, "customer", cJSON_CreateNull());
    assert_int_equal(map_obj("checkout.session.async_payment_failed", cs, &ev), RV_EMALFORMED);
    assert_int_equal(ev.fulfills, 0);
    assert_string_equal(ev.session_id, "");
    rv_prov_event_free(&ev);
}

/* --- customer.subscription.* --- */

static void test_subscription_events(void **state) {
    static const struct {
        const char *stripe, *type;
    } cases[] = {
        {"customer.subscription.created", "subscription.created"},
        {"customer.subscription.updated", "subscription.updated"},
        {"customer.subscription.deleted", "user.deprovision"},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        rv_prov_event_t ev;
        /* Stripe's example is the newer shape: current_period_end only on the items. */
        assert_int_equal(map_obj(cases[i].stripe, load_fixture("subscription"), &ev), 0);
        assert_string_equal(ev.type, cases[i].type);
        /* Every subscription event carries the subscription's whole state. */
        assert_int_equal(ev.has_state, 1);
        assert_int_equal(ev.has_period_end, 1);
        assert_int_equal(ev.period_end, FX_ITEM_PERIOD_END);
        assert_int_equal(ev.cancel_at_period_end, 1);
        assert_int_equal(ev.fulfills, 0);
        assert_string_equal(ev.session_id, "");
        assert_string_equal(ev.customer_id, FX_CUSTOMER);
        assert_string_equal(ev.subscription_id, FX_SUB);
        assert_string_equal(ev.tier, "pro");
        assert_string_equal(ev.status, "active");
        assert_string_equal(ev.email, "");

        cJSON *d = data_of(&ev, cases[i].stripe);
        assert_dstr(d, "customer_id", FX_CUSTOMER);
        assert_dstr(d, "subscription_id", FX_SUB);
        assert_dstr(d, "tier", "pro");
        assert_dstr(d, "status", "active");
        assert_dabsent(d, "payment_status");
        assert_dabsent(d, "invoice_status");
        assert_dnum(d, "current_period_end", FX_ITEM_PERIOD_END);
        assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "cancel_at_period_end")));
        assert_dstr(d, "currency", "usd");
        assert_dabsent(d, "email");
        assert_dabsent(d, "amount_total");
        assert_dabsent(d, "invoice_id");
        assert_dabsent(d, "checkout_session_id");
        cJSON_Delete(d);
        rv_prov_event_free(&ev);
    }
}

static void test_subscription_period_end_shapes(void **state) {
    rv_prov_event_t ev;
    /* Older shape: on the subscription, not on the items. */
    cJSON *sub = load_fixture("subscription");
    set(sub, "current_period_end", cJSON_CreateNumber(1735689600));
    cJSON_DeleteItemFromObjectCaseSensitive(item0(sub, "items"), "current_period_end");
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_int_equal(ev.has_state, 1);
    assert_int_equal(ev.has_period_end, 1);
    assert_int_equal(ev.period_end, 1735689600);
    cJSON *d = data_of(&ev, "customer.subscription.updated");
    assert_dnum(d, "current_period_end", 1735689600);
    cJSON_Delete(d);
    rv_prov_event_free(&ev);

    /* Neither: left out. */
    sub = load_fixture("subscription");
    cJSON_DeleteItemFromObjectCaseSensitive(item0(sub, "items"), "current_period_end");
    cJSON_DeleteItemFromObjectCaseSensitive(sub, "cancel_at_period_end");
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_int_equal(ev.has_state, 1);
    assert_int_equal(ev.has_period_end, 0);
    assert_int_equal(ev.cancel_at_period_end, -1);
    d = data_of(&ev, "customer.subscription.updated");
    assert_dabsent(d, "current_period_end");
    assert_dabsent(d, "cancel_at_period_end");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);
}

/* The state a subscription event carries: the period's end in both API shapes, and
 * cancel_at_period_end as 1, 0 or absent (-1). */
static void test_subscription_state(void **state) {
    rv_prov_event_t ev;
    /* Newer shape: the period only on the first item. */
    cJSON *sub = load_fixture("subscription");
    cJSON_DeleteItemFromObjectCaseSensitive(sub, "current_period_end");
    set(item0(sub, "items"), "current_period_end", cJSON_CreateNumber(1767225600));
    set(sub, "cancel_at_period_end", cJSON_CreateFalse());
    set(sub, "status", cJSON_CreateString("past_due"));
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_int_equal(ev.has_state, 1);
    assert_int_equal(ev.has_period_end, 1);
    assert_int_equal(ev.period_end, 1767225600);
    assert_int_equal(ev.cancel_at_period_end, 0);
    assert_string_equal(ev.status, "past_due");
    assert_string_equal(ev.tier, "pro");
    cJSON *d = data_of(&ev, "customer.subscription.updated");
    assert_dnum(d, "current_period_end", 1767225600);
    assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(d, "cancel_at_period_end")));
    assert_dstr(d, "status", "past_due");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);

    /* Older shape: on the subscription itself; cancel_at_period_end true. */
    sub = load_fixture("subscription");
    set(sub, "current_period_end", cJSON_CreateNumber(1704067200));
    cJSON_DeleteItemFromObjectCaseSensitive(item0(sub, "items"), "current_period_end");
    set(sub, "cancel_at_period_end", cJSON_CreateTrue());
    assert_int_equal(map_obj("customer.subscription.deleted", sub, &ev), 0);
    assert_int_equal(ev.has_period_end, 1);
    assert_int_equal(ev.period_end, 1704067200);
    assert_int_equal(ev.cancel_at_period_end, 1);
    rv_prov_event_free(&ev);

    /* A period end that is not a whole number is no period end. */
    sub = load_fixture("subscription");
    cJSON_DeleteItemFromObjectCaseSensitive(sub, "current_period_end");
    set(item0(sub, "items"), "current_period_end", cJSON_CreateString("1767225600"));
    set(sub, "cancel_at_period_end", cJSON_CreateString("true"));
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_int_equal(ev.has_state, 1);
    assert_int_equal(ev.has_period_end, 0);
    assert_int_equal(ev.cancel_at_period_end, -1);
    d = data_of(&ev, "customer.subscription.updated");
    assert_dabsent(d, "current_period_end");
    assert_dabsent(d, "cancel_at_period_end");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);
}

static void test_subscription_price_shapes(void **state) {
    static const struct {
        const char *price, *tier;
    } cases[] = {
        {PRICE_BASIC, "basic"},
        {PRICE_PRO, "pro"},
        {PRICE_ENT, "enterprise"},
        {"price_somebody_elses", "unknown"},
    };
    rv_prov_event_t ev;
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        /* Current shape: items.data[0].price.id (the example's plan.id is "obj_123"). */
        cJSON *sub = load_fixture("subscription");
        cJSON *price = cJSON_GetObjectItemCaseSensitive(item0(sub, "items"), "price");
        cJSON_ReplaceItemInObjectCaseSensitive(price, "id", cJSON_CreateString(cases[i].price));
        assert_int_equal(map_obj("customer.subscription.created", sub, &ev), 0);
        assert_string_equal(ev.tier, cases[i].tier);
        cJSON *d = data_of(&ev, "customer.subscription.created");
        assert_dstr(d, "tier", cases[i].tier);
        cJSON_Delete(d);
        rv_prov_event_free(&ev);

        /* Older shape: no price, only items.data[0].plan.id. */
        sub = load_fixture("subscription");
        cJSON *item = item0(sub, "items");
        cJSON_DeleteItemFromObjectCaseSensitive(item, "price");
        cJSON *plan = cJSON_GetObjectItemCaseSensitive(item, "plan");
        cJSON_ReplaceItemInObjectCaseSensitive(plan, "id", cJSON_CreateString(cases[i].price));
        assert_int_equal(map_obj("customer.subscription.created", sub, &ev), 0);
        assert_string_equal(ev.tier, cases[i].tier);
        rv_prov_event_free(&ev);
    }

    /* The price wins over metadata, which a plan change leaves stale. */
    cJSON *sub = load_fixture("subscription");
    cJSON *md = cJSON_CreateObject();
    cJSON_AddStringToObject(md, "tier", "basic");
    set(sub, "metadata", md);
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_string_equal(ev.tier, "pro");
    rv_prov_event_free(&ev);

    /* No price anywhere: subscription metadata, if it names a plan. */
    sub = load_fixture("subscription");
    cJSON *item = item0(sub, "items");
    cJSON_DeleteItemFromObjectCaseSensitive(item, "price");
    cJSON_DeleteItemFromObjectCaseSensitive(item, "plan");
    md = cJSON_CreateObject();
    cJSON_AddStringToObject(md, "tier", "enterprise");
    set(sub, "metadata", md);
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_string_equal(ev.tier, "enterprise");
    rv_prov_event_free(&ev);

    sub = load_fixture("subscription");
    cJSON_DeleteItemFromObjectCaseSensitive(sub, "items");
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_string_equal(ev.tier, "");
    rv_prov_event_free(&ev);

    /* Without configured prices every price is unknown. */
    char *s = make_event("customer.subscription.created", load_fixture("subscription"));
    assert_int_equal(rv_provision_map(s, strlen(s), NULL, &ev), 0);
    assert_string_equal(ev.tier, "unknown");
    rv_prov_event_free(&ev);
    const rv_prices_t empty = {"", NULL, ""};
    assert_int_equal(rv_provision_map(s, strlen(s), &empty, &ev), 0);
    assert_string_equal(ev.tier, "unknown");
    rv_prov_event_free(&ev);
    free(s);
}

static void test_subscription_expanded_customer(void **state) {
    rv_prov_event_t ev;
    cJSON *sub = load_fixture("subscription");
    cJSON *cus = load_fixture("customer");
    cJSON_ReplaceItemInObjectCaseSensitive(cus, "id", cJSON_CreateString("cus_expanded_9"));
    set(sub, "customer", cus);
    assert_int_equal(map_obj("customer.subscription.deleted", sub, &ev), 0);
    assert_string_equal(ev.customer_id, "cus_expanded_9");
    rv_prov_event_free(&ev);
}

/* --- invoice.payment_* --- */

static cJSON *invoice_paid(void) {
    cJSON *in = load_fixture("invoice");
    set(in, "customer_email", cJSON_CreateString("payer@example.com"));
    set(in, "status", cJSON_CreateString("paid"));
    set(in, "amount_paid", cJSON_CreateNumber(2900));
    set(in, "attempt_count", cJSON_CreateNumber(1));
    return in;
}

static void test_invoice_events(void **state) {
    static const struct {
        const char *stripe, *type;
    } cases[] = {
        {"invoice.payment_succeeded", "payment.succeeded"},
        {"invoice.payment_failed", "payment.failed"},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        rv_prov_event_t ev;
        /* Stripe's example is the newer shape: subscription null at the top, the id under
         * parent.subscription_details. */
        assert_int_equal(map_obj(cases[i].stripe, invoice_paid(), &ev), 0);
        assert_string_equal(ev.type, cases[i].type);
        /* An invoice names its subscription but says nothing of its state. */
        assert_int_equal(ev.has_state, 0);
        assert_int_equal(ev.has_period_end, 0);
        assert_int_equal(ev.cancel_at_period_end, -1);
        assert_int_equal(ev.fulfills, 0);
        assert_string_equal(ev.session_id, "");
        assert_string_equal(ev.customer_id, FX_CUSTOMER);
        assert_string_equal(ev.subscription_id, "subscription");
        assert_string_equal(ev.email, "payer@example.com");
        assert_string_equal(ev.status, "paid");
        assert_string_equal(ev.tier, "");

        cJSON *d = data_of(&ev, cases[i].stripe);
        assert_dstr(d, "customer_id", FX_CUSTOMER);
        assert_dstr(d, "email", "payer@example.com");
        assert_dstr(d, "subscription_id", "subscription");
        assert_dstr(d, "invoice_status", "paid");
        assert_dabsent(d, "status");
        assert_dabsent(d, "payment_status");
        assert_dnum(d, "amount_paid", 2900);
        assert_dnum(d, "amount_due", 1000);
        assert_dstr(d, "currency", "usd");
        assert_dstr(d, "invoice_id", FX_INVOICE);
        assert_dnum(d, "attempt_count", 1);
        assert_dabsent(d, "tier");
        assert_dabsent(d, "amount_total");
        assert_dabsent(d, "checkout_session_id");
        assert_dabsent(d, "cancel_at_period_end");
        cJSON_Delete(d);
        rv_prov_event_free(&ev);
    }
}

static void test_invoice_subscription_shapes(void **state) {
    rv_prov_event_t ev;
    /* Older shape: invoice.subscription, no parent. */
    cJSON *in = invoice_paid();
    set(in, "subscription", cJSON_CreateString("sub_older_shape"));
    cJSON_DeleteItemFromObjectCaseSensitive(in, "parent");
    assert_int_equal(map_obj("invoice.payment_succeeded", in, &ev), 0);
    assert_string_equal(ev.subscription_id, "sub_older_shape");
    rv_prov_event_free(&ev);

    /* Older shape, expanded. */
    in = invoice_paid();
    set(in, "subscription", load_fixture("subscription"));
    assert_int_equal(map_obj("invoice.payment_succeeded", in, &ev), 0);
    assert_string_equal(ev.subscription_id, FX_SUB);
    rv_prov_event_free(&ev);

    /* Neither: no subscription id, and none in data. */
    in = invoice_paid();
    cJSON_DeleteItemFromObjectCaseSensitive(in, "parent");
    assert_int_equal(map_obj("invoice.payment_failed", in, &ev), 0);
    assert_string_equal(ev.subscription_id, "");
    cJSON *d = data_of(&ev, "invoice.payment_failed");
    assert_dabsent(d, "subscription_id");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);

    /* No customer_email: left out. */
    in = invoice_paid();
    cJSON_DeleteItemFromObjectCaseSensitive(in, "customer_email");
    assert_int_equal(map_obj("invoice.payment_failed", in, &ev), 0);
    assert_string_equal(ev.email, "");
    rv_prov_event_free(&ev);
}

static void test_invoice_price_shapes(void **state) {
    static const struct {
        const char *price, *tier;
    } cases[] = {
        {PRICE_BASIC, "basic"},
        {PRICE_PRO, "pro"},
        {PRICE_ENT, "enterprise"},
        {"price_not_ours", "unknown"},
    };
    rv_prov_event_t ev;
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        /* Newer: lines.data[0].pricing.price_details.price. */
        cJSON *in = invoice_paid();
        cJSON *pricing = cJSON_GetObjectItemCaseSensitive(item0(in, "lines"), "pricing");
        cJSON *pd = cJSON_CreateObject();
        cJSON_AddStringToObject(pd, "price", cases[i].price);
        cJSON_AddStringToObject(pd, "product", "prod_QXg1hqf4jFNsqG");
        set(pricing, "price_details", pd);
        assert_int_equal(map_obj("invoice.payment_succeeded", in, &ev), 0);
        assert_string_equal(ev.tier, cases[i].tier);
        cJSON *d = data_of(&ev, "invoice.payment_succeeded");
        assert_dstr(d, "tier", cases[i].tier);
        cJSON_Delete(d);
        rv_prov_event_free(&ev);

        /* Older: lines.data[0].price.id. */
        in = invoice_paid();
        cJSON *price = cJSON_CreateObject();
        cJSON_AddStringToObject(price, "id", cases[i].price);
        cJSON_AddStringToObject(price, "object", "price");
        set(item0(in, "lines"), "price", price);
        assert_int_equal(map_obj("invoice.payment_succeeded", in, &ev), 0);
        assert_string_equal(ev.tier, cases[i].tier);
        rv_prov_event_free(&ev);

        /* Oldest: lines.data[0].plan.id. */
        in = invoice_paid();
        cJSON *plan = cJSON_CreateObject();
        cJSON_AddStringToObject(plan, "id", cases[i].price);
        cJSON_AddStringToObject(plan, "object", "plan");
        set(item0(in, "lines"), "plan", plan);
        assert_int_equal(map_obj("invoice.payment_failed", in, &ev), 0);
        assert_string_equal(ev.tier, cases[i].tier);
        rv_prov_event_free(&ev);
    }

    /* No price on the line: the subscription's metadata as the invoice carries it, in the newer
     * (parent.subscription_details) and the older (subscription_details) place. */
    cJSON *in = invoice_paid();
    cJSON *details = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(in, "parent"), "subscription_details");
    cJSON *md = cJSON_CreateObject();
    cJSON_AddStringToObject(md, "tier", "basic");
    set(details, "metadata", md);
    assert_int_equal(map_obj("invoice.payment_succeeded", in, &ev), 0);
    assert_string_equal(ev.tier, "basic");
    rv_prov_event_free(&ev);

    in = invoice_paid();
    cJSON_DeleteItemFromObjectCaseSensitive(in, "parent");
    cJSON *sd = cJSON_CreateObject();
    md = cJSON_AddObjectToObject(sd, "metadata");
    cJSON_AddStringToObject(md, "tier", "enterprise");
    set(in, "subscription_details", sd);
    assert_int_equal(map_obj("invoice.payment_succeeded", in, &ev), 0);
    assert_string_equal(ev.tier, "enterprise");
    rv_prov_event_free(&ev);
}

/* --- ignored and malformed --- */

static void test_ignored_types(void **state) {
    rv_prov_event_t ev;
    /* Stripe's example event as it is: plan.created. */
    cJSON *e = load_fixture("event");
    char *s = cJSON_PrintUnformatted(e);
    cJSON_Delete(e);
    assert_int_equal(map_str(s, &ev), RV_EIGNORED);
    free(s);
    assert_null(ev.type);
    assert_null(ev.data_json);
    assert_string_equal(ev.event_id, "evt_1Pgc76B7WZ01zgkWwyRHS12y");
    assert_string_equal(ev.stripe_type, "plan.created");
    rv_prov_event_free(&ev);

    const char *types[] = {"customer.created",
                           "invoice.paid",
                           "checkout.session.expired",
                           "customer.subscription.trial_will_end",
                           "invoice.payment_succeeded.x",
                           "customer.subscription"};
    for (size_t i = 0; i < RV_ARRAY_LEN(types); i++) {
        assert_int_equal(map_obj(types[i], load_fixture("subscription"), &ev), RV_EIGNORED);
        assert_null(ev.type);
        assert_null(ev.data_json);
        assert_string_equal(ev.stripe_type, types[i]);
        rv_prov_event_free(&ev);
    }
}

static void expect_payload(const char *json) {
    rv_prov_event_t ev;
    int rc = map_str(json, &ev);
    if (rc != RV_EPAYLOAD) fail_msg("expected RV_EPAYLOAD, got %d for %s", rc, json);
    assert_null(ev.type);
    assert_null(ev.data_json);
    rv_prov_event_free(&ev);
}

#define OBJ                                                                                        \
    "{\"object\":\"subscription\",\"id\":\"sub_1\",\"customer\":\"cus_1\",\"status\":\"active\"}"
#define TYPE "\"type\":\"customer.subscription.updated\""

static void test_malformed(void **state) {
    const char *bad[] = {
        "not json",
        "{",
        "[]",
        "null",
        "\"evt_1\"",
        "42",
        "[{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}]",
        /* missing or mistyped id */
        "{" TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":7," TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":null," TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"\"," TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"evt 1\"," TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"evt\\n1\"," TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}",
        /* missing or mistyped type */
        "{\"id\":\"evt_1\",\"created\":1,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"evt_1\",\"type\":[],\"created\":1,\"data\":{\"object\":" OBJ "}}",
        /* missing or mistyped created */
        "{\"id\":\"evt_1\"," TYPE ",\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":\"1700000000\",\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1.5,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":-1,\"data\":{\"object\":" OBJ "}}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1e300,\"data\":{\"object\":" OBJ "}}",
        /* missing or mistyped data.object */
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":" OBJ "}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":[" OBJ "]}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":{}}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":{\"object\":[]}}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":{\"object\":\"sub_1\"}}",
        "{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":{\"object\":null}}",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) expect_payload(bad[i]);

    /* The same envelope, well formed, is accepted: the cases above fail for their defect. */
    rv_prov_event_t ev;
    const char *good = "{\"id\":\"evt_1\"," TYPE ",\"created\":1,\"data\":{\"object\":" OBJ "}}";
    assert_int_equal(map_str(good, &ev), 0);
    assert_string_equal(ev.subscription_id, "sub_1");
    rv_prov_event_free(&ev);

    /* Empty and NULL input; a length that cuts the text short. */
    assert_int_equal(rv_provision_map("", 0, &prices, &ev), RV_EPAYLOAD);
    rv_prov_event_free(&ev);
    assert_int_equal(rv_provision_map(NULL, 5, &prices, &ev), RV_EPAYLOAD);
    rv_prov_event_free(&ev);
    assert_int_equal(rv_provision_map(good, strlen(good) - 1, &prices, &ev), RV_EPAYLOAD);
    rv_prov_event_free(&ev);
}

/* An id of exactly the field's capacity fits; one more character is refused, not truncated. */
static void test_overlong(void **state) {
    rv_prov_event_t ev;
    char id[300];
    for (size_t n = 255; n <= 256; n++) {
        memset(id, 'a', n);
        memcpy(id, "evt_", 4);
        id[n] = '\0';
        cJSON *e = load_fixture("event");
        cJSON_ReplaceItemInObjectCaseSensitive(e, "id", cJSON_CreateString(id));
        char *s = cJSON_PrintUnformatted(e);
        cJSON_Delete(e);
        int rc = map_str(s, &ev);
        free(s);
        if (n == 255) {
            assert_int_equal(rc, RV_EIGNORED);
            assert_string_equal(ev.event_id, id);
        } else {
            assert_int_equal(rc, RV_EPAYLOAD);
            assert_string_equal(ev.event_id, "");
        }
        rv_prov_event_free(&ev);
    }

    /* Over-long customer id, subscription id and email are malformed content of an event that
     * is otherwise Stripe's: refused, with the event's identity kept. */
    memset(id, 'c', 256);
    id[256] = '\0';
    cJSON *sub = load_fixture("subscription");
    set(sub, "customer", cJSON_CreateString(id));
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), RV_EMALFORMED);
    assert_null(ev.data_json);
    assert_string_equal(ev.customer_id, "");
    assert_string_equal(ev.event_id, "evt_test_provision_1");
    rv_prov_event_free(&ev);

    cJSON *in = invoice_paid();
    set(in, "subscription", cJSON_CreateString(id));
    assert_int_equal(map_obj("invoice.payment_succeeded", in, &ev), RV_EMALFORMED);
    rv_prov_event_free(&ev);

    char email[400];
    memset(email, 'e', sizeof email - 1);
    email[sizeof email - 1] = '\0';
    memcpy(email + 300, "@example.com", 12);
    in = invoice_paid();
    set(in, "customer_email", cJSON_CreateString(email));
    assert_int_equal(map_obj("invoice.payment_failed", in, &ev), RV_EMALFORMED);
    rv_prov_event_free(&ev);

    /* An over-long type is refused before it is compared. */
    char type[200];
    memset(type, 't', sizeof type - 1);
    type[sizeof type - 1] = '\0';
    assert_int_equal(map_obj(type, load_fixture("subscription"), &ev), RV_EPAYLOAD);
    rv_prov_event_free(&ev);
}

/* --- signed but malformed content --- */

/* A reason is one printable ASCII sentence that names the defect and never quotes the input. */
static void check_reason(const rv_prov_event_t *ev, const char *want) {
    if (ev->reason[0] == '\0') fail_msg("no reason given");
    for (const char *p = ev->reason; *p; p++) {
        if (*p < 0x20 || *p > 0x7e) fail_msg("reason \"%s\" is not printable ASCII", ev->reason);
    }
    if (strstr(ev->reason, "FLUSHALL") != NULL) fail_msg("reason quotes the input: %s", ev->reason);
    if (strstr(ev->reason, want) == NULL) {
        fail_msg("reason \"%s\" does not mention \"%s\"", ev->reason, want);
    }
}

/* Map obj (consumed) as an event of type and require RV_EMALFORMED: nothing to enqueue, the
 * event's identity kept for the dead letter, and a reason that mentions want. */
static void expect_malformed(const char *type, cJSON *obj, const char *want) {
    rv_prov_event_t ev;
    int rc = map_obj(type, obj, &ev);
    if (rc != RV_EMALFORMED) fail_msg("%s: expected RV_EMALFORMED (%s), got %d", type, want, rc);
    assert_null(ev.type);
    assert_null(ev.data_json);
    assert_string_equal(ev.event_id, "evt_test_provision_1");
    assert_string_equal(ev.stripe_type, type);
    assert_string_equal(ev.customer_id, "");
    assert_string_equal(ev.subscription_id, "");
    assert_string_equal(ev.email, "");
    check_reason(&ev, want);
    rv_prov_event_free(&ev);
}

static void expect_maps(const char *type, cJSON *obj) {
    rv_prov_event_t ev;
    int rc = map_obj(type, obj, &ev);
    if (rc != 0) fail_msg("%s: expected 0, got %d (%s)", type, rc, ev.reason);
    assert_non_null(ev.data_json);
    assert_string_equal(ev.reason, "");
    rv_prov_event_free(&ev);
}

/* Set o.<k1>.<k2> (k2 may be NULL) to the string v, creating the object k1 if needed. */
static void set_path(cJSON *o, const char *k1, const char *k2, const char *v) {
    if (k2 == NULL) {
        set(o, k1, cJSON_CreateString(v));
        return;
    }
    cJSON *inner = cJSON_GetObjectItemCaseSensitive(o, k1);
    if (!cJSON_IsObject(inner)) {
        inner = cJSON_CreateObject();
        set(o, k1, inner);
    }
    set(inner, k2, cJSON_CreateString(v));
}

static void test_malformed_ids(void **state) {
    char longid[300];
    memset(longid, 'a', 256);
    memcpy(longid, "cus_", 4);
    longid[256] = '\0';
    const char *bad[] = {
        "cus\r\nFLUSHALL",
        "cus 1",
        "cus_\xC3\xBC",
        "cus_\xE2\x80\x8B",
        "cus-1",
        "cus:1",
        "cus*",
        "cus_1\t",
        "\x7f",
        "cus_\xff",
        longid,
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        const char *b = bad[i];
        /* Customer ids: as a string and expanded, in every kind of event. */
        cJSON *sub = load_fixture("subscription");
        set(sub, "customer", cJSON_CreateString(b));
        expect_malformed("customer.subscription.updated", sub, "customer id");
        sub = load_fixture("subscription");
        cJSON *cus = load_fixture("customer");
        set(cus, "id", cJSON_CreateString(b));
        set(sub, "customer", cus);
        expect_malformed("customer.subscription.deleted", sub, "customer id");
        cJSON *cs = checkout_subscription();
        set(cs, "customer", cJSON_CreateString(b));
        expect_malformed("checkout.session.completed", cs, "customer id");
        cJSON *in = invoice_paid();
        set(in, "customer", cJSON_CreateString(b));
        expect_malformed("invoice.payment_failed", in, "customer id");

        /* Subscription ids: the subscription's own, a checkout's, and an invoice's in the
         * older (invoice.subscription) and newer (parent.subscription_details) place. */
        sub = load_fixture("subscription");
        set(sub, "id", cJSON_CreateString(b));
        expect_malformed("customer.subscription.created", sub, "subscription id");
        cs = checkout_subscription();
        set(cs, "subscription", cJSON_CreateString(b));
        expect_malformed("checkout.session.completed", cs, "subscription id");
        in = invoice_paid();
        set(in, "subscription", cJSON_CreateString(b));
        expect_malformed("invoice.payment_succeeded", in, "subscription id");
        in = invoice_paid();
        cJSON *details = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(in, "parent"), "subscription_details");
        set(details, "subscription", cJSON_CreateString(b));
        expect_malformed("invoice.payment_succeeded", in, "subscription id");

        /* Ids that only go into data are held to the same shape. */
        in = invoice_paid();
        set(in, "id", cJSON_CreateString(b));
        expect_malformed("invoice.payment_succeeded", in, "invoice id");
        cs = checkout_subscription();
        set(cs, "id", cJSON_CreateString(b));
        expect_malformed("checkout.session.completed", cs, "checkout session id");
    }

    /* The limits of the shape are accepted: 255 characters, every class of character. */
    longid[255] = '\0';
    cJSON *sub = load_fixture("subscription");
    set(sub, "customer", cJSON_CreateString(longid));
    set(sub, "id", cJSON_CreateString("sub_AZaz09_"));
    rv_prov_event_t ev;
    assert_int_equal(map_obj("customer.subscription.updated", sub, &ev), 0);
    assert_string_equal(ev.customer_id, longid);
    assert_string_equal(ev.subscription_id, "sub_AZaz09_");
    rv_prov_event_free(&ev);
    cJSON *in = invoice_paid();
    set(in, "customer", cJSON_CreateString("c"));
    expect_maps("invoice.payment_failed", in);
}

static void test_malformed_utf8(void **state) {
    static const char *const bad[] = {
        "\xC0\xAF",                 /* overlong '/' in two bytes */
        "\xC1\xBF",                 /* overlong in two bytes */
        "\xE0\x80\xAF",             /* overlong '/' in three bytes */
        "\xE0\x9F\xBF",             /* overlong U+07FF */
        "\xF0\x80\x80\xAF",         /* overlong '/' in four bytes */
        "\xF0\x8F\xBF\xBF",         /* overlong U+FFFF */
        "\xED\xA0\x80",             /* high surrogate U+D800 */
        "\xED\xBF\xBF",             /* low surrogate U+DFFF */
        "\xED\xA0\xBD\xED\xB8\x80", /* a surrogate pair in CESU-8 */
        "\xF4\x90\x80\x80",         /* beyond U+10FFFF */
        "\xF5\x80\x80\x80",         /* beyond U+10FFFF */
        "\xE2\x82",                 /* truncated three-byte sequence at the end */
        "\xE2\x82x",                /* truncated three-byte sequence before ASCII */
        "\xF0\x9F\x98",             /* truncated four-byte sequence */
        "\xC3",                     /* truncated two-byte sequence */
        "\x80",                     /* lone continuation byte */
        "\xBF\xBF",                 /* lone continuation bytes */
        "\xFE",                     /* never in UTF-8 */
        "\xFF",                     /* never in UTF-8 */
    };
    char email[64];
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        /* In the middle and at the end of the local part. */
        for (int at_end = 0; at_end < 2; at_end++) {
            snprintf(email, sizeof email, "a%s%s@example.com", bad[i], at_end ? "" : "b");
            cJSON *cs = checkout_subscription();
            set(cs, "customer_email", cJSON_CreateString(email));
            expect_malformed("checkout.session.completed", cs, "email is not valid UTF-8");
        }
        snprintf(email, sizeof email, "x@example.com%s", bad[i]);
        /* Newer place of a checkout's email, an invoice's, an expanded customer's. */
        cJSON *cs = checkout_subscription();
        set_path(cs, "customer_details", "email", email);
        expect_malformed("checkout.session.completed", cs, "email");
        cJSON *in = invoice_paid();
        set(in, "customer_email", cJSON_CreateString(email));
        expect_malformed("invoice.payment_succeeded", in, "email");
        cJSON *sub = load_fixture("subscription");
        cJSON *cus = load_fixture("customer");
        set(cus, "email", cJSON_CreateString(email));
        set(sub, "customer", cus);
        expect_malformed("customer.subscription.created", sub, "email");
        /* Status and currency go into data too. */
        sub = load_fixture("subscription");
        set(sub, "status", cJSON_CreateString(email));
        expect_malformed("customer.subscription.updated", sub, "status");
        in = invoice_paid();
        set(in, "currency", cJSON_CreateString(email));
        expect_malformed("invoice.payment_failed", in, "currency");
    }

    /* Well-formed UTF-8 of every length is kept as it is. */
    static const char *const good[] = {
        "j\xC3\xB6rg@example.com", /* two bytes */
        "\xE7\x94\xA8\xE6\x88\xB7@\xE4\xBE\x8B\xE5\xAD\x90.\xE5\xB9\xBF\xE5\x91\x8A", /* three */
        "\xF0\x9F\x98\x80@example.com",                                               /* four */
        "\xF4\x8F\xBF\xBF\xEF\xBF\xBD\xED\x9F\xBF\xEE\x80\x80@x.y", /* the edges */
        "a\\u0000b@example.com", /* a backslash: "\\u0000" in the JSON text, not a NUL */
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(good); i++) {
        cJSON *cs = checkout_subscription();
        set(cs, "customer_email", cJSON_CreateString(good[i]));
        rv_prov_event_t ev;
        assert_int_equal(map_obj("checkout.session.completed", cs, &ev), 0);
        assert_string_equal(ev.email, good[i]);
        cJSON *d = data_of(&ev, "checkout.session.completed");
        assert_dstr(d, "email", good[i]);
        cJSON_Delete(d);
        rv_prov_event_free(&ev);
    }
}

static void test_malformed_controls(void **state) {
    static const char *const bad[] = {
        "\r\n", "\n", "\t", "\x01", "\x1b[2J", "\x7f", "\xC2\x80", "\xC2\x85", "\xC2\x9F",
    };
    char text[64];
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        snprintf(text, sizeof text, "a%sb@example.com", bad[i]);
        cJSON *cs = checkout_subscription();
        set(cs, "customer_email", cJSON_CreateString(text));
        expect_malformed("checkout.session.completed", cs, "email contains a control character");
        snprintf(text, sizeof text, "paid%s", bad[i]);
        cs = checkout_subscription();
        set(cs, "payment_status", cJSON_CreateString(text));
        expect_malformed("checkout.session.completed", cs, "status");
        cJSON *in = invoice_paid();
        set(in, "status", cJSON_CreateString(text));
        expect_malformed("invoice.payment_failed", in, "status");
    }
    /* Just past the C1 range, and a no-break space, are text. */
    cJSON *cs = checkout_subscription();
    set(cs, "customer_email",
        cJSON_CreateString("a\xC2\xA0"
                           "b@example.com"));
    expect_maps("checkout.session.completed", cs);
}

/* An escaped NUL (\u0000) would silently cut a C string short: the event is refused instead. */
static void test_malformed_escaped_nul(void **state) {
    cJSON *cs = checkout_subscription();
    set(cs, "customer_email", cJSON_CreateString("NULHERE@example.com"));
    char *s = make_event("checkout.session.completed", cs);
    char *p = strstr(s, "NULHERE");
    assert_non_null(p);
    memcpy(p, "a\\u0000", 7);
    rv_prov_event_t ev;
    assert_int_equal(map_str(s, &ev), RV_EMALFORMED);
    assert_string_equal(ev.event_id, "evt_test_provision_1");
    check_reason(&ev, "NUL");
    rv_prov_event_free(&ev);
    memcpy(p, "a\\U0000", 7);
    assert_int_equal(map_str(s, &ev), RV_EPAYLOAD); /* not a JSON escape at all */
    rv_prov_event_free(&ev);
    free(s);
}

static void test_checkout_without_customer(void **state) {
    /* Null, absent, empty, an expanded object without an id, a number. */
    for (int i = 0; i < 5; i++) {
        cJSON *cs = checkout_subscription();
        switch (i) {
        case 0: set(cs, "customer", cJSON_CreateNull()); break;
        case 1: cJSON_DeleteItemFromObjectCaseSensitive(cs, "customer"); break;
        case 2: set(cs, "customer", cJSON_CreateString("")); break;
        case 3: set(cs, "customer", cJSON_CreateObject()); break;
        default: set(cs, "customer", cJSON_CreateNumber(42)); break;
        }
        expect_malformed("checkout.session.completed", cs, "without a customer");
    }
    /* A one-off payment without a customer is not this product's, as before. */
    rv_prov_event_t ev;
    cJSON *cs = checkout_subscription();
    set(cs, "mode", cJSON_CreateString("payment"));
    set(cs, "customer", cJSON_CreateNull());
    assert_int_equal(map_obj("checkout.session.completed", cs, &ev), RV_EIGNORED);
    assert_string_equal(ev.reason, "");
    rv_prov_event_free(&ev);

    /* A subscription event must name its customer and itself. */
    cJSON *sub = load_fixture("subscription");
    set(sub, "customer", cJSON_CreateNull());
    expect_malformed("customer.subscription.deleted", sub, "without a customer");
    sub = load_fixture("subscription");
    cJSON_DeleteItemFromObjectCaseSensitive(sub, "id");
    expect_malformed("customer.subscription.updated", sub, "without an id");
    /* An invoice may have no customer (Stripe allows it); its entry says so with "". */
    cJSON *in = invoice_paid();
    set(in, "customer", cJSON_CreateNull());
    assert_int_equal(map_obj("invoice.payment_failed", in, &ev), 0);
    assert_string_equal(ev.customer_id, "");
    rv_prov_event_free(&ev);
}

/* Bodies that are not Stripe events say why; what is valid of their identity is kept. */
static void test_payload_reasons(void **state) {
    static const struct {
        const char *json, *id, *type, *reason;
    } cases[] = {
        {"not json", "", "", "not JSON"},
        {"[1]", "", "", "not a JSON object"},
        {"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":1}", "evt_1", "invoice.paid",
         "data.object"},
        {"{\"id\":\"evt 1\",\"type\":\"invoice.paid\",\"created\":1,\"data\":{\"object\":{}}}", "",
         "invoice.paid", "id"},
        {"{\"id\":\"evt_1\",\"type\":\"a b\",\"created\":1,\"data\":{\"object\":{}}}", "evt_1", "",
         "type"},
        {"{\"id\":\"evt_1\",\"type\":\"invoice.paid\",\"created\":-1,\"data\":{\"object\":{}}}",
         "evt_1", "invoice.paid", "created"},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        rv_prov_event_t ev;
        assert_int_equal(map_str(cases[i].json, &ev), RV_EPAYLOAD);
        assert_string_equal(ev.event_id, cases[i].id);
        assert_string_equal(ev.stripe_type, cases[i].type);
        check_reason(&ev, cases[i].reason);
        rv_prov_event_free(&ev);
    }
    /* Valid and ignored events have no reason. */
    rv_prov_event_t ev;
    assert_int_equal(map_obj("customer.subscription.created", load_fixture("subscription"), &ev),
                     0);
    assert_string_equal(ev.reason, "");
    rv_prov_event_free(&ev);
    /* One JSON value and nothing after it but white space: a body with more is not JSON. */
    char *good = make_event("customer.subscription.created", load_fixture("subscription"));
    static const char *const tails[] = {"xyz", "{}", ",", "\"x\"", " \n}"};
    for (size_t i = 0; i < RV_ARRAY_LEN(tails); i++) {
        char *bad = malloc(strlen(good) + strlen(tails[i]) + 1);
        assert_non_null(bad);
        strcpy(bad, good);
        strcat(bad, tails[i]);
        assert_int_equal(map_str(bad, &ev), RV_EPAYLOAD);
        assert_string_equal(ev.event_id, "");
        check_reason(&ev, "not JSON");
        rv_prov_event_free(&ev);
        free(bad);
    }
    char *spaced = malloc(strlen(good) + 8);
    assert_non_null(spaced);
    strcpy(spaced, good);
    strcat(spaced, " \r\n\t\n");
    assert_int_equal(map_str(spaced, &ev), 0);
    rv_prov_event_free(&ev);
    free(spaced);
    free(good);
    assert_int_equal(map_obj("plan.created", load_fixture("subscription"), &ev), RV_EIGNORED);
    assert_string_equal(ev.reason, "");
    rv_prov_event_free(&ev);
}

/* Objects read from Stripe outside an event: no event id, created is the time of the read. */
static void test_map_object(void **state) {
    rv_prov_event_t ev;
    const int64_t read_at = 1760000000;
    cJSON *cs = checkout_subscription();
    char *s = cJSON_PrintUnformatted(cs);
    cJSON_Delete(cs);
    assert_int_equal(
        rv_provision_map_object(s, strlen(s), "checkout.session.completed", read_at, &prices, &ev),
        0);
    free(s);
    assert_string_equal(ev.type, "user.provision");
    assert_string_equal(ev.event_id, "");
    assert_string_equal(ev.stripe_type, "checkout.session.completed");
    assert_int_equal(ev.created, read_at);
    assert_string_equal(ev.session_id, FX_CHECKOUT);
    assert_string_equal(ev.customer_id, "cus_checkout_1");
    assert_string_equal(ev.subscription_id, "sub_checkout_1");
    assert_string_equal(ev.tier, "pro");
    assert_int_equal(ev.fulfills, 1);
    assert_int_equal(ev.has_state, 0);
    cJSON *d = data_check(&ev, "checkout.session.completed", "", (double)read_at);
    assert_dstr(d, "payment_status", "paid");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);

    cJSON *sub = load_fixture("subscription");
    s = cJSON_PrintUnformatted(sub);
    cJSON_Delete(sub);
    assert_int_equal(rv_provision_map_object(s, strlen(s), "customer.subscription.updated",
                                             read_at + 1, &prices, &ev),
                     0);
    assert_string_equal(ev.type, "subscription.updated");
    assert_string_equal(ev.event_id, "");
    assert_string_equal(ev.stripe_type, "customer.subscription.updated");
    assert_int_equal(ev.created, read_at + 1);
    assert_string_equal(ev.customer_id, FX_CUSTOMER);
    assert_string_equal(ev.subscription_id, FX_SUB);
    assert_string_equal(ev.tier, "pro");
    assert_string_equal(ev.status, "active");
    assert_int_equal(ev.has_state, 1);
    assert_int_equal(ev.has_period_end, 1);
    assert_int_equal(ev.period_end, FX_ITEM_PERIOD_END);
    assert_int_equal(ev.cancel_at_period_end, 1);
    assert_string_equal(ev.session_id, "");
    d = data_check(&ev, "customer.subscription.updated", "", (double)(read_at + 1));
    assert_dstr(d, "status", "active");
    cJSON_Delete(d);
    rv_prov_event_free(&ev);

    /* The type says what the object is; without it nothing can be mapped. */
    assert_int_equal(rv_provision_map_object(s, strlen(s), NULL, read_at, &prices, &ev), RV_EINVAL);
    rv_prov_event_free(&ev);
    free(s);
    /* An event envelope handed over as the object is no subscription: it names no customer. */
    s = make_event("customer.subscription.updated", load_fixture("subscription"));
    assert_int_equal(rv_provision_map_object(s, strlen(s), "customer.subscription.updated", read_at,
                                             &prices, &ev),
                     RV_EMALFORMED);
    assert_null(ev.data_json);
    rv_prov_event_free(&ev);
    free(s);

    /* The same checks as for events: a session read that is not a subscription's is ignored. */
    cs = checkout_subscription();
    set(cs, "mode", cJSON_CreateString("payment"));
    s = cJSON_PrintUnformatted(cs);
    cJSON_Delete(cs);
    assert_int_equal(
        rv_provision_map_object(s, strlen(s), "checkout.session.completed", read_at, &prices, &ev),
        RV_EIGNORED);
    assert_null(ev.data_json);
    rv_prov_event_free(&ev);
    free(s);
}

static void test_livemode_and_free(void **state) {
    rv_prov_event_t ev;
    cJSON *e = load_fixture("event");
    cJSON_ReplaceItemInObjectCaseSensitive(e, "type",
                                           cJSON_CreateString("customer.subscription.created"));
    cJSON_ReplaceItemInObjectCaseSensitive(e, "livemode", cJSON_CreateTrue());
    cJSON_ReplaceItemInObjectCaseSensitive(cJSON_GetObjectItemCaseSensitive(e, "data"), "object",
                                           load_fixture("subscription"));
    char *s = cJSON_PrintUnformatted(e);
    cJSON_Delete(e);
    assert_int_equal(map_str(s, &ev), 0);
    free(s);
    assert_int_equal(ev.livemode, 1);
    assert_int_equal(ev.created, 1234567890);
    cJSON *d = cJSON_Parse(ev.data_json);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(d, "livemode")));
    assert_dnum(d, "created", 1234567890);
    cJSON_Delete(d);
    rv_prov_event_free(&ev);
    rv_prov_event_free(&ev);

    rv_prov_event_t zero;
    memset(&zero, 0, sizeof zero);
    rv_prov_event_free(&zero);
    rv_prov_event_free(NULL);
    assert_null(zero.data_json);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checkout_completed),
        cmocka_unit_test(test_checkout_email_shapes),
        cmocka_unit_test(test_checkout_expanded_refs),
        cmocka_unit_test(test_checkout_metadata_tier),
        cmocka_unit_test(test_checkout_not_subscription),
        cmocka_unit_test(test_checkout_fulfills),
        cmocka_unit_test(test_checkout_async_payment),
        cmocka_unit_test(test_subscription_events),
        cmocka_unit_test(test_subscription_period_end_shapes),
        cmocka_unit_test(test_subscription_state),
        cmocka_unit_test(test_subscription_price_shapes),
        cmocka_unit_test(test_subscription_expanded_customer),
        cmocka_unit_test(test_invoice_events),
        cmocka_unit_test(test_invoice_subscription_shapes),
        cmocka_unit_test(test_invoice_price_shapes),
        cmocka_unit_test(test_ignored_types),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_overlong),
        cmocka_unit_test(test_malformed_ids),
        cmocka_unit_test(test_malformed_utf8),
        cmocka_unit_test(test_malformed_controls),
        cmocka_unit_test(test_malformed_escaped_nul),
        cmocka_unit_test(test_checkout_without_customer),
        cmocka_unit_test(test_payload_reasons),
        cmocka_unit_test(test_map_object),
        cmocka_unit_test(test_livemode_and_free),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
