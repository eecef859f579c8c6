"""kit.cluster deploy: the decisions as pure functions (kit/deploy_plan/) on the real rendered overlays,
and the real `cmd_deploy` driving a fake kubectl (tests/k8s/fake_kubectl.py: it logs each call and
answers from a JSON state; no API server can run here) to prove the order of applies and waits.

The marker decisions are fed by markers the REAL jobs wrote and the REAL `python -m kit.markers show
--json` printed (what the reader pod runs), never by markers typed in the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit import cluster, markers
from kit import deploy_plan as plan
from kit.cluster import waits
from kit.k8s_params import FETCH, GRADIO, QUANTIZE, SERVE
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import PROFILE_OVERLAYS, build, kubectl

FAKE = REPO / "tests/k8s/fake_kubectl.py"


def _kinds(step: plan.Step) -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d in step.objects]


@pytest.mark.parametrize("profile", PROFILE_OVERLAYS)
def test_steps_order_namespace_secret_config_jobs_serve_gradio(profile: str) -> None:
    s = load_settings(profile)
    docs = build(REPO / "k8s/overlays" / profile)
    steps = plan.deploy_steps(s, docs)
    names = [st.name for st in steps]
    jobs = [f"job:{FETCH}", f"job:{QUANTIZE}"] if s.quantization.enabled else [f"job:{FETCH}"]
    assert names == ["namespace", "secrets", "config", *jobs, f"rollout:{SERVE}", f"rollout:{GRADIO}"]
    by = {st.name: st for st in steps}
    assert _kinds(by["namespace"]) == [f"Namespace/{s.kubernetes.namespace}"]
    assert by["secrets"].secrets == (s.serving.api_key_secret,)
    assert "PersistentVolumeClaim/lmdeploy-model" in _kinds(by["config"])
    # every rendered object is applied by exactly one step
    applied = [id(d) for st in steps for d in st.objects]
    assert sorted(applied) == sorted(id(d) for d in docs)
    for name in jobs:
        assert by[name].wait == "job" and by[name].action == "job" and by[name].timeout_s > 7200
    assert by[f"rollout:{SERVE}"].wait == "rollout"
    assert by[f"rollout:{SERVE}"].timeout_s >= s.kubernetes.startup_timeout_s


def test_monitoring_scaledobject_follows_the_deployment() -> None:
    steps = plan.deploy_steps(load_settings("default"), build(REPO / "k8s/overlays/monitoring"))
    serve = next(st for st in steps if st.name == f"rollout:{SERVE}")
    assert _kinds(serve)[0] == f"Deployment/{SERVE}" and any(k.startswith("ScaledObject/") for k in _kinds(serve))


def test_a_skipped_job_keeps_its_place_without_a_wait() -> None:
    s = load_settings("default")
    steps = plan.deploy_steps(s, build(REPO / "k8s/overlays/default"), skip={markers.FETCH: "current"})
    fetch = next(st for st in steps if st.name == f"job:{FETCH}")
    quantize = next(st for st in steps if st.name == f"job:{QUANTIZE}")
    assert fetch.skip == "current" and fetch.wait is None
    assert quantize.skip is None and quantize.wait == "job"


def test_unknown_workload_is_refused() -> None:
    s = load_settings("default")
    docs = [*build(REPO / "k8s/overlays/default"), {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": "extra"}, "spec": {}}]
    with pytest.raises(ValueError, match="Job/extra"):
        plan.deploy_steps(s, docs)


# ---------------------------------------------------------------------------------------------- job / wait decisions


def _job(state: dict[str, Any] | None, spec: dict[str, Any] | None = None, stamped: bool = True) -> dict[str, Any]:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": FETCH}, "spec": spec or {"backoffLimit": 4}}
    out = plan.stamp(job) if stamped else job
    out["status"] = state or {}
    return out


def test_job_action() -> None:
    rendered = _job(None)
    rendered.pop("status")
    assert plan.job_action(None, rendered, run=False)[0] == "skip"
    assert plan.job_action(None, rendered, run=True)[0] == "create"
    assert plan.job_action(_job({"active": 1}), rendered, run=True)[0] == "keep"
    # a running Job of another spec (immutable template): delete and recreate
    assert plan.job_action(_job({"active": 1}, spec={"backoffLimit": 1}), rendered, run=True)[0] == "recreate"
    done = _job({"conditions": [{"type": "Complete", "status": "True"}]})
    assert plan.job_action(done, rendered, run=True)[0] == "recreate"
    failed = _job({"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
    assert plan.job_action(failed, rendered, run=True) == ("recreate", "a failed Job cannot be re-run: deleting it and creating it again")


def test_job_state_and_rollout_state() -> None:
    assert plan.job_state({"status": {}}) == "Pending"
    assert plan.job_state({"status": {"active": 1}}) == "Active"
    assert plan.job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Complete"
    assert plan.job_state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 1}}
    assert plan.rollout_state({**dep, "status": {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": 1, "replicas": 1}})[
        0
    ] == ("progressing")
    # the old pod is still there (maxSurge 0 / maxUnavailable 1 rollouts): not done yet
    assert plan.rollout_state({**dep, "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 1, "replicas": 2}})[
        0
    ] == ("progressing")
    assert (
        plan.rollout_state({**dep, "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 1, "replicas": 1}})[0]
        == "done"
    )
    stuck = {
        "observedGeneration": 2,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "x"}],
    }
    assert plan.rollout_state({**dep, "status": stuck})[0] == "failed"


def test_gpu_conflict() -> None:
    s = load_settings("default")
    serve = {"spec": {"replicas": 1}}
    assert plan.gpu_conflict(s, serve, {"gpu-1": 1}) is not None
    assert plan.gpu_conflict(s, serve, {"gpu-1": 2}) is None
    assert plan.gpu_conflict(s, {"spec": {"replicas": 0}}, {"gpu-1": 1}) is None
    assert plan.gpu_conflict(s, None, {"gpu-1": 1}) is None
    assert plan.gpu_conflict(s, serve, None) is None  # nodes unreadable: claim nothing, the wait's diagnostics catch it
    assert plan.gpu_conflict(load_settings("multi-gpu"), serve, {"gpu-1": 2}) is not None  # tp=2 holds both


def test_prestop_sleep_falls_back_to_exec_below_1_30() -> None:
    docs = build(REPO / "k8s/overlays/default")
    serve = next(d for d in docs if d["metadata"]["name"] == SERVE and d["kind"] == "Deployment")
    seconds = serve["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    old, changed = plan.prestop_fallback(docs, plan.server_version({"serverVersion": {"major": "1", "minor": "29+"}}))
    assert changed == [f"{SERVE}/api-server"]
    pre = next(d for d in old if d["metadata"]["name"] == SERVE and d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert pre["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", str(seconds)]}}
    assert "sleep" in serve["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]  # input untouched
    assert plan.prestop_fallback(docs, (1, 30)) == (docs, [])
    assert plan.prestop_fallback(docs, None) == (docs, [])
    assert plan.server_version({"serverVersion": {"major": "1", "minor": "", "gitVersion": "v1.28.5-eks"}}) == (1, 28)


# ---------------------------------------------------------------------------------------------- markers from the real jobs


def _settings_file(tmp_path: Path) -> Path:
    """settings.yaml with CPU AWQ of a tiny model: the same file the jobs and kit.cluster read."""
    from tests.jobs._helpers import CALIB

    data = yaml.safe_load((REPO / "settings.yaml").read_text())
    for item in CALIB:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        data["defaults"][section][field] = int(value) if value.isdigit() else value
    data["defaults"]["model"]["name"] = "tiny"
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _shown(store: Path, s: Any) -> dict[str, Any]:
    """The REAL reader (`python -m kit.markers show --json`, as in the reader pod) on the store, keyed by the
    in-pod paths (the PVC is mounted at storage.models_root)."""
    local = [markers.marker_path(s, st).replace(s.storage.models_root, str(store), 1) for st in markers.STAGES]
    proc = subprocess.run([sys.executable, "-m", "kit.markers", "show", "--json", *local], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {k.replace(str(store), s.storage.models_root, 1): v for k, v in json.loads(proc.stdout).items()}


@pytest.fixture(scope="module")
def fetched_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A store the real fetch and quantize jobs wrote (tiny model, CPU AWQ)."""
    from jobs import fetch, quantize
    from tests.jobs._helpers import SHAPE
    from tests.support.models import build_llama

    tmp = tmp_path_factory.mktemp("deploy-markers")
    model = build_llama(tmp / "src", SHAPE)
    settings = _settings_file(tmp)
    store = tmp / "store"
    args = ["--settings", str(settings), "--set", f"storage.models_root={store}", "--set", f"model.source={model}"]
    assert fetch.main(args) == 0
    assert quantize.main(args) == 0
    return store, settings, model


def _reader_pod_output(store: Path, s: Any, profile: str = "default") -> dict[str, Any]:
    """Run the marker reader pod's own container command, its PVC mountPath mapped to the store."""
    pod = plan.marker_reader_pod(s, build(REPO / "k8s/overlays" / profile), "reader")
    (container,) = pod["spec"]["containers"]
    mount = container["volumeMounts"][0]["mountPath"]
    argv = [a.replace(mount, str(store), 1) if a.startswith(mount + "/") else a for a in container["command"]]
    assert argv[0] == "python"
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return {k.replace(str(store), mount, 1): v for k, v in json.loads(proc.stdout).items()}


def test_reader_pod_needs_no_gpu_and_passes_the_restricted_profile(tmp_path: Path) -> None:
    s = load_settings("default")
    docs = build(REPO / "k8s/overlays/default")
    pod = plan.marker_reader_pod(s, docs, "lmdeploy-markers-1")
    spec, (container,) = pod["spec"], pod["spec"]["containers"]
    assert not any("gpu" in key for key in container["resources"]["limits"])
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in container["env"]
    assert container["volumeMounts"][0]["readOnly"] and spec["volumes"][0]["persistentVolumeClaim"]["readOnly"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "lmdeploy-model"
    # restricted Pod Security Standard (the namespace enforces it)
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    # the fetch pod's scheduling fields travel with it (the volume is read where it lives)
    fetch = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == FETCH)["spec"]["template"]["spec"]
    for key in ("tolerations", "nodeSelector", "affinity", "priorityClassName"):
        assert spec.get(key) == fetch.get(key)
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    proc = subprocess.run([str(REPO / ".venv/bin/kubernetes-validate"), "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_unchanged_store_skips_both_jobs_and_a_change_runs_the_right_one(fetched_store: tuple[Path, Path, Path]) -> None:
    store, settings, model = fetched_store
    s = load_settings("default", settings, {"model": {"source": str(model)}})
    found = plan.markers_by_stage(s, _reader_pod_output(store, s))
    assert not plan.decide_stage(s, markers.FETCH, found).run
    assert not plan.decide_stage(s, markers.QUANTIZE, found).run
    # AWQ parameters changed: quantize runs, fetch does not
    s2 = load_settings("default", settings, {"model": {"source": str(model)}, "quantization": {"calib_samples": 8}})
    assert not plan.decide_stage(s2, markers.FETCH, found).run
    assert "settings changed" in plan.decide_stage(s2, markers.QUANTIZE, found).reason
    # another source: fetch runs (and quantize: its request is unchanged but the fetch marker will change)
    s3 = load_settings("default", settings, {"model": {"source": "internlm/internlm2_5-1_8b-chat"}})
    assert plan.decide_stage(s3, markers.FETCH, found).run
    # the fp16 model the quantize marker was made from is gone / different
    other = {**found, markers.FETCH: {**found[markers.FETCH], "fingerprint": "0" * 64}}
    assert plan.decide_stage(s, markers.QUANTIZE, other).reason == "the fp16 model differs from the one quantized"
    assert plan.decide_stage(s, markers.FETCH, {markers.FETCH: None}).run
    assert plan.decide_stage(s, markers.FETCH, {markers.FETCH: {"error": "x: not JSON"}}).run


# ---------------------------------------------------------------------------------------------- cmd_deploy on a fake kubectl


class FakeCluster:
    def __init__(self, tmp_path: Path, state: dict[str, Any]) -> None:
        self.dir = tmp_path / "fake-kube"
        self.dir.mkdir()
        (self.dir / "state.json").write_text(json.dumps(state))
        self.bin = self.dir / "kubectl"
        self.bin.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
        self.bin.chmod(0o755)

    def env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("KIT_KUBECTL", str(self.bin))
        monkeypatch.setenv("FAKE_KUBE_STATE", str(self.dir))
        monkeypatch.setenv("FAKE_REAL_KUBECTL", kubectl())
        monkeypatch.setenv("PYTHONPATH", str(REPO))
        monkeypatch.setattr(waits, "POLL_S", 0.01)

    def calls(self) -> list[dict[str, Any]]:
        path = self.dir / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def applied(self) -> list[tuple[int, list[str], dict[str, str]]]:
        """(call index, kinds, job states at that moment) of each apply."""
        return [(i, c["stdin_kinds"], c["jobs"]) for i, c in enumerate(self.calls()) if c["argv"][:1] == ["apply"]]


def _deploy(profile: str, *extra: str, settings: Path | None = None) -> int:
    argv = ["--profile", profile, *(["--settings", str(settings)] if settings else []), "deploy", "--skip-plan", *extra]
    return cluster.main(argv)


@pytest.mark.parametrize("profile", PROFILE_OVERLAYS)
def test_deploy_applies_in_order_and_waits_for_each_job(
    profile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_settings(profile)
    nodes = {"items": [{"metadata": {"name": "gpu-1"}, "status": {"allocatable": {"nvidia.com/gpu": str(s.serving.tp)}}}]}
    fake = FakeCluster(tmp_path, {"secrets": [s.serving.api_key_secret], "job_polls": 2, "nodes": nodes})
    fake.env(monkeypatch)
    assert _deploy(profile) == 0, capsys.readouterr().err
    calls = fake.calls()
    applies = fake.applied()
    order = [kinds for _, kinds, _ in applies]
    jobs = [FETCH, QUANTIZE] if s.quantization.enabled else [FETCH]
    # namespace first (absent here), then the Secret check, then config with the PVC, Jobs, serve, Gradio
    assert order[0] == ["Namespace"]
    secret_check = next(i for i, c in enumerate(calls) if c["argv"][:2] == ["get", "secret"])
    assert applies[0][0] < secret_check < applies[1][0]
    assert "PersistentVolumeClaim" in order[1] and "Job" not in order[1] and "Deployment" not in order[1]
    assert order[2 : 2 + len(jobs)] == [["Job"]] * len(jobs)
    assert order[2 + len(jobs) :] == [["Deployment"], ["Deployment"]]
    # each Job was complete before anything after it was applied (the wait), in order
    for n, job in enumerate(jobs):
        _, _, states_after = applies[3 + n]
        assert states_after.get(job) == "Complete", (job, states_after)
    serve_at = applies[2 + len(jobs)]
    assert all(serve_at[2].get(j) == "Complete" for j in jobs)
    assert "deployed profile" in capsys.readouterr().out


@pytest.mark.slow
def test_unchanged_redeploy_starts_no_job(
    fetched_store: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store, settings, model = fetched_store
    data = yaml.safe_load(settings.read_text())
    data["defaults"]["model"]["source"] = str(model)
    pod_settings = tmp_path / "settings.yaml"
    pod_settings.write_text(yaml.safe_dump(data))
    s = load_settings("default", pod_settings)
    fake = FakeCluster(
        tmp_path, {"secrets": [s.serving.api_key_secret], "namespaces": [s.kubernetes.namespace], "markers": _shown(store, s)}
    )
    fake.env(monkeypatch)
    assert _deploy("default", "--overlay", "default", settings=pod_settings) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    kinds = [k for _, ks, _ in fake.applied() for k in ks]
    assert "Job" not in kinds and kinds.count("Deployment") == 2, kinds
    assert "Namespace" not in kinds  # it exists: never re-applied
    assert f"job/{FETCH}: skipped" in err and f"job/{QUANTIZE}: skipped" in err
    # the markers were read by a reader pod (no GPU), which was deleted again
    argvs = [c["argv"] for c in fake.calls()]
    assert any(a[:1] == ["create"] for a in argvs) and any(a[:2] == ["delete", "pod"] for a in argvs)


def test_quantize_behind_the_servers_gpu_stops_with_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_settings("default")
    serve = next(d for d in build(REPO / "k8s/overlays/default") if d["kind"] == "Deployment" and d["metadata"]["name"] == SERVE)
    state = {
        "secrets": [s.serving.api_key_secret],
        "namespaces": [s.kubernetes.namespace],
        "objects": {f"deployments/{SERVE}": serve},
    }
    fake = FakeCluster(tmp_path, state)
    fake.env(monkeypatch)
    assert _deploy("default") == 1
    err = capsys.readouterr().err
    assert f"kubectl -n {s.kubernetes.namespace} scale deployment/{SERVE} --replicas=0" in err
    assert QUANTIZE not in json.dumps([c["argv"] for c in fake.calls() if c["argv"][:1] == ["apply"]])
    # --scale-down: the server is scaled to 0 before the quantize Job is applied
    (tmp_path / "again").mkdir()
    fake2 = FakeCluster(tmp_path / "again", state)
    fake2.env(monkeypatch)
    assert _deploy("default", "--scale-down") == 0, capsys.readouterr().err
    calls = fake2.calls()
    scale = next(i for i, c in enumerate(calls) if c["argv"][:1] == ["scale"])
    quantize_apply = next(i for i, c in enumerate(calls) if c["argv"][:1] == ["apply"] and c["stdin_kinds"] == ["Job"] and i > scale)
    assert scale < quantize_apply


def test_a_finished_job_is_deleted_and_recreated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_settings("fc")
    fetch = next(d for d in build(REPO / "k8s/overlays/fc") if d["kind"] == "Job")
    state = {
        "secrets": [s.serving.api_key_secret],
        "namespaces": [s.kubernetes.namespace],
        "objects": {f"jobs/{FETCH}": fetch},
        "polls": {FETCH: 5},
    }
    fake = FakeCluster(tmp_path, state)
    fake.env(monkeypatch)
    assert _deploy("fc", "--force-jobs") == 0, capsys.readouterr().err
    argvs = [c["argv"] for c in fake.calls()]
    delete = argvs.index(["delete", "job", FETCH, "--wait=true", "--cascade=foreground"])
    apply_job = next(i for i, c in enumerate(fake.calls()) if c["stdin_kinds"] == ["Job"])
    assert delete < apply_job


@pytest.mark.parametrize(("minor", "expect_exec"), [("29", True), ("30", False)])
def test_deploy_patches_prestop_sleep_on_old_servers(
    minor: str, expect_exec: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_settings("fc")
    state = {
        "secrets": [s.serving.api_key_secret],
        "namespaces": [s.kubernetes.namespace],
        "version": {"serverVersion": {"major": "1", "minor": minor, "gitVersion": f"v1.{minor}.4"}},
    }
    fake = FakeCluster(tmp_path, state)
    fake.env(monkeypatch)
    assert _deploy("fc") == 0, capsys.readouterr().err
    applied = json.loads((fake.dir / "state.json").read_text())["objects"][f"deployments/{SERVE}"]
    pre = applied["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
    assert ("exec" in pre) is expect_exec and ("sleep" in pre) is not expect_exec, pre
