#!/usr/bin/env python3
"""Render the API description (docs/openapi.json) into the HTML page rivetd serves at /docs.

The build runs this once and rivetd embeds the result, so the daemon carries no renderer and no
request can make it render. The page follows the document's order, escapes every string taken
from it, and is self-contained: inline CSS, no scripts, no external assets, as the answer's
Content-Security-Policy requires.

Usage: render_docs.py INPUT.json OUTPUT.html

Only the standard library is used, so the build needs nothing beyond python3.
"""

import json
import math
import os
import sys

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# A $ref chain longer than this is treated as leading nowhere, which also ends reference loops.
MAX_REF_DEPTH = 8
# Nested schema types are spelled out this deep; below that the page says "any".
MAX_TYPE_DEPTH = 4
# Keys of a JSON pointer are at most this many bytes.
MAX_POINTER_KEY = 127

PAGE_CSS = (
    "body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#1d2330;"
    "background:#f6f7f9;margin:0}"
    "main{max-width:980px;margin:0 auto;padding:24px 28px 64px;background:#fff;"
    "min-height:100vh;box-sizing:border-box}"
    "h1{margin:0 0 4px;font-size:28px}h1 small{font-size:15px;color:#5b6475;font-weight:normal}"
    "h2{margin:40px 0 12px;padding-bottom:6px;border-bottom:2px solid #e3e6ec;font-size:21px}"
    "h3{font-size:17px;margin:0 0 8px}h4{font-size:14px;margin:18px 0 6px;color:#3b4354;"
    "text-transform:uppercase;letter-spacing:.04em}"
    "code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef1f5;"
    "padding:1px 4px;border-radius:3px}"
    "pre{background:#1f2430;color:#e6e9ef;padding:10px 12px;border-radius:6px;overflow:auto;"
    "font:12.5px/1.45 ui-monospace,Menlo,Consolas,monospace;tab-size:2}"
    "a{color:#2456c7;text-decoration:none}a:hover{text-decoration:underline}"
    ".lead{color:#3b4354;font-size:16px}"
    ".toc{list-style:none;padding:0;columns:1}.toc li{margin:3px 0}"
    ".op,.comp{border:1px solid #e3e6ec;border-radius:8px;padding:14px 18px;margin:16px 0;"
    "background:#fff}"
    ".method{display:inline-block;min-width:62px;text-align:center;font:bold 12px/22px "
    "ui-monospace,Menlo,monospace;color:#fff;border-radius:4px;padding:0 6px;margin-right:4px}"
    ".m-get{background:#1f8a4c}.m-post{background:#2456c7}.m-options{background:#7a5bc7}"
    ".m-put,.m-patch{background:#b7791f}.m-delete{background:#c53030}"
    ".m-head,.m-trace{background:#5b6475}"
    "code.path{font-size:15px;background:none;padding:0}"
    ".summary{font-weight:normal;color:#3b4354}"
    "table.fields{border-collapse:collapse;width:100%;margin:6px 0 10px;font-size:14px}"
    "table.fields th,table.fields td{border:1px solid #e3e6ec;padding:5px 8px;text-align:left;"
    "vertical-align:top}"
    "table.fields th{background:#f3f5f8;font-weight:600}"
    ".req{color:#c53030;font-size:11px;font-weight:600;text-transform:uppercase}"
    ".opt{color:#5b6475;font-size:11px;font-weight:600;text-transform:uppercase}"
    ".resp{border-left:3px solid #e3e6ec;padding-left:12px;margin:10px 0}"
    ".resp>p:first-child{margin:4px 0}"
    ".status{display:inline-block;font:bold 13px/20px ui-monospace,Menlo,monospace;"
    "padding:0 6px;border-radius:4px;background:#5b6475;color:#fff}"
    ".s2xx{background:#1f8a4c}.s4xx{background:#b7791f}.s5xx{background:#c53030}"
    ".media{margin:6px 0}.hdrs{margin:4px 0;color:#3b4354}ul.hdrs{padding-left:22px}"
    ".see{font-size:13px}"
    "details{margin:4px 0 8px}summary{cursor:pointer;color:#2456c7;font-size:13px}"
)


class RenderError(Exception):
    pass


# ---- the document --------------------------------------------------------------------------

class JsonNull:
    """JSON null, kept apart from Python's None, which here always means "absent"."""

    def __repr__(self):
        return "null"


NULL = JsonNull()


def _object(pairs):
    obj = {}
    for key, value in pairs:
        # A duplicate key has no agreed meaning across parsers: refuse it rather than guess.
        if key in obj:
            raise RenderError(f"duplicate key {key!r}")
        obj[key] = NULL if value is None else value
    return obj


def _constant(name):
    raise RenderError(f"{name} is not JSON")


def _nulls(value):
    """Arrays are not seen by object_pairs_hook: turn their nulls into NULL here."""
    if isinstance(value, list):
        return [NULL if v is None else _nulls(v) for v in value]
    if isinstance(value, dict):
        for key, v in value.items():
            value[key] = _nulls(v)
    return value


def load(text):
    # Every number is a double, as JavaScript and most JSON readers take it: "-0" keeps its sign
    # and a huge integer becomes infinite rather than exact.
    return _nulls(json.loads(text, object_pairs_hook=_object, parse_constant=_constant,
                             parse_int=float))


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def get(obj, key):
    """The member key of an object; None when obj is not an object or has no such member."""
    return obj.get(key) if isinstance(obj, dict) else None


def str_of(obj, key):
    v = get(obj, key)
    return v if isinstance(v, str) else None


def children(node):
    """(key, value) for the members of an object, (None, value) for the items of an array."""
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, list):
        return [(None, v) for v in node]
    return []


def pointer(root, ref):
    """Follow a local JSON pointer ("#/components/schemas/Error"); None when it leads nowhere."""
    if not ref.startswith("#/"):
        return None
    cur, i = root, 2
    while cur is not None and i < len(ref):
        key = []
        while i < len(ref) and ref[i] != "/":
            c = ref[i]
            # JSON pointer escapes: "~1" is "/", "~0" is "~".
            if c == "~" and ref[i + 1:i + 2] in ("0", "1"):
                i += 1
                c = "/" if ref[i] == "1" else "~"
            key.append(c)
            i += 1
        key = "".join(key)
        if len(key.encode("utf-8")) > MAX_POINTER_KEY:
            return None
        i += 1
        cur = get(cur, key)
    return cur


def resolve(root, node):
    """Follow local "$ref"s, at most a few deep; None for a reference that leads nowhere."""
    for _ in range(MAX_REF_DEPTH):
        if node is None:
            return None
        ref = str_of(node, "$ref")
        if ref is None:
            return node
        node = pointer(root, ref)
    return None


def ref_name(node, kind):
    """The last part of a "$ref" to a component ("#/components/schemas/Error" gives "Error")."""
    ref = str_of(node, "$ref")
    prefix = f"#/components/{kind}/"
    return ref[len(prefix):] if ref is not None and ref.startswith(prefix) else None


# ---- JSON as the page quotes it --------------------------------------------------------------

def json_number(v):
    """A number the way the page has always printed it: 15 significant digits, or 17 when 15
    do not read back as (nearly) the same double."""
    d = float(v)
    if math.isnan(d) or math.isinf(d):
        return "null"
    text = "%1.15g" % d
    back = float(text)
    if not abs(back - d) <= max(abs(back), abs(d)) * sys.float_info.epsilon:
        text = "%1.17g" % d
    return text


_STRING_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                   "\r": "\\r", "\t": "\\t"}


def json_string(s):
    out = ['"']
    for ch in s:
        if ch in _STRING_ESCAPES:
            out.append(_STRING_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def json_text(v, pretty, depth=0):
    """v as JSON: compact, or pretty with a tab per level for the examples."""
    if v is NULL:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if is_number(v):
        return json_number(v)
    if isinstance(v, str):
        return json_string(v)
    if isinstance(v, list):
        sep = ", " if pretty else ","
        return "[" + sep.join(json_text(x, pretty, depth + 1) for x in v) + "]"
    if not pretty:
        return "{" + ",".join(json_string(k) + ":" + json_text(x, False)
                              for k, x in v.items()) + "}"
    inner = "\t" * (depth + 1)
    members = [inner + json_string(k) + ":\t" + json_text(x, True, depth + 1)
               for k, x in v.items()]
    return "{\n" + "".join(m + ",\n" for m in members[:-1]) + \
        "".join(m + "\n" for m in members[-1:]) + "\t" * depth + "}"


# ---- HTML ----------------------------------------------------------------------------------

_HTML_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                               "'": "&#39;"})


def esc(s):
    return s.translate(_HTML_ESCAPES)


def anchor(prefix, name):
    """An id: the prefix and the name with every byte but ASCII letters and digits as '-'."""
    return prefix + "".join(chr(b) if chr(b).isascii() and chr(b).isalnum() else "-"
                            for b in name.encode("utf-8"))


def inline_text(s):
    """Inline text of a description: `code` spans become <code>, everything else is escaped."""
    out = []
    parts = s.split("`")
    for i, part in enumerate(parts):
        if i > 0:
            out.append("<code>" if i % 2 else "</code>")
        out.append(esc(part))
    if len(parts) % 2 == 0:
        out.append("</code>")
    return "".join(out)


def paragraphs(s):
    """A description: paragraphs separated by blank lines, each in <p>."""
    return "".join(f"<p>{inline_text(p)}</p>\n" for p in s.split("\n\n") if p)


def method_badge(m):
    up = "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in m)
    return f'<span class="method m-{esc(m)}">{esc(up)}</span>'


class Page:
    def __init__(self, root):
        self.root = root
        self.out = []

    def put(self, s):
        self.out.append(s)

    def resolve(self, node):
        return resolve(self.root, node)

    def schema_type(self, schema, depth):
        """One line saying what a schema admits: its type (a link for a named schema), constant
        or allowed values, format and bounds."""
        name = ref_name(schema, "schemas")
        if name is not None:
            self.put(f'<a href="#{anchor("schema-", name)}">{esc(name)}</a>')
            return
        schema = self.resolve(schema)
        if schema is None or depth > MAX_TYPE_DEPTH:
            self.put("any")
            return
        parts = get(schema, "allOf")
        if isinstance(parts, list):
            first = True
            for _, part in children(parts):
                before = len(self.out)
                if not first:
                    self.put(" and ")
                mark = len(self.out)
                self.schema_type(part, depth + 1)
                if not "".join(self.out[mark:]):
                    # The part said nothing of its own (only constraints): drop the " and ".
                    del self.out[before:]
                    continue
                first = False
        types = get(schema, "type")
        is_array = False
        if isinstance(types, str):
            is_array = types == "array"
            if not is_array:
                self.put(esc(types))
        elif isinstance(types, list):
            names = [t for t in types if isinstance(t, str)]
            is_array = "array" in names
            self.put(" or ".join(esc(t) for t in names))
        if is_array:
            self.put("array of ")
            items = get(schema, "items")
            if items is not None:
                self.schema_type(items, depth + 1)
            else:
                self.put("any")
        fmt = str_of(schema, "format")
        if fmt is not None:
            self.put(f" ({esc(fmt)})")
        const = get(schema, "const")
        if const is not None:
            self.put(f", always <code>{esc(json_text(const, False))}</code>")
        enum = get(schema, "enum")
        if isinstance(enum, list):
            self.put(", one of " +
                     ", ".join(f"<code>{esc(json_text(v, False))}</code>" for v in enum))
        pattern = str_of(schema, "pattern")
        if pattern is not None:
            self.put(f", matching <code>{esc(pattern)}</code>")
        bounds = (("minLength", "at least", " characters"), ("maxLength", "at most", " characters"),
                  ("minimum", "at least", ""), ("maximum", "at most", ""))
        for key, word, unit in bounds:
            b = get(schema, key)
            if not is_number(b):
                continue
            if key == "minLength" and b == 1:
                self.put(", not empty")
                continue
            self.put(", %s %g%s" % (word, float(b), unit))

    def fields_table(self, schema):
        """The fields of an object schema as a table; nothing for a schema without properties."""
        schema = self.resolve(schema)
        props = get(schema, "properties")
        if not isinstance(props, dict) or not props:
            return
        required = [x for _, x in children(get(schema, "required")) if isinstance(x, str)]
        self.put('<table class="fields">\n<thead><tr><th>Field</th><th>Type</th>'
                 '<th>Description</th></tr></thead>\n<tbody>\n')
        for key, p in props.items():
            self.put(f"<tr><td><code>{esc(key)}</code>")
            if key in required:
                self.put(' <span class="req">required</span>')
            self.put("</td><td>")
            self.schema_type(p, 0)
            self.put("</td><td>")
            d = str_of(self.resolve(p), "description")
            if d is not None:
                self.put(inline_text(d))
            self.put("</td></tr>\n")
        self.put("</tbody></table>\n")

    def media_line(self, media_type, schema):
        self.put(f'<p class="media"><code>{esc(media_type)}</code>')
        if schema is not None:
            self.put(": ")
            self.schema_type(schema, 0)
        self.put("</p>\n")

    def content(self, content, all_fields):
        """A "content" map: per media type, the schema's type line, its fields, and the example.
        The fields of a named schema are listed when all_fields is set (request bodies,
        successful answers); otherwise its name links to them, which keeps the many error
        answers short."""
        for media_type, media in children(content):
            schema = get(media, "schema")
            self.media_line(media_type, schema)
            if schema is not None and (all_fields or ref_name(schema, "schemas") is None):
                self.fields_table(schema)
            example = get(media, "example")
            if example is not None:
                self.put("<details><summary>Example</summary><pre>"
                         f"{esc(json_text(example, True))}</pre></details>\n")

    def parameters(self, params):
        if not isinstance(params, list) or not params:
            return
        self.put('<h4>Parameters</h4>\n<table class="fields">\n<thead><tr><th>Name</th>'
                 '<th>In</th><th>Type</th><th>Description</th></tr></thead>\n<tbody>\n')
        for p in params:
            p = self.resolve(p)
            if p is None:
                continue
            name = str_of(p, "name")
            where = str_of(p, "in")
            d = str_of(p, "description")
            schema = get(p, "schema")
            self.put(f"<tr><td><code>{esc('?' if name is None else name)}</code>")
            if get(p, "required") is True:
                self.put(' <span class="req">required</span>')
            self.put(f"</td><td>{esc('' if where is None else where)}</td><td>")
            if schema is not None:
                self.schema_type(schema, 0)
            self.put("</td><td>")
            if d is not None:
                self.put(inline_text(d))
            self.put("</td></tr>\n")
        self.put("</tbody></table>\n")

    def request_body(self, body):
        body = self.resolve(body)
        if body is None:
            return
        self.put("<h4>Request body")
        self.put(' <span class="req">required</span>' if get(body, "required") is True
                 else ' <span class="opt">optional</span>')
        self.put("</h4>\n")
        d = str_of(body, "description")
        if d is not None:
            self.put(paragraphs(d))
        self.content(get(body, "content"), True)

    def resp_headers(self, headers):
        """The headers of a response or a common response, as a short list."""
        if not isinstance(headers, dict) or not headers:
            return
        self.put('<p class="hdrs">Headers:</p>\n<ul class="hdrs">\n')
        for name, h in headers.items():
            d = str_of(self.resolve(h), "description")
            self.put(f"<li><code>{esc(name)}</code>")
            if d is not None:
                self.put(" &mdash; " + inline_text(d))
            self.put("</li>\n")
        self.put("</ul>\n")

    def response(self, code, resp, link_common):
        common = ref_name(resp, "responses") if link_common else None
        rr = self.resolve(resp)
        cls = "other"
        if len(code.encode("utf-8")) == 3 and "1" <= code[0] <= "5":
            cls = f"s{code[0]}xx"
        self.put('<div class="resp"><p>')
        if code:
            shown = "other" if code == "default" else code
            self.put(f'<span class="status {cls}">{esc(shown)}</span> ')
        d = str_of(rr, "description")
        if d is not None:
            self.put(inline_text(d))
        if common is not None:
            self.put(f' <a class="see" href="#{anchor("response-", common)}">see '
                     f"{esc(common)}</a></p>\n")
        else:
            self.put("</p>\n")
        self.resp_headers(get(rr, "headers"))
        content = get(rr, "content")
        if common is not None:
            # A common response is described in full once, under "Common responses": here only
            # its media types and schema names.
            for media_type, media in children(content):
                self.media_line(media_type, get(media, "schema"))
        else:
            self.content(content, code[:1] in ("2", ""))
        self.put("</div>\n")

    def security(self, sec):
        if not isinstance(sec, list):
            return
        alternatives = []
        for _, alt in children(sec):
            names = [k for k, _ in children(alt)]
            alternatives.append("".join(f'<a href="#{anchor("security-", k)}">{esc(k)}</a>'
                                        for k in names) if names else "none")
        self.put('<p class="sec"><strong>Authentication:</strong> ' + ", or ".join(alternatives) +
                 "</p>\n")

    def operations(self):
        """(path, method, operation) for every operation, in document order."""
        ops = []
        for path, item in children(get(self.root, "paths")):
            item = self.resolve(item)
            if not isinstance(item, dict):
                continue
            for m, op in item.items():
                if m in METHODS and isinstance(op, dict):
                    ops.append((path, m, op))
        return ops

    def operation(self, index, path, m, op):
        self.put(f'<section class="op" id="op-{index}">\n<h3>{method_badge(m)} '
                 f'<code class="path">{esc(path)}</code>')
        summary = str_of(op, "summary")
        if summary is not None:
            self.put(f' <span class="summary">&mdash; {esc(summary)}</span>')
        self.put("</h3>\n")
        d = str_of(op, "description")
        if d is not None:
            self.put(paragraphs(d))
        self.security(get(op, "security"))
        self.parameters(get(op, "parameters"))
        body = get(op, "requestBody")
        if body is not None:
            self.request_body(body)
        responses = get(op, "responses")
        if isinstance(responses, dict):
            self.put("<h4>Responses</h4>\n")
            for code, resp in responses.items():
                self.response(code, resp, True)
        self.put("</section>\n")

    def toc_entry(self, index, path, m, op):
        self.put(f'<li><a href="#op-{index}">{method_badge(m)} <code>{esc(path)}</code></a>')
        summary = str_of(op, "summary")
        if summary is not None:
            self.put(" &mdash; " + esc(summary))
        self.put("</li>\n")

    def components(self):
        comp = get(self.root, "components")
        responses = get(comp, "responses")
        if isinstance(responses, dict) and responses:
            self.put('<h2 id="common-responses">Common responses</h2>\n')
            for name, resp in responses.items():
                self.put(f'<section class="comp" id="{anchor("response-", name)}">'
                         f"<h3>{esc(name)}</h3>\n")
                self.response("", resp, False)
                self.put("</section>\n")
        schemas = get(comp, "schemas")
        if isinstance(schemas, dict) and schemas:
            self.put('<h2 id="schemas">Schemas</h2>\n')
            for name, schema in schemas.items():
                self.put(f'<section class="comp" id="{anchor("schema-", name)}">'
                         f'<h3>{esc(name)}</h3>\n<p class="media">')
                self.schema_type(schema, 0)
                self.put("</p>\n")
                d = str_of(schema, "description")
                if d is not None:
                    self.put(paragraphs(d))
                self.fields_table(schema)
                self.put("</section>\n")
        schemes = get(comp, "securitySchemes")
        if isinstance(schemes, dict) and schemes:
            self.put('<h2 id="security">Authentication</h2>\n')
            for name, scheme in schemes.items():
                kind = str_of(scheme, "type")
                how = str_of(scheme, "scheme")
                self.put(f'<section class="comp" id="{anchor("security-", name)}">'
                         f"<h3>{esc(name)}</h3>\n<p>{esc('' if kind is None else kind)}")
                if how is not None:
                    self.put(" " + esc(how))
                self.put("</p>\n")
                d = str_of(scheme, "description")
                if d is not None:
                    self.put(paragraphs(d))
                self.put("</section>\n")

    def render(self):
        root = self.root
        info = get(root, "info")
        title = str_of(info, "title")
        if title is None:
            title = "API"
        version = str_of(info, "version")
        summary = str_of(info, "summary")
        desc = str_of(info, "description")
        self.put('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
                 '<meta name="viewport" content="width=device-width,initial-scale=1">\n'
                 f"<title>{esc(title)}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n"
                 f"<main>\n<header>\n<h1>{esc(title)}")
        if version is not None:
            self.put(f" <small>version {esc(version)}</small>")
        self.put("</h1>\n")
        if summary is not None:
            self.put(f'<p class="lead">{esc(summary)}</p>\n')
        openapi = str_of(root, "openapi")
        self.put('<p>Machine-readable description: <a href="/openapi.json"><code>/openapi.json'
                 f"</code></a> (OpenAPI {esc('?' if openapi is None else openapi)}).</p>\n"
                 "</header>\n")
        if desc is not None:
            self.put('<h2 id="overview">Overview</h2>\n' + paragraphs(desc))
        servers = get(root, "servers")
        if isinstance(servers, list) and servers:
            self.put('<h2 id="servers">Servers</h2>\n<ul>\n')
            for server in servers:
                url = str_of(server, "url")
                sd = str_of(server, "description")
                self.put(f"<li><code>{esc('' if url is None else url)}</code>")
                if sd is not None:
                    self.put(" &mdash; " + esc(sd))
                self.put("</li>\n")
            self.put("</ul>\n")
        ops = self.operations()
        if not ops:
            raise RenderError("the document describes no operation")
        self.put('<h2 id="routes">Routes</h2>\n<ul class="toc">\n')
        for index, op in enumerate(ops):
            self.toc_entry(index, *op)
        self.put("</ul>\n")
        for index, op in enumerate(ops):
            self.operation(index, *op)
        self.components()
        self.put("</main>\n</body>\n</html>\n")
        return "".join(self.out)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(f"usage: {argv[0]} INPUT.json OUTPUT.html\n")
        return 2
    src, dst = argv[1], argv[2]
    try:
        with open(src, encoding="utf-8") as f:
            html = Page(load(f.read())).render()
    except (OSError, ValueError, RenderError) as e:
        sys.stderr.write(f"{argv[0]}: {src}: {e}\n")
        return 1
    # Written aside and renamed, so that an interrupted build leaves no half page behind for
    # make to take as up to date.
    tmp = dst + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(html)
    os.replace(tmp, dst)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
