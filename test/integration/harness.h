/* Integration-test harness: real processes (rivetd, redis-server, the fake Stripe) on free
 * loopback ports, and a small blocking HTTP/1.1 client over real sockets. */
#ifndef RIVET_TEST_HARNESS_H
#define RIVET_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct th_proc_s {
    pid_t pid; /* 0 when not running */
    int port;  /* main port */
    int port2; /* second port (rivetd's admin listener), 0 when none */
    char name[32];
    char log_path[256]; /* where its stdout and stderr go */
    char dir[256];      /* a private temporary directory, removed by th_stop */
} th_proc_t;

/* Milliseconds of CLOCK_MONOTONIC: for deadlines and durations. */
int64_t th_now_ms(void);

/* The first of the n slots in procs that is not in use (no process, no directory), or NULL. */
th_proc_t *th_free_slot(th_proc_t *procs, size_t n);

/* A loopback TCP port that was free a moment ago. */
int th_free_port(void);

/* Start argv[0] with the current environment plus env (NULL-terminated "K=V", may be NULL;
 * a "K=" entry removes K). Output goes to p->log_path. Returns 0 or -1. */
int th_spawn(th_proc_t *p, const char *const argv[], const char *const env[]);

/* Wait until a TCP connect to 127.0.0.1:port succeeds. Returns 0 or -1 on timeout. */
int th_wait_port(int port, int timeout_ms);

/* Send sig and wait up to timeout_ms for the exit; SIGKILL after that. Returns the exit status
 * (0..255), 128+signal if killed by a signal, or -1. Removes p->dir. */
int th_stop(th_proc_t *p, int sig, int timeout_ms);

/* 1 while the process runs. */
int th_alive(th_proc_t *p);

/* Path of the repository's build directory for binaries: $RIVET_BUILD or "build". */
const char *th_build_dir(void);

/* redis-server on a free port, no persistence, in a temp dir. Returns 0 or -1. */
int th_redis_start(th_proc_t *p);

/* Run one Redis command (hiredis, blocking) and return its reply as text in out: a string or
 * status as is, an integer as digits, nil as "(nil)", an error as "ERR ...", an array as its
 * elements joined by '\n'. Returns 0, or -1 when Redis cannot be reached. */
int th_redis(int port, char *out, size_t outlen, const char *fmt, ...);

/* The fake Stripe (test/fake_stripe.py) on a free port with extra args (NULL-terminated, may be
 * NULL). Returns 0 or -1. */
int th_fake_stripe_start(th_proc_t *p, const char *const args[]);

/* build/rivetd on a free port (LISTEN) and a free admin port (ADMIN_LISTEN), with test values
 * for the required keys (th_test_env), overridden by env. Waits until it listens. */
int th_rivetd_start(th_proc_t *p, const char *const env[]);

/* The default test configuration th_rivetd_start uses, for tests that need the values. */
#define TH_STRIPE_KEY       "sk_test_rivet_integration"
#define TH_WEBHOOK_SECRET   "whsec_test_rivet_integration"
#define TH_PRICE_BASIC      "price_basic_test"
#define TH_PRICE_PRO        "price_pro_test"
#define TH_PRICE_ENTERPRISE "price_enterprise_test"
#define TH_API_TOKEN        "rivet-test-token-0123456789"

/* Blocking connect to 127.0.0.1:port with 5 s send/receive timeouts. Returns fd or -1. */
int th_connect(int port);

/* Write all of len bytes. Returns 0 or -1. */
int th_send(int fd, const void *data, size_t len);
int th_send_str(int fd, const char *s);

typedef struct th_header_s {
    char name[128];
    char value[1024];
} th_header_t;

typedef struct th_response_s {
    int status;
    th_header_t headers[64];
    int nheaders;
    char *body; /* NUL-terminated, malloc'd */
    size_t body_len;
} th_response_t;

/* Read exactly one response (Content-Length or chunked body; no body for HEAD when head=1)
 * within timeout_ms. Bytes after it stay for the next call (kept per fd by the harness).
 * Returns 0, or -1 on timeout, close or parse error. */
int th_read_response(int fd, th_response_t *r, int head, int timeout_ms);

/* One request on a new connection: method, path, extra header lines ("Name: v\r\n", may be
 * NULL), body (may be NULL). Adds Host, Content-Length when body, Connection: close. */
int th_request(int port, const char *method, const char *path, const char *headers,
               const char *body, th_response_t *r);

/* A response header value (case-insensitive), or NULL. */
const char *th_header(const th_response_t *r, const char *name);
void th_response_free(th_response_t *r);

/* Close fd and forget buffered bytes the harness kept for it. */
void th_close(int fd);

/* Wait up to timeout_ms for the peer to close: 1 if it closed (EOF or reset), 0 if not. Any
 * bytes received meanwhile are discarded. */
int th_wait_closed(int fd, int timeout_ms);

/* Poll a condition: sleep in small steps up to timeout_ms until fn(ud) returns 1. */
int th_eventually(int (*fn)(void *ud), void *ud, int timeout_ms);

#endif
