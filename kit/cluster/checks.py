"""Checks before anything is applied: a context and an API server that answers, GPUs, the capacity plan."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from typing import Any

from kit.cluster.kubectl import REQUEST_TIMEOUT_S, ClusterError, Kubectl, forbidden, last_line
from kit.settings import Settings

log = logging.getLogger("kit.cluster")


def check_cluster(k: Kubectl) -> str:
    """Fail fast with what is missing: no kubeconfig/context, or an API server that does not answer."""
    if not k.context:
        proc = k.run("config", "current-context", timeout=5, check=False)
        if proc.returncode != 0:
            where = os.environ.get("KUBECONFIG") or "~/.kube/config"
            raise ClusterError(
                f"no Kubernetes context: {where} has no current context; "
                "run `kubectl config use-context NAME`, pass CONTEXT=NAME (--context), or set KUBECONFIG"
            )
        context = proc.stdout.strip()
    else:
        context = k.context
    proc = k.run("get", "--raw", "/readyz", f"--request-timeout={REQUEST_TIMEOUT_S}s", timeout=REQUEST_TIMEOUT_S + 1.5, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"cannot reach the cluster of context {context!r}: {last_line(proc.stderr) or 'no answer'}")
    return context


def gpu_capacity(nodes: dict[str, Any], resource: str) -> dict[str, int]:
    """Allocatable GPUs per node (nodes = `kubectl get nodes -o json`)."""
    out: dict[str, int] = {}
    for node in nodes.get("items", []):
        value = str(node.get("status", {}).get("allocatable", {}).get(resource, "0"))
        try:
            count = int(value)
        except ValueError:
            count = 0
        if count > 0:
            out[node["metadata"]["name"]] = count
    return out


def check_gpus(k: Kubectl, s: Settings) -> dict[str, int] | None:
    """Allocatable GPUs per node; None (with a warning) when this user may not list nodes."""
    resource = s.kubernetes.gpu_resource
    proc = k.run("get", "nodes", "-o", "json", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", timeout=30, check=False)
    if proc.returncode != 0:
        if forbidden(proc.stderr):
            log.warning("cannot list nodes (%s): GPU check skipped; --skip-gpu-check silences this", last_line(proc.stderr))
            return None
        raise ClusterError(f"`kubectl get nodes` failed: {last_line(proc.stderr)}")
    gpus = gpu_capacity(json.loads(proc.stdout), resource)
    if not gpus:
        raise ClusterError(
            f"no node has allocatable {resource}: install the NVIDIA device plugin / GPU operator, "
            "or set kubernetes.gpu_resource to your cluster's GPU resource name"
        )
    need = s.serving.tp
    if max(gpus.values()) < need:
        raise ClusterError(f"serving.tp={need} needs {need} {resource} on one node; the largest node offers {max(gpus.values())}")
    return gpus


def plan_blockers(s: Settings) -> list[str]:
    """The capacity planner's blocking findings (empty when kit/plan.py is absent or finds none)."""
    if importlib.util.find_spec("kit.plan") is None:
        log.info("kit.plan not present: capacity checks skipped")
        return []
    from kit import plan

    return list(plan.deploy_blockers(s))
