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
    """stdout carries the same one-line cause as stderr, as JSON a machine can read."""
    r = run(main, ["--json"])
    data = json.loads(r.out)
    assert r.code == 1
    assert sorted(data) == ["error", "gpus"] and data["gpus"] == []
    assert data["error"].startswith("no NVIDIA driver on this machine (NVML: ")
    assert r.err.strip().endswith(data["error"])  # the logged line and the JSON agree


@pytest.mark.gpu
@pytest.mark.skipif(not _has_nvml(), reason="needs an NVIDIA driver")
def test_real_gpus(run):
    r = run(main, ["--json"])
    report = json.loads(r.out)
    assert r.code == 0 and report["gpus"]
    assert all(0 < g["memory_total_mib"] and 0 <= g["memory_used_mib"] <= g["memory_total_mib"] for g in report["gpus"])


def _gpu(index: int, **over) -> dict:
    g = {
        "index": index,
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-{index}",
        "memory_used_mib": 59012,
        "memory_total_mib": 81559,
        "utilization_gpu_pct": 97,
        "utilization_memory_pct": 40,
        "temperature_c": None,
        "power_w": 512.3,
        "processes": [{"pid": 4242, "name": "lmdeploy", "used_mib": 58900}],
    }
    return {**g, **over}


def test_table_layout():
    """Exact text: columns aligned, right-aligned numbers, '-' for unsupported metrics, processes under their GPU."""
    report = {
        "driver_version": "570.86.15",
        "cuda_driver_version": "12.8",
        "gpus": [_gpu(0), _gpu(1, memory_used_mib=0, power_w=None, utilization_gpu_pct=None, temperature_c=31, processes=[])],
    }
    assert format_table(report).splitlines() == [
        "driver 570.86.15, CUDA 12.8",
        "GPU  name                   memory used / total  util  temp   power",
        "-------------------------------------------------------------------",
        "0    NVIDIA H100 80GB HBM3  59,012 / 81,559 MiB   97%     -  512.3W",
        "       pid 4242 lmdeploy             58,900 MiB",
        "1    NVIDIA H100 80GB HBM3       0 / 81,559 MiB     -   31C       -",
    ]
    assert format_table({"gpus": []}) == "driver -, CUDA -\n(no GPUs)"


def test_long_names_are_cut_and_unknown_process_memory_is_a_dash():
    text = format_table({"gpus": [_gpu(0, name="X" * 40, processes=[{"pid": 7, "name": "p" * 60, "used_mib": None}])]})
    gpu_row, proc_row = text.splitlines()[3:5]
    assert gpu_row.split()[1] == "X" * 28
    assert proc_row.split() == ["pid", "7", "p" * (28 - len("  pid 7 ")), "-"]
