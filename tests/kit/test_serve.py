"""kit.serve: the real entrypoint runs lmdeploy's own api_server command with the key from a file, never in argv.

The server is started for real (`python -m kit.serve ... -- lmdeploy serve api_server ...`, lmdeploy's
parser and its `api_server` command building the engine config). This CPU box has no GPU, so a
test-only `sitecustomize` replaces lmdeploy's `serve()` (where the engine would start) with a stand-in
that records the arguments lmdeploy passes it and then waits: that is the point where lmdeploy
receives `api_keys`, and it keeps the process alive so its /proc entries can be read.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kit import exitcodes, serve
from kit.k8s_params import serve_command
from kit.settings import load_settings
from tests.conftest import REPO
from tests.support.models import TINY, build_llama

pytest.importorskip("lmdeploy.cli.serve", reason="lmdeploy is installed by requirements/nodeps.txt")

# Records what lmdeploy's api_server command passes to serve(), then waits to be killed.
SITECUSTOMIZE = textwrap.dedent(
    """
    import importlib.abc, importlib.util, json, os, sys, time

    TARGET = "lmdeploy.serve.openai.api_server"


    def _serve(model_path, **kw):
        rec = os.environ["KIT_TEST_RECORD"]
        with open(rec + ".tmp", "w") as f:
            json.dump({"model_path": model_path, "api_keys": kw.get("api_keys"), "server_port": kw.get("server_port"),
                       "tool_call_parser": kw.get("tool_call_parser"),
                       "max_prefill_token_num": getattr(kw.get("backend_config"), "max_prefill_token_num", None),
                       "enable_metrics": getattr(kw.get("backend_config"), "enable_metrics", None),
                       "max_batch_size": getattr(kw.get("backend_config"), "max_batch_size", None)}, f)
        os.replace(rec + ".tmp", rec)
        time.sleep(600)


    class _Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != TARGET:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                real_exec(module)
                module.serve = _serve

            spec.loader.exec_module = exec_module
            return spec


    if os.environ.get("KIT_TEST_RECORD"):
        sys.meta_path.insert(0, _Hook())
    """
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_llama(tmp_path_factory.mktemp("models") / "tiny", TINY)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc/<pid>/stat parent ids)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def proc_bytes(pid: int, name: str) -> bytes:
    try:
        return (Path("/proc") / str(pid) / name).read_bytes()
    except OSError:
        return b""


@pytest.fixture
def running_server(tiny_model: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path, list[str]]]:
    """`python -m kit.serve` with the rendered serve args (model path swapped for the tiny model), key in a file."""
    key = "sk-" + secrets.token_hex(16)
    key_file = tmp_path / "api-key"
    key_file.write_text(key + "\n")  # as `kubectl create secret --from-file` of an echo'd key: trailing newline
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    record = tmp_path / "record.json"
    # The Deployment's command, with the tiny model and a batch size (lmdeploy sizes it from torch.cuda otherwise).
    s = load_settings(
        "default", overrides={"serving": {"max_batch_size": 8, "max_prefill_token_num": 4096, "enable_metrics": False, "port": 23999}}
    )
    command = serve_command(s)
    command[command.index(s.serve_path)] = str(tiny_model)
    command[command.index("--api-key-file") + 1] = str(key_file)
    assert command[:3] == ["python", "-m", "kit.serve"]
    env = {
        **os.environ,
        "PYTHONPATH": f"{site}{os.pathsep}{REPO}",
        "KIT_TEST_RECORD": str(record),
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("LMDEPLOY_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, *command[1:]], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not record.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = proc.stdout.read().decode() if proc.poll() is not None and proc.stdout else "(still running)"
                pytest.fail(f"lmdeploy never reached serve(): rc={proc.returncode}\n{out[-3000:]}")
            time.sleep(0.5)
        yield proc, key, record, command
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_key_reaches_lmdeploy_and_no_process_argv_holds_it(running_server: tuple[subprocess.Popen[bytes], str, Path, list[str]]) -> None:
    proc, key, record, command = running_server
    got = json.loads(record.read_text())
    # lmdeploy's own api_server command passed the key (whitespace stripped) and the rendered args through.
    assert got["api_keys"] == [key]
    assert got["server_port"] == 23999 and got["tool_call_parser"] == "internlm"
    # engine settings reach the engine config
    assert (got["max_batch_size"], got["max_prefill_token_num"], got["enable_metrics"]) == (8, 4096, False)
    assert got["model_path"] == command[command.index("api_server") + 1]
    pids = descendants(proc.pid)
    assert proc.pid in pids
    for pid in pids:
        assert key.encode() not in proc_bytes(pid, "cmdline"), f"pid {pid} has the key in its argv"
        assert key.encode() not in proc_bytes(pid, "environ"), f"pid {pid} has the key in its environment"
    assert b"kit.serve" in proc_bytes(proc.pid, "cmdline")


def test_key_from_the_environment_is_removed_before_lmdeploy_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The systemd path: LMDEPLOY_API_KEY from an EnvironmentFile, gone from the env children inherit."""
    monkeypatch.setenv("LMDEPLOY_API_KEY", "  sk-env  ")
    assert serve.read_keys(None) == ["sk-env"]
    assert "LMDEPLOY_API_KEY" not in os.environ


@pytest.mark.parametrize(
    ("argv", "rc", "message"),
    [
        (
            ["--api-key-file", "KEYFILE", "--", "lmdeploy", "serve", "api_server", "/m", "--api-keys", "x"],
            exitcodes.USAGE,
            "--api-key-file",
        ),
        (["--api-key-file", "KEYFILE", "--", "lmdeploy", "lite", "auto_awq", "/m"], exitcodes.USAGE, "serve api_server"),
        (["--api-key-file", "MISSING", "--", "lmdeploy", "serve", "api_server", "/m"], exitcodes.FAILED, "cannot read the API key file"),
        (["--api-key-file", "EMPTY", "--", "lmdeploy", "serve", "api_server", "/m"], exitcodes.FAILED, "is empty"),
        (["--", "lmdeploy", "serve", "api_server", "/m"], exitcodes.FAILED, "no API key"),
    ],
    ids=["key-in-argv", "not-serve", "missing-file", "empty-file", "no-key"],
)
def test_bad_invocations_fail_with_one_line(
    argv: list[str], rc: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LMDEPLOY_API_KEY", raising=False)
    monkeypatch.delenv(serve.API_KEY_FILE_ENV, raising=False)
    (tmp_path / "KEYFILE").write_text("k\n")
    (tmp_path / "EMPTY").write_text("\n")
    files = {"KEYFILE", "MISSING", "EMPTY"}
    argv = [str(tmp_path / a) if a in files else a for a in argv]
    assert serve.main(argv) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert "sk-" not in err[0]
