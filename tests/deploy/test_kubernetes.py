"""deploy/kubernetes/: what the manifests must say beyond their schemas (tests/deploy/run.sh
validates every manifest with kubernetes-validate against pinned Kubernetes versions): the
sidecar's probes on the admin port, the config mounted so that ConfigMap updates reach the
watcher, the Secret-backed secrets the config names, termination timing that covers the drain,
the Prometheus annotations, and the objects referring to each other by the right names.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import yaml

from kit import (
    DEPLOY,
    bind_host,
    bind_port,
    kubernetes_config_text,
    load_yaml_docs,
    parse_duration_s,
    secret_refs,
)

DRAIN_MARGIN_S = 5  # room between the drain's end and SIGKILL


@pytest.fixture(scope="module")
def objects() -> dict[str, dict]:
    out = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in load_yaml_docs(path):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.fixture(scope="module")
def pod(objects) -> dict:
    return objects["Deployment/products-api"]["spec"]["template"]


@pytest.fixture(scope="module")
def containers(pod) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"]}


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(kubernetes_config_text())


def port_number(container: dict, name: str) -> int:
    (p,) = [p for p in container["ports"] if p["name"] == name]
    return p["containerPort"]


def mounts_by_volume(container: dict) -> dict[str, dict]:
    return {m["name"]: m for m in container["volumeMounts"]}


def volumes(pod: dict) -> dict[str, dict]:
    return {v["name"]: v for v in pod["spec"]["volumes"]}


def test_expected_objects(objects):
    assert set(objects) == {
        "ConfigMap/products-api-tollgate",
        "Secret/products-api-tollgate-clients",
        "Deployment/products-api",
        "Service/products-api",
        "NetworkPolicy/products-api",
        "PodDisruptionBudget/products-api",
    }


def test_tollgate_is_a_sidecar_of_the_app(containers, config):
    assert set(containers) == {"tollgate", "app"}
    assert port_number(containers["tollgate"], "http") == bind_port(config["listeners"][0]["bind"])
    assert not containers["app"].get("ports"), "the app is reached through tollgate only"
    target = config["upstreams"]["app"]["targets"][0]
    app_env = {e["name"]: e["value"] for e in containers["app"]["env"]}
    assert target == f"http://{app_env['LISTEN_ADDR']}"


def test_probes_on_admin_port(containers, config):
    tg = containers["tollgate"]
    admin = config["admin"]["bind"]
    assert bind_host(admin) == "0.0.0.0", "kubelet probes connect to the pod IP"
    assert port_number(tg, "admin") == bind_port(admin)
    assert tg["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert tg["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert tg["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    # No admin token in this example: a token would have to be sent by the probes too.
    assert "token" not in config["admin"]


def test_config_mounted_for_reload(pod, containers, objects):
    tg = containers["tollgate"]
    args = tg["args"]
    path = PurePosixPath(args[args.index("-c") + 1])
    mount = mounts_by_volume(tg)["config"]
    # A directory mount: the kubelet updates it by swapping the `..data` symlink; a subPath
    # mount would never see an update.
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert PurePosixPath(mount["mountPath"]) == path.parent
    cm = volumes(pod)["config"]["configMap"]["name"]
    assert path.name in objects[f"ConfigMap/{cm}"]["data"]
    assert not any("subPath" in m for c in pod["spec"]["containers"] for m in c.get("volumeMounts", []))


def test_secrets_come_from_secret_volumes(pod, containers, config, objects):
    tg = containers["tollgate"]
    mounts = mounts_by_volume(tg)
    vols = volumes(pod)
    envs, files = secret_refs(config)
    assert not envs, "files, not env vars: an updated Secret is read at the next reload"
    files.add(config["issuer"]["signing_key"])
    for f in sorted(files):
        p = PurePosixPath(f)
        (vol,) = [n for n, m in mounts.items() if PurePosixPath(m["mountPath"]) == p.parent]
        assert mounts[vol]["readOnly"] is True
        secret = vols[vol]["secret"]["secretName"]
        if f"Secret/{secret}" in objects:
            assert p.name in objects[f"Secret/{secret}"]["stringData"], f"{secret} lacks {p.name}"
        else:
            # Created out of band (deploy/README.md): only the signing key.
            assert f == config["issuer"]["signing_key"], f"Secret {secret} is not in the kit"


def test_state_directory_is_writable(pod, containers, config):
    mounts = mounts_by_volume(containers["tollgate"])
    assert PurePosixPath(mounts["state"]["mountPath"]) == PurePosixPath(config["state"]["path"])
    assert not mounts["state"].get("readOnly")
    assert "emptyDir" in volumes(pod)["state"]


def test_termination_covers_the_drain(pod, containers, config):
    grace = parse_duration_s(config["limits"]["shutdown_grace"])
    period = pod["spec"]["terminationGracePeriodSeconds"]
    tg_sleep = containers["tollgate"]["lifecycle"]["preStop"]["sleep"]["seconds"]
    app_sleep = containers["app"]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert tg_sleep >= 1, "give endpoint removal time to reach the load balancers"
    assert tg_sleep + grace + DRAIN_MARGIN_S <= period, (tg_sleep, grace, period)
    # The app keeps answering until tollgate has drained, and still has time to stop itself.
    assert app_sleep >= tg_sleep + grace
    assert app_sleep + DRAIN_MARGIN_S <= period


def test_security_context(pod, containers):
    sc = pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532  # the image's USER
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    for c in containers.values():
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_prometheus_annotations(pod, containers, config):
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == bind_port(config["admin"]["bind"])
    assert ann["prometheus.io/path"] == "/metrics"
    # prometheus-kubernetes.yml's job keys on exactly these annotations.
    scrape = (DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text()
    for a in ("prometheus_io_scrape", "prometheus_io_port", "prometheus_io_path"):
        assert f"__meta_kubernetes_pod_annotation_{a}" in scrape


def test_objects_refer_to_each_other(objects, pod, containers):
    labels = pod["metadata"]["labels"]
    deploy = objects["Deployment/products-api"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = objects["Service/products-api"]
    assert svc["spec"]["selector"].items() <= labels.items()
    port_names = {p["name"] for p in containers["tollgate"]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"http"}
    np = objects["NetworkPolicy/products-api"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]} == port_names
    pdb = objects["PodDisruptionBudget/products-api"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < deploy["spec"]["replicas"]
