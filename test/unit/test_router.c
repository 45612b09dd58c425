/* Unit tests of the router: exact path matching, GET answering HEAD, 404 and 405 with a correct
 * Allow list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "rivet/common.h"
#include "rivet/router.h"

static void h_health(rv_request_t *req) { (void)req; }
static void h_root(rv_request_t *req) { (void)req; }
static void h_checkout(rv_request_t *req) { (void)req; }
static void h_preflight(rv_request_t *req) { (void)req; }
static void h_dup(rv_request_t *req) { (void)req; }

static const rv_route_t routes[] = {
    {"GET", "/health", h_health, "health", 0},
    {"GET", "/", h_root, "root", 0},
    {"POST", "/api/checkout/create", h_checkout, "checkout", 0},
    {"OPTIONS", "/api/checkout/create", h_preflight, "preflight", 0},
    /* Two routes for one method and path, and an explicit HEAD: Allow must list each once. */
    {"GET", "/dup", h_dup, "dup1", 0},
    {"HEAD", "/dup", h_dup, "dup-head", 0},
    {"GET", "/dup", h_dup, "dup2", 0},
    {"POST", "/dup", h_dup, "dup-post", 0},
};
#define NROUTES RV_ARRAY_LEN(routes)

static int match(const char *method, const char *path, const rv_route_t **out, char *allow,
                 size_t allow_len) {
    return rv_router_match(routes, NROUTES, method, path, strlen(path), out, allow, allow_len);
}

/* The comma-separated tokens of an Allow value, checked to be exactly the expected set, each
 * once. */
static void assert_allow_set(const char *allow, const char *const *expect, size_t n) {
    char copy[256];
    snprintf(copy, sizeof copy, "%s", allow);
    size_t seen[16] = {0};
    size_t count = 0;
    for (char *save = NULL, *tok = strtok_r(copy, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ') tok++;
        size_t i;
        for (i = 0; i < n; i++)
            if (strcmp(tok, expect[i]) == 0) break;
        if (i == n) fail_msg("Allow \"%s\" lists unexpected method \"%s\"", allow, tok);
        if (seen[i]++) fail_msg("Allow \"%s\" lists \"%s\" twice", allow, tok);
        count++;
    }
    if (count != n) fail_msg("Allow \"%s\" lists %zu methods, expected %zu", allow, count, n);
}

static void test_exact_match(void **state) {
    const rv_route_t *r = NULL;
    char allow[128] = "junk";
    assert_int_equal(match("GET", "/health", &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[0]);
    assert_int_equal(match("GET", "/", &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[1]);
    assert_int_equal(match("POST", "/api/checkout/create", &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[2]);
    assert_int_equal(match("OPTIONS", "/api/checkout/create", &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[3]);
}

static void test_head_uses_get(void **state) {
    const rv_route_t *r = NULL;
    char allow[128];
    assert_int_equal(match("HEAD", "/health", &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[0]);
    assert_int_equal(match("HEAD", "/", &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[1]);
    /* HEAD is not implied by POST. */
    assert_int_equal(match("HEAD", "/api/checkout/create", &r, allow, sizeof allow), RV_EMETHOD);
    const char *const want[] = {"POST", "OPTIONS"};
    assert_allow_set(allow, want, 2);
}

static void test_not_found(void **state) {
    static const char *const paths[] = {
        "/nope",     "/healthz", "/health/",      "/heal",
        "/HEALTH",   "//",       "/api/checkout", "/api/checkout/create/",
        "/health/x", "",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(paths); i++) {
        const rv_route_t *r = NULL;
        char allow[128] = "junk";
        int rc = match("GET", paths[i], &r, allow, sizeof allow);
        if (rc != RV_ENOTFOUND)
            fail_msg("path \"%s\": got %d, expected RV_ENOTFOUND", paths[i], rc);
        assert_null(r);
    }
    const rv_route_t *r = NULL;
    assert_int_equal(rv_router_match(routes, 0, "GET", "/health", 7, &r, NULL, 0), RV_ENOTFOUND);
}

static void test_method_not_allowed(void **state) {
    const rv_route_t *r = NULL;
    char allow[128];
    assert_int_equal(match("POST", "/health", &r, allow, sizeof allow), RV_EMETHOD);
    assert_null(r);
    assert_string_equal(allow, "GET, HEAD");

    assert_int_equal(match("DELETE", "/", &r, allow, sizeof allow), RV_EMETHOD);
    const char *const get_head[] = {"GET", "HEAD"};
    assert_allow_set(allow, get_head, 2);

    assert_int_equal(match("GET", "/api/checkout/create", &r, allow, sizeof allow), RV_EMETHOD);
    const char *const post_opt[] = {"POST", "OPTIONS"};
    assert_allow_set(allow, post_opt, 2);

    /* Method names are case-sensitive (RFC 9110). */
    assert_int_equal(match("get", "/health", &r, allow, sizeof allow), RV_EMETHOD);
}

static void test_allow_has_no_duplicates(void **state) {
    const rv_route_t *r = NULL;
    char allow[128];
    assert_int_equal(match("PUT", "/dup", &r, allow, sizeof allow), RV_EMETHOD);
    const char *const want[] = {"GET", "HEAD", "POST"};
    assert_allow_set(allow, want, 3);
    /* The first route of a method wins. */
    assert_int_equal(match("GET", "/dup", &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[4]);
}

static void test_allow_bounded(void **state) {
    const rv_route_t *r = NULL;
    /* A short buffer is filled within bounds and terminated; the canary after it survives. */
    struct {
        char allow[6];
        char canary[8];
    } s;
    memset(&s, 'X', sizeof s);
    assert_int_equal(match("PUT", "/dup", &r, s.allow, sizeof s.allow), RV_EMETHOD);
    assert_non_null(memchr(s.allow, '\0', sizeof s.allow));
    assert_memory_equal(s.canary, "XXXXXXXX", 8);
    /* No buffer at all is allowed. */
    assert_int_equal(match("PUT", "/dup", &r, NULL, 0), RV_EMETHOD);
}

static void test_path_len_honoured(void **state) {
    const rv_route_t *r = NULL;
    char allow[128];
    /* The server passes the path with its query cut off by length. */
    const char *url = "/health?verbose=1";
    assert_int_equal(rv_router_match(routes, NROUTES, "GET", url, 7, &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[0]);
    /* The first 7 bytes of "/healthz" are "/health". */
    r = NULL;
    assert_int_equal(
        rv_router_match(routes, NROUTES, "GET", "/healthz", 7, &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[0]);
    /* A shorter length is a different path. */
    assert_int_equal(rv_router_match(routes, NROUTES, "GET", "/health", 6, &r, allow, sizeof allow),
                     RV_ENOTFOUND);
    /* An unterminated path is read only up to path_len. */
    const char raw[7] = {'/', 'h', 'e', 'a', 'l', 't', 'h'};
    assert_int_equal(
        rv_router_match(routes, NROUTES, "GET", raw, sizeof raw, &r, allow, sizeof allow), 0);
    assert_ptr_equal(r, &routes[0]);
    /* "/" with length 1 out of a longer buffer. */
    assert_int_equal(rv_router_match(routes, NROUTES, "GET", "/?x=1", 1, &r, allow, sizeof allow),
                     0);
    assert_ptr_equal(r, &routes[1]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_match),
        cmocka_unit_test(test_head_uses_get),
        cmocka_unit_test(test_not_found),
        cmocka_unit_test(test_method_not_allowed),
        cmocka_unit_test(test_allow_has_no_duplicates),
        cmocka_unit_test(test_allow_bounded),
        cmocka_unit_test(test_path_len_honoured),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
