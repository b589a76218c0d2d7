"""Attack suite, hole 2 of issue 14: any `Upgrade` was spliced.

`Upgrade: h2c` on an open route opened a raw HTTP/2 connection to hypercorn behind the gateway,
on which `GET /admin/secret` with a forged `x-tollgate-principal` was served unrouted, unlogged
and unthrottled; `Upgrade: anything` did the same with raw HTTP/1.

The design under test: a route allows upgrades from `upgrades:` (default `[websocket]`; `[]`
allows none; `h2c` can never be allowed: a config error). A request asking for a protocol the
route does not allow is forwarded as an ordinary request without `Upgrade` (and `HTTP2-Settings`
is never forwarded), so the upstream never switches. An upstream that answers 101 anyway, or
whose 101 names another protocol than the one asked for, gets the client a 502. A real WebSocket
still works.
"""

from __future__ import annotations

import base64
import os

import h2.config
import h2.connection
import h2.events
import pytest
import tollgate_process
import upstreams as up

H2_SETTINGS = "AAMAAABkAARAAAAAAAIAAAAA"
SHORT_S = 1.5  # how long to listen for an answer that must not come


def _config(port: int, ports: dict[str, int], extra_routes: str = "") -> str:
    ups = "\n".join(f"  {name}: {{ targets: [http://127.0.0.1:{p}], timeout: 5s }}"
                    for name, p in ports.items())
    return f"""\
listeners:
  - bind: 127.0.0.1:{port}
admin: {{ bind: 127.0.0.1:0 }}
limits: {{ header_timeout: 5s }}
upstreams:
{ups}
routes:
  - {{ route: "GET /ping", respond: {{ status: 200, body: pong }} }}
  - {{ route: "ANY /open/{{p+}}", upstream: hyper }}
  - {{ route: "ANY /raw/{{p+}}", upstream: raw }}
  - {{ route: "ANY /always101/{{p+}}", upstream: always101 }}
  - {{ route: "ANY /other101/{{p+}}", upstream: other101 }}
  - {{ route: "ANY /ws/{{p+}}", upstream: ws }}
{extra_routes}"""


class Env:
    def __init__(self, gw, hyper, raw, always, other, ws):
        self.gw, self.hyper, self.raw, self.always, self.other, self.ws = (
            gw, hyper, raw, always, other, ws)
        self.port = int(gw.base_url.rsplit(":", 1)[1])
        self.sentinels = 0

    def sentinel(self) -> str:
        """A request through the gateway after an attack, so the upstream's log is known to hold
        everything the attack's connection could have made it serve before it."""
        self.sentinels += 1
        path = f"/open/__sentinel-{self.sentinels}"
        r = up.raw_request(self.port, "GET", path)
        assert r is not None and r.status == 200, f"sentinel {path}: {r!r}"
        self.hyper.wait_for(path)
        up.wait_access_log(self.gw, lambda a: a.get("path") == path,
                           f"the access-log line of {path}")
        return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("attack-upgrades")
    started = []
    try:
        hyper = up.Hypercorn(workdir)
        started.append(hyper)
        raw = up.Raw101Upstream("upgrade")
        started.append(raw)
        always = up.Raw101Upstream("always")
        started.append(always)
        other = up.Raw101Upstream("upgrade", answer_protocol="h2c")
        started.append(other)
        ws = up.WebSocketEcho()
        started.append(ws)
        ports = {"hyper": hyper.port, "raw": raw.port, "always101": always.port,
                 "other101": other.port, "ws": ws.port}
        gw = up.start_gateway(workdir, "upgrades", lambda p: _config(p, ports), "/ping")
    except BaseException:
        for s in started:
            s.stop()
        raise
    yield Env(gw, hyper, raw, always, other, ws)
    try:
        tollgate_process.stop(gw)
    finally:
        for s in started:
            s.stop()


def _ws_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def _h2_attack_bytes() -> tuple[h2.connection.H2Connection, bytes]:
    """The client's half of HTTP/2 after an h2c upgrade: preface, SETTINGS, and a HEADERS frame
    for GET /admin/secret with a forged identity (stream 3; stream 1 is the upgraded request)."""
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    conn.initiate_upgrade_connection()
    conn.send_headers(3, [(b":method", b"GET"), (b":scheme", b"http"),
                          (b":authority", b"127.0.0.1"), (b":path", b"/admin/secret"),
                          (b"x-tollgate-principal", b"admin")], end_stream=True)
    return conn, conn.data_to_send()


def test_h2c_upgrade_is_not_spliced(env):
    """The issue's reproduction against hypercorn: `Upgrade: h2c` on an open route, then HTTP/2
    on the same socket."""
    problems = []
    c = up.Conn(env.port)
    try:
        c.send(up.build_request("GET", "/open/x", [
            ("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"),
            ("HTTP2-Settings", H2_SETTINGS)], close=False))
        resp = c.read_response()
        if resp is None:
            problems.append("the gateway closed the connection without answering")
        elif resp.status == 101:
            problems.append(f"the client got 101 Switching Protocols "
                            f"(upgrade: {resp.header('upgrade')!r}): the connection was spliced")
        conn, attack = _h2_attack_bytes()
        try:
            c.send(attack)
        except OSError:
            pass
        after = c.buf + c.read_until_close(timeout=SHORT_S)
        if resp is not None and resp.status == 101 and after:
            try:
                for ev in conn.receive_data(after):
                    if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == 3:
                        problems.append(f"the client got an HTTP/2 answer for /admin/secret: "
                                        f"{dict(ev.headers).get(b':status')!r}")
            except Exception:  # noqa: BLE001 - the bytes need not be HTTP/2 at all
                pass
    finally:
        c.close()
    env.sentinel()
    log = env.hyper.requests()
    first = [r for r in log if r["path"] == "/open/x"]
    if not first:
        problems.append("hypercorn never got /open/x as an ordinary request")
    for r in first:
        names = {k for k, _ in r["headers"]}
        if "upgrade" in names or "http2-settings" in names:
            hop = sorted(names & {"upgrade", "http2-settings"})
            problems.append(f"hypercorn got /open/x with {hop}")
    secret = [r for r in log if r["path"] == "/admin/secret"]
    if secret:
        principal = [v for k, v in secret[0]["headers"] if k == "x-tollgate-principal"]
        problems.append(f"LEAK: hypercorn served /admin/secret over HTTP/"
                        f"{secret[0]['http_version']} with x-tollgate-principal {principal}, "
                        f"never routed by the gateway")
    h2_served = [f"{r['method']} {r['path']}" for r in log if r["http_version"] == "2"]
    if h2_served:
        problems.append(f"hypercorn served HTTP/2 requests the gateway never made: {h2_served}")
    unlogged = [r["path"] for r in log if r["path"] != "/__ready"
                and not any(a.get("path") == r["path"] for a in up.access_log(env.gw))]
    if unlogged:
        problems.append(f"served without an access-log line: {unlogged}")
    assert not problems, "Upgrade: h2c\n  " + "\n  ".join(problems)


def _second_request_on(c: up.Conn) -> bytes:
    try:
        c.send(b"GET /admin/secret HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"X-Tollgate-Principal: admin\r\nConnection: close\r\n\r\n")
    except OSError:
        return b""
    return c.buf + c.read_until_close(timeout=SHORT_S)


def _after_101(upstream: up.Raw101Upstream) -> list[dict]:
    return [r for r in upstream.requests() if r["phase"] == "after-101"]


def test_upgrade_anything_is_not_spliced(env):
    """`Upgrade: anything` on an open route to an upstream that switches whenever asked: the
    request reaches it without `Upgrade`, the client never gets a 101, and a raw HTTP/1 request
    written next on the socket is the gateway's to route, not the upstream's to serve."""
    problems = []
    before = len(env.raw.requests())
    c = up.Conn(env.port)
    try:
        c.send(up.build_request("GET", "/raw/x", [("Upgrade", "anything"),
                                                  ("Connection", "Upgrade")], close=False))
        resp = c.read_response()
        if resp is not None and resp.status == 101:
            problems.append(f"the client got 101 (upgrade: {resp.header('upgrade')!r})")
        rest = _second_request_on(c)
        if b"SPLICED-SECRET" in rest:
            problems.append("LEAK: the raw GET /admin/secret written after it was served by the "
                            "upstream through the splice")
    finally:
        c.close()
    firsts = [r for r in env.raw.requests()[before:] if r["phase"] == "first"]
    for r in firsts:
        if "upgrade" in r["headers"]:
            problems.append(f"the upstream got Upgrade: {r['headers']['upgrade']}")
    if _after_101(env.raw):
        problems.append(f"the upstream served after its 101: "
                        f"{[r['method'] + ' ' + r['target'] for r in _after_101(env.raw)]}")
    assert not problems, "Upgrade: anything\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("upgrade", [None, "anything", "h2c"])
def test_upstream_101_without_an_allowed_upgrade_is_502(env, upgrade):
    """An upstream that answers 101 to a request that (after the gateway's filtering) does not ask
    to switch, or to an h2c/other upgrade the route does not allow: the client gets 502.
    (`websocket`, allowed by default, is passed: see test_websocket_through_the_gateway.)"""
    headers = []
    if upgrade:
        headers = [("Upgrade", upgrade), ("Connection", "Upgrade")]
        if upgrade == "h2c":
            headers = [("Upgrade", "h2c"), ("Connection", "Upgrade, HTTP2-Settings"),
                       ("HTTP2-Settings", H2_SETTINGS)]
    before = len(_after_101(env.always))
    c = up.Conn(env.port)
    try:
        c.send(up.build_request("GET", f"/always101/{upgrade or 'plain'}", headers, close=False))
        resp = c.read_response()
        rest = _second_request_on(c)
    finally:
        c.close()
    spliced = _after_101(env.always)[before:]
    assert resp is not None and resp.status == 502, (
        f"Upgrade: {upgrade}: the upstream answered 101 and the client got "
        f"{resp and resp.status} (upgrade: {resp and resp.header('upgrade')!r}), not 502")
    assert b"SPLICED-SECRET" not in rest and not spliced, (
        f"Upgrade: {upgrade}: the upstream served {[r['target'] for r in spliced]} after its 101")


def test_101_naming_another_protocol_is_502(env):
    """A WebSocket handshake (allowed) answered `101` with `Upgrade: h2c`: 502, nothing spliced."""
    before = len(_after_101(env.other))
    c = up.Conn(env.port)
    try:
        c.send(up.build_request("GET", "/other101/x", [
            ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", _ws_key()),
            ("Sec-WebSocket-Version", "13")], close=False))
        resp = c.read_response()
        rest = _second_request_on(c)
    finally:
        c.close()
    spliced = _after_101(env.other)[before:]
    assert resp is not None and resp.status == 502, (
        f"asked for websocket, the upstream's 101 named h2c, and the client got "
        f"{resp and resp.status} (upgrade: {resp and resp.header('upgrade')!r}), not 502")
    assert b"SPLICED-SECRET" not in rest and not spliced, (
        f"the upstream served {[r['target'] for r in spliced]} after its 101 naming h2c")


def test_websocket_through_the_gateway(env):
    """A real WebSocket still works through the gateway."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{env.port}/ws/echo", open_timeout=5, close_timeout=2) as ws:
        ws.send("hello through tollgate")
        assert ws.recv(timeout=5) == "hello through tollgate"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"


def test_http2_settings_is_never_forwarded(env):
    """A WebSocket handshake that also carries `HTTP2-Settings` (named in `Connection`): the
    upgrade is allowed, `HTTP2-Settings` is not passed on."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{env.port}/ws/settings", open_timeout=5, close_timeout=2,
                 additional_headers={"HTTP2-Settings": H2_SETTINGS}) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
    hs = [h for h in env.ws.handshakes if h["path"] == "/ws/settings"]
    assert hs, "the WebSocket upstream saw no handshake"
    assert "http2-settings" not in hs[-1]["headers"], (
        f"HTTP2-Settings reached the upstream with a WebSocket handshake: "
        f"{hs[-1]['headers'].get('http2-settings')!r}")


# --------------------------------------------------------------------------------------------
# upgrades: per route
# --------------------------------------------------------------------------------------------

UPGRADES_ROUTES = """\
  - { route: "ANY /none/{p+}", upstream: raw, upgrades: [] }
  - { route: "ANY /explicit/{p+}", upstream: ws, upgrades: [websocket] }
"""


@pytest.fixture(scope="module")
def upgrades_env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("attack-upgrades-config")
    raw = up.Raw101Upstream("upgrade")
    ws = up.WebSocketEcho()
    hyper_port = up.free_port()  # never used by these tests' routes
    ports = {"hyper": hyper_port, "raw": raw.port, "always101": raw.port, "other101": raw.port,
             "ws": ws.port}
    try:
        gw = up.start_gateway(workdir, "upgrades-config",
                              lambda p: _config(p, ports, UPGRADES_ROUTES), "/ping")
    except BaseException:
        raw.stop()
        ws.stop()
        raise
    yield gw, raw, ws
    try:
        tollgate_process.stop(gw)
    finally:
        raw.stop()
        ws.stop()


def test_route_with_no_upgrades_forwards_a_plain_request(upgrades_env):
    gw, raw, _ = upgrades_env
    port = int(gw.base_url.rsplit(":", 1)[1])
    before = len(raw.requests())
    resp = up.raw_request(port, "GET", "/none/x", [
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", _ws_key()),
        ("Sec-WebSocket-Version", "13")])
    got = raw.requests()[before:]
    assert resp is not None and resp.status != 101, (
        f"`upgrades: []` route: the client got {resp and resp.status}")
    assert got and "upgrade" not in got[0]["headers"], (
        f"`upgrades: []` route: the upstream got {got and got[0]['headers']}")


def test_route_with_websocket_upgrades_works(upgrades_env):
    from websockets.sync.client import connect

    gw, _, _ = upgrades_env
    port = int(gw.base_url.rsplit(":", 1)[1])
    with connect(f"ws://127.0.0.1:{port}/explicit/echo", open_timeout=5, close_timeout=2) as ws:
        ws.send("explicit")
        assert ws.recv(timeout=5) == "explicit"


def test_h2c_can_never_be_allowed(tmp_path):
    ports = {"hyper": 9001, "raw": 9002, "always101": 9003, "other101": 9004, "ws": 9005}
    ok = _config(8080, ports, UPGRADES_ROUTES)
    rc, out = up.check_config(tmp_path, "upgrades-ok", ok)
    assert rc == 0, f"`upgrades: []` / `upgrades: [websocket]` refused:\n{out}"
    bad = _config(8080, ports, '  - { route: "ANY /h2c/{p+}", upstream: raw, upgrades: [h2c] }\n')
    rc, out = up.check_config(tmp_path, "upgrades-h2c", bad)
    assert rc == 1 and "h2c" in out, f"`upgrades: [h2c]` must be a config error; got {rc}:\n{out}"
