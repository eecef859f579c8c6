"""tp N on N GPUs against N replicas of tp 1 (`make plan ARGS="--gpus N"`): what each holds, and which to
pick for this model. From the formula only: no multi-GPU run has been measured (docs/planner.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kit.plan.formula import PlanResult, plan

# tp N is picked over N replicas when it holds this many times their sequences (or they cannot serve).
TP_GAIN = 1.25


@dataclass
class Layout:
    name: str  # "tp N" | "N x tp 1"
    ok: bool  # no error for the configured policy
    weights_per_gpu: int
    kv_tokens_per_gpu: int
    sequences: int  # concurrent sequences of `context` tokens across the N GPUs
    errors: list[str]


@dataclass
class ParallelAdvice:
    gpus: int
    context: int
    tp: Layout
    replicas: Layout
    pick: str
    reason: str


def compare_parallel(result: PlanResult, gpus: int) -> ParallelAdvice:
    """Both layouts for the configured quant policy at the plan's context."""
    qp, ctx = result.inputs.quant_policy, result.context
    layouts = []
    for tp, copies, name in ((gpus, 1, f"tp {gpus}"), (1, gpus, f"{gpus} x tp 1")):
        inputs = dataclasses.replace(result.inputs, tp=tp, engine_overhead_bytes=None)
        r = plan(result.model, result.gpu, inputs, result.profile)
        p = r.policy(qp)
        layouts.append(
            Layout(name, not r.errors, r.weights_bytes, p.kv_tokens, copies * p.max_concurrent_sequences, [f.message for f in r.errors])
        )
    tp_l, rep_l = layouts
    if tp_l.ok and (not rep_l.ok or tp_l.sequences > TP_GAIN * rep_l.sequences):
        pick = tp_l.name
        why = rep_l.errors[0] if not rep_l.ok else f"the weights take most of one GPU ({rep_l.weights_per_gpu / 2**30:.2f} GiB each)"
        reason = (
            f"{why}: tp {gpus} splits the weights and the KV heads and holds {tp_l.sequences:,} sequences of {ctx} tokens "
            f"against {rep_l.sequences:,} for {gpus} replicas; it costs an all-reduce per layer (NVLink wanted)"
        )
    elif rep_l.ok:
        pick = rep_l.name
        reason = (
            f"the model fits one GPU: {gpus} replicas hold {rep_l.sequences:,} sequences of {ctx} tokens against "
            f"{tp_l.sequences:,} for tp {gpus}, exchange nothing between GPUs per layer, and one replica's failure leaves "
            f"the others serving; tp {gpus} pays only where one step is weight-bandwidth-bound (models near a GPU's size), "
            "not for a launch-bound small model"
        )
    else:
        pick = "neither"
        reason = f"neither layout serves it: {tp_l.errors[0]}"
    return ParallelAdvice(gpus, ctx, tp_l, rep_l, pick, reason)


def render(a: ParallelAdvice) -> list[str]:
    lines = ["", f"{a.gpus} GPUs: tp {a.gpus} against {a.gpus} replicas (formula only; not measured on two GPUs)"]
    for lay in (a.tp, a.replicas):
        state = "ok" if lay.ok else "error: " + lay.errors[0]
        lines.append(
            f"  {lay.name:<10} weights {lay.weights_per_gpu / 2**30:.2f} GiB/GPU, KV {lay.kv_tokens_per_gpu:,} tokens per engine, "
            f"{lay.sequences:,} seqs@{a.context} in all ({state})"
        )
    lines.append(f"pick {a.pick}: {a.reason}")
    return lines


def to_json(a: ParallelAdvice) -> dict[str, Any]:
    return dataclasses.asdict(a)
