"""The pod rehearsal's parts without a pod: Kubernetes' `$(VAR)` expansion, env order, the image's
ENTRYPOINT/CMD rules, the deploy order, the cmdline watch, the sandbox (root only), the CLI's usage
errors and the names the split kept importable. The pods themselves: tests/k8s/test_rehearse.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kit.rehearse.__main__ import CmdlineWatch, deploy_order, needs_gpu
from kit.rehearse.expand import EnvError, container_env, expand
from kit.rehearse.image import container_argv, image_name, read_image
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import build, needs_root

# ---------------------------------------------------------------------------------------------- $(VAR)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)", "a"),
        ("x$(A)y$(B)z", "xaybz"),
        ("$(MISSING)", "$(MISSING)"),  # unknown: stays literal
        ("$$(A)", "$(A)"),  # escaped
        ("$$$(A)", "$a"),
        ("$$", "$"),
        ("$", "$"),  # trailing operator
        ("a$b", "a$b"),  # not an expression
        ("$(A", "$(A"),  # unclosed
        ("$()", "$()"),  # empty name: undefined
        ("$(EMPTY)", ""),
        ("--api-keys $(A) $(A)", "--api-keys a a"),
        ("$(NESTED)", "$(A)"),  # values are not expanded again
    ],
)
def test_expand_follows_kubernetes(text: str, want: str) -> None:
    assert expand(text, {"A": "a", "B": "b", "EMPTY": "", "NESTED": "$(A)"}) == want


def test_env_order_envfrom_then_env_each_expanded_against_earlier() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "params"}}],
        "env": [
            {"name": "FIRST", "value": "$(KIT_X)-$(LATER)"},
            {"name": "LATER", "value": "l"},
            {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "none", "key": "k", "optional": True}}},
            {"name": "KIT_X", "value": "override"},
        ],
    }

    def secret(name: str, key: str, optional: bool) -> str | None:
        if name == "s":
            return "v"
        if optional:
            return None
        raise EnvError("missing")

    env = container_env(container, {"params": {"KIT_X": "x"}}, secret)
    assert env == {"KIT_X": "override", "FIRST": "x-$(LATER)", "LATER": "l", "KEY": "v"}
    with pytest.raises(EnvError):
        container_env({"envFrom": [{"configMapRef": {"name": "absent"}}]}, {}, secret)


# ---------------------------------------------------------------------------------------------- images


def test_runtime_image_entrypoint_env_and_k8s_argv_rules() -> None:
    image = read_image(REPO / "images", "ghcr.io/example/lmdeploy-kit/runtime:0.1.0-lmdeploy0.18.0")
    assert (image.entrypoint, image.cmd, image.workdir, image.user) == (["lmdeploy"], ["--help"], "/app", "10001")
    assert image.env["PATH"].startswith("/opt/venv/bin:") and image.env["PYTHONPATH"] == "/app"
    assert image.env["PYTHONUNBUFFERED"] == "1"  # inherited through `FROM base`
    assert container_argv(image, {}) == ["lmdeploy", "--help"]
    assert container_argv(image, {"args": ["serve"]}) == ["lmdeploy", "serve"]
    assert container_argv(image, {"command": ["python"]}) == ["python"]
    assert container_argv(image, {"command": ["python"], "args": ["-V"]}) == ["python", "-V"]
    client = read_image(REPO / "images", "lmdeploy-kit/client@sha256:" + "0" * 64)
    assert client.entrypoint == ["/opt/venv/bin/python", "-m"] and image_name("a/b/client:1") == "client"


def test_deploy_order_jobs_then_serving() -> None:
    order, secrets, skipped = deploy_order(build(REPO / "k8s/overlays/default"), load_settings("default"))
    assert secrets == ["lmdeploy-api-key"]
    assert [f"{d['kind']}/{d['metadata']['name']}" for d in order] == [
        "Job/lmdeploy-fetch",
        "Job/lmdeploy-quantize",
        "Deployment/lmdeploy-serve",
    ]
    assert any("lmdeploy-gradio" in s for s in skipped)
    fc, _, _ = deploy_order(build(REPO / "k8s/overlays/fc"), load_settings("fc"))
    assert [d["metadata"]["name"] for d in fc if d["kind"] == "Job"] == ["lmdeploy-fetch"]


def test_cmdline_watch_sees_a_secret_in_argv() -> None:
    value = "s3cr3t-" + os.urandom(8).hex()
    code = "import time; print('started', flush=True); time.sleep(30)"
    proc = subprocess.Popen([sys.executable, "-c", code, value], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"  # exec'd: its own argv is in /proc
        watch = CmdlineWatch({"api/key": value}, lambda t: t.replace(value, "<secret>"))
        watch.scan()
    finally:
        proc.kill()
        proc.wait()
    assert watch.findings["api/key"]["pid"] == proc.pid
    assert value not in json.dumps(watch.findings)


# ---------------------------------------------------------------------------------------------- sandbox


@needs_root
def test_sandbox_user_readonly_mounts_and_root(tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    (tmp_path / "scratch").mkdir()
    script = "id -u; id -G; touch /data/x 2>&1; touch /new-file 2>&1; ls /data; id -un"
    spec = {
        "argv": ["sh", "-c", script],
        "env": {"PATH": "/usr/bin:/bin"},
        "cwd": "/data",
        "uid": 10001,
        "gid": 10001,
        "groups": [10001, 20002],
        "readonly_root": True,
        "scratch": str(tmp_path / "scratch"),
        "mounts": [{"target": "/data", "source": str(vol), "readonly": True}],
        "passwd": ["lmdeploy:x:10001:0::/home/lmdeploy:/usr/sbin/nologin"],  # the image's useradd
    }
    (vol / "seen").write_text("")
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "w") as f:
        json.dump(spec, f)
    proc = subprocess.run(
        [sys.executable, "-m", "kit.rehearse.sandbox", str(read_fd)],
        pass_fds=(read_fd,),
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        check=False,
    )
    os.close(read_fd)
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stderr
    assert lines[0] == "10001" and lines[1].split() == ["10001", "20002"]
    assert "Read-only file system" in lines[2] and "Read-only file system" in lines[3]
    assert lines[4] == "seen" and not Path("/data").exists() and not Path("/new-file").exists()
    assert lines[5] == "lmdeploy" and ":10001:" not in Path("/etc/passwd").read_text()  # only the overlay's copy


# ---------------------------------------------------------------------------------------------- rehearsals


def test_cli_usage_errors(tmp_path: Path) -> None:
    workdir = tmp_path / "wd"
    for argv in (["--profile", "nope"], ["--model-source", str(tmp_path)], ["--set", "serving.nope=1", "--workdir", str(workdir)]):
        proc = subprocess.run([sys.executable, "-m", "kit.rehearse", *argv], capture_output=True, text=True, cwd=REPO, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    assert "serving.nope" in proc.stderr and not workdir.exists()  # a bad --set stops before anything starts
    assert needs_gpu(["x", "AssertionError: Torch not compiled with CUDA enabled"]) == "Torch not compiled with CUDA enabled"
    assert shutil.which("sh")


def test_names_stay_importable_where_they_were_defined() -> None:
    """Issue 17 split __main__ and kubelet into modules; code outside may still import from the old places."""
    import kit.rehearse.__main__ as cli
    import kit.rehearse.kubelet as kubelet

    for name in ("Rehearsal", "UsageError", "build_parser", "choose_isolation", "load_secrets", "main", "render", "rendered_settings"):
        assert callable(getattr(cli, name)), name
    for name in ("ContainerRun", "Host", "PodFailed", "PodRun", "Runtime", "new_pod", "pod_volumes", "settings_override", "wait_probe"):
        assert callable(getattr(kubelet, name)), name
