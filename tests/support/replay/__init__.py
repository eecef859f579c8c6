"""Replay and record lmdeploy api_server exchanges (stdlib only; localhost by default).

Replay (tests): `ReplayServer(exchanges)` answers from recorded exchanges, SSE streams included.
Record (GPU machine): a proxy in front of a real api_server that saves every exchange as JSON:

    python -m tests.support.replay record --upstream http://127.0.0.1:23333 --out DIR --port 23334
    python -m tests.support.replay session --upstream http://127.0.0.1:23333 --out DIR [--api-key K]

`session` starts the recorder itself and runs every client scenario the CPU tests replay
(SCENARIOS below), so the recordings match the tests' requests. One exchange per file:

    {"source": "...", "request": {"method", "path", "auth": "bearer"|"none", "body"},
     "response": {"status", "content_type", "body"} | {"status", "content_type", "events": [data, ...]}}

A request matches a recorded one by method, path and body, ignoring sampling knobs and the model
name (IGNORED_FIELDS). The API key is never written: only whether one was sent.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import http.client
import io
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from typing_extensions import Self

IGNORED_FIELDS = frozenset(
    {"model", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stream_options", "user"}
)
PLACEHOLDER = "hand-written placeholder, to be replaced by a recording"
RECORDED_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "recorded"

# lmdeploy's own answers when nothing recorded fits (shapes from lmdeploy/serve/openai/errors.py).
_UNAUTHORIZED = {"message": "Unauthorized.", "type": "authentication_error", "code": 401, "param": None, "object": "error"}
_LOADING = {"status": "initializing", "message": "Engine health monitor is starting."}

# What `session` runs and the CPU tests replay: (name, client module, argv, stdin).
SCENARIOS: list[tuple[str, str, list[str], str | None]] = [
    ("chat-oneshot", "clients.chat", ["--prompt", "Say hello in one short sentence.", "--max-tokens", "32", "--temperature", "0"], None),
    ("chat-multiturn", "clients.chat", ["--max-tokens", "32", "--temperature", "0"], "My name is Ada.\nWhat is my name?\n"),
    ("funcall-required", "clients.funcall", ["--tool-choice", "required", "--max-steps", "4", "--json"], None),
    ("funcall-auto", "clients.funcall", ["--tool-choice", "auto", "--max-steps", "4", "--json"], None),
]


def request_key(method: str, path: str, body: Any) -> str:
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    return json.dumps([method.upper(), path.split("?")[0], body], sort_keys=True, separators=(",", ":"))


def load_exchanges(*paths: Path) -> list[dict[str, Any]]:
    """Every *.json exchange under the given files/directories, in file-name order."""
    out: list[dict[str, Any]] = []
    for path in paths:
        files = sorted(Path(path).rglob("*.json")) if Path(path).is_dir() else [Path(path)]
        for f in files:
            data = json.loads(f.read_text())
            if "request" in data and "response" in data:
                data.setdefault("file", str(f))
                out.append(data)
    return out


def chat_exchanges(exchanges: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in exchanges if e["request"]["path"] == "/v1/chat/completions" and e["response"]["status"] == 200]


class _LocalServer:
    """A threaded HTTP server in the background; `with` starts and stops it."""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def _listen(self, host: str, port: int) -> None:
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def root_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class ReplayServer(_LocalServer):
    """Threaded HTTP server on 127.0.0.1 answering from exchanges.

    POSTs match by request_key (recorded sessions); with `script`, POSTs get the script's answers in
    order whatever the body, the last one repeating (scripted scenarios such as an endless tool loop).
    api_key: /v1 routes want `Authorization: Bearer <key>` (like `--api-keys`). loading: /health is 503.
    """

    def __init__(
        self,
        exchanges: list[dict[str, Any]],
        *,
        script: list[dict[str, Any]] | None = None,
        api_key: str | None = None,
        loading: bool = False,
        event_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.exchanges = exchanges
        self.api_key = api_key
        self.loading = loading
        self.event_delay = event_delay
        self.requests: list[dict[str, Any]] = []
        self.misses: list[str] = []
        self._sequence = script
        self._seq_pos = 0
        self._lock = threading.Lock()
        self._listen(host, port)

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def _find(self, method: str, path: str, body: Any, authorized: bool) -> dict[str, Any] | None:
        by_status = [e for e in self.exchanges if e["request"]["path"] == path and e["request"]["method"] == method]
        if path == "/health":
            want = 503 if self.loading else 200
            found = next((e for e in by_status if e["response"]["status"] == want), None)
            return found or _synthetic(want, _LOADING if self.loading else {"status": "healthy", "message": "Engine is healthy."})
        if not authorized:
            found = next((e for e in self.exchanges if e["response"]["status"] == 401), None)
            return found or _synthetic(401, _UNAUTHORIZED)
        if self._sequence is not None and method == "POST":
            with self._lock:
                if not self._sequence:
                    return None
                found = self._sequence[min(self._seq_pos, len(self._sequence) - 1)]
                self._seq_pos += 1
                return found
        key = request_key(method, path, body)
        # 401s answer only unauthorized requests (above); GETs such as /v1/models match on the path.
        found = [e for e in by_status if e["response"]["status"] != 401 and request_key(method, path, e["request"].get("body")) == key]
        return found[0] if found else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, fmt: str, *args: Any) -> None:  # keep test output quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                path = self.path.split("?")[0]
                auth = self.headers.get("Authorization", "")
                authorized = server.api_key is None or not path.startswith("/v1") or auth == f"Bearer {server.api_key}"
                server.requests.append({"method": self.command, "path": path, "body": body, "authorized": authorized})
                found = server._find(self.command, path, body, authorized)
                if found is None:
                    server.misses.append(request_key(self.command, path, body))
                    found = _synthetic(404, {"error": {"message": f"replay: nothing recorded for {self.command} {path} with this body"}})
                _write_response(self, found["response"], server.event_delay)

            do_GET = do_POST = _serve  # noqa: N815

        return Handler


def _synthetic(status: int, body: Any) -> dict[str, Any]:
    return {
        "source": "replay server default",
        "request": {},
        "response": {"status": status, "content_type": "application/json", "body": body},
    }


def _write_response(handler: BaseHTTPRequestHandler, resp: dict[str, Any], event_delay: float) -> None:
    handler.send_response(resp["status"])
    handler.send_header("Content-Type", resp.get("content_type", "application/json"))
    if "events" in resp:
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        for data in resp["events"]:
            handler.wfile.write(f"data: {data}\n\n".encode())
            handler.wfile.flush()
            if event_delay:
                time.sleep(event_delay)
        return
    payload = resp.get("text", "").encode() if "text" in resp else json.dumps(resp.get("body")).encode()
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


# ---------------------------------------------------------------------------------------------- scripting


def streamed_text(exchange: dict[str, Any]) -> str:
    """The assistant text a recorded SSE answer carries."""
    parts = []
    for data in exchange["response"]["events"]:
        if data == "[DONE]":
            continue
        for choice in json.loads(data).get("choices", []):
            parts.append(choice.get("delta", {}).get("content") or "")
    return "".join(parts)


def find_chat(exchanges: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """First recorded chat exchange whose request body has these values (messages matched on the last one)."""
    for e in chat_exchanges(exchanges):
        body = e["request"]["body"]
        last = body["messages"][-1]["content"] if "last" in match else None
        if all(body.get(k) == v for k, v in match.items() if k != "last") and ("last" not in match or last == match["last"]):
            return e
    raise AssertionError(f"no recorded chat exchange with {match}")


def tool_template(exchanges: list[dict[str, Any]]) -> dict[str, Any]:
    """A recorded non-streaming tool-call answer, the shape scripted scenarios are cut from."""
    for e in chat_exchanges(exchanges):
        body = e["response"].get("body") or {}
        if body.get("choices") and body["choices"][0]["message"].get("tool_calls"):
            return e
    raise AssertionError("no recorded tool-call answer")


def scripted(template: dict[str, Any], *, calls: list[tuple[str, Any]] | None = None, content: str | None = None) -> dict[str, Any]:
    """A copy of the recorded answer with other tool calls (name, arguments) or a plain text answer."""
    e = copy.deepcopy(template)
    e["source"] = f"scripted from {template.get('file', 'a recorded exchange')}"
    msg = e["response"]["body"]["choices"][0]["message"]
    base = msg["tool_calls"][0]
    if calls:
        msg["tool_calls"] = []
        for i, (name, args) in enumerate(calls):
            tc = copy.deepcopy(base)
            tc["id"] = f"{base['id']}-{i}"
            tc["function"] = {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}
            msg["tool_calls"].append(tc)
        msg["content"] = content
        e["response"]["body"]["choices"][0]["finish_reason"] = "tool_calls"
    else:
        msg["tool_calls"] = None
        msg["content"] = content
        e["response"]["body"]["choices"][0]["finish_reason"] = "stop"
    return e


# ---------------------------------------------------------------------------------------------- record


class Recorder(_LocalServer):
    """Proxy to a real api_server that saves each exchange (streams forwarded as they arrive)."""

    def __init__(self, upstream: str, out: Path, *, port: int = 0, host: str = "127.0.0.1", source: str = "") -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.source = source or f"recorded from a real lmdeploy api_server at {upstream}"
        self.saved: list[Path] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._listen(host, port)

    def save(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        # GETs (health polls, /v1/models) and repeated requests are kept once per status.
        dedupe = request_key(request["method"], request["path"], request["body"] if request["method"] != "GET" else None)
        dedupe += f"|{response['status']}|{request['auth']}"
        with self._lock:
            if dedupe in self._seen:
                return
            self._seen.add(dedupe)
            slug = re.sub(r"[^a-z0-9]+", "-", request["path"].lower()).strip("-") or "root"
            path = self.out / f"{len(self.saved):04d}-{request['method'].lower()}-{slug}-{response['status']}.json"
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            exchange = {"source": self.source, "recorded_at": stamp, "request": request, "response": response}
            path.write_text(json.dumps(exchange, indent=2, ensure_ascii=False) + "\n")
            self.saved.append(path)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() in {"authorization", "content-type", "accept"}}
                conn = http.client.HTTPConnection(*rec.upstream, timeout=600)
                try:
                    conn.request(self.command, self.path, body=raw or None, headers=headers)
                    up = conn.getresponse()
                    ctype = up.getheader("Content-Type", "application/json")
                    self.send_response(up.status)
                    self.send_header("Content-Type", ctype)
                    response: dict[str, Any] = {"status": up.status, "content_type": ctype.split(";")[0]}
                    if "text/event-stream" in ctype:
                        self.end_headers()
                        response["events"] = list(_relay_sse(up, self.wfile))
                    else:
                        data = up.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        try:
                            response["body"] = json.loads(data) if data else None
                        except ValueError:
                            response["text"] = data.decode("utf-8", "replace")
                except OSError as exc:
                    self.send_error(502, f"upstream {rec.upstream}: {exc}")
                    return
                finally:
                    conn.close()
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                auth = "bearer" if self.headers.get("Authorization", "").lower().startswith("bearer ") else "none"
                rec.save({"method": self.command, "path": self.path, "auth": auth, "body": body}, response)

            do_GET = do_POST = _proxy  # noqa: N815

        return Handler


def _relay_sse(up: http.client.HTTPResponse, wfile: io.BufferedIOBase) -> Iterator[str]:
    """Forward an SSE stream line by line; yield each event's data."""
    for line in iter(up.readline, b""):
        wfile.write(line)
        wfile.flush()
        text = line.decode("utf-8").rstrip("\r\n")
        if text.startswith("data:"):
            yield text[5:].lstrip(" ")


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


if __name__ == "__main__":
    sys.exit(main())
