"""Self-test of the OpenTelemetry harness (otlp.py), without tollgate.

- `OtelWsgiUpstream`, the official SDK's WSGI middleware, continues a hand-made W3C
  `traceparent`: `OtlpReceiver` gets its SERVER span with that trace id and that parent, its
  resource naming `service.name` "upstream".
- The receiver decodes what the SDK's own `OTLPSpanExporter` sends gzip-compressed (with an
  `authorization` header, which it records), and a hand-built `ExportTraceServiceRequest` posted
  raw, gzip'd: ids as hex, kind and status as names, attribute values of every type, resource
  and scope; it answers an `ExportTraceServiceResponse`.
- Stalled, it reads an export and never answers it (a client's 0.5 s timeout fires) until
  `resume()` or `close()`, which end the held connection at once; told to fail, it answers 503
  with `Retry-After`; malformed exports are refused (415, 400, 404) and none of these record spans.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import otlp
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


@pytest.fixture
def receiver():
    with otlp.OtlpReceiver() as r:
        yield r


def post(url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 2.0):
    """A raw POST: (status, headers, body); HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": otlp.PROTOBUF, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def kv(key: str, **value) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**value))


def export_request(trace_id: str, span_id: str, parent: str = "",
                   name: str = "hand-made") -> trace_service_pb2.ExportTraceServiceRequest:
    span = trace_pb2.Span(
        trace_id=bytes.fromhex(trace_id), span_id=bytes.fromhex(span_id),
        parent_span_id=bytes.fromhex(parent), name=name, kind=trace_pb2.Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_250_000_000, trace_state="vendor=x", flags=0x301,
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="boom"),
        attributes=[
            kv("s", string_value="text"), kv("i", int_value=-7), kv("d", double_value=2.5),
            kv("b", bool_value=True),
            kv("a", array_value=common_pb2.ArrayValue(values=[
                common_pb2.AnyValue(int_value=1), common_pb2.AnyValue(string_value="two")])),
        ],
        events=[trace_pb2.Span.Event(name="exception", time_unix_nano=5,
                                     attributes=[kv("exception.type", string_value="E")])],
    )
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[kv("service.name", string_value="hand")]),
        scope_spans=[trace_pb2.ScopeSpans(
            scope=common_pb2.InstrumentationScope(name="harness", version="1"), spans=[span])],
    )])


def test_sdk_upstream_continues_the_callers_traceparent(receiver):
    trace_id, parent = otlp.new_trace_id(), otlp.new_span_id()
    header = f"00-{trace_id}-{parent}-01"
    with otlp.OtelWsgiUpstream(receiver) as upstream:
        req = urllib.request.Request(upstream.url + "/items/7?x=1",
                                     headers={"traceparent": header, "X-Probe": "yes"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and r.headers["x-served-by"] == "otel-wsgi"
            echo = json.loads(r.read())
        spans = receiver.wait_for(lambda ss: any(s.trace_id == trace_id for s in ss),
                                  what="the upstream's span of the traced request")

    assert echo["method"] == "GET" and echo["path"] == "/items/7" and echo["query"] == "x=1"
    assert echo["headers"]["traceparent"] == header and echo["headers"]["x-probe"] == "yes"
    assert upstream.requests == [{k: echo[k] for k in ("method", "path", "query", "headers")}]
    [span] = [s for s in spans if s.trace_id == trace_id]
    assert span.kind == "SERVER" and span.parent_span_id == parent
    assert span.span_id == echo["span"]["span_id"] and echo["span"]["trace_id"] == trace_id
    assert span.span_id != parent and len(span.span_id) == 16
    assert span.service_name == "upstream" and span.resource["telemetry.sdk.language"] == "python"
    assert span.scope_name == "opentelemetry.instrumentation.wsgi"
    assert span.name == "GET /items/7" and span.status_code == "UNSET"
    assert (span.attributes.get("http.request.method") or span.attributes.get("http.method")) \
        == "GET"
    # The SDK's encoder sets the "parent is remote" bits (HAS_IS_REMOTE | IS_REMOTE) only.
    assert span.flags & 0x300 == 0x300
    assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
    [export] = [r for r in receiver.requests() if r.span_count]
    assert export.outcome == "accepted" and export.content_type == otlp.PROTOBUF


def test_sdk_exporter_gzip_and_headers(receiver):
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    tp = TracerProvider(resource=Resource.create({"service.name": "direct"}),
                        shutdown_on_exit=False)
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=receiver.traces_url, timeout=2, compression=Compression.Gzip,
        headers={"authorization": "Bearer export-secret"})))
    try:
        with tp.get_tracer("harness").start_as_current_span("outer"):
            with tp.get_tracer("harness").start_as_current_span("inner") as inner:
                inner.set_attribute("n", 3)
    finally:
        tp.shutdown()
    spans = receiver.wait_for(lambda ss: len(ss) >= 2, what="outer and inner")
    by_name = {s.name: s for s in spans}
    assert by_name["inner"].parent_span_id == by_name["outer"].span_id
    assert by_name["outer"].parent_span_id == "" and by_name["inner"].kind == "INTERNAL"
    assert by_name["inner"].attributes == {"n": 3} and by_name["inner"].service_name == "direct"
    reqs = receiver.requests()
    assert len(reqs) == 2 and {r.outcome for r in reqs} == {"accepted"}
    assert all(r.content_encoding == "gzip" for r in reqs)
    assert all(r.headers["authorization"] == "Bearer export-secret" for r in reqs)


def test_raw_gzip_export_is_decoded_field_by_field(receiver):
    trace_id, span_id, parent = otlp.new_trace_id(), otlp.new_span_id(), otlp.new_span_id()
    body = gzip.compress(export_request(trace_id, span_id, parent).SerializeToString())
    status, headers, answer = post(receiver.traces_url, body, {"Content-Encoding": "gzip"})
    assert status == 200 and headers["content-type"] == otlp.PROTOBUF
    trace_service_pb2.ExportTraceServiceResponse().ParseFromString(answer)

    [s] = receiver.spans()
    assert (s.trace_id, s.span_id, s.parent_span_id) == (trace_id, span_id, parent)
    assert s.kind == "CLIENT" and s.status_code == "ERROR" and s.status_message == "boom"
    assert s.attributes == {"s": "text", "i": -7, "d": 2.5, "b": True, "a": [1, "two"]}
    assert s.resource == {"service.name": "hand"}
    assert (s.scope_name, s.scope_version) == ("harness", "1")
    assert s.trace_state == "vendor=x" and s.flags == 0x301 and s.duration_ns == 250_000_000
    assert s.events == [{"name": "exception", "time_unix_nano": 5,
                         "attributes": {"exception.type": "E"}}]
    [r] = receiver.requests()
    assert r.body_size == len(body) and r.span_count == 1 and s.request_index == 0
    receiver.clear()
    assert receiver.spans() == [] and receiver.request_count == 0


def test_stall_holds_the_export_until_resume_or_close():
    body = export_request(otlp.new_trace_id(), otlp.new_span_id()).SerializeToString()
    receiver = otlp.OtlpReceiver(stall=True)
    try:
        started = time.monotonic()
        with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
            post(receiver.traces_url, body, timeout=0.5)
        assert time.monotonic() - started < 2
        receiver.wait_for_requests(lambda rs: [r.outcome for r in rs] == ["stalled"],
                                   what="the stalled export to be read")

        # A second held export is let go (closed unanswered) by resume(), at once.
        outcome: dict[str, object] = {}

        def held_post():
            try:
                outcome["answer"] = post(receiver.traces_url, body, timeout=5)
            except Exception as e:  # noqa: BLE001 - the assertion below says which
                outcome["error"] = e

        t = threading.Thread(target=held_post)
        t.start()
        receiver.wait_for_requests(lambda rs: len(rs) == 2, what="the second stalled export")
        released = time.monotonic()
        receiver.resume()
        t.join(timeout=2)
        assert not t.is_alive() and time.monotonic() - released < 2
        assert "error" in outcome, outcome  # closed without an answer
        assert receiver.spans() == []

        status, _, _ = post(receiver.traces_url, body)
        assert status == 200 and len(receiver.spans()) == 1

        # Stalled again, close() ends the held connection and does not wait on it.
        receiver.stall()
        outcome.clear()
        t = threading.Thread(target=held_post)
        t.start()
        receiver.wait_for_requests(lambda rs: len(rs) == 4, what="the export stalled again")
        closing = time.monotonic()
        receiver.close()
        t.join(timeout=2)
        assert not t.is_alive() and time.monotonic() - closing < 2
        assert "error" in outcome, outcome
        assert receiver.count("stalled") == 3 and receiver.count("accepted") == 1
    finally:
        receiver.close()


def test_fail_answers_503_and_records_no_spans(receiver):
    body = export_request(otlp.new_trace_id(), otlp.new_span_id()).SerializeToString()
    receiver.fail(503, retry_after_s=1)
    status, headers, answer = post(receiver.traces_url, body)
    assert status == 503 and headers["retry-after"] == "1" and answer
    assert receiver.spans() == [] and receiver.count("failed") == 1
    receiver.resume()
    assert post(receiver.traces_url, body)[0] == 200 and len(receiver.spans()) == 1


@pytest.mark.parametrize("path,headers,body,status", [
    ("/v1/traces", {"Content-Type": "application/json"}, b"{}", 415),
    ("/v1/traces", {}, b"\xff\xff\xff", 400),
    ("/v1/traces", {"Content-Encoding": "gzip"}, b"not gzip", 400),
    ("/v1/metrics", {}, b"", 404),
])
def test_malformed_exports_are_refused(receiver, path, headers, body, status):
    assert post(receiver.url + path, body, headers)[0] == status
    [r] = receiver.requests()
    assert r.outcome == "rejected" and r.status == status and r.error
    assert receiver.spans() == []


def test_traceparent_helpers():
    t, s = otlp.new_trace_id(), otlp.new_span_id()
    assert otlp.parse_traceparent(otlp.traceparent(t, s)) == (t, s, 1)
    assert otlp.parse_traceparent(otlp.traceparent(t, s, sampled=False)) == (t, s, 0)
    for bad in ("00-" + "0" * 32 + f"-{s}-01", f"01-{t}-{s}-01", f"00-{t.upper()}-{s}-01"):
        with pytest.raises(ValueError):
            otlp.parse_traceparent(bad)
