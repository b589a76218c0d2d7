#!/usr/bin/env bash
# The project's one test command (README, "Testing"). `.ci/run` runs exactly this.
# It installs what the tests need on a fresh Debian machine, then runs every check.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: promtool (from `prometheus`) validates the /metrics text.
if ! command -v promtool >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Formatting and lints first: they are quick and a failure there is a failure.
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

# Unit tests, integration tests (tests/it: real sockets, in-process gateways), doc tests, and
# one pass through each criterion benchmark in test mode so benches keep compiling and running.
cargo test --all-targets --locked
cargo test --doc --locked
