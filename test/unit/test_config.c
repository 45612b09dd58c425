/* Unit tests of the configuration: defaults from the design's table, the KEY=VALUE file format,
 * the environment winning over the file, validation of every kind of key, errors that name the
 * key and never print a secret, the redacted dump, and the URL origin helper. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cmocka.h>

#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/config.h"
#include "rivet/log.h"

/* Recognisable secrets: no error text or dump may ever contain them. */
#define SECRET_KEY "sk_test_SEKRETkeyVALUE4242"
#define WH_SECRET  "whsec_SEKRETwebhookVALUE4242"
#define WH_SECRET2 "whsec_SEKRETrotatedVALUE4343"
#define API_TOKEN  "tok_SEKRETapiTOKEN4242abcdef"
#define REDIS_PASS "SEKRETredisPASS4242"

static const char *const secret_marks[] = {
    "SEKRETkeyVALUE", "SEKRETwebhookVALUE", "SEKRETrotatedVALUE",
    "SEKRETapiTOKEN", "SEKRETredisPASS",
};

static const char *const base_env[] = {
    "STRIPE_SECRET_KEY=" SECRET_KEY,       "STRIPE_WEBHOOK_SECRET=" WH_SECRET,
    "STRIPE_PRICE_BASIC=price_basic_1",    "STRIPE_PRICE_PRO=price_pro_1",
    "STRIPE_PRICE_ENTERPRISE=price_ent_1",
};
#define NBASE RV_ARRAY_LEN(base_env)

typedef struct {
    rv_config_t cfg;
    char err[512];
} fx_t;

static int setup(void **state) {
    fx_t *f = calloc(1, sizeof *f);
    if (f == NULL) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fx_t *f = *state;
    /* Also after a failed load: rv_config_free must be safe on whatever is left. */
    rv_config_free(&f->cfg);
    rv_config_free(&f->cfg);
    free(f);
    return 0;
}

/* Load the base environment minus the key `omit` (may be NULL), then the extra entries
 * (NULL-terminated, may be NULL; later entries win), over file text (may be NULL). */
static int load_with(fx_t *f, const char *omit, const char *const *extra, const char *file) {
    const char *env[64];
    size_t n = 0;
    for (size_t i = 0; i < NBASE; i++) {
        size_t ol = omit ? strlen(omit) : 0;
        if (omit && strncmp(base_env[i], omit, ol) == 0 && base_env[i][ol] == '=') continue;
        env[n++] = base_env[i];
    }
    for (size_t i = 0; extra && extra[i]; i++) {
        assert_true(n < RV_ARRAY_LEN(env) - 1);
        env[n++] = extra[i];
    }
    env[n] = NULL;
    rv_config_free(&f->cfg);
    memset(f->err, 0, sizeof f->err);
    return rv_config_load(&f->cfg, env, file, f->err, sizeof f->err);
}

static int load1(fx_t *f, const char *entry) {
    const char *extra[] = {entry, NULL};
    return load_with(f, NULL, extra, NULL);
}

static void assert_no_secret(const char *text) {
    for (size_t i = 0; i < RV_ARRAY_LEN(secret_marks); i++)
        if (strstr(text, secret_marks[i]))
            fail_msg("secret \"%s\" leaked in: %s", secret_marks[i], text);
}

/* Loading with entry must fail with one line naming key and showing no secret. */
static void expect_reject(fx_t *f, const char *entry, const char *key) {
    int rc = load1(f, entry);
    if (rc != RV_EINVAL) fail_msg("%s: accepted (rc %d), expected RV_EINVAL", entry, rc);
    if (strstr(f->err, key) == NULL)
        fail_msg("%s: error \"%s\" does not name %s", entry, f->err, key);
    if (strchr(f->err, '\n')) fail_msg("%s: error is more than one line: %s", entry, f->err);
    assert_no_secret(f->err);
    rv_config_free(&f->cfg);
}

static void expect_accept(fx_t *f, const char *entry) {
    int rc = load1(f, entry);
    if (rc != 0) fail_msg("%s: rejected: %s", entry, f->err);
}

static uint16_t port_of(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return 0;
}

static void assert_addr(const struct sockaddr_storage *ss, int family, const char *ip, int port) {
    char text[INET6_ADDRSTRLEN];
    assert_int_equal(ss->ss_family, family);
    const void *a = family == AF_INET ? (const void *)&((const struct sockaddr_in *)ss)->sin_addr
                                      : (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr;
    assert_non_null(inet_ntop(family, a, text, sizeof text));
    assert_string_equal(text, ip);
    assert_int_equal(port_of(ss), port);
}

static void assert_list(const rv_strlist_t *l, const char *const *want, size_t n) {
    if (l->n != n) fail_msg("list has %zu items, expected %zu", l->n, n);
    for (size_t i = 0; i < n; i++) assert_string_equal(l->v[i], want[i]);
}

/* ---- defaults ------------------------------------------------------------------------------ */

static void test_defaults(void **state) {
    fx_t *f = *state;
    assert_int_equal(load_with(f, NULL, NULL, NULL), 0);
    rv_config_t *c = &f->cfg;
    assert_string_equal(c->stripe_secret_key, SECRET_KEY);
    const char *const wh[] = {WH_SECRET};
    assert_list(&c->webhook_secrets, wh, 1);
    assert_string_equal(c->price_basic, "price_basic_1");
    assert_string_equal(c->price_pro, "price_pro_1");
    assert_string_equal(c->price_enterprise, "price_ent_1");
    assert_string_equal(c->publishable_key, "");
    assert_string_equal(c->stripe_api_base, "https://api.stripe.com");
    assert_string_equal(c->stripe_api_version, "");
    assert_int_equal(c->stripe_timeout_ms, 30000);
    assert_int_equal(c->stripe_max_retries, 2);
    assert_int_equal(c->webhook_tolerance, 300);
    assert_string_equal(c->app_url, "https://rivet.io");
    assert_string_equal(c->api_url, "https://api.rivet.io");
    const char *const redirect[] = {"https://rivet.io"};
    assert_list(&c->redirect_origins, redirect, 1);
    const char *const cors[] = {"https://rivet.io", "https://www.rivet.io",
                                "http://localhost:3000"};
    assert_list(&c->cors_origins, cors, 3);
    assert_string_equal(c->telegram_bot, "RivetCEO_bot");
    assert_string_equal(c->api_token, "");
    assert_string_equal(c->listen, "127.0.0.1:8000");
    assert_addr(&c->listen_addr, AF_INET, "127.0.0.1", 8000);
    assert_string_equal(c->admin_listen, "127.0.0.1:8001");
    assert_addr(&c->admin_addr, AF_INET, "127.0.0.1", 8001);
    assert_int_equal(c->workers, 1);
    assert_int_equal(c->rate_limit_per_min, 60);
    assert_int_equal(c->trust_proxy.n, 0);
    assert_string_equal(c->redis_url, "redis://127.0.0.1:6379/0");
    assert_string_equal(c->redis_stream, "rivet:provisioning");
    assert_int_equal(c->redis_dedupe_ttl, 2592000);
    assert_int_equal(c->redis_timeout_ms, 2000);
    assert_int_equal(c->max_body_bytes, 1048576);
    assert_int_equal(c->max_header_bytes, 16384);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->header_timeout_ms, 10000);
    assert_int_equal(c->body_timeout_ms, 30000);
    assert_int_equal(c->idle_timeout_ms, 60000);
    assert_int_equal(c->shutdown_timeout_ms, 10000);
    assert_int_equal(c->log_level, RV_LOG_INFO);
    assert_string_equal(f->err, "");
}

static void test_every_key_set(void **state) {
    fx_t *f = *state;
    const char *const extra[] = {
        "STRIPE_PUBLISHABLE_KEY=pk_test_publishable123",
        "STRIPE_API_BASE=http://127.0.0.1:12111/",
        "STRIPE_API_VERSION=2024-06-20",
        "STRIPE_TIMEOUT_MS=5000",
        "STRIPE_MAX_RETRIES=0",
        "WEBHOOK_TOLERANCE=600",
        "APP_URL=https://app.example.com/",
        "API_URL=https://api.example.com",
        "REDIRECT_ORIGINS=https://app.example.com,https://shop.example.com",
        "CORS_ORIGINS=https://app.example.com",
        "TELEGRAM_BOT=Some_Other_bot",
        "RIVET_API_TOKEN=" API_TOKEN,
        "LISTEN=0.0.0.0:9000",
        "ADMIN_LISTEN=[::1]:9001",
        "WORKERS=2",
        "RATE_LIMIT_PER_MIN=0",
        "TRUST_PROXY=10.0.0.1",
        "REDIS_URL=redis://10.1.2.3:6380/2",
        "REDIS_STREAM=other:stream",
        "REDIS_DEDUPE_TTL=86400",
        "REDIS_TIMEOUT_MS=500",
        "MAX_BODY_BYTES=2048",
        "MAX_HEADER_BYTES=4096",
        "MAX_CONNECTIONS=3",
        "HEADER_TIMEOUT_MS=300",
        "BODY_TIMEOUT_MS=301",
        "IDLE_TIMEOUT_MS=302",
        "SHUTDOWN_TIMEOUT_MS=0",
        "LOG_LEVEL=debug",
        NULL,
    };
    int rc = load_with(f, NULL, extra, NULL);
    if (rc) fail_msg("rejected: %s", f->err);
    rv_config_t *c = &f->cfg;
    assert_string_equal(c->publishable_key, "pk_test_publishable123");
    assert_string_equal(c->stripe_api_base, "http://127.0.0.1:12111"); /* no trailing slash */
    assert_string_equal(c->stripe_api_version, "2024-06-20");
    assert_int_equal(c->stripe_timeout_ms, 5000);
    assert_int_equal(c->stripe_max_retries, 0);
    assert_int_equal(c->webhook_tolerance, 600);
    assert_string_equal(c->app_url, "https://app.example.com");
    assert_string_equal(c->api_url, "https://api.example.com");
    const char *const ro[] = {"https://app.example.com", "https://shop.example.com"};
    assert_list(&c->redirect_origins, ro, 2);
    const char *const co[] = {"https://app.example.com"};
    assert_list(&c->cors_origins, co, 1);
    assert_string_equal(c->telegram_bot, "Some_Other_bot");
    assert_string_equal(c->api_token, API_TOKEN);
    assert_addr(&c->listen_addr, AF_INET, "0.0.0.0", 9000);
    assert_addr(&c->admin_addr, AF_INET6, "::1", 9001);
    assert_int_equal(c->workers, 2);
    assert_int_equal(c->rate_limit_per_min, 0);
    const char *const tp[] = {"10.0.0.1"};
    assert_list(&c->trust_proxy, tp, 1);
    assert_string_equal(c->redis_url, "redis://10.1.2.3:6380/2");
    assert_string_equal(c->redis_stream, "other:stream");
    assert_int_equal(c->redis_dedupe_ttl, 86400);
    assert_int_equal(c->redis_timeout_ms, 500);
    assert_int_equal(c->max_body_bytes, 2048);
    assert_int_equal(c->max_header_bytes, 4096);
    assert_int_equal(c->max_connections, 3);
    assert_int_equal(c->header_timeout_ms, 300);
    assert_int_equal(c->body_timeout_ms, 301);
    assert_int_equal(c->idle_timeout_ms, 302);
    assert_int_equal(c->shutdown_timeout_ms, 0);
    assert_int_equal(c->log_level, RV_LOG_DEBUG);
}

static void test_log_levels(void **state) {
    fx_t *f = *state;
    static const struct {
        const char *entry;
        int level;
    } ok[] = {{"LOG_LEVEL=debug", RV_LOG_DEBUG},
              {"LOG_LEVEL=info", RV_LOG_INFO},
              {"LOG_LEVEL=warn", RV_LOG_WARN},
              {"LOG_LEVEL=error", RV_LOG_ERROR}};
    for (size_t i = 0; i < RV_ARRAY_LEN(ok); i++) {
        expect_accept(f, ok[i].entry);
        assert_int_equal(f->cfg.log_level, ok[i].level);
    }
    expect_reject(f, "LOG_LEVEL=verbose", "LOG_LEVEL");
    expect_reject(f, "LOG_LEVEL=", "LOG_LEVEL");
}

/* ---- file and environment ------------------------------------------------------------------ */

static void test_environment_wins_over_file(void **state) {
    fx_t *f = *state;
    const char *file = "STRIPE_PRICE_PRO=price_pro_from_file\n"
                       "WORKERS=4\n"
                       "ADMIN_LISTEN=127.0.0.1:9101\n"
                       "LISTEN=127.0.0.1:9100\n"
                       "LOG_LEVEL=debug\n";
    const char *const extra[] = {"STRIPE_PRICE_PRO=price_pro_from_env", "LISTEN=127.0.0.1:9200",
                                 "ADMIN_LISTEN=", NULL};
    int rc = load_with(f, NULL, extra, file);
    if (rc) fail_msg("rejected: %s", f->err);
    assert_string_equal(f->cfg.price_pro, "price_pro_from_env");
    assert_string_equal(f->cfg.listen, "127.0.0.1:9200");
    assert_int_equal(port_of(&f->cfg.listen_addr), 9200);
    /* An empty value in the environment still wins: it disables the admin listener. */
    assert_string_equal(f->cfg.admin_listen, "");
    /* What the environment does not set comes from the file. */
    assert_int_equal(f->cfg.workers, 4);
    assert_int_equal(f->cfg.log_level, RV_LOG_DEBUG);
    assert_string_equal(f->cfg.price_basic, "price_basic_1");
}

static void test_file_alone(void **state) {
    fx_t *f = *state;
    const char *file = "# rivetd settings\n"
                       "STRIPE_SECRET_KEY=" SECRET_KEY "\n"
                       "STRIPE_WEBHOOK_SECRET=" WH_SECRET "\n"
                       "STRIPE_PRICE_BASIC=price_b\n"
                       "STRIPE_PRICE_PRO=price_p\n"
                       "STRIPE_PRICE_ENTERPRISE=price_e\n"
                       /* The prototype's .env holds unrelated keys: ignored. */
                       "OPENAI_API_KEY=sk-unrelated\n"
                       "DATABASE_URL=postgres://u:p@h/db\n"
                       "lower_case_key=whatever\n";
    rv_config_free(&f->cfg);
    int rc = rv_config_load(&f->cfg, NULL, file, f->err, sizeof f->err);
    if (rc) fail_msg("rejected: %s", f->err);
    assert_string_equal(f->cfg.stripe_secret_key, SECRET_KEY);
    assert_string_equal(f->cfg.price_basic, "price_b");
    assert_string_equal(f->cfg.price_enterprise, "price_e");
}

static void test_unknown_environment_ignored(void **state) {
    fx_t *f = *state;
    const char *const extra[] = {"PATH=/usr/bin:/bin",         "HOME=/root", "NOEQUALSIGN",
                                 "OPENAI_API_KEY=sk-whatever", "=empty_key", NULL};
    int rc = load_with(f, NULL, extra, NULL);
    if (rc) fail_msg("rejected: %s", f->err);
}

typedef struct {
    char keys[32][64];
    char vals[32][256];
    int n;
} pairs_t;

static int collect(void *ud, const char *key, const char *val) {
    pairs_t *p = ud;
    if (p->n >= 32) return RV_ERANGE;
    snprintf(p->keys[p->n], sizeof p->keys[0], "%s", key);
    snprintf(p->vals[p->n], sizeof p->vals[0], "%s", val);
    p->n++;
    return 0;
}

static const char *pair(const pairs_t *p, const char *key) {
    const char *v = NULL;
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->keys[i], key) == 0) v = p->vals[i];
    return v;
}

static void assert_pair(const pairs_t *p, const char *key, const char *want) {
    const char *v = pair(p, key);
    if (v == NULL) fail_msg("%s was not parsed", key);
    if (strcmp(v, want) != 0) fail_msg("%s: got [%s], expected [%s]", key, v, want);
}

static void test_file_syntax(void **state) {
    const char *text = "# a comment line\n"
                       "\n"
                       "   \n"
                       "   # an indented comment\n"
                       "PLAIN=value\n"
                       "export EXPORTED=yes\n"
                       "export\tTABBED=tab\n"
                       "DQ=\"two words \\\"quoted\\\" back\\\\slash # not a comment\"\n"
                       "DQNL=\"line1\\nline2\"\n"
                       "SQ='literal \\n $HOME \"dq\" # kept'\n"
                       "SQBS='ends with \\'\n"
                       "INLINE=value # a comment\n"
                       "HASHIN=val#ue\n"
                       "DQCOMMENT=\"quoted\"  # trailing comment\n"
                       "EMPTY=\n"
                       "EMPTYDQ=\"\"\n"
                       "TRAILING=spaces   \n"
                       "URL=https://example.com/a?b=c&d=e\n"
                       "EQUALS=a=b=c\n"
                       "LAST=no-newline";
    pairs_t p;
    memset(&p, 0, sizeof p);
    int bad = -1;
    int rc = rv_config_parse_file(text, collect, &p, &bad);
    if (rc) fail_msg("rejected at line %d", bad);
    assert_pair(&p, "PLAIN", "value");
    assert_pair(&p, "EXPORTED", "yes");
    assert_pair(&p, "TABBED", "tab");
    assert_pair(&p, "DQ", "two words \"quoted\" back\\slash # not a comment");
    assert_pair(&p, "DQNL", "line1\nline2");
    assert_pair(&p, "SQ", "literal \\n $HOME \"dq\" # kept");
    assert_pair(&p, "SQBS", "ends with \\");
    assert_pair(&p, "INLINE", "value");
    assert_pair(&p, "HASHIN", "val#ue");
    assert_pair(&p, "DQCOMMENT", "quoted");
    assert_pair(&p, "EMPTY", "");
    assert_pair(&p, "EMPTYDQ", "");
    assert_pair(&p, "TRAILING", "spaces");
    assert_pair(&p, "URL", "https://example.com/a?b=c&d=e");
    assert_pair(&p, "EQUALS", "a=b=c");
    assert_pair(&p, "LAST", "no-newline");
    assert_int_equal(p.n, 16);
}

static void test_file_crlf(void **state) {
    const char *text = "# written on Windows\r\n"
                       "\r\n"
                       "A=plain\r\n"
                       "B=\"quoted\"\r\n"
                       "C='single'\r\n"
                       "D=with # comment\r\n"
                       "export E=exported\r\n";
    pairs_t p;
    memset(&p, 0, sizeof p);
    int bad = -1;
    int rc = rv_config_parse_file(text, collect, &p, &bad);
    if (rc) fail_msg("rejected at line %d", bad);
    assert_pair(&p, "A", "plain");
    assert_pair(&p, "B", "quoted");
    assert_pair(&p, "C", "single");
    assert_pair(&p, "D", "with");
    assert_pair(&p, "E", "exported");
    assert_int_equal(p.n, 5);
}

static void test_file_malformed_lines(void **state) {
    static const struct {
        const char *text;
        int line;
    } cases[] = {
        {"A=1\nNOEQUALS\n", 2},
        {"A=1\n\n# c\n1ABC=x\n", 4},
        {"A=1\nB=\"unterminated\n", 2},
        {"A=\"x\" junk after quote\n", 1},
        {"A='x' junk\n", 1},
        {"KEY WITH SPACE=1\n", 1},
        {"A=\"multi\nline\"\nBAD LINE\n", 3},
        {"=value\n", 1},
        {"A=1\r\nB\r\n", 2},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        pairs_t p;
        memset(&p, 0, sizeof p);
        int bad = -1;
        int rc = rv_config_parse_file(cases[i].text, collect, &p, &bad);
        if (rc != RV_EINVAL) fail_msg("case %zu accepted", i);
        if (bad != cases[i].line) fail_msg("case %zu: line %d, expected %d", i, bad, cases[i].line);
    }
}

static void test_load_reports_malformed_line(void **state) {
    fx_t *f = *state;
    const char *file = "# comment\n"
                       "WORKERS=2\n"
                       "\n"
                       "STRIPE_SECRET_KEY " SECRET_KEY "\n";
    int rc = load_with(f, NULL, NULL, file);
    assert_int_equal(rc, RV_EINVAL);
    if (strstr(f->err, "line 4") == NULL) fail_msg("error does not name line 4: %s", f->err);
    assert_no_secret(f->err);
}

/* ---- required keys, secrets ---------------------------------------------------------------- */

static void test_required_keys(void **state) {
    fx_t *f = *state;
    static const char *const required[] = {"STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET",
                                           "STRIPE_PRICE_BASIC", "STRIPE_PRICE_PRO",
                                           "STRIPE_PRICE_ENTERPRISE"};
    for (size_t i = 0; i < RV_ARRAY_LEN(required); i++) {
        /* Missing. */
        int rc = load_with(f, required[i], NULL, NULL);
        if (rc != RV_EINVAL) fail_msg("%s missing: accepted", required[i]);
        if (strstr(f->err, required[i]) == NULL)
            fail_msg("%s missing: error does not name it: %s", required[i], f->err);
        assert_no_secret(f->err);
        /* Empty. */
        char entry[64];
        snprintf(entry, sizeof entry, "%s=", required[i]);
        expect_reject(f, entry, required[i]);
    }
}

static void test_secret_key_prefixes(void **state) {
    fx_t *f = *state;
    static const char *const good[] = {
        "STRIPE_SECRET_KEY=sk_test_abcdef123456", "STRIPE_SECRET_KEY=sk_live_abcdef123456",
        "STRIPE_SECRET_KEY=rk_live_abcdef123456", "STRIPE_SECRET_KEY=rk_test_abcdef123456"};
    for (size_t i = 0; i < RV_ARRAY_LEN(good); i++) {
        expect_accept(f, good[i]);
        assert_string_equal(f->cfg.stripe_secret_key, strchr(good[i], '=') + 1);
    }
    expect_reject(f, "STRIPE_SECRET_KEY=pk_live_SEKRETkeyVALUE9", "STRIPE_SECRET_KEY");
    expect_reject(f, "STRIPE_SECRET_KEY=pk_test_SEKRETkeyVALUE9", "STRIPE_SECRET_KEY");
    expect_reject(f, "STRIPE_SECRET_KEY=whsec_SEKRETkeyVALUE9", "STRIPE_SECRET_KEY");
    expect_reject(f, "STRIPE_SECRET_KEY=SEKRETkeyVALUE9", "STRIPE_SECRET_KEY");
    expect_reject(f, "STRIPE_SECRET_KEY=sk_test_SEKRETkeyVALUE9 tail", "STRIPE_SECRET_KEY");
}

static void test_webhook_secret_list(void **state) {
    fx_t *f = *state;
    expect_accept(f, "STRIPE_WEBHOOK_SECRET=" WH_SECRET " , " WH_SECRET2);
    const char *const two[] = {WH_SECRET, WH_SECRET2};
    assert_list(&f->cfg.webhook_secrets, two, 2);
    expect_accept(f, "STRIPE_WEBHOOK_SECRET= " WH_SECRET ",," WH_SECRET2 ", ");
    assert_list(&f->cfg.webhook_secrets, two, 2);
    expect_reject(f, "STRIPE_WEBHOOK_SECRET=" WH_SECRET ",SEKRETwebhookVALUE5",
                  "STRIPE_WEBHOOK_SECRET");
    expect_reject(f, "STRIPE_WEBHOOK_SECRET=sk_test_SEKRETwebhookVALUE5", "STRIPE_WEBHOOK_SECRET");
    expect_reject(f, "STRIPE_WEBHOOK_SECRET= , ", "STRIPE_WEBHOOK_SECRET");
}

static void test_secrets_never_in_errors(void **state) {
    fx_t *f = *state;
    /* Invalid values of secret keys, and invalid other keys while secrets are loaded. */
    expect_reject(f, "RIVET_API_TOKEN=SEKRETapiTOKEN", "RIVET_API_TOKEN"); /* too short */
    expect_reject(f, "RIVET_API_TOKEN=SEKRETapiTOKEN with spaces", "RIVET_API_TOKEN");
    expect_reject(f, "REDIS_URL=redis://:" REDIS_PASS "@127.0.0.1:notaport/0", "REDIS_URL");
    expect_reject(f, "REDIS_URL=http://:" REDIS_PASS "@127.0.0.1/", "REDIS_URL");
    expect_reject(f, "STRIPE_PUBLISHABLE_KEY=sk_live_SEKRETkeyVALUE7", "STRIPE_PUBLISHABLE_KEY");
}

/* ---- numbers ------------------------------------------------------------------------------- */

static void test_numeric_keys_reject_bad_values(void **state) {
    fx_t *f = *state;
    static const char *const keys[] = {
        "STRIPE_TIMEOUT_MS",  "STRIPE_MAX_RETRIES",  "WEBHOOK_TOLERANCE", "WORKERS",
        "RATE_LIMIT_PER_MIN", "REDIS_DEDUPE_TTL",    "REDIS_TIMEOUT_MS",  "MAX_BODY_BYTES",
        "MAX_HEADER_BYTES",   "MAX_CONNECTIONS",     "HEADER_TIMEOUT_MS", "BODY_TIMEOUT_MS",
        "IDLE_TIMEOUT_MS",    "SHUTDOWN_TIMEOUT_MS",
    };
    /* Junk, negative, overflow of 64 bits, and a value no key allows (it also overflows the
     * unsigned int of the keys stored as unsigned, where truncation must not turn it into a
     * small valid number). */
    static const char *const bad[] = {
        "abc",
        "12abc",
        "1.5",
        "0x10",
        "-1",
        "-0",
        "+5",
        " 5",
        "",
        "99999999999999999999999",
        "18446744073709551616",
        "18446744073709551615",
        "4294967297",
    };
    for (size_t k = 0; k < RV_ARRAY_LEN(keys); k++) {
        for (size_t b = 0; b < RV_ARRAY_LEN(bad); b++) {
            char entry[128];
            snprintf(entry, sizeof entry, "%s=%s", keys[k], bad[b]);
            expect_reject(f, entry, keys[k]);
        }
    }
}

static void test_numeric_out_of_range(void **state) {
    fx_t *f = *state;
    /* Zero is meaningless for these: no time to wait, no room, nobody served. */
    static const char *const zero_bad[] = {
        "STRIPE_TIMEOUT_MS=0", "WEBHOOK_TOLERANCE=0", "WORKERS=0",          "REDIS_TIMEOUT_MS=0",
        "MAX_BODY_BYTES=0",    "MAX_HEADER_BYTES=0",  "MAX_CONNECTIONS=0",  "HEADER_TIMEOUT_MS=0",
        "BODY_TIMEOUT_MS=0",   "IDLE_TIMEOUT_MS=0",   "REDIS_DEDUPE_TTL=0",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(zero_bad); i++) {
        char key[64];
        snprintf(key, sizeof key, "%.*s", (int)(strchr(zero_bad[i], '=') - zero_bad[i]),
                 zero_bad[i]);
        expect_reject(f, zero_bad[i], key);
    }
    /* Zero is meaningful for these (no retries, no rate limit, stop at once). */
    expect_accept(f, "STRIPE_MAX_RETRIES=0");
    assert_int_equal(f->cfg.stripe_max_retries, 0);
    expect_accept(f, "RATE_LIMIT_PER_MIN=0");
    assert_int_equal(f->cfg.rate_limit_per_min, 0);
    expect_accept(f, "SHUTDOWN_TIMEOUT_MS=0");
    assert_int_equal(f->cfg.shutdown_timeout_ms, 0);
    /* Absurdly large for their meaning. */
    expect_reject(f, "STRIPE_MAX_RETRIES=1000", "STRIPE_MAX_RETRIES");
    expect_reject(f, "WORKERS=100000", "WORKERS");
    expect_reject(f, "WEBHOOK_TOLERANCE=100000000", "WEBHOOK_TOLERANCE");
    expect_reject(f, "MAX_BODY_BYTES=1099511627776", "MAX_BODY_BYTES"); /* 1 TiB */
    /* Leading zeros are still a decimal number. */
    expect_accept(f, "WORKERS=02");
    assert_int_equal(f->cfg.workers, 2);
}

/* ---- addresses ----------------------------------------------------------------------------- */

static void test_listen_addresses(void **state) {
    fx_t *f = *state;
    expect_accept(f, "LISTEN=192.168.1.20:8080");
    assert_addr(&f->cfg.listen_addr, AF_INET, "192.168.1.20", 8080);
    expect_accept(f, "LISTEN=[::1]:8443");
    assert_addr(&f->cfg.listen_addr, AF_INET6, "::1", 8443);
    expect_accept(f, "LISTEN=[::]:80");
    assert_addr(&f->cfg.listen_addr, AF_INET6, "::", 80);
    expect_accept(f, "ADMIN_LISTEN=[::1]:9001");
    assert_addr(&f->cfg.admin_addr, AF_INET6, "::1", 9001);

    static const char *const bad[] = {
        "127.0.0.1",      "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:8a",   ":8000",      "::1:8000",        "[::1]8000",
        "[::1]",          "[::1:8000",  "256.0.0.1:80",    "1.2.3:80",
        "[127.0.0.1]:80", "",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(bad); i++) {
        char entry[64];
        snprintf(entry, sizeof entry, "LISTEN=%s", bad[i]);
        int rc = load1(f, entry);
        if (rc != RV_EINVAL) fail_msg("%s accepted", entry);
        if (strstr(f->err, "LISTEN") == NULL || strstr(f->err, "ADMIN_LISTEN") != NULL)
            fail_msg("%s: error does not name LISTEN: %s", entry, f->err);
        if (bad[i][0] == '\0') continue; /* an empty ADMIN_LISTEN is allowed */
        snprintf(entry, sizeof entry, "ADMIN_LISTEN=%s", bad[i]);
        expect_reject(f, entry, "ADMIN_LISTEN");
    }
}

static void test_admin_listen_empty_disables(void **state) {
    fx_t *f = *state;
    expect_accept(f, "ADMIN_LISTEN=");
    assert_string_equal(f->cfg.admin_listen, "");
    /* The public listener is unaffected. */
    assert_addr(&f->cfg.listen_addr, AF_INET, "127.0.0.1", 8000);
}

static void test_trust_proxy(void **state) {
    fx_t *f = *state;
    expect_accept(f, "TRUST_PROXY=10.0.0.1, 192.168.0.2 ,::1,fe80::1");
    const char *const want[] = {"10.0.0.1", "192.168.0.2", "::1", "fe80::1"};
    assert_list(&f->cfg.trust_proxy, want, 4);
    expect_accept(f, "TRUST_PROXY=");
    assert_int_equal(f->cfg.trust_proxy.n, 0);
    expect_reject(f, "TRUST_PROXY=proxy.example.com", "TRUST_PROXY");
    expect_reject(f, "TRUST_PROXY=10.0.0.1,10.0.0.999", "TRUST_PROXY");
    expect_reject(f, "TRUST_PROXY=10.0.0.0/8", "TRUST_PROXY");
}

/* ---- URLs and origins ---------------------------------------------------------------------- */

static void test_redirect_origins_default_from_app_url(void **state) {
    fx_t *f = *state;
    expect_accept(f, "APP_URL=https://App.Example.COM:443/landing/");
    /* The trailing slash goes (URLs are built by appending "/path"). */
    assert_int_equal(strcasecmp(f->cfg.app_url, "https://app.example.com:443/landing"), 0);
    const char *const want[] = {"https://app.example.com"};
    assert_list(&f->cfg.redirect_origins, want, 1);

    expect_accept(f, "APP_URL=http://localhost:3000");
    const char *const local[] = {"http://localhost:3000"};
    assert_list(&f->cfg.redirect_origins, local, 1);

    expect_reject(f, "APP_URL=ftp://rivet.io", "APP_URL");
    expect_reject(f, "APP_URL=rivet.io", "APP_URL");
    expect_reject(f, "API_URL=//api.rivet.io", "API_URL");
    expect_reject(f, "STRIPE_API_BASE=api.stripe.com", "STRIPE_API_BASE");
}

static void test_redirect_origins_normalised(void **state) {
    fx_t *f = *state;
    expect_accept(f, "REDIRECT_ORIGINS=HTTPS://Shop.Example.COM:443, http://a.example:80 ,"
                     "https://b.example:8443/,https://shop.example.com");
    /* Lower case, default ports dropped, a bare trailing slash allowed, duplicates merged. */
    const char *const want[] = {"https://shop.example.com", "http://a.example",
                                "https://b.example:8443"};
    assert_list(&f->cfg.redirect_origins, want, 3);
    assert_int_equal(rv_strlist_contains(&f->cfg.redirect_origins, "http://a.example"), 1);
    assert_int_equal(rv_strlist_contains(&f->cfg.redirect_origins, "http://a.example:80"), 0);

    expect_reject(f, "REDIRECT_ORIGINS=https://rivet.io/pricing", "REDIRECT_ORIGINS");
    expect_reject(f, "REDIRECT_ORIGINS=https://rivet.io,http://x.example/a/b", "REDIRECT_ORIGINS");
    expect_reject(f, "REDIRECT_ORIGINS=https://rivet.io?next=1", "REDIRECT_ORIGINS");
    expect_reject(f, "REDIRECT_ORIGINS=javascript:alert(1)", "REDIRECT_ORIGINS");
    expect_reject(f, "REDIRECT_ORIGINS=https://user@rivet.io", "REDIRECT_ORIGINS");
    expect_reject(f, "CORS_ORIGINS=https://rivet.io/app", "CORS_ORIGINS");
}

static void test_cors_origins(void **state) {
    fx_t *f = *state;
    expect_accept(f, "APP_URL=https://elsewhere.example");
    /* The CORS default does not follow APP_URL. */
    const char *const def[] = {"https://rivet.io", "https://www.rivet.io", "http://localhost:3000"};
    assert_list(&f->cfg.cors_origins, def, 3);
    assert_int_equal(rv_strlist_contains(&f->cfg.cors_origins, "https://www.rivet.io"), 1);
    assert_int_equal(rv_strlist_contains(&f->cfg.cors_origins, "https://evil.example"), 0);
    assert_int_equal(rv_strlist_contains(&f->cfg.cors_origins, "https://rivet.io/"), 0);

    expect_accept(f, "CORS_ORIGINS=http://localhost:5173, HTTPS://WWW.RIVET.IO");
    const char *const set[] = {"http://localhost:5173", "https://www.rivet.io"};
    assert_list(&f->cfg.cors_origins, set, 2);
}

static void test_url_origin(void **state) {
    static const struct {
        const char *url;
        const char *origin; /* NULL: must be rejected */
    } cases[] = {
        {"https://Example.COM/path?q=1#f", "https://example.com"},
        {"https://example.com", "https://example.com"},
        {"https://example.com:443/", "https://example.com"},
        {"http://example.com:80/x", "http://example.com"},
        {"https://example.com:8443/x", "https://example.com:8443"},
        {"http://example.com:443", "http://example.com:443"},
        {"https://example.com:80", "https://example.com:80"},
        {"HTTP://LOCALHOST:3000", "http://localhost:3000"},
        {"https://example.com?x=1", "https://example.com"},
        {"https://example.com#top", "https://example.com"},
        {"https://[::1]:8443/x", "https://[::1]:8443"},
        {"https://user:pass@example.com/", NULL},
        {"https://example.com@evil.example/", NULL},
        {"https://@example.com", NULL},
        {"https://example.com\\@evil.example", NULL},
        {"https://exa mple.com", NULL},
        {"ftp://example.com", NULL},
        {"javascript:alert(1)", NULL},
        {"//example.com", NULL},
        {"example.com", NULL},
        {"https://", NULL},
        {"https:///path", NULL},
        {"https:example.com", NULL},
        {"", NULL},
        /* An authority with no host, or a port that is not digits (found by fuzzing). */
        {"http://:80", NULL},
        {"https://:8443/x", NULL},
        {"http://example.com:", NULL},
        {"http://example.com:8o", NULL},
        {"http://a:1:2", NULL},
        {"http://[]:80", NULL},
        {"http://[::1]x", NULL},
        {"http://exa[mple.com", NULL},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        char out[256];
        memset(out, 0, sizeof out);
        int rc = rv_url_origin(cases[i].url, out, sizeof out);
        if (cases[i].origin == NULL) {
            if (rc == 0) fail_msg("%s accepted as %s", cases[i].url, out);
        } else {
            if (rc != 0) fail_msg("%s rejected (%d)", cases[i].url, rc);
            if (strcmp(out, cases[i].origin) != 0)
                fail_msg("%s: origin %s, expected %s", cases[i].url, out, cases[i].origin);
        }
    }
    /* A too small output buffer is an error, not an overflow. */
    struct {
        char out[10];
        char canary[8];
    } s;
    memset(&s, 'X', sizeof s);
    assert_int_not_equal(rv_url_origin("https://example.com/", s.out, sizeof s.out), 0);
    assert_memory_equal(s.canary, "XXXXXXXX", 8);
}

/* ---- tiers --------------------------------------------------------------------------------- */

static void test_price_and_tier(void **state) {
    fx_t *f = *state;
    assert_int_equal(load_with(f, NULL, NULL, NULL), 0);
    assert_string_equal(rv_config_price_of_tier(&f->cfg, "basic"), "price_basic_1");
    assert_string_equal(rv_config_price_of_tier(&f->cfg, "pro"), "price_pro_1");
    assert_string_equal(rv_config_price_of_tier(&f->cfg, "enterprise"), "price_ent_1");
    assert_null(rv_config_price_of_tier(&f->cfg, "free"));
    assert_null(rv_config_price_of_tier(&f->cfg, "Basic"));
    assert_null(rv_config_price_of_tier(&f->cfg, ""));
}

/* ---- dump ---------------------------------------------------------------------------------- */

static void test_dump_redacts(void **state) {
    fx_t *f = *state;
    const char *const extra[] = {
        "STRIPE_SECRET_KEY=sk_live_SEKRETkeyVALUE4242",
        "STRIPE_WEBHOOK_SECRET=" WH_SECRET "," WH_SECRET2,
        "RIVET_API_TOKEN=" API_TOKEN,
        "REDIS_URL=redis://rivet:" REDIS_PASS "@10.9.8.7:6390/3",
        "STRIPE_PUBLISHABLE_KEY=pk_live_visibleToEveryone1",
        "REDIS_STREAM=prov:stream",
        "LISTEN=127.0.0.1:9555",
        "MAX_CONNECTIONS=77",
        NULL,
    };
    int rc = load_with(f, NULL, extra, NULL);
    if (rc) fail_msg("rejected: %s", f->err);
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_config_dump(&f->cfg, &b), 0);
    assert_non_null(b.data);
    assert_no_secret(b.data);
    /* Non-secret values are shown as they are. */
    static const char *const shown[] = {
        "STRIPE_PRICE_BASIC=price_basic_1\n",
        "STRIPE_PRICE_PRO=price_pro_1\n",
        "STRIPE_PRICE_ENTERPRISE=price_ent_1\n",
        "STRIPE_PUBLISHABLE_KEY=pk_live_visibleToEveryone1\n",
        "REDIS_STREAM=prov:stream\n",
        "LISTEN=127.0.0.1:9555\n",
        "MAX_CONNECTIONS=77\n",
        "ADMIN_LISTEN=127.0.0.1:8001\n",
        "TELEGRAM_BOT=RivetCEO_bot\n",
        "STRIPE_API_BASE=https://api.stripe.com\n",
        "APP_URL=https://rivet.io\n",
        "CORS_ORIGINS=https://rivet.io,https://www.rivet.io,http://localhost:3000\n",
        "LOG_LEVEL=info\n",
        "IDLE_TIMEOUT_MS=60000\n",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(shown); i++)
        if (strstr(b.data, shown[i]) == NULL)
            fail_msg("dump lacks %s-- dump:\n%s", shown[i], b.data);
    /* The secret keys are present (as redacted lines), and Redis shows where it points. */
    static const char *const keys[] = {
        "\nSTRIPE_WEBHOOK_SECRET=", "\nRIVET_API_TOKEN=", "\nREDIS_URL="};
    for (size_t i = 0; i < RV_ARRAY_LEN(keys); i++)
        if (strstr(b.data, keys[i]) == NULL) fail_msg("dump lacks %s", keys[i] + 1);
    assert_true(strncmp(b.data, "STRIPE_SECRET_KEY=", 18) == 0 ||
                strstr(b.data, "\nSTRIPE_SECRET_KEY=") != NULL);
    const char *redis = strstr(b.data, "\nREDIS_URL=");
    const char *eol = strchr(redis + 1, '\n');
    char line[256];
    snprintf(line, sizeof line, "%.*s", (int)(eol - redis - 1), redis + 1);
    if (strstr(line, "10.9.8.7") == NULL || strstr(line, "6390") == NULL)
        fail_msg("REDIS_URL line does not show the address: %s", line);
    rv_buf_free(&b);
}

static void test_dump_empty_secrets(void **state) {
    fx_t *f = *state;
    assert_int_equal(load_with(f, NULL, NULL, NULL), 0);
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_config_dump(&f->cfg, &b), 0);
    assert_no_secret(b.data);
    /* An unset token is shown as unset, not as a redacted value. */
    assert_non_null(strstr(b.data, "\nRIVET_API_TOKEN=\n"));
    assert_non_null(strstr(b.data, "\nREDIS_URL="));
    rv_buf_free(&b);
}

/* ---- exact texts ---------------------------------------------------------------------------- */

/* Every validation rule with its message, word for word: operators and the integration tests
 * read these lines, so a change of wording must be deliberate. */
static void test_error_messages_exact(void **state) {
    fx_t *f = *state;
    static const struct {
        const char *entry;
        const char *msg;
    } cases[] = {
        {"STRIPE_SECRET_KEY=", "config: STRIPE_SECRET_KEY is required"},
        {"STRIPE_SECRET_KEY=sk_test_a\tb", "config: STRIPE_SECRET_KEY must not contain spaces or "
                                           "control characters"},
        {"STRIPE_SECRET_KEY=pk_test_123456789",
         "config: STRIPE_SECRET_KEY must be a Stripe secret key (sk_... or rk_...)"},
        {"STRIPE_SECRET_KEY=sk_test_12",
         "config: STRIPE_SECRET_KEY must be a Stripe secret key (sk_... or rk_...)"},
        {"STRIPE_WEBHOOK_SECRET=", "config: STRIPE_WEBHOOK_SECRET is required"},
        {"STRIPE_WEBHOOK_SECRET= , ", "config: STRIPE_WEBHOOK_SECRET must list 1 to 8 secrets"},
        {"STRIPE_WEBHOOK_SECRET=whsec_1111,whsec_2222,whsec_3333,whsec_4444,whsec_5555,"
         "whsec_6666,whsec_7777,whsec_8888,whsec_9999",
         "config: STRIPE_WEBHOOK_SECRET must list 1 to 8 secrets"},
        {"STRIPE_WEBHOOK_SECRET=whsec_1",
         "config: STRIPE_WEBHOOK_SECRET must be whsec_... secrets, comma-separated"},
        {"STRIPE_PRICE_PRO=", "config: STRIPE_PRICE_PRO is required"},
        {"STRIPE_PUBLISHABLE_KEY=sk_test_123",
         "config: STRIPE_PUBLISHABLE_KEY must be a publishable key (pk_...)"},
        {"STRIPE_API_BASE=", "config: STRIPE_API_BASE is required"},
        {"STRIPE_API_BASE=api.stripe.com",
         "config: STRIPE_API_BASE must be an absolute http(s) URL"},
        {"STRIPE_API_VERSION=2024 06", "config: STRIPE_API_VERSION must not contain spaces or "
                                       "control characters"},
        {"STRIPE_TIMEOUT_MS=99", "config: STRIPE_TIMEOUT_MS must be an integer from 100 to 600000"},
        {"STRIPE_MAX_RETRIES=11", "config: STRIPE_MAX_RETRIES must be an integer from 0 to 10"},
        {"WEBHOOK_TOLERANCE=0", "config: WEBHOOK_TOLERANCE must be an integer from 1 to 86400"},
        {"APP_URL=rivet.io", "config: APP_URL must be an absolute http(s) URL"},
        {"API_URL=", "config: API_URL is required"},
        {"REDIRECT_ORIGINS=ftp://rivet.io",
         "config: REDIRECT_ORIGINS must be a comma-separated list of http(s) origins"},
        {"REDIRECT_ORIGINS=https://rivet.io/a",
         "config: REDIRECT_ORIGINS must list origins (scheme://host[:port]) without paths"},
        {"CORS_ORIGINS=rivet.io",
         "config: CORS_ORIGINS must be a comma-separated list of http(s) origins"},
        {"TELEGRAM_BOT=", "config: TELEGRAM_BOT is required"},
        {"TELEGRAM_BOT=bot-1", "config: TELEGRAM_BOT must be a bot user name (5-32 letters, "
                               "digits, _)"},
        {"RIVET_API_TOKEN=short",
         "config: RIVET_API_TOKEN must be at least 16 characters when set"},
        {"LISTEN=", "config: LISTEN is required"},
        {"LISTEN=localhost", "config: LISTEN must be host:port or [v6]:port with an IP address"},
        {"ADMIN_LISTEN=localhost", "config: ADMIN_LISTEN must be host:port, [v6]:port, or empty"},
        {"WORKERS=0", "config: WORKERS must be an integer from 1 to 64"},
        {"RATE_LIMIT_PER_MIN=1000001",
         "config: RATE_LIMIT_PER_MIN must be an integer from 0 to 1000000"},
        {"TRUST_PROXY=proxy.local", "config: TRUST_PROXY must list IP addresses"},
        {"REDIS_URL=", "config: REDIS_URL is required"},
        {"REDIS_URL=http://127.0.0.1/", "config: REDIS_URL must be "
                                        "redis://[[user]:pass@]host[:port][/db] or "
                                        "unix:///path[?db=N]"},
        {"REDIS_STREAM=", "config: REDIS_STREAM is required"},
        {"REDIS_DEDUPE_TTL=59", "config: REDIS_DEDUPE_TTL must be an integer from 60 to 315360000"},
        {"REDIS_TIMEOUT_MS=9", "config: REDIS_TIMEOUT_MS must be an integer from 10 to 60000"},
        {"MAX_BODY_BYTES=1023", "config: MAX_BODY_BYTES must be an integer from 1024 to 67108864"},
        {"MAX_HEADER_BYTES=1023",
         "config: MAX_HEADER_BYTES must be an integer from 1024 to 1048576"},
        {"MAX_BODY_BUFFER=65535",
         "config: MAX_BODY_BUFFER must be an integer from 65536 to 1099511627776"},
        {"MAX_BODY_BUFFER=65536", "config: MAX_BODY_BUFFER must hold at least one request of "
                                  "MAX_BODY_BYTES + MAX_HEADER_BYTES"},
        {"MAX_CONNECTIONS=0", "config: MAX_CONNECTIONS must be an integer from 1 to 1000000"},
        {"HEADER_TIMEOUT_MS=9", "config: HEADER_TIMEOUT_MS must be an integer from 10 to 3600000"},
        {"BODY_TIMEOUT_MS=9", "config: BODY_TIMEOUT_MS must be an integer from 10 to 3600000"},
        {"IDLE_TIMEOUT_MS=9", "config: IDLE_TIMEOUT_MS must be an integer from 10 to 3600000"},
        {"SHUTDOWN_TIMEOUT_MS=3600001",
         "config: SHUTDOWN_TIMEOUT_MS must be an integer from 0 to 3600000"},
        {"LOG_LEVEL=trace", "config: LOG_LEVEL must be debug, info, warn or error"},
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(cases); i++) {
        if (load1(f, cases[i].entry) != RV_EINVAL) fail_msg("%s: accepted", cases[i].entry);
        if (strcmp(f->err, cases[i].msg) != 0)
            fail_msg("%s: error\n  \"%s\", expected\n  \"%s\"", cases[i].entry, f->err,
                     cases[i].msg);
    }

    /* Too long: one byte over the limit of any string, and of the stream's name. */
    static char entry[4200];
    int n = snprintf(entry, sizeof entry, "STRIPE_PRICE_BASIC=");
    memset(entry + n, 'p', 4097);
    entry[n + 4097] = '\0';
    assert_int_equal(load1(f, entry), RV_EINVAL);
    assert_string_equal(f->err, "config: STRIPE_PRICE_BASIC is too long");
    entry[n + 4096] = '\0';
    expect_accept(f, entry);
    n = snprintf(entry, sizeof entry, "REDIS_STREAM=");
    memset(entry + n, 's', 201);
    entry[n + 201] = '\0';
    assert_int_equal(load1(f, entry), RV_EINVAL);
    assert_string_equal(f->err, "config: REDIS_STREAM is too long");

    assert_int_equal(load_with(f, NULL, NULL, "A=1\nB C\n"), RV_EINVAL);
    assert_string_equal(f->err, "config: malformed line 2 in the configuration file");
}

/* The dump's text, line for line: `rivetd --check-config` prints it and operators compare it. */
static void test_dump_exact(void **state) {
    fx_t *f = *state;
    const char *const extra[] = {
        "STRIPE_SECRET_KEY=rk_live_SEKRETkeyVALUE4242",
        "STRIPE_WEBHOOK_SECRET=" WH_SECRET "," WH_SECRET2,
        "RIVET_API_TOKEN=" API_TOKEN,
        "REDIS_URL=redis://rivet:" REDIS_PASS "@[::1]:6390/3",
        "TRUST_PROXY=10.0.0.1,::1",
        "WEBHOOK_TOLERANCE=600",
        "LOG_LEVEL=warning",
        NULL,
    };
    int rc = load_with(f, NULL, extra, NULL);
    if (rc) fail_msg("rejected: %s", f->err);
    rv_buf_t b = RV_BUF_INIT;
    assert_int_equal(rv_config_dump(&f->cfg, &b), 0);
    assert_int_equal(rv_buf_append(&b, "", 1), 0);
    const char *want = "STRIPE_SECRET_KEY=rk_live_<redacted>\n"
                       "STRIPE_WEBHOOK_SECRET=whsec_<redacted>,whsec_<redacted>\n"
                       "STRIPE_PRICE_BASIC=price_basic_1\n"
                       "STRIPE_PRICE_PRO=price_pro_1\n"
                       "STRIPE_PRICE_ENTERPRISE=price_ent_1\n"
                       "STRIPE_PUBLISHABLE_KEY=\n"
                       "STRIPE_API_BASE=https://api.stripe.com\n"
                       "STRIPE_API_VERSION=\n"
                       "STRIPE_TIMEOUT_MS=30000\n"
                       "STRIPE_MAX_RETRIES=2\n"
                       "STRIPE_READS_PER_SEC=10\n"
                       "WEBHOOK_TOLERANCE=600\n"
                       "APP_URL=https://rivet.io\n"
                       "API_URL=https://api.rivet.io\n"
                       "REDIRECT_ORIGINS=https://rivet.io\n"
                       "CORS_ORIGINS=https://rivet.io,https://www.rivet.io,http://localhost:3000\n"
                       "TELEGRAM_BOT=RivetCEO_bot\n"
                       "ENTITLEMENT_CACHE=10000\n"
                       "TELEGRAM_LINK_TTL=604800\n"
                       "CHECKOUT_LINK_MAX_AGE=86400\n"
                       "RIVET_API_TOKEN=<redacted>\n"
                       "LISTEN=127.0.0.1:8000\n"
                       "ADMIN_LISTEN=127.0.0.1:8001\n"
                       "WORKERS=1\n"
                       "RATE_LIMIT_PER_MIN=60\n"
                       "TRUST_PROXY=10.0.0.1,::1\n"
                       "REDIS_URL=redis://rivet:<redacted>@[::1]:6390/3\n"
                       "REDIS_STREAM=rivet:provisioning\n"
                       "REDIS_DEDUPE_TTL=2592000\n"
                       "REDIS_TIMEOUT_MS=2000\n"
                       "REDIS_SENTINELS=\n"
                       "REDIS_SENTINEL_MASTER=\n"
                       "REDIS_MIN_REPLICAS=0\n"
                       "PAST_DUE_ACTIVE=true\n"
                       "RECONCILE_INTERVAL=300\n"
                       "MAX_BODY_BYTES=1048576\n"
                       "MAX_HEADER_BYTES=16384\n"
                       "MAX_BODY_BUFFER=67108864\n"
                       "MAX_CONNECTIONS=10000\n"
                       "HEADER_TIMEOUT_MS=10000\n"
                       "BODY_TIMEOUT_MS=30000\n"
                       "IDLE_TIMEOUT_MS=60000\n"
                       "SHUTDOWN_TIMEOUT_MS=10000\n"
                       "LOG_LEVEL=warn\n";
    if (strcmp(b.data, want) != 0) fail_msg("dump:\n%s\nexpected:\n%s", b.data, want);
    rv_buf_free(&b);
}

/* ---- the table: reload ---------------------------------------------------------------------- */

/* The keys a reload must keep (sockets, processes, Redis, HTTP limits) and some it must apply. */
static const char *const start_only_keys[] = {
    "LISTEN",           "ADMIN_LISTEN",     "WORKERS",          "REDIS_URL",
    "REDIS_STREAM",     "REDIS_DEDUPE_TTL", "REDIS_TIMEOUT_MS", "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES", "MAX_BODY_BUFFER",  "MAX_CONNECTIONS",  "HEADER_TIMEOUT_MS",
    "BODY_TIMEOUT_MS",  "IDLE_TIMEOUT_MS",
};
static const char *const reloadable_keys[] = {
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_PRICE_BASIC",
    "STRIPE_PRICE_PRO",
    "STRIPE_PRICE_ENTERPRISE",
    "STRIPE_PUBLISHABLE_KEY",
    "STRIPE_API_BASE",
    "STRIPE_API_VERSION",
    "STRIPE_TIMEOUT_MS",
    "STRIPE_MAX_RETRIES",
    "WEBHOOK_TOLERANCE",
    "APP_URL",
    "API_URL",
    "REDIRECT_ORIGINS",
    "CORS_ORIGINS",
    "TELEGRAM_BOT",
    "RIVET_API_TOKEN",
    "RATE_LIMIT_PER_MIN",
    "TRUST_PROXY",
    "SHUTDOWN_TIMEOUT_MS",
    "LOG_LEVEL",
};

/* The table's entry for name; fails the test when there is none. */
static rv_config_key_info_t key_info(const char *name) {
    rv_config_key_info_t k;
    for (size_t i = 0; rv_config_key_at(i, &k) == 0; i++)
        if (strcmp(k.name, name) == 0) return k;
    fail_msg("%s is not in the configuration table", name);
    return k;
}

static void test_table_flags(void **state) {
    for (size_t i = 0; i < RV_ARRAY_LEN(start_only_keys); i++)
        if (!(key_info(start_only_keys[i]).flags & RV_CONFIG_START_ONLY))
            fail_msg("%s is not start-only: a reload would apply it", start_only_keys[i]);
    for (size_t i = 0; i < RV_ARRAY_LEN(reloadable_keys); i++)
        if (key_info(reloadable_keys[i]).flags & RV_CONFIG_START_ONLY)
            fail_msg("%s is start-only: a reload would ignore it", reloadable_keys[i]);
    static const char *const secret[] = {"STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET",
                                         "RIVET_API_TOKEN", "REDIS_URL"};
    for (size_t i = 0; i < RV_ARRAY_LEN(secret); i++)
        if (!(key_info(secret[i]).flags & RV_CONFIG_SECRET)) fail_msg("%s not secret", secret[i]);
    assert_false(key_info("STRIPE_PUBLISHABLE_KEY").flags & RV_CONFIG_SECRET);

    /* Names are unique, and the index past the last key is refused, not read. */
    rv_config_key_info_t a, b;
    size_t n = 0;
    while (rv_config_key_at(n, &a) == 0) n++;
    assert_true(n >= RV_ARRAY_LEN(start_only_keys) + RV_ARRAY_LEN(reloadable_keys));
    assert_int_equal(rv_config_key_at(n, &a), RV_ENOTFOUND);
    assert_int_equal(rv_config_key_at((size_t)-1, &a), RV_ENOTFOUND);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(rv_config_key_at(i, &a), 0);
        for (size_t j = i + 1; j < n; j++) {
            assert_int_equal(rv_config_key_at(j, &b), 0);
            if (strcmp(a.name, b.name) == 0) fail_msg("%s is in the table twice", a.name);
        }
    }
}

/* Every key of the table without a default is required: leaving it out names it. */
static void test_table_required_keys(void **state) {
    fx_t *f = *state;
    rv_config_key_info_t k;
    size_t required = 0;
    for (size_t i = 0; rv_config_key_at(i, &k) == 0; i++) {
        if (k.def != NULL) continue;
        required++;
        assert_string_equal(k.doc_def, "required");
        assert_int_equal(load_with(f, k.name, NULL, NULL), RV_EINVAL);
        char want[128];
        snprintf(want, sizeof want, "config: %s is required", k.name);
        assert_string_equal(f->err, want);
    }
    assert_int_equal(required, NBASE);
}

/* Setting a key to the default the table documents changes nothing: the documented defaults
 * are the real ones (including REDIRECT_ORIGINS, whose default follows APP_URL). */
static void test_table_defaults_are_real(void **state) {
    fx_t *f = *state;
    assert_int_equal(load_with(f, NULL, NULL, NULL), 0);
    rv_buf_t plain = RV_BUF_INIT, set = RV_BUF_INIT;
    assert_int_equal(rv_config_dump(&f->cfg, &plain), 0);
    assert_int_equal(rv_buf_append(&plain, "", 1), 0);
    rv_config_key_info_t k;
    size_t n = 0;
    for (size_t i = 0; rv_config_key_at(i, &k) == 0; i++) {
        if (k.def == NULL) continue;
        char entry[512];
        snprintf(entry, sizeof entry, "%s=%s", k.name, k.def);
        expect_accept(f, entry);
        rv_buf_reset(&set);
        assert_int_equal(rv_config_dump(&f->cfg, &set), 0);
        assert_int_equal(rv_buf_append(&set, "", 1), 0);
        if (strcmp(plain.data, set.data) != 0)
            fail_msg("%s: the documented default is not the real one:\n%s\n---\n%s", entry,
                     plain.data, set.data);
        /* The README shows the same default, in its own notation. */
        char doc[512];
        if (*k.def == '\0')
            snprintf(doc, sizeof doc, "empty");
        else if (strspn(k.def, "0123456789") == strlen(k.def))
            snprintf(doc, sizeof doc, "%s", k.def);
        else
            snprintf(doc, sizeof doc, "`%s`", k.def);
        if (strcmp(k.name, "REDIRECT_ORIGINS") == 0)
            snprintf(doc, sizeof doc, "`APP_URL`'s origin");
        assert_string_equal(k.doc_def, doc);
        n++;
    }
    assert_true(n > 20);
    rv_buf_free(&plain);
    rv_buf_free(&set);
}

/* A configuration with every start-only and every reloadable key away from its default. */
static const char *const changed_env[] = {
    "LISTEN=127.0.0.1:9100",
    "ADMIN_LISTEN=[::1]:9101",
    "WORKERS=3",
    "REDIS_URL=redis://127.0.0.1:6390/2",
    "REDIS_STREAM=other:stream",
    "REDIS_DEDUPE_TTL=86400",
    "REDIS_TIMEOUT_MS=500",
    "MAX_BODY_BYTES=2048",
    "MAX_HEADER_BYTES=4096",
    "MAX_BODY_BUFFER=1048576",
    "MAX_CONNECTIONS=7",
    "HEADER_TIMEOUT_MS=300",
    "BODY_TIMEOUT_MS=301",
    "IDLE_TIMEOUT_MS=302",
    /* Reloadable. */
    "TELEGRAM_BOT=Next_bot",
    "CORS_ORIGINS=https://next.example",
    "SHUTDOWN_TIMEOUT_MS=5",
    "LOG_LEVEL=error",
    "STRIPE_PRICE_PRO=price_pro_next",
    "RATE_LIMIT_PER_MIN=9",
    NULL,
};

static void test_keep_start_only(void **state) {
    fx_t *f = *state;
    rv_config_t running, next;
    char err[256];
    assert_int_equal(load_with(f, NULL, NULL, NULL), 0);
    running = f->cfg;
    memset(&f->cfg, 0, sizeof f->cfg);
    int rc = load_with(f, NULL, changed_env, NULL);
    if (rc) fail_msg("rejected: %s", f->err);
    next = f->cfg;
    memset(&f->cfg, 0, sizeof f->cfg);

    rv_config_keep_start_only(&next, &running);
    /* next keeps what was running for sockets, processes, Redis and limits... */
    assert_string_equal(next.listen, "127.0.0.1:8000");
    assert_addr(&next.listen_addr, AF_INET, "127.0.0.1", 8000);
    assert_string_equal(next.admin_listen, "127.0.0.1:8001");
    assert_addr(&next.admin_addr, AF_INET, "127.0.0.1", 8001);
    assert_int_equal(next.workers, 1);
    assert_string_equal(next.redis_url, "redis://127.0.0.1:6379/0");
    assert_string_equal(next.redis_stream, "rivet:provisioning");
    assert_int_equal(next.redis_dedupe_ttl, 2592000);
    assert_int_equal(next.redis_timeout_ms, 2000);
    assert_int_equal(next.max_body_bytes, 1048576);
    assert_int_equal(next.max_header_bytes, 16384);
    assert_int_equal(next.max_body_buffer, 67108864);
    assert_int_equal(next.max_connections, 10000);
    assert_int_equal(next.header_timeout_ms, 10000);
    assert_int_equal(next.body_timeout_ms, 30000);
    assert_int_equal(next.idle_timeout_ms, 60000);
    /* ...and its own reloadable settings. */
    assert_string_equal(next.telegram_bot, "Next_bot");
    const char *const cors[] = {"https://next.example"};
    assert_list(&next.cors_origins, cors, 1);
    assert_int_equal(next.shutdown_timeout_ms, 5);
    assert_int_equal(next.log_level, RV_LOG_ERROR);
    assert_string_equal(next.price_pro, "price_pro_next");
    assert_int_equal(next.rate_limit_per_min, 9);
    /* The old configuration got next's start-only values, so freeing both frees each once. */
    assert_string_equal(running.listen, "127.0.0.1:9100");
    assert_addr(&running.listen_addr, AF_INET, "127.0.0.1", 9100);
    assert_addr(&running.admin_addr, AF_INET6, "::1", 9101);
    assert_string_equal(running.redis_url, "redis://127.0.0.1:6390/2");
    assert_int_equal(running.max_connections, 7);
    assert_string_equal(running.telegram_bot, "RivetCEO_bot");
    assert_int_equal(rv_config_start_only_changed(&next, &running, err, sizeof err),
                     RV_ARRAY_LEN(start_only_keys));
    rv_config_free(&running);
    rv_config_free(&next);
}

static void test_start_only_changed(void **state) {
    fx_t *f = *state;
    rv_config_t a, b;
    char names[512];
    assert_int_equal(load_with(f, NULL, NULL, NULL), 0);
    a = f->cfg;
    memset(&f->cfg, 0, sizeof f->cfg);

    /* Equal values in distinct allocations are not a change. */
    assert_int_equal(load_with(f, NULL, NULL, NULL), 0);
    memset(names, 'X', sizeof names);
    assert_int_equal(rv_config_start_only_changed(&f->cfg, &a, names, sizeof names), 0);
    assert_string_equal(names, "");

    /* Reloadable keys alone are not a change either. */
    const char *const reloadable[] = {"TELEGRAM_BOT=Next_bot", "LOG_LEVEL=debug",
                                      "SHUTDOWN_TIMEOUT_MS=1", "TRUST_PROXY=10.0.0.1", NULL};
    assert_int_equal(load_with(f, NULL, reloadable, NULL), 0);
    assert_int_equal(rv_config_start_only_changed(&f->cfg, &a, names, sizeof names), 0);

    const char *const some[] = {"WORKERS=2",     "REDIS_TIMEOUT_MS=100",  "IDLE_TIMEOUT_MS=99",
                                "ADMIN_LISTEN=", "TELEGRAM_BOT=Next_bot", NULL};
    assert_int_equal(load_with(f, NULL, some, NULL), 0);
    assert_int_equal(rv_config_start_only_changed(&f->cfg, &a, names, sizeof names), 4);
    assert_string_equal(names, "ADMIN_LISTEN, WORKERS, REDIS_TIMEOUT_MS, IDLE_TIMEOUT_MS");
    /* A short buffer keeps whole names only, and the count stays right. */
    assert_int_equal(rv_config_start_only_changed(&f->cfg, &a, names, 24), 4);
    assert_string_equal(names, "ADMIN_LISTEN, WORKERS");
    assert_int_equal(rv_config_start_only_changed(&f->cfg, &a, names, 5), 4);
    assert_string_equal(names, "");
    assert_int_equal(rv_config_start_only_changed(&f->cfg, &a, NULL, 0), 4);

    int rc = load_with(f, NULL, changed_env, NULL);
    if (rc) fail_msg("rejected: %s", f->err);
    b = f->cfg;
    memset(&f->cfg, 0, sizeof f->cfg);
    assert_int_equal(rv_config_start_only_changed(&b, &a, names, sizeof names),
                     RV_ARRAY_LEN(start_only_keys));
    for (size_t i = 0; i < RV_ARRAY_LEN(start_only_keys); i++)
        if (strstr(names, start_only_keys[i]) == NULL)
            fail_msg("%s changed but is not named: %s", start_only_keys[i], names);
    rv_config_free(&a);
    rv_config_free(&b);
}

/* ---- the table: documentation ---------------------------------------------------------------- */

/* The tests run from the repository's root. */
#define EXAMPLE_PATH  "conf/rivet.conf.example"
#define README_PATH   "README.md"
#define README_HEADER "| key | default | meaning |\n"

static char *read_text(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) fail_msg("cannot open %s (the tests run from the repository's root)", path);
    rv_buf_t b = RV_BUF_INIT;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, fp)) > 0)
        assert_int_equal(rv_buf_append(&b, chunk, n), 0);
    fclose(fp);
    assert_int_equal(rv_buf_append(&b, "", 1), 0);
    return rv_buf_steal(&b, NULL);
}

static int is_key_line(const char *k, size_t *klen) {
    size_t n = 0;
    if (!(k[0] >= 'A' && k[0] <= 'Z')) return 0;
    while ((k[n] >= 'A' && k[n] <= 'Z') || (k[n] >= '0' && k[n] <= '9') || k[n] == '_') n++;
    *klen = n;
    return k[n] == '=';
}

/* The example lists every key of the table once, in the table's order: a required key set to a
 * placeholder, every other key commented out with the table's default; and no other key. */
static void test_example_lists_table_keys(void **state) {
    char *text = read_text(EXAMPLE_PATH);
    size_t next = 0;
    for (char *line = text; *line; line += strcspn(line, "\n") + (line[strcspn(line, "\n")] != 0)) {
        size_t len = strcspn(line, "\n"), klen;
        int commented = line[0] == '#';
        const char *k = line + commented;
        if (!is_key_line(k, &klen)) continue;
        char name[64], value[512];
        snprintf(name, sizeof name, "%.*s", (int)klen, k);
        snprintf(value, sizeof value, "%.*s", (int)(len - commented - klen - 1), k + klen + 1);
        rv_config_key_info_t info;
        if (rv_config_key_at(next, &info) != 0)
            fail_msg("%s: %s is not in the configuration table", EXAMPLE_PATH, name);
        if (strcmp(info.name, name) != 0)
            fail_msg("%s: %s where the table has %s (missing, or out of the table's order)",
                     EXAMPLE_PATH, name, info.name);
        if (info.def == NULL) {
            if (commented || strstr(value, "REPLACE_ME") == NULL)
                fail_msg("%s: required %s must be set to a REPLACE_ME placeholder", EXAMPLE_PATH,
                         name);
        } else {
            if (!commented) fail_msg("%s: %s is set; it must show its default", EXAMPLE_PATH, name);
            if (strcmp(value, info.def) != 0)
                fail_msg("%s: %s shows \"%s\"; its default is \"%s\"", EXAMPLE_PATH, name, value,
                         info.def);
        }
        next++;
    }
    rv_config_key_info_t info;
    if (rv_config_key_at(next, &info) == 0)
        fail_msg("%s lacks %s (or lists keys out of the table's order)", EXAMPLE_PATH, info.name);
    free(text);
}

/* README.md's configuration table has one row per key of the table, in its order, with the
 * table's default; and no other key. */
static void test_readme_lists_table_keys(void **state) {
    char *text = read_text(README_PATH);
    const char *p = strstr(text, README_HEADER);
    if (p == NULL) fail_msg("%s has no \"%.*s\" table", README_PATH, 25, README_HEADER);
    p += strlen(README_HEADER);
    if (strncmp(p, "|---|---|---|\n", 14) != 0)
        fail_msg("%s: table header not followed by |---|", README_PATH);
    p += 14;
    size_t next = 0;
    for (; *p == '|'; p += strcspn(p, "\n") + (p[strcspn(p, "\n")] != 0)) {
        char row[2048];
        snprintf(row, sizeof row, "%.*s", (int)strcspn(p, "\n"), p);
        /* "| `KEY` | default | meaning |": the default is everything between the second and the
         * third separator (a default never holds " | "). */
        char *key = row + 2, *sep1 = strstr(key, " | ");
        if (strncmp(row, "| `", 3) != 0 || sep1 == NULL)
            fail_msg("%s: malformed row %s", README_PATH, row);
        char *def = sep1 + 3, *sep2 = strstr(def, " | ");
        if (sep2 == NULL) fail_msg("%s: malformed row %s", README_PATH, row);
        *sep1 = *sep2 = '\0';
        if (key[strlen(key) - 1] != '`' || strchr(key + 1, '`') != key + strlen(key) - 1)
            fail_msg("%s: a row names one key in backquotes: %s", README_PATH, key);
        key[strlen(key) - 1] = '\0';
        key++;
        rv_config_key_info_t info;
        if (rv_config_key_at(next, &info) != 0)
            fail_msg("%s: %s is not in the configuration table", README_PATH, key);
        if (strcmp(info.name, key) != 0)
            fail_msg("%s: %s where the table has %s (missing, or out of the table's order)",
                     README_PATH, key, info.name);
        if (strcmp(info.doc_def, def) != 0)
            fail_msg("%s: %s's default is \"%s\"; the table says \"%s\"", README_PATH, key, def,
                     info.doc_def);
        next++;
    }
    rv_config_key_info_t info;
    if (rv_config_key_at(next, &info) == 0)
        fail_msg("%s lacks %s (or lists keys out of the table's order)", README_PATH, info.name);
    free(text);
}

/* Write what a file should hold next to the build, for whoever regenerates it. */
static const char *write_expected(const char *name, const char *text) {
    static char path[512];
    const char *dir = getenv("RIVET_BUILD");
    snprintf(path, sizeof path, "%s/%s", dir && *dir ? dir : "build", name);
    FILE *fp = fopen(path, "w");
    if (fp == NULL) return "(could not be written)";
    fputs(text, fp);
    fclose(fp);
    return path;
}

/* Both documents are exactly what the table generates: prose included, nothing edited by hand. */
static void test_docs_generated_from_table(void **state) {
    rv_buf_t md = RV_BUF_INIT, env = RV_BUF_INIT;
    assert_int_equal(rv_config_reference(&md, RV_CONFIG_REF_MARKDOWN), 0);
    assert_int_equal(rv_config_reference(&env, RV_CONFIG_REF_ENV), 0);
    assert_int_equal(rv_buf_append(&md, "", 1), 0);
    assert_int_equal(rv_buf_append(&env, "", 1), 0);
    assert_int_equal(rv_config_reference(&md, 7), RV_EINVAL);

    char *example = read_text(EXAMPLE_PATH);
    if (strcmp(example, env.data) != 0)
        fail_msg("%s is not what the table in src/config.c generates; the generated text is in %s",
                 EXAMPLE_PATH, write_expected("rivet.conf.example", env.data));
    char *readme = read_text(README_PATH);
    const char *t = strstr(readme, README_HEADER);
    assert_non_null(t);
    size_t len = 0;
    while (t[len] == '|') len += strcspn(t + len, "\n") + 1;
    if (len != strlen(md.data) || memcmp(t, md.data, len) != 0)
        fail_msg("%s's configuration table is not what the table in src/config.c generates; the "
                 "generated rows are in %s",
                 README_PATH, write_expected("config-table.md", md.data));
    /* No generated line is wider than the 100 columns of the sources (the README's rows may be). */
    for (const char *l = env.data; *l; l += strcspn(l, "\n") + 1)
        if (strcspn(l, "\n") > 100)
            fail_msg("%s: line over 100 columns: %.*s", EXAMPLE_PATH, (int)strcspn(l, "\n"), l);
    free(example);
    free(readme);
    rv_buf_free(&md);
    rv_buf_free(&env);
}

/* ---- robustness ---------------------------------------------------------------------------- */

static void test_small_or_missing_error_buffer(void **state) {
    fx_t *f = *state;
    const char *env[] = {"WORKERS=zero", NULL};
    struct {
        char err[8];
        char canary[8];
    } s;
    memset(&s, 'X', sizeof s);
    assert_int_equal(rv_config_load(&f->cfg, env, NULL, s.err, sizeof s.err), RV_EINVAL);
    assert_non_null(memchr(s.err, '\0', sizeof s.err));
    assert_memory_equal(s.canary, "XXXXXXXX", 8);
    rv_config_free(&f->cfg);
    assert_int_equal(rv_config_load(&f->cfg, env, NULL, NULL, 0), RV_EINVAL);
    rv_config_free(&f->cfg);
}

static void test_free_zeroed(void **state) {
    rv_config_t c;
    memset(&c, 0, sizeof c);
    rv_config_free(&c);
    rv_config_free(&c);
    assert_null(c.stripe_secret_key);
    assert_int_equal(c.webhook_secrets.n, 0);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_defaults),
        T(test_every_key_set),
        T(test_log_levels),
        T(test_environment_wins_over_file),
        T(test_file_alone),
        T(test_unknown_environment_ignored),
        T(test_file_syntax),
        T(test_file_crlf),
        T(test_file_malformed_lines),
        T(test_load_reports_malformed_line),
        T(test_required_keys),
        T(test_secret_key_prefixes),
        T(test_webhook_secret_list),
        T(test_secrets_never_in_errors),
        T(test_numeric_keys_reject_bad_values),
        T(test_numeric_out_of_range),
        T(test_listen_addresses),
        T(test_admin_listen_empty_disables),
        T(test_trust_proxy),
        T(test_redirect_origins_default_from_app_url),
        T(test_redirect_origins_normalised),
        T(test_cors_origins),
        T(test_url_origin),
        T(test_price_and_tier),
        T(test_dump_redacts),
        T(test_dump_empty_secrets),
        T(test_error_messages_exact),
        T(test_dump_exact),
        T(test_table_flags),
        T(test_table_required_keys),
        T(test_table_defaults_are_real),
        T(test_keep_start_only),
        T(test_start_only_changed),
        T(test_example_lists_table_keys),
        T(test_readme_lists_table_keys),
        T(test_docs_generated_from_table),
        T(test_small_or_missing_error_buffer),
        T(test_free_zeroed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
