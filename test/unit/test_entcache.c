/* The entitlement look-up cache: answers, invalidation by key and by customer, the epoch rule,
 * expiry, the bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "rivet/common.h"
#include "rivet/entcache.h"

#define CK(id) "rivet:customer:" id

static void expect_hit(rv_entcache_t *c, const char *key, uint64_t now, const char *cust,
                       const char *ent) {
    const char *gc = NULL, *ge = NULL;
    if (!rv_entcache_get(c, key, now, &gc, &ge)) fail_msg("no answer cached for %s", key);
    assert_string_equal(gc, cust);
    assert_string_equal(ge, ent);
}

static void expect_miss(rv_entcache_t *c, const char *key, uint64_t now) {
    const char *gc = NULL, *ge = NULL;
    if (rv_entcache_get(c, key, now, &gc, &ge)) fail_msg("%s is still cached", key);
}

static void test_answers_and_invalidation(void **state) {
    RV_UNUSED(state);
    rv_entcache_t *c = rv_entcache_new(100, 1000);
    assert_non_null(c);
    uint64_t e = rv_entcache_epoch(c);
    assert_int_equal(rv_entcache_put(c, e, CK("cus_A"), "cus_A", "{\"a\":1}", 0), 1);
    assert_int_equal(rv_entcache_put(c, e, "rivet:tg:user:7", "cus_A", "{\"a\":1}", 0), 1);
    assert_int_equal(rv_entcache_put(c, e, "rivet:email:a@x.io", "cus_A", "{\"a\":1}", 0), 1);
    assert_int_equal(rv_entcache_put(c, e, CK("cus_B"), "cus_B", "{\"b\":1}", 0), 1);
    assert_int_equal(rv_entcache_size(c), 4);
    expect_hit(c, "rivet:tg:user:7", 10, "cus_A", "{\"a\":1}");

    /* The index key alone: only that look-up goes. */
    rv_entcache_invalidate(c, "rivet:tg:user:7", strlen("rivet:tg:user:7"));
    expect_miss(c, "rivet:tg:user:7", 10);
    expect_hit(c, CK("cus_A"), 10, "cus_A", "{\"a\":1}");
    /* The customer: every look-up that found it, and nothing of another customer. */
    rv_entcache_invalidate(c, CK("cus_A"), strlen(CK("cus_A")));
    expect_miss(c, CK("cus_A"), 10);
    expect_miss(c, "rivet:email:a@x.io", 10);
    expect_hit(c, CK("cus_B"), 10, "cus_B", "{\"b\":1}");
    assert_int_equal(rv_entcache_size(c), 1);
    /* A key given with its length, not as a C string (as Redis's messages carry it). */
    rv_entcache_invalidate(c, CK("cus_Bxyz"), strlen(CK("cus_B")));
    expect_miss(c, CK("cus_B"), 10);
    assert_int_equal(rv_entcache_size(c), 0);
    rv_entcache_free(c);
}

/* An answer read while anything was invalidated is not kept: the invalidation may concern it
 * and may have arrived before it. */
static void test_epoch(void **state) {
    RV_UNUSED(state);
    rv_entcache_t *c = rv_entcache_new(100, 1000);
    uint64_t e = rv_entcache_epoch(c);
    rv_entcache_invalidate(c, CK("cus_Z"), strlen(CK("cus_Z")));
    assert_int_equal(rv_entcache_put(c, e, CK("cus_A"), "cus_A", "{}", 0), 0);
    expect_miss(c, CK("cus_A"), 0);
    e = rv_entcache_epoch(c);
    rv_entcache_clear(c);
    assert_int_equal(rv_entcache_put(c, e, CK("cus_A"), "cus_A", "{}", 0), 0);
    e = rv_entcache_epoch(c);
    assert_int_equal(rv_entcache_put(c, e, CK("cus_A"), "cus_A", "{}", 0), 1);
    /* A newer answer for the same key replaces the old one. */
    assert_int_equal(rv_entcache_put(c, e, CK("cus_A"), "cus_A", "{\"n\":2}", 0), 1);
    expect_hit(c, CK("cus_A"), 0, "cus_A", "{\"n\":2}");
    assert_int_equal(rv_entcache_size(c), 1);
    rv_entcache_free(c);
}

static void test_expiry_and_bound(void **state) {
    RV_UNUSED(state);
    rv_entcache_t *c = rv_entcache_new(3, 100);
    uint64_t e = rv_entcache_epoch(c);
    assert_int_equal(rv_entcache_put(c, e, CK("cus_A"), "cus_A", "{}", 1000), 1);
    expect_hit(c, CK("cus_A"), 1099, "cus_A", "{}");
    expect_miss(c, CK("cus_A"), 1100);
    assert_int_equal(rv_entcache_size(c), 0);
    char key[64], cus[32];
    for (int i = 0; i < 3; i++) {
        snprintf(cus, sizeof cus, "cus_%d", i);
        snprintf(key, sizeof key, "rivet:customer:%s", cus);
        assert_int_equal(rv_entcache_put(c, e, key, cus, "{}", 0), 1);
    }
    assert_int_equal(rv_entcache_size(c), 3);
    /* Full: the next answer starts afresh, and is kept. */
    assert_int_equal(rv_entcache_put(c, e, CK("cus_new"), "cus_new", "{}", 0), 1);
    assert_int_equal(rv_entcache_size(c), 1);
    expect_hit(c, CK("cus_new"), 0, "cus_new", "{}");
    assert_int_equal(rv_entcache_epoch(c), e);
    rv_entcache_free(c);
    assert_null(rv_entcache_new(0, 100));
    rv_entcache_free(NULL);
}

/* Many customers with several look-ups each, dropped in every order: the tables stay whole. */
static void test_many(void **state) {
    RV_UNUSED(state);
    rv_entcache_t *c = rv_entcache_new(5000, 1000);
    uint64_t e = rv_entcache_epoch(c);
    char key[64], cus[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(cus, sizeof cus, "cus_%d", i);
        snprintf(key, sizeof key, "rivet:customer:%s", cus);
        assert_int_equal(rv_entcache_put(c, e, key, cus, "{}", 0), 1);
        snprintf(key, sizeof key, "rivet:tg:user:%d", i);
        assert_int_equal(rv_entcache_put(c, e, key, cus, "{}", 0), 1);
        snprintf(key, sizeof key, "rivet:email:%d@x.io", i);
        assert_int_equal(rv_entcache_put(c, e, key, cus, "{}", 0), 1);
    }
    assert_int_equal(rv_entcache_size(c), 3000);
    for (int i = 0; i < 1000; i += 2) {
        snprintf(key, sizeof key, "rivet:tg:user:%d", i);
        rv_entcache_invalidate(c, key, strlen(key));
    }
    for (int i = 0; i < 1000; i += 3) {
        snprintf(key, sizeof key, "rivet:customer:cus_%d", i);
        rv_entcache_invalidate(c, key, strlen(key));
    }
    size_t want = 0;
    for (int i = 0; i < 1000; i++) want += i % 3 == 0 ? 0 : i % 2 == 0 ? 2 : 3;
    assert_int_equal(rv_entcache_size(c), want);
    snprintf(key, sizeof key, "rivet:email:%d@x.io", 7);
    expect_hit(c, key, 0, "cus_7", "{}");
    rv_entcache_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers_and_invalidation),
        cmocka_unit_test(test_epoch),
        cmocka_unit_test(test_expiry_and_bound),
        cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
