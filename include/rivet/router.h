/* Route table: (method, path) -> handler. Pure. */
#ifndef RIVET_ROUTER_H
#define RIVET_ROUTER_H

#include <stddef.h>

typedef struct rv_request_s rv_request_t;

/* A handler owns the request until it answers it with one of the rv_respond* functions. */
typedef void (*rv_handler_fn)(rv_request_t *req);

/* Request bodies are small unless a route says otherwise: JSON bodies of the public API are
 * under 1 KB, so 16 KiB leaves room and keeps what an anonymous client can make us hold small. */
#define RV_BODY_SMALL      16384
/* A route's max_body that means "the server's max_body_bytes" (MAX_BODY_BYTES). */
#define RV_BODY_CONFIGURED ((size_t)-1)

typedef struct rv_route_s {
    const char *method; /* "GET", "POST", "OPTIONS"; a GET route also answers HEAD */
    const char *path;   /* exact path, no query */
    rv_handler_fn fn;
    const char *name; /* label for logs and metrics */
    size_t max_body;  /* bytes of body: 0 means RV_BODY_SMALL; never above max_body_bytes */
} rv_route_t;

/* Find the route for method and path (path_len bytes, no query). Returns 0 with *out set;
 * RV_ENOTFOUND when no route has that path; RV_EMETHOD when the path exists with other methods,
 * which are then listed in allow ("GET, HEAD, OPTIONS"). */
int rv_router_match(const rv_route_t *routes, size_t n, const char *method, const char *path,
                    size_t path_len, const rv_route_t **out, char *allow, size_t allow_len);

#endif
