"""Tiny (or real-shape) random-weight chat models for tests and the GPU benchmark.

Every builder writes a complete Hugging Face model directory (config, safetensors weights,
tokenizer, chat template) that transformers and lmdeploy load like a downloaded model:

    build_llama(path, ModelShape(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2))
    build_internlm2(path, INTERNLM2_5_1_8B)   # the real internlm2_5-1_8b-chat shape

The tokenizer is a byte-level BPE over the 256 byte tokens (so it encodes any text, one
token per byte), with InternLM2's special tokens at InternLM2's ids relative to the end of
the vocab, padded with never-produced filler tokens so every id of the embedding is a token.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INTERNLM2_CODE = Path(__file__).resolve().parent / "internlm2"

# InternLM2.5's own template (no tools), as in the real model's tokenizer_config.json.
INTERNLM2_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Leading specials (InternLM2's ids 0..2) and trailing specials (InternLM2's last ids, in order up to vocab-1).
HEAD_SPECIALS = ["<unk>", "<s>", "</s>"]
TAIL_SPECIALS = ["<|plugin|>", "<|interpreter|>", "<|action_end|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 256
    intermediate: int = 512
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 1024
    dtype: str = "float16"
    max_positions: int = 4096

    def __post_init__(self) -> None:
        if self.vocab < 256 + len(HEAD_SPECIALS) + len(TAIL_SPECIALS):
            raise ValueError(f"vocab={self.vocab} is too small: the byte tokenizer needs at least 265 ids")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError("hidden must divide by heads and heads by kv_heads")


TINY = ModelShape()
# internlm2_5-1_8b-chat's real shape (config.json of the published model).
INTERNLM2_5_1_8B = ModelShape(
    hidden=2048, intermediate=8192, layers=24, heads=16, kv_heads=8, vocab=92544, dtype="bfloat16", max_positions=32768
)


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def build_tokenizer(out: Path, vocab: int, chat_template: str = INTERNLM2_CHAT_TEMPLATE) -> None:
    """Save a byte-level tokenizer whose vocab has exactly `vocab` ids, InternLM2 special tokens included."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = list(HEAD_SPECIALS) + _byte_alphabet()
    n_filler = vocab - len(tokens) - len(TAIL_SPECIALS)
    tokens += [f"<filler_{i}>" for i in range(n_filler)] + TAIL_SPECIALS
    ids = {tok: i for i, tok in enumerate(tokens)}
    assert len(ids) == vocab

    tok = Tokenizer(models.BPE(vocab=ids, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", ids["<s>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=TAIL_SPECIALS,
        model_max_length=1_000_000,
    )
    fast.chat_template = chat_template
    fast.save_pretrained(out)


def _config_fields(shape: ModelShape) -> dict[str, Any]:
    """The Hugging Face config fields both architectures take from a shape (ids of the byte tokenizer's specials)."""
    return {
        "vocab_size": shape.vocab,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": shape.max_positions,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": shape.dtype,
    }


def _save_model(model, out: Path, shape: ModelShape) -> None:
    import torch

    model.to(getattr(torch, shape.dtype))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    gen = {"bos_token_id": 1, "eos_token_id": [2, shape.vocab - 2], "pad_token_id": 2}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")


def build_llama(out: Path, shape: ModelShape = TINY, seed: int = 0) -> Path:
    """A random-weight LlamaForCausalLM (`hidden` a multiple of 128 for AWQ group size 128)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = LlamaConfig(**_config_fields(shape))
    model = LlamaForCausalLM(cfg)
    _save_model(model, out, shape)
    build_tokenizer(out, shape.vocab)
    return out


def build_internlm2(out: Path, shape: ModelShape = TINY, seed: int = 0) -> Path:
    """A random-weight InternLM2ForCausalLM with its remote code beside the weights (needs trust_remote_code)."""
    import importlib.util
    import sys

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("configuration_internlm2.py", "modeling_internlm2.py"):
        shutil.copyfile(INTERNLM2_CODE / name, out / name)
    # Load the vendored code as a package so its relative import works, without touching HF's module cache.
    pkg = "_kit_test_internlm2"
    if pkg not in sys.modules:
        spec = importlib.util.spec_from_file_location(pkg, INTERNLM2_CODE / "__init__.py", submodule_search_locations=[str(INTERNLM2_CODE)])
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[pkg] = module
        spec.loader.exec_module(module)
    from importlib import import_module

    config_cls = import_module(f"{pkg}.configuration_internlm2").InternLM2Config
    model_cls = import_module(f"{pkg}.modeling_internlm2").InternLM2ForCausalLM

    torch.manual_seed(seed)
    cfg = config_cls(**_config_fields(shape), bias=False, rope_theta=1_000_000, attn_implementation="eager")
    cfg.architectures = ["InternLM2ForCausalLM"]
    cfg.auto_map = {
        "AutoConfig": "configuration_internlm2.InternLM2Config",
        "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
        "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
    }
    model = model_cls(cfg)
    _save_model(model, out, shape)
    # save_pretrained writes the class's own module path into auto_map; point it at the files beside the weights.
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = cfg.auto_map
    config["architectures"] = ["InternLM2ForCausalLM"]
    config["model_type"] = "internlm2"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    build_tokenizer(out, shape.vocab)
    return out


def build_model(arch: str, out: Path, shape: ModelShape = TINY, seed: int = 0) -> Path:
    """`arch` is `llama` or `internlm2`."""
    builders = {"llama": build_llama, "internlm2": build_internlm2}
    if arch not in builders:
        raise ValueError(f"unknown arch {arch!r}; allowed: {', '.join(builders)}")
    return builders[arch](out, shape, seed)
