/* Stripe webhook signatures (HMAC-SHA256 over "<t>.<raw body>"). Pure. */
#ifndef RIVET_WEBHOOK_SIG_H
#define RIVET_WEBHOOK_SIG_H

#include <stddef.h>
#include <stdint.h>

/* Bounds on the work one header can cause: a longer header is refused (RV_ESIG), and only the
 * first RV_WEBHOOK_MAX_V1 v1 signatures are considered. */
#define RV_WEBHOOK_MAX_HEADER 8192
#define RV_WEBHOOK_MAX_V1     16

/* Verify a Stripe-Signature header value against the raw body, before any JSON parsing.
 * Every secret (the whole "whsec_..." string is the HMAC key, as Stripe uses it) is tried against
 * every v1 signature; v0 and unknown schemes are ignored; each v1 must be exactly 64 hex digits
 * and is compared in constant time. now and tolerance are in seconds; a timestamp further than
 * tolerance from now in either direction fails.
 * Returns 0 when valid, RV_ESIG (malformed header, no t, no v1, no match) or RV_ESTALE (a
 * signature matched but the timestamp is outside the tolerance); RV_ENOMEM or RV_EINVAL only when
 * the HMAC could not be computed at all. Only lowercase hex is accepted, as Stripe sends it.
 * A negative tolerance counts as 0. NULL or empty secrets are skipped. */
int rv_webhook_verify(const char *header, size_t header_len, const char *body, size_t body_len,
                      const char *const *secrets, size_t nsecrets, int64_t now, int64_t tolerance);

/* Write the header value Stripe would send, "t=<t>,v1=<64 hex>", into out (at least 96 bytes).
 * Returns 0, RV_ERANGE (out too small, or t negative), RV_EINVAL (no secret) or RV_ENOMEM. */
int rv_webhook_sign(const char *secret, int64_t t, const char *body, size_t body_len, char *out,
                    size_t outlen);

#endif
