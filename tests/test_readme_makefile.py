"""README and Makefile: the documented interface exists and stays in sync with the code."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

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


# --- Every command the README shows, run where a CPU machine can run it -------------------------

# `make` targets that run for real here; `chat` talks to the replay server. The rest need a host,
# a cluster or a GPU and are dry-run (`make -n`: they must resolve into recipes).
MAKE_RUNS = {"help", "settings", "plan", "chat"}
# README commands that rewrite tracked files; the test runs them with --check.
REWRITES_FILES = {"python -m tests.gpu.bench_docs"}
# kubectl commands that need a live cluster: checked for the names they use, not run.
NEEDS_CLUSTER = ("kubectl -n lmdeploy port-forward", "export OPENAI_API_KEY=$(kubectl")


# make's own "*** [...] Error N" line; under `make test` the tests' make is a sub-make: "make[1]: ***".
MAKE_ERROR = re.compile(r"^make(\[\d+\])?: \*\*\* ")


def readme_commands() -> list[str]:
    """Commands in ```bash blocks and inline `make ...` / `python -m ...` spans, comments and `&` removed."""
    out: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            command = re.sub(r"\s+#\s.*$", "", line).strip().removesuffix("&").strip()
            if command:
                out.append(command)
    for span in re.findall(r"`((?:make|python -m) [^`]+)`", README):
        out.append(span)
    return list(dict.fromkeys(out))


def _shell(command: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    """bash -c in the repo with the kit's environment first on PATH (`python`, `kubectl` are the pinned ones)."""
    import os

    full = {**os.environ, "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}", **(env or {})}
    return subprocess.run(["bash", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full)


def _no_venv_rebuild(command: str) -> str:
    """The environment exists (the tests run in it): `-o` keeps a newer requirements file from rebuilding it mid-test."""
    return command.replace("make ", "make -o .venv/.kit-installed ", 1)


def test_readme_has_the_commands_this_test_knows() -> None:
    commands = readme_commands()
    assert "python -m kit show --profile seed" in commands
    assert any(c.startswith("make chat ") for c in commands) and any(c.startswith("kubectl create namespace") for c in commands)


def test_readme_python_commands_run() -> None:
    """Each runs for real; generators that rewrite tracked files run in their --check mode (the tree is shared)."""
    for command in [c for c in readme_commands() if c.startswith("python -m ")]:
        check = command in REWRITES_FILES
        proc = _shell(f"{command} --check" if check else command)
        assert proc.returncode == 0, f"README command `{command}` failed:\n{proc.stderr}"
        assert check or proc.stdout.strip(), command


def test_readme_make_commands_run_or_resolve() -> None:
    from tests.support.replay import RECORDED_DIR, ReplayServer, load_exchanges

    recorded = load_exchanges(RECORDED_DIR)
    ran: list[str] = []
    for command in [c for c in readme_commands() if c.startswith("make ")]:
        words = command.split()
        targets = [w for w in words[1:] if "=" not in w and not w.startswith("-")]
        if len(targets) == 1 and targets[0] in MAKE_RUNS:
            if targets[0] == "chat":
                with ReplayServer(recorded) as srv:
                    proc = _shell(_no_venv_rebuild(command), {"OPENAI_BASE_URL": srv.base_url})
                assert srv.misses == [], f"`{command}` asked what no recording answers: {srv.misses}"
            else:
                proc = _shell(_no_venv_rebuild(command))
            ran.append(command)
            if targets[0] == "plan" and proc.returncode == 2:
                # No GPU here and none named: one line saying which flag to pass is the documented answer.
                said = [line for line in proc.stderr.splitlines() if not MAKE_ERROR.match(line)]
                assert len(said) == 1 and "--gpu" in said[0], proc.stderr
                continue
        else:
            proc = _shell(f"{command} -n")
        assert proc.returncode == 0, f"README command `{command}` failed (exit {proc.returncode}):\n{proc.stderr}"
    assert {c.split()[1] for c in ran} == MAKE_RUNS, ran


def test_readme_kubectl_prerequisites_create_the_namespace_first() -> None:
    """The Secrets go into a namespace the README created before them, idempotently, under the names the kit
    reads, and their values come through stdin: a value in kubectl's argv shows in `ps` and shell history."""
    import yaml

    from kit.settings import load_settings

    s = load_settings()
    ns = s.kubernetes.namespace
    kubectl = [c for c in readme_commands() if "kubectl " in c]
    creates = [c for c in kubectl if " create " in c]
    assert creates and creates[0].startswith(f"kubectl create namespace {ns} "), creates
    made: dict[str, dict] = {}
    for command in creates:
        stages = [part.strip() for part in command.split("|")]
        at = next(i for i, part in enumerate(stages) if part.startswith("kubectl ") and " create " in part)
        if "--dry-run=client" not in stages[at]:
            stages[at] += " --dry-run=client -o yaml"
        client_side = " | ".join(stages[: at + 1])
        proc = _shell(client_side, {"HF_TOKEN": "hf_test", "KUBECONFIG": "/dev/null"})
        assert proc.returncode == 0, f"`{client_side}`: {proc.stderr}"
        doc = yaml.safe_load(proc.stdout)
        made[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
        if doc["kind"] == "Namespace":
            assert "| kubectl apply -f -" in command, "creating the namespace must be idempotent (apply)"
        else:
            assert doc["metadata"]["namespace"] == ns
            assert "--from-literal" not in stages[at] and "$(" not in stages[at], f"a Secret value in kubectl's argv: {command}"
            value = base64.b64decode(next(iter(doc["data"].values()))).decode()
            assert value and value == value.strip(), f"`{command}` stores {value!r}: empty, or a newline the clients would send"
    assert f"Namespace/{ns}" in made
    assert set(made[f"Secret/{s.serving.api_key_secret}"]["data"]) == {"api-key"}
    assert set(made[f"Secret/{s.serving.hub_token_secret}"]["data"]) == {"token"}
    for prefix in NEEDS_CLUSTER:
        (command,) = [c for c in kubectl if c.startswith(prefix)]
        assert f"-n {ns} " in command


def test_help_colours_only_a_terminal() -> None:
    """Colour codes go to a terminal only, and never under NO_COLOR (https://no-color.org)."""
    import os
    import pty

    piped = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout and "  help " in piped.stdout

    def on_terminal(**env: str) -> str:
        main, sub = pty.openpty()
        with subprocess.Popen(["make", "-s", "help"], cwd=REPO, stdout=sub, stderr=subprocess.DEVNULL, env={**os.environ, **env}) as proc:
            os.close(sub)
            chunks = []
            while True:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the terminal's other side closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            proc.wait(timeout=60)
        os.close(main)
        return b"".join(chunks).decode()

    assert "\x1b[36mhelp" in on_terminal(NO_COLOR="")  # an empty NO_COLOR does not count
    assert "\x1b[" not in on_terminal(NO_COLOR="1")


def test_provision_with_an_unknown_profile_says_so_in_one_line() -> None:
    from kit.settings import profile_names

    proc = _make("-o", "render", "provision", "PROFILE=bogus")  # -o: leave the generated files alone
    said = [line for line in proc.stderr.splitlines() if not MAKE_ERROR.match(line)]
    assert proc.returncode == 2
    assert said == [f"error: unknown profile 'bogus'; allowed: {', '.join(profile_names())}"], proc.stderr
    assert "ansible" not in proc.stdout.lower() + proc.stderr.lower()


@pytest.mark.slow
def test_make_quantize_passes_settings_overrides_to_every_step(tmp_path: Path) -> None:
    """`make quantize ARGS="--set ..."`: fetch, quantize and verify all see the overrides (a tiny model on the CPU)."""
    import json
    import os
    import shlex

    from jobs._common import MANIFEST_NAME, MARKER_NAME
    from tests.jobs._helpers import SHAPE, settings_args
    from tests.support.models import build_llama

    src = build_llama(tmp_path / "src", SHAPE)
    store = tmp_path / "store"
    args = settings_args(store, extra=[f"model.source={src}"])
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.kit-installed", "quantize", f"ARGS={shlex.join(args)}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((store / "tiny" / MANIFEST_NAME).read_text())["source"] == str(src)  # fetch saw them
    marker = json.loads((store / "tiny-w4a16-4bit" / MARKER_NAME).read_text())  # quantize saw them
    assert marker["inputs"]["params"]["device"] == "cpu" and marker["inputs"]["params"]["calib_samples"] == 4
    assert "w4a16" in proc.stdout and "PASS" in proc.stdout  # verify compared the two models of this store
