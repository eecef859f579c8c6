"""clients.gpu_report: the real no-driver path on this machine, and the table layout."""

from __future__ import annotations

import json

import pytest

from clients.gpu_report import collect, format_table, main


def _has_nvml() -> bool:
    try:
        collect()
    except Exception:
        return False
    return True


@pytest.mark.skipif(_has_nvml(), reason="this machine has an NVIDIA driver")
def test_no_driver_is_one_clear_line(run):
    r = run(main, [])
    assert r.code == 1
    assert "no NVIDIA driver on this machine" in r.err and "make gpu" in r.err
    assert len(r.err.strip().splitlines()) == 1 and r.out == ""


@pytest.mark.skipif(_has_nvml(), reason="this machine has an NVIDIA driver")
def test_no_driver_json(run):
    r = run(main, ["--json"])
    assert r.code == 1
    assert json.loads(r.out) == {"error": json.loads(r.out)["error"], "gpus": []}
    assert "NVML" in json.loads(r.out)["error"]


@pytest.mark.gpu
@pytest.mark.skipif(not _has_nvml(), reason="needs an NVIDIA driver")
def test_real_gpus(run):
    r = run(main, ["--json"])
    report = json.loads(r.out)
    assert r.code == 0 and report["gpus"]
    assert all(0 < g["memory_total_mib"] and 0 <= g["memory_used_mib"] <= g["memory_total_mib"] for g in report["gpus"])


def test_table_layout():
    report = {
        "driver_version": "570.86.15",
        "cuda_driver_version": "12.8",
        "gpus": [
            {
                "index": 0,
                "name": "NVIDIA H100 80GB HBM3",
                "uuid": "GPU-1",
                "memory_used_mib": 59012,
                "memory_total_mib": 81559,
                "utilization_gpu_pct": 97,
                "utilization_memory_pct": 40,
                "temperature_c": None,
                "power_w": 512.3,
                "processes": [{"pid": 4242, "name": "lmdeploy", "used_mib": 58900}],
            }
        ],
    }
    text = format_table(report)
    assert "driver 570.86.15, CUDA 12.8" in text
    assert "59,012 / 81,559 MiB" in text and "97%" in text and "512.3W" in text
    row = next(line for line in text.splitlines() if line.startswith("0 "))
    assert row.split()[-2] == "-"  # unsupported temperature shows as '-'
    assert "pid 4242" in text and "58900 MiB" in text
    assert "(no GPUs)" in format_table({"gpus": []})
