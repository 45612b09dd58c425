/* GET /openapi.json and GET /docs: the API description, built into the binary from
 * docs/openapi.json, served as it is and as a readable HTML page.
 *
 * The page is rendered from the same document at build time (tools/render_docs.py), so the two
 * cannot disagree and the daemon carries no renderer: both answers are bytes embedded in the
 * binary, written from where they are. The page is self-contained: inline CSS, no scripts, no
 * external assets (the answer's Content-Security-Policy says so). */
#include <stddef.h>
#include <stdint.h>

#include "rivet/app.h"
#include "rivet/incbin.h"
#include "rivet/server.h"

/* -MMD does not see an .incbin: the Makefile names both files as dependencies of this object,
 * and passes the page's path because it lies in the build directory. */
#ifndef RV_OPENAPI_PATH
#define RV_OPENAPI_PATH "docs/openapi.json"
#endif
#ifndef RV_DOCS_HTML_PATH
#error "RV_DOCS_HTML_PATH must name the page rendered by tools/render_docs.py (see the Makefile)"
#endif
RV_INCBIN(rv_openapi_json, RV_OPENAPI_PATH);
RV_INCBIN(rv_docs_html, RV_DOCS_HTML_PATH);

void rv_handle_openapi(rv_request_t *req) {
    rv_respond_static(req, 200, "application/json", (const char *)rv_openapi_json,
                      rv_openapi_json_len, "Cache-Control: public, max-age=300\r\n");
}

void rv_handle_docs(rv_request_t *req) {
    rv_respond_static(req, 200, "text/html; charset=utf-8", (const char *)rv_docs_html,
                      rv_docs_html_len,
                      "Cache-Control: public, max-age=300\r\n"
                      "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; "
                      "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"
                      "X-Content-Type-Options: nosniff\r\n");
}
