"""What the rehearsal reads before any pod starts: the rendered objects, the settings they mount, secrets, isolation.

`kubectl kustomize` output (or a file of it), the ConfigMaps and the settings.yaml the pods mount
(and the rehearsal's overridden copy of it), the model store's mountPath, the secrets file (or a
generated API key), and whether a mount namespace can be used here. A problem with any of them is a
UsageError (exit 2): nothing was started.
"""

from __future__ import annotations

import os
import secrets as pysecrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kit import exitcodes
from kit.entry import KitError
from kit.rehearse import sandbox
from kit.settings import REPO_ROOT, Settings, SettingsError, load_settings


class UsageError(KitError):
    """Bad options or rendered objects the rehearsal cannot use (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exitcodes.USAGE)


def rendered_settings(text: str, workdir: Path, name: str = "rendered-settings.yaml") -> Settings:
    """The Settings the pods load from a mounted settings.yaml (as rendered, or the rehearsal's copy)."""
    path = workdir / name
    path.write_text(text)
    profiles = list((yaml.safe_load(text) or {}).get("profiles") or {})
    try:
        return load_settings(profiles[0] if profiles else None, path)
    except SettingsError as exc:
        raise UsageError(f"the rendered settings.yaml does not load: {exc}") from None


def render(overlay: Path) -> list[dict[str, Any]]:
    kubectl = REPO_ROOT / ".venv/bin/kubectl"
    binary = os.environ.get("KIT_KUBECTL") or (str(kubectl) if kubectl.exists() else shutil.which("kubectl"))
    if not binary:
        raise UsageError("kubectl (with kustomize) not found: run `make venv` or set KIT_KUBECTL")
    proc = subprocess.run([binary, "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UsageError(f"kustomize build {overlay} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def config_maps(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: dict(d.get("data") or {}) for d in docs if d["kind"] == "ConfigMap"}


def settings_map(cms: dict[str, dict[str, str]]) -> str:
    """The ConfigMap holding settings.yaml (mounted at /etc/lmdeploy-kit)."""
    names = [n for n, data in cms.items() if "settings.yaml" in data]
    if len(names) != 1:
        raise UsageError(f"expected one ConfigMap with settings.yaml among the rendered objects, found {names}")
    return names[0]


def pvc_mount_path(docs: list[dict[str, Any]]) -> str:
    """The in-pod mountPath of the model store (the PVC), from the first pod that mounts it."""
    for d in docs:
        spec = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        claims = {v["name"] for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v}
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            for vm in c.get("volumeMounts") or []:
                if vm["name"] in claims:
                    return vm["mountPath"]
    raise UsageError("no rendered pod mounts the model PVC")


def load_secrets(path: Path | None, api_key_secret: str, workdir: Path) -> tuple[dict[str, dict[str, str]], Path]:
    """The secrets file ({name: {key: value}}) or a generated API key (written 0600 into workdir)."""
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"secrets file {path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise UsageError(f"secrets file {path} must map Secret name -> {{key: value}}")
        return {str(k): {str(kk): str(vv) for kk, vv in v.items()} for k, v in data.items()}, path
    data = {api_key_secret: {"api-key": pysecrets.token_hex(24)}}
    out = workdir / "secrets.yaml"
    out.touch(mode=0o600)
    out.write_text(yaml.safe_dump(data))
    return data, out


def has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def choose_isolation(requested: str, workdir: Path) -> tuple[str, str]:
    """('mountns' | 'prefix', why): try a trivial sandboxed process when auto."""
    if requested == "prefix":
        return "prefix", "asked for"
    if os.geteuid() != 0:
        if requested == "mountns":
            raise UsageError("--isolation mountns needs root (mount namespaces and bind mounts)")
        return "prefix", "not root: no mount namespace"
    probe = workdir / ".isolation-probe"
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "root").mkdir(exist_ok=True)
    spec = {
        "argv": ["sh", "-c", "test -d /rehearse-probe"],
        "env": {"PATH": "/usr/bin:/bin"},
        "cwd": "/",
        "uid": 65534,
        "gid": 65534,
        "groups": [],
        "readonly_root": True,
        "scratch": str(probe / "root"),
        "mounts": [{"target": "/rehearse-probe", "source": str(probe), "readonly": True}],
    }
    proc = sandbox.run_once(spec, REPO_ROOT)
    shutil.rmtree(probe, ignore_errors=True)
    if proc.returncode == 0:
        return "mountns", "private mount namespace, bind mounts at the real mountPaths, runAsUser applied"
    why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    if requested == "mountns":
        raise UsageError(f"--isolation mountns: the sandbox does not work here: {why}")
    return "prefix", f"mount namespace unavailable ({why}): host folders, paths rewritten, runAsUser not applied"


def settings_override(text: str, overrides: Mapping[str, Any]) -> str:
    """Apply dotted `section.key: value` overrides to the resolved profile of a mounted settings.yaml."""
    data = yaml.safe_load(text)
    target = data.setdefault("defaults", {})
    for dotted, value in overrides.items():
        node = target
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return (
        "# rehearsal copy: overrides " + ", ".join(f"{k}={v}" for k, v in overrides.items()) + "\n" + yaml.safe_dump(data, sort_keys=False)
    )
