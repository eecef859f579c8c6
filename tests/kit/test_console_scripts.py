"""pyproject's [project.scripts]: every command resolves to a `main(argv) -> int` that answers --help,
and a built wheel carries the subpackages and data files those commands read."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.conftest import REPO

SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_command_is_a_main_that_answers_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module, func = SCRIPTS[name].split(":")
    main = getattr(importlib.import_module(module), func)
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out


def test_every_python_m_entry_point_has_a_command() -> None:
    """A module the README runs with `python -m` and that has a main() is also a command."""
    listed = {target.split(":")[0] for target in SCRIPTS.values()}
    runnable = {
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for d in ("jobs", "clients")
        for p in (REPO / d).glob("[!_]*.py")
        if "def main(" in p.read_text()
    }
    assert runnable - listed == set()


@pytest.mark.slow
def test_the_wheel_carries_subpackages_data_and_commands(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info beside the sources
    for part in ("kit", "jobs", "clients"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src / "pyproject.toml")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("lmdeploy_kit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "kit/plan/__init__.py",
        "kit/data/gpus.json",
        "kit/data/measured.json",
        "clients/report/report.md.j2",
        "clients/report/cli.py",
    ):
        assert path in names, f"{path} missing from the wheel"
    assert any(n.startswith("kit/data/model_shapes/") and n.endswith(".json") for n in names)
    entry_points = next(zipfile.ZipFile(wheel).read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert all(f"{name} = {target}" in entry_points for name, target in SCRIPTS.items())
