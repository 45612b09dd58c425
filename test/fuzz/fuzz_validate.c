/* Fuzz the validation of what callers of the checkout and portal endpoints send, and the JSON
 * helpers that write answers about it.
 *
 * The request handlers parse a body with cJSON and hand its fields to the pure validators; that
 * parse lives in static functions bound to a live request, so this harness repeats the same steps
 * on the input: the input as a JSON body (fields checked as the checkout and portal handlers check
 * them, the 422 answer written and parsed back), the input as one string given to every
 * validator, and the input split at its first newline into a peer and an X-Forwarded-For value.
 * Properties: the id validators match their one-line specification exactly; an accepted e-mail
 * address is plain printable ASCII within its bounds; an accepted redirect URL's authority is
 * exactly an allowed origin; the client address is the peer or an IP literal from the header;
 * rv_json_escape output is valid UTF-8 JSON that decodes to the input when the input is valid
 * UTF-8. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "rivet/buf.h"
#include "rivet/config.h"
#include "rivet/json.h"
#include "rivet/validate.h"

static char *origin_strs[] = {"https://rivet.io", "http://localhost:3000", "https://[::1]:8443"};
static const rv_strlist_t origins = {origin_strs, 3};
static char *proxy_strs[] = {"127.0.0.1", "::1", "10.0.0.7"};
static const rv_strlist_t proxies = {proxy_strs, 3};

/* ---- reference checks -------------------------------------------------------------------- */

static int is_alnum(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* The documented rule for ids: the prefix, then 1 to max letters and digits. */
static int spec_id(const char *s, const char *prefix, size_t max) {
    size_t pl = strlen(prefix);
    if (strncmp(s, prefix, pl) != 0) return 0;
    size_t n = strlen(s + pl);
    if (n < 1 || n > max) return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum((unsigned char)s[pl + i])) return 0;
    return 1;
}

/* Length of a valid UTF-8 sequence at p (no overlong forms, surrogates or values past
 * U+10FFFF), or 0. */
static size_t utf8_seq(const unsigned char *p) {
    if (p[0] < 0x80) return 1;
    size_t n;
    uint32_t cp;
    if ((p[0] & 0xe0) == 0xc0) {
        n = 2;
        cp = p[0] & 0x1fu;
    } else if ((p[0] & 0xf0) == 0xe0) {
        n = 3;
        cp = p[0] & 0x0fu;
    } else if ((p[0] & 0xf8) == 0xf0) {
        n = 4;
        cp = p[0] & 0x07u;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (p[i] & 0x3fu);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000)) return 0;
    if ((cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) return 0;
    return n;
}

static int valid_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = utf8_seq(p);
        if (n == 0) return 0;
        p += n;
    }
    return 1;
}

/* An accepted redirect must point at an allowed origin: the URL is the origin (compared without
 * case, with the scheme's default port allowed), then nothing or a path, query or fragment. */
static int redirect_within(const char *url) {
    for (size_t i = 0; i < origins.n; i++) {
        const char *o = origins.v[i];
        size_t ol = strlen(o);
        if (strncasecmp(url, o, ol) != 0) continue;
        const char *rest = url + ol;
        if (strncmp(o, "https:", 6) == 0 && strncmp(rest, ":443", 4) == 0)
            rest += 4;
        else if (strncmp(o, "http:", 5) == 0 && strncmp(rest, ":80", 3) == 0)
            rest += 3;
        if (*rest == '\0' || *rest == '/' || *rest == '?' || *rest == '#') return 1;
    }
    return 0;
}

static int is_ip(const char *s) {
    unsigned char tmp[16];
    return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

/* ---- the input as one string ------------------------------------------------------------- */

static void check_escape(const char *s) {
    rv_buf_t b = RV_BUF_INIT;
    FUZZ_CHECK(rv_json_escape(&b, s) == 0);
    FUZZ_CHECK(valid_utf8(b.data));
    for (size_t i = 0; i < b.len; i++) FUZZ_CHECK((unsigned char)b.data[i] >= 0x20);
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    FUZZ_CHECK(cJSON_IsString(j));
    if (valid_utf8(s)) FUZZ_CHECK(strcmp(j->valuestring, s) == 0);
    cJSON_Delete(j);
    rv_buf_free(&b);

    /* The error shape carries the string as its detail. */
    FUZZ_CHECK(rv_json_error(&b, s) == 0);
    j = cJSON_ParseWithLength(b.data, b.len);
    FUZZ_CHECK(cJSON_IsObject(j) && cJSON_IsString(cJSON_GetObjectItem(j, "detail")));
    cJSON_Delete(j);
    rv_buf_free(&b);
}

static void check_string(const char *s) {
    size_t n = strlen(s);
    FUZZ_CHECK(rv_valid_session_id(s) ==
               (spec_id(s, "cs_test_", 250) || spec_id(s, "cs_live_", 250)));
    FUZZ_CHECK(rv_valid_customer_id(s) == spec_id(s, "cus_", 250));

    if (rv_valid_email(s)) {
        const char *at = strrchr(s, '@');
        FUZZ_CHECK(n >= 3 && n <= 254 && at != NULL && at > s && at - s <= 64);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK((unsigned char)s[i] > 0x20 && (unsigned char)s[i] < 0x7f);
        FUZZ_CHECK(strchr(s, '@') == at);
    }

    char origin[512];
    if (rv_url_origin(s, origin, sizeof origin) == 0) {
        size_t ol = strlen(origin);
        FUZZ_CHECK(strncmp(origin, "http://", 7) == 0 || strncmp(origin, "https://", 8) == 0);
        /* "with a host": something before any port, and no delimiter of another part. */
        const char *host = strstr(origin, "://") + 3;
        if (*host == '\0' || *host == ':')
            fprintf(stderr, "fuzz: origin \"%s\" of \"%s\" has no host\n", origin, s);
        FUZZ_CHECK(*host != '\0' && *host != ':' && strpbrk(host, "/?#@\\ ") == NULL);
        for (size_t i = 0; i < ol; i++) FUZZ_CHECK(!(origin[i] >= 'A' && origin[i] <= 'Z'));
    }
    char tiny[12];
    int rc = rv_url_origin(s, tiny, sizeof tiny);
    if (rc == 0) FUZZ_CHECK(strlen(tiny) < sizeof tiny);

    if (rv_valid_redirect(s, &origins)) {
        FUZZ_CHECK(n >= 1 && n <= 2048);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK((unsigned char)s[i] > 0x20 && s[i] != 0x7f && s[i] != '\\');
        if (!redirect_within(s)) fprintf(stderr, "fuzz: redirect accepted: \"%s\"\n", s);
        FUZZ_CHECK(redirect_within(s));
    }
    check_escape(s);
}

/* ---- peer and X-Forwarded-For ------------------------------------------------------------ */

static void check_client_addr(const uint8_t *data, size_t size) {
    const char *nl = memchr(data, '\n', size);
    size_t pl = nl ? (size_t)(nl - (const char *)data) : size;
    if (pl >= 64) return; /* the server's peer field is 64 bytes */
    char peer[64];
    memcpy(peer, data, pl);
    peer[pl] = '\0';
    if (strlen(peer) != pl) return;
    const char *xff = nl ? nl + 1 : NULL;
    size_t xl = nl ? size - pl - 1 : 0;

    char out[64];
    rv_client_addr(peer, xff, xl, &proxies, out, sizeof out);
    FUZZ_CHECK(strnlen(out, sizeof out) < sizeof out);
    if (strcmp(out, peer) != 0) {
        /* Only a trusted peer's header is read, and only IP literals are taken from it. */
        FUZZ_CHECK(rv_strlist_contains(&proxies, peer));
        FUZZ_CHECK(is_ip(out));
        FUZZ_CHECK(xff != NULL && memmem(xff, xl, out, strlen(out)) != NULL);
    }
    char small[8];
    rv_client_addr(peer, xff, xl, &proxies, small, sizeof small);
    FUZZ_CHECK(strnlen(small, sizeof small) < sizeof small);
}

/* ---- the input as a request body --------------------------------------------------------- */

/* A string field as the handlers read it: NULL when absent, null or not a string. */
static const char *field(const cJSON *j, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static void check_body(const uint8_t *data, size_t size, const rv_config_t *cfg) {
    cJSON *j = cJSON_ParseWithLength((const char *)data, size);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return;
    }
    rv_json_verr_t errs[8];
    size_t n = 0;
    memset(errs, 0, sizeof errs);
    const char *email = field(j, "email");
    const char *tier = field(j, "tier");
    const char *success = field(j, "success_url");
    const char *cancel = field(j, "cancel_url");
    const char *session = field(j, "session_id");
    const char *customer = field(j, "customer_id");
    if (email == NULL || !rv_valid_email(email)) {
        errs[n].loc[0] = "body";
        errs[n].loc[1] = "email";
        errs[n].msg = email ? email : "Field required";
        errs[n++].type = "value_error";
    }
    if (tier == NULL || rv_config_price_of_tier(cfg, tier) == NULL) {
        errs[n].loc[0] = "body";
        errs[n].loc[1] = tier ? tier : "tier";
        errs[n].msg = "Input should be 'basic', 'pro' or 'enterprise'";
        errs[n++].type = "enum";
    }
    if (success && !rv_valid_redirect(success, &origins)) {
        errs[n].loc[0] = "body";
        errs[n].loc[1] = "success_url";
        errs[n].loc[2] = success;
        errs[n].msg = "URL must be on an allowed origin";
        errs[n++].type = "value_error";
    }
    if (cancel && !rv_valid_redirect(cancel, &origins)) {
        errs[n].loc[0] = "body";
        errs[n].loc[1] = "cancel_url";
        errs[n].msg = cancel;
        errs[n++].type = "value_error";
    }
    if (session && !rv_valid_session_id(session)) {
        errs[n].loc[0] = "body";
        errs[n].loc[1] = "session_id";
        errs[n].msg = "Malformed checkout session id";
        errs[n++].type = session;
    }
    if (customer && !rv_valid_customer_id(customer)) {
        errs[n].loc[0] = customer;
        errs[n].msg = "Malformed customer id";
        errs[n++].type = "value_error";
    }
    rv_buf_t b = RV_BUF_INIT;
    FUZZ_CHECK(rv_json_validation(&b, errs, n) == 0);
    cJSON *answer = cJSON_ParseWithLength(b.data, b.len);
    const cJSON *detail = cJSON_GetObjectItem(answer, "detail");
    FUZZ_CHECK(cJSON_IsArray(detail) && (size_t)cJSON_GetArraySize(detail) == n);
    cJSON_Delete(answer);
    rv_buf_free(&b);
    cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char basic[] = "price_basic", pro[] = "price_pro", enterprise[] = "price_enterprise";
    rv_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.price_basic = basic;
    cfg.price_pro = pro;
    cfg.price_enterprise = enterprise;

    char *s = malloc(size + 1);
    if (s == NULL) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    check_string(s);
    free(s);
    check_client_addr(data, size);
    check_body(data, size, &cfg);
    return 0;
}
