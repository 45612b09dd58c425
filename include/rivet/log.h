/* Levelled logging, one line per record, to stderr (journald adds the time).
 * Lines are buffered and written once per loop iteration (rv_log_flush), and at once for
 * warnings and errors, so that an access line per request costs no system call of its own.
 * When stderr is journald's socket, writing never waits: what a full journal cannot take is
 * dropped and its size reported with the next line written. */
#ifndef RIVET_LOG_H
#define RIVET_LOG_H

#include <stdint.h>

enum rv_log_level { RV_LOG_DEBUG = 0, RV_LOG_INFO = 1, RV_LOG_WARN = 2, RV_LOG_ERROR = 3 };

/* Parse "debug", "info", "warn", "error". Returns 0 or RV_EINVAL. */
int rv_log_level_parse(const char *s, int *level);
void rv_log_set_level(int level);
int rv_log_enabled(int level);
/* Write a record; control characters and bytes above 0x7e in the message are escaped ("\\xNN"). */
void rv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write out buffered lines, and the count of lines a limit suppressed in a period that is over. */
void rv_log_flush(void);

/* A limit for lines that a client can cause once per connection or request: at most one such
 * line a second is written; the others are counted, and the count is written with the next line
 * let through or by rv_log_flush once the second is over. Static storage, zero-initialised apart
 * from what. */
typedef struct rv_log_limit_s {
    const char *what;    /* names the suppressed lines in the count */
    uint64_t start_ms;   /* when the current period began */
    unsigned suppressed; /* lines held back in the current period */
    int listed;          /* on the list rv_log_flush walks */
    struct rv_log_limit_s *next;
} rv_log_limit_t;

/* 1 when a line under l may be written now; otherwise it is counted as suppressed. */
int rv_log_limit(rv_log_limit_t *l);

#define rv_warn_limited(lim, ...)                                                                  \
    do {                                                                                           \
        if (rv_log_limit(lim)) rv_log(RV_LOG_WARN, __VA_ARGS__);                                   \
    } while (0)

#define rv_debug(...)                                                                              \
    do {                                                                                           \
        if (rv_log_enabled(RV_LOG_DEBUG)) rv_log(RV_LOG_DEBUG, __VA_ARGS__);                       \
    } while (0)
#define rv_info(...)  rv_log(RV_LOG_INFO, __VA_ARGS__)
#define rv_warn(...)  rv_log(RV_LOG_WARN, __VA_ARGS__)
#define rv_error(...) rv_log(RV_LOG_ERROR, __VA_ARGS__)

#endif
