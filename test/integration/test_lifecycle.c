/* Integration tests of rivetd's life as a service, with the real daemon: sd_notify readiness,
 * watchdog and stopping messages received on datagram sockets the test binds; socket activation
 * on listening sockets the test passes as descriptors 3 and 4; Prometheus metrics on the admin
 * listener; SIGHUP reloads of the configuration file (alone, and also passed in the environment
 * the way systemd's EnvironmentFile= does); the WORKERS supervisor restarting a killed worker;
 * and SIGTERM with a slow Stripe call in flight. Every wait is bounded by a deadline. */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "harness.h"
#include "rivet/common.h"

#define TO          5000  /* ms: the longest any single answer or step may take */
#define START_TO    10000 /* ms: start-up, generous for sanitizer builds */
#define HEALTH_BODY "{\"status\":\"healthy\",\"service\":\"rivet-api\"}"

extern char **environ;

/* ---- processes ----------------------------------------------------------------------------- */

/* Everything a test starts lives here, so the teardown can stop what a failed test left. */
static th_proc_t procs[4];

static th_proc_t *slot(void) {
    th_proc_t *p = th_free_slot(procs, RV_ARRAY_LEN(procs));
    if (p == NULL) fail_msg("no free process slot");
    return p;
}

/* Variables the test's own environment must not hand to rivetd: the systemd protocols and every
 * configuration key (a test sets what it means). */
static const char *const scrubbed[] = {
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "STRIPE_PRICE_BASIC",
    "STRIPE_PRICE_PRO",
    "STRIPE_PRICE_ENTERPRISE",
    "STRIPE_PUBLISHABLE_KEY",
    "STRIPE_API_BASE",
    "STRIPE_API_VERSION",
    "STRIPE_TIMEOUT_MS",
    "STRIPE_MAX_RETRIES",
    "WEBHOOK_TOLERANCE",
    "APP_URL",
    "API_URL",
    "REDIRECT_ORIGINS",
    "CORS_ORIGINS",
    "TELEGRAM_BOT",
    "RIVET_API_TOKEN",
    "LISTEN",
    "ADMIN_LISTEN",
    "WORKERS",
    "RATE_LIMIT_PER_MIN",
    "TRUST_PROXY",
    "REDIS_URL",
    "REDIS_STREAM",
    "REDIS_DEDUPE_TTL",
    "REDIS_TIMEOUT_MS",
    "MAX_BODY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_CONNECTIONS",
    "HEADER_TIMEOUT_MS",
    "BODY_TIMEOUT_MS",
    "IDLE_TIMEOUT_MS",
    "SHUTDOWN_TIMEOUT_MS",
    "LOG_LEVEL",
};

/* The required keys with the harness's test values, as one list for both the environment and a
 * configuration file. */
static const char *const test_keys[] = {
    "STRIPE_SECRET_KEY=" TH_STRIPE_KEY,
    "STRIPE_WEBHOOK_SECRET=" TH_WEBHOOK_SECRET,
    "STRIPE_PRICE_BASIC=" TH_PRICE_BASIC,
    "STRIPE_PRICE_PRO=" TH_PRICE_PRO,
    "STRIPE_PRICE_ENTERPRISE=" TH_PRICE_ENTERPRISE,
    "RIVET_API_TOKEN=" TH_API_TOKEN,
};

typedef struct env_s {
    const char *v[512];
    size_t n;
    char store[4096];
    size_t used;
} env_t;

static size_t key_len(const char *kv) {
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* Set "K=V" (replacing any K); kv must outlive the env unless copied with env_setf. */
static void env_set(env_t *e, const char *kv) {
    size_t kl = key_len(kv), w = 0;
    for (size_t i = 0; i < e->n; i++)
        if (!(key_len(e->v[i]) == kl && strncmp(e->v[i], kv, kl) == 0)) e->v[w++] = e->v[i];
    e->n = w;
    assert_true(e->n + 2 < RV_ARRAY_LEN(e->v));
    e->v[e->n++] = kv;
    e->v[e->n] = NULL;
}

__attribute__((format(printf, 2, 3))) static void env_setf(env_t *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->store + e->used, sizeof e->store - e->used, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof e->store - e->used);
    env_set(e, e->store + e->used);
    e->used += (size_t)n + 1;
}

/* The test's environment without the scrubbed keys. */
static void env_init(env_t *e) {
    memset(e, 0, sizeof *e);
    for (char **p = environ; p && *p; p++) {
        int skip = 0;
        for (size_t i = 0; i < RV_ARRAY_LEN(scrubbed) && !skip; i++)
            skip = key_len(*p) == strlen(scrubbed[i]) && strncmp(*p, scrubbed[i], key_len(*p)) == 0;
        if (!skip && e->n + 2 < RV_ARRAY_LEN(e->v)) e->v[e->n++] = *p;
    }
    e->v[e->n] = NULL;
}

typedef struct start_s {
    const char *const *env; /* "K=V" set after the defaults (NULL-terminated, may be NULL) */
    int no_test_keys;       /* 1: leave the required keys out of the environment */
    const char *config;     /* --config FILE, or NULL */
    int listen_port;        /* LISTEN's port; 0: a free one */
    int admin_port;         /* ADMIN_LISTEN's port; 0: a free one */
    int fds[2];             /* listening sockets to pass as descriptors 3 and 4 */
    int nfds;
    int activate; /* LISTEN_PID=<the child's pid> and LISTEN_FDS=nfds */
} start_t;

/* A private directory and log file for a process about to start (th_stop removes both). */
static void prepare(th_proc_t *p) {
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "rivetd");
    snprintf(p->dir, sizeof p->dir, "/tmp/rivet-lc-XXXXXX");
    if (mkdtemp(p->dir) == NULL) fail_msg("mkdtemp: %s", strerror(errno));
    snprintf(p->log_path, sizeof p->log_path, "%.200s/rivetd.log", p->dir);
}

/* Write the decimal digits of v at out (async-signal-safe, for the child after fork). */
static void put_int(char *out, int v) {
    char tmp[16];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    while (n > 0) *out++ = tmp[--n];
    *out = '\0';
}

/* Start the daemon of this build in the prepared p, with the harness's defaults (Redis and Stripe
 * pointing at closed ports, debug logging), LISTEN on p->port and ADMIN_LISTEN on p->port2.
 * Does not wait for it. */
static void spawn_rivetd(th_proc_t *p, const start_t *o) {
    char bin[300];
    snprintf(bin, sizeof bin, "%s/rivetd", th_build_dir());
    p->port = o->listen_port ? o->listen_port : th_free_port();
    p->port2 = o->admin_port ? o->admin_port : th_free_port();
    assert_true(p->port > 0 && p->port2 > 0);
    assert_true(o->nfds >= 0 && o->nfds <= 2);

    static env_t e;
    env_init(&e);
    env_setf(&e, "LISTEN=127.0.0.1:%d", p->port);
    env_setf(&e, "ADMIN_LISTEN=127.0.0.1:%d", p->port2);
    if (!o->no_test_keys)
        for (size_t i = 0; i < RV_ARRAY_LEN(test_keys); i++) env_set(&e, test_keys[i]);
    env_set(&e, "REDIS_URL=redis://127.0.0.1:1/0");
    env_set(&e, "STRIPE_API_BASE=http://127.0.0.1:1");
    env_set(&e, "LOG_LEVEL=debug");
    for (size_t i = 0; o->env && o->env[i]; i++) env_set(&e, o->env[i]);
    static char listen_pid[32];
    if (o->activate) {
        snprintf(listen_pid, sizeof listen_pid, "LISTEN_PID=");
        env_set(&e, listen_pid);
        env_setf(&e, "LISTEN_FDS=%d", o->nfds);
    }
    const char *argv[4] = {bin, NULL, NULL, NULL};
    if (o->config) {
        argv[1] = "--config";
        argv[2] = o->config;
    }

    int logfd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    assert_true(logfd >= 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setpgid(0, 0);
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        /* Copies above the target range first, so that placing one cannot clobber another. */
        int hi[2];
        for (int i = 0; i < o->nfds; i++) hi[i] = fcntl(o->fds[i], F_DUPFD, 100 + i);
        for (int i = 0; i < o->nfds; i++) dup2(hi[i], 3 + i); /* dup2 clears close-on-exec */
        close_range(3 + (unsigned)o->nfds, ~0U, 0);
        for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* systemd names the process it hands the sockets to: known only after the fork. */
        if (o->activate) put_int(listen_pid + strlen("LISTEN_PID="), (int)getpid());
        execve(bin, (char *const *)argv, (char *const *)e.v);
        _exit(127);
    }
    setpgid(pid, pid);
    close(logfd);
    p->pid = pid;
}

/* Print the log of p, so a failure shows the daemon's side. */
static void show_log(const th_proc_t *p) {
    FILE *f = fopen(p->log_path, "r");
    if (f == NULL) return;
    char line[1024];
    fprintf(stderr, "---- %s log (%s) ----\n", p->name, p->log_path);
    while (fgets(line, sizeof line, f)) fputs(line, stderr);
    fprintf(stderr, "---- end of log ----\n");
    fclose(f);
}

#define fail_log(p, ...)                                                                           \
    do {                                                                                           \
        show_log(p);                                                                               \
        fail_msg(__VA_ARGS__);                                                                     \
    } while (0)

static int not_alive(void *ud) { return !th_alive(ud); }

/* Wait for p to exit on its own; its exit status (th_stop sends no signal here), or 128+9 when
 * it had to be killed. */
static int wait_exit(th_proc_t *p, int timeout_ms) {
    th_eventually(not_alive, p, timeout_ms);
    return th_stop(p, 0, 1);
}

static void expect_exit_0(th_proc_t *p, int timeout_ms) {
    int st = wait_exit(p, timeout_ms);
    if (st != 0) fail_msg("rivetd exited with status %d, expected 0", st);
}

static void stop_clean(th_proc_t *p) {
    int st = th_stop(p, SIGTERM, TO);
    if (st != 0) fail_msg("rivetd exited with status %d after SIGTERM, expected 0", st);
}

/* ---- notification sockets ------------------------------------------------------------------- */

typedef struct notify_s {
    int fd;
    char name[108]; /* NOTIFY_SOCKET's value: a path, or "@name" */
    char dir[64];   /* the temporary directory of a path socket */
} notify_t;

static notify_t notes[2] = {{-1, "", ""}, {-1, "", ""}};

static notify_t *notify_open(int abstract) {
    notify_t *n = NULL;
    for (size_t i = 0; i < RV_ARRAY_LEN(notes) && n == NULL; i++)
        if (notes[i].fd < 0) n = &notes[i];
    if (n == NULL) fail_msg("no free notify slot");
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    socklen_t len;
    if (abstract) {
        n->dir[0] = '\0';
        snprintf(n->name, sizeof n->name, "@rivet-lc-%d-%lld", (int)getpid(),
                 (long long)th_now_ms());
        size_t nl = strlen(n->name);
        memcpy(sun.sun_path + 1, n->name + 1, nl - 1);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + nl);
    } else {
        snprintf(n->dir, sizeof n->dir, "/tmp/rivet-lc-notify-XXXXXX");
        if (mkdtemp(n->dir) == NULL) fail_msg("mkdtemp: %s", strerror(errno));
        snprintf(n->name, sizeof n->name, "%s/notify", n->dir);
        snprintf(sun.sun_path, sizeof sun.sun_path, "%s", n->name);
        len = sizeof sun;
    }
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(n->fd >= 0);
    if (bind(n->fd, (struct sockaddr *)&sun, len) != 0)
        fail_msg("bind %s: %s", n->name, strerror(errno));
    return n;
}

static void notify_close(notify_t *n) {
    if (n->fd < 0) return;
    close(n->fd);
    n->fd = -1;
    if (n->dir[0]) {
        unlink(n->name);
        rmdir(n->dir);
        n->dir[0] = '\0';
    }
}

/* One datagram within timeout_ms into buf (NUL-terminated): its length, or -1. */
static int notify_recv(notify_t *n, char *buf, size_t len, int timeout_ms) {
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - th_now_ms();
        struct pollfd pfd = {.fd = n->fd, .events = POLLIN};
        int rc = poll(&pfd, 1, left > 0 ? (int)left : 0);
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) return -1;
        ssize_t r = recv(n->fd, buf, len - 1, MSG_DONTWAIT);
        if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (r < 0) return -1;
        buf[r] = '\0';
        return (int)r;
    }
}

/* Whether msg has a line equal to line (exact) or, with prefix=1, starting with it. */
static int has_line(const char *msg, const char *line, int prefix) {
    size_t ll = strlen(line);
    for (const char *p = msg; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        size_t n = strcspn(p, "\n");
        if (prefix ? n >= ll && strncmp(p, line, ll) == 0 : n == ll && strncmp(p, line, ll) == 0)
            return 1;
    }
    return 0;
}

/* Receive until a message with the line want arrives; fail after timeout_ms. Messages skipped on
 * the way are checked not to contain the line never (may be NULL). */
static void notify_expect(notify_t *n, th_proc_t *p, const char *want, const char *never,
                          int timeout_ms, char *msg, size_t len) {
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - th_now_ms();
        if (left <= 0 || notify_recv(n, msg, len, (int)left) < 0)
            fail_log(p, "no %s notification within %d ms", want, timeout_ms);
        if (has_line(msg, want, 0)) return;
        if (never && has_line(msg, never, 0)) fail_log(p, "unexpected notification: %s", msg);
    }
}

/* ---- HTTP ------------------------------------------------------------------------------------ */

/* The status of one request on a new connection, or -1 without an answer. */
static int status_of(int port, const char *method, const char *path, const char *headers) {
    th_response_t r;
    if (th_request(port, method, path, headers, NULL, &r) != 0) return -1;
    int st = r.status;
    th_response_free(&r);
    return st;
}

static void expect_health(int port) {
    th_response_t r;
    if (th_request(port, "GET", "/health", NULL, NULL, &r) != 0)
        fail_msg("GET /health on port %d: no answer", port);
    if (r.status != 200 || strcmp(r.body, HEALTH_BODY) != 0)
        fail_msg("GET /health on port %d: %d %s", port, r.status, r.body);
    th_response_free(&r);
}

/* 1 when a TCP connect to the port is refused (nothing listens there). */
static int refuses(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    close(fd);
    return rc != 0 && err == ECONNREFUSED;
}

static int refuses_cb(void *ud) { return refuses(*(int *)ud); }

typedef struct health_wait_s {
    th_proc_t *p;
    int port;
} health_wait_t;

static int health_ok(void *ud) {
    health_wait_t *h = ud;
    if (!th_alive(h->p)) return -1;
    return status_of(h->port, "GET", "/health", NULL) == 200;
}

/* Wait until /health on port answers 200; fail with the log when the daemon dies or is slow. */
static void wait_health(th_proc_t *p, int port) {
    health_wait_t h = {p, port};
    if (!th_eventually(health_ok, &h, START_TO)) fail_log(p, "/health on %d never answered", port);
}

static void wait_port(th_proc_t *p) {
    int64_t deadline = th_now_ms() + START_TO;
    while (th_wait_port(p->port, 50) != 0) {
        if (!th_alive(p) || th_now_ms() > deadline) fail_log(p, "rivetd did not start listening");
    }
}

/* ---- metrics --------------------------------------------------------------------------------- */

/* GET /metrics on port: the body (malloc'd), failing unless 200. */
static char *scrape(int port) {
    th_response_t r;
    if (th_request(port, "GET", "/metrics", NULL, NULL, &r) != 0) fail_msg("/metrics: no answer");
    if (r.status != 200) fail_msg("/metrics: status %d", r.status);
    const char *ct = th_header(&r, "Content-Type");
    if (ct == NULL || strncmp(ct, "text/plain", 10) != 0)
        fail_msg("/metrics Content-Type %s", ct ? ct : "(none)");
    return r.body; /* th_response_free would only free this */
}

/* The value of the sample written exactly as key, into *v; 0, or -1 when absent. */
static int metric(const char *text, const char *key, double *v) {
    size_t kl = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, key, kl) == 0 && p[kl] == ' ') {
            char *end;
            *v = strtod(p + kl + 1, &end);
            return end == p + kl + 1 ? -1 : 0;
        }
    }
    return -1;
}

static void expect_metric(const char *text, const char *key, double want) {
    double v;
    if (metric(text, key, &v) != 0) fail_msg("no sample %s in:\n%s", key, text);
    if (v != want) fail_msg("%s is %g, expected %g", key, v, want);
}

/* Each family is described once: no "# TYPE name" twice. */
static void expect_types_once(const char *text) {
    for (const char *p = strstr(text, "# TYPE "); p; p = strstr(p + 1, "# TYPE ")) {
        char name[128];
        if (sscanf(p + 7, "%127s", name) != 1) fail_msg("bad TYPE line");
        char needle[160];
        snprintf(needle, sizeof needle, "# TYPE %s ", name);
        const char *first = strstr(text, needle);
        if (first != p || strstr(p + 1, needle)) fail_msg("TYPE of %s appears twice", name);
    }
}

typedef struct metric_wait_s {
    int port;
    const char *key;
    double want;
} metric_wait_t;

static int metric_is(void *ud) {
    metric_wait_t *m = ud;
    th_response_t r;
    if (th_request(m->port, "GET", "/metrics", NULL, NULL, &r) != 0) return 0;
    double v;
    int ok = r.status == 200 && metric(r.body, m->key, &v) == 0 && v == m->want;
    th_response_free(&r);
    return ok;
}

/* ---- sd_notify and the watchdog ------------------------------------------------------------- */

static void notify_lifecycle(int abstract) {
    notify_t *n = notify_open(abstract);
    th_proc_t *p = slot();
    char ns[160];
    snprintf(ns, sizeof ns, "NOTIFY_SOCKET=%s", n->name);
    const char *env[] = {ns, "WATCHDOG_USEC=400000", NULL};
    start_t o = {.env = env};
    prepare(p);
    spawn_rivetd(p, &o);

    /* The first message is readiness, with a status line, and by then the port accepts. */
    char msg[1024];
    if (notify_recv(n, msg, sizeof msg, START_TO) < 0) fail_log(p, "no notification at all");
    int64_t t_ready = th_now_ms();
    if (!has_line(msg, "READY=1", 0) || !has_line(msg, "STATUS=", 1))
        fail_log(p, "first notification is not READY=1 with STATUS=: '%s'", msg);
    if (th_wait_port(p->port, 0) != 0) fail_log(p, "READY=1 sent before the port accepts");
    expect_health(p->port);

    /* WATCHDOG=1 about every half of WATCHDOG_USEC (200 ms), from the loop. */
    int beats = 0;
    int64_t first = 0, last = 0;
    for (;;) {
        int64_t left = t_ready + 1000 - th_now_ms();
        if (left <= 0 || notify_recv(n, msg, sizeof msg, (int)left) < 0) break;
        if (has_line(msg, "READY=1", 0)) fail_log(p, "READY=1 sent twice");
        if (!has_line(msg, "WATCHDOG=1", 0)) continue;
        last = th_now_ms();
        if (beats++ == 0) first = last;
    }
    if (beats < 2) fail_log(p, "%d WATCHDOG=1 within 1 s of READY=1, expected at least 2", beats);
    if (beats > 8) fail_log(p, "%d WATCHDOG=1 within 1 s: far more often than every 200 ms", beats);
    if (beats >= 3) {
        int64_t avg = (last - first) / (beats - 1);
        if (avg < 100 || avg > 350)
            fail_log(p, "WATCHDOG=1 every %lld ms, expected ~200", (long long)avg);
    }

    /* SIGTERM: STOPPING=1, then a clean exit. */
    kill(p->pid, SIGTERM);
    notify_expect(n, p, "STOPPING=1", "READY=1", TO, msg, sizeof msg);
    expect_exit_0(p, TO);
    notify_close(n);
}

static void notify_path_socket(void **state) { notify_lifecycle(0); }

static void notify_abstract_socket(void **state) { notify_lifecycle(1); }

static void watchdog_for_another_pid(void **state) {
    /* WATCHDOG_PID names another process: rivetd must not send WATCHDOG=1. */
    notify_t *n = notify_open(0);
    th_proc_t *p = slot();
    char ns[160];
    snprintf(ns, sizeof ns, "NOTIFY_SOCKET=%s", n->name);
    const char *env[] = {ns, "WATCHDOG_USEC=200000", "WATCHDOG_PID=1", NULL};
    start_t o = {.env = env};
    prepare(p);
    spawn_rivetd(p, &o);
    char msg[1024];
    notify_expect(n, p, "READY=1", NULL, START_TO, msg, sizeof msg);
    int64_t end = th_now_ms() + 500; /* five intervals of 100 ms */
    for (;;) {
        int64_t left = end - th_now_ms();
        if (left <= 0 || notify_recv(n, msg, sizeof msg, (int)left) < 0) break;
        if (has_line(msg, "WATCHDOG=1", 0)) fail_log(p, "WATCHDOG=1 sent for another pid");
    }
    stop_clean(p);
    notify_close(n);
}

/* ---- socket activation ----------------------------------------------------------------------- */

/* A listening TCP socket on a kernel-chosen loopback port. */
static int tcp_listener(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 64), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    *port = ntohs(sa.sin_port);
    return fd;
}

/* Whether descriptor fd of pid is close-on-exec (from /proc/<pid>/fdinfo). */
static int fd_cloexec(pid_t pid, int fd) {
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/%d/fdinfo/%d", (int)pid, fd);
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    int res = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "flags:", 6) == 0) res = (strtoul(line + 6, NULL, 8) & O_CLOEXEC) != 0;
    fclose(f);
    return res;
}

/* The TCP ports pid listens on, sorted, into ports[max]; returns how many (-1 on error). Read
 * from /proc: the socket inodes among pid's descriptors, matched against the LISTEN entries of
 * its network namespace. Unlike probing a port that was free a moment ago, nothing else running
 * on the machine can change the answer. */
static int listening_ports(pid_t pid, int *ports, int max) {
    char path[64], link[64];
    unsigned long inodes[256];
    int ninodes = 0, n = 0;
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL) return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && ninodes < 256) {
        char fdpath[320];
        snprintf(fdpath, sizeof fdpath, "%s/%s", path, e->d_name);
        ssize_t len = readlink(fdpath, link, sizeof link - 1);
        if (len <= 0) continue;
        link[len] = '\0';
        unsigned long ino;
        if (sscanf(link, "socket:[%lu]", &ino) == 1) inodes[ninodes++] = ino;
    }
    closedir(d);
    static const char *const tables[] = {"tcp", "tcp6"};
    for (size_t t = 0; t < 2; t++) {
        snprintf(path, sizeof path, "/proc/%d/net/%s", (int)pid, tables[t]);
        FILE *f = fopen(path, "r");
        if (f == NULL) continue;
        char line[512];
        while (fgets(line, sizeof line, f)) {
            unsigned port, st;
            unsigned long ino;
            /* sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode */
            if (sscanf(line, " %*s %*[0-9A-Fa-f]:%x %*s %x %*s %*s %*s %*s %*s %lu", &port, &st,
                       &ino) != 3 ||
                st != 0x0A)
                continue;
            for (int i = 0; i < ninodes; i++) {
                if (inodes[i] != ino || n >= max) continue;
                int j = n++;
                while (j > 0 && ports[j - 1] > (int)port) {
                    ports[j] = ports[j - 1];
                    j--;
                }
                ports[j] = (int)port;
            }
        }
        fclose(f);
    }
    return n;
}

/* Fail unless rivetd listens on exactly the two ports a and b, in either order. */
static void expect_listening(th_proc_t *p, int a, int b) {
    int ports[8];
    int n = listening_ports(p->pid, ports, 8);
    int lo = a < b ? a : b, hi = a < b ? b : a;
    if (n != 2 || ports[0] != lo || ports[1] != hi) {
        char got[128] = "";
        for (int i = 0; i < n; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), " %d", ports[i]);
        fail_log(p, "rivetd listens on [%s ] (%d sockets), expected exactly %d and %d", got, n, lo,
                 hi);
    }
}

static void activation_one_socket(void **state) {
    int pub_port, unused = th_free_port();
    int lfd = tcp_listener(&pub_port);
    th_proc_t *p = slot();
    start_t o = {.listen_port = unused, .fds = {lfd}, .nfds = 1, .activate = 1};
    prepare(p);
    spawn_rivetd(p, &o);
    close(lfd); /* only rivetd holds it now */

    wait_health(p, pub_port);
    /* LISTEN is not bound when the socket was passed: rivetd listens on the passed socket and on
     * ADMIN_LISTEN, nothing else. */
    expect_listening(p, pub_port, p->port2);
    /* The inherited socket is not passed on to anything rivetd might execute. */
    if (fd_cloexec(p->pid, 3) != 1) fail_log(p, "fd 3 of rivetd is not close-on-exec");
    /* With one socket passed, the admin listener is bound from ADMIN_LISTEN. */
    char *m = scrape(p->port2);
    double v;
    assert_int_equal(metric(m, "rivet_build_info{version=\"" RV_VERSION "\"}", &v), 0);
    free(m);
    assert_int_equal(status_of(pub_port, "GET", "/metrics", NULL), 404);
    stop_clean(p);
    /* Stopped: the passed socket is closed with it. */
    assert_true(refuses(pub_port));
}

static void activation_two_sockets(void **state) {
    int pub_port, adm_port;
    int unused1 = th_free_port(), unused2 = th_free_port();
    int l1 = tcp_listener(&pub_port), l2 = tcp_listener(&adm_port);
    th_proc_t *p = slot();
    start_t o = {
        .listen_port = unused1, .admin_port = unused2, .fds = {l1, l2}, .nfds = 2, .activate = 1};
    prepare(p);
    spawn_rivetd(p, &o);
    close(l1);
    close(l2);

    wait_health(p, pub_port);
    expect_health(adm_port); /* the admin listener answers /health too */
    /* fd 4 is the admin listener: /metrics there, not on the public one. */
    char *m = scrape(adm_port);
    double v;
    if (metric(m, "rivet_build_info{version=\"" RV_VERSION "\"}", &v) != 0 || v != 1)
        fail_log(p, "no rivet_build_info on the activated admin socket");
    free(m);
    assert_int_equal(status_of(pub_port, "GET", "/metrics", NULL), 404);
    /* Neither LISTEN nor ADMIN_LISTEN is bound: only the two passed sockets listen. */
    expect_listening(p, pub_port, adm_port);
    assert_int_equal(fd_cloexec(p->pid, 3), 1);
    assert_int_equal(fd_cloexec(p->pid, 4), 1);
    stop_clean(p);
}

static void activation_for_another_pid(void **state) {
    /* LISTEN_PID names another process: the descriptors are not ours; LISTEN is bound. */
    int pub_port;
    int lfd = tcp_listener(&pub_port);
    th_proc_t *p = slot();
    const char *env[] = {"LISTEN_PID=1", "LISTEN_FDS=1", NULL};
    start_t o = {.env = env, .fds = {lfd}, .nfds = 1};
    prepare(p);
    spawn_rivetd(p, &o);
    close(lfd);
    wait_health(p, p->port);
    stop_clean(p);
}

/* ---- metrics on the admin listener ----------------------------------------------------------- */

#define PUBLIC_HEALTH_200                                                                          \
    "rivet_http_requests_total{listener=\"public\",route=\"health\",status=\"200\"}"

static void admin_metrics(void **state) {
    th_proc_t *p = slot();
    if (th_rivetd_start(p, NULL) != 0) fail_msg("rivetd did not start");
    assert_true(p->port2 > 0);

    for (int i = 0; i < 3; i++) expect_health(p->port);
    assert_int_equal(status_of(p->port, "GET", "/nope", NULL), 404);
    const char *body = "{\"id\":\"evt_test\",\"type\":\"checkout.session.completed\"}";
    for (int i = 0; i < 2; i++) {
        th_response_t r;
        assert_int_equal(th_request(p->port, "POST", "/api/webhooks/stripe",
                                    "Content-Type: application/json\r\n"
                                    "Stripe-Signature: t=1700000000,v1=00ff\r\n",
                                    body, &r),
                         0);
        assert_int_equal(r.status, 400);
        th_response_free(&r);
    }
    /* Requests are counted when answered; wait for the last one to show. */
    metric_wait_t w = {p->port2,
                       "rivet_http_requests_total{listener=\"public\",route=\"webhook\","
                       "status=\"400\"}",
                       2};
    if (!th_eventually(metric_is, &w, TO)) {
        char *m = scrape(p->port2);
        fail_log(p, "%s never became 2; metrics:\n%s", w.key, m);
    }
    char *m = scrape(p->port2);
    expect_types_once(m);
    expect_metric(m, PUBLIC_HEALTH_200, 3);
    expect_metric(m, "rivet_webhook_events_total{type=\"unknown\",outcome=\"rejected\"}", 2);
    expect_metric(m,
                  "rivet_http_requests_total{listener=\"public\",route=\"none\","
                  "status=\"404\"}",
                  1);
    expect_metric(m,
                  "rivet_http_request_duration_seconds_count{listener=\"public\","
                  "route=\"health\"}",
                  3);
    expect_metric(m,
                  "rivet_http_request_duration_seconds_bucket{listener=\"public\","
                  "route=\"health\",le=\"+Inf\"}",
                  3);
    expect_metric(m, "rivet_build_info{version=\"" RV_VERSION "\"}", 1);
    expect_metric(m, "rivet_redis_up", 0);
    double v;
    assert_int_equal(metric(m, "rivet_process_resident_memory_bytes", &v), 0);
    assert_true(v > 0);
    free(m);

    /* Metrics are not served on the public listener. */
    assert_int_equal(status_of(p->port, "GET", "/metrics", NULL), 404);

    /* The admin listener answers /health and /ready; without Redis, not ready. */
    expect_health(p->port2);
    assert_int_equal(status_of(p->port2, "GET", "/ready", NULL), 503);
    m = scrape(p->port2);
    expect_metric(m,
                  "rivet_http_requests_total{listener=\"admin\",route=\"health\","
                  "status=\"200\"}",
                  1);
    /* Admin requests are their own series: the public count is unchanged. */
    expect_metric(m, PUBLIC_HEALTH_200, 3);
    free(m);
    stop_clean(p);
}

static void admin_metrics_redis_up(void **state) {
    th_proc_t *redis = slot();
    if (th_redis_start(redis) != 0) fail_msg("redis-server did not start");
    th_proc_t *p = slot();
    char url[64];
    snprintf(url, sizeof url, "REDIS_URL=redis://127.0.0.1:%d/0", redis->port);
    const char *env[] = {url, NULL};
    if (th_rivetd_start(p, env) != 0) fail_msg("rivetd did not start");

    metric_wait_t w = {p->port2, "rivet_redis_up", 1};
    if (!th_eventually(metric_is, &w, TO)) fail_log(p, "rivet_redis_up never became 1");
    assert_int_equal(status_of(p->port2, "GET", "/ready", NULL), 200);
    char *m = scrape(p->port2);
    expect_metric(m, "rivet_redis_state", 2);
    free(m);

    /* Redis goes away: the gauge follows. */
    th_stop(redis, SIGKILL, TO);
    w.want = 0;
    if (!th_eventually(metric_is, &w, TO)) fail_log(p, "rivet_redis_up stayed 1 without Redis");
    assert_int_equal(status_of(p->port2, "GET", "/ready", NULL), 503);
    stop_clean(p);
}

/* ---- SIGHUP reload --------------------------------------------------------------------------- */

/* Write the configuration file: the required keys (with STRIPE_SECRET_KEY=secret) and extra
 * lines; written beside and renamed, as an editor or deploy tool would. */
static void write_config(const char *path, const char *secret, const char *extra) {
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.new", path);
    FILE *f = fopen(tmp, "w");
    assert_non_null(f);
    fprintf(f, "# rivetd test configuration\n");
    for (size_t i = 0; i < RV_ARRAY_LEN(test_keys); i++) {
        if (secret && strncmp(test_keys[i], "STRIPE_SECRET_KEY=", 18) == 0)
            fprintf(f, "STRIPE_SECRET_KEY=%s\n", secret);
        else
            fprintf(f, "%s\n", test_keys[i]);
    }
    fprintf(f, "%s", extra);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(tmp, path), 0);
}

static int preflight(int port, const char *origin) {
    char h[256];
    snprintf(h, sizeof h, "Origin: %s\r\nAccess-Control-Request-Method: POST\r\n", origin);
    return status_of(port, "OPTIONS", "/api/checkout/create", h);
}

typedef struct preflight_wait_s {
    int port;
    const char *origin;
    int want;
} preflight_wait_t;

static int preflight_is(void *ud) {
    preflight_wait_t *w = ud;
    return preflight(w->port, w->origin) == w->want;
}

static void expect_preflight(th_proc_t *p, const char *origin, int want) {
    int st = preflight(p->port, origin);
    if (st != want) fail_log(p, "preflight from %s: %d, expected %d", origin, st, want);
}

/* SIGHUP, then wait until origin's preflight answers want. */
static void reload_until(th_proc_t *p, const char *origin, int want) {
    kill(p->pid, SIGHUP);
    preflight_wait_t w = {p->port, origin, want};
    if (!th_eventually(preflight_is, &w, TO))
        fail_log(p, "after SIGHUP, preflight from %s never answered %d", origin, want);
}

/* Lines of p's log containing a (and b, when not NULL). */
static int log_count(const th_proc_t *p, const char *a, const char *b) {
    FILE *f = fopen(p->log_path, "r");
    if (f == NULL) return 0;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, a) && (b == NULL || strstr(line, b));
    fclose(f);
    return n;
}

static int log_contains(const th_proc_t *p, const char *s) { return log_count(p, s, NULL) > 0; }

typedef struct log_wait_s {
    const th_proc_t *p;
    const char *a, *b;
    int n;
} log_wait_t;

static int log_reached(void *ud) {
    log_wait_t *w = ud;
    return log_count(w->p, w->a, w->b) >= w->n;
}

/* SIGHUP and wait for the log to say the configuration was reloaded (once more than before). */
static void reload_and_wait(th_proc_t *p) {
    log_wait_t w = {p, "configuration reloaded", NULL, 0};
    w.n = log_count(p, w.a, NULL) + 1;
    kill(p->pid, SIGHUP);
    if (!th_eventually(log_reached, &w, TO)) fail_log(p, "no \"configuration reloaded\" logged");
}

#define BOGUS_KEY "pk_live_mistyped_into_the_secret_slot"

static void sighup_reload(void **state) {
    th_proc_t *p = slot();
    prepare(p);
    char path[300];
    snprintf(path, sizeof path, "%.200s/rivetd.env", p->dir);
    write_config(path, NULL, "TELEGRAM_BOT=FirstBot_bot\nCORS_ORIGINS=https://b.example\n");
    start_t o = {.no_test_keys = 1, .config = path};
    spawn_rivetd(p, &o);
    wait_port(p);
    expect_preflight(p, "https://a.example", 403);
    expect_preflight(p, "https://b.example", 204);

    /* A changed file takes effect on SIGHUP. */
    write_config(path, NULL, "TELEGRAM_BOT=FirstBot_bot\nCORS_ORIGINS=https://a.example\n");
    reload_until(p, "https://a.example", 204);
    expect_preflight(p, "https://b.example", 403);

    /* An invalid file is refused, naming the key; the running configuration stays. */
    write_config(path, BOGUS_KEY, "CORS_ORIGINS=https://c.example\n");
    kill(p->pid, SIGHUP);
    log_wait_t lw = {p, "reload refused", "STRIPE_SECRET_KEY", 1};
    if (!th_eventually(log_reached, &lw, TO))
        fail_log(p, "no log line saying the reload was refused because of STRIPE_SECRET_KEY");
    if (!th_alive(p)) fail_log(p, "rivetd died on an invalid reload");
    expect_preflight(p, "https://a.example", 204);
    expect_preflight(p, "https://c.example", 403);
    expect_health(p->port);
    /* No secret reaches the log, not even a wrong one. */
    if (log_contains(p, BOGUS_KEY) || log_contains(p, TH_STRIPE_KEY) ||
        log_contains(p, TH_WEBHOOK_SECRET))
        fail_log(p, "a secret value appears in the log");

    /* Fixed again: the next SIGHUP applies it. */
    write_config(path, NULL, "CORS_ORIGINS=https://d.example\n");
    reload_until(p, "https://d.example", 204);
    expect_preflight(p, "https://a.example", 403);
    stop_clean(p);
}

static void sighup_environment_file(void **state) {
    /* systemd's EnvironmentFile= of the same file puts the file's start-up values in the
     * environment too; a changed file must still take effect on SIGHUP, every time. */
    th_proc_t *p = slot();
    prepare(p);
    char path[300];
    snprintf(path, sizeof path, "%.200s/rivetd.env", p->dir);
    write_config(path, NULL, "TELEGRAM_BOT=FirstBot_bot\nCORS_ORIGINS=https://b.example\n");
    const char *env[] = {"TELEGRAM_BOT=FirstBot_bot", "CORS_ORIGINS=https://b.example", NULL};
    start_t o = {.env = env, .config = path}; /* with the required keys in env, identical */
    spawn_rivetd(p, &o);
    wait_port(p);
    expect_preflight(p, "https://b.example", 204);
    expect_preflight(p, "https://a.example", 403);

    write_config(path, NULL, "TELEGRAM_BOT=FirstBot_bot\nCORS_ORIGINS=https://a.example\n");
    reload_until(p, "https://a.example", 204);
    expect_preflight(p, "https://b.example", 403);

    /* Reloading the unchanged file keeps what it says, not the environment's start-up copy. */
    reload_and_wait(p);
    expect_preflight(p, "https://a.example", 204);
    expect_preflight(p, "https://b.example", 403);

    /* And a further change still applies. */
    write_config(path, NULL, "TELEGRAM_BOT=FirstBot_bot\nCORS_ORIGINS=https://c.example\n");
    reload_until(p, "https://c.example", 204);
    expect_preflight(p, "https://a.example", 403);
    expect_preflight(p, "https://b.example", 403);
    stop_clean(p);
}

static void sighup_environment_wins(void **state) {
    /* A key set in the environment to a value of its own keeps winning over the file. */
    th_proc_t *p = slot();
    prepare(p);
    char path[300];
    snprintf(path, sizeof path, "%.200s/rivetd.env", p->dir);
    write_config(path, NULL, "CORS_ORIGINS=https://b.example\n");
    const char *env[] = {"CORS_ORIGINS=https://env.example", NULL};
    start_t o = {.env = env, .config = path};
    spawn_rivetd(p, &o);
    wait_port(p);
    expect_preflight(p, "https://env.example", 204);
    expect_preflight(p, "https://b.example", 403);
    write_config(path, NULL, "CORS_ORIGINS=https://a.example\n");
    reload_and_wait(p);
    expect_preflight(p, "https://env.example", 204);
    expect_preflight(p, "https://a.example", 403);
    stop_clean(p);
}

/* A configuration path that turns into a FIFO (or a hung network file) must not freeze the
 * loop on SIGHUP: opening a FIFO with no writer blocks, and so would reading it. The reload is
 * refused, traffic goes on, and a regular file again reloads as usual. */
static void sighup_fifo_never_blocks(void **state) {
    th_proc_t *p = slot();
    prepare(p);
    char path[300];
    snprintf(path, sizeof path, "%.200s/rivetd.env", p->dir);
    write_config(path, NULL, "CORS_ORIGINS=https://b.example\n");
    start_t o = {.no_test_keys = 1, .config = path};
    spawn_rivetd(p, &o);
    wait_port(p);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    kill(p->pid, SIGHUP);
    log_wait_t lw = {p, "reload refused", "regular file", 1};
    if (!th_eventually(log_reached, &lw, TO))
        fail_log(p, "no log line saying the reload was refused: a FIFO is not a regular file");
    for (int i = 0; i < 5; i++) {
        int64_t t0 = th_now_ms();
        expect_health(p->port);
        if (th_now_ms() - t0 > 1000) fail_log(p, "/health took over a second after SIGHUP");
    }
    expect_preflight(p, "https://b.example", 204);
    assert_int_equal(unlink(path), 0);
    write_config(path, NULL, "CORS_ORIGINS=https://a.example\n");
    reload_until(p, "https://a.example", 204);
    stop_clean(p);
}

/* ---- WORKERS --------------------------------------------------------------------------------- */

/* Live (not zombie) children of parent, from /proc/<pid>/stat; up to max pids into out. */
static int children_of(pid_t parent, pid_t *out, int max) {
    DIR *d = opendir("/proc");
    if (d == NULL) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!isdigit((unsigned char)de->d_name[0])) continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/%s/stat", de->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t r = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (r <= 0) continue;
        buf[r] = '\0';
        /* "pid (comm) state ppid ...": comm may hold anything, so parse after its last ')'. */
        char *rp = strrchr(buf, ')');
        char state;
        int ppid;
        if (rp == NULL || sscanf(rp + 1, " %c %d", &state, &ppid) != 2) continue;
        if (ppid != (int)parent || state == 'Z' || state == 'X') continue;
        if (n < max) out[n] = (pid_t)atoi(de->d_name);
        n++;
    }
    closedir(d);
    return n;
}

typedef struct workers_wait_s {
    pid_t parent;
    pid_t gone; /* a pid that must no longer be a child, or 0 */
    pid_t kids[8];
    int want;
    int health_port; /* when set, /health must answer 200 on every poll */
    int health_failures;
} workers_wait_t;

static int workers_are(void *ud) {
    workers_wait_t *w = ud;
    if (w->health_port && status_of(w->health_port, "GET", "/health", NULL) != 200)
        w->health_failures++;
    int n = children_of(w->parent, w->kids, (int)RV_ARRAY_LEN(w->kids));
    if (n != w->want) return 0;
    for (int i = 0; i < n; i++)
        if (w->kids[i] == w->gone) return 0;
    return 1;
}

static void workers_restart(void **state) {
    notify_t *n = notify_open(0);
    th_proc_t *p = slot();
    char ns[160];
    snprintf(ns, sizeof ns, "NOTIFY_SOCKET=%s", n->name);
    const char *env[] = {ns, "WORKERS=2", NULL};
    start_t o = {.env = env};
    prepare(p);
    spawn_rivetd(p, &o);

    char msg[1024];
    if (notify_recv(n, msg, sizeof msg, START_TO) < 0) fail_log(p, "no notification at all");
    if (!has_line(msg, "READY=1", 0)) fail_log(p, "first notification is not READY=1: %s", msg);
    /* The parent says READY=1 only once every worker listens. */
    expect_health(p->port);
    expect_health(p->port2);

    workers_wait_t w = {.parent = p->pid, .want = 2};
    if (!th_eventually(workers_are, &w, TO)) fail_log(p, "rivetd does not have 2 workers");
    pid_t victim = w.kids[0], other = w.kids[1];
    for (int i = 0; i < 4; i++) expect_health(p->port);

    /* A killed worker is replaced; the other keeps serving meanwhile. */
    assert_int_equal(kill(victim, SIGKILL), 0);
    workers_wait_t gone = {.parent = p->pid, .want = 1, .gone = victim};
    if (!th_eventually(workers_are, &gone, TO)) fail_log(p, "the killed worker did not go");
    workers_wait_t back = {.parent = p->pid, .want = 2, .gone = victim, .health_port = p->port};
    if (!th_eventually(workers_are, &back, TO)) fail_log(p, "no new worker within %d ms", TO);
    if (back.health_failures)
        fail_log(p, "/health failed %d times while a worker was restarting", back.health_failures);
    pid_t fresh = back.kids[0] == other ? back.kids[1] : back.kids[0];
    assert_true(fresh != victim && fresh != other);
    for (int i = 0; i < 6; i++) expect_health(p->port);

    /* Still only the one READY=1 (nothing from the workers themselves). */
    while (notify_recv(n, msg, sizeof msg, 0) >= 0)
        if (has_line(msg, "READY=1", 0)) fail_log(p, "READY=1 sent again: %s", msg);

    /* SIGTERM to the parent stops everything, cleanly. */
    kill(p->pid, SIGTERM);
    notify_expect(n, p, "STOPPING=1", "READY=1", TO, msg, sizeof msg);
    expect_exit_0(p, 2 * TO);
    /* The parent waited for its workers: none is left running. */
    if (kill(other, 0) == 0 || errno != ESRCH) fail_msg("worker %d outlived the parent", other);
    if (kill(fresh, 0) == 0 || errno != ESRCH) fail_msg("worker %d outlived the parent", fresh);
    notify_close(n);
}

/* Two workers, a reloaded configuration, and one worker killed: the one that replaces it runs
 * the reloaded configuration too, not the one the daemon started with. Each probe is on a new
 * connection, so the probes reach both workers. */
static void workers_reload_reaches_restarted(void **state) {
    th_proc_t *p = slot();
    prepare(p);
    char path[300];
    snprintf(path, sizeof path, "%.200s/rivetd.env", p->dir);
    write_config(path, NULL, "WORKERS=2\nCORS_ORIGINS=https://a.example\n");
    start_t o = {.no_test_keys = 1, .config = path};
    spawn_rivetd(p, &o);
    wait_port(p);
    workers_wait_t w = {.parent = p->pid, .want = 2};
    if (!th_eventually(workers_are, &w, START_TO)) fail_log(p, "rivetd does not have 2 workers");

    write_config(path, NULL, "WORKERS=2\nCORS_ORIGINS=https://b.example\n");
    log_wait_t lw = {p, "configuration reloaded", NULL, 3};
    kill(p->pid, SIGHUP);
    if (!th_eventually(log_reached, &lw, TO))
        fail_log(p, "the parent and both workers did not log the reload");
    pid_t victim = w.kids[0];
    assert_int_equal(kill(victim, SIGKILL), 0);
    workers_wait_t back = {.parent = p->pid, .want = 2, .gone = victim};
    if (!th_eventually(workers_are, &back, START_TO)) fail_log(p, "no new worker");
    wait_health(p, p->port);
    for (int i = 0; i < 40; i++) {
        expect_preflight(p, "https://b.example", 204);
        expect_preflight(p, "https://a.example", 403);
    }

    /* A refused reload reaches no worker: all of them keep b. */
    write_config(path, BOGUS_KEY, "WORKERS=2\nCORS_ORIGINS=https://c.example\n");
    log_wait_t refused = {p, "reload refused", NULL, 1};
    kill(p->pid, SIGHUP);
    if (!th_eventually(log_reached, &refused, TO)) fail_log(p, "the bad file was not refused");
    for (int i = 0; i < 20; i++) {
        expect_preflight(p, "https://b.example", 204);
        expect_preflight(p, "https://c.example", 403);
    }
    if (log_count(p, "reload refused", NULL) != 1)
        fail_log(p, "a worker was told to reload a configuration the parent refused");
    stop_clean(p);
}

/* One scrape of either worker shows the whole daemon: requests counted by both, connections
 * held open on both. */
static void workers_metrics_whole_daemon(void **state) {
    th_proc_t *p = slot();
    const char *env[] = {"WORKERS=2", NULL};
    start_t o = {.env = env};
    prepare(p);
    spawn_rivetd(p, &o);
    wait_port(p);
    workers_wait_t w = {.parent = p->pid, .want = 2};
    if (!th_eventually(workers_are, &w, START_TO)) fail_log(p, "rivetd does not have 2 workers");
    wait_health(p, p->port2);
    for (int i = 0; i < 60; i++) expect_health(p->port);
    int idle[10];
    for (int i = 0; i < 10; i++) {
        idle[i] = th_connect(p->port);
        assert_true(idle[i] >= 0);
    }
    for (int k = 0; k < 6; k++) {
        char *text = scrape(p->port2);
        double v = 0;
        const char *key =
            "rivet_http_requests_total{listener=\"public\",route=\"health\",status=\"200\"}";
        /* wait_health may have counted a few of its own before the 60. */
        if (metric(text, key, &v) != 0 || v < 60 || v > 70)
            fail_log(p, "scrape %d: %s is %g, expected the 60 answered by both workers", k, key, v);
        expect_metric(text, "rivet_workers", 2);
        free(text);
    }
    metric_wait_t mw = {p->port2, "rivet_http_open_connections{listener=\"public\"}", 10};
    if (!th_eventually(metric_is, &mw, TO))
        fail_log(p, "the open connections of both workers were not summed to 10");
    for (int i = 0; i < 10; i++) th_close(idle[i]);
    stop_clean(p);
}

/* The rate limit is per client for the whole daemon: with a burst of 20, two workers still let
 * 20 requests through, not 40. */
static void workers_rate_limit_whole_daemon(void **state) {
    th_proc_t *p = slot();
    const char *env[] = {"WORKERS=2", "RATE_LIMIT_PER_MIN=1", NULL};
    start_t o = {.env = env};
    prepare(p);
    spawn_rivetd(p, &o);
    wait_port(p);
    workers_wait_t w = {.parent = p->pid, .want = 2};
    if (!th_eventually(workers_are, &w, START_TO)) fail_log(p, "rivetd does not have 2 workers");
    wait_health(p, p->port);
    int limited = 0, passed = 0;
    for (int i = 0; i < 50; i++) {
        int st = status_of(p->port, "POST", "/api/checkout/create", NULL);
        if (st == 429)
            limited++;
        else if (st > 0)
            passed++;
    }
    if (passed != 20)
        fail_log(p, "%d requests passed the limit (and %d were limited); the burst is 20", passed,
                 limited);
    stop_clean(p);
}

/* ---- SIGTERM with a request in flight -------------------------------------------------------- */

#define CHECKOUT_BODY "{\"email\":\"drain@example.com\",\"tier\":\"pro\"}"

/* How many checkout-session creations the fake Stripe has received. */
static int fake_creates(int port) {
    th_response_t r;
    if (th_request(port, "GET", "/_fake/requests", NULL, NULL, &r) != 0) return -1;
    int n = 0;
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    cJSON *e;
    cJSON_ArrayForEach(e, j) {
        cJSON *path = cJSON_GetObjectItemCaseSensitive(e, "path");
        if (cJSON_IsString(path) && strcmp(path->valuestring, "/v1/checkout/sessions") == 0) n++;
    }
    cJSON_Delete(j);
    th_response_free(&r);
    return n;
}

typedef struct fake_wait_s {
    int port;
    int want;
} fake_wait_t;

static int fake_reached(void *ud) {
    fake_wait_t *w = ud;
    return fake_creates(w->port) >= w->want;
}

/* Start rivetd against the fake Stripe and send one checkout without reading the answer;
 * returns the client socket once the fake has the call (so it is truly in flight). */
static int checkout_in_flight(th_proc_t *p, th_proc_t *fake, const char *shutdown_ms) {
    char base[64], sd[64];
    snprintf(base, sizeof base, "STRIPE_API_BASE=http://127.0.0.1:%d", fake->port);
    snprintf(sd, sizeof sd, "SHUTDOWN_TIMEOUT_MS=%s", shutdown_ms);
    const char *env[] = {base, sd, "RATE_LIMIT_PER_MIN=0", NULL};
    if (th_rivetd_start(p, env) != 0) fail_msg("rivetd did not start");
    fake_wait_t fw = {fake->port, fake_creates(fake->port) + 1};
    int fd = th_connect(p->port);
    assert_true(fd >= 0);
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/checkout/create HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
             strlen(CHECKOUT_BODY), CHECKOUT_BODY);
    assert_int_equal(th_send_str(fd, req), 0);
    if (!th_eventually(fake_reached, &fw, TO)) fail_log(p, "the checkout never reached Stripe");
    return fd;
}

static void sigterm_finishes_request(void **state) {
    th_proc_t *fake = slot();
    const char *args[] = {"--latency-ms", "1500", NULL};
    if (th_fake_stripe_start(fake, args) != 0) fail_msg("the fake Stripe did not start");
    th_proc_t *p = slot();
    int fd = checkout_in_flight(p, fake, "10000");

    kill(p->pid, SIGTERM);
    /* New connections are refused at once, on both listeners, while the call is pending. */
    int port = p->port, port2 = p->port2;
    if (!th_eventually(refuses_cb, &port, 1000)) fail_log(p, "still accepting after SIGTERM");
    if (!th_eventually(refuses_cb, &port2, 1000)) fail_log(p, "admin accepting after SIGTERM");
    if (!th_alive(p)) fail_log(p, "exited with a request in flight");

    /* The request in flight is answered in full. */
    th_response_t r;
    if (th_read_response(fd, &r, 0, 10000) != 0) fail_log(p, "the checkout got no answer");
    th_close(fd);
    if (r.status != 200) fail_log(p, "checkout answered %d: %s", r.status, r.body);
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    cJSON *url = cJSON_GetObjectItemCaseSensitive(j, "checkout_url");
    cJSON *sid = cJSON_GetObjectItemCaseSensitive(j, "session_id");
    if (!cJSON_IsString(url) || strncmp(url->valuestring, "http", 4) != 0 || !cJSON_IsString(sid))
        fail_msg("no checkout_url/session_id in %s", r.body);
    cJSON_Delete(j);
    th_response_free(&r);
    expect_exit_0(p, TO);
}

static void sigterm_timeout_cuts_off(void **state) {
    th_proc_t *fake = slot();
    const char *args[] = {"--latency-ms", "5000", NULL};
    if (th_fake_stripe_start(fake, args) != 0) fail_msg("the fake Stripe did not start");
    th_proc_t *p = slot();
    int fd = checkout_in_flight(p, fake, "300");

    int64_t t0 = th_now_ms();
    kill(p->pid, SIGTERM);
    int st = wait_exit(p, 4000);
    int64_t took = th_now_ms() - t0;
    if (st != 0) fail_msg("rivetd exited with status %d, expected 0", st);
    if (took > 1500) fail_msg("exit took %lld ms with SHUTDOWN_TIMEOUT_MS=300", (long long)took);
    /* The client is cut off rather than answered with the result. */
    th_response_t r;
    int rc = th_read_response(fd, &r, 0, 2000);
    th_close(fd);
    if (rc == 0) {
        int status = r.status;
        th_response_free(&r);
        if (status == 200) fail_msg("a request past the shutdown timeout was answered 200");
    }
}

/* ---- driver ---------------------------------------------------------------------------------- */

static int teardown(void **state) {
    for (size_t i = 0; i < RV_ARRAY_LEN(procs); i++)
        if (procs[i].pid > 0 || procs[i].dir[0]) th_stop(&procs[i], SIGKILL, 2000);
    for (size_t i = 0; i < RV_ARRAY_LEN(notes); i++) notify_close(&notes[i]);
    return 0;
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(notify_path_socket, teardown),
        cmocka_unit_test_teardown(notify_abstract_socket, teardown),
        cmocka_unit_test_teardown(watchdog_for_another_pid, teardown),
        cmocka_unit_test_teardown(activation_one_socket, teardown),
        cmocka_unit_test_teardown(activation_two_sockets, teardown),
        cmocka_unit_test_teardown(activation_for_another_pid, teardown),
        cmocka_unit_test_teardown(admin_metrics, teardown),
        cmocka_unit_test_teardown(admin_metrics_redis_up, teardown),
        cmocka_unit_test_teardown(sighup_reload, teardown),
        cmocka_unit_test_teardown(sighup_environment_file, teardown),
        cmocka_unit_test_teardown(sighup_fifo_never_blocks, teardown),
        cmocka_unit_test_teardown(workers_reload_reaches_restarted, teardown),
        cmocka_unit_test_teardown(workers_metrics_whole_daemon, teardown),
        cmocka_unit_test_teardown(workers_rate_limit_whole_daemon, teardown),
        cmocka_unit_test_teardown(sighup_environment_wins, teardown),
        cmocka_unit_test_teardown(workers_restart, teardown),
        cmocka_unit_test_teardown(sigterm_finishes_request, teardown),
        cmocka_unit_test_teardown(sigterm_timeout_cuts_off, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
