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

/* Called when a sentinel announces that the primary of the name moved (+switch-master). */
typedef void (*rv_sentinel_switch_cb)(void *data, const char *host, int port);

/* Make a client for the sentinels (copied) and master name; it subscribes to +switch-master on
 * one sentinel at a time, from the loop, moving to the next when one fails. Returns 0,
 * RV_EINVAL or RV_ENOMEM. */
int rv_sentinel_init(uv_loop_t *loop, const rv_sentinel_addr_t *sentinels, int n,
                     const char *master, uint64_t timeout_ms, rv_sentinel_switch_cb on_switch,
                     void *data, rv_sentinel_t **out);

/* Ask the sentinels in turn (each within the timeout) for the primary; found is called once,
 * later. A sentinel that answered is asked first next time. Returns 0, or RV_EBUSY-like
 * RV_EUNAVAIL when a query is already running (its answer will do). */
int rv_sentinel_find(rv_sentinel_t *s, rv_sentinel_found_cb found, void *data);

/* Stop everything; callbacks never run after this. Memory is released through the loop (the close
 * contract: common.h). */
void rv_sentinel_close(rv_sentinel_t *s);

#endif
