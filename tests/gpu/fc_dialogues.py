"""Training dialogues rendered the way the server renders the fc check's requests, and encoded for training.

The kit's tools-aware template, the tools as lmdeploy's request model dumps them, clients.funcall's
message shapes; `check_against_lmdeploy` asserts on a sample that lmdeploy's own chat template and
tokenizer give the same ids, and that only the assistant's tokens carry labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from clients.funcall import TOOLS, dispatch, parse_action_text
from kit.chat_template import TOOLS_TEMPLATE, model_style_tool_call
from tests.gpu.fc_problems import Problem

IM_END = "<|im_end|>"
ANSWER = "The answer is {n}."


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
