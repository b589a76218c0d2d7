"""deploy/Dockerfile: the properties issue 8 asks of the image, read from the parsed Dockerfile
(dockerfile-parse), plus the two runtime behaviours the image relies on, exercised on the real
binary: the HEALTHCHECK command, run as written with a local busybox, succeeds against a
serving gateway and fails once it is gone; and tollgate running as PID 1 of its own PID
namespace (as in a container without an init) handles SIGTERM and exits 0.

No container engine runs here, so the image build itself is not exercised (deploy/README.md);
hadolint lints the Dockerfile in tests/deploy/run.sh.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from kit import (
    DEPLOY,
    REPO_ROOT,
    SHUTDOWN_DEADLINE_S,
    bind_port,
    busybox,
    free_port,
    rehome,
    run_image_shell,
    secret_refs,
    start_gateway,
)

DOCKERFILE = DEPLOY / "Dockerfile"
EXAMPLE = DEPLOY / "docker" / "gateway.yaml"


@pytest.fixture(scope="module")
def stages() -> list[list[dict]]:
    """The Dockerfile's instructions, split by FROM (comments dropped)."""
    parsed = DockerfileParser(path=str(DOCKERFILE))
    out: list[list[dict]] = []
    for ins in parsed.structure:
        if ins["instruction"] == "FROM":
            out.append([])
        if out and ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


def exec_form(value: str) -> list[str]:
    """An exec-form (JSON array) argument; fails for the shell form."""
    try:
        v = json.loads(value)
    except ValueError:
        pytest.fail(f"not exec form (a JSON array): {value!r}")
    assert isinstance(v, list) and all(isinstance(x, str) for x in v), value
    return v


def healthcheck_command(stage) -> list[str]:
    (hc,) = values(stage, "HEALTHCHECK")
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc, re.S)
    assert m, f"HEALTHCHECK without an exec-form CMD: {hc!r}"
    return exec_form(m.group(1))


def test_multi_stage_build_with_small_runtime(stages):
    assert len(stages) >= 2, "a multi-stage build"
    froms = [values(s, "FROM")[0] for s in stages]
    assert re.match(r"rust:\S+ AS build$", froms[0]), froms[0]
    final = froms[-1]
    assert " AS " not in final
    assert final.startswith("gcr.io/distroless/cc-debian12"), final
    # The build compiles the release profile from the lock file, and only the runtime stage
    # carries the binary.
    build_runs = " ".join(values(stages[0], "RUN"))
    assert "cargo build --release --locked --bin tollgate" in build_runs
    copies = values(stages[-1], "COPY")
    assert any(c.startswith("--from=build ") and c.endswith(" /usr/local/bin/tollgate") for c in copies)


def test_runs_as_non_root(stages):
    final = stages[-1]
    users = values(final, "USER")
    assert users, "the runtime stage sets USER"
    user = users[-1]
    uid = user.split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit() and int(uid) > 0, user
    order = [i["instruction"] for i in final]
    assert order.index("USER") < order.index("ENTRYPOINT")
    # The state directory belongs to that user.
    state = yaml.safe_load(EXAMPLE.read_text())["state"]["path"]
    assert any(c.startswith(f"--from=build --chown={user} ") and c.endswith(f" {state}")
               for c in values(final, "COPY")), f"{state} must be owned by {user}"


def test_entrypoint_exec_form_and_stopsignal(stages):
    final = stages[-1]
    (entry,) = values(final, "ENTRYPOINT")
    argv = exec_form(entry)
    # Exec form straight into the binary: no shell in between to swallow SIGTERM.
    assert argv == ["/usr/local/bin/tollgate"], argv
    assert exec_form(values(final, "CMD")[-1])[0] == "run"
    assert values(final, "STOPSIGNAL") == ["SIGTERM"]


def test_config_mount_and_ports(stages):
    final = stages[-1]
    envs = " ".join(values(final, "ENV"))
    assert "TOLLGATE_CONFIG=/etc/tollgate/gateway.yaml" in envs
    config = yaml.safe_load(EXAMPLE.read_text())
    exposed = {int(p.split("/")[0]) for v in values(final, "EXPOSE") for p in v.split()}
    assert {bind_port(config["listeners"][0]["bind"]), bind_port(config["admin"]["bind"])} <= exposed
    # The documented `docker run` mounts the example's directory at /etc/tollgate.
    assert '"$PWD/deploy/docker:/etc/tollgate:ro"' in DOCKERFILE.read_text()


def test_healthcheck_targets_healthz(stages):
    cmd = healthcheck_command(stages[-1])
    assert cmd[0] == "/usr/local/bin/busybox" and cmd[1] == "wget", cmd
    url = cmd[-1]
    admin_port = bind_port(yaml.safe_load(EXAMPLE.read_text())["admin"]["bind"])
    assert url == f"http://127.0.0.1:{admin_port}/healthz", url
    # The binary it runs is in the image, copied from a static busybox.
    assert any(c.endswith(" /usr/local/bin/busybox") for c in values(stages[-1], "COPY"))


def dockerignore_includes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern that matches a path (or one of its parents) decides."""
    included = True
    parts = path.split("/")
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.rstrip("/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:i]), pat):
                included = neg
                break
    return included


def test_build_context_has_every_cargo_target():
    patterns = [
        ln.strip() for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    manifest = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock", manifest["lib"]["path"]]
    for kind in ("bin", "bench", "test"):
        for t in manifest.get(kind, []):
            needed.append(t.get("path") or {"bench": f"benches/{t['name']}.rs"}.get(kind, ""))
    for path in filter(None, needed):
        assert dockerignore_includes(patterns, path), f"the build context lacks {path}"
    for path in ["target/release/tollgate", ".venv-interop/bin/python", "state/issuer.pem", ".git/HEAD"]:
        assert not dockerignore_includes(patterns, path), f"the build context should not hold {path}"


def test_healthcheck_and_sigterm_as_pid_1(stages, tmp_path):
    """The docker example config, served by tollgate as PID 1 of a new PID namespace: the
    image's HEALTHCHECK command passes; SIGTERM from outside (as `docker stop` sends it) makes
    it drain and exit 0; afterwards the health check fails."""
    text = rehome(EXAMPLE.read_text(), tmp_path)
    admin_port = free_port()
    text = text.replace("bind: 0.0.0.0:8080", f"bind: 127.0.0.1:{free_port()}")
    text = text.replace("bind: 0.0.0.0:9901", f"bind: 127.0.0.1:{admin_port}")
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    envs, _ = secret_refs(yaml.safe_load(text))
    env = {e: "test-secret" for e in envs}

    gw = start_gateway(config, tmp_path, prefix=["unshare", "--pid", "--fork", "--kill-child"], env=env)
    try:
        # The process `unshare` forked is tollgate, and it is PID 1 in its namespace.
        children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        child = int(children[0])
        status = Path(f"/proc/{child}/status").read_text()
        nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M).group(1).split()
        assert nspid[-1] == "1", f"tollgate is not PID 1 in its namespace: NSpid {nspid}"

        cmd = healthcheck_command(stages[-1])
        cmd = [busybox()] + cmd[1:-1] + [cmd[-1].replace(":9901/", f":{admin_port}/")]
        ok = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        assert ok.returncode == 0, f"HEALTHCHECK failed against a serving gateway: {shlex.join(cmd)}\n{ok.stderr}"

        # SIGTERM to PID 1 from outside its namespace is delivered only because tollgate
        # handles it (the kernel drops unhandled signals to a namespace's init).
        subprocess.run(["kill", "-TERM", str(child)], check=True)
        code = gw.proc.wait(timeout=SHUTDOWN_DEADLINE_S)
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait()
    assert code == 0, f"tollgate as PID 1 exited {code} after SIGTERM:\n{gw.stderr()}"
    assert "shutdown complete" in gw.stderr()
    failed = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    assert failed.returncode != 0, "the health check passes with no gateway running"


def test_token_aware_probe_from_readme(tmp_path):
    """deploy/README.md's exec probe for an admin listener with a token, run as written (paths
    moved under a temporary directory) against the docker example with `admin.token` from a
    file: it passes; the plain HEALTHCHECK (no header) is refused."""
    readme = (DEPLOY / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "readinessProbe" in b]
    command = yaml.safe_load(textwrap.dedent(block))["readinessProbe"]["exec"]["command"]
    assert command[:3] == ["/usr/local/bin/busybox", "sh", "-c"]
    token_file = tmp_path / "etc" / "tollgate" / "secrets" / "admin-token"
    token_file.parent.mkdir(parents=True)
    token_file.write_text("s3cret-admin-token")  # no trailing newline, as Secret files often are

    admin_port = free_port()
    text = rehome(EXAMPLE.read_text(), tmp_path)
    text = text.replace("bind: 0.0.0.0:8080", f"bind: 127.0.0.1:{free_port()}")
    text = text.replace("bind: 0.0.0.0:9901", f"bind: 127.0.0.1:{admin_port}")
    text, n = re.subn(r"# token: \{ env: TOLLGATE_ADMIN_TOKEN \}", f"token: {{ file: {token_file} }}", text)
    assert n == 1
    config = tmp_path / "gateway.yaml"
    config.write_text(text)
    envs, _ = secret_refs(yaml.safe_load(text))
    gw = start_gateway(config, tmp_path, env={e: "x" for e in envs})
    try:
        script = rehome(command[3], tmp_path).replace("/usr/local/bin/busybox", busybox())
        script = script.replace(":9901/", f":{admin_port}/")
        run_image_shell(script, {})
        plain = [busybox(), "wget", "-q", "-O", "/dev/null", f"http://127.0.0.1:{admin_port}/healthz"]
        assert subprocess.run(plain, capture_output=True, timeout=10).returncode != 0
    finally:
        assert gw.stop() == 0, gw.stderr()
