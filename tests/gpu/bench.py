"""GPU end-to-end run and benchmark of the kit against bare lmdeploy (`make bench`).

    python -m tests.gpu.bench --out build/bench            # full run, ~15-18 min on one H100
    python -m tests.gpu.bench --out build/bench --quick    # tiny model, one config, ~3 min smoke run
    python -m tests.gpu.bench --stages model,fp16 --workdir /tmp/kit-bench   # reuse a built model

Stages, in order (the most important evidence first; each one is skippable and every stage writes
`results.json` again, so a run cut short still leaves its numbers):

  model     random-weight model of the internlm2_5-1_8b-chat shape (InternLM2, else Llama)
  quantize  `python -m jobs.quantize` (seed parameters) vs bare `lmdeploy lite auto_awq` with the same
            arguments (kit.render.auto_awq_args) through an offline calibration wrapper; then the
            unchanged re-run
  fp16      api_server from kit.render.serve_args (fc profile), clients through the recording proxy,
            batch-1, 64 streams, capacity-bound load
  awq-kv4   seed profile (AWQ + KV int4): same measurements
  bare      api_server from hand-typed minimal args, same config as awq-kv4: throughput ratio
  awq-kv8   seed profile with quant-policy 8
  awq-kv0   seed profile with quant-policy 0

Every server gets the settings overrides serving.backend=pytorch (TurboMind cannot run on the test
machine) and serving.log_level=INFO (the engine logs its KV CacheConfig at INFO); the bare server
gets the same backend and log level by hand.

Outputs in --out (at most 8 files): results.json, bench.log, cache-configs.log, logs.tgz (server and
quantize logs), recorded.tgz (client replies recorded through the proxy). Models live in --workdir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import yaml

from kit.render import auto_awq_args, serve_args
from kit.settings import DEFAULT_SETTINGS_PATH, Settings, deep_merge, load_settings
from tests.gpu import loadgen
from tests.gpu.server import ServerRun, error_lines, gpu_memory, kv_capacity, parse_cache_configs, wait_gpu_released

log = logging.getLogger("bench")

SCHEMA_VERSION = 1
STAGES = ["model", "quantize", "fp16", "awq-kv4", "bare", "awq-kv8", "awq-kv0"]
SERVER_STAGES = {
    # name: (profile, quant_policy, kit-rendered?)
    "fp16": ("fc", 0, True),
    "awq-kv4": ("seed", 4, True),
    "bare": ("seed", 4, False),
    "awq-kv8": ("seed", 8, True),
    "awq-kv0": ("seed", 0, True),
}
CACHE_RATIO = 0.4
# The real internlm2_5-1_8b-chat shape, and the --quick one (hidden a multiple of the AWQ group 128).
FULL_SHAPE = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, vocab_size=92544
)
QUICK_SHAPE = dict(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=92544
)
TARGETS = {
    "quantize_ratio_max": 1.05,
    "rerun_s_max": 5.0,
    "throughput_ratio_min": 0.95,
    "kv8_capacity_min": 1.9,
    "kv4_capacity_min": 3.5,
    "capacity_load_ratio_min": 1.5,
}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).resolve()
        self.work = Path(args.workdir).resolve()
        self.logs = self.work / "logs"
        self.quick = args.quick
        self.out.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.settings_file = self.work / "settings.bench.yaml"
        self.results: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "kind": "quick" if self.quick else "full",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "environment": {},
            "model": {},
            "quantize": {},
            "configs": {},
            "clients": {},
            "ratios": {},
            "targets": TARGETS,
            "stages": {},
            "notes": [],
        }
        self.gpu_baseline_mib: int | None = None

    # -- settings ---------------------------------------------------------------------------
    def write_settings(self) -> None:
        """settings.yaml with the bench's overrides in `defaults:`; every kit subprocess reads it (KIT_SETTINGS)."""
        raw = yaml.safe_load(DEFAULT_SETTINGS_PATH.read_text())
        over: dict[str, Any] = {
            "storage": {"models_root": str(self.work / "models")},
            "serving": {"backend": "pytorch", "log_level": "INFO"},
        }
        if self.quick:
            over["quantization"] = {"calib_samples": 16, "calib_seqlen": 256}
        raw["defaults"] = deep_merge(raw.get("defaults") or {}, over)
        self.settings_file.parent.mkdir(parents=True, exist_ok=True)
        self.settings_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        self.results["settings_overrides"] = over

    def settings(self, profile: str, quant_policy: int | None = None) -> Settings:
        # The tiny quick model would get millions of KV blocks at 0.4, overflowing lmdeploy's
        # fill_kv_cache Triton kernel (illegal memory access, seen on an H200); a small ratio avoids it.
        serving: dict[str, Any] = {"cache_max_entry_count": 0.02 if self.quick else CACHE_RATIO}
        if quant_policy is not None:
            serving["quant_policy"] = quant_policy
        return load_settings(profile, path=self.settings_file, overrides={"serving": serving})

    def kit_env(self, profile: str) -> dict[str, str]:
        return {**os.environ, "KIT_SETTINGS": str(self.settings_file), "PROFILE": profile, "PYTHONUNBUFFERED": "1"}

    # -- bookkeeping -----------------------------------------------------------------------
    def save(self) -> None:
        self.results["ratios"] = compute_ratios(self.results)
        self.results["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=2, sort_keys=False) + "\n")
        tmp.replace(self.out / "results.json")
        caches = [
            f"# {name}: {c.get('serve_argv_str', '')}\n{c['cache_config_raw']}\n"
            for name, c in self.results["configs"].items()
            if c.get("cache_config_raw")
        ]
        (self.out / "cache-configs.log").write_text("".join(caches))
        with tarfile.open(self.out / "logs.tgz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")

    def run_stage(self, name: str, fn) -> None:
        t0 = time.perf_counter()
        log.info("=== stage %s ===", name)
        status: dict[str, Any] = {"status": "running"}
        self.results["stages"][name] = status
        try:
            fn()
            status["status"] = "ok"
        except Exception as exc:
            status.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:1000])
            log.error("stage %s failed: %s", name, exc)
            log.debug("%s", traceback.format_exc())
            (self.logs / f"stage-{name}.traceback.txt").write_text(traceback.format_exc())
        status["seconds"] = round(time.perf_counter() - t0, 1)
        log.info("stage %s: %s in %.0f s", name, status["status"], status["seconds"])
        self.save()

    # -- environment -----------------------------------------------------------------------
    def environment(self) -> None:
        env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node()}
        gpu = gpu_memory()
        env.update(gpu=gpu.get("name"), driver=gpu.get("driver"), gpu_total_mib=gpu.get("total_mib"), gpu_baseline_mib=gpu.get("used_mib"))
        self.gpu_baseline_mib = gpu.get("used_mib")
        probe = (
            "import json,importlib\n"
            "out={}\n"
            "for m in ('torch','transformers','lmdeploy','triton'):\n"
            "  try:\n"
            "    mod=importlib.import_module(m); out[m]=getattr(mod,'__version__','?')\n"
            "  except Exception as e: out[m]='missing: %s'%e\n"
            "try:\n"
            "  import torch; out['cuda']=torch.version.cuda\n"
            "except Exception: pass\n"
            "print(json.dumps(out))\n"
        )
        try:
            cp = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
            env.update(json.loads(cp.stdout.strip().splitlines()[-1]))
        except Exception as exc:  # versions are nice to have; never stop the run for them
            env["versions_error"] = str(exc)
        env["backend"] = "pytorch"
        self.results["environment"] = env
        log.info("environment: %s", env)

    # -- model -----------------------------------------------------------------------------
    def stage_model(self) -> None:
        s = self.settings("fc")
        path = Path(s.fp16_path)
        shape = QUICK_SHAPE if self.quick else FULL_SHAPE
        cmd = [sys.executable, "-m", "tests.gpu.build_model", "--out", str(path), "--shape", json.dumps(shape)]
        proc = self.run_logged("build-model", cmd, timeout=900)
        info_file = path / "bench-model.json"
        info = json.loads(info_file.read_text()) if info_file.exists() else {}
        info.update(path=str(path), shape=shape, seconds=proc["seconds"], size_bytes=dir_size(path))
        self.results["model"] = info
        if proc["rc"] != 0:
            raise RuntimeError(f"model build failed (rc {proc['rc']}): {proc['tail']}")

    # -- quantize --------------------------------------------------------------------------
    def stage_quantize(self) -> None:
        s = self.settings("seed")
        q: dict[str, Any] = self.results["quantize"]
        q["params"] = {k: v for k, v in s.quantization.model_dump().items()}
        kit_cmd = [sys.executable, "-m", "jobs.quantize", "--model-path", s.fp16_path, "--out", s.quantized_path]
        q["kit_cmd"] = " ".join(kit_cmd[1:])
        kit = self.run_logged("quantize-kit", kit_cmd, env=self.kit_env("seed"), timeout=1200)
        q["kit"] = kit
        self.save()
        calib = Path(s.calibration_path)
        if not calib.is_file():
            calib = self.work / "calib-fallback.txt"
            calib.write_text(" ".join(loadgen.unique_prompt(i, 200) for i in range(400)))
            q["calibration_note"] = f"{s.calibration_path} missing after the kit run; bare used a generated text"
        q["calibration_file"] = str(calib)
        bare_dir = str(self.work / "models" / "bare-w4a16")
        shutil.rmtree(bare_dir, ignore_errors=True)
        bare_argv = auto_awq_args(s, model_path=s.fp16_path, work_dir=bare_dir)
        bare_cmd = [sys.executable, "-m", "tests.gpu.bare_awq", str(calib), *bare_argv]
        q["bare_cmd"] = " ".join(bare_argv)
        q["bare_note"] = (
            "bare = lmdeploy's own CLI (`lmdeploy lite auto_awq` argv from kit.render.auto_awq_args) run unchanged "
            "by tests/gpu/bare_awq.py, which only replaces lmdeploy.lite.apis.calibrate.get_calib_loaders with a "
            "local-text loader (lmdeploy 0.18 downloads calibration data; the machine is offline)"
        )
        q["bare"] = self.run_logged("quantize-bare", bare_cmd, env=self.kit_env("seed"), timeout=1200)
        self.save()
        rerun = self.run_logged("quantize-kit-rerun", kit_cmd, env=self.kit_env("seed"), timeout=300)
        q["rerun"] = rerun
        q["sizes_bytes"] = {
            "fp16": dir_size(Path(s.fp16_path)),
            "w4a16": dir_size(Path(s.quantized_path)),
            "bare_w4a16": dir_size(Path(bare_dir)),
        }
        marker = [p for p in Path(s.quantized_path).glob("*.json") if "marker" in p.name or "complete" in p.name.lower()]
        if marker:
            q["marker"] = marker[0].name
        shutil.rmtree(bare_dir, ignore_errors=True)
        if kit["rc"] != 0:
            raise RuntimeError(f"jobs.quantize failed (rc {kit['rc']}): {kit['tail']}")

    def run_logged(self, name: str, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
        """Run a command with output to logs/<name>.log; wall time, rc, the log's last lines and peak GPU memory."""
        logfile = self.logs / f"{name}.log"
        log.info("%s: %s", name, " ".join(cmd))
        t0 = time.perf_counter()
        with logfile.open("wb") as fh:
            proc = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, env=env or {**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True
            )
            peak = 0
            while True:
                try:
                    rc = proc.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    peak = max(peak, gpu_memory().get("used_mib") or 0)
                    if time.perf_counter() - t0 > timeout:
                        os.killpg(proc.pid, 9)
                        rc = proc.wait()
                        break
        seconds = round(time.perf_counter() - t0, 2)
        text = logfile.read_text(errors="replace")
        tail = " | ".join((error_lines(text) or text.splitlines()[-4:])[-4:])[:800]
        log.info("%s: rc %s in %.1f s", name, rc, seconds)
        return {
            "rc": rc,
            "seconds": seconds,
            "peak_gpu_used_mib": peak or None,
            "tail": tail if rc else text.splitlines()[-1][:300] if text else "",
        }

    # -- servers ---------------------------------------------------------------------------
    def server_argv(self, name: str) -> tuple[list[str], Settings]:
        profile, qp, kit = SERVER_STAGES[name]
        s = self.settings(profile, qp)
        if kit:
            return serve_args(s), s
        # The bare baseline: what a user types by hand for the same engine config.
        return [
            "lmdeploy", "serve", "api_server", s.serve_path,
            "--backend", "pytorch",
            "--server-port", str(s.serving.port),
            "--quant-policy", str(qp),
            "--cache-max-entry-count", str(CACHE_RATIO),
            "--trust-remote-code",
            "--log-level", "INFO",
        ], s  # fmt: skip

    def stage_server(self, name: str) -> None:
        argv, s = self.server_argv(name)
        rec: dict[str, Any] = {
            "profile": SERVER_STAGES[name][0],
            "quant_policy": SERVER_STAGES[name][1],
            "kit_rendered": SERVER_STAGES[name][2],
        }
        rec["serve_argv"] = argv
        rec["serve_argv_str"] = " ".join(argv)
        self.results["configs"][name] = rec
        before = gpu_memory().get("used_mib")
        srv = ServerRun(name, argv, s.serving.port, self.logs / f"server-{name}.log")
        srv.start()
        try:
            ok = srv.wait_ready(timeout_s=self.args.ready_timeout)
            rec["ready_s"] = srv.ready_s
            text = srv.log_text()
            caches = parse_cache_configs(text)
            if caches:
                rec["cache_config_raw"] = caches[-1]["raw"]
                rec["kv"] = kv_capacity(caches[-1])
            if not ok:
                rec["error"] = srv.error
                raise RuntimeError(srv.error)
            mem = gpu_memory()
            rec["gpu_used_mib"] = mem.get("used_mib")
            rec["gpu_used_by_server_mib"] = (mem["used_mib"] - before) if mem.get("used_mib") is not None and before is not None else None
            self.save()
            asyncio.run(self.measure(name, srv, rec, s))
            rec["gpu_used_after_load_mib"] = gpu_memory().get("used_mib")
            rec["log_errors"] = error_lines(srv.log_text())
        finally:
            srv.stop()
            rec["gpu_release_wait_s"] = wait_gpu_released(self.gpu_baseline_mib)

    async def measure(self, name: str, srv: ServerRun, rec: dict[str, Any], s: Settings) -> None:
        base = srv.base_url
        status, models = await loadgen.http_json(base + "/models", timeout=30)
        model = models["data"][0]["id"] if status == 200 and isinstance(models, dict) and models.get("data") else s.model.name
        rec["served_model"] = model
        short = lambda i: loadgen.unique_prompt(i, 48, seed=zlib.crc32(name.encode()) % 1000)  # noqa: E731
        warm = await asyncio.gather(*(loadgen.stream_chat(base, model, short(10_000 + i), 16) for i in range(8)))
        rec["warmup_errors"] = [r.error for r in warm if not r.ok]
        if all(not r.ok for r in warm):
            raise RuntimeError(f"every warm-up request failed: {rec['warmup_errors'][:2]}")
        steps = [
            ("batch1", lambda: self.batch1(base, model, short)),
            ("clients", lambda: self.clients(name, srv, model)),
            ("streams64", lambda: self.streams(base, model, short)),
            ("capacity", lambda: self.capacity(name, base, model, rec)),
        ]
        for step, fn in steps:
            if step == "clients" and name != self.args.clients_on:
                continue
            if step == "capacity" and name not in ("fp16", "awq-kv4"):
                continue
            if step in self.args.skip:
                continue
            t0 = time.perf_counter()
            try:
                rec[step] = await fn()
            except Exception as exc:
                log.error("%s/%s failed: %s", name, step, exc)
                log.debug("%s", traceback.format_exc())
                rec[step] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log.info("%s/%s (%.0f s): %s", name, step, time.perf_counter() - t0, _brief(rec[step]))
            self.save()

    async def batch1(self, base: str, model: str, prompt_for) -> dict[str, Any]:
        return await loadgen.repeated_single(base, model, 3, 64 if self.quick else 256, prompt_for)

    async def streams(self, base: str, model: str, prompt_for) -> dict[str, Any]:
        stats = await loadgen.sustained_load(base, model, 64, self.args.duration, 64 if self.quick else 256, prompt_for)
        return stats.as_dict() | {"max_tokens": 64 if self.quick else 256}

    async def capacity(self, name: str, base: str, model: str, rec: dict[str, Any]) -> dict[str, Any]:
        """Long prompts and more streams than the fp16 KV cache holds at once."""
        target = 512 if self.quick else 4096
        new = 64 if self.quick else 256
        words, measured = await calibrate_words(base, model, target)
        fp16 = (self.results["configs"].get("fp16") or {}).get("kv") or {}
        kv = rec.get("kv") or {}
        block = kv.get("block_size") or 64
        per_seq = math.ceil((target + new) / block)
        fp16_blocks = fp16.get("num_gpu_blocks") or (kv.get("num_gpu_blocks", 0) * {0: 1, 8: 0.5, 4: 0.25}[rec["quant_policy"]])
        fp16_seqs = int(fp16_blocks // per_seq) if fp16_blocks else 32
        streams = self.results.get("capacity_streams") or int(min(max(2 * fp16_seqs, fp16_seqs + 8), 512))
        self.results["capacity_streams"] = streams
        prompt = lambda i: loadgen.unique_prompt(i, words, seed=7)  # noqa: E731
        stats = await loadgen.sustained_load(base, model, streams, self.args.duration, new, prompt, warmup_s=0.0, request_timeout=900)
        return stats.as_dict() | {
            "prompt_tokens_target": target,
            "prompt_tokens_measured": measured,
            "max_tokens": new,
            "fp16_seqs_fit": fp16_seqs,
            "seqs_fit_this_config": int(kv["num_gpu_blocks"] // per_seq) if kv.get("num_gpu_blocks") else None,
        }

    # -- clients ---------------------------------------------------------------------------
    async def clients(self, name: str, srv: ServerRun, model: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._clients_sync, name, srv, model)

    def _clients_sync(self, name: str, srv: ServerRun, model: str) -> dict[str, Any]:
        from tests.gpu.clients_run import run_clients

        out = run_clients(
            upstream=f"http://127.0.0.1:{srv.port}",
            record_dir=self.work / "recorded",
            logs=self.logs,
            env=self.kit_env(SERVER_STAGES[name][0]),
            served_model=model,
        )
        self.results["clients"] = out | {"server": name}
        rec_dir = self.work / "recorded"
        if rec_dir.exists():
            with tarfile.open(self.out / "recorded.tgz", "w:gz") as tar:
                tar.add(rec_dir, arcname="recorded")
        return {k: v.get("status") if isinstance(v, dict) else v for k, v in out.items()}

    # -- run -------------------------------------------------------------------------------
    def run(self) -> int:
        self.write_settings()
        self.environment()
        self.save()
        for stage in STAGES:
            if stage not in self.args.stages or stage in self.args.skip:
                self.results["stages"].setdefault(stage, {"status": "skipped"})
                continue
            if stage == "model":
                self.run_stage(stage, self.stage_model)
            elif stage == "quantize":
                self.run_stage(stage, self.stage_quantize)
            else:
                self.run_stage(stage, lambda st=stage: self.stage_server(st))
        self.results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.save()
        failed = [k for k, v in self.results["stages"].items() if v.get("status") == "failed"]
        print(json.dumps({"results": str(self.out / "results.json"), "failed_stages": failed, "ratios": self.results["ratios"]}, indent=2))
        return 1 if failed else 0


async def calibrate_words(base: str, model: str, target_tokens: int) -> tuple[int, int | None]:
    """How many prompt words make `target_tokens` prompt tokens, measured with the server's own count."""

    async def count(words: int) -> int | None:
        payload = {"model": model, "messages": [{"role": "user", "content": loadgen.unique_prompt(0, words, seed=99)}], "max_tokens": 1}
        status, body = await loadgen.http_json(base + "/chat/completions", "POST", payload, timeout=120)
        return (body.get("usage") or {}).get("prompt_tokens") if status == 200 and isinstance(body, dict) else None

    small, big = 16, 512
    n_small, n_big = await count(small), await count(big)
    if not n_small or not n_big or n_big <= n_small:
        return target_tokens // 2, None
    per_word = (n_big - n_small) / (big - small)
    words = max(1, int((target_tokens - (n_small - small * per_word)) / per_word))
    measured = await count(words)
    if measured:  # one correction step
        words = max(1, int(words + (target_tokens - measured) / per_word))
        measured = await count(words)
    return words, measured


def compute_ratios(results: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets as ratios measured in this run, each with its value, target and pass/fail."""
    out: dict[str, Any] = {}
    cfg = results.get("configs") or {}

    def put(key: str, value: float | None, target: float, higher_is_better: bool, basis: str) -> None:
        if value is None:
            return
        ok = value >= target if higher_is_better else value <= target
        out[key] = {"value": round(value, 3), "target": f"{'>=' if higher_is_better else '<='} {target}", "pass": ok, "basis": basis}

    q = results.get("quantize") or {}
    kit, bare, rerun = q.get("kit") or {}, q.get("bare") or {}, q.get("rerun") or {}
    if kit.get("rc") == 0 and bare.get("rc") == 0 and bare.get("seconds"):
        put(
            "quantize_kit_over_bare",
            kit["seconds"] / bare["seconds"],
            TARGETS["quantize_ratio_max"],
            False,
            "wall seconds, same args, same run",
        )
    if rerun.get("rc") == 0:
        put("quantize_rerun_s", rerun["seconds"], TARGETS["rerun_s_max"], False, "unchanged re-run wall seconds")

    def steady(name: str, key: str = "streams64") -> float | None:
        st = (cfg.get(name) or {}).get(key) or {}
        if st.get("errors"):
            return None
        return st.get("steady_tok_s") or st.get("total_tok_s")

    k4, b4 = steady("awq-kv4"), steady("bare")
    if k4 and b4:
        put(
            "throughput_kit_over_bare",
            k4 / b4,
            TARGETS["throughput_ratio_min"],
            True,
            "64 streams steady tok/s, awq-kv4 vs bare hand-typed",
        )

    def tokens(name: str) -> int | None:
        return ((cfg.get(name) or {}).get("kv") or {}).get("tokens")

    for qp, tkey in ((8, "kv8_capacity_min"), (4, "kv4_capacity_min")):
        mine = tokens(f"awq-kv{qp}")
        base_name = "awq-kv0" if tokens("awq-kv0") else "fp16"
        base = tokens(base_name)
        if mine and base:
            put(
                f"kv{qp}_tokens_over_unquantized",
                mine / base,
                TARGETS[tkey],
                True,
                f"engine-reported KV tokens vs {base_name} at cache {CACHE_RATIO}",
            )
        if mine and tokens("fp16") and base_name != "fp16":
            out[f"kv{qp}_tokens_over_fp16"] = {"value": round(mine / tokens("fp16"), 3), "info": "vs the fp16-weights server"}

    c4 = (cfg.get("awq-kv4") or {}).get("capacity") or {}
    c0 = (cfg.get("fp16") or {}).get("capacity") or {}
    if c4.get("total_tok_s") and c0.get("total_tok_s"):
        put(
            "capacity_load_kv4_over_fp16",
            c4["total_tok_s"] / c0["total_tok_s"],
            TARGETS["capacity_load_ratio_min"],
            True,
            "output tok/s under the capacity-bound load (long prompts, more streams than fp16 KV holds)",
        )
        out["capacity_load_errors"] = {
            "value": (c4.get("errors") or 0) + (c0.get("errors") or 0),
            "target": "== 0",
            "pass": not (c4.get("errors") or c0.get("errors")),
        }
    return out


def dir_size(path: Path) -> int | None:
    if not path.exists():
        return None
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _brief(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    keys = ("error", "errors", "decode_tok_s", "ttft_s", "total_tok_s", "steady_tok_s", "ttft_p50_s", "ttft_p95_s", "concurrency")
    return ", ".join(f"{k}={d[k]}" for k in keys if k in d) or json.dumps(d)[:200]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.gpu.bench",
        description="GPU end-to-end run and benchmark of the kit against bare lmdeploy. Needs an NVIDIA GPU and lmdeploy.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Stages: " + ", ".join(STAGES) + ". Environment: PYTHONPATH (lmdeploy bundle), KIT_BENCH_WORKDIR.",
    )
    p.add_argument("--out", default="build/bench", help="where results.json and the logs go (default build/bench)")
    p.add_argument(
        "--workdir", default=os.environ.get("KIT_BENCH_WORKDIR", "/tmp/kit-bench"), help="models and scratch (default /tmp/kit-bench)"
    )
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages to run (default all)")
    p.add_argument("--skip", default="", help="comma-separated stages or steps (batch1, clients, streams64, capacity) to skip")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, awq-kv4 only, 5 s loads")
    p.add_argument("--duration", type=float, default=None, help="seconds of sustained load per measurement (default 20, quick 5)")
    p.add_argument("--ready-timeout", type=float, default=480.0, help="seconds to wait for /health (default 480)")
    p.add_argument("--clients-on", default="fp16", help="the server the clients run against (default fp16, the fc profile)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    args.skip = [s for s in args.skip.split(",") if s]
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        print(f"bench: unknown stage(s) {unknown}; allowed: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if args.quick:
        if args.stages == STAGES:
            args.stages = ["model", "quantize", "awq-kv4"]
        if args.clients_on == "fp16" and "fp16" not in args.stages:
            args.clients_on = "awq-kv4"
    args.duration = args.duration or (5.0 if args.quick else 20.0)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr), logging.FileHandler(Path(args.out) / "bench.log")]
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for h in handlers:
        h.setFormatter(fmt)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=handlers, force=True)
    if not shutil.which("nvidia-smi") and not gpu_memory():
        log.error("no NVIDIA GPU found (nvidia-smi / NVML); the benchmark needs one")
        return 2
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
