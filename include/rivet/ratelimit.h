/* Per-client token buckets in a fixed-size table: bounded memory whatever the number of
 * clients. Pure: the caller supplies the time. */
#ifndef RIVET_RATELIMIT_H
#define RIVET_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct rv_ratelimit_s rv_ratelimit_t;

/* per_min tokens a minute per client, at most burst saved up; slots bounds the table (rounded
 * up to a power of two). Returns 0 or RV_ENOMEM. Free with rv_ratelimit_free. */
int rv_ratelimit_new(unsigned per_min, unsigned burst, size_t slots, rv_ratelimit_t **out);
void rv_ratelimit_free(rv_ratelimit_t *rl);

/* Take one token for key at now_ms. Returns 1 when allowed; 0 when limited, with
 * *retry_after_s the whole seconds until a token is available (at least 1). When the table is
 * full the least recently seen of the probed slots is reused. */
int rv_ratelimit_take(rv_ratelimit_t *rl, const char *key, uint64_t now_ms,
                      unsigned *retry_after_s);

#endif
