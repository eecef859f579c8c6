"""Shared fixtures: every test gets a clean environment and its own temp HOME/HF_HOME."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "artifacts"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("KIT_", "OPENAI_", "LMDEPLOY_")) or key in {"PROFILE", "HF_TOKEN"}:
            monkeypatch.delenv(key, raising=False)
    # Under `make test ARGS=...`, make exports its flags and command-line variables (ARGS too) to every
    # make a test starts: drop them so that make runs as the user's own top-level make.
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "ARGS", "INVENTORY", "CONTEXT", "NAMESPACE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def artifacts_dir() -> Path:
    """Where tests leave things a person may want to look at (screenshots, reports)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def require_tool(name: str) -> str:
    path = shutil.which(name) or (str(REPO / ".venv/bin" / name) if (REPO / ".venv/bin" / name).exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run `make venv` / .ci/run (CI must install it)")
    return path
