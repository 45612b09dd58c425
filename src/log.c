/* Logging: one line per record to stderr, in printable ASCII (anything else is escaped). Info
 * and debug lines are gathered in a buffer that the loop flushes once per iteration; warnings and
 * errors are written at once. */
#include "rivet/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "rivet/common.h"

#define LOG_BUF_SIZE 65536
#define LOG_LINE_MAX 2048

static int log_level = RV_LOG_INFO;
static char log_buf[LOG_BUF_SIZE];
static size_t log_len;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int rv_log_level_parse(const char *s, int *level) {
    for (int i = 0; i < 4; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *level = i;
            return 0;
        }
    }
    if (strcmp(s, "warning") == 0) {
        *level = RV_LOG_WARN;
        return 0;
    }
    return RV_EINVAL;
}

void rv_log_set_level(int level) { log_level = level; }

int rv_log_enabled(int level) { return level >= log_level; }

#define LIMIT_PERIOD_MS 1000

static rv_log_limit_t *limits; /* limits that have suppressed lines at some time */

static void limit_report(rv_log_limit_t *l, uint64_t now) {
    unsigned n = l->suppressed;
    l->suppressed = 0;
    if (n)
        rv_log(RV_LOG_WARN, "%s: %u similar lines suppressed in the last %.1f s", l->what, n,
               (double)(now - l->start_ms) / 1000.0);
}

int rv_log_limit(rv_log_limit_t *l) {
    uint64_t now = rv_now_ms();
    if (l->start_ms && now - l->start_ms < LIMIT_PERIOD_MS) {
        l->suppressed++;
        if (!l->listed) {
            l->listed = 1;
            l->next = limits;
            limits = l;
        }
        return 0;
    }
    limit_report(l, now);
    l->start_ms = now;
    return 1;
}

static void limits_report_due(void) {
    if (limits == NULL) return;
    uint64_t now = rv_now_ms();
    for (rv_log_limit_t *l = limits; l; l = l->next)
        if (l->suppressed && now - l->start_ms >= LIMIT_PERIOD_MS) limit_report(l, now);
}

static uint64_t dropped; /* bytes of lines a full journal socket did not take */
static int not_socket;   /* stderr is a pipe, a file or a terminal */

/* Under systemd stderr is a stream socket to journald: a journal that does not keep up must not
 * stall the loop, so the socket is written without waiting (MSG_DONTWAIT, which leaves the
 * shared file description alone) and what it cannot take now is dropped and counted; the count
 * is written with the next line that gets through. A pipe, a file or a terminal is written the
 * ordinary way (they block only as long as their reader does). */
static ssize_t put(const char *p, size_t n) {
    if (!not_socket) {
        ssize_t w = send(STDERR_FILENO, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w >= 0 || errno != ENOTSOCK) return w;
        not_socket = 1;
    }
    return write(STDERR_FILENO, p, n);
}

static void write_out(void) {
    if (dropped && log_len == 0) return;
    size_t off = 0;
    if (dropped) {
        char note[96];
        int n = snprintf(note, sizeof note,
                         "warn log: %llu bytes of log lines dropped (the "
                         "journal was full)\n",
                         (unsigned long long)dropped);
        if (put(note, (size_t)n) == n) dropped = 0;
    }
    while (off < log_len) {
        ssize_t w = put(log_buf + off, log_len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            dropped += log_len - off; /* nowhere to write now: drop rather than block or spin */
            break;
        }
        off += (size_t)w;
    }
    log_len = 0;
}

void rv_log_flush(void) {
    limits_report_due();
    write_out();
}

void rv_log(int level, const char *fmt, ...) {
    if (level < log_level) return;
    char raw[LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(raw, sizeof raw, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    size_t rlen = (size_t)n < sizeof raw ? (size_t)n : sizeof raw - 1;

    /* "<level> " + escaped message + "\n"; escaping can at most quadruple a byte. */
    char line[LOG_LINE_MAX * 4 + 16];
    size_t l = (size_t)snprintf(line, sizeof line, "%s ", level_names[level & 3]);
    for (size_t i = 0; i < rlen; i++) {
        unsigned char c = (unsigned char)raw[i];
        /* Bytes above 0x7f are escaped too: a log line is ASCII whatever a client sent, so no
         * reader of the journal meets invalid UTF-8. */
        if (c < 0x20 || c >= 0x7f) {
            l += (size_t)snprintf(line + l, sizeof line - l, "\\x%02x", c);
        } else {
            line[l++] = (char)c;
        }
    }
    line[l++] = '\n';

    if (log_len + l > sizeof log_buf) write_out();
    memcpy(log_buf + log_len, line, l);
    log_len += l;
    if (level >= RV_LOG_WARN) write_out();
}
