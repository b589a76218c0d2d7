"""`tollgate import aws` end to end: the real binary imports the REST and the HTTP API fixtures
(tests/fixtures/aws) with their usage plans, API keys and user pool, then serves the result
in front of a real upstream (wsgiref). Each imported route answers as the managed gateway
would: mocks with their fixed answer, proxies with the upstream's, scope refusals (403), key
refusals (403), resource-policy refusals (403) and missing credentials (401), CORS preflights.
Tokens come from the embedded issuer that replaced the user pool, with the pool's client ids.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

import tollgate_process
import upstreams as up

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "aws"

# The fixtures' app clients (user-pool-client-*.json) and keys (api-keys.json).
READER = ("4k8q2n7r1s5t9v3w6x0y2z4a6b", "inventory-sync")
WRITER = ("7c1d3e5f7g9h1j3k5l7m9n1p3q", "partner-writer")
SECRETS = {"TOLLGATE_CLIENT_SECRET_INVENTORY_SYNC": "reader-secret-for-the-test",
           "TOLLGATE_CLIENT_SECRET_PARTNER_WRITER": "writer-secret-for-the-test",
           "TOLLGATE_SIGV4_SECRET_SIGV4": "sigv4-secret-for-the-test"}
ACME_KEY = "Vq7Zr2XhLp4Tn8Wc1Ks6Yb3Fd9Gm5Jt0Ae2Ru8Ho"  # in plan PetStore-Basic
DISABLED_KEY = "Tb6Nw1Qe9Rk4Zs7Vh2Cm5Xj8Pd3Lf0Ya6Go1Uu4I"  # initech-legacy, enabled: false
UNUSED_KEY = "Ld2Fh7Jk4Mn9Pq1Rs6Tv3Wx8Yz0Ab5Cd2Ef7Gh4J"  # in no plan: not imported

ALLOWED_IP = "203.0.113.9"  # in the policy's allowed ranges
DENIED_DELETE_IP = "198.51.100.7"  # allowed, but denied DELETE on /pets/* by the REST policy
ACCOUNT = ["--usage-plans", "usage-plans.json", "--api-keys", "api-keys.json",
           "--usage-plan-keys", "usage-plan-keys-9k2pq7.json",
           "--usage-plan-keys", "usage-plan-keys-u3v4w5.json",
           "--resource-servers", "resource-servers.json",
           "--user-pool-client", "user-pool-client-inventory-sync.json",
           "--user-pool-client", "user-pool-client-partner-writer.json"]


def _import(workdir: Path, args: list[str]) -> tuple[str, str]:
    out, report = workdir / "imported.yaml", workdir / "report.txt"
    r = subprocess.run([str(tollgate_process.binary()), "import", "aws", *args, "-o", str(out),
                        "--report", str(report)], cwd=FIXTURES, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return out.read_text(), report.read_text()


def _config(workdir: Path, export: str, port: int, echo: int, rewrites: list[str]) -> str:
    """The import with this port and upstream, plus what a test run needs: the admin on a free
    port and the test client (127.0.0.1) trusted to say the caller's address."""
    args = [export, *ACCOUNT, "--listen", f"127.0.0.1:{port}",
            "--issuer-url", f"http://127.0.0.1:{port}"]
    for origin in rewrites:
        args += ["--upstream", f"{origin}=http://127.0.0.1:{echo}"]
    text, _ = _import(workdir, args)
    return text + "admin:\n  bind: 127.0.0.1:0\nclient_ip:\n  trusted_proxies: [127.0.0.1]\n"


@pytest.fixture(scope="module")
def echo():
    e = up.WsgiEcho()
    yield e
    e.stop()


def _serve(tmp_path_factory, echo, name: str, export: str, rewrites: list[str]):
    workdir = tmp_path_factory.mktemp(name)
    env = {**os.environ, **SECRETS}
    os.environ.update(SECRETS)  # for the `tollgate check` start_gateway runs first
    gw = up.start_gateway(workdir, name, lambda p: _config(workdir, export, p, echo.port, rewrites),
                          "/.well-known/openid-configuration", env=env)
    return gw


@pytest.fixture(scope="module")
def rest(tmp_path_factory, echo):
    gw = _serve(tmp_path_factory, echo, "import-rest", "rest-petstore-oas30.json",
                ["http://petstore-demo-endpoint.execute-api.com"])
    yield gw
    tollgate_process.stop(gw, secrets=(ACME_KEY, *SECRETS.values()))


@pytest.fixture(scope="module")
def http_api(tmp_path_factory, echo):
    gw = _serve(tmp_path_factory, echo, "import-http", "http-api-oas30.json",
                ["https://petstore-demo-endpoint.execute-api.com", "https://legacy.example.com",
                 "https://fallback.example.com"])
    yield gw
    tollgate_process.stop(gw, secrets=tuple(SECRETS.values()))


def _token(gw, client: tuple[str, str], scope: str | None = None) -> str:
    secret = SECRETS["TOLLGATE_CLIENT_SECRET_" + client[1].upper().replace("-", "_")]
    return up.mint_token(gw.base_url, client[0], secret, scope)


def _call(gw, method: str, path: str, token: str | None = None, key: str | None = None,
          ip: str | None = ALLOWED_IP, **headers) -> requests.Response:
    h = dict(headers)
    if token:
        h["Authorization"] = f"Bearer {token}"
    if key:
        h["x-api-key"] = key
    if ip:
        h["X-Forwarded-For"] = ip
    return requests.request(method, gw.base_url + path, headers=h, timeout=10)


def test_the_rest_mock_answers_its_fixed_page(rest):
    r = _call(rest, "GET", "/prod")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html"
    assert "Welcome to your Pet Store API" in r.text


def test_a_rest_proxy_route_needs_the_scope_and_a_key_of_a_plan(rest):
    token = _token(rest, READER, "petstore/read")
    r = _call(rest, "GET", "/prod/pets", token, ACME_KEY)
    assert r.status_code == 200, r.text
    seen = r.json()
    # The integration URI's prefix (/petstore) comes from the upstream; the stage is stripped.
    assert seen["PATH_INFO"] == "/petstore/pets"
    assert seen["HTTP_X_TOLLGATE_STAGE"] == "prod"
    assert _call(rest, "GET", "/prod/pets", token).status_code == 403  # no key
    assert _call(rest, "GET", "/prod/pets", token, DISABLED_KEY).status_code == 403
    assert _call(rest, "GET", "/prod/pets", token, UNUSED_KEY).status_code == 403
    assert _call(rest, "GET", "/prod/pets", None, ACME_KEY).status_code == 401


def test_a_rest_route_refuses_a_token_without_its_scope(rest):
    reader = _token(rest, READER)
    r = _call(rest, "POST", "/prod/pets", reader)
    assert r.status_code == 403, r.text
    writer = _token(rest, WRITER, "petstore/write")
    r = _call(rest, "POST", "/prod/pets", writer)
    assert r.status_code == 200, r.text
    assert r.json()["REQUEST_METHOD"] == "POST"


def test_the_resource_policy_refuses_before_any_credential_is_looked_at(rest):
    token = _token(rest, READER, "petstore/read")
    # 127.0.0.1 itself is outside the policy's ranges.
    assert _call(rest, "GET", "/prod/pets", token, ACME_KEY, ip=None).status_code == 403
    assert _call(rest, "GET", "/prod/pets", token, ACME_KEY, ip="192.0.2.1").status_code == 403
    # The DELETE-only deny: refused from that range, asked for a token from the others.
    assert _call(rest, "DELETE", "/prod/pets/7", ip=DENIED_DELETE_IP).status_code == 403
    assert _call(rest, "DELETE", "/prod/pets/7").status_code == 401
    assert _call(rest, "GET", "/prod", ip=DENIED_DELETE_IP).status_code == 200


def test_untranslatable_integrations_answer_501_behind_their_checks(rest):
    # The Lambda fallback route is open on the managed gateway: here it says it is not migrated.
    r = _call(rest, "GET", "/prod/anything/else")
    assert r.status_code == 501, r.text
    assert "not migrated" in r.json()["message"]
    # The SQS integration keeps its IAM check: unsigned requests are refused first.
    assert _call(rest, "POST", "/prod/orders").status_code in (401, 403)


def test_the_rest_preflight_mocks_became_cors(rest):
    r = _call(rest, "OPTIONS", "/prod/pets", Origin="https://shop.example",
              **{"Access-Control-Request-Method": "GET"})
    assert r.status_code in (200, 204), r.text
    assert r.headers["access-control-allow-origin"] == "*"


def test_http_api_routes_default_route_and_greedy_proxy(http_api):
    r = _call(http_api, "GET", "/some/legacy/page")
    assert r.status_code == 200, r.text
    assert r.json()["PATH_INFO"] == "/some/legacy/page"
    # `$default` takes the root, which `ANY /{proxy+}` does not... unless it matches: either
    # way the request reaches an upstream the export named.
    assert _call(http_api, "GET", "/").status_code == 200


def test_http_api_jwt_routes_with_the_pools_tokens(http_api):
    assert _call(http_api, "GET", "/pets").status_code == 401
    assert _call(http_api, "GET", "/pets", "not-a-token").status_code == 401
    reader = _token(http_api, READER)
    r = _call(http_api, "GET", "/pets", reader)
    assert r.status_code == 200, r.text
    assert r.json()["PATH_INFO"] == "/petstore/pets"
    assert _call(http_api, "DELETE", "/pets/3", reader).status_code == 403
    writer = _token(http_api, WRITER)
    assert _call(http_api, "DELETE", "/pets/3", writer).status_code == 200


def test_http_api_cors_allows_only_the_listed_origins(http_api):
    pre = {"Access-Control-Request-Method": "POST"}
    ok = _call(http_api, "OPTIONS", "/pets", Origin="https://app.example.com", **pre)
    assert ok.status_code in (200, 204), ok.text
    assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
    assert ok.headers.get("access-control-allow-credentials") == "true"
    other = _call(http_api, "OPTIONS", "/pets", Origin="https://evil.example", **pre)
    assert "access-control-allow-origin" not in other.headers


def test_http_api_iam_and_lambda_authorizers_refuse_without_credentials(http_api):
    assert _call(http_api, "GET", "/admin/users").status_code in (401, 403)
    # The Lambda REQUEST authorizer's identity sources are missing: 401 before it is asked.
    assert _call(http_api, "GET", "/pets/3").status_code == 401
