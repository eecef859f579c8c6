"""Load through the openai SDK's AsyncOpenAI, spread over client processes (`make bench` on TurboMind).

    python -m tests.gpu.openai_load --base-url http://127.0.0.1:23333/v1 --requests 256 \
        --concurrency 64 --prompt-tokens 512 --max-tokens 256 --stream --procs 4

Throughput is counted as lmdeploy's own benchmark/profile_restful_api.py counts it: output tokens
of the whole run divided by the wall time from the first request sent to the last one finished.
Each process runs `concurrency / procs` closed-loop workers over its share of the requests, so one
Python process parsing every streamed token (15-20k tokens/s) does not cap the figure. `ignore_eos`
makes random-weight models produce exactly `max_tokens` tokens. Streamed requests record the time
to the first content chunk (TTFT); whole (non-streamed) responses record none. With `duration_s`
the workers stop taking new requests once that many seconds have passed (`requests` is then a cap).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

_WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar papa romeo sierra tango".split()


@dataclass(frozen=True)
class LoadSpec:
    requests: int
    concurrency: int
    prompt_chars: int  # the test tokenizer is byte-level: one ASCII char = one token
    max_tokens: int
    stream: bool
    procs: int = 1
    seed: int = 0
    timeout_s: float = 1800.0
    duration_s: float = 0.0  # > 0: stop taking new requests after this many seconds (requests is a cap)


@dataclass
class LoadStats:
    """One run; times in seconds, rates in output tokens/s."""

    requests: int
    errors: int
    concurrency: int
    procs: int
    stream: bool
    wall_s: float
    output_tokens: int
    prompt_tokens: int
    tok_s: float
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    latency_p50_s: float | None
    first_errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt(index: int, chars: int, seed: int = 0) -> str:
    """`chars` ASCII characters whose first ones differ per request (no prefix-cache hits)."""
    rng = random.Random(seed * 1_000_003 + index)
    text = f"[{seed}-{index}-{rng.randrange(10**9)}]"
    while len(text) < chars:
        text += " " + rng.choice(_WORDS)
    return text[: max(chars, 1)]


async def _one(client: Any, model: str, text: str, spec: LoadSpec) -> dict[str, Any]:
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"t_start": t0, "t_first": None, "ok": False, "completion_tokens": 0, "prompt_tokens": 0}
    kwargs: dict[str, Any] = dict(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=spec.max_tokens,
        temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    try:
        if spec.stream:
            stream = await client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
            async for chunk in stream:
                if rec["t_first"] is None and chunk.choices and chunk.choices[0].delta.content:
                    rec["t_first"] = time.perf_counter()
                if chunk.usage:
                    rec["completion_tokens"] = chunk.usage.completion_tokens
                    rec["prompt_tokens"] = chunk.usage.prompt_tokens
        else:
            resp = await client.chat.completions.create(**kwargs)
            rec["completion_tokens"] = resp.usage.completion_tokens
            rec["prompt_tokens"] = resp.usage.prompt_tokens
        rec["ok"] = True
    except Exception as exc:  # counted and shown, never fatal for the run
        rec["error"] = f"{type(exc).__name__}: {exc}"[:200]
    rec["t_end"] = time.perf_counter()
    return rec


async def _process_load(base_url: str, model: str, spec: LoadSpec, indices: Sequence[int], workers: int, start_at: float) -> list[dict]:
    import httpx
    from openai import AsyncOpenAI

    limits = httpx.Limits(max_connections=workers + 8, max_keepalive_connections=workers + 8)
    http = httpx.AsyncClient(limits=limits, timeout=spec.timeout_s)
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=spec.timeout_s, http_client=http)
    # A counted run builds its prompts before the clock starts; a timed one (requests only a cap) as it goes.
    texts = {} if spec.duration_s else {i: prompt(i, spec.prompt_chars, spec.seed) for i in indices}
    deadline = start_at + spec.duration_s if spec.duration_s else math.inf
    todo = iter(indices)  # shared by the workers: each index is sent once
    out: list[dict] = []

    async def worker() -> None:
        for i in todo:
            if time.perf_counter() >= deadline:
                break
            out.append(await _one(client, model, texts.get(i) or prompt(i, spec.prompt_chars, spec.seed), spec))

    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    await asyncio.gather(*(worker() for _ in range(workers)))
    await client.close()
    return out


def _child(args: tuple) -> list[dict]:
    return asyncio.run(_process_load(*args))


def run_load(base_url: str, model: str, spec: LoadSpec) -> LoadStats:
    """Run `spec` against the server; all processes start at the same instant (perf_counter is system-wide)."""
    procs = max(1, min(spec.procs, spec.concurrency))
    start_at = time.perf_counter() + 1.0 + 0.3 * procs
    jobs = []
    for p in range(procs):
        indices = range(p, spec.requests, procs)
        workers = spec.concurrency // procs + (1 if p < spec.concurrency % procs else 0)
        jobs.append((base_url, model, spec, indices, workers, start_at))
    if procs == 1:
        records = _child(jobs[0])
    else:
        with mp.get_context("fork").Pool(procs) as pool:
            records = [r for part in pool.map(_child, jobs) for r in part]
    return summarize(records, spec, procs)


def summarize(records: list[dict], spec: LoadSpec, procs: int) -> LoadStats:
    ok = [r for r in records if r["ok"]]
    wall = max((r["t_end"] for r in records), default=0.0) - min((r["t_start"] for r in records), default=0.0)
    out_tokens = sum(r["completion_tokens"] for r in ok)
    ttft = [r["t_first"] - r["t_start"] for r in ok if r["t_first"] is not None]
    lat = [r["t_end"] - r["t_start"] for r in ok]
    return LoadStats(
        requests=len(records),
        errors=len(records) - len(ok),
        concurrency=spec.concurrency,
        procs=procs,
        stream=spec.stream,
        wall_s=round(wall, 3),
        output_tokens=out_tokens,
        prompt_tokens=sum(r["prompt_tokens"] for r in ok),
        tok_s=round(out_tokens / wall, 1) if wall > 0 else 0.0,
        ttft_p50_s=_r(percentile(ttft, 50)),
        ttft_p95_s=_r(percentile(ttft, 95)),
        latency_p50_s=_r(statistics.median(lat)) if lat else None,
        first_errors=sorted({r.get("error", "") for r in records if not r["ok"]})[:3],
    )


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def batch1(base_url: str, model: str, repeats: int = 3, max_tokens: int = 256, prompt_chars: int = 64) -> dict[str, Any]:
    """Batch-1 decode: sequential streamed requests; decode tok/s from the first token to the last."""
    spec = LoadSpec(1, 1, prompt_chars, max_tokens, stream=True, seed=424242)
    runs = [asyncio.run(_process_load(base_url, model, spec, [i], 1, 0.0))[0] for i in range(repeats)]
    good = [r for r in runs if r["ok"] and r["t_first"] and r["t_end"] > r["t_first"]]
    decode = [(r["completion_tokens"] - 1) / (r["t_end"] - r["t_first"]) for r in good]
    return {
        "repeats": repeats,
        "max_tokens": max_tokens,
        "errors": repeats - len(good),
        "decode_tok_s": round(statistics.median(decode), 1) if decode else None,
        "decode_tok_s_all": [round(x, 1) for x in decode],
        "ttft_s": _r(statistics.median([r["t_first"] - r["t_start"] for r in good])) if good else None,
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.openai_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", default="", help="served model name (default: the first of /v1/models)")
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--stream", action="store_true", help="stream (records TTFT); default whole responses")
    p.add_argument("--procs", type=int, default=1)
    args = p.parse_args(argv)
    model = args.model or served_model(args.base_url)
    spec = LoadSpec(args.requests, args.concurrency, args.prompt_tokens, args.max_tokens, args.stream, args.procs)
    stats = run_load(args.base_url, model, spec)
    print(json.dumps(stats.as_dict(), indent=2))
    return 1 if stats.errors else 0


def served_model(base_url: str) -> str:
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key="bench", max_retries=2, timeout=30).models.list().data[0].id


if __name__ == "__main__":
    sys.exit(main())
