"""Wait diagnostics (kit/deploy_plan/waits.py `diagnose`, `ProblemClock`; kit/cluster/waits.py `wait_job`) on kubectl JSON.

The JSON under fixtures/kubectl/ is written to the Kubernetes API shapes (core/v1 Pod, Event,
PersistentVolumeClaim; `kubectl get -o json` List) with the messages the scheduler, kubelet and
controllers print; fixtures/kubectl/README.md says where each shape comes from. No cluster runs here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kit import cluster
from kit import deploy_plan as plan
from kit.cluster import waits

FIXTURES = Path(__file__).parent / "fixtures/kubectl"
NS = "lmdeploy"


def scenario(name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return data["pods"]["items"], data["events"]["items"], data["pvcs"]["items"]


def problems(name: str) -> list[plan.Problem]:
    return plan.diagnose(NS, *scenario(name))


@pytest.mark.parametrize(
    ("name", "reason", "in_message", "command"),
    [
        ("unschedulable", "Unschedulable", "2 Insufficient nvidia.com/gpu", "kubectl -n lmdeploy describe pod lmdeploy-quantize-x7k2p"),
        (
            "imagepullbackoff",
            "ImagePullBackOff",
            "ghcr.io/example/lmdeploy-kit/runtime:0.1.0 cannot be pulled",
            "describe pod lmdeploy-fetch-9q8wz",
        ),
        (
            "crashloop",
            "CrashLoopBackOff",
            "last exit 1 (Error)",
            "kubectl -n lmdeploy logs lmdeploy-serve-6d9f8b7c5-tx2lq -c api-server --previous",
        ),
        ("oomkilled", "OOMKilled", "memory limit 32Gi", "describe pod lmdeploy-quantize-x7k2p"),
        ("multiattach", "Multi-Attach", "already used by pod(s) lmdeploy-serve-6d9f8b7c5-tx2lq", "ReadWriteMany"),
        ("failedmount", "FailedMount", 'configmap "lmdeploy-settings-5b6m4k6d44" not found', "describe pod lmdeploy-fetch-2m4nd"),
        ("unbound_pvc", "UnboundPVC", 'storageclass.storage.k8s.io "fast-ssd" not found', "kubectl get storageclass"),
        ("config_error", "CreateContainerConfigError", 'secret "lmdeploy-api-key" not found', "describe pod"),
    ],
)
def test_each_problem_is_named_with_the_next_command(name: str, reason: str, in_message: str, command: str) -> None:
    found = {p.reason: p for p in problems(name)}
    assert reason in found, [p.reason for p in problems(name)]
    p = found[reason]
    assert in_message in p.message and command in p.command
    line = p.line()
    assert "\n" not in line and line.count("; next: ") == 1
    assert p.grace_s + cluster.POLL_S < 60  # ends the wait within a minute


@pytest.mark.parametrize("name", ["healthy_init_wait", "waiting_for_first_consumer", "unschedulable_scaling_up"])
def test_normal_waiting_is_not_a_problem(name: str) -> None:
    assert problems(name) == []


def test_clock_waits_out_the_grace_and_forgets_a_cleared_problem() -> None:
    clock = plan.ProblemClock()
    found = problems("unschedulable")
    assert clock.due(found, 100.0) is None
    assert clock.due(found, 144.0) is None
    assert clock.due([], 150.0) is None  # it cleared (the autoscaler added a node): forgotten
    assert clock.due(found, 151.0) is None
    assert clock.due(found, 196.0) is not None
    assert plan.ProblemClock().due(problems("crashloop"), 0.0) is not None  # no grace for a crash loop


class FakeTime:
    """Simulated monotonic clock: sleep() advances it (the real wait loop, without waiting)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return self.now


class ScriptedKubectl:
    """Answers `wait_job`'s calls from a scenario's JSON (the Job stays Active)."""

    def __init__(self, name: str) -> None:
        self.pods, self.events, self.pvcs = scenario(name)
        self.calls: list[tuple[str, ...]] = []

    def run(self, *args: str, stdin: str | None = None, timeout: float = 60, check: bool = True) -> Any:
        import subprocess

        self.calls.append(args)
        words = [a for a in args if not a.startswith("--")]
        if "logs" in words:
            out = "line from " + words[words.index("logs") + 1]
        elif "job" in words:
            out = json.dumps({"metadata": {"name": "lmdeploy-quantize"}, "status": {"active": 1}})
        elif "pods" in words:
            out = json.dumps({"items": self.pods})
        elif "events" in words:
            out = json.dumps({"items": self.events})
        else:
            out = json.dumps({"items": self.pvcs})
        return subprocess.CompletedProcess(args, 0, out, "")


@pytest.mark.parametrize("name", ["unschedulable", "imagepullbackoff", "oomkilled", "multiattach", "unbound_pvc"])
def test_wait_job_ends_within_a_minute_with_one_line(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_time = FakeTime()
    monkeypatch.setattr(waits, "time", fake_time)
    k = ScriptedKubectl(name)
    start = fake_time.now
    with pytest.raises(cluster.ClusterError) as err:
        cluster.wait_job(k, NS, "lmdeploy-quantize", timeout_s=7800, hint="if a GPU is held by the running server: kubectl ...")  # type: ignore[arg-type]
    assert fake_time.now - start < 60, f"took {fake_time.now - start:.0f} simulated seconds"
    first = str(err.value).splitlines()[0]
    assert "; next: kubectl" in first
    if name == "unschedulable":
        assert str(err.value).splitlines()[1].startswith("if a GPU is held by the running server")


def test_failed_job_shows_logs_of_every_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waits, "time", FakeTime())
    k = ScriptedKubectl("healthy_init_wait")
    pod = k.pods[0]
    k.pods = [pod, {**pod, "metadata": {**pod["metadata"], "name": "lmdeploy-quantize-retry2"}}]
    failed = {"metadata": {"name": "lmdeploy-quantize"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    original = k.run

    def run(*args: str, **kw: Any) -> Any:
        proc = original(*args, **kw)
        if "job" in args:
            proc.stdout = json.dumps(failed)
        return proc

    k.run = run  # type: ignore[method-assign]
    with pytest.raises(cluster.ClusterError) as err:
        cluster.wait_job(k, NS, "lmdeploy-quantize", timeout_s=60)  # type: ignore[arg-type]
    text = str(err.value)
    assert "--- pod lmdeploy-quantize-x7k2p" in text and "--- pod lmdeploy-quantize-retry2" in text
    assert "line from lmdeploy-quantize-x7k2p" in text and "line from lmdeploy-quantize-retry2" in text
