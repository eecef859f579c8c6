"""Live collection: a results-shaped dict from the running service and this host.

The server is reached through the clients' own connection code (clients._common: httpx for
/health, the openai SDK for /v1/models); chat, the function-call check and the GPU report run as
the user runs them (`python -m clients.<name>`), each recorded with its exit code, so a failure
lands in the report instead of stopping it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from clients._common import Connection, connect
from kit.exitcodes import FAILED
from kit.settings import Settings

CHAT_PROMPT = "Introduce yourself in one sentence."
CLIENT_TIMEOUT_S = 300


def run_client(module: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """One client run: command, exit code, its JSON (or stdout), and the stderr tail when it failed."""
    cmd = [sys.executable, "-m", module, *args]
    shown = " ".join(cmd[2:])
    start = time.monotonic()
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CLIENT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"cmd": shown, "rc": FAILED, "status": "failed", "stderr_tail": [str(exc)]}
    res: dict[str, Any] = {"cmd": shown, "rc": cp.returncode, "seconds": round(time.monotonic() - start, 2)}
    res["status"] = "ok" if cp.returncode == 0 else "failed"
    try:
        res["json"] = json.loads(cp.stdout)
    except ValueError:
        res["stdout"] = cp.stdout[-3000:]
    if cp.returncode:
        res["stderr_tail"] = cp.stderr.strip().splitlines()[-3:]
    return res


def _dir_bytes(path: str) -> int | None:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else None


def collect_live(conn: Connection, s: Settings) -> dict[str, Any]:
    """Raises clients._common.ClientError (one line) when the server cannot be reached."""
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _, model = connect(conn)
    env = {**os.environ, "OPENAI_BASE_URL": conn.base_url, "PROFILE": s.profile, "KIT_MODEL": model}
    knobs = ["--timeout", f"{conn.timeout:g}", "--retries", str(conn.retries)]
    if conn.api_key:
        env["OPENAI_API_KEY"] = conn.api_key  # the key travels in the environment, never in argv
    clients = {
        "served_model": model,
        "server": f"live ({conn.base_url})",
        "proxy": "no proxy (live)",
        "chat": run_client("clients.chat", ["--prompt", CHAT_PROMPT, *knobs], env),
        "funcall": run_client("clients.funcall", ["--json", *knobs], env),
        "gpu_report": run_client("clients.gpu_report", ["--json"], env),
    }
    sizes = {k: n for k, path in (("fp16", s.fp16_path), ("w4a16", s.quantized_path)) if (n := _dir_bytes(path))}
    return {
        "source": f"live service {conn.base_url} (profile {s.profile})",
        "kind": "live",
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {"backend": s.serving.backend, "lmdeploy": s.versions.lmdeploy},
        "sizes_bytes": sizes,
        "clients": clients,
    }
