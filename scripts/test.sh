#!/usr/bin/env bash
# The project's one test command (README, "Testing"). `.ci/run` runs exactly this.
# It installs what the tests need on a fresh Debian machine, then runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: promtool (from `prometheus`) validates the /metrics text, and
# redis-server backs the Redis store tests (each test starts its own on a free port; the
# package's own service is stopped so nothing is left listening on 6379). curl (OpenSSL, with
# HTTP/2) is a second TLS client for the interop suite. nginx is a real upstream and a trusted
# front proxy for the attack suite (tests/interop/test_attack_*.py), which runs its own nginx
# processes on free ports; the package's own service is stopped (and kept from starting at
# boot) so nothing is left listening on port 80.
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v curl >/dev/null 2>&1 || missing+=(curl ca-certificates)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" redis-server "* ]]; then
    service redis-server stop >/dev/null 2>&1 || true
  fi
  if [[ " ${missing[*]} " == *" nginx "* ]]; then
    service nginx stop >/dev/null 2>&1 || true
    systemctl disable nginx >/dev/null 2>&1 || true
  fi
fi

# Formatting, lints and the module layering first: they are quick and a failure there is a
# failure. modgraph.py fails when a module imports one that imports it back (README, "Layout").
cargo fmt --all -- --check
python3 scripts/modgraph.py >/dev/null
# Without the default `jemalloc` feature: it only picks the binary's allocator (two cfg'd
# statics), and leaving it out spares this check a second build of jemalloc's C sources.
cargo clippy --all-targets --locked --no-default-features -- -D warnings

# Unit tests, integration tests (tests/it: real sockets, in-process gateways), doc tests, and
# one pass through each criterion benchmark in test mode so benches keep compiling and running.
cargo test --all-targets --locked
cargo test --doc --locked

# Interop: third-party OAuth2/JWT clients (requests-oauthlib, Authlib, PyJWT) against the real
# binary's embedded issuer (tests/interop). Their virtualenv is reused while it still works and
# tests/interop/requirements.txt is unchanged (a stamp of its hash marks a finished install).
VENV=.venv-interop
REQS=tests/interop/requirements.txt
PY=python3
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  PY=/usr/bin/python3
fi
if ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$stamp" ] ||
  ! "$VENV/bin/python" -c 'import pytest, requests, requests_oauthlib, oauthlib, authlib, jwt, botocore, hypercorn, h2, websockets, openapi_spec_validator, openapi_python_client, ruff, httpx, attrs, schemathesis, hypothesis, opentelemetry.proto, opentelemetry.sdk, opentelemetry.instrumentation.wsgi' 2>/dev/null; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install -q -r "$REQS"
  echo "$stamp" >"$VENV/.requirements.sha256"
fi
# target/debug/tollgate was built by `cargo test` above (integration tests need it).
TOLLGATE_BIN=target/debug/tollgate "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/interop

# Deployment kit (deploy/README.md, "How the kit is checked"): hadolint on the Dockerfile,
# systemd-analyze on the unit, promtool on the scrape configs and alerting rules (and their unit
# tests), kubernetes-validate on the manifests, and tests/deploy against the same binary
# (example configs served, health checks run, metric names checked against a live scrape).
VENV="$VENV" TOLLGATE_BIN=target/debug/tollgate bash tests/deploy/run.sh
