"""The playbook for real, into a throwaway Debian root filesystem over the chroot connection.

One pristine rootfs (debootstrap, cached under build/ per day outside CI) is copied per module;
the roles run into the copy twice (second run changed=0), then `--check` (changed=0), then the
environment's python imports torch and lmdeploy inside the target. Bad variables fail first,
before anything on the target changes. torch and the minimal lmdeploy set come from an offline
wheelhouse (build/ansible-wheelhouse-*, filled with `pip download` on this host): the same torch
build the kit's .venv was installed from (+cpu where PyTorch's CPU index or a local cache served
it, PyPI's CUDA build elsewhere; both import on a CPU).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kit.ansible_vars import API_KEY_PLACEHOLDER
from kit.render import serve_args
from kit.settings import load_settings
from tests.conftest import REPO, require_tool

pytestmark = pytest.mark.slow

SUITE = "bookworm"
MIRROR = os.environ.get("KIT_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BUILD = REPO / "build"
VENV_BIN = REPO / ".venv/bin"
PROFILE_VARS = REPO / "ansible/vars/profiles/default.yml"
TORCH_REQUIREMENTS = REPO / "requirements/torch-cpu.txt"


def _torch_pin() -> str:
    """The tests' torch pin, as .ci/setup-venv.sh installs it."""
    m = re.search(r"^torch==(\S+)", TORCH_REQUIREMENTS.read_text(), re.M)
    assert m, f"{TORCH_REQUIREMENTS} pins no torch"
    return m.group(1)


def _venv_torch() -> str:
    """The torch build in the kit's .venv, e.g. 2.13.0+cpu or 2.13.0 (PyPI's CUDA build)."""
    code = "import importlib.metadata as m; print(m.version('torch'))"
    r = subprocess.run([str(VENV_BIN / "python"), "-c", code], text=True, capture_output=True, check=True)
    return r.stdout.strip()


def _torch_cpu_index() -> str:
    """PyTorch's CPU index when it answers (same probe as .ci/setup-venv.sh), else ''."""
    r = subprocess.run(["bash", str(REPO / ".ci/torch-cpu-index.sh")], text=True, capture_output=True, check=True)
    return r.stdout.strip()


def _role_defaults(role: str) -> dict:
    return yaml.safe_load((REPO / f"ansible/roles/{role}/defaults/main.yml").read_text())


def _wheel_pins() -> list[str]:
    d = _role_defaults("python_env")
    v = load_settings("default").versions
    return [
        f"torch==={_venv_torch()}",  # === : exactly .venv's build, never a +cpu/+cuXXX sibling
        f"transformers=={v.transformers}",
        f"openai=={d['python_env_openai_version']}",
        *d["python_env_minimal_packages"],
    ]


def _nodeps_pins() -> list[str]:
    d = _role_defaults("python_env")
    return [f"lmdeploy=={load_settings('default').versions.lmdeploy}", f"timm=={d['python_env_timm_version']}"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """Wheels for the offline install, downloaded once per pin set (pip's cache makes reruns cheap).

    torch is pinned to the exact build in .venv, so pip's cache already holds it; a CUDA build
    brings its nvidia-* wheels along (torch's Linux dependencies), which the role installs offline.
    """
    pins = _wheel_pins() + _nodeps_pins()
    cpu_index = _torch_cpu_index()
    key = hashlib.sha256("\n".join([*pins, cpu_index]).encode()).hexdigest()[:12]
    path = BUILD / f"ansible-wheelhouse-{key}"
    if (path / ".complete").exists():
        return path
    tmp = path.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pip = [str(VENV_BIN / "python"), "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(tmp)]
    pip += ["--extra-index-url", cpu_index] if cpu_index else []
    for cmd in (pip + _wheel_pins(), pip + ["--no-deps"] + _nodeps_pins()):
        r = _run(cmd)
        assert r.returncode == 0, f"pip download failed: {r.stderr[-2000:]}"
    (tmp / ".complete").touch()
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def _debootstrap(dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [require_tool("debootstrap"), "--variant=minbase", "--include=python3,ca-certificates", SUITE, str(tmp), MIRROR]
    r = _run(cmd)
    assert r.returncode == 0, f"debootstrap failed: {r.stdout[-1500:]}{r.stderr[-1500:]}"
    # pip and apt inside the target trust what this machine trusts (a proxy CA, if any).
    host_cas = Path("/usr/local/share/ca-certificates")
    if host_cas.is_dir():
        shutil.copytree(host_cas, tmp / "usr/local/share/ca-certificates", dirs_exist_ok=True)
    r = _run(["chroot", str(tmp), "update-ca-certificates"])
    assert r.returncode == 0, r.stderr
    tmp.rename(dest)


@pytest.fixture(scope="module")
def pristine_rootfs() -> Path:
    """A minbase Debian with python3: cached per day outside CI, built fresh in CI."""
    if os.geteuid() != 0:
        pytest.fail("the Ansible chroot test needs root (debootstrap, chroot)")
    if os.environ.get("CI"):
        dest = BUILD / f"ansible-rootfs-ci-{os.getpid()}"
        shutil.rmtree(dest, ignore_errors=True)
    else:
        dest = BUILD / f"ansible-rootfs-{SUITE}-{datetime.date.today():%Y%m%d}"
    if not dest.exists():
        BUILD.mkdir(exist_ok=True)
        _debootstrap(dest)
    return dest


def _fresh_copy(src: Path, dest: Path, wheelhouse: Path) -> Path:
    r = _run(["cp", "-a", str(src), str(dest)])
    assert r.returncode == 0, r.stderr
    shutil.copy2("/etc/resolv.conf", dest / "etc/resolv.conf")
    # Hard links when build/ and the temp dir share a filesystem; a copy otherwise.
    if _run(["cp", "-al", str(wheelhouse), str(dest / "srv/wheelhouse")]).returncode != 0:
        shutil.copytree(wheelhouse, dest / "srv/wheelhouse", dirs_exist_ok=True)
    return dest


@pytest.fixture(scope="module")
def target(pristine_rootfs: Path, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fresh_copy(pristine_rootfs, tmp_path_factory.mktemp("target") / "rootfs", wheelhouse)


# The test's own settings on top of the generated profile vars: offline wheelhouse with the CPU torch
# build, the minimal lmdeploy install, unit files without starting systemd, a small free-space floor.
TEST_VARS = {
    "python_env_wheelhouse": "/srv/wheelhouse",
    "python_env_minimal": True,
    "python_env_torch_version": _torch_pin(),
    "model_store_min_free_gb": 1,
    "lmdeploy_service_enabled": True,
    "lmdeploy_service_start": False,
}


def playbook(
    rootfs: Path, tmp: Path, *args: str, extra: dict | None = None, check: bool = False
) -> tuple[subprocess.CompletedProcess[str], dict[str, int]]:
    inventory = tmp / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "all": {
                    "hosts": {
                        "target": {
                            "ansible_connection": "community.general.chroot",
                            "ansible_host": str(rootfs),
                            "ansible_python_interpreter": "/usr/bin/python3",
                        }
                    }
                }
            }
        )
    )
    vars_file = tmp / "test-vars.yml"
    vars_file.write_text(yaml.safe_dump({**TEST_VARS, **(extra or {})}))
    cmd = [
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "ansible/site.yml"),
        "-e",
        f"@{PROFILE_VARS}",
        "-e",
        f"@{vars_file}",
        *(["--check", "--diff"] if check else []),
        *args,
    ]
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible/ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '')}"
    r = _run(cmd, env=env, cwd=REPO, timeout=900)
    m = re.search(r"^target\s*:\s*(.*)$", r.stdout, re.M)
    recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))} if m else {}
    return r, recap


def _tail(r: subprocess.CompletedProcess[str]) -> str:
    return (r.stdout[-6000:] + "\n" + r.stderr[-2000:]).strip()


def _snapshot(rootfs: Path) -> dict[str, object]:
    """What a run that fails up front must not touch: packages, /opt, /models, /etc/systemd units."""
    status = (rootfs / "var/lib/dpkg/status").read_bytes()
    return {
        "dpkg": hashlib.sha256(status).hexdigest(),
        "opt": sorted(p.name for p in (rootfs / "opt").iterdir()),
        "models": (rootfs / "models").exists(),
        "units": sorted(p.name for p in (rootfs / "etc/systemd/system").glob("lmdeploy*")),
        "report": (rootfs / "var/lib/lmdeploy-kit").exists(),
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"python_env_type": "pip"}, "python_env_type"),
        ({"python_env_torch_version": "2.x"}, "python_env_torch_version=2.x: malformed version"),
        ({"python_env_minimal_packages": ["numpy>=2"]}, "numpy>=2: not an exact pin"),
        ({"python_env_wheelhouse": "/srv/no-such-wheelhouse"}, "python_env_wheelhouse=/srv/no-such-wheelhouse: no such directory"),
    ],
    ids=["unknown-env-type", "malformed-version", "unpinned-package", "missing-wheelhouse"],
)
def test_bad_variables_fail_before_anything_changes(target: Path, tmp_path: Path, extra: dict, message: str) -> None:
    before = _snapshot(target)
    r, recap = playbook(target, tmp_path, extra=extra)
    assert r.returncode != 0, _tail(r)
    assert message in r.stdout, _tail(r)
    assert recap.get("changed") == 0, _tail(r)
    assert _snapshot(target) == before


def test_converge(target: Path, tmp_path: Path) -> None:
    r, recap = playbook(target, tmp_path)
    assert r.returncode == 0, _tail(r)
    assert recap["failed"] == 0 and recap["changed"] > 0, recap
    assert "NO GPU on this host" in r.stdout
    assert "`lmdeploy --help` runs" in r.stdout


def test_second_run_changes_nothing(target: Path, tmp_path: Path) -> None:
    r, recap = playbook(target, tmp_path)
    assert r.returncode == 0, _tail(r)
    assert recap["changed"] == 0, _tail(r)


def test_check_mode_changes_nothing(target: Path, tmp_path: Path) -> None:
    r, recap = playbook(target, tmp_path, check=True)
    assert r.returncode == 0, _tail(r)
    assert recap["changed"] == 0, _tail(r)


def test_environment_imports_torch_and_lmdeploy_inside_the_target(target: Path) -> None:
    code = (
        "import importlib.metadata as m, json, torch, lmdeploy;"
        "print(json.dumps([torch.__version__, m.version('torch'), lmdeploy.__version__]))"
    )
    r = _run(["chroot", str(target), "/opt/lmdeploy/env/bin/python", "-c", code])
    assert r.returncode == 0, r.stderr[-2000:]
    torch_v, torch_dist, lmdeploy_v = json.loads(r.stdout.strip().splitlines()[-1])
    # torch imports at the pin the role was given (2.13.0+cpu, or 2.13.0+cu130 for PyPI's build) ...
    assert torch_v.split("+")[0] == _torch_pin(), torch_v
    # ... and is the build .venv holds, handed over through the offline wheelhouse.
    assert torch_dist == _venv_torch()
    assert lmdeploy_v == load_settings("default").versions.lmdeploy
    r = _run(["chroot", str(target), "/opt/lmdeploy/env/bin/lmdeploy", "--help"])
    assert r.returncode == 0 and "serve" in r.stdout, r.stderr[-2000:]


def test_preflight_report_says_no_gpu(target: Path) -> None:
    report = json.loads((target / "var/lib/lmdeploy-kit/gpu-preflight.json").read_text())
    assert report["has_gpu"] is False
    assert report["gpus"] == []
    assert report["torch"]["cuda_available"] is False
    assert report["nvidia_smi_error"]


def test_model_store_belongs_to_the_service_user(target: Path) -> None:
    s = load_settings("default")
    passwd = (target / "etc/passwd").read_text()
    uid = int(next(line for line in passwd.splitlines() if line.startswith(s.provision.service_user + ":")).split(":")[2])
    for path in (s.storage.models_root, str(Path(s.calibration_path).parent)):
        st = (target / path.lstrip("/")).stat()
        assert st.st_uid == uid, path


def test_api_server_unit_runs_the_rendered_argv_with_a_root_only_key(target: Path) -> None:
    s = load_settings("default")
    unit = (target / "etc/systemd/system/lmdeploy-api.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    expected = ["/opt/lmdeploy/env/bin/python", "-m", "kit.serve", "--", *serve_args(s)]
    assert exec_start.removeprefix("ExecStart=").split() == expected
    assert "--api-keys" not in exec_start and API_KEY_PLACEHOLDER not in exec_start
    assert "WorkingDirectory=/opt/lmdeploy/kit" in unit and (target / "opt/lmdeploy/kit/kit/serve.py").exists()
    assert f"User={s.provision.service_user}" in unit and "Restart=on-failure" in unit
    secrets = target / "etc/lmdeploy/api-key.env"
    st = secrets.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, 0)
    key = secrets.read_text().strip().removeprefix("LMDEPLOY_API_KEY=")
    assert len(key) == 40 and key.isalnum()
    assert key not in (target / "etc/lmdeploy-kit.env").read_text()
    gradio = (target / "etc/systemd/system/lmdeploy-gradio.service").read_text()
    assert "ExecStart=/opt/lmdeploy/env/bin/python -m clients.webui" in gradio
    assert (target / "opt/lmdeploy/kit/clients/__init__.py").exists()


def test_require_gpu_fails_with_a_clear_message(target: Path, tmp_path: Path) -> None:
    r, _ = playbook(target, tmp_path, "--tags", "gpu_preflight", extra={"gpu_preflight_require_gpu": True})
    assert r.returncode != 0
    assert "no NVIDIA GPU on target" in r.stdout and "provision.require_gpu is true" in r.stdout, _tail(r)


def test_conda_installer_with_a_wrong_checksum_fails_clearly(target: Path, tmp_path: Path) -> None:
    installer = target / "tmp/miniforge.sh"
    installer.write_text("#!/bin/sh\nexit 1\n")
    r, _ = playbook(
        target,
        tmp_path,
        "--tags",
        "python_env",
        extra={
            "python_env_type": "conda",
            "python_env_conda_installer_url": "file:///tmp/miniforge.sh",
            "python_env_conda_installer_sha256": "0" * 64,
        },
    )
    assert r.returncode != 0
    assert "could not install Miniforge from file:///tmp/miniforge.sh" in r.stdout, _tail(r)
    assert not (target / "opt/miniforge3").exists()
    assert not (target / "var/tmp/miniforge-installer.sh").exists()


def test_conda_check_mode_renders_the_channel_config(target: Path, tmp_path: Path) -> None:
    installer = target / "tmp/miniforge.sh"
    installer.write_text("#!/bin/sh\nexit 1\n")
    sha = hashlib.sha256(installer.read_bytes()).hexdigest()
    r, recap = playbook(
        target,
        tmp_path,
        "--tags",
        "python_env",
        check=True,
        extra={
            "python_env_type": "conda",
            "python_env_prefix": "/opt/lmdeploy/conda-env",
            "python_env_conda_installer_url": "file:///tmp/miniforge.sh",
            "python_env_conda_installer_sha256": sha,
            "python_env_conda_channel": "https://conda.mirror.example/conda-forge",
        },
    )
    assert r.returncode == 0, _tail(r)
    assert "+  - https://conda.mirror.example/conda-forge" in r.stdout, _tail(r)
    assert recap["changed"] > 0
    assert not (target / "etc/conda").exists() and not (target / "opt/miniforge3").exists()


def test_k8s_gpu_node_check_mode_writes_the_containerd_runtime(target: Path, tmp_path: Path) -> None:
    r, recap = playbook(
        target,
        tmp_path,
        "--tags",
        "k8s_gpu_node",
        check=True,
        extra={
            "k8s_gpu_node_enabled": True,
            "k8s_gpu_node_restart_containerd": False,
            "k8s_gpu_node_repo_key_url": "file:///usr/share/keyrings/debian-archive-keyring.gpg",
        },
    )
    assert r.returncode == 0, _tail(r)
    assert 'default_runtime_name = "nvidia"' in r.stdout and 'BinaryName = "/usr/bin/nvidia-container-runtime"' in r.stdout, _tail(r)
    assert "URIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64" in r.stdout, _tail(r)
    assert recap["changed"] > 0
    assert not (target / "etc/containerd").exists()
    assert not (target / "etc/apt/sources.list.d/nvidia-container-toolkit.sources").exists()
