"""`python -m kit.cluster` / `make deploy` without a cluster: fast, one clear line, the right exit code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit import cluster, exitcodes
from tests.conftest import REPO

DEAD_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
  - name: dead
    cluster: {server: "https://127.0.0.1:9"}
contexts:
  - name: dead
    context: {cluster: dead, user: dead}
current-context: dead
users:
  - name: dead
    user: {token: not-a-token}
"""


def run_cli(args: list[str], kubeconfig: Path, *, make: bool = False) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")} | {
        "KUBECONFIG": str(kubeconfig),
        "HOME": str(kubeconfig.parent),
    }
    argv = ["make", "-s", "-o", ".venv/.kit-installed", *args] if make else [sys.executable, "-m", "kit.cluster", *args]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    return proc, time.monotonic() - start


@pytest.fixture
def empty_kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text("")
    return path


def test_deploy_without_a_context_fails_fast(empty_kubeconfig: Path) -> None:
    proc, took = run_cli(["deploy", "--skip-plan"], empty_kubeconfig)
    assert proc.returncode == exitcodes.FAILED
    assert took < 5, f"took {took:.1f} s"
    assert "no Kubernetes context" in proc.stderr and str(empty_kubeconfig) in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_make_deploy_without_a_cluster_fails_fast(empty_kubeconfig: Path) -> None:
    proc, took = run_cli(["deploy"], empty_kubeconfig, make=True)
    assert proc.returncode != 0
    assert took < 5, f"took {took:.1f} s"
    assert "no Kubernetes context" in proc.stderr


def test_unreachable_api_server_fails_fast(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(DEAD_KUBECONFIG)
    for command in (["deploy", "--skip-plan"], ["status"], ["gpu", "--json"], ["undeploy"]):
        proc, took = run_cli(command, kubeconfig)
        assert proc.returncode == exitcodes.FAILED, command
        assert took < 5, f"{command} took {took:.1f} s"
        assert "cannot reach the cluster of context 'dead'" in proc.stderr, proc.stderr


def test_unknown_profile_is_a_usage_error(empty_kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cluster.main(["--profile", "nope", "status"]) == exitcodes.USAGE
    assert "unknown profile 'nope'" in capsys.readouterr().err


def test_help_lists_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cluster.main(["--help"])
    out = capsys.readouterr().out
    for var in ("PROFILE", "KUBECONFIG", "KIT_KUBE_CONTEXT", "KIT_KUBE_NAMESPACE", "KIT_KUBECTL"):
        assert var in out


def test_missing_kubectl_is_named(empty_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KIT_KUBECTL", str(empty_kubeconfig.parent / "no-kubectl"))
    monkeypatch.setenv("KUBECONFIG", str(empty_kubeconfig))
    assert cluster.main(["status"]) == exitcodes.FAILED
    assert "kubectl not found" in capsys.readouterr().err


def test_gpu_capacity_reads_allocatable() -> None:
    nodes = {
        "items": [
            {"metadata": {"name": "cpu-node"}, "status": {"allocatable": {"cpu": "8", "memory": "32Gi"}}},
            {"metadata": {"name": "gpu-node"}, "status": {"allocatable": {"cpu": "32", "nvidia.com/gpu": "2"}}},
            {"metadata": {"name": "drained"}, "status": {"allocatable": {"nvidia.com/gpu": "0"}}},
        ]
    }
    assert cluster.gpu_capacity(nodes, "nvidia.com/gpu") == {"gpu-node": 2}
    assert cluster.gpu_capacity(nodes, "amd.com/gpu") == {}


def test_gpu_table_one_row_per_gpu() -> None:
    reports = {
        "lmdeploy-serve-a": {"gpus": [{"index": 0, "name": "H100", "memory_used_mib": 58000, "processes": []}]},
        "lmdeploy-serve-b": {"error": "No module named clients.gpu_report"},
    }
    lines = cluster.gpu_table(reports).splitlines()
    assert lines[0].split() == ["pod", "index", "name", "memory_used_mib", "error"]
    assert lines[1].split() == ["lmdeploy-serve-a", "0", "H100", "58000"]
    assert "No module named" in lines[2]
    assert cluster.gpu_table({}) == "no running serving pods"


def test_overlay_of_each_profile_exists() -> None:
    from kit.settings import load_settings

    for profile in ("default", "seed", "fc", "multi-gpu"):
        assert cluster.overlay_dir(load_settings(profile), None).name == profile
    assert cluster.overlay_dir(load_settings("default"), "monitoring").name == "monitoring"


def test_overlay_flag_after_the_subcommand() -> None:
    args = cluster.build_parser().parse_args(["deploy", "--overlay=monitoring"])
    assert args.overlay == "monitoring"
    assert cluster.build_parser().parse_args(["--overlay", "seed", "deploy"]).overlay == "seed"
    assert cluster.build_parser().parse_args(["deploy"]).overlay is None
