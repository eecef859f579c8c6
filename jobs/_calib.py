"""The calibration text on the model store: checks, the held-out split and lmdeploy's loader.

lmdeploy 0.18's `get_calib_loaders` downloads a `datasets` set at run time; the quantize job
replaces it with `make_loader(text)`, which returns what lmdeploy's own loaders return: a list
of `nsamples` LongTensors of shape [1, seqlen], windows drawn with `random.seed(seed)` like
lmdeploy's `get_wikitext2`. The last HELDOUT_FRACTION of the text is never used for
calibration; `jobs.verify` measures perplexity on it.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from jobs._common import JobError, sha256_bytes

log = logging.getLogger("jobs.calib")
SHIPPED = Path(__file__).resolve().parent / "data" / "calibration.txt"
HELDOUT_FRACTION = 0.1
MIN_CHARS = 2048


def ensure_file(path: Path) -> bool:
    """Copy the shipped default text to `path` when nothing is there; True when copied."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.copyfile(SHIPPED, tmp)
    tmp.replace(path)
    return True


def read_text(path: Path, seqlen: int = 0) -> tuple[str, str]:
    """(text, sha256) of a usable calibration file, else a one-line error naming the fix."""
    fix = "replace it with plain UTF-8 prose (`python -m jobs.prepare_calibration`) or delete it to get the shipped default"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise JobError(f"calibration file {path} does not exist; run `python -m jobs.prepare_calibration`") from None
    if not data.strip():
        raise JobError(f"calibration file {path} is empty; {fix}")
    if b"\x00" in data:
        raise JobError(f"calibration file {path} is binary (NUL bytes), not text; {fix}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError(f"calibration file {path} is not UTF-8 text (byte {exc.start}); {fix}") from None
    printable = sum(ch.isprintable() or ch.isspace() for ch in text[:100_000])
    if printable < 0.95 * min(len(text), 100_000):
        raise JobError(f"calibration file {path} is mostly control characters, not prose; {fix}")
    calib, _ = split(text)
    need = max(MIN_CHARS, seqlen)
    if len(calib) < need:
        raise JobError(
            f"calibration file {path} is too short: {len(text)} characters, at least {int(need / (1 - HELDOUT_FRACTION)) + 1} needed; {fix}"
        )
    return text, sha256_bytes(data)


def split(text: str) -> tuple[str, str]:
    """(calibration part, held-out part): the held-out tail starts at a line break."""
    cut = int(len(text) * (1 - HELDOUT_FRACTION))
    nl = text.find("\n", cut)
    if nl != -1 and nl < len(text) - 1:
        cut = nl + 1
    return text[:cut], text[cut:]


def make_loader(text: str):
    """A drop-in for `lmdeploy.lite.apis.calibrate.get_calib_loaders` reading `text` (its calibration part)."""
    calib, _ = split(text)

    def get_calib_loaders(name: str, tokenizer: Any, nsamples: int = 128, seed: int = 0, seqlen: int = 2048) -> list[Any]:
        import random

        ids = tokenizer(calib, return_tensors="pt").input_ids
        total = ids.shape[1]
        if total < seqlen:
            raise JobError(
                f"calibration text has {total} tokens, fewer than calib_seqlen={seqlen}; use a longer text (`python -m jobs.prepare_calibration`)"
            )
        distinct = total // seqlen
        if distinct < nsamples:
            log.warning(
                "calibration text has %d tokens, fewer than calib_samples x calib_seqlen = %d x %d = %d: "
                "the %d windows overlap and cover only %d samples' worth of distinct text; "
                "use a longer text (`python -m jobs.prepare_calibration`) or lower quantization.calib_samples",
                total,
                nsamples,
                seqlen,
                nsamples * seqlen,
                nsamples,
                distinct,
            )
        random.seed(seed)
        out = []
        for _ in range(nsamples):
            i = random.randint(0, total - seqlen)
            out.append(ids[:, i : i + seqlen])
        return out

    return get_calib_loaders
