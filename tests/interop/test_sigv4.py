"""Interop suite for tollgate's SigV4 authorizer (`type: sigv4`).

The AWS SDK for Python's own signer (botocore's `SigV4Auth`, service execute-api, us-east-1)
signs requests built with `botocore.awsrequest.AWSRequest`; `requests` sends them, byte for
byte as botocore prepared them, to the real `tollgate` binary running a SigV4 config. Covered:
GET with a query string (given as params and already in the URL), POST with a body, a path and
query full of unusual characters, a session token; and the refusals: unsigned 401, wrong secret,
unknown key, stale date, tampered body and a missing scope 403.

Run: `scripts/test.sh`, or by hand after `cargo build`:
    .venv-interop/bin/python -m pytest -q tests/interop/test_sigv4.py
The binary is taken from $TOLLGATE_BIN (default target/debug/tollgate, relative to the repo).
"""

from __future__ import annotations

import datetime
import json

import botocore.auth
import pytest
import requests
import tollgate_process
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


HTTP_TIMEOUT_S = 10.0

REGION = "us-east-1"
SERVICE = "execute-api"
ACCESS_KEY_ID = "AKIDEXAMPLE"
SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
# The secret reaches tollgate through the environment (`secret_access_key: { env: ... }`).
SECRET_ENV = "TOLLGATE_INTEROP_SIGV4_SECRET"
READ = "orders/read"
DELETE = "orders/delete"
OK_BODY = '{"ok":true}'
# How far past tollgate's 5-minute clock-skew window the stale request is dated.
STALE_BY = datetime.timedelta(minutes=10)


def _config(port: int) -> str:
    """The gateway config: one SigV4 authorizer, mock routes, an open /ping for readiness."""
    ok = f"respond: {{ status: 200, body: '{OK_BODY}' }}"
    return f"""\
listeners:
  - bind: 127.0.0.1:{port}
admin: {{ bind: 127.0.0.1:0 }}

authorizers:
  iam:
    type: sigv4
    region: {REGION}
    service: {SERVICE}
    credentials:
      - access_key_id: {ACCESS_KEY_ID}
        secret_access_key: {{ env: {SECRET_ENV} }}
        scopes: [{READ}]

routes:
  - {{ route: "GET /ping", authorizer: none, respond: {{ status: 200, body: pong }} }}
  - {{ route: "GET /orders", authorizer: iam, scopes: [{READ}], {ok} }}
  - {{ route: "POST /orders", authorizer: iam, scopes: [{READ}], {ok} }}
  - {{ route: "DELETE /orders", authorizer: iam, scopes: [{DELETE}], {ok} }}
  - {{ route: "ANY /files/{{proxy+}}", authorizer: iam, {ok} }}
"""


# --------------------------------------------------------------------------------------------
# The gateway process (the approach of test_issuer.py)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tollgate-sigv4")
    gw = tollgate_process.start(
        workdir, "sigv4", _config, "/ping", env={SECRET_ENV: SECRET_ACCESS_KEY}
    )
    yield gw
    # The secret never reaches the logs.
    tollgate_process.stop(gw, secrets=(SECRET_ACCESS_KEY,))


# --------------------------------------------------------------------------------------------
# Signing with botocore, sending with requests
# --------------------------------------------------------------------------------------------

CREDENTIALS = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)


def botocore_signed(
    gateway,
    method: str,
    path: str,
    *,
    params=None,
    data: bytes | None = None,
    headers: dict | None = None,
    credentials: Credentials = CREDENTIALS,
):
    """An AWSRequest for `path` on the gateway, signed by botocore's SigV4Auth and prepared
    (botocore's final URL, headers and body)."""
    request = AWSRequest(
        method=method,
        url=gateway.base_url + path,
        params=params or {},
        data=data,
        headers=headers or {},
    )
    SigV4Auth(credentials, SERVICE, REGION).add_auth(request)
    return request.prepare()


def send(prepared, *, body: bytes | None = None) -> requests.Response:
    """Sends botocore's prepared request with `requests`, keeping its URL exactly (requests
    would otherwise re-quote it); `body` replaces the signed body (tampering)."""
    outgoing = requests.Request(
        prepared.method,
        prepared.url,
        headers=dict(prepared.headers.items()),
        data=prepared.body if body is None else body,
    ).prepare()
    outgoing.url = prepared.url
    with requests.Session() as s:
        s.trust_env = False
        return s.send(outgoing, timeout=HTTP_TIMEOUT_S)


def assert_ok(r: requests.Response) -> None:
    assert r.status_code == 200, (r.status_code, r.headers, r.text)
    assert r.text == OK_BODY


# --------------------------------------------------------------------------------------------
# Accepted
# --------------------------------------------------------------------------------------------


def test_get_with_query_params(gateway):
    prepared = botocore_signed(
        gateway, "GET", "/orders", params=[("status", "open"), ("limit", "10"), ("a", "1")]
    )
    assert "?status=open&limit=10&a=1" in prepared.url
    assert prepared.headers["Authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/"
    )
    assert_ok(send(prepared))


def test_get_with_the_query_already_in_the_url(gateway):
    # No params: botocore signs the URL's own (already encoded) query string.
    prepared = botocore_signed(gateway, "GET", "/orders?status=open&b=2&a=x%20y")
    assert_ok(send(prepared))


def test_post_with_a_body(gateway):
    body = json.dumps({"item": "book", "qty": 2, "note": "café ✓"}).encode()
    prepared = botocore_signed(
        gateway, "POST", "/orders", data=body, headers={"Content-Type": "application/json"}
    )
    assert "content-type" in prepared.headers["Authorization"]
    assert_ok(send(prepared))


def test_unusual_characters_in_path_and_query(gateway):
    # The path goes out percent-encoded once (botocore signs it encoded twice, as AWS does for
    # every service but S3); the params are signed AWS-encoded and sent form-encoded.
    path = "/files/a%20b/c%2Bd/100%25/caf%C3%A9/%E2%9C%93/x%3Dy/~tilde"
    params = [
        ("q", "a b"),
        ("plus", "1+1=2"),
        ("pct", "100%"),
        ("u", "café ✓"),
        ("eq", "a=b=c"),
        ("empty", ""),
        ("rep", "2"),
        ("rep", "1"),
        ("rep", "10"),
        ("tilde", "~x"),
        ("sl", "a/b"),
        ("✓", "key"),
    ]
    prepared = botocore_signed(gateway, "GET", path, params=params)
    assert path in prepared.url
    assert_ok(send(prepared))
    # And a body-carrying method on the same odd path.
    prepared = botocore_signed(gateway, "PUT", path, params=params, data="ünïcödé + % =".encode())
    assert_ok(send(prepared))


def test_session_token_is_signed(gateway):
    creds = Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY, "session/token+with=chars")
    prepared = botocore_signed(
        gateway, "GET", "/orders", params={"status": "open"}, credentials=creds
    )
    assert prepared.headers["X-Amz-Security-Token"] == "session/token+with=chars"
    assert "x-amz-security-token" in prepared.headers["Authorization"]
    assert_ok(send(prepared))


# --------------------------------------------------------------------------------------------
# Refused
# --------------------------------------------------------------------------------------------


def test_unsigned_is_401(gateway):
    r = requests.get(gateway.base_url + "/orders", timeout=HTTP_TIMEOUT_S)
    assert r.status_code == 401, (r.headers, r.text)


def test_wrong_secret_is_403(gateway):
    creds = Credentials(ACCESS_KEY_ID, "not-the-secret")
    r = send(botocore_signed(gateway, "GET", "/orders", credentials=creds))
    assert r.status_code == 403, (r.headers, r.text)


def test_unknown_key_is_403(gateway):
    creds = Credentials("AKIDNOTCONFIGURED", SECRET_ACCESS_KEY)
    r = send(botocore_signed(gateway, "GET", "/orders", credentials=creds))
    assert r.status_code == 403, (r.headers, r.text)


def test_stale_date_is_403(gateway, monkeypatch):
    stale = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - STALE_BY
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: stale)
    prepared = botocore_signed(gateway, "GET", "/orders")
    assert prepared.headers["X-Amz-Date"] == stale.strftime("%Y%m%dT%H%M%SZ")
    r = send(prepared)
    assert r.status_code == 403, (r.headers, r.text)


def test_tampered_body_is_403(gateway):
    prepared = botocore_signed(
        gateway,
        "POST",
        "/orders",
        data=b'{"qty":2}',
        headers={"Content-Type": "application/json"},
    )
    r = send(prepared, body=b'{"qty":200}')
    assert r.status_code == 403, (r.headers, r.text)


def test_tampered_query_is_403(gateway):
    prepared = botocore_signed(gateway, "GET", "/orders", params={"status": "open"})
    prepared.url = prepared.url.replace("status=open", "status=shut")
    r = send(prepared)
    assert r.status_code == 403, (r.headers, r.text)


def test_missing_scope_is_403(gateway):
    # The key holds orders/read; DELETE /orders needs orders/delete.
    r = send(botocore_signed(gateway, "DELETE", "/orders"))
    assert r.status_code == 403, (r.headers, r.text)
