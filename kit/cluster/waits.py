"""Waits with diagnostics: poll a Job, a rollout or a pod, and stop early on a problem that will not fix itself.

What counts as a problem, and for how long, is kit.deploy_plan's (`diagnose`, `ProblemClock`); this
module only reads pods, events and PVCs for it and turns the verdict into a `ClusterError`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from kit import deploy_plan as plan
from kit.cluster.kubectl import ClusterError, Kubectl, get_json, last_line

POLL_S = 5.0


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
            line = last_line(k.run("-n", ns, "logs", running[-1], "--tail=1", "--all-containers", check=False, timeout=15).stdout)
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
