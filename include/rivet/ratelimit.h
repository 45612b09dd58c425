/* Per-client token buckets in a fixed-size table: bounded memory whatever the number of
 * clients. The table is in shared memory, so processes forked after rv_ratelimit_new share
 * every client's allowance. The caller supplies the time (a clock all processes agree on). */
#ifndef RIVET_RATELIMIT_H
#define RIVET_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct rv_ratelimit_s rv_ratelimit_t;

/* per_min tokens a minute per client (0: nobody is limited), at most burst saved up; slots
 * bounds the table (rounded up to a power of two). Returns 0, RV_ENOMEM or RV_EIO. Free with
 * rv_ratelimit_free (in the process that made it, once the others are gone). */
int rv_ratelimit_new(unsigned per_min, unsigned burst, size_t slots, rv_ratelimit_t **out);
void rv_ratelimit_free(rv_ratelimit_t *rl);

/* Change the rate and burst for every process sharing rl; buckets keep their tokens (capped at
 * the new burst when next used). Cannot fail. */
void rv_ratelimit_configure(rv_ratelimit_t *rl, unsigned per_min, unsigned burst);

/* Take one token for key at now_ms. Returns 1 when allowed; 0 when limited, with
 * *retry_after_s the whole seconds until a token is available (at least 1). When the table is
 * full the least recently seen of the probed slots is reused. */
int rv_ratelimit_take(rv_ratelimit_t *rl, const char *key, uint64_t now_ms,
                      unsigned *retry_after_s);

#endif
