"""Attack suite, hole 4 of issue 14 and the header findings of lower severity.

The upstream is `wsgiref.simple_server`, whose environ folds header names: `X_Tollgate_Principal`
and `X-Tollgate-Principal` both become `HTTP_X_TOLLGATE_PRINCIPAL` (two of them are joined with
`,`), the class of Puma's CVE-2024-45614. The app answers environ's `HTTP_*` keys as JSON.

The design under test:
- client headers whose names contain `_` are dropped by default; `headers: { allow_underscores:
  true }` lets them through, but never one that folds (`_` to `-`, any case) to an
  `x-tollgate-*` name;
- the identity headers the upstream sees are the gateway's: on a JWT route
  `HTTP_X_TOLLGATE_PRINCIPAL` is exactly the token's `sub`;
- a request carrying its credential (`Authorization`) or API-key header twice is 400, never
  forwarded;
- from a peer that is not a trusted proxy, a client's `Forwarded`, `X-Real-IP`, `X-Original-URL`,
  `X-Rewrite-URL` and `X-HTTP-Method-Override` never reach the upstream (an `X-Real-IP` or
  `Forwarded` the gateway writes itself must name the client IP it determined).
"""

from __future__ import annotations

import hashlib
import re
import time

import pytest
import tollgate_process
import upstreams as up

READ = "product-api/read_product"
READER, READER_SECRET = "catalog-reader", "demo-reader-secret"
API_KEYS = {"partner-a": "attack-suite-key-a", "partner-b": "attack-suite-key-b"}
UNTRUSTED = "127.0.0.3"  # the client's source address; only 127.0.0.1 is a trusted proxy
BAD_REQUEST = {"message": "Bad Request"}

SPOOFED_IDENTITY = [
    ("X_Tollgate_Principal", "admin"),
    ("x_tollgate_client_id", "evil-client"),
    ("X-Tollgate_Scopes", "product-api/admin"),
    ("X_TOLLGATE_AUTHORIZER", "local"),
    ("x-tollgate_api_key-id", "partner-a"),
    ("X_Tollgate-Ctx-Role", "root"),
]


def _config(port: int, echo_port: int, key_path, state_dir, extra: str = "") -> str:
    keys = "\n".join(
        f'    - {{ id: {kid}, key: "sha256:{hashlib.sha256(k.encode()).hexdigest()}", plan: gold }}'
        for kid, k in API_KEYS.items())
    return f"""\
listeners:
  - bind: 127.0.0.1:{port}
admin: {{ bind: 127.0.0.1:0 }}
state: {{ backend: memory, path: "{state_dir}" }}
limits: {{ header_timeout: 5s }}
client_ip: {{ trusted_proxies: [127.0.0.1/32] }}
{extra}
issuer:
  url: http://127.0.0.1:{port}
  signing_key: "{key_path}"
  resource_servers:
    - {{ identifier: product-api, scopes: [read_product, admin] }}
  clients:
    - {{ client_id: {READER}, client_secret: {READER_SECRET}, scopes: [{READ}] }}
authorizers:
  local: {{ type: jwt, issuer: self }}
usage_plans:
  gold: {{ throttle: {{ rate: 100000, burst: 100000 }} }}
api_keys:
  header: x-api-key
  keys:
{keys}
upstreams:
  echo: {{ targets: [http://127.0.0.1:{echo_port}], timeout: 5s }}
routes:
  - {{ route: "GET /ping", respond: {{ status: 200, body: pong }} }}
  - {{ route: "ANY /open/{{p+}}", upstream: echo }}
  - {{ route: "ANY /jwt/{{p+}}", upstream: echo, authorizer: local, scopes: [{READ}] }}
  - {{ route: "ANY /keyed/{{p+}}", upstream: echo, api_key_required: true }}
"""


class Env:
    def __init__(self, gw, echo):
        self.gw, self.echo = gw, echo
        self.port = int(gw.base_url.rsplit(":", 1)[1])
        self.token = up.mint_token(gw.base_url, READER, READER_SECRET)

    def get(self, path: str, headers, source: str = UNTRUSTED) -> up.RawResponse:
        r = up.raw_request(self.port, "GET", path, headers, source=source)
        assert r is not None, f"the gateway closed the connection for {path}"
        return r


def _start(tmp_path_factory, name: str, extra: str = ""):
    workdir = tmp_path_factory.mktemp(name)
    echo = up.WsgiEcho()
    key = workdir / "state" / "issuer.pem"
    up.write_signing_key(key)
    try:
        gw = up.start_gateway(workdir, name,
                              lambda p: _config(p, echo.port, key, workdir / "state", extra),
                              "/ping")
    except BaseException:
        echo.stop()
        raise
    return Env(gw, echo)


def _stop(env: Env) -> None:
    try:
        tollgate_process.stop(env.gw, secrets=(READER_SECRET, *API_KEYS.values()))
    finally:
        env.echo.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = _start(tmp_path_factory, "attack-headers")
    yield e
    _stop(e)


@pytest.fixture(scope="module")
def env_underscores(tmp_path_factory):
    e = _start(tmp_path_factory, "attack-headers-underscores",
               "headers: { allow_underscores: true }")
    yield e
    _stop(e)


def _echo(r: up.RawResponse) -> dict:
    assert r.header("x-served-by") == "wsgiref", f"not answered by the upstream: {r!r}"
    return r.json()


def _tollgate_keys(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("HTTP_X_TOLLGATE_")}


def test_the_wsgi_upstream_folds_underscores(env):
    """The upstream is the vulnerable kind: asked directly, `X_Tollgate_Principal: admin` is its
    HTTP_X_TOLLGATE_PRINCIPAL. (Without this the tests below would prove nothing.)"""
    r = up.raw_request(env.echo.port, "GET", "/x", SPOOFED_IDENTITY[:1])
    assert _echo(r).get("HTTP_X_TOLLGATE_PRINCIPAL") == "admin"


def _check_identity(control: dict, spoofed: dict, where: str) -> None:
    c, s = _tollgate_keys(control), _tollgate_keys(spoofed)
    leaked = {k: v for k, v in s.items() if c.get(k) != v}
    assert not leaked, (f"{where}: identity headers the gateway did not set reached the WSGI app: "
                        f"{leaked} (the gateway itself set {c})")


def test_underscore_identity_headers_on_an_open_route(env):
    control = _echo(env.get("/open/who", []))
    spoofed = _echo(env.get("/open/who", SPOOFED_IDENTITY))
    _check_identity(control, spoofed, "open route")


def test_underscore_identity_headers_on_a_jwt_route(env):
    auth = [("Authorization", "Bearer " + env.token)]
    control = _echo(env.get("/jwt/who", auth))
    spoofed = _echo(env.get("/jwt/who", auth + SPOOFED_IDENTITY))
    assert spoofed.get("HTTP_X_TOLLGATE_PRINCIPAL") == READER, (
        f"HTTP_X_TOLLGATE_PRINCIPAL is {spoofed.get('HTTP_X_TOLLGATE_PRINCIPAL')!r}, the token's "
        f"sub is {READER!r}")
    assert spoofed.get("HTTP_X_TOLLGATE_SCOPES") == READ, spoofed.get("HTTP_X_TOLLGATE_SCOPES")
    assert spoofed.get("HTTP_X_TOLLGATE_CLIENT_ID") == READER, (
        spoofed.get("HTTP_X_TOLLGATE_CLIENT_ID"))
    _check_identity(control, spoofed, "JWT route")


def test_headers_with_underscores_are_dropped_by_default(env):
    spoofed = _echo(env.get("/open/x", [("X_Custom_Header", "1"), ("Another_One", "2"),
                                        ("X_Forwarded_For", "6.6.6.6"),
                                        ("X_Real_IP", "6.6.6.6")]))
    leaked = {k: spoofed[k] for k in ("HTTP_X_CUSTOM_HEADER", "HTTP_ANOTHER_ONE", "HTTP_X_REAL_IP")
              if k in spoofed}
    assert not leaked, f"headers with `_` in their names reached the upstream: {leaked}"
    xff = spoofed.get("HTTP_X_FORWARDED_FOR", "")
    assert xff.split(",")[-1].strip() == UNTRUSTED and "6.6.6.6" not in xff, (
        f"X_Forwarded_For folded into the upstream's x-forwarded-for: {xff!r}")


def test_allow_underscores_still_protects_identity_headers(env_underscores):
    e = env_underscores
    r = _echo(e.get("/open/x", [("X_Custom_Header", "1")]))
    assert r.get("HTTP_X_CUSTOM_HEADER") == "1", (
        f"`headers: {{ allow_underscores: true }}` did not let X_Custom_Header through: {r}")
    auth = [("Authorization", "Bearer " + e.token)]
    control = _echo(e.get("/jwt/who", auth))
    spoofed = _echo(e.get("/jwt/who", auth + SPOOFED_IDENTITY))
    assert spoofed.get("HTTP_X_TOLLGATE_PRINCIPAL") == READER, spoofed
    _check_identity(control, spoofed, "JWT route with allow_underscores")
    _check_identity(_echo(e.get("/open/who", [])), _echo(e.get("/open/who", SPOOFED_IDENTITY)),
                    "open route with allow_underscores")


def test_two_authorization_headers_are_400(env):
    forged = up.unsigned_token({"sub": "admin", "client_id": "admin", "token_use": "access",
                                "scope": "product-api/admin", "iss": env.gw.base_url,
                                "exp": int(time.time()) + 3600})
    for first, second in [(env.token, forged), (forged, env.token)]:
        r = env.get("/jwt/who", [("Authorization", "Bearer " + first),
                                 ("Authorization", "Bearer " + second)])
        assert r.header("x-served-by") is None, (
            f"two Authorization headers were forwarded; the upstream saw "
            f"HTTP_AUTHORIZATION={r.json().get('HTTP_AUTHORIZATION', '')[:40]!r}... (the second an "
            f"unsigned alg:none token for sub=admin)")
        assert r.status == 400 and r.json() == BAD_REQUEST, f"two Authorization headers: {r!r}"


def test_two_api_key_headers_are_400(env):
    a, b = API_KEYS["partner-a"], API_KEYS["partner-b"]
    for pair in [(a, b), (a, a), (a, "unknown-key")]:
        r = env.get("/keyed/x", [("x-api-key", pair[0]), ("x-api-key", pair[1])])
        assert r.header("x-served-by") is None, (
            f"two x-api-key headers were forwarded (upstream saw HTTP_X_API_KEY, "
            f"x-tollgate-api-key-id {r.json().get('HTTP_X_TOLLGATE_API_KEY_ID')!r})")
        assert r.status == 400 and r.json() == BAD_REQUEST, f"two x-api-key headers: {r!r}"
    r = env.get("/keyed/x", [("x-api-key", a)])
    assert r.status == 200, f"control: one API key: {r!r}"


def _for_values(forwarded: str) -> list[str]:
    return [m.strip('"').strip("[]") for m in re.findall(r'(?i)for=("[^"]*"|[^;,\s]+)', forwarded)]


def test_routing_headers_from_an_untrusted_peer_never_reach_the_upstream(env):
    sent = [("Forwarded", "for=6.6.6.6;proto=https;host=admin.internal"),
            ("X-Real-IP", "6.6.6.6"), ("X-Original-URL", "/admin/delete-everything"),
            ("X-Rewrite-URL", "/admin/delete-everything"), ("X-HTTP-Method-Override", "DELETE")]
    got = _echo(env.get("/open/x", sent))
    problems = []
    for key in ("HTTP_X_ORIGINAL_URL", "HTTP_X_REWRITE_URL", "HTTP_X_HTTP_METHOD_OVERRIDE"):
        if key in got:
            problems.append(f"{key}={got[key]!r} reached the upstream")
    real = got.get("HTTP_X_REAL_IP")
    if real is not None and real != UNTRUSTED:
        problems.append(f"HTTP_X_REAL_IP={real!r} reached the upstream (the client IP is "
                        f"{UNTRUSTED})")
    fwd = got.get("HTTP_FORWARDED")
    if fwd is not None and ("6.6.6.6" in fwd or _for_values(fwd)[-1:] != [UNTRUSTED]):
        problems.append(f"HTTP_FORWARDED={fwd!r} reached the upstream (the client IP is "
                        f"{UNTRUSTED})")
    assert not problems, "from an untrusted peer:\n  " + "\n  ".join(problems)
