"""The release profile the Dockerfile builds with: tuned for a proxy, and the panic strategy
written down on purpose (deploy/README.md, "Release build", says why)."""

from __future__ import annotations

import tomllib

from kit import DEPLOY, REPO_ROOT


def test_release_profile():
    profile = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["profile"]["release"]
    assert profile["lto"] == "fat"
    assert profile["codegen-units"] == 1
    assert profile.get("panic") in ("unwind", "abort"), "choose the panic strategy explicitly"
    readme = (DEPLOY / "README.md").read_text()
    assert f'panic = "{profile["panic"]}"' in readme, "deploy/README.md must explain the choice in force"
