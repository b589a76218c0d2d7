"""Real upstreams, raw clients and gateway helpers for the attack suite (test_attack_*.py).

Everything listens on 127.0.0.1 on a port the OS picked (or one asked of the OS just before, with
retries, for nginx, which cannot be handed a socket), and every start waits by polling with a
deadline, never by sleeping a fixed time. Every class here has `stop()`; the test fixtures call it.

- `Nginx`: nginx run from a config written at test time, as the normalising upstream (each
  request answered `200 "$request_method $uri"`, with the raw request target it received in
  `x-upstream-request-uri`) or as a trusted front proxy (`$proxy_add_x_forwarded_for`).
- `Hypercorn`: hypercorn (an ASGI server with h2c upgrade and prior knowledge) serving
  `recording_app`, which appends every request it serves (method, path, raw path, headers, HTTP
  version) as a JSON line to a file the test reads.
- `WsgiEcho`: `wsgiref.simple_server`, whose environ folds header names (`X_Tollgate_Principal` and
  `X-Tollgate-Principal` both become `HTTP_X_TOLLGATE_PRINCIPAL`), answering environ's `HTTP_*`
  keys as JSON.
- `Raw101Upstream`: a socket server that answers 101 to an upgrade request (or to every request)
  and then serves whatever raw HTTP/1 request comes next on the spliced connection.
- `WebSocketEcho`: a `websockets` echo server.

This module is also what hypercorn imports (`upstreams:recording_app`), so its top level uses the
standard library only; third-party packages are imported where they are used.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

HERE = Path(__file__).resolve().parent
START_DEADLINE_S = 15.0
STOP_DEADLINE_S = 10.0
IO_TIMEOUT_S = 5.0
START_ATTEMPTS = 3
POLL_S = 0.02  # poll interval while waiting for a condition with a deadline


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], object], deadline_s: float, what: str, interval: float = POLL_S):
    """Polls `pred` until it returns something truthy (returned), or raises after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    last_exc: BaseException | None = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported if the deadline passes
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}"
                                 + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


def _pytest():
    import pytest  # noqa: PLC0415 - not at top level: hypercorn imports this module

    return pytest


def need_program(name: str, *fallbacks: str) -> str:
    """The path of a program, or a skip when it is genuinely missing (scripts/test.sh installs
    it, so CI has it)."""
    found = shutil.which(name)
    if found:
        return found
    for f in fallbacks:
        if os.access(f, os.X_OK):
            return f
    _pytest().skip(f"{name} is not installed here (scripts/test.sh installs it)")


def _stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------
# A raw HTTP/1 client: bytes exactly as written (raw 0xff in a header, `\` in a path, ...)
# --------------------------------------------------------------------------------------------


class RawResponse:
    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], body: bytes,
                 head: bytes):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.head = head

    def header(self, name: str) -> str | None:
        n = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == n:
                return v.decode("latin1")
        return None

    def header_all(self, name: str) -> list[str]:
        n = name.lower().encode()
        return [v.decode("latin1") for k, v in self.headers if k.lower() == n]

    def json(self):
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.reason.decode('latin1')} body={self.body[:200]!r}>"


class Conn:
    """One client TCP connection (optionally from a chosen loopback source address)."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None,
                 timeout: float = IO_TIMEOUT_S):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""
        self.closed = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no answer in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def read_until_close(self, timeout: float = IO_TIMEOUT_S, limit: int = 1 << 20) -> bytes:
        """Everything until the peer closes or `timeout` passes (then what arrived so far)."""
        deadline = time.monotonic() + timeout
        try:
            while not self.closed and len(self.buf) < limit:
                if not self._fill(deadline):
                    break
        except (TimeoutError, socket.timeout, OSError):
            pass
        out, self.buf = self.buf, b""
        return out

    def read_response(self, timeout: float = IO_TIMEOUT_S, head_only: bool = False,
                      method: str = "GET") -> RawResponse | None:
        """One response; None when the connection closed before a status line. 1xx other than
        101 are skipped; a 101's body is not read (the bytes after it stay in `buf`)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill(deadline):
                    if self.buf:
                        raise AssertionError(f"connection closed mid-head: {self.buf[:300]!r}")
                    return None
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            status = int(parts[1])
            reason = parts[2] if len(parts) > 2 else b""
            headers = []
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers.append((k.strip(), v.strip()))
            resp = RawResponse(status, reason, headers, b"", head)
            if 100 <= status < 200 and status != 101:
                continue
            if status == 101 or head_only or method == "HEAD" or status in (204, 304):
                return resp
            te = (resp.header("transfer-encoding") or "").lower()
            cl = resp.header("content-length")
            if "chunked" in te:
                body = b""
                while True:
                    while b"\r\n" not in self.buf:
                        if not self._fill(deadline):
                            raise AssertionError("connection closed inside a chunked body")
                    size_line, self.buf = self.buf.split(b"\r\n", 1)
                    size = int(size_line.split(b";")[0], 16)
                    while len(self.buf) < size + 2:
                        if not self._fill(deadline):
                            raise AssertionError("connection closed inside a chunk")
                    body += self.buf[:size]
                    self.buf = self.buf[size + 2:]
                    if size == 0:
                        # trailers, if any, end with an empty line; we sent none, expect none
                        break
                resp.body = body
            elif cl is not None:
                n = int(cl)
                while len(self.buf) < n:
                    if not self._fill(deadline):
                        raise AssertionError("connection closed inside the body")
                resp.body, self.buf = self.buf[:n], self.buf[n:]
            else:
                resp.body = self.read_until_close(max(0.1, deadline - time.monotonic()))
            return resp

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _b(x: str | bytes) -> bytes:
    return x if isinstance(x, bytes) else x.encode("latin1")


def build_request(method: str | bytes, target: str | bytes,
                  headers: Iterable[tuple[str | bytes, str | bytes]] = (), body: bytes = b"",
                  host: str | None = "127.0.0.1", close: bool = True,
                  version: bytes = b"HTTP/1.1") -> bytes:
    out = _b(method) + b" " + _b(target) + b" " + version + b"\r\n"
    hs = list(headers)
    names = {_b(k).lower() for k, _ in hs}
    if host is not None and b"host" not in names:
        out += b"Host: " + _b(host) + b"\r\n"
    for k, v in hs:
        out += _b(k) + b": " + _b(v) + b"\r\n"
    if body or _b(method).upper() in (b"POST", b"PUT", b"PATCH"):
        if b"content-length" not in names:
            out += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    if close and b"connection" not in names:
        out += b"Connection: close\r\n"
    return out + b"\r\n" + body


def raw_request(port: int, method: str | bytes, target: str | bytes,
                headers: Iterable[tuple[str | bytes, str | bytes]] = (), body: bytes = b"",
                source: str | None = None, host: str | None = None,
                timeout: float = IO_TIMEOUT_S) -> RawResponse | None:
    """One request on its own connection; None when the server closed without answering."""
    c = Conn(port, source=source, timeout=timeout)
    try:
        c.send(build_request(method, target, headers, body,
                             host=host if host is not None else f"127.0.0.1:{port}"))
        m = method.decode("latin1") if isinstance(method, bytes) else method
        return c.read_response(timeout=timeout, method=m.upper())
    finally:
        c.close()


# --------------------------------------------------------------------------------------------
# HTTP/2 with prior knowledge (the `h2` package builds and parses the frames)
# --------------------------------------------------------------------------------------------


class H2Response:
    def __init__(self, status: int | None, headers: list[tuple[bytes, bytes]], body: bytes,
                 reset: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.reset = reset

    def header(self, name: str) -> str | None:
        n = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == n:
                return v.decode("latin1")
        return None

    def __repr__(self) -> str:
        return f"<h2 {self.status} reset={self.reset} body={self.body[:200]!r}>"


def h2_request(port: int, method: str, path: str | bytes,
               headers: Iterable[tuple[str, str]] = (),
               timeout: float = IO_TIMEOUT_S, authority: str | None = None) -> H2Response:
    import h2.config  # noqa: PLC0415
    import h2.connection  # noqa: PLC0415
    import h2.events  # noqa: PLC0415

    cfg = h2.config.H2Configuration(client_side=True, header_encoding=None,
                                    validate_outbound_headers=False,
                                    normalize_outbound_headers=False,
                                    validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config=cfg)
    conn.initiate_connection()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(conn.data_to_send())
        sid = conn.get_next_available_stream_id()
        hdrs = [(b":method", _b(method)), (b":scheme", b"http"),
                (b":authority", _b(authority or f"127.0.0.1:{port}")), (b":path", _b(path))]
        hdrs += [(_b(k), _b(v)) for k, v in headers]
        conn.send_headers(sid, hdrs, end_stream=True)
        sock.sendall(conn.data_to_send())
        status, rh, body, reset = None, [], b"", False
        deadline = time.monotonic() + timeout
        done = False
        while not done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no complete HTTP/2 answer for {method} {path!r} in time")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    rh = list(ev.headers)
                    for k, v in rh:
                        if k == b":status":
                            status = int(v)
                elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                    done = True
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    reset, done = True, True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    done = True
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
        return H2Response(status, rh, body, reset)
    finally:
        sock.close()


# --------------------------------------------------------------------------------------------
# nginx
# --------------------------------------------------------------------------------------------


NORMALISING_SERVER = """\
    # The served resource is identifiable: nginx's $uri is decoded and normalised (slashes
    # merged, dot segments resolved); the raw target it received is echoed in a header.
    location / {
        add_header X-Served-By nginx always;
        add_header X-Upstream-Request-Uri $request_uri always;
        add_header X-Upstream-Method $request_method always;
        return 200 "$request_method $uri\\n";
    }
"""


def front_proxy_server(backend_port: int) -> str:
    return f"""\
    location / {{
        proxy_pass http://127.0.0.1:{backend_port};
        proxy_http_version 1.1;
        proxy_set_header Host $http_host;
        proxy_set_header Connection "";
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_buffering off;
    }}
"""


class Nginx:
    """nginx in the foreground (no daemon, no master process), everything under `workdir`."""

    def __init__(self, workdir: Path, name: str, server_body: str):
        self.bin = need_program("nginx", "/usr/sbin/nginx")
        self.dir = workdir / f"nginx-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / sub).mkdir(exist_ok=True)
        self.server_body = server_body
        self.proc: subprocess.Popen | None = None
        self.port = 0
        for attempt in range(START_ATTEMPTS):
            if self._start_once(attempt):
                return
        raise AssertionError(f"nginx did not start ({START_ATTEMPTS} attempts): "
                             f"{self.error_log()[-2000:]}")

    def error_log(self) -> str:
        p = self.dir / "error.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def _start_once(self, attempt: int) -> bool:
        self.port = free_port()
        d = self.dir
        conf = d / f"nginx-{attempt}.conf"
        conf.write_text(f"""\
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    default_type text/plain;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port};
        server_name _;
{self.server_body}
    }}
}}
""")
        self.proc = subprocess.Popen(
            [self.bin, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(d / "stderr", "ab"))

        def up():
            if self.proc.poll() is not None:
                raise _Exited()
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True

        try:
            wait_until(up, START_DEADLINE_S, f"nginx on port {self.port}")
            return True
        except _Exited:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGQUIT)


class _Exited(Exception):
    pass


# --------------------------------------------------------------------------------------------
# hypercorn serving a recording ASGI app
# --------------------------------------------------------------------------------------------

LOG_ENV = "TOLLGATE_ATTACK_UPSTREAM_LOG"


async def recording_app(scope, receive, send):
    """ASGI app: logs every request it serves as one JSON line (to $TOLLGATE_ATTACK_UPSTREAM_LOG)
    and answers 200 with that record as JSON and `x-served-by: hypercorn`."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    record = {
        "type": scope["type"],
        "method": scope.get("method", "GET"),
        "path": scope.get("path"),
        "raw_path": (scope.get("raw_path") or b"").decode("latin1"),
        "query": (scope.get("query_string") or b"").decode("latin1"),
        "http_version": scope.get("http_version"),
        "headers": [[k.decode("latin1"), v.decode("latin1")] for k, v in scope.get("headers", [])],
    }
    with open(os.environ[LOG_ENV], "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1000})
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False) and msg["type"] == "http.request"
    body = json.dumps(record).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-served-by", b"hypercorn")]})
    await send({"type": "http.response.body", "body": body})


class Hypercorn:
    """hypercorn (one process, no workers) on a socket bound here to port 0 and handed over."""

    def __init__(self, workdir: Path, name: str = "hypercorn"):
        self.log_path = workdir / f"{name}-requests.jsonl"
        self.log_path.write_text("")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        self.stderr_path = workdir / f"{name}.stderr"
        env = dict(os.environ, PYTHONPATH=str(HERE), **{LOG_ENV: str(self.log_path)})
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hypercorn", "--workers", "0", "--bind",
                 f"fd://{sock.fileno()}", "--log-level", "warning", "upstreams:recording_app"],
                cwd=str(HERE), env=env, pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=err)
        sock.close()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError("hypercorn exited: " + self.stderr_path.read_text())
            r = raw_request(self.port, "GET", "/__ready", timeout=1.0)
            return r is not None and r.status == 200

        wait_until(up, START_DEADLINE_S, "hypercorn to answer /__ready")

    def requests(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def wait_for(self, path: str, deadline_s: float = IO_TIMEOUT_S) -> list[dict]:
        """Polls the log until a request for `path` is in it; returns the whole log then."""
        def seen():
            log = self.requests()
            return log if any(r["path"] == path for r in log) else None

        return wait_until(seen, deadline_s, f"hypercorn to log a request for {path}")

    def stop(self) -> None:
        _stop_process(self.proc)


# --------------------------------------------------------------------------------------------
# wsgiref echoing environ's HTTP_* keys
# --------------------------------------------------------------------------------------------


class WsgiEcho:
    """wsgiref.simple_server: header names folded into environ (`-` and `_` both become `_`)."""

    def __init__(self):
        import socketserver  # noqa: PLC0415
        from wsgiref.simple_server import (  # noqa: PLC0415
            WSGIRequestHandler, WSGIServer, make_server)

        class Server(socketserver.ThreadingMixIn, WSGIServer):
            daemon_threads = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        def app(environ, start_response):
            out = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
            out["REQUEST_METHOD"] = environ["REQUEST_METHOD"]
            out["PATH_INFO"] = environ.get("PATH_INFO", "")
            out["REMOTE_ADDR"] = environ.get("REMOTE_ADDR", "")
            body = json.dumps(out).encode()
            start_response("200 OK", [("content-type", "application/json"),
                                      ("content-length", str(len(body))),
                                      ("x-served-by", "wsgiref")])
            return [body]

        self.server = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=Quiet)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=STOP_DEADLINE_S)


# --------------------------------------------------------------------------------------------
# A raw upstream that switches protocols when asked (or always)
# --------------------------------------------------------------------------------------------


class Raw101Upstream:
    """Answers `101 Switching Protocols` to a request with `Upgrade` (mode "upgrade"), or to every
    request (mode "always"), naming `answer_protocol` or else the protocol asked for; then reads
    the next raw HTTP/1 request on that connection, records it (`phase: "after-101"`) and answers
    it 200 `SPLICED-SECRET`. Requests it does not switch on are answered 200 and the connection
    closed. `log` holds every request head it read."""

    def __init__(self, mode: str = "upgrade", answer_protocol: str | None = None):
        self.mode = mode
        self.answer_protocol = answer_protocol
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _record(self, **kw) -> None:
        with self.lock:
            self.log.append(kw)

    def requests(self) -> list[dict]:
        with self.lock:
            return list(self.log)

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            r, _, _ = select.select([self.lsock], [], [], 0.05)
            if not r:
                continue
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    @staticmethod
    def _read_head(s: socket.socket, buf: bytes, deadline: float) -> tuple[bytes | None, bytes]:
        while b"\r\n\r\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, buf
            s.settimeout(remaining)
            try:
                chunk = s.recv(65536)
            except (socket.timeout, OSError):
                return None, buf
            if not chunk:
                return None, buf
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        return head, rest

    @staticmethod
    def _parse(head: bytes) -> dict:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers.setdefault(k.strip().lower().decode("latin1"), []).append(
                v.strip().decode("latin1"))
        return {"method": parts[0].decode("latin1"),
                "target": parts[1].decode("latin1") if len(parts) > 1 else "",
                "headers": headers}

    def _serve(self, s: socket.socket) -> None:
        try:
            head, rest = self._read_head(s, b"", time.monotonic() + IO_TIMEOUT_S)
            if head is None:
                return
            req = self._parse(head)
            asked = req["headers"].get("upgrade", [None])[0]
            switch = self.mode == "always" or (self.mode == "upgrade" and asked)
            self._record(phase="first", switched=bool(switch), **req)
            if not switch:
                body = json.dumps(req).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-served-by: raw"
                          b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode()
                          + b"\r\n\r\n" + body)
                return
            proto = self.answer_protocol or asked or "anything"
            s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
                      + proto.encode() + b"\r\n\r\n")
            head2, _ = self._read_head(s, rest, time.monotonic() + IO_TIMEOUT_S)
            if head2 is None:
                return
            self._record(phase="after-101", switched=False, **self._parse(head2))
            s.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\nx-served-by: raw-spliced\r\n"
                      b"connection: close\r\n\r\nSPLICED-SECRET")
        except OSError:
            pass
        finally:
            s.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=STOP_DEADLINE_S)
        self.lsock.close()


# --------------------------------------------------------------------------------------------
# A WebSocket echo server (the `websockets` package)
# --------------------------------------------------------------------------------------------


class WebSocketEcho:
    def __init__(self):
        from websockets.sync.server import serve  # noqa: PLC0415

        self.handshakes: list[dict] = []

        def handler(ws):
            headers = {k.lower(): v for k, v in ws.request.headers.raw_items()}
            self.handshakes.append({"path": ws.request.path, "headers": headers})
            for msg in ws:
                ws.send(msg)

        self.server = serve(handler, "127.0.0.1", 0)
        self.port = self.server.socket.getsockname()[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=STOP_DEADLINE_S)


# --------------------------------------------------------------------------------------------
# Gateway helpers: a signing key made here (no RSA key generation in a debug build), tokens,
# `tollgate check`, the access log
# --------------------------------------------------------------------------------------------


def write_signing_key(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def mint_token(base_url: str, client_id: str, secret: str, scope: str | None = None) -> str:
    import requests  # noqa: PLC0415

    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    r = requests.post(base_url + "/oauth2/token", data=data, auth=(client_id, secret), timeout=10)
    assert r.status_code == 200, f"token for {client_id}: {r.status_code} {r.text}"
    return r.json()["access_token"]


def unsigned_token(claims: dict) -> str:
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims) + "."


def check_config(workdir: Path, name: str, text: str) -> tuple[int, str]:
    """`tollgate check -c` on `text`: (exit status, stdout + stderr)."""
    import tollgate_process  # noqa: PLC0415

    cfg = workdir / f"{name}.yaml"
    cfg.write_text(text)
    p = subprocess.run([str(tollgate_process.binary()), "check", "-c", str(cfg)], cwd=workdir,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout + p.stderr


def start_gateway(workdir: Path, name: str, config_for_port: Callable[[int], str],
                  ready_path: str, env: dict | None = None):
    """tollgate_process.start, after `tollgate check` so a refused config fails with its errors
    (e.g. a config key the binary does not know yet) instead of "did not start"."""
    import tollgate_process  # noqa: PLC0415

    rc, out = check_config(workdir, f"{name}-check", config_for_port(free_port()))
    if rc != 0:
        raise AssertionError(f"tollgate refuses the {name} config (`tollgate check`, exit {rc}):\n"
                             f"{out.strip()}")
    return tollgate_process.start(workdir, name, config_for_port, ready_path, env=env)


def access_log(gw) -> list[dict]:
    out = []
    for line in gw.stderr().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("target") == "tollgate::access":
            out.append(rec)
    return out


def wait_access_log(gw, pred: Callable[[dict], bool], what: str,
                    deadline_s: float = IO_TIMEOUT_S) -> list[dict]:
    """Polls tollgate's access log (written in batches within ~100 ms) for a matching line."""
    def seen():
        log = access_log(gw)
        return log if any(pred(r) for r in log) else None

    return wait_until(seen, deadline_s, what)

