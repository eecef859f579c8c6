"""AWQ W4A16-quantize the fp16 model with lmdeploy's own `auto_awq`, offline, crash-safe, idempotent.

    python -m jobs.quantize [--profile seed] [--model-path DIR] [--out DIR] [--calibration FILE]
    python -m jobs.quantize --template-only [--model-path DIR]   # unquantized model: chat template only

How it stays safe:
- The inputs' fingerprint (model file hashes, AWQ parameters, calibration text hash, lmdeploy
  version, chat template) is compared with the completion marker of the published output; when
  they match the job exits at once, without importing torch or loading the model.
- The model is written to `.<out>.tmp-<pid>` beside the output (same filesystem), the marker
  (`.kit-complete.json`, kit/markers.py: fingerprint, the settings' request fingerprint, the fetch
  marker's fingerprint, sizes, timings, versions) is the last file written, the tree is fsynced,
  then published by rename. A reader sees no output or a complete one; a
  killed job leaves only a temp dir that the next run removes.
- An fcntl lock (`.<out>.lock`) stops a second job writing the same output.

Calibration comes from the text file on the model store (settings storage.calibration_file; the
kit's shipped default is copied there when missing); lmdeploy's `get_calib_loaders`, which would
download a `datasets` set, is replaced by a loader reading that text.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from jobs import _calib
from jobs._common import (
    ENV_HELP,
    FREE_BYTES_ENV,
    MANIFEST_NAME,
    WEIGHT_SUFFIXES,
    JobError,
    Progress,
    add_settings_args,
    check_free_space,
    exclusive_lock,
    file_table,
    fsync_dir,
    fsync_tree,
    human,
    lmdeploy_version,
    model_config,
    read_json,
    run,
    settings_from,
    sha256_bytes,
    text_config,
    tree_size,
)
from kit import chat_template, exitcodes, markers
from kit.render import auto_awq_kwargs
from kit.settings import Settings

MARKER_VERSION = 1
# lmdeploy leaves its calibration statistics in the work dir; serving never reads them.
CALIB_STATS = ("inputs_stats.pth", "outputs_stats.pth")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.quantize",
        description="AWQ W4A16-quantize the fp16 model (lmdeploy auto_awq, offline calibration) and publish it atomically.",
        epilog=f"{ENV_HELP}; {FREE_BYTES_ENV} (pretend this many bytes are free: tests and dry runs). "
        "Exit 0 done or up to date, 1 failed, 2 bad settings/arguments.",
    )
    p.add_argument("--model-path", help="fp16 model directory (default: settings' fp16 path)")
    p.add_argument("--out", help="output directory (default: settings' quantized path)")
    p.add_argument("--calibration", help="calibration text file (default: settings' calibration path)")
    p.add_argument(
        "--template-only", action="store_true", help="only install the tools-aware chat template into --model-path (unquantized serving)"
    )
    p.add_argument("--force", action="store_true", help="quantize even when the output is up to date")
    p.add_argument("--json", action="store_true", help="print the completion marker as JSON")
    add_settings_args(p)
    return p


def check_quantizable(s: Settings, cfg: dict[str, Any], model_dir: Path) -> None:
    """Refuse before loading anything what lmdeploy AWQ cannot do with these settings."""
    quant = cfg.get("quantization_config") or text_config(cfg).get("quantization_config")
    if isinstance(quant, dict):
        method = quant.get("quant_method") or "quantized"
        raise JobError(
            f"{model_dir} is already quantized ({method}, {quant.get('bits', '?')}-bit, from its config.json); "
            "to serve it as it is set quantization.enabled=false (lmdeploy reads the format from config.json), "
            "to quantize point model.source at the fp16 model",
            exitcodes.USAGE,
        )
    q = s.quantization
    tc = text_config(cfg)
    group = q.w_group_size
    for key in ("hidden_size", "intermediate_size"):
        size = tc.get(key)
        if isinstance(size, int) and size % group:
            fits = [g for g in (32, 64, 128, 256) if size % g == 0]
            hint = (
                f"set quantization.w_group_size to one of {fits} (TurboMind serves only 128)"
                if fits
                else "this model cannot be AWQ-quantized"
            )
            raise JobError(f"{model_dir}: {key}={size} is not divisible by quantization.w_group_size={group}; {hint}", exitcodes.USAGE)
    if q.device == "cpu":
        dtype = q.dtype if q.dtype != "auto" else str(tc.get("torch_dtype") or cfg.get("torch_dtype") or cfg.get("dtype") or "float16")
        if dtype == "bfloat16":
            raise JobError(
                "lmdeploy AWQ refuses bfloat16 on the CPU; set quantization.dtype=float16 for quantization.device=cpu", exitcodes.USAGE
            )


def _weights_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def _known_hashes(model_dir: Path, marker: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Hashes already computed for these files: the fetch manifest, then the last marker (reused when size+mtime match)."""
    known: dict[str, dict[str, Any]] = {}
    manifest = read_json(model_dir / MANIFEST_NAME) or {}
    known.update(manifest.get("files") or {})
    if marker:
        known.update((marker.get("inputs") or {}).get("model_files") or {})
    return known


def fingerprint(inputs: dict[str, Any]) -> str:
    canonical = {
        "model_files": {k: v["sha256"] for k, v in inputs["model_files"].items()},
        "params": inputs["params"],
        "calibration_sha256": inputs["calibration_sha256"],
        "lmdeploy": inputs["lmdeploy"],
        "chat_template_sha256": inputs["chat_template_sha256"],
        "marker_version": MARKER_VERSION,
    }
    return sha256_bytes(json.dumps(canonical, sort_keys=True).encode())


def output_complete(out: Path, marker: dict[str, Any]) -> bool:
    files = marker.get("output_files") or {}
    if not files:
        return False
    for rel, size in files.items():
        path = out / rel
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def _stale_dirs(out: Path) -> list[Path]:
    return [p for p in out.parent.glob(f".{out.name}.tmp-*")] + [p for p in out.parent.glob(f".{out.name}.old-*")]


@contextlib.contextmanager
def _offline_calibration(text: str):
    """Swap lmdeploy's downloading calibration loader for one reading the local text."""
    import lmdeploy.lite.apis.calibrate as calibrate

    original = calibrate.get_calib_loaders
    calibrate.get_calib_loaders = _calib.make_loader(text)
    try:
        yield
    finally:
        calibrate.get_calib_loaders = original


def run_awq(model_dir: Path, work_dir: Path, kwargs: dict[str, Any], text: str) -> None:
    """lmdeploy's own auto_awq (the `lmdeploy lite auto_awq` code path); its prints go to stderr."""
    from lmdeploy.lite.apis.auto_awq import auto_awq

    with _offline_calibration(text), contextlib.redirect_stdout(sys.stderr):
        auto_awq(str(model_dir), work_dir=str(work_dir), **kwargs)


def template_only(model_dir: Path, quiet: bool, as_json: bool) -> int:
    model_config(model_dir)
    with exclusive_lock(model_dir.parent / f".{model_dir.name}.lock", str(model_dir)):
        changed = chat_template.install(model_dir)
    result = {"model": str(model_dir), "chat_template": "installed" if changed else "already installed"}
    print(json.dumps(result) if as_json else f"chat template {result['chat_template']}: {model_dir / 'tokenizer_config.json'}")
    return exitcodes.OK


def body(args: argparse.Namespace) -> int:
    s = settings_from(args)
    progress = Progress("quantize", quiet=args.quiet > 0)
    model_dir = Path(args.model_path or s.fp16_path)
    if args.template_only or not s.quantization.enabled:
        if not args.template_only:
            progress.stage(f"quantization disabled in profile {s.profile}: installing the chat template only")
        return template_only(Path(args.model_path or s.serve_path), args.quiet > 0, args.json)

    out = Path(args.out or s.quantized_path)
    calib_path = Path(args.calibration or s.calibration_path)
    cfg = model_config(model_dir)
    check_quantizable(s, cfg, model_dir)
    if out.resolve() == model_dir.resolve():
        raise JobError(f"--out {out} is the fp16 model directory; choose another output directory", exitcodes.USAGE)
    if _calib.ensure_file(calib_path):
        progress.stage(f"no calibration text at {calib_path}: copied the kit's default ({_calib.SHIPPED.name})")
    kwargs = auto_awq_kwargs(s)
    text, calib_sha = _calib.read_text(calib_path, kwargs["calib_seqlen"])

    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock", str(out)):
        # Holding the lock, anything temporary beside the output belongs to a dead run.
        for stale in _stale_dirs(out):
            progress.stage(f"removing {stale.name} left by an interrupted run")
            shutil.rmtree(stale, ignore_errors=True)
        marker = markers.read_or_none(out, markers.QUANTIZE)
        request_fp = markers.request_fingerprint(s, markers.QUANTIZE)
        inputs: dict[str, Any] = {
            "model_path": str(model_dir),
            "params": kwargs,
            "calibration_path": str(calib_path),
            "calibration_sha256": calib_sha,
            "lmdeploy": lmdeploy_version(),
            "chat_template_sha256": sha256_bytes(chat_template.TOOLS_TEMPLATE.encode()),
        }
        hashing: threading.Thread | None = None
        hash_box: dict[str, Any] = {}
        if marker and not args.force:
            progress.stage(f"checking {model_dir} against the marker of {out}")
            inputs["model_files"] = file_table(model_dir, _known_hashes(model_dir, marker))
            fp = fingerprint(inputs)
            if marker.get("fingerprint") == fp and output_complete(out, marker):
                fresh = {"request_fingerprint": request_fp, "input_fingerprint": _input_fingerprint(model_dir, inputs)}
                if any(marker.get(key) != value for key, value in fresh.items()):
                    # Same content, other request (e.g. a refetched identical model): refresh the marker so
                    # kit.cluster stops scheduling this Job, without touching the model.
                    markers.write(out, {**marker, **fresh})
                result = {"status": "up-to-date", "output": str(out), "fingerprint": fp, "elapsed_s": round(progress.elapsed, 3)}
                print(json.dumps(result) if args.json else f"up to date: {out} (fingerprint {fp[:12]}); nothing to do")
                return exitcodes.OK
            progress.stage("inputs changed since the last run (or the output is incomplete): quantizing again")
        else:
            # Work is needed whatever the hashes are: hash the inputs while AWQ runs.
            def _hash() -> None:
                try:
                    hash_box["table"] = file_table(model_dir, _known_hashes(model_dir, None))
                except OSError as exc:
                    hash_box["error"] = exc

            hashing = threading.Thread(target=_hash, name="hash-inputs", daemon=True)
            hashing.start()

        fp16_bytes = _weights_bytes(model_dir)
        check_free_space(out.parent, int(fp16_bytes * 0.6) + (64 << 20), "the quantized model")

        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        _TEMP_OUTPUTS.append(tmp)  # removed by main() on SIGTERM
        started = time.time()
        progress.stage(
            f"AWQ w{kwargs['w_bits']} g{kwargs['w_group_size']}: {model_dir} -> {out} "
            f"({kwargs['calib_samples']}x{kwargs['calib_seqlen']} calibration tokens from {calib_path.name}, device {kwargs['device']})"
        )
        progress.done("prepare")
        try:
            run_awq(model_dir, tmp, kwargs, text)
        except JobError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise JobError(f"lmdeploy auto_awq failed: {type(exc).__name__}: {exc}") from exc
        awq_s = progress.done("awq")
        progress.stage(f"AWQ finished in {awq_s:.1f}s; finishing the output")
        for name in CALIB_STATS:
            (tmp / name).unlink(missing_ok=True)
        chat_template.install(tmp)
        if hashing is not None:
            hashing.join()
            if "error" in hash_box:
                raise JobError(f"cannot read the model files to fingerprint them: {hash_box['error']}")
            inputs["model_files"] = hash_box["table"]
        fp = fingerprint(inputs)
        out_files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        progress.done("finish")
        w4a16_bytes, fp16_dir_bytes = sum(out_files.values()), tree_size(model_dir)
        new_marker = markers.build(
            markers.QUANTIZE,
            fingerprint=fp,
            request_fp=request_fp,
            sizes={"total_bytes": w4a16_bytes, "fp16_bytes": fp16_bytes, "w4a16_bytes": w4a16_bytes, "fp16_dir_bytes": fp16_dir_bytes},
            versions=_versions(),
            input_fingerprint=_input_fingerprint(model_dir, inputs),
            marker_version=MARKER_VERSION,
            inputs=inputs,
            output_files=out_files,
            timings_s=dict(progress.stages),
            started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            profile=s.profile,
        )
        fsync_tree(tmp)
        markers.write(tmp, new_marker)  # last file of the tree
        _publish(tmp, out)
        new_marker["timings_s"]["total"] = round(progress.elapsed, 3)
        ratio = new_marker["sizes"]["w4a16_bytes"] / max(fp16_bytes, 1)
        progress.stage(f"published {out}")
        if args.json:
            print(json.dumps(new_marker, indent=2, sort_keys=True))
        else:
            print(
                f"quantized: {out} ({human(new_marker['sizes']['w4a16_bytes'])}, {ratio:.2f}x of fp16 weights "
                f"{human(fp16_bytes)}) in {progress.elapsed:.1f}s; fingerprint {fp[:12]}"
            )
        return exitcodes.OK


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished tree into place; an older output is moved aside first, then removed."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _input_fingerprint(model_dir: Path, inputs: dict[str, Any]) -> str:
    """The fetch marker's fingerprint of the model quantized; a model placed by hand: the same digest of its files."""
    fetched = markers.read_or_none(model_dir, markers.FETCH)
    if fetched:
        return fetched["fingerprint"]
    return markers.digest({rel: f["sha256"] for rel, f in inputs["model_files"].items()})


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in ("lmdeploy", "torch", "transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


class Terminated(BaseException):
    """SIGTERM (the Job's pod deleted, `kill`): unwinds the job like Ctrl-C so its temp output goes."""


# Temp trees of this process; a terminated run removes them, a killed one leaves them to the next run.
_TEMP_OUTPUTS: list[Path] = []
TERMINATED = 128 + signal.SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return run("quantize", body, build_parser(), argv)
    except Terminated:
        for tmp in _TEMP_OUTPUTS:
            shutil.rmtree(tmp, ignore_errors=True)
        print("quantize: terminated (SIGTERM); the unfinished output was removed, the next run quantizes again", file=sys.stderr)
        return TERMINATED
    finally:
        _TEMP_OUTPUTS.clear()
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
