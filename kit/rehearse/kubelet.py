"""Run one rendered pod's containers as local processes, the way a kubelet would.

Volumes: the PVC is one host folder shared by every pod; each emptyDir a fresh folder per pod;
configMap and Secret volumes are written out as files. Containers get the kubelet's environment
(kit.rehearse.expand), the image's ENTRYPOINT/CMD/ENV/WORKDIR (kit.rehearse.image), the pod's
user, and their mounts at the real mountPaths (kit.rehearse.sandbox: a private mount namespace),
or, where that cannot run, at host folders with every in-pod path in argv/env rewritten
("prefix" mode, no user switch). initContainers run to completion in order, then the main
containers; probes (httpGet, tcpSocket, exec) are polled with their periods and thresholds;
preStop runs before SIGTERM, SIGKILL follows after terminationGracePeriodSeconds.

This module is the pod's lifecycle; the parts live beside it: host (Host, ContainerRun,
PodFailed), volumes, runtime (one container's process), probes (probes and preStop). Their public
names are importable from here too.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.rehearse.host import LOG_TAIL, ContainerRun, Host, Mount, PodFailed
from kit.rehearse.inputs import settings_override
from kit.rehearse.probes import probe_once, run_pre_stop, wait_probe
from kit.rehearse.runtime import IMAGE_APP, IMAGE_VENV, Runtime
from kit.rehearse.volumes import container_mounts, pod_volumes

__all__ = [
    "IMAGE_APP",
    "IMAGE_VENV",
    "LOG_TAIL",
    "ContainerRun",
    "Host",
    "Mount",
    "PodFailed",
    "PodRun",
    "Runtime",
    "cleanup_pod",
    "container_mounts",
    "new_pod",
    "pod_volumes",
    "probe_once",
    "run_init_containers",
    "run_pre_stop",
    "settings_override",
    "start_main",
    "stop_pod",
    "wait_probe",
]


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
