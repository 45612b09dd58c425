/* Configuration: a KEY=VALUE file (the format of systemd's EnvironmentFile and of a .env) under
 * the environment, with defaults and validation. Errors name the key, never its value.
 *
 * One table (keys[] below, in the manner of Redis's static_configs[]) describes every key: its
 * kind, its default as documented, its bounds, whether it is a secret, whether a reload applies
 * it, and its documentation. Loading, validation, freeing, the redacted dump, what a reload
 * keeps, README.md's table and conf/rivet.conf.example are all derived from it, so adding a key
 * is one row (and its field in rv_config_t). */
#include "rivet/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/sentinel.h"
#include "rivet/redis_url.h"

/* ---- KEY=VALUE file parsing ------------------------------------------------------------- */

static int is_key_start(int c) { return isalpha(c) || c == '_'; }
static int is_key_char(int c) { return isalnum(c) || c == '_'; }

/* Parse one logical line starting at *pp; advance *pp past it. Returns 1 with key and value
 * filled (malloc'd value), 0 for a blank or comment line, RV_EINVAL for a malformed one. A
 * double-quoted value may span lines. */
static int parse_line(const char **pp, int *lineno, char *key, size_t keylen, char **val) {
    const char *p = *pp;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '\n' || *p == '\0' || *p == '#' || (*p == '\r' && p[1] == '\n')) {
        while (*p && *p != '\n') p++;
        if (*p == '\n') {
            p++;
            (*lineno)++;
        }
        *pp = p;
        return 0;
    }
    if (strncmp(p, "export", 6) == 0 && (p[6] == ' ' || p[6] == '\t')) {
        p += 6;
        while (*p == ' ' || *p == '\t') p++;
    }
    if (!is_key_start((unsigned char)*p)) return RV_EINVAL;
    size_t k = 0;
    while (is_key_char((unsigned char)*p)) {
        if (k + 1 >= keylen) return RV_EINVAL;
        key[k++] = *p++;
    }
    key[k] = '\0';
    while (*p == ' ' || *p == '\t') p++;
    if (*p != '=') return RV_EINVAL;
    p++;
    while (*p == ' ' || *p == '\t') p++;

    rv_buf_t v = RV_BUF_INIT;
    int rc = 0;
    if (*p == '"' || *p == '\'') {
        char q = *p++;
        for (;;) {
            if (*p == '\0') {
                rc = RV_EINVAL;
                goto fail;
            }
            if (*p == q) {
                p++;
                break;
            }
            char c = *p++;
            if (c == '\n') (*lineno)++;
            if (q == '"' && c == '\\' && *p) {
                char e = *p++;
                c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            }
            if ((rc = rv_buf_append(&v, &c, 1))) goto fail;
        }
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p == '#')
            while (*p && *p != '\n') p++;
        if (*p != '\n' && *p != '\0') {
            rc = RV_EINVAL;
            goto fail;
        }
    } else {
        const char *s = p;
        while (*p && *p != '\n') {
            /* An unquoted value ends at " #" (an inline comment). */
            if (*p == '#' && p > s && (p[-1] == ' ' || p[-1] == '\t')) break;
            p++;
        }
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) e--;
        if ((rc = rv_buf_append(&v, s, (size_t)(e - s)))) goto fail;
        while (*p && *p != '\n') p++;
    }
    if (*p == '\n') {
        p++;
        (*lineno)++;
    }
    *pp = p;
    if (v.data == NULL && (rc = rv_buf_append(&v, "", 0))) goto fail;
    *val = rv_buf_steal(&v, NULL);
    return 1;
fail:
    rv_buf_free(&v);
    return rc;
}

int rv_config_parse_file(const char *text, int (*fn)(void *ud, const char *key, const char *val),
                         void *ud, int *bad_line) {
    const char *p = text;
    int lineno = 1;
    while (*p) {
        int start = lineno;
        char key[128];
        char *val = NULL;
        int rc = parse_line(&p, &lineno, key, sizeof key, &val);
        if (rc < 0) {
            if (bad_line) *bad_line = start;
            return rc;
        }
        if (rc == 0) continue;
        rc = fn(ud, key, val);
        free(val);
        if (rc) {
            if (bad_line) *bad_line = start;
            return rc;
        }
    }
    return 0;
}

/* ---- small helpers ----------------------------------------------------------------------- */

static int printable(const char *s) { return rv_printable(s, 0); }

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int parse_u64(const char *s, uint64_t *out) {
    if (*s < '0' || *s > '9') return RV_EINVAL;
    uint64_t v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return RV_EINVAL;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) return RV_ERANGE;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

static void strlist_free(rv_strlist_t *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

static int strlist_push(rv_strlist_t *l, const char *s, size_t len) {
    char **v = realloc(l->v, (l->n + 1) * sizeof *v);
    if (v == NULL) return RV_ENOMEM;
    l->v = v;
    v[l->n] = strndup(s, len);
    if (v[l->n] == NULL) return RV_ENOMEM;
    l->n++;
    return 0;
}

/* Split a comma-separated value, trimming spaces and skipping empty items. */
static int split_list(const char *s, rv_strlist_t *out) {
    while (*s) {
        while (*s == ' ' || *s == '\t' || *s == ',') s++;
        const char *e = s;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > s && (t[-1] == ' ' || t[-1] == '\t')) t--;
        if (t > s) {
            int rc = strlist_push(out, s, (size_t)(t - s));
            if (rc) return rc;
        }
        s = e;
    }
    return 0;
}

static int strlist_equal(const rv_strlist_t *a, const rv_strlist_t *b) {
    if (a->n != b->n) return 0;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0) return 0;
    return 1;
}

int rv_strlist_contains(const rv_strlist_t *l, const char *s) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0) return 1;
    return 0;
}

/* ---- addresses and URLs ------------------------------------------------------------------ */

int rv_config_parse_addr(const char *s, struct sockaddr_storage *out) {
    char host[64];
    const char *port;
    memset(out, 0, sizeof *out);
    if (*s == '[') {
        const char *e = strchr(s, ']');
        if (e == NULL || e[1] != ':' || (size_t)(e - s - 1) >= sizeof host) return RV_EINVAL;
        memcpy(host, s + 1, (size_t)(e - s - 1));
        host[e - s - 1] = '\0';
        port = e + 2;
    } else {
        const char *e = strrchr(s, ':');
        if (e == NULL || (size_t)(e - s) >= sizeof host || strchr(s, ':') != e) return RV_EINVAL;
        memcpy(host, s, (size_t)(e - s));
        host[e - s] = '\0';
        port = e + 1;
    }
    uint64_t p;
    if (parse_u64(port, &p) || p > 65535) return RV_EINVAL;
    if (strcmp(host, "localhost") == 0) strcpy(host, "127.0.0.1");
    struct sockaddr_in *in4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
    if (*s != '[' && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)p);
        return 0;
    }
    if (*s == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)p);
        return 0;
    }
    return RV_EINVAL;
}

int rv_url_origin(const char *url, char *out, size_t outlen) {
    const char *p;
    size_t slen;
    if (strncasecmp(url, "https://", 8) == 0) {
        slen = 5;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        slen = 4;
    } else {
        return RV_EINVAL;
    }
    p = url + slen + 3;
    size_t n = strcspn(p, "/?#");
    if (n == 0 || memchr(p, '@', n) != NULL) return RV_EINVAL; /* no userinfo tricks */
    if (slen + 3 + n + 1 > outlen) return RV_ERANGE;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (!(isalnum(c) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']'))
            return RV_EINVAL;
    }
    /* The authority is a host, a name or an address ("[v6]" in brackets), then an optional
     * ":port" of digits: "http://:80" names no host, and "http://a:b" no port. */
    size_t host_end = n;
    if (p[0] == '[') {
        const char *close = memchr(p, ']', n);
        if (close == NULL || close == p + 1) return RV_EINVAL;
        host_end = (size_t)(close - p) + 1;
        if (host_end < n && p[host_end] != ':') return RV_EINVAL;
    } else {
        const char *colon = memchr(p, ':', n);
        if (colon != NULL) host_end = (size_t)(colon - p);
        if (host_end == 0 || memchr(p, '[', n) != NULL || memchr(p, ']', n) != NULL)
            return RV_EINVAL;
    }
    if (host_end < n) {
        if (host_end + 1 == n) return RV_EINVAL;
        for (size_t i = host_end + 1; i < n; i++)
            if (!isdigit((unsigned char)p[i])) return RV_EINVAL;
    }
    size_t k = 0;
    for (size_t i = 0; i < slen; i++) out[k++] = (char)tolower((unsigned char)url[i]);
    memcpy(out + k, "://", 3);
    k += 3;
    for (size_t i = 0; i < n; i++) out[k++] = (char)tolower((unsigned char)p[i]);
    out[k] = '\0';
    /* A default port is the same origin as no port. */
    if (slen == 5 && k > 4 && strcmp(out + k - 4, ":443") == 0) out[k - 4] = '\0';
    if (slen == 4 && k > 3 && strcmp(out + k - 3, ":80") == 0) out[k - 3] = '\0';
    return 0;
}

/* ---- the table's vocabulary -------------------------------------------------------------- */

/* How a key's text becomes its field, how the field is freed, compared and dumped. */
typedef enum kind_e {
    K_STRING,    /* char *: printable, at most 4096 bytes */
    K_URL,       /* char *: an absolute http(s) URL, kept without trailing slashes */
    K_ADDRESS,   /* char *, parsed into the sockaddr_storage at aux ("" allowed unless NOT_EMPTY) */
    K_REDIS_URL, /* char *: a URL rv_redis_url_parse accepts; dumped without its password */
    K_LIST,      /* rv_strlist_t: comma-separated items, blanks trimmed, empty items skipped */
    K_ORIGINS,   /* rv_strlist_t: distinct lower-case http(s) origins, no paths */
    K_UINT,      /* an unsigned integer field of 4 or 8 bytes, from min to max */
    K_LOG_LEVEL, /* int: debug, info, warn or error */
    K_BOOL,      /* int: true or false (also 1/0, yes/no, on/off) */
} kind_t;

/* Row flags. A key without a default (def NULL) is required. */
#define F_SECRET     RV_CONFIG_SECRET     /* the dump shows at most its kind */
#define F_START_ONLY RV_CONFIG_START_ONLY /* a reload keeps the running value */
#define F_NOT_EMPTY  0x100u               /* an empty value is refused as missing */

typedef struct ctx_s {
    char *err;
    size_t errlen;
} ctx_t;

typedef struct cfkey_s cfkey_t;

struct cfkey_s {
    const char *name;
    kind_t kind;
    unsigned flags;
    size_t off, size;  /* the field in rv_config_t */
    size_t aux;        /* K_ADDRESS: the sockaddr_storage the address is parsed into */
    const char *def;   /* the default, as documented; NULL: required */
    uint64_t min, max; /* K_UINT */
    /* A rule beyond the kind's: a format, or a relation to keys loaded before this one. */
    int (*check)(ctx_t *c, const cfkey_t *k, rv_config_t *cfg);
    /* A default that follows keys loaded before this one; def is its value under their
     * defaults, and doc_def says what it follows. */
    const char *(*derive)(const rv_config_t *cfg, char *buf, size_t len);
    const char *doc_def;
    const char *doc;     /* README.md: one line, Markdown */
    const char *note;    /* conf/rivet.conf.example: plain sentences, wrapped when written */
    const char *section; /* conf/rivet.conf.example: a section starts at this key */
    const char *example; /* a required key's placeholder in conf/rivet.conf.example */
};

#define FIELD(f) .off = offsetof(rv_config_t, f), .size = sizeof(((rv_config_t *)0)->f)

/* Write "config: KEY <what>" to the caller's error buffer: every message names its key. */
__attribute__((format(printf, 3, 4))) static int fail(ctx_t *c, const cfkey_t *k, const char *fmt,
                                                      ...) {
    if (c->err == NULL || c->errlen == 0) return RV_EINVAL;
    int n = snprintf(c->err, c->errlen, "config: %s ", k->name);
    if (n < 0 || (size_t)n >= c->errlen) return RV_EINVAL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return RV_EINVAL;
}

static void *field(rv_config_t *cfg, const cfkey_t *k) { return (char *)cfg + k->off; }

static const void *cfield(const rv_config_t *cfg, const cfkey_t *k) {
    return (const char *)cfg + k->off;
}

static const char *str_of(const rv_config_t *cfg, const cfkey_t *k) {
    return *(char *const *)cfield(cfg, k);
}

static const rv_strlist_t *list_of(const rv_config_t *cfg, const cfkey_t *k) {
    return cfield(cfg, k);
}

static uint64_t uint_of(const rv_config_t *cfg, const cfkey_t *k) {
    if (k->size == sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, cfield(cfg, k), sizeof v);
        return v;
    }
    uint64_t v;
    memcpy(&v, cfield(cfg, k), sizeof v);
    return v;
}

/* ---- rules beyond a key's kind ----------------------------------------------------------- */

static int check_secret_key(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const char *s = str_of(cfg, k);
    if (!(starts_with(s, "sk_test_") || starts_with(s, "sk_live_") || starts_with(s, "rk_test_") ||
          starts_with(s, "rk_live_")) ||
        strlen(s) < 12)
        return fail(c, k, "must be a Stripe secret key (sk_... or rk_...)");
    return 0;
}

static int check_webhook_secrets(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const rv_strlist_t *l = list_of(cfg, k);
    if (l->n == 0 || l->n > 8) return fail(c, k, "must list 1 to 8 secrets");
    for (size_t i = 0; i < l->n; i++)
        if (!starts_with(l->v[i], "whsec_") || strlen(l->v[i]) < 10 || !printable(l->v[i]))
            return fail(c, k, "must be whsec_... secrets, comma-separated");
    return 0;
}

static int check_publishable_key(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const char *s = str_of(cfg, k);
    if (*s && !starts_with(s, "pk_")) return fail(c, k, "must be a publishable key (pk_...)");
    return 0;
}

static int check_bot_name(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const char *s = str_of(cfg, k);
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_') n = 0;
    if (n < 5 || n > 32) return fail(c, k, "must be a bot user name (5-32 letters, digits, _)");
    return 0;
}

static int check_api_token(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const char *s = str_of(cfg, k);
    if (*s && strlen(s) < 16) return fail(c, k, "must be at least 16 characters when set");
    return 0;
}

static int check_ip_list(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const rv_strlist_t *l = list_of(cfg, k);
    for (size_t i = 0; i < l->n; i++) {
        unsigned char tmp[16];
        if (inet_pton(AF_INET, l->v[i], tmp) != 1 && inet_pton(AF_INET6, l->v[i], tmp) != 1)
            return fail(c, k, "must list IP addresses");
    }
    return 0;
}

/* Redis keys derived from the stream's name (its dead-letter stream) must stay short. */
static int check_stream_name(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    if (strlen(str_of(cfg, k)) > 200) return fail(c, k, "is too long");
    return 0;
}

static int check_sentinels(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const char *v = str_of(cfg, k);
    rv_sentinel_addr_t a[RV_SENTINEL_MAX];
    if (v[0] && rv_sentinel_parse(v, a, RV_SENTINEL_MAX) < 1)
        return fail(c, k, "must list ip:port of up to %d sentinels, comma-separated",
                    RV_SENTINEL_MAX);
    return 0;
}

/* With sentinels the master name is what they are asked about. */
static int check_sentinel_master(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    const char *v = str_of(cfg, k);
    if (cfg->redis_sentinels[0] && v[0] == '\0')
        return fail(c, k, "is required when REDIS_SENTINELS is set");
    if (strlen(v) > 120 || strpbrk(v, " \t"))
        return fail(c, k, "must be a master name without blanks, at most 120 bytes");
    return 0;
}

/* One request of the largest allowed size must fit in the budget, or it could never be read. */
static int check_body_buffer(ctx_t *c, const cfkey_t *k, rv_config_t *cfg) {
    if (cfg->max_body_buffer < cfg->max_body_bytes + cfg->max_header_bytes)
        return fail(c, k, "must hold at least one request of MAX_BODY_BYTES + MAX_HEADER_BYTES");
    return 0;
}

/* Callers may redirect to the landing page's own origin unless told otherwise. */
static const char *app_origin(const rv_config_t *cfg, char *buf, size_t len) {
    return rv_url_origin(cfg->app_url, buf, len) == 0 ? buf : "";
}

/* ---- the table --------------------------------------------------------------------------- */

/* Every key rivetd reads, in the order of loading (a rule or a derived default may use keys
 * above it), of the dump and of the documentation. Other keys are ignored: the prototype's .env
 * holds many. */
static const cfkey_t keys[] = {
    {.name = "STRIPE_SECRET_KEY",
     .kind = K_STRING,
     FIELD(stripe_secret_key),
     .flags = F_SECRET | F_NOT_EMPTY,
     .check = check_secret_key,
     .doc = "`sk_test_…`/`sk_live_…`/`rk_…`",
     .section = "Stripe: required",
     .note = "Stripe secret key: sk_live_... or sk_test_... (a restricted key rk_live_... / "
             "rk_test_... with write access to Checkout Sessions and Billing Portal sessions "
             "also works).",
     .example = "sk_live_REPLACE_ME_with_your_secret_key"},
    {.name = "STRIPE_WEBHOOK_SECRET",
     .kind = K_LIST,
     FIELD(webhook_secrets),
     .flags = F_SECRET | F_NOT_EMPTY,
     .check = check_webhook_secrets,
     .doc = "`whsec_…`; a comma-separated list (at most 8) during secret rotation",
     .note = "Signing secret of the webhook endpoint (Stripe dashboard, Developers > Webhooks): "
             "whsec_... While rotating, list the old and the new secret separated by a comma (at "
             "most 8); a delivery signed with any of them is accepted.",
     .example = "whsec_REPLACE_ME_with_your_endpoint_secret"},
    {.name = "STRIPE_PRICE_BASIC",
     .kind = K_STRING,
     FIELD(price_basic),
     .flags = F_NOT_EMPTY,
     .doc = "price id of the basic plan",
     .note = "Price id (price_...) of the monthly basic plan that /api/checkout/create sells.",
     .example = "price_REPLACE_ME_basic"},
    {.name = "STRIPE_PRICE_PRO",
     .kind = K_STRING,
     FIELD(price_pro),
     .flags = F_NOT_EMPTY,
     .doc = "price id of the pro plan",
     .note = "Price id (price_...) of the monthly pro plan.",
     .example = "price_REPLACE_ME_pro"},
    {.name = "STRIPE_PRICE_ENTERPRISE",
     .kind = K_STRING,
     FIELD(price_enterprise),
     .flags = F_NOT_EMPTY,
     .doc = "price id of the enterprise plan",
     .note = "Price id (price_...) of the monthly enterprise plan.",
     .example = "price_REPLACE_ME_enterprise"},

    {.name = "STRIPE_PUBLISHABLE_KEY",
     .kind = K_STRING,
     FIELD(publishable_key),
     .def = "",
     .check = check_publishable_key,
     .doc = "`pk_…`, for the landing page",
     .section = "Stripe: optional",
     .note = "Publishable key (pk_live_... / pk_test_...) for the landing page; not a secret."},
    {.name = "STRIPE_API_BASE",
     .kind = K_URL,
     FIELD(stripe_api_base),
     .def = "https://api.stripe.com",
     .flags = F_NOT_EMPTY,
     .doc = "where Stripe is (the fake in tests)",
     .note = "Base URL of Stripe's API, an absolute http(s) URL; a fake Stripe in tests and local "
             "runs."},
    {.name = "STRIPE_API_VERSION",
     .kind = K_STRING,
     FIELD(stripe_api_version),
     .def = "",
     .doc = "sent as `Stripe-Version` when set",
     .note = "Stripe API version sent as the Stripe-Version header, such as 2024-06-20. Empty "
             "means the account's default version."},
    {.name = "STRIPE_TIMEOUT_MS",
     .kind = K_UINT,
     FIELD(stripe_timeout_ms),
     .def = "30000",
     .min = 100,
     .max = 600000,
     .doc = "milliseconds per Stripe call, all tries together",
     .note = "Deadline of one Stripe call in milliseconds, all tries together."},
    {.name = "STRIPE_MAX_RETRIES",
     .kind = K_UINT,
     FIELD(stripe_max_retries),
     .def = "2",
     .min = 0,
     .max = 10,
     .doc = "retries of a Stripe call after the first try",
     .note = "Retries after the first try of a Stripe call that failed in a retryable way."},
    {.name = "STRIPE_READS_PER_SEC",
     .kind = K_UINT,
     FIELD(stripe_reads_per_sec),
     .def = "10",
     .min = 1,
     .max = 100,
     .doc = "subscriptions read from Stripe a second to settle doubts, per instance (its "
            "workers share it)",
     .note = "How many subscriptions an instance reads from Stripe a second to settle doubts "
             "(an event of a subscription not seen yet, two states in one second), its workers "
             "sharing it. Doubts beyond it wait their turn, so that a recovery of many events "
             "never uses up the rate limit Stripe's other calls need. Stripe allows an account "
             "25 requests a second to one endpoint, and 100 in all in live mode (25 in a "
             "sandbox): keep the sum over all instances well below that."},
    {.name = "WEBHOOK_TOLERANCE",
     .kind = K_UINT,
     FIELD(webhook_tolerance),
     .def = "300",
     .min = 1,
     .max = 86400,
     .doc = "seconds a signature's timestamp may differ from now",
     .note = "Seconds a webhook signature's timestamp may differ from the clock."},

    {.name = "APP_URL",
     .kind = K_URL,
     FIELD(app_url),
     .def = "https://rivet.io",
     .flags = F_NOT_EMPTY,
     .doc = "the landing page: Checkout's default success and cancel pages, the portal's return "
            "page",
     .section = "URLs and browsers",
     .note = "The landing page's URL: default success (APP_URL/success?session_id=...) and "
             "cancel (APP_URL/pricing) pages of Checkout, and the billing portal's return page "
             "(APP_URL/account)."},
    {.name = "API_URL",
     .kind = K_URL,
     FIELD(api_url),
     .def = "https://api.rivet.io",
     .flags = F_NOT_EMPTY,
     .doc = "this API's public URL",
     .note = "This API's public URL."},
    {.name = "REDIRECT_ORIGINS",
     .kind = K_ORIGINS,
     FIELD(redirect_origins),
     .def = "https://rivet.io",
     .derive = app_origin,
     .doc_def = "`APP_URL`'s origin",
     .doc = "origins allowed in caller-supplied success/cancel URLs",
     .note = "Origins (scheme://host[:port], comma-separated, no paths) on which callers may ask "
             "for their own success_url and cancel_url. Default: APP_URL's origin."},
    {.name = "CORS_ORIGINS",
     .kind = K_ORIGINS,
     FIELD(cors_origins),
     .def = "https://rivet.io,https://www.rivet.io,http://localhost:3000",
     .doc = "browser origins allowed",
     .note = "Browser origins allowed to call the API (CORS), comma-separated. Never \"*\"."},
    {.name = "TELEGRAM_BOT",
     .kind = K_STRING,
     FIELD(telegram_bot),
     .def = "RivetCEO_bot",
     .flags = F_NOT_EMPTY,
     .check = check_bot_name,
     .doc = "the bot named in the success answer",
     .note = "The Telegram bot named in the checkout success answer (5 to 32 letters, digits or "
             "_)."},
    {.name = "ENTITLEMENT_CACHE",
     .kind = K_UINT,
     FIELD(entitlement_cache),
     .def = "10000",
     .min = 0,
     .max = 1000000,
     .flags = F_START_ONLY,
     .doc = "entitlement look-ups each worker keeps in memory; 0 disables",
     .note = "Entitlement look-ups (GET /api/entitlements) each worker keeps in memory, kept "
             "right by Redis: a second connection has Redis tell of every change to the keys "
             "they read (CLIENT TRACKING, Redis 6 or newer), and a look-up is answered from "
             "memory only while that connection is up. An answer is at most a minute old should "
             "a change ever go untold. 0 asks Redis every time."},
    {.name = "TELEGRAM_LINK_TTL",
     .kind = K_UINT,
     FIELD(telegram_link_ttl),
     .def = "604800",
     .min = 300,
     .max = 7776000,
     .flags = F_START_ONLY,
     .doc = "seconds a one-time Telegram start token lives",
     .note = "Seconds a one-time Telegram start token (the deep link into the bot given after a "
             "payment) lives. The success page issues a fresh one after it expired, until a chat "
             "is linked."},
    {.name = "CHECKOUT_LINK_MAX_AGE",
     .kind = K_UINT,
     FIELD(checkout_link_max_age),
     .def = "86400",
     .min = 60,
     .max = 2592000,
     .doc = "seconds after a checkout during which its session id shows personal data and opens "
            "the billing portal (410 after)",
     .note = "Seconds after a Checkout Session was created during which its id (in a success URL) "
             "still shows the customer's email and opens the billing portal. Later it gets 410 "
             "and the customer is sent to the bot."},
    {.name = "RIVET_API_TOKEN",
     .kind = K_STRING,
     FIELD(api_token),
     .def = "",
     .flags = F_SECRET,
     .check = check_api_token,
     .doc = "bearer token (16+ characters) for the portal by customer id",
     .note = "Bearer token that lets Rivet's own servers open the billing portal by customer id. "
             "At least 16 characters when set; generate one with `openssl rand -hex 32`. Empty "
             "refuses every portal call by customer id (browsers use a checkout session id "
             "instead)."},

    {.name = "LISTEN",
     .kind = K_ADDRESS,
     FIELD(listen),
     .aux = offsetof(rv_config_t, listen_addr),
     .def = "127.0.0.1:8000",
     .flags = F_START_ONLY | F_NOT_EMPTY,
     .doc = "`host:port` or `[v6]:port`",
     .section = "Listening and processes",
     .note = "Public API address: host:port or [v6]:port, an IP address (localhost means "
             "127.0.0.1). Under socket activation (rivetd.socket) the socket's first "
             "ListenStream= replaces it."},
    {.name = "ADMIN_LISTEN",
     .kind = K_ADDRESS,
     FIELD(admin_listen),
     .aux = offsetof(rv_config_t, admin_addr),
     .def = "127.0.0.1:8001",
     .flags = F_START_ONLY,
     .doc = "`/metrics`, `/health`, `/ready`; empty disables",
     .note = "Admin listener (/metrics, /health, /ready), same format; empty disables it. Under "
             "socket activation the socket's second ListenStream= replaces it."},
    {.name = "WORKERS",
     .kind = K_UINT,
     FIELD(workers),
     .def = "1",
     .min = 1,
     .max = 64,
     .flags = F_START_ONLY,
     .doc = "processes, each with its own loop, sharing the listening sockets",
     .note = "Worker processes, each with its own event loop, sharing the listening sockets."},
    {.name = "RATE_LIMIT_PER_MIN",
     .kind = K_UINT,
     FIELD(rate_limit_per_min),
     .def = "60",
     .min = 0,
     .max = 1000000,
     .doc = "checkout, success-page and portal calls a minute per client address (burst 20; 0 "
            "disables)",
     .note = "Checkout, success-page and billing-portal calls allowed per client address and "
             "minute, in bursts of up to 20 (each of them calls Stripe). 0 disables the limit."},
    {.name = "TRUST_PROXY",
     .kind = K_LIST,
     FIELD(trust_proxy),
     .def = "",
     .check = check_ip_list,
     .doc = "proxy addresses whose `X-Forwarded-For` is believed",
     .note = "Comma-separated IP addresses of reverse proxies whose X-Forwarded-For is believed "
             "when finding the client's address. Empty: the TCP peer is the client."},

    {.name = "REDIS_URL",
     .kind = K_REDIS_URL,
     FIELD(redis_url),
     .def = "redis://127.0.0.1:6379/0",
     .flags = F_SECRET | F_START_ONLY | F_NOT_EMPTY,
     .doc = "`redis://[[user]:pass@]host[:port][/db]` (host an IP address or `localhost`), "
            "`unix:///path[?db=N]`",
     .section = "Redis (provisioning queue)",
     .note = "redis://[[user]:password@]host[:port][/db] or unix:///path/to/redis.sock[?db=N]. "
             "The host must be an IP address or localhost (names are not resolved). A password "
             "here is a secret. Under rivetd.service (DynamicUser=yes) a unix socket must be "
             "writable by any user (unixsocketperm 777 in redis.conf), so prefer TCP on "
             "127.0.0.1."},
    {.name = "REDIS_STREAM",
     .kind = K_STRING,
     FIELD(redis_stream),
     .def = "rivet:provisioning",
     .flags = F_START_ONLY | F_NOT_EMPTY,
     .check = check_stream_name,
     .doc = "stream key of provisioning events (dead letters: `REDIS_STREAM:dead`)",
     .note = "The stream that receives provisioning events, at most 200 bytes; events that cannot "
             "be provisioned go to REDIS_STREAM:dead."},
    {.name = "REDIS_DEDUPE_TTL",
     .kind = K_UINT,
     FIELD(redis_dedupe_ttl),
     .def = "2592000",
     .min = 60,
     .max = 315360000,
     .flags = F_START_ONLY,
     .doc = "seconds an event id is remembered",
     .note = "Seconds a Stripe event id is remembered to drop repeated deliveries. The default is "
             "30 days; Stripe retries for up to 3 days."},
    {.name = "REDIS_TIMEOUT_MS",
     .kind = K_UINT,
     FIELD(redis_timeout_ms),
     .def = "2000",
     .min = 10,
     .max = 60000,
     .flags = F_START_ONLY,
     .doc = "milliseconds per Redis command",
     .note = "Deadline of one Redis command in milliseconds."},
    {.name = "REDIS_SENTINELS",
     .kind = K_STRING,
     FIELD(redis_sentinels),
     .def = "",
     .flags = F_START_ONLY,
     .check = check_sentinels,
     .doc = "`ip:port,…` of Redis Sentinels to find the primary through; empty: `REDIS_URL`'s host",
     .note = "Comma-separated ip:port of Redis Sentinels. When set, rivetd asks them for the "
             "primary of REDIS_SENTINEL_MASTER at every connection, confirms it with ROLE and "
             "moves at once on +switch-master; REDIS_URL still gives the password and the "
             "database."},
    {.name = "REDIS_SENTINEL_MASTER",
     .kind = K_STRING,
     FIELD(redis_sentinel_master),
     .def = "",
     .flags = F_START_ONLY,
     .check = check_sentinel_master,
     .doc = "the master name the sentinels monitor (required with `REDIS_SENTINELS`)",
     .note = "The name the sentinels monitor the primary under (sentinel monitor <name> ...)."},
    {.name = "REDIS_MIN_REPLICAS",
     .kind = K_UINT,
     FIELD(redis_min_replicas),
     .def = "0",
     .min = 0,
     .max = 16,
     .flags = F_START_ONLY,
     .doc = "replicas that must confirm (`WAIT`) an event before the webhook is acknowledged",
     .note = "Replicas that must have an event (WAIT, within REDIS_TIMEOUT_MS) before its webhook "
             "gets 200; fewer: 503 and Stripe delivers again. Replication stays asynchronous: "
             "this narrows the window in which a failover loses an acknowledged event, it does "
             "not close it."},
    {.name = "PAST_DUE_ACTIVE",
     .kind = K_BOOL,
     FIELD(past_due_active),
     .def = "true",
     .flags = F_START_ONLY,
     .doc = "whether a `past_due` subscription keeps access while Stripe retries the payment",
     .note = "Whether a past_due subscription (Stripe is still retrying a failed renewal) keeps "
             "the customer's access: true or false. Access ends when Stripe gives up (unpaid or "
             "canceled), whatever this says."},
    {.name = "RECONCILE_INTERVAL",
     .kind = K_UINT,
     FIELD(reconcile_interval),
     .def = "300",
     .min = 0,
     .max = 86400,
     .flags = F_START_ONLY,
     .doc = "seconds between catch-ups from Stripe's `/v1/events` (one at a time across "
            "machines); 0 disables",
     .note = "Seconds between runs that recover any event no webhook brought from Stripe's list "
             "of events. A run looks at most 30 days back, and one runs at a time across workers "
             "and machines. 0 disables; rivetd --reconcile DURATION runs one by hand."},

    {.name = "MAX_BODY_BYTES",
     .kind = K_UINT,
     FIELD(max_body_bytes),
     .def = "1048576",
     .min = 1024,
     .max = 67108864,
     .flags = F_START_ONLY,
     .doc = "largest webhook body (413); other routes take at most 16 KiB",
     .section = "HTTP limits and timeouts",
     .note = "Largest request body in bytes. Larger ones get 413; this is the webhook's limit, "
             "other routes take at most 16 KiB."},
    {.name = "MAX_HEADER_BYTES",
     .kind = K_UINT,
     FIELD(max_header_bytes),
     .def = "16384",
     .min = 1024,
     .max = 1048576,
     .flags = F_START_ONLY,
     .doc = "largest request line plus headers (431)",
     .note = "Largest request line plus headers in bytes. Larger ones get 431."},
    {.name = "MAX_BODY_BUFFER",
     .kind = K_UINT,
     FIELD(max_body_buffer),
     .def = "67108864",
     .min = 65536,
     .max = (uint64_t)1 << 40,
     .flags = F_START_ONLY,
     .check = check_body_buffer,
     .doc = "bytes of request bodies a listener of a worker holds at once, all connections "
            "together (503 with `Retry-After` beyond); headers and pipelined input get a quarter "
            "of it each",
     .note = "Bytes of request bodies a listener of a worker holds at once, all connections "
             "together, counted as they arrive. Past it new bodies get 503 with Retry-After. "
             "Request lines and headers, and pipelined input, have a quarter of it each. At least "
             "MAX_BODY_BYTES + MAX_HEADER_BYTES."},
    {.name = "MAX_CONNECTIONS",
     .kind = K_UINT,
     FIELD(max_connections),
     .def = "10000",
     .min = 1,
     .max = 1000000,
     .flags = F_START_ONLY,
     .doc = "open client connections per worker (503 and close beyond)",
     .note = "Open client connections per worker. Connections beyond it get 503 and are closed."},
    {.name = "HEADER_TIMEOUT_MS",
     .kind = K_UINT,
     FIELD(header_timeout_ms),
     .def = "10000",
     .min = 10,
     .max = 3600000,
     .flags = F_START_ONLY,
     .doc = "milliseconds to send the request line and headers (408, close)",
     .note = "Milliseconds for a client to send the request line and headers. Slower clients get "
             "408 and are closed."},
    {.name = "BODY_TIMEOUT_MS",
     .kind = K_UINT,
     FIELD(body_timeout_ms),
     .def = "30000",
     .min = 10,
     .max = 3600000,
     .flags = F_START_ONLY,
     .doc = "milliseconds to send the body (408, close)",
     .note = "Milliseconds for a client to send the body after the headers. Slower clients get 408 "
             "and are closed."},
    {.name = "IDLE_TIMEOUT_MS",
     .kind = K_UINT,
     FIELD(idle_timeout_ms),
     .def = "60000",
     .min = 10,
     .max = 3600000,
     .flags = F_START_ONLY,
     .doc = "milliseconds a connection may stay idle, or take to read an answer (close)",
     .note = "Milliseconds a kept-alive connection may stay idle, or a client may take to read an "
             "answer."},
    {.name = "SHUTDOWN_TIMEOUT_MS",
     .kind = K_UINT,
     FIELD(shutdown_timeout_ms),
     .def = "10000",
     .min = 0,
     .max = 3600000,
     .doc = "how long SIGTERM waits for requests in flight",
     .note = "Milliseconds SIGTERM waits for requests in flight before stopping anyway."},

    {.name = "LOG_LEVEL",
     .kind = K_LOG_LEVEL,
     FIELD(log_level),
     .def = "info",
     .doc = "`debug`, `info`, `warn`, `error`",
     .section = "Logging",
     .note = "debug, info, warn or error. Logs go to stderr, one line per record (journald adds "
             "the time)."},
};

#define NKEYS RV_ARRAY_LEN(keys)

/* The row of a key, or NULL for a key rivetd does not read. Callers index by the row's position
 * (row - keys), which exists only for a row that does. */
static const cfkey_t *find_key(const char *name) {
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

/* ---- loading ----------------------------------------------------------------------------- */

/* The raw text of each key, by row, as the file and then the environment set it. */
typedef struct values_s {
    char *v[NKEYS]; /* NULL: not set; an empty value counts as set */
} values_t;

static int set_value(void *ud, const char *name, const char *val) {
    values_t *vals = ud;
    const cfkey_t *k = find_key(name);
    if (k == NULL) return 0;
    char *v = strdup(val);
    if (v == NULL) return RV_ENOMEM;
    free(vals->v[k - keys]);
    vals->v[k - keys] = v;
    return 0;
}

static void values_free(values_t *vals) {
    for (size_t i = 0; i < NKEYS; i++) free(vals->v[i]);
}

static int read_file(ctx_t *c, values_t *vals, const char *text) {
    int line = 0;
    int rc = text ? rv_config_parse_file(text, set_value, vals, &line) : 0;
    if (rc == RV_EINVAL && c->err && c->errlen)
        snprintf(c->err, c->errlen, "config: malformed line %d in the configuration file", line);
    return rc;
}

static int read_environment(values_t *vals, const char *const *envp) {
    for (const char *const *e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || (size_t)(eq - *e) >= 64) continue;
        char name[64];
        memcpy(name, *e, (size_t)(eq - *e));
        name[eq - *e] = '\0';
        int rc = set_value(vals, name, eq + 1);
        if (rc) return rc;
    }
    return 0;
}

/* A string field: printable (no spaces either), bounded, copied. */
static int load_string(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    if (!printable(v)) return fail(c, k, "must not contain spaces or control characters");
    if (strlen(v) > 4096) return fail(c, k, "is too long");
    char **out = field(cfg, k);
    *out = strdup(v);
    return *out ? 0 : RV_ENOMEM;
}

static int load_url(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    int rc = load_string(c, k, v, cfg);
    if (rc) return rc;
    char *s = *(char **)field(cfg, k), origin[512];
    if (rv_url_origin(s, origin, sizeof origin))
        return fail(c, k, "must be an absolute http(s) URL");
    /* URLs are built by appending "/path". */
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '/') s[--n] = '\0';
    return 0;
}

static int load_address(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    int rc = load_string(c, k, v, cfg);
    if (rc || *v == '\0') return rc;
    if (rv_config_parse_addr(v, (struct sockaddr_storage *)((char *)cfg + k->aux)) == 0) return 0;
    return k->flags & F_NOT_EMPTY ? fail(c, k, "must be host:port or [v6]:port with an IP address")
                                  : fail(c, k, "must be host:port, [v6]:port, or empty");
}

static int load_redis_url(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    int rc = load_string(c, k, v, cfg);
    if (rc) return rc;
    rv_redis_url_t ru;
    if (rv_redis_url_parse(v, &ru))
        return fail(c, k, "must be redis://[[user]:pass@]host[:port][/db] or unix:///path[?db=N]");
    return 0;
}

static int load_origins(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    rv_strlist_t raw = {0}, *out = field(cfg, k);
    int rc = split_list(v, &raw);
    for (size_t i = 0; rc == 0 && i < raw.n; i++) {
        char origin[512];
        if (rv_url_origin(raw.v[i], origin, sizeof origin)) {
            rc = fail(c, k, "must be a comma-separated list of http(s) origins");
            break;
        }
        const char *host = strstr(raw.v[i], "://") + 3; /* present: rv_url_origin checked */
        const char *after = host + strcspn(host, "/?#");
        if (*after && strcmp(after, "/") != 0) {
            rc = fail(c, k, "must list origins (scheme://host[:port]) without paths");
            break;
        }
        if (!rv_strlist_contains(out, origin)) rc = strlist_push(out, origin, strlen(origin));
    }
    strlist_free(&raw);
    return rc;
}

static int load_uint(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    /* The bounds never exceed what the field holds, so a value is never truncated. */
    uint64_t n, hi = k->size == sizeof(uint32_t) && k->max > UINT32_MAX ? UINT32_MAX : k->max;
    if (parse_u64(v, &n) || n < k->min || n > hi)
        return fail(c, k, "must be an integer from %llu to %llu", (unsigned long long)k->min,
                    (unsigned long long)hi);
    if (k->size == sizeof(uint32_t)) {
        uint32_t n32 = (uint32_t)n;
        memcpy(field(cfg, k), &n32, sizeof n32);
    } else {
        memcpy(field(cfg, k), &n, sizeof n);
    }
    return 0;
}

static int load_bool(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    static const char *const yes[] = {"true", "1", "yes", "on"}, *const no[] = {"false", "0", "no",
                                                                                "off"};
    int *out = field(cfg, k);
    for (size_t i = 0; i < RV_ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) return *out = 1, 0;
        if (strcasecmp(v, no[i]) == 0) return *out = 0, 0;
    }
    return fail(c, k, "must be true or false");
}

static int load_log_level(ctx_t *c, const cfkey_t *k, const char *v, rv_config_t *cfg) {
    if (rv_log_level_parse(v, field(cfg, k)))
        return fail(c, k, "must be debug, info, warn or error");
    return 0;
}

/* Load one key from its raw text, its derived default or its default, then apply its rule. */
static int load_key(ctx_t *c, const cfkey_t *k, const char *raw, rv_config_t *cfg) {
    char derived[512];
    const char *v = raw ? raw : k->derive ? k->derive(cfg, derived, sizeof derived) : k->def;
    if (v == NULL || (*v == '\0' && (k->def == NULL || k->flags & F_NOT_EMPTY)))
        return fail(c, k, "is required");
    int rc = 0;
    switch (k->kind) {
    case K_STRING: rc = load_string(c, k, v, cfg); break;
    case K_URL: rc = load_url(c, k, v, cfg); break;
    case K_ADDRESS: rc = load_address(c, k, v, cfg); break;
    case K_REDIS_URL: rc = load_redis_url(c, k, v, cfg); break;
    case K_LIST: rc = split_list(v, field(cfg, k)); break;
    case K_ORIGINS: rc = load_origins(c, k, v, cfg); break;
    case K_UINT: rc = load_uint(c, k, v, cfg); break;
    case K_LOG_LEVEL: rc = load_log_level(c, k, v, cfg); break;
    case K_BOOL: rc = load_bool(c, k, v, cfg); break;
    }
    if (rc == 0 && k->check) rc = k->check(c, k, cfg);
    return rc;
}

static int load_keys(ctx_t *c, const values_t *vals, rv_config_t *cfg) {
    for (size_t i = 0; i < NKEYS; i++) {
        int rc = load_key(c, &keys[i], vals->v[i], cfg);
        if (rc) return rc;
    }
    return 0;
}

int rv_config_load(rv_config_t *cfg, const char *const *envp, const char *file_text, char *err,
                   size_t errlen) {
    ctx_t c = {err, errlen};
    values_t vals;
    memset(&vals, 0, sizeof vals);
    memset(cfg, 0, sizeof *cfg);
    if (err && errlen) err[0] = '\0';

    int rc = read_file(&c, &vals, file_text);
    if (rc == 0) rc = read_environment(&vals, envp);
    if (rc == 0) rc = load_keys(&c, &vals, cfg);

    if (rc == RV_ENOMEM && err && errlen) snprintf(err, errlen, "config: out of memory");
    values_free(&vals);
    if (rc) rv_config_free(cfg);
    return rc ? RV_EINVAL : 0;
}

/* ---- freeing ----------------------------------------------------------------------------- */

void rv_config_free(rv_config_t *cfg) {
    for (size_t i = 0; i < NKEYS; i++) {
        const cfkey_t *k = &keys[i];
        switch (k->kind) {
        case K_STRING:
        case K_URL:
        case K_ADDRESS:
        case K_REDIS_URL: {
            char **s = field(cfg, k);
            free(*s);
            *s = NULL;
            break;
        }
        case K_LIST:
        case K_ORIGINS: strlist_free(field(cfg, k)); break;
        case K_UINT:
        case K_LOG_LEVEL:
        case K_BOOL: break;
        }
    }
}

/* ---- dump, with secrets redacted --------------------------------------------------------- */

/* How much of a secret the dump shows: its kind ("sk_live_", "whsec_"), never its value. */
static int secret_kind_len(const char *v) {
    const char *us = strchr(v, '_');
    if (us && (us = strchr(us + 1, '_')) && us - v <= 8 &&
        (starts_with(v, "sk_") || starts_with(v, "rk_")))
        return (int)(us - v + 1);
    return starts_with(v, "whsec_") ? 6 : 0;
}

static int dump_item(rv_buf_t *out, const cfkey_t *k, const char *v) {
    if (!(k->flags & F_SECRET) || *v == '\0') return rv_buf_puts(out, v);
    return rv_buf_printf(out, "%.*s<redacted>", secret_kind_len(v), v);
}

/* The URL may carry a password: show only where it points (nothing when it does not parse). */
static int dump_redis_url(rv_buf_t *out, const cfkey_t *k, const char *url) {
    rv_redis_url_t ru;
    if (rv_redis_url_parse(url, &ru) != 0) return 0;
    if (ru.path[0]) return rv_buf_printf(out, "%s=unix://%s?db=%d\n", k->name, ru.path, ru.db);
    int v6 = strchr(ru.host, ':') != NULL;
    return rv_buf_printf(out, "%s=redis://%s%s%s%s%s%s:%d/%d\n", k->name, ru.user,
                         ru.pass[0] ? ":<redacted>" : "", ru.user[0] || ru.pass[0] ? "@" : "",
                         v6 ? "[" : "", ru.host, v6 ? "]" : "", ru.port, ru.db);
}

static int dump_key(rv_buf_t *out, const cfkey_t *k, const rv_config_t *cfg) {
    static const char *const level_names[] = {"debug", "info", "warn", "error"};
    int rc = 0;
    switch (k->kind) {
    case K_REDIS_URL: return dump_redis_url(out, k, str_of(cfg, k));
    case K_UINT:
        return rv_buf_printf(out, "%s=%llu\n", k->name, (unsigned long long)uint_of(cfg, k));
    case K_LOG_LEVEL: {
        int level;
        memcpy(&level, cfield(cfg, k), sizeof level);
        return rv_buf_printf(out, "%s=%s\n", k->name, level_names[level & 3]);
    }
    case K_BOOL: {
        int b;
        memcpy(&b, cfield(cfg, k), sizeof b);
        return rv_buf_printf(out, "%s=%s\n", k->name, b ? "true" : "false");
    }
    case K_STRING:
    case K_URL:
    case K_ADDRESS:
        rc = rv_buf_printf(out, "%s=", k->name);
        if (rc == 0) rc = dump_item(out, k, str_of(cfg, k));
        break;
    case K_LIST:
    case K_ORIGINS: {
        const rv_strlist_t *l = list_of(cfg, k);
        rc = rv_buf_printf(out, "%s=", k->name);
        for (size_t i = 0; rc == 0 && i < l->n; i++) {
            if (i) rc = rv_buf_puts(out, ",");
            if (rc == 0) rc = dump_item(out, k, l->v[i]);
        }
        break;
    }
    }
    return rc ? rc : rv_buf_puts(out, "\n");
}

int rv_config_dump(const rv_config_t *cfg, rv_buf_t *out) {
    for (size_t i = 0; i < NKEYS; i++)
        if (dump_key(out, &keys[i], cfg)) return RV_ENOMEM;
    return 0;
}

/* ---- reload ------------------------------------------------------------------------------ */

static void swap_bytes(void *a, void *b, size_t n) {
    unsigned char *x = a, *y = b;
    for (size_t i = 0; i < n; i++) {
        unsigned char t = x[i];
        x[i] = y[i];
        y[i] = t;
    }
}

void rv_config_keep_start_only(rv_config_t *next, rv_config_t *running) {
    for (size_t i = 0; i < NKEYS; i++) {
        const cfkey_t *k = &keys[i];
        if (!(k->flags & F_START_ONLY)) continue;
        swap_bytes(field(next, k), field(running, k), k->size);
        if (k->kind == K_ADDRESS)
            swap_bytes((char *)next + k->aux, (char *)running + k->aux,
                       sizeof(struct sockaddr_storage));
    }
}

static int same_value(const cfkey_t *k, const rv_config_t *a, const rv_config_t *b) {
    switch (k->kind) {
    case K_STRING:
    case K_URL:
    case K_ADDRESS:
    case K_REDIS_URL: {
        const char *x = str_of(a, k), *y = str_of(b, k);
        return x == y || (x && y && strcmp(x, y) == 0);
    }
    case K_LIST:
    case K_ORIGINS: return strlist_equal(list_of(a, k), list_of(b, k));
    case K_UINT:
    case K_LOG_LEVEL:
    case K_BOOL: break;
    }
    return memcmp(cfield(a, k), cfield(b, k), k->size) == 0;
}

size_t rv_config_start_only_changed(const rv_config_t *next, const rv_config_t *running,
                                    char *names, size_t len) {
    size_t count = 0, used = 0;
    int full = 0;
    if (names && len) names[0] = '\0';
    for (size_t i = 0; i < NKEYS; i++) {
        const cfkey_t *k = &keys[i];
        if (!(k->flags & F_START_ONLY) || same_value(k, next, running)) continue;
        count++;
        /* Whole names only, up to the first that does not fit: a cut name would mislead. */
        size_t need = strlen(k->name) + (used ? 2 : 0);
        if (names == NULL || full || used + need >= len) {
            full = 1;
            continue;
        }
        snprintf(names + used, len - used, "%s%s", used ? ", " : "", k->name);
        used += need;
    }
    return count;
}

/* ---- documentation ----------------------------------------------------------------------- */

/* The default as README.md shows it: numbers plain, other values in backquotes. */
static void doc_default(const cfkey_t *k, char *buf, size_t len) {
    if (k->doc_def)
        snprintf(buf, len, "%s", k->doc_def);
    else if (k->def == NULL)
        snprintf(buf, len, "required");
    else if (*k->def == '\0')
        snprintf(buf, len, "empty");
    else if (k->kind == K_UINT)
        snprintf(buf, len, "%s", k->def);
    else
        snprintf(buf, len, "`%s`", k->def);
}

int rv_config_key_at(size_t i, rv_config_key_info_t *out) {
    if (i >= NKEYS) return RV_ENOTFOUND;
    const cfkey_t *k = &keys[i];
    out->name = k->name;
    out->def = k->def;
    out->flags = k->flags & (RV_CONFIG_SECRET | RV_CONFIG_START_ONLY);
    doc_default(k, out->doc_def, sizeof out->doc_def);
    return 0;
}

static const char example_head[] =
    "# rivetd configuration: /etc/rivet/rivet.conf\n"
    "#\n"
    "# One KEY=VALUE per line: the format of systemd's EnvironmentFile= (how rivetd.service "
    "reads\n"
    "# this file) and of `rivetd --config FILE`. Lines starting with # are comments. Keep "
    "comments\n"
    "# on lines of their own: systemd would take \"KEY=value # note\" as part of the value. "
    "Values\n"
    "# need no quotes; a value may be put in double quotes.\n"
    "#\n"
    "# Variables in rivetd's environment win over this file. A missing or malformed value "
    "stops\n"
    "# rivetd at start-up with one line naming the key; secrets are never printed. Check a file\n"
    "# with `rivetd --config /etc/rivet/rivet.conf --check-config`, which prints the effective\n"
    "# settings with secrets redacted.\n"
    "#\n"
    "# The first section must be filled in. Lines of the form \"#KEY=value\" further down show "
    "the\n"
    "# default: removing the # changes nothing until the value is edited. Settings marked as "
    "read\n"
    "# at start keep their running value through a reload (SIGHUP); a restart applies them.\n"
    "#\n"
    "# This file holds secrets: keep it mode 0640 (or 0600), owned by root.\n";

#define EXAMPLE_WIDTH 95 /* columns of a comment line in the example */
#define SECTION_WIDTH 90 /* columns of a section's rule */

/* Append text as "# " comment lines of at most EXAMPLE_WIDTH columns, broken between words. */
static int put_comment(rv_buf_t *out, const char *text) {
    int rc = 0;
    size_t col = 0;
    for (const char *p = text; rc == 0 && *p;) {
        while (*p == ' ') p++;
        size_t w = strcspn(p, " ");
        if (w == 0) break;
        if (col > 0 && col + 1 + w > EXAMPLE_WIDTH) {
            rc = rv_buf_puts(out, "\n");
            col = 0;
        }
        if (rc == 0) rc = rv_buf_printf(out, "%s%.*s", col ? " " : "# ", (int)w, p);
        col += (col ? 1 : 2) + w;
        p += w;
    }
    return rc ? rc : rv_buf_puts(out, "\n");
}

/* A key's comment: its note, with a number's bounds at the end of the first sentence, and a
 * word for keys that only a restart applies. */
static int example_note(rv_buf_t *out, const cfkey_t *k) {
    rv_buf_t t = RV_BUF_INIT;
    const char *note = k->note ? k->note : "";
    const char *stop = strstr(note, ". ");
    size_t first = stop ? (size_t)(stop - note) : strlen(note) - (strlen(note) > 0);
    int rc = rv_buf_append(&t, note, first);
    if (rc == 0 && k->kind == K_UINT)
        rc = rv_buf_printf(&t, " (%llu to %llu)", (unsigned long long)k->min,
                           (unsigned long long)k->max);
    if (rc == 0) rc = rv_buf_puts(&t, note + first);
    if (rc == 0 && k->flags & F_START_ONLY) rc = rv_buf_puts(&t, " Read at start.");
    if (rc == 0) rc = rv_buf_append(&t, "", 1);
    if (rc == 0) rc = put_comment(out, t.data);
    rv_buf_free(&t);
    return rc;
}

static int reference_env(rv_buf_t *out) {
    int rc = rv_buf_puts(out, example_head);
    for (size_t i = 0; rc == 0 && i < NKEYS; i++) {
        const cfkey_t *k = &keys[i];
        if (k->section) {
            int n = (int)strlen(k->section);
            rc = rv_buf_printf(out, "\n# ---- %s %.*s\n", k->section, SECTION_WIDTH - 8 - n,
                               "------------------------------------------------------------"
                               "------------------------------");
        }
        if (rc == 0) rc = rv_buf_puts(out, "\n");
        if (rc == 0) rc = example_note(out, k);
        if (rc == 0 && k->def == NULL) rc = rv_buf_printf(out, "%s=%s\n", k->name, k->example);
        if (rc == 0 && k->def != NULL) rc = rv_buf_printf(out, "#%s=%s\n", k->name, k->def);
    }
    return rc;
}

static int reference_markdown(rv_buf_t *out) {
    int rc = rv_buf_puts(out, "| key | default | meaning |\n|---|---|---|\n");
    for (size_t i = 0; rc == 0 && i < NKEYS; i++) {
        char def[256];
        doc_default(&keys[i], def, sizeof def);
        rc = rv_buf_printf(out, "| `%s` | %s | %s |\n", keys[i].name, def, keys[i].doc);
    }
    return rc;
}

int rv_config_reference(rv_buf_t *out, int format) {
    int rc;
    if (format == RV_CONFIG_REF_MARKDOWN)
        rc = reference_markdown(out);
    else if (format == RV_CONFIG_REF_ENV)
        rc = reference_env(out);
    else
        return RV_EINVAL;
    return rc ? RV_ENOMEM : 0;
}

/* ---- tiers ------------------------------------------------------------------------------- */

const char *rv_config_price_of_tier(const rv_config_t *cfg, const char *tier) {
    if (strcmp(tier, "basic") == 0) return cfg->price_basic;
    if (strcmp(tier, "pro") == 0) return cfg->price_pro;
    if (strcmp(tier, "enterprise") == 0) return cfg->price_enterprise;
    return NULL;
}
