/* Unit tests for REDIS_URL parsing: every accepted shape, and each kind of rejection. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "rivet/common.h"
#include "rivet/redis_url.h"

static rv_redis_url_t parse_ok(const char *url) {
    rv_redis_url_t u;
    memset(&u, 0x5a, sizeof u);
    int rc = rv_redis_url_parse(url, &u);
    if (rc != 0) fail_msg("expected \"%s\" to parse, got %d", url, rc);
    return u;
}

static void test_default_shape(void **state) {
    rv_redis_url_t u = parse_ok("redis://127.0.0.1:6379/0");
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);
    assert_string_equal(u.path, "");
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "");
}

static void test_host_only(void **state) {
    rv_redis_url_t u = parse_ok("redis://localhost");
    assert_string_equal(u.host, "localhost");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);

    u = parse_ok("redis://10.1.2.3/");
    assert_string_equal(u.host, "10.1.2.3");
    assert_int_equal(u.db, 0);

    u = parse_ok("REDIS://redis-1.internal_net:7000");
    assert_string_equal(u.host, "redis-1.internal_net");
    assert_int_equal(u.port, 7000);
}

static void test_port_and_db(void **state) {
    rv_redis_url_t u = parse_ok("redis://127.0.0.1:1/15");
    assert_int_equal(u.port, 1);
    assert_int_equal(u.db, 15);
    u = parse_ok("redis://127.0.0.1:65535/10000");
    assert_int_equal(u.port, 65535);
    assert_int_equal(u.db, 10000);
}

static void test_ipv6(void **state) {
    rv_redis_url_t u = parse_ok("redis://[::1]:6380/2");
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 2);

    u = parse_ok("redis://[2001:db8::7]");
    assert_string_equal(u.host, "2001:db8::7");
    assert_int_equal(u.port, 6379);

    u = parse_ok("redis://[::ffff:127.0.0.1]/3");
    assert_string_equal(u.host, "::ffff:127.0.0.1");
    assert_int_equal(u.db, 3);
}

static void test_password_only(void **state) {
    rv_redis_url_t u = parse_ok("redis://:s3cret@127.0.0.1:6379/1");
    assert_string_equal(u.user, "");
    assert_string_equal(u.pass, "s3cret");
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.db, 1);
}

static void test_user_and_password(void **state) {
    rv_redis_url_t u = parse_ok("redis://rivet:pw@[::1]:6379");
    assert_string_equal(u.user, "rivet");
    assert_string_equal(u.pass, "pw");
    assert_string_equal(u.host, "::1");
}

static void test_percent_decoding(void **state) {
    rv_redis_url_t u = parse_ok("redis://us%40er:p%3Aa%2Fs%25s%20w@127.0.0.1");
    assert_string_equal(u.user, "us@er");
    assert_string_equal(u.pass, "p:a/s%s w");

    /* A raw '@' or ':' in the password still parses: the last '@' ends the credentials. */
    u = parse_ok("redis://:a@b:c@127.0.0.1:6390");
    assert_string_equal(u.pass, "a@b:c");
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6390);
}

static void test_unix(void **state) {
    rv_redis_url_t u = parse_ok("unix:///run/redis/redis.sock");
    assert_string_equal(u.path, "/run/redis/redis.sock");
    assert_string_equal(u.host, "");
    assert_int_equal(u.db, 0);

    u = parse_ok("unix:///run/redis/redis.sock?db=4");
    assert_string_equal(u.path, "/run/redis/redis.sock");
    assert_int_equal(u.db, 4);

    u = parse_ok("unix:///tmp/r%20s.sock?password=p%26w&db=2");
    assert_string_equal(u.path, "/tmp/r s.sock");
    assert_string_equal(u.pass, "p&w");
    assert_int_equal(u.db, 2);

    u = parse_ok("unix:///tmp/r.sock?user=app&password=x");
    assert_string_equal(u.user, "app");
    assert_string_equal(u.pass, "x");
}

static void test_longest_fields_fit(void **state) {
    char url[1024];
    char host[256], pass[256];
    memset(host, 'h', 255);
    host[255] = '\0';
    memset(pass, 'p', 255);
    pass[255] = '\0';
    snprintf(url, sizeof url, "redis://:%s@%s:6379", pass, host);
    rv_redis_url_t u = parse_ok(url);
    assert_int_equal(strlen(u.host), 255);
    assert_int_equal(strlen(u.pass), 255);

    char path[108];
    path[0] = '/';
    memset(path + 1, 's', 106);
    path[107] = '\0';
    snprintf(url, sizeof url, "unix://%s", path);
    u = parse_ok(url);
    assert_int_equal(strlen(u.path), 107);
}

static void test_rejections(void **state) {
    static const char *const bad[] = {
        "",
        "127.0.0.1:6379",
        "http://127.0.0.1:6379",
        "rediss://127.0.0.1:6379",
        "redis://",
        "redis:///0",
        "redis://:6379",
        "redis://127.0.0.1:",
        "redis://127.0.0.1:0",
        "redis://127.0.0.1:65536",
        "redis://127.0.0.1:123456",
        "redis://127.0.0.1:-1",
        "redis://127.0.0.1:+80",
        "redis://127.0.0.1:63x9",
        "redis://127.0.0.1/x",
        "redis://127.0.0.1/-1",
        "redis://127.0.0.1/10001",
        "redis://127.0.0.1/1/2",
        "redis://127.0.0.1/0?timeout=5",
        "redis://127.0.0.1#frag",
        "redis://bad host",
        "redis://host\x01name",
        "redis://[::1",
        "redis://[]:6379",
        "redis://[zz::1]",
        "redis://[127.0.0.1]",
        "redis://[::1]x",
        "redis://[::1]:",
        "redis://user@127.0.0.1",
        "redis://@127.0.0.1",
        "redis://:@127.0.0.1",
        "redis://user:@127.0.0.1",
        "redis://:pw@",
        "redis://:p%zzw@127.0.0.1",
        "redis://:p%4@127.0.0.1",
        "redis://:p%00w@127.0.0.1",
        "redis://:p%0aw@127.0.0.1",
        "unix://",
        "unix://relative.sock",
        "unix:///",
        "unix:///tmp/r.sock?",
        "unix:///tmp/r.sock?db",
        "unix:///tmp/r.sock?db=",
        "unix:///tmp/r.sock?db=x",
        "unix:///tmp/r.sock?db=1&",
        "unix:///tmp/r.sock?db=1&db=2",
        "unix:///tmp/r.sock?timeout=1",
        "unix:///tmp/r.sock?user=u",
        "unix:///tmp/r.sock?password=",
        "unix:///tmp/r.sock#x",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        rv_redis_url_t u;
        memset(&u, 0, sizeof u);
        strcpy(u.host, "untouched");
        if (rv_redis_url_parse(bad[i], &u) != RV_EINVAL) fail_msg("accepted \"%s\"", bad[i]);
        /* A rejected URL leaves the output alone. */
        assert_string_equal(u.host, "untouched");
    }
    rv_redis_url_t u;
    assert_int_equal(rv_redis_url_parse(NULL, &u), RV_EINVAL);
}

static void test_overlong_fields(void **state) {
    char url[4096];
    char big[300];
    memset(big, 'a', 256);
    big[256] = '\0';

    snprintf(url, sizeof url, "redis://%s:6379", big); /* host of 256 */
    assert_int_equal(rv_redis_url_parse(url, &(rv_redis_url_t){0}), RV_EINVAL);
    snprintf(url, sizeof url, "redis://:%s@127.0.0.1", big); /* password of 256 */
    assert_int_equal(rv_redis_url_parse(url, &(rv_redis_url_t){0}), RV_EINVAL);
    big[128] = '\0';
    snprintf(url, sizeof url, "redis://%s:pw@127.0.0.1", big); /* user of 128 */
    assert_int_equal(rv_redis_url_parse(url, &(rv_redis_url_t){0}), RV_EINVAL);
    big[108] = '\0';
    snprintf(url, sizeof url, "unix:///%s", big); /* path of 109 */
    assert_int_equal(rv_redis_url_parse(url, &(rv_redis_url_t){0}), RV_EINVAL);

    /* A whole URL beyond any sane length is refused before parsing. */
    memset(url, 'a', sizeof url - 1);
    url[sizeof url - 1] = '\0';
    memcpy(url, "redis://", 8);
    assert_int_equal(rv_redis_url_parse(url, &(rv_redis_url_t){0}), RV_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_shape),      cmocka_unit_test(test_host_only),
        cmocka_unit_test(test_port_and_db),        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_password_only),      cmocka_unit_test(test_user_and_password),
        cmocka_unit_test(test_percent_decoding),   cmocka_unit_test(test_unix),
        cmocka_unit_test(test_longest_fields_fit), cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_overlong_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
