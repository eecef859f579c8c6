"""Dockerfiles: pins agree with settings.yaml, final stages are non-root and exec-form, lint passes."""

from __future__ import annotations

import re
import subprocess

import pytest

from kit.settings import load_settings
from tests.conftest import REPO, require_tool

DOCKERFILES = {name: REPO / "images" / name / "Dockerfile" for name in ("runtime", "client")}


def _stages(text: str) -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    stages: list[list[str]] = [[]]
    for line in filter(None, (line.strip() for line in joined.splitlines())):
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def _arg_defaults(text: str) -> dict[str, str]:
    return {m[0]: m[1] for m in re.findall(r"^ARG (\w+)=(\S+)$", text, re.M)}


@pytest.mark.parametrize("name", DOCKERFILES)
def test_arg_defaults_match_the_settings(name):
    """A plain `docker build` (no build.py) builds the same pins as `make images`."""
    s = load_settings("default")
    want = {
        "PYTHON_VERSION": s.versions.python,
        "LMDEPLOY_VERSION": s.versions.lmdeploy,
        "KIT_VERSION": s.images.kit_version,
    }
    if name == "runtime":
        want |= {
            "CUDA_BASE": s.images.cuda_base,
            "TORCH_VERSION": s.versions.torch,
            "TRANSFORMERS_VERSION": s.versions.transformers,
            "TORCH_INDEX_URL": s.provision.torch_index_url,
            "VARIANT": "cuda",
        }
    else:
        want["PYTHON_BASE"] = s.images.python_base
    got = _arg_defaults(DOCKERFILES[name].read_text())
    assert {k: got.get(k) for k in want} == want


@pytest.mark.parametrize("name", DOCKERFILES)
def test_final_stage_is_non_root_exec_form_without_healthcheck(name):
    text = DOCKERFILES[name].read_text()
    final = _stages(text)[-1]
    users = [i for i in final if i.startswith("USER ")]
    assert users and re.fullmatch(r"USER [1-9][0-9]{3,}", users[-1]), "final USER must be a numeric non-root uid"
    entry = [i for i in final if i.startswith("ENTRYPOINT ")]
    assert entry and entry[-1].startswith('ENTRYPOINT ["'), "ENTRYPOINT must be exec form"
    assert not re.search(r"^HEALTHCHECK", text, re.M), "Kubernetes probes check health"
    assert not any(re.search(r"\b(apt-get|pip) install\b", i) for i in final), "installs belong in earlier stages"
    # Nothing from the builder but the environment.
    assert [i for i in final if "--from=" in i] == ["COPY --from=builder /opt/venv /opt/venv"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dependencies_install_before_code_is_copied(name):
    text = DOCKERFILES[name].read_text()
    install = text.index("pip install")
    for code in ("COPY kit/", "COPY settings.yaml"):
        assert text.index(code) > install
    assert "--no-install-recommends" in text or "apt-get" not in text
    assert "rm -rf /var/lib/apt/lists/*" in text or "apt-get" not in text


def test_kit_requirements_match_the_kit_pins():
    def pins(path):
        return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", path.read_text(), re.M))

    image = pins(REPO / "images" / "requirements-kit.txt")
    kit = pins(REPO / "requirements" / "base.txt") | pins(REPO / "requirements" / "clients.txt")
    assert image and all(kit.get(k) == v for k, v in image.items()), f"{image} vs requirements/base.txt + clients.txt"


def test_dockerignore_sends_only_what_the_images_copy():
    lines = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "context starts empty"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for df in DOCKERFILES.values():
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", df.read_text(), re.M):
            copied.update(p.rstrip("/") for p in src.split())
    assert all(any(c == a or c.startswith(a + "/") for a in allowed) for c in copied), (copied, allowed)


def test_hadolint_passes_every_dockerfile():
    hadolint = require_tool("hadolint")
    res = subprocess.run(
        [hadolint, "--config", str(REPO / ".hadolint.yaml"), *map(str, DOCKERFILES.values())], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # Every skipped rule carries its reason (a comment right above it).
    config = (REPO / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(config):
        if re.match(r"\s+- DL\d+", line):
            assert config[i - 1].strip().startswith("#"), f"{line.strip()} has no reason"
