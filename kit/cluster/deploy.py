"""`deploy` and `undeploy`: run kit.deploy_plan's steps against the cluster.

The namespace (only when absent), the Secret check, config + PVC, the fetch and quantize Jobs (each
only when its completion marker on the PVC does not match the settings), the serving rollout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

from kit import deploy_plan as plan
from kit import exitcodes, markers
from kit.cluster.checks import check_cluster, check_gpus, plan_blockers
from kit.cluster.kubectl import REQUEST_TIMEOUT_S, ClusterError, Kubectl, apply, dump_yaml, forbidden, get_json, last_line, not_found
from kit.cluster.overlay import namespace_of, overlay_dir, render
from kit.cluster.status import serving_pods
from kit.cluster.waits import wait_job, wait_pod_done, wait_rollout
from kit.k8s_params import GRADIO, PVC, SERVE
from kit.settings import Settings

log = logging.getLogger("kit.cluster")


def namespace_state(k: Kubectl, ns: str) -> str:
    """present | absent | unknown (not allowed to read it: a namespace-only user)."""
    proc = k.run("get", "namespace", ns, "-o", "name", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", check=False)
    if proc.returncode == 0:
        return "present"
    if forbidden(proc.stderr):
        return "unknown"
    if not_found(proc.stderr):
        return "absent"
    raise ClusterError(f"cannot read namespace {ns}: {last_line(proc.stderr)}")


def ensure_namespace(k: Kubectl, step: plan.Step, ns: str) -> None:
    """Create the namespace when it is absent; an existing one is never re-applied (labels stay the owner's)."""
    state = namespace_state(k, ns)
    if state == "absent":
        apply(k, list(step.objects))
    elif state == "present":
        log.info("namespace %s exists: left as it is", ns)
    else:
        log.warning("cannot read namespace %s (no permission): assuming it exists, not applying it", ns)


def ensure_secret(k: Kubectl, ns: str, name: str) -> None:
    proc = k.run("-n", ns, "get", "secret", name, "-o", "name", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", check=False)
    if proc.returncode == 0:
        return
    if forbidden(proc.stderr):
        log.warning("cannot read Secret %s/%s (no permission): not checked; the pods fail to start if it is missing", ns, name)
        return
    raise ClusterError(
        f"Secret {ns}/{name} (key api-key) is missing; create it first: "
        f"kubectl -n {ns} create secret generic {name} --from-literal=api-key=$(openssl rand -hex 24)"
    )


def server_version(k: Kubectl) -> tuple[int, int] | None:
    proc = k.run("version", "-o", "json", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", timeout=15, check=False)
    try:
        return plan.server_version(json.loads(proc.stdout)) if proc.stdout.strip() else None
    except ValueError:
        return None


# ---- markers on the PVC


def _shown_markers(s: Settings, text: str, where: str) -> dict[str, Any]:
    try:
        shown = json.loads(text.strip().splitlines()[-1]) if text.strip() else None
    except ValueError:
        shown = None
    if not isinstance(shown, dict):
        raise ClusterError(f"the marker reader in {where} printed no JSON: {last_line(text) or '(nothing)'}")
    return plan.markers_by_stage(s, shown)


def read_markers(k: Kubectl, ns: str, s: Settings, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """{stage: marker | None | {"error"}} from the PVC, without a GPU: exec in a running serving pod, else a
    short-lived reader pod of the client image mounting the PVC read-only. A PVC not yet bound holds none."""
    pvc = get_json(k, ns, "pvc", PVC)
    if pvc is None or (pvc.get("status") or {}).get("phase") != "Bound":
        return {stage: None for stage in markers.STAGES}
    paths = [markers.marker_path(s, stage) for stage in markers.STAGES]
    for pod in serving_pods(k, ns):
        proc = k.run(
            "-n",
            ns,
            "exec",
            pod,
            "-c",
            "api-server",
            "--",
            "python",
            "-m",
            "kit.markers",
            "show",
            "--json",
            *paths,
            timeout=60,
            check=False,
        )
        if proc.returncode == 0:
            return _shown_markers(s, proc.stdout, f"pod {pod}")
        log.info("reading the markers in %s failed (%s); using a reader pod", pod, last_line(proc.stderr))
    name = f"{plan.READER_NAME}-{os.getpid()}-{int(time.time()) % 100000}"
    k.run("-n", ns, "create", "-f", "-", stdin=dump_yaml([plan.marker_reader_pod(s, docs, name)]), timeout=60)
    print(f"reading the completion markers on persistentvolumeclaim/{PVC} (pod {name}, no GPU) ...", file=sys.stderr)
    try:
        wait_pod_done(k, ns, name, timeout_s=600)
        out = k.run("-n", ns, "logs", name, timeout=60).stdout
    finally:
        k.run("-n", ns, "delete", "pod", name, "--wait=false", "--ignore-not-found", timeout=60, check=False)
    return _shown_markers(s, out, f"pod {name}")


def run_job(k: Kubectl, ns: str, s: Settings, step: plan.Step, args: argparse.Namespace, gpus: dict[str, int] | None) -> None:
    job = step.objects[0]
    name = job["metadata"]["name"]
    scale = f"kubectl -n {ns} scale deployment/{SERVE} --replicas=0"
    if step.stage == markers.QUANTIZE:
        conflict = plan.gpu_conflict(s, get_json(k, ns, "deployment", SERVE), gpus)
        if conflict and not args.scale_down:
            raise ClusterError(
                f"{conflict}: the quantize pod would wait for it until its deadline; "
                f"run `{scale}` (serving stops until the new model is up) and deploy again, or deploy with --scale-down"
            )
        if conflict:
            print(f"{conflict}: scaling deployment/{SERVE} to 0 (serving stops until the new model is up)", file=sys.stderr)
            k.run("-n", ns, "scale", f"deployment/{SERVE}", "--replicas=0", timeout=60)
    action, why = plan.job_action(get_json(k, ns, "job", name), job, run=True)
    log.info("job/%s: %s (%s)", name, action, why)
    if action == "recreate":
        print(f"job/{name}: {why}", file=sys.stderr)
        k.run("-n", ns, "delete", "job", name, "--wait=true", "--cascade=foreground", timeout=180)
    if action in ("create", "recreate"):
        apply(k, [plan.stamp(job)])
    hint = f"if a GPU is held by the running server: {scale}" if step.stage == markers.QUANTIZE else ""
    wait_job(k, ns, name, step.timeout_s, hint=hint)


def cmd_deploy(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    if not args.skip_plan:
        blockers = plan_blockers(s)
        if blockers:
            for b in blockers:
                print(f"plan: {b}", file=sys.stderr)
            raise ClusterError("the capacity plan blocks this deployment (see `make plan`); override with --skip-plan")
    context = check_cluster(k)
    gpus = None if args.skip_gpu_check else check_gpus(k, s)
    if gpus:
        log.info("context %s; GPUs: %s", context, ", ".join(f"{n}={c}" for n, c in gpus.items()))
    docs = render(k, overlay_dir(s, args.overlay), args.namespace)
    docs, changed = plan.prestop_fallback(docs, server_version(k))
    if changed:
        log.warning("Kubernetes < 1.30 has no preStop sleep action: using `exec sleep` in %s", ", ".join(changed))
    ns = namespace_of(docs)
    found: dict[str, Any] | None = None
    for step in plan.deploy_steps(s, docs):
        if step.action == "namespace":
            ensure_namespace(k, step, ns)
        elif step.action == "secrets":
            for name in step.secrets:
                ensure_secret(k, ns, name)
        elif step.action == "apply":
            apply(k, list(step.objects))
        elif step.action == "job":
            if args.force_jobs:
                decision = plan.StageDecision(step.stage or "", True, "--force-jobs")
            else:
                found = found if found is not None else read_markers(k, ns, s, docs)
                decision = plan.decide_stage(s, step.stage or "", found)
            if not decision.run:
                print(f"job/{step.target}: skipped, {decision.reason}", file=sys.stderr)
                continue
            print(f"job/{step.target}: runs, {decision.reason}", file=sys.stderr)
            run_job(k, ns, s, step, args, gpus)
            found = None  # the Job changed the store: read the markers again before the next decision
        elif step.action == "rollout":
            apply(k, list(step.objects))
            if not args.no_wait:
                wait_rollout(k, ns, step.target or "", step.timeout_s)
    port, gport = s.serving.port, s.gradio.port
    print(f"deployed profile {s.profile} to namespace {ns} (context {context})")
    print(f"API (in cluster, pods labelled lmdeploy-kit/client=true): http://{SERVE}.{ns}.svc:{port}/v1")
    print("next:")
    print(f"  kubectl -n {ns} port-forward svc/{SERVE} {port}:{port}   # then: make chat ARGS='--prompt hi'")
    print(f"  kubectl -n {ns} port-forward svc/{GRADIO} {gport}:{gport}   # then open http://127.0.0.1:{gport}")
    print("  make status | make gpu | make logs")
    return exitcodes.OK


def cmd_undeploy(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    check_cluster(k)
    docs = render(k, overlay_dir(s, args.overlay), args.namespace)
    ns = namespace_of(docs)
    keep = {"Namespace"} | (set() if args.delete_pvc else {"PersistentVolumeClaim"})
    doomed = [d for d in docs if d["kind"] not in keep]
    out = k.run("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=dump_yaml(doomed), timeout=120).stdout
    for line in out.splitlines():
        log.info("%s", line)
    print(f"removed profile {s.profile} from namespace {ns}")
    if not args.delete_pvc:
        print(f"kept persistentvolumeclaim/{PVC} (the model store); `make undeploy ARGS=--delete-pvc` removes it")
    return exitcodes.OK
