/* Unit tests of the pure part of the Stripe module: form encoding in bracket notation, URL
 * escaping, the backoff schedule and the retry decision. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/stripe.h"

/* Encode pairs and compare with the expected text. */
static void assert_form(const rv_form_kv_t *kv, size_t n, const char *expect) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_form_encode(kv, n, &b), 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, expect);
    assert_int_equal(b.len, strlen(expect));
    rv_buf_free(&b);
}

static void test_form_nested_keys(void **state) {
    const rv_form_kv_t kv[] = {
        {"line_items[0][price]", "price_x"},
        {"subscription_data[metadata][tier]", "pro"},
    };
    assert_form(kv, 2,
                "line_items%5B0%5D%5Bprice%5D=price_x"
                "&subscription_data%5Bmetadata%5D%5Btier%5D=pro");
}

static void test_form_reserved_characters(void **state) {
    const rv_form_kv_t kv[] = {{"q", "a&b=c+d%e#f?g/h i"}};
    assert_form(kv, 1, "q=a%26b%3Dc%2Bd%25e%23f%3Fg%2Fh%20i");
    /* Unreserved characters pass through; the braces Stripe fills in are encoded. */
    const rv_form_kv_t url[] = {
        {"success_url", "https://rivet.io/success?session_id={CHECKOUT_SESSION_ID}"},
        {"k", "AZaz09-._~"},
    };
    assert_form(url, 2,
                "success_url=https%3A%2F%2Frivet.io%2Fsuccess%3Fsession_id%3D"
                "%7BCHECKOUT_SESSION_ID%7D&k=AZaz09-._~");
}

static void test_form_unicode(void **state) {
    /* "é" is C3 A9 in UTF-8; U+1F680 (rocket) is F0 9F 9A 80. */
    const rv_form_kv_t kv[] = {{"name", "Ren\xc3\xa9"}, {"metadata[note]", "\xf0\x9f\x9a\x80!"}};
    assert_form(kv, 2, "name=Ren%C3%A9&metadata%5Bnote%5D=%F0%9F%9A%80%21");
}

static void test_form_empty_value_and_pairs(void **state) {
    const rv_form_kv_t kv[] = {{"a", ""}, {"b", "1"}, {"c", NULL}, {"d", "x y"}};
    assert_form(kv, 4, "a=&b=1&c=&d=x%20y");
    /* No pairs: an empty string, not NULL. */
    assert_form(NULL, 0, "");
}

static void test_form_appends_and_fails_cleanly(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_buf_puts(&b, "prefix:"), 0);
    const rv_form_kv_t kv[] = {{"a", "1"}};
    assert_int_equal(rv_form_encode(kv, 1, &b), 0);
    assert_string_equal(b.data, "prefix:a=1");

    /* A key that is missing is refused and the buffer is left as it was. */
    const rv_form_kv_t bad[] = {{"b", "2"}, {NULL, "3"}};
    assert_int_equal(rv_form_encode(bad, 2, &b), RV_EINVAL);
    assert_string_equal(b.data, "prefix:a=1");

    /* Past the buffer's limit: RV_ERANGE, buffer unchanged. */
    b.limit = b.len + 5;
    const rv_form_kv_t big[] = {{"key", "longer than five"}};
    assert_int_equal(rv_form_encode(big, 1, &b), RV_ERANGE);
    assert_string_equal(b.data, "prefix:a=1");
    rv_buf_free(&b);
}

static void test_url_escape(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_url_escape("cs_test_a1B2", &b), 0);
    assert_string_equal(b.data, "cs_test_a1B2");
    rv_buf_reset(&b);
    assert_int_equal(rv_url_escape("../a/b?c=d#e f", &b), 0);
    assert_string_equal(b.data, "..%2Fa%2Fb%3Fc%3Dd%23e%20f");
    rv_buf_reset(&b);
    assert_int_equal(rv_url_escape("\xc3\xa9", &b), 0);
    assert_string_equal(b.data, "%C3%A9");
    rv_buf_reset(&b);
    assert_int_equal(rv_url_escape("", &b), 0);
    assert_string_equal(b.data, "");
    assert_int_equal(rv_url_escape(NULL, &b), RV_EINVAL);
    rv_buf_free(&b);
}

static void test_backoff_schedule(void **state) {
    /* First retry: 500 ms scaled by a jitter factor in [0.5, 1.0]. */
    assert_int_equal(rv_stripe_backoff_ms(1, 0.0), 250);
    uint64_t hi = rv_stripe_backoff_ms(1, 0.999);
    assert_true(hi >= 250 && hi <= 500);
    assert_true(hi >= 495);
    for (double r = 0.0; r < 1.0; r += 0.01) {
        uint64_t d = rv_stripe_backoff_ms(1, r);
        assert_true(d >= 250 && d <= 500);
    }
    /* Doubling with the same jitter. */
    assert_int_equal(rv_stripe_backoff_ms(2, 0.0), 500);
    assert_int_equal(rv_stripe_backoff_ms(3, 0.0), 1000);
    assert_int_equal(rv_stripe_backoff_ms(4, 0.0), 2000);
    assert_int_equal(rv_stripe_backoff_ms(5, 0.0), 4000);
    uint64_t r2 = rv_stripe_backoff_ms(2, 0.999), r3 = rv_stripe_backoff_ms(3, 0.999);
    assert_true(r2 >= 500 && r2 <= 1000);
    assert_true(r3 >= 1000 && r3 <= 2000);
    /* Capped at 8 s before jitter, however many retries. */
    assert_int_equal(rv_stripe_backoff_ms(6, 0.0), 4000);
    assert_int_equal(rv_stripe_backoff_ms(40, 0.0), 4000);
    assert_int_equal(rv_stripe_backoff_ms(4000000000u, 0.0), 4000);
    uint64_t cap = rv_stripe_backoff_ms(60, 0.999);
    assert_true(cap >= 7990 && cap <= 8000);
    /* Out-of-range inputs stay inside the bounds. */
    assert_int_equal(rv_stripe_backoff_ms(1, -3.0), 250);
    assert_int_equal(rv_stripe_backoff_ms(1, 7.0), 500);
}

static void test_should_retry_table(void **state) {
    static const struct {
        int err, status;
        const char *hdr;
        int expect;
    } cases[] = {
        {RV_EIO, 0, NULL, 1},
        {RV_ETIMEDOUT, 0, NULL, 1},
        {0, 409, NULL, 1},
        {0, 429, NULL, 1},
        {0, 500, NULL, 1},
        {0, 502, NULL, 1},
        {0, 503, NULL, 1},
        {0, 400, NULL, 0},
        {0, 401, NULL, 0},
        {0, 402, NULL, 0},
        {0, 403, NULL, 0},
        {0, 404, NULL, 0},
        {0, 422, NULL, 0},
        {0, 200, NULL, 0},
        /* Stripe's header wins both ways. */
        {0, 500, "false", 0},
        {0, 503, "false", 0},
        {0, 429, "false", 0},
        {0, 409, "false", 0},
        {0, 400, "true", 1},
        {0, 402, "true", 1},
        {0, 404, " true ", 1},
        {0, 500, "True", 1},
        {0, 400, "FALSE", 0},
        /* Anything else in the header is ignored. */
        {0, 500, "maybe", 1},
        {0, 400, "", 0},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        int got = rv_stripe_should_retry(cases[i].err, cases[i].status, cases[i].hdr);
        if (got != cases[i].expect) {
            fail_msg("case %zu: err=%d status=%d hdr=%s: got %d, want %d", i, cases[i].err,
                     cases[i].status, cases[i].hdr ? cases[i].hdr : "(null)", got, cases[i].expect);
        }
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_form_nested_keys),
        cmocka_unit_test(test_form_reserved_characters),
        cmocka_unit_test(test_form_unicode),
        cmocka_unit_test(test_form_empty_value_and_pairs),
        cmocka_unit_test(test_form_appends_and_fails_cleanly),
        cmocka_unit_test(test_url_escape),
        cmocka_unit_test(test_backoff_schedule),
        cmocka_unit_test(test_should_retry_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
