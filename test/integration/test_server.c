/* Integration tests of the daemon's foundation over real sockets: the basic routes, HTTP/1.1
 * framing (keep-alive, pipelining, HEAD), request ids, every limit and timeout, connection
 * accounting, memory under a client that does not read, the orderly stop on SIGTERM, and the
 * command line. Every wait is bounded by a deadline. */
#include <arpa/inet.h>
#include <errno.h>
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
#include <strings.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "harness.h"
#include "rivet/common.h"

#define TO          5000 /* ms: the longest any single answer may take */
#define HEALTH_BODY "{\"status\":\"healthy\",\"service\":\"rivet-api\"}"
#define GET_HEALTH  "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"

/* The shared daemon: small header and body limits, default timeouts. */
static th_proc_t shared;
static const char *const shared_env[] = {"MAX_HEADER_BYTES=4096", "MAX_BODY_BYTES=2048", NULL};

/* ---- helpers -------------------------------------------------------------------------------- */

/* Daemons a test starts for itself live here, so that the per-test teardown can stop what a
 * failed test left running. */
static th_proc_t procs[4];

static th_proc_t *proc_slot(void) {
    th_proc_t *p = th_free_slot(procs, RV_ARRAY_LEN(procs));
    if (p == NULL) fail_msg("no free process slot");
    return p;
}

static void start(th_proc_t *p, const char *const env[]) {
    if (th_rivetd_start(p, env) != 0) fail_msg("rivetd did not start");
}

/* Stop with SIGTERM and require a clean exit (status 0; a sanitizer report makes it non-zero). */
static void stop_clean(th_proc_t *p) {
    int st = th_stop(p, SIGTERM, 5000);
    if (st != 0) fail_msg("rivetd exited with status %d", st);
}

static int xconnect(int port) {
    int fd = th_connect(port);
    if (fd < 0) fail_msg("cannot connect to port %d: %s", port, strerror(errno));
    return fd;
}

static void xsend(int fd, const char *s) {
    if (th_send_str(fd, s) != 0) fail_msg("send failed: %s", strerror(errno));
}

/* Read one answer on fd; fail the test when none arrives. */
static void xread(int fd, th_response_t *r, int head) {
    if (th_read_response(fd, r, head, TO) != 0) fail_msg("no complete answer within %d ms", TO);
}

static void roundtrip(int fd, const char *req, th_response_t *r) {
    xsend(fd, req);
    xread(fd, r, 0);
}

static void assert_status(const th_response_t *r, int status) {
    if (r->status != status)
        fail_msg("status %d, expected %d; body: %s", r->status, status, r->body ? r->body : "");
}

static void assert_health(const th_response_t *r) {
    assert_status(r, 200);
    assert_int_equal(r->body_len, strlen(HEALTH_BODY));
    assert_string_equal(r->body, HEALTH_BODY);
}

/* The answer is status with a JSON body {"detail": "<non-empty string>"}. */
static void assert_json_detail(const th_response_t *r, int status) {
    assert_status(r, status);
    const char *ct = th_header(r, "Content-Type");
    if (ct == NULL || strncasecmp(ct, "application/json", 16) != 0)
        fail_msg("Content-Type %s, expected application/json", ct ? ct : "(none)");
    cJSON *j = cJSON_ParseWithLength(r->body, r->body_len);
    if (j == NULL) fail_msg("body is not JSON: %s", r->body);
    cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "detail");
    if (!cJSON_IsString(d) || d->valuestring[0] == '\0') fail_msg("no detail in %s", r->body);
    cJSON_Delete(j);
}

static int has_close(const th_response_t *r) {
    const char *c = th_header(r, "Connection");
    return c != NULL && strcasecmp(c, "close") == 0;
}

/* The peer closes within timeout_ms. */
static void assert_closes(int fd) {
    if (th_wait_closed(fd, 3000) != 1) fail_msg("the server did not close the connection");
}

/* Read raw bytes until the peer closes or the deadline; *closed tells which. */
static size_t read_until_close(int fd, char *buf, size_t cap, int timeout_ms, int *closed) {
    int64_t deadline = th_now_ms() + timeout_ms;
    size_t len = 0;
    *closed = 0;
    for (;;) {
        int64_t left = deadline - th_now_ms();
        if (left <= 0) break;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)left);
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) break;
        ssize_t n = recv(fd, buf + len, cap - len - 1, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {
            *closed = 1;
            break;
        }
        len += (size_t)n;
        if (len + 1 >= cap) break;
    }
    buf[len] = '\0';
    return len;
}

static int request_id_sane(const char *id) {
    size_t n = strlen(id);
    if (n == 0 || n > 64) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == ':'))
            return 0;
    }
    return 1;
}

static const char *xrid(const th_response_t *r) {
    const char *id = th_header(r, "X-Request-Id");
    if (id == NULL) fail_msg("answer has no X-Request-Id");
    if (!request_id_sane(id)) fail_msg("X-Request-Id \"%s\" is not a plain token", id);
    return id;
}

/* VmRSS of pid in KiB, or -1. */
static long vmrss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

/* 1 when pid runs with AddressSanitizer (its runtime is mapped). */
static int sanitized(pid_t pid) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) found = strstr(line, "libasan") != NULL;
    fclose(f);
    return found;
}

static int not_alive(void *ud) { return !th_alive(ud); }

/* Wait for p to exit on its own; returns its exit status (th_stop sends no signal: 0). */
static int wait_exit(th_proc_t *p, int timeout_ms) {
    th_eventually(not_alive, p, timeout_ms);
    return th_stop(p, 0, 1);
}

static int connect_refused(void *ud) {
    int port = *(int *)ud;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    close(fd);
    return rc != 0 && err == ECONNREFUSED;
}

/* Run build/rivetd with args and env to completion; its output (stdout and stderr) goes to out.
 * Returns the exit status. */
static int run_rivetd(const char *const args[], const char *const env[], char *out, size_t outlen) {
    char bin[512];
    snprintf(bin, sizeof bin, "%s/rivetd", th_build_dir());
    const char *argv[8] = {bin};
    size_t n = 1;
    for (size_t i = 0; args && args[i] && n < 7; i++) argv[n++] = args[i];
    argv[n] = NULL;
    th_proc_t p;
    if (th_spawn(&p, argv, env) != 0) fail_msg("cannot start %s", bin);
    if (!th_eventually(not_alive, &p, 5000)) {
        th_stop(&p, SIGKILL, 1000);
        fail_msg("rivetd %s did not exit", args && args[0] ? args[0] : "");
    }
    out[0] = '\0';
    FILE *f = fopen(p.log_path, "r");
    if (f) {
        size_t len = fread(out, 1, outlen - 1, f);
        out[len] = '\0';
        fclose(f);
    }
    /* Reap it here, so that an expected failure status does not make th_stop print the log. */
    int status = 0;
    pid_t w = waitpid(p.pid, &status, 0);
    p.pid = 0;
    th_stop(&p, 0, 1); /* removes its directory */
    if (w <= 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- basic routes --------------------------------------------------------------------------- */

static void test_health(void **state) {
    int fd = xconnect(shared.port);
    th_response_t r;
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    const char *ct = th_header(&r, "Content-Type");
    assert_non_null(ct);
    assert_string_equal(ct, "application/json");
    const char *cl = th_header(&r, "Content-Length");
    assert_non_null(cl);
    assert_int_equal(strtoul(cl, NULL, 10), strlen(HEALTH_BODY));
    /* An IMF-fixdate close to now. */
    const char *date = th_header(&r, "Date");
    assert_non_null(date);
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    if (end == NULL || *end != '\0') fail_msg("Date \"%s\" is not an IMF-fixdate", date);
    long skew = (long)(timegm(&tm) - time(NULL));
    if (skew < -10 || skew > 10) fail_msg("Date \"%s\" is %ld s away from now", date, skew);
    xrid(&r);
    /* HTTP/1.1 keeps the connection. */
    assert_false(has_close(&r));
    th_response_free(&r);
    th_close(fd);
}

static void test_root(void **state) {
    int fd = xconnect(shared.port);
    th_response_t r;
    roundtrip(fd, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_status(&r, 200);
    assert_string_equal(th_header(&r, "Content-Type"), "application/json");
    cJSON *j = cJSON_ParseWithLength(r.body, r.body_len);
    if (j == NULL) fail_msg("not JSON: %s", r.body);
    cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "service");
    cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "version");
    cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "docs");
    assert_true(cJSON_IsString(s) && cJSON_IsString(v) && cJSON_IsString(d));
    assert_string_equal(s->valuestring, "Rivet API");
    assert_string_equal(v->valuestring, RV_VERSION);
    assert_string_equal(d->valuestring, "/docs");
    cJSON_Delete(j);
    th_response_free(&r);
    th_close(fd);
}

static void test_ready_without_redis(void **state) {
    /* The harness points REDIS_URL at a port where nothing listens. */
    th_response_t r;
    assert_int_equal(th_request(shared.port, "GET", "/ready", NULL, NULL, &r), 0);
    assert_json_detail(&r, 503);
    th_response_free(&r);
    /* The admin listener says the same, and answers liveness. */
    assert_true(shared.port2 > 0);
    assert_int_equal(th_request(shared.port2, "GET", "/ready", NULL, NULL, &r), 0);
    assert_json_detail(&r, 503);
    th_response_free(&r);
    assert_int_equal(th_request(shared.port2, "GET", "/health", NULL, NULL, &r), 0);
    assert_health(&r);
    th_response_free(&r);
}

static void test_head(void **state) {
    int fd = xconnect(shared.port);
    th_response_t r;
    xsend(fd, "HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n");
    xread(fd, &r, 1);
    assert_status(&r, 200);
    const char *cl = th_header(&r, "Content-Length");
    assert_non_null(cl);
    /* The length of the GET body, though no body follows. */
    assert_int_equal(strtoul(cl, NULL, 10), strlen(HEALTH_BODY));
    assert_string_equal(th_header(&r, "Content-Type"), "application/json");
    xrid(&r);
    th_response_free(&r);
    /* Were a body sent after the HEAD answer, this answer would not parse. */
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    th_response_free(&r);
    th_close(fd);
}

static void test_keep_alive(void **state) {
    int fd = xconnect(shared.port);
    const char *reqs[] = {GET_HEALTH, "GET / HTTP/1.1\r\nHost: t\r\n\r\n", GET_HEALTH};
    char ids[3][80];
    for (int i = 0; i < 3; i++) {
        th_response_t r;
        roundtrip(fd, reqs[i], &r);
        assert_status(&r, 200);
        assert_false(has_close(&r));
        snprintf(ids[i], sizeof ids[i], "%s", xrid(&r));
        if (i != 1) assert_health(&r);
        th_response_free(&r);
    }
    assert_string_not_equal(ids[0], ids[1]);
    assert_string_not_equal(ids[1], ids[2]);
    assert_string_not_equal(ids[0], ids[2]);
    th_close(fd);
}

#define PIPELINE                                                                                   \
    "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: pipe-1\r\n\r\n"                              \
    "GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: pipe-2\r\n\r\n"                                    \
    "GET /nope HTTP/1.1\r\nHost: t\r\nX-Request-Id: pipe-3\r\n\r\n"

static void check_pipeline_answers(int fd) {
    static const int status[] = {200, 200, 404};
    static const char *const ids[] = {"pipe-1", "pipe-2", "pipe-3"};
    for (int i = 0; i < 3; i++) {
        th_response_t r;
        xread(fd, &r, 0);
        assert_status(&r, status[i]);
        assert_string_equal(xrid(&r), ids[i]);
        if (i == 0) assert_health(&r);
        if (i == 1) assert_non_null(strstr(r.body, "\"Rivet API\""));
        if (i == 2) assert_json_detail(&r, 404);
        th_response_free(&r);
    }
    /* And the connection is still good for more. */
    th_response_t r;
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    th_response_free(&r);
}

static void test_pipelining(void **state) {
    int fd = xconnect(shared.port);
    xsend(fd, PIPELINE);
    check_pipeline_answers(fd);
    th_close(fd);

    /* Without ids from the client, each answer gets its own. */
    fd = xconnect(shared.port);
    xsend(fd, GET_HEALTH GET_HEALTH GET_HEALTH);
    char ids[3][80];
    for (int i = 0; i < 3; i++) {
        th_response_t r;
        xread(fd, &r, 0);
        assert_health(&r);
        snprintf(ids[i], sizeof ids[i], "%s", xrid(&r));
        th_response_free(&r);
    }
    assert_string_not_equal(ids[0], ids[1]);
    assert_string_not_equal(ids[1], ids[2]);
    assert_string_not_equal(ids[0], ids[2]);
    th_close(fd);
}

static void test_pipelining_byte_at_a_time(void **state) {
    int fd = xconnect(shared.port);
    const char *p = PIPELINE;
    for (size_t i = 0; p[i]; i++)
        if (th_send(fd, p + i, 1) != 0) fail_msg("send failed at byte %zu", i);
    check_pipeline_answers(fd);
    th_close(fd);
}

static void test_request_id(void **state) {
    int fd = xconnect(shared.port);
    static const char *const sane[] = {"abc-123_DEF.4:5", "3f2b8c1e-9d4a-4e7b-a1c2-0f9e8d7c6b5a"};
    for (size_t i = 0; i < RV_ARRAY_LEN(sane); i++) {
        char req[256];
        snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: %s\r\n\r\n",
                 sane[i]);
        th_response_t r;
        roundtrip(fd, req, &r);
        assert_health(&r);
        assert_string_equal(xrid(&r), sane[i]);
        th_response_free(&r);
    }
    char longid[201];
    memset(longid, 'a', 200);
    longid[200] = '\0';
    const char *const insane[] = {longid, "two words", "semi;colon", "quote\"d", "<script>"};
    for (size_t i = 0; i < RV_ARRAY_LEN(insane); i++) {
        char req[512];
        snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: %s\r\n\r\n",
                 insane[i]);
        th_response_t r;
        roundtrip(fd, req, &r);
        assert_health(&r);
        const char *id = xrid(&r); /* replaced by a plain one */
        if (strstr(id, insane[i]) != NULL || strstr(insane[i], id) != NULL)
            fail_msg("request id \"%s\" was echoed as \"%s\"", insane[i], id);
        th_response_free(&r);
    }
    th_close(fd);
}

static void test_not_found(void **state) {
    static const char *const paths[] = {"/nope", "/healthz", "/health/", "/heal", "/HEALTH"};
    int fd = xconnect(shared.port);
    for (size_t i = 0; i < RV_ARRAY_LEN(paths); i++) {
        char req[128];
        snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", paths[i]);
        th_response_t r;
        roundtrip(fd, req, &r);
        if (r.status != 404) fail_msg("%s: status %d, expected 404", paths[i], r.status);
        assert_json_detail(&r, 404);
        xrid(&r);
        assert_false(has_close(&r));
        th_response_free(&r);
    }
    /* The query is not part of the path. */
    th_response_t r;
    roundtrip(fd, "GET /health?x=1&y=%20 HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_health(&r);
    th_response_free(&r);
    th_close(fd);
}

/* The methods an Allow value lists, checked against want (each exactly once). */
static void assert_allow(const th_response_t *r, const char *const *want, size_t n) {
    const char *allow = th_header(r, "Allow");
    if (allow == NULL) fail_msg("405 without Allow");
    char copy[256];
    snprintf(copy, sizeof copy, "%s", allow);
    int seen[8] = {0};
    size_t count = 0;
    for (char *save = NULL, *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        size_t i;
        for (i = 0; i < n && strcmp(t, want[i]) != 0; i++) {
        }
        if (i == n || seen[i]++) fail_msg("Allow \"%s\": unexpected or repeated %s", allow, t);
        count++;
    }
    if (count != n) fail_msg("Allow \"%s\" lists %zu methods, expected %zu", allow, count, n);
}

static void test_method_not_allowed(void **state) {
    static const char *const get_head[] = {"GET", "HEAD"};
    int fd = xconnect(shared.port);
    th_response_t r;
    roundtrip(fd, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", &r);
    assert_json_detail(&r, 405);
    assert_allow(&r, get_head, 2);
    xrid(&r);
    th_response_free(&r);
    roundtrip(fd, "DELETE / HTTP/1.1\r\nHost: t\r\n\r\n", &r);
    assert_json_detail(&r, 405);
    assert_allow(&r, get_head, 2);
    th_response_free(&r);
    /* A 405 does not end the connection. */
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    th_response_free(&r);
    th_close(fd);
}

/* ---- limits --------------------------------------------------------------------------------- */

/* A GET of a path of n bytes ("/aaaa..."). */
static char *long_url_request(size_t n) {
    char *req = malloc(n + 64);
    assert_non_null(req);
    memcpy(req, "GET /", 5);
    memset(req + 5, 'a', n - 1);
    strcpy(req + 4 + n, " HTTP/1.1\r\nHost: t\r\n\r\n");
    return req;
}

static void test_url_too_long_small_header_limit(void **state) {
    int fd = xconnect(shared.port);
    char *req = long_url_request(9000);
    xsend(fd, req);
    free(req);
    th_response_t r;
    xread(fd, &r, 0);
    assert_json_detail(&r, 414);
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
}

static void test_headers_too_large(void **state) {
    /* Many ordinary headers below MAX_HEADER_BYTES (4096) are fine. */
    char req[8192];
    size_t k = (size_t)snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 40; i++)
        k += (size_t)snprintf(req + k, sizeof req - k, "X-Filler-%02d: %060d\r\n", i, i);
    snprintf(req + k, sizeof req - k, "\r\n");
    assert_true(strlen(req) > 3000 && strlen(req) < 4000);
    int fd = xconnect(shared.port);
    th_response_t r;
    roundtrip(fd, req, &r);
    assert_health(&r);
    th_response_free(&r);
    th_close(fd);

    /* One header of 5000 bytes is not. */
    k = (size_t)snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + k, 'b', 5000);
    k += 5000;
    snprintf(req + k, sizeof req - k, "\r\n\r\n");
    fd = xconnect(shared.port);
    xsend(fd, req);
    xread(fd, &r, 0);
    assert_json_detail(&r, 431);
    assert_true(has_close(&r));
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);

    /* Many headers that add up past the limit. */
    k = (size_t)snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 80; i++)
        k += (size_t)snprintf(req + k, sizeof req - k, "X-Filler-%02d: %060d\r\n", i, i);
    snprintf(req + k, sizeof req - k, "\r\n");
    fd = xconnect(shared.port);
    xsend(fd, req);
    xread(fd, &r, 0);
    assert_json_detail(&r, 431);
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
}

static void test_body_too_large_content_length(void **state) {
    int fd = xconnect(shared.port);
    /* Only the head is sent: the answer must come before the body. */
    xsend(fd, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n");
    th_response_t r;
    xread(fd, &r, 0);
    assert_json_detail(&r, 413);
    assert_true(has_close(&r));
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
}

static void send_chunk(int fd, size_t n, char c) {
    char buf[4096];
    assert_true(n + 16 < sizeof buf);
    int k = snprintf(buf, sizeof buf, "%zx\r\n", n);
    memset(buf + k, c, n);
    memcpy(buf + k + n, "\r\n", 2);
    /* The server may already have answered and stopped reading: ignore send errors. */
    th_send(fd, buf, (size_t)k + n + 2);
}

static void test_chunked_over_limit(void **state) {
    int fd = xconnect(shared.port);
    xsend(fd, "POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    send_chunk(fd, 1000, 'a');
    send_chunk(fd, 1000, 'b');
    send_chunk(fd, 1000, 'c'); /* 3000 > MAX_BODY_BYTES */
    th_response_t r;
    xread(fd, &r, 0);
    assert_json_detail(&r, 413);
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
}

static void test_chunked_within_limit(void **state) {
    int fd = xconnect(shared.port);
    xsend(fd, "POST /health HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    send_chunk(fd, 700, 'a');
    send_chunk(fd, 700, 'b');
    xsend(fd, "0\r\n\r\n");
    th_response_t r;
    xread(fd, &r, 0);
    /* The body was accepted and the request routed: /health has no POST. */
    assert_json_detail(&r, 405);
    assert_false(has_close(&r));
    th_response_free(&r);
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    th_response_free(&r);
    th_close(fd);
}

static void test_content_length_and_chunked(void **state) {
    int fd = xconnect(shared.port);
    xsend(fd, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
              "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    th_response_t r;
    xread(fd, &r, 0);
    assert_json_detail(&r, 400);
    assert_true(has_close(&r));
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
}

static void expect_400_and_close(const char *req, size_t len) {
    int fd = xconnect(shared.port);
    if (th_send(fd, req, len) != 0) fail_msg("send failed");
    th_response_t r;
    if (th_read_response(fd, &r, 0, TO) != 0) fail_msg("no answer to %.40s", req);
    if (r.status != 400) {
        int status = r.status;
        th_response_free(&r);
        char shown[160];
        size_t k = 0;
        for (size_t i = 0; i < len && k + 5 < sizeof shown; i++) {
            unsigned char c = (unsigned char)req[i];
            if (c >= 0x20 && c < 0x7f)
                k += (size_t)snprintf(shown + k, sizeof shown - k, "%c", c);
            else
                k += (size_t)snprintf(shown + k, sizeof shown - k, "\\x%02x", c);
        }
        fail_msg("status %d, expected 400, for: %s", status, shown);
    }
    assert_json_detail(&r, 400);
    assert_true(has_close(&r));
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
}

static void test_malformed_request_line(void **state) {
    static const char *const reqs[] = {
        "HELLO WORLD\r\n\r\n",
        "GET /health HTTP/1.1 junk\r\nHost: t\r\n\r\n",
        "GET /health HTTP/x.y\r\nHost: t\r\n\r\n",
        "GET /he alth HTTP/1.1\r\nHost: t\r\n\r\n",
        "\x16\x03\x01\x02\x10\x01\x02\x03\xfc\x03\x03", /* the start of a TLS handshake */
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(reqs); i++) expect_400_and_close(reqs[i], strlen(reqs[i]));
}

static void test_invalid_header_characters(void **state) {
    /* A NUL byte in a value. */
    static const char nul[] = "GET /health HTTP/1.1\r\nHost: t\r\nX-Val: a\0b\r\n\r\n";
    expect_400_and_close(nul, sizeof nul - 1);
    /* A field name must be a token (RFC 9110, 5.1): no separators, spaces or controls, and not
     * empty. */
    static const char *const reqs[] = {
        "GET /health HTTP/1.1\r\nHost: t\r\nBad@Header: v\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Ctl\x01: v\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: t\r\nX-Val: a\x01"
        "b\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: t\r\nBad Header: v\r\n\r\n",
        "GET /health HTTP/1.1\r\nHost: t\r\n: empty-name\r\n\r\n",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(reqs); i++) expect_400_and_close(reqs[i], strlen(reqs[i]));
}

static void test_http10(void **state) {
    int fd = xconnect(shared.port);
    th_response_t r;
    roundtrip(fd, "GET /health HTTP/1.0\r\n\r\n", &r);
    assert_health(&r);
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);

    /* HTTP/1.0 asking for keep-alive keeps the connection. */
    fd = xconnect(shared.port);
    roundtrip(fd, "GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r);
    assert_health(&r);
    th_response_free(&r);
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    th_response_free(&r);
    th_close(fd);
}

static void test_client_disconnects_mid_request(void **state) {
    for (int i = 0; i < 5; i++) {
        int fd = xconnect(shared.port);
        xsend(fd, "GET /health HTTP/1.1\r\nHost: t\r\nX-Half");
        th_close(fd);
        fd = xconnect(shared.port);
        xsend(fd, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789");
        th_close(fd);
        /* A whole request, then gone before the answer is read. */
        fd = xconnect(shared.port);
        xsend(fd, GET_HEALTH GET_HEALTH);
        th_close(fd);
    }
    th_response_t r;
    assert_int_equal(th_request(shared.port, "GET", "/health", NULL, NULL, &r), 0);
    assert_health(&r);
    th_response_free(&r);
    assert_true(th_alive(&shared));
}

/* A connection to 127.0.0.1:port whose receive buffer is small, so that the server's answers
 * back up quickly when the client does not read. */
static int connect_small_rcvbuf(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    int sz = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof sz);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fail_msg("connect: %s", strerror(errno));
    return fd;
}

/* Answers parsed from a byte stream: status, X-Request-Id and a Content-Length body. */
typedef struct {
    char *buf;
    size_t len, cap;
} stream_t;

/* Take one complete answer off the front of st; 1 when one was there. */
static int stream_next(stream_t *st, int *status, char *rid, size_t ridlen) {
    if (st->len < 12) return 0;
    st->buf[st->len] = '\0';
    char *end = strstr(st->buf, "\r\n\r\n");
    if (end == NULL) return 0;
    if (strncmp(st->buf, "HTTP/1.1 ", 9) != 0) fail_msg("not an answer: %.80s", st->buf);
    *status = atoi(st->buf + 9);
    *end = '\0';
    const char *cl = strcasestr(st->buf, "\r\nContent-Length:");
    const char *id = strcasestr(st->buf, "\r\nX-Request-Id:");
    *end = '\r';
    if (cl == NULL) fail_msg("answer without Content-Length: %.200s", st->buf);
    size_t need = (size_t)(end + 4 - st->buf) + strtoul(cl + 17, NULL, 10);
    if (st->len < need) return 0;
    rid[0] = '\0';
    if (id) {
        id += 15;
        while (*id == ' ') id++;
        size_t n = strcspn(id, "\r");
        snprintf(rid, ridlen, "%.*s", (int)n, id);
    }
    memmove(st->buf, st->buf + need, st->len - need);
    st->len -= need;
    return 1;
}

/* A client that pipelines far ahead and reads slowly must still get every answer, in order:
 * the server may stop reading while it cannot write, but must never drop input it has read, and
 * must read again once it can write. */
static void test_pipelining_slow_reader_gets_every_answer(void **state) {
    enum { N = 40000 };
    const size_t one = strlen("GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: q00000\r\n\r\n");
    /* Static, so that a failed assertion leaves nothing allocated behind. */
    static char all[N * 64];
    assert_true(N * one < sizeof all);
    for (unsigned i = 0; i < N; i++) {
        char line[128];
        int n = snprintf(line, sizeof line,
                         "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: q%05u\r\n\r\n", i);
        assert_int_equal(n, one);
        memcpy(all + (size_t)i * one, line, one);
    }
    size_t total = N * one, sent = 0;
    th_proc_t *p = proc_slot();
    start(p, NULL);
    int fd = connect_small_rcvbuf(p->port);
    /* Phase 1: send without reading until the server stops taking input. */
    for (;;) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (sent == total || poll(&pfd, 1, 300) <= 0) break;
        ssize_t n = send(fd, all + sent, total - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) fail_msg("send: %s", strerror(errno));
        if (n > 0) sent += (size_t)n;
    }
    size_t phase1 = sent;
    /* Still without reading, wait until the server stops taking our bytes (its answers have
     * filled the buffers towards us): our send queue stops shrinking. */
    int outq = -1, stalled = 0;
    for (int64_t since = th_now_ms(), deadline = since + 5000; th_now_ms() < deadline;) {
        int q;
        if (ioctl(fd, SIOCOUTQ, &q) != 0) fail_msg("SIOCOUTQ: %s", strerror(errno));
        if (q != outq) {
            outq = q;
            since = th_now_ms();
        }
        if (q == 0) break;
        if (th_now_ms() - since >= 300) {
            stalled = 1;
            break;
        }
        poll(NULL, 0, 10);
    }
    print_message("slow reader: %zu bytes sent before reading, %d unread by the server (%s)\n",
                  phase1, outq, stalled ? "it stopped reading" : "it read everything");
    /* Phase 2: read every answer, sending the rest as the server makes room. Progress must be
     * steady: no answer may take longer than TO. */
    static char inbuf[1 << 20];
    stream_t st = {inbuf, 0, sizeof inbuf - 1};
    int got = 0;
    int64_t last = th_now_ms();
    while (got < N) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0)};
        int rc = poll(&pfd, 1, 100);
        if (rc < 0 && errno != EINTR) fail_msg("poll: %s", strerror(errno));
        if (pfd.revents & POLLOUT) {
            ssize_t n = send(fd, all + sent, total - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) sent += (size_t)n;
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(fd, st.buf + st.len, st.cap - st.len, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
                fail_msg("connection closed after %d of %d answers", got, N);
            if (n > 0) st.len += (size_t)n;
        }
        int status;
        char rid[80], want[16];
        while (stream_next(&st, &status, rid, sizeof rid)) {
            snprintf(want, sizeof want, "q%05d", got);
            if (status != 200 || strcmp(rid, want) != 0)
                fail_msg("answer %d: status %d, id %s, expected 200 %s (%zu of %zu bytes sent, "
                         "%zu before reading)",
                         got, status, rid, want, sent, total, phase1);
            got++;
            last = th_now_ms();
        }
        if (th_now_ms() - last > TO)
            fail_msg("no answer for %d ms after %d of %d (%zu of %zu bytes sent, %zu before "
                     "reading)",
                     TO, got, N, sent, total, phase1);
    }
    th_close(fd);
    stop_clean(p);
}

static void test_non_reading_client_bounded(void **state) {
    th_proc_t *p = proc_slot();
    start(p, NULL);
    long before = vmrss_kb(p->pid);
    assert_true(before > 0);
    static char block[65536];
    static const char req[] = GET_HEALTH;
    for (size_t i = 0; i + sizeof req - 1 <= sizeof block; i += sizeof req - 1)
        memcpy(block + i, req, sizeof req - 1);
    const size_t blen = (sizeof block / (sizeof req - 1)) * (sizeof req - 1);
    int fd = xconnect(p->port);
    size_t sent = 0, off = 0;
    long peak = before;
    int64_t deadline = th_now_ms() + 6000;
    /* Up to 2 MB of requests, never reading an answer; stop once the server stops taking any. */
    while (sent < 2 * 1024 * 1024 && th_now_ms() < deadline) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        if (poll(&pfd, 1, 500) <= 0) break;
        ssize_t n = send(fd, block + off, blen - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EINTR) fail_msg("send: %s", strerror(errno));
        if (n > 0) {
            sent += (size_t)n;
            off = (off + (size_t)n) % blen;
        }
        long rss = vmrss_kb(p->pid);
        if (rss > peak) peak = rss;
    }
    long rss = vmrss_kb(p->pid);
    if (rss > peak) peak = rss;
    int san = sanitized(p->pid);
    print_message("non-reading client: %zu bytes sent, VmRSS %ld KiB before, peak %ld KiB%s\n",
                  sent, before, peak, san ? " (sanitizer build)" : "");
    /* A sanitizer's shadow memory alone is near 64 MiB: there only the growth is judged. */
    if (!san && peak > 64 * 1024) fail_msg("VmRSS reached %ld KiB (over 64 MiB)", peak);
    if (peak - before > 32 * 1024)
        fail_msg("VmRSS grew by %ld KiB for one client that does not read", peak - before);
    /* Others are served meanwhile. */
    th_response_t r;
    assert_int_equal(th_request(p->port, "GET", "/health", NULL, NULL, &r), 0);
    assert_health(&r);
    th_response_free(&r);
    th_close(fd);
    assert_int_equal(th_request(p->port, "GET", "/health", NULL, NULL, &r), 0);
    assert_health(&r);
    th_response_free(&r);
    stop_clean(p);
}

/* ---- tests with their own daemon ------------------------------------------------------------ */

static const char *const timeout_env[] = {"HEADER_TIMEOUT_MS=300", "BODY_TIMEOUT_MS=300",
                                          "IDLE_TIMEOUT_MS=300", NULL};

static void test_url_limit_8k(void **state) {
    th_proc_t *p = proc_slot();
    start(p, timeout_env); /* default MAX_HEADER_BYTES */
    int fd = xconnect(p->port);
    char *req = long_url_request(8000);
    th_response_t r;
    roundtrip(fd, req, &r);
    free(req);
    assert_json_detail(&r, 404); /* long, but within the limit */
    th_response_free(&r);
    req = long_url_request(8300);
    xsend(fd, req);
    free(req);
    xread(fd, &r, 0);
    assert_json_detail(&r, 414);
    assert_true(has_close(&r));
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
    stop_clean(p);
}

static void test_header_timeout(void **state) {
    th_proc_t *p = proc_slot();
    start(p, timeout_env);
    int fd = xconnect(p->port);
    int64_t t0 = th_now_ms();
    xsend(fd, "GET /health HTTP/1.1\r\nHost: t\r\n");
    th_response_t r;
    xread(fd, &r, 0);
    int64_t waited = th_now_ms() - t0;
    assert_json_detail(&r, 408);
    assert_true(has_close(&r));
    th_response_free(&r);
    if (waited < 200) fail_msg("408 after %lld ms, before the 300 ms timeout", (long long)waited);
    assert_closes(fd);
    th_close(fd);
    stop_clean(p);
}

static void test_body_timeout(void **state) {
    th_proc_t *p = proc_slot();
    start(p, timeout_env);
    int fd = xconnect(p->port);
    int64_t t0 = th_now_ms();
    xsend(fd, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789");
    th_response_t r;
    xread(fd, &r, 0);
    int64_t waited = th_now_ms() - t0;
    assert_json_detail(&r, 408);
    th_response_free(&r);
    if (waited < 200) fail_msg("408 after %lld ms, before the 300 ms timeout", (long long)waited);
    assert_closes(fd);
    th_close(fd);
    stop_clean(p);
}

static void test_idle_timeout(void **state) {
    th_proc_t *p = proc_slot();
    start(p, timeout_env);
    int fd = xconnect(p->port);
    th_response_t r;
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    th_response_free(&r);
    int64_t t0 = th_now_ms();
    char buf[1024];
    int closed;
    size_t n = read_until_close(fd, buf, sizeof buf, 3000, &closed);
    int64_t waited = th_now_ms() - t0;
    if (!closed) fail_msg("idle keep-alive connection still open after 3 s");
    if (n != 0) fail_msg("idle connection got %zu bytes before closing: %s", n, buf);
    if (waited < 200)
        fail_msg("closed after %lld ms, before the 300 ms timeout", (long long)waited);
    th_close(fd);
    stop_clean(p);
}

static void test_max_connections(void **state) {
    th_proc_t *p = proc_slot();
    const char *const env[] = {"MAX_CONNECTIONS=3", NULL};
    start(p, env);
    int fds[3];
    th_response_t r;
    for (int i = 0; i < 3; i++) {
        fds[i] = xconnect(p->port);
        roundtrip(fds[i], GET_HEALTH, &r);
        assert_health(&r);
        th_response_free(&r);
    }
    /* The fourth is told so and closed; it sends nothing, so the answer cannot be lost to a
     * reset. */
    int fd4 = xconnect(p->port);
    char buf[4096];
    int closed;
    size_t n = read_until_close(fd4, buf, sizeof buf, 3000, &closed);
    if (!closed) fail_msg("the connection over the limit was not closed");
    if (strncmp(buf, "HTTP/1.1 503 ", 13) != 0) fail_msg("expected a 503, got: %s", buf);
    char *body = strstr(buf, "\r\n\r\n");
    if (body == NULL) fail_msg("incomplete answer: %s", buf);
    body += 4;
    size_t body_len = n - (size_t)(body - buf);
    const char *cl = strcasestr(buf, "\r\nContent-Length:");
    if (cl == NULL || cl > body) fail_msg("no Content-Length: %s", buf);
    unsigned long want = strtoul(cl + 17, NULL, 10);
    if (want != body_len)
        fail_msg("Content-Length %lu but the body has %zu bytes: [%s]", want, body_len, body);
    if (strcasestr(buf, "\r\nContent-Type: application/json") == NULL)
        fail_msg("503 is not JSON: %s", buf);
    cJSON *j = cJSON_ParseWithLength(body, body_len);
    if (j == NULL) fail_msg("503 body is not JSON: %s", body);
    assert_true(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "detail")));
    cJSON_Delete(j);
    th_close(fd4);
    /* The first three still work. */
    for (int i = 0; i < 3; i++) {
        roundtrip(fds[i], GET_HEALTH, &r);
        assert_health(&r);
        th_response_free(&r);
    }
    /* A freed slot is usable again (once the server has seen the close). */
    th_close(fds[0]);
    int ok = 0;
    for (int64_t deadline = th_now_ms() + 3000; !ok && th_now_ms() < deadline;) {
        int fd = xconnect(p->port);
        if (th_send_str(fd, GET_HEALTH) == 0 && th_read_response(fd, &r, 0, 1000) == 0) {
            ok = r.status == 200;
            th_response_free(&r);
        }
        th_close(fd);
    }
    assert_true(ok);
    th_close(fds[1]);
    th_close(fds[2]);
    stop_clean(p);
}

static void test_sigterm_request_in_progress(void **state) {
    th_proc_t *p = proc_slot();
    start(p, NULL);
    int fd = xconnect(p->port);
    xsend(fd, "GET /health HTTP/1.1\r\nHost: t\r\n");
    /* A whole round trip on another connection: the half request has been read by now. */
    th_response_t r;
    assert_int_equal(th_request(p->port, "GET", "/health", NULL, NULL, &r), 0);
    assert_health(&r);
    th_response_free(&r);

    assert_int_equal(kill(p->pid, SIGTERM), 0);
    int port = p->port;
    if (!th_eventually(connect_refused, &port, 3000)) fail_msg("still accepting after SIGTERM");
    /* It waits for the request being received. */
    assert_true(th_alive(p));
    xsend(fd, "X-Late: 1\r\n\r\n");
    xread(fd, &r, 0);
    assert_health(&r);
    assert_true(has_close(&r));
    th_response_free(&r);
    assert_closes(fd);
    th_close(fd);
    int st = wait_exit(p, 3000);
    if (st != 0) fail_msg("exit status %d after SIGTERM", st);
}

static void test_sigterm_idle(void **state) {
    /* No connection at all. */
    th_proc_t *p = proc_slot();
    start(p, NULL);
    assert_int_equal(kill(p->pid, SIGTERM), 0);
    int st = wait_exit(p, 3000);
    if (st != 0) fail_msg("exit status %d after SIGTERM", st);

    /* An idle keep-alive connection is closed and does not hold the stop up. */
    start(p, NULL);
    int fd = xconnect(p->port);
    th_response_t r;
    roundtrip(fd, GET_HEALTH, &r);
    assert_health(&r);
    th_response_free(&r);
    assert_int_equal(kill(p->pid, SIGTERM), 0);
    assert_closes(fd);
    th_close(fd);
    st = wait_exit(p, 3000);
    if (st != 0) fail_msg("exit status %d after SIGTERM", st);
}

/* ---- command line and configuration ---------------------------------------------------------- */

#define CHK_ENV                                                                                    \
    "STRIPE_SECRET_KEY=sk_live_CHKsecretKEY12345", "STRIPE_WEBHOOK_SECRET=whsec_CHKwebhookSECRET", \
        "STRIPE_PRICE_BASIC=price_chk_basic", "STRIPE_PRICE_PRO=price_chk_pro",                    \
        "RIVET_API_TOKEN=CHKapiTOKEN0123456789",                                                   \
        "REDIS_URL=redis://:CHKredisPASS@127.0.0.1:6390/1"

static void assert_no_chk_secret(const char *out) {
    static const char *const marks[] = {"CHKsecretKEY", "CHKwebhookSECRET", "CHKapiTOKEN",
                                        "CHKredisPASS"};
    for (size_t i = 0; i < RV_ARRAY_LEN(marks); i++)
        if (strstr(out, marks[i])) fail_msg("secret %s printed:\n%s", marks[i], out);
}

static void test_check_config(void **state) {
    const char *const env[] = {CHK_ENV, "STRIPE_PRICE_ENTERPRISE=price_chk_ent", "WORKERS=3", NULL};
    const char *const args[] = {"--check-config", NULL};
    char out[16384];
    int st = run_rivetd(args, env, out, sizeof out);
    if (st != 0) fail_msg("--check-config exited %d:\n%s", st, out);
    assert_no_chk_secret(out);
    static const char *const shown[] = {"STRIPE_PRICE_BASIC=price_chk_basic\n",
                                        "STRIPE_PRICE_ENTERPRISE=price_chk_ent\n",
                                        "WORKERS=3\n",
                                        "STRIPE_SECRET_KEY=",
                                        "STRIPE_WEBHOOK_SECRET=",
                                        "RIVET_API_TOKEN=",
                                        "REDIS_URL="};
    for (size_t i = 0; i < RV_ARRAY_LEN(shown); i++)
        if (strstr(out, shown[i]) == NULL) fail_msg("output lacks %s:\n%s", shown[i], out);
    const char *redis = strstr(out, "REDIS_URL=");
    if (strstr(redis, "6390") == NULL) fail_msg("REDIS_URL does not show its port:\n%s", out);
}

static void test_missing_required_key(void **state) {
    const char *const env[] = {CHK_ENV, "STRIPE_PRICE_ENTERPRISE=", NULL};
    char out[16384];
    int st = run_rivetd(NULL, env, out, sizeof out);
    if (st == 0) fail_msg("started without STRIPE_PRICE_ENTERPRISE:\n%s", out);
    if (strstr(out, "STRIPE_PRICE_ENTERPRISE") == NULL) fail_msg("key not named:\n%s", out);
    char *nl = strchr(out, '\n');
    if (nl == NULL || nl[1] != '\0') fail_msg("not exactly one line:\n%s", out);
    assert_no_chk_secret(out);

    /* A malformed value: the same, naming the key and not the value. */
    const char *const env2[] = {CHK_ENV, "STRIPE_PRICE_ENTERPRISE=price_chk_ent",
                                "MAX_CONNECTIONS=lots", NULL};
    st = run_rivetd(NULL, env2, out, sizeof out);
    if (st == 0) fail_msg("started with MAX_CONNECTIONS=lots");
    if (strstr(out, "MAX_CONNECTIONS") == NULL) fail_msg("key not named:\n%s", out);
    nl = strchr(out, '\n');
    if (nl == NULL || nl[1] != '\0') fail_msg("not exactly one line:\n%s", out);
    assert_no_chk_secret(out);
}

static void test_command_line(void **state) {
    char out[16384];
    const char *const version[] = {"--version", NULL};
    assert_int_equal(run_rivetd(version, NULL, out, sizeof out), 0);
    if (strstr(out, RV_VERSION) == NULL) fail_msg("--version printed: %s", out);
    const char *const help[] = {"--help", NULL};
    assert_int_equal(run_rivetd(help, NULL, out, sizeof out), 0);
    if (strstr(out, "Usage") == NULL || strstr(out, "--config") == NULL)
        fail_msg("--help printed: %s", out);
    const char *const bogus[] = {"--bogus", NULL};
    assert_int_equal(run_rivetd(bogus, NULL, out, sizeof out), 2);
    if (strstr(out, "--bogus") == NULL) fail_msg("unknown argument not named: %s", out);
    const char *const missing[] = {"--config", "/nonexistent/rivetd.env", NULL};
    int st = run_rivetd(missing, NULL, out, sizeof out);
    if (st == 0) fail_msg("a missing --config file was accepted");
    if (strstr(out, "/nonexistent/rivetd.env") == NULL) fail_msg("file not named: %s", out);
}

static void test_config_file_with_env_override(void **state) {
    char dir[] = "/tmp/rivet-cfg-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof path, "%s/rivetd.env", dir);
    int file_port = th_free_port(), env_port = th_free_port(), admin_port = th_free_port();
    assert_true(file_port > 0 && env_port > 0 && admin_port > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f,
            "# rivetd test configuration\r\n"
            "export STRIPE_SECRET_KEY=sk_test_fromFILE123456\n"
            "STRIPE_WEBHOOK_SECRET=\"whsec_fromFILE123456\"\n"
            "STRIPE_PRICE_BASIC=price_file_basic # the basic plan\n"
            "STRIPE_PRICE_PRO='price_file_pro'\n"
            "STRIPE_PRICE_ENTERPRISE=price_file_ent\n"
            "LISTEN=127.0.0.1:%d\n"
            "ADMIN_LISTEN=127.0.0.1:%d\n"
            "REDIS_URL=redis://127.0.0.1:1/0\n"
            "UNRELATED_KEY=ignored\n",
            file_port, admin_port);
    fclose(f);
    char listen[64];
    snprintf(listen, sizeof listen, "LISTEN=127.0.0.1:%d", env_port);
    const char *const env[] = {listen, "STRIPE_PRICE_PRO=price_env_pro", NULL};

    char out[16384];
    const char *const check[] = {"--config", path, "--check-config", NULL};
    int st = run_rivetd(check, env, out, sizeof out);
    if (st != 0) fail_msg("--check-config with --config exited %d:\n%s", st, out);
    assert_non_null(strstr(out, "STRIPE_PRICE_PRO=price_env_pro\n"));
    assert_non_null(strstr(out, "STRIPE_PRICE_BASIC=price_file_basic\n"));
    assert_non_null(strstr(out, listen));
    assert_null(strstr(out, "fromFILE"));

    /* The daemon itself: it listens where the environment says, admin where the file says. */
    char bin[512];
    snprintf(bin, sizeof bin, "%s/rivetd", th_build_dir());
    const char *const argv[] = {bin, "--config", path, NULL};
    th_proc_t *p = proc_slot();
    assert_int_equal(th_spawn(p, argv, env), 0);
    if (th_wait_port(env_port, 10000) != 0) {
        th_stop(p, SIGKILL, 1000);
        fail_msg("rivetd did not listen on the port from the environment");
    }
    th_response_t r;
    assert_int_equal(th_request(env_port, "GET", "/health", NULL, NULL, &r), 0);
    assert_health(&r);
    th_response_free(&r);
    assert_int_equal(th_wait_port(admin_port, 5000), 0);
    assert_int_equal(th_request(admin_port, "GET", "/health", NULL, NULL, &r), 0);
    assert_health(&r);
    th_response_free(&r);
    assert_true(connect_refused(&file_port));
    stop_clean(p);
    unlink(path);
    rmdir(dir);
}

/* After every test, passed or failed: close the sockets it left open (a failed assertion
 * leaves its function at once) and kill the daemons it did not stop. */
static int cleanup(void **state) {
    for (int fd = 3; fd < 1024; fd++) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) th_close(fd);
    }
    for (size_t i = 0; i < RV_ARRAY_LEN(procs); i++)
        if (procs[i].pid > 0) th_stop(&procs[i], SIGKILL, 1000);
    return 0;
}

/* ---- main ----------------------------------------------------------------------------------- */

static int group_setup(void **state) {
    signal(SIGPIPE, SIG_IGN);
    return th_rivetd_start(&shared, shared_env) == 0 ? 0 : -1;
}

static int group_teardown(void **state) {
    int st = th_stop(&shared, SIGTERM, 5000);
    if (st != 0) fprintf(stderr, "shared rivetd exited with status %d\n", st);
    return st == 0 ? 0 : -1;
}

/* LISTEN takes an IPv6 address in brackets; the server answers over IPv6. */
static int connect6(int port) {
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a;
    memset(&a, 0, sizeof a);
    a.sin6_family = AF_INET6;
    a.sin6_port = htons((uint16_t)port);
    a.sin6_addr = in6addr_loopback;
    if (fd < 0) return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void test_ipv6_listen(void **state) {
    int port = th_free_port(), aport = th_free_port();
    char listen_kv[64], admin_kv[64], bin[512];
    snprintf(listen_kv, sizeof listen_kv, "LISTEN=[::1]:%d", port);
    snprintf(admin_kv, sizeof admin_kv, "ADMIN_LISTEN=[::1]:%d", aport);
    snprintf(bin, sizeof bin, "%s/rivetd", th_build_dir());
    const char *const env[] = {listen_kv,
                               admin_kv,
                               "STRIPE_SECRET_KEY=" TH_STRIPE_KEY,
                               "STRIPE_WEBHOOK_SECRET=" TH_WEBHOOK_SECRET,
                               "STRIPE_PRICE_BASIC=" TH_PRICE_BASIC,
                               "STRIPE_PRICE_PRO=" TH_PRICE_PRO,
                               "STRIPE_PRICE_ENTERPRISE=" TH_PRICE_ENTERPRISE,
                               "REDIS_URL=redis://127.0.0.1:1/0",
                               NULL};
    const char *const argv[] = {bin, NULL};
    th_proc_t *p = proc_slot();
    if (th_spawn(p, argv, env) != 0) fail_msg("cannot start %s", bin);
    int fd = -1;
    int64_t deadline = th_now_ms() + 5000;
    while ((fd = connect6(port)) < 0 && th_now_ms() < deadline) usleep(20000);
    if (fd < 0) fail_msg("nothing answers on [::1]:%d", port);
    static const char req[] = "GET /health HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n";
    assert_int_equal(th_send(fd, req, sizeof req - 1), 0);
    th_response_t r;
    assert_int_equal(th_read_response(fd, &r, 0, 5000), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"status\":\"healthy\",\"service\":\"rivet-api\"}");
    th_response_free(&r);
    th_close(fd);
    stop_clean(p);
}

#define T(fn) cmocka_unit_test_teardown(fn, cleanup)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_health),
        T(test_root),
        T(test_ipv6_listen),
        T(test_ready_without_redis),
        T(test_head),
        T(test_keep_alive),
        T(test_pipelining),
        T(test_pipelining_byte_at_a_time),
        T(test_request_id),
        T(test_not_found),
        T(test_method_not_allowed),
        T(test_url_too_long_small_header_limit),
        T(test_headers_too_large),
        T(test_body_too_large_content_length),
        T(test_chunked_over_limit),
        T(test_chunked_within_limit),
        T(test_content_length_and_chunked),
        T(test_malformed_request_line),
        T(test_invalid_header_characters),
        T(test_http10),
        T(test_client_disconnects_mid_request),
        T(test_pipelining_slow_reader_gets_every_answer),
        T(test_non_reading_client_bounded),
        T(test_url_limit_8k),
        T(test_header_timeout),
        T(test_body_timeout),
        T(test_idle_timeout),
        T(test_max_connections),
        T(test_sigterm_request_in_progress),
        T(test_sigterm_idle),
        T(test_check_config),
        T(test_missing_required_key),
        T(test_command_line),
        T(test_config_file_with_env_override),
    };
    /* RIVET_TEST_FILTER=test_health runs only the tests whose names match (cmocka patterns). */
    const char *filter = getenv("RIVET_TEST_FILTER");
    if (filter && *filter) cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
