/* GET /openapi.json and GET /docs: the API description, built into the binary from
 * docs/openapi.json, served as it is and as a readable HTML page.
 *
 * The page is rendered from the same document, so the two cannot disagree: the first request
 * for /docs parses the JSON once with cJSON, renders the HTML, and keeps only the HTML for every
 * later request. Every string from the document is HTML-escaped. The page is self-contained:
 * inline CSS, no scripts, no external assets (the answer's Content-Security-Policy says so). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "rivet/app.h"
#include "rivet/buf.h"
#include "rivet/common.h"
#include "rivet/log.h"

/* ---- the embedded document -------------------------------------------------------------- */

/* The assembler includes the file's bytes at build time (the Makefile compiles from the top of
 * the tree, and mk/ops.mk makes this object depend on the file). A NUL follows the bytes, not
 * counted in the length, so the text is also a C string. */
#ifndef RV_OPENAPI_PATH
#define RV_OPENAPI_PATH "docs/openapi.json"
#endif
#if SIZE_MAX > 0xffffffffu
#define RV_ASM_SIZE_T ".quad"
#else
#define RV_ASM_SIZE_T ".long"
#endif

__asm__(".pushsection .rodata\n"
        ".global rv_openapi_json\n"
        ".type rv_openapi_json, \"object\"\n"
        ".balign 16\n"
        "rv_openapi_json:\n"
        ".incbin \"" RV_OPENAPI_PATH "\"\n"
        ".Lrv_openapi_json_end:\n"
        ".byte 0\n"
        ".size rv_openapi_json, . - rv_openapi_json\n"
        ".global rv_openapi_json_len\n"
        ".type rv_openapi_json_len, \"object\"\n"
        ".balign 8\n"
        "rv_openapi_json_len:\n" RV_ASM_SIZE_T " .Lrv_openapi_json_end - rv_openapi_json\n"
        ".size rv_openapi_json_len, . - rv_openapi_json_len\n"
        ".popsection\n");

/* Defined by the assembly above: the document's bytes (NUL-terminated) and their length. */
extern const unsigned char rv_openapi_json[];
extern const size_t rv_openapi_json_len;

void rv_handle_openapi(rv_request_t *req) {
    rv_respond_static(req, 200, "application/json", (const char *)rv_openapi_json,
                      rv_openapi_json_len, "Cache-Control: public, max-age=300\r\n");
}

/* ---- rendering -------------------------------------------------------------------------- */

/* The rendering state: errors stick in rc, so the emitters can be called in a row and checked
 * once at the end. */
typedef struct render_s {
    rv_buf_t *out;
    const cJSON *root;
    int rc;
} render_t;

static void put(render_t *r, const char *s) {
    if (r->rc == 0) r->rc = rv_buf_puts(r->out, s);
}

static void putn(render_t *r, const char *s, size_t n) {
    if (r->rc == 0) r->rc = rv_buf_append(r->out, s, n);
}

/* Append n bytes of s with the five HTML-significant characters escaped. */
static void escn(render_t *r, const char *s, size_t n) {
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e;
        switch (s[i]) {
        case '&': e = "&amp;"; break;
        case '<': e = "&lt;"; break;
        case '>': e = "&gt;"; break;
        case '"': e = "&quot;"; break;
        case '\'': e = "&#39;"; break;
        default: continue;
        }
        putn(r, s + start, i - start);
        put(r, e);
        start = i + 1;
    }
    putn(r, s + start, n - start);
}

static void esc(render_t *r, const char *s) { escn(r, s, strlen(s)); }

/* Inline text of a description: `code` spans become <code>, everything else is escaped. */
static void inline_text(render_t *r, const char *s, size_t n) {
    int code = 0;
    while (n > 0) {
        const char *tick = memchr(s, '`', n);
        size_t len = tick ? (size_t)(tick - s) : n;
        escn(r, s, len);
        if (tick == NULL) break;
        put(r, code ? "</code>" : "<code>");
        code = !code;
        s += len + 1;
        n -= len + 1;
    }
    if (code) put(r, "</code>");
}

/* A description: paragraphs separated by blank lines, each in <p>. */
static void paragraphs(render_t *r, const char *s) {
    while (*s) {
        const char *end = strstr(s, "\n\n");
        size_t len = end ? (size_t)(end - s) : strlen(s);
        if (len > 0) {
            put(r, "<p>");
            inline_text(r, s, len);
            put(r, "</p>\n");
        }
        if (end == NULL) break;
        s = end + 2;
    }
}

static const char *str_of(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Follow local "$ref"s ("#/components/..."), at most a few deep. Returns NULL for a reference
 * that leads nowhere. */
static const cJSON *resolve(const render_t *r, const cJSON *node) {
    for (int depth = 0; node && depth < 8; depth++) {
        const char *ref = str_of(node, "$ref");
        if (ref == NULL) return node;
        if (strncmp(ref, "#/", 2) != 0) return NULL;
        const cJSON *cur = r->root;
        const char *p = ref + 2;
        while (cur && *p) {
            char key[128];
            size_t k = 0;
            for (; *p && *p != '/'; p++) {
                char c = *p;
                /* JSON pointer escapes: "~1" is "/", "~0" is "~". */
                if (c == '~' && (p[1] == '0' || p[1] == '1')) c = *++p == '1' ? '/' : '~';
                if (k + 1 >= sizeof key) return NULL;
                key[k++] = c;
            }
            key[k] = '\0';
            if (*p == '/') p++;
            cur = cJSON_GetObjectItemCaseSensitive(cur, key);
        }
        node = cur;
    }
    return NULL;
}

/* The last part of a "$ref" to a component ("#/components/schemas/Error" gives "Error"). */
static const char *ref_name(const cJSON *node, const char *kind) {
    const char *ref = str_of(node, "$ref");
    char prefix[64];
    snprintf(prefix, sizeof prefix, "#/components/%s/", kind);
    size_t n = strlen(prefix);
    return ref && strncmp(ref, prefix, n) == 0 ? ref + n : NULL;
}

/* A JSON value in <code>, compactly. */
static void json_code(render_t *r, const cJSON *v) {
    char *s = cJSON_PrintUnformatted(v);
    if (s == NULL) {
        r->rc = RV_ENOMEM;
        return;
    }
    put(r, "<code>");
    esc(r, s);
    put(r, "</code>");
    cJSON_free(s);
}

/* Anchor ids: "schema-" and the name, letters, digits and '-' only. */
static void anchor(render_t *r, const char *prefix, const char *name) {
    put(r, prefix);
    for (const char *p = name; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        putn(r, ok ? &c : "-", 1);
    }
}

/* One line saying what a schema admits: its type (a link for a named schema), constant or
 * allowed values, format and bounds. */
static void schema_type(render_t *r, const cJSON *schema, int depth) {
    const char *name = ref_name(schema, "schemas");
    if (name) {
        put(r, "<a href=\"#");
        anchor(r, "schema-", name);
        put(r, "\">");
        esc(r, name);
        put(r, "</a>");
        return;
    }
    schema = resolve(r, schema);
    if (schema == NULL || depth > 4) {
        put(r, "any");
        return;
    }
    const cJSON *all = cJSON_GetObjectItemCaseSensitive(schema, "allOf");
    if (cJSON_IsArray(all)) {
        const cJSON *part;
        int first = 1;
        cJSON_ArrayForEach(part, all) {
            size_t before = r->out->len;
            if (!first) put(r, " and ");
            size_t mark = r->out->len;
            schema_type(r, part, depth + 1);
            if (r->rc == 0 && r->out->len == mark) {
                /* The part said nothing of its own (only constraints): drop the " and ". */
                r->out->len = before;
                if (r->out->data) r->out->data[before] = '\0';
                continue;
            }
            first = 0;
        }
    }
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(schema, "type");
    const cJSON *t;
    int is_array = 0;
    if (cJSON_IsString(type)) {
        is_array = strcmp(type->valuestring, "array") == 0;
        if (!is_array) esc(r, type->valuestring);
    } else if (cJSON_IsArray(type)) {
        int first = 1;
        cJSON_ArrayForEach(t, type) {
            if (!cJSON_IsString(t)) continue;
            if (!first) put(r, " or ");
            first = 0;
            if (strcmp(t->valuestring, "array") == 0) is_array = 1;
            esc(r, t->valuestring);
        }
    }
    if (is_array) {
        put(r, "array of ");
        const cJSON *items = cJSON_GetObjectItemCaseSensitive(schema, "items");
        if (items) schema_type(r, items, depth + 1);
        else put(r, "any");
    }
    const char *fmt = str_of(schema, "format");
    if (fmt) {
        put(r, " (");
        esc(r, fmt);
        put(r, ")");
    }
    const cJSON *cst = cJSON_GetObjectItemCaseSensitive(schema, "const");
    if (cst) {
        put(r, ", always ");
        json_code(r, cst);
    }
    const cJSON *en = cJSON_GetObjectItemCaseSensitive(schema, "enum");
    if (cJSON_IsArray(en)) {
        put(r, ", one of ");
        int first = 1;
        cJSON_ArrayForEach(t, en) {
            if (!first) put(r, ", ");
            first = 0;
            json_code(r, t);
        }
    }
    const char *pattern = str_of(schema, "pattern");
    if (pattern) {
        put(r, ", matching <code>");
        esc(r, pattern);
        put(r, "</code>");
    }
    static const char *const bounds[][3] = {{"minLength", "at least", " characters"},
                                            {"maxLength", "at most", " characters"},
                                            {"minimum", "at least", ""},
                                            {"maximum", "at most", ""}};
    for (size_t i = 0; i < RV_ARRAY_LEN(bounds); i++) {
        const cJSON *b = cJSON_GetObjectItemCaseSensitive(schema, bounds[i][0]);
        if (!cJSON_IsNumber(b)) continue;
        if (i == 0 && b->valuedouble == 1) {
            put(r, ", not empty");
            continue;
        }
        char text[96];
        snprintf(text, sizeof text, ", %s %g%s", bounds[i][1], b->valuedouble, bounds[i][2]);
        put(r, text);
    }
}

static int is_required(const cJSON *schema, const char *field) {
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(schema, "required");
    const cJSON *x;
    cJSON_ArrayForEach(x, req) {
        if (cJSON_IsString(x) && strcmp(x->valuestring, field) == 0) return 1;
    }
    return 0;
}

/* The fields of an object schema as a table; nothing for a schema without properties. */
static void fields_table(render_t *r, const cJSON *schema) {
    schema = resolve(r, schema);
    const cJSON *props = schema ? cJSON_GetObjectItemCaseSensitive(schema, "properties") : NULL;
    if (!cJSON_IsObject(props) || props->child == NULL) return;
    put(r, "<table class=\"fields\">\n<thead><tr><th>Field</th><th>Type</th><th>Description</th>"
           "</tr></thead>\n<tbody>\n");
    const cJSON *p;
    cJSON_ArrayForEach(p, props) {
        put(r, "<tr><td><code>");
        esc(r, p->string);
        put(r, "</code>");
        if (is_required(schema, p->string)) put(r, " <span class=\"req\">required</span>");
        put(r, "</td><td>");
        schema_type(r, p, 0);
        put(r, "</td><td>");
        const cJSON *pr = resolve(r, p);
        const char *d = pr ? str_of(pr, "description") : NULL;
        if (d) inline_text(r, d, strlen(d));
        put(r, "</td></tr>\n");
    }
    put(r, "</tbody></table>\n");
}

/* A "content" map: per media type, the schema's type line, its fields, and the example. The
 * fields of a named schema are listed when all_fields is set (request bodies, successful
 * answers); otherwise its name links to them, which keeps the many error answers short. */
static void content(render_t *r, const cJSON *c, int all_fields) {
    const cJSON *media;
    cJSON_ArrayForEach(media, c) {
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(media, "schema");
        put(r, "<p class=\"media\"><code>");
        esc(r, media->string);
        put(r, "</code>");
        if (schema) {
            put(r, ": ");
            schema_type(r, schema, 0);
        }
        put(r, "</p>\n");
        if (schema && (all_fields || ref_name(schema, "schemas") == NULL)) fields_table(r, schema);
        const cJSON *ex = cJSON_GetObjectItemCaseSensitive(media, "example");
        if (ex) {
            char *s = cJSON_Print(ex);
            if (s == NULL) {
                r->rc = RV_ENOMEM;
                return;
            }
            put(r, "<details><summary>Example</summary><pre>");
            esc(r, s);
            put(r, "</pre></details>\n");
            cJSON_free(s);
        }
    }
}

static void parameters(render_t *r, const cJSON *params) {
    if (!cJSON_IsArray(params) || params->child == NULL) return;
    put(r, "<h4>Parameters</h4>\n<table class=\"fields\">\n<thead><tr><th>Name</th><th>In</th>"
           "<th>Type</th><th>Description</th></tr></thead>\n<tbody>\n");
    const cJSON *p;
    cJSON_ArrayForEach(p, params) {
        const cJSON *pr = resolve(r, p);
        if (pr == NULL) continue;
        const char *name = str_of(pr, "name");
        const char *in = str_of(pr, "in");
        const char *d = str_of(pr, "description");
        const cJSON *schema = cJSON_GetObjectItemCaseSensitive(pr, "schema");
        put(r, "<tr><td><code>");
        esc(r, name ? name : "?");
        put(r, "</code>");
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pr, "required")))
            put(r, " <span class=\"req\">required</span>");
        put(r, "</td><td>");
        esc(r, in ? in : "");
        put(r, "</td><td>");
        if (schema) schema_type(r, schema, 0);
        put(r, "</td><td>");
        if (d) inline_text(r, d, strlen(d));
        put(r, "</td></tr>\n");
    }
    put(r, "</tbody></table>\n");
}

static void request_body(render_t *r, const cJSON *body) {
    body = resolve(r, body);
    if (body == NULL) return;
    put(r, "<h4>Request body");
    put(r, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(body, "required"))
               ? " <span class=\"req\">required</span>"
               : " <span class=\"opt\">optional</span>");
    put(r, "</h4>\n");
    const char *d = str_of(body, "description");
    if (d) paragraphs(r, d);
    content(r, cJSON_GetObjectItemCaseSensitive(body, "content"), 1);
}

/* The headers of a response or a common response, as a short list. */
static void resp_headers(render_t *r, const cJSON *headers) {
    if (!cJSON_IsObject(headers) || headers->child == NULL) return;
    put(r, "<p class=\"hdrs\">Headers:</p>\n<ul class=\"hdrs\">\n");
    const cJSON *h;
    cJSON_ArrayForEach(h, headers) {
        const cJSON *hr = resolve(r, h);
        const char *d = hr ? str_of(hr, "description") : NULL;
        put(r, "<li><code>");
        esc(r, h->string);
        put(r, "</code>");
        if (d) {
            put(r, " &mdash; ");
            inline_text(r, d, strlen(d));
        }
        put(r, "</li>\n");
    }
    put(r, "</ul>\n");
}

static void response(render_t *r, const char *code, const cJSON *resp, int link_common) {
    const char *common = ref_name(resp, "responses");
    const cJSON *rr = resolve(r, resp);
    char cls[16] = "other";
    if (code[0] >= '1' && code[0] <= '5' && strlen(code) == 3)
        snprintf(cls, sizeof cls, "s%cxx", code[0]);
    put(r, "<div class=\"resp\"><p>");
    if (code[0]) {
        put(r, "<span class=\"status ");
        put(r, cls);
        put(r, "\">");
        esc(r, strcmp(code, "default") == 0 ? "other" : code);
        put(r, "</span> ");
    }
    const char *d = rr ? str_of(rr, "description") : NULL;
    if (d) inline_text(r, d, strlen(d));
    if (common && link_common) {
        put(r, " <a class=\"see\" href=\"#");
        anchor(r, "response-", common);
        put(r, "\">see ");
        esc(r, common);
        put(r, "</a></p>\n");
    } else {
        put(r, "</p>\n");
    }
    if (rr) resp_headers(r, cJSON_GetObjectItemCaseSensitive(rr, "headers"));
    const cJSON *c = rr ? cJSON_GetObjectItemCaseSensitive(rr, "content") : NULL;
    if (common && link_common) {
        /* A common response is described in full once, under "Common responses": here only
         * its media types and schema names. */
        const cJSON *media;
        cJSON_ArrayForEach(media, c) {
            const cJSON *schema = cJSON_GetObjectItemCaseSensitive(media, "schema");
            put(r, "<p class=\"media\"><code>");
            esc(r, media->string);
            put(r, "</code>");
            if (schema) {
                put(r, ": ");
                schema_type(r, schema, 0);
            }
            put(r, "</p>\n");
        }
    } else {
        content(r, c, code[0] == '2' || code[0] == '\0');
    }
    put(r, "</div>\n");
}

static void security(render_t *r, const cJSON *sec) {
    if (!cJSON_IsArray(sec)) return;
    put(r, "<p class=\"sec\"><strong>Authentication:</strong> ");
    const cJSON *alt;
    int first = 1;
    cJSON_ArrayForEach(alt, sec) {
        if (!first) put(r, ", or ");
        first = 0;
        if (alt->child == NULL) {
            put(r, "none");
            continue;
        }
        const cJSON *s;
        cJSON_ArrayForEach(s, alt) {
            put(r, "<a href=\"#");
            anchor(r, "security-", s->string);
            put(r, "\">");
            esc(r, s->string);
            put(r, "</a>");
        }
    }
    put(r, "</p>\n");
}

static const char *const methods[] = {"get", "put", "post", "delete", "options", "head", "patch",
                                      "trace"};

static int is_method(const char *s) {
    for (size_t i = 0; i < RV_ARRAY_LEN(methods); i++)
        if (strcmp(methods[i], s) == 0) return 1;
    return 0;
}

static void method_badge(render_t *r, const char *m) {
    char up[16];
    size_t n = strlen(m);
    if (n >= sizeof up) n = sizeof up - 1;
    for (size_t i = 0; i < n; i++) up[i] = (char)(m[i] >= 'a' && m[i] <= 'z' ? m[i] - 32 : m[i]);
    up[n] = '\0';
    put(r, "<span class=\"method m-");
    esc(r, m);
    put(r, "\">");
    esc(r, up);
    put(r, "</span>");
}

static void operation(render_t *r, const char *path, const char *m, const cJSON *op, int index) {
    char id[32];
    snprintf(id, sizeof id, "op-%d", index);
    put(r, "<section class=\"op\" id=\"");
    put(r, id);
    put(r, "\">\n<h3>");
    method_badge(r, m);
    put(r, " <code class=\"path\">");
    esc(r, path);
    put(r, "</code>");
    const char *summary = str_of(op, "summary");
    if (summary) {
        put(r, " <span class=\"summary\">&mdash; ");
        esc(r, summary);
        put(r, "</span>");
    }
    put(r, "</h3>\n");
    const char *d = str_of(op, "description");
    if (d) paragraphs(r, d);
    security(r, cJSON_GetObjectItemCaseSensitive(op, "security"));
    parameters(r, cJSON_GetObjectItemCaseSensitive(op, "parameters"));
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(op, "requestBody");
    if (body) request_body(r, body);
    const cJSON *resps = cJSON_GetObjectItemCaseSensitive(op, "responses");
    if (cJSON_IsObject(resps)) {
        put(r, "<h4>Responses</h4>\n");
        const cJSON *resp;
        cJSON_ArrayForEach(resp, resps) response(r, resp->string, resp, 1);
    }
    put(r, "</section>\n");
}

/* Calls fn for every operation in document order; returns how many there are. */
static int each_operation(render_t *r,
                          void (*fn)(render_t *r, const char *path, const char *m,
                                     const cJSON *op, int index)) {
    const cJSON *paths = cJSON_GetObjectItemCaseSensitive(r->root, "paths");
    const cJSON *item, *op;
    int index = 0;
    cJSON_ArrayForEach(item, paths) {
        const cJSON *it = resolve(r, item);
        if (!cJSON_IsObject(it)) continue;
        cJSON_ArrayForEach(op, it) {
            if (!is_method(op->string) || !cJSON_IsObject(op)) continue;
            fn(r, item->string, op->string, op, index++);
        }
    }
    return index;
}

static void toc_entry(render_t *r, const char *path, const char *m, const cJSON *op, int index) {
    char href[48];
    snprintf(href, sizeof href, "<li><a href=\"#op-%d\">", index);
    put(r, href);
    method_badge(r, m);
    put(r, " <code>");
    esc(r, path);
    put(r, "</code></a>");
    const char *summary = str_of(op, "summary");
    if (summary) {
        put(r, " &mdash; ");
        esc(r, summary);
    }
    put(r, "</li>\n");
}

static void components(render_t *r) {
    const cJSON *comp = cJSON_GetObjectItemCaseSensitive(r->root, "components");
    const cJSON *x;
    const cJSON *resps = cJSON_GetObjectItemCaseSensitive(comp, "responses");
    if (cJSON_IsObject(resps) && resps->child) {
        put(r, "<h2 id=\"common-responses\">Common responses</h2>\n");
        cJSON_ArrayForEach(x, resps) {
            put(r, "<section class=\"comp\" id=\"");
            anchor(r, "response-", x->string);
            put(r, "\"><h3>");
            esc(r, x->string);
            put(r, "</h3>\n");
            response(r, "", x, 0);
            put(r, "</section>\n");
        }
    }
    const cJSON *schemas = cJSON_GetObjectItemCaseSensitive(comp, "schemas");
    if (cJSON_IsObject(schemas) && schemas->child) {
        put(r, "<h2 id=\"schemas\">Schemas</h2>\n");
        cJSON_ArrayForEach(x, schemas) {
            put(r, "<section class=\"comp\" id=\"");
            anchor(r, "schema-", x->string);
            put(r, "\"><h3>");
            esc(r, x->string);
            put(r, "</h3>\n<p class=\"media\">");
            schema_type(r, x, 0);
            put(r, "</p>\n");
            const char *d = str_of(x, "description");
            if (d) paragraphs(r, d);
            fields_table(r, x);
            put(r, "</section>\n");
        }
    }
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(comp, "securitySchemes");
    if (cJSON_IsObject(sec) && sec->child) {
        put(r, "<h2 id=\"security\">Authentication</h2>\n");
        cJSON_ArrayForEach(x, sec) {
            put(r, "<section class=\"comp\" id=\"");
            anchor(r, "security-", x->string);
            put(r, "\"><h3>");
            esc(r, x->string);
            put(r, "</h3>\n<p>");
            const char *type = str_of(x, "type");
            const char *scheme = str_of(x, "scheme");
            esc(r, type ? type : "");
            if (scheme) {
                put(r, " ");
                esc(r, scheme);
            }
            put(r, "</p>\n");
            const char *d = str_of(x, "description");
            if (d) paragraphs(r, d);
            put(r, "</section>\n");
        }
    }
}

static const char page_css[] =
    "body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;"
    "background:#f6f7f9;margin:0}"
    "main{max-width:980px;margin:0 auto;padding:24px 28px 64px;background:#fff;"
    "min-height:100vh;box-sizing:border-box}"
    "h1{margin:0 0 4px;font-size:28px}h1 small{font-size:15px;color:#5b6475;font-weight:normal}"
    "h2{margin:40px 0 12px;padding-bottom:6px;border-bottom:2px solid #e3e6ec;font-size:21px}"
    "h3{font-size:17px;margin:0 0 8px}h4{font-size:14px;margin:18px 0 6px;color:#3b4354;"
    "text-transform:uppercase;letter-spacing:.04em}"
    "code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef1f5;"
    "padding:1px 4px;border-radius:3px}"
    "pre{background:#1f2430;color:#e6e9ef;padding:10px 12px;border-radius:6px;overflow:auto;"
    "font:12.5px/1.45 ui-monospace,Menlo,Consolas,monospace;tab-size:2}"
    "a{color:#2456c7;text-decoration:none}a:hover{text-decoration:underline}"
    ".lead{color:#3b4354;font-size:16px}"
    ".toc{list-style:none;padding:0;columns:1}.toc li{margin:3px 0}"
    ".op,.comp{border:1px solid #e3e6ec;border-radius:8px;padding:14px 18px;margin:16px 0;"
    "background:#fff}"
    ".method{display:inline-block;min-width:62px;text-align:center;font:bold 12px/22px "
    "ui-monospace,Menlo,monospace;color:#fff;border-radius:4px;padding:0 6px;margin-right:4px}"
    ".m-get{background:#1f8a4c}.m-post{background:#2456c7}.m-options{background:#7a5bc7}"
    ".m-put,.m-patch{background:#b7791f}.m-delete{background:#c53030}"
    ".m-head,.m-trace{background:#5b6475}"
    "code.path{font-size:15px;background:none;padding:0}"
    ".summary{font-weight:normal;color:#3b4354}"
    "table.fields{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:14px}"
    "table.fields th,table.fields td{border:1px solid #e3e6ec;padding:5px 8px;text-align:left;"
    "vertical-align:top}"
    "table.fields th{background:#f3f5f8;font-weight:600}"
    ".req{color:#c53030;font-size:11px;font-weight:600;text-transform:uppercase}"
    ".opt{color:#5b6475;font-size:11px;font-weight:600;text-transform:uppercase}"
    ".resp{border-left:3px solid #e3e6ec;padding-left:12px;margin:10px 0}"
    ".resp>p:first-child{margin:4px 0}"
    ".status{display:inline-block;font:bold 13px/20px ui-monospace,Menlo,monospace;"
    "padding:0 6px;border-radius:4px;background:#5b6475;color:#fff}"
    ".s2xx{background:#1f8a4c}.s4xx{background:#b7791f}.s5xx{background:#c53030}"
    ".media{margin:6px 0}.hdrs{margin:4px 0;color:#3b4354}ul.hdrs{padding-left:22px}"
    ".see{font-size:13px}"
    "details{margin:4px 0 8px}summary{cursor:pointer;color:#2456c7;font-size:13px}";

/* Render the whole page from the parsed document into out. */
static int render_page(const cJSON *root, rv_buf_t *out) {
    render_t r = {out, root, 0};
    const cJSON *info = cJSON_GetObjectItemCaseSensitive(root, "info");
    const char *title = str_of(info, "title");
    const char *version = str_of(info, "version");
    const char *summary = str_of(info, "summary");
    const char *desc = str_of(info, "description");
    if (title == NULL) title = "API";
    put(&r, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\n<title>");
    esc(&r, title);
    put(&r, "</title>\n<style>");
    put(&r, page_css);
    put(&r, "</style>\n</head>\n<body>\n<main>\n<header>\n<h1>");
    esc(&r, title);
    if (version) {
        put(&r, " <small>version ");
        esc(&r, version);
        put(&r, "</small>");
    }
    put(&r, "</h1>\n");
    if (summary) {
        put(&r, "<p class=\"lead\">");
        esc(&r, summary);
        put(&r, "</p>\n");
    }
    put(&r, "<p>Machine-readable description: <a href=\"/openapi.json\"><code>/openapi.json"
            "</code></a> (OpenAPI ");
    const char *oa = str_of(root, "openapi");
    esc(&r, oa ? oa : "?");
    put(&r, ").</p>\n</header>\n");
    if (desc) {
        put(&r, "<h2 id=\"overview\">Overview</h2>\n");
        paragraphs(&r, desc);
    }
    const cJSON *servers = cJSON_GetObjectItemCaseSensitive(root, "servers");
    if (cJSON_IsArray(servers) && servers->child) {
        put(&r, "<h2 id=\"servers\">Servers</h2>\n<ul>\n");
        const cJSON *s;
        cJSON_ArrayForEach(s, servers) {
            const char *url = str_of(s, "url");
            const char *sd = str_of(s, "description");
            put(&r, "<li><code>");
            esc(&r, url ? url : "");
            put(&r, "</code>");
            if (sd) {
                put(&r, " &mdash; ");
                esc(&r, sd);
            }
            put(&r, "</li>\n");
        }
        put(&r, "</ul>\n");
    }
    put(&r, "<h2 id=\"routes\">Routes</h2>\n<ul class=\"toc\">\n");
    int n = each_operation(&r, toc_entry);
    put(&r, "</ul>\n");
    if (n > 0) each_operation(&r, operation);
    components(&r);
    put(&r, "</main>\n</body>\n</html>\n");
    if (r.rc == 0 && n == 0) r.rc = RV_EPAYLOAD;
    return r.rc;
}

/* ---- GET /docs ---------------------------------------------------------------------------- */

/* The rendered page, kept for the life of the process once rendering has succeeded. */
static char *docs_html;
static size_t docs_len;

static int docs_render(void) {
    cJSON *root = cJSON_ParseWithLength((const char *)rv_openapi_json, rv_openapi_json_len);
    if (root == NULL) {
        rv_error("docs: the built-in API description is not valid JSON");
        return RV_EPAYLOAD;
    }
    rv_buf_t b = RV_BUF_INIT;
    int rc = render_page(root, &b);
    cJSON_Delete(root);
    if (rc) {
        rv_error("docs: cannot render the API description: %s", rv_strerror(rc));
        rv_buf_free(&b);
        return rc;
    }
    docs_html = rv_buf_steal(&b, &docs_len);
    return 0;
}

void rv_handle_docs(rv_request_t *req) {
    /* A failed rendering is tried again on the next request (it fails only for lack of memory
     * or a broken build). */
    if (docs_html == NULL && docs_render() != 0) {
        rv_respond_error(req, 500, "Internal error", NULL);
        return;
    }
    rv_respond_static(req, 200, "text/html; charset=utf-8", docs_html, docs_len,
               "Cache-Control: public, max-age=300\r\n"
               "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
               "X-Content-Type-Options: nosniff\r\n");
}
