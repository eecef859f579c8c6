"""The tools-aware chat template (transformers rendering + lmdeploy's internlm parser), the AWQ
dequantizer against lmdeploy's packer, the tiny model builders, and the InternLM2 case."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import quantize
from jobs._common import MARKER_NAME
from kit import chat_template
from tests.jobs._helpers import REPO, SHAPE, settings_args
from tests.support.models import INTERNLM2_5_1_8B, TAIL_SPECIALS, ModelShape, build_internlm2

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "mul",
            "description": "Multiply two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
        },
    },
]
CONVERSATION = [
    {"role": "system", "content": "You are a calculator."},
    {"role": "user", "content": "Compute (3+5)*2"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 5}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "8"},
]


@pytest.fixture
def templated(tiny_llama: Path, tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    assert chat_template.install(model) is True
    assert chat_template.install(model) is False  # idempotent
    return model


def test_template_renders_tools_as_internlm2_5_was_trained(templated: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(templated))
    prompt = tok.apply_chat_template(CONVERSATION, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    plugin_block = "<|im_start|>system name=<|plugin|>\n" + json.dumps([t["function"] for t in TOOLS], ensure_ascii=False) + "<|im_end|>\n"
    assert prompt.startswith(
        "<s><|im_start|>system\nYou are a calculator.<|im_end|>\n" + plugin_block + "<|im_start|>user\nCompute (3+5)*2<|im_end|>\n"
    )
    assert (
        '<|im_start|>assistant\n<|action_start|><|plugin|>\n{"name": "add", "parameters": {"a": 3, "b": 5}}<|action_end|><|im_end|>\n'
        in prompt
    )
    assert prompt.endswith("<|im_start|>environment name=<|plugin|>\n8<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>tool" not in prompt
    assert chat_template.render(CONVERSATION, TOOLS) == prompt  # the helper renders what transformers renders
    # the special tokens stay single tokens, as the model was trained
    ids = tok(prompt, add_special_tokens=False).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|plugin|>")) == 3


def test_template_without_tools_renders_like_the_original(tiny_llama: Path, templated: Path) -> None:
    from transformers import AutoTokenizer

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]
    original = AutoTokenizer.from_pretrained(str(tiny_llama)).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert AutoTokenizer.from_pretrained(str(templated)).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == original


def test_model_style_answer_parses_with_lmdeploys_internlm_tool_parser() -> None:
    from lmdeploy.serve.openai.protocol import ChatCompletionRequest
    from lmdeploy.serve.parsers.response_parser import BaseResponseParser

    BaseResponseParser.set_parsers(tool_parser_name="internlm")
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "Compute (3+5)*2"}], tools=TOOLS)
    answer = "I will add first." + chat_template.model_style_tool_call("add", {"a": 3, "b": 5})
    content, calls, _ = BaseResponseParser(request).parse_complete(answer)
    assert content == "I will add first."
    assert calls is not None and len(calls) == 1
    assert calls[0].function.name == "add" and json.loads(calls[0].function.arguments) == {"a": 3, "b": 5}


def test_template_only_cli(templated: Path, tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "fp16"
    shutil.copytree(tiny_llama, model)
    assert quantize.main(["--template-only", "--model-path", str(model)]) == 0
    assert "installed" in capsys.readouterr().out and chat_template.installed(model)
    assert quantize.main(["--template-only", "--model-path", str(model)]) == 0
    assert "already installed" in capsys.readouterr().out
    # the fc profile (quantization off) installs the template into the served fp16 model instead of quantizing
    root = tmp_path / "store"
    shutil.copytree(tiny_llama, root / "tiny")
    assert quantize.main([*settings_args(root), "--profile", "fc"]) == 0
    assert chat_template.installed(root / "tiny") and not (root / "tiny-w4a16-4bit").exists()


def test_dequantize_matches_lmdeploys_packing() -> None:
    import torch
    from lmdeploy.lite.quantization import WeightQuantizer
    from lmdeploy.lite.quantization.modules import WeightOnlyQLinear

    from jobs._awq import dequantize

    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 64, bias=False)
    quantizer = WeightQuantizer(4, False, "per_group", 128)
    packed = WeightOnlyQLinear.from_linear(linear, quantizer)
    expected = quantizer.quant(linear.weight, real=False)  # lmdeploy's own fake-quantized weight
    got = dequantize(packed.qweight, packed.qzeros, packed.scales)
    assert got.shape == linear.weight.shape
    assert torch.allclose(got, expected.float(), atol=1e-3)
    assert not torch.allclose(got, linear.weight, atol=1e-4)  # it is quantized, not the original


def test_tokenizer_covers_the_vocab_and_any_text(tiny_llama: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    assert len(tok) == SHAPE.vocab
    text = "Grüße, 世界! <tab>\t\n🙂"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text
    assert [tok.convert_tokens_to_ids(t) for t in TAIL_SPECIALS] == list(range(SHAPE.vocab - len(TAIL_SPECIALS), SHAPE.vocab))
    assert tok.convert_ids_to_tokens(SHAPE.vocab - 1) == "<|im_start|>" and tok.bos_token_id == 1 and tok.eos_token_id == 2


def test_shapes() -> None:
    assert (INTERNLM2_5_1_8B.hidden, INTERNLM2_5_1_8B.intermediate, INTERNLM2_5_1_8B.layers) == (2048, 8192, 24)
    assert (INTERNLM2_5_1_8B.heads, INTERNLM2_5_1_8B.kv_heads, INTERNLM2_5_1_8B.vocab) == (16, 8, 92544)
    with pytest.raises(ValueError):
        ModelShape(vocab=100)


@pytest.mark.slow
def test_internlm2_architecture_end_to_end(tmp_path: Path) -> None:
    """InternLM2 (remote code vendored from xtuner 0.2.0) through quantize and verify, each in a fresh process."""
    root = tmp_path / "store"
    build_internlm2(root / "tiny", SHAPE)
    cfg = json.loads((root / "tiny" / "config.json").read_text())
    assert cfg["architectures"] == ["InternLM2ForCausalLM"] and (root / "tiny" / "modeling_internlm2.py").exists()
    args = settings_args(root)
    for job in ("jobs.quantize", "jobs.verify"):
        extra = ["--max-windows", "2", "--seqlen", "256"] if job == "jobs.verify" else []
        proc = subprocess.run([sys.executable, "-m", job, *args, *extra], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "tiny-w4a16-4bit"
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    assert (out / "modeling_internlm2.py").exists() and (out / MARKER_NAME).exists()
    assert chat_template.installed(out)
    assert "PASS" in proc.stdout
