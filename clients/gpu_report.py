"""`python -m clients.gpu_report`: GPUs, memory used/total, utilisation and processes, from NVML.

Runs on a host or inside a pod (`make gpu` runs it in the serving pod through kubectl exec).
A table by default, `--json` for machines. Exit 1 with one line when there is no NVIDIA driver.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from kit import exitcodes
from kit.logs import add_verbosity, setup_logging
from kit.table import text_table

log = logging.getLogger("clients.gpu_report")
MIB = 1024 * 1024


class NoDriverError(Exception):
    pass


def _optional(fn: Any, *args: Any) -> Any:
    """A metric the device may not support (NVML_ERROR_NOT_SUPPORTED and friends) becomes None."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError as exc:
        log.debug("%s: %s", getattr(fn, "__name__", fn), exc)
        return None


def _process_name(pid: int) -> str:
    import pynvml

    try:
        name = pynvml.nvmlSystemGetProcessName(pid)
        return name.decode() if isinstance(name, bytes) else str(name)
    except pynvml.NVMLError:
        pass
    try:  # another PID namespace (a pod) often hides the name from NVML
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def collect() -> dict[str, Any]:
    """Read every GPU through NVML; init and shutdown always paired."""
    try:
        import pynvml
    except ImportError:
        raise NoDriverError("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NoDriverError(
            f"no NVIDIA driver on this machine (NVML: {exc}); run it on a GPU host or in the serving pod (`make gpu`)"
        ) from None
    try:
        cuda = _optional(pynvml.nvmlSystemGetCudaDriverVersion)
        report: dict[str, Any] = {
            "driver_version": _optional(pynvml.nvmlSystemGetDriverVersion),
            "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
            "gpus": [],
        }
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            util = _optional(pynvml.nvmlDeviceGetUtilizationRates, h)
            power = _optional(pynvml.nvmlDeviceGetPowerUsage, h)
            procs = _optional(pynvml.nvmlDeviceGetComputeRunningProcesses, h) or []
            report["gpus"].append(
                {
                    "index": i,
                    "name": pynvml.nvmlDeviceGetName(h),
                    "uuid": _optional(pynvml.nvmlDeviceGetUUID, h),
                    "memory_used_mib": mem.used // MIB,
                    "memory_total_mib": mem.total // MIB,
                    "utilization_gpu_pct": util.gpu if util else None,
                    "utilization_memory_pct": util.memory if util else None,
                    "temperature_c": _optional(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
                    "power_w": round(power / 1000, 1) if power is not None else None,
                    "processes": [
                        {"pid": p.pid, "name": _process_name(p.pid), "used_mib": (p.usedGpuMemory // MIB) if p.usedGpuMemory else None}
                        for p in procs
                    ],
                }
            )
        return report
    finally:
        pynvml.nvmlShutdown()


def _cell(value: Any, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def format_table(report: dict[str, Any]) -> str:
    """Driver line, then one row per GPU and one indented row per process on it."""
    rows: list[list[str]] = []
    for g in report["gpus"]:
        mem = f"{g['memory_used_mib']:,} / {g['memory_total_mib']:,} MiB"
        util, temp, power = _cell(g["utilization_gpu_pct"], "%"), _cell(g["temperature_c"], "C"), _cell(g["power_w"], "W")
        rows.append([str(g["index"]), str(g["name"])[:28], mem, util, temp, power])
        for p in g["processes"]:
            used = "-" if p["used_mib"] is None else f"{p['used_mib']:,} MiB"
            rows.append(["", f"  pid {p['pid']} {p['name']}"[:28], used, "", "", ""])
    head = f"driver {_cell(report.get('driver_version'))}, CUDA {_cell(report.get('cuda_driver_version'))}"
    if not rows:
        return head + "\n(no GPUs)"
    return head + "\n" + text_table(["GPU", "name", "memory used / total", "util", "temp", "power"], rows, align="llrrrr", rule=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients.gpu_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    try:
        report = collect()
    except NoDriverError as exc:
        log.error("%s", exc)
        if args.json:
            print(json.dumps({"error": str(exc), "gpus": []}))
        return exitcodes.FAILED
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
