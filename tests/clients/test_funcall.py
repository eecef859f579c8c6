"""clients.funcall: the add/mul tool loop against recorded lmdeploy replies, the bad cases, and
the InternLM action-text fallback checked against lmdeploy's own `internlm` tool parser."""

from __future__ import annotations

import json

import pytest

from clients import funcall
from clients.funcall import TOOLS, ToolCallError, main, parse_action_text, validate_arguments
from tests.support.replay import SCENARIOS, ReplayServer, find_chat, scripted, tool_template


def _verdict(r) -> dict:
    return json.loads(r.out)


# What each recorded session shows (random weights on the GPU machine): the verdict the loop must
# reach on it. A re-recording that changes the model's answers must update this table.
RECORDED_VERDICTS = {"funcall-required": "invalid_tool_call", "funcall-auto": "no_tool_call"}


@pytest.mark.parametrize("name", [s[0] for s in SCENARIOS if s[1] == "clients.funcall"])
def test_recorded_session_replays_exactly(recorded, run, name):
    """The loop sends what was recorded and judges the recorded answer as the table says."""
    argv = next(s[2] for s in SCENARIOS if s[0] == name)
    choice = argv[argv.index("--tool-choice") + 1]
    with ReplayServer(recorded) as srv:
        r = run(main, [*argv, "--base-url", srv.base_url])
    assert srv.misses == [], "the loop sent a request that was not recorded"
    v = _verdict(r)
    assert (v["verdict"], r.code) == (RECORDED_VERDICTS[name], 1)
    chats = [q["body"] for q in srv.requests if q["path"] == "/v1/chat/completions"]
    assert len(chats) == v["requests"] == 1
    assert chats[0]["tool_choice"] == choice and [t["function"]["name"] for t in chats[0]["tools"]] == ["add", "mul"]
    answer = find_chat(recorded, tool_choice=choice)["response"]["body"]["choices"][0]["message"]
    if v["verdict"] == "invalid_tool_call":  # the recorded call's arguments are not JSON: named, not executed
        call = answer["tool_calls"][0]["function"]
        assert v["tool_calls"] == [{**v["tool_calls"][0], "name": call["name"], "arguments": call["arguments"], "result": None}]
        assert v["reason"].startswith(f"arguments of {call['name']} are not valid JSON")
    else:  # the recorded answer is text without a tool call
        assert v["final_answer"] == answer["content"].strip() and v["tool_calls"] == []


def _happy(t):
    return [
        scripted(t, calls=[("add", {"a": 3, "b": 5})]),
        scripted(t, calls=[("mul", {"a": 8, "b": 2})]),
        scripted(t, content="(3+5)*2 = 16"),
    ]


def test_happy_path_passes_and_returns_tool_messages(recorded, run):
    with ReplayServer(recorded, script=_happy(tool_template(recorded))) as srv:
        r = run(main, ["--tool-choice", "required", "--json", "--base-url", srv.base_url])
    v = _verdict(r)
    assert r.code == 0 and v["verdict"] == "pass" and v["passed"] is True
    assert [(c["name"], c["arguments"], c["result"]) for c in v["tool_calls"]] == [
        ("add", {"a": 3, "b": 5}, 8),
        ("mul", {"a": 8, "b": 2}, 16),
    ]
    assert v["final_answer"] == "(3+5)*2 = 16"
    chats = [q["body"] for q in srv.requests if q["path"] == "/v1/chat/completions"]
    assert [c["tool_choice"] for c in chats] == ["required", "auto", "auto"]
    assistant, tool = chats[1]["messages"][1:3]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["function"]["name"] == "add"
    assert tool == {"role": "tool", "content": "8", "name": "add", "tool_call_id": assistant["tool_calls"][0]["id"]}


def test_human_output(recorded, run):
    with ReplayServer(recorded, script=_happy(tool_template(recorded))) as srv:
        r = run(main, ["--base-url", srv.base_url])
    assert r.code == 0
    assert "add(a=3, b=5) = 8" in r.out and "mul(a=8, b=2) = 16" in r.out and r.out.rstrip().splitlines()[-1].startswith("PASS")


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("div", {"a": 3, "b": 5}, "unknown tool 'div'"),
        ("add", {"a": 3}, "missing argument(s) b"),
        ("add", {"a": 3, "b": 5, "c": 1}, "unexpected argument(s) c"),
        ("add", {"a": "three", "b": 5}, "argument 'a' must be a number, got 'three'"),
        ("add", {"a": True, "b": 5}, "argument 'a' must be a number"),
        ("mul", '{"a": 3, "b":', "not valid JSON"),
        ("mul", "[3, 5]", "must be a JSON object"),
    ],
)
def test_bad_tool_calls_give_a_clear_verdict(recorded, run, name, args, reason):
    with ReplayServer(recorded, script=[scripted(tool_template(recorded), calls=[(name, args)])]) as srv:
        r = run(main, ["--json", "--base-url", srv.base_url])
    v = _verdict(r)
    assert r.code == 1
    assert v["verdict"] == "invalid_tool_call" and not v["passed"]
    assert reason in v["reason"] and reason in v["tool_calls"][-1]["error"]
    assert v["requests"] == 1  # nothing is executed or sent after an invalid call


def test_endless_tool_loop_hits_the_step_limit(recorded, run):
    loop = scripted(tool_template(recorded), calls=[("add", {"a": 1, "b": 1})])
    with ReplayServer(recorded, script=[loop]) as srv:
        r = run(main, ["--json", "--max-steps", "3", "--base-url", srv.base_url])
    v = _verdict(r)
    assert r.code == 1 and v["verdict"] == "step_limit" and v["requests"] == 3 and len(v["tool_calls"]) == 3
    assert "--max-steps" in v["reason"]


def test_no_tool_call_and_wrong_answer(recorded, run):
    t = tool_template(recorded)
    with ReplayServer(recorded, script=[scripted(t, content="16")]) as srv:
        direct = _verdict(run(main, ["--json", "--base-url", srv.base_url]))
    with ReplayServer(recorded, script=[scripted(t, calls=[("add", {"a": 3, "b": 5})]), scripted(t, content="It is 160.")]) as srv:
        wrong = run(main, ["--json", "--base-url", srv.base_url])
    assert direct["verdict"] == "no_tool_call" and not direct["passed"]
    assert wrong.code == 1 and _verdict(wrong)["verdict"] == "wrong_answer"


ACTION_ADD = '<|action_start|><|plugin|>\n{"name": "add", "parameters": {"a": 3, "b": 5}}<|action_end|>'
ACTION_MUL = 'Now multiply.<|action_start|><|plugin|>\n{"name": "mul", "parameters": {"a": 8, "b": 2}}<|action_end|>'


def test_action_text_fallback(recorded, run):
    t = tool_template(recorded)
    answers = [scripted(t, content=ACTION_ADD), scripted(t, content=ACTION_MUL), scripted(t, content="The result is 16.")]
    with ReplayServer(recorded, script=answers) as srv:
        r = run(main, ["--json", "--tool-role", "environment", "--base-url", srv.base_url])
    v = _verdict(r)
    assert r.code == 0 and v["verdict"] == "pass"
    assert [c["source"] for c in v["tool_calls"]] == ["action_text", "action_text"]
    second = [q["body"] for q in srv.requests if q["path"] == "/v1/chat/completions"][1]["messages"]
    assert second[1] == {"role": "assistant", "content": ACTION_ADD}
    assert second[2] == {"role": "environment", "content": "8", "name": "add"}


@pytest.mark.parametrize(
    "text",
    [
        ACTION_ADD,
        ACTION_MUL,
        ACTION_ADD + "\n" + ACTION_MUL.removeprefix("Now multiply."),
        'Let me compute.<|action_start|><|plugin|>{"name": "add", "parameters": {"a": 2.5, "b": -1}}<|action_end|>',
    ],
)
def test_fallback_agrees_with_lmdeploys_internlm_parser(text):
    """Same text through lmdeploy 0.18's own `internlm` tool parser (the server's --tool-call-parser)."""
    from lmdeploy.serve.openai.protocol import ChatCompletionRequest
    from lmdeploy.serve.parsers.response_parser import BaseResponseParser

    class Parser(BaseResponseParser):  # a subclass keeps lmdeploy's class-level parser choice local
        pass

    Parser.set_parsers(tool_parser_name="internlm")
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": funcall.QUESTION}], tools=TOOLS)
    _, theirs, _ = Parser(request).parse_complete(text)
    ours = parse_action_text(text)
    assert theirs, "lmdeploy found no tool call in the text"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in theirs] == [(c["name"], c["arguments"]) for c in ours]


def test_action_text_with_bad_json_is_invalid():
    with pytest.raises(ToolCallError, match="not valid JSON"):
        parse_action_text('<|action_start|><|plugin|>{"name": "add", "parameters": {"a": <|action_end|>')


def test_validation_accepts_numbers_only():
    assert validate_arguments("mul", '{"a": 2.5, "b": -4}') == {"a": 2.5, "b": -4}
    with pytest.raises(ToolCallError, match="must be a number"):
        validate_arguments("mul", {"a": "2", "b": 3})
    with pytest.raises(ToolCallError, match="must be a number"):
        validate_arguments("mul", {"a": float("nan"), "b": 3})


def test_server_error_during_the_loop(recorded, run):
    err = {
        "request": {},
        "response": {
            "status": 400,
            "content_type": "application/json",
            "body": {
                "message": '`tool_choice="required"` requires a configured tool-call parser.',
                "type": "invalid_request_error",
                "code": 400,
                "param": None,
                "object": "error",
            },
        },
    }
    with ReplayServer(recorded, script=[err]) as srv:
        r = run(main, ["--tool-choice", "required", "--base-url", srv.base_url])
    assert r.code == 1
    assert "answered 400" in r.err and "requires a configured tool-call parser" in r.err


def test_loop_messages_render_with_the_kits_internlm_template(recorded, run):
    """What the loop sends back renders as InternLM's own turns (kit/chat_template.py, the served template)."""
    from kit.chat_template import render

    with ReplayServer(recorded, script=_happy(tool_template(recorded))) as srv:
        assert run(main, ["--json", "--base-url", srv.base_url]).code == 0
    last = [q["body"] for q in srv.requests if q["path"] == "/v1/chat/completions"][-1]
    prompt = render(last["messages"], tools=[t["function"] for t in last["tools"]])
    assert '<|im_start|>system name=<|plugin|>\n[{"name": "add"' in prompt
    assert "<|im_start|>environment name=<|plugin|>\n8<|im_end|>" in prompt
    assert "<|im_start|>environment name=<|plugin|>\n16<|im_end|>" in prompt
    assert [(c["name"], c["arguments"]) for c in parse_action_text(prompt)] == [("add", {"a": 3, "b": 5}), ("mul", {"a": 8, "b": 2})]
