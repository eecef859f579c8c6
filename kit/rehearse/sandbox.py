"""Start one container's process the way a container runtime would, without images or a runtime.

    python -m kit.rehearse.sandbox SPEC_FD

SPEC (JSON read from the inherited file descriptor, so no Secret value touches the disk): argv, env, cwd, uid/gid/groups, readonly_root, scratch (an empty host folder) and mounts
[{target, source, readonly}]. In a private mount namespace (root only) the host's root file system
is overlaid on a tmpfs (so mount points can be created without touching the host), the host's
other mounts (/proc, /dev, /sys, ...) are bound in, every mount is bound at its real path
(read-only where asked), the root is made read-only for readOnlyRootFilesystem, then chroot,
chdir, setgroups/setgid/setuid and exec: the process id stays the container's main process.
The namespace (and every mount) disappears with the last process in it.

Exit 125: the sandbox could not be built (message on stderr); 127: the executable was not found.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
SANDBOX_FAILED = 125
NOT_FOUND = 127

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {source or ''} -> {target}")


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return path.encode().decode("unicode_escape") if "\\" in path else path


def host_submounts() -> list[str]:
    """Mount points directly below the root mount (each bound recursively into the new root)."""
    rows = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    root_ids = {r[0] for r in rows if _unescape(r[4]) == "/"}
    return [_unescape(r[4]) for r in rows if r[1] in root_ids and _unescape(r[4]) != "/"]


def _make_target(path: Path, is_dir: bool) -> None:
    if path.exists() or path.is_symlink():
        return
    if is_dir:
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def build_root(spec: dict[str, Any]) -> str:
    """Everything up to the chroot; returns the new root."""
    mounts = sorted(spec["mounts"], key=lambda m: m["target"].rstrip("/").count("/"))
    submounts = host_submounts()
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    scratch = spec["scratch"]
    _mount("tmpfs", scratch, "tmpfs", MS_NOSUID, "mode=0755")
    for sub in ("upper", "work", "root"):
        os.mkdir(f"{scratch}/{sub}")
    root = f"{scratch}/root"
    _mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={scratch}/upper,workdir={scratch}/work")
    for sub in submounts:
        if sub == scratch or sub.startswith(scratch + "/"):
            continue
        target = root + sub
        if not os.path.lexists(target):
            continue
        try:
            _mount(sub, target, None, MS_BIND | MS_REC)
        except SandboxError:
            pass  # a mount the new root cannot hold (e.g. on a vanished path): the pod does not see it
    # Sources are host paths: nothing shadows them before the chroot (every target lies under root).
    for m in mounts:
        target = Path(root + m["target"])
        _make_target(target, os.path.isdir(m["source"]))
        _mount(m["source"], str(target), None, MS_BIND | MS_REC)
        if m.get("readonly"):
            _mount(None, str(target), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    open_path(root, spec.get("traverse") or [])
    add_users(root, spec.get("passwd") or [])
    if spec.get("readonly_root"):
        _mount(None, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return root


def add_users(root: str, lines: list[str]) -> None:
    """The image's own users (its `RUN useradd`) in the overlay's /etc/passwd, where the uid is missing."""
    passwd = Path(root) / "etc/passwd"
    text = passwd.read_text() if passwd.exists() else ""
    known = {row.split(":")[2] for row in text.splitlines() if row.count(":") >= 6}
    new = [line for line in lines if line.split(":")[2] not in known]
    if new:
        passwd.write_text(text + ("" if text.endswith("\n") or not text else "\n") + "\n".join(new) + "\n")


def open_path(root: str, paths: list[str]) -> None:
    """Let every user traverse the folders above `paths` (the interpreter the image's user runs).

    In an image the interpreter lives in a world-readable place; here it may sit under a private
    home (/root/.pyenv). Only folders of the overlay are changed (a copy-up: the host keeps its modes).
    """
    overlay_dev = os.stat(root).st_dev
    for path in paths:
        parts = Path(path).parts[1:]
        for i in range(len(parts)):
            folder = os.path.join(root, *parts[:i]) if i else root
            st = os.stat(folder)
            if st.st_dev == overlay_dev and not st.st_mode & 0o001:
                os.chmod(folder, (st.st_mode & 0o7777) | 0o001)


def enter(spec: dict[str, Any]) -> None:
    root = build_root(spec)
    os.chroot(root)
    os.chdir(spec.get("cwd") or "/")
    uid, gid = spec.get("uid"), spec.get("gid")
    if uid is not None:
        os.setgroups([int(g) for g in spec.get("groups") or []])
        os.setgid(int(gid if gid is not None else 0))
        os.setuid(int(uid))


def run_once(spec: dict[str, Any], repo: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `spec` in a sandbox to completion (the isolation probe, a look into a container's view)."""
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as f:
        json.dump(spec, f)
    try:
        return subprocess.run(
            [sys.executable, "-m", "kit.rehearse.sandbox", str(read_fd)],
            pass_fds=(read_fd,),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(repo)},
            check=False,
        )
    finally:
        os.close(read_fd)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m kit.rehearse.sandbox SPEC_FD", file=sys.stderr)
        return 2
    with os.fdopen(int(args[0])) as f:
        spec = json.load(f)
    try:
        enter(spec)
    except (SandboxError, OSError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr, flush=True)
        return SANDBOX_FAILED
    try:
        os.execvpe(spec["argv"][0], spec["argv"], spec["env"])
    except OSError as exc:
        code = NOT_FOUND if exc.errno in (errno.ENOENT, errno.ENOTDIR) else SANDBOX_FAILED
        print(f"sandbox: cannot exec {spec['argv'][0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
        return code
    return SANDBOX_FAILED  # not reached


if __name__ == "__main__":
    sys.exit(main())
