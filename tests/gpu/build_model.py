"""Build the benchmark's random-weight model with tests/support/models.py.

    python -m tests.gpu.build_model --out DIR --shape '{"hidden_size": 2048, ...}'

InternLM2 architecture first (its remote code needs transformers 4.x); when that build fails the
same shape is built as Llama, and `bench-model.json` in DIR says which and why. Weights are
initialised on the GPU when there is one (seconds instead of minutes for 1.9 B parameters).
An existing model with the same shape is reused.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from pathlib import Path

INFO = "bench-model.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.build_model")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--shape",
        required=True,
        help="JSON: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size",
    )
    p.add_argument("--arch", choices=["internlm2", "llama"], default="internlm2")
    args = p.parse_args(argv)
    out = Path(args.out)
    want = json.loads(args.shape)
    info_path = out / INFO
    if info_path.exists() and json.loads(info_path.read_text()).get("requested_shape") == want:
        print(f"reusing {out}", flush=True)
        return 0

    import torch
    import transformers

    from tests.support.models import ModelShape, build_model

    full = want["hidden_size"] >= 1024
    shape = ModelShape(
        hidden=want["hidden_size"],
        intermediate=want["intermediate_size"],
        layers=want["num_hidden_layers"],
        heads=want["num_attention_heads"],
        kv_heads=want["num_key_value_heads"],
        vocab=want["vocab_size"],
        dtype="bfloat16" if full else "float16",
        max_positions=32768 if full else 4096,
    )
    if torch.cuda.is_available():
        torch.set_default_device("cuda")
    info: dict = {"requested_shape": want, "transformers": transformers.__version__, "torch": torch.__version__, "dtype": shape.dtype}
    archs = [args.arch] + (["llama"] if args.arch != "llama" else [])
    for arch in archs:
        t0 = time.perf_counter()
        try:
            shutil.rmtree(out, ignore_errors=True)
            build_model(arch, out, shape)
        except Exception as exc:
            info[f"{arch}_error"] = f"{type(exc).__name__}: {exc}"[:800]
            traceback.print_exc()
            print(f"{arch} build failed; trying the next architecture", file=sys.stderr, flush=True)
            continue
        info.update(arch=arch, fallback=arch != args.arch, seconds=round(time.perf_counter() - t0, 1))
        info["params"] = _params(out / "config.json")
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        print(json.dumps(info), flush=True)
        return 0
    print(json.dumps(info), flush=True)
    return 1


def _params(config: Path) -> int | None:
    """Parameter count from config.json (untied embeddings, gated MLP, GQA)."""
    try:
        c = json.loads(config.read_text())
        h, i, n, v = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
        kv = c.get("num_key_value_heads", c["num_attention_heads"]) * h // c["num_attention_heads"]
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
        return n * per_layer + 2 * v * h + h
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return None


if __name__ == "__main__":
    sys.exit(main())
