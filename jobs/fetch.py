"""Put the fp16 model on the model store, or verify one already there, and write its manifest.

    python -m jobs.fetch [--profile seed] [--source ID_OR_PATH] [--revision REV] [--model-path DIR]

Sources (settings model.source): a Hugging Face id `org/name` (huggingface_hub
snapshot_download into the store: resumable, revision pinned, progress bars), `modelscope:org/name`
(modelscope's snapshot_download), or an absolute local path (copied into the store when it is
elsewhere, verified in place when it is the store path). Every fetch ends with
`kit-manifest.json` in the model directory: each file's size and sha256, the source and the
revision; the quantize job reuses these hashes for its fingerprint. The completion marker
(`.kit-complete.json`, kit/markers.py) is written after everything else, atomically; the
quantize Job (and, with quantization off, the serving pod) waits for it. When the fp16 model is
served with tools (quantization off, internlm parser: the fc profile), the tools-aware chat
template (kit/chat_template.py) is installed before the marker. A re-run whose marker matches the
settings and whose files are unchanged does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from jobs._common import (
    ENV_HELP,
    MANIFEST_NAME,
    JobError,
    Progress,
    add_settings_args,
    check_free_space,
    exclusive_lock,
    file_table,
    fsync_dir,
    fsync_tree,
    human,
    list_files,
    model_config,
    read_json,
    run,
    settings_from,
    versions,
    write_json_atomic,
)
from kit import chat_template, exitcodes, markers

TOKEN_ENVS = ("HF_TOKEN", "HF_TOKEN_FILE")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.fetch",
        description="Download (Hugging Face / ModelScope) or verify (local path) the fp16 model and write its manifest.",
        epilog=f"{ENV_HELP}; HF_TOKEN (hub token) or HF_TOKEN_FILE (file holding it, e.g. a mounted Secret); "
        "HF_ENDPOINT / HF_HUB_OFFLINE as huggingface_hub reads them. Exit 0 ok, 1 failed, 2 bad settings/arguments.",
    )
    p.add_argument("--source", help="override model.source: org/name, modelscope:org/name or an absolute path")
    p.add_argument("--revision", help="override model.revision (branch, tag or commit)")
    p.add_argument("--model-path", help="destination model directory (default: settings' fp16 path)")
    p.add_argument("--force", action="store_true", help="fetch again even when the marker says the model is complete")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    add_settings_args(p)
    return p


def hub_token() -> str | None:
    token = os.environ.get("HF_TOKEN")
    if token:
        return token.strip()
    path = os.environ.get("HF_TOKEN_FILE")
    if path:
        try:
            return Path(path).read_text().strip() or None
        except OSError as exc:
            raise JobError(f"HF_TOKEN_FILE={path} cannot be read: {exc.strerror}") from None
    return None


def fetch_huggingface(repo_id: str, revision: str, dest: Path) -> None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    except ImportError:
        raise JobError("huggingface_hub is not installed; `pip install -r requirements/jobs.txt`") from None
    try:
        snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(dest), token=hub_token())
    except GatedRepoError:
        raise JobError(f"{repo_id} is gated: accept its licence on huggingface.co and set HF_TOKEN (or HF_TOKEN_FILE)") from None
    except RepositoryNotFoundError:
        raise JobError(f"Hugging Face repository {repo_id} not found (or private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise JobError(f"revision {revision!r} of {repo_id} not found; check model.revision") from None
    except LocalEntryNotFoundError:
        raise JobError(
            f"cannot download {repo_id}@{revision}: the Hugging Face hub is unreachable or HF_HUB_OFFLINE is set; "
            "check the network/HF_ENDPOINT, or put the model at a local path and set model.source to it"
        ) from None
    except OSError as exc:
        raise JobError(f"cannot download {repo_id}@{revision}: {exc}; re-run to resume") from None


def fetch_modelscope(repo_id: str, revision: str, dest: Path) -> None:
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise JobError("modelscope is not installed; `pip install modelscope` to fetch modelscope: sources") from None
    try:
        snapshot_download(repo_id, revision=None if revision == "main" else revision, local_dir=str(dest))
    except Exception as exc:  # modelscope raises plain exceptions for network and not-found errors
        raise JobError(f"cannot download {repo_id} from ModelScope: {type(exc).__name__}: {exc}; re-run to resume") from None


def copy_local(src: Path, dest: Path, progress: Progress) -> None:
    """Copy a local model into the store: into a temp dir beside `dest`, then rename."""
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    check_free_space(dest.parent, size, f"a copy of {src}")
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    progress.stage(f"copying {src} ({human(size)}) to {dest}")
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(MANIFEST_NAME, markers.FILE_NAME, ".cache"))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


def check_local_source(src: Path) -> None:
    """A local model.source must be a model directory; say which setting is wrong, not "run fetch"."""
    if src.is_file():
        raise JobError(
            f"model.source {src} is a file; set it to the model's directory (the folder holding config.json and the weights)",
            exitcodes.USAGE,
        )
    if not src.exists():
        raise JobError(f"model.source {src} does not exist; set it to a model directory, a hub id org/name or modelscope:org/name")


def source_stats(src: Path) -> dict[str, list[int]]:
    """{relpath: [size, mtime_ns]} of a local source: a copy (copy2 keeps mtimes) is current while these match."""
    out = {}
    for rel in list_files(src):
        st = (src / rel).stat()
        out[str(rel)] = [st.st_size, st.st_mtime_ns]
    return out


def up_to_date(dest: Path, marker: dict[str, Any] | None, request_fp: str, src_stats: dict[str, list[int]] | None) -> bool:
    """The marker answers these settings and no file changed since it was written (sizes and mtimes only)."""
    if not marker or marker.get("request_fingerprint") != request_fp:
        return False
    if src_stats is not None and marker.get("source_files") != src_stats:
        return False
    manifest = read_json(dest / MANIFEST_NAME) or {}
    files = manifest.get("files") or {}
    if not files or {str(rel) for rel in list_files(dest)} != set(files):
        return False
    for rel, meta in files.items():
        st = (dest / rel).stat()
        if st.st_size != meta.get("size") or st.st_mtime_ns != meta.get("mtime_ns"):
            return False
    return True


def drop_marker(dest: Path) -> None:
    """Remove the marker before touching the files: no pod may start on a model being rewritten."""
    path = Path(markers.path_in(dest))
    if path.exists():
        path.unlink()
        fsync_dir(dest)


def body(args: argparse.Namespace) -> int:
    s = settings_from(args)
    progress = Progress("fetch", quiet=args.quiet > 0)
    overrides = {}
    if args.source:
        overrides["source"] = args.source
    if args.revision:
        overrides["revision"] = args.revision
    model = s.model.model_copy(update=overrides) if overrides else s.model
    if args.source:
        # validate the override like settings.yaml would be
        from kit.settings import ModelSettings

        model = ModelSettings.model_validate(model.model_dump())
    effective = s.model_copy(update={"model": model}) if overrides else s
    dest = Path(args.model_path or s.fp16_path)
    request = markers.fetch_request(effective)
    request_fp = markers.digest(request)
    dest.parent.mkdir(parents=True, exist_ok=True)

    with exclusive_lock(dest.parent / f".{dest.name}.lock", str(dest)):
        for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        src_stats = None
        if model.hub == "local":
            src = Path(model.source)
            check_local_source(src)
            model_config(src)
            if src.resolve() != dest.resolve():
                src_stats = source_stats(src)
        if not args.force and up_to_date(dest, markers.read_or_none(dest, markers.FETCH), request_fp, src_stats):
            marker = markers.read(dest, markers.FETCH) or {}
            print(f"up to date: {dest} (fingerprint {marker['fingerprint'][:12]}); nothing to do")
            return exitcodes.OK
        if dest.exists():
            drop_marker(dest)

        started = time.monotonic()
        if model.hub == "local":
            if src_stats is not None:
                copy_local(src, dest, progress)
            else:
                progress.stage(f"verifying the local model {dest}")
        elif model.hub == "huggingface":
            progress.stage(f"downloading {model.repo_id}@{model.revision} from Hugging Face to {dest} (resumes a partial download)")
            fetch_huggingface(model.repo_id, model.revision, dest)
        else:
            progress.stage(f"downloading {model.repo_id}@{model.revision} from ModelScope to {dest}")
            fetch_modelscope(model.repo_id, model.revision, dest)
        model_config(dest)
        if markers.fetch_installs_template(effective):
            try:
                changed = chat_template.install(dest)
            except FileNotFoundError as exc:
                raise JobError(f"{exc}; the tools-aware chat template needs the model's tokenizer_config.json") from None
            progress.stage(f"tools-aware chat template {'installed' if changed else 'already'} in {dest / 'tokenizer_config.json'}")

        progress.stage(f"hashing the files of {dest}")
        old = read_json(dest / MANIFEST_NAME) or {}
        files = file_table(dest, old.get("files") if old.get("source") == model.source else None)
        manifest = {
            "source": model.source,
            "revision": model.revision,
            "hub": model.hub,
            "path": str(dest),
            "files": files,
            "total_bytes": sum(f["size"] for f in files.values()),
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "elapsed_s": round(time.monotonic() - started, 3),
        }
        write_json_atomic(dest / MANIFEST_NAME, manifest)
        fsync_tree(dest)
        marker = markers.build(
            markers.FETCH,
            fingerprint=markers.digest({rel: f["sha256"] for rel, f in files.items()}),
            request_fp=request_fp,
            sizes={"total_bytes": manifest["total_bytes"], "files": len(files)},
            versions=versions(),
            request=request,
            source_files=src_stats,
            elapsed_s=manifest["elapsed_s"],
        )
        markers.write(dest, marker)  # last file: the Jobs and pods waiting on it may start now
    if args.json:
        summary = {k: v for k, v in manifest.items() if k != "files"} | {"files": len(files), "fingerprint": marker["fingerprint"]}
        print(json.dumps(summary, indent=2))
    else:
        print(f"model ready: {dest} ({len(files)} files, {human(manifest['total_bytes'])}); manifest {dest / MANIFEST_NAME}")
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    return run("fetch", body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
