/* Levelled logging, one line per record, to stderr (journald adds the time).
 * Lines are buffered and written once per loop iteration (rv_log_flush), and at once for
 * warnings and errors, so that an access line per request costs no system call of its own. */
#ifndef RIVET_LOG_H
#define RIVET_LOG_H

enum rv_log_level { RV_LOG_DEBUG = 0, RV_LOG_INFO = 1, RV_LOG_WARN = 2, RV_LOG_ERROR = 3 };

/* Parse "debug", "info", "warn", "error". Returns 0 or RV_EINVAL. */
int rv_log_level_parse(const char *s, int *level);
void rv_log_set_level(int level);
int rv_log_enabled(int level);
/* Write a record; newlines and control characters in the message are escaped. */
void rv_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Write out buffered lines. */
void rv_log_flush(void);

#define rv_debug(...) do { if (rv_log_enabled(RV_LOG_DEBUG)) rv_log(RV_LOG_DEBUG, __VA_ARGS__); } while (0)
#define rv_info(...) rv_log(RV_LOG_INFO, __VA_ARGS__)
#define rv_warn(...) rv_log(RV_LOG_WARN, __VA_ARGS__)
#define rv_error(...) rv_log(RV_LOG_ERROR, __VA_ARGS__)

#endif
