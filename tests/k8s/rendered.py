"""What the k8s tests read from rendered manifests: objects, pod specs, env, the serving argv, a
re-rendered tree with other settings, and the NetworkPolicy world the egress tests evaluate.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kit import k8s_params
from kit.k8s_params import SERVE
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import OVERLAYS, PROFILE_OVERLAYS, build
from tests.k8s.netpol import External, Pod, Policies, workload_pods

CLIENT_LABEL = {"lmdeploy-kit/client": "true"}
WORKLOADS = ("Deployment", "Job")


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(object name, pod spec, pod labels) of every workload."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"]["labels"])
        for d in docs
        if d["kind"] in WORKLOADS
    ]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def configmap_data(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    hits = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    assert len(hits) == 1
    return hits[0]["data"]


def docs_profile(docs: list[dict[str, Any]]) -> str:
    return find(docs, "Deployment", SERVE)["metadata"]["labels"]["lmdeploy-kit/profile"]


def lmdeploy_argv(command: list[str]) -> list[str]:
    """The part of the serving command that kit.serve hands to lmdeploy (after `--`)."""
    assert command[:3] == ["python", "-m", "kit.serve"] and "--" in command, command[:6]
    return command[command.index("--") + 1 :]


# ------------------------------------------------------------------------------------- rendering with other settings


def render_tree(root: Path, overrides: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every shipped overlay rendered from settings with `overrides`, through the real kustomize, in a copy of the tree."""
    (root / "k8s/overlays/monitoring").mkdir(parents=True)
    (root / "k8s/base").symlink_to(REPO / "k8s/base")
    for f in (REPO / "k8s/overlays/monitoring").iterdir():
        shutil.copy(f, root / "k8s/overlays/monitoring" / f.name)
    profiles = {p: load_settings(p, overrides=overrides) for p in PROFILE_OVERLAYS}
    for rel, text in k8s_params.generated_files(profiles).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).unlink(missing_ok=True)
        (root / rel).write_text(text)
    return {name: build(root / "k8s/overlays" / name) for name in OVERLAYS}


def kubernetes_validate(docs: list[dict[str, Any]], path: Path) -> None:
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([str(REPO / ".venv/bin/kubernetes-validate"), "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------- NetworkPolicies


HUB = External("18.160.0.10")  # an address of the hub's CDN
DNS = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": (53, "UDP"), "dns-tcp": (53, "TCP")})


def netpol_world(docs: list[dict[str, Any]]) -> tuple[Policies, dict[str, Pod]]:
    pods = workload_pods(docs)
    ns = next(iter(pods.values())).namespace
    pods["client"] = Pod("client", ns, {**CLIENT_LABEL, "app": "mine"})
    # Another workload of the namespace with an open `http` port: no kit pod may reach it.
    pods["stranger"] = Pod("stranger", ns, {"app": "other"}, {"http": (8080, "TCP")})
    return Policies(docs), pods
