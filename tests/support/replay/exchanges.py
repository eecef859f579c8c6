"""Recorded exchanges: loading them, the key a request matches by, and picking or reshaping answers for tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

IGNORED_FIELDS = frozenset(
    {"model", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stream_options", "user"}
)
PLACEHOLDER = "hand-written placeholder, to be replaced by a recording"
RECORDED_DIR = Path(__file__).resolve().parents[2] / "fixtures" / "recorded"


def request_key(method: str, path: str, body: Any) -> str:
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    return json.dumps([method.upper(), path.split("?")[0], body], sort_keys=True, separators=(",", ":"))


def load_exchanges(*paths: Path) -> list[dict[str, Any]]:
    """Every *.json exchange under the given files/directories, in file-name order."""
    out: list[dict[str, Any]] = []
    for path in paths:
        files = sorted(Path(path).rglob("*.json")) if Path(path).is_dir() else [Path(path)]
        for f in files:
            data = json.loads(f.read_text())
            if "request" in data and "response" in data:
                data.setdefault("file", str(f))
                out.append(data)
    return out


def chat_exchanges(exchanges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in exchanges if e["request"]["path"] == "/v1/chat/completions" and e["response"]["status"] == 200]


# ---------------------------------------------------------------------------------------------- scripting


def streamed_text(exchange: dict[str, Any]) -> str:
    """The assistant text a recorded SSE answer carries."""
    parts = []
    for data in exchange["response"]["events"]:
        if data == "[DONE]":
            continue
        for choice in json.loads(data).get("choices", []):
            parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def find_chat(exchanges: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """First recorded chat exchange whose request body has these values (messages matched on the last one)."""
    for e in chat_exchanges(exchanges):
        body = e["request"]["body"]
        last = body["messages"][-1]["content"] if "last" in match else None
        if all(body.get(k) == v for k, v in match.items() if k != "last") and ("last" not in match or last == match["last"]):
            return e
    raise AssertionError(f"no recorded chat exchange with {match}")


def tool_template(exchanges: list[dict[str, Any]]) -> dict[str, Any]:
    """A recorded non-streaming tool-call answer, the shape scripted scenarios are cut from."""
    for e in chat_exchanges(exchanges):
        body = e["response"].get("body") or {}
        if body.get("choices") and body["choices"][0]["message"].get("tool_calls"):
            return e
    raise AssertionError("no recorded tool-call answer")


def scripted(template: dict[str, Any], *, calls: list[tuple[str, Any]] | None = None, content: str | None = None) -> dict[str, Any]:
    """A copy of the recorded answer with other tool calls (name, arguments) or a plain text answer."""
    e = copy.deepcopy(template)
    e["source"] = f"scripted from {template.get('file', 'a recorded exchange')}"
    msg = e["response"]["body"]["choices"][0]["message"]
    base = msg["tool_calls"][0]
    if calls:
        msg["tool_calls"] = []
        for i, (name, args) in enumerate(calls):
            tc = copy.deepcopy(base)
            tc["id"] = f"{base['id']}-{i}"
            tc["function"] = {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}
            msg["tool_calls"].append(tc)
        msg["content"] = content
        e["response"]["body"]["choices"][0]["finish_reason"] = "tool_calls"
    else:
        msg["tool_calls"] = None
        msg["content"] = content
        e["response"]["body"]["choices"][0]["finish_reason"] = "stop"
    return e
