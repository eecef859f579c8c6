"""The function-call test model itself: tokenizer and Llama config, the training loop, a greedy check, saving.

The loop trains on the encoded dialogues (fc_dialogues) with each batch's shared tools block computed
once (shared_prefix_loss), checked against the full-sequence loss before it is used.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

from clients.funcall import ToolCallError, dispatch, parse_action_text
from kit.chat_template import TOOLS_TEMPLATE, install
from tests.gpu.fc_dialogues import IM_END, Renderer, lmdeploy_tools

log = logging.getLogger("tests.gpu.train_fc")  # the CLI's logger: train_fc.main gives it a handler

VOCAB = 384  # 3 + 256 bytes + 6 InternLM2 specials, padded to a multiple of 128
SHAPE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 4}


def build_dirs(out: Path) -> Any:
    """Tokenizer (byte-level, InternLM2 specials, the kit's template via kit.chat_template.install)."""
    from transformers import AutoTokenizer

    from tests.support.models import build_tokenizer

    build_tokenizer(out, VOCAB)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.eos_token = IM_END  # lmdeploy's HF template stops on the tokenizer's eos word
    tokenizer.save_pretrained(out)
    install(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.eos_token == IM_END and tokenizer.chat_template == TOOLS_TEMPLATE, "the saved tokenizer lost its eos or template"
    return tokenizer


def new_config(tokenizer: Any, shape: dict[str, int]) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        **shape,
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )


def new_model(cfg: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def batches(data: list[tuple[list[int], list[int]]], size: int, pad: int, rng: random.Random, device: str) -> Any:
    import torch

    while True:
        batch = rng.sample(data, size)
        n = max(len(ids) for ids, _ in batch)
        ids = torch.full((size, n), pad, dtype=torch.long)
        labels = torch.full((size, n), -100, dtype=torch.long)
        for i, (x, y) in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
        yield ids.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def common_prefix(data: list[tuple[list[int], list[int]]]) -> int:
    """Tokens every dialogue starts with (bos, the tools block, the user turn's header); none of them is trained on."""
    first = data[0][0]
    n = min(len(ids) for ids, _ in data) - 1
    for ids, _ in data:
        while ids[:n] != first[:n]:
            n -= 1
    assert all(y == -100 for _, labels in data for y in labels[:n]), "a shared prefix token carries a label"
    return n


def shared_prefix_loss(model: Any, ids: Any, labels: Any, prefix: int) -> Any:
    """The batch's loss with the common prefix computed once and its KV cache repeated over the batch.

    The same numbers as model(input_ids=ids, labels=labels).loss (causal attention, identical prefix),
    at about half the cost: the tools block is over half of every dialogue.
    """
    cache = model(input_ids=ids[:1, :prefix], use_cache=True).past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    return model(input_ids=ids[:, prefix:], labels=labels[:, prefix:], past_key_values=cache).loss


def pick_prefix(model: Any, ids: Any, labels: Any, prefix: int) -> int:
    """`prefix` when the shared-prefix loss equals the full one on this batch (fp32), else 0 (full sequences)."""
    import torch

    if prefix < 1:
        return 0
    try:
        with torch.no_grad():
            full = model(input_ids=ids, labels=labels).loss.item()
            shared = shared_prefix_loss(model, ids, labels, prefix).item()
    except Exception as exc:  # another transformers' cache API: train on full sequences
        log.warning("shared-prefix training unavailable (%s: %s); full sequences", type(exc).__name__, exc)
        return 0
    if abs(full - shared) > 1e-3 * max(1.0, full):
        log.warning("shared-prefix loss %.6f != full loss %.6f; full sequences", shared, full)
        return 0
    log.info("shared prefix of %d tokens computed once per batch (loss %.6f both ways)", prefix, full)
    return prefix


def train(model: Any, data: list[tuple[list[int], list[int]]], args: argparse.Namespace, pad: int) -> dict[str, Any]:
    import torch

    device = args.device
    model.to(device).train()
    fused = {"fused": True} if device.startswith("cuda") else {}
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.01, **fused)
    warmup = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, args.steps - warmup)))))

    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    losses: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    stream = batches(data, args.batch, pad, random.Random(args.seed + 1), device)
    probe = next(batches(data, min(8, args.batch), pad, random.Random(args.seed + 2), device))
    prefix = pick_prefix(model, *probe, common_prefix(data)) if args.share_prefix else 0
    step = 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids, labels = next(stream)
        with amp:  # right padding under a causal mask: no real token sees a pad, pads carry no label
            loss = shared_prefix_loss(model, ids, labels, prefix) if prefix else model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            losses.append((step, round(loss.item(), 4)))
            log.info("step %d loss %.4f (%.0f s)", step, loss.item(), time.perf_counter() - t0)
            if args.target_loss and len(losses) >= 3 and max(x for _, x in losses[-3:]) < args.target_loss:
                log.info("stopping at step %d: the last three losses are below --target-loss %s", step, args.target_loss)
                break
        if args.seconds and time.perf_counter() - t0 > args.seconds:
            log.info("stopping at step %d: --seconds %s reached", step, args.seconds)
            break
    return {"steps": step + 1, "train_seconds": round(time.perf_counter() - t0, 1), "shared_prefix": prefix, "losses": losses}


def greedy_round_trip(model: Any, tokenizer: Any, question: str, device: str, max_new: int = 64) -> dict[str, Any]:
    """The check's loop with transformers instead of a server: generate, dispatch, render, repeat."""
    import torch

    render, tools = Renderer(tokenizer.bos_token), lmdeploy_tools()
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    calls = []
    for i in range(4):
        ids = tokenizer(render(messages, tools), add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=im_end, pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False).removesuffix(IM_END)
        try:
            found = parse_action_text(text)
            if not found:
                return {"question": question, "calls": calls, "answer": text}
            name = found[0]["name"]
            args, result = dispatch(name, found[0]["arguments"])
        except ToolCallError as exc:
            return {"question": question, "calls": calls, "answer": None, "error": str(exc)}
        calls.append([name, args, result])
        call = {"id": f"call-{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": json.dumps(result), "name": name, "tool_call_id": f"call-{i}"},
        ]
    return {"question": question, "calls": calls, "answer": None}


def save(model: Any, tokenizer: Any, out: Path) -> None:
    import torch

    model.to(torch.float16).eval()
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    gen = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": [tokenizer.convert_tokens_to_ids("</s>"), im_end],
        "pad_token_id": tokenizer.pad_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
