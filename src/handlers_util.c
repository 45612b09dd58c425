/* Pieces every API handler needs: JSON answers, validation errors in the prototype's shape, the
 * JSON body, the bearer token of server-to-server calls, and the per-client rate limit. */
#include "rivet/handlers.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/json.h"
#include "rivet/log.h"
#include "rivet/ratelimit.h"
#include "rivet/validate.h"

void rv_respond_buf(rv_request_t *req, int status, rv_buf_t *b, int rc) {
    if (rc) {
        rv_respond_error(req, 500, "Internal error", NULL);
    } else {
        rv_respond_json(req, status, b->data, b->len, NULL);
    }
    rv_buf_free(b);
}

/* 429 when the caller's address has used up its allowance. */
int rv_rate_limited(rv_request_t *req) {
    rv_app_t *app = req->app;
    if (app->ratelimit == NULL) return 0;
    char addr[64];
    /* Several X-Forwarded-For lines are one list (RFC 9110 §5.3): a proxy may append its own
     * line after the client's, and the right-most entries are the ones proxies vouch for. */
    rv_buf_t xff = RV_BUF_INIT;
    int lines = rv_request_header_join(req, "x-forwarded-for", &xff);
    rv_client_addr(req->peer, lines > 0 ? xff.data : NULL, xff.len, &app->cfg.trust_proxy, addr,
                   sizeof addr);
    rv_buf_free(&xff);
    unsigned retry = 1;
    if (rv_ratelimit_take(app->ratelimit, addr, uv_now(app->loop), &retry)) return 0;
    char hdr[48];
    snprintf(hdr, sizeof hdr, "Retry-After: %u\r\n", retry);
    rv_info("ratelimit: %s limited on %s", addr, req->path);
    rv_respond_error(req, 429, "Too many requests", hdr);
    return 1;
}

void rv_verr(rv_verrs_t *v, const char *where, const char *field, const char *msg,
             const char *type) {
    if (v->n >= RV_MAX_VERRS) return;
    rv_json_verr_t *e = &v->e[v->n++];
    memset(e, 0, sizeof *e);
    e->loc[0] = where;
    e->loc[1] = field;
    e->msg = msg;
    e->type = type;
}

void rv_respond_verrs(rv_request_t *req, const rv_verrs_t *v) {
    rv_buf_t b = RV_BUF_INIT;
    int rc = rv_json_validation(&b, v->e, v->n);
    rv_respond_buf(req, 422, &b, rc);
}

/* Parse the body as a JSON object; on failure answer 422 and return NULL. An empty body is an
 * empty object when empty_ok. */
cJSON *rv_body_object(rv_request_t *req, int empty_ok) {
    rv_verrs_t v = {0};
    if (req->body_len == 0 && empty_ok) return cJSON_CreateObject();
    cJSON *j = rv_json_parse(req->body, req->body_len);
    if (j == NULL) {
        rv_verr(&v, "body", NULL, "JSON decode error", "json_invalid");
        rv_respond_verrs(req, &v);
        return NULL;
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        rv_verr(&v, "body", NULL,
                "Input should be a valid dictionary or object to extract fields from",
                "model_attributes_type");
        rv_respond_verrs(req, &v);
        return NULL;
    }
    return j;
}

/* An optional string field: NULL when absent or null; type error recorded otherwise. */
const char *rv_opt_string(const cJSON *j, const char *key, rv_verrs_t *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (x == NULL || cJSON_IsNull(x)) return NULL;
    if (!cJSON_IsString(x)) {
        rv_verr(v, "body", key, "Input should be a valid string", "string_type");
        return NULL;
    }
    return x->valuestring;
}

/* 1 when the request carries "Authorization: Bearer <RIVET_API_TOKEN>". */
int rv_bearer_ok(rv_request_t *req) {
    rv_app_t *app = req->app;
    size_t tl = strlen(app->cfg.api_token);
    size_t n;
    const char *h = rv_request_header(req, "authorization", &n);
    if (tl == 0 || h == NULL || n < 7 || strncasecmp(h, "Bearer ", 7) != 0) return 0;
    h += 7;
    n -= 7;
    /* The length is not secret; the contents are compared in constant time. */
    return n == tl && rv_memeq_ct(h, app->cfg.api_token, tl);
}
