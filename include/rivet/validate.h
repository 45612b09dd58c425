/* Input validation for the public API. Pure. */
#ifndef RIVET_VALIDATE_H
#define RIVET_VALIDATE_H

#include <stddef.h>

#include "rivet/config.h"

/* 1 when s is a plausible e-mail address: ASCII local part (dot-atom, at most 64 bytes), a
 * domain of at least two labels of letters, digits and hyphens with an alphabetic top-level
 * label, 254 bytes in all. */
int rv_valid_email(const char *s);

/* 1 when s is a Checkout Session id: "cs_test_" or "cs_live_" then 1-250 letters and digits. */
int rv_valid_session_id(const char *s);

/* 1 when url is an absolute http(s) URL whose origin is in origins, with no control
 * characters or spaces, at most 2048 bytes. */
int rv_valid_redirect(const char *url, const rv_strlist_t *origins);

/* The address to rate-limit: the peer, or when the peer is a trusted proxy the right-most
 * X-Forwarded-For entry that is not itself a trusted proxy (xff may be NULL). */
void rv_client_addr(const char *peer, const char *xff, size_t xff_len, const rv_strlist_t *trusted,
                    char *out, size_t outlen);

/* 1 when s is a plausible Stripe customer id ("cus_" then letters and digits). */
int rv_valid_customer_id(const char *s);

#endif
