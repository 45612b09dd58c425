/* JSON text helpers: parsing a whole text, and answers built without a tree (errors, small fixed
 * shapes). Pure. */
#ifndef RIVET_JSON_H
#define RIVET_JSON_H

#include "rivet/buf.h"

struct cJSON;

/* Parse text that is one JSON value with nothing after it but white space (RFC 8259: space, tab,
 * CR, LF). cJSON alone stops at the end of the first value and ignores what follows, so that
 * "{...}xyz" would pass for "{...}". NULL when the text is not exactly one value. */
struct cJSON *rv_json_parse(const char *text, size_t len);

/* rv_json_parse for answers from elsewhere (Stripe's): an escaped NUL (\u0000), at which cJSON
 * would silently end its string, is read as U+0001 instead, a control character that every id
 * and text check refuses, so that a value holding one is refused rather than cut short. */
struct cJSON *rv_json_parse_nul_visible(const char *text, size_t len);

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
