"""Settings schema: every profile loads, bad values fail naming the field, one value reaches every consumer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kit import cli, exitcodes
from kit.outputs import all_files
from kit.render import auto_awq_args, flat_params, serve_args
from kit.settings import SettingsError, load_settings, profile_names

REPO = Path(__file__).resolve().parents[2]

# (override, field named in the error, fragment of what is allowed)
BAD_SETTINGS = [
    ("serving.quant_policy=3", "serving.quant_policy", "0, 4 or 8"),
    ("serving.quant_policy=16", "serving.quant_policy", "0, 4 or 8"),
    ("serving.cache_max_entry_count=0", "serving.cache_max_entry_count", "greater than 0"),
    ("serving.cache_max_entry_count=1.5", "serving.cache_max_entry_count", "less than 1"),
    ("serving.tp=0", "serving.tp", "greater than or equal to 1"),
    ("serving.port=70000", "serving.port", "less than or equal to 65535"),
    ("serving.port=80", "serving.port", "greater than or equal to 1024"),
    ("serving.backend=vllm", "serving.backend", "'turbomind' or 'pytorch'"),
    ("quantization.w_group_size=64", "quantization.w_group_size=64", "allowed: 128"),
    ("quantization.w_group_size=100", "quantization.w_group_size", "32, 64, 128 or 256"),
    ("quantization.w_bits=8", "quantization.w_bits", "4"),
    ("quantization.calib_samples=0", "quantization.calib_samples", "greater than or equal to 1"),
    ("model.source=", "model.source", "at least 1 character"),
    ("model.source=not a repo id", "model.source", "Hugging Face id"),
    ("model.name=../escape", "model.name", "directory name"),
    ("model.colour=blue", "model.colour", "unknown key"),
    ("storage.models_root=models", "storage.models_root", "absolute path"),
    ("storage.quantized_dir=../../etc", "storage.quantized_dir", "without '..'"),
    ("kubernetes.namespace=My_NS", "kubernetes.namespace", "Kubernetes name"),
    ("kubernetes.pvc_size=lots", "kubernetes.pvc_size", "Kubernetes quantity"),
    ("images.cuda_base=nvidia/cuda:latest", "images.cuda_base", "exact tag"),
    ("images.runtime_digest=sha256:abc", "images.runtime_digest", "64 hex digits"),
    ("versions.lmdeploy=latest", "versions.lmdeploy", "version like"),
    ("provision.env_type=docker", "provision.env_type", "'conda' or 'venv'"),
    ("gradio.port=23333", "gradio.port", "must differ"),
    ("quantization.enabled=false;serving.model_format=awq", "serving.model_format=awq", "quantization.enabled=true"),
    ("serving.backend=pytorch;serving.model_format=hf", "serving.model_format=hf", "rejected by the pytorch backend"),
    # KEDA replicas on other nodes cannot mount a ReadWriteOnce store: refused before anything is applied.
    ("monitoring.max_replicas=2", "monitoring.max_replicas=2", "kubernetes.access_mode=ReadWriteMany"),
    ("monitoring.min_replicas=3", "monitoring.min_replicas=3", "above monitoring.max_replicas"),
    ("monitoring.prometheus_namespace=Mon", "monitoring.prometheus_namespace", "Kubernetes name"),
    ("serving.api_key_secret=Api_Key", "serving.api_key_secret", "Kubernetes name"),
    (f"kubernetes.namespace={'a' * 64}", "kubernetes.namespace", "at most 63"),
    ("kubernetes.runtime_class_name=NVIDIA", "kubernetes.runtime_class_name", "Kubernetes object name"),
    ("kubernetes.priority_class_name=high prio", "kubernetes.priority_class_name", "Kubernetes object name"),
    ("kubernetes.hub_egress_cidrs=[hub.example.org]", "kubernetes.hub_egress_cidrs", "is not a CIDR"),
    ("kubernetes.hub_egress_ports=[0]", "kubernetes.hub_egress_ports", "between 1 and 65535"),
    ("kubernetes.affinity={nodeAfinity: {}}", "kubernetes.affinity", "allowed: nodeAffinity"),
    ("kubernetes.tolerations=[{operator: Exists, value: x}]", "kubernetes.tolerations", "takes no value"),
    ("kubernetes.tolerations=[{key: a, effect: NoSchedule, tolerationSeconds: 5}]", "kubernetes.tolerations", "needs effect NoExecute"),
    ("kubernetes.tolerations=[{key: a, efect: NoSchedule}]", "kubernetes.tolerations", "unknown key"),
    ("kubernetes.node_selector=[a]", "kubernetes.node_selector", "valid dictionary"),
]


@pytest.mark.parametrize("profile", profile_names())
def test_every_profile_loads(profile: str) -> None:
    s = load_settings(profile)
    assert s.profile == profile
    assert s.serve_path.startswith(s.storage.models_root + "/")


def test_seed_profile_is_the_homework() -> None:
    s = load_settings("seed")
    q, sv = s.quantization, s.serving
    assert (q.w_bits, q.w_group_size, q.calib_samples, q.calib_seqlen, q.batch_size, q.search_scale) == (4, 128, 128, 2048, 1, False)
    assert (s.effective_model_format, sv.quant_policy, sv.cache_max_entry_count, sv.port, sv.tp) == ("awq", 4, 0.4, 23333, 1)
    assert s.gradio.port == 6006
    assert s.model.source == "internlm/internlm2_5-1_8b-chat"
    fc = load_settings("fc")
    assert fc.serve_path == fc.fp16_path and fc.serving.quant_policy == 0 and fc.effective_model_format is None


@pytest.mark.parametrize(("override", "field", "allowed"), BAD_SETTINGS, ids=[b[0] for b in BAD_SETTINGS])
def test_bad_setting_is_rejected_naming_field(override: str, field: str, allowed: str, capsys: pytest.CaptureFixture[str]) -> None:
    sets = [arg for item in override.split(";") for arg in ("--set", item)]
    rc = cli.main(["validate", *sets])
    err = capsys.readouterr().err
    assert rc == exitcodes.USAGE
    assert field in err, err
    assert allowed in err, err
    value = override.split("=", 1)[1]
    if value and value[0] not in "[{" and ";" not in override and "=" not in field and "must differ" not in allowed:
        assert value in err, err


def test_bad_settings_file_and_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("defaults: [1, 2\n")
    assert cli.main(["--settings", str(bad), "validate"]) == exitcodes.USAGE
    assert "not valid YAML" in capsys.readouterr().err
    bad.write_text("defaults: {}\nextras: {}\n")
    assert cli.main(["--settings", str(bad), "validate"]) == exitcodes.USAGE
    assert "unknown top-level key" in capsys.readouterr().err
    assert cli.main(["--profile", "nope", "validate"]) == exitcodes.USAGE
    assert "allowed: default" in capsys.readouterr().err
    with pytest.raises(SettingsError, match="settings file not found"):
        load_settings(path=tmp_path / "missing.yaml")


def test_bad_setting_via_cli_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    """A bad value in the settings file stops `make render` before any file is written."""
    settings = yaml.safe_load((REPO / "settings.yaml").read_text())
    settings["defaults"]["serving"]["quant_policy"] = 3
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "kit", "--settings", str(path), "render", "--root", str(out)], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == exitcodes.USAGE
    assert "serving.quant_policy = 3" in proc.stderr
    assert not out.exists()


def test_profile_overrides_only_what_it_names() -> None:
    base, seed = load_settings("default"), load_settings("seed")
    assert seed.serving.quant_policy == 4 and base.serving.quant_policy == 8
    assert seed.serving.port == base.serving.port
    assert seed.kubernetes == base.kubernetes


def _with_quant_policy(tmp_path: Path, value: int) -> Path:
    settings = yaml.safe_load((REPO / "settings.yaml").read_text())
    settings["defaults"]["serving"]["quant_policy"] = value
    for profile in settings["profiles"].values():
        profile.get("serving", {}).pop("quant_policy", None)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.mark.parametrize("value", [0, 4, 8])
def test_one_value_reaches_every_consumer(tmp_path: Path, value: int) -> None:
    """quant_policy edited once in settings.yaml shows up identically in serve args, Ansible vars and k8s params."""
    path = _with_quant_policy(tmp_path, value)
    profiles = {name: load_settings(name, path) for name in profile_names(path)}
    files = all_files(profiles)
    for name, s in profiles.items():
        args = serve_args(s)
        assert args[args.index("--quant-policy") + 1] == str(value)
        assert flat_params(s)["KIT_SERVING_QUANT_POLICY"] == str(value)
        ansible = yaml.safe_load(files[Path("ansible/vars/profiles") / f"{name}.yml"])
        assert str(value) in yaml.safe_dump(ansible)
        assert _quant_policy_in_ansible(ansible) == {str(value)}
        params = Path("k8s/overlays") / name / "params.env"
        if params in files:
            assert f"KIT_SERVING_QUANT_POLICY={value}\n" in files[params]
    # The same path renders through the CLI into real files.
    out = tmp_path / "out"
    assert cli.main(["--settings", str(path), "render", "--root", str(out)]) == exitcodes.OK
    assert f"KIT_SERVING_QUANT_POLICY={value}\n" in (out / "k8s/overlays/default/params.env").read_text()


def _quant_policy_in_ansible(node: object) -> set[str]:
    """Every value the Ansible vars give for the quant policy (flat param or serve argv)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if str(key).upper().endswith("QUANT_POLICY"):
                found.add(str(value))
            found |= _quant_policy_in_ansible(value)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if item == "--quant-policy" and i + 1 < len(node):
                found.add(str(node[i + 1]))
            found |= _quant_policy_in_ansible(item)
    return found


def test_awq_args_follow_settings() -> None:
    s = load_settings("seed")
    args = auto_awq_args(s)
    assert args[:4] == ["lmdeploy", "lite", "auto_awq", s.fp16_path]
    assert "--search-scale" not in args
    assert args[args.index("--calib-samples") + 1] == "128"
    assert args[args.index("--w-group-size") + 1] == "128"
    s2 = load_settings("seed", overrides={"quantization": {"search_scale": True}})
    assert "--search-scale" in auto_awq_args(s2)


def test_generated_files_are_current() -> None:
    assert cli.main(["render", "--check"]) == exitcodes.OK


def test_get_prints_one_value(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--profile", "seed", "get", "serving.quant_policy"]) == exitcodes.OK
    assert capsys.readouterr().out.strip() == "4"
    assert cli.main(["get", "serving.nope"]) == exitcodes.USAGE


def test_autoscaling_above_one_replica_with_a_shared_store_is_accepted() -> None:
    s = load_settings(overrides={"monitoring": {"max_replicas": 4}, "kubernetes": {"access_mode": "ReadWriteMany"}})
    assert (s.monitoring.max_replicas, s.kubernetes.access_mode) == (4, "ReadWriteMany")


def test_list_and_mapping_settings_reach_params_as_json() -> None:
    """params.env / the Ansible env file carry lists and mappings as JSON, not Python reprs."""
    import json

    tol = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    params = flat_params(load_settings(overrides={"kubernetes": {"tolerations": [tol]}}))
    assert json.loads(params["KIT_KUBERNETES_TOLERATIONS"]) == [{**tol, "value": "", "tolerationSeconds": None}]
    assert json.loads(params["KIT_MONITORING_SERVICE_MONITOR_LABELS"]) == {"release": "kube-prometheus-stack"}


def test_deploy_refuses_autoscaling_on_a_single_node_store_before_touching_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kit.cluster deploy` validates the settings first: no kubectl is ever built for a refused store."""
    from kit import cluster

    raw = yaml.safe_load((REPO / "settings.yaml").read_text())
    raw["defaults"]["monitoring"]["max_replicas"] = 3
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(raw))
    touched: list[object] = []
    monkeypatch.setattr(cluster.cli, "Kubectl", lambda *a, **kw: touched.append((a, kw)))  # main builds it in kit.cluster.cli
    rc = cluster.main(["--settings", str(path), "--overlay", "monitoring", "deploy"])
    assert rc == exitcodes.USAGE and not touched
    assert "monitoring.max_replicas=3 needs kubernetes.access_mode=ReadWriteMany" in capsys.readouterr().err
