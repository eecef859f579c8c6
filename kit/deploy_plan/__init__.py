"""The decisions of `kit.cluster deploy`, as pure functions of settings and kubectl JSON (no I/O here).

- steps.py  `deploy_steps`: what is applied, in which order, what is waited for, which Job is skipped;
- jobs.py   `decide_stage` (must the fetch / quantize Job run, from the completion markers on the PVC),
            `job_action` (create, keep, skip or recreate a Job), `gpu_conflict`, `job_state`;
- waits.py  `diagnose` + `ProblemClock` (what in pods, events and PVCs ends a wait early, with the next
            command), `rollout_state`;
- pods.py   `marker_reader_pod`, and `server_version` + `prestop_fallback` (the preStop `sleep` action
            needs Kubernetes >= 1.30).

kit/cluster/ does the kubectl calls around them; tests/k8s/test_cluster_*.py test them directly.
Every name is importable from here: `from kit.deploy_plan import deploy_steps`.
"""

from kit.deploy_plan.jobs import (
    SPEC_HASH,
    StageDecision,
    decide_stage,
    gpu_conflict,
    job_action,
    job_state,
    markers_by_stage,
    spec_hash,
    stamp,
)
from kit.deploy_plan.pods import PRESTOP_SLEEP_MIN, READER_NAME, marker_reader_pod, prestop_fallback, server_version
from kit.deploy_plan.steps import (
    JOB_PULL_ALLOWANCE_S,
    JOB_STAGES,
    ROLLOUT_SLACK_S,
    SERVE_COMPANIONS,
    Doc,
    Step,
    deploy_steps,
    job_timeout_s,
    rollout_timeout_s,
)
from kit.deploy_plan.waits import Problem, ProblemClock, diagnose, diagnose_events, diagnose_pod, rollout_state

__all__ = [
    "JOB_PULL_ALLOWANCE_S",
    "JOB_STAGES",
    "PRESTOP_SLEEP_MIN",
    "READER_NAME",
    "ROLLOUT_SLACK_S",
    "SERVE_COMPANIONS",
    "SPEC_HASH",
    "Doc",
    "Problem",
    "ProblemClock",
    "StageDecision",
    "Step",
    "decide_stage",
    "deploy_steps",
    "diagnose",
    "diagnose_events",
    "diagnose_pod",
    "gpu_conflict",
    "job_action",
    "job_state",
    "job_timeout_s",
    "marker_reader_pod",
    "markers_by_stage",
    "prestop_fallback",
    "rollout_state",
    "rollout_timeout_s",
    "server_version",
    "spec_hash",
    "stamp",
]
