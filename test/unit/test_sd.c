/* Unit tests of the systemd protocols: notifications received on real AF_UNIX datagram sockets
 * the test binds (a path and an abstract name), the watchdog variables, and socket activation
 * with real sockets placed on descriptors 3 and 4. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "rivet/common.h"
#include "rivet/sd.h"

static void clear_env(void) {
    static const char *const keys[] = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                                       "LISTEN_PID",    "LISTEN_FDS",    "LISTEN_FDNAMES"};
    for (size_t i = 0; i < RV_ARRAY_LEN(keys); i++) unsetenv(keys[i]);
}

static int setup(void **state) {
    clear_env();
    return 0;
}

static void restore_fds(void);

static int teardown(void **state) {
    clear_env();
    restore_fds();
    return 0;
}

/* ---- sd_notify ------------------------------------------------------------------------------- */

typedef struct sock_s {
    int fd;
    char dir[64];
    char path[108];
} sock_t;

/* A datagram socket bound at a path in a fresh temporary directory. */
static void bind_path(sock_t *s) {
    snprintf(s->dir, sizeof s->dir, "/tmp/rivet-sd-XXXXXX");
    if (mkdtemp(s->dir) == NULL) fail_msg("mkdtemp: %s", strerror(errno));
    snprintf(s->path, sizeof s->path, "%s/notify", s->dir);
    s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", s->path);
    if (bind(s->fd, (struct sockaddr *)&sun, sizeof sun) != 0)
        fail_msg("bind %s: %s", s->path, strerror(errno));
}

/* A datagram socket bound at an abstract name; path is "@name" as NOTIFY_SOCKET spells it. */
static void bind_abstract(sock_t *s) {
    s->dir[0] = '\0';
    snprintf(s->path, sizeof s->path, "@rivet-sd-test-%d-%u", (int)getpid(), (unsigned)rand());
    s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    size_t n = strlen(s->path);
    memcpy(sun.sun_path + 1, s->path + 1, n - 1);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
    if (bind(s->fd, (struct sockaddr *)&sun, len) != 0)
        fail_msg("bind %s: %s", s->path, strerror(errno));
}

static void sock_close(sock_t *s) {
    close(s->fd);
    if (s->dir[0]) {
        unlink(s->path);
        rmdir(s->dir);
    }
}

/* Receive one datagram within 2 s into buf (NUL-terminated); fail if none arrives. */
static size_t recv_msg(int fd, char *buf, size_t len) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 2000) != 1) fail_msg("no notification arrived");
    ssize_t n = recv(fd, buf, len - 1, MSG_DONTWAIT);
    assert_true(n >= 0);
    buf[n] = '\0';
    return (size_t)n;
}

/* Nothing waiting on fd. */
static void assert_no_msg(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    assert_int_equal(poll(&p, 1, 0), 0);
}

static void notify_path(void **state) {
    sock_t s;
    bind_path(&s);
    setenv("NOTIFY_SOCKET", s.path, 1);
    char buf[512];
    const char *msg = "READY=1\nSTATUS=Listening on 127.0.0.1:8000; Redis connecting";
    assert_int_equal(rv_sd_notify(msg), 0);
    assert_int_equal(recv_msg(s.fd, buf, sizeof buf), strlen(msg));
    assert_string_equal(buf, msg);
    /* Each call is one datagram, in order. */
    assert_int_equal(rv_sd_notify("WATCHDOG=1"), 0);
    assert_int_equal(rv_sd_notify("STOPPING=1"), 0);
    recv_msg(s.fd, buf, sizeof buf);
    assert_string_equal(buf, "WATCHDOG=1");
    recv_msg(s.fd, buf, sizeof buf);
    assert_string_equal(buf, "STOPPING=1");
    assert_no_msg(s.fd);
    /* The variable stays for later notifications (only socket activation removes its own). */
    assert_non_null(getenv("NOTIFY_SOCKET"));
    sock_close(&s);
}

static void notify_abstract(void **state) {
    sock_t s;
    bind_abstract(&s);
    setenv("NOTIFY_SOCKET", s.path, 1);
    char buf[512];
    assert_int_equal(rv_sd_notify("READY=1\nSTATUS=abstract"), 0);
    recv_msg(s.fd, buf, sizeof buf);
    assert_string_equal(buf, "READY=1\nSTATUS=abstract");
    sock_close(&s);
}

static void notify_unset_or_empty(void **state) {
    assert_int_equal(rv_sd_notify("READY=1"), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(rv_sd_notify("READY=1"), 0);
}

static void notify_bad_values(void **state) {
    /* Neither a path nor an abstract name. */
    setenv("NOTIFY_SOCKET", "relative/notify", 1);
    assert_true(rv_sd_notify("READY=1") < 0);
    setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
    assert_true(rv_sd_notify("READY=1") < 0);
    /* Longer than a socket address holds. */
    char longp[300];
    memset(longp, 'a', sizeof longp - 1);
    longp[0] = '/';
    longp[sizeof longp - 1] = '\0';
    setenv("NOTIFY_SOCKET", longp, 1);
    assert_true(rv_sd_notify("READY=1") < 0);
    /* A well-formed path where nothing listens. */
    setenv("NOTIFY_SOCKET", "/nonexistent-rivet-dir/notify", 1);
    assert_true(rv_sd_notify("READY=1") < 0);
}

/* ---- watchdog -------------------------------------------------------------------------------- */

static void watchdog_usec(void **state) {
    assert_int_equal(rv_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "400000", 1);
    assert_int_equal(rv_sd_watchdog_usec(), 400000);

    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(rv_sd_watchdog_usec(), 400000);

    /* The watchdog is meant for another process (e.g. our parent). */
    snprintf(pid, sizeof pid, "%d", (int)getppid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(rv_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_PID", "1", 1);
    assert_int_equal(rv_sd_watchdog_usec(), 0);
    setenv("WATCHDOG_PID", "junk", 1);
    assert_int_equal(rv_sd_watchdog_usec(), 0);
    snprintf(pid, sizeof pid, "%dx", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(rv_sd_watchdog_usec(), 0);
    unsetenv("WATCHDOG_PID");

    static const char *const junk[] = {
        "", "0", "-400000", "abc", "400000x", " 400000", "99999999999999999999999"};
    for (size_t i = 0; i < RV_ARRAY_LEN(junk); i++) {
        setenv("WATCHDOG_USEC", junk[i], 1);
        if (rv_sd_watchdog_usec() != 0) fail_msg("WATCHDOG_USEC='%s' was accepted", junk[i]);
    }
    setenv("WATCHDOG_USEC", "30000000", 1);
    assert_int_equal(rv_sd_watchdog_usec(), 30000000);
}

/* ---- socket activation ----------------------------------------------------------------------- */

/* Descriptors 3 and 4 as they were before a test put sockets there; the teardown puts them
 * back even when the test failed half-way. */
static int saved[2] = {-1, -1};
static int fds_taken;

static void save_fds(void) {
    for (int i = 0; i < 2; i++) saved[i] = fcntl(3 + i, F_DUPFD_CLOEXEC, 20);
    fds_taken = 1;
}

static void restore_fds(void) {
    if (!fds_taken) return;
    fds_taken = 0;
    for (int i = 0; i < 2; i++) {
        if (saved[i] >= 0) {
            dup2(saved[i], 3 + i);
            close(saved[i]);
        } else {
            close(3 + i);
        }
        saved[i] = -1;
    }
}

/* A listening TCP socket on a loopback port, placed at target without close-on-exec. */
static void place_listener(int target) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 8), 0);
    if (fd != target) {
        assert_int_equal(dup2(fd, target), target);
        close(fd);
    }
    assert_int_equal(fcntl(target, F_GETFD) & FD_CLOEXEC, 0);
}

static int is_listening_socket(int fd) {
    int v = 0;
    socklen_t len = sizeof v;
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0 && v == 1;
}

static void set_listen_pid(pid_t pid) {
    char b[32];
    snprintf(b, sizeof b, "%d", (int)pid);
    setenv("LISTEN_PID", b, 1);
}

static void listen_fds_ours(void **state) {
    save_fds();
    place_listener(3);
    place_listener(4);
    set_listen_pid(getpid());
    setenv("LISTEN_FDS", "2", 1);
    setenv("LISTEN_FDNAMES", "public:admin", 1);
    int n = rv_sd_listen_fds();
    assert_int_equal(n, 2);
    for (int fd = 3; fd <= 4; fd++) {
        int fl = fcntl(fd, F_GETFD);
        assert_true(fl >= 0);
        if (!(fl & FD_CLOEXEC)) fail_msg("fd %d is not close-on-exec", fd);
        assert_true(is_listening_socket(fd));
    }
    /* Children must not adopt the descriptors again. */
    assert_null(getenv("LISTEN_PID"));
    assert_null(getenv("LISTEN_FDS"));
    assert_null(getenv("LISTEN_FDNAMES"));
    /* A second look finds nothing: the variables are gone. */
    assert_int_equal(rv_sd_listen_fds(), 0);
}

static void listen_fds_one(void **state) {
    save_fds();
    place_listener(3);
    set_listen_pid(getpid());
    setenv("LISTEN_FDS", "1", 1);
    assert_int_equal(rv_sd_listen_fds(), 1);
    assert_true(fcntl(3, F_GETFD) & FD_CLOEXEC);
    assert_null(getenv("LISTEN_FDS"));
}

static void listen_fds_other_pid(void **state) {
    save_fds();
    place_listener(3);
    place_listener(4);
    set_listen_pid(getppid());
    setenv("LISTEN_FDS", "2", 1);
    assert_int_equal(rv_sd_listen_fds(), 0);
    /* Descriptors meant for another process are left alone. */
    assert_int_equal(fcntl(3, F_GETFD) & FD_CLOEXEC, 0);
    assert_int_equal(fcntl(4, F_GETFD) & FD_CLOEXEC, 0);
    assert_null(getenv("LISTEN_PID"));
    assert_null(getenv("LISTEN_FDS"));
}

static void listen_fds_absent_or_junk(void **state) {
    assert_int_equal(rv_sd_listen_fds(), 0);
    setenv("LISTEN_FDS", "2", 1); /* no LISTEN_PID: not for us */
    assert_int_equal(rv_sd_listen_fds(), 0);
    set_listen_pid(getpid());
    setenv("LISTEN_FDS", "junk", 1);
    assert_int_equal(rv_sd_listen_fds(), 0);
    set_listen_pid(getpid());
    setenv("LISTEN_FDS", "0", 1);
    assert_int_equal(rv_sd_listen_fds(), 0);
    setenv("LISTEN_PID", "junk", 1);
    setenv("LISTEN_FDS", "1", 1);
    assert_int_equal(rv_sd_listen_fds(), 0);
}

static void listen_fds_not_open(void **state) {
    /* LISTEN_FDS names a descriptor that is not open: an error, not a socket to serve. */
    save_fds();
    place_listener(3);
    close(4);
    set_listen_pid(getpid());
    setenv("LISTEN_FDS", "2", 1);
    assert_true(rv_sd_listen_fds() < 0);
}

int main(void) {
    srand((unsigned)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(notify_path, setup, teardown),
        cmocka_unit_test_setup_teardown(notify_abstract, setup, teardown),
        cmocka_unit_test_setup_teardown(notify_unset_or_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(notify_bad_values, setup, teardown),
        cmocka_unit_test_setup_teardown(watchdog_usec, setup, teardown),
        cmocka_unit_test_setup_teardown(listen_fds_ours, setup, teardown),
        cmocka_unit_test_setup_teardown(listen_fds_one, setup, teardown),
        cmocka_unit_test_setup_teardown(listen_fds_other_pid, setup, teardown),
        cmocka_unit_test_setup_teardown(listen_fds_absent_or_junk, setup, teardown),
        cmocka_unit_test_setup_teardown(listen_fds_not_open, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
