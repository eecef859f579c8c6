"""The capacity parts of docs/benchmarks/turbomind/README.md (tests/gpu/bench_docs.py renders the page): the
capacity table with lmdeploy's own engine counters, what bound each load, the long-context load and the
api_server front-end runs. Every number comes from a results JSON file."""

from __future__ import annotations

import statistics
from typing import Any

from kit.plan import Gpu, PlanInputs, plan
from kit.plan.engine_logs import fixture_shape
from kit.table import markdown_table


def _table(head: list[str], rows: list[list[Any]]) -> str:
    return markdown_table(head, rows)


def _n(v: Any, nd: int = 0) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def _verdict(r: dict[str, Any]) -> str:
    return "PASS" if r.get("pass") else "FAIL" if "pass" in r else "info"


def planned(results: dict[str, Any], rec: dict[str, Any], context: int) -> tuple[int, int]:
    """The planner's KV tokens and sequences of `context` tokens for one capacity server of the run."""
    env = results["environment"]
    gpu = Gpu(env["gpu"], int(env["gpu_total_mib"]) * 2**20, int(env.get("gpu_baseline_mib") or 0) * 2**20, "results")
    shape = fixture_shape({"model_shape": "internlm2_5-1_8b-chat"})
    qp = int(rec["settings"]["quant_policy"])
    argv = rec["argv"]
    inputs = PlanInputs(
        backend="turbomind",
        cache_max_entry_count=float(_flag(argv, "--cache-max-entry-count")),
        quant_policy=qp,
        awq=rec["settings"]["awq"],
        max_batch_size=int(_flag(argv, "--max-batch-size")),
    )
    p = plan(shape, gpu, inputs).policy(qp)
    blocks_per_seq = -(-context // 64)
    return p.kv_tokens, p.num_gpu_blocks // blocks_per_seq


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _engine(rec: dict[str, Any]) -> dict[str, Any]:
    return (rec.get("inflight") or {}).get("engine_stats") or {}


def _capacity_rows(results: dict[str, Any]) -> list[list[Any]]:
    cload = results["capacity"]["load"]
    ctx = cload["prompt_chars"] + cload["max_tokens"]
    rows = []
    for r in results["capacity"]["runs"]:
        tokens, seqs = planned(results, r, ctx)
        b, ld, budget, eng = r["batch1"], r["load"], r.get("budget") or {}, _engine(r)
        rows.append(
            [r["round"] + 1, r["config"], _n(r["ready_s"], 1), _n(budget.get("budget_mb"), 0), f"{tokens:,}", f"{seqs:,}"]
            + [_n(b["decode_tok_s"], 1), _n(ld["tok_s"], 1), _n(ld["wall_s"], 1), _n(ld["latency_p50_s"], 1), ld["errors"]]
            + [_n(eng.get("routed_peak")), _n(eng.get("running_median")), _n(eng.get("kv_cache_peak_pct"), 1)]
        )
    return rows


def _capacity_table(results: dict[str, Any]) -> str:
    cload = results["capacity"]["load"]
    ctx = cload["prompt_chars"] + cload["max_tokens"]
    head = ["round", "config", "ready s", "KV budget MiB (log)", "planned KV tokens", f"planned KV-limited seqs@{ctx}"]
    head += ["batch-1 tok/s", "tok/s", "wall s", "latency p50 s", "errors", "routed peak", "running median", "KV cache peak %"]
    return _table(head, _capacity_rows(results))


def bound_note(results: dict[str, Any]) -> list[str]:
    """What held each config back, from lmdeploy's counters: its KV cache, or the api_server in front of the engine."""
    streams = results["capacity"]["load"]["requests"]
    lines = []
    for config in dict.fromkeys(r["config"] for r in results["capacity"]["runs"]):
        stats = [_engine(r) for r in results["capacity"]["runs"] if r["config"] == config and _engine(r)]
        if not stats:
            continue
        routed = max(s["routed_peak"] for s in stats)
        running = statistics.median(s["running_median"] for s in stats)
        waiting = statistics.median(s["waiting_median"] for s in stats)
        kv = max(s["kv_cache_peak_pct"] for s in stats)
        if kv >= 95 and waiting > 0:
            why = f"bound by its KV cache: {kv:.1f} % full, {waiting:g} sequences waiting for room (median)"
        elif routed < streams:
            why = (
                f"bound in front of the engine: the api_server handed it at most {routed:,} of the {streams:,} streams while "
                f"the cache stayed at or under {kv:.1f} % full and nothing waited"
            )
        else:
            why = f"held all {streams:,} streams ({kv:.1f} % of the cache at most)"
        runs = f"{len(stats)} run{'s' * (len(stats) > 1)}"
        lines.append(f"- {config} ({runs}): {running:,g} sequences running (median), {why}.")
    if not lines:
        return []
    return [
        "What bound each server, from lmdeploy's own counters (`Server (…routed…)`, `Engine (running/waiting)`, `KV cache`, "
        "logged every 10 s with metrics on; `python -m tests.gpu.bench_tm --reparse` derives them from the run's logs):",
        "",
        *lines,
        "",
    ]


def _medians(ratio: dict[str, Any]) -> str:
    spreads = [(k[: -len("_tok_s")], v) for k, v in ratio.items() if k.endswith("_tok_s")]
    parts = [f"{name} median {s['median']:,.1f} tok/s ({s['min']:,.1f}–{s['max']:,.1f}, n={s['n']})" for name, s in spreads]
    rounds = ", ".join(f"{x:.3f}" for x in ratio.get("round_ratios", []))
    return "; ".join(parts) + (f"; per round {rounds}" if rounds else "")


def render_long(long: dict[str, Any]) -> list[str]:
    """The long-context capacity load: sessions of a few thousand tokens, fewer streams than the short load."""
    cload, ratios = long["capacity"]["load"], long["ratios"]
    fp16 = next(r for r in long["capacity"]["runs"] if r["config"] == "fp16")
    held = planned(long, fp16, cload["prompt_chars"] + cload["max_tokens"])[1]
    return [
        "## Long-context capacity load",
        "",
        f"[results-long.json](results-long.json) ({long['started'][:16].replace('T', ' ')}, the same machine kind and kit "
        f"defaults): {cload['requests']} streams at once of {cload['prompt_chars']} prompt / {cload['max_tokens']} output "
        f"tokens, whole responses from {cload['procs']} client processes, {long['capacity']['rounds']} alternating rounds. "
        f"The fp16 KV cache holds {held:,} sessions this long (the planner's figure), and these fewer, longer streams leave "
        "the api_server room to route every one of them (the short load above is bound in front of the engine instead).",
        "",
        _table(
            ["ratio", "value", "target", "verdict", "from"],
            [
                [k, f"{v['value']:.3f}", v.get("target", "–"), _verdict(v), _medians(v)]
                for k, v in ratios.items()
                if k.startswith("capacity_")
            ],
        ),
        "",
        _capacity_table(long),
        "",
        *bound_note(long),
    ]


def render_frontend(runs: list[dict[str, Any]]) -> list[str]:
    """The api_server front-end runs: the short capacity load on awq+kv4 with metrics on/off, asyncio or uvloop."""
    if not runs:
        return []
    rows = []
    for res in runs:
        loop = "uvloop + httptools" if any(p.startswith("uvloop") for p in res["environment"].get("kit_site", [])) else "asyncio + h11"
        for r in res["sweep"]["runs"]:
            eng, inf = _engine(r), r.get("inflight") or {}
            rows.append(
                [loop, r["value"], _n(r["load"]["tok_s"], 1), _n(r["load"]["wall_s"], 1), _n(inf.get("peak")), _n(inf.get("median"))]
                + [_n(inf.get("all_admitted_s"), 1), _n(eng.get("kv_cache_peak_pct"), 1)]
            )
    load = runs[0]["sweep"]["load"]
    return [
        "## The api_server in front of the engine",
        "",
        f"The short load ({load['requests']} x {load['prompt_chars']} in / {load['max_tokens']} out) on awq+kv4 with the two "
        "things a deployment can change about lmdeploy's api_server process without patching it: its Prometheus metrics "
        "(`serving.enable_metrics`, `--disable-metrics`) and its event loop (uvloop and httptools, which uvicorn takes when "
        "installed, ahead of the lmdeploy bundle for these servers only). One run each "
        "([results-frontend-asyncio.json](results-frontend-asyncio.json), [results-frontend-uvloop.json](results-frontend-uvloop.json)). "
        "In flight = admitted by the engine and not finished, from the engine's admission and finish log lines; the KV "
        "cache column is empty with metrics off (lmdeploy logs no counters then).",
        "",
        _table(
            ["event loop", "metrics", "tok/s", "wall s", "in flight peak", "in flight median", "last admitted at s", "KV cache peak %"],
            rows,
        ),
        "",
        "The api_server is woken at every engine step of every stream (its chat handler streams from the engine even for "
        "whole responses), so its one Python event loop, not the GPU, sets how many streams reach the engine; neither "
        "change moved that past the spread of single runs, so the kit keeps lmdeploy's defaults (metrics on, which the "
        "monitoring overlay scrapes) and adds no packages. More streams per GPU than this need more api_server processes: "
        "replicas (`serving.replicas`, the monitoring overlay's autoscaling) on more GPUs.",
        "",
    ]
