"""Ansible variables generated from the settings (one vars file per profile)."""

from __future__ import annotations

from pathlib import Path

import yaml

from kit.render import flat_params
from kit.settings import Settings


def profile_vars(s: Settings) -> dict[str, object]:
    return {"kit_settings": flat_params(s)}


def generated_files(profiles: dict[str, Settings]) -> dict[Path, str]:
    from kit.outputs import HEADER

    return {
        Path("ansible/vars/profiles") / f"{name}.yml": f"---\n# {HEADER}\n" + yaml.safe_dump(profile_vars(s), sort_keys=True)
        for name, s in profiles.items()
    }
