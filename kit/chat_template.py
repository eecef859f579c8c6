"""A tools-aware chat template for InternLM2.5, and helpers to install and use it.

Since lmdeploy 0.10 the api_server renders prompts with the model's own chat template
(tokenizer_config.json), and InternLM2.5's knows nothing of tools: a request with `tools`
silently loses them. This template renders them the way InternLM2.5 was trained:

    <|im_start|>system name=<|plugin|>
    [{"name": "add", "description": ..., "parameters": {...}}]<|im_end|>

the model answers `<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}<|action_end|>`
(what lmdeploy's `internlm` tool parser reads), and tool results go back as role
`environment` with name `<|plugin|>`. Without tools it renders exactly like the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kit.atomic import write_text_atomic

TOOL_OPEN = "<|action_start|><|plugin|>"
TOOL_CLOSE = "<|action_end|>"

# Jinja: `tools` entries may be OpenAI tools ({"type": "function", "function": {...}}) or bare
# function dicts (what lmdeploy passes); tool-call arguments may be a JSON string or a mapping.
TOOLS_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content is iterable -%}{%- for part in content -%}{%- if part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{{ bos_token }}"
    "{%- set ns = namespace(start=0) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ '<|im_start|>system\n' + text(messages[0]['content']) + '<|im_end|>\n' }}"
    "{%- set ns.start = 1 -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{{ '<|im_start|>system name=<|plugin|>\n[' }}"
    "{%- for tool in tools -%}"
    "{%- if tool.function is defined -%}{%- set fn = tool.function -%}{%- else -%}{%- set fn = tool -%}{%- endif -%}"
    "{{ fn | tojson }}{{ ', ' if not loop.last else '' }}"
    "{%- endfor -%}"
    "{{ ']<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- for message in messages[ns.start:] -%}"
    "{%- if message['role'] in ['tool', 'environment', 'function'] -%}"
    "{{ '<|im_start|>environment name=<|plugin|>\n' + text(message['content']) + '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{ '<|im_start|>assistant\n' + (text(message['content']) if message['content'] else '') }}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- if call.function is defined -%}{%- set fn = call.function -%}{%- else -%}{%- set fn = call -%}{%- endif -%}"
    "{%- set args = fn.arguments if fn.arguments is defined else fn.parameters -%}"
    "{{ '<|action_start|><|plugin|>\n{\"name\": ' + (fn.name | tojson) + ', \"parameters\": ' }}"
    "{%- if args is string -%}{{ args }}{%- else -%}{{ args | tojson }}{%- endif -%}"
    "{{ '}<|action_end|>' }}"
    "{%- endfor -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + text(message['content']) + '<|im_end|>\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def model_style_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """What InternLM2.5 emits for one tool call (the text lmdeploy's `internlm` parser reads)."""
    return f"{TOOL_OPEN}\n{json.dumps({'name': name, 'parameters': arguments}, ensure_ascii=False)}{TOOL_CLOSE}"


def render(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None, add_generation_prompt: bool = True, bos_token: str = "<s>"
) -> str:
    """Render with the same Jinja semantics transformers uses (sandboxed, `tojson` without ASCII escaping)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(TOOLS_TEMPLATE).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, bos_token=bos_token
    )


def installed(model_dir: Path) -> bool:
    """True when the model's tokenizer config already carries this template."""
    try:
        cfg = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return False
    jinja = Path(model_dir) / "chat_template.jinja"
    return cfg.get("chat_template") == TOOLS_TEMPLATE and (not jinja.exists() or jinja.read_text() == TOOLS_TEMPLATE)


def install(model_dir: Path) -> bool:
    """Write the template into tokenizer_config.json (and chat_template.jinja when present); False if already there.

    transformers >= 4.44 prefers a separate chat_template.jinja over the config's entry, so both are set.
    Each file is replaced atomically.
    """
    model_dir = Path(model_dir)
    if installed(model_dir):
        return False
    path = model_dir / "tokenizer_config.json"
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a model directory with a tokenizer") from None
    cfg["chat_template"] = TOOLS_TEMPLATE
    write_text_atomic(path, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    jinja = model_dir / "chat_template.jinja"
    if jinja.exists():
        write_text_atomic(jinja, TOOLS_TEMPLATE)
    return True
