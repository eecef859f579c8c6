"""`make plan ARGS="--gpus N"`: tp N against N replicas of tp 1, from the formula (issue 19's planner side)."""

from __future__ import annotations

import json

import pytest

from kit import exitcodes
from kit.plan import SHAPES_DIR, main

QWEN = str(SHAPES_DIR / "Qwen2.5-7B-Instruct.json")


def parallel(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    rc = main(["--json", *argv])
    out = capsys.readouterr().out
    assert rc in (exitcodes.OK, exitcodes.FAILED)
    return json.loads(out)["parallel"]


def test_small_model_on_big_gpus_takes_replicas(capsys: pytest.CaptureFixture[str]) -> None:
    a = parallel(capsys, "--gpu", "h200", "--gpus", "2", "--context", "4096")
    assert a["pick"] == "2 x tp 1" and a["tp"]["ok"] and a["replicas"]["ok"]
    assert a["tp"]["weights_per_gpu"] * 2 == pytest.approx(a["replicas"]["weights_per_gpu"], rel=1e-6)
    assert abs(a["tp"]["sequences"] / a["replicas"]["sequences"] - 1) < 0.05  # KV room is about the same


def test_weights_that_fill_a_gpu_take_tp(capsys: pytest.CaptureFixture[str]) -> None:
    a = parallel(capsys, "--gpu", "l4", "--gpus", "2", "--context", "8192", "--model-config", QWEN, "--set", "quantization.enabled=false")
    assert a["pick"] == "tp 2" and a["tp"]["sequences"] > 1.25 * a["replicas"]["sequences"]
    assert "the weights take most of one GPU" in a["reason"]


def test_tp_that_does_not_divide_the_kv_heads_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    a = parallel(capsys, "--gpu", "h100", "--gpus", "8", "--context", "4096", "--model-config", QWEN)
    assert not a["tp"]["ok"] and "does not divide the model's 4 KV heads" in a["tp"]["errors"][0]
    assert a["pick"] == "8 x tp 1"


def test_table_says_it_is_not_measured(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gpu", "h200", "--gpus", "2", "--context", "2048"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "2 GPUs: tp 2 against 2 replicas (formula only; not measured on two GPUs)" in out and "pick 2 x tp 1" in out
