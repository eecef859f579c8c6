"""Rendered overlays hang together: labels against selectors, probe and Service ports against container
ports, mounts against volumes, Job outputs against the serving path and markers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kit import cluster, k8s_params
from kit.cluster.overlay import check_metrics_scraped
from kit.k8s_params import COMPLETE_MARKER, FETCH, GRADIO, PVC, QUANTIZE, SERVE, serve_command
from kit.render import serve_args
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import build, profile_of
from tests.k8s.rendered import (
    CLIENT_LABEL,
    configmap_data,
    containers,
    docs_profile,
    env,
    find,
    lmdeploy_argv,
    matches,
    pod_specs,
    render_tree,
)

# ------------------------------------------------------------------------------------- labels, selectors, ports


LABELS = ("name", "instance", "component", "part-of", "managed-by")


def test_five_labels_on_every_object(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        labels = d["metadata"].get("labels") or {}
        missing = [k for k in LABELS if f"app.kubernetes.io/{k}" not in labels]
        assert not missing, f"{d['kind']}/{d['metadata']['name']} lacks {missing}"
    for name, _, labels in pod_specs(docs):
        assert all(f"app.kubernetes.io/{k}" in labels for k in LABELS), name


def test_selectors_use_name_and_component_and_match_pods(docs: list[dict[str, Any]]) -> None:
    pods = [labels for _, _, labels in pod_specs(docs)]
    keys = {"app.kubernetes.io/name", "app.kubernetes.io/component"}
    for d in docs:
        if d["kind"] == "Deployment":
            sel = d["spec"]["selector"]["matchLabels"]
            assert set(sel) == keys and matches(sel, d["spec"]["template"]["metadata"]["labels"]), d["metadata"]["name"]
        elif d["kind"] == "Service":
            assert set(d["spec"]["selector"]) == keys
            assert any(matches(d["spec"]["selector"], p) for p in pods), f"Service {d['metadata']['name']} selects no pod"
        elif d["kind"] == "PodDisruptionBudget":
            assert any(matches(d["spec"]["selector"]["matchLabels"], p) for p in pods)
        elif d["kind"] == "NetworkPolicy":
            sel = d["spec"]["podSelector"]
            if sel.get("matchLabels") == CLIENT_LABEL:
                continue  # selects the user's own labelled client pods, not the kit's
            if "matchLabels" in sel:
                assert any(matches(sel["matchLabels"], p) for p in pods), d["metadata"]["name"]
            for expr in sel.get("matchExpressions", []):
                assert any(p.get(expr["key"]) in expr["values"] for p in pods), d["metadata"]["name"]


def test_probe_and_service_ports_name_container_ports(docs: list[dict[str, Any]]) -> None:
    ports_by_pod = {}
    for name, spec, labels in pod_specs(docs):
        for c in spec["containers"]:
            names = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if probe in c:
                    port = c[probe]["httpGet"]["port"]
                    assert port in names, f"{name}/{c['name']} {probe} uses port {port!r}; container ports: {names}"
            ports_by_pod[name] = (labels, {p["name"]: p["containerPort"] for p in c.get("ports", [])})
    for svc in (d for d in docs if d["kind"] == "Service"):
        targets = [ports for labels, ports in ports_by_pod.values() if matches(svc["spec"]["selector"], labels)]
        for port in svc["spec"]["ports"]:
            assert all(port["targetPort"] in t for t in targets), f"Service {svc['metadata']['name']} targets a port no pod names"


# ------------------------------------------------------------------------------------- volumes and paths


def test_every_volume_mount_has_a_volume(docs: list[dict[str, Any]]) -> None:
    for name, spec, _ in pod_specs(docs):
        volumes = {v["name"] for v in spec.get("volumes", [])}
        mounted = set()
        for c in containers(spec):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}/{c['name']} mounts {m['name']!r}, not a volume of the pod"
                mounted.add(m["name"])
        assert volumes == mounted, f"{name}: unused volumes {volumes - mounted}"


def test_job_outputs_serving_path_and_markers_agree(docs: list[dict[str, Any]]) -> None:
    """Quantize Job output == Deployment model path == the marker the initContainer waits for, on one PVC."""
    s = load_settings(profile_of(docs_profile(docs)))
    params = configmap_data(docs, "lmdeploy-params")
    deploy = find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]
    model_arg = lmdeploy_argv(deploy["containers"][0]["command"])[3]
    wait = next(c for c in deploy["initContainers"] if c["name"] == "wait-for-model")
    job_names = [d["metadata"]["name"] for d in docs if d["kind"] == "Job"]
    if s.quantization.enabled:
        assert job_names == [FETCH, QUANTIZE] or sorted(job_names) == sorted([FETCH, QUANTIZE])
        assert params["KIT_QUANTIZED_PATH"] == model_arg == s.quantized_path
        quant = find(docs, "Job", QUANTIZE)["spec"]["template"]["spec"]
        fetch_wait = next(c for c in quant["initContainers"] if c["name"] == "wait-for-fetch")
        assert env(fetch_wait)["MARKER"] == f"{params['KIT_FP16_PATH']}/{COMPLETE_MARKER}"
    else:
        assert job_names == [FETCH], "unquantized profiles need no quantize Job"
        assert params["KIT_FP16_PATH"] == model_arg == s.fp16_path
    assert env(wait)["MARKER"] == f"{model_arg}/{COMPLETE_MARKER}"
    # Every pod that touches the model mounts the same claim at the settings' models_root.
    for name, spec, _ in pod_specs(docs):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
        for c in containers(spec):
            for m in c.get("volumeMounts", []):
                if m["name"] in claims:
                    assert claims[m["name"]] == PVC and m["mountPath"] == s.storage.models_root, name


def test_pods_load_the_same_settings(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    """The mounted settings file resolves to exactly the profile's settings (jobs call load_settings())."""
    profile = profile_of(docs_profile(docs))
    path = tmp_path / "settings.yaml"
    path.write_text(configmap_data(docs, "lmdeploy-settings")["settings.yaml"])
    assert load_settings(profile, path) == load_settings(profile)
    for name, spec, _ in pod_specs(docs):
        for c in spec["containers"]:
            if name != GRADIO:
                assert env(c)["PROFILE"] == profile and env(c)["KIT_SETTINGS"] == k8s_params.SETTINGS_FILE, name
                mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
                assert mounts[k8s_params.SETTINGS_MOUNT] == "settings"


def test_changed_settings_render_a_consistent_overlay(tmp_path: Path) -> None:
    """Settings that differ from the base's values (models_root, ports, GPU resource, fc) still give consistent objects."""
    s = load_settings(
        "fc",
        overrides={
            "storage": {"models_root": "/data/models"},
            "serving": {"port": 8000, "tp": 2},
            "gradio": {"port": 7860},
            "kubernetes": {"gpu_resource": "amd.com/gpu", "namespace": "llm", "storage_class": "fast", "access_mode": "ReadWriteMany"},
        },
    )
    overlay = tmp_path / "k8s/overlays/custom"
    overlay.mkdir(parents=True)
    (tmp_path / "k8s/base").symlink_to(REPO / "k8s/base")
    for name, text in k8s_params.overlay_files(s).items():
        (overlay / name).write_text(text)
    docs = build(overlay)
    api = find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]
    assert api["containers"][0]["command"] == serve_command(s) and lmdeploy_argv(serve_command(s)) == serve_args(s)
    assert api["containers"][0]["resources"]["limits"] == {"cpu": "4", "memory": "32Gi", "amd.com/gpu": "2"}
    assert [p["containerPort"] for p in api["containers"][0]["ports"]] == [8000]
    assert [p["port"] for p in find(docs, "Service", SERVE)["spec"]["ports"]] == [8000]
    assert [p["port"] for p in find(docs, "Service", GRADIO)["spec"]["ports"]] == [7860]
    for name, spec, _ in pod_specs(docs):
        for c in containers(spec):
            mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] == "model"]
            assert mounts in ([], ["/data/models"]), f"{name}/{c['name']}: {mounts}"
            assert "/models" not in [m["mountPath"] for m in c.get("volumeMounts", [])]
    assert env(api["initContainers"][0])["MARKER"] == f"/data/models/internlm2_5-1_8b-chat/{COMPLETE_MARKER}"
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs} == {"llm"}
    pvc = find(docs, "PersistentVolumeClaim", PVC)["spec"]
    assert pvc["storageClassName"] == "fast" and pvc["accessModes"] == ["ReadWriteMany"]
    # the volume checks of the shipped overlays hold here too
    test_every_volume_mount_has_a_volume(docs)
    test_probe_and_service_ports_name_container_ports(docs)


def test_the_monitoring_overlay_refuses_a_server_without_metrics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """serving.enable_metrics=false reaches the rendered serve command; deploying the overlay that scrapes /metrics then
    stops before anything is applied (real kustomize output, cmd_deploy on the fake kubectl)."""
    from tests.k8s.test_cluster_deploy import FakeCluster

    trees = render_tree(tmp_path / "tree", {"serving": {"enable_metrics": False}})
    assert "--disable-metrics" in find(trees["default"], "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]["command"]
    check_metrics_scraped(trees["default"])  # nothing scrapes it there
    check_metrics_scraped(build(REPO / "k8s/overlays/monitoring"))  # the shipped settings keep metrics on
    nodes = {"items": [{"metadata": {"name": "gpu-1"}, "status": {"allocatable": {"nvidia.com/gpu": "1"}}}]}
    fake = FakeCluster(tmp_path, {"secrets": ["lmdeploy-api-key"], "job_polls": 1, "nodes": nodes})
    fake.env(monkeypatch)
    rc = cluster.main(["deploy", "--skip-plan", "--overlay", str(tmp_path / "tree/k8s/overlays/monitoring")])
    assert rc != 0 and "set serving.enable_metrics: true" in capsys.readouterr().err
    assert fake.applied() == []
