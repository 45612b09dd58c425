/* Unit tests for webhook_sig: Stripe-Signature parsing, HMAC verification, secret rotation,
 * timestamp tolerance and the bounds on header size and signature count. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <mbedtls/md.h>

#include "rivet/common.h"
#include "rivet/webhook_sig.h"

#define SECRET "whsec_test_7f3a9c2e51b84d06"
#define OTHER  "whsec_other_0b1c2d3e4f5a6b7c"
#define BODY   "{\"id\":\"evt_1\",\"object\":\"event\",\"type\":\"customer.subscription.updated\"}"
#define NOW    ((int64_t)1700000000)
#define TOL    ((int64_t)300)

/* Known answers computed outside this code base, with
 *   printf '%s' '1700000000.{"id":"evt_kat","object":"event","type":"invoice.payment_succeeded"}' \
 *     | openssl dgst -sha256 -hmac 'whsec_kat_0123456789abcdef'
 *   printf '%s' '1614556800.' | openssl dgst -sha256 -hmac 'whsec_empty'
 */
#define KAT_SECRET "whsec_kat_0123456789abcdef"
#define KAT_T      ((int64_t)1700000000)
#define KAT_BODY   "{\"id\":\"evt_kat\",\"object\":\"event\",\"type\":\"invoice.payment_succeeded\"}"
#define KAT_HEX    "a9015eb8c684528672f8cad9055d184def80508240be98b7db29be995fa3a631"
#define KAT2_HEX   "58da4a79aded99e9f048809ddc3746dc44fe816fbd7ed128e0a0ba6f4103d74e"

static const char *const one_secret[] = {SECRET};

static int verify_with(const char *header, const char *body, const char *const *secrets, size_t n,
                       int64_t now) {
    return rv_webhook_verify(header, strlen(header), body, strlen(body), secrets, n, now, TOL);
}

static int verify(const char *header, const char *body) {
    return verify_with(header, body, one_secret, 1, NOW);
}

/* The 64 hex digits of a correct v1 for (secret, t, body). */
static void good_v1(const char *secret, int64_t t, const char *body, char hex[65]) {
    char h[128];
    assert_int_equal(rv_webhook_sign(secret, t, body, strlen(body), h, sizeof h), 0);
    const char *v = strstr(h, ",v1=");
    assert_non_null(v);
    assert_int_equal(strlen(v + 4), 64);
    memcpy(hex, v + 4, 65);
}

/* The 64 hex digits of HMAC-SHA256(secret, tstr "." body) for an arbitrary t string, so tests
 * can check that the parser, and not a signature mismatch, refuses a malformed t. */
static void hmac_hex_t(const char *secret, const char *tstr, const char *body, char hex[65]) {
    char msg[512];
    int n = snprintf(msg, sizeof msg, "%s.%s", tstr, body);
    assert_true(n > 0 && (size_t)n < sizeof msg);
    unsigned char mac[32];
    assert_int_equal(mbedtls_md_hmac(mbedtls_md_info_from_type(MBEDTLS_MD_SHA256),
                                     (const unsigned char *)secret, strlen(secret),
                                     (const unsigned char *)msg, (size_t)n, mac),
                     0);
    for (size_t i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", mac[i]);
}

static void test_known_answer(void **state) {
    char h[128];
    assert_int_equal(rv_webhook_sign(KAT_SECRET, KAT_T, KAT_BODY, strlen(KAT_BODY), h, sizeof h),
                     0);
    assert_string_equal(h, "t=1700000000,v1=" KAT_HEX);

    const char *secrets[] = {KAT_SECRET};
    const char *hdr = "t=1700000000,v1=" KAT_HEX;
    assert_int_equal(verify_with(hdr, KAT_BODY, secrets, 1, KAT_T), 0);

    /* An empty body signs "<t>." alone. */
    assert_int_equal(rv_webhook_sign("whsec_empty", 1614556800, "", 0, h, sizeof h), 0);
    assert_string_equal(h, "t=1614556800,v1=" KAT2_HEX);
    const char *s2[] = {"whsec_empty"};
    assert_int_equal(rv_webhook_verify(h, strlen(h), "", 0, s2, 1, 1614556800, TOL), 0);
    assert_int_equal(rv_webhook_verify(h, strlen(h), NULL, 0, s2, 1, 1614556800, TOL), 0);
}

static void test_valid(void **state) {
    char h[128];
    assert_int_equal(rv_webhook_sign(SECRET, NOW, BODY, strlen(BODY), h, sizeof h), 0);
    assert_int_equal(verify(h, BODY), 0);
    /* A header length that excludes trailing bytes is honoured: only header_len bytes count. */
    char longer[160];
    snprintf(longer, sizeof longer, "%s,v1=junk", h);
    assert_int_equal(
        rv_webhook_verify(longer, strlen(h), BODY, strlen(BODY), one_secret, 1, NOW, TOL), 0);
}

static void test_two_v1_one_matches(void **state) {
    char hex[65], h[256];
    good_v1(SECRET, NOW, BODY, hex);
    char bad[65];
    good_v1(OTHER, NOW, BODY, bad);
    snprintf(h, sizeof h, "t=%lld,v1=%s,v1=%s", (long long)NOW, hex, bad);
    assert_int_equal(verify(h, BODY), 0);
    snprintf(h, sizeof h, "t=%lld,v1=%s,v1=%s", (long long)NOW, bad, hex);
    assert_int_equal(verify(h, BODY), 0);
    snprintf(h, sizeof h, "t=%lld,v1=%s,v1=%s", (long long)NOW, bad, bad);
    assert_int_equal(verify(h, BODY), RV_ESIG);
}

static void test_rotated_secrets(void **state) {
    char h[128];
    assert_int_equal(rv_webhook_sign(OTHER, NOW, BODY, strlen(BODY), h, sizeof h), 0);
    const char *both[] = {SECRET, OTHER};
    assert_int_equal(verify_with(h, BODY, both, 2, NOW), 0);
    const char *reversed[] = {OTHER, SECRET};
    assert_int_equal(verify_with(h, BODY, reversed, 2, NOW), 0);
    /* The old secret alone no longer verifies the new signature. */
    assert_int_equal(verify_with(h, BODY, one_secret, 1, NOW), RV_ESIG);
    /* NULL and empty entries are skipped, never used as keys. */
    const char *holes[] = {NULL, "", OTHER};
    assert_int_equal(verify_with(h, BODY, holes, 3, NOW), 0);
    assert_int_equal(verify_with(h, BODY, holes, 2, NOW), RV_ESIG);
    assert_int_equal(verify_with(h, BODY, holes, 0, NOW), RV_ESIG);
}

static void test_tolerance(void **state) {
    char h[128];
    const int64_t ts[] = {NOW - TOL, NOW + TOL, NOW - TOL - 1, NOW + TOL + 1};
    const int want[] = {0, 0, RV_ESTALE, RV_ESTALE};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(rv_webhook_sign(SECRET, ts[i], BODY, strlen(BODY), h, sizeof h), 0);
        assert_int_equal(verify(h, BODY), want[i]);
        /* Stale or not, a signature that does not match is RV_ESIG. */
        assert_int_equal(verify(h, BODY "x"), RV_ESIG);
    }
    /* Extreme values neither overflow nor pass. */
    assert_int_equal(rv_webhook_sign(SECRET, INT64_MAX, BODY, strlen(BODY), h, sizeof h), 0);
    assert_int_equal(verify_with(h, BODY, one_secret, 1, INT64_MIN), RV_ESTALE);
    assert_int_equal(rv_webhook_sign(SECRET, 0, BODY, strlen(BODY), h, sizeof h), 0);
    assert_int_equal(verify_with(h, BODY, one_secret, 1, INT64_MAX), RV_ESTALE);
    assert_int_equal(verify_with(h, BODY, one_secret, 1, 0), 0);
    /* A negative tolerance behaves as zero. */
    assert_int_equal(rv_webhook_sign(SECRET, NOW, BODY, strlen(BODY), h, sizeof h), 0);
    assert_int_equal(rv_webhook_verify(h, strlen(h), BODY, strlen(BODY), one_secret, 1, NOW, -5),
                     0);
    assert_int_equal(
        rv_webhook_verify(h, strlen(h), BODY, strlen(BODY), one_secret, 1, NOW + 1, -5), RV_ESTALE);
}

static void test_missing_t(void **state) {
    char hex[65], h[256];
    good_v1(SECRET, NOW, BODY, hex);
    snprintf(h, sizeof h, "v1=%s", hex);
    assert_int_equal(verify(h, BODY), RV_ESIG);
    snprintf(h, sizeof h, "t=,v1=%s", hex);
    assert_int_equal(verify(h, BODY), RV_ESIG);
    snprintf(h, sizeof h, "T=%lld,v1=%s", (long long)NOW, hex);
    assert_int_equal(verify(h, BODY), RV_ESIG);
}

static void test_repeated_t(void **state) {
    char hex[65], h[256];
    good_v1(SECRET, NOW, BODY, hex);
    snprintf(h, sizeof h, "t=%lld,v1=%s,t=%lld", (long long)NOW, hex, (long long)NOW);
    assert_int_equal(verify(h, BODY), RV_ESIG);
}

static void test_v0_only(void **state) {
    char hex[65], h[256];
    good_v1(SECRET, NOW, BODY, hex);
    /* A correct HMAC under the v0 scheme is still not trusted. */
    snprintf(h, sizeof h, "t=%lld,v0=%s", (long long)NOW, hex);
    assert_int_equal(verify(h, BODY), RV_ESIG);
    snprintf(h, sizeof h, "t=%lld,v2=%s,v0=%s", (long long)NOW, hex, hex);
    assert_int_equal(verify(h, BODY), RV_ESIG);
    /* Unknown schemes beside a good v1 are ignored. */
    snprintf(h, sizeof h, "v0=abc,t=%lld,v9=zz,v1=%s,foo", (long long)NOW, hex);
    assert_int_equal(verify(h, BODY), 0);
}

static void test_v1_malformed(void **state) {
    char hex[65], h[256], mod[80];
    good_v1(SECRET, NOW, BODY, hex);

    /* Non-hex: one digit replaced by 'g'. */
    memcpy(mod, hex, 65);
    mod[10] = 'g';
    snprintf(h, sizeof h, "t=%lld,v1=%s", (long long)NOW, mod);
    assert_int_equal(verify(h, BODY), RV_ESIG);

    /* Short: the first 62 digits. */
    memcpy(mod, hex, 62);
    mod[62] = '\0';
    snprintf(h, sizeof h, "t=%lld,v1=%s", (long long)NOW, mod);
    assert_int_equal(verify(h, BODY), RV_ESIG);

    /* Long: two extra digits. */
    snprintf(mod, sizeof mod, "%s00", hex);
    snprintf(h, sizeof h, "t=%lld,v1=%s", (long long)NOW, mod);
    assert_int_equal(verify(h, BODY), RV_ESIG);

    /* A malformed v1 beside a good one does not spoil the good one. */
    snprintf(h, sizeof h, "t=%lld,v1=%s,v1=%s", (long long)NOW, mod, hex);
    assert_int_equal(verify(h, BODY), 0);

    /* Empty v1. */
    snprintf(h, sizeof h, "t=%lld,v1=", (long long)NOW);
    assert_int_equal(verify(h, BODY), RV_ESIG);
}

/* Uppercase hex is rejected: Stripe sends lowercase and its libraries compare the lowercase
 * string, so the verifier accepts only that canonical form. */
static void test_uppercase_rejected(void **state) {
    char hex[65], h[256];
    good_v1(SECRET, NOW, BODY, hex);
    int changed = 0;
    for (size_t i = 0; i < 64; i++) {
        if (hex[i] >= 'a' && hex[i] <= 'f') {
            hex[i] = (char)(hex[i] - 'a' + 'A');
            changed = 1;
        }
    }
    assert_true(changed);
    snprintf(h, sizeof h, "t=%lld,v1=%s", (long long)NOW, hex);
    assert_int_equal(verify(h, BODY), RV_ESIG);
}

static void test_body_changed(void **state) {
    char h[128];
    assert_int_equal(rv_webhook_sign(SECRET, NOW, BODY, strlen(BODY), h, sizeof h), 0);
    char body[sizeof BODY];
    memcpy(body, BODY, sizeof BODY);
    for (size_t i = 0; i < sizeof BODY - 1; i += 7) {
        body[i] ^= 0x01;
        assert_int_equal(verify(h, body), RV_ESIG);
        body[i] ^= 0x01;
    }
    assert_int_equal(verify(h, body), 0);
    /* One byte shorter, one byte longer. */
    assert_int_equal(
        rv_webhook_verify(h, strlen(h), BODY, strlen(BODY) - 1, one_secret, 1, NOW, TOL), RV_ESIG);
    assert_int_equal(verify(h, BODY " "), RV_ESIG);
    /* The timestamp is part of what is signed. */
    char h2[128];
    snprintf(h2, sizeof h2, "t=%lld%s", (long long)(NOW + 1), strchr(h, ','));
    assert_int_equal(verify(h2, BODY), RV_ESIG);
}

/* An empty secret is known to everyone, so a header signed with it never verifies. */
static void test_empty_secret_never_used(void **state) {
    char hex[65], h[256];
    hmac_hex_t("", "1700000000", BODY, hex);
    snprintf(h, sizeof h, "t=1700000000,v1=%s", hex);
    const char *empty[] = {""};
    assert_int_equal(verify_with(h, BODY, empty, 1, NOW), RV_ESIG);
    const char *with_real[] = {"", SECRET};
    assert_int_equal(verify_with(h, BODY, with_real, 2, NOW), RV_ESIG);
}

/* A v1 that fails to decode must not match even if the bytes decoded before the failure happen
 * to agree with the HMAC: find a t whose HMAC ends in a zero byte, then spoil only the last
 * digit. */
static void test_undecodable_never_matches(void **state) {
    char hex[65], h[256], ts[24];
    int64_t t = NOW;
    for (; t < NOW + 100000; t++) {
        snprintf(ts, sizeof ts, "%lld", (long long)t);
        hmac_hex_t(SECRET, ts, BODY, hex);
        if (hex[62] == '0' && hex[63] == '0') break;
    }
    assert_true(t < NOW + 100000);
    /* Control: the intact signature verifies at that t. */
    snprintf(h, sizeof h, "t=%s,v1=%s", ts, hex);
    assert_int_equal(verify_with(h, BODY, one_secret, 1, t), 0);
    hex[63] = 'g';
    snprintf(h, sizeof h, "t=%s,v1=%s", ts, hex);
    assert_int_equal(verify_with(h, BODY, one_secret, 1, t), RV_ESIG);
}

static void test_secret_wrong(void **state) {
    char h[128];
    assert_int_equal(rv_webhook_sign(SECRET, NOW, BODY, strlen(BODY), h, sizeof h), 0);
    const char *wrong[] = {OTHER};
    assert_int_equal(verify_with(h, BODY, wrong, 1, NOW), RV_ESIG);
    const char *prefix[] = {"whsec_test_7f3a9c2e51b84d0"};
    assert_int_equal(verify_with(h, BODY, prefix, 1, NOW), RV_ESIG);
    assert_int_equal(rv_webhook_verify(h, strlen(h), BODY, strlen(BODY), NULL, 0, NOW, TOL),
                     RV_ESIG);
}

static void test_header_garbage(void **state) {
    const char *bad[] = {
        "", ",", ",,,", "garbage", "t", "t=", "v1", "====", "t==1,v1==", "\x01\x02\xff", " , , "};
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        assert_int_equal(verify(bad[i], BODY), RV_ESIG);
    }
    assert_int_equal(rv_webhook_verify(NULL, 0, BODY, strlen(BODY), one_secret, 1, NOW, TOL),
                     RV_ESIG);
}

static void test_t_not_numeric(void **state) {
    char hex[65], h[256];
    const char *ts[] = {"+1700000000", "-1700000000",          "1700000000x",
                        "0x6553f100",  "17000 00000",          "1.7e9",
                        "abc",         "99999999999999999999", "9223372036854775808"};
    /* The helper itself is right: a well-formed t signed through it verifies. */
    hmac_hex_t(SECRET, "1700000000", BODY, hex);
    snprintf(h, sizeof h, "t=1700000000,v1=%s", hex);
    assert_int_equal(verify(h, BODY), 0);
    for (size_t i = 0; i < RV_ARRAY_LEN(ts); i++) {
        /* Sign the exact string so only the parse of t can refuse it. */
        hmac_hex_t(SECRET, ts[i], BODY, hex);
        snprintf(h, sizeof h, "t=%s,v1=%s", ts[i], hex);
        assert_int_equal(verify(h, BODY), RV_ESIG);
    }
    /* The largest int64 still parses (and is then merely stale). */
    assert_int_equal(rv_webhook_sign(SECRET, INT64_MAX, BODY, strlen(BODY), h, sizeof h), 0);
    assert_non_null(strstr(h, "t=9223372036854775807,"));
    assert_int_equal(verify(h, BODY), RV_ESTALE);
}

static void test_spaces(void **state) {
    char hex[65], h[256];
    good_v1(SECRET, NOW, BODY, hex);
    snprintf(h, sizeof h, " t=%lld , v1=%s ", (long long)NOW, hex);
    assert_int_equal(verify(h, BODY), 0);
    snprintf(h, sizeof h, "\tv1 = %s,\tt = %lld\t", hex, (long long)NOW);
    assert_int_equal(verify(h, BODY), 0);
    /* A space inside the digits of t is junk, not whitespace around an item. */
    hmac_hex_t(SECRET, "1700 000000", BODY, hex);
    snprintf(h, sizeof h, "t=1700 000000,v1=%s", hex);
    assert_int_equal(verify(h, BODY), RV_ESIG);
}

static void test_bounds(void **state) {
    char hex[65], bad[65];
    good_v1(SECRET, NOW, BODY, hex);
    good_v1(OTHER, NOW, BODY, bad);

    /* The good signature as the 16th v1 is considered, as the 17th it is not. */
    char h[RV_WEBHOOK_MAX_HEADER * 2];
    for (int n = RV_WEBHOOK_MAX_V1; n <= RV_WEBHOOK_MAX_V1 + 1; n++) {
        int off = snprintf(h, sizeof h, "t=%lld", (long long)NOW);
        for (int i = 1; i < n; i++) off += snprintf(h + off, sizeof h - (size_t)off, ",v1=%s", bad);
        snprintf(h + off, sizeof h - (size_t)off, ",v1=%s", hex);
        assert_int_equal(verify(h, BODY), n <= RV_WEBHOOK_MAX_V1 ? 0 : RV_ESIG);
    }

    /* A valid header padded with blanks to exactly the limit passes; one byte more does not. */
    int off = snprintf(h, sizeof h, "t=%lld,v1=%s", (long long)NOW, hex);
    memset(h + off, ' ', (size_t)(RV_WEBHOOK_MAX_HEADER - off));
    h[RV_WEBHOOK_MAX_HEADER] = '\0';
    assert_int_equal(strlen(h), RV_WEBHOOK_MAX_HEADER);
    assert_int_equal(verify(h, BODY), 0);
    h[RV_WEBHOOK_MAX_HEADER] = ' ';
    h[RV_WEBHOOK_MAX_HEADER + 1] = '\0';
    assert_int_equal(verify(h, BODY), RV_ESIG);
}

static void test_sign_errors(void **state) {
    char h[128];
    size_t need = strlen("t=1700000000,v1=") + 64 + 1;
    assert_int_equal(rv_webhook_sign(SECRET, NOW, BODY, strlen(BODY), h, need), 0);
    assert_int_equal(strlen(h), need - 1);
    assert_int_equal(rv_webhook_sign(SECRET, NOW, BODY, strlen(BODY), h, need - 1), RV_ERANGE);
    assert_int_equal(rv_webhook_sign(SECRET, -1, BODY, strlen(BODY), h, sizeof h), RV_ERANGE);
    assert_int_equal(rv_webhook_sign(NULL, NOW, BODY, strlen(BODY), h, sizeof h), RV_EINVAL);
    assert_int_equal(rv_webhook_sign("", NOW, BODY, strlen(BODY), h, sizeof h), RV_EINVAL);
    /* The largest t fits in the documented 96 bytes. */
    assert_int_equal(rv_webhook_sign(SECRET, INT64_MAX, BODY, strlen(BODY), h, 96), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_two_v1_one_matches),
        cmocka_unit_test(test_rotated_secrets),
        cmocka_unit_test(test_tolerance),
        cmocka_unit_test(test_missing_t),
        cmocka_unit_test(test_repeated_t),
        cmocka_unit_test(test_v0_only),
        cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_uppercase_rejected),
        cmocka_unit_test(test_body_changed),
        cmocka_unit_test(test_secret_wrong),
        cmocka_unit_test(test_header_garbage),
        cmocka_unit_test(test_t_not_numeric),
        cmocka_unit_test(test_spaces),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_sign_errors),
        cmocka_unit_test(test_empty_secret_never_used),
        cmocka_unit_test(test_undecodable_never_matches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
