/* Unit tests of rv_buf_t: growth, the hard limit (which bounds everything read from the
 * network), printf, and handing the allocation over. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rivet/buf.h"
#include "rivet/common.h"

static void test_append_grows_and_stays_terminated(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    char expect[5000];
    for (size_t i = 0; i < sizeof expect; i++) {
        char c = (char)('a' + i % 26);
        expect[i] = c;
        assert_int_equal(rv_buf_append(&b, &c, 1), 0);
        assert_int_equal(b.len, i + 1);
        assert_true(b.cap > b.len);
        assert_int_equal(b.data[b.len], '\0');
    }
    assert_memory_equal(b.data, expect, sizeof expect);

    /* Bytes are bytes: an embedded NUL is kept and counted. */
    assert_int_equal(rv_buf_append(&b, "x\0y", 3), 0);
    assert_int_equal(b.len, sizeof expect + 3);
    assert_memory_equal(b.data + sizeof expect, "x\0y", 4);
    rv_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
}

static void test_append_empty_allocates_empty_string(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    /* Callers rely on this to turn "nothing appended" into "" instead of NULL. */
    assert_int_equal(rv_buf_append(&b, "", 0), 0);
    assert_non_null(b.data);
    assert_string_equal(b.data, "");
    assert_int_equal(b.len, 0);
    rv_buf_free(&b);
}

static void test_puts(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_buf_puts(&b, "hello"), 0);
    assert_int_equal(rv_buf_puts(&b, ", "), 0);
    assert_int_equal(rv_buf_puts(&b, "world"), 0);
    assert_string_equal(b.data, "hello, world");
    assert_int_equal(b.len, strlen("hello, world"));
    rv_buf_free(&b);
}

static void test_printf_short_and_long(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_buf_printf(&b, "%d-%s", 42, "x"), 0);
    assert_string_equal(b.data, "42-x");

    /* Longer than any small stack buffer the implementation may use first. */
    char big[1000];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(rv_buf_printf(&b, "[%s|%u]", big, 7u), 0);
    assert_int_equal(b.len, 4 + 1 + 999 + 3);
    assert_memory_equal(b.data, "42-x[", 5);
    assert_memory_equal(b.data + 5, big, 999);
    assert_string_equal(b.data + 5 + 999, "|7]");
    assert_int_equal(strlen(b.data), b.len);

    /* Several long appends in a row keep the earlier text. */
    for (int i = 0; i < 20; i++) assert_int_equal(rv_buf_printf(&b, "%s", big), 0);
    assert_int_equal(b.len, 1007 + 20 * 999);
    assert_string_equal(b.data + b.len - 3, "zzz");
    rv_buf_free(&b);
}

static void test_limit_rejects_and_leaves_buffer_unchanged(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    b.limit = 10;
    assert_int_equal(rv_buf_append(&b, "12345678", 8), 0);
    char *data = b.data;
    size_t cap = b.cap;

    assert_int_equal(rv_buf_append(&b, "abc", 3), RV_ERANGE);
    assert_int_equal(b.len, 8);
    assert_string_equal(b.data, "12345678");
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);

    assert_int_equal(rv_buf_puts(&b, "abc"), RV_ERANGE);
    assert_string_equal(b.data, "12345678");
    assert_int_equal(rv_buf_printf(&b, "%s", "abc"), RV_ERANGE);
    assert_string_equal(b.data, "12345678");
    assert_int_equal(b.len, 8);

    /* Up to the limit exactly is allowed; one byte more is not. */
    assert_int_equal(rv_buf_append(&b, "9A", 2), 0);
    assert_string_equal(b.data, "123456789A");
    assert_int_equal(rv_buf_append(&b, "", 0), 0);
    assert_int_equal(rv_buf_append(&b, "B", 1), RV_ERANGE);
    assert_string_equal(b.data, "123456789A");
    assert_int_equal(b.len, 10);
    rv_buf_free(&b);
}

static void test_limit_long_printf_and_huge_sizes(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    b.limit = 600;
    assert_int_equal(rv_buf_puts(&b, "head"), 0);
    char big[700];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    /* The long printf path must honour the limit too. */
    assert_int_equal(rv_buf_printf(&b, "%s", big), RV_ERANGE);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "head");

    /* A size that would overflow len + n must be refused, not wrap around. */
    assert_int_equal(rv_buf_reserve(&b, SIZE_MAX), RV_ERANGE);
    assert_int_equal(rv_buf_reserve(&b, SIZE_MAX - 2), RV_ERANGE);
    assert_string_equal(b.data, "head");
    rv_buf_free(&b);
}

static void test_reserve_unlimited_overflow_refused(void **state) {
    /* Without a limit, a reservation that cannot be represented must fail rather than report
     * success with no room (len + n + 1 wraps to a small number). */
    rv_buf_t b = RV_BUF_INIT;
    assert_int_not_equal(rv_buf_reserve(&b, SIZE_MAX), 0);
    assert_int_equal(rv_buf_puts(&b, "abc"), 0);
    assert_int_not_equal(rv_buf_reserve(&b, SIZE_MAX - 1), 0);
    assert_string_equal(b.data, "abc");
    rv_buf_free(&b);
}

static void test_reserve_keeps_len(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_buf_puts(&b, "ab"), 0);
    assert_int_equal(rv_buf_reserve(&b, 1000), 0);
    assert_int_equal(b.len, 2);
    assert_true(b.cap >= 1003);
    assert_string_equal(b.data, "ab");
    char *data = b.data;
    /* The reserved room is used without another allocation. */
    char fill[1000];
    memset(fill, 'f', sizeof fill);
    assert_int_equal(rv_buf_append(&b, fill, sizeof fill), 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.len, 1002);
    rv_buf_free(&b);
}

static void test_reset_keeps_allocation(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    rv_buf_reset(&b); /* harmless on an empty buffer */
    assert_null(b.data);
    assert_int_equal(rv_buf_puts(&b, "some text here"), 0);
    char *data = b.data;
    size_t cap = b.cap;
    rv_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_ptr_equal(b.data, data);
    assert_int_equal(b.cap, cap);
    assert_string_equal(b.data, "");
    assert_int_equal(rv_buf_puts(&b, "new"), 0);
    assert_string_equal(b.data, "new");
    rv_buf_free(&b);
}

static void test_steal(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    size_t len = 99;
    assert_null(rv_buf_steal(&b, &len));
    assert_int_equal(len, 0);

    assert_int_equal(rv_buf_printf(&b, "%s=%d", "k", 5), 0);
    char *p = rv_buf_steal(&b, &len);
    assert_non_null(p);
    assert_string_equal(p, "k=5");
    assert_int_equal(len, 3);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);

    /* The buffer is usable again and does not share memory with what was handed over. */
    assert_int_equal(rv_buf_puts(&b, "again"), 0);
    assert_ptr_not_equal(b.data, p);
    assert_string_equal(p, "k=5");
    char *q = rv_buf_steal(&b, NULL);
    assert_string_equal(q, "again");
    free(p);
    free(q);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_grows_and_stays_terminated),
        cmocka_unit_test(test_append_empty_allocates_empty_string),
        cmocka_unit_test(test_puts),
        cmocka_unit_test(test_printf_short_and_long),
        cmocka_unit_test(test_limit_rejects_and_leaves_buffer_unchanged),
        cmocka_unit_test(test_limit_long_printf_and_huge_sizes),
        cmocka_unit_test(test_reserve_unlimited_overflow_refused),
        cmocka_unit_test(test_reserve_keeps_len),
        cmocka_unit_test(test_reset_keeps_allocation),
        cmocka_unit_test(test_steal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
