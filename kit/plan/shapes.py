"""Model shapes: the config.json fields that decide weight and KV memory, and the bytes they imply."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kit import exitcodes
from kit.entry import KitError
from kit.settings import REPO_ROOT

MIB = 1 << 20
GIB = 1 << 30
SHAPES_DIR = REPO_ROOT / "kit" / "data" / "model_shapes"
POLICIES: tuple[int, ...] = (0, 8, 4)
POLICY_NAMES = {0: "fp16", 8: "int8", 4: "int4"}
# lmdeploy 0.18 engine default (`--cache-block-seq-len`): tokens per KV block.
BLOCK_SIZE = 64


class PlanError(KitError):
    """The plan cannot be computed from these inputs (unknown GPU, unreadable config): a usage error."""

    def __init__(self, message: str, code: int = exitcodes.USAGE) -> None:
        super().__init__(message, code)


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
