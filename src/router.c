/* Route matching: exact paths, GET implying HEAD, and the Allow list for 405 answers. */
#include "rivet/router.h"

#include <stdio.h>
#include <string.h>

#include "rivet/common.h"

static int path_eq(const char *route, const char *path, size_t len) {
    return strlen(route) == len && memcmp(route, path, len) == 0;
}

static void allow_add(char *allow, size_t allow_len, const char *method) {
    size_t used = strlen(allow);
    /* Skip duplicates: "GET" must not be listed twice when two routes share a path. */
    const char *p = allow;
    size_t ml = strlen(method);
    while ((p = strstr(p, method)) != NULL) {
        if ((p == allow || p[-1] == ' ') && (p[ml] == ',' || p[ml] == '\0')) return;
        p += ml;
    }
    snprintf(allow + used, allow_len - used, "%s%s", used ? ", " : "", method);
}

int rv_router_match(const rv_route_t *routes, size_t n, const char *method, const char *path,
                    size_t path_len, const rv_route_t **out, char *allow, size_t allow_len) {
    int path_known = 0;
    int is_head = strcmp(method, "HEAD") == 0;
    if (allow_len) allow[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const rv_route_t *r = &routes[i];
        if (!path_eq(r->path, path, path_len)) continue;
        path_known = 1;
        if (strcmp(r->method, method) == 0 || (is_head && strcmp(r->method, "GET") == 0)) {
            *out = r;
            return 0;
        }
    }
    if (!path_known) return RV_ENOTFOUND;
    for (size_t i = 0; i < n && allow_len; i++) {
        if (!path_eq(routes[i].path, path, path_len)) continue;
        allow_add(allow, allow_len, routes[i].method);
        if (strcmp(routes[i].method, "GET") == 0) allow_add(allow, allow_len, "HEAD");
    }
    return RV_EMETHOD;
}
