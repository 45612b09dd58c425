#!/usr/bin/env python3
"""A fake Stripe API server for rivetd's tests, local runs and benchmarks.

It speaks Stripe's wire format for the calls rivetd makes: form-encoded bodies in Stripe's
bracket notation, bearer API keys, Stripe's error objects, Request-Id headers and idempotency
keys. Beyond Checkout and the billing portal it models a small account with subscriptions:
customers, one-item monthly subscriptions on the configured prices, their invoices, and the
events Stripe records for every change, listed through /v1/events and delivered, signed, to a
webhook endpoint.

Stripe API (Authorization: Bearer sk_test_...):
  POST /v1/checkout/sessions             create a Checkout Session
  GET  /v1/checkout/sessions/:id         retrieve one
  POST /v1/billing_portal/sessions       a portal session for an existing customer
  GET  /v1/customers/:id                 retrieve a customer
  GET  /v1/subscriptions/:id             retrieve a subscription (404 resource_missing)
  POST /v1/subscriptions/:id             items[0][id]+items[0][price], cancel_at_period_end,
                                         metadata[...], proration_behavior, cancellation_details
  DELETE /v1/subscriptions/:id           cancel now
  GET  /v1/invoices/:id                  retrieve an invoice
  GET  /v1/events/:id                    retrieve an event of the last 30 days
  GET  /v1/events                        list, newest (last recorded) first: limit (1..100,
                                         default 10),
                                         starting_after | ending_before, created or
                                         created[gt|gte|lt|lte], type (with * wildcards) |
                                         types[], delivery_success (ignored)

Objects are answered in the shape of the request's Stripe-Version, or of the account's default
version (--api-version, or "api_version" in /_fake/config). From 2025-03-31 on, an invoice names
its subscription only at parent.subscription_details.subscription and a subscription's period is
on its item (items.data[0].current_period_*); before, invoice.subscription and
subscription.current_period_* (with the legacy subscription.plan). Events are recorded once, in
the account's default version at the time.

Plans: --prices "id[:amount[:tier]],..." lists the known prices (monthly, USD); amounts default
to 2900, 7900, 19900 in order and the tier to the word after "price_" (price_pro_test: "pro").

Clock: every timestamp (objects' created, periods, events' created, the webhook signature's t)
comes from the fake's clock: real time unless a test sets it.

Control API (JSON bodies and answers; never delayed or failed by the faults below):
  GET  /_fake/config                     the settings below
  POST /_fake/config {latency_ms, fail_next, fail_status, should_retry, drop_next, hang_next,
                      api_version}       faults for the Stripe API routes; the account version
  POST /_fake/reset                      forget everything: objects, events, logs, settings,
                                         clock, webhook endpoint and deliveries
  POST /_fake/override {"method", "path", "status"?, "body"?, "headers"?, "times"?}
                                         the next "times" (1; -1: until cleared) API requests
                                         of method to path (a trailing "*" matches a prefix)
                                         get this answer instead: body a JSON value, or a
                                         string sent as it is; a broken or hostile Stripe
  POST /_fake/override {"clear": true}   forget the overrides
  GET  /_fake/requests                   the Stripe API requests received, oldest first, each
                                         with "at": when it arrived (real Unix time, float)
  GET  /_fake/stats                      {connections_opened, connections_open}
  GET  /_fake/clock                      {"now": t, "frozen": bool}
  POST /_fake/clock {"now": t|null} | {"advance": s}
                                         freeze the clock at t (null: real time again), or move
                                         it by s seconds (frozen or not); answers as GET
  POST /_fake/sessions/:id/complete {"payment_status": "paid"|"unpaid"|"no_payment_required",
                      "customer"?, "email"?, "trial_days"?}
                                         the customer pays (default paid); answers the session,
                                         with the recorded event ids in a Fake-Events header
  POST /_fake/sessions/:id/expire        the session expires (checkout.session.expired)
  POST /_fake/sessions/:id/settle {"outcome": "succeeded"|"failed",
                      "subscription"?: "incomplete_expired"|"canceled"}
                                         the delayed payment of an "unpaid" session resolves
  POST /_fake/subscriptions/:id/change_plan {"price", "tier"?}
  POST /_fake/subscriptions/:id/renew
  POST /_fake/subscriptions/:id/fail_payment {"then"?: "unpaid"|"canceled"}
  POST /_fake/subscriptions/:id/recover
  POST /_fake/subscriptions/:id/cancel_at_period_end {"value": true|false}
  POST /_fake/subscriptions/:id/cancel
                                         each answers {"subscription": {...}, "events": [ids]}
  GET  /_fake/events                     every stored event, oldest first
  POST /_fake/events/forget {"before": t}
                                         drop stored events created before t: {"forgotten": n}
  GET  /_fake/webhooks                   the endpoint's settings and, per event id, its
                                         deliveries {type, state, attempts, last_status,
                                         last_error, delivered}; "log": every attempt in order
  POST /_fake/webhooks {"url", "secret", "enabled"?, "retry_ms"?, "max_attempts"?,
                      "shuffle"?, "ordered"?, "duplicate"?, "timeout_ms"?}
                                         set (or change) the one webhook endpoint

Event sequences (each event's created is the clock's now):
  complete, paid:      [customer.created] customer.subscription.created (active),
                       invoice.created (draft), invoice.finalized, invoice.paid,
                       invoice.payment_succeeded, checkout.session.completed
  complete, unpaid:    [customer.created] customer.subscription.created (incomplete),
                       invoice.created, invoice.finalized, checkout.session.completed (unpaid)
  settle, succeeded:   customer.subscription.updated (active), invoice.paid,
                       invoice.payment_succeeded, checkout.session.async_payment_succeeded
  settle, failed:      invoice.payment_failed, checkout.session.async_payment_failed, then
                       invoice.voided + customer.subscription.deleted (incomplete_expired), or
                       customer.subscription.deleted (canceled)
  complete, no_payment_required: as paid, with the subscription trialing and a 0 invoice
  change_plan:         customer.subscription.updated (previous items/plan, metadata.tier),
                       then, unless trialing, a proration invoice: invoice.created,
                       invoice.finalized, invoice.paid, invoice.payment_succeeded
  renew:               customer.subscription.updated (next period; trialing -> active),
                       invoice.created, invoice.finalized, invoice.paid,
                       invoice.payment_succeeded; with cancel_at_period_end set:
                       customer.subscription.deleted instead
  fail_payment:        active/trialing: customer.subscription.updated (next period),
                       invoice.created, invoice.finalized, invoice.payment_failed,
                       customer.subscription.updated (past_due); past_due/unpaid: the open
                       invoice fails again (invoice.payment_failed); "then" moves the
                       subscription on (updated: unpaid, or deleted: canceled)
  recover:             customer.subscription.updated (active), invoice.paid,
                       invoice.payment_succeeded
  cancel_at_period_end: customer.subscription.updated (cancel_at_period_end, cancel_at)
  cancel, DELETE:      customer.subscription.deleted (canceled)
  POST /v1/subscriptions/:id: customer.subscription.updated; with a new price and
                       proration_behavior=always_invoice, the proration invoice's events

Webhooks: each event recorded while an enabled endpoint is set is POSTed to it by a background
task, signed like Stripe (Stripe-Signature: t=<clock now>,v1=<hex HMAC-SHA256 of "t.body"
keyed with the secret>), the body exactly the event's JSON. One delivery at a time, in creation
order; a non-2xx answer or a connection error is retried after retry_ms, doubling up to 32 times
that, until max_attempts, while later events go on being delivered (as Stripe does; "ordered":
true makes them wait for it instead). "enabled": false holds
deliveries (events recorded meanwhile are never delivered, as for a disabled Stripe endpoint);
"shuffle": true delivers pending events in random order; "duplicate": p delivers each event a
second time with probability p.

Standard library only, asyncio with a hand-written HTTP/1.1 protocol so one core sustains a few
thousand requests per second with keep-alive and pipelining.
"""

import argparse
import asyncio
import base64
import bisect
import calendar
import collections
import datetime
import hashlib
import heapq
import hmac
import json
import os
import random
import re
import signal
import ssl
import string
import sys
import time
import urllib.parse

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_PIPELINED = 64
MAX_LOGGED_REQUESTS = 10000
MAX_IDEMPOTENCY_KEYS = 100000
MAX_SESSIONS = 100000
MAX_OBJECTS = 100000
MAX_EVENTS = 100000
EVENT_TRIM = 1000
MAX_DELIVERY_LOG = 10000
EVENT_LIST_MAX_AGE = 30 * 86400
DEFAULT_STRIPE_VERSION = "2024-06-20"
# From this version on, invoices name their subscription under parent.subscription_details and
# subscriptions carry their period on the item.
BASIL_VERSION = "2025-03-31"
DEFAULT_AMOUNTS = (2900, 7900, 19900)
DEFAULT_TRIAL_DAYS = 14
WEBHOOK_USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"

REASONS = {
    100: "Continue", 200: "OK", 400: "Bad Request", 401: "Unauthorized", 402: "Request Failed",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
    413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}

_rng = random.Random(os.urandom(16))
_ALNUM = string.ascii_letters + string.digits


def rand_id(prefix, n=24):
    return prefix + "".join(_rng.choices(_ALNUM, k=n))


def request_id():
    return rand_id("req_", 14)


class StripeError(Exception):
    """An answer in Stripe's error format: {"error": {...}} with an HTTP status."""

    def __init__(self, status, message, type_="invalid_request_error", code=None, param=None):
        super().__init__(message)
        self.status = status
        self.body = {"type": type_, "message": message}
        if code is not None:
            self.body["code"] = code
            self.body["doc_url"] = "https://stripe.com/docs/error-codes/" + code.replace("_", "-")
        if param is not None:
            self.body["param"] = param

    def answer(self):
        return self.status, {"error": self.body}


def missing(param):
    return StripeError(400, "Missing required param: %s." % param, code="parameter_missing",
                       param=param)


def invalid_empty(param):
    return StripeError(
        400,
        "You passed an empty string for '%s'. We assume empty values are an attempt to unset a "
        "parameter; however '%s' cannot be unset. You should remove '%s' from your request or "
        "supply a non-empty value." % (param, param, param),
        code="parameter_invalid_empty", param=param)


# ---- form decoding ------------------------------------------------------------------------

_BRACKETS_RE = re.compile(r"^(?:\[[^\[\]]*\])+$")


def _unquote(s):
    if "%" in s or "+" in s:
        return urllib.parse.unquote_plus(s)
    return s


def decode_form(body):
    """Decode an application/x-www-form-urlencoded body in Stripe's bracket notation into nested
    dicts and lists: line_items[0][price]=p becomes {"line_items": [{"price": "p"}]}."""
    root = {}
    if not body:
        return root
    nested = False
    for field in body.split("&"):
        if not field:
            continue
        key, _, value = field.partition("=")
        key = _unquote(key)
        value = _unquote(value)
        i = key.find("[")
        if i < 0:
            if "]" in key or not key:
                raise StripeError(400, "Invalid parameter name: %s" % key, param=key)
            if isinstance(root.get(key), dict):
                raise StripeError(400, "Invalid value for %s: a hash was expected" % key,
                                  param=key)
            root[key] = value
            continue
        rest = key[i:]
        if i == 0 or not _BRACKETS_RE.match(rest):
            raise StripeError(400, "Invalid parameter name: %s" % key, param=key)
        nested = True
        parts = [key[:i]] + rest[1:-1].split("][")
        node = root
        for part in parts[:-1]:
            if part == "":
                # "a[][b]=1": a new element each time.
                part = str(len(node))
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise StripeError(400, "Invalid value for %s: a hash was expected" % key,
                                  param=key)
            node = child
        last = parts[-1]
        if last == "":
            # "expand[]=a&expand[]=b": append.
            last = str(len(node))
        if isinstance(node.get(last), dict):
            raise StripeError(400, "Invalid value for %s: a hash was expected" % key, param=key)
        node[last] = value
    if nested:
        for k, v in root.items():
            if isinstance(v, dict):
                root[k] = _listify(v)
    return root


def _listify(node):
    """Turn dicts whose keys are 0..n-1 into lists, as Stripe reads indexed parameters."""
    for k, v in node.items():
        if isinstance(v, dict):
            node[k] = _listify(v)
    if node and all(k.isdigit() for k in node):
        n = len(node)
        if all(str(i) in node for i in range(n)):
            return [node[str(i)] for i in range(n)]
    return node


# ---- validation helpers -------------------------------------------------------------------

_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def check_url(params, name, required):
    v = params.get(name)
    if v is None:
        if required:
            raise missing(name)
        return None
    if not isinstance(v, str):
        raise StripeError(400, "Invalid string: %s" % name, param=name)
    if v == "":
        raise invalid_empty(name)
    u = urllib.parse.urlsplit(v)
    if u.scheme not in ("http", "https") or not u.netloc or len(v) > 5000:
        raise StripeError(400, "Not a valid URL", code="url_invalid", param=name)
    return v


def check_string(params, name, maxlen=5000):
    v = params.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise StripeError(400, "Invalid string: %s" % name, param=name)
    if v == "":
        raise invalid_empty(name)
    if len(v) > maxlen:
        raise StripeError(400, "Invalid string: %s...; must be at most %d characters"
                          % (v[:20], maxlen), param=name)
    return v


def check_bool(params, name):
    v = params.get(name)
    if v is None:
        return None
    if v not in ("true", "false"):
        raise StripeError(400, "Invalid boolean: %s" % v, param=name)
    return v == "true"


def check_metadata(params, name):
    v = params.get(name)
    if v is None:
        return {}
    if v == "":
        return {}
    if isinstance(v, list):
        v = {str(i): x for i, x in enumerate(v)}
    if not isinstance(v, dict):
        raise StripeError(400, "Invalid object", param=name)
    if len(v) > 50:
        raise StripeError(400, "Invalid %s: metadata can have up to 50 keys, but you passed in "
                          "%d keys." % (name, len(v)), param=name)
    out = {}
    for k, val in v.items():
        if len(k) > 40:
            raise StripeError(400, "Invalid %s: metadata keys can be up to 40 characters long "
                              "and \"%s\" has %d characters." % (name, k[:60], len(k)),
                              param="%s[%s]" % (name, k[:40]))
        if not isinstance(val, str):
            raise StripeError(400, "Invalid %s: metadata values must be strings." % name,
                              param="%s[%s]" % (name, k))
        if len(val) > 500:
            raise StripeError(400, "Invalid %s: metadata values can be up to 500 characters "
                              "long, but the value for \"%s\" has %d characters."
                              % (name, k, len(val)), param="%s[%s]" % (name, k))
        if val != "":
            out[k] = val
    return out


def check_unknown(params, known):
    for k in params:
        if k not in known:
            raise StripeError(400, "Received unknown parameter: %s" % k,
                              code="parameter_unknown", param=k)


CHECKOUT_PARAMS = {
    "adaptive_pricing", "after_expiration", "allow_promotion_codes", "automatic_tax",
    "billing_address_collection", "cancel_url", "client_reference_id", "consent_collection",
    "currency", "custom_fields", "custom_text", "customer", "customer_creation",
    "customer_email", "customer_update", "discounts", "expand", "expires_at",
    "invoice_creation", "line_items", "locale", "metadata", "mode", "payment_intent_data",
    "payment_method_collection", "payment_method_configuration", "payment_method_data",
    "payment_method_options", "payment_method_types", "phone_number_collection",
    "redirect_on_completion", "return_url", "saved_payment_method_options", "setup_intent_data",
    "shipping_address_collection", "shipping_options", "submit_type", "subscription_data",
    "success_url", "tax_id_collection", "ui_mode",
}
PORTAL_PARAMS = {"configuration", "customer", "expand", "flow_data", "locale", "on_behalf_of",
                 "return_url"}

def check_limit(params):
    """A list's limit parameter: an integer in 1..100, 10 when absent."""
    v = params.get("limit")
    if v is None:
        return 10
    if not isinstance(v, str) or not re.match(r"^-?\d+$", v):
        raise StripeError(400, "Invalid integer: %s" % (v if isinstance(v, str) else "object"),
                          code="parameter_invalid_integer", param="limit")
    n = int(v)
    if not 1 <= n <= 100:
        raise StripeError(400, "Invalid limit: must be between 1 and 100", param="limit")
    return n


def check_range(params, name):
    """A timestamp filter, an integer or a hash of gt/gte/lt/lte, as an inclusive (lo, hi)."""
    v = params.get(name)
    lo, hi = None, None
    if v is None:
        return lo, hi

    def integer(x, param):
        if not isinstance(x, str) or not re.match(r"^-?\d+$", x):
            raise StripeError(400, "Invalid integer: %s" % (x if isinstance(x, str) else "object"),
                              code="parameter_invalid_integer", param=param)
        return int(x)

    if isinstance(v, str):
        n = integer(v, name)
        return n, n
    if not isinstance(v, dict):
        raise StripeError(400, "Invalid %s: must be an integer or a hash of gt, gte, lt, lte"
                          % name, param=name)
    for op, x in v.items():
        param = "%s[%s]" % (name, op)
        if op not in ("gt", "gte", "lt", "lte"):
            raise StripeError(400, "Received unknown parameter: %s" % param,
                              code="parameter_unknown", param=param)
        n = integer(x, param)
        if op == "gt":
            lo = n + 1 if lo is None else max(lo, n + 1)
        elif op == "gte":
            lo = n if lo is None else max(lo, n)
        elif op == "lt":
            hi = n - 1 if hi is None else min(hi, n - 1)
        else:
            hi = n if hi is None else min(hi, n)
    return lo, hi


def merge_metadata(current, params, name="metadata"):
    """Stripe's metadata update: keys merge into the current metadata, an empty value removes a
    key, and an empty string for the whole parameter clears it. Returns the new dict."""
    v = params.get(name)
    if v is None:
        return dict(current)
    if v == "":
        return {}
    check_metadata(params, name)
    if isinstance(v, list):
        v = {str(i): x for i, x in enumerate(v)}
    out = dict(current)
    for k, val in v.items():
        if val == "":
            out.pop(k, None)
        else:
            out[k] = val
    if len(out) > 50:
        raise StripeError(400, "Invalid %s: metadata can have up to 50 keys." % name, param=name)
    return out


def is_basil(version):
    """True for API versions that have the 2025-03-31 (basil) shapes."""
    return version[:10] >= BASIL_VERSION


def add_months(ts, n):
    """ts moved by n calendar months in UTC, the day clamped to the month's length (Stripe's
    monthly billing: an anchor on the 31st bills on the 30th in a 30-day month)."""
    d = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    m = d.month - 1 + n
    y = d.year + m // 12
    m = m % 12 + 1
    day = min(d.day, calendar.monthrange(y, m)[1])
    return int(d.replace(year=y, month=m, day=day).timestamp())


def previous_attributes(old, new):
    """Stripe's data.previous_attributes: the old value of every top-level field that changed
    (None for one that did not exist); for metadata, only the keys that changed."""
    prev = {}
    for k, v in old.items():
        nv = new.get(k)
        if k not in new:
            prev[k] = v
        elif nv != v:
            if k == "metadata" and isinstance(v, dict) and isinstance(nv, dict):
                prev[k] = {mk: v.get(mk) for mk in sorted(set(v) | set(nv))
                           if v.get(mk) != nv.get(mk)}
            else:
                prev[k] = v
    for k in new:
        if k not in old:
            prev[k] = None
    return prev


class Clock:
    """The fake's now, in whole seconds: real time (possibly shifted), or frozen by a test."""

    def __init__(self):
        self.frozen = None
        self.offset = 0

    def now(self):
        if self.frozen is not None:
            return self.frozen
        return int(time.time()) + self.offset

    def set(self, t):
        """Freeze at t; None returns to real time."""
        self.frozen = t
        self.offset = 0

    def advance(self, seconds):
        if self.frozen is not None:
            self.frozen += seconds
        else:
            self.offset += seconds

    def state(self):
        return {"now": self.now(), "frozen": self.frozen is not None}


class Plan:
    """A monthly USD price: its id, amount in cents, product and the tier it sells."""
    __slots__ = ("price", "amount", "tier", "product", "created")

    def __init__(self, price, amount, tier):
        self.price = price
        self.amount = amount
        self.tier = tier
        self.product = rand_id("prod_", 14)
        self.created = int(time.time())

    def price_object(self, version):
        recurring = {"interval": "month", "interval_count": 1, "meter": None,
                     "trial_period_days": None, "usage_type": "licensed"}
        if not is_basil(version):
            recurring["aggregate_usage"] = None
        return {"id": self.price, "object": "price", "active": True,
                "billing_scheme": "per_unit", "created": self.created, "currency": "usd",
                "custom_unit_amount": None, "livemode": False, "lookup_key": None,
                "metadata": {}, "nickname": None, "product": self.product,
                "recurring": recurring, "tax_behavior": "unspecified", "tiers_mode": None,
                "transform_quantity": None, "type": "recurring", "unit_amount": self.amount,
                "unit_amount_decimal": str(self.amount)}

    def plan_object(self, version):
        p = {"id": self.price, "object": "plan", "active": True, "amount": self.amount,
             "amount_decimal": str(self.amount), "billing_scheme": "per_unit",
             "created": self.created, "currency": "usd", "interval": "month",
             "interval_count": 1, "livemode": False, "metadata": {}, "meter": None,
             "nickname": None, "product": self.product, "tiers_mode": None,
             "transform_usage": None, "trial_period_days": None, "usage_type": "licensed"}
        if not is_basil(version):
            p["aggregate_usage"] = None
        return p


def parse_plans(spec):
    """--prices: "id[:amount[:tier]],...". Amounts default to 2900, 7900, 19900 in order; the
    tier defaults to the word after "price_" (price_pro_test sells "pro")."""
    plans = {}
    for i, entry in enumerate(p for p in (spec or "").split(",") if p):
        parts = entry.split(":")
        price = parts[0]
        amount = None
        if len(parts) > 1 and parts[1]:
            if not parts[1].isdigit():
                raise ValueError("bad amount in --prices: %s" % entry)
            amount = int(parts[1])
        if amount is None:
            amount = DEFAULT_AMOUNTS[i] if i < len(DEFAULT_AMOUNTS) else 10000 * (i + 1)
        tier = parts[2] if len(parts) > 2 and parts[2] else guess_tier(price)
        plans[price] = Plan(price, amount, tier)
    return plans


def guess_tier(price):
    m = re.match(r"^price_([a-z]+)(?:_|$)", price)
    return m.group(1) if m else None


class Event:
    """A recorded event: what listing filters on, and its JSON, encoded once."""
    __slots__ = ("id", "type", "created", "seq", "data")

    def __init__(self, id_, type_, created, seq, data):
        self.id = id_
        self.type = type_
        self.created = created
        self.seq = seq
        self.data = data


def _seq(ev):
    return ev.seq


# ---- webhook delivery ---------------------------------------------------------------------

class Webhooks:
    """One webhook endpoint and a background task delivering events to it, one at a time."""

    def __init__(self, clock):
        self.clock = clock
        self.task = None
        self.wake = asyncio.Event()
        self.clear()

    def clear(self):
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.url = None
        self.secret = None
        self.enabled = False
        self.retry_ms = 200
        self.max_attempts = 8
        self.shuffle = False
        self.ordered = False
        self.duplicate = 0.0
        self.timeout_ms = 10000
        self.ready = []    # heap of (seq, tiebreak, event, tries): due now, oldest first
        self.later = []    # heap of (due monotonic time, tiebreak, ready entry): retries
        self.tiebreak = 0
        self.deliveries = collections.OrderedDict()
        self.log = collections.deque(maxlen=MAX_DELIVERY_LOG)
        self.in_flight = None

    def active(self):
        return self.url is not None and self.enabled

    def configure(self, body):
        known = {"url", "secret", "enabled", "retry_ms", "max_attempts", "shuffle", "ordered",
                 "duplicate", "timeout_ms"}
        for k in body:
            if k not in known:
                raise ControlError("unknown webhook setting: %s" % k)
        url = body.get("url", self.url)
        if not isinstance(url, str):
            raise ControlError("url is required: http://host:port/path")
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ControlError("url must be http(s)://host[:port]/path")
        try:
            u.port
        except ValueError:
            raise ControlError("url has a bad port")
        secret = body.get("secret", self.secret)
        if not isinstance(secret, str) or not secret:
            raise ControlError("secret is required (whsec_...)")
        enabled = body.get("enabled", True if self.url is None else self.enabled)
        shuffle = body.get("shuffle", self.shuffle)
        ordered = body.get("ordered", self.ordered)
        for name, v in (("enabled", enabled), ("shuffle", shuffle), ("ordered", ordered)):
            if not isinstance(v, bool):
                raise ControlError("%s must be true or false" % name)
        ints = {}
        for name in ("retry_ms", "max_attempts", "timeout_ms"):
            v = body.get(name, getattr(self, name))
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ControlError("%s must be a positive integer" % name)
            ints[name] = v
        dup = body.get("duplicate", self.duplicate)
        if isinstance(dup, bool) or not isinstance(dup, (int, float)) or not 0 <= dup <= 1:
            raise ControlError("duplicate must be a number in 0..1")
        self.url, self.secret, self.enabled, self.shuffle = url, secret, enabled, shuffle
        self.ordered = ordered
        self.duplicate = float(dup)
        for name, v in ints.items():
            setattr(self, name, v)
        self.start()
        self.wake.set()

    def start(self):
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())

    def enqueue(self, ev):
        """Queue a new event for delivery; only when an enabled endpoint is set."""
        if not self.active():
            return
        self.deliveries[ev.id] = {"type": ev.type, "state": "pending", "attempts": 0,
                                  "last_status": None, "last_error": None, "delivered": 0}
        while len(self.deliveries) > MAX_EVENTS:
            self.deliveries.popitem(last=False)
        self.push_ready(ev, 0)
        self.wake.set()

    def push_ready(self, ev, tries):
        self.tiebreak += 1
        heapq.heappush(self.ready, (ev.seq, self.tiebreak, ev, tries))

    def report(self):
        return {"url": self.url, "enabled": self.enabled, "retry_ms": self.retry_ms,
                "max_attempts": self.max_attempts, "shuffle": self.shuffle,
                "ordered": self.ordered,
                "duplicate": self.duplicate, "timeout_ms": self.timeout_ms,
                "pending": len(self.ready) + len(self.later), "in_flight": self.in_flight,
                "deliveries": dict(self.deliveries), "log": list(self.log)}

    def take(self):
        """The next delivery due: the oldest, or a random one when shuffling."""
        if self.shuffle and len(self.ready) > 1:
            i = _rng.randrange(len(self.ready))
            entry = self.ready[i]
            self.ready[i] = self.ready[-1]
            self.ready.pop()
            heapq.heapify(self.ready)
            return entry
        return heapq.heappop(self.ready)

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self.later and self.later[0][0] <= now:
                _, _, entry = heapq.heappop(self.later)
                heapq.heappush(self.ready, entry)
            # ordered: nothing overtakes an event waiting for its retry.
            blocked = self.ordered and self.later
            if not self.enabled or not self.ready or blocked:
                timeout = None
                if self.enabled and self.later:
                    timeout = max(0.0, self.later[0][0] - now)
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
                continue
            await self.deliver(self.take())

    async def deliver(self, entry):
        seq, _, ev, tries = entry
        rec = self.deliveries.get(ev.id)
        if rec is None:
            rec = self.deliveries[ev.id] = {"type": ev.type, "state": "pending", "attempts": 0,
                                            "last_status": None, "last_error": None,
                                            "delivered": 0}
        t = self.clock.now()
        mac = hmac.new(self.secret.encode(), b"%d." % t + ev.data, hashlib.sha256).hexdigest()
        self.in_flight = ev.id
        status, error = None, None
        try:
            status = await asyncio.wait_for(self.post(ev.data, "t=%d,v1=%s" % (t, mac)),
                                            self.timeout_ms / 1000.0)
        except asyncio.TimeoutError:
            error = "timeout"
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            error = "%s: %s" % (type(e).__name__, e)
        finally:
            self.in_flight = None
        rec["attempts"] += 1
        rec["last_status"] = status
        rec["last_error"] = error
        self.log.append({"event": ev.id, "type": ev.type, "attempt": rec["attempts"],
                         "status": status, "error": error, "t": t})
        if status is not None and 200 <= status < 300:
            rec["state"] = "delivered"
            rec["delivered"] += 1
            if rec["delivered"] == 1 and self.duplicate > 0 and _rng.random() < self.duplicate:
                self.push_ready(ev, 0)
            return
        if tries + 1 >= self.max_attempts:
            rec["state"] = "failed" if rec["delivered"] == 0 else "delivered"
            return
        rec["state"] = "retrying"
        delay = self.retry_ms * min(2 ** tries, 32) / 1000.0
        self.tiebreak += 1
        heapq.heappush(self.later, (asyncio.get_running_loop().time() + delay, self.tiebreak,
                                    (seq, self.tiebreak, ev, tries + 1)))

    async def post(self, body, signature):
        """POST body to the endpoint as Stripe does; the answer's status code."""
        u = urllib.parse.urlsplit(self.url)
        https = u.scheme == "https"
        port = u.port or (443 if https else 80)
        ctx = ssl.create_default_context() if https else None
        reader, writer = await asyncio.open_connection(u.hostname, port, ssl=ctx)
        try:
            target = (u.path or "/") + ("?" + u.query if u.query else "")
            host = u.hostname if u.port is None else "%s:%d" % (u.hostname, u.port)
            if ":" in u.hostname:
                host = "[%s]" % u.hostname + ("" if u.port is None else ":%d" % u.port)
            head = ("POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n"
                    "Content-Type: application/json; charset=utf-8\r\n"
                    "Accept: */*; q=0.5, application/xml\r\nCache-Control: no-cache\r\n"
                    "Stripe-Signature: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                    % (target, host, WEBHOOK_USER_AGENT, signature, len(body)))
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            while True:
                line = await reader.readline()
                parts = line.split(None, 2)
                if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") \
                        or not parts[1].isdigit():
                    raise ValueError("malformed status line %r" % line[:80])
                status = int(parts[1])
                length = None
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.partition(b":")
                    if name.strip().lower() == b"content-length" and value.strip().isdigit():
                        length = int(value.strip())
                if status >= 200 or status < 100:
                    break
            if length is not None and length <= 65536:
                await reader.readexactly(length)
            return status
        finally:
            writer.close()


SUBSCRIPTION_UPDATE_PARAMS = {"cancel_at_period_end", "cancellation_details", "expand", "items",
                              "metadata", "payment_behavior", "proration_behavior",
                              "proration_date"}
SUBSCRIPTION_CANCEL_PARAMS = {"cancellation_details", "expand", "invoice_now", "prorate"}
EVENT_LIST_PARAMS = {"created", "delivery_success", "ending_before", "expand", "limit",
                     "starting_after", "type", "types"}
ENDED = ("canceled", "incomplete_expired")


# ---- the fake ---------------------------------------------------------------------------

class Fake:
    """State shared by all connections: configuration, stored objects, events, logs."""

    def __init__(self, args):
        self.price_spec = args.prices
        self.api_key = args.api_key
        self.verbose = args.verbose
        self.start_latency_ms = args.latency_ms
        self.start_api_version = args.api_version
        self.portal_configuration = rand_id("bpc_")
        self.clock = Clock()
        global ANSWER_CLOCK
        ANSWER_CLOCK = self.clock
        self.webhooks = Webhooks(self.clock)
        self.conns = set()
        self.reset()

    def reset(self):
        self.config = {"latency_ms": self.start_latency_ms, "fail_next": 0, "fail_status": 500,
                       "should_retry": None, "drop_next": 0, "hang_next": 0,
                       "api_version": self.start_api_version}
        self.plans = parse_plans(self.price_spec)
        self.prices = set(self.plans) or None
        self.sessions = {}
        self.session_items = {}
        self.customers = {}
        self.subscriptions = {}
        self.invoices = {}
        self.idempotency = collections.OrderedDict()
        self.requests = collections.deque(maxlen=MAX_LOGGED_REQUESTS)
        self.connections_opened = 0
        self.clock.set(None)
        self.webhooks.clear()
        self.events = []
        self.event_by_id = {}
        self.event_seq = 0
        self.recorded = []
        self.request_ctx = None
        self.req_version = None
        self.overrides = []

    def account_version(self):
        return self.config["api_version"]

    # The returned action is (kind, delay_s, status, headers, body): kind "answer", "drop" or
    # "hang"; body is a JSON-serialisable object or bytes already encoded.
    def handle(self, req):
        if req.path.startswith("/_fake/"):
            self.recorded = []
            headers = []
            try:
                status, body = self.control(req)
            except ControlError as e:
                status, body = 400, {"error": str(e)}
            if self.recorded:
                headers.append(("Fake-Events", ",".join(self.recorded)))
            return "answer", 0.0, status, headers, body
        return self.api(req)

    # -- Stripe API --

    def api(self, req):
        params = {}
        decode_error = None
        try:
            params = decode_form(req.query)
            if req.method in ("POST", "DELETE"):
                params.update(decode_form(req.body.decode("utf-8", "replace")))
        except StripeError as e:
            decode_error = e
        self.requests.append({
            "at": time.time(),
            "method": req.method, "path": req.path, "headers": req.headers_dict(),
            "params": params, "raw_body": req.body.decode("utf-8", "replace"),
        })
        if self.verbose:
            print("%s %s %s" % (req.method, req.target, req.body[:200]), flush=True)
        cfg = self.config
        delay = cfg["latency_ms"] / 1000.0
        for o in self.overrides:
            match = req.path.startswith(o["path"][:-1]) if o["path"].endswith("*") \
                else req.path == o["path"]
            if o["method"] == req.method and match and o["times"] != 0:
                if o["times"] > 0:
                    o["times"] -= 1
                body = o["body"]
                if isinstance(body, str):
                    body = body.encode("utf-8", "surrogateescape")
                headers = list(o["headers"].items())
                if not any(k.lower() == "request-id" for k, _ in headers):
                    headers.insert(0, ("Request-Id", request_id()))
                return "answer", delay, o["status"], headers, body
        if cfg["hang_next"] > 0:
            cfg["hang_next"] -= 1
            return "hang", 0.0, 0, [], None
        if cfg["drop_next"] > 0:
            cfg["drop_next"] -= 1
            return "drop", delay, 0, [], None
        rid = request_id()
        headers = [("Request-Id", rid)]
        version = req.header("stripe-version")
        headers.append(("Stripe-Version", version or self.account_version()))
        if cfg["fail_next"] > 0:
            cfg["fail_next"] -= 1
            status = cfg["fail_status"]
            if cfg["should_retry"] is not None:
                headers.append(("Stripe-Should-Retry", cfg["should_retry"]))
            if status == 429:
                err = StripeError(429, "Too many requests hit the API too quickly. We recommend "
                                  "an exponential backoff of your requests.", code="rate_limit")
            elif status >= 500:
                err = StripeError(status, "An unknown error occurred (injected by the fake).",
                                  type_="api_error")
            else:
                err = StripeError(status, "Injected failure.")
            status, body = err.answer()
            return "answer", delay, status, headers, body
        try:
            key = self.authenticate(req)
            if decode_error is not None:
                raise decode_error
            idem = req.header("idempotency-key") if req.method == "POST" else None
            if idem is not None:
                replay = self.idempotent_lookup(key, idem, req, params)
                if replay is not None:
                    status, rheaders, body = replay
                    return "answer", delay, status, headers + rheaders, body
            self.request_ctx = {"id": rid, "idempotency_key": idem}
            self.recorded = []
            self.req_version = version or self.account_version()
            try:
                status, body = self.route(req, params)
            except StripeError as e:
                status, body = e.answer()
            finally:
                self.request_ctx = None
            if idem is not None:
                headers.append(("Idempotency-Key", idem))
                if status < 500:
                    self.idempotency[(key, idem)] = (req.method, req.path, params, status, body)
                    while len(self.idempotency) > MAX_IDEMPOTENCY_KEYS:
                        self.idempotency.popitem(last=False)
            return "answer", delay, status, headers, body
        except StripeError as e:
            status, body = e.answer()
            return "answer", delay, status, headers, body

    def authenticate(self, req):
        auth = req.header("authorization")
        key = None
        if auth is not None:
            scheme, _, cred = auth.partition(" ")
            if scheme.lower() == "bearer":
                key = cred.strip()
            elif scheme.lower() == "basic":
                try:
                    key = base64.b64decode(cred.strip()).decode().partition(":")[0]
                except (ValueError, UnicodeDecodeError):
                    key = ""
        if not key:
            raise StripeError(
                401, "You did not provide an API key. You need to provide your API key in the "
                "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
                "YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, "
                "or we can help at https://support.stripe.com/.")
        good = key == self.api_key if self.api_key else key.startswith(("sk_test_", "rk_test_"))
        if not good:
            raise StripeError(401, "Invalid API Key provided: %s" % mask_key(key))
        return key

    def idempotent_lookup(self, key, idem, req, params):
        if len(idem) > 255:
            raise StripeError(400, "Idempotency keys can be at most 255 characters long.",
                              type_="idempotency_error")
        prev = self.idempotency.get((key, idem))
        if prev is None:
            return None
        method, path, pparams, status, body = prev
        if (method, path) != (req.method, req.path):
            raise StripeError(
                400, "Keys for idempotent requests can only be used for the same endpoint they "
                "were first used for ('%s %s' vs '%s %s'). Try using a key other than '%s' if "
                "you meant to execute a different request." % (method, path, req.method,
                                                               req.path, idem),
                type_="idempotency_error")
        if pparams != params:
            raise StripeError(
                400, "Keys for idempotent requests can only be used with the same parameters "
                "they were first used with. Try using a key other than '%s' if you meant to "
                "execute a different request." % idem, type_="idempotency_error")
        return status, [("Idempotency-Key", idem), ("Idempotent-Replayed", "true")], body

    def route(self, req, params):
        path = req.path
        parts = path.split("/")
        m = req.method
        if path == "/v1/checkout/sessions":
            if m == "POST":
                return self.create_checkout_session(params)
        elif len(parts) == 5 and path.startswith("/v1/checkout/sessions/"):
            if m == "GET":
                s = self.sessions.get(parts[4])
                if s is None:
                    raise StripeError(404, "No such checkout.session: '%s'" % parts[4],
                                      code="resource_missing", param="session")
                return 200, s
        elif path == "/v1/billing_portal/sessions":
            if m == "POST":
                return 200, self.create_portal_session(params)
        elif path == "/v1/events":
            if m == "GET":
                return 200, self.list_events(params)
        elif len(parts) == 4 and parts[1] == "v1" and parts[3]:
            kind, oid = parts[2], parts[3]
            if kind == "customers" and m == "GET":
                return 200, self.find(self.customers, "customer", oid)
            if kind == "subscriptions":
                if m == "GET":
                    sub = self.find(self.subscriptions, "subscription", oid)
                    return 200, encode(self.render_subscription(sub, self.req_version))
                if m == "POST":
                    return 200, self.update_subscription(oid, params)
                if m == "DELETE":
                    return 200, self.cancel_subscription_api(oid, params)
            if kind == "invoices" and m == "GET":
                inv = self.find(self.invoices, "invoice", oid)
                return 200, encode(self.render_invoice(inv, self.req_version))
            if kind == "events" and m == "GET":
                ev = self.event_by_id.get(oid)
                if ev is None or ev.created < self.clock.now() - EVENT_LIST_MAX_AGE:
                    raise StripeError(404, "No such event: '%s'" % oid,
                                      code="resource_missing", param="id")
                return 200, ev.data
        raise StripeError(404, "Unrecognized request URL (%s: %s). Please see "
                          "https://stripe.com/docs or we can help at https://support.stripe.com/."
                          % (m, path))

    @staticmethod
    def find(table, kind, oid):
        obj = table.get(oid)
        if obj is None:
            raise StripeError(404, "No such %s: '%s'" % (kind, oid), code="resource_missing",
                              param="id")
        return obj

    def price_known(self, price):
        if self.prices is not None:
            return price in self.prices
        return price.startswith("price_")

    def plan(self, price):
        """The plan of a price id; with no configured prices any price_ id is a 20.00 plan."""
        p = self.plans.get(price)
        if p is None:
            p = self.plans[price] = Plan(price, 2000, guess_tier(price))
        return p

    def create_checkout_session(self, p):
        check_unknown(p, CHECKOUT_PARAMS)
        mode = p.get("mode")
        if mode is None:
            raise missing("mode")
        if mode == "":
            raise invalid_empty("mode")
        if mode not in ("payment", "subscription", "setup"):
            raise StripeError(400, "Invalid mode: must be one of payment, setup, or subscription",
                              param="mode")
        items = p.get("line_items")
        if mode in ("payment", "subscription") and items is None:
            raise missing("line_items")
        if items is not None:
            if not isinstance(items, list) or not items:
                raise StripeError(400, "Invalid array", param="line_items")
            for i, item in enumerate(items):
                self.check_line_item(i, item)
        success_url = check_url(p, "success_url", required=p.get("ui_mode") in (None, "hosted"))
        cancel_url = check_url(p, "cancel_url", required=False)
        email = check_string(p, "customer_email", 800)
        if email is not None and not _EMAIL_RE.match(email):
            raise StripeError(400, "Invalid email address: %s" % email, code="email_invalid",
                              param="customer_email")
        customer = check_string(p, "customer")
        if customer is not None and customer not in self.customers:
            raise StripeError(400, "No such customer: '%s'" % customer, code="resource_missing",
                              param="customer")
        if customer is not None and email is not None:
            raise StripeError(400, "You may only specify one of these parameters: customer, "
                              "customer_email.", code="parameters_exclusive",
                              param="customer_email")
        metadata = check_metadata(p, "metadata")
        sub = p.get("subscription_data")
        if sub is not None:
            if not isinstance(sub, dict):
                raise StripeError(400, "Invalid object", param="subscription_data")
            if mode != "subscription":
                raise StripeError(400, "You can only pass in subscription_data in subscription "
                                  "mode.", param="subscription_data")
            sub_metadata = check_metadata(sub, "metadata")
        else:
            sub_metadata = {}
        promo = check_bool(p, "allow_promotion_codes")
        client_ref = check_string(p, "client_reference_id", 200)
        pmt = p.get("payment_method_types")
        if pmt is not None and not isinstance(pmt, list):
            raise StripeError(400, "Invalid array", param="payment_method_types")
        now = self.clock.now()
        expires_at = now + 86400
        if p.get("expires_at") is not None:
            try:
                expires_at = int(p["expires_at"])
            except (TypeError, ValueError):
                raise StripeError(400, "Invalid integer: %s" % p["expires_at"],
                                  code="parameter_invalid_integer", param="expires_at")
        sid = rand_id("cs_test_", 58)
        s = {
            "id": sid,
            "object": "checkout.session",
            "after_expiration": None,
            "allow_promotion_codes": promo,
            "amount_subtotal": None,
            "amount_total": None,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None,
            "cancel_url": cancel_url,
            "client_reference_id": client_ref,
            "client_secret": None,
            "consent": None,
            "consent_collection": None,
            "created": now,
            "currency": None,
            "custom_fields": [],
            "custom_text": {"after_submit": None, "shipping_address": None, "submit": None,
                            "terms_of_service_acceptance": None},
            "customer": customer,
            "customer_creation": "if_required" if mode == "payment" and not customer else None,
            "customer_details": None,
            "customer_email": email,
            "expires_at": expires_at,
            "invoice": None,
            "invoice_creation": None,
            "livemode": False,
            "locale": p.get("locale"),
            "metadata": metadata,
            "mode": mode,
            "payment_intent": None,
            "payment_link": None,
            "payment_method_collection": "always" if mode == "subscription" else None,
            "payment_method_options": {},
            "payment_method_types": pmt if pmt is not None else ["card"],
            "payment_status": "no_payment_required" if mode == "setup" else "unpaid",
            "phone_number_collection": {"enabled": False},
            "recovered_from": None,
            "setup_intent": None,
            "shipping_address_collection": None,
            "shipping_cost": None,
            "shipping_options": [],
            "status": "open",
            "submit_type": None,
            "subscription": None,
            "success_url": success_url,
            "total_details": None,
            "ui_mode": p.get("ui_mode", "hosted"),
            "url": "https://checkout.stripe.com/c/pay/" + sid,
        }
        data = self.store_session(s)
        if mode == "subscription":
            item = items[0]
            self.session_items[sid] = (item.get("price"), int(item["quantity"]), sub_metadata)
        return 200, data

    def check_line_item(self, i, item):
        base = "line_items[%d]" % i
        if not isinstance(item, dict):
            raise StripeError(400, "Invalid object", param=base)
        price = item.get("price")
        if price is None and item.get("price_data") is None:
            raise missing(base + "[price]")
        if price is not None:
            if price == "":
                raise invalid_empty(base + "[price]")
            if not isinstance(price, str) or not self.price_known(price):
                raise StripeError(400, "No such price: '%s'" % price, code="resource_missing",
                                  param=base + "[price]")
        qty = item.get("quantity")
        if qty is None:
            raise StripeError(400, "Quantity is required. Add `quantity` to `%s`" % base,
                              code="parameter_missing", param=base + "[quantity]")
        if not isinstance(qty, str) or not qty.isdigit() or int(qty) < 1 or int(qty) > 999999:
            raise StripeError(400, "Invalid integer: %s" % qty, code="parameter_invalid_integer",
                              param=base + "[quantity]")

    def create_portal_session(self, p):
        check_unknown(p, PORTAL_PARAMS)
        customer = p.get("customer")
        if customer is None:
            raise missing("customer")
        if customer == "":
            raise invalid_empty("customer")
        if customer not in self.customers:
            raise StripeError(400, "No such customer: '%s'" % customer, code="resource_missing",
                              param="customer")
        return_url = check_url(p, "return_url", required=False)
        return {
            "id": rand_id("bps_"),
            "object": "billing_portal.session",
            "configuration": self.portal_configuration,
            "created": self.clock.now(),
            "customer": customer,
            "flow": None,
            "livemode": False,
            "locale": p.get("locale"),
            "on_behalf_of": None,
            "return_url": return_url,
            "url": "https://billing.stripe.com/p/session/" + rand_id("test_", 40),
        }

    def store_session(self, s):
        """Keep a session as its encoded JSON: answers reuse the bytes, and a long benchmark
        holds a bounded number of them."""
        data = encode(s)
        self.sessions[s["id"]] = data
        while len(self.sessions) > MAX_SESSIONS:
            old = next(iter(self.sessions))
            del self.sessions[old]
            self.session_items.pop(old, None)
        return data

    # -- objects --

    @staticmethod
    def trim(table):
        while len(table) > MAX_OBJECTS:
            del table[next(iter(table))]

    def new_customer(self, cid, email):
        c = {"id": cid, "object": "customer", "address": None, "balance": 0,
             "created": self.clock.now(), "currency": None, "default_source": None,
             "delinquent": False, "description": None, "discount": None, "email": email,
             "invoice_prefix": "".join(_rng.choices("0123456789ABCDEF", k=8)),
             "invoice_settings": {"custom_fields": None, "default_payment_method": None,
                                  "footer": None, "rendering_options": None},
             "livemode": False, "metadata": {}, "name": None, "next_invoice_sequence": 1,
             "phone": None, "preferred_locales": [], "shipping": None, "tax_exempt": "none",
             "test_clock": None}
        self.customers[cid] = c
        self.record("customer.created", dict(c))
        return c

    def new_subscription(self, customer, plan, quantity, metadata, status, trial_days):
        now = self.clock.now()
        sid = rand_id("sub_")
        s = {"id": sid, "customer": customer, "status": status, "created": now,
             "start_date": now, "anchor": now, "period": 0, "cps": now,
             "cpe": add_months(now, 1), "cancel_at_period_end": False, "cancel_at": None,
             "canceled_at": None, "ended_at": None,
             "cancellation": {"comment": None, "feedback": None, "reason": None},
             "trial_start": None, "trial_end": None, "metadata": dict(metadata),
             "item_id": rand_id("si_", 14), "price": plan.price, "quantity": quantity,
             "latest_invoice": None,
             "default_payment_method": None if status == "incomplete" else rand_id("pm_")}
        if status == "trialing":
            s["trial_start"] = now
            s["trial_end"] = s["anchor"] = s["cpe"] = now + trial_days * 86400
            s["period"] = -1
        self.subscriptions[sid] = s
        self.trim(self.subscriptions)
        return s

    def render_subscription(self, s, version):
        """A subscription as Stripe answers it in the given API version."""
        plan = self.plan(s["price"])
        basil = is_basil(version)
        item = {"id": s["item_id"], "object": "subscription_item", "billing_thresholds": None,
                "created": s["created"], "discounts": [], "metadata": {},
                "plan": plan.plan_object(version), "price": plan.price_object(version),
                "quantity": s["quantity"], "subscription": s["id"], "tax_rates": []}
        if basil:
            item["current_period_end"] = s["cpe"]
            item["current_period_start"] = s["cps"]
        o = {"id": s["id"], "object": "subscription", "application": None,
             "application_fee_percent": None,
             "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
             "billing_cycle_anchor": s["anchor"], "billing_cycle_anchor_config": None,
             "billing_thresholds": None, "cancel_at": s["cancel_at"],
             "cancel_at_period_end": s["cancel_at_period_end"],
             "canceled_at": s["canceled_at"], "cancellation_details": dict(s["cancellation"]),
             "collection_method": "charge_automatically", "created": s["created"],
             "currency": "usd", "customer": s["customer"], "days_until_due": None,
             "default_payment_method": s["default_payment_method"], "default_source": None,
             "default_tax_rates": [], "description": None, "discounts": [],
             "ended_at": s["ended_at"],
             "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
             "items": {"object": "list", "data": [item], "has_more": False, "total_count": 1,
                       "url": "/v1/subscription_items?subscription=" + s["id"]},
             "latest_invoice": s["latest_invoice"], "livemode": False,
             "metadata": dict(s["metadata"]), "next_pending_invoice_item_invoice": None,
             "on_behalf_of": None, "pause_collection": None,
             "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                                  "save_default_payment_method": "off"},
             "pending_invoice_item_interval": None, "pending_setup_intent": None,
             "pending_update": None, "schedule": None, "start_date": s["start_date"],
             "status": s["status"], "test_clock": None, "transfer_data": None,
             "trial_end": s["trial_end"],
             "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
             "trial_start": s["trial_start"]}
        if not basil:
            o["current_period_end"] = s["cpe"]
            o["current_period_start"] = s["cps"]
            o["plan"] = plan.plan_object(version)
            o["quantity"] = s["quantity"]
        return o

    def next_period(self, s):
        s["period"] += 1
        s["cps"] = add_months(s["anchor"], s["period"])
        s["cpe"] = add_months(s["anchor"], s["period"] + 1)

    def new_invoice(self, s, reason, lines, period_start, period_end):
        """A draft invoice of a subscription; lines are (amount, plan, quantity, start, end,
        proration, description)."""
        now = self.clock.now()
        cust = self.customers.get(s["customer"]) or {}
        total = sum(line[0] for line in lines)
        due = max(total, 0)
        inv = {"id": rand_id("in_"), "customer": s["customer"],
               "customer_email": cust.get("email"), "customer_name": cust.get("name"),
               "subscription": s["id"], "item_id": s["item_id"], "status": "draft",
               "billing_reason": reason, "created": now, "subtotal": total, "total": total,
               "amount_due": due, "amount_paid": 0, "amount_remaining": due,
               "period_start": period_start, "period_end": period_end,
               "lines": [{"id": rand_id("il_"), "amount": a, "price": p.price,
                          "quantity": q, "start": st, "end": en, "proration": pr,
                          "description": d} for a, p, q, st, en, pr, d in lines],
               "attempt_count": 0, "attempted": False, "finalized_at": None, "paid_at": None,
               "voided_at": None, "number": None, "next_payment_attempt": None,
               "sub_metadata": dict(s["metadata"]), "payment_intent": None, "charge": None,
               "ending_balance": None}
        self.invoices[inv["id"]] = inv
        self.trim(self.invoices)
        s["latest_invoice"] = inv["id"]
        return inv

    def render_invoice(self, inv, version):
        """An invoice as Stripe answers it in the given API version."""
        basil = is_basil(version)
        lines = []
        for li in inv["lines"]:
            plan = self.plan(li["price"])
            line = {"id": li["id"], "object": "line_item", "amount": li["amount"],
                    "currency": "usd", "description": li["description"],
                    "discount_amounts": [], "discountable": True, "discounts": [],
                    "invoice": inv["id"], "livemode": False, "metadata": {},
                    "period": {"end": li["end"], "start": li["start"]},
                    "quantity": li["quantity"]}
            if basil:
                line["parent"] = {
                    "invoice_item_details": None,
                    "subscription_item_details": {
                        "invoice_item": None, "proration": li["proration"],
                        "proration_details": {"credited_items": None},
                        "subscription": inv["subscription"],
                        "subscription_item": inv["item_id"]},
                    "type": "subscription_item_details"}
                line["pretax_credit_amounts"] = []
                line["pricing"] = {"price_details": {"price": plan.price,
                                                     "product": plan.product},
                                   "type": "price_details",
                                   "unit_amount_decimal": str(plan.amount)}
                line["taxes"] = []
            else:
                line.update({"amount_excluding_tax": li["amount"],
                             "plan": plan.plan_object(version),
                             "price": plan.price_object(version),
                             "proration": li["proration"],
                             "proration_details": {"credited_items": None},
                             "subscription": inv["subscription"],
                             "subscription_item": inv["item_id"], "tax_amounts": [],
                             "tax_rates": [], "type": "subscription",
                             "unit_amount_excluding_tax": str(plan.amount)})
            lines.append(line)
        hosted = None
        if inv["finalized_at"] is not None:
            hosted = "https://invoice.stripe.com/i/acct_fake/test_" + inv["id"][3:]
        o = {"id": inv["id"], "object": "invoice", "account_country": "US",
             "account_name": "Rivet", "account_tax_ids": None,
             "amount_due": inv["amount_due"], "amount_paid": inv["amount_paid"],
             "amount_remaining": inv["amount_remaining"], "amount_shipping": 0,
             "application": None, "attempt_count": inv["attempt_count"],
             "attempted": inv["attempted"], "auto_advance": inv["status"] in ("draft", "open"),
             "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None,
                               "provider": None, "status": None},
             "automatically_finalizes_at": None, "billing_reason": inv["billing_reason"],
             "collection_method": "charge_automatically", "created": inv["created"],
             "currency": "usd", "custom_fields": None, "customer": inv["customer"],
             "customer_address": None, "customer_email": inv["customer_email"],
             "customer_name": inv["customer_name"], "customer_phone": None,
             "customer_shipping": None, "customer_tax_exempt": "none", "customer_tax_ids": [],
             "default_payment_method": None, "default_source": None, "default_tax_rates": [],
             "description": None, "discounts": [], "due_date": None,
             "effective_at": inv["finalized_at"], "ending_balance": inv["ending_balance"],
             "footer": None, "from_invoice": None, "hosted_invoice_url": hosted,
             "invoice_pdf": hosted and hosted + "/pdf", "issuer": {"type": "self"},
             "last_finalization_error": None, "latest_revision": None,
             "lines": {"object": "list", "data": lines, "has_more": False,
                       "total_count": len(lines),
                       "url": "/v1/invoices/%s/lines" % inv["id"]},
             "livemode": False, "metadata": {},
             "next_payment_attempt": inv["next_payment_attempt"], "number": inv["number"],
             "on_behalf_of": None,
             "payment_settings": {"default_mandate": None, "payment_method_options": None,
                                  "payment_method_types": None},
             "period_end": inv["period_end"], "period_start": inv["period_start"],
             "post_payment_credit_notes_amount": 0, "pre_payment_credit_notes_amount": 0,
             "receipt_number": None, "rendering": None, "shipping_cost": None,
             "shipping_details": None, "starting_balance": 0, "statement_descriptor": None,
             "status": inv["status"],
             "status_transitions": {"finalized_at": inv["finalized_at"],
                                    "marked_uncollectible_at": None,
                                    "paid_at": inv["paid_at"], "voided_at": inv["voided_at"]},
             "subtotal": inv["subtotal"], "subtotal_excluding_tax": inv["subtotal"],
             "test_clock": None, "total": inv["total"], "total_discount_amounts": [],
             "total_excluding_tax": inv["total"],
             "webhooks_delivered_at": inv["finalized_at"]}
        if basil:
            o["amount_overpaid"] = 0
            o["parent"] = {"quote_details": None,
                           "subscription_details": {"metadata": dict(inv["sub_metadata"]),
                                                    "subscription": inv["subscription"]},
                           "type": "subscription_details"}
            o["total_pretax_credit_amounts"] = []
            o["total_taxes"] = []
        else:
            o.update({"charge": inv["charge"], "discount": None, "paid": inv["status"] == "paid",
                      "paid_out_of_band": False, "payment_intent": inv["payment_intent"],
                      "quote": None, "subscription": inv["subscription"],
                      "subscription_details": {"metadata": dict(inv["sub_metadata"])},
                      "tax": None, "total_tax_amounts": []})
        return o

    # -- invoice life --

    def finalize(self, inv):
        now = self.clock.now()
        inv["status"] = "open"
        inv["finalized_at"] = now
        cust = self.customers.get(inv["customer"])
        if cust is not None:
            inv["number"] = "%s-%04d" % (cust["invoice_prefix"], cust["next_invoice_sequence"])
            cust["next_invoice_sequence"] += 1
        if inv["amount_due"] > 0:
            inv["next_payment_attempt"] = now
        self.emit_invoice("invoice.finalized", inv)

    def pay(self, inv):
        now = self.clock.now()
        inv["status"] = "paid"
        inv["amount_paid"] = inv["amount_due"]
        inv["amount_remaining"] = 0
        inv["paid_at"] = now
        inv["ending_balance"] = 0
        inv["next_payment_attempt"] = None
        if inv["amount_due"] > 0:
            inv["attempted"] = True
            inv["attempt_count"] += 1
            inv["payment_intent"] = rand_id("pi_")
            inv["charge"] = rand_id("ch_")
        self.emit_invoice("invoice.paid", inv)
        self.emit_invoice("invoice.payment_succeeded", inv)

    def fail(self, inv):
        inv["attempted"] = True
        inv["attempt_count"] += 1
        if inv["payment_intent"] is None:
            inv["payment_intent"] = rand_id("pi_")
        inv["next_payment_attempt"] = self.clock.now() + 3 * 86400
        self.emit_invoice("invoice.payment_failed", inv)

    def void(self, inv):
        inv["status"] = "void"
        inv["voided_at"] = self.clock.now()
        inv["next_payment_attempt"] = None
        inv["amount_remaining"] = 0
        self.emit_invoice("invoice.voided", inv)

    def invoice_new_period(self, s, reason, prev_start, prev_end):
        """The invoice of the subscription's current period, created and finalized."""
        plan = self.plan(s["price"])
        inv = self.new_invoice(
            s, reason, [(plan.amount * s["quantity"], plan, s["quantity"], s["cps"], s["cpe"],
                         False, "%d × %s (at $%.2f / month)" % (s["quantity"],
                                                                  plan.tier or plan.price,
                                                                  plan.amount / 100.0))],
            prev_start, prev_end)
        return inv

    def proration_invoice(self, s, old_plan, new_plan):
        """A price change with always_invoice: the unused time on the old price credited and
        the rest of the period on the new one charged, in a draft the caller records and
        pays (the subscription's update names it first)."""
        now = self.clock.now()
        length = max(s["cpe"] - s["cps"], 1)
        frac = min(max((s["cpe"] - now) / length, 0.0), 1.0)
        q = s["quantity"]
        return self.new_invoice(s, "subscription_update", [
            (-int(round(old_plan.amount * q * frac)), old_plan, q, now, s["cpe"], True,
             "Unused time on %s" % old_plan.price),
            (int(round(new_plan.amount * q * frac)), new_plan, q, now, s["cpe"], True,
             "Remaining time on %s" % new_plan.price),
        ], now, now)

    # -- events --

    def record(self, type_, obj, previous=None):
        """Record an event about obj (already rendered) and queue it for the webhook."""
        now = self.clock.now()
        self.event_seq += 1
        eid = rand_id("evt_")
        data = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        request = self.request_ctx or {"id": None, "idempotency_key": None}
        ev = {"id": eid, "object": "event", "api_version": self.account_version(),
              "created": now, "data": data, "livemode": False,
              "pending_webhooks": 1 if self.webhooks.active() else 0,
              "request": dict(request), "type": type_}
        e = Event(eid, type_, now, self.event_seq, encode(ev))
        self.events.append(e)
        self.event_by_id[eid] = e
        if len(self.events) > MAX_EVENTS:
            for old in self.events[:EVENT_TRIM]:
                del self.event_by_id[old.id]
            del self.events[:EVENT_TRIM]
        self.webhooks.enqueue(e)
        self.recorded.append(eid)
        return e

    def emit_sub(self, type_, s, before=None):
        after = self.render_subscription(s, self.account_version())
        prev = previous_attributes(before, after) if before is not None else None
        self.record(type_, after, prev)

    def emit_invoice(self, type_, inv):
        self.record(type_, self.render_invoice(inv, self.account_version()))

    def snapshot(self, s):
        return self.render_subscription(s, self.account_version())

    def event_position(self, eid, param):
        ev = self.event_by_id.get(eid)
        if ev is None:
            raise StripeError(400, "No such event: '%s'" % eid, code="resource_missing",
                              param=param)
        return bisect.bisect_left(self.events, ev.seq, key=_seq)

    def list_events(self, p):
        """GET /v1/events: newest first, with Stripe's cursors and filters."""
        check_unknown(p, EVENT_LIST_PARAMS)
        limit = check_limit(p)
        after = check_string(p, "starting_after")
        before = check_string(p, "ending_before")
        if after is not None and before is not None:
            raise StripeError(400, "You may only specify one of these parameters: "
                              "ending_before, starting_after.", code="parameters_exclusive",
                              param="ending_before")
        lo, hi = check_range(p, "created")
        type_ = check_string(p, "type")
        types = p.get("types")
        if types is not None:
            if type_ is not None:
                raise StripeError(400, "You may only specify one of these parameters: type, "
                                  "types.", code="parameters_exclusive", param="types")
            if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
                raise StripeError(400, "Invalid array", param="types")
            if len(types) > 20:
                raise StripeError(400, "Invalid types: must contain at most 20 elements",
                                  param="types")
        check_bool(p, "delivery_success")
        oldest = self.clock.now() - EVENT_LIST_MAX_AGE
        lo = oldest if lo is None else max(lo, oldest)
        if type_ is not None and "*" in type_:
            pattern = re.compile(".*".join(re.escape(x) for x in type_.split("*")) + r"\Z")
            type_ok = lambda t: pattern.match(t) is not None  # noqa: E731
        elif type_ is not None:
            type_ok = lambda t: t == type_  # noqa: E731
        elif types is not None:
            wanted = set(types)
            type_ok = lambda t: t in wanted  # noqa: E731
        else:
            type_ok = lambda t: True  # noqa: E731

        def match(ev):
            return lo <= ev.created and (hi is None or ev.created <= hi) and type_ok(ev.type)

        events = self.events
        page = []
        has_more = False
        if before is not None:
            i = self.event_position(before, "ending_before") + 1
            while i < len(events):
                if match(events[i]):
                    if len(page) == limit:
                        has_more = True
                        break
                    page.append(events[i])
                i += 1
            page.reverse()
        else:
            i = len(events) - 1
            if after is not None:
                i = self.event_position(after, "starting_after") - 1
            while i >= 0:
                if match(events[i]):
                    if len(page) == limit:
                        has_more = True
                        break
                    page.append(events[i])
                i -= 1
        return (b'{"object":"list","data":[' + b",".join(ev.data for ev in page)
                + b'],"has_more":' + (b"true" if has_more else b"false")
                + b',"url":"/v1/events"}')


    # -- subscription changes (shared by the API and the control endpoints) --

    def change_price(self, s, price, proration_behavior, tier=None):
        """Move the subscription's one item to another price; records the update and, with
        always_invoice, the proration invoice."""
        before = self.snapshot(s)
        old_plan, new_plan = self.plan(s["price"]), self.plan(price)
        s["price"] = price
        if tier is not None:
            s["metadata"]["tier"] = tier
        inv = None
        if proration_behavior == "always_invoice" and s["status"] != "trialing":
            inv = self.proration_invoice(s, old_plan, new_plan)
        self.emit_sub("customer.subscription.updated", s, before)
        if inv is not None:
            self.emit_invoice("invoice.created", inv)
            self.finalize(inv)
            self.pay(inv)

    @staticmethod
    def apply_cancel_at_period_end(s, value, now):
        """Set or clear cancel_at_period_end with the fields Stripe sets alongside."""
        if s["cancel_at_period_end"] == value:
            return
        s["cancel_at_period_end"] = value
        if value:
            s["cancel_at"] = s["cpe"]
            s["canceled_at"] = now
            s["cancellation"]["reason"] = "cancellation_requested"
        else:
            s["cancel_at"] = None
            s["canceled_at"] = None
            s["cancellation"]["reason"] = None

    def set_cancel_at_period_end(self, s, value):
        if s["cancel_at_period_end"] == value:
            return
        before = self.snapshot(s)
        self.apply_cancel_at_period_end(s, value, self.clock.now())
        self.emit_sub("customer.subscription.updated", s, before)

    def end_subscription(self, s, status="canceled", at=None, reason="cancellation_requested"):
        now = self.clock.now()
        s["status"] = status
        if s["canceled_at"] is None:
            s["canceled_at"] = now
        s["ended_at"] = now if at is None else at
        s["cancel_at_period_end"] = False if at is None else s["cancel_at_period_end"]
        if s["cancellation"]["reason"] is None and status == "canceled":
            s["cancellation"]["reason"] = reason
        self.emit_sub("customer.subscription.deleted", s)

    def set_status(self, s, status):
        before = self.snapshot(s)
        s["status"] = status
        self.emit_sub("customer.subscription.updated", s, before)

    def renew(self, s, pays):
        """The period ends: the next one starts and its invoice is paid, or fails."""
        if s["cancel_at_period_end"]:
            self.end_subscription(s, at=s["cpe"])
            return
        before = self.snapshot(s)
        prev_start, prev_end = s["cps"], s["cpe"]
        self.next_period(s)
        if s["status"] == "trialing" and pays:
            s["status"] = "active"
        inv = self.invoice_new_period(s, "subscription_cycle", prev_start, prev_end)
        self.emit_sub("customer.subscription.updated", s, before)
        self.emit_invoice("invoice.created", inv)
        self.finalize(inv)
        if pays:
            self.pay(inv)
        else:
            self.fail(inv)

    def open_invoice(self, s):
        inv = self.invoices.get(s["latest_invoice"] or "")
        if inv is None or inv["status"] != "open":
            return None
        return inv

    # -- subscriptions API --

    def update_subscription(self, oid, p):
        s = self.find(self.subscriptions, "subscription", oid)
        check_unknown(p, SUBSCRIPTION_UPDATE_PARAMS)
        cape = check_bool(p, "cancel_at_period_end")
        proration = check_string(p, "proration_behavior")
        if proration is not None and proration not in ("always_invoice", "create_prorations",
                                                       "none"):
            raise StripeError(400, "Invalid proration_behavior: must be one of always_invoice, "
                              "create_prorations, or none", param="proration_behavior")
        metadata = merge_metadata(s["metadata"], p)
        details = p.get("cancellation_details")
        if details is not None:
            if not isinstance(details, dict):
                raise StripeError(400, "Invalid object", param="cancellation_details")
            check_unknown({"cancellation_details[%s]" % k: v for k, v in details.items()},
                          {"cancellation_details[comment]", "cancellation_details[feedback]"})
        price = self.check_items(s, p.get("items"))
        if s["status"] in ENDED and (price is not None or cape is not None
                                     or proration is not None):
            raise StripeError(400, "A canceled subscription can only update its "
                              "cancellation_details and metadata.")
        before = self.snapshot(s)
        s["metadata"] = metadata
        for k in ("comment", "feedback"):
            if details is not None and k in details:
                s["cancellation"][k] = details[k] or None
        if cape is not None:
            self.apply_cancel_at_period_end(s, cape, self.clock.now())
        inv = None
        if price is not None and price != s["price"]:
            old_plan = self.plan(s["price"])
            s["price"] = price
            if proration == "always_invoice" and s["status"] != "trialing":
                inv = self.proration_invoice(s, old_plan, self.plan(price))
        # One update event for everything the request changed, then the proration invoice's.
        after = self.snapshot(s)
        if after != before:
            self.record("customer.subscription.updated", after,
                        previous_attributes(before, after))
        if inv is not None:
            self.emit_invoice("invoice.created", inv)
            self.finalize(inv)
            self.pay(inv)
        return encode(self.render_subscription(s, self.req_version))

    def check_items(self, s, items):
        """items[0][id] (the subscription's item) with items[0][price]: the new price, or None.
        Without an id Stripe would add a second item; this fake models one item and refuses."""
        if items is None:
            return None
        if not isinstance(items, list) or not items:
            raise StripeError(400, "Invalid array", param="items")
        if len(items) > 1:
            raise StripeError(400, "This fake models subscriptions with one item: pass only "
                              "items[0].", param="items[1]")
        item = items[0]
        if not isinstance(item, dict):
            raise StripeError(400, "Invalid object", param="items[0]")
        check_unknown({"items[0][%s]" % k: v for k, v in item.items()},
                      {"items[0][id]", "items[0][price]", "items[0][quantity]",
                       "items[0][metadata]"})
        iid = item.get("id")
        price = item.get("price")
        if iid is None:
            if price is not None and price == s["price"]:
                raise StripeError(400, "Cannot add multiple subscription items with the same "
                                  "price: %s" % price, param="items[0][price]")
            raise StripeError(400, "Without items[0][id] Stripe adds a second item; this fake "
                              "models one item: pass items[0][id]=%s to change its price."
                              % s["item_id"], code="parameter_missing", param="items[0][id]")
        if iid != s["item_id"]:
            raise StripeError(400, "No such subscription item: '%s'" % iid,
                              code="resource_missing", param="items[0][id]")
        if price is not None:
            if price == "":
                raise invalid_empty("items[0][price]")
            if not isinstance(price, str) or not self.price_known(price):
                raise StripeError(400, "No such price: '%s'" % price, code="resource_missing",
                                  param="items[0][price]")
        qty = item.get("quantity")
        if qty is not None and qty != str(s["quantity"]):
            raise StripeError(400, "This fake models quantity 1 only.",
                              param="items[0][quantity]")
        return price

    def cancel_subscription_api(self, oid, p):
        s = self.find(self.subscriptions, "subscription", oid)
        check_unknown(p, SUBSCRIPTION_CANCEL_PARAMS)
        check_bool(p, "invoice_now")
        check_bool(p, "prorate")
        if s["status"] in ENDED:
            raise StripeError(400, "This subscription has already been canceled (status: %s)."
                              % s["status"])
        details = p.get("cancellation_details")
        if isinstance(details, dict):
            for k in ("comment", "feedback"):
                if details.get(k):
                    s["cancellation"][k] = details[k]
        self.end_subscription(s)
        return encode(self.render_subscription(s, self.req_version))

    # -- control API --

    def control(self, req):
        path = req.path
        try:
            body = json.loads(req.body) if req.body.strip() else {}
        except ValueError:
            raise ControlError("body is not JSON")
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        method = req.method
        if path == "/_fake/config":
            if method == "POST":
                self.configure(body)
            elif method != "GET":
                return 405, {"error": "use GET or POST"}
            return 200, dict(self.config)
        if path == "/_fake/reset" and method == "POST":
            self.reset()
            return 200, {"ok": True}
        if path == "/_fake/override" and method == "POST":
            if body.get("clear"):
                self.overrides = []
                return 200, {"overrides": 0}
            self.overrides.append(make_override(body))
            return 200, {"overrides": len(self.overrides)}
        if path == "/_fake/requests" and method == "GET":
            return 200, list(self.requests)
        if path == "/_fake/stats" and method == "GET":
            # Connections accepted since the last reset, and open now (this one included).
            return 200, {"connections_opened": self.connections_opened,
                         "connections_open": len(self.conns)}
        if path == "/_fake/clock":
            if method == "POST":
                self.set_clock(body)
            elif method != "GET":
                return 405, {"error": "use GET or POST"}
            return 200, self.clock.state()
        if path == "/_fake/events" and method == "GET":
            return 200, b"[" + b",".join(ev.data for ev in self.events) + b"]"
        if path == "/_fake/events/forget" and method == "POST":
            return 200, {"forgotten": self.forget_events(body)}
        if path == "/_fake/webhooks":
            if method == "POST":
                self.webhooks.configure(body)
            elif method != "GET":
                return 405, {"error": "use GET or POST"}
            return 200, self.webhooks.report()
        m = re.match(r"^/_fake/sessions/([^/]+)/(complete|expire|settle)$", path)
        if m and method == "POST":
            data = self.sessions.get(m.group(1))
            if data is None:
                return 404, {"error": "no such checkout.session: %s" % m.group(1)}
            s = json.loads(data)
            if m.group(2) == "settle":
                self.settle(s, body)
                return 200, self.store_session(s)
            if s["status"] != "open":
                raise ControlError("session is %s, not open" % s["status"])
            if m.group(2) == "expire":
                s["status"] = "expired"
                s["url"] = None
                data = self.store_session(s)
                self.record("checkout.session.expired", s)
                return 200, data
            self.complete(s, body)
            return 200, self.store_session(s)
        m = re.match(r"^/_fake/subscriptions/([^/]+)/([a-z_]+)$", path)
        if m and method == "POST":
            sub = self.subscriptions.get(m.group(1))
            if sub is None:
                return 404, {"error": "no such subscription: %s" % m.group(1)}
            op = getattr(self, "op_" + m.group(2), None)
            if op is None:
                return 404, {"error": "no such subscription operation: %s" % m.group(2)}
            op(sub, body)
            return 200, {"subscription": self.snapshot(sub), "events": list(self.recorded)}
        return 404, {"error": "no such control endpoint: %s %s" % (method, path)}

    def configure(self, body):
        known = {"latency_ms", "fail_next", "fail_status", "should_retry", "drop_next",
                 "hang_next", "api_version"}
        for k, v in body.items():
            if k not in known:
                raise ControlError("unknown setting: %s" % k)
            if k == "should_retry":
                if isinstance(v, bool):
                    v = "true" if v else "false"
                    body[k] = v
                if v not in ("true", "false", None):
                    raise ControlError("should_retry must be \"true\", \"false\" or null")
            elif k == "api_version":
                if not isinstance(v, str) or not re.match(r"^\d{4}-\d{2}-\d{2}(\.[a-z]+)?$", v):
                    raise ControlError("api_version must look like 2024-06-20 or "
                                       "2025-03-31.basil")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ControlError("%s must be a non-negative integer" % k)
            elif k == "fail_status" and not 400 <= v <= 599:
                raise ControlError("fail_status must be 400..599")
        self.config.update(body)

    def set_clock(self, body):
        if "now" in body and "advance" in body:
            raise ControlError("give either now or advance")
        if "now" in body:
            v = body["now"]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise ControlError("now must be unix seconds or null")
            self.clock.set(v)
        elif "advance" in body:
            v = body["advance"]
            if not isinstance(v, int) or isinstance(v, bool):
                raise ControlError("advance must be an integer number of seconds")
            self.clock.advance(v)
        elif body:
            raise ControlError("unknown clock setting: %s" % next(iter(body)))

    def forget_events(self, body):
        t = body.get("before")
        if not isinstance(t, int) or isinstance(t, bool):
            raise ControlError("before must be unix seconds")
        kept = [ev for ev in self.events if ev.created >= t]
        gone = len(self.events) - len(kept)
        for ev in self.events:
            if ev.created < t:
                del self.event_by_id[ev.id]
        self.events = kept
        return gone

    @staticmethod
    def want_string(body, name, choices=None, default=None):
        v = body.get(name, default)
        if v is None:
            return None
        if not isinstance(v, str) or (choices is not None and v not in choices):
            if choices is not None:
                raise ControlError("%s must be one of %s" % (name, ", ".join(choices)))
            raise ControlError("%s must be a string" % name)
        return v

    def complete(self, s, body):
        """The customer completes the session: customer, subscription and invoice as Stripe
        creates them, and the events in Stripe's order."""
        for k in ("customer", "email"):
            self.want_string(body, k)
        default_status = "no_payment_required" if s["mode"] == "setup" else "paid"
        ps = self.want_string(body, "payment_status",
                              ("paid", "unpaid", "no_payment_required"), default_status)
        trial_days = body.get("trial_days", DEFAULT_TRIAL_DAYS)
        if not isinstance(trial_days, int) or isinstance(trial_days, bool) or trial_days < 1:
            raise ControlError("trial_days must be a positive integer")
        cid = body.get("customer") or s["customer"]
        email = body.get("email") or s["customer_email"]
        if cid is None:
            cid = rand_id("cus_", 14)
        cust = self.customers.get(cid)
        if cust is None:
            cust = self.new_customer(cid, email)
        s["status"] = "complete"
        s["payment_status"] = ps
        s["customer"] = cid
        s["customer_details"] = {"address": None, "email": email, "name": None, "phone": None,
                                 "tax_exempt": "none", "tax_ids": []}
        s["url"] = None
        if s["mode"] == "subscription":
            price, qty, metadata = self.session_items.get(s["id"], (None, 1, {}))
            if price is None:
                plan = Plan(rand_id("price_"), 0, None)
                self.plans[plan.price] = plan
            else:
                plan = self.plan(price)
            status = {"paid": "active", "unpaid": "incomplete",
                      "no_payment_required": "trialing"}[ps]
            sub = self.new_subscription(cid, plan, qty, metadata, status, trial_days)
            if status == "trialing":
                lines = [(0, plan, qty, sub["cps"], sub["cpe"], False,
                          "Trial period for %s" % (plan.tier or plan.price))]
                inv = self.new_invoice(sub, "subscription_create", lines, sub["created"],
                                       sub["created"])
            else:
                inv = self.invoice_new_period(sub, "subscription_create", sub["created"],
                                              sub["created"])
            self.emit_sub("customer.subscription.created", sub)
            self.emit_invoice("invoice.created", inv)
            self.finalize(inv)
            if ps != "unpaid":
                self.pay(inv)
            s["subscription"] = sub["id"]
            s["invoice"] = inv["id"]
            s["currency"] = "usd"
            s["amount_subtotal"] = plan.amount * qty
            s["amount_total"] = inv["amount_due"]
            s["total_details"] = {"amount_discount": s["amount_subtotal"] - inv["amount_due"],
                                  "amount_shipping": 0, "amount_tax": 0}
        elif s["mode"] == "payment":
            s["payment_intent"] = rand_id("pi_")
        else:
            s["setup_intent"] = rand_id("seti_")
        self.record("checkout.session.completed", s)
        return s

    def settle(self, s, body):
        """The delayed payment of a completed, unpaid session succeeds or fails."""
        outcome = self.want_string(body, "outcome", ("succeeded", "failed"))
        if outcome is None:
            raise ControlError("outcome is required: succeeded or failed")
        ending = self.want_string(body, "subscription", ("incomplete_expired", "canceled"),
                                  "incomplete_expired")
        if s["status"] != "complete" or s["payment_status"] != "unpaid":
            raise ControlError("session is %s with payment_status %s; only a complete, unpaid "
                               "session settles" % (s["status"], s["payment_status"]))
        sub = self.subscriptions.get(s.get("subscription") or "")
        inv = self.invoices.get(s.get("invoice") or "")
        if outcome == "succeeded":
            if sub is not None and sub["status"] == "incomplete":
                before = self.snapshot(sub)
                sub["status"] = "active"
                sub["default_payment_method"] = rand_id("pm_")
                self.emit_sub("customer.subscription.updated", sub, before)
            if inv is not None and inv["status"] == "open":
                self.pay(inv)
            s["payment_status"] = "paid"
            self.record("checkout.session.async_payment_succeeded", s)
            return
        if inv is not None and inv["status"] == "open":
            self.fail(inv)
        self.record("checkout.session.async_payment_failed", s)
        if sub is not None and sub["status"] not in ENDED:
            if ending == "incomplete_expired":
                if inv is not None and inv["status"] == "open":
                    self.void(inv)
                self.end_subscription(sub, status="incomplete_expired")
            else:
                self.end_subscription(sub, status="canceled", reason="payment_failed")

    # Control operations on a subscription: op_<name>(subscription, body).

    def require_live(self, s, *statuses):
        if s["status"] not in statuses:
            raise ControlError("subscription is %s; this needs %s"
                               % (s["status"], " or ".join(statuses)))

    def op_change_plan(self, s, body):
        price = self.want_string(body, "price")
        if price is None or not self.price_known(price):
            raise ControlError("price must be one of the configured prices")
        if price == s["price"]:
            raise ControlError("the subscription is already on %s" % price)
        self.require_live(s, "active", "trialing", "past_due")
        tier = self.want_string(body, "tier") or self.plan(price).tier
        self.change_price(s, price, "always_invoice", tier)

    def op_renew(self, s, body):
        self.require_live(s, "active", "trialing")
        self.renew(s, pays=True)

    def op_fail_payment(self, s, body):
        then = self.want_string(body, "then", ("unpaid", "canceled"))
        self.require_live(s, "active", "trialing", "past_due", "unpaid")
        if s["status"] in ("active", "trialing"):
            if s["cancel_at_period_end"]:
                raise ControlError("the subscription ends at the period end: nothing to bill")
            self.renew(s, pays=False)
            self.set_status(s, then if then == "unpaid" else "past_due")
        else:
            inv = self.open_invoice(s)
            if inv is None:
                raise ControlError("the subscription has no open invoice")
            self.fail(inv)
            if then == "unpaid" and s["status"] != "unpaid":
                self.set_status(s, "unpaid")
        if then == "canceled":
            self.end_subscription(s, reason="payment_failed")

    def op_recover(self, s, body):
        self.require_live(s, "past_due", "unpaid")
        inv = self.open_invoice(s)
        self.set_status(s, "active")
        if inv is not None:
            self.pay(inv)

    def op_cancel_at_period_end(self, s, body):
        v = body.get("value", True)
        if not isinstance(v, bool):
            raise ControlError("value must be true or false")
        self.require_live(s, "active", "trialing", "past_due", "unpaid", "incomplete")
        self.set_cancel_at_period_end(s, v)

    def op_cancel(self, s, body):
        if s["status"] in ENDED:
            raise ControlError("subscription is already %s" % s["status"])
        self.end_subscription(s)

class ControlError(Exception):
    pass


def mask_key(key):
    """Show a key the way Stripe does in errors: its prefix and last four characters only."""
    m = re.match(r"^((?:sk|rk|pk)_(?:test|live)_)", key)
    prefix = m.group(1) if m else ""
    rest = key[len(prefix):]
    if len(rest) <= 8:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 4) + rest[-4:]


# ---- HTTP/1.1 -----------------------------------------------------------------------------

class Request:
    __slots__ = ("method", "target", "path", "query", "version", "headers", "body")

    def header(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def headers_dict(self):
        return {k: v for k, v in self.headers}


class Slot:
    """One request's place in a connection's answer order (pipelined answers go out in order)."""
    __slots__ = ("data", "ready", "close")

    def __init__(self):
        self.data = None
        self.ready = False
        self.close = False


def encode(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# The clock whose time answers carry in their Date header, as Stripe's do (set by the fake).
ANSWER_CLOCK = None


def make_override(body):
    """An override of the answers to some API requests (POST /_fake/override), checked."""
    o = {"method": body.get("method"), "path": body.get("path"),
         "status": body.get("status", 200), "body": body.get("body", {}),
         "headers": body.get("headers", {}), "times": body.get("times", 1)}
    if o["method"] not in ("GET", "POST", "DELETE"):
        raise ControlError("method must be GET, POST or DELETE")
    if not isinstance(o["path"], str) or not o["path"].startswith("/v1/"):
        raise ControlError("path must be a /v1/ path")
    if not isinstance(o["status"], int) or not 100 <= o["status"] <= 599:
        raise ControlError("status must be 100..599")
    if not isinstance(o["headers"], dict) or \
            not all(isinstance(v, str) for v in o["headers"].values()):
        raise ControlError("headers must map names to strings")
    if not isinstance(o["times"], int) or o["times"] < -1 or o["times"] == 0:
        raise ControlError("times must be -1 or a positive integer")
    return o


def http_date(t):
    """An IMF-fixdate (RFC 9110) for Unix time t."""
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(t))


def render(status, headers, body, close):
    """An answer's bytes; body is an object to encode as JSON or bytes already encoded."""
    if isinstance(body, bytes):
        payload = body
    else:
        payload = encode(body) if body is not None else b""
    lines = ["HTTP/1.1 %d %s" % (status, REASONS.get(status, "Status")),
             "Server: fake-stripe",
             "Content-Type: application/json",
             "Content-Length: %d" % len(payload),
             "Cache-Control: no-cache, no-store"]
    if not any(k.lower() == "date" for k, _ in headers):
        lines.append("Date: " + http_date(ANSWER_CLOCK.now() if ANSWER_CLOCK else time.time()))
    if not any(k == "Request-Id" for k, _ in headers):
        lines.append("Request-Id: " + request_id())
    for k, v in headers:
        lines.append("%s: %s" % (k, v))
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


class Connection(asyncio.Protocol):
    def __init__(self, fake, conns):
        self.fake = fake
        self.conns = conns
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.buf = bytearray()
        self.req = None          # a request whose body is still being read
        self.need = 0
        self.slots = collections.deque()
        self.done = False        # no more requests are read on this connection
        self.paused = False

    def connection_made(self, transport):
        self.transport = transport
        self.conns.add(self)
        self.fake.connections_opened += 1

    def connection_lost(self, exc):
        self.conns.discard(self)
        self.done = True
        self.slots.clear()

    def data_received(self, data):
        if self.done:
            return
        self.buf += data
        while not self.done:
            if self.req is None and not self.parse_head():
                break
            if len(self.buf) < self.need:
                break
            req = self.req
            req.body = bytes(self.buf[:self.need])
            del self.buf[:self.need]
            self.req = None
            self.need = 0
            self.dispatch(req)
        if len(self.slots) >= MAX_PIPELINED and not self.paused and not self.done:
            self.paused = True
            self.transport.pause_reading()

    def parse_head(self):
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEADER_BYTES:
                self.fail(431, "request headers too large")
            return False
        if end > MAX_HEADER_BYTES:
            self.fail(431, "request headers too large")
            return False
        head = self.buf[:end].decode("latin-1")
        del self.buf[:end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self.fail(400, "malformed request line")
            return False
        req = Request()
        req.method, req.target, req.version = parts
        path, _, query = req.target.partition("?")
        req.path = path
        req.query = query
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self.fail(400, "malformed header")
                return False
            headers.append((name.lower(), value.strip()))
        req.headers = headers
        if req.header("transfer-encoding") is not None:
            self.fail(501, "chunked request bodies are not supported; send Content-Length")
            return False
        cl = req.header("content-length")
        need = 0
        if cl is not None:
            if not cl.isdigit():
                self.fail(400, "bad Content-Length")
                return False
            need = int(cl)
            if need > MAX_BODY_BYTES:
                self.fail(413, "request body too large")
                return False
        self.req = req
        self.need = need
        # libcurl waits for this before sending a larger body.
        expect = req.header("expect")
        if expect is not None and expect.lower() == "100-continue" and len(self.buf) < need \
                and not self.slots:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def fail(self, status, message):
        """Answer a request that cannot be parsed, then close."""
        self.done = True
        slot = Slot()
        slot.data = render(status, [], {"error": {"type": "invalid_request_error",
                                                  "message": message}}, True)
        slot.ready = True
        slot.close = True
        self.slots.append(slot)
        self.flush()

    def dispatch(self, req):
        conn_hdr = (req.header("connection") or "").lower()
        close = "close" in conn_hdr or (req.version == "HTTP/1.0" and "keep-alive" not in conn_hdr)
        kind, delay, status, headers, body = self.fake.handle(req)
        slot = Slot()
        self.slots.append(slot)
        if close:
            self.done = True
        if kind == "hang":
            return
        if kind == "drop":
            slot.close = True
            self.done = True
        else:
            slot.data = render(status, headers, body, close)
            slot.close = close
        if delay > 0:
            self.loop.call_later(delay, self.ready, slot)
        else:
            self.ready(slot)

    def ready(self, slot):
        slot.ready = True
        self.flush()

    def flush(self):
        t = self.transport
        while self.slots and self.slots[0].ready:
            slot = self.slots.popleft()
            if t.is_closing():
                self.slots.clear()
                return
            if slot.data is not None:
                t.write(slot.data)
            if slot.close:
                t.close()
                self.slots.clear()
                return
        if self.paused and len(self.slots) < MAX_PIPELINED // 2 and not t.is_closing():
            self.paused = False
            t.resume_reading()
            if self.buf:
                self.data_received(b"")


async def serve(args):
    fake = Fake(args)
    loop = asyncio.get_running_loop()
    conns = fake.conns
    server = await loop.create_server(lambda: Connection(fake, conns), args.host, args.port,
                                      reuse_address=True, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    print("fake-stripe listening on %s:%d" % (args.host, port), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    for c in list(conns):
        c.transport.abort()
    await server.wait_closed()


def main():
    ap = argparse.ArgumentParser(description="A fake Stripe API server for tests.")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--prices", default="",
                    help="comma-separated known prices, each id[:amount in cents[:tier]] "
                    "(default: any id starting price_)")
    ap.add_argument("--api-version", default=DEFAULT_STRIPE_VERSION,
                    help="the account's default API version (the shape of events)")
    ap.add_argument("--latency-ms", type=int, default=0, help="delay before every API answer")
    ap.add_argument("--api-key", default="",
                    help="the one accepted secret key (default: any sk_test_/rk_test_ key)")
    ap.add_argument("--verbose", action="store_true", help="print every API request")
    args = ap.parse_args()
    if args.latency_ms < 0:
        ap.error("--latency-ms must be >= 0")
    try:
        parse_plans(args.prices)
    except ValueError as e:
        ap.error(str(e))
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
