"""clients.chat in-process against the replay server (recorded lmdeploy api_server replies)."""

from __future__ import annotations

import json

import pytest

from clients.chat import main
from tests.support.net import free_port
from tests.support.replay import SCENARIOS, ReplayServer, find_chat, scripted, streamed_text, tool_template

ONESHOT = dict((name, argv) for name, _, argv, _ in SCENARIOS)["chat-oneshot"]
MULTI = next(s for s in SCENARIOS if s[0] == "chat-multiturn")


def test_oneshot_prints_only_the_streamed_answer(recorded, run):
    expected = streamed_text(find_chat(recorded, stream=True, last=ONESHOT[1]))
    with ReplayServer(recorded) as srv:
        r = run(main, [*ONESHOT, "--base-url", srv.base_url])
    assert r.code == 0, r.err
    assert r.out == expected + "\n"
    assert srv.misses == []
    sent = [q for q in srv.requests if q["path"] == "/v1/chat/completions"]
    assert sent[0]["body"]["stream"] is True and sent[0]["body"]["max_tokens"] == 32


def test_multiturn_sends_the_history(recorded, run):
    _, _, argv, stdin = MULTI
    first, second = stdin.splitlines()
    with ReplayServer(recorded) as srv:
        r = run(main, [*argv, "--base-url", srv.base_url], stdin=stdin + "/exit\n")
    assert r.code == 0, r.err
    assert srv.misses == [], "the client sent a conversation that was not recorded"
    chats = [q["body"]["messages"] for q in srv.requests if q["path"] == "/v1/chat/completions"]
    assert [m["role"] for m in chats[1]] == ["user", "assistant", "user"]
    assert chats[1][0]["content"] == first and chats[1][2]["content"] == second
    assert chats[1][1]["content"] == streamed_text(find_chat(recorded, stream=True, last=first))
    assert streamed_text(find_chat(recorded, stream=True, last=second)) in r.out


def test_system_prompt_goes_first(recorded, run):
    with ReplayServer(recorded, script=[find_chat(recorded, stream=True)]) as srv:
        r = run(main, ["--prompt", "hi", "--system", "Be brief.", "--base-url", srv.base_url])
    assert r.code == 0, r.err
    body = next(q["body"] for q in srv.requests if q["path"] == "/v1/chat/completions")
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_unreachable_server_is_one_line_with_the_url(run):
    url = f"http://127.0.0.1:{free_port()}"
    r = run(main, ["--prompt", "hi", "--base-url", url, "--retries", "0"])
    assert r.code == 1
    assert f"cannot reach the server at {url}" in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err


def test_default_url_comes_from_settings(run):
    r = run(main, ["--prompt", "hi", "--retries", "0", "--timeout", "2"])
    assert r.code == 1
    assert "127.0.0.1:23333" in r.err  # settings.yaml serving.port


def test_loading_server_says_so(recorded, run):
    with ReplayServer(recorded, loading=True) as srv:
        r = run(main, ["--prompt", "hi", "--base-url", srv.base_url])
    assert r.code == 1
    assert "still loading the model (/health 503" in r.err


def test_rejected_key_is_reported_and_never_printed(recorded, run, monkeypatch):
    with ReplayServer(recorded, api_key="the-right-key") as srv:
        bad = run(main, [*ONESHOT, "--base-url", srv.base_url, "--api-key", "wrong-secret-123"])
        monkeypatch.setenv("OPENAI_API_KEY", "the-right-key")
        good = run(main, [*ONESHOT, "--base-url", srv.base_url, "-vv"])
    assert bad.code == 1
    assert "rejected the API key (401)" in bad.err
    assert "wrong-secret-123" not in bad.out + bad.err
    assert good.code == 0, good.err
    assert "the-right-key" not in good.out + good.err


def test_missing_key_hint(recorded, run):
    with ReplayServer(recorded, api_key="k") as srv:
        r = run(main, ["--prompt", "hi", "--base-url", srv.base_url])
    assert r.code == 1 and "set OPENAI_API_KEY" in r.err


def test_error_inside_the_stream_is_one_line(recorded, run):
    # lmdeploy's shape for an error after the stream started (chat_completions/serving.py).
    error = {"error": {"message": "The request exceeds the model context length.", "type": "invalid_request_error", "code": 400}}
    ex = {
        "request": {"method": "POST", "path": "/v1/chat/completions"},
        "response": {"status": 200, "content_type": "text/event-stream", "events": [json.dumps(error), "[DONE]"]},
    }
    with ReplayServer(recorded, script=[ex]) as srv:
        r = run(main, ["--prompt", "hi", "--base-url", srv.base_url])
    assert r.code == 1
    assert "exceeds the model context length" in r.err and "Traceback" not in r.err


def test_non_streaming_mode(recorded, run):
    answer = scripted(tool_template(recorded), content="A plain answer.")
    with ReplayServer(recorded, script=[answer]) as srv:
        r = run(main, ["--prompt", "hi", "--no-stream", "--base-url", srv.base_url])
    assert r.code == 0, r.err
    assert r.out == "A plain answer.\n"


@pytest.mark.parametrize("argv", [["--base-url", "ftp://x"], ["--max-tokens", "0"], ["--timeout", "0"]])
def test_usage_errors_exit_2(run, argv):
    r = run(main, ["--prompt", "hi", *argv])
    assert r.code == 2
