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

#define MAX_WORKERS      (RV_METRICS_MAX_WORKERS - 1) /* gauge slots 1..63; 0 is unsupervised */
#define CONFIG_TEXT_MAX  (1024 * 1024)
#define RESTART_DELAY_MS 1000
#define STUCK_MS_DEFAULT 30000

typedef struct worker_s {
    pid_t pid; /* 0 when not running */
    int fd;    /* read end of its pipe, -1 when none */
    int ready;
    uint64_t last_beat;
    uint64_t restart_at; /* 0: no restart pending */
} worker_t;

static int bind_listen(const struct sockaddr_storage *addr, const char *what) {
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    socklen_t len =
        addr->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
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

/* The supervisor's state, passed between its steps. */
typedef struct sup_s {
    rv_app_t *app;
    worker_t w[MAX_WORKERS];
    int n;
    int sfd;           /* signalfd for TERM, INT, HUP, CHLD */
    sigset_t set;      /* those signals, blocked in the parent */
    uint64_t stuck_ms; /* a worker silent this long is killed */
    uint64_t next_dog; /* when the next WATCHDOG=1 is due */
    uint64_t deadline; /* stopping: when the workers left are killed */
    int stopping, told_ready;
} sup_t;

static int alive_count(const sup_t *s) {
    int alive = 0;
    for (int i = 0; i < s->n; i++) alive += s->w[i].pid != 0;
    return alive;
}

/* Restarts that are due, and workers whose loop stopped sending heartbeats. */
static void tend_workers(sup_t *s, uint64_t now) {
    for (int i = 0; i < s->n && !s->stopping; i++) {
        worker_t *w = &s->w[i];
        if (w->pid == 0 && w->restart_at && now >= w->restart_at)
            spawn(s->app, w, i + 1, s->w, s->n, s->sfd, &s->set);
        if (w->pid && w->ready && now - w->last_beat > s->stuck_ms) {
            rv_error("rivetd: worker %d (pid %d) stopped answering its heartbeat; killing it",
                     i + 1, (int)w->pid);
            kill(w->pid, SIGKILL);
            w->last_beat = now;
        }
    }
}

/* systemd's watchdog: fed only while every worker's loop turns. */
static void feed_watchdog(sup_t *s, uint64_t now) {
    rv_app_t *app = s->app;
    if (!app->watchdog_usec || now < s->next_dog || s->stopping) return;
    int all_ok = 1;
    for (int i = 0; i < s->n; i++)
        all_ok &= s->w[i].pid != 0 && now - s->w[i].last_beat <= s->stuck_ms;
    if (all_ok) rv_sd_notify("WATCHDOG=1");
    s->next_dog = now + app->watchdog_usec / 2000;
}

/* Reap dead workers: each is restarted after a pause, unless the daemon is stopping. */
static void reap(sup_t *s) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < s->n; i++) {
            worker_t *w = &s->w[i];
            if (w->pid != pid) continue;
            w->pid = 0;
            rv_metrics_gauges_clear(i + 1);
            if (w->fd >= 0) close(w->fd);
            w->fd = -1;
            if (s->stopping) break;
            rv_error("rivetd: worker %d (pid %d) %s %d; restarting", i + 1, (int)pid,
                     WIFSIGNALED(status) ? "killed by signal" : "exited with",
                     WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            w->restart_at = rv_now_ms() + RESTART_DELAY_MS;
        }
    }
}

static void on_signals(sup_t *s) {
    struct signalfd_siginfo si;
    while (read(s->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD) {
            reap(s);
        } else if (si.ssi_signo == SIGHUP) {
            if (!s->stopping) reload(s->app, s->w, s->n);
        } else if (!s->stopping) {
            s->stopping = 1;
            s->deadline = rv_now_ms() + s->app->cfg.shutdown_timeout_ms + 5000;
            rv_sd_notify("STOPPING=1\nSTATUS=Stopping workers");
            rv_info("rivetd: %s: stopping %d workers", strsignal((int)si.ssi_signo),
                    alive_count(s));
            for (int i = 0; i < s->n; i++)
                if (s->w[i].pid) kill(s->w[i].pid, SIGTERM);
        }
    }
}

/* Heartbeats ('W') and readiness ('R') from the workers' pipes. */
static void on_pipes(sup_t *s, const struct pollfd *pfd, const int *map, int np) {
    for (int k = 1; k < np; k++) {
        if (!(pfd[k].revents & (POLLIN | POLLHUP))) continue;
        worker_t *x = &s->w[map[k]];
        char buf[64];
        ssize_t r;
        while (x->fd >= 0 && (r = read(x->fd, buf, sizeof buf)) > 0) {
            if (memchr(buf, 'R', (size_t)r)) x->ready = 1;
            x->last_beat = rv_now_ms();
        }
    }
}

/* READY=1 once, when every worker listens. */
static void maybe_ready(sup_t *s) {
    if (s->told_ready || s->stopping) return;
    int ready = 0;
    for (int i = 0; i < s->n; i++) ready += s->w[i].pid && s->w[i].ready;
    if (ready < s->n) return;
    char st[200];
    snprintf(st, sizeof st, "READY=1\nSTATUS=%d workers listening on %s", s->n, s->app->cfg.listen);
    rv_sd_notify(st);
    s->told_ready = 1;
}

/* One turn: tend the workers, wait for a signal, a pipe or a quarter second, handle what came.
 * Returns 0 once every worker has stopped after a stop was asked for. */
static int turn(sup_t *s) {
    uint64_t now = rv_now_ms();
    if (s->stopping && alive_count(s) == 0) return 0;
    if (s->stopping && now >= s->deadline) {
        for (int i = 0; i < s->n; i++)
            if (s->w[i].pid) kill(s->w[i].pid, SIGKILL);
        s->deadline = now + 60000;
    }
    tend_workers(s, now);
    feed_watchdog(s, now);
    struct pollfd pfd[MAX_WORKERS + 1];
    int map[MAX_WORKERS + 1];
    int np = 0;
    pfd[np++] = (struct pollfd){s->sfd, POLLIN, 0};
    for (int i = 0; i < s->n; i++) {
        if (s->w[i].fd < 0) continue;
        map[np] = i;
        pfd[np++] = (struct pollfd){s->w[i].fd, POLLIN, 0};
    }
    rv_log_flush();
    poll(pfd, (nfds_t)np, 250);
    on_signals(s);
    on_pipes(s, pfd, map, np);
    maybe_ready(s);
    return 1;
}

/* The listening sockets, the shared memory and the signalfd, before the first fork. */
static int setup(sup_t *s) {
    rv_app_t *app = s->app;
    rv_config_t *cfg = &app->cfg;
    if (rv_metrics_share() != 0 ||
        (app->config_path && (app->shared_config = rv_shared_text_new(CONFIG_TEXT_MAX)) == NULL)) {
        rv_error("rivetd: cannot map memory shared with the workers");
        return -1;
    }
    if (app->listen_fd < 0 && (app->listen_fd = bind_listen(&cfg->listen_addr, cfg->listen)) < 0)
        return -1;
    if (cfg->admin_listen[0] && app->admin_fd < 0 &&
        (app->admin_fd = bind_listen(&cfg->admin_addr, cfg->admin_listen)) < 0)
        return -1;
    sigemptyset(&s->set);
    sigaddset(&s->set, SIGTERM);
    sigaddset(&s->set, SIGINT);
    sigaddset(&s->set, SIGHUP);
    sigaddset(&s->set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &s->set, NULL);
    signal(SIGPIPE, SIG_IGN);
    s->sfd = signalfd(-1, &s->set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (s->sfd < 0) {
        rv_error("rivetd: signalfd: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int rv_supervise(rv_app_t *app) {
    static sup_t s; /* large (a slot per worker); one supervisor per process */
    memset(&s, 0, sizeof s);
    s.app = app;
    s.n = (int)app->cfg.workers > MAX_WORKERS ? MAX_WORKERS : (int)app->cfg.workers;
    s.sfd = -1;
    if (setup(&s) != 0) return 1;
    for (int i = 0; i < s.n; i++) s.w[i] = (worker_t){0, -1, 0, 0, 0};
    for (int i = 0; i < s.n; i++) spawn(app, &s.w[i], i + 1, s.w, s.n, s.sfd, &s.set);
    rv_info("rivetd: supervising %d workers on %s", s.n, app->cfg.listen);
    s.stuck_ms = app->watchdog_usec ? app->watchdog_usec / 1000 : STUCK_MS_DEFAULT;
    while (turn(&s)) {
    }
    close(s.sfd);
    if (app->listen_fd >= 0) close(app->listen_fd);
    if (app->admin_fd >= 0) close(app->admin_fd);
    rv_info("rivetd: all workers stopped");
    return 0;
}
