"""Shared helpers for the deployment-kit checks (tests/deploy/test_*.py).

Run: `tests/deploy/run.sh` (scripts/test.sh runs it), or by hand after `cargo build` and the
installs run.sh does:
    .venv-interop/bin/python -m pytest -q tests/deploy
The binary is taken from $TOLLGATE_BIN (default target/debug/tollgate, relative to the repo).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
STARTUP_DEADLINE_S = 20.0
SHUTDOWN_DEADLINE_S = 15.0
HTTP_TIMEOUT_S = 10.0

# Never send loopback traffic through a proxy configured in the environment.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))


def binary() -> Path:
    raw = os.environ.get("TOLLGATE_BIN", "target/debug/tollgate")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.fail(f"tollgate binary not found at {path}: build it first (cargo build)")
    return path


def busybox() -> str:
    """A local busybox, to run the image's and the task definition's health-check commands
    (`busybox wget ...`) exactly as written. run.sh installs Debian's busybox-static."""
    found = shutil.which("busybox")
    if not found:
        pytest.fail("busybox is not installed (apt-get install busybox-static; run.sh does)")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_duration_s(text: str) -> float:
    """tollgate's durations as the examples write them: `30s`, `2m`, `1h`, `500ms`."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text).strip())
    assert m, f"not a duration: {text!r}"
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    return float(m.group(1)) * factor


def load_yaml_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kubernetes_config_text() -> str:
    """The gateway.yaml held by deploy/kubernetes/configmap.yaml."""
    (cm,) = load_yaml_docs(DEPLOY / "kubernetes" / "configmap.yaml")
    return cm["data"]["gateway.yaml"]


def rehome(text: str, root: Path, prefixes=("/etc/tollgate", "/var/lib/tollgate")) -> str:
    """Moves the absolute paths an example config uses under `root`, so that it can be checked
    or run here without touching /etc or /var."""
    for p in prefixes:
        text = text.replace(p, str(root) + p)
    return text


def secret_refs(config: dict) -> tuple[set[str], set[str]]:
    """The `{ env: NAME }` and `{ file: PATH }` secrets a config names: (envs, files)."""
    envs, files = set(), set()

    def walk(v):
        if isinstance(v, dict):
            if set(v) == {"env"}:
                envs.add(v["env"])
            elif set(v) == {"file"}:
                files.add(v["file"])
            else:
                for x in v.values():
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(config)
    return envs, files


def bind_port(bind: str) -> int:
    return int(bind.rsplit(":", 1)[1])


def bind_host(bind: str) -> str:
    return bind.rsplit(":", 1)[0].strip("[]")


class Gateway:
    """One `tollgate run` process started from a config file."""

    def __init__(self, proc: subprocess.Popen, stderr_path: Path, admin: str, public: list[str]):
        self.proc = proc
        self.stderr_path = stderr_path
        self.admin_url = f"http://{admin}"
        self.public_urls = [f"http://{a}" for a in public]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def metrics(self) -> str:
        r = requests.get(self.admin_url + "/metrics", timeout=HTTP_TIMEOUT_S)
        assert r.status_code == 200, r.text
        return r.text

    def stop(self) -> int:
        """SIGTERM, then the exit code (fails if the process does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=SHUTDOWN_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"tollgate did not exit within {SHUTDOWN_DEADLINE_S}s of SIGTERM")


def start_gateway(config: Path, workdir: Path, prefix: list[str] | None = None,
                  env: dict | None = None) -> Gateway:
    """Starts `tollgate run -c CONFIG` (optionally under a wrapper command such as `unshare`)
    and waits for its `tollgate serving` log line, which names the bound addresses."""
    stderr_path = workdir / f"{config.stem}.stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [*(prefix or []), str(binary()), "run", "-c", str(config), "--log-format", "json"],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        text = stderr_path.read_text(errors="replace")
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "tollgate serving":
                public = re.findall(r"[\d.]+:\d+", rec["public"])
                gw = Gateway(proc, stderr_path, rec["admin"], public)
                # Serving is logged once the admin listener is bound; wait for it to answer
                # (any status: with an admin token, /healthz answers 401).
                for _ in range(100):
                    try:
                        requests.get(gw.admin_url + "/healthz", timeout=1)
                        return gw
                    except requests.RequestException:
                        time.sleep(0.05)
                return gw
        if proc.poll() is not None:
            pytest.fail(f"tollgate exited with {proc.returncode} during startup:\n{text}")
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    pytest.fail(f"tollgate did not start within {STARTUP_DEADLINE_S}s:\n{stderr_path.read_text()}")


def run_image_shell(script: str, env: dict, timeout: float = 30) -> None:
    """Runs a `busybox sh -c SCRIPT` command the way the image would: with busybox's shell,
    and, since the image has no applets on PATH (only /usr/local/bin/busybox itself) while a
    Debian busybox runs its applets by name, once more with dash and an empty PATH, which fails
    on any command that is neither a shell built-in nor called by its path."""
    dash = shutil.which("dash")
    if not dash:
        pytest.fail("dash is not installed (apt-get install dash; run.sh does)")
    for shell in ([busybox(), "sh"], [dash]):
        r = subprocess.run([*shell, "-c", script], env={**env, "PATH": "/nonexistent"},
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{shell[0]} -c failed ({r.returncode}):\n{script}\n{r.stderr}"
