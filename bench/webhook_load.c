/* Load generator for the webhook benchmark: N keep-alive connections on one epoll loop, each
 * sending one signed Stripe event at a time, every one under a distinct event id and its own
 * signature, for a fixed time; then it waits for every answer still due, so that the count of
 * 200 answers can be compared with what reached the stream.
 *
 * Signing stays cheap so that the generator is not the bottleneck: the body puts the event id
 * last, so the HMAC state after "<t>.<everything before the id>" is computed once per second and
 * each request only hashes its own id and the closing bytes. Every 1024th request (and the first)
 * is also signed from scratch with rv_webhook_sign and the two must agree, so the shortcut cannot
 * drift from what Stripe (and rivetd) compute.
 *
 * Output: one "key=value" line per figure on stdout, for bench/webhook.sh to read. With -o FILE,
 * also one line per request whose answer came (or whose connection failed, status 0): the event
 * id, the status and the CLOCK_MONOTONIC millisecond of the answer, for bench/failover.sh to
 * hold the stream against. */
#include <arpa/inet.h>
#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <mbedtls/md.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "rivet/webhook_sig.h"

#define MAX_CONNS   4096
#define MAX_FILE    (1024 * 1024)
#define RESP_MAX    16384
#define DRAIN_MS    10000
#define CHECK_EVERY 1024
#define HIST_US     100000 /* latency histogram: 1 us buckets up to 100 ms, the rest in the last */
#define ID_DIGITS   12

typedef struct conn_s {
    int fd;
    int connecting;
    int busy;       /* a request is out and its answer not complete */
    int wout;       /* EPOLLOUT is being watched */
    size_t out_off; /* bytes of req already written */
    char *req;      /* the whole request, patched in place for each send */
    char in[RESP_MAX];
    size_t in_len;
    int64_t sent_ns;
} conn_t;

/* Everything fixed for the run. */
static struct {
    const char *host;
    int port;
    int nconns;
    int seconds;
    const char *secret;
    const char *path;
    char tag[16];

    char *body; /* the event with "id":"<placeholder>"} at the end */
    size_t body_len;
    size_t id_off;     /* offset of the id's counter digits in the body */
    size_t prefix_len; /* bytes of the body before the id (the hashed-once part) */
    char *head;        /* request head up to the signature value */
    size_t head_len;
    size_t req_len;
    size_t sig_off; /* offset of the "t=...,v1=..." value in a request */
    size_t sig_len;
    size_t body_off; /* offset of the body in a request */

    const mbedtls_md_info_t *md;
    mbedtls_md_context_t base; /* HMAC state after "<t>.<prefix>" for base_t */
    mbedtls_md_context_t work;
    int64_t base_t;

    uint64_t next_id;
    uint64_t sent, ok, non200, errors, checked, reconnects;
    uint64_t status_counts[6]; /* 1xx..5xx by first digit, [0] other */
    uint32_t *hist;
    int64_t max_us;
    FILE *out;                         /* -o: one line per answer, or NULL */
    int64_t first_bad_ms, last_bad_ms; /* monotonic ms of the first and last non-200 answer */
} G;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "webhook_load: %s\n", msg);
    exit(2);
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) die("cannot open the event file");
    char *buf = malloc(MAX_FILE + 1);
    if (buf == NULL) die("out of memory");
    size_t n = fread(buf, 1, MAX_FILE + 1, f);
    fclose(f);
    if (n == 0 || n > MAX_FILE) die("event file empty or too large");
    buf[n] = '\0';
    return buf;
}

/* The body template: the event without its id, compact, with "id":"evt_bench_<tag>_<digits>"
 * appended as the last member. */
static void build_body(const char *file) {
    char *text = read_file(file);
    cJSON *ev = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(ev)) die("the event file is not a JSON object");
    cJSON_DeleteItemFromObjectCaseSensitive(ev, "id");
    char *rest = cJSON_PrintUnformatted(ev);
    cJSON_Delete(ev);
    if (rest == NULL) die("out of memory");
    size_t rl = strlen(rest);
    if (rl < 2 || rest[rl - 1] != '}') die("unexpected JSON");
    rest[rl - 1] = '\0';
    int empty = rl == 2;
    size_t cap = rl + 128;
    G.body = malloc(cap);
    if (G.body == NULL) die("out of memory");
    int n = snprintf(G.body, cap, "%s%s\"id\":\"evt_bench_%s_", rest, empty ? "" : ",", G.tag);
    /* Everything before the counter digits is the same in every request. */
    G.prefix_len = (size_t)n;
    G.id_off = (size_t)n;
    n += snprintf(G.body + n, cap - (size_t)n, "%0*d\"}", ID_DIGITS, 0);
    G.body_len = (size_t)n;
    free(rest);
}

static void build_head(void) {
    size_t cap = 512 + strlen(G.host) + strlen(G.path);
    G.head = malloc(cap);
    if (G.head == NULL) die("out of memory");
    int n = snprintf(G.head, cap,
                     "POST %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: Stripe/1.0 "
                     "(+https://stripe.com/docs/webhooks)\r\nContent-Type: application/json; "
                     "charset=utf-8\r\nContent-Length: %zu\r\nStripe-Signature: ",
                     G.path, G.host, G.port, G.body_len);
    G.head_len = (size_t)n;
    G.sig_off = G.head_len;
    /* "t=" + 10 digits + ",v1=" + 64 hex. */
    G.sig_len = 2 + 10 + 4 + 64;
    G.body_off = G.sig_off + G.sig_len + 4;
    G.req_len = G.body_off + G.body_len;
}

/* Recompute the per-second HMAC state: key, "<t>.", then the body up to the id. */
static void rebase(int64_t t) {
    char ts[32];
    int n = snprintf(ts, sizeof ts, "%lld.", (long long)t);
    if (mbedtls_md_hmac_starts(&G.base, (const unsigned char *)G.secret, strlen(G.secret)) ||
        mbedtls_md_hmac_update(&G.base, (const unsigned char *)ts, (size_t)n) ||
        mbedtls_md_hmac_update(&G.base, (const unsigned char *)G.body, G.prefix_len)) {
        die("HMAC failed");
    }
    G.base_t = t;
}

/* Give the request in c a fresh id and its signature. */
static void prepare(conn_t *c) {
    int64_t t = (int64_t)time(NULL);
    if (t != G.base_t) rebase(t);
    if (t < 1000000000LL || t > 9999999999LL) die("clock out of range");
    char *body = c->req + G.body_off;
    char digits[ID_DIGITS + 1];
    snprintf(digits, sizeof digits, "%0*llu", ID_DIGITS, (unsigned long long)G.next_id++);
    memcpy(body + G.id_off, digits, ID_DIGITS);

    unsigned char mac[32];
    /* The work context was started with the same key, so its outer pad is already right; only
     * the inner hash state is taken from the base. */
    if (mbedtls_md_clone(&G.work, &G.base) ||
        mbedtls_md_hmac_update(&G.work, (const unsigned char *)body + G.prefix_len,
                               G.body_len - G.prefix_len) ||
        mbedtls_md_hmac_finish(&G.work, mac)) {
        die("HMAC failed");
    }
    static const char hex[] = "0123456789abcdef";
    char *s = c->req + G.sig_off;
    int n = snprintf(s, 2 + 10 + 4 + 1, "t=%lld,v1=", (long long)t);
    if (n != 16) die("timestamp width");
    for (int i = 0; i < 32; i++) {
        s[16 + 2 * i] = hex[mac[i] >> 4];
        s[16 + 2 * i + 1] = hex[mac[i] & 15];
    }
    memcpy(s + G.sig_len, "\r\n\r\n", 4);

    if (G.sent % CHECK_EVERY == 0) {
        char ref[128];
        if (rv_webhook_sign(G.secret, t, body, G.body_len, ref, sizeof ref) != 0) {
            die("rv_webhook_sign failed");
        }
        if (strlen(ref) != G.sig_len || memcmp(ref, s, G.sig_len) != 0) {
            die("signature differs from rv_webhook_sign");
        }
        G.checked++;
    }
}

/* ---- connections ------------------------------------------------------------------------- */

static int epfd;
static conn_t *conns;

static int conn_open(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)G.port)};
    if (inet_pton(AF_INET, G.host, &sa.sin_addr) != 1) die("host must be an IPv4 address");
    c->connecting = 1;
    c->wout = 1;
    c->busy = 0;
    c->in_len = 0;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) die("epoll_ctl");
    return 0;
}

static void conn_close(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
}

/* Watch for writability only while a request is partly written; a syscall only on change. */
static void want_write(conn_t *c, int on) {
    if (c->wout == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->wout = on;
}

/* Write what is left of the request. Returns 0, or -1 when the connection failed. */
static int flush_out(conn_t *c) {
    while (c->out_off < G.req_len) {
        ssize_t n = send(c->fd, c->req + c->out_off, G.req_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                want_write(c, 1);
                return 0;
            }
            return -1;
        }
        c->out_off += (size_t)n;
    }
    want_write(c, 0);
    return 0;
}

static int start_request(conn_t *c) {
    prepare(c);
    c->busy = 1;
    c->out_off = 0;
    c->in_len = 0;
    c->sent_ns = now_ns();
    G.sent++;
    return flush_out(c);
}

/* Find the end of a complete response in c->in: its length, 0 when more is needed, -1 when it
 * cannot be parsed. *status and *close are filled on success. */
static ssize_t parse_response(conn_t *c, int *status, int *close_after) {
    c->in[c->in_len < RESP_MAX ? c->in_len : RESP_MAX - 1] = '\0';
    char *end = strstr(c->in, "\r\n\r\n");
    if (end == NULL) return c->in_len >= RESP_MAX - 1 ? -1 : 0;
    if (c->in_len < 12 || strncmp(c->in, "HTTP/1.1 ", 9) != 0) return -1;
    *status = atoi(c->in + 9);
    size_t head = (size_t)(end - c->in) + 4;
    long cl = -1;
    *close_after = 0;
    char *line = strstr(c->in, "\r\n") + 2;
    while (line < end) {
        char *eol = strstr(line, "\r\n");
        if (strncasecmp(line, "Content-Length:", 15) == 0) cl = strtol(line + 15, NULL, 10);
        if (strncasecmp(line, "Connection:", 11) == 0) {
            *eol = '\0';
            *close_after = strcasestr(line, "close") != NULL;
            *eol = '\r';
        }
        line = eol + 2;
    }
    if (cl < 0 || head + (size_t)cl >= RESP_MAX) return -1;
    if (c->in_len < head + (size_t)cl) return 0;
    return (ssize_t)(head + (size_t)cl);
}

/* The answer (status 0: the connection failed) to the request in c, in the -o file. */
static void log_answer(conn_t *c, int status) {
    int64_t ms = now_ns() / 1000000;
    if (status != 200) {
        if (G.first_bad_ms == 0) G.first_bad_ms = ms;
        G.last_bad_ms = ms;
    }
    if (G.out == NULL) return;
    const char *id = c->req + G.body_off + G.prefix_len - strlen(G.tag) - 11;
    fprintf(G.out, "%.*s %d %lld\n", (int)(strlen(G.tag) + 11 + ID_DIGITS), id, status,
            (long long)ms);
}

static void record(conn_t *c, int status) {
    log_answer(c, status);
    int64_t us = (now_ns() - c->sent_ns) / 1000;
    G.hist[us < HIST_US ? us : HIST_US - 1]++;
    if (us > G.max_us) G.max_us = us;
    int k = status / 100;
    G.status_counts[k >= 1 && k <= 5 ? k : 0]++;
    if (status == 200)
        G.ok++;
    else
        G.non200++;
}

/* A connection failed: what was in flight is unknown (it may or may not have been stored), so it
 * counts as an error, and the connection is opened again while the run goes on. */
static void fail_conn(conn_t *c, int running) {
    if (c->busy) {
        G.errors++;
        log_answer(c, 0);
    }
    c->busy = 0;
    conn_close(c);
    if (running) {
        G.reconnects++;
        if (conn_open(c) != 0) G.errors++;
    }
}

static void on_event(conn_t *c, uint32_t events, int running) {
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof err;
        if ((events & (EPOLLERR | EPOLLHUP)) ||
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            G.errors++;
            conn_close(c);
            return;
        }
        if (!(events & EPOLLOUT)) return;
        c->connecting = 0;
        if (!running) {
            want_write(c, 0);
            return;
        }
        if (start_request(c) != 0) fail_conn(c, running);
        return;
    }
    if ((events & EPOLLOUT) && c->busy && c->out_off < G.req_len) {
        if (flush_out(c) != 0) {
            fail_conn(c, running);
            return;
        }
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
    /* One read per event: epoll is level-triggered, so whatever is left is reported again. */
    if (c->in_len >= RESP_MAX - 1) {
        fail_conn(c, running);
        return;
    }
    ssize_t n = recv(c->fd, c->in + c->in_len, RESP_MAX - 1 - c->in_len, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (n <= 0) {
        fail_conn(c, running);
        return;
    }
    c->in_len += (size_t)n;
    if (!c->busy) {
        /* Bytes nobody asked for. */
        fail_conn(c, running);
        return;
    }
    int status = 0, close_after = 0;
    ssize_t used = parse_response(c, &status, &close_after);
    if (used == 0) return;
    if (used < 0) {
        fail_conn(c, running);
        return;
    }
    record(c, status);
    c->busy = 0;
    c->in_len = 0;
    if (close_after) {
        conn_close(c);
        if (running) {
            G.reconnects++;
            if (conn_open(c) != 0) G.errors++;
        }
        return;
    }
    if (running && start_request(c) != 0) fail_conn(c, running);
}

static int busy_count(void) {
    int n = 0;
    for (int i = 0; i < G.nconns; i++) n += conns[i].fd >= 0 && conns[i].busy;
    return n;
}

static double percentile(uint64_t total, double p) {
    uint64_t want = (uint64_t)((double)total * p), seen = 0;
    for (int i = 0; i < HIST_US; i++) {
        seen += G.hist[i];
        if (seen > want) return i / 1000.0;
    }
    return HIST_US / 1000.0;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void usage(void) {
    fprintf(stderr, "usage: webhook_load -p PORT -f EVENT.json [-H 127.0.0.1] [-c 64] [-d 10]\n"
                    "                    [-s SECRET (or $STRIPE_WEBHOOK_SECRET)]\n"
                    "                    [-P /api/webhooks/stripe] [-o ANSWERS_FILE]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *file = NULL;
    G.host = "127.0.0.1";
    G.nconns = 64;
    G.seconds = 10;
    G.path = "/api/webhooks/stripe";
    G.secret = getenv("STRIPE_WEBHOOK_SECRET");
    int opt;
    const char *out_path = NULL;
    while ((opt = getopt(argc, argv, "H:p:c:d:s:f:P:o:")) != -1) {
        switch (opt) {
        case 'H': G.host = optarg; break;
        case 'p': G.port = atoi(optarg); break;
        case 'c': G.nconns = atoi(optarg); break;
        case 'd': G.seconds = atoi(optarg); break;
        case 's': G.secret = optarg; break;
        case 'f': file = optarg; break;
        case 'P': G.path = optarg; break;
        case 'o': out_path = optarg; break;
        default: usage();
        }
    }
    if (G.port <= 0 || G.port > 65535 || file == NULL || G.secret == NULL || G.secret[0] == '\0' ||
        G.nconns < 1 || G.nconns > MAX_CONNS || G.seconds < 1) {
        usage();
    }
    /* A tag per run keeps ids distinct from any earlier run against the same Redis. */
    snprintf(G.tag, sizeof G.tag, "%08x", (unsigned)(time(NULL) ^ (getpid() << 16)));
    build_body(file);
    build_head();
    if (out_path != NULL && (G.out = fopen(out_path, "w")) == NULL) die("cannot open -o file");

    G.md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    mbedtls_md_init(&G.base);
    mbedtls_md_init(&G.work);
    if (G.md == NULL || mbedtls_md_setup(&G.base, G.md, 1) || mbedtls_md_setup(&G.work, G.md, 1) ||
        mbedtls_md_hmac_starts(&G.work, (const unsigned char *)G.secret, strlen(G.secret))) {
        die("cannot set up HMAC-SHA256");
    }
    G.hist = calloc(HIST_US, sizeof *G.hist);
    conns = calloc((size_t)G.nconns, sizeof *conns);
    if (G.hist == NULL || conns == NULL) die("out of memory");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    for (int i = 0; i < G.nconns; i++) {
        conn_t *c = &conns[i];
        c->req = malloc(G.req_len);
        if (c->req == NULL) die("out of memory");
        memcpy(c->req, G.head, G.head_len);
        memset(c->req + G.sig_off, '0', G.sig_len);
        memcpy(c->req + G.body_off, G.body, G.body_len);
        if (conn_open(c) != 0) die("cannot connect");
    }

    double cpu0 = cpu_seconds();
    int64_t start = now_ns();
    int64_t stop = start + (int64_t)G.seconds * 1000000000;
    int64_t drain_end = 0;
    struct epoll_event evs[256];
    for (;;) {
        int64_t now = now_ns();
        int running = now < stop;
        if (!running && drain_end == 0) drain_end = now + (int64_t)DRAIN_MS * 1000000;
        if (!running && (busy_count() == 0 || now >= drain_end)) break;
        int n = epoll_wait(epfd, evs, 256, 50);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) on_event(evs[i].data.ptr, evs[i].events, running);
    }
    int64_t end = now_ns();
    double cpu = cpu_seconds() - cpu0;
    uint64_t unanswered = (uint64_t)busy_count();
    double wall = (double)(stop < end ? stop - start : end - start) / 1e9;
    double total_wall = (double)(end - start) / 1e9;
    uint64_t answered = G.ok + G.non200;

    printf("connections=%d\n", G.nconns);
    printf("seconds=%.2f\n", wall);
    printf("body_bytes=%zu\n", G.body_len);
    printf("sent=%llu\n", (unsigned long long)G.sent);
    printf("ok=%llu\n", (unsigned long long)G.ok);
    printf("non200=%llu\n", (unsigned long long)G.non200);
    printf("status_4xx=%llu\n", (unsigned long long)G.status_counts[4]);
    printf("status_5xx=%llu\n", (unsigned long long)G.status_counts[5]);
    printf("errors=%llu\n", (unsigned long long)G.errors);
    printf("unanswered=%llu\n", (unsigned long long)unanswered);
    printf("reconnects=%llu\n", (unsigned long long)G.reconnects);
    printf("rate_ok=%.0f\n", (double)G.ok / total_wall);
    printf("latency_p50_ms=%.3f\n", percentile(answered, 0.50));
    printf("latency_p99_ms=%.3f\n", percentile(answered, 0.99));
    printf("latency_max_ms=%.3f\n", (double)G.max_us / 1000.0);
    printf("client_cpu_pct=%.0f\n", 100.0 * cpu / total_wall);
    printf("signatures_checked=%llu\n", (unsigned long long)G.checked);
    printf("first_non200_mono_ms=%lld\n", (long long)G.first_bad_ms);
    printf("last_non200_mono_ms=%lld\n", (long long)G.last_bad_ms);
    if (G.out != NULL && fclose(G.out) != 0) die("cannot write the -o file");
    for (int i = 0; i < G.nconns; i++) {
        conn_close(&conns[i]);
        free(conns[i].req);
    }
    free(conns);
    free(G.hist);
    free(G.body);
    free(G.head);
    mbedtls_md_free(&G.base);
    mbedtls_md_free(&G.work);
    close(epfd);
    return 0;
}
