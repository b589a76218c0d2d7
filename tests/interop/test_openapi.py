"""`tollgate openapi` documents pass openapi-spec-validator, the reference validator for
OpenAPI 3.1: every API of the shipped edge example and of a config using every authorizer kind,
in JSON and in YAML.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

import tollgate_process

HERE = Path(__file__).resolve().parent
EDGE = HERE.parent.parent / "deploy" / "edge" / "gateway.yaml"

EVERY_KIND = HERE.parent / "fixtures" / "openapi-every-kind.yaml"


def _openapi(config: Path, api: str, fmt: str, *extra: str) -> dict:
    r = subprocess.run(
        [str(tollgate_process.binary()), "--log-level", "off", "openapi", "-c", str(config),
         "--api", api, "--format", fmt, *extra],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "OPENAPI_SECRET": "openapi-test-secret"})
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout) if fmt == "json" else yaml.safe_load(r.stdout)


def _edge(tmp_path: Path) -> Path:
    root = tmp_path / "edge"
    text = EDGE.read_text().replace("/etc/tollgate", str(root / "etc")).replace(
        "/var/lib/tollgate", str(root / "state"))
    (root / "etc" / "secrets").mkdir(parents=True)
    for name in ("storefront", "acme-partner"):
        (root / "etc" / "secrets" / name).write_text("edge-secret\n")
    path = root / "gateway.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("fmt", ["json", "yaml"])
@pytest.mark.parametrize("api", ["default", "orders"])
def test_every_authorizer_kind_validates(tmp_path, api, fmt):
    config = tmp_path / "gateway.yaml"  # a copy: loading it writes the issuer key beside it
    config.write_text(EVERY_KIND.read_text())
    doc = _openapi(config, api, fmt)
    validate(doc)
    assert doc["openapi"] == "3.1.0"


@pytest.mark.parametrize("api", ["default", "orders", "orders-partner", "users"])
def test_the_edge_example_validates(tmp_path, api):
    doc = _openapi(_edge(tmp_path), api, "json")
    validate(doc)
    if api != "default":
        assert all(s["url"].startswith("https://") for s in doc["servers"]), doc["servers"]


@pytest.mark.parametrize("api", ["default", "orders"])
def test_the_aws_extensions_keep_the_document_valid(tmp_path, api):
    config = tmp_path / "gateway.yaml"
    config.write_text(EVERY_KIND.read_text())
    doc = _openapi(config, api, "json", "--aws-extensions")
    validate(doc)
    ops = [op for item in doc["paths"].values() for op in item.values() if isinstance(op, dict)]
    assert any("x-amazon-apigateway-integration" in op for op in ops), doc["paths"]


AWS_FIXTURES = HERE.parent / "fixtures" / "aws"


@pytest.mark.parametrize("name", ["rest-petstore-oas30.json", "rest-petstore-swagger.yaml",
                                  "http-api-oas30.json"])
def test_the_aws_export_fixtures_are_valid_documents(name):
    """The exports `tollgate import aws` is tested on are what the reference validator accepts
    (the two public repositories' definitions are kept as found: the managed gateway accepts
    them, the validator does not, and the importer must too)."""
    validate(yaml.safe_load((AWS_FIXTURES / name).read_text()))
