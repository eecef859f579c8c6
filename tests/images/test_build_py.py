"""images/build.py (`make images`): commands from settings, digests only when set, engine errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from kit.render import image_ref
from kit.settings import load_settings
from tests.conftest import REPO

_spec = importlib.util.spec_from_file_location("images_build", REPO / "images" / "build.py")
build = importlib.util.module_from_spec(_spec)
sys.modules["images_build"] = build
_spec.loader.exec_module(build)

DIGEST = "sha256:" + "ab" * 32


def _dry(capsys, *argv: str) -> dict:
    assert build.main(["--dry-run", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def _args(cmd: list[str]) -> dict[str, str]:
    return dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--build-arg")


@pytest.fixture
def settings_with(tmp_path, monkeypatch):
    def _write(**images: str) -> Path:
        data = yaml.safe_load((REPO / "settings.yaml").read_text())
        data["defaults"]["images"].update(images)
        path = tmp_path / "settings.yaml"
        path.write_text(yaml.safe_dump(data))
        monkeypatch.setenv("KIT_SETTINGS", str(path))
        return path

    return _write


def test_tags_and_build_args_come_from_the_settings(capsys):
    s = load_settings("default")
    out = _dry(capsys, "--engine", "podman")
    runtime, client = out["commands"]
    assert runtime[:2] == ["podman", "build"] and runtime[-1] == "."
    assert runtime[runtime.index("-t") + 1] == image_ref(s, "runtime")
    assert client[client.index("-t") + 1] == image_ref(s, "client")
    assert image_ref(s, "runtime").endswith(f":{s.images.kit_version}-lmdeploy{s.versions.lmdeploy}")
    assert _args(runtime) == {
        "CUDA_BASE": s.images.cuda_base,
        "PYTHON_VERSION": s.versions.python,
        "LMDEPLOY_VERSION": s.versions.lmdeploy,
        "TORCH_VERSION": s.versions.torch,
        "TRANSFORMERS_VERSION": s.versions.transformers,
        "TORCH_INDEX_URL": s.provision.torch_index_url,
        "VARIANT": "cuda",
        "KIT_VERSION": s.images.kit_version,
    }
    assert _args(client)["PYTHON_BASE"] == s.images.python_base
    assert "--from" not in runtime + client


def test_base_digests_are_applied_only_when_set(capsys, settings_with):
    settings_with(cuda_base_digest=DIGEST, runtime_digest=DIGEST)
    runtime, client = _dry(capsys)["commands"]
    assert _args(runtime)["CUDA_BASE"].endswith(f"@{DIGEST}")
    assert "@" not in _args(client)["PYTHON_BASE"]
    # A pushed image's digest pins the manifests, never the tag being built.
    assert "@" not in runtime[runtime.index("-t") + 1]


def test_push_goes_to_the_settings_registry(capsys, settings_with):
    settings_with(registry="registry.example.com/team/kit")
    cmds = _dry(capsys, "--push", "--only", "client", "--engine", "docker")["commands"]
    assert [c[:2] for c in cmds] == [["docker", "build"], ["docker", "push"]]
    assert cmds[1][2] == "registry.example.com/team/kit/client:0.1.0-lmdeploy0.18.0"


def test_from_base_uses_podman_from_or_the_docker_build_arg(capsys):
    podman = _dry(capsys, "--engine", "podman", "--only", "runtime", "--from-base", "localhost/base:1")["commands"][0]
    assert podman[podman.index("--from") + 1] == "localhost/base:1"
    docker = _dry(capsys, "--engine", "docker", "--only", "runtime", "--from-base", "localhost/base:1")["commands"][0]
    assert "--from" not in docker and _args(docker)["CUDA_BASE"] == "localhost/base:1"


def test_cpu_variant_is_tagged_apart(capsys):
    cmd = _dry(capsys, "--only", "runtime", "--variant", "cpu", "--build-arg", "TORCH_VERSION=2.13.0")["commands"][0]
    assert cmd[cmd.index("-t") + 1].endswith("-cpu")
    assert _args(cmd)["VARIANT"] == "cpu" and _args(cmd)["TORCH_VERSION"] == "2.13.0"


def test_plain_dry_run_prints_shell_lines(capsys):
    assert build.main(["--dry-run", "--engine", "podman"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("podman build -f images/") for line in lines)


def test_unknown_build_arg_is_a_usage_error(capsys):
    assert build.main(["--dry-run", "--only", "client", "--build-arg", "TORCH_VERSION=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TORCH_VERSION" in err and "allowed:" in err


def test_bad_settings_are_a_usage_error(capsys, settings_with):
    settings_with(cuda_base="nvidia/cuda:latest")
    assert build.main(["--dry-run"]) == 2
    assert "images.cuda_base" in capsys.readouterr().err


def test_no_engine_is_one_clear_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither docker nor podman
    assert build.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "docker not found" in err and "podman not found" in err and "install podman or docker" in err


def test_docker_without_daemon_is_reported(capsys, monkeypatch, tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI on this machine")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    assert build.main(["--engine", "docker"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "daemon does not answer" in err
