"""Load an lmdeploy AWQ (W4A16, GEMM layout) checkpoint on any device by dequantizing it.

lmdeploy's own W4 linear (`lmdeploy.lite.quantization.modules.WeightOnlyQLinear`) runs only on
CUDA kernels, and its serving engines need a GPU. For a perplexity check the simplest real way is
the inverse of lmdeploy's packing: `WeightOnlyQLinear.from_linear` stores, per output column group
of 8, nibbles in the AWQ order [0, 2, 4, 6, 1, 3, 5, 7] of `qweight` [in, out/8] and `qzeros`
[in/g, out/8] (int32), with `scales` [in/g, out]; the weight is `(q - zero) * scale`. Every
`*.qweight/qzeros/scales` triple becomes a dense `*.weight`, loaded into the model built from the
quantized config (quantization_config removed). The result computes exactly what the quantized
weights encode; only the matmul kernel differs from serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def unpack_int4(packed: Any) -> Any:
    """int32 [rows, cols/8] in AWQ order -> int32 [rows, cols] of 0..15."""
    import torch

    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF  # [..., 8]: nibble i is column AWQ_ORDER[i]
    inverse = torch.tensor([AWQ_ORDER.index(j) for j in range(8)], device=packed.device)
    return nibbles[..., inverse].reshape(packed.shape[0], -1)


def dequantize(qweight: Any, qzeros: Any, scales: Any) -> Any:
    """Dense [out, in] float weight of one packed AWQ linear."""
    import torch

    q = unpack_int4(qweight)  # [in, out]
    z = unpack_int4(qzeros)  # [in/g, out]
    group = q.shape[0] // z.shape[0]
    s = scales.to(torch.float32)
    w = (q - z.repeat_interleave(group, 0)).to(torch.float32) * s.repeat_interleave(group, 0)
    return w.t().contiguous()


def dequantized_state_dict(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        state.update(load_file(str(path)))
    for key in [k for k in state if k.endswith(".qweight")]:
        base = key[: -len(".qweight")]
        state[base + ".weight"] = dequantize(state.pop(key), state.pop(base + ".qzeros"), state.pop(base + ".scales"))
    return state


def load_dequantized(model_dir: Path, dtype: Any, device: str, trust_remote_code: bool) -> Any:
    """The AWQ checkpoint as a plain transformers model with dense weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code, dtype=dtype)
    state = dequantized_state_dict(model_dir)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("rotary_emb.inv_freq",))]
    tied = getattr(cfg, "tie_word_embeddings", False)
    if tied:
        missing = [k for k in missing if "lm_head" not in k and "output" not in k]
    if missing or unexpected:
        raise ValueError(f"AWQ checkpoint {model_dir} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        model.tie_weights()
    return model.to(device=device, dtype=dtype).eval()
