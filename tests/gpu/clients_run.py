"""Run every kit client against a live api_server through a recording proxy (GPU benchmark step).

The clients (clients.chat one-shot, clients.gpu_report, clients.funcall with tool_choice required,
clients.webui's HTTP page) talk to a local proxy that forwards to the server and saves each
exchange (request, status, headers, body; streamed bodies verbatim) as one JSON file: these are the
real lmdeploy replies the CPU tests replay. The proxy is tests/support/replay.py's when it offers
`RecordingProxy(upstream, out_dir)` with start()/stop()/url, else the small stdlib one below.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger("bench.clients")
FUNCALL_PROMPT_NOTE = "tool_choice=required: the internlm parser constrains a random-weight model to a schema-valid tool call"


class StdlibRecordingProxy:
    """Forward every request to `upstream`; write NNN-METHOD-path.json per exchange into `out_dir`."""

    def __init__(self, upstream: str, out_dir: Path, port: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.counter = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug(fmt, *args)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "connection", "accept-encoding"}}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                self.send_response(resp.status)
                streamed = "text/event-stream" in (resp.getheader("Content-Type") or "")
                for k, v in resp.getheaders():
                    if k.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(k, v)
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                chunks: list[bytes] = []
                while data := (resp.read1(65536) if streamed else resp.read(65536)):
                    chunks.append(data)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                conn.close()
                proxy.save(self.command, self.path, body, resp.status, dict(resp.getheaders()), b"".join(chunks))
                self.close_connection = True

            do_GET = do_POST = do_DELETE = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def save(self, method: str, path: str, req: bytes, status: int, headers: dict[str, str], body: bytes) -> None:
        with self.lock:
            self.counter += 1
            n = self.counter
        slug = re.sub(r"[^A-Za-z0-9]+", "-", path.split("?")[0]).strip("-") or "root"
        text = body.decode("utf-8", "replace")
        try:
            req_obj: Any = json.loads(req) if req else None
        except ValueError:
            req_obj = req.decode("utf-8", "replace")
        record = {
            "recorded_from": "lmdeploy api_server (GPU benchmark, tests/gpu/clients_run.py)",
            "request": {"method": method, "path": path, "json": req_obj},
            "response": {"status": status, "content_type": headers.get("content-type") or headers.get("Content-Type"), "body": text},
        }
        (self.out_dir / f"{n:03d}-{method}-{slug}.json").write_text(json.dumps(record, indent=2) + "\n")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_proxy(upstream: str, out_dir: Path):
    try:
        from tests.support.replay import RecordingProxy  # the clients engineer's, when present

        proxy = RecordingProxy(upstream, out_dir)
        log.info("recording through tests.support.replay.RecordingProxy")
        return proxy
    except (ImportError, TypeError, AttributeError) as exc:
        log.info("tests.support.replay.RecordingProxy unavailable (%s); using the stdlib recording proxy", exc)
        return StdlibRecordingProxy(upstream, out_dir)


def _run(name: str, cmd: list[str], env: dict[str, str], logs: Path, timeout: float = 240) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        rc, out, err = cp.returncode, cp.stdout, cp.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = 124, str(exc.stdout or ""), f"timed out after {timeout} s"
    (logs / f"client-{name}.log").write_text(f"$ {' '.join(cmd)}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    res: dict[str, Any] = {
        "cmd": " ".join(cmd[2:]),
        "rc": rc,
        "seconds": round(time.perf_counter() - t0, 2),
        "status": "ok" if rc == 0 else "failed",
    }
    try:
        res["json"] = json.loads(out)
    except ValueError:
        res["stdout"] = out[-3000:]
    if rc != 0:
        res["stderr_tail"] = err.strip().splitlines()[-3:] if err.strip() else []
    return res


def _webui(env: dict[str, str], logs: Path, port: int = 6006, timeout: float = 120) -> dict[str, Any]:
    """Start the Gradio app, GET its page, stop it."""
    logf = (logs / "client-webui.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "clients.webui"], stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0 = time.perf_counter()
    res: dict[str, Any] = {"cmd": "-m clients.webui", "status": "failed"}
    try:
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                res["error"] = f"webui exited with {proc.returncode}"
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode("utf-8", "replace")
                res.update(
                    status="ok" if r.status == 200 else "failed", http_status=r.status, seconds_to_page=round(time.perf_counter() - t0, 2)
                )
                res["page_mentions_gradio"] = "gradio" in page.lower()
                break
            except OSError:
                time.sleep(1)
        else:
            res["error"] = f"no page on port {port} after {timeout} s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
        logf.close()
    if res["status"] != "ok":
        res["log_tail"] = (logs / "client-webui.log").read_text(errors="replace").strip().splitlines()[-3:]
    return res


def run_clients(upstream: str, record_dir: Path, logs: Path, env: dict[str, str], served_model: str) -> dict[str, Any]:
    proxy = make_proxy(upstream, record_dir)
    proxy.start()
    try:
        cenv = {
            **env,
            "OPENAI_BASE_URL": f"{proxy.url}/v1",
            "OPENAI_API_KEY": env.get("OPENAI_API_KEY", "none"),
            "KIT_API_BASE": f"{proxy.url}/v1",
        }
        py = [sys.executable, "-m"]
        out: dict[str, Any] = {"proxy": type(proxy).__name__, "served_model": served_model}
        out["chat"] = _run("chat", py + ["clients.chat", "--prompt", "Say hello in five words.", "--max-tokens", "64"], cenv, logs)
        out["gpu_report"] = _run("gpu_report", py + ["clients.gpu_report", "--json"], cenv, logs)
        out["funcall"] = _run("funcall", py + ["clients.funcall", "--tool-choice", "required", "--json"], cenv, logs)
        out["funcall"]["note"] = FUNCALL_PROMPT_NOTE
        out["webui"] = _webui(cenv, logs)
    finally:
        proxy.stop()
    out["recorded_files"] = sorted(p.name for p in Path(record_dir).glob("*.json"))
    return out
