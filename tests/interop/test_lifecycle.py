"""The real binary's life: TLS to OpenSSL-based clients (curl with HTTP/2, Python requests with
a client certificate), a certificate rewritten on disk and served to the next connection, and
SIGTERM with a request in flight (it completes, new connections are refused, exit 0).

Certificates are made at test time with `cryptography`; nothing here is committed.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import http.server
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import tollgate_process as tp

SWAP_DEADLINE_S = 5.0
IDLE_SETTLE_S = 1.0
IDLE_WINDOW_S = 3.0
# One read and hash of the 8 MB file costs ~30 ms; the old loop did it several times a second.
IDLE_CPU_BUDGET_S = 0.1
CONNECT_REFUSED_DEADLINE_S = 5.0


class Pki:
    """A CA that signs server and client certificates into `dir`."""

    def __init__(self, dir: Path, name: str):
        self.dir = dir
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.name = subject
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem_path = dir / f"{name.replace(' ', '-')}.pem"
        self.pem_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, cn: str, dns: list[str] | None = None,
              client: bool = False) -> tuple[Path, Path, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Interop"),
            ]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
        )
        if dns:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName(d) for d in dns]
                + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return cert_path, key_path, cert


class RecordingUpstream:
    """An HTTP upstream that echoes the headers it got as JSON; `/hold` waits until released."""

    def __init__(self):
        self.entered = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path.startswith("/hold"):
                    outer.entered.set()
                    outer.release.wait(timeout=30)
                body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def upstream():
    up = RecordingUpstream()
    yield up
    up.close()


def config(up: RecordingUpstream, tls_port: int, admin_port: int) -> callable:
    def for_port(port: int) -> str:
        return f"""
listeners:
  - bind: 127.0.0.1:{port}
  - bind: 127.0.0.1:{tls_port}
    tls: {{ cert: gw.pem, key: gw.key, client_ca: clients.pem }}
admin: {{ bind: 127.0.0.1:{admin_port} }}
limits: {{ shutdown_grace: 20s }}
upstreams:
  app: {{ targets: ["{up.url}"] }}
routes:
  - {{ route: "ANY /{{proxy+}}", upstream: app }}
  - {{ route: "GET /mtls/{{proxy+}}", upstream: app, require_client_cert: true }}
  - {{ route: "GET /ready", respond: {{ body: ok }} }}
"""
    return for_port


def replace(src: Path, dst: Path) -> None:
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    tmp.rename(dst)


def curl_cert_serial(url: str, ca: Path, resolve: str) -> tuple[str, int]:
    """curl (OpenSSL) over HTTP/2; returns the HTTP version it used and the served serial."""
    out = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", str(ca), "--resolve", resolve,
         "-o", "/dev/null", "-w", "%{http_version} %{certs}", "--noproxy", "*", url],
        capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    version, _, certs = out.stdout.partition(" ")
    pem = certs[certs.index("-----BEGIN CERTIFICATE-----"):]
    pem = pem[:pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return version, x509.load_pem_x509_certificate(pem.encode()).serial_number


def test_tls_with_openssl_clients_hot_swap_and_mtls(tmp_path, upstream):
    pki = Pki(tmp_path, "Interop CA")
    clients = Pki(tmp_path, "Client CA")
    first = pki.issue("first", "gw", ["gw.test"])
    second = pki.issue("second", "gw", ["gw.test"])
    replace(first[0], tmp_path / "gw.pem")
    replace(first[1], tmp_path / "gw.key")
    shutil.copyfile(clients.pem_path, tmp_path / "clients.pem")
    carol_cert, carol_key, carol = clients.issue("carol", "carol", client=True)
    tls_port, admin_port = tp.free_port(), tp.free_port()
    gw = tp.start(tmp_path, "tls", config(upstream, tls_port, admin_port), "/ready")
    try:
        url = f"https://gw.test:{tls_port}/hello"
        resolve = f"gw.test:{tls_port}:127.0.0.1"
        version, serial = curl_cert_serial(url, pki.pem_path, resolve)
        assert version == "2"
        assert serial == first[2].serial_number

        # Rewrite key and certificate in place: the next connection gets the new pair.
        replace(second[1], tmp_path / "gw.key")
        replace(second[0], tmp_path / "gw.pem")
        deadline = time.monotonic() + SWAP_DEADLINE_S
        while curl_cert_serial(url, pki.pem_path, resolve)[1] != second[2].serial_number:
            assert time.monotonic() < deadline, "the rewritten certificate was not served"
            time.sleep(0.05)

        # Python requests (urllib3 + OpenSSL) with a client certificate.
        base = f"https://127.0.0.1:{tls_port}"
        ca = str(pki.pem_path)  # per request: a session's `verify` loses to REQUESTS_CA_BUNDLE
        r = requests.get(base + "/mtls/x", verify=ca, cert=(str(carol_cert), str(carol_key)),
                         timeout=10)
        assert r.status_code == 200, r.text
        seen = r.json()
        assert "CN=carol" in seen["x-tollgate-client-cert-subject"]
        assert seen["x-tollgate-client-cert-sha256"] == carol.fingerprint(hashes.SHA256()).hex()
        assert seen["x-forwarded-proto"] == "https"
        r = requests.get(base + "/mtls/x", verify=ca, timeout=10)
        assert r.status_code == 403
        assert r.json() == {"message": "Forbidden"}
    finally:
        tp.stop(gw)


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_sigterm_lets_the_in_flight_request_finish_refuses_new_ones_and_exits_0(
        tmp_path, upstream):
    pki = Pki(tmp_path, "Interop CA")
    cert, key, _ = pki.issue("gw", "gw", ["gw.test"])
    replace(cert, tmp_path / "gw.pem")
    replace(key, tmp_path / "gw.key")
    shutil.copyfile(pki.pem_path, tmp_path / "clients.pem")
    tls_port, admin_port = tp.free_port(), tp.free_port()
    gw = tp.start(tmp_path, "term", config(upstream, tls_port, admin_port), "/ready")
    port = int(gw.base_url.rsplit(":", 1)[1])
    result: dict = {}

    def in_flight():
        try:
            r = requests.get(gw.base_url + "/hold", timeout=30)
            result["status"], result["body"] = r.status_code, r.json()
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = repr(e)

    t = threading.Thread(target=in_flight)
    t.start()
    assert upstream.entered.wait(timeout=10), "the request never reached the upstream"
    gw.proc.send_signal(signal.SIGTERM)

    deadline = time.monotonic() + CONNECT_REFUSED_DEADLINE_S
    while not refused(port):
        assert time.monotonic() < deadline, "the listener still accepts after SIGTERM"
        time.sleep(0.02)
    assert requests.get(f"http://127.0.0.1:{admin_port}/readyz", timeout=5).status_code == 503
    assert gw.proc.poll() is None, "exited with a request in flight"

    upstream.release.set()
    t.join(timeout=30)
    assert result.get("status") == 200, result
    assert result["body"]["x-forwarded-proto"] == "http"
    assert gw.proc.wait(timeout=tp.SHUTDOWN_DEADLINE_S) == 0
    for line in gw.stderr().splitlines():
        assert isinstance(json.loads(line), dict), line


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_an_idle_gateway_with_a_large_key_import_does_not_reread_it(tmp_path, upstream):
    """Reading a watched file raises an inotify event; the watcher must not answer its own reads
    by reading again (that once kept half a core busy hashing a large CSV several times a
    second)."""
    rows = ["Name,Key,Description,Enabled,UsagePlanIds"]
    rows += [f"key-{i},secret-key-value-{i:012d},generated,true,basic" for i in range(150_000)]
    (tmp_path / "keys.csv").write_text("\n".join(rows) + "\n")
    assert (tmp_path / "keys.csv").stat().st_size > 8_000_000

    def for_port(port: int) -> str:
        return f"""
listeners: [{{ bind: 127.0.0.1:{port} }}]
admin: {{ bind: 127.0.0.1:0 }}
usage_plans: {{ basic: {{}} }}
api_keys: {{ import: keys.csv }}
routes:
  - {{ route: "GET /ready", respond: {{ body: ok }} }}
"""

    gw = tp.start(tmp_path, "idle", for_port, "/ready")
    try:
        time.sleep(IDLE_SETTLE_S)  # the watcher's first events (its own first reads) pass
        before = cpu_seconds(gw.proc.pid)
        time.sleep(IDLE_WINDOW_S)
        used = cpu_seconds(gw.proc.pid) - before
        assert used < IDLE_CPU_BUDGET_S, f"an idle gateway used {used:.2f} s of CPU in {IDLE_WINDOW_S} s"
    finally:
        tp.stop(gw)


ACCESS_LINE_DEADLINE_S = 5.0
BURST_REQUESTS = 300


def access_lines(gw: tp.Gateway) -> dict[str, dict]:
    """The access-log lines written so far, by request id (a torn line fails json.loads)."""
    out = {}
    for line in gw.stderr().splitlines():
        entry = json.loads(line)
        if entry.get("target") == "tollgate::access":
            out[entry["request_id"]] = entry
    return out


def test_access_lines_reach_stderr_while_running_and_none_is_lost_at_exit(tmp_path):
    """Access-log lines are batched in memory (one write per batch, not per request): a line
    must still reach stderr soon while the gateway runs, and every batched line must be written
    when SIGTERM ends it."""

    def for_port(port: int) -> str:
        return f"""
listeners: [{{ bind: 127.0.0.1:{port} }}]
admin: {{ bind: 127.0.0.1:0 }}
routes:
  - {{ route: "GET /ready", respond: {{ body: ok }} }}
  - {{ route: "GET /hello", respond: {{ body: hi }} }}
"""

    gw = tp.start(tmp_path, "accesslog", for_port, "/ready")
    try:
        r = requests.get(gw.base_url + "/hello", timeout=10)
        assert r.status_code == 200
        first = r.headers["x-request-id"]
        deadline = time.monotonic() + ACCESS_LINE_DEADLINE_S
        while first not in access_lines(gw):
            assert time.monotonic() < deadline, "the access line never reached stderr"
            time.sleep(0.02)
        line = access_lines(gw)[first]
        assert (line["path"], line["status"], line["route"]) == ("/hello", 200, "GET /hello")

        with requests.Session() as s:
            ids = [s.get(gw.base_url + "/hello", timeout=10).headers["x-request-id"]
                   for _ in range(BURST_REQUESTS)]
    finally:
        tp.stop(gw)
    written = access_lines(gw)
    missing = [i for i in ids if i not in written]
    assert not missing, f"{len(missing)} of {BURST_REQUESTS} access lines lost at exit"


IDLE_CONNECTIONS = 2000
# hyper's buffers alone are ~24 KiB per connection; with them given back, what is left is the
# task, the socket's registration and allocator slack (~10 KiB measured on the debug build).
IDLE_KIB_PER_CONNECTION = 13.0
IDLE_RELEASE_DEADLINE_S = 10.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_keep_alive_connections_give_back_their_buffers(tmp_path):
    """Thousands of keep-alive clients that went quiet after a request: the gateway's memory per
    connection drops to a fraction of hyper's buffers once they count as idle."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * IDLE_CONNECTIONS + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    admin_port = tp.free_port()

    def for_port(port: int) -> str:
        return f"""
listeners: [{{ bind: 127.0.0.1:{port} }}]
admin: {{ bind: 127.0.0.1:{admin_port} }}
routes:
  - {{ route: "GET /ready", respond: {{ body: ok }} }}
"""

    def idle_gauge() -> float:
        text = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("tollgate_connections_idle "):
                return float(line.split()[1])
        raise AssertionError("tollgate_connections_idle not exported")

    gw = tp.start(tmp_path, "idleconns", for_port, "/ready")
    port = int(gw.base_url.rsplit(":", 1)[1])
    socks = []
    try:
        before = rss_kib(gw.proc.pid)
        for _ in range(IDLE_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200"), "answered"
            socks.append(s)
        deadline = time.monotonic() + IDLE_RELEASE_DEADLINE_S
        while idle_gauge() < IDLE_CONNECTIONS:
            assert time.monotonic() < deadline, f"only {idle_gauge()} connections idle"
            time.sleep(0.05)  # poll interval
        # The allocator is asked to return the freed buffers within a second of their release.
        per_connection = (rss_kib(gw.proc.pid) - before) / IDLE_CONNECTIONS
        deadline = time.monotonic() + IDLE_RELEASE_DEADLINE_S
        while per_connection > IDLE_KIB_PER_CONNECTION and time.monotonic() < deadline:
            time.sleep(0.1)  # poll interval
            per_connection = (rss_kib(gw.proc.pid) - before) / IDLE_CONNECTIONS
        assert per_connection <= IDLE_KIB_PER_CONNECTION, f"{per_connection:.1f} KiB per idle connection"
        # Still usable: the next request on an idle connection is answered.
        for s in socks[:: IDLE_CONNECTIONS // 20]:
            s.sendall(b"GET /ready HTTP/1.1\r\nhost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
        tp.stop(gw)
