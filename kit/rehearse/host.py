"""What the rehearsal's kubelet works with: the host's stand-ins for the cluster, one started container, a failure.

Host holds the model store, the Secret and ConfigMap data and the isolation mode; Mount is one
volumeMount resolved to a host folder; ContainerRun records one started container (process, log,
decisions); PodFailed says which container failed and why, with its log tail.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kit.rehearse.expand import EnvError

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
