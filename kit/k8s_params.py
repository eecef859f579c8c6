"""Kustomize overlays generated from the settings (one overlay per profile).

`python -m kit render` writes, for each profile in OVERLAY_PROFILES, into k8s/overlays/<profile>/:

- `params.env`        every setting as KIT_* (a configMapGenerator: envFrom in the pods; an edit rolls them)
- `settings.yaml`     the profile's resolved settings, mounted at /etc/lmdeploy-kit so the jobs call
                      `load_settings()` normally (PROFILE + KIT_SETTINGS are set in the pods)
- `from-settings.yaml` strategic-merge patches: the exact api_server command (kit.render.serve_args),
                      GPUs, sizes, probes, ports, completion-marker paths, Secret names
- `kustomization.yaml` base + the above + `images` (kit.render.image_ref) + namespace + profile label

The hand-written structure lives in k8s/base; nothing here is edited by hand.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from kit import markers
from kit.render import API_KEY_ENV, flat_params, image_ref, serve_args
from kit.render import GENERATED_HEADER as HEADER
from kit.settings import Settings

OVERLAY_PROFILES = ("default", "seed", "fc", "multi-gpu")
OVERLAYS_DIR = Path("k8s/overlays")

# Fixed layout inside the pods (the base uses the same values).
SETTINGS_MOUNT = "/etc/lmdeploy-kit"
SETTINGS_FILE = f"{SETTINGS_MOUNT}/settings.yaml"
# Written by jobs.fetch / jobs.quantize into their output directory when the output is complete (kit/markers.py).
COMPLETE_MARKER = markers.FILE_NAME
# Logical image names in the base, replaced through kustomize `images:`.
BASE_IMAGES = {"runtime": "lmdeploy-kit/runtime", "client": "lmdeploy-kit/client"}
STARTUP_PERIOD_S = 10

SERVE = "lmdeploy-serve"
GRADIO = "lmdeploy-gradio"
FETCH = "lmdeploy-fetch"
QUANTIZE = "lmdeploy-quantize"
PVC = "lmdeploy-model"


class _Dumper(yaml.SafeDumper):
    """Block-style YAML with indented sequences (yamllint's default `indent-sequences`)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def _dump(*docs: Any) -> str:
    return "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False) for d in docs)


def marker(path: str) -> str:
    return markers.path_in(path)


def split_image(ref: str) -> dict[str, str]:
    """`registry/name:tag@sha256:...` -> kustomize `images:` fields."""
    ref, _, digest = ref.partition("@")
    name, _, tag = ref.rpartition(":")
    out = {"newName": name, "newTag": tag}
    if digest:
        out = {"newName": name, "digest": digest}
    return out


def serve_command(s: Settings) -> list[str]:
    """The api_server argv of the serving container; the kubelet expands $(LMDEPLOY_API_KEY)."""
    return serve_args(s, api_key=f"$({API_KEY_ENV})")


def startup_failure_threshold(s: Settings) -> int:
    return max(1, math.ceil(s.kubernetes.startup_timeout_s / STARTUP_PERIOD_S))


def _meta(kind: str, api: str, name: str) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}}


def _resources(s: Settings, cpu: str, memory: str, gpus: int) -> dict[str, Any]:
    """Requests == limits with the GPU in both (replaces the base's map, so another gpu_resource name sticks)."""
    res = {"cpu": cpu, "memory": memory, s.kubernetes.gpu_resource: str(gpus)}
    return {"$patch": "replace", "requests": dict(res), "limits": dict(res)}


def _profile_env(s: Settings) -> list[dict[str, str]]:
    return [{"name": "PROFILE", "value": s.profile}]


def _volumes_dshm(s: Settings) -> list[dict[str, Any]]:
    return [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": s.kubernetes.shm_size}}]


BASE_MODELS_ROOT = "/models"


def _model_mount(s: Settings, read_only: bool) -> dict[str, Any]:
    """volumeMounts moving the model store from the base's /models to storage.models_root (empty when equal)."""
    root = s.storage.models_root
    if root == BASE_MODELS_ROOT:
        return {}
    mount: dict[str, Any] = {"name": "model", "mountPath": root}
    if read_only:
        mount["readOnly"] = True
    return {"volumeMounts": [{"mountPath": BASE_MODELS_ROOT, "$patch": "delete"}, mount]}


def patches(s: Settings) -> list[dict[str, Any]]:
    """Strategic-merge patches setting every settings-derived field of the base objects."""
    k = s.kubernetes
    serve = _meta("Deployment", "apps/v1", SERVE)
    serve["spec"] = {
        "replicas": s.serving.replicas,
        "template": {
            "spec": {
                "initContainers": [
                    {
                        "name": "wait-for-model",
                        "env": [{"name": "MARKER", "value": markers.marker_path(s, markers.serve_stage(s))}],
                        **_model_mount(s, True),
                    }
                ],
                "containers": [
                    {
                        "name": "api-server",
                        "command": serve_command(s),
                        "ports": [{"$patch": "replace"}, {"name": "http", "containerPort": s.serving.port, "protocol": "TCP"}],
                        "env": [
                            *_profile_env(s),
                            {"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": s.serving.api_key_secret, "key": "api-key"}}},
                        ],
                        "resources": _resources(s, k.serve_cpu, k.serve_memory, s.serving.tp),
                        "startupProbe": {"periodSeconds": STARTUP_PERIOD_S, "failureThreshold": startup_failure_threshold(s)},
                        **_model_mount(s, True),
                    }
                ],
                "volumes": _volumes_dshm(s),
            }
        },
    }
    service = _meta("Service", "v1", SERVE)
    service["spec"] = {"ports": [{"$patch": "replace"}, {"name": "http", "port": s.serving.port, "targetPort": "http", "protocol": "TCP"}]}

    gradio = _meta("Deployment", "apps/v1", GRADIO)
    gradio["spec"] = {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "gradio",
                        "ports": [{"$patch": "replace"}, {"name": "http", "containerPort": s.gradio.port, "protocol": "TCP"}],
                        "env": [
                            *_profile_env(s),
                            {"name": "OPENAI_BASE_URL", "value": f"http://{SERVE}:{s.serving.port}/v1"},
                            {"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": s.serving.api_key_secret, "key": "api-key"}}},
                            {"name": "GRADIO_SERVER_PORT", "value": str(s.gradio.port)},
                        ],
                    }
                ]
            }
        }
    }
    gradio_service = _meta("Service", "v1", GRADIO)
    gradio_service["spec"] = {
        "ports": [{"$patch": "replace"}, {"name": "http", "port": s.gradio.port, "targetPort": "http", "protocol": "TCP"}]
    }

    pvc = _meta("PersistentVolumeClaim", "v1", PVC)
    pvc["spec"] = {"accessModes": [k.access_mode], "resources": {"requests": {"storage": k.pvc_size}}}
    if k.storage_class:
        pvc["spec"]["storageClassName"] = k.storage_class

    fetch = _meta("Job", "batch/v1", FETCH)
    fetch["spec"] = {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "fetch",
                        **_model_mount(s, False),
                        "env": [
                            *_profile_env(s),
                            {
                                "name": "HF_TOKEN",
                                "valueFrom": {"secretKeyRef": {"name": s.serving.hub_token_secret, "key": "token", "optional": True}},
                            },
                        ],
                    }
                ]
            }
        }
    }
    docs = [serve, service, gradio, gradio_service, pvc, fetch]
    if s.quantization.enabled:
        quantize = _meta("Job", "batch/v1", QUANTIZE)
        quantize["spec"] = {
            "activeDeadlineSeconds": k.quantize_deadline_s,
            "template": {
                "spec": {
                    "initContainers": [
                        {
                            "name": "wait-for-fetch",
                            "env": [{"name": "MARKER", "value": markers.marker_path(s, markers.FETCH)}],
                            **_model_mount(s, True),
                        }
                    ],
                    "containers": [
                        {
                            "name": "quantize",
                            "env": _profile_env(s),
                            "resources": _resources(s, k.serve_cpu, k.serve_memory, 1),
                            **_model_mount(s, False),
                        }
                    ],
                    "volumes": _volumes_dshm(s),
                }
            },
        }
        docs.append(quantize)
    else:
        # Unquantized serving (e.g. fc): no quantize Job; the serving pods wait for the fetch marker.
        docs.append({**_meta("Job", "batch/v1", QUANTIZE), "$patch": "delete"})
    return docs


def resolved_settings(s: Settings) -> str:
    """A self-contained settings file: the profile's values as `defaults`, plus an empty entry for the profile."""
    values = s.model_dump(mode="json", exclude={"profile"})
    data: dict[str, Any] = {"defaults": values, "profiles": {s.profile: {}} if s.profile != "default" else {}}
    return f"# {HEADER}\n# Resolved profile {s.profile!r}, mounted at {SETTINGS_FILE} in the pods.\n" + _dump(data)


def _config_labels(name: str) -> dict[str, str]:
    """Generated ConfigMaps are not in the base, so they get the five labels here."""
    return {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": "lmdeploy",
        "app.kubernetes.io/component": "config",
        "app.kubernetes.io/part-of": "lmdeploy-kit",
        "app.kubernetes.io/managed-by": "kustomize",
    }


def kustomization(s: Settings) -> dict[str, Any]:
    images = [{"name": BASE_IMAGES[name], **split_image(image_ref(s, name))} for name in ("runtime", "client")]
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": s.kubernetes.namespace,
        "resources": ["../../base"],
        "labels": [{"pairs": {"lmdeploy-kit/profile": s.profile}, "includeSelectors": False, "includeTemplates": True}],
        "images": images,
        "configMapGenerator": [
            {"name": "lmdeploy-params", "envs": ["params.env"], "options": {"labels": _config_labels("lmdeploy-params")}},
            {"name": "lmdeploy-settings", "files": ["settings.yaml"], "options": {"labels": _config_labels("lmdeploy-settings")}},
        ],
        "patches": [{"path": "from-settings.yaml"}],
    }


def params_env(s: Settings) -> str:
    lines = [f"# {HEADER}"] + [f"{k}={v}" for k, v in sorted(flat_params(s).items())]
    return "\n".join(lines) + "\n"


def overlay_files(s: Settings) -> dict[str, str]:
    head = f"# {HEADER}\n"
    return {
        "params.env": params_env(s),
        "settings.yaml": resolved_settings(s),
        "from-settings.yaml": head + f"# Every settings-derived field of the base objects (profile {s.profile}).\n" + _dump(*patches(s)),
        "kustomization.yaml": head + f"# Profile {s.profile}: `make deploy PROFILE={s.profile}` applies it.\n" + _dump(kustomization(s)),
    }


def generated_files(profiles: dict[str, Settings]) -> dict[Path, str]:
    return {
        OVERLAYS_DIR / name / fname: text
        for name, s in profiles.items()
        if name in OVERLAY_PROFILES
        for fname, text in overlay_files(s).items()
    }
