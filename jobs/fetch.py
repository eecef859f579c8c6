"""Put the fp16 model on the model store, or verify one already there, and write its manifest.

    python -m jobs.fetch [--profile seed] [--source ID_OR_PATH] [--revision REV] [--model-path DIR]

Sources (settings model.source): a Hugging Face id `org/name` (huggingface_hub
snapshot_download into the store: resumable, revision pinned, progress bars), `modelscope:org/name`
(modelscope's snapshot_download), or an absolute local path (copied into the store when it is
elsewhere, verified in place when it is the store path). Every fetch ends with
`kit-manifest.json` in the model directory: each file's size and sha256, the source and the
revision; the quantize job reuses these hashes for its fingerprint.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from jobs._common import (
    ENV_HELP,
    MANIFEST_NAME,
    JobError,
    Progress,
    add_settings_args,
    check_free_space,
    file_table,
    human,
    model_config,
    read_json,
    run,
    settings_from,
    write_json_atomic,
)
from kit import exitcodes

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
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(MANIFEST_NAME, ".cache"))
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)


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
    dest = Path(args.model_path or s.fp16_path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)

    started = time.monotonic()
    if model.hub == "local":
        src = Path(model.source)
        model_config(src)
        if src.resolve() != dest.resolve():
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
    if args.json:
        print(json.dumps({k: v for k, v in manifest.items() if k != "files"} | {"files": len(files)}, indent=2))
    else:
        print(f"model ready: {dest} ({len(files)} files, {human(manifest['total_bytes'])}); manifest {dest / MANIFEST_NAME}")
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    return run("fetch", body, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
