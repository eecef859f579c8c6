"""Run the Gradio page (clients.webui) against a live lmdeploy api_server (GPU machine).

    OPENAI_API_KEY=KEY python -m tests.gpu.webui_live --upstream http://127.0.0.1:23333 --out DIR [--server-pid PID]

Page A talks to the server through tests.support.replay.Recorder, so what the server streamed is
saved beside what the page showed; page B talks to it directly with a wrong key. Checks: the page
is served, /status names the served model and quantization, /chat streams several updates whose
final text (unescaped) is the server's stream verbatim, the request carries the page's settings,
the wrong key shows the 401 in the chat without echoing the key, neither page logs the key, and
with --server-pid a stopped server shows "cannot reach". Writes DIR/webui-live.json and
DIR/exchanges/; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kit.settings import load_settings
from tests.support.net import free_port, wait_for_page
from tests.support.replay import Recorder, chat_exchanges, load_exchanges, streamed_text

PROMPT = "Say hello in five words."
MAX_TOKENS = 48


@contextlib.contextmanager
def page(base_url: str, api_key: str, log_path: Path, extra_env: dict[str, str]) -> Iterator[str]:
    """`python -m clients.webui` on a free port, as `make gradio` starts it; yields the page URL."""
    port = free_port()
    env = {**os.environ, **extra_env, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": api_key, "GRADIO_ANALYTICS_ENABLED": "False"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clients.webui", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            if wait_for_page(url, lambda: proc.poll() is None, 120) is None:
                raise RuntimeError(f"page never came up; see {log_path}")
            yield url
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class Checks:
    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def check(self, name: str, ok: bool, **detail: Any) -> None:
        self.results.append({"check": name, "pass": bool(ok), **detail})
        print(f"{'PASS' if ok else 'FAIL'} {name}: {json.dumps(detail, ensure_ascii=False)[:400]}", flush=True)

    @property
    def failed(self) -> int:
        return sum(not r["pass"] for r in self.results)


def _served_model(upstream: str, api_key: str) -> str:
    req = urllib.request.Request(f"{upstream}/v1/models", headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["data"][0]["id"]


def _wait_down(upstream: str, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{upstream}/health", timeout=2).close()
        except OSError:
            return True
        time.sleep(1)
    return False


def run(upstream: str, api_key: str, out: Path, server_pid: int | None, source: str = "") -> int:
    from gradio_client import Client

    out.mkdir(parents=True, exist_ok=True)
    c = Checks()
    model = _served_model(upstream, api_key)
    pod_env = {"PROFILE": os.environ.get("PROFILE", "fc"), "KIT_SERVING_BACKEND": "pytorch"}
    rec_dir = out / "exchanges"
    with Recorder(upstream, rec_dir, source=source or f"clients.webui against a live lmdeploy api_server at {upstream}") as rec:
        with page(rec.root_url + "/v1", api_key, out / "webui-a.log", pod_env) as url_a:
            t0 = time.perf_counter()
            index = urllib.request.urlopen(url_a, timeout=10)
            body = index.read().decode("utf-8", "replace")
            title = load_settings(pod_env["PROFILE"]).gradio.title
            c.check("page served", index.status == 200 and title in body, http_status=index.status, bytes=len(body), title=title)

            client = Client(url_a, verbose=False)
            status = client.predict(api_name="/status")
            c.check("status names the served model", f"`{model}`" in status, status=status, served_model=model)
            c.check("status shows quantization", "quant_policy" in status and "pytorch backend" in status, status=status)

            job = client.submit(PROMPT, "", 0.0, MAX_TOKENS, api_name="/chat")
            reply = job.result(timeout=120)
            updates = job.outputs()
            chat_s = round(time.perf_counter() - t0, 2)
    chats = [e for e in chat_exchanges(load_exchanges(rec_dir)) if "events" in e["response"]]
    server_text = streamed_text(chats[-1]) if chats else None
    c.check(
        "chat streams from the server",
        len(updates) > 1 and bool(reply) and "Server error" not in reply,
        updates=len(updates),
        reply_chars=len(reply or ""),
        seconds_incl_page=chat_s,
    )
    c.check(
        "chat shows the server's stream verbatim (HTML-escaped)",
        server_text is not None and html.unescape(reply) == server_text,
        server_events=len(chats[-1]["response"]["events"]) if chats else 0,
        reply_head=(reply or "")[:120],
    )
    sent = chats[-1]["request"]["body"] if chats else {}
    c.check(
        "request carries the page's settings",
        sent.get("model") == model
        and sent.get("stream") is True
        and sent.get("max_tokens") == MAX_TOKENS
        and sent.get("temperature") == 0.0
        and sent.get("messages", [{}])[-1].get("content") == PROMPT
        and chats[-1]["request"]["auth"] == "bearer",
        request={k: sent.get(k) for k in ("model", "stream", "max_tokens", "temperature")},
    )

    wrong = "wrong-key-" + os.urandom(4).hex()
    with page(upstream + "/v1", wrong, out / "webui-b.log", pod_env) as url_b:
        client_b = Client(url_b, verbose=False)
        err = client_b.predict(PROMPT, "", 0.0, 16, api_name="/chat")
        status_b = client_b.predict(api_name="/status")
        c.check("wrong key shows the 401 in the chat", "Server error" in err and "rejected the API key (401)" in err, reply=err)
        c.check("wrong key is not echoed", wrong not in err and wrong not in status_b, status=status_b)
        if server_pid:
            os.kill(server_pid, signal.SIGTERM)
            down = _wait_down(upstream)
            gone = client_b.predict(PROMPT, "", 0.0, 16, api_name="/chat")
            status_gone = client_b.predict(api_name="/status")
            c.check(
                "stopped server shows 'cannot reach'",
                down and "cannot reach the server" in gone and status_gone.startswith("⚠️"),
                reply=gone,
                status=status_gone,
            )
    logs = "".join((out / f"webui-{x}.log").read_text(errors="replace") for x in "ab")
    c.check("no API key in the page logs", api_key not in logs and wrong not in logs, log_bytes=len(logs))

    verdict = {
        "pass": c.failed == 0,
        "served_model": model,
        "upstream": upstream,
        "prompt": PROMPT,
        "reply": reply,
        "checks": c.results,
    }
    (out / "webui-live.json").write_text(json.dumps(verdict, indent=2, ensure_ascii=False) + "\n")
    print(f"{len(c.results) - c.failed}/{len(c.results)} checks passed")
    return 1 if c.failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.webui_live", description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="api_server root, e.g. http://127.0.0.1:23333")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="the server's --api-keys value (default $OPENAI_API_KEY)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--server-pid", type=int, help="stop this server at the end to check the unreachable-server message")
    p.add_argument("--source", default="", help="provenance written into each recorded exchange (GPU, lmdeploy version, model)")
    args = p.parse_args(argv)
    if not args.api_key:
        p.error("no API key: pass --api-key or set OPENAI_API_KEY to the server's --api-keys value")
    return run(args.upstream.rstrip("/"), args.api_key, args.out, args.server_pid, args.source)


if __name__ == "__main__":
    sys.exit(main())
