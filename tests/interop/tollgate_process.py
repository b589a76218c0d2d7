"""Starting and stopping the real `tollgate` binary for the Python suites.

The binary is taken from $TOLLGATE_BIN (default target/debug/tollgate, relative to the repo).
A gateway is started on a port picked up front (some configs must name their own address, e.g.
the issuer URL), with retries if that port is taken before tollgate binds it, and is ready once
`ready_path` answers 200. Stopping sends SIGTERM and checks the graceful exit and the JSON logs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

# Never send loopback traffic through a proxy configured in the environment.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 20.0
SHUTDOWN_DEADLINE_S = 15.0
START_ATTEMPTS = 3


class Gateway:
    """A running tollgate process."""

    def __init__(self, proc: subprocess.Popen, base_url: str, stderr_path: Path):
        self.proc = proc
        self.base_url = base_url
        self.stderr_path = stderr_path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary() -> Path:
    raw = os.environ.get("TOLLGATE_BIN", "target/debug/tollgate")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        pytest.fail(f"tollgate binary not found at {path}: build it first (cargo build)")
    return path


def _start_once(workdir: Path, name: str, attempt: int, config_for_port: Callable[[int], str],
                ready_path: str, env: dict | None, gateway_class: type) -> Gateway | None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    config = workdir / f"{name}-{attempt}.yaml"
    config.write_text(config_for_port(port))
    stderr_path = workdir / f"{name}-{attempt}.stderr"
    with open(stderr_path, "wb") as err, open(workdir / f"{name}-{attempt}.stdout", "wb") as out:
        proc = subprocess.Popen(
            [str(binary()), "run", "-c", str(config), "--log-format", "json"],
            cwd=workdir,
            env=dict(os.environ, **(env or {})),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    gw = gateway_class(proc, base_url, stderr_path)
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"tollgate exited with {proc.returncode} during startup:\n{gw.stderr()}")
            return None
        try:
            r = requests.get(base_url + ready_path, timeout=1.0)
            if r.status_code == 200:
                return gw
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as e:
            last = repr(e)
        time.sleep(0.05)  # poll interval
    proc.kill()
    proc.wait()
    pytest.fail(f"tollgate did not serve {ready_path} within {STARTUP_DEADLINE_S}s "
                f"(last: {last}); stderr:\n{gw.stderr()}")


def start(workdir: Path, name: str, config_for_port: Callable[[int], str], ready_path: str,
          env: dict | None = None, gateway_class: type = Gateway) -> Gateway:
    """Starts tollgate with the config `config_for_port(port)` and waits until `ready_path`
    answers 200, retrying on a fresh port if the process exits during startup."""
    for attempt in range(START_ATTEMPTS):
        gw = _start_once(workdir, name, attempt, config_for_port, ready_path, env, gateway_class)
        if gw is not None:
            return gw
    pytest.fail(f"tollgate did not start ({START_ATTEMPTS} attempts); see the captured output above")


def stop(gw: Gateway, secrets: tuple[str, ...] = ()) -> None:
    """SIGTERM, then asserts: it was still running, exited 0 in time, logged only JSON lines,
    and none of `secrets` appears in its logs."""
    still_running = gw.proc.poll() is None
    if still_running:
        gw.proc.send_signal(signal.SIGTERM)
    try:
        code = gw.proc.wait(timeout=SHUTDOWN_DEADLINE_S)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait()
        pytest.fail(f"tollgate did not exit within {SHUTDOWN_DEADLINE_S}s of SIGTERM")
    stderr = gw.stderr()
    assert still_running, f"tollgate died during the tests (exit {code}); stderr:\n{stderr}"
    assert code == 0, f"tollgate exited {code} after SIGTERM; stderr:\n{stderr}"
    for line in stderr.splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    for secret in secrets:
        assert secret not in stderr, "a secret reached the logs"
