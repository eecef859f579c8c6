"""GPUs: the table in kit/data/gpus.json, a GPU given by memory, or the live one through NVML."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from kit.plan.shapes import MIB, PlanError
from kit.settings import REPO_ROOT

GPUS_FILE = REPO_ROOT / "kit" / "data" / "gpus.json"


@dataclass(frozen=True)
class GpuSpec:
    key: str
    device_name: str  # as torch.cuda.get_device_name() reports it; lmdeploy picks max_batch_size from it
    total_mib: int  # as nvidia-smi / torch.cuda.mem_get_info report it


@cache
def _data() -> dict[str, Any]:
    return json.loads(GPUS_FILE.read_text())


def gpu_table() -> dict[str, GpuSpec]:
    return {k: GpuSpec(k, v["device_name"], int(v["total_mib"])) for k, v in _data()["gpus"].items()}


GPUS: dict[str, GpuSpec] = gpu_table()


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    used_bytes: int = 0  # taken by other processes before the engine starts
    source: str = "table"  # table | flag | nvml | settings

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes


def lmdeploy_default_max_batch_size(device_name: str) -> int:
    """lmdeploy.utils.get_max_batch_size('cuda'): the engine's batch when `--max-batch-size` is unset."""
    sizes = {k: v for k, v in _data()["lmdeploy_default_max_batch_size"].items() if not k.startswith("_")}
    name = device_name.lower()
    return next((size for key, size in sizes.items() if key != "other" and key in name), sizes["other"])


def gpu_from_name(name: str) -> Gpu:
    key = name.strip().lower().replace("_", "-")
    key = _data()["aliases"].get(key, key)
    if key not in GPUS:
        raise PlanError(f"unknown GPU {name!r}; allowed: {', '.join(GPUS)} (or give --gpu-memory-gib)")
    spec = GPUS[key]
    return Gpu(spec.device_name, spec.total_mib * MIB, 0, "table")


def gpu_from_nvml(index: int = 0) -> Gpu:
    """The live GPU through nvidia-ml-py (optional dependency)."""
    hint = "pass --gpu NAME (one of: " + ", ".join(GPUS) + ") or --gpu-memory-gib N, or set kubernetes.gpu_model in settings"
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        raise PlanError(f"no GPU readable here (nvidia-ml-py is not installed); {hint}") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise PlanError(f"no NVIDIA GPU readable here ({exc}); {hint}") from None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return Gpu(name.decode() if isinstance(name, bytes) else str(name), int(mem.total), int(mem.used), "nvml")
    finally:
        pynvml.nvmlShutdown()
