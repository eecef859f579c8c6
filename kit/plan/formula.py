"""The formula: lmdeploy's KV sizing per backend and quant policy, findings, and the recommendation.

PyTorch engine: `num_gpu_blocks = int((free - runtime) * ratio) // block_bytes` (executor/base.py).
TurboMind: `Object cache budget = free * ratio`, carved into slabs of equal blocks (turbomind.cc,
slab.h). `free` is what the GPU has left after the weights and the engine's own allocations; those
allocations are the fitted constants below (which logs fitted and which validated them:
docs/planner.md; tests/plan/test_engine_logs.py refits them from the logs).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from kit.plan.gpus import Gpu, lmdeploy_default_max_batch_size
from kit.plan.shapes import (
    BLOCK_SIZE,
    GIB,
    MIB,
    POLICIES,
    POLICY_NAMES,
    ModelShape,
    PlanError,
    kv_block_bytes,
    kv_bytes_per_token,
    weight_bytes,
)

PLAN_FORMAT = 1
# lmdeploy 0.18 engine default `--max-prefill-token-num`.
MAX_PREFILL_TOKENS = 8192
# GPU memory the engine takes before KV sizing besides the weights (CUDA context, buffers built with
# the model). PyTorch: fitted to the field-notes H200 logs (tests/plan/fixtures/engine_logs_h200_fieldnotes.json).
ENGINE_OVERHEAD_BYTES = 1400 * 10**6
# TurboMind, per weight format: fitted to the two field-notes H200 budget lines
# (tests/plan/fixtures/engine_logs_turbomind_h200_fieldnotes.json). AWQ takes ~370 MiB more than its
# smaller weights explain (TurboMind's AWQ GEMM workspace and converted layouts).
TURBOMIND_OVERHEAD_BYTES = {"fp16": int(1582.7 * MIB), "awq": int(1954.6 * MIB)}
# TurboMind's slab allocator (slab.h): the smallest power-of-two slab from 32 MiB whose blocks fill at
# least this fraction of it (logged: fp16 6 MiB blocks -> 128 MiB slabs, int8 -> 32, int4 -> 32).
TURBOMIND_MIN_SLAB = 32 * MIB
TURBOMIND_SLAB_FILL = 0.95
# Memory the planner wants left over after the KV pool, on top of lmdeploy's own runtime reserve:
# activations, CUDA graphs, NCCL and allocator fragmentation.
MIN_HEADROOM_GIB = 1.5


def default_overhead(backend: str, awq: bool) -> int:
    """The fitted non-weight memory the engine takes before sizing its KV cache."""
    if backend == "turbomind":
        return TURBOMIND_OVERHEAD_BYTES["awq" if awq else "fp16"]
    return ENGINE_OVERHEAD_BYTES


def turbomind_slab_bytes(block_bytes: int) -> int:
    """The slab size TurboMind picks for blocks of this size."""
    slab = TURBOMIND_MIN_SLAB
    while block_bytes > slab or (slab // block_bytes) * block_bytes < TURBOMIND_SLAB_FILL * slab:
        slab *= 2
    return slab


@dataclass
class Finding:
    level: Literal["error", "warning"]
    code: str
    message: str
    policy: int | None = None  # None: applies to every policy


@dataclass
class PolicyPlan:
    quant_policy: int
    kv_dtype: str
    configured: bool
    kv_bytes_per_token: float
    block_bytes: int
    num_gpu_blocks: int
    kv_tokens: int
    kv_cache_bytes: int
    max_session_len: int
    blocks_per_sequence: int
    max_concurrent_sequences: int
    kv_limited_sequences: int
    runtime_reserve_bytes: int
    max_prefill_token_num: int
    headroom_bytes: int
    budget_bytes: int = 0  # the KV byte budget: TurboMind's logged "Object cache budget", PyTorch's (free - runtime) * ratio
    slab_bytes: int = 0  # TurboMind only


@dataclass
class PlanInputs:
    backend: Literal["pytorch", "turbomind"] = "pytorch"
    cache_max_entry_count: float = 0.8
    quant_policy: int = 0
    session_len: int | None = None
    context: int | None = None
    tp: int = 1
    max_batch_size: int | None = None
    awq: bool = False
    awq_group_size: int = 128
    block_size: int = BLOCK_SIZE
    max_prefill_token_num: int = MAX_PREFILL_TOKENS
    engine_overhead_bytes: int | None = None  # None: the fitted default for the backend and weight format
    min_headroom_bytes: int = int(MIN_HEADROOM_GIB * GIB)


@dataclass
class Recommendation:
    target_sessions: int
    context: int
    quant_policy: int | None
    cache_max_entry_count: float | None
    per_policy: dict[int, float | None]
    note: str


@dataclass
class PlanResult:
    """What `plan()` returns; `to_json()` is the `--json` output (shape documented in docs/planner.md)."""

    profile: str
    model: ModelShape
    gpu: Gpu
    inputs: PlanInputs
    session_len: int
    context: int
    max_batch_size: int
    weights_bytes: int
    free_at_sizing_bytes: int
    policies: list[PolicyPlan]
    findings: list[Finding] = field(default_factory=list)
    recommendation: Recommendation | None = None

    @property
    def errors(self) -> list[Finding]:
        """Errors that stop a deploy: global ones and those of the configured quant policy."""
        return [f for f in self.findings if f.level == "error" and f.policy in (None, self.inputs.quant_policy)]

    def policy(self, quant_policy: int) -> PolicyPlan:
        return next(p for p in self.policies if p.quant_policy == quant_policy)

    def to_json(self) -> dict[str, Any]:
        m = self.model
        return {
            "format": PLAN_FORMAT,
            "profile": self.profile,
            "backend": self.inputs.backend,
            "validated_backend": True,
            "model": {
                "name": m.name,
                "source": m.source,
                "model_type": m.model_type,
                "num_layers": m.num_layers,
                "num_kv_heads": m.num_kv_heads,
                "head_dim": m.head_dim,
                "vocab_size": m.vocab_size,
                "params": m.params,
                "max_position_embeddings": m.max_position_embeddings,
                "weight_format": f"awq-g{self.inputs.awq_group_size}" if self.inputs.awq else "fp16",
            },
            "gpu": {**dataclasses.asdict(self.gpu), "tp": self.inputs.tp},
            "settings": {
                "cache_max_entry_count": self.inputs.cache_max_entry_count,
                "quant_policy": self.inputs.quant_policy,
                "session_len": self.session_len,
                "context": self.context,
                "max_batch_size": self.max_batch_size,
                "block_size": self.inputs.block_size,
                "max_prefill_token_num": self.inputs.max_prefill_token_num,
            },
            "memory": {
                "weights_bytes": self.weights_bytes,
                "engine_overhead_bytes": self.inputs.engine_overhead_bytes,
                "free_at_sizing_bytes": self.free_at_sizing_bytes,
                "min_headroom_bytes": self.inputs.min_headroom_bytes,
            },
            "policies": [dataclasses.asdict(p) for p in self.policies],
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "ok": not self.errors,
            "recommendation": self._recommendation_json(),
        }

    def _recommendation_json(self) -> dict[str, Any] | None:
        if self.recommendation is None:
            return None
        rec = dataclasses.asdict(self.recommendation)
        rec["per_policy"] = [{"quant_policy": k, "cache_max_entry_count": v} for k, v in self.recommendation.per_policy.items()]
        return rec


def _pytorch_runtime(free: int, ratio: float, block_bytes: int, vocab: int, max_prefill: int, max_batches: int) -> tuple[int, int]:
    """ExecutorBase._get_runtime_size: logits buffers reserved before the ratio; halves the prefill budget
    until at least 16 blocks fit."""
    runtime = 0
    while max_prefill > 0:
        runtime = int((max_prefill + max_batches * 2) * vocab * 2)
        if int((free - runtime) * ratio) // block_bytes >= 16:
            break
        max_prefill //= 2
    return runtime, max_prefill


def size_policy(
    shape: ModelShape, inputs: PlanInputs, free_at_sizing: int, policy: int, max_batch_size: int, context: int, ratio: float | None = None
) -> PolicyPlan:
    """One quant policy's KV pool, reproducing lmdeploy's `num_gpu_blocks`."""
    ratio = inputs.cache_max_entry_count if ratio is None else ratio
    bb = kv_block_bytes(shape, policy, inputs.block_size, inputs.tp, inputs.backend)
    slab = 0
    if inputs.backend == "pytorch":
        runtime, prefill = _pytorch_runtime(free_at_sizing, ratio, bb, shape.vocab_size, inputs.max_prefill_token_num, max_batch_size)
        budget = max(int((free_at_sizing - runtime) * ratio), 0)
        blocks = budget // bb
        usable = max(blocks - 1, 0)  # one block is reserved for dummy inputs
        max_session = max(usable - 1, 0) * inputs.block_size
    else:  # TurboMind: budget = free * ratio in slabs of equal blocks; its runtime buffers come after
        runtime, prefill = 0, inputs.max_prefill_token_num
        budget = max(int(free_at_sizing * ratio), 0)
        slab = turbomind_slab_bytes(bb)
        blocks = (budget // slab) * (slab // bb)
        usable = blocks
        max_session = blocks * inputs.block_size
    per_seq = max(math.ceil(context / inputs.block_size), 1)
    kv_limited = usable // per_seq
    return PolicyPlan(
        quant_policy=policy,
        kv_dtype=POLICY_NAMES[policy],
        configured=policy == inputs.quant_policy,
        kv_bytes_per_token=kv_bytes_per_token(shape, policy, inputs.tp),
        block_bytes=bb,
        num_gpu_blocks=blocks,
        kv_tokens=blocks * inputs.block_size,
        kv_cache_bytes=blocks * bb,
        max_session_len=max_session,
        blocks_per_sequence=per_seq,
        max_concurrent_sequences=min(kv_limited, max_batch_size),
        kv_limited_sequences=kv_limited,
        runtime_reserve_bytes=runtime,
        max_prefill_token_num=prefill,
        headroom_bytes=free_at_sizing - blocks * bb,
        budget_bytes=budget,
        slab_bytes=slab,
    )


def shape_findings(shape: ModelShape, tp: int, session_len: int | None) -> list[Finding]:
    """Checks that need no GPU: tensor parallelism against the heads, session length against the model."""
    out: list[Finding] = []
    if shape.num_kv_heads % tp:
        out.append(
            Finding(
                "error",
                "tp-kv-heads",
                f"serving.tp={tp} does not divide the model's {shape.num_kv_heads} KV heads; allowed tp: {_divisors(shape.num_kv_heads)}",
            )
        )
    elif shape.num_attention_heads % tp:
        out.append(Finding("error", "tp-heads", f"serving.tp={tp} does not divide the model's {shape.num_attention_heads} attention heads"))
    limit = int(shape.max_position_embeddings * shape.rope_scaling_factor)
    if session_len is not None and session_len > limit:
        scaled = f" ({shape.max_position_embeddings} x rope factor {shape.rope_scaling_factor:g})" if shape.rope_scaling_factor > 1 else ""
        out.append(
            Finding(
                "error",
                "session-len-model",
                f"serving.session_len={session_len} exceeds the model's context {limit}{scaled}; set it to at most {limit}",
            )
        )
    if shape.head_dim % 2:
        out.append(Finding("error", "head-dim-int4", f"head_dim {shape.head_dim} is odd: quant_policy 4 cannot pack it", policy=4))
    return out


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, min(n, 8) + 1) if n % d == 0)


def plan(
    shape: ModelShape,
    gpu: Gpu,
    inputs: PlanInputs,
    profile: str = "",
    target_sessions: int | None = None,
) -> PlanResult:
    """Predict weights, KV blocks, tokens, concurrency and headroom for quant policies 0, 8 and 4."""
    if inputs.tp < 1 or not 0 < inputs.cache_max_entry_count < 1:
        raise PlanError("tp must be >= 1 and cache_max_entry_count strictly between 0 and 1")
    if inputs.engine_overhead_bytes is None:
        inputs = dataclasses.replace(inputs, engine_overhead_bytes=default_overhead(inputs.backend, inputs.awq))
    awq_group = inputs.awq_group_size if inputs.awq else None
    weights = weight_bytes(shape, awq_group)
    findings = shape_findings(shape, inputs.tp, inputs.session_len)
    session_len = inputs.session_len or shape.max_position_embeddings
    context = inputs.context or session_len
    max_batch = inputs.max_batch_size or lmdeploy_default_max_batch_size(gpu.name)
    weights_per_gpu = math.ceil(weights / inputs.tp)
    free_at_sizing = gpu.free_bytes - int(inputs.engine_overhead_bytes or 0) - weights_per_gpu
    # Shapes that tp cannot split still get numbers (from the unsplit heads) so the table stays readable.
    sizing = inputs if shape.num_kv_heads % inputs.tp == 0 else dataclasses.replace(inputs, tp=1)
    policies = [size_policy(shape, sizing, free_at_sizing, p, max_batch, context) for p in POLICIES]

    if free_at_sizing <= 0:
        findings.append(
            Finding(
                "error",
                "weights-too-big",
                f"{_gib(weights_per_gpu)} of weights per GPU plus ~{_gib(inputs.engine_overhead_bytes)} engine overhead do not fit "
                f"{_gib(gpu.free_bytes)} free on {gpu.name}; use AWQ, more tp or a larger GPU",
            )
        )
    else:
        for p in policies:
            findings.extend(_policy_findings(p, inputs, session_len, context, gpu))

    result = PlanResult(profile, shape, gpu, inputs, session_len, context, max_batch, weights_per_gpu, free_at_sizing, policies, findings)
    if target_sessions:
        result.recommendation = recommend(result, target_sessions, context)
    return result


def _policy_findings(p: PolicyPlan, inputs: PlanInputs, session_len: int, context: int, gpu: Gpu) -> list[Finding]:
    out: list[Finding] = []
    name = f"quant_policy {p.quant_policy}"
    if p.num_gpu_blocks <= 2:
        out.append(
            Finding(
                "error",
                "no-kv-memory",
                f"{name}: no memory left for the KV cache ({p.num_gpu_blocks} blocks); raise cache_max_entry_count or use a larger GPU",
                p.quant_policy,
            )
        )
        return out
    needed = p.runtime_reserve_bytes + inputs.min_headroom_bytes
    if p.headroom_bytes < needed:
        out.append(
            Finding(
                "warning",
                "low-headroom",
                f"{name}: cache_max_entry_count={inputs.cache_max_entry_count:g} leaves {_gib(p.headroom_bytes)} outside the KV cache, "
                f"less than the {_gib(needed)} wanted for activations/CUDA graphs; lower the ratio",
                p.quant_policy,
            )
        )
    if p.max_session_len < session_len:
        out.append(
            Finding(
                "error",
                "session-does-not-fit",
                f"{name}: one {session_len}-token session needs more KV than the {p.max_session_len} tokens {gpu.name} holds at "
                f"cache_max_entry_count={inputs.cache_max_entry_count:g}; the engine would cut session_len; lower serving.session_len or raise the ratio",
                p.quant_policy,
            )
        )
    if context > session_len:
        out.append(
            Finding("warning", "context-over-session", f"--context {context} is longer than session_len {session_len}", p.quant_policy)
        )
    return out


def recommend(result: PlanResult, target_sessions: int, context: int) -> Recommendation:
    """The least lossy quant policy (fp16, then int8, then int4) that holds `target_sessions` sequences of
    `context` tokens, with the smallest cache ratio (in steps of 0.01) that keeps the headroom margin."""
    per_policy: dict[int, float | None] = {}
    inputs = result.inputs
    sizing = inputs if result.model.num_kv_heads % inputs.tp == 0 else dataclasses.replace(inputs, tp=1)
    for policy in POLICIES:
        per_policy[policy] = None
        if result.free_at_sizing_bytes <= 0:
            continue
        for step in range(1, 100):
            ratio = step / 100
            p = size_policy(result.model, sizing, result.free_at_sizing_bytes, policy, result.max_batch_size, context, ratio)
            if p.headroom_bytes < p.runtime_reserve_bytes + inputs.min_headroom_bytes:
                break
            if p.kv_limited_sequences >= target_sessions:
                per_policy[policy] = ratio
                break
    choice = next((p for p in POLICIES if per_policy[p] is not None), None)
    if choice is None:
        note = f"no quant policy holds {target_sessions} x {context} tokens on {result.gpu.name} with a safe ratio; use tp, a larger GPU or a shorter context"
    else:
        note = f"serving.quant_policy={choice}, serving.cache_max_entry_count={per_policy[choice]:g}"
        if target_sessions > result.max_batch_size:
            note += f", serving.max_batch_size>={target_sessions} (now {result.max_batch_size})"
    return Recommendation(target_sessions, context, choice, per_policy[choice] if choice is not None else None, per_policy, note)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"
