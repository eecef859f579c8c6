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

Loads go through the openai SDK's async client (tests/gpu/openai_load.py): 64 streams and the
capacity load for --duration seconds each, unique prompts (no prefix-cache hits), `ignore_eos`.

Outputs in --out (at most 8 files): results.json, bench.log, cache-configs.log, logs.tgz (server and
quantize logs), recorded.tgz (client replies recorded through the proxy). Models live in --workdir.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tarfile
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

from kit.render import auto_awq_args, serve_args
from kit.settings import Settings, load_settings
from tests.gpu import openai_load as ol
from tests.gpu.bench_harness import BenchBase, dir_size, now, package_versions, run_to_log, setup_logging
from tests.gpu.bench_loads import SHORT_CHARS, calibrate_chars, capacity_load, seqs_fit, streams64
from tests.gpu.bench_ratios import CACHE_RATIO, TARGETS, compute_ratios
from tests.gpu.server import ServerRun, error_lines, gpu_memory, kv_capacity, parse_cache_configs

__all__ = ["Bench", "build_parser", "calibrate_chars", "compute_ratios", "main"]

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
# The real internlm2_5-1_8b-chat shape, and the --quick one (hidden a multiple of the AWQ group 128).
FULL_SHAPE = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, vocab_size=92544
)
QUICK_SHAPE = dict(
    hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=92544
)


class Bench(BenchBase):
    log = log

    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        results = {
            "schema": SCHEMA_VERSION,
            "kind": "quick" if self.quick else "full",
            "started": now(),
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
        super().__init__(args, results)

    # -- settings ---------------------------------------------------------------------------
    def write_settings(self) -> None:
        over: dict[str, Any] = {
            "storage": {"models_root": str(self.work / "models")},
            "serving": {"backend": "pytorch", "log_level": "INFO"},
        }
        if self.quick:
            over["quantization"] = {"calib_samples": 16, "calib_seqlen": 256}
        self.write_settings_file(over)

    def settings(self, profile: str, quant_policy: int | None = None) -> Settings:
        # The tiny quick model would get millions of KV blocks at 0.4, overflowing lmdeploy's
        # fill_kv_cache Triton kernel (illegal memory access, seen on an H200); a small ratio avoids it.
        serving: dict[str, Any] = {"cache_max_entry_count": 0.02 if self.quick else CACHE_RATIO}
        if quant_policy is not None:
            serving["quant_policy"] = quant_policy
        return load_settings(profile, path=self.settings_file, overrides={"serving": serving})

    # -- bookkeeping -----------------------------------------------------------------------
    def ratios(self) -> dict[str, Any]:
        return compute_ratios(self.results)

    def save(self) -> None:
        super().save()
        caches = [
            f"# {name}: {c.get('serve_argv_str', '')}\n{c['cache_config_raw']}\n"
            for name, c in self.results["configs"].items()
            if c.get("cache_config_raw")
        ]
        (self.out / "cache-configs.log").write_text("".join(caches))

    def stage_failed(self, name: str) -> None:
        (self.logs / f"stage-{name}.traceback.txt").write_text(traceback.format_exc())

    # -- environment -----------------------------------------------------------------------
    def environment(self) -> None:
        env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node()}
        gpu = gpu_memory()
        env.update(gpu=gpu.get("name"), driver=gpu.get("driver"), gpu_total_mib=gpu.get("total_mib"), gpu_baseline_mib=gpu.get("used_mib"))
        self.baseline_mib = gpu.get("used_mib")
        env.update(package_versions())
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
            calib.write_text(" ".join(ol.prompt(i, 1200) for i in range(400)))
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
        log.info("%s: %s", name, " ".join(cmd))
        done = run_to_log(cmd, self.logs / f"{name}.log", env or {**os.environ, "PYTHONUNBUFFERED": "1"}, timeout)
        rc, seconds, text = done.rc, round(done.seconds, 2), done.text
        tail = " | ".join((error_lines(text) or text.splitlines()[-4:])[-4:])[:800]
        log.info("%s: rc %s in %.1f s", name, rc, seconds)
        return {
            "rc": rc,
            "seconds": seconds,
            "peak_gpu_used_mib": done.peak_gpu_used_mib,
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
        with self.api_server(name, argv, s.serving.port, rec, self.args.ready_timeout, release_key="gpu_release_wait_s") as srv:
            text = srv.log_text()
            caches = parse_cache_configs(text)
            if caches:
                rec["cache_config_raw"] = caches[-1]["raw"]
                rec["kv"] = kv_capacity(caches[-1])
            if srv.ready_s is None:
                rec["error"] = srv.error
                raise RuntimeError(srv.error)
            mem = gpu_memory()
            rec["gpu_used_mib"] = mem.get("used_mib")
            rec["gpu_used_by_server_mib"] = (mem["used_mib"] - before) if mem.get("used_mib") is not None and before is not None else None
            self.save()
            self.measure(name, srv, rec)
            rec["gpu_used_after_load_mib"] = gpu_memory().get("used_mib")
            rec["log_errors"] = error_lines(srv.log_text())

    def measure(self, name: str, srv: ServerRun, rec: dict[str, Any]) -> None:
        base = srv.base_url
        model = rec["served_model"] = ol.served_model(base)
        seed = zlib.crc32(name.encode()) % 1000  # each config its own prompts
        warm = ol.run_load(base, model, ol.LoadSpec(8, 8, SHORT_CHARS, 16, stream=True, seed=seed + 1))
        rec["warmup_errors"] = warm.first_errors
        if warm.errors == warm.requests:
            raise RuntimeError(f"every warm-up request failed: {warm.first_errors[:2]}")
        steps = [
            ("batch1", lambda: ol.batch1(base, model, 3, self.new_tokens, SHORT_CHARS)),
            ("clients", lambda: self.clients(name, srv, model)),
            ("streams64", lambda: streams64(base, model, seed, self.new_tokens, self.args.duration)),
            ("capacity", lambda: self.capacity(base, model, rec)),
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
                rec[step] = fn()
            except Exception as exc:
                log.error("%s/%s failed: %s", name, step, exc)
                log.debug("%s", traceback.format_exc())
                rec[step] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log.info("%s/%s (%.0f s): %s", name, step, time.perf_counter() - t0, _brief(rec[step]))
            self.save()

    @property
    def new_tokens(self) -> int:
        return 64 if self.quick else 256

    def capacity(self, base: str, model: str, rec: dict[str, Any]) -> dict[str, Any]:
        """Long prompts and more streams than the fp16 KV cache holds at once (the same count for every config)."""
        target = 512 if self.quick else 4096
        fp16_kv = (self.results["configs"].get("fp16") or {}).get("kv") or {}
        fp16_seqs, mine = seqs_fit(rec.get("kv") or {}, fp16_kv, rec["quant_policy"], target + self.new_tokens)
        streams = self.results.get("capacity_streams") or int(min(max(2 * fp16_seqs, fp16_seqs + 8), 512))
        self.results["capacity_streams"] = streams
        load = capacity_load(base, model, streams, target, self.new_tokens, self.args.duration)
        return load | {"fp16_seqs_fit": fp16_seqs, "seqs_fit_this_config": mine}

    # -- clients ---------------------------------------------------------------------------
    def clients(self, name: str, srv: ServerRun, model: str) -> dict[str, Any]:
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
                self.stage(stage, self.stage_model)
            elif stage == "quantize":
                self.stage(stage, self.stage_quantize)
            else:
                self.stage(stage, lambda st=stage: self.stage_server(st))
        self.results["finished"] = now()
        self.save()
        failed = [k for k, v in self.results["stages"].items() if v.get("status") == "failed"]
        print(json.dumps({"results": str(self.out / "results.json"), "failed_stages": failed, "ratios": self.results["ratios"]}, indent=2))
        return 1 if failed else 0


def _brief(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    keys = ("error", "errors", "decode_tok_s", "ttft_s", "total_tok_s", "ttft_p50_s", "ttft_p95_s", "concurrency")
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
    setup_logging(Path(args.out), verbose=bool(args.verbose))
    if not shutil.which("nvidia-smi") and not gpu_memory():
        log.error("no NVIDIA GPU found (nvidia-smi / NVML); the benchmark needs one")
        return 2
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
