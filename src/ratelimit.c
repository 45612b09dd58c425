/* Token-bucket rate limiting per client address, in a fixed open-addressing table. The table
 * lives in shared memory made before the workers are forked, so that a client's allowance is
 * the whole daemon's, not each worker's; a robust lock keeps it consistent across processes. */
#include "rivet/ratelimit.h"

#include <stdlib.h>
#include <string.h>

#include "rivet/common.h"
#include "rivet/shared.h"

#define KEY_MAX 64
#define PROBES  8

typedef struct slot_s {
    char key[KEY_MAX]; /* "" when free */
    double tokens;
    uint64_t last_ms;
} slot_t;

struct rv_ratelimit_s {
    pthread_mutex_t lock;
    double per_ms; /* tokens added per millisecond; 0: not limited */
    double burst;
    size_t mask;
    size_t size; /* bytes of the mapping */
    slot_t slots[];
};

int rv_ratelimit_new(unsigned per_min, unsigned burst, size_t slots, rv_ratelimit_t **out) {
    size_t n = 16;
    while (n < slots) n *= 2;
    size_t size = sizeof(rv_ratelimit_t) + n * sizeof(slot_t);
    rv_ratelimit_t *rl = rv_shared_alloc(size);
    if (rl == NULL) return RV_ENOMEM;
    if (rv_shared_mutex_init(&rl->lock) != 0) {
        rv_shared_free(rl, size);
        return RV_EIO;
    }
    rl->mask = n - 1;
    rl->size = size;
    rv_ratelimit_configure(rl, per_min, burst);
    *out = rl;
    return 0;
}

void rv_ratelimit_configure(rv_ratelimit_t *rl, unsigned per_min, unsigned burst) {
    rv_shared_lock(&rl->lock);
    rl->per_ms = (double)per_min / 60000.0;
    rl->burst = burst ? burst : 1;
    rv_shared_unlock(&rl->lock);
}

void rv_ratelimit_free(rv_ratelimit_t *rl) {
    if (rl == NULL) return;
    pthread_mutex_destroy(&rl->lock);
    rv_shared_free(rl, rl->size);
}

/* FNV-1a: keys are client addresses; a keyed hash is not needed because a collision only
 * shares a probe window, never a bucket. */
static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int take(rv_ratelimit_t *rl, const char *key, uint64_t now_ms, unsigned *retry_after_s) {
    char k[KEY_MAX];
    size_t kl = strlen(key);
    if (kl >= KEY_MAX) kl = KEY_MAX - 1;
    memcpy(k, key, kl);
    k[kl] = '\0';
    size_t i = (size_t)hash(k) & rl->mask;
    slot_t *victim = NULL;
    slot_t *s = NULL;
    for (int p = 0; p < PROBES; p++) {
        slot_t *c = &rl->slots[(i + (size_t)p) & rl->mask];
        if (strcmp(c->key, k) == 0) {
            s = c;
            break;
        }
        if (c->key[0] == '\0') {
            if (victim == NULL || victim->key[0] != '\0') victim = c;
        } else if (victim == NULL || (victim->key[0] != '\0' && c->last_ms < victim->last_ms)) {
            victim = c;
        }
    }
    if (s == NULL) {
        s = victim;
        memcpy(s->key, k, kl + 1);
        s->tokens = rl->burst;
        s->last_ms = now_ms;
    }
    if (now_ms > s->last_ms) {
        s->tokens += (double)(now_ms - s->last_ms) * rl->per_ms;
        if (s->tokens > rl->burst) s->tokens = rl->burst;
    }
    s->last_ms = now_ms;
    if (s->tokens >= 1.0) {
        s->tokens -= 1.0;
        return 1;
    }
    double wait_ms = rl->per_ms > 0 ? (1.0 - s->tokens) / rl->per_ms : 60000.0;
    unsigned secs = (unsigned)(wait_ms / 1000.0);
    if ((double)secs * 1000.0 < wait_ms) secs++;
    *retry_after_s = secs ? secs : 1;
    return 0;
}

int rv_ratelimit_take(rv_ratelimit_t *rl, const char *key, uint64_t now_ms,
                      unsigned *retry_after_s) {
    rv_shared_lock(&rl->lock);
    int ok = rl->per_ms <= 0 || take(rl, key, now_ms, retry_after_s);
    rv_shared_unlock(&rl->lock);
    return ok;
}
