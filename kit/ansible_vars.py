"""Ansible variables generated from the settings (one vars file per profile).

Each setting maps to the role-prefixed variable of the role that uses it, so the roles keep
geerlingguy-style defaults of their own and a profile file only says what the settings say.
The api_server argv comes from `kit.render.serve_args` (the one rendering path); the systemd
unit swaps argv[0] for the environment's `lmdeploy` and reads the key from a root-only file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kit.render import API_KEY_ENV, GENERATED_HEADER, flat_params, serve_args
from kit.settings import Settings

# systemd expands `${VAR}` from the unit's EnvironmentFile as exactly one argument.
API_KEY_PLACEHOLDER = "${" + API_KEY_ENV + "}"


def role_vars(s: Settings) -> dict[str, Any]:
    """Settings -> role-prefixed Ansible variables (see each role's defaults/main.yml)."""
    p, v = s.provision, s.versions
    return {
        # gpu_preflight
        "gpu_preflight_require_gpu": p.require_gpu,
        # python_env
        "python_env_type": p.env_type,
        "python_env_prefix": p.env_prefix,
        "python_env_python_version": v.python,
        "python_env_torch_version": v.torch,
        "python_env_lmdeploy_version": v.lmdeploy,
        "python_env_transformers_version": v.transformers,
        "python_env_cuda_version": v.cuda,
        "python_env_torch_index_url": p.torch_index_url,
        "python_env_pip_index_url": p.pip_index_url,
        "python_env_wheelhouse": p.wheelhouse,
        "python_env_conda_installer_url": p.conda_installer_url,
        "python_env_conda_installer_sha256": p.conda_installer_sha256,
        "python_env_conda_channel": p.conda_channel,
        # model_store
        "model_store_root": s.storage.models_root,
        "model_store_owner": p.service_user,
        "model_store_fp16_path": s.fp16_path,
        "model_store_quantized_path": s.quantized_path,
        "model_store_calibration_path": s.calibration_path,
        # lmdeploy_service
        "lmdeploy_service_enabled": p.systemd_services,
        "lmdeploy_service_user": p.service_user,
        # No key here: the unit runs `python -m kit.serve -- <argv>`, which takes it from the env file.
        "lmdeploy_service_api_server_argv": serve_args(s),
        "lmdeploy_service_api_port": s.serving.port,
        "lmdeploy_service_gradio_port": s.gradio.port,
    }


class _IndentedDumper(yaml.SafeDumper):
    """Indent list items under their key (yamllint's and ansible-lint's style)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def profile_vars(s: Settings) -> dict[str, object]:
    return {**role_vars(s), "kit_settings": flat_params(s)}


def generated_files(profiles: dict[str, Settings]) -> dict[Path, str]:
    return {
        Path("ansible/vars/profiles") / f"{name}.yml": f"---\n# {GENERATED_HEADER}\n"
        + yaml.dump(profile_vars(s), Dumper=_IndentedDumper, sort_keys=True)
        for name, s in profiles.items()
    }
