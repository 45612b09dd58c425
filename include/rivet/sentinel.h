/* Redis Sentinel on the loop (hiredis 0.14 has no Sentinel support): find the primary of a
 * master name the way Sentinel's client guide says, and hear at once when it moves. Addresses
 * are IP addresses: nothing is resolved, so nothing blocks. */
#ifndef RIVET_SENTINEL_H
#define RIVET_SENTINEL_H

#include <stdint.h>
#include <uv.h>

#define RV_SENTINEL_MAX 16

typedef struct rv_sentinel_addr_s {
    char host[64];
    int port;
} rv_sentinel_addr_t;

/* Parse "ip:port,ip:port,..." ("[v6]:port" too) into at most RV_SENTINEL_MAX addresses.
 * Returns the number, or RV_EINVAL. */
int rv_sentinel_parse(const char *list, rv_sentinel_addr_t *out, int max);

typedef struct rv_sentinel_s rv_sentinel_t;

/* The primary's address, or err (every sentinel failed or said nothing). */
typedef void (*rv_sentinel_found_cb)(void *data, int err, const char *host, int port);

/* Called when a sentinel announces that the primary of the name moved (+switch-master); each
 * sentinel announces it, so the same move may be told more than once. */
typedef void (*rv_sentinel_switch_cb)(void *data, const char *host, int port);

/* Called when a sentinel announces that a failover of the primary at host:port starts
 * (+try-failover: started 1), or that one stopped short (aborted, or timed out: started 0). */
typedef void (*rv_sentinel_failover_cb)(void *data, int started, const char *host, int port);

/* Make a client for the sentinels (copied) and master name; it subscribes to the failover events
 * on every sentinel, from the loop, each subscription tried again when it fails. Returns 0,
 * RV_EINVAL or RV_ENOMEM. */
int rv_sentinel_init(uv_loop_t *loop, const rv_sentinel_addr_t *sentinels, int n,
                     const char *master, uint64_t timeout_ms, rv_sentinel_switch_cb on_switch,
                     rv_sentinel_failover_cb on_failover, void *data, rv_sentinel_t **out);

/* The primary the sentinel asked first named turned out not to be one (ROLE), or could not be
 * reached: ask that sentinel last from now on, so that one stale sentinel cannot keep rivetd
 * away from the primary the others name. */
void rv_sentinel_distrust(rv_sentinel_t *s);

/* Ask the sentinels in turn (each within the timeout) for the primary; found is called once,
 * later. A sentinel that answered is asked first next time. Returns 0, or RV_EBUSY-like
 * RV_EUNAVAIL when a query is already running (its answer will do). */
int rv_sentinel_find(rv_sentinel_t *s, rv_sentinel_found_cb found, void *data);

/* Stop everything; callbacks never run after this. Memory is released through the loop (the close
 * contract: common.h). */
void rv_sentinel_close(rv_sentinel_t *s);

#endif
