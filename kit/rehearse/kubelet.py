"""Run one rendered pod's containers as local processes, the way a kubelet would.

Volumes: the PVC is one host folder shared by every pod; each emptyDir a fresh folder per pod;
configMap and Secret volumes are written out as files. Containers get the kubelet's environment
(kit.rehearse.expand), the image's ENTRYPOINT/CMD/ENV/WORKDIR (kit.rehearse.image), the pod's
user, and their mounts at the real mountPaths (kit.rehearse.sandbox: a private mount namespace),
or, where that cannot run, at host folders with every in-pod path in argv/env rewritten
("prefix" mode, no user switch). initContainers run to completion in order, then the main
containers; probes (httpGet, tcpSocket, exec) are polled with their periods and thresholds;
preStop runs before SIGTERM, SIGKILL follows after terminationGracePeriodSeconds.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kit.rehearse import sandbox
from kit.rehearse.expand import EnvError, container_env, expand
from kit.rehearse.image import ImageConfig, ImageError, container_argv, read_image

log = logging.getLogger("kit.rehearse")

# Where the kit's images keep their environment and code (images/*/Dockerfile).
IMAGE_VENV = "/opt/venv"
IMAGE_APP = "/app"
LOG_TAIL = 30


class PodFailed(Exception):
    """A pod (or one of its containers) failed; `container` and the log tail say where and why."""

    def __init__(self, reason: str, container: str = "", tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.container = container
        self.tail = tail


@dataclass
class Mount:
    target: str
    source: Path
    readonly: bool = False


@dataclass
class Host:
    """The local stand-ins for the cluster: model store, secrets, images, how to isolate."""

    repo: Path
    venv: Path
    workdir: Path
    store: Path
    secrets: dict[str, dict[str, str]]
    config_maps: dict[str, dict[str, str]]
    mode: str = "mountns"  # or "prefix"
    echo: Callable[[str], None] = print
    redact: Callable[[str], str] = str
    init_timeout_s: float = 60.0
    pod_counter: int = 0

    @property
    def images_dir(self) -> Path:
        return self.repo / "images"

    def secret(self, name: str, key: str, optional: bool) -> str | None:
        value = (self.secrets.get(name) or {}).get(key)
        if value is None and not optional:
            raise EnvError(f"Secret {name} has no key {key} (add it to the secrets file: {name}: {{{key}: ...}})")
        return value


@dataclass
class ContainerRun:
    """One started container: its process, log and what was decided for it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    user: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    exit_code: int | None = None
    seconds: float | None = None
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None
    launch: dict[str, Any] = field(default_factory=dict)

    def tail(self, n: int = LOG_TAIL) -> str:
        return "\n".join(self.lines[-n:])

    def summary(self, redact: Callable[[str], str]) -> dict[str, Any]:
        return {
            "name": self.name,
            "argv": [redact(a) for a in self.argv],
            "cwd": self.cwd,
            "user": self.user,
            "exit_code": self.exit_code,
            "seconds": self.seconds,
            "log": str(self.log),
        }


# ---------------------------------------------------------------------------------------------- volumes


def _write_files(folder: Path, data: Mapping[str, str], items: list[dict[str, Any]] | None, mode: int, what: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
    for key, rel in wanted.items():
        if key not in data:
            raise PodFailed(f"{what} has no key {key!r} (CreateContainerConfigError: the pod cannot start)")
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(data[key]))
        path.chmod(mode)


def _fs_group(path: Path, gid: int) -> None:
    """fsGroup: the volume's group becomes gid, group-writable, setgid folders (kubelet's ownership change)."""
    for p in [path, *path.rglob("*")]:
        if p.is_symlink():
            continue
        os.chown(p, -1, gid)
        mode = p.stat().st_mode
        p.chmod(mode | 0o060 | (0o2010 if p.is_dir() else 0))


def pod_volumes(host: Host, spec: dict[str, Any], pod_dir: Path) -> dict[str, Path]:
    """Volume name -> host folder for one pod."""
    out: dict[str, Path] = {}
    fs_group = (spec.get("securityContext") or {}).get("fsGroup")
    for vol in spec.get("volumes") or []:
        name = vol["name"]
        folder = pod_dir / "volumes" / name
        if "persistentVolumeClaim" in vol:
            out[name] = host.store
            if fs_group is not None and os.geteuid() == 0:
                _fs_group(host.store, int(fs_group))
            continue
        if "emptyDir" in vol:
            folder.mkdir(parents=True)
            folder.chmod(0o777)
        elif "configMap" in vol:
            ref = vol["configMap"]
            data = host.config_maps.get(ref["name"])
            if data is None:
                raise PodFailed(f"volume {name}: ConfigMap {ref['name']} is not among the rendered objects")
            _write_files(folder, data, ref.get("items"), ref.get("defaultMode", 0o644), f"volume {name}: ConfigMap {ref['name']}")
        elif "secret" in vol:
            ref = vol["secret"]
            data = host.secrets.get(ref["secretName"])
            if data is None and not ref.get("optional"):
                raise PodFailed(f"volume {name}: Secret {ref['secretName']} is not in the secrets file")
            _write_files(folder, data or {}, ref.get("items"), ref.get("defaultMode", 0o644), f"volume {name}: Secret {ref['secretName']}")
            if fs_group is not None and os.geteuid() == 0:
                _fs_group(folder, int(fs_group))
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise PodFailed(f"volume {name}: type {kinds} is not supported by the rehearsal")
        out[name] = folder
    return out


def container_mounts(container: dict[str, Any], volumes: Mapping[str, Path]) -> list[Mount]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        if vm["name"] not in volumes:
            raise PodFailed(f"container {container['name']}: volumeMount {vm['name']} has no volume in the pod", container["name"])
        source = volumes[vm["name"]]
        if vm.get("subPath"):
            source = source / vm["subPath"]
            if not source.exists():
                source.mkdir(parents=True)
        mounts.append(Mount(vm["mountPath"], source, bool(vm.get("readOnly"))))
    return mounts


# ---------------------------------------------------------------------------------------------- containers


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


# ---------------------------------------------------------------------------------------------- probes


def _port(probe_port: Any, container: dict[str, Any]) -> int:
    if isinstance(probe_port, int) or str(probe_port).isdigit():
        return int(probe_port)
    for p in container.get("ports") or []:
        if p.get("name") == probe_port:
            return int(p["containerPort"])
    raise PodFailed(f"probe port {probe_port!r} is not a named port of container {container['name']}", container["name"])


def probe_once(rt: Runtime, run: ContainerRun, container: dict[str, Any], probe: dict[str, Any]) -> tuple[bool, str]:
    timeout = float(probe.get("timeoutSeconds", 1))
    if "httpGet" in probe:
        h = probe["httpGet"]
        url = f"{h.get('scheme', 'HTTP').lower()}://{h.get('host', '127.0.0.1')}:{_port(h['port'], container)}{h.get('path', '/')}"
        req = urllib.request.Request(url, headers={x["name"]: x["value"] for x in h.get("httpHeaders") or []})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return 200 <= resp.status < 400, f"GET {url}: {resp.status}"
        except urllib.error.HTTPError as exc:
            return False, f"GET {url}: {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            return False, f"GET {url}: {getattr(exc, 'reason', exc)}"
    if "tcpSocket" in probe:
        port = _port(probe["tcpSocket"]["port"], container)
        try:
            with socket.create_connection((probe["tcpSocket"].get("host", "127.0.0.1"), port), timeout=timeout):
                return True, f"tcp {port}: open"
        except OSError as exc:
            return False, f"tcp {port}: {exc}"
    if "exec" in probe:
        code, out = rt.exec_in(run, probe["exec"]["command"], timeout)
        return code == 0, f"exec exit {code}: {out[-200:]}"
    raise PodFailed(f"probe kind {sorted(probe)} is not supported by the rehearsal", container["name"])


def wait_probe(
    rt: Runtime, run: ContainerRun, container: dict[str, Any], probe: dict[str, Any], kind: str, on_tick: Callable[[], None]
) -> float:
    """Poll one probe as the kubelet does; returns seconds since start when it passed.

    Raises PodFailed when the process exits first or failureThreshold consecutive failures occur.
    """
    period = float(probe.get("periodSeconds", 10))
    threshold = int(probe.get("failureThreshold", 3))
    need = int(probe.get("successThreshold", 1))
    next_at = run.started + float(probe.get("initialDelaySeconds", 0))
    failures = successes = 0
    detail = ""
    while True:
        on_tick()
        if rt.poll(run) is not None:
            raise PodFailed(
                f"container {run.name} exited with code {run.exit_code} after {run.seconds:.1f} s, before its {kind} passed",
                run.name,
                run.tail(),
            )
        now = time.monotonic()
        if now < next_at:
            time.sleep(min(0.25, next_at - now))
            continue
        ok, detail = probe_once(rt, run, container, probe)
        next_at = now + period
        if ok:
            successes += 1
            failures = 0
            if successes >= need:
                return round(time.monotonic() - run.started, 2)
        else:
            successes = 0
            failures += 1
            if failures >= threshold:
                raise PodFailed(
                    f"{kind} of container {run.name} failed {failures} times ({period:.0f} s apart): {detail}", run.name, run.tail()
                )


def run_pre_stop(rt: Runtime, run: ContainerRun, container: dict[str, Any]) -> str:
    hook = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if not hook or run.proc is None or rt.poll(run) is not None:
        return ""
    if "sleep" in hook:
        time.sleep(float(hook["sleep"]["seconds"]))
        return f"sleep {hook['sleep']['seconds']} s"
    if "exec" in hook:
        code, _ = rt.exec_in(run, hook["exec"]["command"], 60)
        return f"exec exit {code}"
    if "httpGet" in hook:
        ok, detail = probe_once(rt, run, container, {"httpGet": hook["httpGet"], "timeoutSeconds": 10})
        return detail
    return f"unsupported preStop {sorted(hook)}"


# ---------------------------------------------------------------------------------------------- pods


@dataclass
class PodRun:
    name: str
    spec: dict[str, Any]
    dir: Path
    runtime: Runtime
    volumes: dict[str, Path] = field(default_factory=dict)
    init: list[ContainerRun] = field(default_factory=list)
    main: list[ContainerRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        redact = self.runtime.host.redact
        return {
            "pod": self.name,
            "init_containers": [c.summary(redact) for c in self.init],
            "containers": [c.summary(redact) for c in self.main],
            "notes": self.notes,
        }


def new_pod(host: Host, owner: str, template: dict[str, Any], runtime: Runtime) -> PodRun:
    host.pod_counter += 1
    name = f"{owner}-{host.pod_counter}"
    pod_dir = host.workdir / "pods" / name
    pod_dir.mkdir(parents=True)
    pod = PodRun(name, template["spec"], pod_dir, runtime)
    pod.volumes = pod_volumes(host, pod.spec, pod_dir)
    return pod


def run_init_containers(pod: PodRun, on_tick: Callable[[], None]) -> None:
    rt, host = pod.runtime, pod.runtime.host
    for c in pod.spec.get("initContainers") or []:
        run, launch = rt.prepare(pod.name, pod.spec, c, pod.volumes, pod.dir)
        pod.init.append(run)
        host.echo(f"{pod.name}: initContainer {c['name']}: {' '.join(host.redact(a) for a in run.argv)[:200]}")
        rt.start(run, launch, pod.dir)
        deadline = time.monotonic() + host.init_timeout_s
        while rt.poll(run) is None and time.monotonic() < deadline:
            on_tick()
            time.sleep(0.2)
        if run.exit_code is None:
            rt.stop(run, 2)
            last = run.lines[-1] if run.lines else "(no output)"
            raise PodFailed(
                f"initContainer {c['name']} did not finish within {host.init_timeout_s:.0f} s; last output: {last}", c["name"], run.tail()
            )
        if run.exit_code != 0:
            raise PodFailed(f"initContainer {c['name']} exited with code {run.exit_code}", c["name"], run.tail())
        host.echo(f"{pod.name}: initContainer {c['name']} completed in {run.seconds:.1f} s")


def start_main(pod: PodRun) -> list[tuple[ContainerRun, dict[str, Any]]]:
    rt, host = pod.runtime, pod.runtime.host
    started = []
    for c in pod.spec.get("containers") or []:
        run, launch = rt.prepare(pod.name, pod.spec, c, pod.volumes, pod.dir)
        pod.main.append(run)
        host.echo(f"{pod.name}: container {c['name']} ({run.user}): {' '.join(host.redact(a) for a in run.argv)[:300]}")
        rt.start(run, launch, pod.dir)
        started.append((run, c))
    return started


def stop_pod(pod: PodRun) -> None:
    """preStop hooks, then SIGTERM, SIGKILL after terminationGracePeriodSeconds (preStop time counts)."""
    grace = float(pod.spec.get("terminationGracePeriodSeconds", 30))
    begin = time.monotonic()
    pairs = list(zip(pod.main, pod.spec.get("containers") or [], strict=False))
    for run, c in pairs:
        done = run_pre_stop(pod.runtime, run, c)
        if done:
            pod.notes.append(f"preStop of {run.name}: {done}")
    for run, _ in pairs:
        pod.runtime.stop(run, max(2.0, grace - (time.monotonic() - begin)))
    for run in pod.init:
        pod.runtime.stop(run, 2)


def cleanup_pod(pod: PodRun) -> None:
    """Remove the pod's emptyDirs and mount scratch folders (logs stay)."""
    shutil.rmtree(pod.dir / "volumes", ignore_errors=True)
    for scratch in pod.dir.glob(".root-*"):
        shutil.rmtree(scratch, ignore_errors=True)


def settings_override(text: str, overrides: Mapping[str, Any]) -> str:
    """Apply dotted `section.key: value` overrides to the resolved profile of a mounted settings.yaml."""
    data = yaml.safe_load(text)
    target = data.setdefault("defaults", {})
    for dotted, value in overrides.items():
        node = target
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return (
        "# rehearsal copy: overrides " + ", ".join(f"{k}={v}" for k, v in overrides.items()) + "\n" + yaml.safe_dump(data, sort_keys=False)
    )
