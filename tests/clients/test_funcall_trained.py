"""The function-call check against the test model trained for it (tests/gpu/train_fc.py), replayed.

tests/fixtures/funcall_trained/ holds a real TurboMind api_server's replies to `clients.funcall`
(tool_choice auto and required) and to tests/gpu/fc_heldout.py, recorded by tests/gpu/fc_roundtrip.sh,
plus `verdicts.json`, what the clients printed in that live run. Beside it lies today's random-weight
recording (tests/fixtures/recorded/session), whose forced call the check judges invalid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from clients import funcall
from clients.funcall import REGISTRY, main
from kit.chat_template import render
from tests.gpu import fc_heldout, train_fc
from tests.support.replay import ReplayServer, chat_exchanges, load_exchanges

TRAINED_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "funcall_trained"
LIVE = json.loads((TRAINED_DIR / "verdicts.json").read_text())
VOLATILE = ("base_url",)


@pytest.fixture(scope="module")
def trained() -> list[dict[str, Any]]:
    exchanges = load_exchanges(TRAINED_DIR)
    assert chat_exchanges(exchanges), f"no recorded chat exchanges under {TRAINED_DIR}"
    return exchanges


def _stable(v: dict[str, Any]) -> dict[str, Any]:
    # Tool-call ids are the server's random ones; a repeated request replays the first recording's.
    calls = [{k: x for k, x in c.items() if k != "id"} for c in v["tool_calls"]]
    return {k: x for k, x in v.items() if k not in VOLATILE} | {"tool_calls": calls}


def _same(replayed: dict[str, Any], live: dict[str, Any]) -> None:
    assert _stable(replayed) == _stable(live)


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_fc_check_replays_the_live_verdict(trained, run, choice):
    """`make fc-check` (clients.funcall) against the recorded server reproduces the live run's verdict exactly."""
    live = LIVE[f"funcall-{choice}"]
    with ReplayServer(trained) as srv:
        r = run(main, ["--tool-choice", choice, "--max-steps", "4", "--json", "--base-url", srv.base_url])
    assert srv.misses == [], "the loop sent a request the live run did not"
    v = json.loads(r.out)
    _same(v, live["verdicts"][0])
    assert r.code == live["exit"] == (0 if v["passed"] else 1)
    chats = [q["body"] for q in srv.requests if q["path"] == "/v1/chat/completions"]
    assert [c["tool_choice"] for c in chats] == [choice] + ["auto"] * (len(chats) - 1)


def test_trained_model_calls_the_tools_itself(trained, run):
    """tool_choice auto: the model chose the calls (parsed by the server from its action text), the client ran them."""
    with ReplayServer(trained) as srv:
        v = json.loads(run(main, ["--tool-choice", "auto", "--max-steps", "4", "--json", "--base-url", srv.base_url]).out)
    assert v["tool_calls"] and all(c["source"] == "tool_calls" and "error" not in c for c in v["tool_calls"])
    assert [c["name"] for c in v["tool_calls"]] == ["add", "mul"]
    for c in v["tool_calls"]:
        assert c["result"] == REGISTRY[c["name"]](**c["arguments"])
    assert v["tool_calls"][0]["arguments"] == {"a": 3, "b": 5}  # the question's own operands
    assert v["tool_calls"][1]["arguments"] == {"a": v["tool_calls"][0]["result"], "b": 2}  # reads the tool result back
    assert v["final_answer"] == f"The answer is {v['tool_calls'][-1]['result']}."  # and answers with the last one
    assert v["verdict"] == "pass" and v["passed"] and v["tool_calls"][-1]["result"] == funcall.EXPECTED == 16


def test_beside_the_random_model_recording(trained, recorded, run):
    """Today's random-weight recording: a forced, schema-shaped call the check rejects; the trained one's calls execute."""
    with ReplayServer(recorded) as srv:
        random_v = json.loads(run(main, ["--tool-choice", "required", "--max-steps", "4", "--json", "--base-url", srv.base_url]).out)
    with ReplayServer(trained) as srv:
        trained_v = json.loads(run(main, ["--tool-choice", "auto", "--max-steps", "4", "--json", "--base-url", srv.base_url]).out)
    assert random_v["verdict"] == "invalid_tool_call" and random_v["requests"] == 1
    assert trained_v["verdict"] == "pass" and trained_v["requests"] == 3 and "16" in trained_v["final_answer"]


def _heldout_args() -> argparse.Namespace:
    return argparse.Namespace(tool_choice="auto", max_steps=4, max_tokens=256, temperature=0.0, tool_role="tool")


def test_held_out_questions_replay(trained):
    """tests/gpu/fc_heldout.py's loop over every held-out question reproduces the live verdicts."""
    from clients._common import Connection, make_client

    live = LIVE["heldout-auto"]["verdicts"]
    assert [v["question"] for v in live] == [q for q, _ in train_fc.HELD_OUT]
    with ReplayServer(trained) as srv:
        client = make_client(Connection(srv.base_url, "none"))
        for (question, expected), want in zip(train_fc.HELD_OUT, live, strict=True):
            _same(fc_heldout.check(client, want["model"], question, expected, _heldout_args()), want)
    assert srv.misses == []
    assert [v["verdict"] for v in live] == ["pass"] * len(train_fc.HELD_OUT)
    assert (funcall.QUESTION, funcall.EXPECTED) == ("Compute (3+5)*2", 16), "fc_heldout left its question in clients.funcall"


def test_held_out_questions_are_not_in_the_training_data():
    problems = train_fc.make_problems(40000, seed=0)  # the training run's own set
    banned = train_fc.held_out_signatures()
    assert len(banned) == len(train_fc.HELD_OUT)
    assert not any(train_fc.signature(p.calls) in banned for p in problems)
    assert funcall.QUESTION in [q for q, _ in train_fc.HELD_OUT]


def test_recorded_prompts_are_the_training_format(trained):
    """The server saw, and the model answered in, the turns train_fc.py trains on: same messages, same action text."""
    last = max(chat_exchanges(trained), key=lambda e: len(e["request"]["body"]["messages"]))
    body = last["request"]["body"]
    calls = []
    for m in body["messages"]:
        for c in m.get("tool_calls") or []:
            args = json.loads(c["function"]["arguments"])
            assert c["function"]["arguments"] == json.dumps(args)  # the model wrote exactly what training wrote
            calls.append((c["function"]["name"], args["a"], args["b"]))
    answer = body["messages"][-1]
    problem = train_fc.Problem(body["messages"][0]["content"], tuple(calls), 0)
    trained_turns = train_fc.dialogue(problem)[-1][0]
    assert [(m["role"], m["content"]) for m in body["messages"]] == [(m["role"], m["content"]) for m in trained_turns]
    assert answer["role"] == "tool"
    tools = train_fc.lmdeploy_tools()
    assert render(body["messages"], tools=tools) == render(trained_turns, tools=tools)


def test_training_ids_are_what_lmdeploy_feeds_the_engine(tmp_path, monkeypatch):
    """train_fc's rendered and masked dialogues against lmdeploy's own chat template and tokenizer."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tokenizer = train_fc.build_dirs(tmp_path)
    train_fc.new_config(tokenizer, train_fc.SHAPE).save_pretrained(tmp_path)
    problems = train_fc.make_problems(12, seed=1)
    data = train_fc.build_data(tmp_path, problems, train_fc.lmdeploy_tools(), workers=1)
    train_fc.check_against_lmdeploy(tmp_path, problems, data)
    ids, labels = data[0]
    trained = tokenizer.decode([t for t in labels if t != -100], skip_special_tokens=False)
    assert trained.startswith('<|action_start|><|plugin|>\n{"name": ') and trained.endswith(
        f"The answer is {problems[0].answer}.<|im_end|>"
    )
    assert problems[0].question not in trained and problems[0].question in tokenizer.decode(ids)


def test_shared_prefix_training_step_equals_the_full_one(tmp_path, monkeypatch):
    """train_fc computes the tools block once per batch: same loss and gradients as whole sequences."""
    import random

    import torch

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tokenizer = train_fc.build_dirs(tmp_path)
    shape = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
    model = train_fc.new_model(train_fc.new_config(tokenizer, shape), seed=0)
    data = train_fc.build_data(tmp_path, train_fc.make_problems(40, seed=2), train_fc.lmdeploy_tools(), workers=1)
    prefix = train_fc.common_prefix(data)
    assert tokenizer.decode(data[0][0][:prefix]).endswith("<|im_start|>user\n")  # the tools block and the user header
    ids, labels = next(train_fc.batches(data, 4, tokenizer.pad_token_id, random.Random(0), "cpu"))
    grads = []
    for shared in (False, True):
        model.zero_grad()
        loss = train_fc.shared_prefix_loss(model, ids, labels, prefix) if shared else model(input_ids=ids, labels=labels).loss
        loss.backward()
        grads.append((loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-3, atol=1e-6)
    assert train_fc.pick_prefix(model, ids, labels, prefix) == prefix
