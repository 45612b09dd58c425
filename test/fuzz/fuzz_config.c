/* Fuzz the configuration: the KEY=VALUE file parser and the loader that validates every key.
 *
 * The first input byte picks options: bit 0 puts a block with the required keys before the text
 * (so that inputs reach the validation of optional keys, which comes after the required ones),
 * bit 1 adds an environment. The rest is the file's text.
 * Properties: the parser's pairs, written back in double-quoted, single-quoted or plain form,
 * parse to the same pairs; an error names a line that exists and the loader's message is one
 * line naming a key; a loaded configuration keeps its documented invariants; and the redacted
 * dump does not change when the secret part of any secret changes, so it cannot contain it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/config.h"

#define MAX_PAIRS 256

static const char base_file[] = "STRIPE_SECRET_KEY=sk_test_fuzz_0123456789\n"
                                "STRIPE_WEBHOOK_SECRET=whsec_fuzz_0123456789\n"
                                "STRIPE_PRICE_BASIC=price_basic\n"
                                "STRIPE_PRICE_PRO=price_pro\n"
                                "STRIPE_PRICE_ENTERPRISE=price_enterprise\n";

static const char *const env_extra[] = {
    "LOG_LEVEL=warn",  "NO_EQUALS_SIGN",
    "UNRELATED_KEY=x", "STRIPE_PRICE_PRO=price_pro_env",
    "WORKERS=2",       NULL,
};

typedef struct pairs_s {
    char *key[MAX_PAIRS];
    char *val[MAX_PAIRS];
    size_t n;
    int overflow;
} pairs_t;

static int collect(void *ud, const char *key, const char *val) {
    pairs_t *p = ud;
    FUZZ_CHECK(key != NULL && val != NULL);
    size_t kl = strlen(key);
    FUZZ_CHECK(kl > 0 && kl < 128);
    FUZZ_CHECK((key[0] >= 'A' && key[0] <= 'Z') || (key[0] >= 'a' && key[0] <= 'z') ||
               key[0] == '_');
    if (p->n == MAX_PAIRS) {
        p->overflow = 1;
        return 0;
    }
    p->key[p->n] = strdup(key);
    p->val[p->n] = strdup(val);
    FUZZ_CHECK(p->key[p->n] != NULL && p->val[p->n] != NULL);
    p->n++;
    return 0;
}

static void pairs_free(pairs_t *p) {
    for (size_t i = 0; i < p->n; i++) {
        free(p->key[i]);
        free(p->val[i]);
    }
    p->n = 0;
}

/* A value that the unquoted form keeps exactly as it is. */
static int plain(const char *v) {
    for (const char *p = v; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr("_./:,@+-=[]?&%", c)))
            return 0;
    }
    return 1;
}

/* Write pair i in one of the forms a .env may use. */
static int write_pair(rv_buf_t *out, const char *key, const char *val, size_t i) {
    /* "export =" reads as the export keyword before a missing key, so a key named export is
     * never followed by a blank. */
    int blank = i % 2 && strcmp(key, "export") != 0;
    int rc = rv_buf_puts(out, i % 4 == 3 ? "export " : "");
    if (rc == 0) rc = rv_buf_printf(out, "%s%s=%s", key, blank ? " " : "", i % 2 ? "\t" : "");
    if (rc) return rc;
    if (i % 3 == 2 && plain(val)) return rv_buf_printf(out, "%s\n", val);
    if (i % 3 == 1 && strchr(val, '\'') == NULL) return rv_buf_printf(out, "'%s' # note\n", val);
    rc = rv_buf_puts(out, "\"");
    for (const char *p = val; rc == 0 && *p; p++) {
        switch (*p) {
        case '"': rc = rv_buf_puts(out, "\\\""); break;
        case '\\': rc = rv_buf_puts(out, "\\\\"); break;
        case '\n': rc = rv_buf_puts(out, "\\n"); break;
        case '\r': rc = rv_buf_puts(out, "\\r"); break;
        default: rc = rv_buf_append(out, p, 1); break;
        }
    }
    return rc ? rc : rv_buf_puts(out, "\"\n");
}

static void check_parser(const char *text) {
    pairs_t a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    int bad = 0;
    int rc = rv_config_parse_file(text, collect, &a, &bad);
    if (rc != 0) {
        size_t lines = 1;
        for (const char *p = text; *p; p++) lines += *p == '\n';
        FUZZ_CHECK(rc == RV_EINVAL && bad >= 1 && (size_t)bad <= lines);
        pairs_free(&a);
        return;
    }
    if (a.overflow) {
        pairs_free(&a);
        return;
    }
    rv_buf_t again = RV_BUF_INIT;
    FUZZ_CHECK(rv_buf_puts(&again, "# written back\n\n") == 0);
    for (size_t i = 0; i < a.n; i++) FUZZ_CHECK(write_pair(&again, a.key[i], a.val[i], i) == 0);
    rc = rv_config_parse_file(again.data, collect, &b, &bad);
    if (rc != 0) fprintf(stderr, "fuzz: written back, line %d fails:\n%s", bad, again.data);
    FUZZ_CHECK(rc == 0 && b.n == a.n);
    for (size_t i = 0; i < a.n; i++) {
        if (strcmp(a.key[i], b.key[i]) != 0 || strcmp(a.val[i], b.val[i]) != 0)
            fprintf(stderr, "fuzz: pair %zu changed when written back:\n%s", i, again.data);
        FUZZ_CHECK(strcmp(a.key[i], b.key[i]) == 0 && strcmp(a.val[i], b.val[i]) == 0);
    }
    rv_buf_free(&again);
    pairs_free(&a);
    pairs_free(&b);
}

/* A copy of secret with every byte that the dump may show kept and every other byte changed. */
static char *changed(const char *secret, size_t keep) {
    char *s = strdup(secret);
    FUZZ_CHECK(s != NULL);
    for (size_t i = keep; i < strlen(s); i++) s[i] = s[i] == 'Q' ? 'R' : 'Q';
    return s;
}

static void check_loaded(rv_config_t *cfg) {
    FUZZ_CHECK(cfg->webhook_secrets.n >= 1 && cfg->webhook_secrets.n <= 8);
    for (size_t i = 0; i < cfg->webhook_secrets.n; i++)
        FUZZ_CHECK(strncmp(cfg->webhook_secrets.v[i], "whsec_", 6) == 0);
    size_t n = strlen(cfg->app_url);
    FUZZ_CHECK(n > 0 && cfg->app_url[n - 1] != '/');
    FUZZ_CHECK(cfg->max_body_bytes >= 1024 && cfg->max_header_bytes >= 1024);
    FUZZ_CHECK(cfg->workers >= 1 && cfg->workers <= 64);
    FUZZ_CHECK(cfg->log_level >= 0 && cfg->log_level <= 3);
    FUZZ_CHECK(rv_config_price_of_tier(cfg, "pro") == cfg->price_pro);

    rv_buf_t d1 = RV_BUF_INIT, d2 = RV_BUF_INIT;
    FUZZ_CHECK(rv_config_dump(cfg, &d1) == 0);

    /* The dump shows at most the kind of a secret key or token ("sk_live_", nine bytes) and
     * nothing of a webhook secret beyond the "whsec_" every one of them starts with. */
    char *key = cfg->stripe_secret_key, *token = cfg->api_token;
    char *wh[8];
    size_t nwh = cfg->webhook_secrets.n;
    FUZZ_CHECK(nwh <= 8);
    cfg->stripe_secret_key = changed(key, 9);
    cfg->api_token = changed(token, 9);
    for (size_t i = 0; i < nwh; i++) {
        wh[i] = cfg->webhook_secrets.v[i];
        cfg->webhook_secrets.v[i] = changed(wh[i], 6);
    }
    FUZZ_CHECK(rv_config_dump(cfg, &d2) == 0);
    if (d1.len != d2.len || memcmp(d1.data, d2.data, d1.len) != 0)
        fprintf(stderr, "fuzz: the dump depends on a secret:\n%s\n---\n%s", d1.data, d2.data);
    FUZZ_CHECK(d1.len == d2.len && memcmp(d1.data, d2.data, d1.len) == 0);
    free(cfg->stripe_secret_key);
    free(cfg->api_token);
    cfg->stripe_secret_key = key;
    cfg->api_token = token;
    for (size_t i = 0; i < nwh; i++) {
        free(cfg->webhook_secrets.v[i]);
        cfg->webhook_secrets.v[i] = wh[i];
    }
    rv_buf_free(&d1);
    rv_buf_free(&d2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    int with_base = data[0] & 1, with_env = data[0] & 2;
    data++;
    size--;
    size_t blen = with_base ? sizeof base_file - 1 : 0;
    char *text = malloc(blen + size + 1);
    if (text == NULL) return 0;
    memcpy(text, base_file, blen);
    memcpy(text + blen, data, size);
    text[blen + size] = '\0';

    check_parser(text);

    rv_config_t cfg;
    char err[256];
    int rc = rv_config_load(&cfg, with_env ? env_extra : NULL, text, err, sizeof err);
    if (rc == 0) {
        check_loaded(&cfg);
    } else {
        FUZZ_CHECK(rc == RV_EINVAL);
        FUZZ_CHECK(strncmp(err, "config: ", 8) == 0 && strchr(err, '\n') == NULL);
    }
    /* Freeing twice must be harmless: callers free after a failed load too. */
    rv_config_free(&cfg);
    rv_config_free(&cfg);
    free(text);
    return 0;
}
