"""Replay and record lmdeploy api_server exchanges (stdlib only; localhost by default).

The command line, `python -m tests.support.replay record|session|serve`: record on the GPU machine
(`session` runs SCENARIOS through the recorder), replay by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.replay.exchanges import RECORDED_DIR, load_exchanges
from tests.support.replay.recorder import Recorder
from tests.support.replay.server import ReplayServer

# What `session` runs and the CPU tests replay: (name, client module, argv, stdin).
SCENARIOS: list[tuple[str, str, list[str], str | None]] = [
    ("chat-oneshot", "clients.chat", ["--prompt", "Say hello in one short sentence.", "--max-tokens", "32", "--temperature", "0"], None),
    ("chat-multiturn", "clients.chat", ["--max-tokens", "32", "--temperature", "0"], "My name is Ada.\nWhat is my name?\n"),
    ("funcall-required", "clients.funcall", ["--tool-choice", "required", "--max-steps", "4", "--json"], None),
    ("funcall-auto", "clients.funcall", ["--tool-choice", "auto", "--max-steps", "4", "--json"], None),
]


def run_session(upstream: str, out: Path, api_key: str | None, source: str) -> int:
    """Run SCENARIOS through a recorder; a wrong key is tried too when the server has one."""
    import contextlib as cl
    import importlib
    import os

    failures = 0
    saved_env = {k: os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    with Recorder(upstream, out, source=source) as rec:
        os.environ["OPENAI_BASE_URL"] = rec.root_url + "/v1"
        if api_key:
            os.environ["OPENAI_API_KEY"] = api_key
        runs = list(SCENARIOS)
        if api_key:
            runs.append(("chat-bad-key", "clients.chat", ["--prompt", "hi", "--api-key", "wrong-key-on-purpose"], None))
        try:
            for name, module, argv, stdin in runs:
                out_buf = io.StringIO()
                old_stdin = sys.stdin
                sys.stdin = io.StringIO(stdin or "")
                try:
                    with cl.redirect_stdout(out_buf):
                        rc = importlib.import_module(module).main(argv)
                finally:
                    sys.stdin = old_stdin
                print(f"== {name}: {module} {' '.join(argv)} -> exit {rc}\n{out_buf.getvalue().rstrip()}")
                failures += rc not in (0, 1)
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        print(f"saved {len(rec.saved)} exchanges under {out}")
    return 1 if failures else 0


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.support.replay", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="proxy to a real api_server, saving each exchange")
    r.add_argument("--upstream", required=True, help="api_server root, e.g. http://127.0.0.1:23333")
    r.add_argument("--out", required=True, type=Path, help="directory for the exchange files")
    r.add_argument("--port", type=int, default=23334, help="port the proxy listens on (default %(default)s)")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--source", default="", help="provenance written into each file (GPU, lmdeploy version, model)")
    s = sub.add_parser("session", help="record every client scenario the CPU tests replay")
    s.add_argument("--upstream", required=True)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--api-key", help="the server's --api-keys value (also tries a wrong key)")
    s.add_argument("--source", default="")
    v = sub.add_parser("serve", help="replay recorded exchanges (for trying clients by hand)")
    v.add_argument("paths", nargs="*", type=Path, default=[RECORDED_DIR])
    v.add_argument("--port", type=int, default=23333)
    v.add_argument("--api-key")
    args = p.parse_args(argv)
    if args.cmd in ("record", "serve"):
        signal.signal(signal.SIGTERM, _stop)  # `kill PID` ends as cleanly as Ctrl-C (background jobs ignore SIGINT)
    if args.cmd == "record":
        with Recorder(args.upstream, args.out, port=args.port, host=args.host, source=args.source) as rec:
            print(f"recording {args.upstream} through {rec.root_url} into {args.out}; Ctrl-C stops", file=sys.stderr)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        print(f"saved {len(rec.saved)} exchanges", file=sys.stderr)
        return 0
    if args.cmd == "session":
        return run_session(args.upstream, args.out, args.api_key, args.source)
    with ReplayServer(load_exchanges(*args.paths), api_key=args.api_key, port=args.port) as srv:
        print(f"replaying on {srv.base_url}; Ctrl-C stops", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0
