"""Every gateway config the deployment kit ships is a config tollgate accepts and serves.

Each example (Docker, systemd, ECS, the Kubernetes ConfigMap) is moved under a temporary
directory (its /etc/tollgate and /var/lib/tollgate paths), given the secrets it names (files or
environment variables), checked with `tollgate check`, then served with `tollgate run` on
loopback ports: /healthz and /readyz answer 200, and SIGTERM ends it with exit 0.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from kit import (
    DEPLOY,
    HTTP_TIMEOUT_S,
    binary,
    bind_host,
    free_port,
    kubernetes_config_text,
    rehome,
    secret_refs,
    start_gateway,
)

EXAMPLES = {
    "docker": lambda: (DEPLOY / "docker" / "gateway.yaml").read_text(),
    "systemd": lambda: (DEPLOY / "systemd" / "gateway.yaml").read_text(),
    "ecs": lambda: (DEPLOY / "ecs" / "gateway.yaml").read_text(),
    "edge": lambda: (DEPLOY / "edge" / "gateway.yaml").read_text(),
    "kubernetes": kubernetes_config_text,
    "otel-collector": lambda: (DEPLOY / "otel-collector" / "gateway.yaml").read_text(),
}
# Where the admin listener must be reachable from: a container's probes and health checks come
# from outside its loopback; on a VM, Prometheus runs beside it.
ADMIN_HOSTS = {
    "docker": "0.0.0.0",
    "systemd": "127.0.0.1",
    "ecs": "0.0.0.0",
    "edge": "127.0.0.1",
    "kubernetes": "0.0.0.0",
    "otel-collector": "127.0.0.1",
}


def prepare(name: str, root: Path) -> tuple[Path, dict]:
    """Writes the example under `root` with its secrets; returns (config path, environment)."""
    text = rehome(EXAMPLES[name](), root)
    config = yaml.safe_load(text)
    envs, files = secret_refs(config)
    for f in files:
        p = Path(f)
        assert p.is_absolute() and str(p).startswith(str(root)), f"secret file outside the kit's paths: {f}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"test-secret-{p.name}\n")
    env = {e: f"test-secret-{e}" for e in envs}
    path = root / "etc" / "tollgate" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, env


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_passes_check(name, tmp_path):
    path, env = prepare(name, tmp_path)
    r = subprocess.run(
        [str(binary()), "check", "-c", str(path), "--log-format", "text"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env},
    )
    assert r.returncode == 0, f"tollgate check refused the {name} example:\n{r.stdout}{r.stderr}"
    assert ": OK: " in r.stdout, r.stdout
    # No secret written inline in an example meant for production.
    assert "secret written inline" not in r.stderr, r.stderr


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_admin_bind(name):
    config = yaml.safe_load(EXAMPLES[name]())
    assert bind_host(config["admin"]["bind"]) == ADMIN_HOSTS[name]
    # No example ships an inline admin token; a commented `token:` line explains the option.
    assert "token" not in config["admin"]
    assert re.search(r"#\s*token: \{ (env|file): ", EXAMPLES[name]()), "explain the admin token option"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_config_serves_and_drains(name, tmp_path):
    path, env = prepare(name, tmp_path)
    text = path.read_text()
    # Loopback ports of our own instead of 8080/9901 (never bind 0.0.0.0 in a test).
    text = re.sub(r"bind: (0\.0\.0\.0|127\.0\.0\.1):8080", f"bind: 127.0.0.1:{free_port()}", text)
    text = re.sub(r"bind: (0\.0\.0\.0|127\.0\.0\.1):9901", "bind: 127.0.0.1:0", text)
    path.write_text(text)
    config = yaml.safe_load(text)
    binds = [lst["bind"] for lst in config["listeners"]] + [config["admin"]["bind"]]
    assert all(b.startswith("127.0.0.1:") for b in binds), binds
    gw = start_gateway(path, tmp_path, env=env)
    try:
        assert requests.get(gw.admin_url + "/healthz", timeout=HTTP_TIMEOUT_S).status_code == 200
        assert requests.get(gw.admin_url + "/readyz", timeout=HTTP_TIMEOUT_S).status_code == 200
        # The state directory was usable: the issuer created or read its signing key.
        key = Path(config["issuer"].get("signing_key") or Path(config["state"]["path"]) / "issuer.pem")
        assert key.is_file(), f"no signing key at {key}"
    finally:
        code = gw.stop()
    assert code == 0, gw.stderr()
    assert "shutdown complete" in gw.stderr()


def test_collector_receives_what_the_gateway_exports():
    """deploy/otel-collector: the collector's traces pipeline starts at an OTLP receiver whose
    HTTP endpoint is the address the example gateway exports to, and ends at an exporter."""
    gateway = yaml.safe_load(EXAMPLES["otel-collector"]())
    collector = yaml.safe_load((DEPLOY / "otel-collector" / "collector.yaml").read_text())
    tracing = gateway["telemetry"]["tracing"]
    assert tracing.get("protocol", "http") == "http"
    host_port = tracing["endpoint"].removeprefix("http://").rstrip("/")
    pipeline = collector["service"]["pipelines"]["traces"]
    assert "otlp" in pipeline["receivers"]
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == host_port
    for name in pipeline["processors"]:
        assert name in collector["processors"], name
    assert pipeline["exporters"] and all(e in collector["exporters"] for e in pipeline["exporters"])
