"""Fill the calibration text file on the model store.

    python -m jobs.prepare_calibration                      # from settings quantization.calibration_dataset (needs `datasets` + network)
    python -m jobs.prepare_calibration --from-file my.txt    # any UTF-8 text you have
    python -m jobs.prepare_calibration --default             # the kit's shipped offline text

The quantize job reads this file instead of downloading a dataset (lmdeploy 0.18's
`get_calib_loaders` would). Datasets known here are the ones lmdeploy's loader offers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from jobs import _calib
from jobs._common import ENV_HELP, JobError, Progress, add_settings_args, human, run, settings_from
from kit import exitcodes

# name -> (load_dataset args, text field), as lmdeploy.lite.utils.calib_dataloader reads them.
DATASETS: dict[str, tuple[tuple[str, ...], dict[str, str], str]] = {
    "wikitext2": (("wikitext", "wikitext-2-raw-v1"), {"split": "train"}, "text"),
    "c4": (("allenai/c4", "en"), {"data_files": "en/c4-train.00000-of-01024.json.gz", "split": "train"}, "text"),
    "pileval": (("mit-han-lab/pile-val-backup",), {"split": "validation[:2000]"}, "text"),
    "gsm8k": (("openai/gsm8k", "main"), {"split": "train"}, "question"),
    "openwebtext": (("Skylion007/openwebtext",), {"split": "train[:2000]"}, "text"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.prepare_calibration",
        description="Write the AWQ calibration text to the model store (from a datasets set, a file or the shipped default).",
        epilog=f"{ENV_HELP}; HF_TOKEN / HF_ENDPOINT as `datasets` reads them. Exit 0 ok, 1 failed, 2 bad arguments.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", choices=sorted(DATASETS), help="datasets set (default: quantization.calibration_dataset)")
    src.add_argument("--from-file", help="copy this UTF-8 text file")
    src.add_argument("--default", action="store_true", help="the kit's shipped text (offline)")
    p.add_argument("--max-chars", type=int, default=4_000_000, help="keep at most this many characters (default 4,000,000)")
    p.add_argument("--out", help="destination (default: settings' calibration path)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_settings_args(p)
    return p


def from_dataset(name: str, max_chars: int) -> str:
    if name not in DATASETS:
        raise JobError(f"unknown calibration dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}", exitcodes.USAGE)
    try:
        from datasets import load_dataset
    except ImportError:
        raise JobError("the `datasets` package is not installed; `pip install datasets`, or use --from-file / --default offline") from None
    args, kwargs, field = DATASETS[name]
    try:
        ds = load_dataset(*args, **kwargs)
    except Exception as exc:  # datasets raises many network/hub error types
        raise JobError(
            f"cannot load dataset {name} ({'/'.join(args)}): {type(exc).__name__}: {exc}; use --from-file or --default offline"
        ) from None
    parts, total = [], 0
    for row in ds:
        chunk = str(row[field]).strip()
        if not chunk:
            continue
        parts.append(chunk)
        total += len(chunk) + 2
        if total >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars] + "\n"


def body(args: argparse.Namespace) -> int:
    s = settings_from(args)
    progress = Progress("prepare-calibration", quiet=args.quiet > 0)
    out = Path(args.out or s.calibration_path)
    if args.default:
        text = _calib.SHIPPED.read_text()
        origin = "shipped default"
    elif args.from_file:
        text, _ = _calib.read_text(Path(args.from_file))
        origin = args.from_file
    else:
        name = args.dataset or s.quantization.calibration_dataset
        progress.stage(f"loading {name} through `datasets`")
        text = from_dataset(name, args.max_chars)
        origin = f"datasets:{name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    try:
        _calib.read_text(tmp)  # refuse to publish something quantize would reject
    except JobError:
        tmp.unlink(missing_ok=True)
        raise
    shutil.move(str(tmp), str(out))
    result = {"path": str(out), "source": origin, "chars": len(text), "bytes": out.stat().st_size}
    print(json.dumps(result) if args.json else f"calibration text ready: {out} ({human(result['bytes'])} from {origin})")
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    return run("prepare-calibration", body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
