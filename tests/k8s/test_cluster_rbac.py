"""Least privilege: a user bound only to k8s/examples/deployer-rbac.yaml's Role can run kit.cluster.

The kubectl calls are derived from the code path, not listed by hand: the real `kit.cluster` commands
(deploy of every overlay in the scenarios a deploy meets, undeploy, status, logs, gpu) run against
the logging fake kubectl (tests/k8s/fake_kubectl.py; no API server can run on these machines), which
refuses `get nodes` the way the API server refuses a namespace-only user. Each call is translated
into the RBAC requests kubectl makes for it, and each request must be granted by the Role; every
rule of the Role must be needed by some call (nothing extra is granted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kit import cluster
from kit.k8s_params import SERVE
from kit.settings import load_settings
from tests.conftest import REPO
from tests.k8s.conftest import build
from tests.k8s.test_cluster_deploy import FakeCluster

ROLE_FILE = REPO / "k8s/examples/deployer-rbac.yaml"
SHORT = {
    "pvc": "persistentvolumeclaims",
    "job": "jobs",
    "deployment": "deployments",
    "pod": "pods",
    "secret": "secrets",
    "namespace": "namespaces",
    "node": "nodes",
    "event": "events",
}
GROUPS = {"jobs": "batch", "deployments": "apps", "networkpolicies": "networking.k8s.io", "poddisruptionbudgets": "policy"}
LOCAL = {"config", "version", "kustomize"}  # kubeconfig, /version (public), client-side rendering

Request = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def plural(word: str) -> str:
    w = SHORT.get(word.lower(), word.lower())
    if w.endswith("s"):
        return w
    return w[:-1] + "ies" if w.endswith("y") else w + "s"


def _resource(word: str) -> tuple[str, str]:
    res = plural(word.split("/")[0])
    return GROUPS.get(res, ""), res


def requests(call: dict[str, Any]) -> list[Request]:
    """The RBAC requests kubectl makes for one logged call."""
    argv: list[str] = call["argv"]
    flags = [a for a in argv if a.startswith("--")]
    words = [a for a in argv if not a.startswith("--") and a not in ("-o", "json", "name", "wide")]
    if "-l" in words:
        i = words.index("-l")
        words = words[:i] + ["-l"] + words[i + 2 :]
    verb = words[0]
    if verb in LOCAL or "--raw" in flags:
        return []
    objs = [(api.split("/")[0] if "/" in api else "", plural(kind)) for api, kind in call["stdin_api"]]
    if verb == "apply":
        return [(g, r, v) for g, r in objs for v in ("get", "create", "patch")]
    if verb == "create":
        return [(g, r, "create") for g, r in objs]
    if verb == "delete" and "-f" in words:
        return [(g, r, "delete") for g, r in objs]
    if verb == "delete":
        g, r = _resource(words[1])
        out = [(g, r, "delete")]
        if "--wait=true" in flags:  # kubectl waits for the deletion by watching the object
            out += [(g, r, "get"), (g, r, "list"), (g, r, "watch")]
        return out
    if verb == "scale":
        g, r = _resource(words[1])
        return [(g, f"{r}/scale", "get"), (g, f"{r}/scale", "patch")]
    if verb == "logs":
        pods = [("", "pods", "list")] if "-l" in words else [("", "pods", "get")]
        return [*pods, ("", "pods/log", "get")]
    if verb == "exec":
        return [("", "pods", "get"), ("", "pods/exec", "create")]
    if verb == "get":
        named = len(words) > 2 and words[2] != "-l"
        return [(*_resource(w), "get" if named else "list") for w in words[1].split(",")]
    raise AssertionError(f"no RBAC mapping for kubectl {argv}")


def role_rules() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(ROLE_FILE.read_text()) if d]
    role = next(d for d in docs if d["kind"] == "Role")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    return role["rules"]


def allowed(rules: list[dict[str, Any]], req: Request) -> dict[str, Any] | None:
    group, resource, verb = req
    return next((r for r in rules if group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]), None)


def _run(tmp: Path, monkeypatch: pytest.MonkeyPatch, state: dict[str, Any], argv: list[str]) -> list[dict[str, Any]]:
    tmp.mkdir()
    fake = FakeCluster(tmp, state)
    fake.env(monkeypatch)
    cluster.main(argv)
    return fake.calls()


def all_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    s = load_settings("default")
    ns, secret = s.kubernetes.namespace, s.serving.api_key_secret
    user = {"namespaces": [ns], "secrets": [secret], "forbid": ["nodes"]}
    serve = next(d for d in build(REPO / "k8s/overlays/default") if d["kind"] == "Deployment" and d["metadata"]["name"] == SERVE)
    fetch = next(d for d in build(REPO / "k8s/overlays/default") if d["kind"] == "Job")
    running = {**user, "objects": {f"deployments/{SERVE}": serve, f"jobs/{fetch['metadata']['name']}": fetch}, "serve_running": True}
    scenarios: list[tuple[dict[str, Any], list[str]]] = [
        *[(user, ["--profile", p, "deploy", "--skip-plan"]) for p in ("default", "seed", "fc", "multi-gpu")],
        (user, ["--profile", "default", "deploy", "--skip-plan", "--overlay", "monitoring"]),
        (user, ["--profile", "default", "deploy", "--skip-plan", "--skip-gpu-check", "--no-wait"]),
        # a re-deploy over a running server: markers by exec, finished Job recreated, server scaled down
        (
            {**running, "forbid": [], "polls": {fetch["metadata"]["name"]: 9}},
            ["--profile", "default", "deploy", "--skip-plan", "--scale-down"],
        ),
        (running, ["--profile", "default", "undeploy", "--delete-pvc"]),
        (running, ["--profile", "default", "undeploy", "--overlay", "monitoring"]),
        (running, ["--profile", "default", "status"]),
        (running, ["--profile", "default", "status", "--json"]),
        (running, ["--profile", "default", "gpu"]),
        (running, ["--profile", "default", "logs", "--component", "quantize"]),
    ]
    calls = []
    for i, (state, argv) in enumerate(scenarios):
        calls += _run(tmp_path / str(i), monkeypatch, state, argv)
    return calls


def test_every_call_of_kit_cluster_is_allowed_by_the_example_role(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = role_rules()
    calls = all_calls(tmp_path, monkeypatch)
    denied = sorted({req for c in calls for req in requests(c) if allowed(rules, req) is None})
    # Only listing nodes (cluster-scoped) is outside a namespace Role; deploy degrades to a warning for it.
    assert denied == [("", "nodes", "list")], denied
    used = {req for c in calls for req in requests(c)}
    unused = [
        (g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"] if (g, r, v) not in used
    ]
    assert unused == [], f"the Role grants what kit.cluster never asks for: {unused}"


def test_namespace_only_user_deploys_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_settings("default")
    state = {"namespaces": [s.kubernetes.namespace], "secrets": [s.serving.api_key_secret], "forbid": ["nodes"]}
    calls = _run(tmp_path / "user", monkeypatch, state, ["--profile", "default", "deploy", "--skip-plan"])
    assert "GPU check skipped; --skip-gpu-check silences this" in capsys.readouterr().err
    assert not any("Namespace" in c["stdin_kinds"] for c in calls)  # existing namespace: not re-applied, not relabelled
    assert any(c["stdin_kinds"] == ["Deployment"] for c in calls)
    quiet = _run(tmp_path / "quiet", monkeypatch, state, ["--profile", "default", "deploy", "--skip-plan", "--skip-gpu-check"])
    assert not any(c["argv"][:2] == ["get", "nodes"] for c in quiet)
