"""Helpers of the job tests (shared with the fork runner of the kill test)."""

from __future__ import annotations

from pathlib import Path

from tests.support.models import ModelShape

REPO = Path(__file__).resolve().parents[2]
# Small enough for seconds of CPU AWQ; hidden and intermediate are multiples of 128.
SHAPE = ModelShape(hidden=256, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=1024)
CALIB = ["quantization.device=cpu", "quantization.dtype=float16", "quantization.calib_samples=4", "quantization.calib_seqlen=128"]


def settings_args(root: Path, name: str = "tiny", extra: list[str] | None = None) -> list[str]:
    """`--set` arguments pointing the kit's settings at a temp model store, CPU AWQ, few samples."""
    out: list[str] = []
    for item in [f"storage.models_root={root}", f"model.name={name}", *CALIB, *(extra or [])]:
        out += ["--set", item]
    return out
