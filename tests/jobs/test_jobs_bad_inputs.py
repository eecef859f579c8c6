"""Bad inputs and interruptions name their real cause: a source that is a file, an AWQ model as input,
a short calibration text, SIGTERM during AWQ (real lmdeploy AWQ on the CPU, real processes)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobs import _calib, fetch, quantize
from jobs._common import MARKER_NAME
from tests.jobs._helpers import REPO, settings_args

OUT = "tiny-w4a16-4bit"


def test_model_source_that_is_a_file_says_so(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = store / "tiny" / "model.safetensors"
    assert fetch.main(settings_args(store, "copy", extra=[f"model.source={weights}"])) == 2
    err = capsys.readouterr().err
    assert f"model.source {weights} is a file" in err and "run `python -m jobs.fetch`" not in err
    missing = store / "nowhere"
    assert fetch.main(settings_args(store, "copy", extra=[f"model.source={missing}"])) == 1  # not there (yet): a failure
    err = capsys.readouterr().err
    assert f"model.source {missing} does not exist" in err and "run `python -m jobs.fetch`" not in err


def test_short_calibration_text_says_how_many_samples_it_really_gives(tiny_llama: Path, caplog: pytest.LogCaptureFixture) -> None:
    """lmdeploy's calibrate asks the loader for nsamples windows; fewer tokens than that means overlapping windows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama))
    text = _calib.SHIPPED.read_text()[:3000]  # byte-level tokenizer: ~2700 calibration tokens
    loader = _calib.make_loader(text)
    with caplog.at_level(logging.WARNING, logger="jobs.calib"):
        samples = loader("wikitext2", tokenizer, nsamples=32, seed=0, seqlen=128)
    assert len(samples) == 32 and tuple(samples[0].shape) == (1, 128)
    total = tokenizer(_calib.split(text)[0], return_tensors="pt").input_ids.shape[1]
    (record,) = caplog.records
    assert f"has {total} tokens, fewer than calib_samples x calib_seqlen = 32 x 128 = 4096" in record.getMessage()
    assert f"only {total // 128} samples' worth of distinct text" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jobs.calib"):
        loader("wikitext2", tokenizer, nsamples=total // 128, seed=0, seqlen=128)
    assert caplog.records == []  # enough text: nothing to say


def _wait_for(predicate: Any, proc: subprocess.Popen[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"quantize ended (rc {proc.returncode}) or timed out before the awaited state")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def terminated(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Any]:
    """One real `python -m jobs.quantize` SIGTERMed while AWQ writes its temp tree, then a re-run."""
    root = tmp_path_factory.mktemp("sigterm")
    shutil.copytree(tiny_llama, root / "tiny")
    args = settings_args(root, extra=["quantization.calib_samples=16"])
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "jobs.quantize", *args]
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        _wait_for(lambda: list(root.glob(f".{OUT}.tmp-*")), proc, 600)  # lmdeploy is writing the output
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    left = [p.name for p in root.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    published = (root / OUT).exists()
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return {"root": root, "args": args, "rc": proc.returncode, "err": err, "left": left, "published": published, "rerun": rerun}


@pytest.mark.slow
def test_sigterm_during_awq_removes_the_temp_output_and_exits_143(terminated: dict[str, Any]) -> None:
    assert terminated["rc"] == 143, terminated["err"][-2000:]
    assert "quantize: terminated (SIGTERM); the unfinished output was removed" in terminated["err"]
    assert "Traceback" not in terminated["err"]
    assert terminated["left"] == []
    assert not terminated["published"]


@pytest.mark.slow
def test_the_run_after_sigterm_publishes_a_complete_model(terminated: dict[str, Any]) -> None:
    rerun = terminated["rerun"]
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    out = terminated["root"] / OUT
    assert quantize.output_complete(out, json.loads((out / MARKER_NAME).read_text()))
    assert "left by an interrupted run" not in rerun.stderr  # nothing was left to clean up


@pytest.mark.slow
def test_quantizing_an_awq_model_says_it_is_already_quantized(terminated: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root = terminated["root"]
    argv = [*terminated["args"], "--model-path", str(root / OUT), "--out", str(root / "again")]
    assert quantize.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{root / OUT} is already quantized (awq, 4-bit" in err and "quantization.enabled=false" in err
    assert "autoawq" not in err and not (root / "again").exists()
