/* Integration-test harness: starts real processes (rivetd, redis-server, the fake Stripe) on
 * free loopback ports, stops them and cleans up after them, and speaks just enough blocking
 * HTTP/1.1 over real sockets for tests to drive them. Everything read from a socket is bounded
 * and every read waits with poll() against a deadline, so a broken server fails a test instead
 * of hanging it. */
#include "harness.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define TH_MAX_HEADER_BYTES   (64 * 1024)
#define TH_MAX_BODY_BYTES     (8 * 1024 * 1024)
#define TH_MAX_CHUNK_LINE     1024
#define TH_LOG_TAIL_LINES     30
#define TH_REQUEST_TIMEOUT_MS 10000
#define TH_START_TIMEOUT_MS   10000

/* ---- time ------------------------------------------------------------------------------- */

int64_t th_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_ms(void) { return th_now_ms(); }

th_proc_t *th_free_slot(th_proc_t *procs, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (procs[i].pid <= 0 && procs[i].dir[0] == '\0') return &procs[i];
    return NULL;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- processes -------------------------------------------------------------------------- */

int th_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(sa);
    int port = -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        port = ntohs(sa.sin_port);
    }
    close(fd);
    return port;
}

const char *th_build_dir(void) {
    const char *b = getenv("RIVET_BUILD");
    return b != NULL && b[0] != '\0' ? b : "build";
}

/* Length of the key of a "K=V" entry (the whole string when it has no '='). */
static size_t env_key_len(const char *e) {
    const char *eq = strchr(e, '=');
    return eq != NULL ? (size_t)(eq - e) : strlen(e);
}

/* A malloc'd NULL-terminated array of pointers: environ with env applied in order, each entry
 * replacing any earlier one with the same key, and "K=" removing K. The strings themselves are
 * borrowed. */
static char **build_env(const char *const env[]) {
    size_t n = 0, extra = 0;
    while (environ != NULL && environ[n] != NULL) {
        n++;
    }
    while (env != NULL && env[extra] != NULL) {
        extra++;
    }
    char **out = calloc(n + extra + 1, sizeof(*out));
    if (out == NULL) {
        return NULL;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        out[k++] = environ[i];
    }
    for (size_t i = 0; i < extra; i++) {
        const char *e = env[i];
        size_t kl = env_key_len(e);
        size_t w = 0;
        for (size_t j = 0; j < k; j++) {
            if (env_key_len(out[j]) == kl && strncmp(out[j], e, kl) == 0) {
                continue;
            }
            out[w++] = out[j];
        }
        k = w;
        if (e[kl] == '=' && e[kl + 1] != '\0') {
            out[k++] = (char *)e;
        }
    }
    out[k] = NULL;
    return out;
}

/* Find an executable the way a shell would: a name with a slash as is, otherwise on PATH. */
static int resolve_exec(const char *name, char *out, size_t outlen) {
    if (strchr(name, '/') != NULL) {
        return snprintf(out, outlen, "%s", name) < (int)outlen ? 0 : -1;
    }
    const char *path = getenv("PATH");
    if (path == NULL) {
        path = "/usr/local/bin:/usr/bin:/bin";
    }
    while (*path != '\0') {
        const char *colon = strchr(path, ':');
        size_t dl = colon != NULL ? (size_t)(colon - path) : strlen(path);
        int n = snprintf(out, outlen, "%.*s/%s", (int)dl, dl > 0 ? path : ".", name);
        if (n > 0 && (size_t)n < outlen && access(out, X_OK) == 0) {
            return 0;
        }
        if (colon == NULL) {
            break;
        }
        path = colon + 1;
    }
    return -1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void remove_dir(char *dir) {
    /* Only ever remove what mkdtemp made for us. */
    if (dir[0] != '\0' && strncmp(dir, "/tmp/", 5) == 0) {
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    dir[0] = '\0';
}

/* Fill in name, dir and log_path for a process about to start. */
static int proc_prepare(th_proc_t *p, const char *name) {
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->dir, sizeof(p->dir), "/tmp/rivet-th-XXXXXX");
    if (mkdtemp(p->dir) == NULL) {
        p->dir[0] = '\0';
        return -1;
    }
    int n = snprintf(p->log_path, sizeof(p->log_path), "%.64s/%.31s.log", p->dir, p->name);
    if (n < 0 || (size_t)n >= sizeof(p->log_path)) {
        remove_dir(p->dir);
        return -1;
    }
    return 0;
}

/* fork+execve into the prepared p. The child gets its own process group (so stopping it can
 * reach anything it starts), /dev/null as stdin, the log as stdout and stderr, default signal
 * dispositions and no inherited descriptors beyond those three. */
static int spawn_prepared(th_proc_t *p, const char *const argv[], const char *const env[]) {
    char path[512];
    if (resolve_exec(argv[0], path, sizeof(path)) != 0) {
        fprintf(stderr, "harness: %s: not found\n", argv[0]);
        return -1;
    }
    char **envp = build_env(env);
    if (envp == NULL) {
        return -1;
    }
    int logfd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0) {
        free(envp);
        return -1;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(logfd);
        free(envp);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        int nullfd = open("/dev/null", O_RDONLY);
        if (nullfd >= 0) {
            dup2(nullfd, 0);
        }
        dup2(logfd, 1);
        dup2(logfd, 2);
        for (int s = 1; s < NSIG; s++) {
            signal(s, SIG_DFL);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        close_range(3, ~0U, 0);
        execve(path, (char *const *)argv, envp);
        dprintf(2, "harness: execve %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    setpgid(pid, pid);
    close(logfd);
    free(envp);
    p->pid = pid;
    return 0;
}

int th_spawn(th_proc_t *p, const char *const argv[], const char *const env[]) {
    const char *base = strrchr(argv[0], '/');
    if (proc_prepare(p, base != NULL ? base + 1 : argv[0]) != 0) {
        return -1;
    }
    if (spawn_prepared(p, argv, env) != 0) {
        remove_dir(p->dir);
        return -1;
    }
    return 0;
}

int th_alive(th_proc_t *p) {
    if (p->pid <= 0) {
        return 0;
    }
    /* WNOWAIT leaves the exit status for th_stop to collect. */
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid(P_PID, (id_t)p->pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
        return 0;
    }
    return info.si_pid == 0;
}

int th_wait_port(int port, int timeout_ms) {
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return -1;
        }
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
        if (rc == 0) {
            return 0;
        }
        if (now_ms() >= deadline) {
            return -1;
        }
        sleep_ms(10);
    }
}

/* Print the last lines of a process's log to stderr, so a failure shows its cause. */
static void dump_log_tail(const th_proc_t *p, const char *why) {
    FILE *f = fopen(p->log_path, "r");
    if (f == NULL) {
        return;
    }
    char *data = NULL;
    size_t len = 0, cap = 0;
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (len + n > cap) {
            size_t ncap = cap == 0 ? 8192 : cap * 2;
            while (ncap < len + n) {
                ncap *= 2;
            }
            char *nd = realloc(data, ncap);
            if (nd == NULL) {
                break;
            }
            data = nd;
            cap = ncap;
        }
        memcpy(data + len, chunk, n);
        len += n;
    }
    fclose(f);
    size_t start = len;
    int lines = 0;
    if (start > 0 && data[start - 1] == '\n') {
        start--;
    }
    while (start > 0) {
        if (data[start - 1] == '\n' && ++lines == TH_LOG_TAIL_LINES) {
            break;
        }
        start--;
    }
    fprintf(stderr, "---- %s (%s): last lines of %s ----\n", p->name, why, p->log_path);
    if (len > start) {
        fwrite(data + start, 1, len - start, stderr);
        if (data[len - 1] != '\n') {
            fputc('\n', stderr);
        }
    }
    fprintf(stderr, "---- end of %s ----\n", p->name);
    free(data);
}

static int decode_status(int status) {
    if (WIFEXITED(status)) {
        return WEXITSTATUS(status);
    }
    if (WIFSIGNALED(status)) {
        return 128 + WTERMSIG(status);
    }
    return -1;
}

int th_stop(th_proc_t *p, int sig, int timeout_ms) {
    int result = -1;
    if (p->pid > 0) {
        kill(p->pid, sig);
        int64_t deadline = now_ms() + timeout_ms;
        int status = 0;
        pid_t w;
        for (;;) {
            w = waitpid(p->pid, &status, WNOHANG);
            if (w != 0 || now_ms() >= deadline) {
                break;
            }
            sleep_ms(5);
        }
        if (w == 0) {
            fprintf(stderr, "harness: %s did not exit within %d ms; killing it\n", p->name,
                    timeout_ms);
            kill(-p->pid, SIGKILL);
            kill(p->pid, SIGKILL);
            do {
                w = waitpid(p->pid, &status, 0);
            } while (w < 0 && errno == EINTR);
        }
        if (w == p->pid) {
            result = decode_status(status);
        }
        if (result != 0 && result != 128 + sig) {
            char why[64];
            snprintf(why, sizeof(why), "exit status %d", result);
            dump_log_tail(p, why);
        }
        /* Anything the process left behind in its group goes with it. */
        kill(-p->pid, SIGKILL);
        p->pid = 0;
    }
    remove_dir(p->dir);
    return result;
}

/* Wait for a started process's port; on failure show its log and stop it. */
static int wait_started(th_proc_t *p, int port, int timeout_ms) {
    int64_t deadline = now_ms() + timeout_ms;
    while (now_ms() < deadline) {
        if (th_wait_port(port, 20) == 0) {
            return 0;
        }
        if (!th_alive(p)) {
            dump_log_tail(p, "exited during start-up");
            th_stop(p, SIGTERM, 1000);
            return -1;
        }
    }
    dump_log_tail(p, "did not listen in time");
    th_stop(p, SIGKILL, 1000);
    return -1;
}

/* ---- redis ------------------------------------------------------------------------------ */

int th_redis_start(th_proc_t *p) {
    /* A free port can be taken between the check and the bind: try a few. */
    for (int attempt = 0; attempt < 3; attempt++) {
        int port = th_free_port();
        if (port < 0 || proc_prepare(p, "redis") != 0) {
            return -1;
        }
        char portstr[16];
        snprintf(portstr, sizeof(portstr), "%d", port);
        const char *argv[] = {
            "redis-server", "--port", portstr, "--bind", "127.0.0.1",   "--save", "",
            "--appendonly", "no",     "--dir", p->dir,   "--daemonize", "no",     NULL};
        if (spawn_prepared(p, argv, NULL) != 0) {
            remove_dir(p->dir);
            return -1;
        }
        p->port = port;
        if (wait_started(p, port, TH_START_TIMEOUT_MS) == 0) {
            return 0;
        }
    }
    return -1;
}

/* Append reply as text to out at *pos, keeping out NUL-terminated and within outlen. */
static void reply_text(const redisReply *rep, char *out, size_t outlen, size_t *pos) {
    char tmp[32];
    const char *s = NULL;
    size_t slen = 0;
    const char *prefix = "";
    switch (rep->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
        s = rep->str;
        slen = rep->len;
        break;
    case REDIS_REPLY_ERROR:
        s = rep->str;
        slen = rep->len;
        /* Redis names most errors "ERR ..."; others ("WRONGTYPE ...") get the prefix so a test
         * can recognise every error the same way. */
        if (slen < 3 || strncmp(s, "ERR", 3) != 0) {
            prefix = "ERR ";
        }
        break;
    case REDIS_REPLY_INTEGER:
        slen = (size_t)snprintf(tmp, sizeof(tmp), "%lld", rep->integer);
        s = tmp;
        break;
    case REDIS_REPLY_NIL:
        s = "(nil)";
        slen = 5;
        break;
    case REDIS_REPLY_ARRAY:
        for (size_t i = 0; i < rep->elements; i++) {
            if (i > 0 && *pos + 1 < outlen) {
                out[(*pos)++] = '\n';
                out[*pos] = '\0';
            }
            reply_text(rep->element[i], out, outlen, pos);
        }
        return;
    default:
        s = "(unknown)";
        slen = 9;
        break;
    }
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < plen + slen && *pos + 1 < outlen; i++) {
        out[(*pos)++] = i < plen ? prefix[i] : s[i - plen];
    }
    out[*pos] = '\0';
}

int th_redis(int port, char *out, size_t outlen, const char *fmt, ...) {
    if (outlen > 0) {
        out[0] = '\0';
    }
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c == NULL) {
        return -1;
    }
    if (c->err) {
        redisFree(c);
        return -1;
    }
    redisSetTimeout(c, tv);
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (rep == NULL) {
        redisFree(c);
        return -1;
    }
    size_t pos = 0;
    if (outlen > 0) {
        reply_text(rep, out, outlen, &pos);
    }
    freeReplyObject(rep);
    redisFree(c);
    return 0;
}

/* ---- fake Stripe and rivetd ------------------------------------------------------------- */

int th_fake_stripe_start(th_proc_t *p, const char *const args[]) {
    const char *python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    size_t nargs = 0;
    while (args != NULL && args[nargs] != NULL) {
        nargs++;
    }
    const char **argv = calloc(nargs + 5, sizeof(*argv));
    if (argv == NULL) {
        return -1;
    }
    for (int attempt = 0; attempt < 3; attempt++) {
        int port = th_free_port();
        if (port < 0 || proc_prepare(p, "fake-stripe") != 0) {
            break;
        }
        char portstr[16];
        snprintf(portstr, sizeof(portstr), "%d", port);
        size_t k = 0;
        argv[k++] = python;
        argv[k++] = "test/fake_stripe.py";
        argv[k++] = "--port";
        argv[k++] = portstr;
        for (size_t i = 0; i < nargs; i++) {
            argv[k++] = args[i];
        }
        argv[k] = NULL;
        /* Unbuffered output so the log is complete when a test reads or dumps it. */
        const char *env[] = {"PYTHONUNBUFFERED=1", NULL};
        if (spawn_prepared(p, argv, env) != 0) {
            remove_dir(p->dir);
            break;
        }
        p->port = port;
        if (wait_started(p, port, TH_START_TIMEOUT_MS) == 0) {
            free(argv);
            return 0;
        }
    }
    free(argv);
    return -1;
}

/* The port of the last "KEY=host:port" entry for key in env, -1 when it has none or an empty
 * value, or 0 when env does not set key. */
static int env_port(const char *const env[], size_t n, const char *key) {
    size_t kl = strlen(key);
    int port = 0;
    for (size_t i = 0; i < n; i++) {
        if (strncmp(env[i], key, kl) != 0 || env[i][kl] != '=') {
            continue;
        }
        const char *colon = strrchr(env[i] + kl + 1, ':');
        port = colon != NULL ? atoi(colon + 1) : -1;
        if (port <= 0 || port > 65535) {
            port = -1;
        }
    }
    return port;
}

int th_rivetd_start(th_proc_t *p, const char *const env[]) {
    char bin[512];
    snprintf(bin, sizeof(bin), "%s/rivetd", th_build_dir());
    size_t nenv = 0;
    while (env != NULL && env[nenv] != NULL) {
        nenv++;
    }
    enum { NDEFAULTS = 12 };
    const char **all = calloc(NDEFAULTS + nenv + 1, sizeof(*all));
    if (all == NULL) {
        return -1;
    }
    for (int attempt = 0; attempt < 3; attempt++) {
        char listen[64], admin[64];
        int port = th_free_port();
        int port2 = th_free_port();
        if (port < 0 || port2 < 0 || proc_prepare(p, "rivetd") != 0) {
            break;
        }
        snprintf(listen, sizeof(listen), "LISTEN=127.0.0.1:%d", port);
        snprintf(admin, sizeof(admin), "ADMIN_LISTEN=127.0.0.1:%d", port2);
        size_t k = 0;
        all[k++] = listen;
        all[k++] = admin;
        all[k++] = "STRIPE_SECRET_KEY=" TH_STRIPE_KEY;
        all[k++] = "STRIPE_WEBHOOK_SECRET=" TH_WEBHOOK_SECRET;
        all[k++] = "STRIPE_PRICE_BASIC=" TH_PRICE_BASIC;
        all[k++] = "STRIPE_PRICE_PRO=" TH_PRICE_PRO;
        all[k++] = "STRIPE_PRICE_ENTERPRISE=" TH_PRICE_ENTERPRISE;
        all[k++] = "RIVET_API_TOKEN=" TH_API_TOKEN;
        all[k++] = "REDIS_URL=redis://127.0.0.1:1/0";
        all[k++] = "STRIPE_API_BASE=http://127.0.0.1:1";
        all[k++] = "LOG_LEVEL=debug";
        for (size_t i = 0; i < nenv; i++) {
            all[k++] = env[i];
        }
        all[k] = NULL;
        int p1 = env_port(env, nenv, "LISTEN");
        int p2 = env_port(env, nenv, "ADMIN_LISTEN");
        if (p1 > 0) {
            port = p1;
        }
        if (p2 != 0) {
            port2 = p2 > 0 ? p2 : 0;
        }
        const char *argv[] = {bin, NULL};
        if (spawn_prepared(p, argv, all) != 0) {
            remove_dir(p->dir);
            break;
        }
        p->port = port;
        p->port2 = port2;
        if (wait_started(p, port, TH_START_TIMEOUT_MS) == 0) {
            free(all);
            return 0;
        }
        /* A port chosen by the caller will not get better by trying again. */
        if (p1 > 0) {
            break;
        }
    }
    free(all);
    return -1;
}

/* ---- sockets ---------------------------------------------------------------------------- */

int th_connect(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int th_send(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int th_send_str(int fd, const char *s) { return th_send(fd, s, strlen(s)); }

/* Bytes read past the end of a response, kept per descriptor for the next response. */
typedef struct {
    char *data;
    size_t len;
} pending_t;

static pending_t *pending;
static size_t npending;

static pending_t *pending_for(int fd) {
    if (fd < 0) {
        return NULL;
    }
    if ((size_t)fd >= npending) {
        size_t n = npending == 0 ? 64 : npending;
        while (n <= (size_t)fd) {
            n *= 2;
        }
        pending_t *np = realloc(pending, n * sizeof(*np));
        if (np == NULL) {
            return NULL;
        }
        memset(np + npending, 0, (n - npending) * sizeof(*np));
        pending = np;
        npending = n;
    }
    return &pending[fd];
}

void th_close(int fd) {
    if (fd < 0) {
        return;
    }
    if ((size_t)fd < npending) {
        free(pending[fd].data);
        pending[fd].data = NULL;
        pending[fd].len = 0;
    }
    close(fd);
}

/* A read buffer bounded by the header and body limits. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} rbuf_t;

#define TH_MAX_BUFFER (TH_MAX_HEADER_BYTES + TH_MAX_BODY_BYTES + 64 * 1024)

/* Read more bytes into b, waiting until deadline. Returns the count, 0 on EOF, -1 on timeout,
 * error or when the buffer would exceed its bound. */
static ssize_t fill(int fd, rbuf_t *b, int64_t deadline) {
    if (b->cap - b->len < 16384) {
        size_t ncap = b->cap < 16384 ? 32768 : b->cap * 2;
        if (ncap > TH_MAX_BUFFER) {
            ncap = TH_MAX_BUFFER;
        }
        if (ncap <= b->len + 1) {
            return -1;
        }
        char *nd = realloc(b->data, ncap);
        if (nd == NULL) {
            return -1;
        }
        b->data = nd;
        b->cap = ncap;
    }
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            return -1;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (rc == 0) {
            return -1;
        }
        ssize_t n = recv(fd, b->data + b->len, b->cap - b->len - 1, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) {
                continue;
            }
            return errno == ECONNRESET ? 0 : -1;
        }
        b->len += (size_t)n;
        return n;
    }
}

static const char *find_crlf(const char *s, size_t len) {
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] == '\r' && s[i + 1] == '\n') {
            return s + i;
        }
    }
    return NULL;
}

static const char *find_header_end(const char *s, size_t len) {
    for (size_t i = 0; i + 3 < len; i++) {
        if (memcmp(s + i, "\r\n\r\n", 4) == 0) {
            return s + i + 4;
        }
    }
    return NULL;
}

/* Parse the status line and headers in [s, end) into r. Returns 0 or -1. */
static int parse_head(const char *s, const char *end, th_response_t *r) {
    const char *eol = find_crlf(s, (size_t)(end - s));
    if (eol == NULL || eol - s < 12 || strncmp(s, "HTTP/1.", 7) != 0 || s[8] != ' ') {
        return -1;
    }
    if (!isdigit((unsigned char)s[9]) || !isdigit((unsigned char)s[10]) ||
        !isdigit((unsigned char)s[11])) {
        return -1;
    }
    r->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    r->nheaders = 0;
    const char *line = eol + 2;
    while (line < end) {
        eol = find_crlf(line, (size_t)(end - line));
        if (eol == NULL) {
            return -1;
        }
        if (eol == line) {
            break;
        }
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon == NULL || colon == line) {
            return -1;
        }
        if (r->nheaders < (int)(sizeof(r->headers) / sizeof(r->headers[0]))) {
            th_header_t *h = &r->headers[r->nheaders++];
            size_t nl = (size_t)(colon - line);
            if (nl >= sizeof(h->name)) {
                nl = sizeof(h->name) - 1;
            }
            memcpy(h->name, line, nl);
            h->name[nl] = '\0';
            const char *v = colon + 1;
            const char *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) {
                v++;
            }
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) {
                ve--;
            }
            size_t vl = (size_t)(ve - v);
            if (vl >= sizeof(h->value)) {
                vl = sizeof(h->value) - 1;
            }
            memcpy(h->value, v, vl);
            h->value[vl] = '\0';
        }
        line = eol + 2;
    }
    return 0;
}

const char *th_header(const th_response_t *r, const char *name) {
    for (int i = 0; i < r->nheaders; i++) {
        if (strcasecmp(r->headers[i].name, name) == 0) {
            return r->headers[i].value;
        }
    }
    return NULL;
}

void th_response_free(th_response_t *r) {
    free(r->body);
    r->body = NULL;
    r->body_len = 0;
}

/* Whether a comma-separated header value lists token (case-insensitive). */
static int header_has_token(const char *value, const char *token) {
    size_t tl = strlen(token);
    const char *p = value;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',') {
            p++;
        }
        const char *e = p;
        while (*e != '\0' && *e != ',') {
            e++;
        }
        const char *te = e;
        while (te > p && te[-1] == ' ') {
            te--;
        }
        if ((size_t)(te - p) == tl && strncasecmp(p, token, tl) == 0) {
            return 1;
        }
        p = e;
    }
    return 0;
}

/* Decode a chunked body starting at b->data + *pos, reading more as needed. On success the body
 * is in *out (malloc'd) and *pos is just past the trailers. */
static int read_chunked(int fd, rbuf_t *b, size_t *pos, int64_t deadline, char **out,
                        size_t *outlen) {
    size_t blen = 0, bcap = 256;
    char *body = malloc(bcap);
    if (body == NULL) {
        return -1;
    }
    for (;;) {
        const char *eol;
        while ((eol = find_crlf(b->data + *pos, b->len - *pos)) == NULL) {
            if (b->len - *pos > TH_MAX_CHUNK_LINE || fill(fd, b, deadline) <= 0) {
                goto fail;
            }
        }
        char *endp;
        errno = 0;
        unsigned long long size = strtoull(b->data + *pos, &endp, 16);
        if (endp == b->data + *pos || errno != 0 || (*endp != '\r' && *endp != ';')) {
            goto fail;
        }
        *pos = (size_t)(eol - b->data) + 2;
        if (size == 0) {
            break;
        }
        if (size > TH_MAX_BODY_BYTES || blen + size > TH_MAX_BODY_BYTES) {
            goto fail;
        }
        while (b->len - *pos < size + 2) {
            if (fill(fd, b, deadline) <= 0) {
                goto fail;
            }
        }
        if (memcmp(b->data + *pos + size, "\r\n", 2) != 0) {
            goto fail;
        }
        if (blen + size + 1 > bcap) {
            while (bcap < blen + size + 1) {
                bcap *= 2;
            }
            char *nb = realloc(body, bcap);
            if (nb == NULL) {
                goto fail;
            }
            body = nb;
        }
        memcpy(body + blen, b->data + *pos, size);
        blen += size;
        *pos += size + 2;
        /* Drop consumed bytes so a long chunked body does not hit the buffer bound twice. */
        memmove(b->data, b->data + *pos, b->len - *pos);
        b->len -= *pos;
        *pos = 0;
    }
    /* Trailers: header lines up to an empty line. */
    for (;;) {
        const char *eol;
        while ((eol = find_crlf(b->data + *pos, b->len - *pos)) == NULL) {
            if (b->len - *pos > TH_MAX_HEADER_BYTES || fill(fd, b, deadline) <= 0) {
                goto fail;
            }
        }
        size_t ll = (size_t)(eol - (b->data + *pos));
        *pos += ll + 2;
        if (ll == 0) {
            break;
        }
    }
    body[blen] = '\0';
    *out = body;
    *outlen = blen;
    return 0;
fail:
    free(body);
    return -1;
}

int th_read_response(int fd, th_response_t *r, int head, int timeout_ms) {
    memset(r, 0, sizeof(*r));
    pending_t *pend = pending_for(fd);
    if (pend == NULL) {
        return -1;
    }
    int64_t deadline = now_ms() + timeout_ms;
    rbuf_t b = {pend->data, pend->len, pend->len};
    pend->data = NULL;
    pend->len = 0;
    int timed_out = 0;
    for (;;) {
        /* Headers. */
        const char *hend;
        while ((hend = find_header_end(b.data != NULL ? b.data : "", b.len)) == NULL) {
            if (b.len > TH_MAX_HEADER_BYTES) {
                goto fail;
            }
            ssize_t n = fill(fd, &b, deadline);
            if (n <= 0) {
                timed_out = n < 0;
                goto fail;
            }
        }
        if (parse_head(b.data, hend, r) != 0) {
            goto fail;
        }
        size_t pos = (size_t)(hend - b.data);
        /* Interim answers (100 Continue) precede the real one. */
        if (r->status >= 100 && r->status < 200 && r->status != 101) {
            memmove(b.data, b.data + pos, b.len - pos);
            b.len -= pos;
            continue;
        }
        const char *te = th_header(r, "Transfer-Encoding");
        const char *cl = th_header(r, "Content-Length");
        int no_body =
            head || r->status == 204 || r->status == 304 || (r->status >= 100 && r->status < 200);
        if (no_body) {
            r->body = calloc(1, 1);
            if (r->body == NULL) {
                goto fail;
            }
        } else if (te != NULL && header_has_token(te, "chunked")) {
            ssize_t rc = read_chunked(fd, &b, &pos, deadline, &r->body, &r->body_len);
            if (rc != 0) {
                timed_out = now_ms() >= deadline;
                goto fail;
            }
        } else if (cl != NULL) {
            char *endp;
            errno = 0;
            unsigned long long len = strtoull(cl, &endp, 10);
            if (endp == cl || *endp != '\0' || errno != 0 || len > TH_MAX_BODY_BYTES) {
                goto fail;
            }
            while (b.len - pos < len) {
                ssize_t n = fill(fd, &b, deadline);
                if (n <= 0) {
                    timed_out = n < 0;
                    goto fail;
                }
            }
            r->body = malloc((size_t)len + 1);
            if (r->body == NULL) {
                goto fail;
            }
            memcpy(r->body, b.data + pos, (size_t)len);
            r->body[len] = '\0';
            r->body_len = (size_t)len;
            pos += (size_t)len;
        } else {
            /* No length: the body runs to the end of the connection. */
            ssize_t n;
            while ((n = fill(fd, &b, deadline)) > 0) {
                if (b.len - pos > TH_MAX_BODY_BYTES) {
                    goto fail;
                }
            }
            if (n < 0) {
                timed_out = 1;
                goto fail;
            }
            size_t len = b.len - pos;
            r->body = malloc(len + 1);
            if (r->body == NULL) {
                goto fail;
            }
            memcpy(r->body, b.data + pos, len);
            r->body[len] = '\0';
            r->body_len = len;
            pos = b.len;
        }
        if (pos < b.len) {
            memmove(b.data, b.data + pos, b.len - pos);
            pend->data = b.data;
            pend->len = b.len - pos;
        } else {
            free(b.data);
        }
        return 0;
    }
fail:
    th_response_free(r);
    /* After a timeout the bytes so far still belong to a response that may yet complete. */
    if (timed_out && b.len > 0) {
        pend->data = b.data;
        pend->len = b.len;
    } else {
        free(b.data);
    }
    r->status = 0;
    r->nheaders = 0;
    return -1;
}

int th_request(int port, const char *method, const char *path, const char *headers,
               const char *body, th_response_t *r) {
    memset(r, 0, sizeof(*r));
    int fd = th_connect(port);
    if (fd < 0) {
        return -1;
    }
    size_t blen = body != NULL ? strlen(body) : 0;
    char cl[64] = "";
    if (body != NULL) {
        snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", blen);
    }
    const char *h = headers != NULL ? headers : "";
    size_t need = strlen(method) + strlen(path) + strlen(h) + strlen(cl) + 128;
    char *head = malloc(need);
    if (head == NULL) {
        th_close(fd);
        return -1;
    }
    int n = snprintf(head, need,
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s%sConnection: close\r\n\r\n",
                     method, path, port, h, cl);
    /* A server may answer and close before taking the whole body (413): read the answer
     * anyway. */
    if (n > 0 && th_send(fd, head, (size_t)n) == 0 && blen > 0) {
        th_send(fd, body, blen);
    }
    free(head);
    int rc = th_read_response(fd, r, strcmp(method, "HEAD") == 0, TH_REQUEST_TIMEOUT_MS);
    th_close(fd);
    return rc;
}

int th_wait_closed(int fd, int timeout_ms) {
    int64_t deadline = now_ms() + timeout_ms;
    char buf[4096];
    for (;;) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            return 0;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0) {
            if (errno == EINTR) {
                continue;
            }
            return 0;
        }
        if (rc == 0) {
            return 0;
        }
        ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0) {
            return 1;
        }
        if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            return 1;
        }
    }
}

int th_eventually(int (*fn)(void *ud), void *ud, int timeout_ms) {
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (fn(ud) == 1) {
            return 1;
        }
        if (now_ms() >= deadline) {
            return 0;
        }
        sleep_ms(10);
    }
}
