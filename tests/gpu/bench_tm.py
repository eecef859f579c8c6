"""`make bench` on TurboMind, the kit's default backend: honest kit-vs-bare throughput and the
capacity-bound load that decides whether AWQ + a quantized KV cache pays.

    python -m tests.gpu.bench_tm --out build/bench-tm                 # everything, ~17 min on an H200
    python -m tests.gpu.bench_tm --out build/bench-tm --stages pairs  # reuse the models in --workdir
    python -m tests.gpu.bench_tm --stages sweep --sweep-prefill 8192,16384,32768   # tune the prefill budget

Stages:
  model     random-weight Llama of the internlm2_5-1_8b-chat shape (tests/gpu/build_model.py)
  quantize  `python -m jobs.quantize` with the default profile (AWQ W4A16 g128)
  sweep     (with --sweep-prefill) one --sweep-config server per serving.max_prefill_token_num under the
            capacity load; with --adopt the fastest value is used by the stages after it
  capacity  kit-rendered servers (kit.render.serve_args, default profile) for fp16 weights + fp16 KV,
            AWQ + KV int4, AWQ + KV int8: batch-1 decode, then N streams of P in / O out as whole
            (non-streamed) responses from several client processes; more streams than fp16 KV holds.
            --cap-rounds rounds, the order reversed every other round (A B, B A, ...); medians compared
  pairs     kit server (rendered args) and bare server (hand-typed args, same engine config)
            alternating A B A B ..., each with the same streamed load; ready time, tok/s, TTFT

Every server's log is kept; TurboMind's `Object cache budget: X MB from free Y MB and ratio R` line
becomes a planner fixture (tests/plan/fixtures/engine_logs_turbomind_*.json). Results: results.json
(written after every step), bench.log, logs.tgz.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tarfile
from pathlib import Path
from typing import Any

import yaml

from kit.render import serve_args
from kit.settings import Settings, deep_merge, load_settings, parse_override
from tests.gpu import openai_load as ol
from tests.gpu.bench_harness import BenchBase, dir_size, now, run_to_log, setup_logging, spread
from tests.gpu.server import error_lines, gpu_memory

log = logging.getLogger("bench_tm")

STAGES = ("model", "quantize", "sweep", "capacity", "pairs")
SHAPE = dict(
    hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16, num_key_value_heads=8, vocab_size=92544
)
# name: settings overrides on the default profile (the engine config stays the kit's default)
CAPACITY_CONFIGS: dict[str, dict[str, Any]] = {
    "fp16": {"quantization": {"enabled": False}, "serving": {"quant_policy": 0}},
    "awq-kv4": {"serving": {"quant_policy": 4}},
    "awq-kv8": {"serving": {"quant_policy": 8}},
    "fp16-kv4": {"quantization": {"enabled": False}, "serving": {"quant_policy": 4}},  # KV int4 without AWQ
}
# config -> its ratio's key in results["ratios"]
CAPACITY_RATIOS = {"awq-kv4": "capacity_kv4_over_fp16", "awq-kv8": "capacity_kv8_over_fp16", "fp16-kv4": "capacity_fp16_kv4_over_fp16"}
# The kit runtime image's additions to lmdeploy's own dependencies, unpacked (the GPU machine has no pip index).
KIT_SITE = Path(os.environ["KIT_BENCH_KIT_SITE"]) if os.environ.get("KIT_BENCH_KIT_SITE") else None
TARGETS = {"throughput_kit_over_bare": 0.95, "capacity_kv4_over_fp16": 1.5}
BUDGET_LINE = re.compile(r"Object cache budget: ([\d.]+) MB from free ([\d.]+) MB and ratio ([\d.]+)")


def parse_budget(text: str) -> dict[str, float] | None:
    """TurboMind's KV sizing line (the last one in a log)."""
    hits = BUDGET_LINE.findall(text)
    if not hits:
        return None
    budget, free, ratio = (float(x) for x in hits[-1])
    return {"budget_mb": budget, "free_mb": free, "ratio": ratio}


# At INFO, TurboMind logs each request's admission (`[TM][INFO][1201.04:34:38.405499][scheduler.cc:1488] req 19 ...
# computed [0,1044)`) and lmdeploy each finish (`2026-12-01 04:35:02,118 - ... session 19 finished, reason`).
ADMIT_LINE = re.compile(r"\[TM\]\[INFO\]\[\d+\.(\d\d):(\d\d):([\d.]+)\]\[scheduler\.cc:\d+\] req (\d+) \(uid \d+\) resume")
# With metrics on, lmdeploy logs its own counters every 10 s: `Server (succeeded/failed/routed/waiting): 16 / 0 / 1037 / 0,
# Engine (running/waiting): 1036 / 0, KV cache: 30.8%`. Routed = handed to the engine by the api_server.
STATS_LINE = re.compile(r"routed/waiting\): \d+ / \d+ / (\d+) / -?\d+, Engine \(running/waiting\): (\d+) / (\d+), KV cache: ([\d.]+)%")
FINISH_LINE = re.compile(r"^\d{4}-\d\d-\d\d (\d\d):(\d\d):(\d\d),(\d+) .* session (\d+) finished, reason", re.M)


def inflight(text: str, min_output_tokens: int = 1) -> dict[str, Any] | None:
    """Sequences the engine held at once during a load, from a server log's admission and finish lines.

    Counts only requests that finished with at least `min_output_tokens` (the load's, not the warm-up's).
    `peak` and `median` (sampled every 0.5 s from the first admission to the last finish) show whether the
    engine ever ran all the streams a load offered; `all_admitted_s` is when the last one got in.
    """

    def secs(h: str, m: str, s: float) -> float:
        return int(h) * 3600 + int(m) * 60 + s

    admitted: dict[int, float] = {}
    for h, m, s, sid in ADMIT_LINE.findall(text):
        admitted.setdefault(int(sid), secs(h, m, float(s)))
    finished: dict[int, float] = {}
    for line in text.splitlines():
        if (hit := FINISH_LINE.match(line)) and (out := re.search(r"output_tokens (\d+)", line)) and int(out[1]) >= min_output_tokens:
            h, m, s, ms, sid = hit.groups()
            finished[int(sid)] = secs(h, m, int(s) + int(ms) / 1000)
    spans = [(admitted[sid], end) for sid, end in finished.items() if sid in admitted]
    if not spans:
        return None
    t0, t1 = min(a for a, _ in spans), max(e for _, e in spans)
    samples = [sum(1 for a, e in spans if a <= t0 + i / 2 < e) for i in range(int((t1 - t0) * 2) + 1)]
    out: dict[str, Any] = {
        "requests": len(spans),
        "peak": max(samples),
        "median": statistics.median(samples),
        "all_admitted_s": round(max(a for a, _ in spans) - t0, 1),
        "span_s": round(t1 - t0, 1),
    }
    if stats := [(int(r), int(run), int(w), float(kv)) for r, run, w, kv in STATS_LINE.findall(text) if int(run)]:
        # lmdeploy's own view, sampled every 10 s while the engine had work: KV-bound shows waiting > 0 at a full
        # cache; a server that never routes all the streams to an engine with free cache is bound in front of it.
        out["engine_stats"] = {
            "samples": len(stats),
            "routed_peak": max(s[0] for s in stats),
            "running_median": statistics.median(s[1] for s in stats),
            "waiting_median": statistics.median(s[2] for s in stats),
            "kv_cache_peak_pct": max(s[3] for s in stats),
        }
    return out


def reparse(results_file: Path) -> dict[str, Any]:
    """Recompute every capacity and sweep run's `inflight` from the logs.tgz beside results.json (for runs
    recorded before a field existed); returns the updated results, the file is rewritten."""
    if not (results_file.parent / "logs.tgz").is_file():
        raise SystemExit(f"bench_tm --reparse: no logs.tgz beside {results_file} (the run's server logs are needed)")
    results = json.loads(results_file.read_text())
    with tarfile.open(results_file.parent / "logs.tgz") as tar:
        logs = {Path(m.name).name: tar.extractfile(m).read().decode(errors="replace") for m in tar.getmembers() if m.isfile()}
    stage_runs = [(f"{r['config']}-{r['round']}", r, results["capacity"]["load"]) for r in (results.get("capacity") or {}).get("runs", [])]
    stage_runs += [(f"sweep-{r['value']}", r, results["sweep"]["load"]) for r in (results.get("sweep") or {}).get("runs", [])]
    for label, rec, load in stage_runs:
        if (text := logs.get(f"server-{label}.log")) is not None:
            rec["inflight"] = inflight(text, load["max_tokens"])
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    return results


class Bench(BenchBase):
    log = log
    json_indent = 1

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args, {"schema": 3, "backend": "turbomind", "started": now(), "targets": TARGETS, "stages": {}})
        self.adopted: list[str] = []  # overrides the sweep chose for the stages after it

    # -- settings -------------------------------------------------------------------------
    def write_settings(self) -> None:
        over = {"storage": {"models_root": str(self.work / "models")}, "serving": {"log_level": "INFO"}}
        for item in [*self.args.set, *self.adopted]:
            over = deep_merge(over, parse_override(item))
        self.write_settings_file(over)

    def settings(self, overrides: dict[str, Any] | None = None) -> Settings:
        return load_settings("default", path=self.settings_file, overrides=overrides or {})

    def ratios(self) -> dict[str, Any]:
        return compute_ratios(self.results)

    def run_logged(self, name: str, cmd: list[str], timeout: float) -> dict[str, Any]:
        done = run_to_log(cmd, self.logs / f"{name}.log", self.kit_env("default"), timeout)
        rc = done.rc
        out = {"rc": rc, "seconds": round(done.seconds, 1), "tail": " | ".join(done.text.splitlines()[-3:])[-600:]}
        log.info("%s: %s", name, out)
        if rc:
            raise RuntimeError(f"{name} failed: {out['tail']}")
        return out

    # -- stages ---------------------------------------------------------------------------
    def stage_model(self) -> None:
        s = self.settings()
        cmd = [sys.executable, "-m", "tests.gpu.build_model", "--arch", "llama", "--out", s.fp16_path, "--shape", json.dumps(SHAPE)]
        self.results["model"] = self.run_logged("build-model", cmd, 900) | {"path": s.fp16_path, "shape": SHAPE}

    def stage_quantize(self) -> None:
        s = self.settings()
        cmd = [sys.executable, "-m", "jobs.quantize", "--model-path", s.fp16_path, "--out", s.quantized_path]
        q = self.run_logged("quantize", cmd, 1200)
        q["cmd"] = " ".join(["python", *cmd[1:]])
        q["sizes_bytes"] = {"fp16": dir_size(Path(s.fp16_path)), "w4a16": dir_size(Path(s.quantized_path))}
        self.results["quantize"] = q

    def serve(self, label: str, argv: list[str], port: int, work, kit: bool = True) -> dict[str, Any]:
        """Start a server, run `work(base_url, model)`, stop it; the record holds ready time, budget line and memory.

        `kit` servers see KIT_BENCH_KIT_SITE ahead of the lmdeploy bundle: the packages the kit's runtime image adds
        to a bare `pip install lmdeploy` (images/requirements-kit.txt)."""
        rec: dict[str, Any] = {"argv": argv, "started": now()}
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(KIT_SITE), os.environ.get("PYTHONPATH")]))} if kit and KIT_SITE else {}
        with self.api_server(label, argv, port, rec, ready_timeout=300, release_key="release_wait_s", env=env) as srv:
            rec["budget"] = parse_budget(srv.log_text())
            rec["gpu_used_mib"] = gpu_memory().get("used_mib")
            if srv.ready_s is None:
                raise RuntimeError(srv.error)
            base = srv.base_url
            model = ol.served_model(base)
            warm = ol.run_load(base, model, ol.LoadSpec(16, 16, 64, 16, stream=True))
            rec["warmup_errors"] = warm.errors
            rec.update(work(base, model))
            rec["log_errors"] = error_lines(srv.log_text())
        log.info("%s: %s", label, {k: v for k, v in rec.items() if k not in ("argv", "log_errors")})
        return rec

    def capacity_spec(self) -> ol.LoadSpec:
        a = self.args
        return ol.LoadSpec(a.cap_streams, a.cap_streams, a.cap_in, a.cap_out, stream=False, procs=a.cap_procs, seed=7)

    def capacity_run(self, label: str, s: Settings, spec: ol.LoadSpec, batch1: bool = True) -> dict[str, Any]:
        def work(base: str, model: str) -> dict[str, Any]:
            first = {"batch1": ol.batch1(base, model)} if batch1 else {}
            return first | {"load": ol.run_load(base, model, spec).as_dict()}

        rec = self.serve(label, serve_args(s), s.serving.port, work)
        server_log = self.logs / f"server-{label}.log"
        rec["inflight"] = inflight(server_log.read_text(errors="replace"), spec.max_tokens) if server_log.exists() else None
        sv = s.serving
        rec["settings"] = {
            "quant_policy": sv.quant_policy,
            "awq": s.effective_model_format == "awq",
            "max_prefill_token_num": sv.max_prefill_token_num,
        }
        return rec

    def stage_sweep(self) -> None:
        """One server per value of one setting under the capacity load; --adopt keeps the fastest for later stages."""
        a = self.args
        if not a.sweep_values:
            raise ValueError("the sweep stage needs --sweep SECTION.KEY=V1,V2,... (or --sweep-prefill N,N,...)")
        spec = self.capacity_spec()
        runs: list[dict[str, Any]] = []
        self.results["sweep"] = {"config": a.sweep_config, "key": a.sweep_key, "load": spec.__dict__, "runs": runs}
        for value in a.sweep_values:
            s = self.settings(deep_merge(CAPACITY_CONFIGS[a.sweep_config], parse_override(f"{a.sweep_key}={value}")))
            runs.append({"value": value, **self.capacity_run(f"sweep-{value}", s, spec, batch1=False)})
            self.save()
        ok = [r for r in runs if (r.get("load") or {}).get("tok_s") and not r["load"]["errors"]]
        if not ok:
            raise RuntimeError("no sweep run finished without errors")
        best = max(ok, key=lambda r: r["load"]["tok_s"])["value"]
        self.results["sweep"]["best"] = best
        if a.adopt:
            self.adopted = [f"{a.sweep_key}={best}"]
            self.write_settings()
            self.results["sweep"]["adopted"] = True
        log.info("sweep: fastest %s=%s%s", a.sweep_key, best, " (adopted)" if a.adopt else "")

    def stage_capacity(self) -> None:
        """--cap-rounds rounds over the configs, order reversed every other round; --cap-once configs in round 1 only."""
        a = self.args
        spec = self.capacity_spec()
        runs: list[dict[str, Any]] = []
        self.results["capacity"] = {"load": spec.__dict__, "rounds": a.cap_rounds, "runs": runs}
        for i in range(a.cap_rounds):
            names = [c for c in a.configs if i == 0 or c not in a.cap_once]
            for name in names if i % 2 == 0 else names[::-1]:
                rec = self.capacity_run(f"{name}-{i}", self.settings(CAPACITY_CONFIGS[name]), spec)
                runs.append({"config": name, "round": i, **rec})
                self.save()

    def bare_argv(self, s: Settings) -> list[str]:
        """What a user types by hand for the same engine config as the kit's rendered one."""
        sv = s.serving
        argv = ["lmdeploy", "serve", "api_server", s.serve_path, "--backend", sv.backend, "--server-port", str(sv.port)]
        argv += ["--quant-policy", str(sv.quant_policy), "--cache-max-entry-count", str(sv.cache_max_entry_count)]
        if s.effective_model_format:
            argv += ["--model-format", s.effective_model_format]
        if sv.max_batch_size:
            argv += ["--max-batch-size", str(sv.max_batch_size)]
        if sv.max_prefill_token_num:
            argv += ["--max-prefill-token-num", str(sv.max_prefill_token_num)]
        if not sv.enable_metrics:
            argv.append("--disable-metrics")
        return argv + ["--log-level", sv.log_level]

    def stage_pairs(self) -> None:
        a = self.args
        s = self.settings()
        spec = ol.LoadSpec(a.pair_requests, a.pair_streams, a.pair_in, a.pair_out, stream=True, procs=a.pair_procs, seed=11)
        runs: list[dict[str, Any]] = []
        self.results["pairs"] = {"load": spec.__dict__, "kit_argv": serve_args(s), "bare_argv": self.bare_argv(s), "runs": runs}
        for i in range(a.pairs):
            for who in ("kit", "bare") if i % 2 == 0 else ("bare", "kit"):
                argv = serve_args(s) if who == "kit" else self.bare_argv(s)
                work = lambda base, model: {"load": ol.run_load(base, model, spec).as_dict()}  # noqa: E731
                rec = self.serve(f"{who}-{i}", argv, s.serving.port, work, kit=who == "kit")
                runs.append({"who": who, "pair": i, **{k: v for k, v in rec.items() if k != "argv"}})
                self.save()

    def run(self) -> int:
        self.write_settings()
        mem = gpu_memory()
        self.baseline_mib = mem.get("used_mib")
        self.results["environment"] = {"gpu": mem.get("name"), "driver": mem.get("driver"), "gpu_total_mib": mem.get("total_mib")}
        self.results["environment"]["gpu_baseline_mib"] = self.baseline_mib
        self.results["environment"]["kit_site"] = (
            sorted(p.name.removesuffix(".dist-info") for p in KIT_SITE.glob("*.dist-info")) if KIT_SITE else []
        )
        for name in STAGES:
            if name in self.args.stages and (name != "sweep" or self.args.sweep_values):
                self.stage(name, getattr(self, f"stage_{name}"))
        self.results["finished"] = now()
        self.save()
        print(json.dumps(self.results["ratios"], indent=1))
        return 1 if any(v["status"] != "ok" for v in self.results["stages"].values()) else 0


def compute_ratios(results: dict[str, Any]) -> dict[str, Any]:
    """Each target as measured: value, target, PASS/FAIL and what it was computed from."""
    out: dict[str, Any] = {}
    runs = [r for r in (results.get("pairs") or {}).get("runs", []) if (r.get("load") or {}).get("tok_s") and not r["load"]["errors"]]
    kit = [r["load"]["tok_s"] for r in runs if r["who"] == "kit"]
    bare = [r["load"]["tok_s"] for r in runs if r["who"] == "bare"]
    by_pair = {}
    for r in runs:
        by_pair.setdefault(r["pair"], {})[r["who"]] = r["load"]["tok_s"]
    pair_ratios = [p["kit"] / p["bare"] for p in by_pair.values() if "kit" in p and "bare" in p]
    if pair_ratios:
        value = statistics.median(kit) / statistics.median(bare)
        out["throughput_kit_over_bare"] = {
            "value": round(value, 3),
            "target": f">= {TARGETS['throughput_kit_over_bare']}",
            "pass": value >= TARGETS["throughput_kit_over_bare"],
            "pair_ratios": [round(x, 3) for x in pair_ratios],
            "kit_tok_s": spread(kit),
            "bare_tok_s": spread(bare),
            "kit_ready_s": spread([r["ready_s"] for r in runs if r["who"] == "kit" and r.get("ready_s")]),
            "bare_ready_s": spread([r["ready_s"] for r in runs if r["who"] == "bare" and r.get("ready_s")]),
            "basis": "median whole-run output tok/s over alternating kit/bare servers",
        }
    cap = [r for r in (results.get("capacity") or {}).get("runs", []) if (r.get("load") or {}).get("tok_s") and not r["load"]["errors"]]
    by_config: dict[str, list[float]] = {}
    by_round: dict[int, dict[str, float]] = {}
    for r in cap:
        by_config.setdefault(r["config"], []).append(r["load"]["tok_s"])
        by_round.setdefault(r["round"], {})[r["config"]] = r["load"]["tok_s"]
    for name, key in CAPACITY_RATIOS.items():
        if by_config.get(name) and by_config.get("fp16"):
            value = statistics.median(by_config[name]) / statistics.median(by_config["fp16"])
            out[key] = {
                "value": round(value, 3),
                "round_ratios": [round(rd[name] / rd["fp16"], 3) for rd in by_round.values() if name in rd and "fp16" in rd],
                f"{name}_tok_s": spread(by_config[name]),
                "fp16_tok_s": spread(by_config["fp16"]),
                "basis": "median whole-run output tok/s over alternating rounds, capacity-bound load, kit default profile",
            }
            if target := TARGETS.get(key):
                out[key].update(target=f">= {target}", **{"pass": value >= target})
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.bench_tm", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="build/bench-tm")
    p.add_argument("--workdir", default=os.environ.get("KIT_BENCH_WORKDIR", "/tmp/kit-bench-tm"))
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, in this order: {','.join(STAGES)}")
    p.add_argument("--configs", default="fp16,awq-kv4,awq-kv8", help=f"capacity configs to run, of {','.join(CAPACITY_CONFIGS)}")
    p.add_argument("--cap-streams", type=int, default=1600)
    p.add_argument("--cap-in", type=int, default=1024)
    p.add_argument("--cap-out", type=int, default=1024)
    p.add_argument("--cap-procs", type=int, default=8)
    p.add_argument("--cap-rounds", type=int, default=3, help="capacity rounds, order alternating (median of the rounds)")
    p.add_argument("--cap-once", default="awq-kv8", help="capacity configs run in the first round only")
    p.add_argument("--sweep-config", default="awq-kv4", choices=sorted(CAPACITY_CONFIGS))
    p.add_argument(
        "--sweep",
        default="",
        metavar="SECTION.KEY=V1,V2",
        help="the sweep stage's setting and values, e.g. serving.enable_metrics=true,false",
    )
    p.add_argument("--sweep-prefill", default="", help="short for --sweep serving.max_prefill_token_num=V1,V2,...")
    p.add_argument("--adopt", action="store_true", help="the stages after the sweep use its fastest value")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="settings override for every server")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--pair-requests", type=int, default=256)
    p.add_argument("--pair-streams", type=int, default=64)
    p.add_argument("--pair-in", type=int, default=512)
    p.add_argument("--pair-out", type=int, default=256)
    p.add_argument("--pair-procs", type=int, default=4)
    p.add_argument(
        "--reparse", metavar="RESULTS_JSON", help="recompute the runs' in-flight records from the logs.tgz beside it, run nothing"
    )
    return p


def normalize(args: argparse.Namespace) -> list[str]:
    """Split the comma lists in place; returns the unknown stage/config names."""
    args.stages = [s for s in args.stages.split(",") if s]
    args.configs = [c for c in args.configs.split(",") if c]
    args.cap_once = [c for c in args.cap_once.split(",") if c]
    sweep = args.sweep or (f"serving.max_prefill_token_num={args.sweep_prefill}" if args.sweep_prefill else "=")
    key, _, values = sweep.partition("=")
    args.sweep_key, args.sweep_values = key, [yaml.safe_load(v) for v in values.split(",") if v]
    return [s for s in args.stages if s not in STAGES] + [c for c in [*args.configs, *args.cap_once] if c not in CAPACITY_CONFIGS]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reparse:
        results = reparse(Path(args.reparse))
        runs = [*(results.get("sweep") or {}).get("runs", []), *(results.get("capacity") or {}).get("runs", [])]
        print(json.dumps([r.get("inflight") for r in runs], indent=1))
        return 0
    if bad := normalize(args):
        print(f"bench_tm: unknown stage/config {bad}", file=sys.stderr)
        return 2
    setup_logging(Path(args.out))
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
