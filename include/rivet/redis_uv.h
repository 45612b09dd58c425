/* hiredis on a libuv loop: the event hooks of an async context. */
#ifndef RIVET_REDIS_UV_H
#define RIVET_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

/* Watch the context's connection on the loop. REDIS_OK or REDIS_ERR; on REDIS_ERR the context's
 * hooks are left unset, so that freeing it calls none of them. */
int rv_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop);

#endif
