/* JSON text helpers for answers built without a tree (errors, small fixed shapes). Pure. */
#ifndef RIVET_JSON_H
#define RIVET_JSON_H

#include "rivet/buf.h"

/* Append s as a JSON string literal, quotes included; invalid UTF-8 bytes become U+FFFD. */
int rv_json_escape(rv_buf_t *out, const char *s);

/* Append {"detail":"<detail>"}. */
int rv_json_error(rv_buf_t *out, const char *detail);

/* One FastAPI-style validation error: loc is a list of path elements ("body", "email"). */
typedef struct rv_json_verr_s {
    const char *loc[4]; /* NULL-terminated (at most 4) */
    const char *msg;
    const char *type;
} rv_json_verr_t;

/* Append {"detail":[{"loc":[...],"msg":"...","type":"..."}, ...]}. */
int rv_json_validation(rv_buf_t *out, const rv_json_verr_t *errs, size_t n);

#endif
