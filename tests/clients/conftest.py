"""Fixtures for the client tests: the recorded exchanges and a way to run a client in-process."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.replay import RECORDED_DIR, chat_exchanges, load_exchanges


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """run(main, argv, stdin=None) -> Result(code, stdout, stderr), in-process like `python -m`."""

    def _run(main: Callable[[list[str]], int], argv: list[str], stdin: str | None = None) -> Result:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


@pytest.fixture(scope="session")
def recorded() -> list[dict[str, Any]]:
    exchanges = load_exchanges(RECORDED_DIR)
    assert chat_exchanges(exchanges), f"no recorded chat exchanges under {RECORDED_DIR}"
    return exchanges
