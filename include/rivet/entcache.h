/* A bounded in-memory cache of entitlement look-ups, kept right by Redis's invalidations.
 *
 * Entries are keyed by the Redis key a look-up starts from (rivet:customer:<id>,
 * rivet:tg:user:<id>, rivet:email:<address>) and remember the customer they found, so that a
 * change to rivet:customer:<id> drops every look-up that led to that customer. An answer is kept
 * only if no invalidation came while it was being read (the epoch is unchanged): an invalidation
 * that overtakes the answer it concerns can then never leave a stale answer behind. Entries also
 * expire after a while, as a bound should an invalidation ever be lost. Single-threaded. */
#ifndef RIVET_ENTCACHE_H
#define RIVET_ENTCACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct rv_entcache_s rv_entcache_t;

/* A cache of at most max entries, each kept at most ttl_ms; NULL when out of memory. */
rv_entcache_t *rv_entcache_new(size_t max, uint64_t ttl_ms);
void rv_entcache_free(rv_entcache_t *c);

/* The answer cached for key at now_ms: 1 with *customer and *entitlement (valid until the next
 * call that changes the cache), or 0. */
int rv_entcache_get(rv_entcache_t *c, const char *key, uint64_t now_ms, const char **customer,
                    const char **entitlement);

/* Counted on every invalidation and clear; read it before asking Redis. */
uint64_t rv_entcache_epoch(const rv_entcache_t *c);

/* Keep an answer read from Redis for a look-up begun at epoch, unless anything was invalidated
 * since. Returns 1 when kept. When full, everything is dropped first. */
int rv_entcache_put(rv_entcache_t *c, uint64_t epoch, const char *key, const char *customer,
                    const char *entitlement, uint64_t now_ms);

/* Redis key changed (len bytes): drop what depends on it. */
void rv_entcache_invalidate(rv_entcache_t *c, const char *rkey, size_t len);

/* Drop everything (invalidations may have been missed). */
void rv_entcache_clear(rv_entcache_t *c);

/* Entries held. */
size_t rv_entcache_size(const rv_entcache_t *c);

#endif
