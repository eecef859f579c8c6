"""The rehearsal itself: kit.cluster deploy's steps played as local pods, in deploy order, into one report.

Rehearsal prepares the host (settings copy, secrets, isolation, model store), runs the marker reader
pod, the Jobs (kit.rehearse.job_steps) and the serving pod (kit.rehearse.serve_step), watches every
process's argv for Secret values (kit.rehearse.findings) and fills `report`. A failed pod ends the
rehearsal with exit 1 and says which container failed and why.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from kit import exitcodes
from kit.deploy_plan import deploy_steps
from kit.k8s_params import SERVE
from kit.rehearse import inputs
from kit.rehearse.findings import CmdlineWatch, redactor
from kit.rehearse.host import Host, PodFailed
from kit.rehearse.job_steps import JobSteps
from kit.rehearse.kubelet import PodRun, stop_pod
from kit.rehearse.runtime import Runtime
from kit.rehearse.serve_step import ServeStep
from kit.settings import REPO_ROOT, Settings

# Quantize a tiny model on the CPU (the job tests' preset).
CPU_AWQ = {"quantization.device": "cpu", "quantization.dtype": "float16", "quantization.calib_samples": 4, "quantization.calib_seqlen": 128}
SOURCE_DIR = ".rehearse-source"


def deploy_order(
    docs: list[dict[str, Any]], settings: Settings, skip: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """kit.cluster deploy's own steps (kit.deploy_plan.deploy_steps): the pods to rehearse in order.

    Returns (Jobs and the serving Deployment in deploy order, Secrets the deploy checks for, notes on
    what is not rehearsed). `skip` maps a stage whose marker on the store is current to the reason, as
    kit.cluster deploy decides it: that Job starts no pod, as on a cluster.
    """
    order: list[dict[str, Any]] = []
    secrets: list[str] = []
    notes: list[str] = []
    for step in deploy_steps(settings, docs, skip):
        if step.action == "secrets":
            secrets += step.secrets
        elif step.action == "job" and step.skip:
            notes.append(f"job/{step.target}: not run, {step.skip}")
        elif step.action == "job":
            order.append(step.objects[0])
        elif step.action == "rollout":
            dep = step.objects[0]
            if dep["metadata"]["name"] == SERVE:
                order.append(dep)
            else:
                notes.append(f"{dep['kind'].lower()}/{dep['metadata']['name']}: not rehearsed (not on the model path)")
    return order, secrets, notes


class Rehearsal(JobSteps, ServeStep):
    """One rehearsal of the rendered objects `docs` (args: the parsed CLI options), its pods and report."""

    def __init__(self, args: argparse.Namespace, docs: list[dict[str, Any]], workdir: Path) -> None:
        self.args = args
        self.docs = docs
        self.workdir = workdir
        self.t0 = time.monotonic()
        self.report: dict[str, Any] = {"profile": args.profile, "workdir": str(workdir), "steps": [], "findings": [], "failure": None}
        self.pods: list[PodRun] = []

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(f"[rehearse {time.monotonic() - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    def echo(self, text: str) -> None:
        if self.args.verbose or not self.args.quiet:
            print(text[:300], file=sys.stderr, flush=True)

    # -- setup

    def setup(self) -> tuple[Host, CmdlineWatch]:
        args = self.args
        cms = inputs.config_maps(self.docs)
        settings_cm = inputs.settings_map(cms)
        self.settings = inputs.rendered_settings(cms[settings_cm]["settings.yaml"], self.workdir)
        values, secrets_file = inputs.load_secrets(args.secrets, self.settings.serving.api_key_secret, self.workdir)
        self.report["secrets_file"] = str(secrets_file)
        label_of = {v: f"{name}/{key}" for name, kv in values.items() for key, v in kv.items() if v}
        redact = redactor(label_of)

        mode, why = inputs.choose_isolation(args.isolation, self.workdir)
        self.say(f"isolation: {mode} ({why})")
        store = Path(args.store).resolve() if args.store else self.workdir / "pvc"
        store.mkdir(parents=True, exist_ok=True)
        overrides: dict[str, Any] = {}
        mount = inputs.pvc_mount_path(self.docs)
        in_pod_store = str(store) if mode == "prefix" else mount
        if mode == "prefix":
            overrides["storage.models_root"] = str(store)
        if args.model_source:
            src = Path(args.model_source).resolve()
            dest = store / SOURCE_DIR / src.name
            if not dest.exists():
                shutil.copytree(src, dest)
            overrides["model.source"] = f"{in_pod_store}/{SOURCE_DIR}/{src.name}"
            self.say(f"model source {src}: pre-loaded onto the model store at {mount}/{SOURCE_DIR}/{src.name}")
        gpu = inputs.has_gpu()
        if args.cpu_awq or (args.cpu_awq is None and not gpu):
            overrides.update(CPU_AWQ)
        for item in args.set or []:
            key, _, raw = item.partition("=")
            overrides[key.strip()] = yaml.safe_load(raw) if raw else ""
        if overrides:
            cms[settings_cm] = {**cms[settings_cm], "settings.yaml": inputs.settings_override(cms[settings_cm]["settings.yaml"], overrides)}
            self.say("mounted settings.yaml copy overrides: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
        self.pod_settings = inputs.rendered_settings(cms[settings_cm]["settings.yaml"], self.workdir, "mounted-settings.yaml")
        self.report.update({"isolation": mode, "isolation_why": why, "store": str(store), "settings_overrides": overrides, "gpu": gpu})
        host = Host(
            repo=REPO_ROOT,
            venv=Path(args.venv).resolve() if args.venv else Path(sys.prefix),
            workdir=self.workdir,
            store=store,
            secrets=values,
            config_maps=cms,
            mode=mode,
            echo=self.echo,
            redact=redact,
            init_timeout_s=args.init_timeout,
        )
        watch = CmdlineWatch({label: v for v, label in label_of.items()}, redact)
        return host, watch

    def tick(self) -> None:
        """Called while waiting on processes; nothing periodic besides the cmdline watch today."""

    def run(self) -> int:
        host, watch = self.setup()
        rt = Runtime(host)
        _, needed, _ = deploy_order(self.docs, self.settings)
        missing = [name for name in needed if name not in host.secrets]
        if missing:
            raise inputs.UsageError(
                f"Secret {missing[0]} is not in the secrets file {self.report['secrets_file']} (make deploy stops here too)"
            )
        watch.start()
        code = exitcodes.OK
        try:
            skip = {} if self.args.force_jobs else self.read_markers(rt)
            order, _, skipped = deploy_order(self.docs, self.settings, skip)
            for note in skipped:
                self.say(note)
            self.report["skipped"] = skipped
            self.report["order"] = [f"{d['kind'].lower()}/{d['metadata']['name']}" for d in order]
            self.say("order: " + " -> ".join(self.report["order"]))
            for obj in order:
                step: dict[str, Any] = {"kind": obj["kind"], "name": obj["metadata"]["name"], "pods": []}
                self.report["steps"].append(step)
                (self.run_job if obj["kind"] == "Job" else self.run_serve)(rt, obj, step)
        except PodFailed as exc:
            self.report["failure"] = {"reason": exc.reason, "container": exc.container, "log_tail": exc.tail}
            self.say(f"FAILED: {exc.reason}")
            if exc.tail:
                for line in exc.tail.splitlines()[-15:]:
                    print(f"    {line[:300]}", file=sys.stderr)
            code = exitcodes.FAILED
        finally:
            for pod in self.pods:
                stop_pod(pod)
            watch.stopped.set()
            watch.join(timeout=5)
            watch.scan()
        self.report["findings"] = list(watch.findings.values())
        self.report["cmdline_scans"] = watch.scans
        for f in self.report["findings"]:
            self.say(f"FINDING {f['check']}: {f['secret']} in pid {f['pid']}'s argv: {f['process'][:160]}")
        if self.report["findings"] and code == exitcodes.OK:
            code = exitcodes.FAILED
        self.report["status"] = "ok" if self.report["failure"] is None else "failed"
        self.report["seconds"] = round(time.monotonic() - self.t0, 1)
        if self.report["failure"] is None:
            self.say(f"rehearsal of profile {self.args.profile} passed (--until {self.args.until}) in {self.report['seconds']:.0f} s")
        return code
