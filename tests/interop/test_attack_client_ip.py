"""Attack suite, hole 3 of issue 14: one non-ASCII byte in `X-Forwarded-For` defeated IP policies.

nginx is the trusted front proxy (`proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for`,
so it appends the address it saw to whatever the client wrote); tollgate trusts only it
(`client_ip: { trusted_proxies: [127.0.0.1/32] }`). The client connects to nginx from another
loopback address, 127.0.0.2, so the line tollgate gets ends with `127.0.0.2`. Before the fix a
client writing `X-Forwarded-For: \\xff` made tollgate drop the whole line, the address nginx
appended included, and take nginx (127.0.0.1) for the client: a deny list holding 127.0.0.2 and an
allow list holding only the proxy's network both fell.

The design under test: entries are parsed on the raw bytes, each bad entry is one bad entry, and
the walk from the right stops at the first untrusted address, here always nginx's 127.0.0.2.
Also: a `Forwarded` header from behind the trusted proxy is replaced by one consistent with
`x-forwarded-for` (its `for=` is the client IP), and `X-Real-IP`, if present at all, is the client
IP the gateway determined.
"""

from __future__ import annotations

import re

import pytest
import tollgate_process
import upstreams as up

CLIENT = "127.0.0.2"  # the address the client connects to nginx from
PROXY = "127.0.0.1"   # nginx's address towards tollgate


def _config(port: int, echo_port: int) -> str:
    return f"""\
listeners:
  - bind: 127.0.0.1:{port}
admin: {{ bind: 127.0.0.1:0 }}
limits: {{ header_timeout: 5s }}
client_ip: {{ trusted_proxies: [{PROXY}/32] }}
policies:
  deny-client: {{ deny: [{CLIENT}/32] }}
  proxy-net-only: {{ allow: [{PROXY}/32] }}
  client-only: {{ allow: [{CLIENT}/32] }}
upstreams:
  echo: {{ targets: [http://127.0.0.1:{echo_port}], timeout: 5s }}
routes:
  - {{ route: "GET /ping", respond: {{ status: 200, body: pong }} }}
  - {{ route: "GET /denied", policy: deny-client,
      respond: {{ status: 200, body: '{{"served":"denied"}}' }} }}
  - {{ route: "GET /proxy-only", policy: proxy-net-only,
      respond: {{ status: 200, body: '{{"served":"proxy-only"}}' }} }}
  - {{ route: "GET /client-only", policy: client-only, upstream: echo }}
"""


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("attack-client-ip")
    echo = up.WsgiEcho()
    try:
        gw = up.start_gateway(workdir, "client-ip", lambda p: _config(p, echo.port), "/ping")
    except BaseException:
        echo.stop()
        raise
    try:
        gw_port = int(gw.base_url.rsplit(":", 1)[1])
        nginx = up.Nginx(workdir, "front", up.front_proxy_server(gw_port))
    except BaseException:
        tollgate_process.stop(gw)
        echo.stop()
        raise
    yield nginx, gw, echo
    try:
        nginx.stop()
        tollgate_process.stop(gw)
    finally:
        echo.stop()


def _via_nginx(nginx: up.Nginx, path: str, headers) -> up.RawResponse:
    r = up.raw_request(nginx.port, "GET", path, headers, source=CLIENT)
    assert r is not None, f"nginx closed the connection for {path}"
    return r


BAD_ENTRIES = {
    "0xff": b"\xff",
    "garbage": b"garbage",
    "addr-then-0xfe": b"1.2.3.4, \xfe",
    "overlong": b"9" * 4000,
    "0xff-0xfe-then-trusted": b"\xff\xfe, 127.0.0.1",
    "unknown": b"unknown",
    "addr-with-0xff": b"198.51.100.7\xff",
    "zone-id": b"fe80::1%eth0",
    "many-bad": b"\xff, garbage, 1.2.3.4:99999, [::1, \x80\x81",
}
GOOD_ENTRIES = {"none": None, "an-address": b"203.0.113.9", "a-trusted-one": PROXY.encode()}


@pytest.mark.parametrize("xff", list(BAD_ENTRIES.values()) + list(GOOD_ENTRIES.values()),
                         ids=list(BAD_ENTRIES) + [f"good-{k}" for k in GOOD_ENTRIES])
def test_client_ip_behind_trusted_nginx_is_the_address_nginx_appended(front, xff):
    nginx, _, _ = front
    headers = [] if xff is None else [("X-Forwarded-For", xff)]
    problems = []
    r = _via_nginx(nginx, "/denied", headers)
    if r.status != 403:
        problems.append(f"LEAK: the route denying {CLIENT}/32 answered {r.status} {r.body!r}: "
                        f"the client was not judged as {CLIENT}")
    r = _via_nginx(nginx, "/proxy-only", headers)
    if r.status != 403:
        problems.append(f"LEAK: the route allowing only the proxy's {PROXY}/32 answered "
                        f"{r.status} {r.body!r}: the proxy was taken for the client")
    r = _via_nginx(nginx, "/client-only", headers)
    if r.status != 200:
        problems.append(f"the route allowing only {CLIENT}/32 answered {r.status} {r.body!r}")
    elif r.header("x-served-by") == "wsgiref":
        xff_up = r.json().get("HTTP_X_FORWARDED_FOR", "")
        last = xff_up.split(",")[-1].strip()
        if last != CLIENT:
            problems.append(f"the upstream's x-forwarded-for ends with {last!r}, not the client "
                            f"IP {CLIENT} ({xff_up[:120]!r})")
    assert not problems, (f"X-Forwarded-For: {xff[:60] if xff else None!r}\n  "
                          + "\n  ".join(problems))


def _for_values(forwarded: str) -> list[str]:
    return [m.strip('"').strip("[]") for m in re.findall(r'(?i)for=("[^"]*"|[^;,\s]+)', forwarded)]


def test_forwarded_and_x_real_ip_from_behind_the_proxy(front):
    """The client writes `Forwarded: for=6.6.6.6` and `X-Real-IP: 6.6.6.6`; nginx passes them on.
    The upstream gets a `Forwarded` (if any) whose `for=` is the client IP and that names no
    address missing from `x-forwarded-for`, and an `X-Real-IP` (if any) equal to the client IP."""
    nginx, _, _ = front
    r = _via_nginx(nginx, "/client-only", [("Forwarded", "for=6.6.6.6;proto=https;host=evil"),
                                           ("X-Real-IP", "6.6.6.6")])
    assert r.status == 200 and r.header("x-served-by") == "wsgiref", r
    env = r.json()
    problems = []
    xff = [e.strip() for e in env.get("HTTP_X_FORWARDED_FOR", "").split(",") if e.strip()]
    fwd = env.get("HTTP_FORWARDED")
    if fwd is not None:
        fors = _for_values(fwd)
        if not fors or fors[-1] != CLIENT:
            problems.append(f"Forwarded reached the upstream as {fwd!r}: its last for= is not the "
                            f"client IP {CLIENT}")
        stray = [f for f in fors if f not in xff]
        if stray:
            problems.append(f"Forwarded names {stray}, which x-forwarded-for {xff} does not: "
                            f"the client's own Forwarded went through")
    real = env.get("HTTP_X_REAL_IP")
    if real is not None and real != CLIENT:
        problems.append(f"X-Real-IP reached the upstream as {real!r}, not the client IP {CLIENT}")
    assert not problems, "\n  ".join(problems)
