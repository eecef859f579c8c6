"""Rendered overlays, shared by the k8s tests (kustomize runs once per overlay per session)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, require_tool

OVERLAYS = sorted(p.name for p in (REPO / "k8s/overlays").iterdir() if (p / "kustomization.yaml").exists())
PROFILE_OVERLAYS = ("default", "seed", "fc", "multi-gpu")
# Overlays that build on a profile overlay (name -> its profile).
EXTRA_OVERLAYS = {"monitoring": "default"}

_cache: dict[str, list[dict[str, Any]]] = {}


def kubectl() -> str:
    path = REPO / ".venv/bin/kubectl"
    return str(path) if path.exists() else require_tool("kubectl")


def build(path: Path) -> list[dict[str, Any]]:
    key = str(path)
    if key not in _cache:
        proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"kustomize build {path} failed:\n{proc.stderr}"
        _cache[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _cache[key]


def profile_of(overlay: str) -> str:
    return EXTRA_OVERLAYS.get(overlay, overlay)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> list[dict[str, Any]]:
    return build(REPO / "k8s/overlays" / overlay)


ROOT = os.geteuid() == 0
# The rehearsal's mount-namespace path needs root; without it the rehearsal takes the prefix path.
needs_root = pytest.mark.skipif(not ROOT, reason="mount namespaces need root")
