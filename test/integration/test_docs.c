/* Integration tests of the API description: docs/openapi.json is a valid OpenAPI 3.1 document
 * that describes every public route, rivetd serves it byte for byte at /openapi.json, and
 * /docs is a self-contained HTML page, rendered at build time by tools/render_docs.py, that shows
 * every operation and component of the document in its order, is what the renderer makes of the
 * tree's document today, and that a real browser (headless Chromium) renders with every route
 * listed. */
#include <ctype.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "harness.h"
#include "rivet/app.h"
#include "rivet/common.h"

#define DOC_PATH "docs/openapi.json"
#define RENDERER "tools/render_docs.py"

/* The public routes, as the landing page, Stripe and operators call them. */
static const struct {
    const char *method;
    const char *path;
} public_routes[] = {
    {"GET", "/health"},
    {"GET", "/ready"},
    {"GET", "/"},
    {"POST", "/api/checkout/create"},
    {"GET", "/api/checkout/success"},
    {"POST", "/api/billing/portal"},
    {"POST", "/api/webhooks/stripe"},
    {"GET", "/openapi.json"},
    {"GET", "/docs"},
};

static th_proc_t daemon_proc;
static char *doc_text; /* docs/openapi.json as read from the tree */
static size_t doc_len;

/* ---- helpers ------------------------------------------------------------------------------- */

/* Read a whole file (at most 16 MiB) into a malloc'd NUL-terminated buffer, or NULL. */
static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap) break;
        if (cap >= 16u << 20) {
            free(buf);
            buf = NULL;
            break;
        }
        char *nb = realloc(buf, cap * 2 + 1);
        if (nb == NULL) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    fclose(f);
    if (buf == NULL) return NULL;
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

static cJSON *parse_doc(const char *text, size_t len) {
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (j == NULL)
        fail_msg("the API description is not valid JSON (near: %.40s)",
                 cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "?");
    return j;
}

static void lower(const char *in, char *out, size_t outlen) {
    size_t i = 0;
    for (; in[i] && i + 1 < outlen; i++) out[i] = (char)tolower((unsigned char)in[i]);
    out[i] = '\0';
}

/* The operation object for (method, path), or NULL. */
static const cJSON *operation(const cJSON *doc, const char *method, const char *path) {
    char m[16];
    lower(method, m, sizeof m);
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(doc, "paths");
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(paths, path);
    return cJSON_GetObjectItemCaseSensitive(item, m);
}

static int is_http_method(const char *s) {
    static const char *const m[] = {"get",     "put",  "post",  "delete",
                                    "options", "head", "patch", "trace"};
    for (size_t i = 0; i < RV_ARRAY_LEN(m); i++)
        if (strcmp(m[i], s) == 0) return 1;
    return 0;
}

static size_t count_operations(const cJSON *doc) {
    size_t n = 0;
    const cJSON *item, *op;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(doc, "paths")) {
        cJSON_ArrayForEach(op, item) {
            if (is_http_method(op->string)) n++;
        }
    }
    return n;
}

/* Resolve a local JSON pointer ("#/components/schemas/Error") in doc. */
static const cJSON *pointer(const cJSON *doc, const char *ref) {
    if (strncmp(ref, "#/", 2) != 0) return NULL;
    const cJSON *cur = doc;
    const char *p = ref + 2;
    while (cur && *p) {
        char key[256];
        size_t k = 0;
        for (; *p && *p != '/'; p++) {
            char c = *p;
            if (c == '~' && (p[1] == '0' || p[1] == '1')) c = *++p == '1' ? '/' : '~';
            if (k + 1 >= sizeof key) return NULL;
            key[k++] = c;
        }
        key[k] = '\0';
        if (*p == '/') p++;
        cur = cJSON_GetObjectItemCaseSensitive(cur, key);
    }
    return cur;
}

/* Every "$ref" under node leads somewhere; returns how many were checked. */
static int check_refs(const cJSON *doc, const cJSON *node) {
    int n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, node) {
        if (c->string && strcmp(c->string, "$ref") == 0) {
            if (!cJSON_IsString(c) || pointer(doc, c->valuestring) == NULL)
                fail_msg("dangling $ref %s", cJSON_IsString(c) ? c->valuestring : "(not a string)");
            n++;
        }
        n += check_refs(doc, c);
    }
    return n;
}

static int get(const char *path, th_response_t *r) {
    memset(r, 0, sizeof *r);
    return th_request(daemon_proc.port, "GET", path, NULL, NULL, r);
}

/* The status of a command run by the shell (-1 when it did not exit normally). */
static int exit_status(int st) { return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1; }

/* ---- setup --------------------------------------------------------------------------------- */

static int group_setup(void **state) {
    doc_text = read_file(DOC_PATH, &doc_len);
    if (doc_text == NULL) {
        fprintf(stderr, "cannot read %s (run the tests from the top of the tree): %s\n", DOC_PATH,
                strerror(errno));
        return -1;
    }
    if (th_rivetd_start(&daemon_proc, NULL) != 0) {
        fprintf(stderr, "rivetd did not start (log: %s)\n", daemon_proc.log_path);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    int st = daemon_proc.pid > 0 ? th_stop(&daemon_proc, SIGTERM, 5000) : 0;
    free(doc_text);
    if (st != 0) fprintf(stderr, "rivetd exited with status %d\n", st);
    return st == 0 ? 0 : -1;
}

/* ---- the document -------------------------------------------------------------------------- */

static void test_document_is_openapi_31(void **state) {
    cJSON *doc = parse_doc(doc_text, doc_len);
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "openapi"));
    if (v == NULL || strncmp(v, "3.1", 3) != 0)
        fail_msg("openapi is %s, expected 3.1.x", v ? v : "absent");
    const cJSON *info = cJSON_GetObjectItemCaseSensitive(doc, "info");
    const char *title = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(info, "title"));
    const char *version = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(info, "version"));
    assert_non_null(title);
    assert_true(title[0] != '\0');
    assert_non_null(version);
    assert_string_equal(version, RV_VERSION);
    /* The admin listener's /metrics is described, but not as a public path. */
    const char *desc = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(info, "description"));
    assert_non_null(desc);
    assert_non_null(strstr(desc, "/metrics"));
    assert_null(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "paths"),
                                                 "/metrics"));
    /* Every operation has a summary and answers; every reference resolves. */
    const cJSON *item, *op;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(doc, "paths")) {
        cJSON_ArrayForEach(op, item) {
            if (!is_http_method(op->string)) continue;
            if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(op, "summary")))
                fail_msg("%s %s has no summary", op->string, item->string);
            const cJSON *resp = cJSON_GetObjectItemCaseSensitive(op, "responses");
            if (!cJSON_IsObject(resp) || resp->child == NULL)
                fail_msg("%s %s has no responses", op->string, item->string);
        }
    }
    assert_true(check_refs(doc, doc) > 10);
    const cJSON *bearer = pointer(doc, "#/components/securitySchemes/bearerAuth");
    assert_non_null(bearer);
    assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(bearer, "scheme")),
                        "bearer");
    cJSON_Delete(doc);
}

static void test_document_lists_every_public_route(void **state) {
    cJSON *doc = parse_doc(doc_text, doc_len);
    for (size_t i = 0; i < RV_ARRAY_LEN(public_routes); i++) {
        if (operation(doc, public_routes[i].method, public_routes[i].path) == NULL)
            fail_msg("%s %s is not described", public_routes[i].method, public_routes[i].path);
    }
    /* Whatever the route table serves publicly is described too (CORS preflights included), and
     * every route above is in the table. */
    for (size_t i = 0; i < rv_public_nroutes; i++) {
        if (operation(doc, rv_public_routes[i].method, rv_public_routes[i].path) == NULL)
            fail_msg("the route table serves %s %s, which is not described",
                     rv_public_routes[i].method, rv_public_routes[i].path);
    }
    for (size_t i = 0; i < RV_ARRAY_LEN(public_routes); i++) {
        int found = 0;
        for (size_t k = 0; k < rv_public_nroutes && !found; k++)
            found = strcmp(rv_public_routes[k].method, public_routes[i].method) == 0 &&
                    strcmp(rv_public_routes[k].path, public_routes[i].path) == 0;
        if (!found)
            fail_msg("%s %s is missing from rv_public_routes", public_routes[i].method,
                     public_routes[i].path);
    }
    /* Shapes the callers depend on. */
    const cJSON *create = operation(doc, "POST", "/api/checkout/create");
    const cJSON *r422 = pointer(create, "#/responses/422/content/application~1json/schema/$ref");
    assert_non_null(r422);
    assert_string_equal(r422->valuestring, "#/components/schemas/HTTPValidationError");
    const cJSON *tiers = pointer(doc, "#/components/schemas/CheckoutRequest/properties/tier/enum");
    assert_int_equal(cJSON_GetArraySize(tiers), 3);
    const cJSON *st = pointer(doc, "#/components/schemas/CheckoutSuccess/properties/status/enum");
    assert_int_equal(cJSON_GetArraySize(st), 3);
    const cJSON *hook = operation(doc, "POST", "/api/webhooks/stripe");
    assert_non_null(pointer(hook, "#/responses/503"));
    const cJSON *portal = operation(doc, "POST", "/api/billing/portal");
    assert_non_null(pointer(portal, "#/responses/401"));
    assert_non_null(cJSON_GetObjectItemCaseSensitive(portal, "security"));
    cJSON_Delete(doc);
}

/* ---- served -------------------------------------------------------------------------------- */

static void test_openapi_json_served(void **state) {
    th_response_t r;
    if (get("/openapi.json", &r) != 0) fail_msg("no answer to GET /openapi.json");
    if (r.status != 200) fail_msg("GET /openapi.json: status %d: %s", r.status, r.body);
    const char *ct = th_header(&r, "Content-Type");
    assert_non_null(ct);
    assert_true(strncasecmp(ct, "application/json", 16) == 0);
    /* The binary carries the tree's document, unchanged. */
    assert_int_equal(r.body_len, doc_len);
    assert_memory_equal(r.body, doc_text, doc_len);
    cJSON *doc = parse_doc(r.body, r.body_len);
    const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "openapi"));
    assert_non_null(v);
    assert_true(strncmp(v, "3.1", 3) == 0);
    for (size_t i = 0; i < RV_ARRAY_LEN(public_routes); i++) {
        if (operation(doc, public_routes[i].method, public_routes[i].path) == NULL)
            fail_msg("served document lacks %s %s", public_routes[i].method, public_routes[i].path);
    }
    cJSON_Delete(doc);
    th_response_free(&r);
}

/* "<code class="path">/x</code>": how the page shows a route's path. */
static int has_path(const char *html, const char *method, const char *path) {
    char needle[256];
    snprintf(needle, sizeof needle, ">%s</span> <code class=\"path\">%s</code>", method, path);
    return strstr(html, needle) != NULL;
}

static size_t count(const char *hay, const char *needle) {
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

/* s with the five HTML-significant characters escaped, as the page writes text, into out. */
static void html_escape(const char *s, char *out, size_t outlen) {
    size_t n = 0;
    for (; *s; s++) {
        const char *e;
        char one[2] = {*s, '\0'};
        switch (*s) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '"': e = "&quot;"; break;
        case '\'': e = "&#39;"; break;
        default: e = one; break;
        }
        size_t len = strlen(e);
        if (n + len >= outlen) fail_msg("cannot escape %.40s: longer than %zu bytes", s, outlen);
        memcpy(out + n, e, len);
        n += len;
    }
    out[n] = '\0';
}

/* The page's id for a named component: the prefix, then the name with every byte other than an
 * ASCII letter or digit written as '-'. */
static void anchor_id(const char *prefix, const char *name, char *out, size_t outlen) {
    size_t n = strlen(prefix);
    if (n + strlen(name) >= outlen)
        fail_msg("the id of %.40s is longer than %zu bytes", name, outlen);
    memcpy(out, prefix, n);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        out[n++] = *p < 0x80 && isalnum(*p) ? (char)*p : '-';
    out[n] = '\0';
}

static void upper(const char *in, char *out, size_t outlen) {
    size_t i = 0;
    for (; in[i] && i + 1 < outlen; i++) out[i] = (char)toupper((unsigned char)in[i]);
    out[i] = '\0';
}

/* Where needle first occurs in html at or after from, or fail saying what is missing. */
static const char *expect_after(const char *html, const char *from, const char *needle,
                                const char *what) {
    const char *at = strstr(from, needle);
    if (at == NULL) {
        fail_msg("%s: the page %s %s", what, strstr(html, needle) ? "has out of order" : "lacks",
                 needle);
    }
    return at;
}

static void test_docs_page_served(void **state) {
    th_response_t r;
    if (get("/docs", &r) != 0) fail_msg("no answer to GET /docs");
    if (r.status != 200) fail_msg("GET /docs: status %d: %s", r.status, r.body);
    const char *ct = th_header(&r, "Content-Type");
    assert_non_null(ct);
    assert_string_equal(ct, "text/html; charset=utf-8");
    const char *csp = th_header(&r, "Content-Security-Policy");
    assert_non_null(csp);
    assert_non_null(strstr(csp, "default-src 'none'"));
    const char *html = r.body;
    assert_true(strncmp(html, "<!DOCTYPE html>", 15) == 0);
    assert_non_null(strstr(html, "</html>"));
    /* Self-contained: no scripts, no external style sheets, images or frames. */
    assert_null(strcasestr(html, "<script"));
    assert_null(strcasestr(html, "<link"));
    assert_null(strcasestr(html, " src="));
    assert_null(strcasestr(html, "<iframe"));
    for (size_t i = 0; i < RV_ARRAY_LEN(public_routes); i++) {
        if (!has_path(html, public_routes[i].method, public_routes[i].path))
            fail_msg("the page does not show %s %s", public_routes[i].method,
                     public_routes[i].path);
    }
    /* One section per operation of the document. */
    cJSON *doc = parse_doc(doc_text, doc_len);
    assert_int_equal(count(html, "<section class=\"op\""), count_operations(doc));
    /* Everything from the document is escaped: the overview quotes {"detail": "..."}. */
    const char *desc = cJSON_GetStringValue(pointer(doc, "#/info/description"));
    assert_non_null(desc);
    assert_non_null(strstr(desc, "{\"detail\": \"...\"}"));
    assert_null(strstr(html, "{\"detail\""));
    assert_non_null(strstr(html, "{&quot;detail&quot;: &quot;...&quot;}"));
    /* Request fields and answer codes are on the page. */
    assert_non_null(strstr(html, "<code>success_url</code>"));
    assert_non_null(strstr(html, "<code>telegram_link</code>"));
    assert_non_null(strstr(html, ">422</span>"));
    assert_non_null(strstr(html, ">503</span>"));
    cJSON_Delete(doc);

    /* Served the same every time. */
    th_response_t again;
    if (get("/docs", &again) != 0) fail_msg("no answer to the second GET /docs");
    assert_int_equal(again.status, 200);
    assert_int_equal(again.body_len, r.body_len);
    assert_memory_equal(again.body, r.body, r.body_len);
    th_response_free(&again);
    th_response_free(&r);
}

/* The page shows the whole document in its order: the title, every operation (method, path,
 * summary) in the contents and in a section of its own, then every common response, schema (with
 * its fields) and security scheme; and every link within the page leads to an id on it. */
static void test_docs_page_shows_document(void **state) {
    th_response_t r;
    if (get("/docs", &r) != 0) fail_msg("no answer to GET /docs");
    if (r.status != 200) fail_msg("GET /docs: status %d: %s", r.status, r.body);
    const char *html = r.body;
    cJSON *doc = parse_doc(doc_text, doc_len);
    char a[512], b[512], c[512], needle[2048];

    const cJSON *info = cJSON_GetObjectItemCaseSensitive(doc, "info");
    html_escape(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(info, "title")), a, sizeof a);
    html_escape(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(info, "version")), b,
                sizeof b);
    snprintf(needle, sizeof needle, "<title>%s</title>", a);
    expect_after(html, html, needle, "title");
    snprintf(needle, sizeof needle, "<h1>%s <small>version %s</small></h1>", a, b);
    expect_after(html, html, needle, "heading");

    const char *toc = html, *sec = html;
    int index = 0;
    const cJSON *item, *op;
    cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(doc, "paths")) {
        cJSON_ArrayForEach(op, item) {
            if (!is_http_method(op->string)) continue;
            upper(op->string, a, sizeof a);
            html_escape(item->string, b, sizeof b);
            html_escape(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(op, "summary")), c,
                        sizeof c);
            snprintf(needle, sizeof needle,
                     "<li><a href=\"#op-%d\"><span class=\"method m-%s\">%s</span> <code>%s</code>"
                     "</a> &mdash; %s</li>",
                     index, op->string, a, b, c);
            toc = expect_after(html, toc, needle, "contents");
            snprintf(needle, sizeof needle,
                     "<section class=\"op\" id=\"op-%d\">\n<h3><span class=\"method m-%s\">%s"
                     "</span> <code class=\"path\">%s</code> <span class=\"summary\">&mdash; %s"
                     "</span></h3>",
                     index, op->string, a, b, c);
            sec = expect_after(html, sec, needle, "operations");
            index++;
        }
    }
    assert_int_equal(count(html, "<section class=\"op\""), index);

    static const struct {
        const char *member, *prefix;
    } kinds[] = {
        {"responses", "response-"}, {"schemas", "schema-"}, {"securitySchemes", "security-"}};
    const cJSON *comps = cJSON_GetObjectItemCaseSensitive(doc, "components");
    const char *at = sec;
    size_t ncomp = 0;
    for (size_t k = 0; k < RV_ARRAY_LEN(kinds); k++) {
        const cJSON *x;
        cJSON_ArrayForEach(x, cJSON_GetObjectItemCaseSensitive(comps, kinds[k].member)) {
            anchor_id(kinds[k].prefix, x->string, a, sizeof a);
            html_escape(x->string, b, sizeof b);
            snprintf(needle, sizeof needle, "<section class=\"comp\" id=\"%s\"><h3>%s</h3>", a, b);
            at = expect_after(html, at, needle, kinds[k].member);
            ncomp++;
            /* A schema's section lists its fields. */
            const char *end = strstr(at, "</section>");
            assert_non_null(end);
            const cJSON *field;
            cJSON_ArrayForEach(field, cJSON_GetObjectItemCaseSensitive(x, "properties")) {
                html_escape(field->string, b, sizeof b);
                snprintf(needle, sizeof needle, "<tr><td><code>%s</code>", b);
                const char *f = strstr(at, needle);
                if (f == NULL || f > end)
                    fail_msg("the section of schema %s does not list its field %s", x->string,
                             field->string);
            }
        }
    }
    assert_true(ncomp > 5);
    assert_int_equal(count(html, "<section class=\"comp\""), ncomp);

    size_t links = 0;
    for (const char *p = html; (p = strstr(p, "href=\"#")) != NULL; links++) {
        p += strlen("href=\"#");
        const char *q = strchr(p, '"');
        assert_non_null(q);
        snprintf(needle, sizeof needle, " id=\"%.*s\"", (int)(q - p), p);
        if (strstr(html, needle) == NULL)
            fail_msg("the link to #%.*s leads nowhere", (int)(q - p), p);
    }
    assert_true(links > (size_t)index);
    cJSON_Delete(doc);
    th_response_free(&r);
}

/* The served page is, byte for byte, what the renderer makes of the tree's document now: an
 * edit of either that did not rebuild the page and the binary shows here. */
static void test_docs_page_is_current(void **state) {
    char dir[] = "/tmp/rivet-render-XXXXXX";
    if (mkdtemp(dir) == NULL) fail_msg("mkdtemp: %s", strerror(errno));
    char cmd[1024], path[256];
    snprintf(path, sizeof path, "%s/docs.html", dir);
    snprintf(cmd, sizeof cmd, "python3 %s %s %s 2>%s/render.log", RENDERER, DOC_PATH, path, dir);
    int st = exit_status(system(cmd));
    size_t len = 0;
    char *page = read_file(path, &len);
    snprintf(path, sizeof path, "%s/render.log", dir);
    char *log = read_file(path, NULL);
    char why[512];
    snprintf(why, sizeof why, "%s", log ? log : "");
    free(log);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    if (st != 0 || page == NULL)
        fail_msg("%s %s failed (status %d): %s", RENDERER, DOC_PATH, st, why);

    th_response_t r;
    if (get("/docs", &r) != 0) fail_msg("no answer to GET /docs");
    if (r.status != 200) fail_msg("GET /docs: status %d: %s", r.status, r.body);
    if (r.body_len != len || memcmp(r.body, page, len) != 0) {
        size_t i = 0;
        while (i < len && i < r.body_len && r.body[i] == page[i]) i++;
        fail_msg("the served page (%zu bytes) is not what %s renders now (%zu bytes): they part "
                 "at byte %zu, served \"%.40s\", rendered \"%.40s\" (rebuild the binary)",
                 r.body_len, RENDERER, len, i, r.body + i, page + i);
    }
    free(page);
    th_response_free(&r);
}

/* ---- rendered by a browser ------------------------------------------------------------------ */

static void test_docs_rendered_by_chromium(void **state) {
    if (exit_status(system("command -v chromium >/dev/null 2>&1")) != 0)
        fail_msg("chromium is not installed: the /docs page must be checked in a real browser "
                 "(apt-get install chromium, as deps/install.sh does)");
    char dir[] = "/tmp/rivet-docs-XXXXXX";
    if (mkdtemp(dir) == NULL) fail_msg("mkdtemp: %s", strerror(errno));
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-quic "
             "--no-first-run --disable-background-networking --disable-component-update "
             "--disable-sync --user-data-dir=%s/profile --dump-dom http://127.0.0.1:%d/docs "
             "2>%s/chromium.log",
             dir, daemon_proc.port, dir);
    FILE *p = popen(cmd, "r");
    if (p == NULL) fail_msg("popen: %s", strerror(errno));
    rv_buf_t dom = RV_BUF_INIT;
    dom.limit = 8u << 20;
    char chunk[65536];
    size_t n;
    int rc = 0;
    while ((n = fread(chunk, 1, sizeof chunk, p)) > 0 && rc == 0)
        rc = rv_buf_append(&dom, chunk, n);
    int st = exit_status(pclose(p));
    char log[2048] = "";
    char logpath[256];
    snprintf(logpath, sizeof logpath, "%s/chromium.log", dir);
    char *logtext = read_file(logpath, NULL);
    if (logtext) {
        size_t ll = strlen(logtext);
        snprintf(log, sizeof log, "%s", ll > 1500 ? logtext + ll - 1500 : logtext);
        free(logtext);
    }
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    if (rc != 0) fail_msg("the rendered DOM is larger than 8 MiB");
    if (st != 0) fail_msg("chromium exited with status %d; its log ends:\n%s", st, log);
    if (dom.data == NULL || strstr(dom.data, "<main>") == NULL)
        fail_msg("chromium rendered no documentation page (DOM: %.300s); its log ends:\n%s",
                 dom.data ? dom.data : "(empty)", log);
    const char *html = dom.data;
    assert_non_null(strstr(html, "Rivet API"));
    for (size_t i = 0; i < RV_ARRAY_LEN(public_routes); i++) {
        if (!has_path(html, public_routes[i].method, public_routes[i].path))
            fail_msg("the rendered page does not list %s %s", public_routes[i].method,
                     public_routes[i].path);
    }
    /* The browser built the same structure the server sent: every operation's section. */
    cJSON *doc = parse_doc(doc_text, doc_len);
    assert_int_equal(count(html, "<section class=\"op\""), count_operations(doc));
    cJSON_Delete(doc);
    rv_buf_free(&dom);
}

#define T(f) cmocka_unit_test(f)

int main(void) {
    const struct CMUnitTest tests[] = {
        T(test_document_is_openapi_31),    T(test_document_lists_every_public_route),
        T(test_openapi_json_served),       T(test_docs_page_served),
        T(test_docs_page_shows_document),  T(test_docs_page_is_current),
        T(test_docs_rendered_by_chromium),
    };
    const char *filter = getenv("RIVET_TEST_FILTER");
    if (filter && *filter) cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
