"""Generated files: each part contributes `generated_files(profiles) -> {relative path: text}`."""

from __future__ import annotations

from pathlib import Path

from kit import ansible_vars, k8s_params
from kit.settings import Settings


def all_files(profiles: dict[str, Settings]) -> dict[Path, str]:
    files: dict[Path, str] = {}
    for part in (ansible_vars, k8s_params):
        files.update(part.generated_files(profiles))
    return files


def render_all(profiles: dict[str, Settings], root: Path, check: bool = False) -> list[Path]:
    """Write (or with `check`, only compare) every generated file; return those that changed."""
    changed: list[Path] = []
    for rel, text in sorted(all_files(profiles).items()):
        path = root / rel
        if path.exists() and path.read_text() == text:
            continue
        changed.append(rel)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)
    return changed
