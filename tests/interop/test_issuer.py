"""Interop suite for tollgate's embedded OAuth2 issuer (CONTRACT.md section 5).

Third-party clients nobody here wrote (requests-oauthlib/oauthlib, Authlib, PyJWT) talk to the
real `tollgate` binary running the shipped quick-start config (gateway.yaml). They fetch
client-credentials tokens with both client authentication methods, verify the tokens against
the published discovery document and JWKS, use them at the gateway, and read the issuer's
errors the way a standard library reads them.

Run: `scripts/test.sh`, or by hand after `cargo build`:
    .venv-interop/bin/python -m pytest -q tests/interop
The binary is taken from $TOLLGATE_BIN (default target/debug/tollgate, relative to the repo).

Note: the issuer throttles failed client authentications (10 per client IP per 5 minutes, then
`slow_down`). All requests here come from 127.0.0.1 to one gateway process per session, so the
suite keeps its wrong-credential requests well below that (see BAD_AUTH_BUDGET).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import parse_qs

import jwt
import pytest
import tollgate_process
from tollgate_process import REPO_ROOT
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from oauthlib.oauth2 import BackendApplicationClient
from oauthlib.oauth2.rfc6749.errors import InvalidClientError, InvalidScopeError
from requests_oauthlib import OAuth2Session as OAuthlibSession

# oauthlib refuses plain http unless told otherwise; the gateway under test listens on loopback.
os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
HTTP_TIMEOUT_S = 10.0

READ = "product-api/read_product"
CREATE = "product-api/create_product"
DELETE = "product-api/delete_product"

# The clients of the shipped gateway.yaml: id -> (secret, scopes in config order).
CLIENTS = {
    "inventory-service": ("demo-inventory-secret", [READ, CREATE, DELETE]),
    "catalog-reader": ("demo-reader-secret", [READ]),
}
ALL_CLIENTS = list(CLIENTS)
TOKEN_TTL_S = 3600  # issuer.token_ttl: 1h
# Wrong-credential requests this suite may make in one session (the issuer allows 10 per IP).
BAD_AUTH_BUDGET = 8


# --------------------------------------------------------------------------------------------
# The gateway process
# --------------------------------------------------------------------------------------------


class Gateway(tollgate_process.Gateway):
    def __init__(self, proc, base_url, stderr_path):
        super().__init__(proc, base_url, stderr_path)
        self.bad_auth_requests = 0

    @property
    def token_url(self) -> str:
        return self.base_url + "/oauth2/token"

    def spend_bad_auth(self) -> None:
        """Counts one deliberately failed client authentication (see BAD_AUTH_BUDGET)."""
        self.bad_auth_requests += 1
        assert self.bad_auth_requests <= BAD_AUTH_BUDGET, (
            "the suite would trip the issuer's failed-authentication throttle; raise the "
            "budget only if the issuer's limit allows it"
        )


def _substitute(text: str, pattern: str, replacement: str) -> str:
    """Replaces exactly one match of `pattern` (multiline), or fails loudly: if the shipped
    gateway.yaml changes shape, this fixture must be updated rather than silently test a
    different config."""
    new, n = re.subn(pattern, lambda _m: replacement, text, flags=re.MULTILINE)
    if n != 1:
        raise AssertionError(
            f"expected exactly one match of {pattern!r} in gateway.yaml, found {n}"
        )
    return new


def _config_for(shipped: str, port: int, state_dir: Path) -> str:
    cfg = shipped
    cfg = _substitute(cfg, r"(?<=bind: )127\.0\.0\.1:8080\b", f"127.0.0.1:{port}")
    cfg = _substitute(cfg, r"(?<=bind: )127\.0\.0\.1:9901\b", "127.0.0.1:0")
    # The issuer URL is both the `iss` of tokens and the base of the discovery document, so it
    # must be the exact address clients use: hence a port picked up front, not port 0.
    cfg = _substitute(cfg, r"(?<=^  url: )\S+$", f"http://127.0.0.1:{port}")
    cfg = _substitute(
        cfg,
        r"^state:.*$",
        "state: { backend: memory, path: " + json.dumps(str(state_dir)) + " }",
    )
    return cfg


@pytest.fixture(scope="session")
def gateway(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tollgate")
    shipped = (REPO_ROOT / "gateway.yaml").read_text()
    gw = tollgate_process.start(
        workdir,
        "issuer",
        lambda port: _config_for(shipped, port, workdir / "state"),
        "/.well-known/openid-configuration",
        gateway_class=Gateway,
    )
    yield gw
    # Client secrets never reach the logs.
    tollgate_process.stop(gw, secrets=tuple(secret for secret, _ in CLIENTS.values()))


# --------------------------------------------------------------------------------------------
# Discovery and keys
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def discovery(gateway):
    r = requests.get(gateway.base_url + "/.well-known/openid-configuration", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


@pytest.fixture(scope="session")
def token_url(discovery):
    """The token endpoint as a client learns it: from discovery (asserted in test_discovery)."""
    return discovery["token_endpoint"]


@pytest.fixture(scope="session")
def jwks_client(discovery):
    return jwt.PyJWKClient(discovery["jwks_uri"], cache_keys=True, timeout=HTTP_TIMEOUT_S)


@pytest.fixture(scope="session")
def published_kids(discovery):
    r = requests.get(discovery["jwks_uri"], timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    keys = r.json()["keys"]
    assert keys, "the JWKS publishes no key"
    return {k["kid"] for k in keys}


def test_discovery(gateway, discovery):
    base = gateway.base_url
    assert discovery["issuer"] == base
    assert discovery["token_endpoint"] == base + "/oauth2/token"
    assert discovery["jwks_uri"] == base + "/.well-known/jwks.json"
    assert "client_credentials" in discovery["grant_types_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        discovery["token_endpoint_auth_methods_supported"]
    )
    assert {READ, CREATE, DELETE} <= set(discovery["scopes_supported"])
    # RFC 8414 metadata at its own well-known path: the same document.
    r = requests.get(base + "/.well-known/oauth-authorization-server", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    assert r.json() == discovery


def test_jwks_keys_are_rs256_signing_keys(jwks_client):
    keys = jwks_client.get_signing_keys()
    assert keys
    for k in keys:
        assert k.key_type == "RSA"
        assert k.key_id
        assert k.algorithm_name in (None, "RS256")


# --------------------------------------------------------------------------------------------
# Token verification with PyJWT
# --------------------------------------------------------------------------------------------


def verify(access_token: str, client_id: str, scopes: list[str], *, gateway, jwks_client, published_kids) -> dict:
    """Verifies a token as a third-party resource server would, and checks its claims.
    `scopes` is the exact, ordered scope list expected in the `scope` claim."""
    header = jwt.get_unverified_header(access_token)
    assert header["alg"] == "RS256"
    assert header.get("kid") in published_kids, (header, published_kids)
    signing_key = jwks_client.get_signing_key_from_jwt(access_token)
    claims = jwt.decode(
        access_token,
        signing_key.key,
        algorithms=["RS256"],
        issuer=gateway.base_url,
        options={"require": ["exp", "iat", "iss", "sub"]},
    )
    assert claims["sub"] == client_id
    assert claims["client_id"] == client_id
    assert claims["token_use"] == "access"
    assert claims["version"] == 2
    assert isinstance(claims.get("jti"), str) and claims["jti"]
    assert isinstance(claims.get("auth_time"), int)
    assert claims["exp"] - claims["iat"] == TOKEN_TTL_S
    assert abs(claims["iat"] - time.time()) < 60
    assert claims["scope"] == " ".join(scopes)
    return claims


@pytest.fixture
def check(gateway, jwks_client, published_kids):
    def _check(access_token, client_id, scopes):
        return verify(
            access_token,
            client_id,
            scopes,
            gateway=gateway,
            jwks_client=jwks_client,
            published_kids=published_kids,
        )

    return _check


def _recorder(session):
    """Records every response the library's session receives (to see what it actually sent)."""
    seen = []
    session.hooks["response"].append(lambda r, *a, **k: seen.append(r))
    return seen


def _form(request) -> dict:
    body = request.body or ""
    if isinstance(body, bytes):
        body = body.decode()
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _basic(request):
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Basic "):
        return None
    return base64.b64decode(auth[6:]).decode()


def _assert_token_response(resp):
    assert resp.status_code == 200, resp.text
    # RFC 6749 5.1: responses carrying tokens MUST NOT be cached.
    assert "no-store" in resp.headers.get("cache-control", "")
    assert resp.headers["content-type"].startswith("application/json")


@pytest.fixture(scope="session")
def tokens(gateway, token_url):
    """One token per client (Authlib, client_secret_basic, all scopes) for the gateway tests."""
    out = {}
    for client_id, (secret, _) in CLIENTS.items():
        s = AuthlibSession(client_id, secret, token_endpoint_auth_method="client_secret_basic")
        out[client_id] = s.fetch_token(token_url, grant_type="client_credentials")["access_token"]
    return out


def test_verification_rejects_tampered_and_foreign_tokens(gateway, tokens, check, jwks_client):
    """The verification above is not vacuous: a token whose payload was changed, or checked
    against another issuer, is refused by PyJWT."""
    good = tokens["catalog-reader"]
    check(good, "catalog-reader", [READ])
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = " ".join([READ, CREATE, DELETE])
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = ".".join([head, forged_payload, sig])
    key = jwks_client.get_signing_key_from_jwt(good).key
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, key, algorithms=["RS256"], issuer=gateway.base_url)
    with pytest.raises(jwt.InvalidIssuerError):
        jwt.decode(good, key, algorithms=["RS256"], issuer="http://localhost:8080")


# --------------------------------------------------------------------------------------------
# requests-oauthlib (oauthlib's BackendApplicationClient = client-credentials grant)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_id", ALL_CLIENTS)
def test_requests_oauthlib_basic_auth(client_id, token_url, check):
    secret, scopes = CLIENTS[client_id]
    session = OAuthlibSession(client=BackendApplicationClient(client_id=client_id))
    seen = _recorder(session)
    token = session.fetch_token(token_url, client_id=client_id, client_secret=secret)

    (resp,) = seen
    _assert_token_response(resp)
    assert _basic(resp.request) == f"{client_id}:{secret}"  # the library's default: Basic
    assert "client_secret" not in _form(resp.request)
    assert _form(resp.request)["grant_type"] == "client_credentials"
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == TOKEN_TTL_S
    check(token["access_token"], client_id, scopes)


@pytest.mark.parametrize("client_id", ALL_CLIENTS)
def test_requests_oauthlib_credentials_in_form(client_id, token_url, check):
    secret, scopes = CLIENTS[client_id]
    session = OAuthlibSession(client=BackendApplicationClient(client_id=client_id))
    seen = _recorder(session)
    token = session.fetch_token(
        token_url, client_id=client_id, client_secret=secret, include_client_id=True
    )

    (resp,) = seen
    _assert_token_response(resp)
    assert "Authorization" not in resp.request.headers
    form = _form(resp.request)
    assert (form["client_id"], form["client_secret"]) == (client_id, secret)
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == TOKEN_TTL_S
    check(token["access_token"], client_id, scopes)


def test_requests_oauthlib_scope_subset(token_url, check):
    secret, _ = CLIENTS["inventory-service"]
    client = BackendApplicationClient(client_id="inventory-service", scope=[READ])
    session = OAuthlibSession(client=client)
    seen = _recorder(session)
    token = session.fetch_token(token_url, client_id="inventory-service", client_secret=secret)
    (resp,) = seen
    _assert_token_response(resp)
    assert _form(resp.request)["scope"] == READ
    check(token["access_token"], "inventory-service", [READ])


def test_requests_oauthlib_session_calls_the_gateway(gateway, token_url):
    """The library's own session attaches the token it fetched; the gateway accepts it."""
    secret, _ = CLIENTS["catalog-reader"]
    session = OAuthlibSession(client=BackendApplicationClient(client_id="catalog-reader"))
    session.fetch_token(token_url, client_id="catalog-reader", client_secret=secret)
    r = session.get(gateway.base_url + "/products", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 200, r.text
    assert r.request.headers["Authorization"].startswith("Bearer ")


# --------------------------------------------------------------------------------------------
# Authlib
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
@pytest.mark.parametrize(
    "client_id,scope",
    [
        ("inventory-service", None),
        ("inventory-service", READ),
        ("inventory-service", f"{DELETE} {READ}"),
        ("catalog-reader", None),
        ("catalog-reader", READ),
    ],
)
def test_authlib(method, client_id, scope, token_url, check):
    secret, allowed = CLIENTS[client_id]
    kwargs = {} if scope is None else {"scope": scope}
    session = AuthlibSession(client_id, secret, token_endpoint_auth_method=method, **kwargs)
    seen = _recorder(session)
    token = session.fetch_token(token_url, grant_type="client_credentials")

    (resp,) = seen
    _assert_token_response(resp)
    form = _form(resp.request)
    assert form["grant_type"] == "client_credentials"
    if method == "client_secret_basic":
        assert _basic(resp.request) == f"{client_id}:{secret}"
        assert "client_secret" not in form
    else:
        assert "Authorization" not in resp.request.headers
        assert (form["client_id"], form["client_secret"]) == (client_id, secret)
    if scope is None:
        assert "scope" not in form
    else:
        assert form["scope"] == scope

    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == TOKEN_TTL_S
    # No scope asked: every scope the client is allowed; else exactly the scopes asked.
    expected = allowed if scope is None else scope.split()
    check(token["access_token"], client_id, expected)


def test_authlib_session_calls_the_gateway(gateway, token_url):
    secret, _ = CLIENTS["inventory-service"]
    session = AuthlibSession(
        "inventory-service", secret, token_endpoint_auth_method="client_secret_post"
    )
    session.fetch_token(token_url, grant_type="client_credentials")
    r = session.post(gateway.base_url + "/products", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 201, r.text
    assert r.json() == {"id": 2, "name": "gadget"}


def test_tokens_are_distinct(token_url, check):
    """Two tokens for the same client differ (jti is unique)."""
    secret, scopes = CLIENTS["catalog-reader"]
    jtis = set()
    for _ in range(2):
        s = AuthlibSession("catalog-reader", secret)
        tok = s.fetch_token(token_url, grant_type="client_credentials")["access_token"]
        jtis.add(check(tok, "catalog-reader", scopes)["jti"])
    assert len(jtis) == 2


# --------------------------------------------------------------------------------------------
# The tokens at the gateway
# --------------------------------------------------------------------------------------------


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("client_id", ALL_CLIENTS)
def test_gateway_accepts_token_for_read(client_id, gateway, tokens):
    r = requests.get(
        gateway.base_url + "/products", headers=_bearer(tokens[client_id]), timeout=HTTP_TIMEOUT_S
    )
    assert r.status_code == 200, r.text
    assert r.json() == [{"id": 1, "name": "widget"}]


def test_gateway_delete_with_delete_scope(gateway, tokens):
    r = requests.delete(
        gateway.base_url + "/products/1",
        headers=_bearer(tokens["inventory-service"]),
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 204, r.text


def test_gateway_delete_with_read_only_token_is_insufficient_scope(gateway, tokens):
    r = requests.delete(
        gateway.base_url + "/products/1",
        headers=_bearer(tokens["catalog-reader"]),
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 403, r.text
    assert "insufficient_scope" in r.headers.get("www-authenticate", "")


def test_gateway_without_token_is_401(gateway):
    r = requests.get(gateway.base_url + "/products", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")


def test_gateway_rejects_tampered_token(gateway, tokens):
    head, payload, sig = tokens["inventory-service"].split(".")
    sig = ("A" if sig[0] != "A" else "B") + sig[1:]
    r = requests.get(
        gateway.base_url + "/products",
        headers=_bearer(".".join([head, payload, sig])),
        timeout=HTTP_TIMEOUT_S,
    )
    assert r.status_code == 401, r.text
    assert "invalid_token" in r.headers.get("www-authenticate", "")


# --------------------------------------------------------------------------------------------
# Errors, as the libraries see them
# --------------------------------------------------------------------------------------------


def test_requests_oauthlib_wrong_secret_basic(gateway, token_url):
    gateway.spend_bad_auth()
    session = OAuthlibSession(client=BackendApplicationClient(client_id="catalog-reader"))
    seen = _recorder(session)
    with pytest.raises(InvalidClientError):
        session.fetch_token(token_url, client_id="catalog-reader", client_secret="wrong")
    (resp,) = seen
    assert resp.status_code == 401
    # RFC 6749 5.2: Basic was used, so 401 with a WWW-Authenticate for that scheme.
    assert resp.headers.get("www-authenticate", "").lower().startswith("basic")
    assert resp.json()["error"] == "invalid_client"


def test_requests_oauthlib_wrong_secret_form(gateway, token_url):
    gateway.spend_bad_auth()
    session = OAuthlibSession(client=BackendApplicationClient(client_id="catalog-reader"))
    seen = _recorder(session)
    with pytest.raises(InvalidClientError):
        session.fetch_token(
            token_url, client_id="catalog-reader", client_secret="wrong", include_client_id=True
        )
    (resp,) = seen
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_wrong_secret(method, gateway, token_url):
    gateway.spend_bad_auth()
    session = AuthlibSession("inventory-service", "wrong", token_endpoint_auth_method=method)
    with pytest.raises(OAuthError) as e:
        session.fetch_token(token_url, grant_type="client_credentials")
    assert e.value.error == "invalid_client"


def test_authlib_unknown_client(gateway, token_url):
    gateway.spend_bad_auth()
    session = AuthlibSession("no-such-client", "whatever")
    with pytest.raises(OAuthError) as e:
        session.fetch_token(token_url, grant_type="client_credentials")
    assert e.value.error == "invalid_client"


def test_requests_oauthlib_scope_not_allowed(token_url):
    secret, _ = CLIENTS["catalog-reader"]
    # oauthlib's BackendApplicationClient puts its own `scope` in the token request (the
    # session's `scope` argument is only used to compare against the response).
    session = OAuthlibSession(
        client=BackendApplicationClient(client_id="catalog-reader", scope=[DELETE])
    )
    seen = _recorder(session)
    with pytest.raises(InvalidScopeError) as e:
        session.fetch_token(token_url, client_id="catalog-reader", client_secret=secret)
    assert e.value.error == "invalid_scope"
    (resp,) = seen
    assert _form(resp.request)["scope"] == DELETE
    assert resp.status_code == 400


@pytest.mark.parametrize(
    "scope",
    [DELETE, f"{READ} {DELETE}", "product-api/no_such_scope"],
    ids=["not-allowed", "one-of-two-not-allowed", "unknown"],
)
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_scope_not_allowed(scope, method, token_url):
    secret, _ = CLIENTS["catalog-reader"]
    session = AuthlibSession(
        "catalog-reader", secret, token_endpoint_auth_method=method, scope=scope
    )
    with pytest.raises(OAuthError) as e:
        session.fetch_token(token_url, grant_type="client_credentials")
    assert e.value.error == "invalid_scope"


def test_unsupported_grant_type(token_url):
    secret, _ = CLIENTS["catalog-reader"]
    session = AuthlibSession("catalog-reader", secret)
    with pytest.raises(OAuthError) as e:
        session.fetch_token(token_url, grant_type="password", username="u", password="p")
    assert e.value.error == "unsupported_grant_type"
