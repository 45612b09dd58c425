/* Memory shared by the supervisor and its workers: anonymous MAP_SHARED mappings made before the
 * workers are forked, so that every worker, whenever it was born, sees the same metrics, rate
 * limits and configuration text. Locks in it are robust: a worker killed while holding one
 * does not stop the others. */
#ifndef RIVET_SHARED_H
#define RIVET_SHARED_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* A zeroed shared mapping of size bytes, or NULL. Release with rv_shared_free. */
void *rv_shared_alloc(size_t size);
void rv_shared_free(void *p, size_t size);

/* Initialise a process-shared, robust mutex inside a shared mapping. Returns 0 or RV_EIO. */
int rv_shared_mutex_init(pthread_mutex_t *m);

/* Lock m; when its last holder died holding it, the lock is taken over (the data it guards is
 * updated by single stores, so it stays usable). */
void rv_shared_lock(pthread_mutex_t *m);
void rv_shared_unlock(pthread_mutex_t *m);

/* The configuration text of the last successful reload, published by the supervisor for its
 * workers: a generation number and the text, read and written under a sequence lock. */
typedef struct rv_shared_text_s rv_shared_text_t;

/* A region for texts of at most max bytes. Returns NULL when out of memory. */
rv_shared_text_t *rv_shared_text_new(size_t max);

/* Publish text (len bytes, at most the region's max). Returns 0 or RV_ERANGE. */
int rv_shared_text_put(rv_shared_text_t *t, const char *text, size_t len);

/* A malloc'd, NUL-terminated copy of the text last published and its generation (0: nothing
 * published yet, *out NULL). Returns 0 or RV_ENOMEM. */
int rv_shared_text_get(const rv_shared_text_t *t, char **out, uint64_t *generation);

#endif
