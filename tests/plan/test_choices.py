"""When AWQ pays: `make plan --target-sessions N --context C` weighs every weights x KV choice, and the
measured figures it uses (kit/data/measured.json) are the benchmark's own numbers."""

from __future__ import annotations

import json
import statistics

import pytest

from kit import exitcodes
from kit.plan import choices, main
from kit.settings import REPO_ROOT

TM_RESULTS = REPO_ROOT / "docs" / "benchmarks" / "turbomind" / "results.json"


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    rc = main(["--gpu", "h200", "--json", *argv])
    out = capsys.readouterr().out
    assert rc == exitcodes.OK
    return json.loads(out)["choices"]


def by_label(report: dict) -> dict[str, dict]:
    return {c["label"]: c for c in report["choices"]}


def test_fp16_weights_win_while_they_hold_the_sessions(capsys: pytest.CaptureFixture[str]) -> None:
    rep = plan_json(capsys, "--target-sessions", "256", "--context", "2048")
    c = by_label(rep)
    slower = c["awq+kv0"]["decode_batch1_tok_s"] / c["fp16+kv0"]["decode_batch1_tok_s"]
    assert rep["pick"] == "fp16+kv0" and f"AWQ would decode one stream at {slower:.2f}x" in rep["reason"]
    assert c["awq+kv0"]["decode_batch1_tok_s"] < c["fp16+kv0"]["decode_batch1_tok_s"]  # the cost of AWQ at batch 1
    assert c["awq+kv0"]["kv_tokens"] > c["fp16+kv0"]["kv_tokens"]  # its gain: smaller weights, more KV room
    assert c["awq+kv4"]["kv_tokens"] > 3.5 * c["awq+kv0"]["kv_tokens"]


def test_kv_quantization_comes_in_when_fp16_kv_cannot_hold_them(capsys: pytest.CaptureFixture[str]) -> None:
    rep = plan_json(capsys, "--target-sessions", "1000", "--context", "2048")
    c = by_label(rep)
    assert not c["fp16+kv0"]["fits"] and not c["awq+kv0"]["fits"] and c["fp16+kv8"]["fits"]
    assert rep["pick"] == "fp16+kv8"


def test_nothing_fits_names_the_way_out(capsys: pytest.CaptureFixture[str]) -> None:
    rep = plan_json(capsys, "--target-sessions", "50000", "--context", "8192")
    assert not any(c["fits"] for c in rep["choices"])
    assert rep["pick"] == "awq+kv4" and "no choice holds 50000 x 8192" in rep["reason"] and "replicas" in rep["reason"]


def test_table_names_the_measurement_and_the_pick(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpu", "h200", "--target-sessions", "256", "--context", "2048"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "measured on: docs/benchmarks/turbomind/" in out and "capacity: 1600 x 1024 in / 1024 out" in out
    assert "> fp16+kv0" in out and "pick fp16+kv0 (quantization.enabled=false, serving.quant_policy=0)" in out


def test_unknown_backend_measurement_leaves_speeds_empty(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choices, "measurements", lambda: [])
    rep = plan_json(capsys, "--target-sessions", "8", "--context", "1024")
    assert rep["measured_on"] is None and all(c["decode_batch1_tok_s"] is None for c in rep["choices"])
    assert rep["pick"] == "fp16+kv0"  # without speeds: the least lossy choice that fits


def test_measured_data_is_the_turbomind_benchmarks_own_numbers() -> None:
    """kit/data/measured.json (consumer) against docs/benchmarks/turbomind/results.json (producer): medians of the rounds."""
    results = json.loads(TM_RESULTS.read_text())
    entry = next(m for m in choices.measurements() if m["backend"] == "turbomind")
    runs = results["capacity"]["runs"]

    def median(config: str, get) -> float:
        return statistics.median(get(r) for r in runs if r["config"] == config)

    assert entry["gpu"] == results["environment"]["gpu"]
    assert entry["decode_batch1_tok_s"] == {
        "fp16": median("fp16", lambda r: r["batch1"]["decode_tok_s"]),
        "awq": median("awq-kv4", lambda r: r["batch1"]["decode_tok_s"]),
    }
    short, long = entry["capacity_loads"]
    assert short["streams"] == results["capacity"]["load"]["requests"]
    assert short["tok_s"]["fp16+kv0"] == median("fp16", lambda r: r["load"]["tok_s"])
    assert short["tok_s"]["awq+kv4"] == median("awq-kv4", lambda r: r["load"]["tok_s"])
    long_results = json.loads((TM_RESULTS.parent / "results-long.json").read_text())
    runs = long_results["capacity"]["runs"]
    assert (
        (long["prompt_tokens"], long["output_tokens"])
        == (2048, 2048)
        == tuple(long_results["capacity"]["load"][k] for k in ("prompt_chars", "max_tokens"))
    )
    assert long["tok_s"]["awq+kv4"] == median("awq-kv4", lambda r: r["load"]["tok_s"])


def test_the_capacity_column_comes_from_the_load_nearest_the_context(capsys: pytest.CaptureFixture[str]) -> None:
    entry = next(m for m in choices.measurements() if m["backend"] == "turbomind")
    short, long = entry["capacity_loads"]
    at_2k = by_label(plan_json(capsys, "--target-sessions", "256", "--context", "2048"))
    at_4k = by_label(plan_json(capsys, "--target-sessions", "256", "--context", "4096"))
    assert at_2k["awq+kv4"]["capacity_tok_s"] == short["tok_s"]["awq+kv4"]
    assert at_4k["awq+kv4"]["capacity_tok_s"] == long["tok_s"]["awq+kv4"] != short["tok_s"]["awq+kv4"]
    assert choices.nearest_load({"capacity_load": short}, 4096) == short  # one-load entries (the PyTorch run) still read
    assert choices.nearest_load(None, 4096) is None
