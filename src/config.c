/* Configuration: a KEY=VALUE file (the format of systemd's EnvironmentFile and of a .env) under
 * the environment, with defaults and validation. Errors name the key, never its value. */
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
        if (*p == '\n') { p++; (*lineno)++; }
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
            if (*p == '\0') { rc = RV_EINVAL; goto fail; }
            if (*p == q) { p++; break; }
            char c = *p++;
            if (c == '\n') (*lineno)++;
            if (q == '"' && c == '\\' && *p) {
                char e = *p++;
                c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
            }
            if ((rc = rv_buf_append(&v, &c, 1))) goto fail;
        }
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p == '#') while (*p && *p != '\n') p++;
        if (*p != '\n' && *p != '\0') { rc = RV_EINVAL; goto fail; }
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
    if (*p == '\n') { p++; (*lineno)++; }
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

/* ---- the key/value table the file and environment fill --------------------------------- */

/* Every key rivetd reads. Other keys (the prototype's .env holds many) are ignored. */
static const char *const known_keys[] = {
    "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_PRICE_BASIC", "STRIPE_PRICE_PRO",
    "STRIPE_PRICE_ENTERPRISE", "STRIPE_PUBLISHABLE_KEY", "STRIPE_API_BASE", "STRIPE_API_VERSION",
    "STRIPE_TIMEOUT_MS", "STRIPE_MAX_RETRIES", "WEBHOOK_TOLERANCE", "APP_URL", "API_URL",
    "REDIRECT_ORIGINS", "CORS_ORIGINS", "TELEGRAM_BOT", "RIVET_API_TOKEN", "LISTEN",
    "ADMIN_LISTEN", "WORKERS", "RATE_LIMIT_PER_MIN", "TRUST_PROXY", "REDIS_URL", "REDIS_STREAM",
    "REDIS_DEDUPE_TTL", "REDIS_TIMEOUT_MS", "MAX_BODY_BYTES", "MAX_HEADER_BYTES",
    "MAX_BODY_BUFFER", "MAX_CONNECTIONS", "HEADER_TIMEOUT_MS", "BODY_TIMEOUT_MS", "IDLE_TIMEOUT_MS",
    "SHUTDOWN_TIMEOUT_MS", "LOG_LEVEL",
};
#define NKEYS RV_ARRAY_LEN(known_keys)

typedef struct kv_s {
    char *val[NKEYS]; /* NULL: not set */
} kv_t;

static int key_index(const char *key) {
    for (size_t i = 0; i < NKEYS; i++)
        if (strcmp(known_keys[i], key) == 0) return (int)i;
    return -1;
}

static int kv_set(void *ud, const char *key, const char *val) {
    kv_t *kv = ud;
    int i = key_index(key);
    if (i < 0) return 0;
    char *v = strdup(val);
    if (v == NULL) return RV_ENOMEM;
    free(kv->val[i]);
    kv->val[i] = v;
    return 0;
}

static void kv_free(kv_t *kv) {
    for (size_t i = 0; i < NKEYS; i++) free(kv->val[i]);
}

/* ---- validation helpers ------------------------------------------------------------------ */

typedef struct ctx_s {
    kv_t kv;
    char *err;
    size_t errlen;
} ctx_t;

__attribute__((format(printf, 2, 3))) static int fail(ctx_t *c, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (c->err && c->errlen) vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
    return RV_EINVAL;
}

/* The raw value of key, or def when unset. An empty value counts as set. */
static const char *get(ctx_t *c, const char *key, const char *def) {
    const char *v = c->kv.val[key_index(key)];
    return v ? v : def;
}

static int printable(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s == 0x7f) return 0;
    return 1;
}

static int get_str(ctx_t *c, const char *key, const char *def, int required, char **out) {
    const char *v = get(c, key, def);
    if (v == NULL || (required && *v == '\0')) return fail(c, "config: %s is required", key);
    if (!printable(v)) return fail(c, "config: %s must not contain spaces or control characters", key);
    if (strlen(v) > 4096) return fail(c, "config: %s is too long", key);
    *out = strdup(v);
    return *out ? 0 : RV_ENOMEM;
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

static int get_u64(ctx_t *c, const char *key, uint64_t def, uint64_t lo, uint64_t hi,
                   uint64_t *out) {
    const char *v = get(c, key, NULL);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    uint64_t n;
    if (parse_u64(v, &n) || n < lo || n > hi)
        return fail(c, "config: %s must be an integer from %llu to %llu", key,
                    (unsigned long long)lo, (unsigned long long)hi);
    *out = n;
    return 0;
}

static int get_unsigned(ctx_t *c, const char *key, unsigned def, unsigned lo, unsigned hi,
                        unsigned *out) {
    uint64_t v;
    int rc = get_u64(c, key, def, lo, hi, &v);
    if (rc == 0) *out = (unsigned)v;
    return rc;
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

static int get_url(ctx_t *c, const char *key, const char *def, char **out) {
    int rc = get_str(c, key, def, 1, out);
    if (rc) return rc;
    char origin[512];
    if (rv_url_origin(*out, origin, sizeof origin))
        return fail(c, "config: %s must be an absolute http(s) URL", key);
    size_t n = strlen(*out);
    while (n > 0 && (*out)[n - 1] == '/') (*out)[--n] = '\0';
    return 0;
}

static int get_origins(ctx_t *c, const char *key, const char *def, rv_strlist_t *out) {
    rv_strlist_t raw = {0};
    int rc = split_list(get(c, key, def), &raw);
    for (size_t i = 0; rc == 0 && i < raw.n; i++) {
        char origin[512];
        if (rv_url_origin(raw.v[i], origin, sizeof origin)) {
            rc = fail(c, "config: %s must be a comma-separated list of http(s) origins", key);
            break;
        }
        const char *host = strstr(raw.v[i], "://") + 3; /* present: rv_url_origin checked */
        const char *after = host + strcspn(host, "/?#");
        if (*after && strcmp(after, "/") != 0) {
            rc = fail(c, "config: %s must list origins (scheme://host[:port]) without paths", key);
            break;
        }
        if (!rv_strlist_contains(out, origin)) rc = strlist_push(out, origin, strlen(origin));
    }
    strlist_free(&raw);
    return rc;
}

/* ---- the configuration ------------------------------------------------------------------- */

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int load(rv_config_t *cfg, ctx_t *c) {
    int rc;
    uint64_t u;

    if ((rc = get_str(c, "STRIPE_SECRET_KEY", NULL, 1, &cfg->stripe_secret_key))) return rc;
    const char *k = cfg->stripe_secret_key;
    if (!(starts_with(k, "sk_test_") || starts_with(k, "sk_live_") || starts_with(k, "rk_test_") ||
          starts_with(k, "rk_live_")) || strlen(k) < 12)
        return fail(c, "config: STRIPE_SECRET_KEY must be a Stripe secret key (sk_... or rk_...)");

    const char *ws = get(c, "STRIPE_WEBHOOK_SECRET", NULL);
    if (ws == NULL || *ws == '\0') return fail(c, "config: STRIPE_WEBHOOK_SECRET is required");
    if ((rc = split_list(ws, &cfg->webhook_secrets))) return rc;
    if (cfg->webhook_secrets.n == 0 || cfg->webhook_secrets.n > 8)
        return fail(c, "config: STRIPE_WEBHOOK_SECRET must list 1 to 8 secrets");
    for (size_t i = 0; i < cfg->webhook_secrets.n; i++) {
        const char *s = cfg->webhook_secrets.v[i];
        if (!starts_with(s, "whsec_") || strlen(s) < 10 || !printable(s))
            return fail(c, "config: STRIPE_WEBHOOK_SECRET must be whsec_... secrets, comma-separated");
    }

    if ((rc = get_str(c, "STRIPE_PRICE_BASIC", NULL, 1, &cfg->price_basic))) return rc;
    if ((rc = get_str(c, "STRIPE_PRICE_PRO", NULL, 1, &cfg->price_pro))) return rc;
    if ((rc = get_str(c, "STRIPE_PRICE_ENTERPRISE", NULL, 1, &cfg->price_enterprise))) return rc;
    if ((rc = get_str(c, "STRIPE_PUBLISHABLE_KEY", "", 0, &cfg->publishable_key))) return rc;
    if (*cfg->publishable_key && !starts_with(cfg->publishable_key, "pk_"))
        return fail(c, "config: STRIPE_PUBLISHABLE_KEY must be a publishable key (pk_...)");
    if ((rc = get_url(c, "STRIPE_API_BASE", "https://api.stripe.com", &cfg->stripe_api_base)))
        return rc;
    if ((rc = get_str(c, "STRIPE_API_VERSION", "", 0, &cfg->stripe_api_version))) return rc;
    if ((rc = get_u64(c, "STRIPE_TIMEOUT_MS", 30000, 100, 600000, &cfg->stripe_timeout_ms)))
        return rc;
    if ((rc = get_unsigned(c, "STRIPE_MAX_RETRIES", 2, 0, 10, &cfg->stripe_max_retries)))
        return rc;
    if ((rc = get_u64(c, "WEBHOOK_TOLERANCE", 300, 1, 86400, &u))) return rc;
    cfg->webhook_tolerance = (int64_t)u;

    if ((rc = get_url(c, "APP_URL", "https://rivet.io", &cfg->app_url))) return rc;
    if ((rc = get_url(c, "API_URL", "https://api.rivet.io", &cfg->api_url))) return rc;
    char app_origin[512];
    rv_url_origin(cfg->app_url, app_origin, sizeof app_origin);
    if ((rc = get_origins(c, "REDIRECT_ORIGINS", app_origin, &cfg->redirect_origins))) return rc;
    if ((rc = get_origins(c, "CORS_ORIGINS",
                          "https://rivet.io,https://www.rivet.io,http://localhost:3000",
                          &cfg->cors_origins)))
        return rc;

    if ((rc = get_str(c, "TELEGRAM_BOT", "RivetCEO_bot", 1, &cfg->telegram_bot))) return rc;
    size_t tl = strlen(cfg->telegram_bot);
    for (size_t i = 0; i < tl; i++)
        if (!is_key_char((unsigned char)cfg->telegram_bot[i])) tl = 0;
    if (tl < 5 || tl > 32)
        return fail(c, "config: TELEGRAM_BOT must be a bot user name (5-32 letters, digits, _)");

    if ((rc = get_str(c, "RIVET_API_TOKEN", "", 0, &cfg->api_token))) return rc;
    if (*cfg->api_token && strlen(cfg->api_token) < 16)
        return fail(c, "config: RIVET_API_TOKEN must be at least 16 characters when set");

    if ((rc = get_str(c, "LISTEN", "127.0.0.1:8000", 1, &cfg->listen))) return rc;
    if (rv_config_parse_addr(cfg->listen, &cfg->listen_addr))
        return fail(c, "config: LISTEN must be host:port or [v6]:port with an IP address");
    if ((rc = get_str(c, "ADMIN_LISTEN", "127.0.0.1:8001", 0, &cfg->admin_listen))) return rc;
    if (*cfg->admin_listen && rv_config_parse_addr(cfg->admin_listen, &cfg->admin_addr))
        return fail(c, "config: ADMIN_LISTEN must be host:port, [v6]:port, or empty");

    if ((rc = get_unsigned(c, "WORKERS", 1, 1, 64, &cfg->workers))) return rc;
    if ((rc = get_unsigned(c, "RATE_LIMIT_PER_MIN", 60, 0, 1000000, &cfg->rate_limit_per_min)))
        return rc;
    if ((rc = split_list(get(c, "TRUST_PROXY", ""), &cfg->trust_proxy))) return rc;
    for (size_t i = 0; i < cfg->trust_proxy.n; i++) {
        unsigned char tmp[16];
        if (inet_pton(AF_INET, cfg->trust_proxy.v[i], tmp) != 1 &&
            inet_pton(AF_INET6, cfg->trust_proxy.v[i], tmp) != 1)
            return fail(c, "config: TRUST_PROXY must list IP addresses");
    }

    if ((rc = get_str(c, "REDIS_URL", "redis://127.0.0.1:6379/0", 1, &cfg->redis_url))) return rc;
    rv_redis_url_t ru;
    if (rv_redis_url_parse(cfg->redis_url, &ru))
        return fail(c, "config: REDIS_URL must be redis://[[user]:pass@]host[:port][/db] or "
                       "unix:///path[?db=N]");
    if ((rc = get_str(c, "REDIS_STREAM", "rivet:provisioning", 1, &cfg->redis_stream))) return rc;
    if (strlen(cfg->redis_stream) > 200) return fail(c, "config: REDIS_STREAM is too long");
    if ((rc = get_u64(c, "REDIS_DEDUPE_TTL", 2592000, 60, 315360000, &cfg->redis_dedupe_ttl)))
        return rc;
    if ((rc = get_u64(c, "REDIS_TIMEOUT_MS", 2000, 10, 60000, &cfg->redis_timeout_ms))) return rc;

    if ((rc = get_u64(c, "MAX_BODY_BYTES", 1048576, 1024, 67108864, &u))) return rc;
    cfg->max_body_bytes = (size_t)u;
    if ((rc = get_u64(c, "MAX_HEADER_BYTES", 16384, 1024, 1048576, &u))) return rc;
    cfg->max_header_bytes = (size_t)u;
    if ((rc = get_u64(c, "MAX_BODY_BUFFER", 67108864, 65536, (uint64_t)1 << 40, &u))) return rc;
    cfg->max_body_buffer = (size_t)u;
    if (cfg->max_body_buffer < cfg->max_body_bytes + cfg->max_header_bytes)
        return fail(c, "config: MAX_BODY_BUFFER must hold at least one request of "
                       "MAX_BODY_BYTES + MAX_HEADER_BYTES");
    if ((rc = get_unsigned(c, "MAX_CONNECTIONS", 10000, 1, 1000000, &cfg->max_connections)))
        return rc;
    if ((rc = get_u64(c, "HEADER_TIMEOUT_MS", 10000, 10, 3600000, &cfg->header_timeout_ms)))
        return rc;
    if ((rc = get_u64(c, "BODY_TIMEOUT_MS", 30000, 10, 3600000, &cfg->body_timeout_ms))) return rc;
    if ((rc = get_u64(c, "IDLE_TIMEOUT_MS", 60000, 10, 3600000, &cfg->idle_timeout_ms))) return rc;
    if ((rc = get_u64(c, "SHUTDOWN_TIMEOUT_MS", 10000, 0, 3600000, &cfg->shutdown_timeout_ms)))
        return rc;

    if (rv_log_level_parse(get(c, "LOG_LEVEL", "info"), &cfg->log_level))
        return fail(c, "config: LOG_LEVEL must be debug, info, warn or error");
    return 0;
}

int rv_config_load(rv_config_t *cfg, const char *const *envp, const char *file_text, char *err,
                   size_t errlen) {
    ctx_t c;
    memset(&c, 0, sizeof c);
    memset(cfg, 0, sizeof *cfg);
    c.err = err;
    c.errlen = errlen;
    if (err && errlen) err[0] = '\0';
    int rc = 0;
    if (file_text) {
        int line = 0;
        rc = rv_config_parse_file(file_text, kv_set, &c.kv, &line);
        if (rc) {
            rc = fail(&c, "config: malformed line %d in the configuration file", line);
            goto out;
        }
    }
    for (const char *const *e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (eq == NULL || (size_t)(eq - *e) >= 64) continue;
        char key[64];
        memcpy(key, *e, (size_t)(eq - *e));
        key[eq - *e] = '\0';
        if ((rc = kv_set(&c.kv, key, eq + 1))) goto out;
    }
    rc = load(cfg, &c);
    if (rc == RV_ENOMEM) fail(&c, "config: out of memory");
out:
    kv_free(&c.kv);
    if (rc) rv_config_free(cfg);
    return rc ? RV_EINVAL : 0;
}

void rv_config_free(rv_config_t *cfg) {
    char **strs[] = {&cfg->stripe_secret_key, &cfg->price_basic, &cfg->price_pro,
                     &cfg->price_enterprise, &cfg->publishable_key, &cfg->stripe_api_base,
                     &cfg->stripe_api_version, &cfg->app_url, &cfg->api_url, &cfg->telegram_bot,
                     &cfg->api_token, &cfg->listen, &cfg->admin_listen, &cfg->redis_url,
                     &cfg->redis_stream};
    for (size_t i = 0; i < RV_ARRAY_LEN(strs); i++) {
        free(*strs[i]);
        *strs[i] = NULL;
    }
    strlist_free(&cfg->webhook_secrets);
    strlist_free(&cfg->redirect_origins);
    strlist_free(&cfg->cors_origins);
    strlist_free(&cfg->trust_proxy);
}

/* ---- dump, with secrets redacted --------------------------------------------------------- */

static int dump_list(rv_buf_t *out, const char *key, const rv_strlist_t *l) {
    int rc = rv_buf_printf(out, "%s=", key);
    for (size_t i = 0; rc == 0 && i < l->n; i++)
        rc = rv_buf_printf(out, "%s%s", i ? "," : "", l->v[i]);
    return rc ? rc : rv_buf_puts(out, "\n");
}

/* A secret shows only its kind: "sk_live_…" → "sk_live_<redacted>". */
static int dump_secret(rv_buf_t *out, const char *key, const char *v) {
    if (*v == '\0') return rv_buf_printf(out, "%s=\n", key);
    const char *us = strchr(v, '_');
    if (us && (us = strchr(us + 1, '_')) && us - v <= 8 && (starts_with(v, "sk_") || starts_with(v, "rk_")))
        return rv_buf_printf(out, "%s=%.*s<redacted>\n", key, (int)(us - v + 1), v);
    if (starts_with(v, "whsec_")) return rv_buf_printf(out, "%s=whsec_<redacted>\n", key);
    return rv_buf_printf(out, "%s=<redacted>\n", key);
}

int rv_config_dump(const rv_config_t *cfg, rv_buf_t *out) {
    int rc = 0;
    static const char *const level_names[] = {"debug", "info", "warn", "error"};
    rc |= dump_secret(out, "STRIPE_SECRET_KEY", cfg->stripe_secret_key);
    rc |= rv_buf_printf(out, "STRIPE_WEBHOOK_SECRET=");
    for (size_t i = 0; i < cfg->webhook_secrets.n; i++)
        rc |= rv_buf_printf(out, "%swhsec_<redacted>", i ? "," : "");
    rc |= rv_buf_puts(out, "\n");
    rc |= rv_buf_printf(out, "STRIPE_PRICE_BASIC=%s\nSTRIPE_PRICE_PRO=%s\nSTRIPE_PRICE_ENTERPRISE=%s\n",
                        cfg->price_basic, cfg->price_pro, cfg->price_enterprise);
    rc |= rv_buf_printf(out, "STRIPE_PUBLISHABLE_KEY=%s\nSTRIPE_API_BASE=%s\nSTRIPE_API_VERSION=%s\n",
                        cfg->publishable_key, cfg->stripe_api_base, cfg->stripe_api_version);
    rc |= rv_buf_printf(out, "STRIPE_TIMEOUT_MS=%llu\nSTRIPE_MAX_RETRIES=%u\nWEBHOOK_TOLERANCE=%lld\n",
                        (unsigned long long)cfg->stripe_timeout_ms, cfg->stripe_max_retries,
                        (long long)cfg->webhook_tolerance);
    rc |= rv_buf_printf(out, "APP_URL=%s\nAPI_URL=%s\n", cfg->app_url, cfg->api_url);
    rc |= dump_list(out, "REDIRECT_ORIGINS", &cfg->redirect_origins);
    rc |= dump_list(out, "CORS_ORIGINS", &cfg->cors_origins);
    rc |= rv_buf_printf(out, "TELEGRAM_BOT=%s\n", cfg->telegram_bot);
    rc |= dump_secret(out, "RIVET_API_TOKEN", cfg->api_token);
    rc |= rv_buf_printf(out, "LISTEN=%s\nADMIN_LISTEN=%s\nWORKERS=%u\nRATE_LIMIT_PER_MIN=%u\n",
                        cfg->listen, cfg->admin_listen, cfg->workers, cfg->rate_limit_per_min);
    rc |= dump_list(out, "TRUST_PROXY", &cfg->trust_proxy);
    /* The URL may carry a password: show only where it points. */
    rv_redis_url_t ru;
    int parsed = rv_redis_url_parse(cfg->redis_url, &ru) == 0;
    if (parsed && ru.path[0])
        rc |= rv_buf_printf(out, "REDIS_URL=unix://%s?db=%d\n", ru.path, ru.db);
    else if (parsed)
        rc |= rv_buf_printf(out, "REDIS_URL=redis://%s%s%s%s%s:%d/%d\n", ru.user,
                            ru.pass[0] ? ":<redacted>" : "", ru.user[0] || ru.pass[0] ? "@" : "",
                            strchr(ru.host, ':') ? "[" : "", ru.host, ru.port, ru.db);
    rc |= rv_buf_printf(out, "REDIS_STREAM=%s\nREDIS_DEDUPE_TTL=%llu\nREDIS_TIMEOUT_MS=%llu\n",
                        cfg->redis_stream, (unsigned long long)cfg->redis_dedupe_ttl,
                        (unsigned long long)cfg->redis_timeout_ms);
    rc |= rv_buf_printf(out,
                        "MAX_BODY_BYTES=%zu\nMAX_HEADER_BYTES=%zu\nMAX_BODY_BUFFER=%zu\n"
                        "MAX_CONNECTIONS=%u\n",
                        cfg->max_body_bytes, cfg->max_header_bytes, cfg->max_body_buffer,
                        cfg->max_connections);
    rc |= rv_buf_printf(out,
                        "HEADER_TIMEOUT_MS=%llu\nBODY_TIMEOUT_MS=%llu\nIDLE_TIMEOUT_MS=%llu\n"
                        "SHUTDOWN_TIMEOUT_MS=%llu\nLOG_LEVEL=%s\n",
                        (unsigned long long)cfg->header_timeout_ms,
                        (unsigned long long)cfg->body_timeout_ms,
                        (unsigned long long)cfg->idle_timeout_ms,
                        (unsigned long long)cfg->shutdown_timeout_ms, level_names[cfg->log_level & 3]);
    return rc ? RV_ENOMEM : 0;
}

const char *rv_config_price_of_tier(const rv_config_t *cfg, const char *tier) {
    if (strcmp(tier, "basic") == 0) return cfg->price_basic;
    if (strcmp(tier, "pro") == 0) return cfg->price_pro;
    if (strcmp(tier, "enterprise") == 0) return cfg->price_enterprise;
    return NULL;
}

const char *rv_config_tier_of_price(const rv_config_t *cfg, const char *price) {
    if (price == NULL) return "unknown";
    if (strcmp(price, cfg->price_basic) == 0) return "basic";
    if (strcmp(price, cfg->price_pro) == 0) return "pro";
    if (strcmp(price, cfg->price_enterprise) == 0) return "enterprise";
    return "unknown";
}
