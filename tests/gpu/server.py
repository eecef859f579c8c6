"""Start, probe and stop `lmdeploy serve api_server`; read what the engine logged; GPU memory.

The server is started from an argv built elsewhere (kit.render.serve_args for the kit, a
hand-typed list for the bare baseline); `lmdeploy` at argv[0] becomes `python -m lmdeploy` so the
interpreter's PYTHONPATH bundle is used. Output goes to a log file the harness keeps.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("bench.server")

# `Building CacheEngine with config: \nCacheConfig(max_batches=..., block_size=64, ..., num_gpu_blocks=N, ...).`
_MARKER = "Building CacheEngine with config:"
_FIELD = re.compile(r"(\w+)=(<[^>]*>|\[[^\]]*\]|[^,()\[\]<>]+)")


def python_argv(argv: list[str]) -> list[str]:
    """`lmdeploy ...` -> `<this python> -m lmdeploy ...` (the GPU machine has no lmdeploy script)."""
    return [sys.executable, "-m", "lmdeploy", *argv[1:]] if argv and argv[0] == "lmdeploy" else list(argv)


def _balanced(text: str, start: int) -> str:
    depth = 0
    for i in range(start, min(len(text), start + 4000)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return text[start : start + 4000]


def parse_cache_configs(text: str) -> list[dict[str, Any]]:
    """Every CacheConfig the engine logged: the raw text plus its scalar fields (num_gpu_blocks, block_size...)."""
    out = []
    pos = text.find(_MARKER)
    while pos != -1:
        cfg = text.find("CacheConfig(", pos)
        if cfg == -1:
            break
        raw = _balanced(text, cfg)
        fields: dict[str, Any] = {"raw": raw}
        for key, value in _FIELD.findall(raw[len("CacheConfig(") :]):
            value = value.strip()
            if key in fields:
                continue
            if re.fullmatch(r"-?\d+", value):
                fields[key] = int(value)
            elif re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", value):
                fields[key] = float(value)
            else:
                fields[key] = value
        out.append(fields)
        pos = text.find(_MARKER, cfg)
    return out


def kv_capacity(cache: dict[str, Any] | None) -> dict[str, int] | None:
    """blocks, block size and tokens of a parsed CacheConfig."""
    if not cache or "num_gpu_blocks" not in cache:
        return None
    block = int(cache.get("block_size") or 64)
    return {"num_gpu_blocks": cache["num_gpu_blocks"], "block_size": block, "tokens": cache["num_gpu_blocks"] * block}


def error_lines(text: str, limit: int = 8) -> list[str]:
    """Lines that look like failures (tracebacks, ERROR logs, CUDA OOM)."""
    pat = re.compile(r"(Traceback|\bERROR\b|Error:|OutOfMemory|CUDA out of memory|Exception)")
    hits = [line.strip()[:300] for line in text.splitlines() if pat.search(line)]
    return hits[:limit]


def gpu_memory() -> dict[str, Any]:
    """Used/total MiB of GPU 0 and the device facts, from nvidia-smi (pynvml as fallback); {} if neither works."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.used,memory.total,driver_version", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.splitlines()[0]
            name, used, total, driver = (x.strip() for x in out.split(","))
            return {"name": name, "used_mib": int(float(used)), "total_mib": int(float(total)), "driver": driver}
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
            log.debug("nvidia-smi failed: %s", exc)
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(0)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            return {
                "name": name.decode() if isinstance(name, bytes) else name,
                "used_mib": mem.used // 2**20,
                "total_mib": mem.total // 2**20,
                "driver": pynvml.nvmlSystemGetDriverVersion(),
            }
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # no driver, no library: report nothing rather than fail the run
        log.debug("pynvml failed: %s", exc)
        return {}


@dataclass
class ServerRun:
    """One api_server process and what was learned about it."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    t_start: float = 0.0
    ready_s: float | None = None
    error: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = self.log_path.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        log.info("starting %s: %s", self.name, " ".join(self.argv))
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(python_argv(self.argv), stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        logf.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 420.0, interval_s: float = 2.0) -> bool:
        """Poll /health until 200; False (with .error) if the process died or time ran out."""
        assert self.proc is not None
        deadline = self.t_start + timeout_s
        url = f"http://127.0.0.1:{self.port}/health"
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                tail = error_lines(self.log_text()) or self.log_text().splitlines()[-5:]
                self.error = f"api_server exited with {self.proc.returncode} before ready: {' | '.join(tail)[:600]}"
                return False
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    status = resp.status
                if status == 200:
                    self.ready_s = round(time.perf_counter() - self.t_start, 2)
                    log.info("%s ready after %.1f s", self.name, self.ready_s)
                    return True
            except (OSError, http.client.HTTPException) as exc:  # refused or 503 (HTTPError) while loading, timeouts
                log.debug("health: %s", exc)
            time.sleep(interval_s)
        self.error = f"api_server not ready after {timeout_s:.0f} s"
        return False

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def wait_gpu_released(baseline_mib: int | None, timeout_s: float = 60.0, slack_mib: int = 2048) -> float:
    """After a server stops, wait until GPU memory is back near the baseline (the next engine sizes its
    cache from *free* memory, so leftovers would shrink it). Returns seconds waited."""
    t0 = time.perf_counter()
    if baseline_mib is None:
        return 0.0
    while time.perf_counter() - t0 < timeout_s:
        used = gpu_memory().get("used_mib")
        if used is None or used <= baseline_mib + slack_mib:
            break
        time.sleep(1.0)
    return round(time.perf_counter() - t0, 2)
