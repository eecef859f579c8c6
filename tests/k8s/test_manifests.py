"""Rendered overlays: validators plus the semantic checks they miss (mounts, selectors, ports, paths, args)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit import k8s_params
from kit.k8s_params import COMPLETE_MARKER, FETCH, GRADIO, PVC, QUANTIZE, SERVE, serve_command
from kit.render import API_KEY_ENV, image_ref, serve_args
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import EXTRA_OVERLAYS, OVERLAYS, PROFILE_OVERLAYS, build, profile_of
from tests.k8s.netpol import External, Pod, Policies, workload_pods

LABELS = ("name", "instance", "component", "part-of", "managed-by")
CLIENT_LABEL = {"lmdeploy-kit/client": "true"}
WORKLOADS = ("Deployment", "Job")
CLUSTER_SCOPED = ("Namespace",)


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    """(object name, pod spec, pod labels) of every workload."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"]["labels"])
        for d in docs
        if d["kind"] in WORKLOADS
    ]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def configmap_data(docs: list[dict[str, Any]], prefix: str) -> dict[str, str]:
    hits = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(prefix + "-")]
    assert len(hits) == 1
    return hits[0]["data"]


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


def test_no_secret_values_in_the_manifests(docs: list[dict[str, Any]]) -> None:
    assert not [d for d in docs if d["kind"] == "Secret"]
    s = load_settings(profile_of(docs_profile(docs)))
    refs = {
        v["secretKeyRef"]["name"]
        for _, spec, _ in pod_specs(docs)
        for c in containers(spec)
        for v in env(c).values()
        if isinstance(v, dict) and "secretKeyRef" in v
    }
    volumes = {v["secret"]["secretName"] for _, spec, _ in pod_specs(docs) for v in spec.get("volumes", []) if "secret" in v}
    assert refs | volumes == {s.serving.api_key_secret, s.serving.hub_token_secret}


def docs_profile(docs: list[dict[str, Any]]) -> str:
    return find(docs, "Deployment", SERVE)["metadata"]["labels"]["lmdeploy-kit/profile"]


# ------------------------------------------------------------------------------------- labels, selectors, ports


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


def test_only_gradio_and_labelled_clients_reach_the_api(docs: list[dict[str, Any]]) -> None:
    s = load_settings(profile_of(docs_profile(docs)))
    policy = find(docs, "NetworkPolicy", SERVE)
    (rule,) = policy["spec"]["ingress"]
    froms = [f["podSelector"]["matchLabels"] for f in rule["from"]]
    gradio_labels = find(docs, "Deployment", GRADIO)["spec"]["template"]["metadata"]["labels"]
    assert any(matches(f, gradio_labels) for f in froms)
    assert {"lmdeploy-kit/client": "true"} in froms and len(froms) == 2
    serve = find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in serve["ports"]}
    assert [named[p["port"]] for p in rule["ports"]] == [s.serving.port]


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


# ------------------------------------------------------------------------------------- the serving container


def lmdeploy_argv(command: list[str]) -> list[str]:
    """The part of the serving command that kit.serve hands to lmdeploy (after `--`)."""
    assert command[:3] == ["python", "-m", "kit.serve"] and "--" in command, command[:6]
    return command[command.index("--") + 1 :]


def test_serve_command_is_the_settings_render(docs: list[dict[str, Any]]) -> None:
    """The key reaches the server as a file from the Secret volume: no env var, no argument holds it."""
    s = load_settings(profile_of(docs_profile(docs)))
    spec = find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]
    api = spec["containers"][0]
    assert lmdeploy_argv(api["command"]) == serve_args(s)
    assert "--api-keys" not in api["command"] and not any("$(" in a for a in api["command"])
    key_file = api["command"][api["command"].index("--api-key-file") + 1]
    mount = next(m for m in api["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert mount.get("readOnly") is True and volume["secret"]["secretName"] == s.serving.api_key_secret
    assert volume["secret"]["items"] == [{"key": "api-key", "path": key_file.removeprefix(mount["mountPath"] + "/")}]
    assert API_KEY_ENV not in env(api)


_PARSE = """
import contextlib, io, json, sys
from lmdeploy.cli.cli import CLI
from lmdeploy.cli.serve import SubCliServe
SubCliServe.add_parser_api_server()
keys = ('model_path', 'quant_policy', 'cache_max_entry_count', 'model_format', 'tp', 'server_port', 'tool_call_parser',
        'trust_remote_code', 'api_keys', 'backend')
out = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            a = CLI.parser.parse_args(argv)
        out.append({k: getattr(a, k) for k in keys})
    except SystemExit as exc:
        out.append({'exit': exc.code, 'stderr': err.getvalue()})
print(json.dumps(out))
"""
BAD_ARGV = ["serve", "api_server", "/m", "--trust-remote-code", "False"]
_parsed: list[dict[str, Any]] = []


def lmdeploy_parse() -> list[dict[str, Any]]:
    """Every profile's rendered command (argv[1:]) then BAD_ARGV through lmdeploy's real parser, in one process."""
    pytest.importorskip("lmdeploy.cli.serve", reason="lmdeploy is installed by requirements/nodeps.txt")
    if not _parsed:
        import json
        import sys

        argvs = []
        for profile in PROFILE_OVERLAYS:
            cmd = find(build(REPO / "k8s/overlays" / profile), "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]["command"]
            cmd = lmdeploy_argv(cmd)
            assert cmd[0] == "lmdeploy"
            argvs.append(cmd[1:])
        proc = subprocess.run(
            [sys.executable, "-c", _PARSE], input=json.dumps([*argvs, BAD_ARGV]), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        _parsed.extend(json.loads(proc.stdout.strip().splitlines()[-1]))
    return _parsed


@pytest.mark.parametrize("profile", PROFILE_OVERLAYS)
def test_serve_command_parses_with_lmdeploys_own_parser(profile: str) -> None:
    """Parse only: the real `lmdeploy serve api_server` argparse accepts the rendered command."""
    parsed = lmdeploy_parse()[PROFILE_OVERLAYS.index(profile)]
    assert "exit" not in parsed, parsed.get("stderr")
    s = load_settings(profile)
    assert parsed["model_path"] == s.serve_path
    assert parsed["quant_policy"] == s.serving.quant_policy
    assert parsed["cache_max_entry_count"] == s.serving.cache_max_entry_count
    assert parsed["model_format"] == s.effective_model_format
    assert parsed["tp"] == s.serving.tp
    assert parsed["server_port"] == s.serving.port
    assert parsed["tool_call_parser"] == s.serving.tool_call_parser
    assert parsed["trust_remote_code"] is s.model.trust_remote_code
    assert parsed["backend"] == s.serving.backend
    assert parsed["api_keys"] is None, "the key goes in through kit.serve, never the command"


def test_lmdeploy_parser_rejects_a_bad_command() -> None:
    """Guards the parse test: a homework-style string after an on/off flag fails the real parser."""
    bad = lmdeploy_parse()[-1]
    assert bad["exit"] == 2 and "unrecognized arguments: False" in bad["stderr"]


def test_serving_pod_shape(docs: list[dict[str, Any]]) -> None:
    s = load_settings(profile_of(docs_profile(docs)))
    dep = find(docs, "Deployment", SERVE)
    spec = dep["spec"]["template"]["spec"]
    api = spec["containers"][0]
    gpu = s.kubernetes.gpu_resource
    assert api["resources"]["requests"][gpu] == api["resources"]["limits"][gpu] == str(s.serving.tp)
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= s.kubernetes.startup_timeout_s
    for probe in ("readinessProbe", "livenessProbe"):
        p = api[probe]
        assert p["httpGet"]["path"] == "/health" and p["periodSeconds"] * p["failureThreshold"] <= 60, probe
    assert api["lifecycle"]["preStop"]["sleep"]["seconds"] < spec["terminationGracePeriodSeconds"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    if any(d["kind"] == "ScaledObject" for d in docs):
        assert "replicas" not in dep["spec"], "KEDA scales this Deployment: a replicas field would reset it on every apply"
    else:
        assert dep["spec"]["replicas"] == s.serving.replicas
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": s.kubernetes.shm_size}
    assert {m["mountPath"]: m["name"] for m in api["volumeMounts"]}["/dev/shm"] == "dshm"


def test_every_pod_is_hardened(docs: list[dict[str, Any]]) -> None:
    for name, spec, _ in pod_specs(docs):
        assert spec["automountServiceAccountToken"] is False, name
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] >= 10000 and psc["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], f"{name}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}/{c['name']} {kind}"


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


# ------------------------------------------------------------------------------------- monitoring overlay


def test_monitoring_objects_point_at_real_objects() -> None:
    docs = build(REPO / "k8s/overlays/monitoring")
    s = load_settings("default")
    svc = find(docs, "Service", SERVE)
    sm = find(docs, "ServiceMonitor", SERVE)
    assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert endpoint["authorization"]["credentials"] == {"name": s.serving.api_key_secret, "key": "api-key"}
    so = find(docs, "ScaledObject", SERVE)
    assert find(docs, "Deployment", so["spec"]["scaleTargetRef"]["name"])
    assert "lmdeploy:num_requests_waiting" in so["spec"]["triggers"][0]["metadata"]["query"]
    # metrics stay on: the rendered command carries no --disable-metrics
    assert "--disable-metrics" not in find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]["command"]


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


# ------------------------------------------------------------------------------------- scheduling (GPU clusters)

SCHEDULING = {
    "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoExecute", "tolerationSeconds": 300},
    ],
    "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["z1"]}]}]
            }
        }
    },
    "runtime_class_name": "nvidia",
    "priority_class_name": "llm-serving",
}


def render_tree(root: Path, overrides: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every shipped overlay rendered from settings with `overrides`, through the real kustomize, in a copy of the tree."""
    (root / "k8s/overlays/monitoring").mkdir(parents=True)
    (root / "k8s/base").symlink_to(REPO / "k8s/base")
    for f in (REPO / "k8s/overlays/monitoring").iterdir():
        shutil.copy(f, root / "k8s/overlays/monitoring" / f.name)
    profiles = {p: load_settings(p, overrides=overrides) for p in PROFILE_OVERLAYS}
    for rel, text in k8s_params.generated_files(profiles).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).unlink(missing_ok=True)
        (root / rel).write_text(text)
    return {name: build(root / "k8s/overlays" / name) for name in OVERLAYS}


def kubernetes_validate(docs: list[dict[str, Any]], path: Path) -> None:
    path.write_text(yaml.safe_dump_all(docs))
    proc = subprocess.run([str(REPO / ".venv/bin/kubernetes-validate"), "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def mounts_model(spec: dict[str, Any]) -> bool:
    return any(v.get("persistentVolumeClaim", {}).get("claimName") == PVC for v in spec.get("volumes", []))


def test_scheduling_settings_reach_every_pod_on_the_model_store(tmp_path: Path) -> None:
    """Tolerations, nodeSelector, affinity, runtimeClass and priorityClass land on fetch, quantize and serve pods."""
    rendered = render_tree(tmp_path, {"kubernetes": SCHEDULING})
    want = {
        "tolerations": SCHEDULING["tolerations"],
        "nodeSelector": SCHEDULING["node_selector"],
        "affinity": SCHEDULING["affinity"],
        "runtimeClassName": "nvidia",
        "priorityClassName": "llm-serving",
    }
    for overlay, docs in rendered.items():
        kubernetes_validate(docs, tmp_path / f"{overlay}.yaml")
        on_store = {name for name, spec, _ in pod_specs(docs) if mounts_model(spec)}
        assert {FETCH, SERVE} <= on_store, overlay
        for name, spec, _ in pod_specs(docs):
            if name in on_store:
                assert {k: spec.get(k) for k in want} == want, f"{overlay}: {name}"
            else:
                assert not set(want) & set(spec), f"{overlay}: {name} needs no GPU node"


def test_default_settings_set_no_scheduling_fields(docs: list[dict[str, Any]]) -> None:
    for name, spec, _ in pod_specs(docs):
        assert not {"tolerations", "nodeSelector", "affinity", "runtimeClassName", "priorityClassName"} & set(spec), name


def test_containers_without_a_gpu_see_no_gpu(docs: list[dict[str, Any]]) -> None:
    """NVIDIA_VISIBLE_DEVICES=void on every container that asks for no GPU (the CUDA base image says `all`)."""
    gpu = load_settings(profile_of(docs_profile(docs))).kubernetes.gpu_resource
    seen = set()
    for name, spec, _ in pod_specs(docs):
        for c in containers(spec):
            wants_gpu = gpu in c["resources"].get("limits", {})
            assert (env(c).get("NVIDIA_VISIBLE_DEVICES") == "void") is not wants_gpu, f"{name}/{c['name']}"
            if not wants_gpu:
                seen.add(c["name"])
    assert {"fetch", "wait-for-model", "gradio"} <= seen


# ------------------------------------------------------------------------------------- rollout timing

# A multi-GB CUDA image on a cold node: the deadline must leave at least this beyond the model load.
MIN_IMAGE_PULL_S = 300


def startup_budget_s(container: dict[str, Any]) -> int:
    """The longest a container may take to pass its startupProbe, read from the rendered probe."""
    probe = container["startupProbe"]
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_progress_deadline_covers_startup_and_image_pull(docs: list[dict[str, Any]]) -> None:
    """`kubectl rollout status` must not fail a healthy slow start: deadline >= probe budget + image pull."""
    dep = find(docs, "Deployment", SERVE)
    budget = startup_budget_s(dep["spec"]["template"]["spec"]["containers"][0])
    assert dep["spec"].get("progressDeadlineSeconds", 600) >= budget + MIN_IMAGE_PULL_S


def test_progress_deadline_follows_a_longer_startup(tmp_path: Path) -> None:
    docs = render_tree(tmp_path, {"kubernetes": {"startup_timeout_s": 3600}})["default"]
    dep = find(docs, "Deployment", SERVE)
    budget = startup_budget_s(dep["spec"]["template"]["spec"]["containers"][0])
    assert budget >= 3600 and dep["spec"]["progressDeadlineSeconds"] >= budget + MIN_IMAGE_PULL_S


# ------------------------------------------------------------------------------------- egress (NetworkPolicies, evaluated)

HUB = External("18.160.0.10")  # an address of the hub's CDN
DNS = Pod("coredns", "kube-system", {"k8s-app": "kube-dns"}, {"dns": (53, "UDP"), "dns-tcp": (53, "TCP")})


def netpol_world(docs: list[dict[str, Any]]) -> tuple[Policies, dict[str, Pod]]:
    pods = workload_pods(docs)
    ns = next(iter(pods.values())).namespace
    pods["client"] = Pod("client", ns, {**CLIENT_LABEL, "app": "mine"})
    # Another workload of the namespace with an open `http` port: no kit pod may reach it.
    pods["stranger"] = Pod("stranger", ns, {"app": "other"}, {"http": (8080, "TCP")})
    return Policies(docs), pods


def test_egress_is_denied_unless_a_policy_allows_it(docs: list[dict[str, Any]]) -> None:
    """serve: DNS only; Gradio and labelled clients: DNS + the API port; fetch: DNS + hub; quantize and others: nothing."""
    s = load_settings(profile_of(docs_profile(docs)))
    net, pods = netpol_world(docs)
    serve, gradio, fetch = pods[SERVE], pods[GRADIO], pods[FETCH]
    api = s.serving.port
    assert net.connects(serve, DNS, 53, "UDP") and not net.connects(serve, HUB, 443)
    assert not net.connects(serve, gradio, s.gradio.port)
    for src in (gradio, pods["client"]):
        assert net.connects(src, DNS, 53, "UDP") and net.connects(src, DNS, 53, "TCP"), src.name
        assert net.connects(src, serve, api), src.name
        assert not net.connects(src, serve, api + 1) and not net.connects(src, HUB, 443), src.name
        assert not net.connects(src, pods["stranger"], 8080), src.name
    assert net.connects(fetch, DNS, 53, "UDP") and net.connects(fetch, HUB, 443)
    assert not net.connects(fetch, HUB, 80) and not net.connects(fetch, serve, api)
    assert not net.connects(pods["stranger"], HUB, 443) and not net.connects(pods["stranger"], serve, api)
    if QUANTIZE in pods:
        quantize = pods[QUANTIZE]
        assert not any(
            net.connects(quantize, dst, port, proto) for dst, port, proto in [(DNS, 53, "UDP"), (HUB, 443, "TCP"), (serve, api, "TCP")]
        )


def test_the_evaluator_sees_the_default_deny() -> None:
    """Guards the test above: without the default-deny policy a stranger pod reaches the hub again."""
    docs = build(REPO / "k8s/overlays/default")
    net, pods = netpol_world([d for d in docs if d["metadata"]["name"] != "lmdeploy-default-deny-egress"])
    assert net.connects(pods["stranger"], HUB, 443) and net.connects(pods[QUANTIZE], HUB, 443)
    net, pods = netpol_world(docs)
    assert not net.connects(pods["stranger"], HUB, 443)


def test_fetch_egress_follows_the_hub_settings(tmp_path: Path) -> None:
    """A proxy/mirror: only its CIDR and port stay open to fetch; the public hub closes."""
    overrides = {"kubernetes": {"hub_egress_cidrs": ["10.20.0.0/16"], "hub_egress_ports": [3128]}}
    for overlay, docs in render_tree(tmp_path, overrides).items():
        net, pods = netpol_world(docs)
        fetch = pods[FETCH]
        assert net.connects(fetch, External("10.20.3.4"), 3128), overlay
        assert not net.connects(fetch, External("10.20.3.4"), 443) and not net.connects(fetch, HUB, 443), overlay
        assert not net.connects(pods[SERVE], External("10.20.3.4"), 3128), overlay


def test_prometheus_may_scrape_the_api_in_the_monitoring_overlay() -> None:
    docs = build(REPO / "k8s/overlays/monitoring")
    s = load_settings("default")
    net, pods = netpol_world(docs)
    prometheus = Pod("prometheus", s.monitoring.prometheus_namespace, {"app.kubernetes.io/name": "prometheus"})
    assert net.connects(prometheus, pods[SERVE], s.serving.port)
    assert not net.connects(Pod("other", "default", {}), pods[SERVE], s.serving.port)


# ------------------------------------------------------------------------------------- monitoring overlay from settings


def test_monitoring_overlay_follows_the_settings(tmp_path: Path) -> None:
    """ServiceMonitor labels (kube-prometheus-stack selects on `release`), KEDA range, namespace; no replicas field."""
    overrides = {
        "kubernetes": {"namespace": "llm", "access_mode": "ReadWriteMany"},
        "monitoring": {"service_monitor_labels": {"release": "prom"}, "min_replicas": 2, "max_replicas": 6, "prometheus_namespace": "obs"},
    }
    docs = render_tree(tmp_path, overrides)["monitoring"]
    kubernetes_validate(docs, tmp_path / "monitoring.yaml")
    sm = find(docs, "ServiceMonitor", SERVE)
    assert sm["metadata"]["labels"]["release"] == "prom" and sm["metadata"]["namespace"] == "llm"
    so = find(docs, "ScaledObject", SERVE)
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (2, 6)
    assert 'namespace="llm"' in so["spec"]["triggers"][0]["metadata"]["query"]
    assert "replicas" not in find(docs, "Deployment", SERVE)["spec"]
    assert find(docs, "PersistentVolumeClaim", PVC)["spec"]["accessModes"] == ["ReadWriteMany"]
    net, pods = netpol_world(docs)
    assert net.connects(Pod("prometheus", "obs", {}), pods[SERVE], 23333)
    assert not net.connects(Pod("prometheus", "monitoring", {}), pods[SERVE], 23333)
