/* Logging: one line per record to stderr. Info and debug lines are gathered in a buffer that the
 * loop flushes once per iteration; warnings and errors are written at once. */
#include "rivet/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
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

void rv_log_flush(void) {
    size_t off = 0;
    while (off < log_len) {
        ssize_t w = write(STDERR_FILENO, log_buf + off, log_len - off);
        if (w <= 0) break; /* nowhere to write: drop rather than block or spin */
        off += (size_t)w;
    }
    log_len = 0;
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
        if (c < 0x20 || c == 0x7f) {
            l += (size_t)snprintf(line + l, sizeof line - l, "\\x%02x", c);
        } else {
            line[l++] = (char)c;
        }
    }
    line[l++] = '\n';

    if (log_len + l > sizeof log_buf) rv_log_flush();
    memcpy(log_buf + log_len, line, l);
    log_len += l;
    if (level >= RV_LOG_WARN) rv_log_flush();
}
