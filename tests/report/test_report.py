"""`make report` from a saved results.json: Markdown sections, PNG charts, planner beside the engine,
and one-line errors for bad input. The sample is invented numbers in the benchmark's shape."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from clients import report
from tests.gpu.bench import compute_ratios

SAMPLE = Path(__file__).parent / "fixtures" / "sample_results.json"


@pytest.fixture
def results_file(tmp_path: Path) -> Path:
    data = json.loads(SAMPLE.read_text())
    data["ratios"] = compute_ratios(data)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


def test_report_from_results_has_every_section_and_charts(results_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert report.main(["--from", str(results_file), "--out", str(out)]) == 0
    md = (out / "README.md").read_text()
    assert capsys.readouterr().out.strip() == str(out / "README.md")
    assert "| NVIDIA H100 80GB HBM3 | 580.00 | 13.0 | 2.11.0 | 4.57.6 | 0.18.0 | pytorch |" in md
    assert "| 3.78 GB | 1.52 GB | 2.49× |" in md  # fp16 vs W4A16
    assert "lmdeploy lite auto_awq /tmp/kit-bench/models/internlm2_5-1_8b-chat" in md
    row = next(line for line in md.splitlines() if line.startswith("| AWQ W4A16, KV int4 (seed)"))
    assert "18,300" in row and "1,171,200" in row and "4,300.0" in row
    assert "failed: api_server exited with 1 before ready" in md  # a failed config is shown, not dropped
    assert "## Capacity-bound load" in md and "138 concurrent streams" in md and "holds 69 such sequences" in md
    assert "| quantize_kit_over_bare | 1.014 | <= 1.05 | PASS |" in md
    assert "| capacity_load_kv4_over_fp16 | 1.727 | >= 1.5 | PASS |" in md
    assert '| 1 | add | {"a": 3, "b": 5} | 8 |' in md and "verdict: no (expected 16)" in md
    for png in ("kv-capacity.png", "throughput-64.png", "batch1-decode.png", "capacity-load.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md


def test_planner_prediction_sits_beside_the_engine_blocks(results_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("kit.plan")
    planned = report.planner_predictions(json.loads(results_file.read_text()))
    assert set(planned) >= {"fp16", "awq-kv4", "awq-kv8"}
    assert planned["awq-kv4"] > planned["awq-kv8"] > planned["fp16"] > 0


def test_report_without_matplotlib_still_writes_markdown(results_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert report.main(["--from", str(results_file), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "README.md").read_text()
    assert "matplotlib is not installed" in md and not list((tmp_path / "r").glob("*.png"))


def test_bad_inputs_are_one_line_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--from", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert report.main(["--from", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert report.main(["--from", str(tmp_path / "other.json")]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and all(e.startswith("report: ") for e in errs)


def test_live_mode_without_a_service_fails_with_the_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)]) == 1
    assert "cannot reach the service" in capsys.readouterr().err


def test_committed_benchmark_results_render(tmp_path: Path) -> None:
    committed = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "results.json"
    if not committed.exists():
        pytest.skip("no GPU run committed yet under docs/benchmarks/")
    shutil.copy(committed, tmp_path / "results.json")
    assert report.main(["--from", str(tmp_path / "results.json")]) == 0
    assert "## Serving" in (tmp_path / "README.md").read_text()
