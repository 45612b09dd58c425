/* Unit tests of the JSON text helpers: every output is parsed back with cJSON, so the escaping
 * is judged by a real JSON parser rather than by comparing against a hand-written string only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/json.h"

/* 1 when s[0..n) is valid UTF-8 (no overlongs, surrogates or values past U+10FFFF). */
static int valid_utf8(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + k > n) return 0;
        for (size_t j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return 0;
        i += k;
    }
    return 1;
}

/* Escape s, check the text is plain valid JSON (valid UTF-8, no raw control bytes), and return
 * the string cJSON decodes from it (malloc'd). */
static char *escape_roundtrip(const char *s, char *raw, size_t rawlen) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_json_escape(&b, s), 0);
    assert_non_null(b.data);
    assert_true(b.len >= 2);
    assert_int_equal(b.data[0], '"');
    assert_int_equal(b.data[b.len - 1], '"');
    for (size_t i = 0; i < b.len; i++) {
        unsigned char c = (unsigned char)b.data[i];
        if (c < 0x20 || c == 0x7f) fail_msg("raw control byte 0x%02x at %zu in %s", c, i, b.data);
    }
    if (!valid_utf8((const unsigned char *)b.data, b.len)) fail_msg("output is not UTF-8");
    if (raw) {
        assert_true(b.len < rawlen);
        memcpy(raw, b.data, b.len + 1);
    }
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    if (j == NULL) fail_msg("cJSON cannot parse %s", b.data);
    assert_true(cJSON_IsString(j));
    char *out = strdup(j->valuestring);
    assert_non_null(out);
    cJSON_Delete(j);
    rv_buf_free(&b);
    return out;
}

static void test_escape_plain(void **state) {
    char raw[64];
    char *s = escape_roundtrip("hello world", raw, sizeof raw);
    assert_string_equal(raw, "\"hello world\"");
    assert_string_equal(s, "hello world");
    free(s);
    s = escape_roundtrip("", raw, sizeof raw);
    assert_string_equal(raw, "\"\"");
    assert_string_equal(s, "");
    free(s);
}

static void test_escape_quotes_backslash(void **state) {
    char raw[64];
    const char *in = "say \"hi\" \\ back\\slash \"";
    char *s = escape_roundtrip(in, raw, sizeof raw);
    assert_string_equal(raw, "\"say \\\"hi\\\" \\\\ back\\\\slash \\\"\"");
    assert_string_equal(s, in);
    free(s);
    /* A would-be breakout of the string literal stays inside it. */
    in = "\",\"admin\":true,\"x\":\"";
    s = escape_roundtrip(in, NULL, 0);
    assert_string_equal(s, in);
    free(s);
}

static void test_escape_control_characters(void **state) {
    char in[40];
    size_t k = 0;
    for (int c = 1; c < 0x20; c++) in[k++] = (char)c;
    in[k++] = 0x7f;
    in[k++] = 'z';
    in[k] = '\0';
    char raw[512];
    char *s = escape_roundtrip(in, raw, sizeof raw);
    assert_string_equal(s, in);
    free(s);
    /* Newline and tab in particular must not appear raw (a log or header injection vector). */
    s = escape_roundtrip("a\nb\r\tc", raw, sizeof raw);
    assert_null(strchr(raw, '\n'));
    assert_null(strchr(raw, '\r'));
    assert_null(strchr(raw, '\t'));
    assert_string_equal(s, "a\nb\r\tc");
    free(s);
}

static void test_escape_valid_utf8_kept(void **state) {
    /* é (2 bytes), € (3 bytes), 𝄞 (4 bytes), U+10FFFF (the last code point), and U+FFFD
     * itself. */
    const char *in = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9d\x84\x9e \xf4\x8f\xbf\xbf \xef\xbf\xbd";
    char raw[128];
    char *s = escape_roundtrip(in, raw, sizeof raw);
    /* Kept as the same bytes, not turned into \u escapes. */
    assert_int_equal(strlen(raw), strlen(in) + 2);
    assert_memory_equal(raw + 1, in, strlen(in));
    assert_string_equal(s, in);
    free(s);
}

static void test_escape_invalid_utf8_replaced(void **state) {
    /* Each case is valid text around an invalid sequence; the sequence must decode to one or
     * more U+FFFD and nothing else, the text around it must survive. */
    static const struct {
        const char *in;
        const char *prefix;
        const char *suffix;
    } cases[] = {
        {"a\xff"
         "b",
         "a", "b"}, /* never valid */
        {"a\x80"
         "b",
         "a", "b"}, /* lone continuation byte */
        {"a\xc0\xaf"
         "b",
         "a", "b"}, /* overlong '/' */
        {"a\xe0\x80\xaf"
         "b",
         "a", "b"}, /* overlong, 3 bytes */
        {"a\xed\xa0\x80"
         "b",
         "a", "b"}, /* UTF-16 surrogate */
        {"a\xf4\x90\x80\x80"
         "b",
         "a", "b"}, /* past U+10FFFF */
        {"a\xf8\x88\x80\x80\x80"
         "b",
         "a", "b"},                 /* 5-byte form */
        {"end\xe2\x82", "end", ""}, /* truncated at the end of the string */
        {"\xc3"
         "A",
         "", "A"}, /* lead byte, then ASCII */
        {"x\xe2\x82\xac\xe2\x82"
         "\xc3\xa9",
         "x\xe2\x82\xac", "\xc3\xa9"}, /* between valid */
    };
    static const char fffd[] = "\xef\xbf\xbd";
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        char raw[128];
        char *s = escape_roundtrip(cases[i].in, raw, sizeof raw);
        size_t pl = strlen(cases[i].prefix), sl = strlen(cases[i].suffix), n = strlen(s);
        if (strstr(raw, "\\ufffd") == NULL) fail_msg("case %zu: no \\ufffd in %s", i, raw);
        if (n < pl + sl + 3 || memcmp(s, cases[i].prefix, pl) != 0 ||
            memcmp(s + n - sl, cases[i].suffix, sl) != 0)
            fail_msg("case %zu: text around the bad bytes changed: %s", i, raw);
        for (size_t k = pl; k < n - sl; k += 3)
            if (n - sl - k < 3 || memcmp(s + k, fffd, 3) != 0)
                fail_msg("case %zu: the bad bytes became something other than U+FFFD: %s", i, raw);
        free(s);
    }
}

static void test_escape_appends(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_buf_puts(&b, "["), 0);
    assert_int_equal(rv_json_escape(&b, "a"), 0);
    assert_int_equal(rv_buf_puts(&b, ","), 0);
    assert_int_equal(rv_json_escape(&b, "b\""), 0);
    assert_int_equal(rv_buf_puts(&b, "]"), 0);
    assert_string_equal(b.data, "[\"a\",\"b\\\"\"]");
    rv_buf_free(&b);
}

static void test_escape_respects_limit(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    b.limit = 8;
    assert_int_equal(rv_json_escape(&b, "a long string that does not fit"), RV_ERANGE);
    rv_buf_free(&b);
}

static void test_error(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    const char *detail = "Invalid \"tier\": \xff\n";
    assert_int_equal(rv_json_error(&b, detail), 0);
    cJSON *j = cJSON_Parse(b.data);
    assert_non_null(j);
    assert_true(cJSON_IsObject(j));
    assert_int_equal(cJSON_GetArraySize(j), 1);
    cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
    assert_true(cJSON_IsString(d));
    assert_string_equal(d->valuestring, "Invalid \"tier\": \xef\xbf\xbd\n");
    cJSON_Delete(j);
    rv_buf_free(&b);

    assert_int_equal(rv_json_error(&b, "Not Found"), 0);
    assert_string_equal(b.data, "{\"detail\":\"Not Found\"}");
    rv_buf_free(&b);
}

static void assert_verr(cJSON *item, const char *const *loc, size_t nloc, const char *msg,
                        const char *type) {
    assert_true(cJSON_IsObject(item));
    assert_int_equal(cJSON_GetArraySize(item), 3);
    cJSON *l = cJSON_GetObjectItemCaseSensitive(item, "loc");
    assert_true(cJSON_IsArray(l));
    assert_int_equal(cJSON_GetArraySize(l), nloc);
    for (size_t i = 0; i < nloc; i++) {
        cJSON *e = cJSON_GetArrayItem(l, (int)i);
        assert_true(cJSON_IsString(e));
        assert_string_equal(e->valuestring, loc[i]);
    }
    cJSON *m = cJSON_GetObjectItemCaseSensitive(item, "msg");
    assert_true(cJSON_IsString(m));
    assert_string_equal(m->valuestring, msg);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(item, "type");
    assert_true(cJSON_IsString(t));
    assert_string_equal(t->valuestring, type);
}

static void test_validation_two_errors(void **state) {
    rv_json_verr_t errs[2] = {
        {{"body", "email", NULL, NULL}, "value is not a valid email address", "value_error"},
        {{"body", "tier", "\"x\"", "3"}, "Input should be 'basic', 'pro' or 'enterprise'", "enum"},
    };
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_json_validation(&b, errs, 2), 0);
    cJSON *j = cJSON_Parse(b.data);
    if (j == NULL) fail_msg("not JSON: %s", b.data);
    assert_int_equal(cJSON_GetArraySize(j), 1);
    cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
    assert_true(cJSON_IsArray(d));
    assert_int_equal(cJSON_GetArraySize(d), 2);
    const char *const loc0[] = {"body", "email"};
    const char *const loc1[] = {"body", "tier", "\"x\"", "3"};
    assert_verr(cJSON_GetArrayItem(d, 0), loc0, 2, errs[0].msg, errs[0].type);
    assert_verr(cJSON_GetArrayItem(d, 1), loc1, 4, errs[1].msg, errs[1].type);
    cJSON_Delete(j);
    rv_buf_free(&b);
}

static void test_validation_empty(void **state) {
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_json_validation(&b, NULL, 0), 0);
    cJSON *j = cJSON_Parse(b.data);
    assert_non_null(j);
    cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
    assert_true(cJSON_IsArray(d));
    assert_int_equal(cJSON_GetArraySize(d), 0);
    cJSON_Delete(j);
    rv_buf_free(&b);
}

/* One value, and after it nothing but JSON's white space. */
static void test_parse_whole(void **state) {
    static const char *const good[] = {"{}", " {\"a\":1}\r\n", "[1,2]\t \n", "\"x\"", "42 "};
    for (size_t i = 0; i < RV_ARRAY_LEN(good); i++) {
        cJSON *j = rv_json_parse(good[i], strlen(good[i]));
        if (j == NULL) fail_msg("refused: %s", good[i]);
        cJSON_Delete(j);
    }
    static const char *const bad[] = {"{}x", "{}{}", "{} ,", "1 2", "{}\v", "{}\f", "", "  "};
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        cJSON *j = rv_json_parse(bad[i], strlen(bad[i]));
        if (j != NULL) fail_msg("taken: %s", bad[i]);
    }
    /* The length bounds the text: what lies beyond it is not read. */
    cJSON *j = rv_json_parse("{}xyz", 2);
    assert_non_null(j);
    cJSON_Delete(j);
    /* A NUL inside the length is not white space. */
    assert_null(rv_json_parse("{}\0", 3));
}

/* An escaped NUL becomes U+0001 where it is an escape, and only there. */
static void test_parse_nul_visible(void **state) {
    static const char text[] = "{\"a\":\"x\\u0000y\",\"b\":\"\\\\u0000\",\"c\":\"\\u0000\\u0000\"}";
    cJSON *j = rv_json_parse_nul_visible(text, sizeof text - 1);
    assert_non_null(j);
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "a")->valuestring, "x\001y");
    /* An escaped backslash followed by "u0000" is text, not an escape. */
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "b")->valuestring, "\\u0000");
    assert_string_equal(cJSON_GetObjectItemCaseSensitive(j, "c")->valuestring, "\001\001");
    cJSON_Delete(j);
    /* Without one, the same as rv_json_parse; trailing bytes are still refused. */
    static const char plain[] = "{\"a\":\"\\u0001\"}", tail[] = "{\"a\":\"\\u0000\"}x";
    j = rv_json_parse_nul_visible(plain, sizeof plain - 1);
    assert_non_null(j);
    cJSON_Delete(j);
    assert_null(rv_json_parse_nul_visible(tail, sizeof tail - 1));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_whole),
        cmocka_unit_test(test_parse_nul_visible),
        cmocka_unit_test(test_escape_plain),
        cmocka_unit_test(test_escape_quotes_backslash),
        cmocka_unit_test(test_escape_control_characters),
        cmocka_unit_test(test_escape_valid_utf8_kept),
        cmocka_unit_test(test_escape_invalid_utf8_replaced),
        cmocka_unit_test(test_escape_appends),
        cmocka_unit_test(test_escape_respects_limit),
        cmocka_unit_test(test_error),
        cmocka_unit_test(test_validation_two_errors),
        cmocka_unit_test(test_validation_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
