/* Integration tests of the operations pieces: the systemd units (systemd-analyze rates the
 * service's sandbox and verifies the installed units), `make install` / `make uninstall` with
 * DESTDIR and PREFIX, and conf/rivet.conf.example, which rivetd must accept as it is and whose
 * commented defaults must be rivetd's real defaults. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "harness.h"
#include "rivet/buf.h"
#include "rivet/common.h"

/* The highest "Overall exposure level" systemd-analyze may give rivetd.service. */
#define MAX_EXPOSURE 2.0

/* Every configuration key of the design, each of which the example must show exactly once. */
static const char *const config_keys[] = {
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

/* ---- helpers ------------------------------------------------------------------------------- */

/* Run cmd with the shell, its output (stdout and stderr) into out (malloc'd, NUL-terminated,
 * at most 4 MiB). Returns the exit status, or -1 when it did not exit normally. */
static int run(const char *cmd, char **out) {
    rv_buf_t b = RV_BUF_INIT;
    b.limit = 4u << 20;
    char full[4096];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (p == NULL) fail_msg("popen(%s): %s", cmd, strerror(errno));
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0) {
        if (rv_buf_append(&b, chunk, n) != 0) break;
    }
    int st = pclose(p);
    if (rv_buf_append(&b, "", 0) != 0) fail_msg("out of memory");
    *out = rv_buf_steal(&b, NULL);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    rv_buf_t b = RV_BUF_INIT;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (rv_buf_append(&b, chunk, n) != 0) break;
    }
    fclose(f);
    if (rv_buf_append(&b, "", 0) != 0) return NULL;
    return rv_buf_steal(&b, NULL);
}

static char *xread_file(const char *path) {
    char *s = read_file(path);
    if (s == NULL) fail_msg("cannot read %s: %s", path, strerror(errno));
    return s;
}

/* 1 when text has a line that is exactly line. */
static int has_line(const char *text, const char *line) {
    size_t n = strlen(line);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0')) return 1;
    }
    return 0;
}

/* The value of the first "key=" line in text, copied into out; NULL when there is none. */
static const char *line_value(const char *text, const char *key, char *out, size_t outlen) {
    size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, key, n) == 0 && p[n] == '=') {
            const char *v = p + n + 1;
            size_t len = strcspn(v, "\n");
            snprintf(out, outlen, "%.*s", (int)len, v);
            return out;
        }
    }
    return NULL;
}

static void require_tool(const char *tool, const char *package) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null", tool);
    char *out;
    if (run(cmd, &out) != 0) fail_msg("%s is not installed (Debian package %s)", tool, package);
    free(out);
}

static void make_tmpdir(char *dir) {
    if (mkdtemp(dir) == NULL) fail_msg("mkdtemp: %s", strerror(errno));
}

static void remove_tree(const char *dir) {
    char cmd[512], *out;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (run(cmd, &out) != 0) fprintf(stderr, "could not remove %s: %s\n", dir, out);
    free(out);
}

/* Run `make <args>` in the tree for this build directory. The binary is taken as it is (-o):
 * installing must not rebuild it, least of all with other flags than the ones it was built
 * with. The outer make's jobserver and variables are not passed down. */
static int make(const char *args, char **out) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -o '%s/rivetd' BUILD='%s' %s",
             th_build_dir(), th_build_dir(), args);
    return run(cmd, out);
}

static void xmake(const char *args) {
    char *out;
    int st = make(args, &out);
    if (st != 0) fail_msg("make %s: status %d:\n%s", args, st, out);
    free(out);
}

/* The file exists with exactly this mode. */
static void assert_mode(const char *root, const char *path, mode_t mode) {
    char full[1024];
    snprintf(full, sizeof full, "%s%s", root, path);
    struct stat st;
    if (stat(full, &st) != 0) fail_msg("%s was not installed: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) fail_msg("%s is not a regular file", path);
    if ((st.st_mode & 07777) != mode)
        fail_msg("%s has mode %04o, expected %04o", path, (unsigned)(st.st_mode & 07777),
                 (unsigned)mode);
}

static void assert_absent(const char *root, const char *path) {
    char full[1024];
    snprintf(full, sizeof full, "%s%s", root, path);
    if (access(full, F_OK) == 0) fail_msg("%s is still there after uninstall", path);
}

/* ---- systemd ------------------------------------------------------------------------------- */

static void test_security_exposure(void **state) {
    require_tool("systemd-analyze", "systemd");
    char *out;
    int st = run("systemd-analyze security --offline=true systemd/rivetd.service", &out);
    if (st != 0) fail_msg("systemd-analyze security failed (status %d):\n%s", st, out);
    const char *key = "Overall exposure level for rivetd.service:";
    const char *p = strstr(out, key);
    if (p == NULL) fail_msg("no overall exposure level in:\n%s", out);
    char *end;
    double level = strtod(p + strlen(key), &end);
    if (end == p + strlen(key)) fail_msg("cannot read the exposure level in: %.80s", p);
    printf("systemd-analyze security: rivetd.service exposure %.1f (at most %.1f)\n", level,
           MAX_EXPOSURE);
    if (level > MAX_EXPOSURE)
        fail_msg("rivetd.service exposure %.1f is above %.1f:\n%s", level, MAX_EXPOSURE, out);
    free(out);
}

static void test_unit_settings(void **state) {
    char *svc = xread_file("systemd/rivetd.service");
    static const char *const want[] = {
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/rivetd --config /run/rivetd/rivet.conf",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecReload=+/usr/bin/install -m 0644 /etc/rivet/rivet.conf /run/rivetd/rivet.conf",
        "RuntimeDirectoryMode=0700",
        "EnvironmentFile=/etc/rivet/rivet.conf",
        "DynamicUser=yes",
        "Requires=rivetd.socket",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateUsers=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "LimitNOFILE=65536",
        "UMask=0077",
    };
    for (size_t i = 0; i < RV_ARRAY_LEN(want); i++)
        if (!has_line(svc, want[i])) fail_msg("rivetd.service lacks the line %s", want[i]);
    char v[128];
    if (line_value(svc, "After", v, sizeof v) == NULL || strstr(v, "rivetd.socket") == NULL ||
        strstr(v, "network-online.target") == NULL)
        fail_msg("rivetd.service must come After= rivetd.socket and network-online.target");
    /* libcurl's threaded resolver runs a thread per lookup in flight. */
    if (line_value(svc, "TasksMax", v, sizeof v) == NULL || atoi(v) < 64)
        fail_msg("TasksMax must be at least 64");
    free(svc);

    /* rivetd adopts fd 3 as the public listener and fd 4 as the admin one: the socket unit's
     * ListenStream= lines must come in that order. */
    char *sock = xread_file("systemd/rivetd.socket");
    const char *a = strstr(sock, "\nListenStream=127.0.0.1:8000\n");
    const char *b = strstr(sock, "\nListenStream=127.0.0.1:8001\n");
    assert_non_null(a);
    assert_non_null(b);
    assert_true(a < b);
    size_t n = 0;
    for (const char *p = sock; (p = strstr(p, "\nListenStream=")) != NULL; p++) n++;
    assert_int_equal(n, 2);
    assert_true(has_line(sock, "NoDelay=yes"));
    assert_true(has_line(sock, "ReusePort=no"));
    free(sock);
}

static void test_verify_installed_units(void **state) {
    require_tool("systemd-analyze", "systemd");
    /* Installed under a temporary prefix without DESTDIR, ExecStart= names a binary that exists,
     * so systemd-analyze verify checks the units as systemd would load them. */
    char dir[] = "/tmp/rivet-verify-XXXXXX";
    make_tmpdir(dir);
    char args[1024];
    snprintf(args, sizeof args, "install PREFIX='%s/usr' SYSCONFDIR='%s/etc'", dir, dir);
    xmake(args);
    char path[512];
    snprintf(path, sizeof path, "%s/etc/systemd/system/rivetd.service", dir);
    char *svc = xread_file(path);
    char want[600];
    snprintf(want, sizeof want, "ExecStart=%s/usr/bin/rivetd --config /run/rivetd/rivet.conf", dir);
    if (!has_line(svc, want)) fail_msg("the installed unit lacks %s", want);
    snprintf(want, sizeof want, "EnvironmentFile=%s/etc/rivet/rivet.conf", dir);
    if (!has_line(svc, want)) fail_msg("the installed unit lacks %s", want);
    free(svc);
    char cmd[1024], *out;
    snprintf(cmd, sizeof cmd,
             "systemd-analyze verify '%s/etc/systemd/system/rivetd.socket' "
             "'%s/etc/systemd/system/rivetd.service'",
             dir, dir);
    int st = run(cmd, &out);
    remove_tree(dir);
    if (st != 0 || out[0] != '\0') fail_msg("systemd-analyze verify (status %d):\n%s", st, out);
    free(out);
}

/* ---- install / uninstall -------------------------------------------------------------------- */

static void test_install_uninstall_destdir(void **state) {
    char dir[] = "/tmp/rivet-destdir-XXXXXX";
    make_tmpdir(dir);
    char args[512];
    snprintf(args, sizeof args, "install DESTDIR='%s'", dir);
    xmake(args);
    assert_mode(dir, "/usr/local/bin/rivetd", 0755);
    assert_mode(dir, "/etc/systemd/system/rivetd.service", 0644);
    assert_mode(dir, "/etc/systemd/system/rivetd.socket", 0644);
    assert_mode(dir, "/etc/rivet/rivet.conf.example", 0644);
    assert_mode(dir, "/etc/rivet/rivet.conf", 0640);
    assert_mode(dir, "/usr/local/share/rivetd/redis-rivet.conf", 0644);

    /* The installed unit names the installed binary (DESTDIR is not part of it). */
    char path[512];
    snprintf(path, sizeof path, "%s/etc/systemd/system/rivetd.service", dir);
    char *svc = xread_file(path);
    assert_true(has_line(svc, "ExecStart=/usr/local/bin/rivetd --config /run/rivetd/rivet.conf"));
    assert_true(has_line(svc, "EnvironmentFile=/etc/rivet/rivet.conf"));
    assert_null(strstr(svc, dir));
    free(svc);

    /* The new rivet.conf keeps no placeholder secret: rivetd refuses it until filled in. */
    snprintf(path, sizeof path, "%s/etc/rivet/rivet.conf", dir);
    char *conf = xread_file(path);
    assert_null(strstr(conf, "REPLACE_ME"));
    assert_true(has_line(conf, "STRIPE_SECRET_KEY="));
    assert_true(has_line(conf, "STRIPE_WEBHOOK_SECRET="));
    free(conf);
    char cmd[1024], *out;
    snprintf(cmd, sizeof cmd, "env -i '%s/rivetd' --config '%s' --check-config", th_build_dir(),
             path);
    int st = run(cmd, &out);
    if (st == 0 || strstr(out, "STRIPE_SECRET_KEY") == NULL)
        fail_msg("rivetd accepted the unfilled rivet.conf (status %d):\n%s", st, out);
    free(out);

    /* An existing rivet.conf is never overwritten. */
    FILE *f = fopen(path, "a");
    assert_non_null(f);
    fputs("# edited by the operator\n", f);
    fclose(f);
    xmake(args);
    conf = xread_file(path);
    assert_true(has_line(conf, "# edited by the operator"));
    free(conf);
    assert_mode(dir, "/etc/rivet/rivet.conf", 0640);

    snprintf(args, sizeof args, "uninstall DESTDIR='%s'", dir);
    xmake(args);
    assert_absent(dir, "/usr/local/bin/rivetd");
    assert_absent(dir, "/etc/systemd/system/rivetd.service");
    assert_absent(dir, "/etc/systemd/system/rivetd.socket");
    assert_absent(dir, "/etc/rivet/rivet.conf.example");
    assert_absent(dir, "/usr/local/share/rivetd/redis-rivet.conf");
    conf = read_file(path);
    if (conf == NULL) fail_msg("uninstall removed rivet.conf, which holds the operator's secrets");
    assert_true(has_line(conf, "# edited by the operator"));
    free(conf);
    remove_tree(dir);
}

static void test_install_prefix(void **state) {
    char dir[] = "/tmp/rivet-prefix-XXXXXX";
    make_tmpdir(dir);
    char args[512];
    snprintf(args, sizeof args, "install DESTDIR='%s' PREFIX=/opt/rivet", dir);
    xmake(args);
    assert_mode(dir, "/opt/rivet/bin/rivetd", 0755);
    assert_mode(dir, "/opt/rivet/share/rivetd/redis-rivet.conf", 0644);
    char path[512];
    snprintf(path, sizeof path, "%s/etc/systemd/system/rivetd.service", dir);
    char *svc = xread_file(path);
    assert_true(has_line(svc, "ExecStart=/opt/rivet/bin/rivetd --config /run/rivetd/rivet.conf"));
    assert_false(has_line(svc, "ExecStart=/usr/local/bin/rivetd --config /run/rivetd/rivet.conf"));
    free(svc);
    snprintf(args, sizeof args, "uninstall DESTDIR='%s' PREFIX=/opt/rivet", dir);
    xmake(args);
    assert_absent(dir, "/opt/rivet/bin/rivetd");
    remove_tree(dir);
}

/* ---- the example configuration ------------------------------------------------------------- */

static void test_config_example(void **state) {
    const char *example = "conf/rivet.conf.example";
    char *text = xread_file(example);
    /* Each key appears once, set ("KEY=") or showing its default ("#KEY="). Set lines are plain
     * KEY=VALUE: systemd's EnvironmentFile= has no inline comments. */
    for (size_t i = 0; i < RV_ARRAY_LEN(config_keys); i++) {
        size_t n = 0;
        size_t kl = strlen(config_keys[i]);
        for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
            const char *k = *p == '#' ? p + 1 : p;
            if (strncmp(k, config_keys[i], kl) == 0 && k[kl] == '=') {
                n++;
                const char *v = k + kl + 1;
                size_t len = strcspn(v, "\n");
                if (memmem(v, len, " #", 2) || memchr(v, ' ', len))
                    fail_msg("%s's value holds a space or an inline comment", config_keys[i]);
            }
        }
        if (n != 1)
            fail_msg("%s appears %zu times in %s, expected once", config_keys[i], n, example);
    }
    free(text);

    /* rivetd accepts it as it is, and never prints the secrets. */
    char cmd[1024], *plain, *uncommented;
    snprintf(cmd, sizeof cmd, "env -i '%s/rivetd' --config %s --check-config", th_build_dir(),
             example);
    int st = run(cmd, &plain);
    if (st != 0) fail_msg("rivetd --check-config refused %s (status %d):\n%s", example, st, plain);
    assert_non_null(strstr(plain, "# configuration OK"));
    assert_null(strstr(plain, "REPLACE_ME_with_your_secret_key"));
    assert_null(strstr(plain, "REPLACE_ME_with_your_endpoint_secret"));

    /* Removing every "#" before a KEY= line changes nothing: the shown defaults are rivetd's. */
    char dir[] = "/tmp/rivet-conf-XXXXXX";
    make_tmpdir(dir);
    snprintf(cmd, sizeof cmd,
             "sed 's/^#\\([A-Z_][A-Z0-9_]*=\\)/\\1/' %s > '%s/all.conf' && "
             "env -i '%s/rivetd' --config '%s/all.conf' --check-config",
             example, dir, th_build_dir(), dir);
    st = run(cmd, &uncommented);
    remove_tree(dir);
    if (st != 0) fail_msg("with every default uncommented, rivetd refused it:\n%s", uncommented);
    if (strcmp(plain, uncommented) != 0)
        fail_msg("a default shown in %s is not rivetd's:\nas is:\n%s\nuncommented:\n%s", example,
                 plain, uncommented);
    free(plain);
    free(uncommented);
}

#define T(f) cmocka_unit_test(f)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_security_exposure),         T(test_unit_settings),  T(test_verify_installed_units),
        T(test_install_uninstall_destdir), T(test_install_prefix), T(test_config_example),
    };
    const char *filter = getenv("RIVET_TEST_FILTER");
    if (filter && *filter) cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
