"""A small, dependency-free load generator for an OpenAI-compatible server (lmdeploy api_server).

Stdlib asyncio only (the GPU test machine has no guaranteed HTTP client), HTTP/1.1 with chunked
transfer decoding and Server-Sent Events parsing. Each request records when it was sent, when its
first streamed choice arrived (time to first token), when it ended and the token counts the server
reports (`stream_options.include_usage`). `ignore_eos` + `max_tokens` make random-weight models
produce full-length outputs, so every config decodes the same number of tokens.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec "
    "romeo sierra tango uniform victor whiskey xray yankee zulu river mountain cloud stone forest ocean desert "
    "garden bridge window market signal engine planet harbor lantern meadow circuit "
).split()


@dataclass
class RequestResult:
    ok: bool
    t_start: float
    t_first: float | None = None
    t_end: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int = 0
    chunks: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.t_first is None else self.t_first - self.t_start


@dataclass
class LoadStats:
    """Summary of a load run; every time in seconds, rates in tokens/s."""

    requests: int
    errors: int
    concurrency: int
    duration_s: float
    output_tokens: int
    prompt_tokens: int
    total_tok_s: float
    steady_tok_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    per_stream_tok_s_p50: float | None
    first_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class HTTPError(Exception):
    pass


def unique_prompt(index: int, words: int, seed: int = 0) -> str:
    """A prompt whose first tokens differ per request (no prefix-cache hits) of about `words` words."""
    rng = random.Random(seed * 1_000_003 + index)
    body = " ".join(rng.choice(_WORDS) for _ in range(max(words, 1)))
    return f"[{seed}-{index}-{rng.randrange(10**9)}] {body}"


async def _open(url: str, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float):
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 22), timeout)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "Accept: */*"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    if not status_line:
        writer.close()
        raise HTTPError("connection closed before a status line")
    status = int(status_line.split()[1])
    resp_headers: dict[str, str] = {}
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        resp_headers[k.strip().lower()] = v.strip()
    return reader, writer, status, resp_headers


async def _body_chunks(reader: asyncio.StreamReader, headers: dict[str, str], timeout: float) -> AsyncIterator[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await asyncio.wait_for(reader.readline(), timeout)
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            yield data[:-2]
    elif "content-length" in headers:
        yield await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    else:
        while data := await asyncio.wait_for(reader.read(65536), timeout):
            yield data


async def http_json(
    url: str, method: str = "GET", payload: Any = None, api_key: str | None = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One plain (non-streamed) request; returns (status, parsed JSON or text)."""
    parts = urlsplit(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = json.dumps(payload).encode() if payload is not None else None
    reader, writer, status, resp_headers = await _open(url, method, parts.path or "/", body, headers, timeout)
    try:
        raw = b"".join([c async for c in _body_chunks(reader, resp_headers, timeout)])
    finally:
        writer.close()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


async def stream_chat(
    base_url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    api_key: str | None = None,
    timeout: float = 600.0,
    extra: dict[str, Any] | None = None,
) -> RequestResult:
    """One streamed /v1/chat/completions request with ignore_eos; never raises."""
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **(extra or {}),
    }
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    result = RequestResult(ok=False, t_start=time.perf_counter())
    path = urlsplit(base_url).path.rstrip("/") + "/chat/completions"
    try:
        reader, writer, status, resp_headers = await _open(base_url, "POST", path, json.dumps(payload).encode(), headers, timeout)
        try:
            buf = b""
            async for data in _body_chunks(reader, resp_headers, timeout):
                if status != 200:
                    buf += data
                    continue
                buf += data
                while b"\n\n" in buf:
                    event, buf = buf.split(b"\n\n", 1)
                    _handle_event(event, result)
            if status != 200:
                result.error = f"HTTP {status}: {buf[:200].decode('utf-8', 'replace')}"
            elif result.error is None:
                result.ok = True
        finally:
            writer.close()
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.t_end = time.perf_counter()
    if result.ok and result.completion_tokens == 0:
        if result.chunks == 0:
            result.ok, result.error = False, "stream ended without any token"
        else:  # no usage chunk: one chunk per engine step is a lower bound of the tokens
            result.completion_tokens = result.chunks
    return result


def _handle_event(event: bytes, result: RequestResult) -> None:
    for line in event.splitlines():
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        # Parse only what is needed: the first choice (TTFT), errors, and the usage chunk.
        plain = b'"usage"' not in data or b'"usage": null' in data or b'"usage":null' in data
        if result.t_first is not None and plain and b'"error"' not in data:
            result.chunks += 1
            continue
        obj = json.loads(data)
        if obj.get("error"):
            result.error = f"server error: {json.dumps(obj['error'])[:200]}"
            continue
        if obj.get("choices"):
            result.chunks += 1
            if result.t_first is None:
                result.t_first = time.perf_counter()
        usage = obj.get("usage")
        if usage:
            result.prompt_tokens = usage.get("prompt_tokens")
            result.completion_tokens = usage.get("completion_tokens") or 0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summarize(results: list[RequestResult], concurrency: int, t0: float, deadline: float | None = None, warmup: float = 0.0) -> LoadStats:
    """Totals and percentiles; `steady_tok_s` counts only tokens produced inside [t0+warmup, deadline]
    (each request's tokens spread evenly between its first token and its end), so the ramp-down tail
    where fewer streams are active does not dilute the figure."""
    done = [r for r in results if r.ok]
    end = max((r.t_end for r in results), default=t0)
    duration = max(end - t0, 1e-9)
    out_tokens = sum(r.completion_tokens for r in done)
    steady = None
    if deadline is not None and deadline - (t0 + warmup) > 0:
        lo, hi = t0 + warmup, deadline
        tokens = 0.0
        for r in done:
            first = r.t_first if r.t_first is not None else r.t_start
            span = max(r.t_end - first, 1e-9)
            overlap = max(0.0, min(hi, r.t_end) - max(lo, first))
            tokens += r.completion_tokens * overlap / span
        steady = tokens / (hi - lo)
    ttfts = [r.ttft for r in done if r.ttft is not None]
    rates = [r.completion_tokens / (r.t_end - r.t_first) for r in done if r.t_first is not None and r.t_end > r.t_first]
    errors = [r.error or "unknown" for r in results if not r.ok]
    return LoadStats(
        requests=len(results),
        errors=len(errors),
        concurrency=concurrency,
        duration_s=round(duration, 3),
        output_tokens=out_tokens,
        prompt_tokens=sum(r.prompt_tokens or 0 for r in done),
        total_tok_s=round(out_tokens / duration, 2),
        steady_tok_s=None if steady is None else round(steady, 2),
        ttft_p50_s=_round(percentile(ttfts, 50)),
        ttft_p95_s=_round(percentile(ttfts, 95)),
        per_stream_tok_s_p50=_round(statistics.median(rates)) if rates else None,
        first_errors=sorted(set(errors))[:5],
    )


def _round(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


async def sustained_load(
    base_url: str,
    model: str,
    concurrency: int,
    duration_s: float,
    max_tokens: int,
    prompt_for: Callable[[int], str],
    api_key: str | None = None,
    warmup_s: float = 2.0,
    request_timeout: float = 600.0,
) -> LoadStats:
    """`concurrency` closed-loop streams, each sending a new unique request until `duration_s` passed."""
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    results: list[RequestResult] = []
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            results.append(await stream_chat(base_url, model, prompt_for(next(counter)), max_tokens, api_key, request_timeout))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return summarize(results, concurrency, t0, deadline=deadline, warmup=min(warmup_s, duration_s / 2))


async def repeated_single(
    base_url: str, model: str, repeats: int, max_tokens: int, prompt_for: Callable[[int], str], api_key: str | None = None
) -> dict[str, Any]:
    """Batch-1: `repeats` sequential requests; medians of decode tok/s and time to first token."""
    runs = []
    for i in range(repeats):
        r = await stream_chat(base_url, model, prompt_for(i), max_tokens, api_key)
        runs.append(r)
    good = [r for r in runs if r.ok and r.t_first is not None and r.t_end > r.t_first]
    decode = [max(r.completion_tokens - 1, 0) / (r.t_end - r.t_first) for r in good]
    ttft = [r.ttft for r in good if r.ttft is not None]
    return {
        "repeats": repeats,
        "errors": len(runs) - len(good),
        "max_tokens": max_tokens,
        "decode_tok_s": _round(statistics.median(decode), 2) if decode else None,
        "decode_tok_s_all": [round(x, 2) for x in decode],
        "ttft_s": _round(statistics.median(ttft)) if ttft else None,
        "ttft_s_all": [round(x, 4) for x in ttft],
        "first_errors": sorted({r.error or "no token" for r in runs if r not in good})[:3],
    }
