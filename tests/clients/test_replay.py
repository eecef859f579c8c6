"""The recorder (what the lead runs in front of the real api_server) and the replay server itself."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from clients import chat, funcall
from tests.support.replay import SCENARIOS, Recorder, ReplayServer, chat_exchanges, find_chat, load_exchanges, main, streamed_text

KEY = "sekrit-key-42"
ONESHOT = dict((name, argv) for name, _, argv, _ in SCENARIOS)["chat-oneshot"]


def test_recorder_round_trip_keeps_streams_and_never_the_key(recorded, run, tmp_path, monkeypatch):
    expected = streamed_text(find_chat(recorded, stream=True, last=ONESHOT[1]))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with ReplayServer(recorded, api_key=KEY, event_delay=0.01) as upstream, Recorder(upstream.root_url, tmp_path, source="test") as rec:
        first = run(chat.main, [*ONESHOT, "--base-url", rec.root_url])
        again = run(chat.main, [*ONESHOT, "--base-url", rec.root_url])
    assert first.code == 0 and first.out == expected + "\n" and again.out == first.out
    files = sorted(p.name for p in tmp_path.glob("*.json"))
    assert files == ["0000-get-health-200.json", "0001-get-v1-models-200.json", "0002-post-v1-chat-completions-200.json"]  # deduped
    for p in tmp_path.glob("*.json"):
        text = p.read_text()
        assert KEY not in text
        assert json.loads(text)["request"]["auth"] == ("none" if "health" in p.name else "bearer")
    saved = json.loads((tmp_path / files[2]).read_text())
    assert saved["source"] == "test" and saved["response"]["events"][-1] == "[DONE]"
    assert streamed_text(saved) == expected
    with ReplayServer(load_exchanges(tmp_path)) as srv:  # what was recorded replays
        assert run(chat.main, [*ONESHOT, "--base-url", srv.base_url]).out == expected + "\n"


def test_recorder_forwards_errors_and_json(recorded, run, tmp_path):
    with ReplayServer(recorded, api_key=KEY) as upstream, Recorder(upstream.root_url, tmp_path) as rec:
        bad = run(chat.main, ["--prompt", "hi", "--base-url", rec.root_url, "--api-key", "nope"])
        fc = run(funcall.main, ["--json", "--base-url", rec.root_url, "--api-key", KEY])
    assert bad.code == 1 and "401" in bad.err
    assert json.loads((tmp_path / "0001-get-v1-models-401.json").read_text())["response"]["body"]["code"] == 401
    assert json.loads(fc.out)["requests"] == len(chat_exchanges(load_exchanges(tmp_path)))


def test_session_records_every_scenario(recorded, tmp_path, capsys):
    with ReplayServer(recorded, api_key=KEY) as upstream:
        rc = main(["session", "--upstream", upstream.root_url, "--out", str(tmp_path), "--api-key", KEY, "--source", "unit test"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name, *_ in SCENARIOS:
        assert f"== {name}:" in out
    got = load_exchanges(tmp_path)
    assert {e["source"] for e in got} == {"unit test"}
    assert any(e["response"]["status"] == 401 for e in got)
    # The fresh recording answers the tests' requests like the committed one.
    assert streamed_text(find_chat(got, stream=True, last=ONESHOT[1])) == streamed_text(find_chat(recorded, stream=True, last=ONESHOT[1]))


def test_replay_health_and_misses(recorded):
    with ReplayServer(recorded, loading=True) as srv:
        try:
            urllib.request.urlopen(srv.root_url + "/health", timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read())["status"] == "initializing"
    with ReplayServer(recorded) as srv:
        assert json.load(urllib.request.urlopen(srv.root_url + "/health", timeout=5))["status"] == "healthy"
        req = urllib.request.Request(
            srv.base_url + "/chat/completions", data=b'{"messages": []}', headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("expected 404")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and "nothing recorded" in exc.read().decode()
        assert len(srv.misses) == 1


def _post(srv: ReplayServer, body: dict) -> int:
    req = urllib.request.Request(
        srv.base_url + "/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    req.add_header("Authorization", f"Bearer {KEY}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_replay_matches_on_the_conversation_not_the_sampling_knobs(recorded):
    """A client may change model name, temperature, max_tokens or seed and still get the recorded reply;
    a different conversation is a miss (the recordings answer what was asked, nothing else)."""
    body = dict(next(e for e in chat_exchanges(recorded) if not e["request"]["body"].get("stream"))["request"]["body"])
    with ReplayServer(recorded) as srv:
        knobs = {"model": "other-name", "temperature": 0.01, "top_p": 0.5, "max_tokens": 7, "seed": 3, "user": "u"}
        assert _post(srv, body | knobs) == 200
        changed = body | {"messages": [*body["messages"][:-1], {"role": "user", "content": "something never recorded"}]}
        assert _post(srv, changed) == 404 and len(srv.misses) == 1
