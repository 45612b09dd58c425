/* The entitlement look-up cache (see entcache.h): one chained hash table of entries by look-up
 * key, and one of customers, each holding the list of its entries. */
#include "rivet/entcache.h"

#include <stdlib.h>
#include <string.h>

#define CUSTOMER_PREFIX "rivet:customer:"

typedef struct cust_s cust_t;

typedef struct entry_s {
    struct entry_s *next;          /* in the bucket */
    struct entry_s *cprev, *cnext; /* in the customer's list */
    cust_t *cust;
    uint64_t expires_ms;
    char *key, *ent;
} entry_t;

struct cust_s {
    cust_t *next; /* in the bucket */
    entry_t *entries;
    char id[];
};

struct rv_entcache_s {
    entry_t **entries;
    cust_t **custs;
    size_t nbuckets; /* a power of two */
    size_t n, max;
    uint64_t ttl_ms;
    uint64_t epoch;
};

static size_t hash(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return (size_t)(h ^ (h >> 29));
}

rv_entcache_t *rv_entcache_new(size_t max, uint64_t ttl_ms) {
    if (max == 0) return NULL;
    rv_entcache_t *c = calloc(1, sizeof *c);
    if (c == NULL) return NULL;
    c->nbuckets = 16;
    while (c->nbuckets < 2 * max) c->nbuckets *= 2;
    c->entries = calloc(c->nbuckets, sizeof *c->entries);
    c->custs = calloc(c->nbuckets, sizeof *c->custs);
    if (c->entries == NULL || c->custs == NULL) {
        rv_entcache_free(c);
        return NULL;
    }
    c->max = max;
    c->ttl_ms = ttl_ms;
    return c;
}

static cust_t **cust_slot(rv_entcache_t *c, const char *id, size_t len) {
    cust_t **p = &c->custs[hash(id, len) & (c->nbuckets - 1)];
    while (*p && !(strlen((*p)->id) == len && memcmp((*p)->id, id, len) == 0)) p = &(*p)->next;
    return p;
}

static entry_t **entry_slot(rv_entcache_t *c, const char *key, size_t len) {
    entry_t **p = &c->entries[hash(key, len) & (c->nbuckets - 1)];
    while (*p && !(strlen((*p)->key) == len && memcmp((*p)->key, key, len) == 0)) p = &(*p)->next;
    return p;
}

/* Unlink *slot's entry from its bucket and its customer, and free it. */
static void entry_drop(rv_entcache_t *c, entry_t **slot) {
    entry_t *e = *slot;
    *slot = e->next;
    cust_t *cu = e->cust;
    if (e->cprev)
        e->cprev->cnext = e->cnext;
    else
        cu->entries = e->cnext;
    if (e->cnext) e->cnext->cprev = e->cprev;
    if (cu->entries == NULL) {
        cust_t **cs = cust_slot(c, cu->id, strlen(cu->id));
        *cs = cu->next;
        free(cu);
    }
    free(e->key);
    free(e->ent);
    free(e);
    c->n--;
}

void rv_entcache_clear(rv_entcache_t *c) {
    if (c == NULL) return;
    c->epoch++;
    for (size_t i = 0; i < c->nbuckets && c->n; i++)
        while (c->entries[i]) entry_drop(c, &c->entries[i]);
}

void rv_entcache_free(rv_entcache_t *c) {
    if (c == NULL) return;
    if (c->entries && c->custs) rv_entcache_clear(c);
    free(c->entries);
    free(c->custs);
    free(c);
}

int rv_entcache_get(rv_entcache_t *c, const char *key, uint64_t now_ms, const char **customer,
                    const char **entitlement) {
    if (c == NULL) return 0;
    entry_t **slot = entry_slot(c, key, strlen(key));
    entry_t *e = *slot;
    if (e == NULL) return 0;
    if (now_ms >= e->expires_ms) {
        entry_drop(c, slot);
        return 0;
    }
    *customer = e->cust->id;
    *entitlement = e->ent;
    return 1;
}

uint64_t rv_entcache_epoch(const rv_entcache_t *c) { return c ? c->epoch : 0; }

int rv_entcache_put(rv_entcache_t *c, uint64_t epoch, const char *key, const char *customer,
                    const char *entitlement, uint64_t now_ms) {
    if (c == NULL || epoch != c->epoch) return 0;
    size_t kl = strlen(key), cl = strlen(customer);
    entry_t **slot = entry_slot(c, key, kl);
    if (*slot) entry_drop(c, slot);
    if (c->n >= c->max) {
        rv_entcache_clear(c);
        c->epoch = epoch; /* nothing was invalidated: this answer is as good as before */
        slot = entry_slot(c, key, kl);
    }
    entry_t *e = calloc(1, sizeof *e);
    if (e == NULL) return 0;
    e->key = strdup(key);
    e->ent = strdup(entitlement);
    cust_t **cs = cust_slot(c, customer, cl);
    cust_t *cu = *cs;
    if (cu == NULL && e->key && e->ent) {
        cu = calloc(1, sizeof *cu + cl + 1);
        if (cu) {
            memcpy(cu->id, customer, cl + 1);
            *cs = cu;
        }
    }
    if (cu == NULL || e->key == NULL || e->ent == NULL) {
        free(e->key);
        free(e->ent);
        free(e);
        return 0;
    }
    e->cust = cu;
    e->cnext = cu->entries;
    if (cu->entries) cu->entries->cprev = e;
    cu->entries = e;
    e->expires_ms = now_ms + c->ttl_ms;
    e->next = *slot;
    *slot = e;
    c->n++;
    return 1;
}

void rv_entcache_invalidate(rv_entcache_t *c, const char *rkey, size_t len) {
    if (c == NULL) return;
    c->epoch++;
    size_t pl = sizeof CUSTOMER_PREFIX - 1;
    if (len > pl && memcmp(rkey, CUSTOMER_PREFIX, pl) == 0) {
        cust_t *cu = *cust_slot(c, rkey + pl, len - pl);
        /* Every look-up that led to this customer, whichever key it started from. */
        while (cu && cu->entries) {
            entry_t *e = cu->entries;
            int last = e->cnext == NULL;
            entry_drop(c, entry_slot(c, e->key, strlen(e->key)));
            if (last) break; /* the customer was freed with its last entry */
        }
        return;
    }
    entry_t **slot = entry_slot(c, rkey, len);
    if (*slot) entry_drop(c, slot);
}

size_t rv_entcache_size(const rv_entcache_t *c) { return c ? c->n : 0; }
