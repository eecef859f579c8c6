"""The PyTorch-backend benchmark's loads against one api_server (tests/gpu/bench.py), all through the
openai SDK's async client (tests/gpu/openai_load.py): 64 streams and the capacity-bound load, each
for a fixed time, and the prompt length that makes a target number of prompt tokens."""

from __future__ import annotations

import logging
import math
from typing import Any

from tests.gpu import openai_load as ol

log = logging.getLogger("bench")

SHORT_CHARS = 320  # batch-1, warm-up and 64-stream prompts (the test tokenizer: one byte, one token)
TIMED_CAP = 10**9  # a timed load's request cap: never reached
KV_SHARE = {0: 1.0, 8: 0.5, 4: 0.25}  # KV bytes per token against fp16, by quant_policy


def load_record(stats: ol.LoadStats) -> dict[str, Any]:
    """openai_load's stats under this results schema's names (clients/report reads `total_tok_s`)."""
    rec = stats.as_dict()
    rec["total_tok_s"] = rec.pop("tok_s")
    return rec


def streams64(base: str, model: str, seed: int, new_tokens: int, duration_s: float) -> dict[str, Any]:
    """64 closed-loop streams of short unique prompts for `duration_s` seconds."""
    spec = ol.LoadSpec(TIMED_CAP, 64, SHORT_CHARS, new_tokens, stream=True, seed=seed, duration_s=duration_s)
    return load_record(ol.run_load(base, model, spec)) | {"max_tokens": new_tokens}


def prompt_tokens(base: str, model: str, chars: int) -> int | None:
    """The server's own count of a `chars`-character prompt's tokens (None when the request fails)."""
    import openai  # as openai_load: importing the benchmark (its ratios) needs no SDK

    client = openai.OpenAI(base_url=base, api_key="bench", max_retries=1, timeout=120)
    messages: Any = [{"role": "user", "content": ol.prompt(0, chars, seed=99)}]
    try:
        resp = client.chat.completions.create(model=model, messages=messages, max_tokens=1)
    except openai.APIError as exc:
        log.warning("prompt token count failed: %s", exc)
        return None
    return resp.usage.prompt_tokens if resp.usage else None


def calibrate_chars(base: str, model: str, target_tokens: int) -> tuple[int, int | None]:
    """How many prompt characters make `target_tokens` prompt tokens, measured with the server's own count."""
    small, big = 64, 2048
    n_small, n_big = prompt_tokens(base, model, small), prompt_tokens(base, model, big)
    if not n_small or not n_big or n_big <= n_small:
        return target_tokens // 2, None
    per_char = (n_big - n_small) / (big - small)
    chars = max(1, int((target_tokens - (n_small - small * per_char)) / per_char))
    measured = prompt_tokens(base, model, chars)
    if measured:  # one correction step
        chars = max(1, int(chars + (target_tokens - measured) / per_char))
        measured = prompt_tokens(base, model, chars)
    return chars, measured


def seqs_fit(kv: dict[str, Any], fp16_kv: dict[str, Any], quant_policy: int, seq_tokens: int) -> tuple[int, int | None]:
    """Sequences of `seq_tokens` the fp16 KV cache holds (estimated from this config's when fp16 was not
    served; 32 when nothing is known) and this config's own cache holds (None when unknown)."""
    per_seq = math.ceil(seq_tokens / (kv.get("block_size") or 64))
    fp16_blocks = fp16_kv.get("num_gpu_blocks") or kv.get("num_gpu_blocks", 0) * KV_SHARE[quant_policy]
    mine = int(kv["num_gpu_blocks"] // per_seq) if kv.get("num_gpu_blocks") else None
    return (int(fp16_blocks // per_seq) if fp16_blocks else 32), mine


def capacity_load(base: str, model: str, streams: int, target: int, new_tokens: int, duration_s: float) -> dict[str, Any]:
    """`streams` closed-loop streams of `target`-token prompts for `duration_s` seconds, in 4 client processes."""
    chars, measured = calibrate_chars(base, model, target)
    spec = ol.LoadSpec(TIMED_CAP, streams, chars, new_tokens, stream=True, procs=4, seed=7, timeout_s=900, duration_s=duration_s)
    return load_record(ol.run_load(base, model, spec)) | {
        "prompt_tokens_target": target,
        "prompt_tokens_measured": measured,
        "max_tokens": new_tokens,
    }
