/* Token-bucket rate limiting per client address, in a fixed open-addressing table. */
#include "rivet/ratelimit.h"

#include <stdlib.h>
#include <string.h>

#include "rivet/common.h"

#define KEY_MAX 64
#define PROBES 8

typedef struct slot_s {
    char key[KEY_MAX]; /* "" when free */
    double tokens;
    uint64_t last_ms;
} slot_t;

struct rv_ratelimit_s {
    double per_ms; /* tokens added per millisecond */
    double burst;
    size_t mask;
    slot_t *slots;
};

int rv_ratelimit_new(unsigned per_min, unsigned burst, size_t slots, rv_ratelimit_t **out) {
    size_t n = 16;
    while (n < slots) n *= 2;
    rv_ratelimit_t *rl = calloc(1, sizeof *rl);
    if (rl == NULL) return RV_ENOMEM;
    rl->slots = calloc(n, sizeof *rl->slots);
    if (rl->slots == NULL) {
        free(rl);
        return RV_ENOMEM;
    }
    rl->mask = n - 1;
    rl->per_ms = (double)per_min / 60000.0;
    rl->burst = burst ? burst : 1;
    *out = rl;
    return 0;
}

void rv_ratelimit_free(rv_ratelimit_t *rl) {
    if (rl == NULL) return;
    free(rl->slots);
    free(rl);
}

/* FNV-1a: keys are client addresses; a keyed hash is not needed because a collision only
 * shares a probe window, never a bucket. */
static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

int rv_ratelimit_take(rv_ratelimit_t *rl, const char *key, uint64_t now_ms,
                      unsigned *retry_after_s) {
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
