"""The recorder: a proxy in front of a real api_server that saves every exchange as JSON (the API key never)."""

from __future__ import annotations

import datetime as dt
import http.client
import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.replay.exchanges import request_key
from tests.support.replay.server import _LocalServer


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
