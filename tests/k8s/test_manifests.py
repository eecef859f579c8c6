"""Rendered overlays: the validators, and objects that follow the settings (namespace, images, store, profiles).

The semantic checks the validators miss live beside this file: test_manifests_wiring (labels, ports,
mounts, paths), _serving (the serve container), _security, _scheduling, _monitoring.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from kit import k8s_params
from kit.k8s_params import PVC, SERVE, serve_command
from kit.render import image_ref
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import EXTRA_OVERLAYS, OVERLAYS, PROFILE_OVERLAYS, build, profile_of
from tests.k8s.rendered import (
    containers,
    docs_profile,
    find,
    lmdeploy_argv,
    pod_specs,
)

# ------------------------------------------------------------------------------------- rendering + validators


def test_every_overlay_is_tested() -> None:
    assert set(PROFILE_OVERLAYS) | set(EXTRA_OVERLAYS) == set(OVERLAYS)


def test_base_renders_on_its_own() -> None:
    kinds = {d["kind"] for d in build(REPO / "k8s/base")}
    assert {"Namespace", "PersistentVolumeClaim", "Job", "Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget"} <= kinds


def test_overlay_passes_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(build(REPO / "k8s/overlays" / overlay)))
    proc = subprocess.run(
        [str(REPO / ".venv/bin/kubernetes-validate"), "--strict", "--quiet", str(rendered)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_validate_catches_an_unknown_field(tmp_path: Path) -> None:
    """The validator really runs strict: a misspelt field fails (guards the test above against a no-op)."""
    docs = build(REPO / "k8s/overlays/default")
    bad = [dict(d) for d in docs]
    dep = next(d for d in bad if d["kind"] == "Deployment")
    dep["spec"] = {**dep["spec"], "replica": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump_all(bad))
    proc = subprocess.run([str(REPO / ".venv/bin/kubernetes-validate"), "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert proc.returncode != 0


def test_generated_overlays_match_settings() -> None:
    profiles = {p: load_settings(p) for p in PROFILE_OVERLAYS}
    for rel, text in k8s_params.generated_files(profiles).items():
        assert (REPO / rel).read_text() == text, f"{rel} is stale: run `make render`"


def test_checkov_skips_carry_a_written_reason(docs: list[dict[str, Any]]) -> None:
    for d in docs:
        for key, value in (d["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV2?_[A-Z0-9_]+=.{20,}", value), (
                    f"{d['kind']}/{d['metadata']['name']} {key}: {value!r} has no reason"
                )


# ------------------------------------------------------------------------------------- objects follow the settings


CLUSTER_SCOPED = ("Namespace",)


def test_images_come_from_settings(docs: list[dict[str, Any]]) -> None:
    s = load_settings(profile_of(docs_profile(docs)))
    expected = {"lmdeploy-gradio": image_ref(s, "client")}
    for name, spec, _ in pod_specs(docs):
        for c in containers(spec):
            assert c["image"] == expected.get(name, image_ref(s, "runtime")), f"{name}/{c['name']}"


def test_everything_lands_in_the_settings_namespace(docs: list[dict[str, Any]]) -> None:
    ns = load_settings(profile_of(docs_profile(docs))).kubernetes.namespace
    for d in docs:
        if d["kind"] in CLUSTER_SCOPED:
            assert d["metadata"]["name"] == ns
        else:
            assert d["metadata"].get("namespace") == ns, f"{d['kind']}/{d['metadata']['name']}"


def test_model_store_follows_settings(docs: list[dict[str, Any]]) -> None:
    k = load_settings(profile_of(docs_profile(docs))).kubernetes
    pvc = find(docs, "PersistentVolumeClaim", PVC)["spec"]
    assert pvc["accessModes"] == [k.access_mode] and pvc["resources"]["requests"]["storage"] == k.pvc_size
    assert pvc.get("storageClassName", "") == k.storage_class


def test_profiles_differ_where_the_settings_do() -> None:
    """The overlays are not copies: seed serves KV int4 at 0.4, fc the fp16 model at policy 0, multi-gpu two GPUs."""
    cmd = {p: lmdeploy_argv(serve_command(load_settings(p))) for p in PROFILE_OVERLAYS}
    assert cmd["seed"][cmd["seed"].index("--quant-policy") + 1] == "4"
    assert cmd["fc"][cmd["fc"].index("--quant-policy") + 1] == "0" and "--model-format" not in cmd["fc"]
    assert cmd["multi-gpu"][cmd["multi-gpu"].index("--tp") + 1] == "2"


def test_generated_patch_follows_a_changed_setting() -> None:
    s = load_settings("default", overrides={"serving": {"port": 8000, "tp": 4}, "kubernetes": {"gpu_resource": "amd.com/gpu"}})
    serve = next(d for d in k8s_params.patches(s) if d["kind"] == "Deployment" and d["metadata"]["name"] == SERVE)
    api = serve["spec"]["template"]["spec"]["containers"][0]
    assert api["ports"][1]["containerPort"] == 8000 and "8000" in api["command"]
    assert api["resources"]["limits"]["amd.com/gpu"] == "4" and api["resources"]["$patch"] == "replace"
