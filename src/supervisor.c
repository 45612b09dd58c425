/* WORKERS > 1: the parent binds (or inherits) the listening sockets, forks one worker per
 * core-sized share, passes signals on, restarts a worker that dies, and speaks to systemd for
 * all of them: READY=1 once every worker is listening, WATCHDOG=1 only while every worker's
 * loop is still turning (each sends a heartbeat byte through a pipe from its loop).
 *
 * The parent holds the configuration every worker runs. On SIGHUP it reads and validates the
 * file itself, and only if it is good publishes the text in shared memory and tells the workers
 * to apply it; a worker forked later inherits the reloaded configuration. Metrics and the rate
 * limit live in shared memory made before the first fork, so they are the whole daemon's. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/log.h"
#include "rivet/metrics.h"
#include "rivet/sd.h"
#include "rivet/shared.h"

#define MAX_WORKERS (RV_METRICS_MAX_WORKERS - 1) /* gauge slots 1..63; 0 is unsupervised */
#define CONFIG_TEXT_MAX (1024 * 1024)
#define RESTART_DELAY_MS 1000
#define STUCK_MS_DEFAULT 30000

typedef struct worker_s {
    pid_t pid;          /* 0 when not running */
    int fd;             /* read end of its pipe, -1 when none */
    int ready;
    uint64_t last_beat;
    uint64_t restart_at; /* 0: no restart pending */
} worker_t;

static int bind_listen(const struct sockaddr_storage *addr, const char *what) {
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    socklen_t len = addr->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                : sizeof(struct sockaddr_in);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (const struct sockaddr *)addr, len) != 0 || listen(fd, 1024) != 0) {
        rv_error("rivetd: cannot listen on %s: %s", what, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static void spawn(rv_app_t *app, worker_t *w, int index, worker_t *all, int n, int sfd,
                  const sigset_t *blocked) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        rv_error("rivetd: worker %d: pipe: %s", index, strerror(errno));
        w->restart_at = rv_now_ms() + RESTART_DELAY_MS;
        return;
    }
    rv_log_flush();
    pid_t pid = fork();
    if (pid < 0) {
        rv_error("rivetd: worker %d: fork: %s", index, strerror(errno));
        close(p[0]);
        close(p[1]);
        w->restart_at = rv_now_ms() + RESTART_DELAY_MS;
        return;
    }
    if (pid == 0) {
        close(sfd);
        close(p[0]);
        for (int i = 0; i < n; i++)
            if (all[i].fd >= 0) close(all[i].fd);
        /* A SIGHUP sent before the worker's loop handles it must not kill it (its default
         * action): ignore it meanwhile. Nothing is lost: once its handler is in place the worker
         * applies any configuration published since it was forked. */
        signal(SIGHUP, SIG_IGN);
        sigprocmask(SIG_UNBLOCK, blocked, NULL);
        /* Only the main process may notify systemd (NotifyAccess=main). */
        unsetenv("NOTIFY_SOCKET");
        fcntl(p[1], F_SETFL, O_NONBLOCK);
        app->parent_fd = p[1];
        app->worker_index = index;
        app->watchdog_usec = 0;
        int rc = rv_worker_run(app);
        rv_log_flush();
        _exit(rc);
    }
    close(p[1]);
    fcntl(p[0], F_SETFL, O_NONBLOCK);
    w->pid = pid;
    w->fd = p[0];
    w->ready = 0;
    w->last_beat = rv_now_ms();
    w->restart_at = 0;
    rv_info("rivetd: worker %d started (pid %d)", index, (int)pid);
}

/* SIGHUP: reload here first; the workers follow only a configuration that loaded. */
static void reload(rv_app_t *app, worker_t *w, int n) {
    char err[256];
    char *text = NULL;
    if (app->config_path &&
        (text = rv_read_config_file(app->config_path, err, sizeof err)) == NULL) {
        rv_error("rivetd: reload refused, keeping the running configuration: %s", err);
        return;
    }
    if (rv_app_reload(app, text, err, sizeof err) != 0) {
        rv_error("rivetd: reload refused, keeping the running configuration: %s", err);
        free(text);
        return;
    }
    if (text) {
        int rc = rv_shared_text_put(app->shared_config, text, strlen(text));
        free(text);
        if (rc != 0) {
            rv_error("rivetd: reload refused: the configuration file is too large");
            return;
        }
        app->config_generation++;
    }
    rv_info("rivetd: SIGHUP: configuration reloaded; workers apply it");
    for (int i = 0; i < n; i++)
        if (w[i].pid) kill(w[i].pid, SIGHUP);
}

int rv_supervise(rv_app_t *app) {
    rv_config_t *cfg = &app->cfg;
    int n = (int)cfg->workers;
    if (rv_metrics_share() != 0 ||
        (app->config_path && (app->shared_config = rv_shared_text_new(CONFIG_TEXT_MAX)) == NULL)) {
        rv_error("rivetd: cannot map memory shared with the workers");
        return 1;
    }
    if (n > MAX_WORKERS) n = MAX_WORKERS;
    if (app->listen_fd < 0 && (app->listen_fd = bind_listen(&cfg->listen_addr, cfg->listen)) < 0)
        return 1;
    if (cfg->admin_listen[0] && app->admin_fd < 0 &&
        (app->admin_fd = bind_listen(&cfg->admin_addr, cfg->admin_listen)) < 0)
        return 1;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        rv_error("rivetd: signalfd: %s", strerror(errno));
        return 1;
    }

    worker_t w[MAX_WORKERS];
    for (int i = 0; i < n; i++) w[i] = (worker_t){0, -1, 0, 0, 0};
    for (int i = 0; i < n; i++) spawn(app, &w[i], i + 1, w, n, sfd, &set);
    rv_info("rivetd: supervising %d workers on %s", n, cfg->listen);

    uint64_t stuck_ms = app->watchdog_usec ? app->watchdog_usec / 1000 : STUCK_MS_DEFAULT;
    uint64_t next_dog = 0, deadline = 0;
    int stopping = 0, told_ready = 0;
    for (;;) {
        uint64_t now = rv_now_ms();
        int alive = 0;
        for (int i = 0; i < n; i++) alive += w[i].pid != 0;
        if (stopping && alive == 0) break;
        if (stopping && now >= deadline) {
            for (int i = 0; i < n; i++)
                if (w[i].pid) kill(w[i].pid, SIGKILL);
            deadline = now + 60000;
        }

        /* Restarts due, and workers whose loop stopped sending heartbeats. */
        for (int i = 0; i < n && !stopping; i++) {
            if (w[i].pid == 0 && w[i].restart_at && now >= w[i].restart_at)
                spawn(app, &w[i], i + 1, w, n, sfd, &set);
            if (w[i].pid && w[i].ready && now - w[i].last_beat > stuck_ms) {
                rv_error("rivetd: worker %d (pid %d) stopped answering its heartbeat; killing it",
                         i + 1, (int)w[i].pid);
                kill(w[i].pid, SIGKILL);
                w[i].last_beat = now;
            }
        }
        if (app->watchdog_usec && now >= next_dog && !stopping) {
            int all_ok = 1;
            for (int i = 0; i < n; i++)
                all_ok &= w[i].pid != 0 && now - w[i].last_beat <= stuck_ms;
            if (all_ok) rv_sd_notify("WATCHDOG=1");
            next_dog = now + app->watchdog_usec / 2000;
        }

        struct pollfd pfd[MAX_WORKERS + 1];
        int np = 0;
        pfd[np++] = (struct pollfd){sfd, POLLIN, 0};
        int map[MAX_WORKERS + 1];
        for (int i = 0; i < n; i++) {
            if (w[i].fd < 0) continue;
            map[np] = i;
            pfd[np++] = (struct pollfd){w[i].fd, POLLIN, 0};
        }
        rv_log_flush();
        poll(pfd, (nfds_t)np, 250);

        struct signalfd_siginfo si;
        while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
            if (si.ssi_signo == SIGCHLD) {
                int status;
                pid_t pid;
                while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
                    for (int i = 0; i < n; i++) {
                        if (w[i].pid != pid) continue;
                        w[i].pid = 0;
                        rv_metrics_gauges_clear(i + 1);
                        if (w[i].fd >= 0) close(w[i].fd);
                        w[i].fd = -1;
                        if (stopping) break;
                        rv_error("rivetd: worker %d (pid %d) %s %d; restarting", i + 1, (int)pid,
                                 WIFSIGNALED(status) ? "killed by signal" : "exited with",
                                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
                        w[i].restart_at = rv_now_ms() + RESTART_DELAY_MS;
                    }
                }
            } else if (si.ssi_signo == SIGHUP) {
                if (!stopping) reload(app, w, n);
            } else if (!stopping) {
                stopping = 1;
                deadline = rv_now_ms() + cfg->shutdown_timeout_ms + 5000;
                rv_sd_notify("STOPPING=1\nSTATUS=Stopping workers");
                rv_info("rivetd: %s: stopping %d workers", strsignal((int)si.ssi_signo), alive);
                for (int i = 0; i < n; i++)
                    if (w[i].pid) kill(w[i].pid, SIGTERM);
            }
        }
        for (int k = 1; k < np; k++) {
            if (!(pfd[k].revents & (POLLIN | POLLHUP))) continue;
            worker_t *x = &w[map[k]];
            char buf[64];
            ssize_t r;
            while (x->fd >= 0 && (r = read(x->fd, buf, sizeof buf)) > 0) {
                for (ssize_t j = 0; j < r; j++) {
                    if (buf[j] == 'R') x->ready = 1;
                }
                x->last_beat = rv_now_ms();
            }
        }
        if (!told_ready && !stopping) {
            int ready = 0;
            for (int i = 0; i < n; i++) ready += w[i].pid && w[i].ready;
            if (ready == n) {
                char st[200];
                snprintf(st, sizeof st, "READY=1\nSTATUS=%d workers listening on %s", n,
                         cfg->listen);
                rv_sd_notify(st);
                told_ready = 1;
            }
        }
    }
    close(sfd);
    if (app->listen_fd >= 0) close(app->listen_fd);
    if (app->admin_fd >= 0) close(app->admin_fd);
    rv_info("rivetd: all workers stopped");
    return 0;
}
