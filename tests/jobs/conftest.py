"""Fixtures of the job tests: a tiny random Llama built once, a fresh model store per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.jobs._helpers import SHAPE
from tests.support.models import build_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("models") / "tiny-llama", SHAPE)


@pytest.fixture
def store(tmp_path: Path, tiny_llama: Path) -> Path:
    """A model store with the tiny fp16 model at <root>/tiny (the settings' fp16 path)."""
    root = tmp_path / "store"
    root.mkdir()
    shutil.copytree(tiny_llama, root / "tiny")
    return root
