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
from kit.render import GENERATED_HEADER as HEADER
from kit.render import flat_params, image_ref, serve_args
from kit.settings import Settings

OVERLAY_PROFILES = ("default", "seed", "fc", "multi-gpu")
OVERLAYS_DIR = Path("k8s/overlays")
# The hand-written monitoring overlay builds on this profile's overlay; its from-settings.yaml is generated.
MONITORING_BASE = "default"

# Fixed layout inside the pods (the base uses the same values).
SETTINGS_MOUNT = "/etc/lmdeploy-kit"
SETTINGS_FILE = f"{SETTINGS_MOUNT}/settings.yaml"
# Written by jobs.fetch / jobs.quantize into their output directory when the output is complete (kit/markers.py).
COMPLETE_MARKER = markers.FILE_NAME
# Logical image names in the base, replaced through kustomize `images:`.
BASE_IMAGES = {"runtime": "lmdeploy-kit/runtime", "client": "lmdeploy-kit/client"}
STARTUP_PERIOD_S = 10
# The serving container runs kit.serve, which reads the key from the Secret mounted here.
SERVE_ENTRYPOINT = ["python", "-m", "kit.serve"]
API_KEY_MOUNT = "/etc/lmdeploy-secrets"
API_KEY_FILE = f"{API_KEY_MOUNT}/api-key"

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
    """The serving container's argv: kit.serve reads the key from the mounted Secret file, so no argv holds it."""
    return [*SERVE_ENTRYPOINT, "--api-key-file", API_KEY_FILE, "--", *serve_args(s)]


def startup_failure_threshold(s: Settings) -> int:
    return max(1, math.ceil(s.kubernetes.startup_timeout_s / STARTUP_PERIOD_S))


def progress_deadline_s(s: Settings) -> int:
    """Deployment progressDeadlineSeconds: the startupProbe budget plus the image-pull allowance."""
    return STARTUP_PERIOD_S * startup_failure_threshold(s) + s.kubernetes.image_pull_allowance_s


def scheduling(s: Settings) -> dict[str, Any]:
    """Pod-spec scheduling fields for every pod that mounts the model store (only those that are set)."""
    k = s.kubernetes
    out: dict[str, Any] = {}
    if k.tolerations:
        out["tolerations"] = [{key: value for key, value in t.model_dump().items() if value not in ("", None)} for t in k.tolerations]
    if k.node_selector:
        out["nodeSelector"] = dict(k.node_selector)
    if k.affinity:
        out["affinity"] = k.affinity
    if k.runtime_class_name:
        out["runtimeClassName"] = k.runtime_class_name
    if k.priority_class_name:
        out["priorityClassName"] = k.priority_class_name
    return out


DNS_EGRESS: dict[str, Any] = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}


def fetch_egress(s: Settings) -> list[dict[str, Any]]:
    """The fetch Job's egress rules: DNS plus the hub's CIDRs and ports from the settings."""
    k = s.kubernetes
    hub = {
        "to": [{"ipBlock": {"cidr": c}} for c in k.hub_egress_cidrs],
        "ports": [{"port": p, "protocol": "TCP"} for p in k.hub_egress_ports],
    }
    return [DNS_EGRESS, hub]


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
        "progressDeadlineSeconds": progress_deadline_s(s),
        "template": {
            "spec": {
                **scheduling(s),
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
                        "env": _profile_env(s),
                        "resources": _resources(s, k.serve_cpu, k.serve_memory, s.serving.tp),
                        "startupProbe": {"periodSeconds": STARTUP_PERIOD_S, "failureThreshold": startup_failure_threshold(s)},
                        **_model_mount(s, True),
                    }
                ],
                "volumes": [*_volumes_dshm(s), {"name": "api-key", "secret": {"secretName": s.serving.api_key_secret}}],
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
                **scheduling(s),
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
                ],
            }
        }
    }
    fetch_policy = _meta("NetworkPolicy", "networking.k8s.io/v1", FETCH)
    fetch_policy["spec"] = {"egress": fetch_egress(s)}
    docs = [serve, service, gradio, gradio_service, pvc, fetch, fetch_policy]
    if s.quantization.enabled:
        quantize = _meta("Job", "batch/v1", QUANTIZE)
        quantize["spec"] = {
            "activeDeadlineSeconds": k.quantize_deadline_s,
            "template": {
                "spec": {
                    **scheduling(s),
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


MONITORING_HEAD = f"""\
# Optional: the {MONITORING_BASE} profile plus Prometheus scraping and queue-based autoscaling.
# Needs the Prometheus Operator (ServiceMonitor CRD) and KEDA (ScaledObject CRD) in the cluster.
# `make deploy ARGS=--overlay=monitoring` (or kubectl apply -k k8s/overlays/monitoring).
"""


def monitoring_kustomization(s: Settings) -> dict[str, Any]:
    """The monitoring overlay: the profile overlay, the hand-written objects, the generated patch, no serve replicas."""
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": s.kubernetes.namespace,
        "resources": [
            f"../{MONITORING_BASE}",
            "serve-servicemonitor.yaml",
            "serve-scaledobject.yaml",
            "allow-prometheus-networkpolicy.yaml",
        ],
        "labels": [
            {
                "pairs": {"app.kubernetes.io/part-of": "lmdeploy-kit", "app.kubernetes.io/managed-by": "kustomize"},
                "includeSelectors": False,
            }
        ],
        "patches": [
            {"path": "from-settings.yaml"},
            # KEDA owns spec.replicas (remove-serve-replicas.yaml says why).
            {"path": "remove-serve-replicas.yaml", "target": {"group": "apps", "version": "v1", "kind": "Deployment", "name": SERVE}},
        ],
    }


def monitoring_patches(s: Settings) -> list[dict[str, Any]]:
    """The monitoring overlay's settings-derived fields: ServiceMonitor labels, KEDA range and query, scraper namespace."""
    m = s.monitoring
    monitor = _meta("ServiceMonitor", "monitoring.coreos.com/v1", SERVE)
    monitor["metadata"]["labels"] = dict(m.service_monitor_labels)
    scaled = _meta("ScaledObject", "keda.sh/v1alpha1", SERVE)
    query = f'sum(lmdeploy:num_requests_waiting{{namespace="{s.kubernetes.namespace}", service="{SERVE}"}})'
    scaled["spec"] = {
        "minReplicaCount": m.min_replicas,
        "maxReplicaCount": m.max_replicas,
        "triggers": [
            {"type": "prometheus", "metadata": {"serverAddress": m.prometheus_url, "query": query, "threshold": str(m.queue_threshold)}}
        ],
    }
    scrape = _meta("NetworkPolicy", "networking.k8s.io/v1", f"{SERVE}-allow-prometheus")
    scrape["spec"] = {
        "ingress": [
            {
                "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": m.prometheus_namespace}}}],
                "ports": [{"port": "http", "protocol": "TCP"}],
            }
        ]
    }
    return [monitor, scaled, scrape]


def generated_files(profiles: dict[str, Settings]) -> dict[Path, str]:
    files = {
        OVERLAYS_DIR / name / fname: text
        for name, s in profiles.items()
        if name in OVERLAY_PROFILES
        for fname, text in overlay_files(s).items()
    }
    if MONITORING_BASE in profiles:
        s, head = profiles[MONITORING_BASE], f"# {HEADER}\n"
        files[OVERLAYS_DIR / "monitoring" / "from-settings.yaml"] = (
            head + "# The monitoring objects' settings-derived fields (settings `monitoring:`).\n" + _dump(*monitoring_patches(s))
        )
        files[OVERLAYS_DIR / "monitoring" / "kustomization.yaml"] = head + MONITORING_HEAD + _dump(monitoring_kustomization(s))
    return files
