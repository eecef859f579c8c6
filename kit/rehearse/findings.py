"""Secret values during a rehearsal: redacted from every log and report, and watched for in process argv.

A Secret value in /proc/<pid>/cmdline is a finding (exit 1, reported apart from pod failures): any
local user can read it there. Values shorter than MIN_SECRET_LEN are neither redacted nor watched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

MIN_SECRET_LEN = 8


def redactor(label_of: Mapping[str, str]) -> Callable[[str], str]:
    """A function that replaces each Secret value (label_of: value -> `secret/key`) with `<secret label>`."""

    def redact(text: str) -> str:
        for value, label in label_of.items():
            if len(value) >= MIN_SECRET_LEN and value in text:
                text = text.replace(value, f"<secret {label}>")
        return text

    return redact


class CmdlineWatch(threading.Thread):
    """Scans every process's /proc/<pid>/cmdline for Secret values while the rehearsal runs."""

    def __init__(self, values: dict[str, str], redact: Any) -> None:
        super().__init__(name="cmdline-watch", daemon=True)
        self.values = {label: v for label, v in values.items() if len(v) >= MIN_SECRET_LEN}
        self.redact = redact
        self.findings: dict[str, dict[str, Any]] = {}
        self.stopped = threading.Event()
        self.scans = 0

    def scan(self) -> None:
        self.scans += 1
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            for label, value in self.values.items():
                if label not in self.findings and value.encode() in raw:
                    argv = [self.redact(a) for a in raw.decode(errors="replace").split("\0") if a]
                    self.findings[label] = {
                        "check": "secret-in-cmdline",
                        "secret": label,
                        "pid": int(entry.name),
                        "process": " ".join(argv)[:300],
                        "why": "any local user can read /proc/<pid>/cmdline (and `ps`, crash reports, audit logs); "
                        "pass the value by environment or a mounted file (issue 15 item 6)",
                    }

    def run(self) -> None:
        while not self.stopped.wait(0.3):
            self.scan()
