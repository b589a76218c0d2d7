"""Tracing end to end (docs/configuration.md, "Telemetry"): the real binary exports its spans
over OTLP/HTTP to a receiver built on the official `opentelemetry-proto` schema (otlp.py), and
its upstream, instrumented by the official OpenTelemetry Python SDK, continues the trace.

Asserted for an admitted request, a scope refusal and a throttled one: the tree (client's parent
→ gateway server span → authorizer and upstream client spans → the upstream's own span), the
attributes, and that no token or key reaches a span. Also: an untrusted client's parent is not
continued, the sampling ratio holds within statistical bounds, X-Ray headers map to the same
trace, a reload changes the ratio, and a stalled or dead collector leaves requests unaffected
while the dropped spans are counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import math
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

import otlp
import tollgate_process as tp
import upstreams as up

CLIENT_ID, CLIENT_SECRET = "orders-client", "orders-secret-for-the-test"
API_KEY = "trace-test-api-key-0123456789"
SAMPLING_REQUESTS = 1600  # enough for a ±5σ band of about ±12% at ratio 0.25
SAMPLING_RATIO = 0.25


class Authorizer:
    """An external authorizer (`type: http`) that allows every caller and keeps the
    `traceparent` of each call."""

    def __init__(self):
        self.traceparents: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.traceparents.append(self.headers.get("traceparent"))
                body = json.dumps({"isAuthorized": True, "context": {"tier": "gold"}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _config(port: int, admin: int, collector: str, upstream: int, authorizer: int, *,
            tracing_extra: str = "", trusted: bool = True) -> str:
    trusted_block = "client_ip: { trusted_proxies: [127.0.0.1/32] }\n" if trusted else ""
    return f"""
listeners: [{{ bind: "127.0.0.1:{port}" }}]
admin: {{ bind: "127.0.0.1:{admin}" }}
{trusted_block}telemetry:
  tracing:
    endpoint: {collector}
    service_name: edge-gateway
    resource: {{ deployment.environment.name: interop }}
    headers: {{ x-collector-token: {{ env: TRACE_COLLECTOR_TOKEN }} }}
{tracing_extra}
issuer:
  url: http://127.0.0.1:{port}
  signing_key: issuer.pem
  resource_servers: [{{ identifier: orders, scopes: [read, write] }}]
  clients:
    - {{ client_id: {CLIENT_ID}, client_secret: {{ env: ORDERS_SECRET }}, scopes: [orders/read] }}
authorizers:
  local: {{ type: jwt, issuer: self }}
  ext: {{ type: http, url: "http://127.0.0.1:{authorizer}/authorize", identity: ["header:x-caller"], cache_ttl: 0s }}
usage_plans:
  tiny: {{ throttle: {{ rate: 1, burst: 1 }} }}
api_keys:
  header: x-api-key
  keys: [{{ id: partner-a, key: "sha256:{hashlib.sha256(API_KEY.encode()).hexdigest()}", plan: tiny }}]
upstreams:
  app: {{ targets: ["http://127.0.0.1:{upstream}"], timeout: 5s }}
routes:
  - {{ route: "GET /ready", respond: {{ body: ok }} }}
  - {{ route: "GET /orders/{{id}}", upstream: app, authorizer: ext }}
  - {{ route: "POST /orders", upstream: app, authorizer: local, scopes: [orders/write] }}
  - {{ route: "GET /limited", upstream: app, api_key_required: true }}
"""


ENV = {"ORDERS_SECRET": CLIENT_SECRET, "TRACE_COLLECTOR_TOKEN": "collector-token-42"}
# `tollgate check`, run before each start, reads the same secrets from the environment.
os.environ.update(ENV)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One gateway (parents believed from 127.0.0.1, X-Ray on) with its collector, its
    instrumented upstream and an external authorizer."""
    work = tmp_path_factory.mktemp("tracing")
    up.write_signing_key(work / "issuer.pem")
    receiver = otlp.OtlpReceiver()
    app = otlp.OtelWsgiUpstream(receiver)
    auth = Authorizer()
    admin = up.free_port()
    gw = up.start_gateway(
        work, "tracing",
        lambda port: _config(port, admin, receiver.url, app.port, auth.port,
                             tracing_extra="    xray: true\n"),
        "/ready", env=ENV)
    try:
        yield gw, receiver, app, auth, admin
    finally:
        tp.stop(gw, secrets=(CLIENT_SECRET, API_KEY))
        app.close()
        auth.close()
        receiver.close()


def _trace(receiver: otlp.OtlpReceiver, trace_id: str, pred, what: str) -> list[otlp.Span]:
    spans = receiver.wait_for(lambda all_: pred([s for s in all_ if s.trace_id == trace_id]),
                              what=what)
    return [s for s in spans if s.trace_id == trace_id]


def _one(spans: list[otlp.Span], **want) -> otlp.Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in want.items())]
    assert len(found) == 1, f"want one span with {want}, have {spans}"
    return found[0]


def _metric(admin: int, name: str, labels: str = "") -> float:
    """The sum of `name`'s samples whose labels contain `labels` (all of them when empty)."""
    text = requests.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == name or (series.startswith(name + "{") and labels in series):
            total += float(value)
    return total


def test_admitted_request_is_one_tree_from_the_client_to_the_upstream(stack):
    gw, receiver, app, auth, _ = stack
    trace_id, client_span = otlp.new_trace_id(), otlp.new_span_id()
    r = requests.get(gw.base_url + "/orders/42?secret-query=1",
                     headers={"traceparent": otlp.traceparent(trace_id, client_span),
                              "tracestate": "vendor=abc", "x-caller": "alice",
                              "user-agent": "trace-test/1"}, timeout=10)
    assert r.status_code == 200, r.text
    seen = r.json()
    # The upstream's traceparent continues the client's trace with the gateway's upstream span.
    up_trace, up_parent, flags = otlp.parse_traceparent(seen["headers"]["traceparent"])
    assert up_trace == trace_id and flags & 1 == 1
    assert seen["headers"]["tracestate"] == "vendor=abc"
    # With X-Ray on, the same ids in X-Ray's spelling.
    assert seen["headers"]["x-amzn-trace-id"] == (
        f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={up_parent};Sampled=1")
    # A continued trace may span several requests: the request id is not the trace id then.
    assert r.headers["x-request-id"] != trace_id and len(r.headers["x-request-id"]) == 36

    spans = _trace(receiver, trace_id, lambda s: len(s) >= 4, "gateway and upstream spans")
    server = _one(spans, kind="SERVER", service_name="edge-gateway")
    assert server.parent_span_id == client_span
    assert server.name == "GET /orders/{id}"
    assert server.trace_state == "vendor=abc"
    a = server.attributes
    assert a["http.request.method"] == "GET"
    assert a["http.route"] == "/orders/{id}"
    assert a["url.path"] == "/orders/42"
    assert a["http.response.status_code"] == 200
    assert a["client.address"] == "127.0.0.1"
    assert a["server.address"] == "127.0.0.1"
    assert a["user_agent.original"] == "trace-test/1"
    assert a["tollgate.authorizer"] == "ext"
    assert a["tollgate.api"] and "tollgate.deny_reason" not in a
    assert server.resource["service.name"] == "edge-gateway"
    assert server.resource["deployment.environment.name"] == "interop"
    assert server.status_code == "UNSET"

    authz = _one(spans, kind="CLIENT", name="authorizer ext")
    assert authz.parent_span_id == server.span_id
    assert auth.traceparents[-1] == otlp.traceparent(trace_id, authz.span_id)
    upstream = _one(spans, kind="CLIENT", name="upstream app")
    assert upstream.span_id == up_parent and upstream.parent_span_id == server.span_id
    assert upstream.attributes["http.response.status_code"] == 200
    assert upstream.attributes["url.full"] == f"http://127.0.0.1:{app.port}/orders/42"
    # The upstream's own span (the SDK's) hangs under the gateway's upstream span.
    theirs = _one(spans, service_name="upstream")
    assert theirs.kind == "SERVER" and theirs.parent_span_id == upstream.span_id
    assert theirs.span_id == seen["span"]["span_id"]
    for s in (authz, upstream):
        assert server.start_time_unix_nano <= s.start_time_unix_nano
        assert s.end_time_unix_nano <= server.end_time_unix_nano
    # The export carried the configured header, and the access line names the trace.
    assert any(q.headers.get("x-collector-token") == "collector-token-42"
               for q in receiver.requests())
    line = up.wait_access_log(gw, lambda rec: rec.get("fields", rec).get("trace_id") == trace_id,
                              "an access line with the trace id")
    assert line


def test_scope_refusal_is_a_span_with_its_reason(stack):
    gw, receiver, _, _, _ = stack
    token = up.mint_token(gw.base_url, CLIENT_ID, CLIENT_SECRET)
    trace_id = otlp.new_trace_id()
    r = requests.post(gw.base_url + "/orders", data=b"{}",
                      headers={"authorization": f"Bearer {token}",
                               "traceparent": otlp.traceparent(trace_id, otlp.new_span_id()),
                               "x-request-id": "client-chosen-id"}, timeout=10)
    assert r.status_code == 403
    # The client's request id is kept; the refusal names its trace in `traceresponse`.
    assert r.headers["x-request-id"] == "client-chosen-id"
    assert otlp.parse_traceparent(r.headers["traceresponse"])[0] == trace_id
    spans = _trace(receiver, trace_id, lambda s: len(s) >= 1, "the refused request's span")
    server = _one(spans, kind="SERVER")
    assert server.name == "POST /orders"
    assert server.attributes["tollgate.deny_reason"] == "insufficient_scope"
    assert server.attributes["tollgate.client_id"] == CLIENT_ID
    assert server.attributes["http.response.status_code"] == 403
    assert server.status_code == "UNSET"  # a 4xx is the client's failure, not the server's
    assert not [s for s in spans if s.kind == "CLIENT"], "a refused request reached the upstream"
    everything = json.dumps([s.attributes for s in receiver.spans()])
    assert token not in everything and token.split(".")[2] not in everything


def test_throttled_request_is_a_span_naming_the_key_not_the_secret(stack):
    gw, receiver, _, _, _ = stack
    ids = [otlp.new_trace_id() for _ in range(3)]
    statuses = [requests.get(gw.base_url + "/limited",
                             headers={"x-api-key": API_KEY,
                                      "traceparent": otlp.traceparent(t, otlp.new_span_id())},
                             timeout=10).status_code for t in ids]
    assert statuses[0] == 200 and 429 in statuses[1:], statuses
    refused = ids[statuses.index(429)]
    spans = _trace(receiver, refused, lambda s: len(s) >= 1, "the throttled request's span")
    server = _one(spans, kind="SERVER")
    assert server.attributes["tollgate.deny_reason"] == "throttled"
    assert server.attributes["tollgate.api_key_id"] == "partner-a"
    assert server.attributes["http.response.status_code"] == 429
    assert API_KEY not in json.dumps([s.attributes for s in receiver.spans()])


def test_unsampled_parent_is_followed_and_propagated(stack):
    gw, receiver, _, _, admin = stack
    trace_id = otlp.new_trace_id()
    r = requests.get(gw.base_url + "/orders/7",
                     headers={"traceparent": otlp.traceparent(trace_id, otlp.new_span_id(),
                                                              sampled=False),
                              "x-caller": "bob"}, timeout=10)
    assert r.status_code == 200
    got, _, flags = otlp.parse_traceparent(r.json()["headers"]["traceparent"])
    assert got == trace_id and flags & 1 == 0
    # A sampled request sent after it arrives; the unsampled one never does.
    marker = otlp.new_trace_id()
    requests.get(gw.base_url + "/orders/8", headers={"traceparent": otlp.traceparent(marker),
                                                     "x-caller": "bob"}, timeout=10)
    _trace(receiver, marker, lambda s: len(s) >= 3, "the later sampled trace")
    assert not [s for s in receiver.spans() if s.trace_id == trace_id and
                s.service_name == "edge-gateway"]
    assert _metric(admin, "tollgate_traces_total", 'sampled="false"') >= 1


def test_xray_header_alone_continues_the_trace(stack):
    gw, receiver, _, _, _ = stack
    trace_id, parent = otlp.new_trace_id(), otlp.new_span_id()
    r = requests.get(gw.base_url + "/orders/9",
                     headers={"x-amzn-trace-id":
                              f"Root=1-{trace_id[:8]}-{trace_id[8:]};Parent={parent};Sampled=1",
                              "x-caller": "carol"}, timeout=10)
    assert r.status_code == 200
    assert otlp.parse_traceparent(r.json()["headers"]["traceparent"])[0] == trace_id
    spans = _trace(receiver, trace_id, lambda s: any(x.service_name == "edge-gateway" for x in s),
                   "the gateway's span of the x-ray trace")
    assert _one(spans, kind="SERVER", service_name="edge-gateway").parent_span_id == parent


def test_untrusted_parents_are_ignored_sampling_holds_and_reload_changes_it(tmp_path):
    """No trusted proxies: a client's sampled traceparent starts a new trace, and the ratio
    alone decides. A reload to ratio 0 stops new traces without a restart."""
    up.write_signing_key(tmp_path / "issuer.pem")
    with otlp.OtlpReceiver() as receiver:
        app = otlp.OtelWsgiUpstream(receiver)
        auth = Authorizer()
        admin = up.free_port()
        ratio = {"value": SAMPLING_RATIO}
        cfg = lambda port: _config(port, admin, receiver.url, app.port, auth.port, trusted=False,  # noqa: E731
                                   tracing_extra=f"    sample_ratio: {ratio['value']}\n"
                                                 "    queue_size: 100000\n")
        gw = up.start_gateway(tmp_path, "sampling", cfg, "/ready", env=ENV)
        try:
            forged = otlp.new_trace_id()
            r = requests.get(gw.base_url + "/orders/1",
                             headers={"traceparent": otlp.traceparent(forged), "x-caller": "x"},
                             timeout=10)
            started = otlp.parse_traceparent(r.json()["headers"]["traceparent"])[0]
            assert started != forged
            # The gateway started this trace: its id is the request id.
            assert r.headers["x-request-id"] == started
            receiver.clear()
            before = _metric(admin, "tollgate_traces_total", 'sampled="true"')
            with requests.Session() as s:
                for _ in range(SAMPLING_REQUESTS):
                    assert s.get(gw.base_url + "/ready", timeout=10).status_code == 200
            sampled = _metric(admin, "tollgate_traces_total", 'sampled="true"') - before
            mean = SAMPLING_REQUESTS * SAMPLING_RATIO
            sd = math.sqrt(SAMPLING_REQUESTS * SAMPLING_RATIO * (1 - SAMPLING_RATIO))
            assert abs(sampled - mean) < 5 * sd, f"{sampled} sampled of {SAMPLING_REQUESTS}"
            # Every sampled request's span reaches the collector.
            receiver.wait_for(lambda sp: len([x for x in sp if x.name == "GET /ready"]) >= sampled,
                              timeout_s=15, what=f"{sampled} server spans")
            # Reload to 0: nothing more is sampled.
            ratio["value"] = 0.0
            port = int(gw.base_url.rsplit(":", 1)[1])
            for path in tmp_path.glob("sampling-[0-9].yaml"):
                path.write_text(cfg(port))
            assert requests.post(f"http://127.0.0.1:{admin}/reload", timeout=10).status_code == 200
            now = _metric(admin, "tollgate_traces_total", 'sampled="true"')
            for _ in range(50):
                requests.get(gw.base_url + "/ready", timeout=10)
            assert _metric(admin, "tollgate_traces_total", 'sampled="true"') == now
        finally:
            tp.stop(gw)
            app.close()
            auth.close()


@pytest.mark.parametrize("collector", ["stalled", "down"])
def test_a_stalled_or_dead_collector_costs_requests_nothing(tmp_path, collector):
    up.write_signing_key(tmp_path / "issuer.pem")
    receiver = otlp.OtlpReceiver(stall=True)
    endpoint = receiver.url if collector == "stalled" else f"http://127.0.0.1:{up.free_port()}"
    echo = up.WsgiEcho()
    auth = Authorizer()
    admin = up.free_port()
    gw = up.start_gateway(
        tmp_path, collector,
        lambda port: _config(port, admin, endpoint, echo.port, auth.port,
                             tracing_extra="    queue_size: 64\n    timeout: 1s\n"),
        "/ready", env=ENV)
    try:
        slowest = 0.0
        with requests.Session() as s:
            for i in range(400):
                t0 = time.monotonic()
                r = s.get(gw.base_url + f"/orders/{i}", headers={"x-caller": "d"}, timeout=10)
                slowest = max(slowest, time.monotonic() - t0)
                assert r.status_code == 200
        assert slowest < 1.0, f"a request took {slowest:.3f}s while the collector was {collector}"
        reason = "queue_full" if collector == "stalled" else "export_failed"
        up.wait_until(lambda: _metric(admin, "tollgate_trace_spans_dropped_total",
                                      f'reason="{reason}"') > 0,
                      10, f"spans dropped ({reason})")
        assert _metric(admin, "tollgate_trace_spans_exported_total") == 0
    finally:
        tp.stop(gw)
        echo.stop()
        auth.close()
        receiver.close()


def test_redis_limit_checks_are_child_spans(tmp_path):
    """With the Redis store, the throttle and quota checks of a keyed request are client spans
    under its server span (a real redis-server on a free port)."""
    redis_server = up.need_program("redis-server", "/usr/bin/redis-server")
    redis_port = up.free_port()
    redis = subprocess.Popen([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    up.write_signing_key(tmp_path / "issuer.pem")
    receiver = otlp.OtlpReceiver()
    echo = up.WsgiEcho()
    auth = Authorizer()
    admin = up.free_port()

    def cfg(port: int) -> str:
        text = _config(port, admin, receiver.url, echo.port, auth.port)
        text = text.replace("tiny: { throttle: { rate: 1, burst: 1 } }",
                            "tiny: { throttle: { rate: 100, burst: 100 }, quota: { limit: 1000, period: day } }")
        return text + f"state: {{ backend: redis, url: \"redis://127.0.0.1:{redis_port}\" }}\n"

    try:
        up.wait_until(lambda: _redis_answers(redis_port), 10, "redis-server to answer")
        gw = up.start_gateway(tmp_path, "redis", cfg, "/ready", env=ENV)
        try:
            trace_id = otlp.new_trace_id()
            r = requests.get(gw.base_url + "/limited",
                             headers={"x-api-key": API_KEY,
                                      "traceparent": otlp.traceparent(trace_id, otlp.new_span_id())},
                             timeout=10)
            assert r.status_code == 200, r.text
            spans = _trace(receiver, trace_id, lambda s: len(s) >= 4, "server, redis and upstream spans")
            server = _one(spans, kind="SERVER")
            for name, limit in (("redis throttle", "throttle"), ("redis quota", "quota")):
                span = _one(spans, name=name)
                assert span.kind == "CLIENT" and span.parent_span_id == server.span_id
                assert span.attributes["db.system.name"] == "redis"
                assert span.attributes["tollgate.limit"] == limit
            _one(spans, name="upstream app")
        finally:
            tp.stop(gw)
    finally:
        redis.terminate()
        redis.wait(timeout=10)
        echo.stop()
        auth.close()
        receiver.close()


def _redis_answers(port: int) -> bool:
    import socket  # noqa: PLC0415

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def test_spans_of_the_last_requests_are_sent_at_shutdown(tmp_path):
    """SIGTERM right after a request: its spans still reach the collector before the exit."""
    up.write_signing_key(tmp_path / "issuer.pem")
    receiver = otlp.OtlpReceiver()
    echo = up.WsgiEcho()
    auth = Authorizer()
    admin = up.free_port()
    gw = up.start_gateway(
        tmp_path, "flush", lambda port: _config(port, admin, receiver.url, echo.port, auth.port),
        "/ready", env=ENV)
    try:
        trace_id = otlp.new_trace_id()
        r = requests.get(gw.base_url + "/orders/1",
                         headers={"traceparent": otlp.traceparent(trace_id), "x-caller": "e"},
                         timeout=10)
        assert r.status_code == 200
    finally:
        tp.stop(gw)
        echo.stop()
        auth.close()
    try:
        # Already there when the process has exited: no waiting for a batch that never comes.
        spans = [s for s in receiver.spans() if s.trace_id == trace_id]
        assert any(s.kind == "SERVER" for s in spans), receiver.spans()
    finally:
        receiver.close()


def test_client_bytes_cannot_mint_span_names_or_grow_spans(stack):
    """An unknown method names the span `HTTP` (`http.request.method: _OTHER`, the method kept
    shortened beside); a huge user agent is cut to 256 bytes."""
    gw, receiver, _, _, _ = stack
    trace_id = otlp.new_trace_id()
    r = requests.request("BREW" + "W" * 1000, gw.base_url + "/nowhere",
                         headers={"traceparent": otlp.traceparent(trace_id),
                                  "user-agent": "u" * 20000}, timeout=10)
    assert r.status_code == 404
    spans = _trace(receiver, trace_id, lambda s: len(s) >= 1, "the unknown method's span")
    server = _one(spans, kind="SERVER")
    assert server.name == "HTTP"
    assert server.attributes["http.request.method"] == "_OTHER"
    assert server.attributes["http.request.method_original"] == ("BREW" + "W" * 1000)[:256]
    assert server.attributes["user_agent.original"] == "u" * 256
