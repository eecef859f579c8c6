"""`python -m clients.funcall`: the add/mul function-call check against the served model.

Declares the tools `add` and `mul` as JSON schemas, asks "Compute (3+5)*2", executes every tool
call the model makes through a name -> function registry (arguments validated against the schema,
nothing is ever eval'ed), sends the results back as tool messages and repeats until the model
answers. Tool calls come from the server's `tool_calls` (`--tool-call-parser internlm`) or, as a
fallback, from InternLM action text `<|action_start|><|plugin|>{json}<|action_end|>` in the reply.

Prints a verdict (`--json` for the full record); exit 0 when the model used the tools and
answered 16, 1 otherwise (wrong answer, no tool call, invalid tool call, step limit, server error).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clients._common import CONNECTION_ENV_HELP, Connection, add_connection_args, connect, run_client
from kit import exitcodes
from kit.logs import add_verbosity, setup_logging

log = logging.getLogger("clients.funcall")

QUESTION = "Compute (3+5)*2"
EXPECTED = 16


def _pair() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"a": {"type": "number", "description": "first operand"}, "b": {"type": "number", "description": "second operand"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    }


TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "add", "description": "Add two numbers: a + b.", "parameters": _pair()}},
    {"type": "function", "function": {"name": "mul", "description": "Multiply two numbers: a * b.", "parameters": _pair()}},
]
REGISTRY: dict[str, Callable[..., float]] = {"add": lambda a, b: a + b, "mul": lambda a, b: a * b}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

ACTION_RE = re.compile(r"<\|action_start\|>\s*<\|plugin\|>(.*?)(?:<\|action_end\|>|$)", re.DOTALL)
ANSWER_RE = re.compile(r"(?<![\d.])16(?:\.0+)?(?!\.?\d)")


class ToolCallError(Exception):
    """A tool call that cannot be executed: unknown tool, bad JSON, bad arguments."""


def validate_arguments(name: str, arguments: Any) -> dict[str, float]:
    """Check arguments against the tool's JSON schema (object of numbers, required, no extras)."""
    if name not in REGISTRY:
        raise ToolCallError(f"unknown tool {name!r}; allowed: {', '.join(REGISTRY)}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise ToolCallError(f"arguments of {name} are not valid JSON: {arguments[:80]!r}") from None
    if not isinstance(arguments, dict):
        raise ToolCallError(f"arguments of {name} must be a JSON object, got {type(arguments).__name__}")
    schema = SCHEMAS[name]
    missing = [k for k in schema["required"] if k not in arguments]
    if missing:
        raise ToolCallError(f"{name}: missing argument(s) {', '.join(missing)}")
    extra = sorted(set(arguments) - set(schema["properties"]))
    if extra and not schema.get("additionalProperties", True):
        raise ToolCallError(f"{name}: unexpected argument(s) {', '.join(extra)}")
    for key, value in arguments.items():
        if schema["properties"][key]["type"] == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ToolCallError(f"{name}: argument {key!r} must be a number, got {value!r}")
    return arguments


def dispatch(name: str, arguments: Any) -> tuple[dict[str, float], float]:
    args = validate_arguments(name, arguments)
    return args, _num(REGISTRY[name](**args))


def _num(x: float) -> float:
    return int(x) if isinstance(x, float) and x.is_integer() else x


def parse_action_text(text: str | None) -> list[dict[str, Any]]:
    """InternLM action blocks -> [{"id", "name", "arguments"}]; raises ToolCallError on bad JSON."""
    calls = []
    for i, m in enumerate(ACTION_RE.finditer(text or "")):
        payload = m.group(1).strip()
        try:
            data, _ = json.JSONDecoder().raw_decode(payload)
        except ValueError:
            raise ToolCallError(f"action text is not valid JSON: {payload[:80]!r}") from None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ToolCallError(f"action text has no tool name: {payload[:80]!r}")
        calls.append({"id": f"action-{i}", "name": data["name"], "arguments": data.get("parameters", data.get("arguments", {}))})
    return calls


def extract_calls(message: Any) -> tuple[list[dict[str, Any]], str]:
    if message.tool_calls:
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls]
        return calls, "tool_calls"
    return parse_action_text(message.content), "action_text"


def run_check(client: Any, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """The tool loop; returns the verdict record."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
    trace: list[dict[str, Any]] = []
    verdict: dict[str, Any] = {
        "check": "function-call",
        "question": QUESTION,
        "expected": EXPECTED,
        "model": model,
        "tool_choice": args.tool_choice,
        "tool_calls": trace,
        "final_answer": None,
        "requests": 0,
    }

    def done(kind: str, reason: str) -> dict[str, Any]:
        verdict.update(verdict=kind, passed=kind == "pass", reason=reason)
        return verdict

    for step in range(1, args.max_steps + 1):
        # The forced choice applies to the first request only; afterwards the model may answer.
        choice = args.tool_choice if step == 1 else "auto"
        resp = client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, tool_choice=choice, temperature=args.temperature, max_tokens=args.max_tokens
        )
        verdict["requests"] = step
        message = resp.choices[0].message
        try:
            calls, source = extract_calls(message)
        except ToolCallError as exc:
            trace.append({"step": step, "source": "action_text", "name": None, "arguments": None, "result": None, "error": str(exc)})
            return done("invalid_tool_call", str(exc))
        if not calls:
            answer = (message.content or "").strip()
            verdict["final_answer"] = answer
            if not trace:
                return done("no_tool_call", f"the model answered without calling a tool: {answer[:120]!r}")
            if ANSWER_RE.search(answer):
                return done("pass", f"{len(trace)} tool call(s), final answer contains {EXPECTED}")
            return done("wrong_answer", f"final answer does not contain {EXPECTED}: {answer[:120]!r}")
        assistant: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
        if source == "tool_calls":
            assistant["tool_calls"] = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": _as_json(c["arguments"])}} for c in calls
            ]
        messages.append(assistant)
        for call in calls:
            entry = {"step": step, "source": source, "id": call["id"], "name": call["name"], "arguments": call["arguments"], "result": None}
            trace.append(entry)
            try:
                entry["arguments"], entry["result"] = dispatch(call["name"], call["arguments"])
            except ToolCallError as exc:
                entry["error"] = str(exc)
                return done("invalid_tool_call", str(exc))
            log.info("step %d: %s(%s) = %s", step, call["name"], entry["arguments"], entry["result"])
            tool_msg = {"role": args.tool_role, "content": json.dumps(entry["result"]), "name": call["name"]}
            if source == "tool_calls":
                tool_msg["tool_call_id"] = call["id"]
            messages.append(tool_msg)
    return done("step_limit", f"no final answer after {args.max_steps} requests (--max-steps); the model keeps calling tools")


def _as_json(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def format_verdict(v: dict[str, Any]) -> str:
    lines = [f"question: {v['question']}  (model {v['model']}, tool_choice {v['tool_choice']})"]
    for c in v["tool_calls"]:
        args = ", ".join(f"{k}={val}" for k, val in c["arguments"].items()) if isinstance(c["arguments"], dict) else c["arguments"]
        outcome = f"= {c['result']}" if c.get("error") is None else f"-> error: {c['error']}"
        lines.append(f"  step {c['step']} [{c['source']}] {c['name']}({args}) {outcome}")
    if v["final_answer"] is not None:
        lines.append(f"final answer: {v['final_answer']}")
    lines.append(f"{'PASS' if v['passed'] else 'FAIL'} ({v['verdict']}): {v['reason']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients.funcall",
        description=__doc__.split("\n\n")[0],
        epilog=CONNECTION_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--tool-choice",
        choices=["auto", "required"],
        default="auto",
        help="first request's tool_choice; 'required' makes the server emit a schema-valid call (default %(default)s)",
    )
    p.add_argument("--max-steps", type=int, default=6, help="requests before giving up on an endless tool loop (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=256, help="max new tokens per reply (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default %(default)s)")
    p.add_argument(
        "--tool-role",
        choices=["tool", "environment"],
        default="tool",
        help="role of tool-result messages; the kit's InternLM template renders 'tool' as its environment turn (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.add_argument("--output", type=Path, help="also write the verdict JSON to this file")
    add_connection_args(p)
    add_verbosity(p)
    return p


def _run(args: argparse.Namespace, conn: Connection) -> int:
    client, model = connect(conn)
    verdict = run_check(client, model, args)
    verdict["base_url"] = conn.base_url
    text = json.dumps(verdict, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text if args.json else format_verdict(verdict))
    return exitcodes.OK if verdict["passed"] else exitcodes.FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.max_steps < 1 or args.max_tokens < 1:
        log.error("--max-steps and --max-tokens must be >= 1")
        return exitcodes.USAGE
    return run_client(args, _run)


if __name__ == "__main__":
    sys.exit(main())
