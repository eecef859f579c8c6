"""`python -m kit.markers show`: what the reader pod and a person run on the store, and its exit codes.

Markers are written by the real writer (`markers.build` + `markers.write`, as the jobs do) and read back
by the real CLI: in-process through `main([...])`, and once as `python -m kit.markers` in a child process.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kit import exitcodes, markers
from tests.conftest import REPO


def write_fetch_marker(directory: Path) -> dict[str, object]:
    directory.mkdir(parents=True)
    data = markers.build(
        markers.FETCH,
        fingerprint=hashlib.sha256(b"files").hexdigest(),
        request_fp=hashlib.sha256(b"request").hexdigest(),
        sizes={"total_bytes": 5},
        versions={"python": "3"},
    )
    markers.write(directory, data)
    return data


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Path]:
    good, broken = tmp_path / "good", tmp_path / "broken"
    write_fetch_marker(good)
    broken.mkdir()
    (broken / markers.FILE_NAME).write_text("{not json")
    return {"good": good, "missing": tmp_path / "missing", "broken": broken}


def test_a_valid_marker_prints_one_line_and_exits_0(store: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    written = json.loads((store["good"] / markers.FILE_NAME).read_text())
    assert markers.main(["show", str(store["good"])]) == exitcodes.OK
    out = capsys.readouterr()
    assert out.out == f"{store['good']}: fetch fingerprint {written['fingerprint'][:12]} written {written['written_at']}\n"
    assert out.err == ""


@pytest.mark.parametrize(("name", "message"), [("missing", "missing"), ("broken", "not JSON")])
def test_a_missing_or_invalid_marker_exits_1_with_one_line_each(
    name: str, message: str, store: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert markers.main(["show", str(store["good"]), str(store[name])]) == exitcodes.FAILED
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{store[name]}: ") and message in err[0], err


def test_json_reports_every_path_and_exits_0(store: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(store["good"] / markers.FILE_NAME), str(store["missing"]), str(store["broken"])]
    assert markers.main(["show", "--json", *paths]) == exitcodes.OK
    shown = json.loads(capsys.readouterr().out)
    assert shown[paths[0]]["stage"] == markers.FETCH
    assert shown[paths[1]] is None
    assert "not JSON" in shown[paths[2]]["error"]


@pytest.mark.parametrize("argv", [[], ["show"], ["list", "/x"]], ids=["no-command", "no-path", "unknown-command"])
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        markers.main(argv)
    assert exc.value.code == exitcodes.USAGE


def test_python_m_kit_markers_exit_codes(store: dict[str, Path]) -> None:
    """The command the reader pod runs, as a process: exit 1 and one stderr line for the missing marker."""
    cmd = [sys.executable, "-m", "kit.markers", "show", str(store["good"]), str(store["missing"])]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == exitcodes.FAILED, proc.stderr
    assert proc.stderr.strip() == f"{store['missing']}: missing"
    assert proc.stdout.startswith(f"{store['good']}: fetch fingerprint ")


def test_importing_markers_stays_stdlib_only() -> None:
    """The module docstring's promise: the CLI's kit.entry (pydantic, yaml) is imported by main() only."""
    code = "import sys, kit.markers; print(sorted(m for m in ('kit.entry', 'kit.settings', 'pydantic', 'yaml') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "[]"
