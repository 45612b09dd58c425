/* hiredis on the libuv loop.
 *
 * hiredis 0.14's own adapter starts the poll again every time hiredis asks to write, once per
 * command, and uv_poll_start begins by taking the descriptor out of epoll: a system call per
 * command, and another when the loop puts it back. This one changes the poll only when the
 * events it waits for change.
 *
 * Commands are written once per turn of the loop, just before it waits for I/O (a prepare
 * handle), not when the next turn finds the socket writable: every command the turn's callbacks
 * made goes to Redis in one write, without a turn of the loop in between, and the poll waits for
 * writability only when Redis does not take everything at once. Before the connection is up,
 * writability is how the connect is seen to finish, so until then the poll is asked.
 *
 * It also reports poll errors, which that adapter drops: libuv has stopped the poll by then, so
 * a refused connect or a reset connection would go unnoticed until a timer. An error is handed
 * to hiredis as the events it waits for: it reads or writes, meets the error and disconnects. */
#include "rivet/redis_uv.h"

#include <stdlib.h>

typedef struct watch_s {
    redisAsyncContext *ac; /* NULL once hiredis has let go of it */
    uv_poll_t poll;
    uv_prepare_t flush;
    int events;   /* what the poll is started with; 0 when stopped */
    int flushing; /* inside the flush: a call to add_write means Redis took only part */
    int handles;  /* handles still to close */
} watch_t;

static void on_poll(uv_poll_t *poll, int status, int events) {
    watch_t *w = poll->data;
    if (status < 0) {
        events = w->events;
        w->events = 0; /* libuv stopped the poll */
    }
    if (w->ac && (events & UV_READABLE)) redisAsyncHandleRead(w->ac);
    if (w->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(w->ac);
}

static void want(watch_t *w, int events) {
    if (events == w->events) return;
    w->events = events;
    if (events)
        uv_poll_start(&w->poll, events, on_poll);
    else
        uv_poll_stop(&w->poll);
}

static void add_read(void *data) {
    watch_t *w = data;
    want(w, w->events | UV_READABLE);
}

static void del_read(void *data) {
    watch_t *w = data;
    want(w, w->events & ~UV_READABLE);
}

static void on_flush(uv_prepare_t *h) {
    watch_t *w = h->data;
    uv_prepare_stop(&w->flush);
    if (w->ac == NULL) return;
    w->flushing = 1;
    redisAsyncHandleWrite(w->ac);
    w->flushing = 0;
}

static void add_write(void *data) {
    watch_t *w = data;
    if (w->flushing || !(w->ac->c.flags & REDIS_CONNECTED))
        want(w, w->events | UV_WRITABLE);
    else
        uv_prepare_start(&w->flush, on_flush);
}

static void del_write(void *data) {
    watch_t *w = data;
    uv_prepare_stop(&w->flush);
    want(w, w->events & ~UV_WRITABLE);
}

static void on_closed(uv_handle_t *h) {
    watch_t *w = h->data;
    if (--w->handles == 0) free(w);
}

static void cleanup(void *data) {
    watch_t *w = data;
    w->ac = NULL;
    uv_close((uv_handle_t *)&w->poll, on_closed);
    uv_close((uv_handle_t *)&w->flush, on_closed);
}

int rv_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
    if (ac->ev.data != NULL) return REDIS_ERR;
    watch_t *w = calloc(1, sizeof *w);
    if (w == NULL) return REDIS_ERR;
    if (uv_poll_init(loop, &w->poll, ac->c.fd) != 0) {
        free(w);
        return REDIS_ERR;
    }
    uv_prepare_init(loop, &w->flush);
    w->handles = 2;
    w->ac = ac;
    w->poll.data = w;
    w->flush.data = w;
    ac->ev.data = w;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    return REDIS_OK;
}
