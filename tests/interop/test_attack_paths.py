"""Attack suite, hole 1 of issue 14: the route matched one path and the upstream served another.

The real binary runs a close copy of the complete example of docs/configuration.md (the
embedded issuer instead of Cognito, so read-only tokens can be minted; an `ANY /admin/{rest+}`
route for the issue's `/%61dmin/users`), in front of real normalising upstreams:

- nginx, answering every request `200 "$request_method $uri"` ($uri is decoded, slashes merged,
  dot segments resolved), so the body names the resource nginx served, and echoing the raw target
  it received in `x-upstream-request-uri`;
- hypercorn (ASGI), logging and echoing its scope (`path` is decoded, `raw_path` is what came on
  the wire; it also upper-cases the method).

The design under test (CONTRACT.md section 3, issue 14): routing, policies, scopes and keys are
decided on one canonical path and the upstream receives exactly that path. Escapes of unreserved
characters are decoded, other escapes kept with upper-case hex; refused with 400
`{"message":"Bad Request"}`: encoded `/` or `\\`, a raw `\\`, NUL and control bytes (raw or
encoded), percent-encoded bytes that are not UTF-8 (overlong forms included), `//`, `;`, dot
segments; a method that differs from a standard one only in case. A route may opt in with
`allow_in_path: [encoded_slash, empty_segments, semicolon]` (dot segments, control bytes and bad
UTF-8 never). Absolute-form targets and HTTP/2 `:path` follow the same rules. Route literals are
compared with the canonical path's segments, remaining escapes decoded, without one trailing `/`
(docs/security.md, "What routing compares"): `DELETE /products/1/` is decided by
`DELETE /products/{id}`, and a served `/products/1/` counts as that resource too.

The property over a generated corpus (`CORPUS_SEED`, `CORPUS_SIZE`: deterministic): a request the
gateway forwards is never served as a resource whose route would have refused this client. This
file's own route table (`ROUTES`, the gateway's config in Python) says which route the *served*
resource belongs to and whether that route refuses the client.
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_to_bytes

import pytest
import tollgate_process
import upstreams as up

READ = "product-api/read_product"
CREATE = "product-api/create_product"
DELETE = "product-api/delete_product"
ADMIN = "product-api/admin"
CLIENTS = {
    # client id -> (secret, scopes): read-only, and read + create (no delete, no admin)
    "catalog-reader": ("demo-reader-secret", [READ]),
    "inventory-service": ("demo-inventory-secret", [READ, CREATE]),
}
API_KEY_HASH = "sha256:7c33cb7ea38b5df79e93daf4bffca120f956201e03c184751c66a33e0382dcb8"
CLIENT_IP = ipaddress.ip_address("127.0.0.1")
BAD_REQUEST = {"message": "Bad Request"}

CORPUS_SEED = 1414
CORPUS_SIZE = 220
STANDARD_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def gateway_config(port: int, upstream_port: int, state_dir, key_path,
                   extra_routes: str = "") -> str:
    return f"""\
listeners:
  - bind: 127.0.0.1:{port}
admin: {{ bind: 127.0.0.1:0 }}
state: {{ backend: memory, path: "{state_dir}" }}
limits: {{ header_timeout: 5s }}
client_ip:
  trusted_proxies: [10.0.0.0/8]
policies:
  office: {{ allow: [192.0.2.0/24, "2001:db8::/32"], deny: [192.0.2.66] }}

issuer:
  url: http://127.0.0.1:{port}
  signing_key: "{key_path}"
  token_ttl: 1h
  resource_servers:
    - {{ identifier: product-api, scopes: [read_product, create_product, delete_product, admin] }}
  clients:
    - {{ client_id: inventory-service, client_secret: demo-inventory-secret,
        scopes: [{READ}, {CREATE}] }}
    - {{ client_id: catalog-reader, client_secret: demo-reader-secret, scopes: [{READ}] }}

authorizers:
  local: {{ type: jwt, issuer: self }}

usage_plans:
  gold:
    throttle: {{ rate: 100000, burst: 100000 }}
    quota: {{ limit: 100000000, period: month }}
api_keys:
  header: x-api-key
  keys:
    - {{ id: partner-a, key: "{API_KEY_HASH}", plan: gold }}

upstreams:
  products: {{ targets: [http://127.0.0.1:{upstream_port}], timeout: 10s, connect_timeout: 2s }}

defaults:
  authorizer: local
  scopes: [{READ}]

routes:
  - {{ route: "GET /products",         upstream: products }}
  - {{ route: "POST /products",        upstream: products, scopes: [{CREATE}],
      api_key_required: true }}
  - {{ route: "DELETE /products/{{id}}", upstream: products, scopes: [{DELETE}], policy: office }}
  - {{ route: "GET /inventory",        upstream: products }}
  - {{ route: "ANY /admin/{{rest+}}",    upstream: products, scopes: [{ADMIN}] }}
  - {{ route: "ANY /public/{{proxy+}}",  upstream: products, authorizer: none }}
  - {{ route: "GET /status",           authorizer: none,
      respond: {{ status: 200, body: '{{"ok":true}}' }} }}
{extra_routes}  - {{ route: "$default",              upstream: products }}
"""


# --------------------------------------------------------------------------------------------
# The route table in Python, and the canonical path as the design defines it
# --------------------------------------------------------------------------------------------


@dataclass
class Route:
    key: str
    authorizer: str | None = "local"
    scopes: tuple[str, ...] = (READ,)
    policy: str | None = None
    api_key: bool = False
    respond: int | None = None
    method: str = field(init=False)
    segs: list[str] = field(init=False)
    greedy: bool = field(init=False)

    def __post_init__(self):
        if self.key == "$default":
            self.method, self.segs, self.greedy = "ANY", [], True
            return
        self.method, path = self.key.split(" ", 1)
        segs = path.split("/")[1:]
        self.greedy = bool(segs) and segs[-1].endswith("+}")
        self.segs = segs[:-1] if self.greedy else segs

    def matches(self, method: str, path: str) -> bool:
        if self.method not in ("ANY", method):
            return False
        if self.key == "$default":
            return True
        segs = path.split("/")[1:]
        if self.greedy:
            if len(segs) < len(self.segs):
                return False
        elif len(segs) != len(self.segs):
            return False
        for pat, seg in zip(self.segs, segs):
            if pat.startswith("{"):
                if seg == "":
                    return False
            elif pat != seg:
                return False
        return True

    def rank(self) -> tuple:
        """Higher wins: literal > {name} > {name+} > $default; then a method over ANY."""
        if self.key == "$default":
            return (0, (), 0)
        return (1 if self.greedy else 2,
                tuple(1 if s.startswith("{") else 2 for s in self.segs),
                1 if self.method != "ANY" else 0)


ROUTES = [
    Route("GET /products"),
    Route("POST /products", scopes=(CREATE,), api_key=True),
    Route("DELETE /products/{id}", scopes=(DELETE,), policy="office"),
    Route("GET /inventory"),
    Route("ANY /admin/{rest+}", scopes=(ADMIN,)),
    Route("ANY /public/{proxy+}", authorizer=None, scopes=()),
    Route("GET /status", authorizer=None, scopes=(), respond=200),
    Route("$default"),
]
OFFICE = [ipaddress.ip_network("192.0.2.0/24")]


def routing_path(path: str, decoded: bool) -> str:
    """What route literals are compared with (docs/security.md, "What routing compares"): the
    canonical path's remaining escapes decoded, except those of `/`, `\\` and `;`, and without
    one trailing `/`. A path an upstream served (`decoded`) is compared as it is."""
    if not decoded:
        path = unquote(re.sub(r"%(2F|5C|3B)", r"%25\1", path))
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return path


def route_for(method: str, path: str, decoded: bool = False) -> Route | None:
    p = routing_path(path, decoded)
    cands = [r for r in ROUTES if r.matches(method, p)]
    return max(cands, key=Route.rank) if cands else None


def decide(method: str, path: str, scopes: list[str] | None, api_key: bool = False,
           decoded: bool = False) -> tuple[int, str]:
    """What the gateway's route for (method, path) does with this client: (status, why). 200
    "forward ..." means the request goes to the upstream. `path` is a canonical path, or with
    `decoded` a path as an upstream served it."""
    r = route_for(method, path, decoded)
    if r is None:
        return 404, "no route"
    if r.policy == "office" and not any(CLIENT_IP in n for n in OFFICE):
        return 403, f"{r.key}: policy office refuses 127.0.0.1"
    if r.authorizer:
        if scopes is None:
            return 401, f"{r.key}: no token"
        if r.scopes and not set(r.scopes) & set(scopes):
            return 403, f"{r.key}: token lacks {' or '.join(r.scopes)}"
    if r.api_key and not api_key:
        return 403, f"{r.key}: no API key"
    if r.respond is not None:
        return r.respond, f"{r.key}: respond"
    return 200, f"forward ({r.key})"


def canonical_path(path: bytes, allow: frozenset[str] = frozenset()) -> bytes | None:
    """The canonical form of a request path, or None where the gateway must answer 400."""
    if not path.startswith(b"/"):
        return None
    out = bytearray()
    decoded = bytearray()  # every byte, escapes decoded: must be UTF-8
    i = 0
    while i < len(path):
        c = path[i]
        if c == 0x25:  # %
            h = path[i + 1:i + 3]
            if len(h) != 2 or not all(x in b"0123456789abcdefABCDEF" for x in h):
                return None
            b = int(h, 16)
            i += 3
            decoded.append(b)
            if b in UNRESERVED:
                out.append(b)
            elif b in (0x2F, 0x5C):
                if "encoded_slash" not in allow:
                    return None
                out += b"%%%02X" % b
            elif b < 0x20 or b == 0x7F:
                return None
            elif b == 0x3B:
                if "semicolon" not in allow:
                    return None
                out += b"%3B"
            else:
                out += b"%%%02X" % b
            continue
        if c == 0x5C or c < 0x21 or c == 0x7F:
            return None
        if c >= 0x80 or c in b'"{}|':  # bytes RFC 3986 does not allow in a path: encoded
            out += b"%%%02X" % c
            decoded.append(c)
            i += 1
            continue
        if c == 0x3B and "semicolon" not in allow:
            return None
        out.append(c)
        decoded.append(c)
        i += 1
    try:
        bytes(decoded).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if b"//" in out and "empty_segments" not in allow:
        return None
    if any(seg in (b".", b"..") for seg in bytes(out).split(b"/")):
        return None
    return bytes(out)


def canonical_method(method: str) -> str | None:
    if method.upper() in STANDARD_METHODS and method != method.upper():
        return None
    return method


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """(path, query) of an origin-form or absolute-form target."""
    m = re.match(rb"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*", target)
    if m:
        target = target[m.end():] or b"/"
    path, sep, query = target.partition(b"?")
    return path, (query if sep else None)


def lenient_resource(method: str, decoded_path: str) -> tuple[str, str]:
    """How a lenient framework behind hypercorn could read the request: method upper-cased, `\\`
    as `/`, `;params` dropped from segments (Tomcat/Spring style), slashes merged, dot segments
    resolved; a trailing slash is kept."""
    p = decoded_path.replace("\\", "/")
    segs = [s.split(";", 1)[0] for s in p.split("/")[1:]]
    out: list[str] = []
    for s in segs[:-1]:
        if s in ("", "."):
            continue
        if s == "..":
            if out:
                out.pop()
            continue
        out.append(s)
    last = segs[-1] if segs else ""
    if last == "..":
        if out:
            out.pop()
        last = ""
    elif last == ".":
        last = ""
    return method.upper(), ("/" + "/".join(out + [last])) if out else ("/" + last)


# --------------------------------------------------------------------------------------------
# Fixtures: nginx, hypercorn, and a gateway in front of each
# --------------------------------------------------------------------------------------------


class PathGateway:
    def __init__(self, gw, kind: str, upstream):
        self.gw = gw
        self.port = int(gw.base_url.rsplit(":", 1)[1])
        self.kind = kind
        self.upstream = upstream
        self.tokens = {cid: up.mint_token(gw.base_url, cid, secret)
                       for cid, (secret, _) in CLIENTS.items()}

    def auth(self, client: str | None) -> list[tuple[str, str]]:
        return [("Authorization", "Bearer " + self.tokens[client])] if client else []

    def send(self, method: str | bytes, target: str | bytes, client: str | None,
             headers=()) -> up.RawResponse | None:
        return up.raw_request(self.port, method, target, self.auth(client) + list(headers))

    def served(self, resp: up.RawResponse | None) -> tuple[str, str, str] | None:
        """(method, served path, raw target the upstream received) when the upstream answered."""
        if resp is None:
            return None
        by = resp.header("x-served-by")
        if self.kind == "nginx" and by == "nginx":
            method, _, uri = resp.body.decode("latin1").rstrip("\n").partition(" ")
            return method, uri, resp.header("x-upstream-request-uri") or ""
        if self.kind == "hypercorn" and by == "hypercorn":
            rec = resp.json()
            method, path = lenient_resource(rec["method"], rec["path"])
            raw = rec["raw_path"] + ("?" + rec["query"] if rec["query"] else "")
            return method, path, raw
        return None


def _start_path_gateway(tmp_path_factory, kind: str) -> tuple[PathGateway, list]:
    workdir = tmp_path_factory.mktemp(f"attack-paths-{kind}")
    upstream = (up.Nginx(workdir, "normalising", up.NORMALISING_SERVER) if kind == "nginx"
                else up.Hypercorn(workdir))
    key = workdir / "state" / "issuer.pem"
    up.write_signing_key(key)
    try:
        gw = up.start_gateway(
            workdir, f"paths-{kind}",
            lambda port: gateway_config(port, upstream.port, workdir / "state", key),
            "/status")
    except BaseException:
        upstream.stop()
        raise
    return PathGateway(gw, kind, upstream), [upstream]


@pytest.fixture(scope="module")
def nginx_gateway(tmp_path_factory):
    pg, others = _start_path_gateway(tmp_path_factory, "nginx")
    yield pg
    try:
        tollgate_process.stop(pg.gw, secrets=tuple(s for s, _ in CLIENTS.values()))
    finally:
        for o in others:
            o.stop()


@pytest.fixture(scope="module")
def hypercorn_gateway(tmp_path_factory):
    pg, others = _start_path_gateway(tmp_path_factory, "hypercorn")
    yield pg
    try:
        tollgate_process.stop(pg.gw, secrets=tuple(s for s, _ in CLIENTS.values()))
    finally:
        for o in others:
            o.stop()


def _is_bad_request(resp) -> bool:
    """The gateway's own 400 `{"message":"Bad Request"}` (not an upstream's 400)."""
    if resp is None or resp.status != 400:
        return False
    try:
        return resp.json() == BAD_REQUEST
    except ValueError:
        return False


def _describe(resp) -> str:
    return "no answer (connection closed)" if resp is None else (
        f"{resp.status} {resp.body[:160]!r}")


# --------------------------------------------------------------------------------------------
# The issue's reproductions, exactly
# --------------------------------------------------------------------------------------------

REPRODUCTIONS = [
    # (method, target, client, expected status, what it must not become)
    ("DELETE", "/product%73/1", "catalog-reader", 403,
     "a read-only token from outside `office` deleting /products/1"),
    ("DELETE", "//products/1", "catalog-reader", 400,
     "a read-only token from outside `office` deleting /products/1"),
    ("DELETE", "/products%2f1", "catalog-reader", 400,
     "a read-only token from outside `office` deleting /products/1"),
    ("GET", "/%61dmin/users", "catalog-reader", 403,
     "a read-only token reading /admin/users"),
    ("POST", "/product%73", "inventory-service", 403,
     "a product created without an API key"),
    ("POST", "//products", "inventory-service", 400,
     "a product created without an API key"),
    ("DELETE", "/products/1", "catalog-reader", 403, "(control: the plain spelling)"),
    ("POST", "/products", "inventory-service", 403, "(control: the plain spelling)"),
]


@pytest.mark.parametrize("method,target,client,expected,leak", REPRODUCTIONS,
                         ids=[f"{m} {t}" for m, t, *_ in REPRODUCTIONS])
def test_issue_reproduction_is_refused(nginx_gateway, method, target, client, expected, leak):
    resp = nginx_gateway.send(method, target, client)
    served = nginx_gateway.served(resp)
    assert served is None, (
        f"LEAK: {method} {target} was forwarded and nginx served it as {served[0]} {served[1]} "
        f"(received {served[2]!r}): {leak}")
    assert resp is not None and resp.status == expected, (
        f"{method} {target}: expected {expected}, got {_describe(resp)}")
    if expected == 400:
        assert _is_bad_request(resp), f"{method} {target}: {_describe(resp)}"


@pytest.mark.parametrize("form", ["absolute-form", "http2"])
@pytest.mark.parametrize("method,target,client,expected,leak", REPRODUCTIONS[:6],
                         ids=[f"{m} {t}" for m, t, *_ in REPRODUCTIONS[:6]])
def test_issue_reproduction_other_forms(nginx_gateway, form, method, target, client, expected,
                                        leak):
    """The same reproductions as an absolute-form target and as an HTTP/2 `:path` (prior
    knowledge on the plain listener)."""
    g = nginx_gateway
    if form == "absolute-form":
        resp = up.raw_request(g.port, method, f"http://127.0.0.1:{g.port}{target}", g.auth(client))
        served = g.served(resp)
        status = None if resp is None else resp.status
    else:
        resp = up.h2_request(g.port, method, target,
                             [("authorization", "Bearer " + g.tokens[client])])
        served = None
        if resp.header("x-served-by") == "nginx":
            served = (*resp.body.decode("latin1").rstrip("\n").split(" ", 1),
                      resp.header("x-upstream-request-uri"))
        status = resp.status
    assert served is None, (f"LEAK ({form}): {method} {target} was served by nginx as "
                            f"{served[0]} {served[1]} (received {served[2]!r}): {leak}")
    assert status == expected, f"{form} {method} {target}: expected {expected}, got {resp!r}"


# --------------------------------------------------------------------------------------------
# What the upstream receives: exactly the canonical path
# --------------------------------------------------------------------------------------------

CANONICAL_FORWARDS = [
    ("GET", "/product%73", "catalog-reader", "/products"),
    ("GET", "/%70roducts", "catalog-reader", "/products"),
    ("GET", "/public/a%3ab", None, "/public/a%3Ab"),
    ("GET", "/public/%7euser/%41%2d%5F", None, "/public/~user/A-_"),
    ("GET", "/public/caf%c3%a9", None, "/public/caf%C3%A9"),
    ("GET", "/public/a%20b%2bc", None, "/public/a%20b%2Bc"),
    ("GET", "/public/%2Ehidden", None, "/public/.hidden"),
    ("GET", "/public/x/", None, "/public/x/"),
    ("GET", "/public/q?x=%2f..%2F&y=%3b", None, "/public/q?x=%2f..%2F&y=%3b"),
    ("PURGE", "/public/x", None, "/public/x"),
]


@pytest.mark.parametrize("method,target,client,canonical", CANONICAL_FORWARDS,
                         ids=[f"{m} {t}" for m, t, *_ in CANONICAL_FORWARDS])
def test_upstream_receives_the_canonical_path(nginx_gateway, method, target, client, canonical):
    resp = nginx_gateway.send(method, target, client)
    served = nginx_gateway.served(resp)
    assert served is not None, f"{method} {target} should be forwarded, got {_describe(resp)}"
    assert served[2] == canonical, (
        f"{method} {target}: the upstream received {served[2]!r}, the canonical form is "
        f"{canonical!r}")


def test_canonical_path_over_http2_and_absolute_form(nginx_gateway):
    g = nginx_gateway
    resp = up.h2_request(g.port, "GET", "/product%73",
                         [("authorization", "Bearer " + g.tokens["catalog-reader"])])
    assert resp.status == 200 and resp.header("x-served-by") == "nginx", resp
    assert resp.header("x-upstream-request-uri") == "/products", (
        "HTTP/2 :path /product%73 reached the upstream as "
        f"{resp.header('x-upstream-request-uri')!r}")
    r = up.raw_request(g.port, "GET", f"http://127.0.0.1:{g.port}/public/a%3ab",
                       g.auth("catalog-reader"))
    served = g.served(r)
    assert served is not None and served[2] == "/public/a%3Ab", (
        f"absolute-form /public/a%3ab reached the upstream as {served and served[2]!r}: {r!r}")


# --------------------------------------------------------------------------------------------
# What is refused with 400 (on an open greedy route, so only the path rules decide)
# --------------------------------------------------------------------------------------------

AMBIGUOUS = [
    "/public/a%2fb", "/public/a%2Fb", "/public/a%5cb", "/public/a%5Cb", "/public/a\\b",
    "/public/a%00b", "/public/a%0ab", "/public/a%0D%0Ab", "/public/a%1fb", "/public/a%7Fb",
    "/public/%c0%af", "/public/%C0%AE%C0%AE/x", "/public/%e0%80%af", "/public/%ff", "/public/%c3",
    "/public/%ed%a0%80", "/public/a%zz", "/public/a%2",
    "/public//a", "//public/a", "/public/a//", "/public/a;b", "/public/a;jsessionid=1/x",
    "/public/a%3bb", "/public/a%3Bb", "/public/./a", "/public/../products/1",
    "/public/%2e%2e/admin/users", "/public/%2E/x", "/public/a/..", "/public/.%2e/x",
]


@pytest.mark.parametrize("target", AMBIGUOUS)
def test_ambiguous_path_is_400(nginx_gateway, target):
    resp = nginx_gateway.send("GET", target, None)
    served = nginx_gateway.served(resp)
    assert served is None, (f"GET {target} was forwarded (nginx served {served[1]!r}, received "
                            f"{served[2]!r}); it must be refused with 400")
    assert _is_bad_request(resp), (
        f"GET {target}: expected the gateway's 400 {BAD_REQUEST}, got {_describe(resp)}"
        + (" (forwarded, and refused by nginx itself)" if resp is not None
           and resp.header("server") and "nginx" in resp.header("server") else ""))


ODD_METHODS = [("get", "/products"), ("Get", "/public/x"), ("Delete", "/products/1"),
               ("dELETE", "/products/1"), ("pOST", "/products"), ("Patch", "/public/x"),
               ("options", "/public/x"), ("put", "/admin/x")]


@pytest.mark.parametrize("method,target", ODD_METHODS, ids=[f"{m} {t}" for m, t in ODD_METHODS])
def test_method_differing_only_in_case_is_400(hypercorn_gateway, method, target):
    """Against hypercorn, which upper-cases the method: `Delete /products/1` sent to `ANY`/
    `$default` is served as DELETE /products/1."""
    g = hypercorn_gateway
    resp = g.send(method, target, "catalog-reader")
    served = g.served(resp)
    assert served is None, (f"LEAK: {method} {target} was forwarded and hypercorn served it as "
                            f"{served[0]} {served[1]}")
    assert _is_bad_request(resp), f"{method} {target}: expected 400, got {_describe(resp)}"


def test_method_case_over_http2_is_400(hypercorn_gateway):
    g = hypercorn_gateway
    resp = up.h2_request(g.port, "Delete", "/products/1",
                         [("authorization", "Bearer " + g.tokens["catalog-reader"])])
    assert resp.header("x-served-by") is None, (
        f"LEAK: HTTP/2 :method Delete /products/1 was served by hypercorn: {resp.body[:200]!r}")
    # A stream reset by the HTTP/2 layer would also keep it from the upstream; the design says 400.
    assert resp.status == 400 or (resp.status is None and resp.reset), (
        f"HTTP/2 :method Delete: expected 400, got {resp!r}")


# --------------------------------------------------------------------------------------------
# The generated corpus and the property
# --------------------------------------------------------------------------------------------

BASES = [
    # (method, path, client): the resources worth reaching, and some the client may reach
    ("DELETE", "/products/1", "catalog-reader"),
    ("DELETE", "/products/42", "inventory-service"),
    ("POST", "/products", "inventory-service"),
    ("GET", "/admin/users", "catalog-reader"),
    ("PUT", "/admin/settings/mode", "inventory-service"),
    ("GET", "/inventory", None),
    ("GET", "/products", None),
    ("GET", "/products", "catalog-reader"),
    ("GET", "/public/docs/a", None),
    ("GET", "/status", None),
]


def _esc(rng: random.Random, ch: int) -> str:
    h = "%02x" % ch
    return "%" + "".join(c.upper() if rng.random() < 0.5 else c for c in h)


def _mutate_path(rng: random.Random, path: str) -> str:
    segs = path.split("/")[1:]
    ops = rng.sample(range(12), k=rng.choice([1, 1, 2, 2, 3]))
    for op in ops:
        n = len(segs)
        k = rng.randrange(n)
        if op == 0:  # escape an unreserved character
            s = segs[k]
            if s:
                j = rng.randrange(len(s))
                segs[k] = s[:j] + _esc(rng, ord(s[j])) + s[j + 1:]
        elif op == 1:  # an empty segment: //
            segs.insert(k, "")
        elif op == 2:  # dot segments, plain or encoded, resolving back to the same resource
            dot = rng.choice([".", "%2e", "%2E"])
            segs.insert(k, rng.choice([dot, "x/" + dot + dot, "public/" + dot + dot,
                                       dot + "%2e"]))
        elif op == 3:  # ; parameters
            segs[k] += rng.choice([";", ";jsessionid=1", "%3b", "%3Bx=1", ";/"])
        elif op == 4 and k + 1 < n:  # encoded / or \ or raw \ as the separator
            sep = rng.choice(["%2f", "%2F", "%5c", "%5C", "\\"])
            segs[k:k + 2] = [segs[k] + sep + segs[k + 1]]
        elif op == 5:  # NUL and control bytes
            segs[k] += rng.choice(["%00", "%0a", "%0D", "%09", "%1f", "%7f"])
        elif op == 6 and k + 1 < n:  # overlong / invalid UTF-8 as the separator
            sep = rng.choice(["%c0%af", "%C0%AF", "%e0%80%af", "%c1%9c", "%ff"])
            segs[k:k + 2] = [segs[k] + sep + segs[k + 1]]
        elif op == 7:  # a trailing slash
            segs.append("")
        elif op == 8:  # other escapes, lower-case hex
            segs[k] += rng.choice(["%3a", "%40", "%20", "%2b", "%c3%a9", "%25"])
        elif op == 9:  # the open greedy route's prefix, then climbing out of it
            segs = ["public", rng.choice(["..", "%2e%2e", ".%2E", "%2E%2E"])] + segs
        elif op == 10:  # case of the first letter escaped
            s = segs[0]
            if s:
                segs[0] = _esc(rng, ord(s[0])) + s[1:]
        elif op == 11:  # a leading //
            segs.insert(0, "")
    return "/" + "/".join(segs)


def _mutate_method(rng: random.Random, method: str) -> str:
    for _ in range(10):
        m = "".join(c.lower() if rng.random() < 0.5 else c for c in method)
        if m != method:
            return m
    return method.lower()


@dataclass
class Case:
    method: str
    target: str
    client: str | None
    absolute: bool


def corpus() -> list[Case]:
    rng = random.Random(CORPUS_SEED)
    out: list[Case] = []
    seen = set()
    for m, t, c, *_ in REPRODUCTIONS:
        out.append(Case(m, t, c, False))
        seen.add((m, t, c, False))
    tries = 0
    while len(out) < CORPUS_SIZE and tries < CORPUS_SIZE * 20:
        tries += 1
        method, path, client = rng.choice(BASES)
        target = _mutate_path(rng, path) if rng.random() < 0.9 else path
        if rng.random() < 0.2:
            method = _mutate_method(rng, method)
        if rng.random() < 0.08:
            target += rng.choice(["?q=1", "?next=%2f..%2fadmin", "?a=%3b"])
        absolute = rng.random() < 0.15
        key = (method, target, client, absolute)
        if key in seen:
            continue
        seen.add(key)
        out.append(Case(method, target, client, absolute))
    return out


CORPUS = corpus()


def _expected(case: Case) -> tuple[int, str, bytes | None]:
    """(status, why, canonical target) the design predicts for a corpus case."""
    path, query = split_target(case.target.encode("latin1"))
    if canonical_method(case.method) is None:
        return 400, "method differs from a standard one only in case", None
    canon = canonical_path(path)
    if canon is None:
        return 400, "path cannot be made canonical", None
    scopes = CLIENTS[case.client][1] if case.client else None
    status, why = decide(case.method, canon.decode("latin1"), scopes)
    return status, why, canon + (b"?" + query if query is not None else b"")


@dataclass
class Outcome:
    case: Case
    resp: up.RawResponse | None
    served: tuple[str, str, str] | None


def _run_corpus(g: PathGateway) -> list[Outcome]:
    out = []
    for case in CORPUS:
        target = f"http://127.0.0.1:{g.port}{case.target}" if case.absolute else case.target
        resp = g.send(case.method, target, case.client)
        out.append(Outcome(case, resp, g.served(resp)))
    return out


@pytest.fixture(scope="module", params=["nginx", "hypercorn"])
def corpus_outcomes(request):
    g = request.getfixturevalue(f"{request.param}_gateway")
    return g, _run_corpus(g)


def _label(c: Case) -> str:
    return (f"{c.method} {'(absolute-form) ' if c.absolute else ''}{c.target!r} "
            f"as {c.client or 'anonymous'}")


def _report(problems: list[str], total: int, what: str) -> str:
    shown = "\n  ".join(problems[:15])
    more = f"\n  ... and {len(problems) - 15} more" if len(problems) > 15 else ""
    return f"{len(problems)} of {total} generated requests {what}:\n  {shown}{more}"


def test_generated_requests_never_served_as_a_refused_resource(corpus_outcomes):
    """The property: whatever the gateway forwards is served as a resource whose own route
    admits this client."""
    g, outcomes = corpus_outcomes
    leaks = []
    for o in outcomes:
        if o.served is None:
            continue
        method, served_path, received = o.served
        scopes = CLIENTS[o.case.client][1] if o.case.client else None
        status, why = decide(method, served_path, scopes, decoded=True)
        if status != 200 or not why.startswith("forward"):
            leaks.append(f"{_label(o.case)} -> {g.kind} served {method} {served_path!r} "
                         f"(received {received!r}), but {why} ({status})")
    assert not leaks, _report(leaks, len(outcomes), "leaked past their route")


def test_generated_requests_reach_the_upstream_canonical(corpus_outcomes):
    g, outcomes = corpus_outcomes
    wrong = []
    for o in outcomes:
        if o.served is None:
            continue
        _, _, canon = _expected(o.case)
        got = o.served[2].encode("latin1")
        if canon is None:
            wrong.append(f"{_label(o.case)} reached {g.kind} as {o.served[2]!r}; it has no "
                         f"canonical form and must be refused")
        elif got != canon:
            wrong.append(f"{_label(o.case)} reached {g.kind} as {o.served[2]!r}, canonical "
                         f"{canon.decode('latin1')!r}")
    assert not wrong, _report(wrong, len(outcomes), "did not reach the upstream canonical")


def test_generated_requests_get_the_canonical_verdict(corpus_outcomes):
    """The gateway answers each spelling as the design says: 400 when it cannot be made
    canonical, otherwise exactly what the route of the canonical path does."""
    g, outcomes = corpus_outcomes
    wrong = []
    for o in outcomes:
        status, why, _ = _expected(o.case)
        got = None if o.resp is None else o.resp.status
        if got != status:
            wrong.append(f"{_label(o.case)}: expected {status} ({why}), got "
                         f"{_describe(o.resp)}")
    assert not wrong, _report(wrong, len(outcomes), "got another verdict than their canonical form")


def test_corpus_is_deterministic_and_covers_every_spelling():
    """The corpus is the same on every run and holds every class of spelling it claims to."""
    assert corpus() == CORPUS
    targets = " ".join(c.target for c in CORPUS).lower()
    for needle in ["%2f", "%5c", "\\", "%00", "%c0%af", "//", ";", "%2e", "/../", "%3a", "%73"]:
        assert needle in targets, f"the corpus has no {needle!r}"
    assert any(c.absolute for c in CORPUS)
    assert any(canonical_method(c.method) is None for c in CORPUS)
    assert sum(1 for c in CORPUS if _expected(c)[0] == 400) > 20
    assert sum(1 for c in CORPUS if _expected(c)[0] != 400) > 20


def test_model_canonicaliser_is_idempotent_and_never_widens():
    """The Python model this suite judges by: canonical(canonical(p)) == canonical(p), and a
    canonical path leaves a normalising upstream nothing to normalise (what it serves is the
    path the route was chosen on)."""
    for c in CORPUS:
        path, _ = split_target(c.target.encode("latin1"))
        canon = canonical_path(path)
        if canon is None:
            continue
        assert canonical_path(canon) == canon, c.target
        decoded = unquote_to_bytes(canon).decode("utf-8")
        assert lenient_resource("GET", decoded)[1] == decoded, c.target


# --------------------------------------------------------------------------------------------
# Opt-in: allow_in_path
# --------------------------------------------------------------------------------------------

OPT_IN_ROUTES = """\
  - { route: "ANY /files/{path+}", upstream: products, authorizer: none,
      allow_in_path: [encoded_slash, empty_segments, semicolon] }
"""


@pytest.fixture(scope="module")
def opt_in_gateway(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("attack-paths-optin")
    nginx = up.Nginx(workdir, "normalising", up.NORMALISING_SERVER)
    key = workdir / "state" / "issuer.pem"
    up.write_signing_key(key)
    try:
        gw = up.start_gateway(
            workdir, "paths-optin",
            lambda port: gateway_config(port, nginx.port, workdir / "state", key, OPT_IN_ROUTES),
            "/status")
    except BaseException:
        nginx.stop()
        raise
    yield PathGateway(gw, "nginx", nginx)
    try:
        tollgate_process.stop(gw)
    finally:
        nginx.stop()


OPT_IN_FORWARDED = [("/files/a%2fb", "/files/a%2Fb"), ("/files//x", "/files//x"),
                    ("/files/a;v=1/b", "/files/a;v=1/b"), ("/files/a%3bb", "/files/a%3Bb"),
                    ("/files/%61%2Fb", "/files/a%2Fb")]
OPT_IN_STILL_REFUSED = ["/files/../products/1", "/files/a/%2e%2e/x", "/files/a%00", "/files/%c0%af",
                        "/files/a%0a", "/public/a%2fb", "/public//a", "/public/a;b"]


@pytest.mark.parametrize("target,canonical", OPT_IN_FORWARDED)
def test_allow_in_path_opt_in_forwards(opt_in_gateway, target, canonical):
    resp = opt_in_gateway.send("GET", target, None)
    served = opt_in_gateway.served(resp)
    assert served is not None, f"GET {target} on an opted-in route: {_describe(resp)}"
    assert served[2] == canonical, f"GET {target} reached the upstream as {served[2]!r}"


@pytest.mark.parametrize("target", OPT_IN_STILL_REFUSED)
def test_allow_in_path_never_allows_dots_controls_bad_utf8_or_other_routes(opt_in_gateway, target):
    resp = opt_in_gateway.send("GET", target, None)
    served = opt_in_gateway.served(resp)
    assert served is None, f"GET {target} was forwarded (received {served[2]!r})"
    assert _is_bad_request(resp), f"GET {target}: expected 400, got {_describe(resp)}"


def test_allow_in_path_config(tmp_path):
    base = gateway_config(8080, 9001, tmp_path / "state", tmp_path / "state" / "issuer.pem")
    ok = base.replace("defaults:\n", "defaults:\n  allow_in_path: [semicolon]\n")
    rc, out = up.check_config(tmp_path, "defaults-optin", ok)
    assert rc == 0, f"`defaults: allow_in_path: [semicolon]` refused:\n{out}"
    for bad in ["dot_segments", "control_bytes", "bad_utf8", "anything"]:
        cfg = base.replace("defaults:\n", f"defaults:\n  allow_in_path: [{bad}]\n")
        rc, out = up.check_config(tmp_path, f"bad-{bad}", cfg)
        assert rc == 1 and "allow_in_path" in out, (
            f"`allow_in_path: [{bad}]` must be a config error naming allow_in_path; "
            f"got {rc}:\n{out}")
