"""The kustomize overlay to deploy: where it is, its rendered objects (namespace overridable), their namespace."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from kit.cluster.kubectl import ClusterError, Kubectl, last_line
from kit.k8s_params import OVERLAYS_DIR
from kit.settings import REPO_ROOT, Settings, SettingsError


def overlay_dir(s: Settings, overlay: str | None) -> Path:
    path = Path(overlay) if overlay and "/" in overlay else REPO_ROOT / OVERLAYS_DIR / (overlay or s.profile)
    if not (path / "kustomization.yaml").exists():
        raise SettingsError(f"no kustomize overlay at {path}; overlays exist for profiles default, seed, fc, multi-gpu (plus monitoring)")
    return path


def render(k: Kubectl, path: Path, namespace: str | None = None) -> list[dict[str, Any]]:
    proc = subprocess.run([k.binary, "kustomize", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"kustomize build {path} failed: {last_line(proc.stderr)}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    check_metrics_scraped(docs)
    if namespace:
        for d in docs:
            if d["kind"] == "Namespace":
                d["metadata"]["name"] = namespace
            elif "namespace" in d["metadata"]:
                d["metadata"]["namespace"] = namespace
    return docs


def check_metrics_scraped(docs: list[dict[str, Any]]) -> None:
    """An overlay with a ServiceMonitor scrapes lmdeploy's /metrics, which `--disable-metrics` turns off."""
    if not any(d["kind"] == "ServiceMonitor" for d in docs):
        return
    for d in docs:
        for c in (d.get("spec", {}).get("template", {}).get("spec", {}) or {}).get("containers", []):
            if "--disable-metrics" in [*(c.get("command") or []), *(c.get("args") or [])]:
                raise SettingsError(
                    f"{d['kind']}/{d['metadata']['name']} serves with --disable-metrics (serving.enable_metrics: false) but this "
                    "overlay scrapes its /metrics and scales on them; set serving.enable_metrics: true and `make render`"
                )


def namespace_of(docs: list[dict[str, Any]]) -> str:
    for d in docs:
        if d["kind"] == "Namespace":
            return d["metadata"]["name"]
    return next(d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"])
