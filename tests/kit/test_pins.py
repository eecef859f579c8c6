"""One pin source: settings.yaml. Every hand-kept copy of a setting is checked against it here, by
reading the copy as its consumer reads it (Dockerfile ARG defaults, role defaults, requirement
files), and the role defaults written three times (defaults/main.yml, meta/argument_specs.yml,
README.md) are checked against each other. A failure names the file to edit."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kit.ansible_vars import role_vars
from kit.settings import Settings, load_settings
from tests.conftest import REPO

ROLES = sorted(p.name for p in (REPO / "ansible/roles").iterdir() if (p / "defaults/main.yml").is_file())


def _images_build() -> Any:
    spec = importlib.util.spec_from_file_location("images_build", REPO / "images" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("images_build", module)
    spec.loader.exec_module(module)
    return module


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins() -> dict[str, tuple[str, str]]:
    """name -> (version, file) for every `name==version` in requirements/*.txt."""
    pins: dict[str, tuple[str, str]] = {}
    for f in sorted((REPO / "requirements").glob("*.txt")):
        for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", f.read_text(), re.M):
            pins.setdefault(_norm(m.group(1)), (m.group(2), f.name))
    return pins


def dockerfile_arg_defaults(path: Path) -> dict[str, set[str]]:
    """ARG name -> the defaults it is declared with (one per stage that redeclares it)."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"^ARG\s+([A-Z0-9_]+)=(\S+)", path.read_text(), re.M):
        out.setdefault(m.group(1), set()).add(m.group(2).strip("\"'"))
    return out


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings("default")


def test_schema_defaults_of_pins_match_settings_yaml(settings: Settings) -> None:
    """kit/settings_sections.py's Field defaults (the README's settings table) say what settings.yaml says."""
    schema = Settings()
    for section in ("versions", "images"):
        assert getattr(schema, section).model_dump() == getattr(settings, section).model_dump(), (
            f"kit/settings_sections.py defaults of `{section}` differ from settings.yaml"
        )


@pytest.mark.parametrize("image", ["runtime", "client"])
def test_dockerfile_arg_defaults_match_the_build_args(settings: Settings, image: str) -> None:
    """`docker build` without --build-arg builds what `make images` builds (images/build.py's args)."""
    plan = _images_build().plan_images(settings, [image])[0]
    declared = dockerfile_arg_defaults(REPO / plan.dockerfile)
    checked = {name for name in plan.build_args if name in declared}
    assert {"PYTHON_VERSION", "LMDEPLOY_VERSION", "KIT_VERSION"} <= checked
    for name in sorted(checked):
        assert declared[name] == {plan.build_args[name]}, (
            f"{plan.dockerfile}: ARG {name} default {declared[name]} != settings {plan.build_args[name]!r}"
        )


def test_requirement_pins_match_settings(settings: Settings) -> None:
    pins = requirement_pins()
    for name, wanted in (("lmdeploy", settings.versions.lmdeploy), ("transformers", settings.versions.transformers)):
        version, file = pins[name]
        assert version == wanted, f"requirements/{file}: {name}=={version}, settings versions.{name} is {wanted}"


def test_python_env_role_defaults_match_the_default_profile(settings: Settings) -> None:
    """The role run without the kit's vars installs the versions the settings name."""
    defaults = yaml.safe_load((REPO / "ansible/roles/python_env/defaults/main.yml").read_text())
    rendered = role_vars(settings)
    keys = [k for k in rendered if k.startswith("python_env_") and k.endswith("_version")]
    assert len(keys) >= 5
    for key in keys:
        assert str(defaults[key]) == str(rendered[key]), (
            f"python_env defaults/main.yml {key}: {defaults[key]!r}, settings: {rendered[key]!r}"
        )


def test_python_env_packages_match_the_tested_requirements() -> None:
    """The role's minimal package set and SDK pin are the versions CI tests (requirements/*.txt)."""
    defaults = yaml.safe_load((REPO / "ansible/roles/python_env/defaults/main.yml").read_text())
    pins = requirement_pins()
    wanted = [*defaults["python_env_minimal_packages"], f"openai=={defaults['python_env_openai_version']}"]
    for spec in wanted:
        name, version = spec.split("==")
        if _norm(name) in pins:
            assert (version, pins[_norm(name)][1]) == pins[_norm(name)], (
                f"python_env defaults pin {spec}, requirements/{pins[_norm(name)][1]} pins {pins[_norm(name)][0]}"
            )


def _abbreviates(doc: Any, actual: Any) -> bool:
    """A README value equals the default, or shortens it visibly: "abc..." or [a, b, ...]."""
    if isinstance(doc, str) and doc.endswith("...") and isinstance(actual, str):
        return actual.startswith(doc[:-3])
    if isinstance(doc, list) and doc and doc[-1] == "..." and isinstance(actual, list):
        return actual[: len(doc) - 1] == doc[:-1]
    return doc == actual


@pytest.mark.parametrize("role", ROLES)
def test_role_defaults_agree_in_defaults_argument_specs_and_readme(role: str) -> None:
    base = REPO / "ansible/roles" / role
    defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
    entry_points = yaml.safe_load((base / "meta/argument_specs.yml").read_text())["argument_specs"]
    specs = [(entry, key, spec) for entry, ep in entry_points.items() for key, spec in (ep.get("options") or {}).items()]
    missing = sorted(set(defaults) - {key for _, key, _ in specs})
    assert not missing, f"{role}: meta/argument_specs.yml lacks {missing}"
    for entry, key, spec in specs:
        if "default" in spec:
            assert key in defaults and spec["default"] == defaults[key], (
                f"{role}: argument_specs ({entry}) default of {key} != defaults/main.yml"
            )
    readme: dict[str, Any] = {}
    for block in re.findall(r"```yaml\n(.*?)```", (base / "README.md").read_text(), re.S):
        data = yaml.safe_load(block)
        if isinstance(data, dict):
            readme.update({k: v for k, v in data.items() if k.startswith(f"{role}_")})
    assert sorted(set(defaults) - set(readme)) == [], f"{role}: README.md does not show these defaults"
    for key, value in readme.items():
        assert key in defaults and _abbreviates(value, defaults[key]), (
            f"{role}: README.md shows {key}: {value!r}, defaults/main.yml has {defaults.get(key)!r}"
        )


def test_image_tests_use_the_ci_torch_pin() -> None:
    from tests.images.conftest import CPU_TORCH

    assert CPU_TORCH == requirement_pins()["torch"][0]
