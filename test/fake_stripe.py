#!/usr/bin/env python3
"""A fake Stripe API server for rivetd's tests, local runs and benchmarks.

It speaks Stripe's wire format for the calls rivetd makes (Checkout Sessions, billing portal
sessions): form-encoded bodies in Stripe's bracket notation, bearer API keys, Stripe's error
objects, Request-Id headers and idempotency keys. Tests steer it through a small JSON control API
under /_fake/ (latency, injected failures, dropped or hung connections, completing sessions, the
log of requests received).

Standard library only, asyncio with a hand-written HTTP/1.1 protocol so one core sustains a few
thousand requests per second with keep-alive and pipelining.
"""

import argparse
import asyncio
import base64
import collections
import json
import os
import random
import re
import signal
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
DEFAULT_STRIPE_VERSION = "2024-06-20"

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


# ---- the fake ---------------------------------------------------------------------------

class Fake:
    """State shared by all connections: configuration, stored objects, logs."""

    def __init__(self, args):
        self.prices = set(p for p in (args.prices or "").split(",") if p) or None
        self.api_key = args.api_key
        self.verbose = args.verbose
        self.start_latency_ms = args.latency_ms
        self.portal_configuration = rand_id("bpc_")
        self.reset()

    def reset(self):
        self.config = {"latency_ms": self.start_latency_ms, "fail_next": 0, "fail_status": 500,
                       "should_retry": None, "drop_next": 0, "hang_next": 0}
        self.sessions = {}
        self.customers = {}
        self.idempotency = collections.OrderedDict()
        self.requests = collections.deque(maxlen=MAX_LOGGED_REQUESTS)
        self.connections_opened = 0

    # The returned action is (kind, delay_s, status, headers, body): kind "answer", "drop" or
    # "hang"; body is a JSON-serialisable object.
    def handle(self, req):
        if req.path.startswith("/_fake/"):
            try:
                status, body = self.control(req)
            except ControlError as e:
                status, body = 400, {"error": str(e)}
            return "answer", 0.0, status, [], body
        return self.api(req)

    # -- Stripe API --

    def api(self, req):
        params = {}
        decode_error = None
        try:
            params = decode_form(req.query)
            if req.method == "POST":
                params.update(decode_form(req.body.decode("utf-8", "replace")))
        except StripeError as e:
            decode_error = e
        self.requests.append({
            "method": req.method, "path": req.path, "headers": req.headers_dict(),
            "params": params, "raw_body": req.body.decode("utf-8", "replace"),
        })
        if self.verbose:
            print("%s %s %s" % (req.method, req.target, req.body[:200]), flush=True)
        cfg = self.config
        delay = cfg["latency_ms"] / 1000.0
        if cfg["hang_next"] > 0:
            cfg["hang_next"] -= 1
            return "hang", 0.0, 0, [], None
        if cfg["drop_next"] > 0:
            cfg["drop_next"] -= 1
            return "drop", delay, 0, [], None
        headers = []
        version = req.header("stripe-version")
        headers.append(("Stripe-Version", version or DEFAULT_STRIPE_VERSION))
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
            try:
                status, body = self.route(req, params)
            except StripeError as e:
                status, body = e.answer()
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
        if path == "/v1/checkout/sessions":
            if req.method == "POST":
                return self.create_checkout_session(params)
        elif path.startswith("/v1/checkout/sessions/") and path.count("/") == 4:
            sid = path.rsplit("/", 1)[1]
            if req.method == "GET":
                s = self.sessions.get(sid)
                if s is None:
                    raise StripeError(404, "No such checkout.session: '%s'" % sid,
                                      code="resource_missing", param="session")
                return 200, s
        elif path == "/v1/billing_portal/sessions":
            if req.method == "POST":
                return 200, self.create_portal_session(params)
        elif path.startswith("/v1/customers/") and path.count("/") == 3:
            cid = path.rsplit("/", 1)[1]
            if req.method == "GET":
                c = self.customers.get(cid)
                if c is None:
                    raise StripeError(404, "No such customer: '%s'" % cid,
                                      code="resource_missing", param="id")
                return 200, c
        raise StripeError(404, "Unrecognized request URL (%s: %s). Please see "
                          "https://stripe.com/docs or we can help at https://support.stripe.com/."
                          % (req.method, path))

    def price_known(self, price):
        if self.prices is not None:
            return price in self.prices
        return price.startswith("price_")

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
            check_metadata(sub, "metadata")
        promo = check_bool(p, "allow_promotion_codes")
        client_ref = check_string(p, "client_reference_id", 200)
        pmt = p.get("payment_method_types")
        if pmt is not None and not isinstance(pmt, list):
            raise StripeError(400, "Invalid array", param="payment_method_types")
        now = int(time.time())
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
        return 200, self.store_session(s)

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
            "created": int(time.time()),
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
            del self.sessions[next(iter(self.sessions))]
        return data

    def new_customer(self, cid, email):
        c = {"id": cid, "object": "customer", "created": int(time.time()), "email": email,
             "livemode": False, "metadata": {}, "name": None}
        self.customers[cid] = c
        return c

    # -- control API --

    def control(self, req):
        path = req.path
        try:
            body = json.loads(req.body) if req.body.strip() else {}
        except ValueError:
            raise ControlError("body is not JSON")
        if not isinstance(body, dict):
            raise ControlError("body must be a JSON object")
        if path == "/_fake/config":
            if req.method == "POST":
                self.configure(body)
            elif req.method != "GET":
                return 405, {"error": "use GET or POST"}
            return 200, dict(self.config)
        if path == "/_fake/reset" and req.method == "POST":
            self.reset()
            return 200, {"ok": True}
        if path == "/_fake/requests" and req.method == "GET":
            return 200, list(self.requests)
        if path == "/_fake/stats" and req.method == "GET":
            # Connections accepted since the last reset, and open now (this one included).
            return 200, {"connections_opened": self.connections_opened,
                         "connections_open": len(self.conns)}
        m = re.match(r"^/_fake/sessions/([^/]+)/(complete|expire)$", path)
        if m and req.method == "POST":
            data = self.sessions.get(m.group(1))
            if data is None:
                return 404, {"error": "no such checkout.session: %s" % m.group(1)}
            s = json.loads(data)
            if s["status"] != "open":
                raise ControlError("session is %s, not open" % s["status"])
            if m.group(2) == "expire":
                s["status"] = "expired"
                s["url"] = None
            else:
                self.complete(s, body)
            return 200, self.store_session(s)
        return 404, {"error": "no such control endpoint: %s %s" % (req.method, path)}

    def configure(self, body):
        known = {"latency_ms", "fail_next", "fail_status", "should_retry", "drop_next",
                 "hang_next"}
        for k, v in body.items():
            if k not in known:
                raise ControlError("unknown setting: %s" % k)
            if k == "should_retry":
                if isinstance(v, bool):
                    v = "true" if v else "false"
                if v not in ("true", "false", None):
                    raise ControlError("should_retry must be \"true\", \"false\" or null")
            elif not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ControlError("%s must be a non-negative integer" % k)
            elif k == "fail_status" and not 400 <= v <= 599:
                raise ControlError("fail_status must be 400..599")
        self.config.update(body)

    def complete(self, s, body):
        for k in ("customer", "email"):
            if body.get(k) is not None and not isinstance(body[k], str):
                raise ControlError("%s must be a string" % k)
        cid = body.get("customer") or s["customer"]
        email = body.get("email") or s["customer_email"]
        if cid is None:
            cid = rand_id("cus_", 14)
        if cid not in self.customers:
            self.new_customer(cid, email)
        s["status"] = "complete"
        s["payment_status"] = "no_payment_required" if s["mode"] == "setup" else "paid"
        s["customer"] = cid
        s["customer_details"] = {"address": None, "email": email, "name": None, "phone": None,
                                 "tax_exempt": "none", "tax_ids": []}
        if s["mode"] == "subscription":
            s["subscription"] = rand_id("sub_")
            s["invoice"] = rand_id("in_")
        elif s["mode"] == "payment":
            s["payment_intent"] = rand_id("pi_")
        else:
            s["setup_intent"] = rand_id("seti_")
        s["url"] = None
        return s


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
             "Cache-Control: no-cache, no-store",
             "Request-Id: " + request_id()]
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
    conns = set()
    fake.conns = conns
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
                    help="comma-separated known price ids (default: any id starting price_)")
    ap.add_argument("--latency-ms", type=int, default=0, help="delay before every API answer")
    ap.add_argument("--api-key", default="",
                    help="the one accepted secret key (default: any sk_test_/rk_test_ key)")
    ap.add_argument("--verbose", action="store_true", help="print every API request")
    args = ap.parse_args()
    if args.latency_ms < 0:
        ap.error("--latency-ms must be >= 0")
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
