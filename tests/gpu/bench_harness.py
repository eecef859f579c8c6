"""What the two GPU benchmarks share (tests/gpu/bench.py on the PyTorch backend, tests/gpu/bench_tm.py
on TurboMind): the out/work/logs folders, the settings file every kit subprocess reads, results.json
written again after every stage, commands run with their output in a log file, one api_server at a
time, and the logging setup. Each benchmark keeps its own results schema and ratios.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kit.settings import DEFAULT_SETTINGS_PATH, deep_merge
from tests.gpu.server import ServerRun, gpu_memory, wait_gpu_released

TIMEOUT_RC = 124  # what `timeout` returns; a command the harness had to kill


@dataclass(frozen=True)
class Finished:
    """A command run to its end (or killed at its timeout), its output in a log file."""

    rc: int
    seconds: float
    text: str
    peak_gpu_used_mib: int | None


def run_to_log(cmd: list[str], logfile: Path, env: dict[str, str], timeout: float) -> Finished:
    """Run `cmd` in its own process group, stdout+stderr to `logfile`, polling GPU memory every 2 s;
    past `timeout` the whole group is killed and rc is TIMEOUT_RC."""
    t0 = time.perf_counter()
    peak = 0
    with logfile.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while True:
            try:
                rc = proc.wait(timeout=2)
                break
            except subprocess.TimeoutExpired:
                peak = max(peak, gpu_memory().get("used_mib") or 0)
                if time.perf_counter() - t0 > timeout:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                    rc = TIMEOUT_RC
                    break
    return Finished(rc, time.perf_counter() - t0, logfile.read_text(errors="replace"), peak or None)


class BenchBase:
    """Folders, settings file, results bookkeeping and servers; a subclass adds its stages and ratios."""

    log = logging.getLogger("bench")
    json_indent = 2

    def __init__(self, args: argparse.Namespace, results: dict[str, Any]) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.work = Path(args.workdir).resolve()
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.settings_file = self.work / "settings.bench.yaml"
        self.results = results
        self.baseline_mib: int | None = None  # GPU memory used before any server: what a stopped one must return to

    def ratios(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- settings -------------------------------------------------------------------------
    def write_settings_file(self, over: dict[str, Any]) -> None:
        """settings.yaml with `over` merged into its `defaults:`; every kit subprocess reads it (KIT_SETTINGS)."""
        raw = yaml.safe_load(DEFAULT_SETTINGS_PATH.read_text())
        raw["defaults"] = deep_merge(raw.get("defaults") or {}, over)
        self.settings_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.results["settings_overrides"] = over

    def kit_env(self, profile: str) -> dict[str, str]:
        return {**os.environ, "KIT_SETTINGS": str(self.settings_file), "PROFILE": profile, "PYTHONUNBUFFERED": "1"}

    # -- bookkeeping ----------------------------------------------------------------------
    def save(self) -> None:
        """results.json (written aside, then renamed) and logs.tgz, with the ratios as of now."""
        self.results["ratios"] = self.ratios()
        self.results["updated"] = now()
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=self.json_indent) + "\n")
        tmp.replace(self.out / "results.json")
        with tarfile.open(self.out / "logs.tgz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")

    def stage(self, name: str, fn: Callable[[], None]) -> None:
        """Run one stage; a failure is recorded (and the run goes on), results.json is saved either way."""
        t0 = time.perf_counter()
        st: dict[str, Any] = {"status": "running"}
        self.results["stages"][name] = st
        self.log.info("=== %s ===", name)
        try:
            fn()
            st["status"] = "ok"
        except Exception as exc:
            st.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:800])
            self.log.exception("stage %s failed", name)
            self.stage_failed(name)
        st["seconds"] = round(time.perf_counter() - t0, 1)
        self.save()

    def stage_failed(self, name: str) -> None:
        """Called inside the except block of a failed stage (traceback.format_exc() still works)."""

    # -- servers --------------------------------------------------------------------------
    @contextmanager
    def api_server(
        self,
        label: str,
        argv: list[str],
        port: int,
        rec: dict[str, Any],
        ready_timeout: float,
        release_key: str,
        env: dict[str, str] | None = None,
    ) -> Iterator[ServerRun]:
        """Start an api_server and wait for /health; yield it (ready_s None: it never got ready, see .error);
        stop it and wait until GPU memory is back at the baseline (rec[release_key]: seconds waited)."""
        srv = ServerRun(label, argv, port, self.logs / f"server-{label}.log", env=env or {})
        srv.start()
        try:
            srv.wait_ready(timeout_s=ready_timeout)
            rec["ready_s"] = srv.ready_s
            yield srv
        finally:
            srv.stop()
            rec[release_key] = wait_gpu_released(self.baseline_mib)


_VERSIONS_PROBE = """\
import importlib, json
out = {}
for m in ("torch", "transformers", "lmdeploy", "triton"):
    try:
        out[m] = getattr(importlib.import_module(m), "__version__", "?")
    except Exception as e:
        out[m] = "missing: %s" % e
try:
    import torch; out["cuda"] = torch.version.cuda
except Exception:
    pass
print(json.dumps(out))
"""


def package_versions() -> dict[str, Any]:
    """torch/transformers/lmdeploy/triton versions and CUDA, as a fresh interpreter imports them (the servers' view)."""
    try:
        cp = subprocess.run([sys.executable, "-c", _VERSIONS_PROBE], capture_output=True, text=True, timeout=180)
        return json.loads(cp.stdout.strip().splitlines()[-1])
    except Exception as exc:  # versions are nice to have; never stop the run for them
        return {"versions_error": str(exc)}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def dir_size(path: Path) -> int | None:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else None


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1), "max": round(max(values), 1), "n": len(values)}


def setup_logging(out: Path, verbose: bool = False) -> None:
    """INFO (DEBUG with -v) to stderr and to OUT/bench.log; the HTTP clients' one line per request stays quiet."""
    out.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr), logging.FileHandler(out / "bench.log")]
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=handlers,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
