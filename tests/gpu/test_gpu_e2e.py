"""End to end on a real GPU (skipped elsewhere): the benchmark's --quick smoke run, tiny model,
kit quantize vs bare auto_awq, the awq-kv4 server rendered by the kit, its clients and loads.
The full benchmark is `make bench` / tests/gpu/device.sh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is false)"),
]


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("lmdeploy")
    from tests.gpu import bench

    out = tmp_path_factory.mktemp("bench")
    bench.main(["--quick", "--out", str(out), "--workdir", str(out / "work")])
    return json.loads((out / "results.json").read_text())


def test_quick_run_serves_the_awq_model_with_the_rendered_args(quick_results: dict) -> None:
    cfg = quick_results["configs"]["awq-kv4"]
    assert quick_results["stages"]["awq-kv4"]["status"] == "ok", quick_results["stages"]
    assert cfg["ready_s"] > 0 and cfg["kv"]["num_gpu_blocks"] > 0
    assert "--backend" in cfg["serve_argv"] and cfg["serve_argv"][cfg["serve_argv"].index("--quant-policy") + 1] == "4"


def test_quick_run_measures_without_errors(quick_results: dict) -> None:
    cfg = quick_results["configs"]["awq-kv4"]
    assert cfg["batch1"]["errors"] == 0 and cfg["batch1"]["decode_tok_s"] > 0
    assert cfg["streams64"]["errors"] == 0 and cfg["streams64"]["total_tok_s"] > 0
    assert cfg["capacity"]["errors"] == 0


def test_quick_run_quantizes_with_the_kit_and_bare_lmdeploy(quick_results: dict) -> None:
    q = quick_results["quantize"]
    assert q["kit"]["rc"] == 0 and q["bare"]["rc"] == 0 and q["rerun"]["rc"] == 0
    assert quick_results["ratios"]["quantize_rerun_s"]["pass"] is True
    assert Path(quick_results["model"]["path"]).exists()
