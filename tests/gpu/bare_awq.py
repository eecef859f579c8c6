"""The bare `lmdeploy lite auto_awq` baseline, offline.

    python -m tests.gpu.bare_awq CALIB.txt lmdeploy lite auto_awq MODEL --work-dir OUT ...

lmdeploy 0.18 downloads its calibration set through `datasets` at run time, which a machine
without a network cannot do. This wrapper replaces exactly one function,
`lmdeploy.lite.apis.calibrate.get_calib_loaders`, with a loader that tokenizes a local text file
into `[1, seqlen]` windows (the shape lmdeploy's wikitext2 loader returns), then runs lmdeploy's own
CLI entry point unchanged with the given argv. Nothing else of lmdeploy is touched.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any


def local_calib_loader(text_path: str):
    """A drop-in for get_calib_loaders(name, tokenizer, nsamples, seed, seqlen) reading `text_path`."""

    def get_calib_loaders(name: str, tokenizer: Any, nsamples: int = 128, seed: int = 0, seqlen: int = 2048) -> list:
        import torch

        text = Path(text_path).read_text(encoding="utf-8")
        ids = tokenizer(text, return_tensors="pt").input_ids
        need = seqlen + 1
        if ids.shape[1] < need:  # short text: repeat it (the content does not change AWQ's cost)
            ids = ids.repeat(1, need // max(ids.shape[1], 1) + 1)
        rng = random.Random(seed)
        out = []
        for _ in range(nsamples):
            i = rng.randint(0, ids.shape[1] - seqlen - 1)
            out.append(ids[:, i : i + seqlen].to(torch.long))
        print(f"offline calibration: {nsamples} x {seqlen} tokens from {text_path} (instead of {name!r})", flush=True)
        return out

    return get_calib_loaders


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[1] != "lmdeploy":
        print("usage: python -m tests.gpu.bare_awq CALIB.txt lmdeploy lite auto_awq MODEL ...", file=sys.stderr)
        return 2
    calib, lmdeploy_argv = argv[0], argv[1:]
    if not Path(calib).is_file():
        print(f"bare_awq: calibration text {calib} not found", file=sys.stderr)
        return 2
    import lmdeploy.lite.apis.calibrate as calibrate
    from lmdeploy.cli.entrypoint import run

    calibrate.get_calib_loaders = local_calib_loader(calib)
    sys.argv = lmdeploy_argv
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
