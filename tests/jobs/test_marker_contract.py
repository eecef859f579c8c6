"""The completion-marker contract, producer against consumer: the REAL jobs write the store, the REAL
rendered initContainer commands (taken from `kubectl kustomize k8s/overlays/<profile>`) wait on it.

For each profile overlay:
1. render it; take the resolved settings the pods mount (ConfigMap lmdeploy-settings) and point
   them at a temp store, a local tiny model and CPU AWQ (the only edits);
2. the quantize Job's wait-for-fetch initContainer, run with its rendered command and env against the
   empty store, must still be waiting after a few seconds (it can fail);
3. run each rendered Job's container command (`python -m jobs.fetch`, then `jobs.quantize` when the
   overlay has that Job) as a process with the container's env;
4. every initContainer of the quantize Job and the serving Deployment must then exit 0 within 30 s.

The PVC is the temp store: a path in a container is mapped by replacing the model volume's mountPath
with the store directory (what the volume mount does in the pod); a MARKER outside that mountPath is
a failure, since the pod could never see the file. The fc profile also checks the chat template of
the directory the rendered api_server command serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit import chat_template, markers
from tests.jobs._helpers import CALIB, REPO
from tests.k8s.conftest import PROFILE_OVERLAYS, build

INIT_TIMEOUT_S = 30


def _pod_spec(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    obj = next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)
    return obj["spec"]["template"]["spec"] if obj else None


def _model_mount(spec: dict[str, Any], container: dict[str, Any]) -> str:
    """mountPath of the PVC-backed volume in this container."""
    pvc_volumes = {v["name"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
    mounts = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in pvc_volumes]
    assert len(mounts) == 1, f"{container['name']} mounts the model PVC {len(mounts)} times"
    return mounts[0]


def _to_store(path: str, mount: str, store: Path) -> str:
    assert path == mount or path.startswith(mount.rstrip("/") + "/"), f"{path} is not under the model volume's mountPath {mount}"
    return str(store / path[len(mount) :].lstrip("/"))


def _env(docs: list[dict[str, Any]], container: dict[str, Any], settings_file: Path, home: Path) -> dict[str, str]:
    """The container's environment as the kubelet builds it (configMap envFrom + literal env; optional secrets absent)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIT_", "LMDEPLOY_")) and k != "PROFILE"}
    for src in container.get("envFrom", []):
        name = src["configMapRef"]["name"]
        cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
        env.update(cm["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
    env["KIT_SETTINGS"] = str(settings_file)  # the settings ConfigMap mount
    env["HOME"] = str(home)
    env["HF_HOME"] = str(home / "hf")
    return env


def _store_settings(docs: list[dict[str, Any]], store: Path, source: Path, out: Path) -> Path:
    """The ConfigMap's settings.yaml, pointed at the temp store, the local model and CPU AWQ."""
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("lmdeploy-settings"))
    data = yaml.safe_load(cm["data"]["settings.yaml"])
    d = data["defaults"]
    d["storage"]["models_root"] = str(store)
    d["model"]["source"] = str(source)
    for item in CALIB:
        key, value = item.split("=", 1)
        section, field = key.split(".")
        d[section][field] = int(value) if value.isdigit() else value
    out.write_text(yaml.safe_dump(data))
    return out


def _run_init(spec: dict[str, Any], docs: list[dict[str, Any]], store: Path, settings_file: Path, home: Path, timeout: float) -> None:
    """Run every initContainer's rendered command in order; TimeoutExpired when one keeps waiting."""
    for init in spec.get("initContainers", []):
        mount = _model_mount(spec, init)
        env = _env(docs, init, settings_file, home)
        env["MARKER"] = _to_store(env["MARKER"], mount, store)
        proc = subprocess.run(init["command"] + init.get("args", []), env=env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{init['name']}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"


def _run_job(spec: dict[str, Any], docs: list[dict[str, Any]], settings_file: Path, home: Path) -> None:
    (container,) = spec["containers"]
    argv = container["command"] + container.get("args", [])
    assert argv[:2] == ["python", "-m"], argv
    env = _env(docs, container, settings_file, home)
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{container['name']}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILE_OVERLAYS)
def test_rendered_init_containers_pass_on_the_store_the_real_jobs_wrote(profile: str, tiny_llama: Path, tmp_path: Path) -> None:
    docs = build(REPO / "k8s/overlays" / profile)
    store, home = tmp_path / "store", tmp_path / "home"
    store.mkdir()
    home.mkdir()
    settings_file = _store_settings(docs, store, tiny_llama, tmp_path / "settings.yaml")
    fetch = _pod_spec(docs, "Job", "lmdeploy-fetch")
    quantize = _pod_spec(docs, "Job", "lmdeploy-quantize")
    serve = _pod_spec(docs, "Deployment", "lmdeploy-serve")
    assert fetch and serve

    # Before the Jobs ran, the waits wait (so the checks below can fail).
    with pytest.raises(subprocess.TimeoutExpired):
        _run_init(quantize or serve, docs, store, settings_file, home, timeout=3)

    _run_job(fetch, docs, settings_file, home)
    if quantize:
        _run_init(quantize, docs, store, settings_file, home, timeout=INIT_TIMEOUT_S)
        _run_job(quantize, docs, settings_file, home)
    _run_init(serve, docs, store, settings_file, home, timeout=INIT_TIMEOUT_S)

    # The served directory (the rendered api_server argv's model path) holds a valid marker of the right stage.
    api = next(c for c in serve["containers"] if c["name"] == "api-server")
    argv = api["command"] + api.get("args", [])
    served = Path(_to_store(argv[argv.index("api_server") + 1], _model_mount(serve, api), store))
    marker = markers.read(served, markers.QUANTIZE if quantize else markers.FETCH)
    assert marker is not None and marker["sizes"]["total_bytes"] > 0
    # The tools-aware template is in what the server reads: the AWQ output, or (fc) the fetched fp16 model.
    assert chat_template.installed(served), f"{served}/tokenizer_config.json lacks the tools-aware chat template"
    if quantize is None:
        from transformers import AutoTokenizer

        tools = [{"type": "function", "function": {"name": "add", "description": "a+b", "parameters": {"type": "object"}}}]
        text = AutoTokenizer.from_pretrained(str(served)).apply_chat_template(
            [{"role": "user", "content": "1+2?"}], tools=tools, tokenize=False, add_generation_prompt=True
        )
        assert '<|im_start|>system name=<|plugin|>\n[{"name": "add"' in text, text


def test_marker_paths_are_under_the_pvc_mount_of_every_overlay() -> None:
    """Cheap, no jobs: each rendered MARKER lies under the mountPath of the model PVC in its own container."""
    for profile in PROFILE_OVERLAYS:
        docs = build(REPO / "k8s/overlays" / profile)
        for obj in docs:
            if obj["kind"] not in ("Job", "Deployment"):
                continue
            spec = obj["spec"]["template"]["spec"]
            for init in spec.get("initContainers", []):
                marker_env = {e["name"]: e.get("value") for e in init.get("env", [])}.get("MARKER")
                assert marker_env and marker_env.endswith("/" + markers.FILE_NAME), (profile, init["name"])
                _to_store(marker_env, _model_mount(spec, init), Path("/store"))


def test_marker_writer_is_atomic_and_validated(tmp_path: Path) -> None:
    good = markers.build(markers.FETCH, fingerprint="a" * 64, request_fp="b" * 64, sizes={"total_bytes": 1}, versions={})
    path = markers.write(tmp_path, good)
    assert path.name == markers.FILE_NAME and not list(tmp_path.glob("*.tmp-*"))
    assert markers.read(tmp_path, markers.FETCH) == json.loads(path.read_text())
    with pytest.raises(markers.MarkerError, match="a fetch marker where a quantize marker belongs"):
        markers.read(tmp_path, markers.QUANTIZE)
    path.write_text('{"schema": 1, "stage": "fetch"}')
    with pytest.raises(markers.MarkerError, match="missing 'fingerprint'"):
        markers.read(tmp_path)
    assert markers.read_or_none(tmp_path) is None
    with pytest.raises(markers.MarkerError, match="input_fingerprint"):
        markers.build(markers.QUANTIZE, fingerprint="a" * 64, request_fp="b" * 64, sizes={"total_bytes": 1}, versions={})


@pytest.mark.slow
def test_fetch_rerun_is_a_no_op_and_a_changed_source_fetches_again(
    tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from jobs import fetch
    from tests.jobs._helpers import settings_args

    src = tmp_path / "src"
    shutil.copytree(tiny_llama, src)
    root = tmp_path / "store"
    args = settings_args(root, extra=[f"model.source={src}"])
    assert fetch.main(args) == 0
    first = markers.read(root / "tiny", markers.FETCH)
    weights = root / "tiny" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    capsys.readouterr()
    assert fetch.main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert markers.read(root / "tiny", markers.FETCH) == first and weights.stat().st_mtime_ns == mtime
    # the source changed: fetched again, new content fingerprint
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "kit_test_note": "changed"}))
    assert fetch.main(args) == 0
    again = markers.read(root / "tiny", markers.FETCH)
    assert again is not None and again["fingerprint"] != first["fingerprint"]
    assert again["request_fingerprint"] == first["request_fingerprint"]


@pytest.mark.slow
def test_quantize_refreshes_a_stale_request_without_quantizing(store: Path) -> None:
    from jobs import quantize
    from tests.jobs._helpers import settings_args

    assert quantize.main(settings_args(store)) == 0
    out = store / "tiny-w4a16-4bit"
    first = markers.read(out, markers.QUANTIZE)
    weights_mtime = (out / "model.safetensors").stat().st_mtime_ns
    # Only the settings' lmdeploy label differs (the installed lmdeploy, and so the output, is the same).
    assert quantize.main(settings_args(store, extra=["versions.lmdeploy=0.18.1"])) == 0
    second = markers.read(out, markers.QUANTIZE)
    assert second is not None and first is not None
    assert second["fingerprint"] == first["fingerprint"] and second["request_fingerprint"] != first["request_fingerprint"]
    assert (out / "model.safetensors").stat().st_mtime_ns == weights_mtime
