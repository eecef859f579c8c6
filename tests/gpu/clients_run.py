"""Run every kit client against a live api_server through a recording proxy (GPU benchmark step).

The clients (clients.chat one-shot, clients.gpu_report, clients.funcall with tool_choice required,
clients.webui's HTTP page) talk to tests.support.replay.Recorder, which forwards to the server and
saves each exchange (request, status, body or the SSE events) as one JSON file in the format the
CPU tests replay.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.gpu.webui_live import page
from tests.support.replay import Recorder

RECORDED_FROM = "lmdeploy api_server (GPU benchmark, tests/gpu/clients_run.py)"
FUNCALL_PROMPT_NOTE = "tool_choice=required: the internlm parser constrains a random-weight model to a schema-valid tool call"


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


def _webui(env: dict[str, str], logs: Path) -> dict[str, Any]:
    """Start the Gradio app (tests.gpu.webui_live.page), GET its page, stop it."""
    res: dict[str, Any] = {"cmd": "-m clients.webui", "status": "failed"}
    log_path = logs / "client-webui.log"
    t0 = time.perf_counter()
    try:
        with page(env["OPENAI_BASE_URL"], env["OPENAI_API_KEY"], log_path, env) as url:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = r.read().decode("utf-8", "replace")
            res.update(
                status="ok" if r.status == 200 else "failed", http_status=r.status, seconds_to_page=round(time.perf_counter() - t0, 2)
            )
            res["page_mentions_gradio"] = "gradio" in body.lower()
    except (RuntimeError, OSError) as exc:
        res["error"] = str(exc)
    if res["status"] != "ok":
        res["log_tail"] = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    return res


def run_clients(upstream: str, record_dir: Path, logs: Path, env: dict[str, str], served_model: str) -> dict[str, Any]:
    with Recorder(upstream, record_dir, source=RECORDED_FROM) as proxy:
        cenv = {
            **env,
            "OPENAI_BASE_URL": f"{proxy.root_url}/v1",
            "OPENAI_API_KEY": env.get("OPENAI_API_KEY", "none"),
            "KIT_API_BASE": f"{proxy.root_url}/v1",
        }
        py = [sys.executable, "-m"]
        out: dict[str, Any] = {"proxy": type(proxy).__name__, "served_model": served_model}
        out["chat"] = _run("chat", py + ["clients.chat", "--prompt", "Say hello in five words.", "--max-tokens", "64"], cenv, logs)
        out["gpu_report"] = _run("gpu_report", py + ["clients.gpu_report", "--json"], cenv, logs)
        out["funcall"] = _run("funcall", py + ["clients.funcall", "--tool-choice", "required", "--json"], cenv, logs)
        out["funcall"]["note"] = FUNCALL_PROMPT_NOTE
        out["webui"] = _webui(cenv, logs)
    out["recorded_files"] = sorted(p.name for p in Path(record_dir).glob("*.json"))
    return out
