"""`status`, `gpu` and `logs`: read what runs (pods, Jobs, endpoints, events) and the serving pods' GPUs."""

from __future__ import annotations

import argparse
import json
import subprocess
from typing import Any

from kit import exitcodes
from kit.cluster.checks import check_cluster
from kit.cluster.kubectl import Kubectl, last_line
from kit.k8s_params import SERVE
from kit.settings import Settings
from kit.table import text_table

SERVE_SELECTOR = f"app.kubernetes.io/name={SERVE},app.kubernetes.io/component=serve"
KIT_SELECTOR = "app.kubernetes.io/part-of=lmdeploy-kit"
GPU_REPORT = ["python", "-m", "clients.gpu_report", "--json"]


def _namespace(args: argparse.Namespace, s: Settings) -> str:
    return args.namespace or s.kubernetes.namespace


def serving_pods(k: Kubectl, ns: str) -> list[str]:
    pods = k.json("-n", ns, "get", "pods", "-l", SERVE_SELECTOR, "--field-selector=status.phase=Running")
    return [p["metadata"]["name"] for p in pods.get("items", [])]


def gpu_reports(k: Kubectl, ns: str) -> dict[str, Any]:
    """{pod: report JSON or {"error": ...}} from the GPU reporter inside each running serving pod."""
    out: dict[str, Any] = {}
    for pod in serving_pods(k, ns):
        proc = k.run("-n", ns, "exec", pod, "-c", "api-server", "--", *GPU_REPORT, timeout=30, check=False)
        if proc.returncode != 0:
            out[pod] = {"error": last_line(proc.stderr) or f"exit {proc.returncode}"}
            continue
        try:
            out[pod] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            out[pod] = {"error": "the GPU reporter did not print JSON"}
    return out


def gpu_table(reports: dict[str, Any]) -> str:
    """One row per GPU per pod; columns are the reporter's own keys (scalars only)."""
    rows: list[dict[str, Any]] = []
    for pod, rep in reports.items():
        if "error" in rep:
            rows.append({"pod": pod, "error": rep["error"]})
            continue
        gpus = rep.get("gpus", [rep]) if isinstance(rep, dict) else rep
        for g in gpus:
            rows.append({"pod": pod, **{key: v for key, v in g.items() if not isinstance(v, (dict, list))}})
    if not rows:
        return "no running serving pods"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    return text_table(cols, [[r.get(c, "") for c in cols] for r in rows])


def cmd_gpu(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    check_cluster(k)
    reports = gpu_reports(k, _namespace(args, s))
    print(json.dumps(reports, indent=2) if args.json else gpu_table(reports))
    failed = not reports or any("error" in r for r in reports.values() if isinstance(r, dict))
    return exitcodes.FAILED if failed else exitcodes.OK


def cmd_status(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    check_cluster(k)
    ns = _namespace(args, s)
    if args.json:
        data = {
            "namespace": ns,
            "objects": k.json("-n", ns, "get", "pods,jobs,services,endpoints,pvc", "-l", KIT_SELECTOR),
            "gpu": gpu_reports(k, ns),
        }
        print(json.dumps(data, indent=2))
        return exitcodes.OK
    sections = [
        ("Pods", ["get", "pods", "-l", KIT_SELECTOR, "-o", "wide"]),
        ("Jobs", ["get", "jobs", "-l", KIT_SELECTOR]),
        ("Services and endpoints", ["get", "services,endpoints", "-l", KIT_SELECTOR]),
        ("Model store", ["get", "pvc", "-l", KIT_SELECTOR]),
    ]
    for title, cmd in sections:
        print(f"== {title}")
        print(k.run("-n", ns, *cmd, check=False).stdout.rstrip() or "(none)")
    print("== Recent events")
    events = k.run("-n", ns, "get", "events", "--sort-by=.lastTimestamp", check=False).stdout.rstrip().splitlines()
    print("\n".join(events[:1] + events[-15:]) if events else "(none)")
    print("== GPU memory per serving pod")
    print(gpu_table(gpu_reports(k, ns)))
    return exitcodes.OK


def cmd_logs(args: argparse.Namespace, s: Settings, k: Kubectl) -> int:
    check_cluster(k)
    ns = _namespace(args, s)
    selector = f"app.kubernetes.io/component={args.component}"
    argv = k.cmd("-n", ns, "logs", "-l", selector, f"--tail={args.tail}", "--prefix", "--all-containers", "--max-log-requests=10")
    if args.follow:
        argv.append("--follow")
    return subprocess.call(argv)
