"""GPU-cluster scheduling settings reach every pod on the model store; pods without a GPU see none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kit.k8s_params import FETCH, PVC, SERVE
from kit.settings import load_settings
from tests.k8s.conftest import profile_of
from tests.k8s.rendered import (
    containers,
    docs_profile,
    env,
    kubernetes_validate,
    pod_specs,
    render_tree,
)

SCHEDULING = {
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoExecute", "tolerationSeconds": 300},
    ],
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}]}]
            }
        }
    },
    "runtime_class_name": "nvidia",
    "priority_class_name": "llm-serving",
}


def mounts_model(spec: dict[str, Any]) -> bool:
    return any(v.get("persistentVolumeClaim", {}).get("claimName") == PVC for v in spec.get("volumes", []))


def test_scheduling_settings_reach_every_pod_on_the_model_store(tmp_path: Path) -> None:
    """Tolerations, nodeSelector, affinity, runtimeClass and priorityClass land on fetch, quantize and serve pods."""
    rendered = render_tree(tmp_path, {"kubernetes": SCHEDULING})
    want = {
        "tolerations": SCHEDULING["tolerations"],
        "nodeSelector": SCHEDULING["node_selector"],
        "affinity": SCHEDULING["affinity"],
        "runtimeClassName": "nvidia",
        "priorityClassName": "llm-serving",
    }
    for overlay, docs in rendered.items():
        kubernetes_validate(docs, tmp_path / f"{overlay}.yaml")
        on_store = {name for name, spec, _ in pod_specs(docs) if mounts_model(spec)}
        assert {FETCH, SERVE} <= on_store, overlay
        for name, spec, _ in pod_specs(docs):
            if name in on_store:
                assert {k: spec.get(k) for k in want} == want, f"{overlay}: {name}"
            else:
                assert not set(want) & set(spec), f"{overlay}: {name} needs no GPU node"


def test_default_settings_set_no_scheduling_fields(docs: list[dict[str, Any]]) -> None:
    for name, spec, _ in pod_specs(docs):
        assert not {"tolerations", "nodeSelector", "affinity", "runtimeClassName", "priorityClassName"} & set(spec), name


def test_containers_without_a_gpu_see_no_gpu(docs: list[dict[str, Any]]) -> None:
    """NVIDIA_VISIBLE_DEVICES=void on every container that asks for no GPU (the CUDA base image says `all`)."""
    gpu = load_settings(profile_of(docs_profile(docs))).kubernetes.gpu_resource
    seen = set()
    for name, spec, _ in pod_specs(docs):
        for c in containers(spec):
            wants_gpu = gpu in c["resources"].get("limits", {})
            assert (env(c).get("NVIDIA_VISIBLE_DEVICES") == "void") is not wants_gpu, f"{name}/{c['name']}"
            if not wants_gpu:
                seen.add(c["name"])
    assert {"fetch", "wait-for-model", "gradio"} <= seen
