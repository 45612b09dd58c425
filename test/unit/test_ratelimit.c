/* Unit tests of the per-client token buckets: the burst, refilling with time, the Retry-After
 * value, independence of clients, a full table, and a zero rate. Time is supplied by the test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "rivet/common.h"
#include "rivet/ratelimit.h"

#define T0 1000000u /* an arbitrary starting time, far from zero */

static rv_ratelimit_t *make(unsigned per_min, unsigned burst, size_t slots) {
    rv_ratelimit_t *rl = NULL;
    assert_int_equal(rv_ratelimit_new(per_min, burst, slots, &rl), 0);
    assert_non_null(rl);
    return rl;
}

/* Take n tokens for key at now; fail unless every one is allowed. */
static void take_ok(rv_ratelimit_t *rl, const char *key, uint64_t now, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        unsigned ra = 12345;
        if (!rv_ratelimit_take(rl, key, now, &ra))
            fail_msg("%s: call %u of %u at %llu was limited (Retry-After %u)", key, i + 1, n,
                     (unsigned long long)now, ra);
    }
}

/* The next take for key at now is limited; returns its Retry-After. */
static unsigned take_limited(rv_ratelimit_t *rl, const char *key, uint64_t now) {
    unsigned ra = 0;
    if (rv_ratelimit_take(rl, key, now, &ra))
        fail_msg("%s: a call at %llu was allowed, expected a limit", key, (unsigned long long)now);
    return ra;
}

static void burst_then_limit(void **state) {
    rv_ratelimit_t *rl = make(60, 20, 1024);
    take_ok(rl, "198.51.100.7", T0, 20);
    assert_int_equal(take_limited(rl, "198.51.100.7", T0), 1);
    /* Being limited does not spend anything: still exactly one second to wait. */
    for (int i = 0; i < 50; i++) assert_int_equal(take_limited(rl, "198.51.100.7", T0), 1);
    rv_ratelimit_free(rl);
}

static void refill_over_time(void **state) {
    rv_ratelimit_t *rl = make(60, 20, 1024); /* one token a second */
    const char *k = "198.51.100.7";
    take_ok(rl, k, T0, 20);
    take_limited(rl, k, T0);
    take_limited(rl, k, T0 + 999);
    take_ok(rl, k, T0 + 1000, 1);
    take_limited(rl, k, T0 + 1000);
    /* Five seconds later, five tokens. */
    take_ok(rl, k, T0 + 6000, 5);
    take_limited(rl, k, T0 + 6000);
    /* A long pause restores the burst and no more. */
    take_ok(rl, k, T0 + 3600u * 1000u, 20);
    take_limited(rl, k, T0 + 3600u * 1000u);
    /* A clock that goes backwards adds nothing. */
    take_limited(rl, k, T0);
    rv_ratelimit_free(rl);
}

static void steady_rate(void **state) {
    /* 120 a minute is one every 500 ms: calling at exactly that pace is never limited. */
    rv_ratelimit_t *rl = make(120, 2, 1024);
    const char *k = "198.51.100.8";
    take_ok(rl, k, T0, 2);
    for (uint64_t t = T0 + 500; t < T0 + 60000; t += 500) {
        take_ok(rl, k, t, 1);
        take_limited(rl, k, t);
    }
    rv_ratelimit_free(rl);
}

static void retry_after_value(void **state) {
    /* Six a minute: one token every ten seconds. */
    rv_ratelimit_t *rl = make(6, 1, 64);
    const char *k = "198.51.100.9";
    take_ok(rl, k, T0, 1);
    assert_int_equal(take_limited(rl, k, T0), 10);
    assert_int_equal(take_limited(rl, k, T0 + 2500), 8); /* 7.5 s rounds up */
    assert_int_equal(take_limited(rl, k, T0 + 9000), 1);
    assert_int_equal(take_limited(rl, k, T0 + 9999), 1); /* 1 ms still says one second */
    take_ok(rl, k, T0 + 10000, 1);
    rv_ratelimit_free(rl);

    /* One a minute: sixty seconds. */
    rl = make(1, 1, 64);
    take_ok(rl, k, T0, 1);
    assert_int_equal(take_limited(rl, k, T0), 60);
    assert_int_equal(take_limited(rl, k, T0 + 30000), 30);
    rv_ratelimit_free(rl);

    /* A fast rate never says zero. */
    rl = make(600000, 1, 64);
    take_ok(rl, k, T0, 1);
    assert_int_equal(take_limited(rl, k, T0), 1);
    rv_ratelimit_free(rl);
}

static void per_key_independence(void **state) {
    rv_ratelimit_t *rl = make(60, 20, 1024);
    take_ok(rl, "198.51.100.1", T0, 20);
    take_limited(rl, "198.51.100.1", T0);
    /* Others are untouched, including keys that differ by one character or only in length. */
    take_ok(rl, "198.51.100.2", T0, 20);
    take_ok(rl, "198.51.100.10", T0, 20);
    take_ok(rl, "198.51.100.", T0, 20);
    take_ok(rl, "2001:db8::1", T0, 20);
    take_limited(rl, "198.51.100.2", T0);
    /* And the first one is still limited. */
    take_limited(rl, "198.51.100.1", T0);
    take_limited(rl, "198.51.100.1", T0 + 500);
    rv_ratelimit_free(rl);
}

static void table_full(void **state) {
    /* Sixteen slots (the least the table rounds up to) and ten thousand clients over twenty
     * seconds. */
    rv_ratelimit_t *rl = make(1, 3, 1); /* one a minute: the flood adds a third */
    const char *busy = "203.0.113.200";
    take_ok(rl, busy, T0, 3);
    take_limited(rl, busy, T0);
    char key[32];
    uint64_t t = T0;
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        t++;
        /* A newcomer always gets its burst: a full table never locks anyone out. */
        take_ok(rl, key, t, 1);
        /* A client that keeps calling stays the most recently seen, so it is never the one
         * whose slot is reused, and its limit holds however many others come. */
        t++;
        take_limited(rl, busy, t);
    }
    /* Still working after the flood: a new client, then its limit. */
    take_ok(rl, "192.0.2.1", t, 3);
    take_limited(rl, "192.0.2.1", t);
    rv_ratelimit_free(rl);
}

static void long_keys(void **state) {
    /* Keys longer than any address are accepted (bounded copies) and do not crash. */
    char a[300], b[300];
    memset(a, 'a', sizeof a - 1);
    a[sizeof a - 1] = '\0';
    memset(b, 'b', sizeof b - 1);
    b[sizeof b - 1] = '\0';
    rv_ratelimit_t *rl = make(60, 2, 64);
    take_ok(rl, a, T0, 2);
    take_limited(rl, a, T0);
    take_ok(rl, b, T0, 2);
    take_limited(rl, b, T0);
    take_ok(rl, "", T0, 2);
    take_limited(rl, "", T0);
    rv_ratelimit_free(rl);
}

static void zero_per_min(void **state) {
    /* RATE_LIMIT_PER_MIN=0 turns limiting off: nobody is limited, however many calls. */
    rv_ratelimit_t *rl = make(0, 5, 64);
    take_ok(rl, "198.51.100.7", T0, 1000);
    rv_ratelimit_free(rl);
}

static void reconfigured(void **state) {
    /* A reload changes the rate for every process at once; switching it off and on keeps the
     * table. */
    rv_ratelimit_t *rl = make(60, 2, 64);
    const char *k = "198.51.100.9";
    take_ok(rl, k, T0, 2);
    take_limited(rl, k, T0);
    rv_ratelimit_configure(rl, 0, 2);
    take_ok(rl, k, T0, 10);
    rv_ratelimit_configure(rl, 60, 2);
    take_limited(rl, k, T0);
    take_ok(rl, k, T0 + 1000, 1);
    rv_ratelimit_free(rl);
}

/* Two processes that share the table share each client's allowance. */
static void shared_across_fork(void **state) {
    rv_ratelimit_t *rl = make(1, 20, 64);
    const char *k = "198.51.100.10";
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        unsigned ra;
        int ok = 0;
        for (int i = 0; i < 15; i++) ok += rv_ratelimit_take(rl, k, T0, &ra);
        _exit(ok == 15 ? 0 : 1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    take_ok(rl, k, T0, 5);
    take_limited(rl, k, T0);
    rv_ratelimit_free(rl);
}

static void zero_burst(void **state) {
    /* A burst of zero still lets one call through rather than refusing everyone forever. */
    rv_ratelimit_t *rl = make(60, 0, 64);
    take_ok(rl, "198.51.100.7", T0, 1);
    assert_int_equal(take_limited(rl, "198.51.100.7", T0), 1);
    take_ok(rl, "198.51.100.7", T0 + 1000, 1);
    rv_ratelimit_free(rl);
}

static void free_null(void **state) {
    rv_ratelimit_free(NULL);
    rv_ratelimit_t *rl = make(60, 20, 0);
    take_ok(rl, "x", T0, 20);
    take_limited(rl, "x", T0);
    rv_ratelimit_free(rl);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(burst_then_limit),
        cmocka_unit_test(refill_over_time),
        cmocka_unit_test(steady_rate),
        cmocka_unit_test(retry_after_value),
        cmocka_unit_test(per_key_independence),
        cmocka_unit_test(table_full),
        cmocka_unit_test(long_keys),
        cmocka_unit_test(zero_per_min),
        cmocka_unit_test(reconfigured),
        cmocka_unit_test(shared_across_fork),
        cmocka_unit_test(zero_burst),
        cmocka_unit_test(free_null),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
