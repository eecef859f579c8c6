"""`python -m kit.plan`: predict KV-cache capacity and concurrency per quant policy before deploying.

lmdeploy sizes its KV cache as a fraction (`cache_max_entry_count`) of the GPU memory that is *free
after the weights are loaded*, so the same ratio means different capacity on different GPUs. This
module reproduces that sizing from the model's config.json and the GPU's memory (formula and its
validation: docs/planner.md) and flags settings that will not deploy.

Environment: PROFILE (settings profile), KIT_SETTINGS (settings file), KIT_PLAN_GPU (GPU name),
KIT_PLAN_GPU_MEMORY_GIB (GPU memory), KIT_PLAN_MODEL_CONFIG (config.json path).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kit import exitcodes
from kit.logs import add_verbosity, setup_logging
from kit.settings import REPO_ROOT, Settings, SettingsError, deep_merge, load_settings, parse_override

log = logging.getLogger("kit.plan")

MIB = 1 << 20
GIB = 1 << 30
SHAPES_DIR = REPO_ROOT / "kit" / "data" / "model_shapes"
POLICIES: tuple[int, ...] = (0, 8, 4)
POLICY_NAMES = {0: "fp16", 8: "int8", 4: "int4"}
PLAN_FORMAT = 1

# lmdeploy 0.18 engine defaults (cli/utils.py, messages.py): `--cache-block-seq-len`, `--max-prefill-token-num`.
BLOCK_SIZE = 64
MAX_PREFILL_TOKENS = 8192
# GPU memory taken before KV sizing besides the weights: CUDA context, torch/lmdeploy buffers built with
# the model. Fitted to the field-notes H200 run (fp16: 1.42 GB, AWQ: 1.37 GB); see docs/planner.md.
ENGINE_OVERHEAD_BYTES = 1400 * 10**6
# Memory the planner wants left over after the KV pool, on top of lmdeploy's own runtime reserve:
# activations, CUDA graphs, NCCL and allocator fragmentation.
MIN_HEADROOM_GIB = 1.5


@dataclass(frozen=True)
class GpuSpec:
    key: str
    device_name: str  # as torch.cuda.get_device_name() reports it; lmdeploy picks max_batch_size from it
    total_mib: int  # as nvidia-smi / torch.cuda.mem_get_info report it


GPUS: dict[str, GpuSpec] = {
    g.key: g
    for g in (
        GpuSpec("h200", "NVIDIA H200", 143771),
        GpuSpec("h100", "NVIDIA H100 80GB HBM3", 81559),
        GpuSpec("h100-nvl", "NVIDIA H100 NVL", 95830),
        GpuSpec("h800", "NVIDIA H800", 81559),
        GpuSpec("a100-80g", "NVIDIA A100-SXM4-80GB", 81920),
        GpuSpec("a100-40g", "NVIDIA A100-SXM4-40GB", 40960),
        GpuSpec("l40s", "NVIDIA L40S", 46068),
        GpuSpec("a6000", "NVIDIA RTX A6000", 49140),
        GpuSpec("l4", "NVIDIA L4", 23034),
        GpuSpec("a10", "NVIDIA A10", 23028),
        GpuSpec("4090", "NVIDIA GeForce RTX 4090", 24564),
        GpuSpec("3090", "NVIDIA GeForce RTX 3090", 24576),
    )
}


class PlanError(Exception):
    """The plan cannot be computed from these inputs (unknown GPU, unreadable config): a usage error."""


def lmdeploy_default_max_batch_size(device_name: str) -> int:
    """lmdeploy.utils.get_max_batch_size('cuda'): the engine's batch when `--max-batch-size` is unset."""
    name = device_name.lower()
    for key, size in (("a100", 384), ("a800", 384), ("h100", 1024), ("h800", 1024), ("l20y", 1024), ("h200", 1024)):
        if key in name:
            return size
    return 128


# ----------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelShape:
    """The config.json fields that decide weight and KV memory."""

    name: str
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    rope_scaling_factor: float = 1.0
    awq_group_size: int | None = None  # set when config.json carries an AWQ quantization_config
    source: str = ""

    @classmethod
    def from_config(cls, cfg: dict[str, Any], name: str = "", source: str = "") -> ModelShape:
        for key in ("language_config", "llm_config", "text_config"):  # VL configs nest the LLM (as lmdeploy does)
            if isinstance(cfg.get(key), dict):
                cfg = cfg[key]
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            layers = int(cfg["num_hidden_layers"])
            inter = int(cfg["intermediate_size"])
            vocab = int(cfg["vocab_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"model config {source or name!r} lacks a usable {exc} field") from None
        kv = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        max_len = min(
            (int(cfg[k]) for k in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length") if cfg.get(k)),
            default=2048,  # lmdeploy's fallback when the config names no length
        )
        rope = cfg.get("rope_scaling") or {}
        factor = float(rope.get("factor") or 1.0) if isinstance(rope, dict) else 1.0
        model_type = str(cfg.get("model_type", ""))
        bias = bool(cfg.get("attention_bias", cfg.get("bias", model_type == "qwen2")))
        qcfg = cfg.get("quantization_config") or {}
        group = None
        if isinstance(qcfg, dict) and str(qcfg.get("quant_method", "")).lower() == "awq":
            group = int(qcfg.get("group_size") or 128)
        return cls(
            name=name or model_type,
            model_type=model_type,
            num_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            num_kv_heads=kv,
            head_dim=head_dim,
            intermediate_size=inter,
            vocab_size=vocab,
            max_position_embeddings=max_len,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bias,
            rope_scaling_factor=max(factor, 1.0),
            awq_group_size=group,
            source=source,
        )

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder's linear layers: what AWQ quantizes."""
        q = self.num_attention_heads * self.head_dim
        kv = 2 * self.num_kv_heads * self.head_dim
        attn = self.hidden_size * (q + kv) + q * self.hidden_size
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attn + mlp)

    @property
    def other_params(self) -> int:
        """Embeddings, LM head, norms and biases: kept in 16 bit by AWQ."""
        emb = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        norms = (2 * self.num_layers + 1) * self.hidden_size
        bias = self.num_layers * (self.num_attention_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        return emb + norms + bias

    @property
    def params(self) -> int:
        return self.linear_params + self.other_params


def weight_bytes(shape: ModelShape, awq_group_size: int | None, w_bits: int = 4) -> int:
    """Weights on the GPU. fp16/bf16: 2 bytes a parameter. AWQ W4A16 (lmdeploy lite's layout): per linear
    weight of in×out, qweight in·out·bits/8 bytes, qzeros (in/g)·out·bits/8, scales (in/g)·out·2 (fp16)."""
    if not awq_group_size:
        return 2 * shape.params
    per_param = w_bits / 8 + (w_bits / 8 + 2) / awq_group_size
    return math.ceil(shape.linear_params * per_param) + 2 * shape.other_params


def _round_up(x: int, align: int) -> int:
    return (x + align - 1) // align * align


def kv_bytes_per_token(shape: ModelShape, policy: int, tp: int = 1) -> float:
    """KV bytes one token takes on one GPU (k and v of every layer, with the scales/zeros of int8/int4)."""
    heads = shape.num_kv_heads / tp
    if policy == 0:
        per_head = 2 * shape.head_dim  # fp16/bf16
    else:
        per_head = shape.head_dim * policy / 8 + 4  # packed values + fp16 (scale, zero)
    return shape.num_layers * 2 * heads * per_head


def kv_block_bytes(shape: ModelShape, policy: int, block_size: int = BLOCK_SIZE, tp: int = 1, backend: str = "pytorch") -> int:
    """Bytes of one KV block (block_size tokens) on one GPU.

    PyTorch engine (cache_engine/schema.py + layout.py): per layer one packed row of k, v and, for
    int8/int4, k/v scale-zero tensors `[block, heads, 2]` in the model dtype; every tensor rounded up to
    256 bytes. TurboMind (kernels/attention/block.h): the same payload without the alignment.
    """
    heads = shape.num_kv_heads // tp
    if policy == 0:
        tensors = [block_size * heads * shape.head_dim * 2] * 2
    else:
        value = block_size * heads * shape.head_dim * policy // 8
        param = block_size * heads * 2 * 2
        tensors = [value, value, param, param]
    if backend == "pytorch":
        tensors = [_round_up(t, 256) for t in tensors]
    return shape.num_layers * sum(tensors)


# -------------------------------------------------------------------------------------------------- GPU


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    used_bytes: int = 0  # taken by other processes before the engine starts
    source: str = "table"  # table | flag | nvml

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes


def gpu_from_name(name: str) -> Gpu:
    key = name.strip().lower().replace("_", "-")
    key = {"h100-80g": "h100", "h200-141g": "h200", "a100": "a100-80g", "rtx4090": "4090", "rtx3090": "3090"}.get(key, key)
    if key not in GPUS:
        raise PlanError(f"unknown GPU {name!r}; allowed: {', '.join(GPUS)} (or give --gpu-memory-gib)")
    spec = GPUS[key]
    return Gpu(spec.device_name, spec.total_mib * MIB, 0, "table")


def gpu_from_nvml(index: int = 0) -> Gpu:
    """The live GPU through nvidia-ml-py (optional dependency)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        raise PlanError(
            "reading the GPU needs nvidia-ml-py (`pip install nvidia-ml-py`); or pass --gpu NAME / --gpu-memory-gib N"
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise PlanError(
            f"no NVIDIA GPU readable here ({exc}); pass --gpu NAME or --gpu-memory-gib N, or set kubernetes.gpu_model"
        ) from None
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return Gpu(name.decode() if isinstance(name, bytes) else str(name), int(mem.total), int(mem.used), "nvml")
    finally:
        pynvml.nvmlShutdown()


# ------------------------------------------------------------------------------------------------- plan


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
    engine_overhead_bytes: int = ENGINE_OVERHEAD_BYTES
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
            "validated_backend": self.inputs.backend == "pytorch",
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
    if inputs.backend == "pytorch":
        runtime, prefill = _pytorch_runtime(free_at_sizing, ratio, bb, shape.vocab_size, inputs.max_prefill_token_num, max_batch_size)
        blocks = max(int((free_at_sizing - runtime) * ratio) // bb, 0)
        usable = max(blocks - 1, 0)  # one block is reserved for dummy inputs
        max_session = max(usable - 1, 0) * inputs.block_size
    else:  # TurboMind: BlockManager::GetBlockCount = free * ratio / block_size, runtime buffers come after
        runtime, prefill = 0, inputs.max_prefill_token_num
        blocks = max(int(free_at_sizing * ratio) // bb, 0)
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
    awq_group = inputs.awq_group_size if inputs.awq else None
    weights = weight_bytes(shape, awq_group)
    findings = shape_findings(shape, inputs.tp, inputs.session_len)
    session_len = inputs.session_len or shape.max_position_embeddings
    context = inputs.context or session_len
    max_batch = inputs.max_batch_size or lmdeploy_default_max_batch_size(gpu.name)
    weights_per_gpu = math.ceil(weights / inputs.tp)
    free_at_sizing = gpu.free_bytes - inputs.engine_overhead_bytes - weights_per_gpu
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


# --------------------------------------------------------------------------------------- engine logs

_CACHE_CONFIG = re.compile(r"CacheConfig\((.*?)\)\s*\.?\s*$", re.S | re.M)
_FIELD = re.compile(r"(\w+)=(<[^>]*>|'[^']*'|-?[\w.]+)")


@dataclass(frozen=True)
class CacheConfigLog:
    """The fields of lmdeploy's `Building CacheEngine with config: CacheConfig(...)` log line."""

    num_gpu_blocks: int
    block_size: int
    cache_max_entry_count: float
    quant_policy: int
    max_batches: int | None
    max_prefill_token_num: int | None
    fields: dict[str, Any]


def _value(raw: str) -> Any:
    if raw.startswith("<"):  # enum repr: <QuantPolicy.INT8: 8>
        m = re.search(r":\s*(-?\d+)>$", raw)
        return int(m.group(1)) if m else raw
    if raw.startswith("'"):
        return raw.strip("'")
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return {"True": True, "False": False, "None": None}.get(raw, raw)


def parse_cache_config(text: str) -> CacheConfigLog | None:
    """Parse the last `CacheConfig(... num_gpu_blocks=N ...)` in an engine log (None when absent)."""
    idx = text.rfind("CacheConfig(")
    if idx < 0:
        return None
    body = text[idx + len("CacheConfig(") :]
    depth, end = 1, len(body)
    for i, ch in enumerate(body):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            end = i
            break
    fields = {k: _value(v) for k, v in _FIELD.findall(body[:end])}
    if "num_gpu_blocks" not in fields:
        return None
    return CacheConfigLog(
        num_gpu_blocks=int(fields["num_gpu_blocks"]),
        block_size=int(fields.get("block_size", BLOCK_SIZE)),
        cache_max_entry_count=float(fields.get("cache_max_entry_count", 0.8)),
        quant_policy=int(fields.get("quant_policy", 0)),
        max_batches=fields.get("max_batches"),
        max_prefill_token_num=fields.get("max_prefill_token_num"),
        fields=fields,
    )


@dataclass(frozen=True)
class LogCheck:
    label: str
    predicted_blocks: int
    logged_blocks: int
    tolerance: float

    @property
    def relative_error(self) -> float:
        return (self.predicted_blocks - self.logged_blocks) / self.logged_blocks

    @property
    def ok(self) -> bool:
        return abs(self.relative_error) <= self.tolerance


def check_engine_logs(fixture: dict[str, Any]) -> list[LogCheck]:
    """Compare the planner with every run of an engine-log fixture (format: docs/planner.md)."""
    if isinstance(fixture.get("model_config"), dict):
        shape = ModelShape.from_config(fixture["model_config"], fixture.get("model_shape", ""), "fixture")
    else:
        name = fixture["model_shape"]
        shape = ModelShape.from_config(json.loads((SHAPES_DIR / f"{name}.json").read_text()), name, f"bundled {name}")
    g = fixture["gpu"]
    total = int(g["total_mib"]) * MIB
    free = g.get("free_mib_at_start")
    gpu = Gpu(g["name"], total, total - int(free) * MIB if free is not None else 0, "fixture")
    checks = []
    for run in fixture["runs"]:
        logged = parse_cache_config(run["log"])
        if logged is None:
            raise PlanError(f"fixture run {run.get('label')!r}: no CacheConfig(... num_gpu_blocks=N ...) in its log")
        inputs = PlanInputs(
            backend=run.get("backend", "pytorch"),
            cache_max_entry_count=float(run.get("cache_max_entry_count", logged.cache_max_entry_count)),
            quant_policy=int(run.get("quant_policy", logged.quant_policy)),
            tp=int(run.get("tp", 1)),
            max_batch_size=run.get("max_batch_size") or logged.max_batches,
            awq=run.get("weights") == "awq",
            awq_group_size=int(run.get("awq_group_size", 128)),
            block_size=logged.block_size,
            max_prefill_token_num=int(run.get("max_prefill_token_num", MAX_PREFILL_TOKENS)),
        )
        predicted = plan(shape, gpu, inputs).policy(inputs.quant_policy).num_gpu_blocks
        checks.append(LogCheck(run.get("label", ""), predicted, logged.num_gpu_blocks, float(fixture.get("tolerance", 0.05))))
    return checks


# ---------------------------------------------------------------------------------- settings → plan


def find_model_config(s: Settings, explicit: str | None = None) -> tuple[dict[str, Any], str]:
    """config.json from --model-config, the served model, the fp16 model, else the bundled shape."""
    candidates = (
        [Path(explicit)]
        if explicit
        else [Path(s.serve_path) / "config.json", Path(s.fp16_path) / "config.json", SHAPES_DIR / f"{s.model.name}.json"]
    )
    for path in candidates:
        if path.is_file():
            try:
                return json.loads(path.read_text()), str(path)
            except (OSError, json.JSONDecodeError) as exc:
                raise PlanError(f"cannot read model config {path}: {exc}") from None
    if explicit:
        raise PlanError(f"model config not found: {explicit}")
    known = ", ".join(sorted(p.stem for p in SHAPES_DIR.glob("*.json")))
    raise PlanError(
        f"no config.json for model {s.model.name!r} (looked in {s.serve_path}, {s.fp16_path}); pass --model-config FILE "
        f"or use a bundled shape: {known}"
    )


def inputs_from_settings(s: Settings, shape: ModelShape | None = None) -> PlanInputs:
    sv, q = s.serving, s.quantization
    awq = s.effective_model_format == "awq" or bool(shape and shape.awq_group_size)
    group = (shape.awq_group_size if shape and shape.awq_group_size else q.w_group_size) or 128
    return PlanInputs(
        backend=sv.backend,
        cache_max_entry_count=sv.cache_max_entry_count,
        quant_policy=sv.quant_policy,
        session_len=sv.session_len,
        tp=sv.tp,
        max_batch_size=sv.max_batch_size,
        awq=awq,
        awq_group_size=group,
    )


def plan_for_settings(
    settings: Settings,
    gpu: Gpu | str | None = None,
    context: int | None = None,
    target_sessions: int | None = None,
    model_config: str | None = None,
) -> PlanResult:
    """The plan `make plan` prints, for embedding (the report): GPU by name, a `Gpu`, or None = live NVML.
    Raises PlanError when the model config or the GPU cannot be found."""
    cfg, source = find_model_config(settings, model_config)
    shape = ModelShape.from_config(cfg, _model_name(settings, source), source)
    inputs = inputs_from_settings(settings, shape)
    if context:
        inputs = dataclasses.replace(inputs, context=context)
    resolved = gpu_from_name(gpu) if isinstance(gpu, str) else gpu or gpu_from_nvml()
    return plan(shape, resolved, inputs, settings.profile, target_sessions)


def deploy_blockers(settings: Settings, gpu: str | None = None) -> list[str]:
    """One-line reasons the deployment would fail, for `make deploy` (empty = go).

    Without a GPU (argument, else a `kubernetes.gpu_model` setting when one exists) only the GPU-free
    checks run: tp against the KV heads and session_len against the model's context.
    """
    try:
        cfg, source = find_model_config(settings)
    except PlanError as exc:
        log.info("planner skipped: %s", exc)
        return []
    shape = ModelShape.from_config(cfg, settings.model.name, source)
    inputs = inputs_from_settings(settings, shape)
    gpu = gpu or getattr(settings.kubernetes, "gpu_model", None) or None
    if not gpu:
        return [
            f.message
            for f in shape_findings(shape, inputs.tp, inputs.session_len)
            if f.level == "error" and f.policy in (None, inputs.quant_policy)
        ]
    try:
        result = plan(shape, gpu_from_name(gpu), inputs, settings.profile)
    except PlanError as exc:
        return [str(exc)]
    return [f.message for f in result.errors]


# ------------------------------------------------------------------------------------------------ CLI


def render_table(r: PlanResult) -> str:
    g, i = r.gpu, r.inputs
    lines = [
        f"model    {r.model.name} ({r.model.params / 1e9:.2f} B params, {r.model.num_layers} layers, {r.model.num_kv_heads} KV heads x {r.model.head_dim}) from {r.model.source}",
        f"gpu      {g.name}: {_gib(g.total_bytes)} total, {_gib(g.used_bytes)} used by others ({g.source}); tp={i.tp}",
        f"engine   {i.backend}{'' if i.backend == 'pytorch' else ' (not GPU-validated)'}, cache_max_entry_count={i.cache_max_entry_count:g}, "
        f"session_len={r.session_len}, context={r.context}, max_batch_size={r.max_batch_size}, block={i.block_size} tokens",
        f"memory   weights {_gib(r.weights_bytes)}/GPU ({'AWQ w4 g' + str(i.awq_group_size) if i.awq else 'fp16'}), "
        f"overhead ~{_gib(i.engine_overhead_bytes)}, free at KV sizing {_gib(r.free_at_sizing_bytes)}",
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
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines += ["  ".join(cell.rjust(w) if c else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
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


def _model_name(s: Settings, source: str) -> str:
    path = Path(source)
    if path.parent == SHAPES_DIR or path.parent.name in (Path(s.serve_path).name, Path(s.fp16_path).name):
        return s.model.name
    return path.parent.name if path.stem == "config" else path.stem


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kit.plan",
        description="Predict lmdeploy KV-cache blocks, tokens and concurrency per quant policy (0, 8, 4) before deploying.",
        epilog="Environment: PROFILE, KIT_SETTINGS, KIT_PLAN_GPU, KIT_PLAN_GPU_MEMORY_GIB, KIT_PLAN_MODEL_CONFIG. "
        "Exit codes: 0 plan ok, 1 plan has errors, 2 usage. Formula: docs/planner.md.",
    )
    p.add_argument("--profile", help="settings profile (default: $PROFILE or default)")
    p.add_argument("--settings", help="settings file (default: $KIT_SETTINGS or settings.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting, e.g. serving.quant_policy=4 (repeatable)")
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
    p.add_argument("--check-engine-logs", metavar="FIXTURE", help="compare the planner with an engine-log fixture JSON and exit")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_verbosity(p)
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
                f"{'ok  ' if c.ok else 'FAIL'} {c.label}: predicted {c.predicted_blocks:,} blocks, logged {c.logged_blocks:,} ({c.relative_error:+.2%}, limit ±{c.tolerance:.0%})"
            )
    return exitcodes.OK if all(c.ok for c in checks) else exitcodes.FAILED


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    for name in ("session_len", "context", "tp", "max_batch_size", "target_sessions"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.check_engine_logs:
        return _cmd_check_logs(args.check_engine_logs, args.json)
    try:
        overrides: dict[str, Any] = {}
        for item in args.set or []:
            overrides = deep_merge(overrides, parse_override(item))
        s = load_settings(args.profile, Path(args.settings) if args.settings else None, overrides)
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
    except (SettingsError, PlanError) as exc:
        print(f"plan: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    print(json.dumps(result.to_json(), indent=2) if args.json else render_table(result))
    return exitcodes.FAILED if result.errors else exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
