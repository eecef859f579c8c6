"""`make report`: results.json or the live service -> Markdown (+ PNG) and an exit code that says
whether every section succeeded.

Goldens, compared byte for byte:
- docs/benchmarks/README.md is the report of docs/benchmarks/results.json (a real H200 run).
  Regenerate: `.venv/bin/python -m clients.report --from docs/benchmarks/results.json --draft`
- tests/report/fixtures/sample_report.md is the report of sample_results.json (invented numbers in
  the benchmark's shape, with a failed config and failed clients) plus tests.gpu.bench's ratios.
  Regenerate: `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/report -k golden`
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from clients.report import render
from clients.report.cli import main
from tests.conftest import REPO
from tests.gpu.bench import compute_ratios
from tests.support.replay import RECORDED_DIR, ReplayServer, find_chat, load_exchanges, scripted, streamed_text, tool_template

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = FIXTURES / "sample_results.json"
SAMPLE_GOLDEN = FIXTURES / "sample_report.md"
DOCS = REPO / "docs" / "benchmarks"
PNGS = ("kv-capacity.png", "throughput-64.png", "batch1-decode.png", "capacity-load.png")


def sample() -> dict[str, Any]:
    data = json.loads(SAMPLE.read_text())
    data["ratios"] = compute_ratios(data)  # the bench's own code makes the targets table
    return data


def all_passed(data: dict[str, Any]) -> dict[str, Any]:
    """The sample with every failed section fixed."""
    data = copy.deepcopy(data)
    del data["configs"]["awq-kv0"], data["stages"]["awq-kv0"], data["clients"]["webui"]
    data["clients"]["funcall"].update(rc=0, status="ok")
    data["clients"]["funcall"]["json"].update(passed=True, final_answer="16")
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    return path


def report_of(tmp_path: Path, data: dict[str, Any], *extra: str) -> tuple[int, str]:
    out = tmp_path / "report"
    code = main(["--from", str(write(tmp_path, data)), "--out", str(out), *extra])
    return code, (out / "README.md").read_text()


# -- goldens ---------------------------------------------------------------------------------
def test_committed_docs_report_is_the_render_of_the_committed_results(tmp_path: Path) -> None:
    shutil.copy(DOCS / "results.json", tmp_path / "results.json")
    assert main(["--from", str(tmp_path / "results.json"), "--draft"]) == 0
    rendered = (tmp_path / "README.md").read_text()
    assert rendered == (DOCS / "README.md").read_text(), (
        "docs/benchmarks/README.md differs from its results.json: "
        "`.venv/bin/python -m clients.report --from docs/benchmarks/results.json --draft`"
    )


def test_sample_report_matches_the_golden(tmp_path: Path) -> None:
    code, md = report_of(tmp_path, sample(), "--draft")
    assert code == 0
    if os.environ.get("UPDATE_GOLDEN"):
        SAMPLE_GOLDEN.write_text(md)
    assert md == SAMPLE_GOLDEN.read_text(), "rendering changed: review, then UPDATE_GOLDEN=1 to rewrite the golden"


# -- what the sections say -------------------------------------------------------------------
def test_sample_sections_and_charts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, md = report_of(tmp_path, sample(), "--draft")
    out = tmp_path / "report"
    assert code == 0 and capsys.readouterr().out.strip() == str(out / "README.md")
    assert "| NVIDIA H100 80GB HBM3 | 580.00 | 13.0 | 2.11.0 | 4.57.6 | 0.18.0 | pytorch |" in md
    assert "| 3.78 GB | 1.52 GB | 2.49× |" in md  # fp16 vs W4A16
    row = next(line for line in md.splitlines() if line.startswith("| AWQ W4A16, KV int4 (seed)"))
    assert "18,300" in row and "1,171,200" in row and "4,300.0" in row
    assert "failed: api_server exited with 1 before ready" in md  # a failed config is shown, not dropped
    assert "138 concurrent streams" in md and "holds 69 such sequences" in md
    assert "| quantize_kit_over_bare | 1.014 | <= 1.05 | PASS |" in md
    assert '| 1 | add | {"a": 3, "b": 5} | 8 |' in md and "verdict: no (expected 16)" in md
    for png in PNGS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in md


def test_failed_sections_are_listed_and_fail_the_run_unless_draft(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, md = report_of(tmp_path, sample())
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("report: 3 section(s) failed (funcall, webui, serving awq-kv0);")
    failed = md.split("## Failed sections", 1)[1].split("\n## ", 1)[0]
    assert "| funcall | exit 1: the check did not pass |" in failed
    assert "| webui | webui exited with 1 |" in failed
    assert "| serving awq-kv0 | api_server exited with 1 before ready: CUDA out of memory |" in failed
    assert "stage awq-kv0" not in failed  # the stage and its config are one failure


def test_a_run_where_everything_passed_exits_0_without_a_failures_section(tmp_path: Path) -> None:
    code, md = report_of(tmp_path, all_passed(sample()))
    assert code == 0 and "Failed sections" not in md and "verdict: yes (expected 16)" in md


def test_a_failed_chat_shows_its_error_not_empty(tmp_path: Path) -> None:
    data = all_passed(sample())
    data["clients"]["chat"] = {
        "cmd": "clients.chat --prompt hi",
        "rc": 1,
        "status": "failed",
        "stdout": "",
        "stderr_tail": ["ERROR clients: the server at http://h/v1 answered 500: boom"],
    }
    code, md = report_of(tmp_path, data)
    assert code == 1 and "(empty)" not in md
    assert "`clients.chat --prompt hi` → exit 1 (failed)\n\n```text\nERROR clients: the server at http://h/v1 answered 500: boom\n```" in md
    assert "| chat | exit 1: ERROR clients: the server at http://h/v1 answered 500: boom |" in md


# -- planner ---------------------------------------------------------------------------------
def test_planner_prediction_sits_beside_the_engine_blocks() -> None:
    planned = render.planner_predictions(json.loads((DOCS / "results.json").read_text()))
    engine = {n: c["kv"]["num_gpu_blocks"] for n, c in render.configs(json.loads((DOCS / "results.json").read_text()))}
    assert planned.errors == {} and set(planned.blocks) == set(engine)
    for name, blocks in planned.blocks.items():
        assert abs(blocks - engine[name]) / engine[name] < 0.005, name


def test_planner_models_the_run_argv_not_todays_settings() -> None:
    data = json.loads((DOCS / "results.json").read_text())
    argv = data["configs"]["awq-kv4"]["serve_argv"]
    engine_defaults = {
        "backend": "pytorch",
        "cache_max_entry_count": 0.4,
        "max_batch_size": None,
        "session_len": None,
        "max_prefill_token_num": None,
    }
    assert render.run_serving(argv) == engine_defaults
    flags = [*argv, "--max-batch-size", "2048", "--session-len", "4096", "--max-prefill-token-num", "16384"]
    assert render.run_serving(flags) == engine_defaults | {"max_batch_size": 2048, "session_len": 4096, "max_prefill_token_num": 16384}
    base = render.planner_predictions(data).blocks["awq-kv4"]
    data["configs"]["awq-kv4"]["serve_argv"] = [*argv, "--max-batch-size", "2048"]
    assert render.planner_predictions(data).blocks["awq-kv4"] != base  # the flag reaches the planner


def test_planner_errors_are_failed_sections(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # no shape fields: the planner's PlanError
    data = all_passed(sample())
    data["model"]["path"] = str(model)
    code, md = report_of(tmp_path, data)
    assert code == 1
    assert "| planner fp16 | model config" in md and "lacks a usable" in md
    assert "planner failed" in next(line for line in md.splitlines() if line.startswith("| fp16 weights"))


# -- inputs and environment ------------------------------------------------------------------
def test_report_without_matplotlib_still_writes_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, md = report_of(tmp_path, all_passed(sample()))
    assert code == 0 and "matplotlib is not installed" in md and not list((tmp_path / "report").glob("*.png"))


def test_bad_inputs_are_one_line_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--from", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["--from", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "other.json").write_text('{"hello": 1}')
    assert main(["--from", str(tmp_path / "other.json")]) == 2
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 3 and all(e.startswith("report: ") for e in errs)


# -- live mode: the real clients against a replay of a recorded lmdeploy api_server ----------
def _live(tmp_path: Path, srv: ReplayServer, *extra: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "live"
    code = main(["--base-url", srv.base_url, "--out", str(out), *extra])
    return code, (out / "README.md").read_text(), json.loads((out / "results.json").read_text())


def test_live_mode_without_a_service_fails_with_the_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--base-url", "http://127.0.0.1:9/v1", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("report: error: cannot reach the server at http://127.0.0.1:9")
    assert not (tmp_path / "README.md").exists()


@pytest.mark.slow
def test_live_report_runs_each_client_and_records_its_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = load_exchanges(RECORDED_DIR)
    tool = tool_template(recorded)
    script = [
        find_chat(recorded, stream=True),
        scripted(tool, calls=[("add", {"a": 3, "b": 5})]),
        scripted(tool, calls=[("mul", {"a": 8, "b": 2})]),
        scripted(tool, content="(3+5)*2 = 16"),
    ]
    with ReplayServer(recorded, script=script) as srv:
        code, md, results = _live(tmp_path, srv)
    clients = results["clients"]
    assert clients["chat"]["rc"] == 0 and clients["funcall"]["rc"] == 0 and clients["funcall"]["json"]["verdict"] == "pass"
    assert clients["served_model"] == recorded[1]["response"]["body"]["data"][0]["id"]
    assert f"```text\n{streamed_text(script[0]).strip()}\n```" in md  # the reply as the chat client printed it
    # No NVIDIA driver on the CPU box: the GPU report is the one failed section, and the run fails.
    assert clients["gpu_report"]["rc"] == 1
    assert code == 1 and [line for line in md.splitlines() if line.startswith("| gpu_report |")]
    assert "| chat |" not in md and "| funcall |" not in md
    assert "section(s) failed (gpu_report)" in capsys.readouterr().err


@pytest.mark.slow
def test_live_report_when_every_client_failed(tmp_path: Path) -> None:
    """The issue's case: chat, function call and GPU report all failed. Exit 1; --draft exits 0."""
    error = {
        "request": {},
        "response": {"status": 500, "content_type": "application/json", "body": {"message": "engine crashed", "object": "error"}},
    }
    with ReplayServer(load_exchanges(RECORDED_DIR), script=[error]) as srv:
        code, md, _ = _live(tmp_path, srv, "--retries", "0")
        draft, _, _ = _live(tmp_path, srv, "--retries", "0", "--draft")
    assert (code, draft) == (1, 0)
    failed = {
        line.split(" | ")[0].removeprefix("| ")
        for line in md.split("## Failed sections", 1)[1].split("\n## ", 1)[0].splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert failed >= {"chat", "funcall", "gpu_report"}
    assert "(empty)" not in md and "engine crashed" in md
