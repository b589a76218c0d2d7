"""deploy/ecs/task-definition.json: validated against the ECS API's own input model for
RegisterTaskDefinition (botocore's service model and ParamValidator, the check the AWS SDK runs
before sending the request), then checked for what the sidecar needs: names, ports matching the
config, health checks that really work against tollgate, the stop timeout covering the drain,
start and stop order, the secrets the config names, and the config-writer container's script,
run here with busybox to produce a config that `tollgate check` accepts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kit import (
    DEPLOY,
    binary,
    bind_host,
    bind_port,
    busybox,
    free_port,
    parse_duration_s,
    rehome,
    run_image_shell,
    secret_refs,
    start_gateway,
)

TASK = DEPLOY / "ecs" / "task-definition.json"
CONFIG = DEPLOY / "ecs" / "gateway.yaml"
FARGATE_MAX_STOP_TIMEOUT = 120
STOP_MARGIN_S = 5  # room between the drain's end and SIGKILL


@pytest.fixture(scope="module")
def task() -> dict:
    return json.loads(TASK.read_text())


@pytest.fixture(scope="module")
def containers(task) -> dict[str, dict]:
    return {c["name"]: c for c in task["containerDefinitions"]}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def test_valid_register_task_definition_input(task):
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    report = ParamValidator().validate(task, shape)
    assert not report.has_errors(), report.generate_report()


def test_container_names_and_essentials(containers):
    assert set(containers) == {"tollgate", "app", "tollgate-config"}
    assert containers["tollgate"]["essential"] is True
    assert containers["app"]["essential"] is True
    assert containers["tollgate-config"]["essential"] is False


def test_port_mappings_match_config(containers, config):
    ports = {p["name"]: p for p in containers["tollgate"]["portMappings"]}
    assert ports["http"]["containerPort"] == bind_port(config["listeners"][0]["bind"])
    assert ports["admin"]["containerPort"] == bind_port(config["admin"]["bind"])
    # In awsvpc mode the load balancer and Prometheus reach the task's address, not its loopback.
    assert bind_host(config["listeners"][0]["bind"]) == "0.0.0.0"
    assert bind_host(config["admin"]["bind"]) == "0.0.0.0"
    # The app is reached through tollgate only: no port of its own.
    assert not containers["app"].get("portMappings")
    upstream = config["upstreams"]["app"]["targets"][0]
    assert upstream.startswith("http://127.0.0.1:")
    assert upstream.split("//")[1] in json.dumps(containers["app"]["environment"])


def test_stop_timeout_covers_the_drain(containers, config):
    grace = parse_duration_s(config["limits"]["shutdown_grace"])
    stop = containers["tollgate"]["stopTimeout"]
    assert grace + STOP_MARGIN_S <= stop <= FARGATE_MAX_STOP_TIMEOUT, (grace, stop)


def test_start_and_stop_order(containers):
    deps = {d["containerName"]: d["condition"] for d in containers["tollgate"]["dependsOn"]}
    # tollgate starts once its config is written and the app is healthy; ECS stops containers
    # in the reverse order, so tollgate drains before the app gets SIGTERM.
    assert deps == {"tollgate-config": "SUCCESS", "app": "HEALTHY"}
    assert containers["app"]["healthCheck"]["command"]
    assert not containers["app"].get("dependsOn")


def test_runtime_hardening(containers):
    tg = containers["tollgate"]
    assert tg["user"] == "65532:65532"
    assert tg["readonlyRootFilesystem"] is True
    assert tg["linuxParameters"]["capabilities"]["drop"] == ["ALL"]
    mounts = {m["containerPath"]: m for m in tg["mountPoints"]}
    assert mounts["/etc/tollgate"]["readOnly"] is True
    assert mounts["/var/lib/tollgate"]["readOnly"] is False


def test_config_from_secrets(containers, config):
    envs, files = secret_refs(config)
    assert not files
    tg_secrets = {s["name"] for s in containers["tollgate"]["secrets"]}
    assert envs <= tg_secrets, f"config names env secrets the task does not provide: {envs - tg_secrets}"
    init = containers["tollgate-config"]
    script = init["command"][0]
    init_secrets = {s["name"] for s in init["secrets"]}
    assert set(re.findall(r"\$([A-Z_]+)", script)) <= init_secrets
    # The tollgate container's -c points at the file the config writer writes.
    cmd = containers["tollgate"]["command"]
    path = cmd[cmd.index("-c") + 1]
    assert f"> {path};" in script
    assert f"> {config['issuer']['signing_key']};" in script


def test_config_writer_script_produces_a_valid_config(containers, tmp_path):
    """Runs the tollgate-config container's command (busybox sh -c SCRIPT) with the kit's
    paths moved under a temporary directory, then checks what it wrote."""
    init = containers["tollgate-config"]
    assert init["entryPoint"][:3] == ["/usr/local/bin/busybox", "sh", "-c"]
    script = rehome(init["command"][0], tmp_path).replace("/usr/local/bin/busybox", busybox())
    (tmp_path / "var" / "lib" / "tollgate").mkdir(parents=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    env = {
        "TOLLGATE_CONFIG_YAML": rehome(CONFIG.read_text(), tmp_path),
        "TOLLGATE_SIGNING_KEY": key,
    }
    run_image_shell(script, env)
    written = tmp_path / "etc" / "tollgate" / "gateway.yaml"
    pem = tmp_path / "etc" / "tollgate" / "keys" / "issuer.pem"
    assert written.read_text().strip() == env["TOLLGATE_CONFIG_YAML"].strip()
    assert pem.stat().st_mode & 0o777 == 0o600
    assert pem.stat().st_uid == 65532 or os.geteuid() != 0
    check = subprocess.run(
        [str(binary()), "check", "-c", str(written)], capture_output=True, text=True, timeout=60,
        env={"INVENTORY_SECRET": "x", "READER_SECRET": "y"},
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # The key written is the one tollgate reads (check reads an existing key file).
    assert ": OK: " in check.stdout


def test_health_check_command_works(containers, config, tmp_path):
    """The tollgate container's healthCheck, run as written with busybox, against the ECS
    example config served on loopback ports."""
    hc = containers["tollgate"]["healthCheck"]
    cmd = hc["command"]
    assert cmd[0] == "CMD"
    admin_port = bind_port(config["admin"]["bind"])
    assert cmd[-1] == f"http://127.0.0.1:{admin_port}/healthz"
    assert hc["interval"] >= hc["timeout"] and hc["retries"] >= 1

    port = free_port()
    text = rehome(CONFIG.read_text(), tmp_path)
    text = text.replace("bind: 0.0.0.0:8080", f"bind: 127.0.0.1:{free_port()}")
    text = text.replace(f"bind: 0.0.0.0:{admin_port}", f"bind: 127.0.0.1:{port}")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    gw = start_gateway(path, tmp_path, env={"INVENTORY_SECRET": "x", "READER_SECRET": "y"})
    argv = [busybox()] + cmd[2:-1] + [cmd[-1].replace(f":{admin_port}/", f":{port}/")]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
    finally:
        assert gw.stop() == 0, gw.stderr()
