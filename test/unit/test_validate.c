/* Unit tests of input validation: e-mail addresses, Stripe ids, caller-supplied redirect URLs
 * and the client address used for rate limiting behind proxies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "rivet/common.h"
#include "rivet/config.h"
#include "rivet/validate.h"

/* ---- helpers ------------------------------------------------------------------------------ */

#define EXPECT_VALID(fn, s)                                                                        \
    do {                                                                                           \
        if (!fn(s)) fail_msg("%s(\"%s\") rejected a valid input", #fn, s);                         \
    } while (0)
#define EXPECT_INVALID(fn, s)                                                                      \
    do {                                                                                           \
        if (fn(s)) fail_msg("%s(\"%s\") accepted an invalid input", #fn, s);                       \
    } while (0)

/* An address of exactly total bytes with a local part of local bytes, built from 'a' labels
 * of at most 60 characters and a ".com" top-level label, so that only the lengths vary. */
static void make_email(char *out, size_t cap, size_t local, size_t total) {
    assert_true(total + 1 <= cap && local + 1 + 6 <= total);
    size_t k = 0;
    for (size_t i = 0; i < local; i++) out[k++] = 'l';
    out[k++] = '@';
    size_t body = total - local - 1 - 4;
    for (size_t i = 0; i < body; i++) {
        /* A dot every 61st byte, never first or last, keeps every label 1-60 bytes long. */
        int dot = (i + 1) % 61 == 0 && i + 1 < body;
        out[k++] = dot ? '.' : 'd';
    }
    memcpy(out + k, ".com", 4);
    k += 4;
    out[k] = '\0';
    assert_int_equal(strlen(out), total);
}

/* ---- rv_valid_email ------------------------------------------------------------------------ */

static void email_good(void **state) {
    EXPECT_VALID(rv_valid_email, "a@b.co");
    EXPECT_VALID(rv_valid_email, "jane.doe@example.com");
    EXPECT_VALID(rv_valid_email, "user+tag@sub.example.org");
    EXPECT_VALID(rv_valid_email, "o'brien@example.ie");
    EXPECT_VALID(rv_valid_email, "x_y-z@my-host.example.travel");
    EXPECT_VALID(rv_valid_email, "MIXED.Case@Example.COM");
    EXPECT_VALID(rv_valid_email, "digits123@123.example.net");
    EXPECT_VALID(rv_valid_email, "idn@example.xn--p1ai");
}

static void email_dots(void **state) {
    EXPECT_INVALID(rv_valid_email, ".jane@example.com");
    EXPECT_INVALID(rv_valid_email, "jane.@example.com");
    EXPECT_INVALID(rv_valid_email, "ja..ne@example.com");
    EXPECT_INVALID(rv_valid_email, "jane@.example.com");
    EXPECT_INVALID(rv_valid_email, "jane@example.com.");
    EXPECT_INVALID(rv_valid_email, "jane@example..com");
    EXPECT_INVALID(rv_valid_email, ".@example.com");
}

static void email_domain(void **state) {
    EXPECT_INVALID(rv_valid_email, "jane@localhost"); /* no top-level label */
    EXPECT_INVALID(rv_valid_email, "jane@example.123");
    EXPECT_INVALID(rv_valid_email, "jane@127.0.0.1");
    EXPECT_INVALID(rv_valid_email, "jane@example.c0m");
    EXPECT_INVALID(rv_valid_email, "jane@example.c"); /* one-letter top-level label */
    EXPECT_INVALID(rv_valid_email, "jane@-example.com");
    EXPECT_INVALID(rv_valid_email, "jane@example-.com");
    EXPECT_INVALID(rv_valid_email, "jane@exa_mple.com");
    EXPECT_INVALID(rv_valid_email, "jane@[127.0.0.1]");
    EXPECT_INVALID(rv_valid_email, "jane@");
}

static void email_shape(void **state) {
    EXPECT_INVALID(rv_valid_email, "");
    EXPECT_INVALID(rv_valid_email, "jane");
    EXPECT_INVALID(rv_valid_email, "@example.com");
    EXPECT_INVALID(rv_valid_email, "jane@@example.com");
    EXPECT_INVALID(rv_valid_email, "ja@ne@example.com");
    EXPECT_INVALID(rv_valid_email, "jane doe@example.com");
    EXPECT_INVALID(rv_valid_email, " jane@example.com");
    EXPECT_INVALID(rv_valid_email, "jane@example.com ");
    EXPECT_INVALID(rv_valid_email, "jane@exa mple.com");
    EXPECT_INVALID(rv_valid_email, "jane\t@example.com");
    EXPECT_INVALID(rv_valid_email, "jane@example.com\r\nBcc: x@y.com");
    EXPECT_INVALID(rv_valid_email, "\"jane\"@example.com");
    EXPECT_INVALID(rv_valid_email, "j(a)ne@example.com");
    EXPECT_INVALID(rv_valid_email, "j\xc3\xa9@example.com"); /* non-ASCII local part */
    EXPECT_INVALID(rv_valid_email, "jane@ex\xc3\xa4mple.com");
}

static void email_lengths(void **state) {
    char buf[400];
    /* The local part may be 64 bytes, not 65. */
    make_email(buf, sizeof buf, 64, 80);
    EXPECT_VALID(rv_valid_email, buf);
    make_email(buf, sizeof buf, 65, 80);
    EXPECT_INVALID(rv_valid_email, buf);
    /* The whole address may be 254 bytes, not 255. */
    make_email(buf, sizeof buf, 64, 254);
    EXPECT_VALID(rv_valid_email, buf);
    make_email(buf, sizeof buf, 64, 255);
    EXPECT_INVALID(rv_valid_email, buf);
    make_email(buf, sizeof buf, 10, 255);
    EXPECT_INVALID(rv_valid_email, buf);
    make_email(buf, sizeof buf, 10, 390);
    EXPECT_INVALID(rv_valid_email, buf);
    /* A domain label may be 63 bytes, not 64. */
    char l63[64], l64[65];
    memset(l63, 'x', 63);
    l63[63] = '\0';
    memset(l64, 'x', 64);
    l64[64] = '\0';
    snprintf(buf, sizeof buf, "jane@%s.com", l63);
    EXPECT_VALID(rv_valid_email, buf);
    snprintf(buf, sizeof buf, "jane@%s.com", l64);
    EXPECT_INVALID(rv_valid_email, buf);
}

/* ---- ids ------------------------------------------------------------------------------------ */

static void session_ids(void **state) {
    EXPECT_VALID(rv_valid_session_id, "cs_test_a1B2c3D4");
    EXPECT_VALID(rv_valid_session_id, "cs_live_Z");
    char id[300];
    memcpy(id, "cs_test_", 8);
    memset(id + 8, 'a', 250);
    id[258] = '\0';
    EXPECT_VALID(rv_valid_session_id, id);
    id[258] = 'a';
    id[259] = '\0';
    EXPECT_INVALID(rv_valid_session_id, id); /* 251 after the prefix */

    EXPECT_INVALID(rv_valid_session_id, "");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_");
    EXPECT_INVALID(rv_valid_session_id, "cs_live_");
    EXPECT_INVALID(rv_valid_session_id, "cs_prod_abc");
    EXPECT_INVALID(rv_valid_session_id, "CS_TEST_abc");
    EXPECT_INVALID(rv_valid_session_id, "cs_abc");
    EXPECT_INVALID(rv_valid_session_id, "cus_abc");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_abc-def");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_abc_def");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_../../v1/customers");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_abc?expand[]=customer");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_abc def");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_abc%2F");
    EXPECT_INVALID(rv_valid_session_id, " cs_test_abc");
    EXPECT_INVALID(rv_valid_session_id, "cs_test_abc\n");
}

static void customer_ids(void **state) {
    EXPECT_VALID(rv_valid_customer_id, "cus_NffrFeUfNV2Hib");
    EXPECT_VALID(rv_valid_customer_id, "cus_1");
    EXPECT_INVALID(rv_valid_customer_id, "");
    EXPECT_INVALID(rv_valid_customer_id, "cus_");
    EXPECT_INVALID(rv_valid_customer_id, "cust_abc");
    EXPECT_INVALID(rv_valid_customer_id, "CUS_abc");
    EXPECT_INVALID(rv_valid_customer_id, "cus_abc_def");
    EXPECT_INVALID(rv_valid_customer_id, "cus_abc/../x");
    EXPECT_INVALID(rv_valid_customer_id, "cus_abc&customer=cus_other");
    EXPECT_INVALID(rv_valid_customer_id, "cus_abc ");
    EXPECT_INVALID(rv_valid_customer_id, "cs_test_abc");
}

/* ---- rv_valid_redirect -------------------------------------------------------------------- */

static char *origin_v[] = {"https://rivet.io", "https://www.rivet.io", "http://localhost:3000"};
static const rv_strlist_t origins = {origin_v, 3};

static int redirect_ok(const char *url) { return rv_valid_redirect(url, &origins); }

static void redirect_allowed(void **state) {
    EXPECT_VALID(redirect_ok, "https://rivet.io");
    EXPECT_VALID(redirect_ok, "https://rivet.io/");
    EXPECT_VALID(redirect_ok, "https://rivet.io/success?session_id={CHECKOUT_SESSION_ID}");
    EXPECT_VALID(redirect_ok, "https://rivet.io/pricing#plans");
    EXPECT_VALID(redirect_ok, "https://www.rivet.io/welcome");
    EXPECT_VALID(redirect_ok, "http://localhost:3000/success");
    EXPECT_VALID(redirect_ok, "HTTPS://Rivet.IO/Case");
    EXPECT_VALID(redirect_ok, "https://rivet.io?x=1");
}

static void redirect_other_origin(void **state) {
    EXPECT_INVALID(redirect_ok, "https://evil.com/success");
    EXPECT_INVALID(redirect_ok, "http://rivet.io/success"); /* another scheme */
    EXPECT_INVALID(redirect_ok, "https://rivet.io:8443/success");
    EXPECT_INVALID(redirect_ok, "http://localhost/success");
    EXPECT_INVALID(redirect_ok, "http://localhost:3001/success");
    EXPECT_INVALID(redirect_ok, "https://api.rivet.io/success");
    EXPECT_INVALID(redirect_ok, "https://rivet.io.evil.com/success");
    EXPECT_INVALID(redirect_ok, "https://evilrivet.io/");
    EXPECT_INVALID(redirect_ok, "https://evil.com/https://rivet.io");
    EXPECT_INVALID(redirect_ok, "https://evil.com?next=https://rivet.io");
    EXPECT_INVALID(redirect_ok, "https://evil.com#https://rivet.io");
}

static void redirect_tricks(void **state) {
    EXPECT_INVALID(redirect_ok, "https://rivet.io@evil.com");
    EXPECT_INVALID(redirect_ok, "https://rivet.io@evil.com/success");
    EXPECT_INVALID(redirect_ok, "https://user:pass@rivet.io/success");
    EXPECT_INVALID(redirect_ok, "//rivet.io/success"); /* scheme-relative */
    EXPECT_INVALID(redirect_ok, "//evil.com/success");
    EXPECT_INVALID(redirect_ok, "/success");
    EXPECT_INVALID(redirect_ok, "rivet.io/success");
    EXPECT_INVALID(redirect_ok, "javascript:alert(1)");
    EXPECT_INVALID(redirect_ok, "javascript://rivet.io/%0aalert(1)");
    EXPECT_INVALID(redirect_ok, "data:text/html,hi");
    EXPECT_INVALID(redirect_ok, "ftp://rivet.io/x");
    EXPECT_INVALID(redirect_ok, "https:\\\\evil.com");
    EXPECT_INVALID(redirect_ok, "https://rivet.io\\@evil.com");
    EXPECT_INVALID(redirect_ok, "https://evil.com\\.rivet.io/");
    EXPECT_INVALID(redirect_ok, "https:/rivet.io/x");
    EXPECT_INVALID(redirect_ok, "https:///rivet.io/x");
    EXPECT_INVALID(redirect_ok, "https://rivet.io/a b");
    EXPECT_INVALID(redirect_ok, " https://rivet.io/");
    EXPECT_INVALID(redirect_ok, "https://rivet.io/\r\nLocation: https://evil.com");
    EXPECT_INVALID(redirect_ok, "https://rivet.io/\t");
    EXPECT_INVALID(redirect_ok, "https://rivet.io/\x7f");
    EXPECT_INVALID(redirect_ok, "https://rivet.io%2eevil.com/");
    EXPECT_INVALID(redirect_ok, "");
}

static void redirect_default_port(void **state) {
    EXPECT_VALID(redirect_ok, "https://rivet.io:443/success");
    EXPECT_VALID(redirect_ok, "https://RIVET.io:443");
    char *v[] = {"http://example.test"};
    rv_strlist_t plain = {v, 1};
    assert_true(rv_valid_redirect("http://example.test:80/x", &plain));
    assert_true(rv_valid_redirect("http://example.test/x", &plain));
    assert_false(rv_valid_redirect("http://example.test:443/x", &plain));
    assert_false(rv_valid_redirect("https://example.test/x", &plain));
    /* An origin on port 443 over http is not the https origin. */
    assert_false(rv_valid_redirect("http://rivet.io:443/x", &origins));
}

static void redirect_length(void **state) {
    char url[2100];
    const char *prefix = "https://rivet.io/";
    size_t pl = strlen(prefix);
    memcpy(url, prefix, pl);
    memset(url + pl, 'p', 2048 - pl);
    url[2048] = '\0';
    assert_true(redirect_ok(url));
    url[2048] = 'p';
    url[2049] = '\0';
    assert_false(redirect_ok(url));
}

static void redirect_empty_list(void **state) {
    rv_strlist_t none = {NULL, 0};
    assert_false(rv_valid_redirect("https://rivet.io/success", &none));
}

/* ---- rv_client_addr ----------------------------------------------------------------------- */

static char *trusted_v[] = {"127.0.0.1", "10.0.0.1", "10.0.0.2", "::1"};
static const rv_strlist_t trusted = {trusted_v, 4};

static void check_addr(const char *peer, const char *xff, const char *want) {
    char out[64];
    memset(out, 'Z', sizeof out);
    rv_client_addr(peer, xff, xff ? strlen(xff) : 0, &trusted, out, sizeof out);
    if (strcmp(out, want) != 0)
        fail_msg("peer %s, X-Forwarded-For \"%s\": got %s, expected %s", peer, xff ? xff : "(none)",
                 out, want);
}

static void addr_untrusted_peer(void **state) {
    check_addr("203.0.113.5", NULL, "203.0.113.5");
    check_addr("203.0.113.5", "198.51.100.7", "203.0.113.5");
    check_addr("203.0.113.5", "198.51.100.7, 127.0.0.1", "203.0.113.5");
    check_addr("2001:db8::5", "198.51.100.7", "2001:db8::5");
    /* No trusted proxies at all: the header means nothing. */
    char out[64];
    rv_strlist_t none = {NULL, 0};
    rv_client_addr("127.0.0.1", "198.51.100.7", 12, &none, out, sizeof out);
    assert_string_equal(out, "127.0.0.1");
}

static void addr_trusted_peer(void **state) {
    check_addr("127.0.0.1", NULL, "127.0.0.1");
    check_addr("127.0.0.1", "198.51.100.7", "198.51.100.7");
    check_addr("127.0.0.1", "  198.51.100.7\t", "198.51.100.7");
    /* A client can put anything on the left; only the right-most untrusted entry counts. */
    check_addr("127.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7");
    check_addr("127.0.0.1", "6.6.6.6,198.51.100.7", "198.51.100.7");
    check_addr("::1", "2001:db8::7", "2001:db8::7");
    check_addr("127.0.0.1", "2001:db8::7", "2001:db8::7");
}

static void addr_proxy_chain(void **state) {
    check_addr("127.0.0.1", "198.51.100.7, 10.0.0.1", "198.51.100.7");
    check_addr("127.0.0.1", "6.6.6.6, 198.51.100.7, 10.0.0.2, 10.0.0.1", "198.51.100.7");
    /* An untrusted hop in the middle ends the walk there. */
    check_addr("127.0.0.1", "198.51.100.7, 192.0.2.9, 10.0.0.1", "192.0.2.9");
    /* Every hop trusted: the left-most is as far as anyone can see. */
    check_addr("127.0.0.1", "10.0.0.2, 10.0.0.1", "10.0.0.2");
}

static void addr_garbage(void **state) {
    /* Garbage where the trusted proxy wrote its entry: believe nothing beyond the peer. */
    check_addr("127.0.0.1", "not-an-address", "127.0.0.1");
    check_addr("127.0.0.1", "198.51.100.7, garbage", "127.0.0.1");
    check_addr("127.0.0.1", "198.51.100.7:4711", "127.0.0.1");
    check_addr("127.0.0.1", "unknown", "127.0.0.1");
    check_addr("127.0.0.1", "", "127.0.0.1");
    check_addr("127.0.0.1", ",", "127.0.0.1");
    check_addr("127.0.0.1", "198.51.100.7,,", "127.0.0.1");
    check_addr("127.0.0.1", "999.1.1.1", "127.0.0.1");
    check_addr("127.0.0.1", "198.51.100.7\r\nX: y", "127.0.0.1");
    /* Garbage further left than the answer does not matter. */
    check_addr("127.0.0.1", "<script>, 198.51.100.7", "198.51.100.7");
    /* Garbage behind a trusted hop: the last address known to be real. */
    check_addr("127.0.0.1", "198.51.100.7, junk, 10.0.0.1", "10.0.0.1");
    /* An entry too long to be an address. */
    char big[200];
    memset(big, '1', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    check_addr("127.0.0.1", big, "127.0.0.1");
}

static void addr_bounds(void **state) {
    /* xff_len is honoured: the header value need not be NUL-terminated. */
    const char *xff = "198.51.100.7, 192.0.2.9";
    char out[64];
    rv_client_addr("127.0.0.1", xff, 12, &trusted, out, sizeof out);
    assert_string_equal(out, "198.51.100.7");
    /* A small output buffer is never overrun and stays terminated. */
    char small[8];
    memset(small, 'Z', sizeof small);
    rv_client_addr("127.0.0.1", "198.51.100.7", 12, &trusted, small, sizeof small);
    assert_int_equal(small[sizeof small - 1], '\0');
    assert_int_equal(strlen(small), sizeof small - 1);
    assert_memory_equal(small, "198.51.", 7);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(email_good),
        cmocka_unit_test(email_dots),
        cmocka_unit_test(email_domain),
        cmocka_unit_test(email_shape),
        cmocka_unit_test(email_lengths),
        cmocka_unit_test(session_ids),
        cmocka_unit_test(customer_ids),
        cmocka_unit_test(redirect_allowed),
        cmocka_unit_test(redirect_other_origin),
        cmocka_unit_test(redirect_tricks),
        cmocka_unit_test(redirect_default_port),
        cmocka_unit_test(redirect_length),
        cmocka_unit_test(redirect_empty_list),
        cmocka_unit_test(addr_untrusted_peer),
        cmocka_unit_test(addr_trusted_peer),
        cmocka_unit_test(addr_proxy_chain),
        cmocka_unit_test(addr_garbage),
        cmocka_unit_test(addr_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
