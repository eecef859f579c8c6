"""A small OpenAI-style streaming server for the harness's CPU tests (not lmdeploy: it only speaks
the wire format the load generator reads, with chunked SSE like uvicorn). Each streamed request emits
`max_tokens` chunks `delay_s` apart after `ttft_s`; prompt_tokens = UTF-8 bytes of the prompt + 10
(like the byte-level test tokenizer plus a template). `fail_every` answers every Nth request 500."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field


@dataclass
class FakeServer:
    ttft_s: float = 0.02
    delay_s: float = 0.002
    fail_every: int = 0
    port: int = 0
    requests: list[dict] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        payload = json.loads(body) if body else {}
        self.requests.append({"method": method, "path": path, "json": payload})
        n = len(self.requests)

        async def send(status: int, data: bytes, ctype: str = "application/json") -> None:
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data
            )
            await writer.drain()

        if path == "/health":
            await send(200, b"{}")
        elif path == "/v1/models":
            await send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())
        elif self.fail_every and n % self.fail_every == 0:
            await send(500, b'{"error": "boom"}')
        elif path == "/v1/chat/completions":
            prompt = payload["messages"][-1]["content"]
            usage = {"prompt_tokens": len(prompt.encode()) + 10, "completion_tokens": payload.get("max_tokens", 16)}
            if not payload.get("stream"):
                await send(200, json.dumps({"choices": [{"message": {"content": "x"}}], "usage": usage}).encode())
            else:
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                )
                await asyncio.sleep(self.ttft_s)
                for i in range(payload.get("max_tokens", 16)):
                    event = {"choices": [{"index": 0, "delta": {"content": "t"}, "finish_reason": None}], "usage": None}
                    self._chunk(writer, b"data: " + json.dumps(event).encode() + b"\n\n")
                    await writer.drain()
                    if i + 1 < payload["max_tokens"]:
                        await asyncio.sleep(self.delay_s)
                self._chunk(writer, b"data: " + json.dumps({"choices": [], "usage": usage}, separators=(",", ":")).encode() + b"\n\n")
                self._chunk(writer, b"data: [DONE]\n\n")
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        else:
            await send(404, b"{}")
        writer.close()

    @staticmethod
    def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    def start(self) -> str:
        """Serve on a background thread's event loop; returns the base URL."""
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
