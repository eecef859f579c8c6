"""The serving Deployment: its command is the settings' render and parses with lmdeploy's own parser;
probes, GPU, /dev/shm and rollout timing fit a model that loads for minutes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from kit.k8s_params import SERVE
from kit.render import API_KEY_ENV, serve_args
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import PROFILE_OVERLAYS, build, profile_of
from tests.k8s.rendered import (
    docs_profile,
    env,
    find,
    lmdeploy_argv,
    render_tree,
)

# ------------------------------------------------------------------------------------- the serving container


def test_serve_command_is_the_settings_render(docs: list[dict[str, Any]]) -> None:
    """The key reaches the server as a file from the Secret volume: no env var, no argument holds it."""
    s = load_settings(profile_of(docs_profile(docs)))
    spec = find(docs, "Deployment", SERVE)["spec"]["template"]["spec"]
    api = spec["containers"][0]
    assert lmdeploy_argv(api["command"]) == serve_args(s)
    assert "--api-keys" not in api["command"] and not any("$(" in a for a in api["command"])
    key_file = api["command"][api["command"].index("--api-key-file") + 1]
    mount = next(m for m in api["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert mount.get("readOnly") is True and volume["secret"]["secretName"] == s.serving.api_key_secret
    assert volume["secret"]["items"] == [{"key": "api-key", "path": key_file.removeprefix(mount["mountPath"] + "/")}]
    assert API_KEY_ENV not in env(api)


_PARSE = """
import contextlib, io, json, sys
from lmdeploy.cli.cli import CLI
from lmdeploy.cli.serve import SubCliServe
SubCliServe.add_parser_api_server()
keys = ('model_path', 'quant_policy', 'cache_max_entry_count', 'model_format', 'tp', 'server_port', 'tool_call_parser',
        'trust_remote_code', 'api_keys', 'backend')
out = []
for argv in json.loads(sys.stdin.read()):
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            a = CLI.parser.parse_args(argv)
        out.append({k: getattr(a, k) for k in keys})
    except SystemExit as exc:
        out.append({'exit': exc.code, 'stderr': err.getvalue()})
print(json.dumps(out))
"""


BAD_ARGV = ["serve", "api_server", "/m", "--trust-remote-code", "False"]


_parsed: list[dict[str, Any]] = []


def lmdeploy_parse() -> list[dict[str, Any]]:
    """Every profile's rendered command (argv[1:]) then BAD_ARGV through lmdeploy's real parser, in one process."""
    pytest.importorskip("lmdeploy.cli.serve", reason="lmdeploy is installed by requirements/nodeps.txt")
    if not _parsed:
        import json
        import sys

        argvs = []
        for profile in PROFILE_OVERLAYS:
            cmd = find(build(REPO / "k8s/overlays" / profile), "Deployment", SERVE)["spec"]["template"]["spec"]["containers"][0]["command"]
            cmd = lmdeploy_argv(cmd)
            assert cmd[0] == "lmdeploy"
            argvs.append(cmd[1:])
        proc = subprocess.run(
            [sys.executable, "-c", _PARSE], input=json.dumps([*argvs, BAD_ARGV]), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        _parsed.extend(json.loads(proc.stdout.strip().splitlines()[-1]))
    return _parsed


@pytest.mark.parametrize("profile", PROFILE_OVERLAYS)
def test_serve_command_parses_with_lmdeploys_own_parser(profile: str) -> None:
    """Parse only: the real `lmdeploy serve api_server` argparse accepts the rendered command."""
    parsed = lmdeploy_parse()[PROFILE_OVERLAYS.index(profile)]
    assert "exit" not in parsed, parsed.get("stderr")
    s = load_settings(profile)
    assert parsed["model_path"] == s.serve_path
    assert parsed["quant_policy"] == s.serving.quant_policy
    assert parsed["cache_max_entry_count"] == s.serving.cache_max_entry_count
    assert parsed["model_format"] == s.effective_model_format
    assert parsed["tp"] == s.serving.tp
    assert parsed["server_port"] == s.serving.port
    assert parsed["tool_call_parser"] == s.serving.tool_call_parser
    assert parsed["trust_remote_code"] is s.model.trust_remote_code
    assert parsed["backend"] == s.serving.backend
    assert parsed["api_keys"] is None, "the key goes in through kit.serve, never the command"


def test_lmdeploy_parser_rejects_a_bad_command() -> None:
    """Guards the parse test: a homework-style string after an on/off flag fails the real parser."""
    bad = lmdeploy_parse()[-1]
    assert bad["exit"] == 2 and "unrecognized arguments: False" in bad["stderr"]


def test_serving_pod_shape(docs: list[dict[str, Any]]) -> None:
    s = load_settings(profile_of(docs_profile(docs)))
    dep = find(docs, "Deployment", SERVE)
    spec = dep["spec"]["template"]["spec"]
    api = spec["containers"][0]
    gpu = s.kubernetes.gpu_resource
    assert api["resources"]["requests"][gpu] == api["resources"]["limits"][gpu] == str(s.serving.tp)
    startup = api["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= s.kubernetes.startup_timeout_s
    for probe in ("readinessProbe", "livenessProbe"):
        p = api[probe]
        assert p["httpGet"]["path"] == "/health" and p["periodSeconds"] * p["failureThreshold"] <= 60, probe
    assert api["lifecycle"]["preStop"]["sleep"]["seconds"] < spec["terminationGracePeriodSeconds"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    if any(d["kind"] == "ScaledObject" for d in docs):
        assert "replicas" not in dep["spec"], "KEDA scales this Deployment: a replicas field would reset it on every apply"
    else:
        assert dep["spec"]["replicas"] == s.serving.replicas
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": s.kubernetes.shm_size}
    assert {m["mountPath"]: m["name"] for m in api["volumeMounts"]}["/dev/shm"] == "dshm"


# ------------------------------------------------------------------------------------- rollout timing


# A multi-GB CUDA image on a cold node: the deadline must leave at least this beyond the model load.
MIN_IMAGE_PULL_S = 300


def startup_budget_s(container: dict[str, Any]) -> int:
    """The longest a container may take to pass its startupProbe, read from the rendered probe."""
    probe = container["startupProbe"]
    return probe.get("initialDelaySeconds", 0) + probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_progress_deadline_covers_startup_and_image_pull(docs: list[dict[str, Any]]) -> None:
    """`kubectl rollout status` must not fail a healthy slow start: deadline >= probe budget + image pull."""
    dep = find(docs, "Deployment", SERVE)
    budget = startup_budget_s(dep["spec"]["template"]["spec"]["containers"][0])
    assert dep["spec"].get("progressDeadlineSeconds", 600) >= budget + MIN_IMAGE_PULL_S


def test_progress_deadline_follows_a_longer_startup(tmp_path: Path) -> None:
    docs = render_tree(tmp_path, {"kubernetes": {"startup_timeout_s": 3600}})["default"]
    dep = find(docs, "Deployment", SERVE)
    budget = startup_budget_s(dep["spec"]["template"]["spec"]["containers"][0])
    assert budget >= 3600 and dep["spec"]["progressDeadlineSeconds"] >= budget + MIN_IMAGE_PULL_S
