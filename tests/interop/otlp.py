"""OpenTelemetry test harness for the tracing suite: a real OTLP/HTTP receiver and an upstream
instrumented by the official OpenTelemetry Python SDK.

Like upstreams.py, everything listens on 127.0.0.1 on a port the OS picked, and every wait polls
with a deadline (`upstreams.wait_until`), never sleeping a fixed time. Every class has `close()`
(and `stop()`, the name the fixtures in upstreams.py use) and is a context manager.

- `OtlpReceiver`: an OTLP/HTTP trace collector. `POST /v1/traces` bodies
  (`application/x-protobuf`, optionally `Content-Encoding: gzip` or `deflate`) are decoded with the
  reference schema (`opentelemetry-proto`'s `ExportTraceServiceRequest`) and answered 200 with an
  empty `ExportTraceServiceResponse`. Every span is kept as a `Span` (hex ids, kind and status as
  names, attributes as Python values, its resource's and scope's identity); every export request
  as an `ExportRequest` (its headers, size, encoding and what the receiver did with it). It can
  be told to stall (read a request, then hold the connection unanswered) or to fail (answer 503,
  or any status, with a `google.rpc.Status` body and an optional `Retry-After`).
- `OtelWsgiUpstream`: a wsgiref echo upstream wrapped in the SDK's
  `opentelemetry.instrumentation.wsgi.OpenTelemetryMiddleware`, with its own `TracerProvider`
  (`service.name` "upstream"; the global provider is left alone) exporting each span as it ends
  (`SimpleSpanProcessor` + the SDK's `OTLPSpanExporter`) to an `OtlpReceiver`. Its SERVER span
  continues the W3C `traceparent` it received, through the global text-map propagator.
- `new_trace_id`, `new_span_id`, `traceparent`, `parse_traceparent`: W3C trace-context helpers.
"""

from __future__ import annotations

import gzip
import json
import secrets
import socket
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from upstreams import IO_TIMEOUT_S, STOP_DEADLINE_S, wait_until

TRACES_PATH = "/v1/traces"
PROTOBUF = "application/x-protobuf"
MAX_BODY_BYTES = 64 << 20  # a bigger export is refused (413) rather than read into memory
IDLE_CONNECTION_S = 30.0  # a keep-alive connection left idle this long is closed by the receiver


# --------------------------------------------------------------------------------------------
# W3C trace context
# --------------------------------------------------------------------------------------------


def new_trace_id() -> str:
    """A random, valid (not all-zero) trace id: 32 lowercase hex digits."""
    while True:
        t = secrets.token_hex(16)
        if int(t, 16):
            return t


def new_span_id() -> str:
    """A random, valid (not all-zero) span id: 16 lowercase hex digits."""
    while True:
        s = secrets.token_hex(8)
        if int(s, 16):
            return s


def traceparent(trace_id: str | None = None, span_id: str | None = None,
                sampled: bool = True) -> str:
    """A version-00 `traceparent` value (`00-<trace id>-<parent id>-<flags>`); ids made when
    not given."""
    return (f"00-{trace_id or new_trace_id()}-{span_id or new_span_id()}-"
            f"{'01' if sampled else '00'}")


def parse_traceparent(value: str) -> tuple[str, str, int]:
    """(trace id, parent span id, flags) of a version-00 `traceparent`; ValueError if malformed."""
    parts = value.strip().split("-")
    if (len(parts) != 4 or parts[0] != "00" or len(parts[1]) != 32 or len(parts[2]) != 16
            or len(parts[3]) != 2 or value != value.lower()):
        raise ValueError(f"not a version-00 traceparent: {value!r}")
    trace_id, span_id, flags = parts[1], parts[2], int(parts[3], 16)
    if not int(trace_id, 16) or not int(span_id, 16):
        raise ValueError(f"all-zero id in traceparent: {value!r}")
    return trace_id, span_id, flags


# --------------------------------------------------------------------------------------------
# Decoded OTLP data
# --------------------------------------------------------------------------------------------


def any_value(v: common_pb2.AnyValue) -> Any:
    """An OTLP `AnyValue` as a Python value: str, bool, int, float, bytes, list, dict or None."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, kind)


def attributes(kvs) -> dict[str, Any]:
    """Repeated OTLP `KeyValue`s as a dict (a repeated key keeps its last value)."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def _kind_name(kind: int) -> str:
    return trace_pb2.Span.SpanKind.Name(kind).removeprefix("SPAN_KIND_")


def _status_name(code: int) -> str:
    return trace_pb2.Status.StatusCode.Name(code).removeprefix("STATUS_CODE_")


@dataclass
class Span:
    """One span as the receiver decoded it. Ids are lowercase hex (`parent_span_id` is '' for a
    root span); `kind` is 'SERVER', 'CLIENT', 'INTERNAL', 'PRODUCER', 'CONSUMER' or
    'UNSPECIFIED'; `status_code` is 'UNSET', 'OK' or 'ERROR'; `resource` is the attributes of the
    span's resource (`service.name`, ...); `events` and `links` are dicts of their decoded
    fields; `request_index` is the index in `OtlpReceiver.requests()` of the export it came in."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    status_code: str
    status_message: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    resource: dict[str, Any]
    scope_name: str
    scope_version: str
    trace_state: str
    flags: int
    events: list[dict[str, Any]] = field(default_factory=list)
    links: list[dict[str, Any]] = field(default_factory=list)
    request_index: int = -1

    @property
    def service_name(self) -> str | None:
        return self.resource.get("service.name")

    @property
    def duration_ns(self) -> int:
        return self.end_time_unix_nano - self.start_time_unix_nano

    def __repr__(self) -> str:
        return (f"<Span {self.kind} {self.name!r} service={self.service_name!r} "
                f"trace={self.trace_id} span={self.span_id} parent={self.parent_span_id or '-'} "
                f"status={self.status_code}>")


def decode_spans(req: trace_service_pb2.ExportTraceServiceRequest,
                 request_index: int = -1) -> list[Span]:
    """Every span of an `ExportTraceServiceRequest`, in the order they appear."""
    out = []
    for rs in req.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(Span(
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    name=s.name,
                    kind=_kind_name(s.kind),
                    attributes=attributes(s.attributes),
                    status_code=_status_name(s.status.code),
                    status_message=s.status.message,
                    start_time_unix_nano=s.start_time_unix_nano,
                    end_time_unix_nano=s.end_time_unix_nano,
                    resource=dict(resource),
                    scope_name=ss.scope.name,
                    scope_version=ss.scope.version,
                    trace_state=s.trace_state,
                    flags=s.flags,
                    events=[{"name": e.name, "time_unix_nano": e.time_unix_nano,
                             "attributes": attributes(e.attributes)} for e in s.events],
                    links=[{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                            "trace_state": link.trace_state, "flags": link.flags,
                            "attributes": attributes(link.attributes)} for link in s.links],
                    request_index=request_index,
                ))
    return out


@dataclass
class ExportRequest:
    """One HTTP request the receiver read. `headers` has lower-cased names (a repeated header's
    values joined with ', '); `body_size` is the size on the wire, before decompression.
    `outcome` is 'accepted' (200, its spans recorded), 'stalled' (held unanswered, then closed
    without an answer), 'failed' (answered the status `fail()` set), or 'rejected' (malformed:
    `status` and `error` say why). Only accepted exports' spans are in `OtlpReceiver.spans()`;
    `span_count` is the number the body held whatever the outcome."""

    method: str
    path: str
    headers: dict[str, str]
    body_size: int
    outcome: str = ""
    status: int | None = None
    span_count: int = 0
    error: str = ""
    received_at: float = 0.0  # time.monotonic()

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def content_encoding(self) -> str:
        return self.headers.get("content-encoding", "")


# --------------------------------------------------------------------------------------------
# The receiver
# --------------------------------------------------------------------------------------------


class _Rejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class OtlpReceiver:
    """An OTLP/HTTP trace receiver (a `ThreadingHTTPServer` speaking HTTP/1.1 with keep-alive).

    Modes, switchable at any time: normal (decode, record, answer 200); `stall()` (read the
    request, then hold the connection unanswered until `resume()` or `close()`, which close it
    without an answer; its spans are not recorded); `fail(status)` (answer that status, 503 by
    default, with a `google.rpc.Status` body; spans not recorded). `resume()` returns to normal.
    """

    def __init__(self, *, stall: bool = False, fail_status: int | None = None,
                 retry_after_s: int | None = None):
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._requests: list[ExportRequest] = []
        self._fail: tuple[int, int | None] | None = None
        self._stall: threading.Event | None = None  # set = release the requests held now
        self._closing = threading.Event()
        self._conns: set[socket.socket] = set()
        if stall:
            self.stall()
        if fail_status is not None:
            self.fail(fail_status, retry_after_s)

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_CONNECTION_S

            def setup(self):
                super().setup()
                with receiver._lock:
                    receiver._conns.add(self.connection)

            def finish(self):
                with receiver._lock:
                    receiver._conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

            def do_POST(self):
                receiver._serve(self)

            def do_GET(self):
                receiver._serve(self)

            do_PUT = do_DELETE = do_PATCH = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"otlp-receiver-{self.port}")
        self._thread.start()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` (the OTLP/HTTP base URL; traces go to `traces_url`)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.url + TRACES_PATH

    # -- what arrived ------------------------------------------------------------------------

    def spans(self) -> list[Span]:
        """A snapshot of every span accepted so far, in arrival order."""
        with self._lock:
            return list(self._spans)

    def requests(self) -> list[ExportRequest]:
        """A snapshot of every request read so far (whatever its outcome), in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    def count(self, outcome: str) -> int:
        """How many requests had `outcome` ('accepted', 'stalled', 'failed', 'rejected')."""
        with self._lock:
            return sum(1 for r in self._requests if r.outcome == outcome)

    def wait_for(self, pred: Callable[[list[Span]], object], timeout_s: float = IO_TIMEOUT_S,
                 what: str = "spans") -> list[Span]:
        """Polls until `pred(spans())` is truthy and returns that snapshot; on timeout raises
        AssertionError naming `what` and listing the spans and requests that did arrive."""
        def ready():
            spans = self.spans()
            return (spans,) if pred(spans) else None

        try:
            return wait_until(ready, timeout_s, what)[0]
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self._summary()}") from None

    def wait_for_requests(self, pred: Callable[[list[ExportRequest]], object],
                          timeout_s: float = IO_TIMEOUT_S,
                          what: str = "export requests") -> list[ExportRequest]:
        """Like `wait_for`, over `requests()`."""
        def ready():
            reqs = self.requests()
            return (reqs,) if pred(reqs) else None

        try:
            return wait_until(ready, timeout_s, what)[0]
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self._summary()}") from None

    def _summary(self) -> str:
        spans, reqs = self.spans(), self.requests()
        lines = [f"receiver {self.url}: {len(reqs)} request(s), {len(spans)} span(s)"]
        lines += [f"  request {r.method} {r.path} -> {r.outcome} {r.status} "
                  f"({r.span_count} spans{', ' + r.error if r.error else ''})" for r in reqs[-10:]]
        lines += [f"  {s!r}" for s in spans[-20:]]
        return "\n".join(lines)

    def clear(self) -> None:
        """Forgets every span and request recorded so far (the mode is unchanged)."""
        with self._lock:
            self._spans.clear()
            self._requests.clear()

    # -- modes -------------------------------------------------------------------------------

    def stall(self) -> None:
        """From now on, read each request and hold its connection unanswered."""
        with self._lock:
            if self._stall is None:
                self._stall = threading.Event()

    def fail(self, status: int = 503, retry_after_s: int | None = None) -> None:
        """From now on, answer each export `status` (with `Retry-After` when given)."""
        with self._lock:
            self._fail = (status, retry_after_s)

    def resume(self) -> None:
        """Back to normal: releases (closes, unanswered) the connections held by a stall."""
        with self._lock:
            held, self._stall, self._fail = self._stall, None, None
        if held is not None:
            held.set()

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        headers: dict[str, str] = {}
        for k, v in h.headers.items():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        try:
            body = self._read_body(h, headers)
        except _Rejected as e:
            rec = ExportRequest(h.command, h.path, headers, 0, "rejected", e.status, 0, str(e),
                                time.monotonic())
            with self._lock:
                self._requests.append(rec)
            h.close_connection = True
            self._answer_status(h, e.status, str(e))
            return
        rec = ExportRequest(h.command, h.path, headers, len(body), received_at=time.monotonic())
        with self._lock:
            index = len(self._requests)
            self._requests.append(rec)
            held, fail = self._stall, self._fail
        try:
            msg = self._decode(h, headers, body)
            rec.span_count = sum(len(ss.spans) for rs in msg.resource_spans
                                 for ss in rs.scope_spans)
        except _Rejected as e:
            rec.outcome, rec.status, rec.error = "rejected", e.status, str(e)
            self._answer_status(h, e.status, str(e))
            return
        if held is not None:
            rec.outcome = "stalled"
            while not held.wait(0.1) and not self._closing.is_set():
                pass
            h.close_connection = True  # closed without an answer
            return
        if fail is not None:
            status, retry_after = fail
            rec.outcome, rec.status = "failed", status
            extra = [("Retry-After", str(retry_after))] if retry_after is not None else []
            self._answer_status(h, status, "the receiver was told to fail", extra)
            return
        with self._lock:
            self._spans.extend(decode_spans(msg, index))
        rec.outcome, rec.status = "accepted", 200
        self._answer(h, 200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    @staticmethod
    def _read_body(h: BaseHTTPRequestHandler, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            out = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
                if len(out) > MAX_BODY_BYTES:
                    raise _Rejected(413, "body too large")
        try:
            n = int(headers.get("content-length", "0"))
        except ValueError:
            raise _Rejected(400, "bad content-length") from None
        if n > MAX_BODY_BYTES:
            raise _Rejected(413, "body too large")
        body = h.rfile.read(n)
        if len(body) != n:
            raise _Rejected(400, "body shorter than its content-length")
        return body

    @staticmethod
    def _decode(h: BaseHTTPRequestHandler, headers: dict[str, str],
                body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
        if h.command != "POST":
            raise _Rejected(405, f"{h.command} is not an export")
        if h.path.split("?")[0] != TRACES_PATH:
            raise _Rejected(404, f"no OTLP signal at {h.path}")
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != PROTOBUF:
            raise _Rejected(415, f"content-type {ctype!r} is not {PROTOBUF}")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding not in ("", "identity"):
                raise _Rejected(415, f"content-encoding {encoding!r} is not supported")
        except (OSError, EOFError, zlib.error) as e:
            raise _Rejected(400, f"bad {encoding} body: {e}") from None
        msg = trace_service_pb2.ExportTraceServiceRequest()
        try:
            msg.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, whatever the backend
            raise _Rejected(400, f"not an ExportTraceServiceRequest: {e}") from None
        return msg

    @staticmethod
    def _answer(h: BaseHTTPRequestHandler, status: int, body: bytes,
                extra: list[tuple[str, str]] = ()) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", PROTOBUF)
            h.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                h.send_header(k, v)
            if h.close_connection:
                h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:
            h.close_connection = True

    def _answer_status(self, h: BaseHTTPRequestHandler, status: int, message: str,
                       extra: list[tuple[str, str]] = ()) -> None:
        """An error answer: a `google.rpc.Status` body, as OTLP/HTTP specifies."""
        grpc_code = {400: 3, 404: 12, 405: 12, 413: 8, 415: 3, 429: 8, 503: 14}.get(status, 13)
        body = status_pb2.Status(code=grpc_code, message=message).SerializeToString()
        self._answer(h, status, body, extra)

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stops serving: releases held requests, closes every open connection, frees the port.
        Never waits on a client."""
        if self._closing.is_set():
            return
        self._closing.set()
        self.resume()
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(timeout=STOP_DEADLINE_S)

    stop = close

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# An upstream instrumented by the OpenTelemetry Python SDK
# --------------------------------------------------------------------------------------------


def _environ_headers(environ: dict) -> dict[str, str]:
    """The request's headers from a WSGI environ, names lower-cased with `-` (wsgiref folds `_`
    into `-` too, so `x_a` and `x-a` are indistinguishable here)."""
    out = {k[5:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("HTTP_")}
    for k in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(k):
            out[k.lower().replace("_", "-")] = environ[k]
    return out


class OtelWsgiUpstream:
    """wsgiref (threaded, like `upstreams.WsgiEcho`) serving an echo app inside the SDK's
    `OpenTelemetryMiddleware`. Each request is answered 200 JSON `{"method", "path", "query",
    "headers" (lower-cased names), "span": {"trace_id", "span_id"}}` (the last being the
    middleware's SERVER span, which is current while the app runs) and `x-served-by:
    otel-wsgi`; the same record, less "span", is appended to `requests`.

    Its `TracerProvider` is its own (`service.name` = `service_name`), never the global one, and
    exports each span synchronously as it ends (`SimpleSpanProcessor`, `OTLPSpanExporter` to
    `receiver`'s `/v1/traces`, with `export_headers` and `compression` when given), so the span
    reaches the receiver right after the response is written. The incoming `traceparent` is
    read through the global text-map propagator (W3C trace context unless `OTEL_PROPAGATORS`
    says otherwise; refused here if it cannot read `traceparent`)."""

    def __init__(self, receiver: OtlpReceiver | str, service_name: str = "upstream",
                 export_timeout_s: float = 5.0, export_headers: dict[str, str] | None = None,
                 compression: str | None = None):
        import socketserver  # noqa: PLC0415
        from wsgiref.simple_server import (  # noqa: PLC0415
            WSGIRequestHandler, WSGIServer, make_server)

        from opentelemetry import propagate, trace  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter)
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: PLC0415

        fields = propagate.get_global_textmap().fields
        if "traceparent" not in fields:
            raise RuntimeError(f"the global OpenTelemetry propagator reads {sorted(fields)}, not "
                               "traceparent (is OTEL_PROPAGATORS set?)")

        base = receiver.url if isinstance(receiver, OtlpReceiver) else receiver.rstrip("/")
        self.exporter = OTLPSpanExporter(
            endpoint=base + TRACES_PATH, timeout=export_timeout_s, headers=export_headers,
            compression=Compression(compression) if compression else None)
        self.tracer_provider = TracerProvider(
            resource=Resource.create({"service.name": service_name}), shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.requests: list[dict] = []
        self._lock = threading.Lock()

        def app(environ, start_response):
            length = environ.get("CONTENT_LENGTH") or "0"
            if length.isdigit() and int(length):
                environ["wsgi.input"].read(int(length))
            record = {"method": environ["REQUEST_METHOD"], "path": environ.get("PATH_INFO", ""),
                      "query": environ.get("QUERY_STRING", ""),
                      "headers": _environ_headers(environ)}
            with self._lock:
                self.requests.append(record)
            ctx = trace.get_current_span().get_span_context()
            out = dict(record, span={"trace_id": format(ctx.trace_id, "032x"),
                                     "span_id": format(ctx.span_id, "016x")})
            body = json.dumps(out).encode()
            start_response("200 OK", [("content-type", "application/json"),
                                      ("content-length", str(len(body))),
                                      ("x-served-by", "otel-wsgi")])
            return [body]

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        wrapped = OpenTelemetryMiddleware(app, tracer_provider=self.tracer_provider)
        self.server = make_server("127.0.0.1", 0, wrapped, server_class=Server,
                                  handler_class=Quiet)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True,
                                       name=f"otel-wsgi-{self.port}")
        self.thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        """Stops serving, then shuts the tracer provider down (an export in flight is bounded by
        `export_timeout_s`)."""
        if self._closed:
            return
        self._closed = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=STOP_DEADLINE_S)
        self.tracer_provider.shutdown()

    stop = close

    def __enter__(self) -> OtelWsgiUpstream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
