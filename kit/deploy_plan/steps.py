"""The order of a deploy: which objects are applied in which step, what each step waits for and how long.

`deploy_steps` is what `kit.cluster deploy` runs and what the pod rehearsal (kit.rehearse) replays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kit import markers
from kit.k8s_params import FETCH, GRADIO, QUANTIZE, SERVE
from kit.settings import Settings

JOB_STAGES = {FETCH: markers.FETCH, QUANTIZE: markers.QUANTIZE}
# Kinds whose object follows the serving Deployment (they point at it).
SERVE_COMPANIONS = ("ScaledObject",)
JOB_PULL_ALLOWANCE_S = 600
ROLLOUT_SLACK_S = 300

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
