/* The systemd protocols rivetd speaks without libsystemd: sd_notify over NOTIFY_SOCKET, and
 * socket activation through LISTEN_FDS. */
#ifndef RIVET_SD_H
#define RIVET_SD_H

#include <stdint.h>

/* Send a notification ("READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1") to NOTIFY_SOCKET
 * (a path, or "@name" for the abstract namespace). Returns 0, 0 when NOTIFY_SOCKET is unset, or
 * a negative errno. */
int rv_sd_notify(const char *state);

/* The watchdog interval in microseconds when WATCHDOG_USEC is set for this process (and
 * WATCHDOG_PID, if set, is ours), else 0. */
uint64_t rv_sd_watchdog_usec(void);

/* Sockets passed by systemd: when LISTEN_PID is ours, the number of descriptors from fd 3
 * (LISTEN_FDS), each marked close-on-exec; else 0. The variables are removed from the
 * environment so children do not adopt them again. */
int rv_sd_listen_fds(void);

#endif
