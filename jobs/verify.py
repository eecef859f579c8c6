"""Quality gate: perplexity of the W4A16 model against the fp16 model, plus the size table.

    python -m jobs.verify [--profile seed] [--model-path DIR] [--quantized-path DIR] [--json]

Perplexity is measured on the held-out tail of the calibration text (never used for AWQ),
in float32 on the CPU or float16 on CUDA. The quantized checkpoint is dequantized into a
plain transformers model (jobs/_awq.py explains why: lmdeploy's W4 kernels need CUDA). The
job fails (exit 1) when quantized/fp16 perplexity exceeds quantization.max_ppl_ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from jobs import _calib
from jobs._common import (
    ENV_HELP,
    JobError,
    Progress,
    add_settings_args,
    human,
    model_config,
    run,
    settings_from,
    tree_size,
)
from kit import exitcodes, markers


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.verify",
        description="Compare the perplexity of the quantized model with the fp16 model; print fp16 vs w4a16 sizes.",
        epilog=f"{ENV_HELP}. Exit 0 within the threshold, 1 above it or on failure, 2 bad settings/arguments.",
    )
    p.add_argument("--model-path", help="fp16 model directory (default: settings' fp16 path)")
    p.add_argument("--quantized-path", help="W4A16 model directory (default: settings' quantized path)")
    p.add_argument("--calibration", help="calibration text; its held-out tail is scored (default: settings' calibration path)")
    p.add_argument("--max-ppl-ratio", type=float, help="fail above this quantized/fp16 ratio (default: quantization.max_ppl_ratio)")
    p.add_argument("--seqlen", type=int, default=512, help="tokens per scored window (default 512)")
    p.add_argument("--max-windows", type=int, default=8, help="score at most this many windows (default 8)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where to run (default: quantization.device)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_settings_args(p)
    return p


def size_table(fp16_dir: Path, q_dir: Path) -> tuple[dict[str, Any], str]:
    fp16, q = tree_size(fp16_dir), tree_size(q_dir)
    sizes = {"fp16_bytes": fp16, "w4a16_bytes": q, "ratio": round(q / fp16, 4) if fp16 else None}
    lines = [f"{human(fp16):>8}  {fp16_dir}  (fp16)", f"{human(q):>8}  {q_dir}  (w4a16)"]
    if fp16:
        lines.append(f"w4a16 is {q / fp16:.2f}x the fp16 size ({fp16 / max(q, 1):.2f}x smaller)")
    return sizes, "\n".join(lines)


def perplexity(model: Any, windows: list[Any], device: str) -> float:
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for ids in windows:
            ids = ids.to(device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
            nll += float(loss)
            count += ids.shape[1] - 1
    return math.exp(nll / count) if count else float("nan")


def body(args: argparse.Namespace) -> int:
    s = settings_from(args)
    progress = Progress("verify", quiet=args.quiet > 0)
    fp16_dir = Path(args.model_path or s.fp16_path)
    q_dir = Path(args.quantized_path or s.quantized_path)
    calib_path = Path(args.calibration or s.calibration_path)
    threshold = args.max_ppl_ratio if args.max_ppl_ratio is not None else s.quantization.max_ppl_ratio
    if args.seqlen < 16 or args.max_windows < 1:
        raise JobError("--seqlen must be at least 16 and --max-windows at least 1", exitcodes.USAGE)
    model_config(fp16_dir)
    model_config(q_dir)
    try:
        q_marker = markers.read(q_dir, markers.QUANTIZE)
    except markers.MarkerError as exc:
        raise JobError(f"{exc}; run `python -m jobs.quantize` again") from None
    if q_marker is None:
        raise JobError(
            f"{q_dir} has no completion marker ({markers.FILE_NAME}): it is not a finished quantize output; run `python -m jobs.quantize`"
        )
    text, _ = _calib.read_text(calib_path)
    _, heldout = _calib.split(text)
    sizes, table = size_table(fp16_dir, q_dir)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from jobs._awq import load_dequantized

    device = args.device or s.quantization.device
    if device == "cuda" and not torch.cuda.is_available():
        raise JobError("device cuda requested but no CUDA GPU is visible; pass --device cpu", exitcodes.USAGE)
    dtype = torch.float16 if device == "cuda" else torch.float32
    trust = s.model.trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(str(fp16_dir), trust_remote_code=trust)
    ids = tokenizer(heldout, return_tensors="pt").input_ids
    windows = [ids[:, i : i + args.seqlen] for i in range(0, ids.shape[1] - args.seqlen + 1, args.seqlen)][: args.max_windows]
    if not windows:
        raise JobError(
            f"the held-out tail of {calib_path} has {ids.shape[1]} tokens, fewer than --seqlen {args.seqlen}; use a longer text or a smaller --seqlen"
        )
    n_tokens = sum(w.shape[1] for w in windows)

    progress.stage(f"fp16 perplexity on {len(windows)}x{args.seqlen} held-out tokens ({device})")
    t0 = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(str(fp16_dir), dtype=dtype, trust_remote_code=trust).to(device).eval()
    ppl_fp16 = perplexity(model, windows, device)
    del model
    fp16_s = time.monotonic() - t0
    progress.stage(f"fp16 perplexity {ppl_fp16:.3f}; w4a16 next")
    t0 = time.monotonic()
    try:
        qmodel = load_dequantized(q_dir, dtype, device, trust)
    except (ValueError, OSError, KeyError) as exc:
        raise JobError(f"cannot load the quantized model {q_dir}: {exc}") from None
    ppl_q = perplexity(qmodel, windows, device)
    q_s = time.monotonic() - t0
    ratio = ppl_q / ppl_fp16 if ppl_fp16 > 0 else float("nan")
    passed = math.isfinite(ratio) and ratio <= threshold

    result = {
        "passed": passed,
        "ppl_fp16": ppl_fp16,
        "ppl_w4a16": ppl_q,
        "ppl_ratio": ratio,
        "max_ppl_ratio": threshold,
        "tokens": n_tokens,
        "windows": len(windows),
        "device": device,
        "sizes": sizes,
        "timings_s": {"fp16": round(fp16_s, 3), "w4a16": round(q_s, 3)},
        "marker_fingerprint": q_marker["fingerprint"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(table)
        verdict = "PASS" if passed else "FAIL"
        print(f"perplexity fp16 {ppl_fp16:.4f}, w4a16 {ppl_q:.4f}, ratio {ratio:.4f} (max {threshold}): {verdict}")
    if not passed:
        print(
            f"verify: error: quantized/fp16 perplexity ratio {ratio:.4f} exceeds quantization.max_ppl_ratio={threshold}; "
            "try quantization.search_scale=true or more calibration samples",
            file=sys.stderr,
        )
        return exitcodes.FAILED
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    return run("verify", body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
