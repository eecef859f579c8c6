"""README and Makefile: the documented interface exists and stays in sync with the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from kit.docs import BEGIN, END, settings_table

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
REQUIRED_TARGETS = [
    "help",
    "provision",
    "deploy",
    "undeploy",
    "status",
    "logs",
    "plan",
    "chat",
    "gradio",
    "fc-check",
    "gpu",
    "report",
    "bench",
    "images",
    "lint",
    "test",
]


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-s", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def _help_targets() -> list[str]:
    plain = re.sub(r"\x1b\[[0-9;]*m", "", _make("help").stdout)
    return re.findall(r"^  ([a-z][\w-]*)\s", plain, flags=re.M)


def test_help_is_default_and_lists_every_target() -> None:
    default = _make()
    assert default.returncode == 0 and "Usage: make" in default.stdout
    targets = _help_targets()
    assert set(REQUIRED_TARGETS) <= set(targets), set(REQUIRED_TARGETS) - set(targets)
    # Every target with a recipe in the Makefile documents itself.
    declared = set(re.findall(r"^([a-z][\w-]*):(?!=)", (REPO / "Makefile").read_text(), flags=re.M))
    assert declared <= set(targets), declared - set(targets)


def test_readme_lists_every_target() -> None:
    for target in _help_targets():
        assert f"`make {target}`" in README, target


def test_readme_starts_with_the_two_commands() -> None:
    first_block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]
    assert len(commands) == 2
    assert commands[1] == "make test"
    ci = (REPO / ".ci/run").read_text()
    assert "make test" in ci, "CI must run the README's test command"
    targets = set(_help_targets())
    for command in commands:
        words = command.split()
        assert words[0] == "make"
        for word in words[1:]:
            assert "=" in word or word in targets, word
        # The command resolves into recipes (dry run: nothing is executed).
        dry = subprocess.run([*words, "-n"], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr


def test_settings_table_matches_schema() -> None:
    assert BEGIN in README and END in README
    current = README[README.index(BEGIN) : README.index(END) + len(END)] + "\n"
    assert current == settings_table(), "README settings table drifted: run `python -m kit settings-table`"


def test_missing_part_exits_2_with_message(tmp_path: Path) -> None:
    """A target whose part is missing says so and exits 2 (simulated by pointing a guard at a missing file)."""
    mk = tmp_path / "Makefile"
    mk.write_text((REPO / "Makefile").read_text().split("##@ General")[0] + "probe:\n\t$(call need,does/not/exist.py,the probe part)\n")
    proc = subprocess.run(["make", "-s", "-f", str(mk), "probe"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "the probe part is not built yet" in proc.stderr
