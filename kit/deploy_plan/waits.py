"""When a deploy's wait ends: a rollout's state, and the problems in pods, events and PVCs that will not fix
themselves (`diagnose`), each with the next command to run; `ProblemClock` gives each its grace time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from kit.deploy_plan.steps import Doc

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
