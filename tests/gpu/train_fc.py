"""Train the function-call test model: a tiny Llama that calls add/mul through the kit's template.

    python -m tests.gpu.train_fc --out DIR [--steps 1500] [--seconds 110] [--seed 0]

This is a TEST MODEL trained for one job, the `make fc-check` round trip: a user asks for integer
arithmetic with + and *, the model answers with InternLM2.5 action blocks
(`<|action_start|><|plugin|>\\n{"name": "add", "parameters": {"a": 3, "b": 5}}<|action_end|>`),
reads each tool result from the `environment` turn, and ends with "The answer is N.". It knows
nothing else and is not a general assistant.

Every training dialogue is rendered the way the server renders the check's requests: the kit's
tools-aware template (kit/chat_template.py, installed by kit.chat_template.install), the tools as
lmdeploy's request model dumps them, the client's message shapes (clients/funcall.py), and the
ids lmdeploy's tokenizer feeds the engine; `check_against_lmdeploy` asserts that on a sample.
Only the assistant's tokens are trained on. HELD_OUT questions (the check's own "(3+5)*2" among
them) never occur in the data, asserted by their tool-call signature (operands in any order).

Writes a Hugging Face Llama directory (fp16 safetensors, byte-level tokenizer with InternLM2's
special tokens, generation_config stopping at `<|im_end|>`) that transformers and lmdeploy load,
plus `train-fc.json` (seed, steps, losses, held-out results of a greedy transformers run).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.funcall import TOOLS, ToolCallError, dispatch, parse_action_text
from kit.chat_template import TOOLS_TEMPLATE, install, model_style_tool_call

log = logging.getLogger("tests.gpu.train_fc")

IM_END = "<|im_end|>"
VOCAB = 384  # 3 + 256 bytes + 6 InternLM2 specials, padded to a multiple of 128
SHAPE = {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 4}
ANSWER = "The answer is {n}."

# (question, expected): the check's own question and four more, none of them in the training data.
HELD_OUT: list[tuple[str, int]] = [
    ("Compute (3+5)*2", 16),
    ("Compute (4+9)*3", 39),
    ("What is 6 * 7 + 5?", 47),
    ("Calculate 15 + 27 + 8", 50),
    ("What is 7 times 12?", 84),
]

# Wordings per structure; {a} {b} {c} are the operands in the order the calls use them.
WORDINGS: dict[str, list[str]] = {
    "add": [
        "Compute {a}+{b}",
        "What is {a} + {b}?",
        "Calculate {a} plus {b}",
        "Add {a} and {b}.",
        "{a}+{b} = ?",
        "What is the sum of {a} and {b}?",
        "Please compute {a} + {b}.",
        "what's {a} plus {b}",
    ],
    "mul": [
        "Compute {a}*{b}",
        "What is {a} * {b}?",
        "Calculate {a} times {b}",
        "Multiply {a} by {b}.",
        "{a}*{b} = ?",
        "What is the product of {a} and {b}?",
        "What is {a} times {b}?",
        "Please compute {a} * {b}.",
    ],
    "add_mul": [
        "Compute ({a}+{b})*{c}",
        "What is ({a} + {b}) * {c}?",
        "Calculate ({a}+{b})*{c}",
        "({a}+{b})*{c} = ?",
        "Add {a} and {b}, then multiply by {c}.",
        "Multiply the sum of {a} and {b} by {c}.",
        "compute {a} plus {b}, times {c}",
        "Compute {c}*({a}+{b})",
        "What is {c} * ({a} + {b})?",
    ],
    "mul_add": [
        "Compute {a}*{b}+{c}",
        "What is {a} * {b} + {c}?",
        "Calculate {a}*{b} + {c}",
        "{a}*{b}+{c} = ?",
        "Multiply {a} by {b}, then add {c}.",
        "compute {a} times {b} plus {c}",
        "Compute {c}+{a}*{b}",
        "What is {c} + {a} * {b}?",
    ],
    "add_add": [
        "Compute {a}+{b}+{c}",
        "What is {a} + {b} + {c}?",
        "Calculate {a} + {b} + {c}",
        "Add {a}, {b} and {c}.",
        "{a}+{b}+{c} = ?",
        "what's {a} plus {b} plus {c}",
    ],
    "mul_mul": [
        "Compute {a}*{b}*{c}",
        "What is {a} * {b} * {c}?",
        "Calculate {a} * {b} * {c}",
        "Multiply {a}, {b} and {c}.",
        "{a}*{b}*{c} = ?",
        "what's {a} times {b} times {c}",
    ],
}
STRUCTURES = {"add": ["add"], "mul": ["mul"], "add_mul": ["add", "mul"], "mul_add": ["mul", "add"],
              "add_add": ["add", "add"], "mul_mul": ["mul", "mul"]}  # fmt: skip


@dataclass(frozen=True)
class Problem:
    question: str
    calls: tuple[tuple[str, int, int], ...]  # (tool, a, b); b of a later call may be the earlier result
    answer: int


def signature(calls: tuple[tuple[str, int, int], ...]) -> tuple[tuple[str, frozenset[int]], ...]:
    """What a problem computes, operands in any order: the held-out test for training data."""
    return tuple((name, frozenset((a, b))) for name, a, b in calls)


def solve(structure: str, a: int, b: int, c: int | None) -> tuple[tuple[tuple[str, int, int], ...], int]:
    first, *rest = STRUCTURES[structure]
    calls = [(first, a, b)]
    value = dispatch(first, {"a": a, "b": b})[1]
    for name in rest:
        calls.append((name, value, c))
        value = dispatch(name, {"a": value, "b": c})[1]
    return tuple(calls), value


def held_out_signatures() -> set[tuple[tuple[str, frozenset[int]], ...]]:
    """The held-out questions parsed back into their structures (fails loudly if a wording changes)."""
    sigs = set()
    for question, expected in HELD_OUT:
        found = [
            (s, m)
            for s, forms in WORDINGS.items()
            for form in forms
            if (
                m := re.fullmatch(
                    re.escape(form).replace(r"\{a\}", r"(?P<a>\d+)").replace(r"\{b\}", r"(?P<b>\d+)").replace(r"\{c\}", r"(?P<c>\d+)"),
                    question,
                )
            )
        ]
        assert found, f"held-out question {question!r} matches no training wording"
        s, m = found[0]
        calls, value = solve(s, int(m["a"]), int(m["b"]), int(m["c"]) if m.groupdict().get("c") else None)
        assert value == expected, f"{question!r} computes {value}, not {expected}"
        sigs.add(signature(calls))
    return sigs


def make_problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    banned = held_out_signatures()
    out: list[Problem] = []
    while len(out) < n:
        structure = rng.choice(list(STRUCTURES))
        hi = rng.choice([9, 20, 50, 99])
        a, b, c = (rng.randint(0, hi) for _ in range(3))
        calls, value = solve(structure, a, b, c if len(STRUCTURES[structure]) > 1 else None)
        if signature(calls) in banned:
            continue
        question = rng.choice(WORDINGS[structure]).format(a=a, b=b, c=c)
        out.append(Problem(question, calls, value))
    return out


# ---------------------------------------------------------------------------------------------- render


def lmdeploy_tools() -> list[dict[str, Any]]:
    """clients.funcall's TOOLS as the api_server hands them to the chat template (its request model's dump)."""
    from lmdeploy.serve.openai.protocol import ChatCompletionRequest

    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], tools=TOOLS)
    return [t.function.model_dump() for t in req.tools]


class Renderer:
    """The kit template compiled once (kit.chat_template.render's Jinja semantics, which HF uses)."""

    def __init__(self, bos: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        self.template = env.from_string(TOOLS_TEMPLATE)
        self.bos = bos

    def __call__(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str:
        return self.template.render(messages=messages, tools=tools, add_generation_prompt=True, bos_token=self.bos)


def dialogue(problem: Problem) -> list[tuple[list[dict[str, Any]], str]]:
    """[(messages the client sends, completion the model should produce)] for each request of the loop."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": problem.question}]
    turns = []
    for i, (name, a, b) in enumerate(problem.calls):
        args = {"a": a, "b": b}
        turns.append((list(messages), model_style_tool_call(name, args) + IM_END))
        call_id = f"call-{i}"
        # What clients.funcall sends back: the server's tool_calls, then the result as a `tool` message.
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
        messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        result = dispatch(name, args)[1]
        messages.append({"role": "tool", "content": json.dumps(result), "name": name, "tool_call_id": call_id})
    turns.append((messages, ANSWER.format(n=problem.answer) + IM_END))
    return turns


def render_text(problem: Problem, render: Renderer, tools: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The whole dialogue as one string and the character spans of the assistant's completions."""
    text, spans = "", []
    for messages, completion in dialogue(problem):
        prompt = render(messages, tools)
        assert prompt.startswith(text), "the template re-renders an earlier turn differently than the model produced it"
        text = prompt + completion
        spans.append((len(prompt), len(text)))
    return text, spans


def encode(texts: list[str], spans: list[list[tuple[int, int]]], tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(ids, labels) per dialogue: ids as lmdeploy encodes a prompt, labels -100 outside the spans.

    The template writes the bos itself; lmdeploy's encode(add_bos=True) adds a second and drops it again.
    """
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for ids, offsets, sp in zip(enc["input_ids"], enc["offset_mapping"], spans, strict=True):
        labels = [t if any(s <= start < e for s, e in sp) and end > start else -100 for t, (start, end) in zip(ids, offsets, strict=True)]
        out.append((list(ids), labels))
    return out


def _encode_chunk(job: tuple[str, list[Problem], list[dict[str, Any]]]) -> list[tuple[list[int], list[int]]]:
    from transformers import AutoTokenizer

    model_dir, problems, tools = job
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    render = Renderer(tokenizer.bos_token)
    rendered = [render_text(pr, render, tools) for pr in problems]
    return encode([t for t, _ in rendered], [s for _, s in rendered], tokenizer)


def build_data(model_dir: Path, problems: list[Problem], tools: list[dict[str, Any]], workers: int) -> list[tuple[list[int], list[int]]]:
    """Render and encode every dialogue, in order, over `workers` processes."""
    import multiprocessing as mp

    step = max(1, math.ceil(len(problems) / max(1, workers)))
    jobs = [(str(model_dir), problems[i : i + step], tools) for i in range(0, len(problems), step)]
    if workers <= 1:
        chunks = [_encode_chunk(j) for j in jobs]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            chunks = pool.map(_encode_chunk, jobs)
    return [x for chunk in chunks for x in chunk]


def check_against_lmdeploy(model_dir: Path, problems: list[Problem], data: list[tuple[list[int], list[int]]]) -> None:
    """Each request's prompt through lmdeploy's own chat template and tokenizer is a prefix of the training ids."""
    from lmdeploy.model import HFChatTemplate, get_chat_template
    from lmdeploy.serve.processors.multimodal import MultimodalProcessor
    from lmdeploy.tokenizer import Tokenizer

    template = get_chat_template(str(model_dir))
    assert isinstance(template, HFChatTemplate), f"lmdeploy picked {type(template).__name__} for {model_dir}, not the model's own"
    tok = Tokenizer(str(model_dir))
    tools = lmdeploy_tools()
    for problem, (ids, labels) in zip(problems, data, strict=True):
        for messages, completion in dialogue(problem):
            prompt = template.messages2prompt([MultimodalProcessor.merge_message_content(m) for m in messages], tools=tools)
            want = tok.encode(prompt, add_bos=True)
            assert ids[: len(want)] == want, f"training ids differ from lmdeploy's prompt for {problem.question!r}"
            n = len(tok.encode(completion, add_bos=False, add_special_tokens=False))
            assert all(x != -100 for x in labels[len(want) : len(want) + n]), "a completion token is masked"
            assert labels[len(want) - 1] == -100, "a prompt token is trained on"
    for problem in problems:  # and the completions are what the check's parser reads back
        first = dialogue(problem)[0][1]
        assert [(c["name"], c["arguments"]) for c in parse_action_text(first)] == [
            (problem.calls[0][0], dict(zip("ab", problem.calls[0][1:], strict=True)))
        ]


# ---------------------------------------------------------------------------------------------- model


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.train_fc", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and batches (default %(default)s)")
    p.add_argument("--dialogues", type=int, default=40000, help="distinct training dialogues (default %(default)s)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default %(default)s)")
    p.add_argument("--seconds", type=float, default=0, help="stop training after this many seconds (0: no limit)")
    p.add_argument("--target-loss", type=float, default=0.003, help="stop once three logged losses are below this (0: never)")
    p.add_argument("--no-share-prefix", dest="share_prefix", action="store_false", help="run every dialogue's common prefix per sequence")
    p.add_argument("--batch", type=int, default=64, help="dialogues per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate (default %(default)s)")
    p.add_argument("--check", type=int, default=50, help="dialogues checked against lmdeploy's template + tokenizer (default %(default)s)")
    p.add_argument("--shape", type=json.loads, default=SHAPE, help="Llama shape as JSON (default %(default)s)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="processes that render the data (default %(default)s)")
    p.add_argument("--device", default="cuda", help="torch device (default %(default)s)")
    args = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)  # our own: lmdeploy raises the root handlers' level
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if args.steps < 1 or args.batch < 1 or args.dialogues < args.batch:
        log.error("--steps and --batch must be >= 1 and --dialogues >= --batch")
        return 2

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the data workers fork
    import torch

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tokenizer = build_dirs(args.out)
    cfg = new_config(tokenizer, args.shape)
    cfg.save_pretrained(args.out)  # lmdeploy reads the architecture when it picks the chat template
    problems = make_problems(args.dialogues, args.seed)
    banned = held_out_signatures()
    assert not any(signature(pr.calls) in banned for pr in problems), "a held-out computation is in the training data"
    assert not {q for q, _ in HELD_OUT} & {pr.question for pr in problems}, "a held-out question is in the training data"
    data = build_data(args.out, problems, lmdeploy_tools(), args.workers)
    check_against_lmdeploy(args.out, problems[: args.check], data[: args.check])
    lengths = sorted(len(ids) for ids, _ in data)
    log.info(
        "%d dialogues, %d-%d tokens (median %d), built and checked in %.1f s",
        len(data),
        lengths[0],
        lengths[-1],
        lengths[len(lengths) // 2],
        time.perf_counter() - t0,
    )

    model = new_model(cfg, args.seed)
    params = sum(x.numel() for x in model.parameters())
    log.info("Llama %s, %.1f M parameters, device %s", args.shape, params / 1e6, args.device)
    info: dict[str, Any] = {
        "seed": args.seed,
        "dialogues": len(data),
        "shape": args.shape,
        "vocab": VOCAB,
        "params": params,
        "batch": args.batch,
        "lr": args.lr,
    }
    info.update(train(model, data, args, tokenizer.pad_token_id))
    model.eval()
    info["held_out"] = []
    for question, expected in HELD_OUT:
        try:
            r = {**greedy_round_trip(model, tokenizer, question, args.device), "expected": expected}
        except Exception as exc:  # a diagnostic only: the served check is the verdict
            r = {"question": question, "expected": expected, "error": f"{type(exc).__name__}: {exc}"}
        info["held_out"].append(r)
        log.info("held out (transformers, greedy): %s", json.dumps(r))
    save(model, tokenizer, args.out)
    info["device_name"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    info["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__}
    info["total_seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "train-fc.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: info[k] for k in ("params", "steps", "train_seconds", "total_seconds")} | {"last_loss": info["losses"][-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
