/* Shared memory for the supervisor and its workers: mappings, robust process-shared mutexes, and
 * the published configuration text. */
#include "rivet/shared.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "rivet/common.h"

void *rv_shared_alloc(size_t size) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void rv_shared_free(void *p, size_t size) {
    if (p) munmap(p, size);
}

int rv_shared_mutex_init(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a) != 0) return RV_EIO;
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return rc == 0 ? 0 : RV_EIO;
}

void rv_shared_lock(pthread_mutex_t *m) {
    if (pthread_mutex_lock(m) == EOWNERDEAD) pthread_mutex_consistent(m);
}

void rv_shared_unlock(pthread_mutex_t *m) { pthread_mutex_unlock(m); }

struct rv_shared_text_s {
    uint64_t seq; /* odd while the text is being written */
    uint64_t generation;
    size_t max;
    size_t len;
    char text[];
};

rv_shared_text_t *rv_shared_text_new(size_t max) {
    rv_shared_text_t *t = rv_shared_alloc(sizeof *t + max + 1);
    if (t) t->max = max;
    return t;
}

/* Only the supervisor writes; workers read. A reader that sees the sequence change (or odd)
 * while copying copies again. */
int rv_shared_text_put(rv_shared_text_t *t, const char *text, size_t len) {
    if (len > t->max) return RV_ERANGE;
    __atomic_add_fetch(&t->seq, 1, __ATOMIC_ACQ_REL);
    memcpy(t->text, text, len);
    t->text[len] = '\0';
    t->len = len;
    t->generation++;
    __atomic_add_fetch(&t->seq, 1, __ATOMIC_ACQ_REL);
    return 0;
}

int rv_shared_text_get(const rv_shared_text_t *t, char **out, uint64_t *generation) {
    *out = NULL;
    for (;;) {
        uint64_t s1 = __atomic_load_n(&t->seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) continue;
        uint64_t gen = t->generation;
        size_t len = t->len;
        if (len > t->max) continue;
        char *copy = malloc(len + 1);
        if (copy == NULL) return RV_ENOMEM;
        memcpy(copy, t->text, len);
        copy[len] = '\0';
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&t->seq, __ATOMIC_ACQUIRE) != s1) {
            free(copy);
            continue;
        }
        if (gen == 0) {
            free(copy);
            copy = NULL;
        }
        *out = copy;
        if (generation) *generation = gen;
        return 0;
    }
}
