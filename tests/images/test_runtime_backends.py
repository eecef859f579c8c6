"""serving.backend=pytorch runs in the runtime image: Triton compiles a C helper at its first kernel launch.

That compile needs a C compiler, the C library headers and the headers of the Python that runs the
server in the image that serves: a stage the final stage is built FROM (the builder's tools are not
in it).
"""

from __future__ import annotations

import re

from kit.settings import load_settings
from tests.images.test_dockerfiles import DOCKERFILES, _arg_defaults, _stages


def serving_stages(text: str) -> list[list[str]]:
    """The final stage and every stage it descends from through `FROM <stage>` (not COPY --from)."""
    stages = _stages(text)[1:]
    by_name = {}
    for stage in stages:
        m = re.fullmatch(r"FROM \S+ AS (\S+)", stage[0], re.I)
        if m:
            by_name[m.group(1)] = stage
    chain, stage = [], stages[-1]
    while stage is not None:
        chain.append(stage)
        stage = by_name.get(stage[0].split()[1])
    return chain


def apt_packages(stages: list[list[str]]) -> set[str]:
    packages: set[str] = set()
    for instruction in (i for stage in stages for i in stage):
        for match in re.finditer(r"apt-get install ([^&;]*)", instruction):
            packages |= {w.strip("\"'") for w in match.group(1).split() if not w.startswith("-")}
    return packages


def test_serving_image_can_build_tritons_helper() -> None:
    text = DOCKERFILES["runtime"].read_text()
    chain = serving_stages(text)
    assert len(chain) >= 2 and not any("AS builder" in s[0] for s in chain)
    packages = apt_packages(chain)
    assert packages & {"gcc", "clang", "build-essential"}, f"no C compiler in the serving image: {sorted(packages)}"
    assert packages & {"libc6-dev", "build-essential"}, "no C library headers in the serving image"
    # Headers of the interpreter the venv was made from: python${PYTHON_VERSION}-dev, the ARG in scope there.
    stage = next(s for s in chain if any("python${PYTHON_VERSION}-dev" in i for i in s))
    assert any(i.startswith("ARG PYTHON_VERSION") for i in stage), "PYTHON_VERSION is not declared in that stage"
    assert _arg_defaults(text)["PYTHON_VERSION"] == load_settings("default").versions.python


def test_the_kubernetes_profiles_may_choose_pytorch() -> None:
    """The image carries what the backend needs, so the settings accept it for the overlay profiles."""
    for profile in ("default", "seed", "multi-gpu"):
        assert load_settings(profile, overrides={"serving": {"backend": "pytorch"}}).serving.backend == "pytorch"
