"""The one settings source: the `Settings` schema, profile merge and loading.

`settings.yaml` holds every knob once under `defaults:`; `profiles:` hold small overrides
that are deep-merged on top. Everything else (Ansible vars, kustomize params, jobs, clients)
reads the validated `Settings` object returned by `load_settings`. The models of its sections
live in kit/settings_sections.py; every name is importable from here (`from kit.settings import X`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from kit.datafile import read_data
from kit.settings_sections import (
    GradioSettings,
    ImageSettings,
    KubernetesSettings,
    ModelSettings,
    MonitoringSettings,
    ProvisionSettings,
    QuantizationSettings,
    Section,
    ServingSettings,
    StorageSettings,
    Toleration,
    VersionSettings,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS_PATH = REPO_ROOT / "settings.yaml"
DEFAULT_PROFILE = "default"

__all__ = [
    "DEFAULT_PROFILE",
    "DEFAULT_SETTINGS_PATH",
    "REPO_ROOT",
    "GradioSettings",
    "ImageSettings",
    "KubernetesSettings",
    "ModelSettings",
    "MonitoringSettings",
    "ProvisionSettings",
    "QuantizationSettings",
    "Section",
    "ServingSettings",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "Toleration",
    "VersionSettings",
    "deep_merge",
    "load_settings",
    "parse_override",
    "profile_names",
    "read_raw",
]


class SettingsError(Exception):
    """Settings that cannot be used; the message names the field, the value and what is allowed."""


class Settings(Section):
    profile: str = Field(DEFAULT_PROFILE, description="Name of the profile these values came from.")
    model: ModelSettings = ModelSettings()
    storage: StorageSettings = StorageSettings()
    quantization: QuantizationSettings = QuantizationSettings()
    serving: ServingSettings = ServingSettings()
    gradio: GradioSettings = GradioSettings()
    images: ImageSettings = ImageSettings()
    versions: VersionSettings = VersionSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    provision: ProvisionSettings = ProvisionSettings()

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        s, q = self.serving, self.quantization
        if s.backend == "turbomind" and q.enabled and q.w_group_size != 128:
            raise ValueError(
                f"quantization.w_group_size={q.w_group_size} cannot be served by serving.backend=turbomind; "
                "allowed: 128 (or use serving.backend=pytorch)"
            )
        if s.model_format == "awq" and not q.enabled:
            raise ValueError("serving.model_format=awq needs quantization.enabled=true; allowed: hf or empty")
        if s.backend == "pytorch" and s.model_format == "hf":
            raise ValueError("serving.model_format=hf is rejected by the pytorch backend; allowed: empty or awq")
        if s.port == self.gradio.port:
            raise ValueError(f"serving.port and gradio.port are both {s.port}; they must differ")
        m, k = self.monitoring, self.kubernetes
        if m.max_replicas > 1 and k.access_mode != "ReadWriteMany":
            raise ValueError(
                f"monitoring.max_replicas={m.max_replicas} needs kubernetes.access_mode=ReadWriteMany: replicas on other nodes "
                f"cannot mount a {k.access_mode} model store (Multi-Attach); set max_replicas: 1 or a ReadWriteMany storage_class"
            )
        return self

    # Derived values every consumer uses (never recomputed elsewhere).
    @property
    def fp16_path(self) -> str:
        return f"{self.storage.models_root}/{self.storage.fp16_dir or self.model.name}"

    @property
    def quantized_path(self) -> str:
        return f"{self.storage.models_root}/{self.storage.quantized_dir or self.model.name + '-w4a16-4bit'}"

    @property
    def serve_path(self) -> str:
        return self.quantized_path if self.quantization.enabled else self.fp16_path

    @property
    def calibration_path(self) -> str:
        return f"{self.storage.models_root}/{self.storage.calibration_file}"

    @property
    def effective_model_format(self) -> str | None:
        if self.serving.model_format:
            return self.serving.model_format
        return "awq" if self.quantization.enabled else None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid settings ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against settings.yaml"
        else:
            msg = msg.replace("Input should be", "allowed:").replace("String should have", "allowed:")
        if not e["loc"]:
            lines.append(f"  {msg}")
            continue
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        lines.append(f"  {loc} = {shown}: not allowed; {msg}" if not msg.startswith("unknown") else f"  {loc} = {shown}: {msg}")
    return "\n".join(lines)


def read_raw(path: Path | None = None) -> dict[str, Any]:
    path = Path(path or os.environ.get("KIT_SETTINGS") or DEFAULT_SETTINGS_PATH)
    data = read_data(path, "YAML", SettingsError, label=f"settings file {path}", missing=f"settings file not found: {path}")
    if not isinstance(data, dict) or not isinstance(data.get("defaults", {}), dict):
        raise SettingsError(f"settings file {path} must be a mapping with 'defaults:' and 'profiles:'")
    unknown = set(data) - {"defaults", "profiles"}
    if unknown:
        raise SettingsError(f"settings file {path}: unknown top-level key(s) {sorted(unknown)}; allowed: defaults, profiles")
    return data


def profile_names(path: Path | None = None) -> list[str]:
    return [DEFAULT_PROFILE, *sorted(p for p in (read_raw(path).get("profiles") or {}) if p != DEFAULT_PROFILE)]


def load_settings(profile: str | None = None, path: Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Validated settings for a profile (`PROFILE` env, else `default`), with optional overrides."""
    data = read_raw(path)
    profile = profile or os.environ.get("PROFILE") or DEFAULT_PROFILE
    profiles = data.get("profiles") or {}
    if profile != DEFAULT_PROFILE and profile not in profiles:
        raise SettingsError(f"unknown profile {profile!r}; allowed: {', '.join(profile_names(path))}")
    merged = deep_merge(data.get("defaults") or {}, profiles.get(profile) or {})
    merged = deep_merge(merged, overrides or {})
    merged["profile"] = profile
    try:
        return Settings.model_validate(merged)
    except ValidationError as err:
        raise SettingsError(_format_error(err, f"profile {profile}")) from None


def parse_override(item: str) -> dict[str, Any]:
    """`serving.quant_policy=4` -> {"serving": {"quant_policy": 4}} (value parsed as YAML)."""
    if "=" not in item:
        raise SettingsError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out
