"""fetch(local) -> quantize (real lmdeploy AWQ on the CPU) -> verify -> marker, the skip path and the errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import fetch, quantize, verify
from jobs._common import MANIFEST_NAME, MARKER_NAME
from kit import chat_template
from tests.jobs._helpers import REPO, settings_args


def _marker(out: Path) -> dict:
    return json.loads((out / MARKER_NAME).read_text())


@pytest.mark.slow
def test_fetch_quantize_verify_end_to_end(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = settings_args(store, extra=[f"model.source={store / 'tiny'}"])
    assert fetch.main(args) == 0
    manifest = json.loads((store / "tiny" / MANIFEST_NAME).read_text())
    assert manifest["hub"] == "local" and "model.safetensors" in manifest["files"]
    assert len(manifest["files"]["model.safetensors"]["sha256"]) == 64
    assert "model ready" in capsys.readouterr().out

    assert quantize.main([*args, "--json"]) == 0
    out = store / "tiny-w4a16-4bit"
    marker = _marker(out)
    printed = json.loads(capsys.readouterr().out)
    assert printed["fingerprint"] == marker["fingerprint"]
    # lmdeploy's AWQ output: packed int4 weights and its quantization_config.
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "awq" and cfg["quantization_config"]["group_size"] == 128
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.qweight" in keys and "model.layers.0.self_attn.q_proj.weight" not in keys
    # the marker: inputs' fingerprint, the fetch manifest's hashes, sizes, versions; nothing else left behind
    assert marker["inputs"]["model_files"]["model.safetensors"]["sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    assert marker["inputs"]["params"]["calib_samples"] == 4 and marker["versions"]["lmdeploy"] == "0.18.0"
    assert marker["sizes"]["w4a16_bytes"] < marker["sizes"]["fp16_bytes"]
    assert set(marker["output_files"]) == {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != MARKER_NAME}
    assert not [p.name for p in store.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    assert (store / "calibration" / "calib.txt").exists()  # the shipped default was copied
    assert chat_template.installed(out)

    assert verify.main([*args, "--json", "--max-windows", "2", "--seqlen", "256"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["passed"] and 0.5 < result["ppl_ratio"] < 1.25
    assert result["sizes"]["w4a16_bytes"] < result["sizes"]["fp16_bytes"]
    # the gate trips when the threshold sits below the measured ratio
    below = result["ppl_ratio"] * 0.999
    assert verify.main([*args, "--max-windows", "2", "--seqlen", "256", "--max-ppl-ratio", str(below)]) == 1
    captured = capsys.readouterr()
    assert "fp16" in captured.out and "w4a16" in captured.out and "FAIL" in captured.out
    assert "exceeds quantization.max_ppl_ratio" in captured.err


@pytest.mark.slow
def test_unchanged_rerun_skips_without_loading_the_model(store: Path) -> None:
    args = settings_args(store)
    assert quantize.main(args) == 0
    first = _marker(store / "tiny-w4a16-4bit")
    probe = (
        "import sys; from jobs.quantize import main; rc = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('torch', 'transformers', 'lmdeploy') if m in sys.modules); "
        "print('HEAVY=' + ','.join(heavy)); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout and "HEAVY=\n" in proc.stdout, proc.stdout
    assert _marker(store / "tiny-w4a16-4bit") == first

    # a changed input (calibration text) makes it quantize again, with a new fingerprint
    calib = store / "calibration" / "calib.txt"
    calib.write_text(calib.read_text() + "\nOne more paragraph of calibration text.\n")
    assert quantize.main(args) == 0
    assert _marker(store / "tiny-w4a16-4bit")["fingerprint"] != first["fingerprint"]


def _run(main, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def test_missing_model_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, line = _run(quantize.main, settings_args(tmp_path), capsys)
    assert rc == 1
    assert line.startswith("quantize: error: model path") and "does not exist" in line and "jobs.fetch" in line
    rc, line = _run(fetch.main, [*settings_args(tmp_path), "--source", str(tmp_path / "nowhere")], capsys)
    assert rc == 1 and "does not exist" in line


def test_hidden_size_not_divisible_by_group_size(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = store / "tiny" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["hidden_size"] = 200
    cfg_path.write_text(json.dumps(cfg))
    rc, line = _run(quantize.main, settings_args(store), capsys)
    assert rc == 2
    assert "hidden_size=200 is not divisible by quantization.w_group_size=128" in line and "[]" not in line
    assert not (store / "tiny-w4a16-4bit").exists()


def test_bf16_on_cpu_is_refused_before_loading(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, line = _run(quantize.main, settings_args(store, extra=["quantization.dtype=bfloat16"]), capsys)
    assert rc == 2 and "quantization.dtype=float16" in line


def test_insufficient_disk_space(store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_FREE_BYTES", "1000")
    rc, line = _run(quantize.main, settings_args(store), capsys)
    assert rc == 1 and "not enough disk space" in line and "1000B free" in line
    assert not (store / "tiny-w4a16-4bit").exists()
    assert not [p for p in store.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"\x00\x01\x02binary\x00" * 400, "is binary"),
        (b"\xff\xfe" + b"a" * 5000, "not UTF-8"),
        (b"too short\n", "too short"),
    ],
)
def test_corrupt_calibration_file(store: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str) -> None:
    calib = store / "calibration" / "calib.txt"
    calib.parent.mkdir()
    calib.write_bytes(content)
    rc, line = _run(quantize.main, settings_args(store), capsys)
    assert rc == 1 and expected in line and str(calib) in line and "prepare_calibration" in line
    assert len(line.splitlines()) == 1


def test_second_writer_is_refused(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import fcntl

    lock = store / ".tiny-w4a16-4bit.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); time.sleep(60)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        rc, line = _run(quantize.main, settings_args(store), capsys)
        assert rc == 1 and "another job is already writing" in line and f"pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert not (store / "tiny-w4a16-4bit").exists()
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # freed when the holder died
    os.close(fd)


def test_fetch_from_hub_offline_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # conftest sets HF_HUB_OFFLINE=1: the real huggingface_hub code path, no network needed to fail.
    rc, line = _run(fetch.main, [*settings_args(tmp_path), "--source", "internlm/internlm2_5-1_8b-chat", "--revision", "main"], capsys)
    assert rc == 1 and "unreachable or HF_HUB_OFFLINE" in line


def test_fetch_reads_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("hf_secret\n")
    monkeypatch.setenv("HF_TOKEN_FILE", str(token))
    assert fetch.hub_token() == "hf_secret"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert fetch.hub_token() == "hf_env"


def test_bad_setting_is_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = quantize.main([*settings_args(tmp_path), "--set", "quantization.w_bits=8"])
    assert rc == 2 and "quantization.w_bits" in capsys.readouterr().err


def test_fetch_copies_a_local_source_into_the_store(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "store"
    assert fetch.main([*settings_args(root), "--source", str(tiny_llama), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["files"] >= 4 and (root / "tiny" / "model.safetensors").stat().st_size == (tiny_llama / "model.safetensors").stat().st_size
    )
    assert not list(root.glob(".tiny.tmp-*"))


def test_prepare_calibration_offline_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import prepare_calibration

    out = tmp_path / "calib.txt"
    assert prepare_calibration.main([*settings_args(tmp_path), "--default", "--out", str(out)]) == 0
    assert out.read_text() == (REPO / "jobs" / "data" / "calibration.txt").read_text()
    mine = tmp_path / "mine.txt"
    mine.write_text("A paragraph of my own domain text.\n" * 200)
    assert prepare_calibration.main([*settings_args(tmp_path), "--from-file", str(mine), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(tmp_path / "calibration" / "calib.txt") and result["chars"] == 7000
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x00" * 5000)
    rc, line = _run(prepare_calibration.main, [*settings_args(tmp_path), "--from-file", str(bad)], capsys)
    assert rc == 1 and "is binary" in line
    assert (tmp_path / "calibration" / "calib.txt").read_text().startswith("A paragraph")  # the good file stayed
