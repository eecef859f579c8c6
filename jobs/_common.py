"""Shared plumbing of the job entrypoints: settings, one-line errors, progress, hashing, locks.

Nothing here imports torch or transformers: the quantize job decides whether work is needed
(and exits) before any heavy import.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kit import entry, exitcodes, markers
from kit.atomic import fsync_dir as fsync_dir  # re-exported for the jobs
from kit.atomic import write_json_atomic as write_json_atomic
from kit.entry import SETTINGS_ENV_HELP, KitError, add_settings_options
from kit.entry import settings_from as settings_from  # re-exported for the jobs

log = logging.getLogger("jobs")

MANIFEST_NAME = "kit-manifest.json"
# The completion marker (kit/markers.py: name, content, atomic writer); written last by fetch and quantize.
MARKER_NAME = markers.FILE_NAME
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CHUNK = 8 << 20


class JobError(KitError):
    """A known failure: printed as one line, exit code attached (FAILED unless told)."""


# The shared settings options, settings builder and error mapper (kit/entry.py).
add_settings_args = add_settings_options
ENV_HELP = SETTINGS_ENV_HELP


def run(name: str, body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    """Parse, set up logging, run `body`; known errors become one stderr line and an exit code."""
    return entry.run(parser, body, argv, prog=name)


class Progress:
    """Stage lines with elapsed seconds on stderr (silenced by -q)."""

    def __init__(self, name: str, quiet: bool = False) -> None:
        self.name = name
        self.quiet = quiet
        self.start = time.monotonic()
        self.stages: dict[str, float] = {}
        self._last = self.start

    def stage(self, text: str) -> None:
        now = time.monotonic()
        if not self.quiet:
            print(f"[{self.name} {now - self.start:7.1f}s] {text}", file=sys.stderr, flush=True)
        self._last = now

    def done(self, key: str) -> float:
        """Record how long the stage since the last `stage`/`done` took."""
        now = time.monotonic()
        self.stages[key] = round(now - self._last, 3)
        self._last = now
        return self.stages[key]

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_files(root: Path, skip: tuple[str, ...] = (MANIFEST_NAME, MARKER_NAME)) -> list[Path]:
    """Regular files under `root` (relative, sorted), hidden cache folders and kit files left out."""
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0].startswith(".") or path.name in skip or not path.is_file():
            continue
        out.append(rel)
    return out


def file_table(root: Path, known: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """{relpath: {size, mtime_ns, sha256}}; hashes from `known` are reused when size and mtime match."""
    known = known or {}
    table: dict[str, dict[str, Any]] = {}
    for rel in list_files(root):
        st = (root / rel).stat()
        prev = known.get(str(rel))
        if prev and prev.get("size") == st.st_size and prev.get("mtime_ns") == st.st_mtime_ns and prev.get("sha256"):
            digest = prev["sha256"]
        else:
            digest = sha256_file(root / rel)
        table[str(rel)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return table


def tree_size(root: Path) -> int:
    return sum((root / rel).stat().st_size for rel in list_files(root, skip=()))


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an fcntl lock for the whole job; a second writer fails at once with who holds it."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise JobError(
                f"another job is already writing {what} (lock {lock_path} held by pid {holder}); wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


FREE_BYTES_ENV = "KIT_FREE_BYTES"


def free_bytes(path: Path) -> int:
    """Free space where `path` lives. KIT_FREE_BYTES overrides the measurement (for tests and dry runs)."""
    override = os.environ.get(FREE_BYTES_ENV)
    if override:
        try:
            return int(override)
        except ValueError:
            raise JobError(f"{FREE_BYTES_ENV}={override!r} is not a number of bytes", exitcodes.USAGE) from None
    probe = path
    while not probe.exists():
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def check_free_space(path: Path, needed: int, what: str) -> None:
    free = free_bytes(path)
    if free < needed:
        raise JobError(
            f"not enough disk space for {what} at {path}: {human(needed)} needed, {human(free)} free; free space or enlarge the model store"
        )


def human(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}"


def model_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a model directory, or a one-line error saying what to do."""
    if not model_dir.is_dir():
        raise JobError(f"model path {model_dir} does not exist; run `python -m jobs.fetch` first or pass --model-path")
    cfg = read_json(model_dir / "config.json")
    if cfg is None:
        raise JobError(f"{model_dir} has no readable config.json; it is not a Hugging Face model directory (re-run `python -m jobs.fetch`)")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in model_dir.iterdir()):
        raise JobError(
            f"{model_dir} has no weight files (*.safetensors / *.bin); the download is incomplete (re-run `python -m jobs.fetch`)"
        )
    return cfg


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model part of a config (VL models nest it)."""
    for key in ("text_config", "llm_config"):
        if isinstance(cfg.get(key), dict):
            return cfg[key]
    return cfg


def versions(dists: tuple[str, ...] = ("lmdeploy", "torch", "transformers", "huggingface_hub")) -> dict[str, str]:
    """Python and package versions for a marker (metadata only: nothing is imported)."""
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def lmdeploy_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lmdeploy")
    except metadata.PackageNotFoundError:
        return "not installed"
