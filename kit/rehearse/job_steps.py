"""The Job steps of a rehearsal: kit.cluster deploy's marker reader pod, then each Job to completion.

JobSteps is mixed into kit.rehearse.rehearsal.Rehearsal and uses its state (declared below). A Job
runs pod after pod until one completes, within backoffLimit (retries doubling from --backoff-s)
and activeDeadlineSeconds (capped by --job-timeout).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from kit import markers
from kit.deploy_plan import decide_stage, marker_reader_pod, markers_by_stage
from kit.rehearse.host import PodFailed
from kit.rehearse.kubelet import PodRun, cleanup_pod, new_pod, run_init_containers, start_main, stop_pod
from kit.rehearse.runtime import Runtime
from kit.settings import Settings


class JobSteps:
    """run_job and read_markers of a Rehearsal."""

    args: argparse.Namespace
    docs: list[dict[str, Any]]
    pod_settings: Settings
    pods: list[PodRun]
    report: dict[str, Any]
    say: Callable[[str], None]
    tick: Callable[[], None]

    def run_job(self, rt: Runtime, job: dict[str, Any], step: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        spec = job["spec"]
        backoff = int(spec.get("backoffLimit", 6))
        deadline = time.monotonic() + min(float(spec.get("activeDeadlineSeconds") or 1e9), self.args.job_timeout)
        step["backoff_limit"] = backoff
        failures = 0
        while True:
            pod = new_pod(rt.host, name, spec["template"], rt)
            self.pods.append(pod)
            self.say(f"job/{name}: pod {pod.name} (attempt {failures + 1} of {backoff + 1})")
            try:
                try:
                    run_init_containers(pod, self.tick)
                    runs = start_main(pod)
                    for run, _c in runs:
                        left = deadline - time.monotonic()
                        if rt.wait(run, max(left, 0)) is None:
                            raise PodFailed(f"job/{name} passed its deadline ({self.args.job_timeout:.0f} s here)", run.name, run.tail())
                    bad = [r for r, _ in runs if r.exit_code != 0]
                    if bad:
                        raise PodFailed(f"container {bad[0].name} exited with code {bad[0].exit_code}", bad[0].name, bad[0].tail())
                finally:
                    stop_pod(pod)
                    step["pods"].append(pod.summary())
                    cleanup_pod(pod)
            except PodFailed as exc:
                failures += 1
                step["pods"][-1]["failure"] = exc.reason
                self.say(f"job/{name}: pod {pod.name} failed: {exc.reason}")
                if failures > backoff or time.monotonic() > deadline or self.args.no_retry:
                    step["status"] = "Failed"
                    raise PodFailed(
                        f"job/{name} failed ({failures} pod(s), backoffLimit {backoff}): {exc.reason}", exc.container, exc.tail
                    ) from None
                time.sleep(self.args.backoff_s * 2 ** (failures - 1))
                continue
            step["status"] = "Complete"
            self.say(f"job/{name} complete ({failures} failed pod(s) before)")
            return

    def read_markers(self, rt: Runtime) -> dict[str, str]:
        """kit.cluster deploy's re-deploy decision: its marker reader pod (no GPU, the PVC read-only) prints the
        markers, kit.deploy_plan.decide_stage judges them. Returns {stage: why its Job is not run}."""
        pod_doc = marker_reader_pod(self.pod_settings, self.docs, "lmdeploy-markers")
        pod = new_pod(rt.host, pod_doc["metadata"]["name"], pod_doc, rt)
        self.pods.append(pod)
        step: dict[str, Any] = {"kind": "Pod", "name": pod_doc["metadata"]["name"], "pods": []}
        self.report["steps"].append(step)
        try:
            (run, _c), *_ = start_main(pod)
            code = rt.wait(run, float(pod_doc["spec"].get("activeDeadlineSeconds", 600)))
            if code != 0:
                raise PodFailed(f"the marker reader exited with {code}", run.name, run.tail())
            shown = json.loads(run.lines[-1])
        except (ValueError, IndexError):
            raise PodFailed("the marker reader printed no JSON", "markers", run.tail()) from None
        finally:
            stop_pod(pod)
            step["pods"].append(pod.summary())
            cleanup_pod(pod)
        found = markers_by_stage(self.pod_settings, shown)
        decisions = [decide_stage(self.pod_settings, stage, found) for stage in markers.STAGES]
        step["decisions"] = {d.stage: {"run": d.run, "reason": d.reason} for d in decisions}
        for d in decisions:
            self.say(f"markers: {d.stage}: {'run' if d.run else 'skip'} ({d.reason})")
        return {d.stage: d.reason for d in decisions if not d.run}
