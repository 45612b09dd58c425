/* Configuration: environment variables over an optional KEY=VALUE file, with defaults and
 * validation. Pure: the caller supplies the environment and the file's text. One table in
 * config.c describes every key; loading, validation, freeing, the redacted dump, what a reload
 * keeps, and the documentation (README.md's table, conf/rivet.conf.example) all come from it. */
#ifndef RIVET_CONFIG_H
#define RIVET_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "rivet/buf.h"

/* A list of strings parsed from a comma-separated value; owns its strings. */
typedef struct rv_strlist_s {
    char **v;
    size_t n;
} rv_strlist_t;

typedef struct rv_config_s {
    char *stripe_secret_key;
    rv_strlist_t webhook_secrets; /* STRIPE_WEBHOOK_SECRET, one or more during rotation */
    char *price_basic;
    char *price_pro;
    char *price_enterprise;
    char *publishable_key;
    char *stripe_api_base;    /* no trailing slash */
    char *stripe_api_version; /* "" when unset */
    uint64_t stripe_timeout_ms;
    unsigned stripe_max_retries;
    unsigned stripe_reads_per_sec; /* reads of Stripe's state, per instance */
    int64_t webhook_tolerance;     /* seconds */
    char *app_url;                 /* no trailing slash */
    char *api_url;                 /* no trailing slash */
    rv_strlist_t redirect_origins; /* "scheme://host[:port]", lower case */
    rv_strlist_t cors_origins;
    char *telegram_bot;
    uint64_t telegram_link_ttl;     /* seconds a start token lives */
    uint64_t entitlement_cache;     /* look-ups cached per worker; 0: none */
    uint64_t checkout_link_max_age; /* seconds a session id gives personal data and the portal */
    char *api_token;                /* "" when unset: server-to-server portal calls are refused */
    char *listen;
    char *admin_listen; /* "" disables the admin listener */
    struct sockaddr_storage listen_addr;
    struct sockaddr_storage admin_addr;
    unsigned workers;
    unsigned rate_limit_per_min; /* 0 disables */
    rv_strlist_t trust_proxy;    /* literal addresses */
    char *redis_url;
    char *redis_stream;
    uint64_t redis_dedupe_ttl; /* seconds */
    uint64_t redis_timeout_ms;
    size_t max_body_bytes;
    size_t max_header_bytes;
    size_t max_body_buffer; /* request input held at once by the process (503 beyond) */
    unsigned max_connections;
    uint64_t header_timeout_ms;
    uint64_t body_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t shutdown_timeout_ms;
    int log_level;
    uint64_t reconcile_interval; /* seconds between recovery runs; 0: none */
    char *redis_sentinels;       /* "ip:port,..." or "" */
    char *redis_sentinel_master;
    unsigned redis_min_replicas;
    int past_due_active; /* a past_due subscription keeps its access */
} rv_config_t;

/* Build a configuration from envp (NULL-terminated "KEY=VALUE" strings, may be NULL) over the
 * text of a KEY=VALUE file (may be NULL). The environment wins. On error returns RV_EINVAL and
 * writes one line naming the key (never its value) to err. On success the caller owns cfg and
 * releases it with rv_config_free. */
int rv_config_load(rv_config_t *cfg, const char *const *envp, const char *file_text, char *err,
                   size_t errlen);

/* Release everything cfg owns. Safe on a zeroed or partially loaded cfg. */
void rv_config_free(rv_config_t *cfg);

/* Append the effective configuration, one KEY=VALUE per line, secrets redacted. */
int rv_config_dump(const rv_config_t *cfg, rv_buf_t *out);

/* For a reload: swap every start-only setting (listeners, workers, Redis, HTTP limits) between
 * next and running, so that next carries the running values and running carries next's, to be
 * released with it. Values derived from a key (the parsed LISTEN address) move with the key. */
void rv_config_keep_start_only(rv_config_t *next, rv_config_t *running);

/* How many start-only keys differ between next and running. Their names, separated by ", ", go
 * into names (always terminated when len > 0; names that do not fit are left out). */
size_t rv_config_start_only_changed(const rv_config_t *next, const rv_config_t *running,
                                    char *names, size_t len);

/* Flags of a key in rv_config_key_info_t. */
#define RV_CONFIG_SECRET     1u /* the dump redacts it; errors never show it */
#define RV_CONFIG_START_ONLY 2u /* read at start; a reload keeps the running value */

/* What the configuration table says about one key. The strings are static. */
typedef struct rv_config_key_info_s {
    const char *name;
    const char *def;   /* the default as conf/rivet.conf.example shows it; NULL: required */
    char doc_def[256]; /* the default as README.md's table shows it */
    unsigned flags;
} rv_config_key_info_t;

/* Describe the i-th key of the table (0-based, in table order). Returns 0, or RV_ENOTFOUND when
 * i is past the last key. */
int rv_config_key_at(size_t i, rv_config_key_info_t *out);

/* Formats of rv_config_reference. */
enum { RV_CONFIG_REF_MARKDOWN = 0, RV_CONFIG_REF_ENV = 1 };

/* Append the documentation generated from the table: README.md's configuration table (MARKDOWN)
 * or the whole of conf/rivet.conf.example (ENV). Returns 0, RV_EINVAL or RV_ENOMEM. */
int rv_config_reference(rv_buf_t *out, int format);

/* Parse one line-oriented KEY=VALUE text (comments, export, quotes as in a .env) and call fn
 * for each pair. Returns 0, or RV_EINVAL with the 1-based line number in *bad_line. */
int rv_config_parse_file(const char *text, int (*fn)(void *ud, const char *key, const char *val),
                         void *ud, int *bad_line);

/* Parse "host:port" or "[v6]:port" into a sockaddr. Returns 0 or RV_EINVAL. */
int rv_config_parse_addr(const char *s, struct sockaddr_storage *out);

/* Extract the lower-cased origin ("scheme://host[:port]") of an http(s) URL into out.
 * Returns 0, or RV_EINVAL when url is not an absolute http(s) URL with a host. */
int rv_url_origin(const char *url, char *out, size_t outlen);

/* The configured price id of a tier ("basic", "pro", "enterprise"), or NULL. */
const char *rv_config_price_of_tier(const rv_config_t *cfg, const char *tier);

/* 1 when s is one of the list's strings (exact match). */
int rv_strlist_contains(const rv_strlist_t *l, const char *s);

#endif
