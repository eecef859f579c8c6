"""The decisions of `kit.cluster deploy`, as pure functions of settings and kubectl JSON (no I/O here).

- `deploy_steps`: what is applied, in which order, what is waited for, which Job is skipped;
- `decide_stage`: whether the fetch / quantize Job must run, from the completion markers on the PVC;
- `job_action`: create, keep, skip or delete-and-recreate a Job (Job templates are immutable);
- `gpu_conflict`: quantize needs a GPU that the running server holds;
- `diagnose` + `ProblemClock`: what in the pods, events and PVCs ends a wait early, with the next command;
- `job_state`, `rollout_state`: when waiting stops;
- `server_version`, `prestop_fallback`: the preStop `sleep` action needs Kubernetes >= 1.30.

kit/cluster.py does the kubectl calls around them; tests/k8s/test_cluster_*.py test them directly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kit import markers
from kit.k8s_params import FETCH, GRADIO, QUANTIZE, SERVE
from kit.settings import Settings

JOB_STAGES = {FETCH: markers.FETCH, QUANTIZE: markers.QUANTIZE}
SPEC_HASH = "lmdeploy-kit/spec-sha256"
# Kinds whose object follows the serving Deployment (they point at it).
SERVE_COMPANIONS = ("ScaledObject",)
JOB_PULL_ALLOWANCE_S = 600
ROLLOUT_SLACK_S = 300
PRESTOP_SLEEP_MIN = (1, 30)

Doc = dict[str, Any]


# ---------------------------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    """One deploy step. `action`:

    namespace   apply `objects` (the Namespace) only when the namespace is absent; never relabel it
    secrets     check that `secrets` exist in the namespace (nothing is applied)
    apply       `kubectl apply` the `objects`
    job         run the Job in `objects` to completion (`wait` == "job"), unless `skip` says why not
    rollout     apply the Deployment (+ companions) in `objects`, then wait for its rollout (`wait` == "rollout")
    """

    name: str
    action: str
    objects: tuple[Doc, ...] = ()
    wait: str | None = None
    target: str | None = None
    timeout_s: float = 0
    stage: str | None = None
    secrets: tuple[str, ...] = ()
    skip: str | None = None


def _kind_name(d: Doc) -> tuple[str, str]:
    return d["kind"], d["metadata"]["name"]


def job_timeout_s(job: Doc) -> float:
    return float(job["spec"].get("activeDeadlineSeconds", 7200)) + JOB_PULL_ALLOWANCE_S


def rollout_timeout_s(s: Settings, deployment: Doc) -> float:
    deadline = deployment["spec"].get("progressDeadlineSeconds")
    return float(deadline) + ROLLOUT_SLACK_S if deadline else float(s.kubernetes.startup_timeout_s + ROLLOUT_SLACK_S)


def deploy_steps(settings: Settings, objects: list[Doc], skip: Mapping[str, str] | None = None) -> list[Step]:
    """The ordered deploy steps for the rendered `objects` of a profile (`kubectl kustomize k8s/overlays/<profile>`).

    Order: namespace -> secrets -> everything that runs nothing (ServiceAccount, ConfigMaps, PVC, Services,
    NetworkPolicies, PDB, ...) -> fetch Job -> quantize Job -> serving Deployment (+ its ScaledObject) ->
    Gradio Deployment. Each Job is waited for to completion before the next step: the serving pod holds
    its GPUs while its initContainer waits, so it must not be created before the quantize Job has its GPU.

    `skip` maps a marker stage ("fetch" / "quantize", see kit.markers) to the reason its Job is not run
    (its marker on the PVC is current); such a step keeps its place with `skip` set and no wait.
    Every rendered object appears in exactly one step. (The pod rehearsal calls this to get kit.cluster's
    order; it runs the `job` and `rollout` steps' pods in this order.)
    """
    skip = skip or {}
    named = {_kind_name(d): d for d in objects}
    ns = [d for d in objects if d["kind"] == "Namespace"]
    jobs = [named[("Job", n)] for n in (FETCH, QUANTIZE) if ("Job", n) in named]
    serve = named.get(("Deployment", SERVE))
    gradio = named.get(("Deployment", GRADIO))
    companions = [d for d in objects if d["kind"] in SERVE_COMPANIONS]
    late = {id(d) for d in [*ns, *jobs, *companions, *(x for x in (serve, gradio) if x)]}
    rest = [d for d in objects if id(d) not in late]
    unknown = [d for d in objects if d["kind"] in ("Job", "Deployment") and id(d) not in late]
    if unknown:
        names = ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in unknown)
        raise ValueError(f"rendered workloads this deploy does not know how to order: {names}")

    steps = []
    if ns:
        steps.append(Step("namespace", "namespace", tuple(ns)))
    steps.append(Step("secrets", "secrets", secrets=(settings.serving.api_key_secret,)))
    if rest:
        steps.append(Step("config", "apply", tuple(rest)))
    for job in jobs:
        name = job["metadata"]["name"]
        stage = JOB_STAGES[name]
        reason = skip.get(stage)
        steps.append(
            Step(
                f"job:{name}",
                "job",
                (job,),
                wait=None if reason else "job",
                target=name,
                timeout_s=job_timeout_s(job),
                stage=stage,
                skip=reason,
            )
        )
    for deployment, extra in ((serve, companions), (gradio, [])):
        if deployment is None:
            continue
        name = deployment["metadata"]["name"]
        steps.append(
            Step(
                f"rollout:{name}",
                "rollout",
                (deployment, *extra),
                wait="rollout",
                target=name,
                timeout_s=rollout_timeout_s(settings, deployment),
            )
        )
    return steps


# ---------------------------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class StageDecision:
    stage: str
    run: bool
    reason: str


def decide_stage(s: Settings, stage: str, found: Mapping[str, Any]) -> StageDecision:
    """Must `stage`'s Job run? `found` maps stage -> the marker read from the PVC (dict), None (absent)
    or {"error": ...} (unreadable/invalid), as `python -m kit.markers show --json` prints them."""
    where = markers.marker_path(s, stage)
    marker = found.get(stage)
    if marker is None:
        return StageDecision(stage, True, f"no {stage} marker at {where}")
    if "error" in marker:
        return StageDecision(stage, True, f"the {stage} marker is unusable ({marker['error']})")
    if marker.get("request_fingerprint") != markers.request_fingerprint(s, stage):
        what = "model.source/revision or paths" if stage == markers.FETCH else "AWQ settings, lmdeploy version, paths or chat template"
        return StageDecision(stage, True, f"the settings changed since the {stage} marker was written ({what})")
    if stage == markers.QUANTIZE:
        fetched = found.get(markers.FETCH)
        if not fetched or "error" in fetched or fetched.get("fingerprint") != marker.get("input_fingerprint"):
            return StageDecision(stage, True, "the fp16 model differs from the one quantized")
    return StageDecision(stage, False, f"{stage} output is current (fingerprint {str(marker.get('fingerprint'))[:12]})")


def markers_by_stage(s: Settings, shown: Mapping[str, Any]) -> dict[str, Any]:
    """`kit.markers show --json` output (keyed by path) -> {stage: marker | None | {"error"}} for these settings."""
    out: dict[str, Any] = {}
    for stage in markers.STAGES:
        path = markers.marker_path(s, stage)
        out[stage] = shown.get(path)
    return out


# ---------------------------------------------------------------------------------------------- jobs


def spec_hash(job: Doc) -> str:
    return hashlib.sha256(json.dumps(job["spec"], sort_keys=True).encode()).hexdigest()


def stamp(job: Doc) -> Doc:
    """The rendered Job with the hash of its spec as an annotation (so a later deploy sees a changed spec)."""
    out = copy.deepcopy(job)
    out["metadata"].setdefault("annotations", {})[SPEC_HASH] = spec_hash(job)
    return out


def job_state(job: Doc) -> str:
    """Complete | Failed | Active | Pending, from a Job's status conditions (`kubectl get job -o json`)."""
    status = job.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return cond["type"]
    return "Active" if status.get("active") else "Pending"


def job_action(existing: Doc | None, rendered: Doc, run: bool) -> tuple[str, str]:
    """("skip" | "create" | "keep" | "recreate", why) for a Job: its pod template is immutable once created."""
    if not run:
        return "skip", "its output on the model store is current"
    if existing is None:
        return "create", "not present"
    state = job_state(existing)
    same = (existing["metadata"].get("annotations") or {}).get(SPEC_HASH) == spec_hash(rendered)
    if state in ("Active", "Pending"):
        if same:
            return "keep", "already running with this spec: waiting for it"
        return "recreate", "running with an older spec (a Job's template is immutable): deleting it"
    return "recreate", f"a {state.lower()} Job cannot be re-run: deleting it and creating it again"


def gpu_conflict(s: Settings, serve: Doc | None, gpus: Mapping[str, int] | None) -> str | None:
    """Why the quantize Job would wait for a GPU the running server holds (None: no conflict known).

    `serve` is the live serving Deployment (None when absent); `gpus` allocatable GPUs per node
    (None when nodes cannot be read: then no conflict is claimed, the wait's diagnostics catch it).
    """
    if serve is None or gpus is None:
        return None
    replicas = int((serve.get("spec") or {}).get("replicas", 1) or 0)
    held = replicas * s.serving.tp
    if held == 0:
        return None
    total = sum(gpus.values())
    if total - held >= 1:
        return None
    return f"deployment/{SERVE} holds {held} of the cluster's {total} {s.kubernetes.gpu_resource} and the quantize Job needs 1"


# ---------------------------------------------------------------------------------------------- waits


def rollout_state(dep: Doc) -> tuple[str, str]:
    """("done" | "progressing" | "failed", detail) of a Deployment (`kubectl get deployment -o json`)."""
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return "failed", f"progress deadline exceeded: {cond.get('message', '')}".strip()
    want = int(spec.get("replicas", 1))
    if status.get("observedGeneration", 0) < dep["metadata"].get("generation", 0):
        return "progressing", "waiting for the controller to see the new spec"
    updated, available, total = (int(status.get(k, 0) or 0) for k in ("updatedReplicas", "availableReplicas", "replicas"))
    if updated >= want and available >= want and total <= updated:
        return "done", f"{available}/{want} available"
    return "progressing", f"{updated}/{want} updated, {available} available"


@dataclass(frozen=True)
class Problem:
    """Something that will not fix itself; ends the wait once seen for `grace_s` seconds."""

    key: str
    reason: str
    message: str
    command: str
    grace_s: float = 0

    def line(self) -> str:
        return f"{self.message}; next: {self.command}"


_IMAGE_FATAL = {"ImagePullBackOff": 0, "ErrImagePull": 30, "InvalidImageName": 0, "ErrImageNeverPull": 0}


def _statuses(pod: Doc) -> list[tuple[str, Doc]]:
    st = pod.get("status") or {}
    return [("init container", c) for c in st.get("initContainerStatuses") or []] + [
        ("container", c) for c in st.get("containerStatuses") or []
    ]


def _limit(pod: Doc, container: str) -> str:
    for c in (pod.get("spec") or {}).get("containers", []) + (pod.get("spec") or {}).get("initContainers", []):
        if c.get("name") == container:
            return str(((c.get("resources") or {}).get("limits") or {}).get("memory", "none"))
    return "none"


def diagnose_pod(ns: str, pod: Doc) -> list[Problem]:
    name = pod["metadata"]["name"]
    describe = f"kubectl -n {ns} describe pod {name}"
    out: list[Problem] = []
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
            msg = cond.get("message", "").strip()
            out.append(Problem(f"{name}/Unschedulable", "Unschedulable", f"pod {name} cannot be scheduled: {msg}", describe, grace_s=45))
    for what, c in _statuses(pod):
        cname = c.get("name", "?")
        waiting = (c.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason", "")
        detail = (waiting.get("message") or "").strip()
        if reason in _IMAGE_FATAL:
            out.append(
                Problem(
                    f"{name}/{cname}/image",
                    reason,
                    f"{what} {cname} of pod {name}: image {c.get('image', '?')} cannot be pulled ({reason}: {detail or 'no detail'})",
                    f"{describe}  # check the image name/tag, the registry's reachability and imagePullSecrets",
                    grace_s=_IMAGE_FATAL[reason],
                )
            )
        elif reason == "CreateContainerConfigError":
            out.append(
                Problem(f"{name}/{cname}/config", reason, f"{what} {cname} of pod {name} cannot start: {detail}", describe, grace_s=15)
            )
        elif reason == "CrashLoopBackOff":
            last = ((c.get("lastState") or {}).get("terminated")) or {}
            exit_info = f"last exit {last.get('exitCode', '?')} ({last.get('reason', '?')})"
            out.append(
                Problem(
                    f"{name}/{cname}/crash",
                    reason,
                    f"{what} {cname} of pod {name} keeps crashing, {exit_info}",
                    f"kubectl -n {ns} logs {name} -c {cname} --previous",
                )
            )
        for state in ((c.get("state") or {}).get("terminated"), (c.get("lastState") or {}).get("terminated")):
            if state and state.get("reason") == "OOMKilled":
                out.append(
                    Problem(
                        f"{name}/{cname}/oom",
                        "OOMKilled",
                        f"{what} {cname} of pod {name} was OOMKilled (memory limit {_limit(pod, cname)}); "
                        "raise kubernetes.serve_memory (serve, quantize) in settings.yaml",
                        describe,
                    )
                )
                break
    return out


def diagnose_events(ns: str, events: list[Doc], pods: set[str], pvcs: Mapping[str, str]) -> list[Problem]:
    """Warnings about our pods (FailedMount, Multi-Attach) and pending PVCs (no volume, failed provisioning).

    `pvcs` maps PVC name -> phase; events of a Bound PVC are history and ignored."""
    out: list[Problem] = []
    for ev in events:
        obj = ev.get("involvedObject") or {}
        kind, name, reason = obj.get("kind"), obj.get("name", ""), ev.get("reason", "")
        msg = " ".join((ev.get("message") or "").split())
        if ev.get("type") != "Warning":
            continue
        if kind == "Pod" and name in pods and reason in ("FailedAttachVolume", "FailedMount"):
            if "Multi-Attach" in msg:
                out.append(
                    Problem(
                        f"{name}/multi-attach",
                        "Multi-Attach",
                        f"pod {name}: the model volume is in use on another node ({msg}); a ReadWriteOnce volume mounts on one node only",
                        f"kubectl -n {ns} get pods -o wide -l app.kubernetes.io/part-of=lmdeploy-kit  "
                        "# pin the pods to one node (kubernetes.node_selector) or use kubernetes.access_mode=ReadWriteMany",
                        grace_s=30,
                    )
                )
            else:
                out.append(
                    Problem(f"{name}/{reason}", reason, f"pod {name}: {reason}: {msg}", f"kubectl -n {ns} describe pod {name}", grace_s=45)
                )
        elif kind == "PersistentVolumeClaim" and pvcs.get(name) == "Pending" and reason in ("ProvisioningFailed", "FailedBinding"):
            out.append(
                Problem(
                    f"pvc/{name}/{reason}",
                    "UnboundPVC",
                    f"persistentvolumeclaim {name} is not bound: {reason}: {msg}",
                    f"kubectl -n {ns} describe pvc {name}  # set kubernetes.storage_class to a class of `kubectl get storageclass`",
                    grace_s=30,
                )
            )
    return out


def diagnose(ns: str, pods: list[Doc], events: list[Doc], pvcs: list[Doc]) -> list[Problem]:
    """Every problem visible in one poll (`get pods`, `get events`, `get pvc` JSON items)."""
    names = {p["metadata"]["name"] for p in pods}
    phases = {p["metadata"]["name"]: (p.get("status") or {}).get("phase", "") for p in pvcs}
    # The cluster autoscaler is adding a node for these: Unschedulable is expected until it joins
    # (the Job's or rollout's own deadline still bounds the wait).
    scaling = {
        (ev.get("involvedObject") or {}).get("name")
        for ev in events
        if ev.get("reason") == "TriggeredScaleUp" and ev.get("type") == "Normal"
    }
    out = [
        problem
        for pod in pods
        for problem in diagnose_pod(ns, pod)
        if not (problem.reason == "Unschedulable" and pod["metadata"]["name"] in scaling)
    ]
    return out + diagnose_events(ns, events, names, phases)


@dataclass
class ProblemClock:
    """Remembers when each problem was first seen; `due` returns one that has lasted its grace time."""

    first_seen: dict[str, float] = field(default_factory=dict)

    def due(self, problems: list[Problem], now: float) -> Problem | None:
        current = {p.key for p in problems}
        self.first_seen = {k: t for k, t in self.first_seen.items() if k in current}
        for p in problems:
            start = self.first_seen.setdefault(p.key, now)
            if now - start >= p.grace_s:
                return p
        return None


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
