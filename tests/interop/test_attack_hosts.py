"""Attack suite for host-selected APIs (issue 16): can a client reach an API its host does not
select, or make the upstream read another host than the one the gateway decided on?

The real binary serves two APIs: `admin` on `admin.example.test`, every route behind the local
JWT authorizer and the `product-api/admin` scope, forwarding to hypercorn (which logs every
request it gets); and `public` on `*.example.test`, open, forwarding to wsgiref (which echoes the
headers it got, folded the CGI way). The default API only answers `GET /ping`.

The design under test: the host is read from one place (the target's authority, else `Host`);
two `Host` headers, an authority and a `Host` that disagree, and a host that is not a name or IPv6
literal with a numeric port are 400; case, port and a trailing dot do not change the API; a
claimed host never falls through to another API. Whatever the spelling, hypercorn never sees an
unauthenticated request.
"""

from __future__ import annotations

import pytest
import tollgate_process
import upstreams as up

ADMIN = "product-api/admin"
CLIENT, SECRET = "ops-client", "attack-hosts-secret"
BAD_REQUEST = {"message": "Bad Request"}


def _config(port: int, admin_port: int, public_port: int, key_path, state_dir) -> str:
    return f"""\
listeners:
  - bind: 127.0.0.1:{port}
admin: {{ bind: 127.0.0.1:0 }}
state: {{ backend: memory, path: "{state_dir}" }}
issuer:
  url: http://127.0.0.1:{port}
  signing_key: "{key_path}"
  resource_servers:
    - {{ identifier: product-api, scopes: [admin] }}
  clients:
    - {{ client_id: {CLIENT}, client_secret: {SECRET}, scopes: [{ADMIN}] }}
authorizers:
  local: {{ type: jwt, issuer: self }}
upstreams:
  admin: {{ targets: [http://127.0.0.1:{admin_port}], timeout: 5s }}
  public: {{ targets: [http://127.0.0.1:{public_port}], timeout: 5s }}
apis:
  admin:
    hosts: [admin.example.test]
    stage: prod
    defaults: {{ authorizer: local, scopes: [{ADMIN}] }}
    routes:
      - {{ route: "ANY /{{p+}}", upstream: admin }}
  public:
    hosts: ["*.example.test"]
    routes:
      - {{ route: "ANY /{{p+}}", upstream: public }}
routes:
  - {{ route: "GET /ping", respond: {{ status: 200, body: pong }} }}
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("attack-hosts")
    admin = up.Hypercorn(workdir, "admin-upstream")
    public = up.WsgiEcho()
    key = workdir / "state" / "issuer.pem"
    up.write_signing_key(key)
    try:
        gw = up.start_gateway(
            workdir, "attack-hosts",
            lambda p: _config(p, admin.port, public.port, key, workdir / "state"), "/ping")
    except BaseException:
        admin.stop()
        public.stop()
        raise
    port = int(gw.base_url.rsplit(":", 1)[1])
    try:
        yield {"gw": gw, "port": port, "admin": admin, "public": public,
               "token": up.mint_token(gw.base_url, CLIENT, SECRET)}
    finally:
        try:
            tollgate_process.stop(gw, secrets=(SECRET,))
        finally:
            admin.stop()
            public.stop()


def _raw(env, data: bytes) -> up.RawResponse:
    c = up.Conn(env["port"])
    try:
        c.send(data)
        r = c.read_response()
        assert r is not None, f"closed without an answer to {data!r}"
        return r
    finally:
        c.close()


def _get(env, host: str, path: str = "/secrets", headers=()) -> up.RawResponse:
    r = up.raw_request(env["port"], "GET", path, headers, host=host)
    assert r is not None, f"closed without an answer for Host {host!r}"
    return r


def test_the_admin_api_needs_its_token_under_every_spelling_of_its_host(env):
    for host in ["admin.example.test", "ADMIN.Example.Test", "admin.example.test.",
                 "admin.example.test:8443", "Admin.Example.Test.:80"]:
        r = _get(env, host)
        assert r.status == 401, (host, r)
    r = _get(env, "Admin.Example.Test:443", headers=[("Authorization", f"Bearer {env['token']}")])
    assert r.status == 200, r
    assert r.header("x-served-by") == "hypercorn"
    seen = [r for r in env["admin"].wait_for("/secrets") if r["path"] != "/__ready"]
    assert len(seen) == 1, "only the authenticated request reached the admin upstream"
    headers = {k: v for k, v in seen[0]["headers"]}
    assert headers["x-tollgate-stage"] == "prod"
    assert headers["x-tollgate-client-id"] == CLIENT


@pytest.mark.parametrize("raw", [
    # Two Host headers: one checked, the other read by someone else.
    b"GET /secrets HTTP/1.1\r\nHost: www.example.test\r\nHost: admin.example.test\r\n"
    b"Connection: close\r\n\r\n",
    # The absolute-form target names one host, Host another.
    b"GET http://www.example.test/secrets HTTP/1.1\r\nHost: admin.example.test\r\n"
    b"Connection: close\r\n\r\n",
    b"GET http://admin.example.test/secrets HTTP/1.1\r\nHost: www.example.test\r\n"
    b"Connection: close\r\n\r\n",
    # Userinfo: a lax parser strips it and reads admin.example.test; the wildcard would match.
    b"GET /secrets HTTP/1.1\r\nHost: admin.example.test@www.example.test\r\nConnection: close\r\n\r\n",
    b"GET /secrets HTTP/1.1\r\nHost: www.example.test@admin.example.test\r\nConnection: close\r\n\r\n",
    # A port that is not a number, an escape, a NUL-free oddity, a comma list.
    b"GET /secrets HTTP/1.1\r\nHost: www.example.test:admin\r\nConnection: close\r\n\r\n",
    b"GET /secrets HTTP/1.1\r\nHost: admin%2eexample.test\r\nConnection: close\r\n\r\n",
    b"GET /secrets HTTP/1.1\r\nHost: www.example.test, admin.example.test\r\nConnection: close\r\n\r\n",
    b"GET /secrets HTTP/1.1\r\nHost: www.example.test/admin.example.test\r\nConnection: close\r\n\r\n",
])
def test_ambiguous_hosts_are_refused_before_any_upstream(env, raw):
    r = _raw(env, raw)
    assert r.status == 400, (raw, r)
    assert r.json() == BAD_REQUEST


def test_http2_authority_and_host_must_agree(env):
    r = up.h2_request(env["port"], "GET", "/secrets", [("host", "admin.example.test")],
                      authority="www.example.test")
    assert r.status == 400, r
    r = up.h2_request(env["port"], "GET", "/secrets", authority="admin.example.test")
    assert r.status == 401, r
    r = up.h2_request(env["port"], "GET", "/h2-public", authority="WWW.example.test:80")
    assert r.status == 200, r
    assert r.header("x-served-by") == "wsgiref"


def test_the_wildcard_api_gets_only_its_hosts_and_says_which_host_was_asked(env):
    r = _get(env, "shop.example.test", "/catalog")
    assert r.status == 200, r
    echoed = r.json()
    assert echoed["PATH_INFO"] == "/catalog"
    assert echoed["HTTP_X_FORWARDED_HOST"] == "shop.example.test"
    assert "HTTP_X_TOLLGATE_STAGE" not in echoed
    # The wildcard's apex and other domains are the default API's: only /ping there.
    for host in ["example.test", "admin.example.test.evil", "127.0.0.1"]:
        assert _get(env, host, "/catalog").status == 404, host
        assert _get(env, host, "/ping").status == 200, host


def test_nothing_unauthenticated_ever_reached_the_admin_upstream(env):
    # Runs last in this module: everything above was refused or served elsewhere.
    for record in env["admin"].requests():
        if record["path"] == "/__ready":  # hypercorn's own readiness probe, sent directly
            continue
        names = {k.lower() for k, _ in record["headers"]}
        assert "x-tollgate-client-id" in names, record
