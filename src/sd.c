/* sd_notify and socket activation, written from the documented protocols (sd_notify(3),
 * sd_listen_fds(3)): a datagram to NOTIFY_SOCKET; descriptors from 3 named by LISTEN_FDS. */
#include "rivet/sd.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "rivet/common.h"

int rv_sd_notify(const char *state) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || *path == '\0') return 0;
    size_t plen = strlen(path);
    struct sockaddr_un sun;
    if ((path[0] != '/' && path[0] != '@') || plen >= sizeof sun.sun_path) return -EINVAL;
    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, plen);
    if (path[0] == '@') sun.sun_path[0] = '\0'; /* abstract namespace */
    socklen_t alen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + plen);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    ssize_t n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sun, alen);
    int rc = n < 0 ? -errno : 0;
    close(fd);
    return rc;
}

static int parse_ul(const char *s, unsigned long long *out) {
    if (s == NULL || *s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

uint64_t rv_sd_watchdog_usec(void) {
    unsigned long long usec, pid;
    if (parse_ul(getenv("WATCHDOG_USEC"), &usec) || usec == 0) return 0;
    if (getenv("WATCHDOG_PID") &&
        (parse_ul(getenv("WATCHDOG_PID"), &pid) || pid != (unsigned long long)getpid()))
        return 0;
    return usec;
}

int rv_sd_listen_fds(void) {
    unsigned long long pid, n;
    int rc = 0;
    if (parse_ul(getenv("LISTEN_PID"), &pid) == 0 && pid == (unsigned long long)getpid() &&
        parse_ul(getenv("LISTEN_FDS"), &n) == 0 && n > 0 && n < 64) {
        for (int fd = 3; fd < 3 + (int)n; fd++) {
            int fl = fcntl(fd, F_GETFD);
            if (fl < 0) return -EBADF;
            fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
        }
        rc = (int)n;
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    return rc;
}
