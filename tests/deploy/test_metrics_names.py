"""Every metric the alerting rules, their unit tests and the Grafana dashboard name is one the
real binary exports.

A gateway is started with a config that exercises every metric tollgate has (the embedded
issuer, a JWT authorizer fetching a remote key set, an external HTTP authorizer, an upstream,
an API key with a usage plan on a Redis backend that cannot be reached, a refused reload, a
TLS listener with a certificate made at test time), a
little traffic makes the labelled series appear (a 200, a 401, a 404, tokens issued and
refused, ...), and the metric families of its /metrics scrape (`# TYPE` lines) are compared
with every `tollgate_*` name in deploy/prometheus/rules/tollgate.rules.yml,
deploy/prometheus/tests/tollgate.test.yml and deploy/grafana/tollgate.json. A metric renamed or
removed in the code makes this fail.

The prometheus crate prints no `# TYPE` line for a labelled metric with no series yet, so the
traffic has to make each one appear; no name is taken from the source as a fallback.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from kit import DEPLOY, HTTP_TIMEOUT_S, REPO_ROOT, free_port, start_gateway

REFERENCING_FILES = [
    DEPLOY / "prometheus" / "rules" / "tollgate.rules.yml",
    DEPLOY / "prometheus" / "tests" / "tollgate.test.yml",
    DEPLOY / "grafana" / "tollgate.json",
]
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
NAME = re.compile(r"\btollgate_[a-z0-9_]*[a-z0-9]\b")
API_KEY = "deploy-test-key"
CLIENT_ID, CLIENT_SECRET = "deploy-test-client", "deploy-test-secret"
SERIES_DEADLINE_S = 15.0


# ----------------------------------------------------------------------------------------------
# Name extraction and comparison (pure functions, tested on their own below)
# ----------------------------------------------------------------------------------------------


def scrape_families(text: str) -> dict[str, str]:
    """Metric family name -> type, from the `# TYPE` lines of an exposition."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def referenced_names(paths: list[Path]) -> dict[str, set[str]]:
    """Every `tollgate_*` name written in the files -> the files naming it."""
    out: dict[str, set[str]] = {}
    for p in paths:
        for name in NAME.findall(p.read_text()):
            out.setdefault(name, set()).add(p.relative_to(REPO_ROOT).as_posix())
    return out


def missing_names(referenced: dict[str, set[str]], families: dict[str, str]) -> dict[str, set[str]]:
    """Referenced names that the scrape does not export. `x_bucket`, `x_sum` and `x_count`
    stand for the histogram `x`."""
    missing = {}
    for name, where in referenced.items():
        if name in families:
            continue
        base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), None)
        if base is not None and families.get(base) == "histogram":
            continue
        missing[name] = where
    return missing


def registered_in_source() -> set[str]:
    """The names src/metrics.rs registers (only to report traffic this test fails to make)."""
    return set(re.findall(r'"(tollgate_[a-z0-9_]+)"', (REPO_ROOT / "src" / "metrics.rs").read_text()))


# ----------------------------------------------------------------------------------------------
# The gateway and its traffic
# ----------------------------------------------------------------------------------------------


class Backend(BaseHTTPRequestHandler):
    """The upstream (any GET: 200) and the external authorizer (POST /authorize: allow)."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self._answer(200, {"ok": True})

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        if self.path == "/authorize":
            self._answer(200, {"isAuthorized": True, "context": {"tenant": "t1"}})
        else:
            self._answer(404, {"message": "Not Found"})

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_):
        pass


def self_signed(work: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for the TLS listener."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metrics.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("metrics.test")]), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = work / "tls.pem", work / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def config_text(port: int, backend: str, redis_port: int, state: Path, secret: Path,
                tls: tuple[Path, Path]) -> str:
    base = f"http://127.0.0.1:{port}"
    key_hash = hashlib.sha256(API_KEY.encode()).hexdigest()
    return f"""
listeners:
  - {{ bind: "127.0.0.1:{port}" }}
  - {{ bind: "127.0.0.1:0", tls: {{ cert: {json.dumps(str(tls[0]))}, key: {json.dumps(str(tls[1]))} }} }}
admin: {{ bind: "127.0.0.1:0" }}
limits: {{ shutdown_grace: 5s }}
telemetry:
  tracing: {{ endpoint: "http://127.0.0.1:{free_port()}", timeout: 1s }}   # no collector: exports fail
state:
  backend: redis
  url: redis://127.0.0.1:{redis_port}     # nothing listens there: every limit check fails
  on_error: allow
  path: {json.dumps(str(state))}
issuer:
  url: {base}
  resource_servers: [{{ identifier: api, scopes: [read] }}]
  clients:
    - {{ client_id: {CLIENT_ID}, client_secret: {{ file: {json.dumps(str(secret))} }}, scopes: [api/read] }}
authorizers:
  local: {{ type: jwt, issuer: self }}
  remote: {{ type: jwt, issuer: {base}, jwks_uri: {base}/.well-known/jwks.json }}
  ext: {{ type: http, url: {backend}/authorize, identity: ["header:x-caller"] }}
usage_plans:
  gold: {{ throttle: {{ rate: 100, burst: 100 }} }}
api_keys:
  keys: [{{ id: k1, key: "sha256:{key_hash}", plan: gold }}]
upstreams:
  backend: {{ targets: ["{backend}"], timeout: 5s, connect_timeout: 1s }}
defaults: {{ authorizer: local }}
routes:
  - {{ route: "GET /status", authorizer: none, respond: {{ status: 200, body: "ok" }} }}
  - {{ route: "GET /products", upstream: backend, scopes: [api/read] }}
  - {{ route: "GET /remote", upstream: backend, authorizer: remote }}
  - {{ route: "GET /ext", upstream: backend, authorizer: ext }}
  - {{ route: "GET /keyed", upstream: backend, authorizer: none, api_key_required: true }}
"""


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("metrics")
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    secret = work / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    config = work / "gateway.yaml"
    port = free_port()
    good = config_text(port, f"http://127.0.0.1:{backend.server_address[1]}", free_port(),
                       work / "state", secret, self_signed(work))
    config.write_text(good)
    gw = start_gateway(config, work)
    try:
        base = gw.public_urls[0]
        get = lambda path, **kw: requests.get(base + path, timeout=HTTP_TIMEOUT_S, **kw)  # noqa: E731
        assert get("/status").status_code == 200
        assert get("/products").status_code == 401
        assert get("/nothing-here").status_code == 404
        tok = requests.post(base + "/oauth2/token", data={"grant_type": "client_credentials"},
                            auth=(CLIENT_ID, CLIENT_SECRET), timeout=HTTP_TIMEOUT_S)
        assert tok.status_code == 200, tok.text
        bearer = {"authorization": "Bearer " + tok.json()["access_token"]}
        bad = requests.post(base + "/oauth2/token", data={"grant_type": "password"},
                            auth=(CLIENT_ID, CLIENT_SECRET), timeout=HTTP_TIMEOUT_S)
        assert bad.status_code == 400, bad.text
        for _ in range(2):  # a miss, then a hit of the verified-token cache
            assert get("/products", headers=bearer).status_code == 200
        for _ in range(2):  # a miss, then a hit of the external authorizer's cache
            assert get("/ext", headers={"x-caller": "c1"}).status_code == 200
        assert get("/keyed", headers={"x-api-key": API_KEY}).status_code == 200
        # A refused reload: a broken file, POST /reload, the good file back.
        config.write_text("listeners: [\n")
        r = requests.post(gw.admin_url + "/reload", timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 422, r.text
        config.write_text(good)
        # The remote key set is fetched in the background from the load on (the first try may
        # fail: it starts before the listener is bound; either result makes the series); a
        # token whose kid the set lacks asks for a fetch too.
        deadline = time.monotonic() + SERIES_DEADLINE_S
        while True:
            get("/remote", headers=bearer)
            text = gw.metrics()
            if registered_in_source() <= set(scrape_families(text)):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.25)
    finally:
        code = gw.stop()
        backend.shutdown()
    assert code == 0, gw.stderr()
    return text


def test_scrape_is_prometheus_text(scrape):
    families = scrape_families(scrape)
    assert families.get("tollgate_requests_total") == "counter"
    assert families.get("tollgate_request_duration_seconds") == "histogram"


def test_every_referenced_metric_is_exported(scrape):
    referenced = referenced_names(REFERENCING_FILES)
    for p in REFERENCING_FILES:
        assert any(p.relative_to(REPO_ROOT).as_posix() in w for w in referenced.values()), f"{p} names no metric"
    families = scrape_families(scrape)
    missing = missing_names(referenced, families)
    assert not missing, (
        "metrics named by the deployment kit that tollgate does not export:\n"
        + "\n".join(f"  {n}  (in {', '.join(sorted(w))})" for n, w in sorted(missing.items()))
        + "\nexported: " + ", ".join(sorted(families))
    )


def test_traffic_makes_every_registered_metric_appear(scrape):
    """Not a requirement of the kit but of this test's soundness: a metric added to
    src/metrics.rs that this traffic never makes appear is reported, so the traffic (and the
    dashboard) can be extended."""
    absent = registered_in_source() - set(scrape_families(scrape))
    if absent:
        warnings.warn(f"no series of {sorted(absent)} after the test traffic; extend it", stacklevel=1)
    used = set(referenced_names(REFERENCING_FILES))
    unused = {n for n in scrape_families(scrape) if n.startswith("tollgate_")} - {
        next((n[: -len(s)] for s in HISTOGRAM_SUFFIXES if n.endswith(s)), n) for n in used
    }
    if unused:
        warnings.warn(f"exported but on no dashboard panel or rule: {sorted(unused)}", stacklevel=1)


def test_a_renamed_metric_is_caught(scrape):
    """The comparison itself: renaming a metric in the exposition (as a rename in
    src/metrics.rs would) makes the names that used it missing."""
    renamed = scrape.replace("tollgate_denied_total", "tollgate_refused_total")
    renamed = renamed.replace("tollgate_request_duration_seconds", "tollgate_request_seconds")
    missing = missing_names(referenced_names(REFERENCING_FILES), scrape_families(renamed))
    assert "tollgate_denied_total" in missing
    assert "tollgate_request_duration_seconds_bucket" in missing
    assert "tollgate_requests_total" not in missing
