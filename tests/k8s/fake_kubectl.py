"""A fake `kubectl` for the kit.cluster deploy tests: logs its argv, answers from a JSON state file.

Why a fake: no API server can run on the test machines (see shared FIELD-NOTES), and the decisions it
feeds are tested as pure functions elsewhere; what this proves is the *sequence* of kubectl calls the
real `kit.cluster deploy` makes (order, waits, verbs and resources for the RBAC check). `kustomize`
goes to the real kubectl, so the objects applied are the real rendered overlays.

State ($FAKE_KUBE_STATE/state.json), all optional:
  namespaces: [names]       secrets: [names]        forbid: ["nodes", "namespaces", ...]
  nodes: kubectl get nodes JSON                      version: kubectl version JSON
  markers: {path: marker}   what `python -m kit.markers show --json` prints in the reader pod
  job_polls: N              `get job` answers Active N times after creation, then Complete
  serve_running: bool       a Running serving pod exists (exec target)
Calls are appended to $FAKE_KUBE_STATE/calls.jsonl as {"argv": [...] (without --context, -n, --request-timeout),
"rc", "stdin_kinds", "stdin_api": [[apiVersion, kind]], "jobs": {name: state at that moment}}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

STATE_DIR = Path(os.environ["FAKE_KUBE_STATE"])
STATE = STATE_DIR / "state.json"
SHORT = {"pvc": "persistentvolumeclaims", "job": "jobs", "deployment": "deployments", "pod": "pods", "secret": "secrets"}


def plural(kind_or_word: str) -> str:
    w = kind_or_word.lower()
    w = SHORT.get(w, w)
    if w.endswith("s"):
        return w
    return w[:-1] + "ies" if w.endswith("y") else w + "s"


def load() -> dict[str, Any]:
    return json.loads(STATE.read_text()) if STATE.exists() else {}


def save(state: dict[str, Any]) -> None:
    STATE.write_text(json.dumps(state))


def fail(msg: str) -> int:
    print(msg, file=sys.stderr)
    return 1


def not_found(resource: str, name: str) -> int:
    return fail(f'Error from server (NotFound): {resource} "{name}" not found')


def forbidden(resource: str) -> int:
    return fail(f'Error from server (Forbidden): {resource} is forbidden: User "dev" cannot list resource "{resource}" in API group ""')


def job_json(state: dict[str, Any], name: str) -> dict[str, Any]:
    obj = state["objects"][f"jobs/{name}"]
    polls = state.setdefault("polls", {}).get(name, 0)
    state["polls"][name] = polls + 1
    done = polls >= state.get("job_polls", 1)
    status = {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1} if done else {"active": 1}
    state.setdefault("job_states", {})[name] = "Complete" if done else "Active"
    return {**obj, "status": status}


def answer(argv: list[str], stdin: str, state: dict[str, Any]) -> int:
    words = [a for a in argv if not a.startswith("--") and a not in ("-o", "json", "name", "wide")]
    if words[:1] == ["get"] and "-l" in words:
        i = words.index("-l")
        words = words[:i] + words[i + 2 :]
    verb = words[0] if words else ""
    objects = state.setdefault("objects", {})
    if verb == "config":
        print("fake")
        return 0
    if verb == "version":
        print(json.dumps(state.get("version") or {"serverVersion": {"major": "1", "minor": "31", "gitVersion": "v1.31.2"}}))
        return 0
    if verb == "get" and "--raw" in argv:
        print("ok")
        return 0
    if verb in ("apply", "create"):
        for doc in (d for d in yaml.safe_load_all(stdin) if d):
            key = f"{plural(doc['kind'])}/{doc['metadata']['name']}"
            objects[key] = doc
            if doc["kind"] == "Namespace":
                state.setdefault("namespaces", []).append(doc["metadata"]["name"])
            state.setdefault("polls", {}).pop(doc["metadata"]["name"], None) if doc["kind"] == "Job" else None
            print(f"{doc['kind'].lower()}/{doc['metadata']['name']} created")
        return 0
    if verb == "delete":
        if words[1:2] == ["-f"] or "-f" in argv:
            return 0
        objects.pop(f"{plural(words[1])}/{words[2]}", None)
        return 0
    if verb == "scale":
        state["scaled"] = words[1]
        return 0
    if verb == "exec":
        return fail("error: unable to upgrade connection: container not found")
    if verb == "logs":
        pod = words[1]
        if pod.startswith("lmdeploy-markers"):
            print(json.dumps(state.get("markers", {})))
        else:
            print(f"[{pod}] working")
        return 0
    if verb != "get":
        return fail(f"fake kubectl: unsupported {argv}")
    resource = plural(words[1])
    name = words[2] if len(words) > 2 else None
    if resource.split(",")[0] in state.get("forbid", []):
        return forbidden(resource)
    if resource == "nodes":
        print(
            json.dumps(
                state.get("nodes") or {"items": [{"metadata": {"name": "gpu-1"}, "status": {"allocatable": {"nvidia.com/gpu": "1"}}}]}
            )
        )
        return 0
    if resource == "namespaces":
        return 0 if name in state.get("namespaces", []) else not_found("namespaces", name or "")
    if resource == "secrets":
        return 0 if name in state.get("secrets", []) else not_found("secrets", name or "")
    if name is None:
        items = []
        if resource == "pods":
            selector = argv[argv.index("-l") + 1] if "-l" in argv else ""
            if selector.startswith("job-name="):
                items = [{"metadata": {"name": f"{selector[9:]}-abcde"}, "status": {"phase": "Running"}}]
            elif "serve" in selector and state.get("serve_running"):
                items = [{"metadata": {"name": "lmdeploy-serve-1"}, "status": {"phase": "Running"}}]
        elif resource == "persistentvolumeclaims":
            items = [{"metadata": {"name": k.split("/")[1]}, "status": {"phase": "Bound"}} for k in objects if k.startswith(resource)]
        print(json.dumps({"items": items}))
        return 0
    key = f"{resource}/{name}"
    if key not in objects:
        return not_found(resource, name)
    obj = objects[key]
    if resource == "jobs":
        obj = job_json(state, name)
    elif resource == "deployments":
        replicas = obj["spec"].get("replicas", 1)
        obj = {**obj, "metadata": {**obj["metadata"], "generation": 1}}
        obj["status"] = {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas}
    elif resource == "persistentvolumeclaims":
        obj = {**obj, "status": {"phase": "Bound"}}
    elif resource == "pods":
        obj = {**obj, "status": {"phase": "Succeeded"}}
    print(json.dumps(obj))
    return 0


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["kustomize"]:
        return subprocess.call([os.environ["FAKE_REAL_KUBECTL"], *argv])
    stdin = sys.stdin.read() if not sys.stdin.isatty() else ""
    state = load()
    clean = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--context", "-n"):
            skip = True
            continue
        if a.startswith("--request-timeout"):
            continue
        clean.append(a)
    rc = answer(clean, stdin, state)
    docs = [d for d in yaml.safe_load_all(stdin) if d] if stdin.strip() else []
    call = {
        "argv": clean,
        "rc": rc,
        "stdin_kinds": [d["kind"] for d in docs],
        "stdin_api": [[d["apiVersion"], d["kind"]] for d in docs],
        "jobs": dict(state.get("job_states", {})),
    }
    with open(STATE_DIR / "calls.jsonl", "a") as f:
        f.write(json.dumps(call) + "\n")
    save(state)
    return rc


if __name__ == "__main__":
    sys.exit(main())
