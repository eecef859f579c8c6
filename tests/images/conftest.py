"""Offline podman builds of the kit's images on a CPU box without registry access.

Stand-ins for the registry bases, made here (cached under build/images/ and in podman's store):
  bookworm-minbase  `debootstrap --variant=minbase` | `podman import` (no Python: like the CUDA base)
  wheelbase         + a wheelhouse of every pinned requirement, PIP_FIND_LINKS/PIP_NO_INDEX set, so
                    the Dockerfiles' own `pip install` lines run unchanged and offline
  python-base       + Debian's python3.11 (the role of python:3.11-slim)
podman runs with runc, cgroupfs and ulimits this sandbox allows (build/images/containers.conf).
Images are tagged under localhost/kit-test (a settings copy with that registry), never the real names.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, require_tool

WORK = REPO / "build" / "images"
TEST_REGISTRY = "localhost/kit-test"
MINBASE = f"{TEST_REGISTRY}/bookworm-minbase:test"
WHEELBASE = f"{TEST_REGISTRY}/wheelbase:test"
PYBASE = f"{TEST_REGISTRY}/python-base:test"
MIRROR = os.environ.get("KIT_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The CPU build that lies in this machine's pip find-links (FIELD-NOTES); the CUDA torch pin
# (versions.torch) is for the GPU image.
CPU_TORCH = "2.13.0"

CONTAINERS_CONF = """\
# Written by tests/images/conftest.py: podman on a sandboxed CPU box.
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
"""


@dataclass
class Podman:
    env: dict[str, str]
    settings: Path

    def run(self, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            pytest.fail(f"podman {' '.join(args[:3])} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
        return res

    def exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, check=False).returncode == 0

    def build_py(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`make images` as the user runs it, with the test settings and podman."""
        env = dict(self.env, KIT_SETTINGS=str(self.settings))
        res = subprocess.run(
            [sys.executable, str(REPO / "images" / "build.py"), "--engine", "podman", "-v", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if res.returncode != 0:
            pytest.fail(f"images/build.py {' '.join(args)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}")
        return res


def _sh(cmd: list[str], **kw) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        pytest.fail(f"{cmd[0]} failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


# What runc says when the kernel or the sandbox around this machine refuses it a container.
# "mount /, flags" / pivot_root / propagation: runc in a plain chroot, whose / is no mount point.
_NOT_A_MOUNT = r"pivot_root|propagation|mount /, flags"
_FORBIDDEN = re.compile(rf"operation not permitted|permission denied|{_NOT_A_MOUNT}|namespace|newuidmap|cannot clone", re.I)


def _refusal(detail: str) -> str:
    """The skip reason, naming the cause: / not a mount point (a plain chroot) or the kernel's refusal."""
    if re.search(_NOT_A_MOUNT, detail):
        return f"containers cannot start here: / is not a mount point (a chroot? bind-mount the root onto itself): {detail}"
    return f"nested containers are forbidden here: the kernel refuses new namespaces: {detail}"


def _skip_if_nested_containers_are_forbidden() -> None:
    """Skip where the namespaces a container needs cannot be made (before any download or build)."""
    cmd = ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "--net"]
    cmd += [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    res = subprocess.run([*cmd, "true"], capture_output=True, text=True)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
        pytest.skip(_refusal(f"{' '.join(cmd)}: {why}"))


def _skip_if_podman_cannot_run(pm: Podman) -> None:
    """One `podman run` of the base: a refusal from the kernel/sandbox skips, anything else fails."""
    res = pm.run("run", "--rm", "--network", "none", MINBASE, "/bin/true", check=False, timeout=120)
    if res.returncode == 0:
        return
    lines = [line for line in res.stderr.splitlines() if _FORBIDDEN.search(line)]
    if not lines:
        pytest.fail(f"podman cannot run {MINBASE} ({res.returncode}):\n{res.stderr[-3000:]}")
    pytest.skip(_refusal(f"podman run: {lines[-1].strip()[-300:]}"))


def _minbase_tar() -> Path:
    tar = WORK / "bookworm-minbase.tar"
    if tar.exists():
        return tar
    require_tool("debootstrap")
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        root = Path(tmp) / "rootfs"
        _sh(["debootstrap", "--variant=minbase", "bookworm", str(root), MIRROR], timeout=900)
        _sh(["tar", "-C", str(root), "-cf", str(tar) + ".part", "."])
    os.replace(str(tar) + ".part", tar)
    return tar


def _pin(req: Path, name: str) -> str:
    m = re.search(rf"^{re.escape(name)}==(\S+)", req.read_text(), re.M | re.I)
    assert m, f"{req} pins no {name}"
    return m.group(1)


def _wheelhouse() -> Path:
    """Every wheel the two Dockerfiles install, downloaded on the host (which reaches PyPI)."""
    ctx = WORK / "wheelctx"
    wheels = ctx / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "-d", str(wheels)]
    kit = ["-r", "images/requirements-kit.txt"]
    # One download per image: the client and runtime requirement sets are separate environments.
    _sh([*pip, *kit, "-r", "requirements/clients.txt", "pip"], cwd=REPO, timeout=900)
    _sh([*pip, *kit, "-r", "requirements/jobs.txt", f"torch=={CPU_TORCH}"], cwd=REPO, timeout=900)
    lmdeploy = _pin(REPO / "requirements" / "nodeps.txt", "lmdeploy")
    _sh([*pip, "--no-deps", f"lmdeploy=={lmdeploy}"], cwd=REPO, timeout=900)
    (ctx / "Containerfile").write_text(f"FROM {MINBASE}\nCOPY wheels/ /opt/wheels/\nENV PIP_FIND_LINKS=/opt/wheels PIP_NO_INDEX=1\n")
    (ctx / "Containerfile.python").write_text(
        f"FROM {WHEELBASE}\n"
        "RUN apt-get update && apt-get install -y --no-install-recommends python3.11 python3.11-venv"
        " && rm -rf /var/lib/apt/lists/*\n"
    )
    return ctx


@pytest.fixture(scope="session")
def podman() -> Podman:
    """podman with the three stand-in bases ready."""
    require_tool("podman")
    for tool in ("runc", "debootstrap"):
        require_tool(tool)
    _skip_if_nested_containers_are_forbidden()
    WORK.mkdir(parents=True, exist_ok=True)
    conf = WORK / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    settings = yaml.safe_load((REPO / "settings.yaml").read_text())
    settings["defaults"]["images"]["registry"] = TEST_REGISTRY
    (WORK / "settings.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KIT_", "PIP_"))}
    pm = Podman(env=dict(env, CONTAINERS_CONF=str(conf)), settings=WORK / "settings.yaml")

    if not pm.exists(MINBASE):
        pm.run("import", str(_minbase_tar()), MINBASE)
    _skip_if_podman_cannot_run(pm)
    ctx = _wheelhouse()
    # Rebuilt every session (cheap when cached): the wheelhouse follows the requirement files.
    pm.run("build", "--network", "none", "-t", WHEELBASE, "-f", str(ctx / "Containerfile"), str(ctx))
    pm.run("build", "--network", "host", "-t", PYBASE, "-f", str(ctx / "Containerfile.python"), str(ctx))
    return pm


def require_entry(path: str) -> None:
    """A kit file an image test builds in: missing is a failure of the kit, never a skip."""
    if not (REPO / path).is_file():
        pytest.fail(f"{path} is missing from the kit; the image test builds it in")
