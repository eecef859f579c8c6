"""`python -m kit.plan` in-process: table, JSON, exit codes, recommendation and deploy_blockers."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from kit import exitcodes
from kit.plan import SHAPES_DIR, deploy_blockers, main
from kit.settings import load_settings, profile_names


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_for_the_default_profile(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--gpu", "h100")
    assert rc == exitcodes.OK
    assert "internlm2_5-1_8b-chat" in out and "NVIDIA H100" in out
    assert "*8 int8" in out  # the default profile's quant_policy is marked
    assert out.count(" fp16 ") >= 1 and " 4 int4" in out


def test_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--gpu", "h200", "--profile", "seed", "--backend", "pytorch", "--json")
    assert rc == exitcodes.OK
    data = json.loads(out)
    assert data["format"] == 1 and data["ok"] is True and data["validated_backend"] is True
    assert data["settings"]["cache_max_entry_count"] == 0.4 and data["settings"]["quant_policy"] == 4
    assert [p["quant_policy"] for p in data["policies"]] == [0, 8, 4]
    int4 = data["policies"][2]
    assert int4["configured"] is True
    # seed = AWQ + int4 at 0.4 on an H200: the field notes' 34,932 blocks (±5 %).
    assert int4["num_gpu_blocks"] == pytest.approx(34_932, rel=0.05)
    assert set(data["memory"]) >= {"weights_bytes", "free_at_sizing_bytes", "engine_overhead_bytes"}


def test_prefill_budget_setting_reaches_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    """serving.max_prefill_token_num: a smaller prefill buffer leaves the PyTorch engine more KV blocks."""
    argv = ["--gpu", "h200", "--profile", "seed", "--backend", "pytorch", "--json"]
    default = json.loads(run(capsys, *argv)[1])
    small = json.loads(run(capsys, *argv, "--set", "serving.max_prefill_token_num=1024")[1])
    assert small["settings"]["max_prefill_token_num"] == 1024 != default["settings"]["max_prefill_token_num"]
    assert all(s["num_gpu_blocks"] > d["num_gpu_blocks"] for s, d in zip(small["policies"], default["policies"], strict=True))


def test_fc_profile_is_fp16_weights_and_fp16_kv(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--gpu", "h200", "--profile", "fc", "--backend", "pytorch", "--json")
    data = json.loads(out)
    assert rc == exitcodes.OK and data["model"]["weight_format"] == "fp16"
    assert data["policies"][0]["num_gpu_blocks"] == pytest.approx(9_133, rel=0.05)


def test_errors_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--gpu", "h100", "--tp", "3")
    assert rc == exitcodes.FAILED
    assert "error: serving.tp=3 does not divide the model's 8 KV heads" in out


def test_unknown_gpu_and_bad_numbers_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "--gpu", "b300x")
    assert rc == exitcodes.USAGE and "unknown GPU 'b300x'; allowed: h200, h100" in err
    with pytest.raises(SystemExit) as exc:
        main(["--gpu", "h100", "--context", "0"])
    assert exc.value.code == exitcodes.USAGE
    rc, _, err = run(capsys, "--gpu", "h100", "--set", "serving.cache_max_entry_count=1.5")
    assert rc == exitcodes.USAGE and "cache_max_entry_count" in err


def test_no_gpu_readable_says_in_one_line_which_flag_to_pass(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A laptop: no nvidia-ml-py, or one whose NVML finds no driver. Either way one stderr line names the flag."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    rc, out, err = run(capsys)
    assert rc == exitcodes.USAGE and out == ""
    assert len(err.strip().splitlines()) == 1 and "--gpu NAME (one of: h200, h100" in err and "kubernetes.gpu_model" in err

    class NVMLError(Exception):
        pass

    def no_driver() -> None:
        raise NVMLError("Driver Not Loaded")

    fake = types.SimpleNamespace(NVMLError=NVMLError, nvmlInit=no_driver)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    rc, out, err = run(capsys)
    assert rc == exitcodes.USAGE and "no NVIDIA GPU readable here (Driver Not Loaded); pass --gpu NAME" in err


def test_env_gpu_memory(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIT_PLAN_GPU_MEMORY_GIB", "48")
    rc, out, _ = run(capsys, "--json")
    assert rc == exitcodes.OK and json.loads(out)["gpu"]["total_bytes"] == 48 << 30


def test_model_config_flag_and_missing_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "Qwen2.5-7B" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text((SHAPES_DIR / "Qwen2.5-7B-Instruct.json").read_text())
    rc, out, _ = run(capsys, "--gpu", "h100", "--model-config", str(cfg), "--tp", "8")
    assert rc == exitcodes.FAILED and "Qwen2.5-7B" in out and "4 KV heads" in out
    rc, _, err = run(capsys, "--gpu", "h100", "--set", "model.name=unknown-model")
    assert rc == exitcodes.USAGE and "pass --model-config FILE" in err


def test_served_awq_config_json_is_read_from_the_model_store(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    quantized = tmp_path / "internlm2_5-1_8b-chat-w4a16-4bit"
    quantized.mkdir()
    cfg = json.loads((SHAPES_DIR / "internlm2_5-1_8b-chat.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 64}
    (quantized / "config.json").write_text(json.dumps(cfg))
    rc, out, _ = run(capsys, "--gpu", "h100", "--set", f"storage.models_root={tmp_path}", "--json")
    data = json.loads(out)
    assert rc == exitcodes.OK and data["model"]["source"] == str(quantized / "config.json")
    assert data["model"]["weight_format"] == "awq-g64"


def test_recommendation_mode(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--gpu", "h100", "--target-sessions", "64", "--context", "4096", "--json")
    rec = json.loads(out)["recommendation"]
    assert rc == exitcodes.OK and rec["quant_policy"] == 0 and 0 < rec["cache_max_entry_count"] < 0.8
    rc, out, _ = run(capsys, "--gpu", "h100", "--target-sessions", "64", "--context", "4096")
    assert "recommendation for 64 x 4096 tokens: serving.quant_policy=0, serving.cache_max_entry_count=" in out
    with pytest.raises(SystemExit):
        main(["--gpu", "h100", "--target-sessions", "64"])


def test_check_engine_logs_cli(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = Path(__file__).parent / "fixtures" / "engine_logs_h200_fieldnotes.json"
    rc, out, _ = run(capsys, "--check-engine-logs", str(fixture))
    assert rc == exitcodes.OK and out.count("ok ") == 3


@pytest.mark.parametrize("profile", profile_names())
def test_every_profile_has_no_deploy_blockers(profile: str) -> None:
    s = load_settings(profile)
    assert deploy_blockers(s) == []
    assert deploy_blockers(s, gpu="h100") == []


def test_deploy_blockers_without_gpu_check_heads_and_session() -> None:
    s = load_settings("default", overrides={"serving": {"tp": 3, "session_len": 100_000}})
    blockers = deploy_blockers(s)
    assert len(blockers) == 2
    assert "serving.tp=3" in blockers[0] and "session_len=100000" in blockers[1]


def test_deploy_blockers_with_a_gpu_check_memory() -> None:
    s = load_settings("fc", overrides={"serving": {"session_len": 32768, "cache_max_entry_count": 0.01}})
    assert deploy_blockers(s) == []  # nothing GPU-free is wrong
    blockers = deploy_blockers(s, gpu="a10")
    assert blockers and "32768-token session" in blockers[0]


def test_plan_for_settings_is_what_the_report_embeds() -> None:
    from kit.plan import plan_for_settings

    r = plan_for_settings(load_settings("seed"), gpu="h200", context=4096, target_sessions=64)
    data = r.to_json()
    assert data["profile"] == "seed" and data["settings"]["context"] == 4096
    assert r.policy(4).configured and r.recommendation is not None
    assert json.loads(json.dumps(data)) == data  # plain JSON types only


def test_settings_gpu_model_is_used_when_no_flag(capsys) -> None:
    """`make plan` with no GPU flag plans for the serving nodes named in settings (kubernetes.gpu_model)."""
    assert main(["--profile", "seed", "--set", "kubernetes.gpu_model=h100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "H100" in json.dumps(out["gpu"])
