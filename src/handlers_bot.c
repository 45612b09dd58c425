/* The bot's side of the API, server to server with the bearer token: POST /api/telegram/link
 * redeems the one-time start token a customer brought to the bot, and GET /api/entitlements
 * answers what a customer may use now. Both read and write Redis only, never Stripe: the bot asks
 * on every message, so the answer is the entitlement JSON kept whole in the customer's record. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "rivet/app.h"
#include "rivet/common.h"
#include "rivet/entitlement.h"
#include "rivet/handlers.h"
#include "rivet/log.h"

/* The request waits for Redis; if its client goes meanwhile, the answer is dropped by the
 * server, and Redis's answer still frees what was asked. */
static void unavailable(rv_request_t *req) {
    rv_respond_error(req, 503, "Entitlements unavailable; retry later", "Retry-After: 1\r\n");
}

static int require_bearer(rv_request_t *req) {
    if (rv_bearer_ok(req)) return 1;
    rv_respond_error(req, 401, "The API token is required", "WWW-Authenticate: Bearer\r\n");
    return 0;
}

/* An integral JSON number as decimal digits into out; 0, or -1 when j is not one (or when
 * negative and not allowed). */
static int int_member(const cJSON *j, const char *key, int may_be_negative, char *out,
                      size_t outlen, rv_verrs_t *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, key);
    if (x == NULL || cJSON_IsNull(x)) {
        rv_verr(v, "body", key, "Field required", "missing");
        return -1;
    }
    double d = cJSON_IsNumber(x) ? x->valuedouble : 0.5;
    /* The range first: converting a double outside long long's range is undefined. */
    if (!cJSON_IsNumber(x) || d > 9007199254740991.0 || d < -9007199254740991.0 ||
        d != (double)(long long)d || (!may_be_negative && d <= 0)) {
        rv_verr(v, "body", key,
                may_be_negative ? "Input should be a valid integer"
                                : "Input should be a positive integer",
                "int_type");
        return -1;
    }
    snprintf(out, outlen, "%lld", (long long)d);
    return 0;
}

/* ---- POST /api/telegram/link -------------------------------------------------------------- */

static void on_link(void *data, int err, int result, const char *entitlement) {
    rv_request_t *req = data;
    if (err) {
        unavailable(req);
    } else if (result == RV_LINK_LINKED || result == RV_LINK_AGAIN) {
        if (result == RV_LINK_LINKED) rv_info("telegram: chat linked");
        rv_respond_json(req, 200, entitlement, strlen(entitlement), NULL);
    } else if (result == RV_LINK_ELSEWHERE) {
        rv_respond_error(req, 409, "This Telegram account is linked to another customer", NULL);
    } else {
        /* Never issued, used or expired: one answer for all three, so a guess learns nothing. */
        rv_respond_error(req, 404, "Unknown, used or expired start token", NULL);
    }
}

void rv_handle_telegram_link(rv_request_t *req) {
    if (!require_bearer(req)) return;
    cJSON *j = rv_body_object(req, 0);
    if (j == NULL) return;
    rv_verrs_t v = {0};
    char token[80] = "", user[24], chat[24];
    const char *start = rv_opt_string(j, "start", &v);
    if (start == NULL && v.n == 0) rv_verr(&v, "body", "start", "Field required", "missing");
    if (start) {
        size_t n = strlen(start);
        if (n == 0 || n > 64 ||
            strspn(start, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-") != n)
            rv_verr(&v, "body", "start", "Must be 1-64 characters of A-Z a-z 0-9 _ -",
                    "value_error");
        else
            snprintf(token, sizeof token, "%s", start);
    }
    int_member(j, "telegram_user_id", 0, user, sizeof user, &v);
    int_member(j, "chat_id", 1, chat, sizeof chat, &v);
    cJSON_Delete(j);
    if (v.n) {
        rv_respond_verrs(req, &v);
        return;
    }
    int rc = rv_entitlement_link(req->app, token, user, chat, on_link, req);
    if (rc) unavailable(req);
}

/* ---- GET /api/entitlements ---------------------------------------------------------------- */

static void on_lookup(void *data, int err, const char *customer_id, const char *entitlement) {
    rv_request_t *req = data;
    if (err) {
        unavailable(req);
    } else if (entitlement == NULL) {
        rv_respond_error(req, 404, "No such customer", NULL);
    } else {
        rv_respond_json(req, 200, entitlement, strlen(entitlement), NULL);
    }
}

void rv_handle_entitlements(rv_request_t *req) {
    if (!require_bearer(req)) return;
    static const char *const names[] = {"customer_id", "telegram_user_id", "email"};
    char value[330];
    int kind = -1, given = 0;
    rv_verrs_t v = {0};
    for (int i = 0; i < 3; i++) {
        char tmp[330];
        int rc = rv_request_query(req, names[i], tmp, sizeof tmp);
        if (rc == RV_ENOTFOUND) continue;
        given++;
        if (rc) {
            rv_verr(&v, "query", names[i],
                    rc == RV_ERANGE       ? "Too long"
                    : rc == RV_EMALFORMED ? "Given more than once"
                                          : "Not a valid value",
                    "value_error");
            continue;
        }
        kind = i;
        memcpy(value, tmp, sizeof value);
    }
    if (given != 1) {
        rv_verr(&v, "query", NULL, "Give exactly one of customer_id, telegram_user_id, email",
                "value_error");
    } else if (v.n == 0) {
        size_t n = strlen(value);
        int ok = n > 0;
        if (kind == RV_BY_TELEGRAM) {
            /* A number, as a link takes it (1 to 2^53 - 1), written as the link writes it: with
             * leading zeros, "0123" is still user 123. */
            ok = ok && n <= 19 && strspn(value, "0123456789") == n;
            unsigned long long id = ok ? strtoull(value, NULL, 10) : 0;
            ok = ok && id >= 1 && id < (1ull << 53);
            if (ok) snprintf(value, sizeof value, "%llu", id);
        }
        if (kind == RV_BY_CUSTOMER)
            ok = ok && strncmp(value, "cus_", 4) == 0 && n <= 255 &&
                 strspn(value, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij"
                               "klmnopqrstuvwxyz0123456789_") == n;
        if (kind == RV_BY_EMAIL) ok = ok && n <= 320 && strchr(value, '@') != NULL;
        if (!ok) rv_verr(&v, "query", names[kind], "Not a valid value", "value_error");
    }
    if (v.n) {
        rv_respond_verrs(req, &v);
        return;
    }
    const char *cust, *ent;
    if (rv_entitlement_cached(req->app, kind, value, &cust, &ent)) {
        rv_respond_json(req, 200, ent, strlen(ent), NULL);
        return;
    }
    int rc = rv_entitlement_lookup(req->app, kind, value, on_lookup, req);
    if (rc) unavailable(req);
}
