"""Completion markers: the one contract between the jobs, the rendered manifests and `kit.cluster`.

A stage that publishes a model directory on the store writes `<dir>/.kit-complete.json` as the
LAST file, atomically (temp file beside it, fsync, rename, fsync of the directory):

    stage     directory          written by                     waited for by
    fetch     settings.fp16_path jobs.fetch                     quantize Job's initContainer;
                                                                serving initContainer when quantization is off
    quantize  quantized_path     jobs.quantize                  serving initContainer

Content (JSON object; `validate` checks it):

    schema               SCHEMA (an int); a reader refuses other versions
    stage                "fetch" | "quantize"
    written_at           UTC time, ISO 8601
    fingerprint          sha256 of what the directory holds (fetch: its files' hashes; quantize: every
                         input of AWQ, model file hashes included): the job's own skip test
    request_fingerprint  sha256 of `fetch_request(s)` / `quantize_request(s)`: computed from the settings
                         alone, so `kit.cluster` decides whether a Job must run without reading weights
    sizes                {"total_bytes": N, ...}
    versions             {"python": ..., "lmdeploy": ..., ...}
    input_fingerprint    quantize only: the fetch marker's fingerprint of the model it quantized

Plus whatever the stage adds (file tables, timings). Nothing here imports more than the stdlib at
module level: the rendering, the cluster tool and the client image import it.

    python -m kit.markers show [--json] PATH...    print (and validate) markers; a DIR means DIR/.kit-complete.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit import exitcodes
from kit.atomic import write_json_atomic

if TYPE_CHECKING:
    from kit.settings import Settings

SCHEMA = 1
FILE_NAME = ".kit-complete.json"
FETCH = "fetch"
QUANTIZE = "quantize"
STAGES = (FETCH, QUANTIZE)
REQUIRED = ("schema", "stage", "written_at", "fingerprint", "request_fingerprint", "sizes", "versions")


class MarkerError(Exception):
    """An unreadable or invalid marker; the message names the file and what is wrong."""


# ---------------------------------------------------------------------------------------------- where


def path_in(directory: str | os.PathLike[str]) -> str:
    """The marker path of a published directory (POSIX string: also a path inside a pod)."""
    return f"{str(directory).rstrip('/')}/{FILE_NAME}"


def stage_dir(s: Settings, stage: str) -> str:
    if stage == FETCH:
        return s.fp16_path
    if stage == QUANTIZE:
        return s.quantized_path
    raise ValueError(f"unknown marker stage {stage!r}; expected one of {STAGES}")


def marker_path(s: Settings, stage: str) -> str:
    """Where `stage` writes its marker for these settings (inside the pods: under storage.models_root)."""
    return path_in(stage_dir(s, stage))


def serve_stage(s: Settings) -> str:
    """The stage whose output the server loads: quantize, or fetch when quantization is off (fc)."""
    return QUANTIZE if s.quantization.enabled else FETCH


def stages(s: Settings) -> tuple[str, ...]:
    """The stages a deployment of these settings runs, in order."""
    return (FETCH, QUANTIZE) if s.quantization.enabled else (FETCH,)


# ---------------------------------------------------------------------------------------------- what


def fetch_installs_template(s: Settings) -> bool:
    """fetch puts the tools-aware chat template into the fp16 model when that model is served with tools
    (quantization off, internlm tool parser): nothing else would (jobs.quantize does it for AWQ output)."""
    return not s.quantization.enabled and s.serving.tool_call_parser == "internlm"


def _template_sha() -> str:
    from kit.chat_template import TOOLS_TEMPLATE

    return hashlib.sha256(TOOLS_TEMPLATE.encode()).hexdigest()


def fetch_request(s: Settings) -> dict[str, Any]:
    """What the settings ask the fetch stage for (no file content: computable anywhere).

    No path: the marker sits in the directory it describes, and the store is mounted at another
    path in a pod than on a workstation."""
    return {
        "stage": FETCH,
        "source": s.model.source,
        "revision": s.model.revision,
        "chat_template_sha256": _template_sha() if fetch_installs_template(s) else None,
    }


def quantize_request(s: Settings) -> dict[str, Any]:
    """What the settings ask the quantize stage for; the lmdeploy version is the settings' (= the image's).

    The model itself is not here: the marker's input_fingerprint ties the output to the fetch marker."""
    from kit.render import auto_awq_kwargs

    return {
        "stage": QUANTIZE,
        "params": auto_awq_kwargs(s),
        "calibration_file": s.storage.calibration_file,
        "lmdeploy": s.versions.lmdeploy,
        "chat_template_sha256": _template_sha(),
    }


def request(s: Settings, stage: str) -> dict[str, Any]:
    return fetch_request(s) if stage == FETCH else quantize_request(s)


def digest(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def request_fingerprint(s: Settings, stage: str) -> str:
    return digest(request(s, stage))


# ---------------------------------------------------------------------------------------------- write / read


def build(
    stage: str, *, fingerprint: str, request_fp: str, sizes: dict[str, Any], versions: dict[str, str], **extra: Any
) -> dict[str, Any]:
    """A complete marker document (validated)."""
    data = {
        "schema": SCHEMA,
        "stage": stage,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "fingerprint": fingerprint,
        "request_fingerprint": request_fp,
        "sizes": sizes,
        "versions": versions,
        **extra,
    }
    problems = validate(data, stage)
    if problems:
        raise MarkerError(f"refusing to write an invalid {stage} marker: {'; '.join(problems)}")
    return data


def write(directory: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write `data` as the directory's marker: temp file, fsync, rename, fsync the directory. Call it LAST."""
    problems = validate(data, data.get("stage"))
    if problems:
        raise MarkerError(f"refusing to write an invalid marker into {directory}: {'; '.join(problems)}")
    path = Path(path_in(directory))
    write_json_atomic(path, data)
    return path


def validate(data: Any, stage: str | None = None) -> list[str]:
    """Problems with a marker document (empty list: valid). `stage` None accepts either stage."""
    if not isinstance(data, dict):
        return ["not a JSON object"]
    problems = [f"missing {key!r}" for key in REQUIRED if key not in data]
    if data.get("schema") != SCHEMA and "schema" in data:
        problems.append(f"schema {data.get('schema')!r}, this kit reads {SCHEMA}")
    if data.get("stage") not in STAGES:
        problems.append(f"stage {data.get('stage')!r} is not one of {STAGES}")
    elif stage is not None and data["stage"] != stage:
        problems.append(f"a {data['stage']} marker where a {stage} marker belongs")
    for key in ("fingerprint", "request_fingerprint"):
        value = data.get(key)
        if key in data and not (isinstance(value, str) and len(value) == 64):
            problems.append(f"{key} is not a sha256 hex digest")
    for key in ("sizes", "versions"):
        if key in data and not isinstance(data[key], dict):
            problems.append(f"{key} is not an object")
    if isinstance(data.get("sizes"), dict) and not isinstance(data["sizes"].get("total_bytes"), int):
        problems.append("sizes.total_bytes is not an integer")
    if data.get("stage") == QUANTIZE and "input_fingerprint" not in data:
        problems.append("missing 'input_fingerprint' (the fetch marker's fingerprint)")
    return problems


def parse(text: str, where: str, stage: str | None = None) -> dict[str, Any]:
    """Parse and validate marker text (read from a file or a pod); MarkerError names `where`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MarkerError(f"{where}: not JSON ({exc})") from None
    problems = validate(data, stage)
    if problems:
        raise MarkerError(f"{where}: invalid marker: {'; '.join(problems)}")
    return data


def read(directory: str | os.PathLike[str], stage: str | None = None) -> dict[str, Any] | None:
    """The directory's marker: None when absent, MarkerError when unreadable or invalid."""
    path = Path(path_in(directory))
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MarkerError(f"{path}: cannot read ({exc.strerror})") from None
    return parse(text, str(path), stage)


def read_or_none(directory: str | os.PathLike[str], stage: str | None = None) -> dict[str, Any] | None:
    """As `read`, but an invalid marker counts as absent (the jobs then redo the work)."""
    try:
        return read(directory, stage)
    except MarkerError:
        return None


# ---------------------------------------------------------------------------------------------- CLI


def show(paths: list[str]) -> dict[str, Any]:
    """{path: marker | None | {"error": ...}} for marker files or directories (what kit.cluster reads from a pod)."""
    out: dict[str, Any] = {}
    for p in paths:
        directory = Path(p).parent if Path(p).name == FILE_NAME else Path(p)
        try:
            out[p] = read(directory)
        except MarkerError as exc:
            out[p] = {"error": str(exc)}
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kit.markers",
        description="Show and validate the kit's completion markers.",
        epilog="Exit 0 ok, 1 a marker is missing or invalid (not with --json), 2 bad arguments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("show", help="print markers (a directory means DIR/.kit-complete.json); exit 1 when one is missing or invalid")
    p.add_argument("paths", nargs="+")
    p.add_argument("--json", action="store_true", help="print {path: marker|null|{error}} as JSON (exit 0 unless a usage error)")
    return parser


def cmd_show(args: argparse.Namespace) -> int:
    result = show(args.paths)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return exitcodes.OK
    bad = 0
    for path, data in result.items():
        if data is None or "error" in data:
            bad += 1
            print(f"{path}: {'missing' if data is None else data['error']}", file=sys.stderr)
        else:
            print(f"{path}: {data['stage']} fingerprint {data['fingerprint'][:12]} written {data['written_at']}")
    return exitcodes.FAILED if bad else exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    # Imported here: the module itself stays stdlib-only for the jobs and the rendering (see the top).
    from kit.entry import run

    return run(build_parser(), cmd_show, argv, prog="markers")


if __name__ == "__main__":
    sys.exit(main())
