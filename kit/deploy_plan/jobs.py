"""Whether and how each Job runs: the completion markers on the PVC, the Job already in the cluster, the GPU.

- `decide_stage`: must the fetch / quantize Job run, from the markers (`python -m kit.markers show --json`);
- `job_action`: create, keep, skip or delete-and-recreate a Job (Job templates are immutable);
- `gpu_conflict`: quantize needs a GPU that the running server holds.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kit import markers
from kit.deploy_plan.steps import Doc
from kit.k8s_params import SERVE
from kit.settings import Settings

SPEC_HASH = "lmdeploy-kit/spec-sha256"


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
