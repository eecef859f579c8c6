"""kit.cluster: deploy the kit's kustomize overlay to a real cluster through kubectl, and look after it.

`python -m kit.cluster` (and `make deploy/undeploy/status/logs/gpu`) runs cli.main. The parts:

  kubectl   the kubectl wrapper (`Kubectl`), `ClusterError`, get/apply helpers
  checks    context and API server, GPUs on the nodes, the capacity plan
  overlay   the kustomize overlay: where it is, its rendered objects, their namespace
  waits     Job / rollout / pod waits that stop early on a problem that will not fix itself
  deploy    `deploy` and `undeploy` (kit.deploy_plan's steps, the markers read from the PVC)
  status    `status`, `gpu`, `logs`
  cli       the argument parser and main

The decisions themselves (step order, skip a Job, what a problem is) are pure functions in
kit.deploy_plan. Every name below stays importable as `from kit.cluster import NAME`.
"""

from __future__ import annotations

from kit.cluster.checks import check_cluster, check_gpus, gpu_capacity, plan_blockers
from kit.cluster.cli import build_parser, main
from kit.cluster.deploy import (
    cmd_deploy,
    cmd_undeploy,
    ensure_namespace,
    ensure_secret,
    namespace_state,
    read_markers,
    run_job,
    server_version,
)
from kit.cluster.kubectl import REQUEST_TIMEOUT_S, ClusterError, Kubectl, apply, default_kubectl, get_json
from kit.cluster.overlay import namespace_of, overlay_dir, render
from kit.cluster.status import GPU_REPORT, KIT_SELECTOR, SERVE_SELECTOR, cmd_gpu, cmd_logs, cmd_status, gpu_reports, gpu_table, serving_pods
from kit.cluster.waits import POLL_S, check_problems, job_logs, job_pods, wait_job, wait_pod_done, wait_rollout
from kit.deploy_plan import deploy_steps

__all__ = [
    "GPU_REPORT",
    "KIT_SELECTOR",
    "POLL_S",
    "REQUEST_TIMEOUT_S",
    "SERVE_SELECTOR",
    "ClusterError",
    "Kubectl",
    "apply",
    "build_parser",
    "check_cluster",
    "check_gpus",
    "check_problems",
    "cmd_deploy",
    "cmd_gpu",
    "cmd_logs",
    "cmd_status",
    "cmd_undeploy",
    "default_kubectl",
    "deploy_steps",
    "ensure_namespace",
    "ensure_secret",
    "get_json",
    "gpu_capacity",
    "gpu_reports",
    "gpu_table",
    "job_logs",
    "job_pods",
    "main",
    "namespace_of",
    "namespace_state",
    "overlay_dir",
    "plan_blockers",
    "read_markers",
    "render",
    "run_job",
    "server_version",
    "serving_pods",
    "wait_job",
    "wait_pod_done",
    "wait_rollout",
]
