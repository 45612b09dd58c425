/* Parse REDIS_URL: redis://[[user]:pass@]host[:port][/db] or unix:///path[?db=N]. Pure. */
#ifndef RIVET_REDIS_URL_H
#define RIVET_REDIS_URL_H

typedef struct rv_redis_url_s {
    char host[256]; /* "" for a unix socket; an IP literal or a name */
    int port;       /* default 6379 */
    char path[108]; /* unix socket path, "" for tcp */
    char user[128]; /* "" when absent */
    char pass[256]; /* "" when absent */
    int db;         /* default 0 */
} rv_redis_url_t;

/* Returns 0 or RV_EINVAL. Percent-escapes in user and password are decoded. */
int rv_redis_url_parse(const char *url, rv_redis_url_t *out);

#endif
