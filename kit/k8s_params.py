"""Kustomize inputs generated from the settings (one overlay per profile)."""

from __future__ import annotations

from pathlib import Path

from kit.render import flat_params
from kit.settings import Settings

OVERLAY_PROFILES = ("default", "seed", "fc", "multi-gpu")


def params_env(s: Settings) -> str:
    from kit.outputs import HEADER

    lines = [f"# {HEADER}"] + [f"{k}={v}" for k, v in sorted(flat_params(s).items())]
    return "\n".join(lines) + "\n"


def generated_files(profiles: dict[str, Settings]) -> dict[Path, str]:
    return {Path("k8s/overlays") / name / "params.env": params_env(s) for name, s in profiles.items() if name in OVERLAY_PROFILES}
