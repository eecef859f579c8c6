"""Pod specs kit.cluster makes itself: the marker reader pod, and the preStop fallback for Kubernetes < 1.30."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from kit import markers
from kit.deploy_plan.steps import Doc
from kit.k8s_params import FETCH, GRADIO
from kit.settings import Settings

PRESTOP_SLEEP_MIN = (1, 30)


# ---------------------------------------------------------------------------------------------- server version


def server_version(version: Mapping[str, Any]) -> tuple[int, int] | None:
    """(major, minor) from `kubectl version -o json` (minor may read "30+" on managed clusters)."""
    sv = version.get("serverVersion") or {}
    try:
        major = int(re.sub(r"\D", "", str(sv.get("major", ""))))
        minor = int(re.sub(r"\D", "", str(sv.get("minor", ""))))
    except ValueError:
        git = re.match(r"v(\d+)\.(\d+)", str(sv.get("gitVersion", "")))
        return (int(git.group(1)), int(git.group(2))) if git else None
    return major, minor


def prestop_fallback(docs: list[Doc], version: tuple[int, int] | None) -> tuple[list[Doc], list[str]]:
    """Below Kubernetes 1.30 the preStop `sleep` action is refused: replace it with `exec: sleep N`.

    Returns (objects, the containers changed). Unknown version: unchanged (the API server decides)."""
    if version is None or version >= PRESTOP_SLEEP_MIN:
        return docs, []
    out, changed = [], []
    for d in docs:
        spec = ((d.get("spec") or {}).get("template") or {}).get("spec")
        if not spec:
            out.append(d)
            continue
        d = copy.deepcopy(d)
        for c in d["spec"]["template"]["spec"].get("containers", []):
            pre = (c.get("lifecycle") or {}).get("preStop") or {}
            if "sleep" in pre:
                seconds = int(pre.pop("sleep").get("seconds", 0))
                pre["exec"] = {"command": ["sleep", str(seconds)]}
                changed.append(f"{d['metadata']['name']}/{c['name']}")
        out.append(d)
    return out, changed


# ---------------------------------------------------------------------------------------------- marker reader pod

READER_NAME = "lmdeploy-markers"
_SCHEDULING = ("tolerations", "nodeSelector", "affinity", "priorityClassName", "runtimeClassName")


def _pvc_mount(spec: Doc, container: Doc) -> tuple[str, str] | None:
    """(volume name, mountPath) of the PVC-backed volume a container mounts."""
    claims = {v["name"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
    return next(((m["name"], m["mountPath"]) for m in container.get("volumeMounts", []) if m["name"] in claims), None)


def marker_reader_pod(s: Settings, docs: list[Doc], name: str) -> Doc:
    """A pod that prints the markers as JSON (`python -m kit.markers show --json`) and exits; no GPU.

    It mounts the model PVC read-only where the fetch Job mounts it and takes the fetch pod's scheduling
    fields and security context (a node-local or zonal volume is read where it lives); the image is the
    client image (Gradio's), which carries kit/.
    """
    fetch = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == FETCH)
    fspec = fetch["spec"]["template"]["spec"]
    fcontainer = fspec["containers"][0]
    volume, mount = _pvc_mount(fspec, fcontainer) or ("model", s.storage.models_root)
    claim = next(v for v in fspec["volumes"] if v["name"] == volume)
    gradio = next((d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == GRADIO), None)
    image = gradio["spec"]["template"]["spec"]["containers"][0]["image"] if gradio else fcontainer["image"]
    paths = [markers.marker_path(s, stage) for stage in markers.STAGES]
    labels = {
        "app.kubernetes.io/name": READER_NAME,
        "app.kubernetes.io/instance": "lmdeploy",
        "app.kubernetes.io/component": "markers",
        "app.kubernetes.io/part-of": "lmdeploy-kit",
        "app.kubernetes.io/managed-by": "kit.cluster",
    }
    spec: Doc = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": 600,
        "serviceAccountName": fspec.get("serviceAccountName", "default"),
        "automountServiceAccountToken": False,
        "securityContext": copy.deepcopy(fspec.get("securityContext", {})),
        **{key: copy.deepcopy(fspec[key]) for key in _SCHEDULING if key in fspec},
        "containers": [
            {
                "name": "markers",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-m", "kit.markers", "show", "--json", *paths],
                "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}],
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "model", "mountPath": mount, "readOnly": True}],
            }
        ],
        "volumes": [{"name": "model", "persistentVolumeClaim": {**claim["persistentVolumeClaim"], "readOnly": True}}],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": spec}
