"""The replay server (answers from recorded exchanges, SSE streams included) and the background-server base it shares with the recorder."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tests.support.replay.exchanges import request_key

if TYPE_CHECKING:
    from typing_extensions import Self

# lmdeploy's own answers when nothing recorded fits (shapes from lmdeploy/serve/openai/errors.py).
_UNAUTHORIZED = {"message": "Unauthorized.", "type": "authentication_error", "code": 401, "param": None, "object": "error"}
_LOADING = {"status": "initializing", "message": "Engine health monitor is starting."}


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
