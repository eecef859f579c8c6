"""Start, watch, exec into and stop one container's process, as a container runtime would.

A container gets the kubelet's environment (kit.rehearse.expand), the image's ENTRYPOINT/CMD/ENV/
WORKDIR (kit.rehearse.image), the pod's user and its mounts at the real mountPaths through
kit.rehearse.sandbox (a private mount namespace), or, where that cannot run, host folders with every
in-pod path in argv/env rewritten ("prefix" mode, no user switch). Stopping: SIGTERM to the
process group, SIGKILL after the grace period.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kit.rehearse import sandbox
from kit.rehearse.expand import EnvError, container_env, expand
from kit.rehearse.host import ContainerRun, Host, Mount, PodFailed
from kit.rehearse.image import ImageConfig, ImageError, container_argv, read_image
from kit.rehearse.volumes import container_mounts

# Where the kit's images keep their environment and code (images/*/Dockerfile).
IMAGE_VENV = "/opt/venv"
IMAGE_APP = "/app"


def _identity(pod_sc: Mapping[str, Any], sc: Mapping[str, Any], image: ImageConfig) -> tuple[int, int, list[int]]:
    uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
    if uid is None and image.user:
        user = image.user.split(":")[0]
        uid = int(user) if user.isdigit() else None
        if uid is None:
            raise PodFailed(f"image USER {image.user!r} is not numeric: the kubelet cannot verify runAsNonRoot")
    uid = int(uid or 0)
    gid = int(sc.get("runAsGroup", pod_sc.get("runAsGroup", 0)))
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.append(int(pod_sc["fsGroup"]))
    if (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))) and uid == 0:
        raise PodFailed("runAsNonRoot is set but the container would run as root (CreateContainerConfigError)")
    return uid, gid, sorted({gid, *groups})


class Runtime:
    """Starts containers in the chosen isolation mode and stops them as the kubelet does."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def image_mounts(self) -> list[Mount]:
        return [Mount(IMAGE_VENV, self.host.venv, True), Mount(IMAGE_APP, self.host.repo, True)]

    def traverse(self) -> list[str]:
        """What the image's user must reach: the interpreter and the folders the venv's .pth files add."""
        out = [os.path.realpath(self.host.venv / "bin" / "python")]
        for pth in self.host.venv.glob("lib/python3*/site-packages/*.pth"):
            out += [line.strip() for line in pth.read_text().splitlines() if line.startswith("/") and os.path.isdir(line.strip())]
        return out

    def translate(self, text: str, mounts: list[Mount]) -> str:
        """prefix mode: every in-pod path (also after `--flag=` or in `A:B` lists) -> its host folder."""
        if self.host.mode != "prefix":
            return text
        table = sorted(((m.target.rstrip("/") or "/", str(m.source)) for m in [*mounts, *self.image_mounts()]), key=lambda t: -len(t[0]))

        def one(token: str) -> str:
            for target, source in table:
                if token == target or token.startswith(target + "/"):
                    return source + token[len(target) :]
            return token

        parts = []
        for piece in text.split(":"):
            head, eq, tail = piece.partition("=")
            parts.append(head + eq + one(tail) if eq and tail.startswith("/") else one(piece))
        return ":".join(parts)

    def prepare(
        self, pod: str, spec: dict[str, Any], container: dict[str, Any], volumes: Mapping[str, Path], pod_dir: Path
    ) -> tuple[ContainerRun, dict[str, Any]]:
        name = container["name"]
        try:
            image = read_image(self.host.images_dir, container.get("image", ""))
            env = container_env(container, self.host.config_maps, self.host.secret)
        except (ImageError, EnvError) as exc:
            raise PodFailed(f"container {name}: {exc} (CreateContainerConfigError)", name) from None
        argv = [expand(a, env) for a in container_argv(image, container)]
        if not argv:
            raise PodFailed(f"container {name}: neither the pod nor the image gives a command", name)
        mounts = container_mounts(container, volumes)
        pod_sc, sc = spec.get("securityContext") or {}, container.get("securityContext") or {}
        try:
            uid, gid, groups = _identity(pod_sc, sc, image)
        except PodFailed as exc:
            raise PodFailed(f"container {name}: {exc.reason}", name) from None
        full_env = {**image.env, "HOSTNAME": pod, **env}
        cwd = container.get("workingDir") or image.workdir
        run = ContainerRun(name, argv, full_env, cwd, f"{uid}:{gid}", pod_dir / f"{name}.log")
        launch: dict[str, Any] = {
            "argv": argv,
            "env": full_env,
            "cwd": cwd,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "readonly_root": bool(sc.get("readOnlyRootFilesystem")),
            "traverse": self.traverse(),
            "passwd": image.passwd,
            "mounts": [{"target": m.target, "source": str(m.source), "readonly": m.readonly} for m in [*self.image_mounts(), *mounts]],
        }
        if self.host.mode == "prefix":
            launch["argv"] = [self.translate(a, mounts) for a in argv]
            launch["env"] = {k: self.translate(v, mounts) for k, v in full_env.items()}
            tmp = next((m.source for m in mounts if m.target == "/tmp"), None)
            if tmp is not None:
                launch["env"]["TMPDIR"] = str(tmp)
            launch["cwd"] = self.translate(cwd, mounts)
            run.user = f"{os.geteuid()} (runAsUser {uid} not applied: prefix mode)"
        return run, launch

    def start(self, run: ContainerRun, launch: dict[str, Any], pod_dir: Path) -> None:
        run.launch = launch
        run.log.parent.mkdir(parents=True, exist_ok=True)
        if self.host.mode == "mountns":
            scratch = pod_dir / f".root-{run.name}"
            scratch.mkdir()
            launch = {**launch, "scratch": str(scratch)}
            read_fd, write_fd = os.pipe()
            with os.fdopen(write_fd, "w") as f:
                json.dump(launch, f)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(self.host.repo)}
            argv = [sys.executable, "-m", "kit.rehearse.sandbox", str(read_fd)]
            try:
                run.proc = subprocess.Popen(
                    argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    pass_fds=(read_fd,), start_new_session=True,
                )  # fmt: skip
            finally:
                os.close(read_fd)
        else:
            run.proc = subprocess.Popen(
                launch["argv"], env=launch["env"], cwd=launch["cwd"], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        run.started = time.monotonic()
        run.pump = threading.Thread(target=self._pump, args=(run,), name=f"log-{run.name}", daemon=True)
        run.pump.start()

    def exists_in_view(self, run: ContainerRun, path: str, pod_dir: Path) -> bool:
        """Whether `path` exists as the container sees it: a throw-away process with the same mounts and user."""
        if self.host.mode == "prefix":
            mounts = [Mount(m["target"], Path(m["source"]), m["readonly"]) for m in run.launch["mounts"]]
            return os.path.exists(self.translate(path, mounts))
        scratch = Path(tempfile.mkdtemp(prefix=".view-", dir=pod_dir))
        spec = {**run.launch, "argv": ["test", "-e", path], "env": {"PATH": "/usr/bin:/bin"}, "scratch": str(scratch)}
        try:
            proc = sandbox.run_once(spec, self.host.repo)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return proc.returncode == 0

    def _pump(self, run: ContainerRun) -> None:
        assert run.proc is not None and run.proc.stdout is not None
        with open(run.log, "w") as out:
            for raw in run.proc.stdout:
                line = self.host.redact(raw.decode(errors="replace").rstrip("\n"))
                out.write(line + "\n")
                out.flush()
                run.lines.append(line)
                del run.lines[:-200]
                self.host.echo(f"  | {run.name}: {line[:240]}")

    def poll(self, run: ContainerRun) -> int | None:
        assert run.proc is not None
        code = run.proc.poll()
        if code is not None and run.exit_code is None:
            if run.pump is not None:
                run.pump.join(timeout=5)
            run.exit_code = code
            run.seconds = round(time.monotonic() - run.started, 2)
        return run.exit_code

    def wait(self, run: ContainerRun, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.poll(run) is not None:
                return run.exit_code
            time.sleep(0.2)
        return None

    def exec_in(self, run: ContainerRun, argv: list[str], timeout_s: float) -> tuple[int, str]:
        """An exec probe/hook: in the container's mount namespace, root and user (nsenter)."""
        assert run.proc is not None
        if self.host.mode == "mountns":
            uid, gid = run.user.split(":")
            cmd = ["nsenter", "-t", str(run.proc.pid), "-m", "-r", "-w", "-S", uid, "-G", gid, "--", *argv]
            env = run.env
        else:
            cmd, env = argv, run.env
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return 1, f"timed out after {timeout_s:.0f} s"
        except FileNotFoundError as exc:
            return 127, str(exc)
        return proc.returncode, (proc.stdout + proc.stderr).strip()

    def stop(self, run: ContainerRun, grace_s: float) -> None:
        """SIGTERM to the container's process group, SIGKILL after the grace period."""
        if run.proc is None or self.poll(run) is not None:
            return
        with _suppress_lookup():
            os.killpg(run.proc.pid, signal.SIGTERM)
        if self.wait(run, grace_s) is None:
            with _suppress_lookup():
                os.killpg(run.proc.pid, signal.SIGKILL)
            self.wait(run, 10)


class _suppress_lookup:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        return exc_type is ProcessLookupError
