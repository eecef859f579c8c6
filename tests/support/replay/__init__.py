"""Replay and record lmdeploy api_server exchanges (stdlib only; localhost by default).

Replay (tests): `ReplayServer(exchanges)` answers from recorded exchanges, SSE streams included.
Record (GPU machine): a proxy in front of a real api_server that saves every exchange as JSON:

    python -m tests.support.replay record --upstream http://127.0.0.1:23333 --out DIR --port 23334
    python -m tests.support.replay session --upstream http://127.0.0.1:23333 --out DIR [--api-key K]

`session` starts the recorder itself and runs every client scenario the CPU tests replay
(SCENARIOS), so the recordings match the tests' requests. One exchange per file:

    {"source": "...", "request": {"method", "path", "auth": "bearer"|"none", "body"},
     "response": {"status", "content_type", "body"} | {"status", "content_type", "events": [data, ...]}}

A request matches a recorded one by method, path and body, ignoring sampling knobs and the model
name (IGNORED_FIELDS). The API key is never written: only whether one was sent.

Modules: exchanges (loading, matching keys, scripted answers), server (ReplayServer), recorder
(Recorder), cli (`python -m tests.support.replay`, SCENARIOS, run_session). Import from here.
"""

from tests.support.replay.cli import SCENARIOS, main, run_session
from tests.support.replay.exchanges import (
    IGNORED_FIELDS,
    PLACEHOLDER,
    RECORDED_DIR,
    chat_exchanges,
    find_chat,
    load_exchanges,
    request_key,
    scripted,
    streamed_text,
    tool_template,
)
from tests.support.replay.recorder import Recorder
from tests.support.replay.server import ReplayServer

__all__ = [
    "IGNORED_FIELDS",
    "PLACEHOLDER",
    "RECORDED_DIR",
    "SCENARIOS",
    "Recorder",
    "ReplayServer",
    "chat_exchanges",
    "find_chat",
    "load_exchanges",
    "main",
    "request_key",
    "run_session",
    "scripted",
    "streamed_text",
    "tool_template",
]
