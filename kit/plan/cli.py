"""`python -m kit.plan`: predict KV-cache capacity and concurrency per quant policy before deploying.

lmdeploy sizes its KV cache as a fraction (`cache_max_entry_count`) of the GPU memory that is *free
after the weights are loaded*, so the same ratio means different capacity on different GPUs. The
planner reproduces that sizing for the PyTorch engine and TurboMind from the model's config.json and
the GPU's memory (formula and its validation: docs/planner.md) and flags settings that will not deploy.

Environment: PROFILE (settings profile), KIT_SETTINGS (settings file), KIT_PLAN_GPU (GPU name),
KIT_PLAN_GPU_MEMORY_GIB (GPU memory), KIT_PLAN_MODEL_CONFIG (config.json path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from kit import exitcodes
from kit.entry import add_settings_options, run, settings_from
from kit.plan import choices, parallel
from kit.plan.engine_logs import check_engine_logs
from kit.plan.formula import ENGINE_OVERHEAD_BYTES, MIN_HEADROOM_GIB, POLICY_NAMES, PlanResult, plan
from kit.plan.from_settings import _model_name, find_model_config, inputs_from_settings
from kit.plan.gpus import GPUS, Gpu, gpu_from_name, gpu_from_nvml
from kit.plan.shapes import GIB, ModelShape, PlanError
from kit.table import text_table


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def render_table(r: PlanResult) -> str:
    g, i = r.gpu, r.inputs
    lines = [
        f"model    {r.model.name} ({r.model.params / 1e9:.2f} B params, {r.model.num_layers} layers, {r.model.num_kv_heads} KV heads x {r.model.head_dim}) from {r.model.source}",
        f"gpu      {g.name}: {_gib(g.total_bytes)} total, {_gib(g.used_bytes)} used by others ({g.source}); tp={i.tp}",
        f"engine   {i.backend}, cache_max_entry_count={i.cache_max_entry_count:g}, "
        f"session_len={r.session_len}, context={r.context}, max_batch_size={r.max_batch_size}, block={i.block_size} tokens",
        f"memory   weights {_gib(r.weights_bytes)}/GPU ({'AWQ w4 g' + str(i.awq_group_size) if i.awq else 'fp16'}), "
        f"overhead ~{_gib(i.engine_overhead_bytes or 0)}, free at KV sizing {_gib(r.free_at_sizing_bytes)}",
        "",
    ]
    head = ("policy", "KV/token", "blocks", "KV tokens", "KV cache", "max session", f"seqs@{r.context}", "headroom")
    rows = [head]
    for p in r.policies:
        mark = "*" if p.configured else " "
        rows.append(
            (
                f"{mark}{p.quant_policy} {p.kv_dtype}",
                f"{p.kv_bytes_per_token / 1024:.1f} KiB",
                f"{p.num_gpu_blocks:,}",
                f"{p.kv_tokens:,}",
                _gib(p.kv_cache_bytes),
                f"{p.max_session_len:,}",
                f"{p.max_concurrent_sequences:,}" + (" (batch cap)" if p.kv_limited_sequences > r.max_batch_size else ""),
                _gib(p.headroom_bytes),
            )
        )
    lines += text_table(head, rows[1:], align="l" + "r" * (len(head) - 1)).splitlines()
    lines.append("(* = configured quant_policy)")
    for f in r.findings:
        where = "" if f.policy is None or f.policy == i.quant_policy else " (not the configured policy)"
        lines.append(f"{f.level}: {f.message}{where}")
    if r.recommendation:
        rec = r.recommendation
        opts = ", ".join(f"{POLICY_NAMES[k]}: {v:g}" if v is not None else f"{POLICY_NAMES[k]}: -" for k, v in rec.per_policy.items())
        lines.append(f"recommendation for {rec.target_sessions} x {rec.context} tokens: {rec.note} (smallest ratio per policy: {opts})")
    return "\n".join(lines)


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if not raw:
        return None
    try:
        return float(raw)
    except ValueError:
        raise PlanError(f"{name}={raw!r} is not a number") from None


def _resolve_gpu(args: argparse.Namespace, settings_gpu: str = "") -> Gpu:
    """Flag, then env, then settings `kubernetes.gpu_model` (the serving nodes), else the GPU on this host."""
    mem = args.gpu_memory_gib if args.gpu_memory_gib is not None else _env_float("KIT_PLAN_GPU_MEMORY_GIB")
    name = args.gpu or os.environ.get("KIT_PLAN_GPU") or (settings_gpu if mem is None else "")
    if mem is not None:
        if mem <= 0:
            raise PlanError("--gpu-memory-gib must be positive")
        label = GPUS[name].device_name if name in GPUS else (name or f"GPU with {mem:g} GiB")
        gpu = Gpu(label, int(mem * GIB), 0, "flag")
    elif name:
        gpu = gpu_from_name(name)
    else:
        gpu = gpu_from_nvml(args.gpu_index)
    if args.gpu_used_gib is not None:
        gpu = dataclasses.replace(gpu, used_bytes=int(args.gpu_used_gib * GIB))
    return gpu


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kit.plan",
        description="Predict lmdeploy KV-cache blocks, tokens and concurrency per quant policy (0, 8, 4) before deploying.",
        epilog="Environment: PROFILE, KIT_SETTINGS, KIT_PLAN_GPU, KIT_PLAN_GPU_MEMORY_GIB, KIT_PLAN_MODEL_CONFIG. "
        "Exit codes: 0 plan ok, 1 plan has errors, 2 usage. Formula: docs/planner.md.",
    )
    add_settings_options(p)
    g = p.add_argument_group("GPU (default: the live GPU through nvidia-ml-py)")
    g.add_argument("--gpu", help=f"GPU by name: {', '.join(GPUS)} ($KIT_PLAN_GPU)")
    g.add_argument("--gpu-memory-gib", type=float, help="GPU memory in GiB instead of a name ($KIT_PLAN_GPU_MEMORY_GIB)")
    g.add_argument("--gpu-used-gib", type=float, help="memory other processes already use (default: live value, else 0)")
    g.add_argument("--gpu-index", type=int, default=0, help="which live GPU to read (default 0)")
    m = p.add_argument_group("model and engine (default: settings)")
    m.add_argument(
        "--model-config", help="config.json to plan for ($KIT_PLAN_MODEL_CONFIG; default: served model, fp16 model, bundled shape)"
    )
    m.add_argument("--backend", choices=["pytorch", "turbomind"], help="engine (serving.backend)")
    m.add_argument("--cache-max-entry-count", type=float, help="KV fraction of free memory (serving.cache_max_entry_count)")
    m.add_argument("--session-len", type=int, help="tokens per session (serving.session_len; default model max)")
    m.add_argument("--context", type=int, help="tokens per sequence for the concurrency column (default: session_len)")
    m.add_argument("--tp", type=int, help="tensor parallelism (serving.tp)")
    m.add_argument("--max-batch-size", type=int, help="engine batch cap (serving.max_batch_size; default lmdeploy's for the GPU)")
    m.add_argument(
        "--engine-overhead-gib", type=float, help=f"non-weight GPU memory before KV sizing (default {ENGINE_OVERHEAD_BYTES / GIB:.2f})"
    )
    m.add_argument("--min-headroom-gib", type=float, default=MIN_HEADROOM_GIB, help="margin wanted beyond lmdeploy's runtime reserve")
    p.add_argument(
        "--target-sessions", type=int, help="recommend the smallest cache ratio / quant policy for this many sessions of --context tokens"
    )
    p.add_argument("--gpus", type=int, help="compare tp N with N replicas of tp 1 on this many GPUs of the node")
    p.add_argument("--check-engine-logs", metavar="FIXTURE", help="compare the planner with an engine-log fixture JSON and exit")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    return p


def _cmd_check_logs(path: str, as_json: bool) -> int:
    try:
        checks = check_engine_logs(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, KeyError, PlanError) as exc:
        print(f"plan: cannot check {path}: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    if as_json:
        print(json.dumps([{**dataclasses.asdict(c), "relative_error": c.relative_error, "ok": c.ok} for c in checks], indent=2))
    else:
        for c in checks:
            print(
                f"{'ok  ' if c.ok else 'FAIL'} [{c.role}] {c.label}: predicted {c.predicted:,.0f} {c.quantity}, logged {c.logged:,.0f} "
                f"({c.relative_error:+.3%}, limit ±{c.tolerance:.1%})"
            )
    return exitcodes.OK if all(c.ok for c in checks) else exitcodes.FAILED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run(parser, lambda args: _plan(parser, args), argv, prog="plan")


def _plan(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    for name in ("session_len", "context", "tp", "max_batch_size", "target_sessions", "gpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.check_engine_logs:
        return _cmd_check_logs(args.check_engine_logs, args.json)
    s = settings_from(args)
    cfg, source = find_model_config(s, args.model_config or os.environ.get("KIT_PLAN_MODEL_CONFIG"))
    shape = ModelShape.from_config(cfg, _model_name(s, source), source)
    inputs = inputs_from_settings(s, shape)
    changes = {
        "backend": args.backend,
        "cache_max_entry_count": args.cache_max_entry_count,
        "session_len": args.session_len,
        "context": args.context,
        "tp": args.tp,
        "max_batch_size": args.max_batch_size,
        "engine_overhead_bytes": int(args.engine_overhead_gib * GIB) if args.engine_overhead_gib is not None else None,
        "min_headroom_bytes": int(args.min_headroom_gib * GIB),
    }
    inputs = dataclasses.replace(inputs, **{k: v for k, v in changes.items() if v is not None})
    if args.target_sessions and not args.context:
        parser.error("--target-sessions needs --context (tokens per session)")
    gpu = _resolve_gpu(args, s.kubernetes.gpu_model)
    result = plan(shape, gpu, inputs, s.profile, args.target_sessions)
    report = choices.compare(result, args.target_sessions, result.context) if args.target_sessions else None
    layouts = parallel.compare_parallel(result, args.gpus) if args.gpus and args.gpus > 1 else None
    if args.json:
        extra = ({"choices": choices.to_json(report)} if report else {}) | ({"parallel": parallel.to_json(layouts)} if layouts else {})
        print(json.dumps(result.to_json() | extra, indent=2))
    else:
        sections = (choices.render(report) if report else []) + (parallel.render(layouts) if layouts else [])
        print("\n".join([render_table(result), *sections]))
    return exitcodes.FAILED if result.errors else exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
