"""clients.webui: the Gradio page in a real headless Chromium, its chat wired to the replay server.

Chromium is driven over the DevTools protocol (websockets): it loads the page, types the question
into the chat box, presses Enter, waits for the replayed reply and saves a screenshot into the
artifacts directory. The Gradio HTTP API (gradio_client) checks the same wiring and the error path.
"""

from __future__ import annotations

import base64
import contextlib
import html
import itertools
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from clients._common import Connection
from clients.webui import build_app, configured_label, listen_host, quant_summary, to_messages
from kit.settings import load_settings
from tests.conftest import require_tool
from tests.support.net import free_port, wait_for_page
from tests.support.replay import SCENARIOS, ReplayServer, find_chat, streamed_text

PROMPT = dict((name, argv) for name, _, argv, _ in SCENARIOS)["chat-oneshot"][1]
# The chat input (the other textarea is the system prompt).
CHAT_BOX = "[...document.querySelectorAll('textarea')].find(t => t.placeholder.startsWith('Type a message'))"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm
    "--window-size=1280,1000",
]


@contextmanager
def page_for(server: ReplayServer, api_key: str | None = None) -> Iterator[str]:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    app = build_app(Connection(server.base_url, api_key, timeout=20, retries=0), load_settings(), "lmdeploy chat")
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


class Browser:
    """Minimal DevTools-protocol driver for one headless Chromium page."""

    def __init__(self, chromium: str, profile: Path) -> None:
        self.proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its helper processes share the group; close() ends them all
        )
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not active.exists() or len(active.read_text().splitlines()) < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = active.read_text().splitlines()[0]
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=10)
        self._ids = itertools.count(1)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=30))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}; page text:\n{self.js('document.body.innerText')}")
            time.sleep(0.25)

    def close(self) -> None:
        """End Chromium and its helpers: one left behind still writes to the profile being removed."""
        self.ws.close()
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        finally:
            deadline = time.monotonic() + 10
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
                while time.monotonic() < deadline:
                    os.killpg(pgid, 0)  # ProcessLookupError once the whole group is gone
                    time.sleep(0.1)


@pytest.mark.slow
def test_page_in_headless_chromium_chats_through_the_replay_server(recorded, artifacts_dir):
    chromium = require_tool("chromium")
    expected = streamed_text(find_chat(recorded, stream=True, last=PROMPT))
    model = recorded_model(recorded)
    with ReplayServer(recorded, event_delay=0.05) as srv, page_for(srv) as url, tempfile.TemporaryDirectory() as profile:
        browser = Browser(chromium, Path(profile))
        try:
            browser.send("Page.enable")
            browser.send("Page.navigate", url=url)
            browser.wait_for(f"{CHAT_BOX} !== undefined")
            browser.wait_for(f"document.body.innerText.includes({json.dumps(model)})")  # the status line from /v1/models
            browser.js(f"{CHAT_BOX}.focus()")
            browser.send("Input.insertText", text=PROMPT)
            for kind in ("keyDown", "keyUp"):
                browser.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13, text="\r")
            browser.wait_for(f"document.body.innerText.includes({json.dumps(expected)})")
            time.sleep(1.5)  # let the stream finish and the stop button turn back into submit
            text = browser.js("document.body.innerText")
            png = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
        finally:
            browser.close()
    shot = artifacts_dir / "webui-chat.png"
    shot.write_bytes(png)
    assert PROMPT in text and expected in text
    assert "configured profile default: AWQ W4A16 weights, int8 KV cache (quant_policy 8)" in text  # settings.yaml, labelled
    assert f"{model} at" in text and "(reported by the server)" in text
    assert srv.misses == []
    _assert_not_blank(shot)


def recorded_model(recorded: list[dict[str, Any]]) -> str:
    models = next(e for e in recorded if e["request"].get("path") == "/v1/models" and e["response"]["status"] == 200)
    return models["response"]["body"]["data"][0]["id"]


def _assert_not_blank(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as img:
        assert img.size[0] >= 800 and img.size[1] >= 600
        colors = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 50, f"{path} looks blank ({len(colors)} colours)"
    assert max(c for c, _ in colors) < 0.97 * img.size[0] * img.size[1], f"{path} is one flat colour"


@pytest.mark.slow
def test_http_api_streams_the_recorded_reply_and_shows_errors(recorded):
    from gradio_client import Client

    expected = streamed_text(find_chat(recorded, stream=True, last=PROMPT))
    with ReplayServer(recorded) as srv, page_for(srv) as url:
        reply = Client(url, verbose=False).predict(PROMPT, "", 0.0, 32, api_name="/chat")
    # The chat view gets HTML-escaped text (tag-like tokens stay visible); unescaped it is the stream verbatim.
    assert html.unescape(reply) == expected
    assert ("<" not in reply) or ("<" not in expected)
    with ReplayServer(recorded, api_key="right-key") as srv, page_for(srv, api_key="wrong-key-xyz") as url:
        client = Client(url, verbose=False)
        err = client.predict(PROMPT, "", 0.0, 32, api_name="/chat")
        status = client.predict(api_name="/status")
    assert "Server error" in err and "rejected the API key (401)" in err and "wrong-key-xyz" not in err
    assert "rejected the API key" in status


def test_history_and_quant_summary(monkeypatch):
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": "hello"},
        {"role": "assistant", "content": "⚠️ **Server error:** boom"},
    ]
    assert to_messages("next", history, " Be brief. ") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "next"},
    ]
    assert quant_summary(load_settings("seed")) == "AWQ W4A16 weights, int4 KV cache (quant_policy 4), turbomind backend"
    assert quant_summary(load_settings("fc")).startswith("fp16 weights, fp16/bf16 KV cache (quant_policy 0)")
    monkeypatch.setenv("KIT_SERVING_QUANT_POLICY", "8")  # a pod's params.env wins over the settings file
    assert "int8 KV cache" in quant_summary(load_settings("seed"))


@pytest.mark.slow
def test_module_entrypoint_runs_like_in_the_pod(recorded):
    """`python -m clients.webui` as the Gradio Deployment runs it: env only (params.env, Secret), no settings file."""
    import sys

    from gradio_client import Client

    port = free_port()
    with ReplayServer(recorded) as srv:
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("GRADIO_SERVER_NAME", "KUBERNETES_SERVICE_HOST")},
            "OPENAI_BASE_URL": srv.base_url,
            "KIT_SETTINGS": "/nonexistent/settings.yaml",
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "KIT_MODEL_FORMAT": "awq",
            "KIT_SERVING_QUANT_POLICY": "4",
            "KIT_SERVING_BACKEND": "pytorch",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "clients.webui"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            page = wait_for_page(f"http://127.0.0.1:{port}/", lambda: proc.poll() is None, 90)
            if page is None:
                raise AssertionError(f"page never came up:\n{proc.stdout.read() if proc.poll() is not None else ''}")
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            status = client.predict(api_name="/status")
            reply = client.predict(PROMPT, "", 0.0, 32, api_name="/chat")
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=20)
    assert "lmdeploy chat" in page
    assert "configured (this pod's env): AWQ W4A16 weights, int4 KV cache (quant_policy 4), pytorch backend" in status
    assert recorded_model(recorded) in status
    assert html.unescape(reply) == streamed_text(find_chat(recorded, stream=True, last=PROMPT))
    # Not in a Kubernetes pod and nothing said otherwise: local only, even inside a Docker container.
    assert f"Gradio page on http://127.0.0.1:{port} talking to {srv.base_url}" in out
    # A normal start and request log no warnings: no WARNING records, no library deprecation noise.
    assert "WARNING" not in out and "Warning" not in out, out


def test_history_goes_back_to_the_model_verbatim():
    """Replies are shown HTML-escaped; the next request must carry the model's own text, not entities."""
    from clients.webui import to_messages

    history = [{"role": "user", "content": "a <b>"}, {"role": "assistant", "content": "&lt;|action_start|&gt; 3 &lt; 5"}]
    msgs = to_messages("next", history, "")
    assert msgs[1] == {"role": "assistant", "content": "<|action_start|> 3 < 5"}
    assert msgs[0]["content"] == "a <b>" and msgs[-1] == {"role": "user", "content": "next"}


def test_listen_address_is_local_unless_in_a_pod_or_told(monkeypatch):
    """Kubernetes' own env decides, not /.dockerenv (a plain `docker run` stays on 127.0.0.1); flags and env win."""
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert listen_host(None) == "127.0.0.1"  # this test machine may well be a container: still local
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert listen_host(None) == "0.0.0.0"
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.2")
    assert listen_host(None) == "127.0.0.2" and listen_host("::1") == "::1"


def test_quantization_is_labelled_as_configured(monkeypatch):
    """lmdeploy's API does not report its quantization: the page says where its words come from."""
    assert configured_label(load_settings("seed")) == "configured profile `seed`"
    assert configured_label(None) == "configured"
    monkeypatch.setenv("KIT_SERVING_QUANT_POLICY", "4")
    assert configured_label(load_settings("seed")) == "configured (this pod's env)"
