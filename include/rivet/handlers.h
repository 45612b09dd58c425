/* Helpers shared by the API handlers (src/handlers_util.c). */
#ifndef RIVET_HANDLERS_H
#define RIVET_HANDLERS_H

#include <cjson/cJSON.h>

#include "rivet/buf.h"
#include "rivet/json.h"
#include "rivet/server.h"

#define RV_MAX_VERRS 6

/* Validation errors gathered for one 422 answer. */
typedef struct rv_verrs_s {
    rv_json_verr_t e[RV_MAX_VERRS];
    size_t n;
} rv_verrs_t;

/* Add an error at loc (where, field) with a message and a type; beyond RV_MAX_VERRS, dropped. */
void rv_verr(rv_verrs_t *v, const char *where, const char *field, const char *msg,
             const char *type);

/* Answer 422 with the errors, in the prototype's shape. */
void rv_respond_verrs(rv_request_t *req, const rv_verrs_t *v);

/* Answer b as JSON with status when rc is 0, else 500; b is freed either way. */
void rv_respond_buf(rv_request_t *req, int status, rv_buf_t *b, int rc);

/* The body as a JSON object (the caller deletes it); on failure 422 is answered and NULL
 * returned. An empty body is an empty object when empty_ok. */
cJSON *rv_body_object(rv_request_t *req, int empty_ok);

/* An optional string member: NULL when absent or null; a type error is recorded otherwise. */
const char *rv_opt_string(const cJSON *j, const char *key, rv_verrs_t *v);

/* 1 when the request carries "Authorization: Bearer <RIVET_API_TOKEN>" (compared in constant
 * time; never with an empty token). */
int rv_bearer_ok(rv_request_t *req);

/* 1 when the caller's address has used up its allowance: 429 has been answered. */
int rv_rate_limited(rv_request_t *req);

#endif
