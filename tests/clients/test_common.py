"""clients._common: the API key as it comes from a Secret file or `echo`, against the replay server."""

from __future__ import annotations

from clients.chat import main
from tests.support.replay import SCENARIOS, ReplayServer, find_chat, streamed_text

ONESHOT = dict((name, argv) for name, _, argv, _ in SCENARIOS)["chat-oneshot"]


def test_api_key_with_a_trailing_newline_works(recorded, run, monkeypatch):
    """`kubectl get secret ... | base64 -d` of a key made with `echo` ends in a newline; the header must not."""
    expected = streamed_text(find_chat(recorded, stream=True, last=ONESHOT[1]))
    monkeypatch.setenv("OPENAI_API_KEY", "the-right-key\n")
    with ReplayServer(recorded, api_key="the-right-key") as srv:
        r = run(main, [*ONESHOT, "--base-url", srv.base_url])
    assert r.code == 0, r.err
    assert r.out == expected + "\n"


def test_api_key_with_a_newline_inside_is_a_usage_error(recorded, run, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "the-right\nkey-secret-xyz")
    with ReplayServer(recorded, api_key="the-right-key") as srv:
        r = run(main, [*ONESHOT, "--base-url", srv.base_url])
    assert r.code == 2
    assert "API key from OPENAI_API_KEY contains whitespace or a control character" in r.err
    assert "cannot reach" not in r.err and "secret-xyz" not in r.err
    assert srv.requests == []  # stopped before sending anything
