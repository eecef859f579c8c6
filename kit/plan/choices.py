"""When AWQ pays: each weights x KV choice's cost (batch-1 decode speed, from measured figures kept in
kit/data/measured.json) against its gain (KV tokens, concurrent sequences, from the formula), and the
choice for a stated target of sessions x context tokens."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from kit.plan.formula import PlanResult, plan
from kit.plan.shapes import POLICY_NAMES
from kit.settings import REPO_ROOT
from kit.table import text_table

MEASURED_FILE = REPO_ROOT / "kit" / "data" / "measured.json"
CHOICES: tuple[tuple[bool, int], ...] = ((False, 0), (False, 8), (False, 4), (True, 0), (True, 8), (True, 4))


@dataclass
class Choice:
    weights: str  # fp16 | awq
    quant_policy: int
    kv_tokens: int
    sequences: int  # concurrent sequences of `context` tokens (KV- and batch-limited)
    decode_batch1_tok_s: float | None  # measured, None when no measurement matches
    capacity_tok_s: float | None  # measured whole-run tok/s under the capacity-bound load, when measured
    fits: bool

    @property
    def label(self) -> str:
        return f"{self.weights}+kv{self.quant_policy}"


@dataclass
class ChoiceReport:
    target_sessions: int
    context: int
    measured_on: str | None  # which measurement the speeds came from
    choices: list[Choice]
    pick: Choice | None
    reason: str


@cache
def measurements() -> list[dict[str, Any]]:
    return json.loads(MEASURED_FILE.read_text())["measurements"]


def find_measurement(gpu_name: str, backend: str, model: str) -> dict[str, Any] | None:
    """The best-matching measurement: same backend, then same GPU, then same model shape."""
    same = [m for m in measurements() if m["backend"] == backend]
    if not same:
        return None
    return max(same, key=lambda m: (m["gpu"].lower() == gpu_name.lower(), m["model_shape"] == model))


def nearest_load(m: dict[str, Any] | None, context: int) -> dict[str, Any] | None:
    """The measured capacity load whose session length (prompt + output tokens) is closest to `context`."""
    loads = (m or {}).get("capacity_loads") or ([m["capacity_load"]] if m and m.get("capacity_load") else [])
    return min(loads, key=lambda ld: abs(ld["prompt_tokens"] + ld["output_tokens"] - context), default=None)


def compare(result: PlanResult, target_sessions: int, context: int) -> ChoiceReport:
    """Every choice for this GPU and model, and the one to take for `target_sessions` x `context`."""
    m = find_measurement(result.gpu.name, result.inputs.backend, result.model.name)
    speeds = (m or {}).get("decode_batch1_tok_s", {})
    load = nearest_load(m, context)
    capacity = (load or {}).get("tok_s", {})
    out: list[Choice] = []
    for awq, policy in CHOICES:
        inputs = dataclasses.replace(result.inputs, awq=awq, quant_policy=policy, context=context, engine_overhead_bytes=None)
        r = plan(result.model, result.gpu, inputs, result.profile)
        p = r.policy(policy)
        weights = "awq" if awq else "fp16"
        fits = not r.errors and p.kv_limited_sequences >= target_sessions and r.max_batch_size >= target_sessions
        label = f"{weights}+kv{policy}"
        out.append(Choice(weights, policy, p.kv_tokens, p.max_concurrent_sequences, speeds.get(weights), capacity.get(label), fits))
    fitting = [c for c in out if c.fits]
    if fitting:
        # Fastest single stream first (measured), then the least lossy KV cache (fp16, int8, int4).
        order = {0: 0, 8: 1, 4: 2}
        pick = min(fitting, key=lambda c: (-(c.decode_batch1_tok_s or 0), order[c.quant_policy]))
        reason = f"the fastest batch-1 choice that holds {target_sessions} x {context} tokens"
        slower = [c for c in out if c.weights == "awq" and c.decode_batch1_tok_s and pick.decode_batch1_tok_s]
        if pick.weights == "fp16" and slower:
            reason += f"; AWQ would decode one stream at {slower[0].decode_batch1_tok_s / pick.decode_batch1_tok_s:.2f}x"
    else:
        pick = max(out, key=lambda c: c.sequences)
        reason = (
            f"no choice holds {target_sessions} x {context} tokens on {result.gpu.name}; {pick.label} holds the most "
            f"({pick.sequences}); add GPUs (replicas), shorten the context or take a larger GPU"
        )
    source = (m or {}).get("source")
    if source and load:
        source += f"; capacity: {load['streams']} x {load['prompt_tokens']} in / {load['output_tokens']} out"
    return ChoiceReport(target_sessions, context, source, out, pick, reason)


def render(rep: ChoiceReport) -> list[str]:
    head = ("choice", "KV tokens", f"seqs@{rep.context}", "batch-1 tok/s", "capacity tok/s", f"holds {rep.target_sessions}")
    rows = [
        (
            ("> " if c is rep.pick else "  ") + c.label,
            f"{c.kv_tokens:,}",
            f"{c.sequences:,}",
            f"{c.decode_batch1_tok_s:g}" if c.decode_batch1_tok_s else "-",
            f"{c.capacity_tok_s:,.0f}" if c.capacity_tok_s else "-",
            "yes" if c.fits else "no",
        )
        for c in rep.choices
    ]
    lines = ["", f"choices for {rep.target_sessions} sessions x {rep.context} tokens (KV from the formula, speeds measured)"]
    lines += text_table(head, rows, align="lrrrrr").splitlines()
    lines.append(f"measured on: {rep.measured_on or 'nothing matching this backend: speeds unknown'}")
    if rep.pick:
        weights = "quantization.enabled=true" if rep.pick.weights == "awq" else "quantization.enabled=false"
        lines.append(f"pick {rep.pick.label} ({weights}, serving.quant_policy={rep.pick.quant_policy}): {rep.reason}")
    return lines


def to_json(rep: ChoiceReport) -> dict[str, Any]:
    return {
        "target_sessions": rep.target_sessions,
        "context": rep.context,
        "measured_on": rep.measured_on,
        "choices": [dataclasses.asdict(c) | {"label": c.label} for c in rep.choices],
        "pick": rep.pick.label if rep.pick else None,
        "reason": rep.reason,
        "kv_names": POLICY_NAMES,
    }
