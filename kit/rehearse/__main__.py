"""`python -m kit.rehearse`: run the pods of a rendered overlay as local processes, in deploy order.

    python -m kit.rehearse --profile seed --model-source DIR [--until serve-started|ready] [--json]

Takes exactly what `kubectl kustomize k8s/overlays/<profile>` renders and plays kubelet. First
kit.cluster deploy's marker reader pod (no GPU, the store read-only) decides, as deploy does, which
Jobs must run: one whose completion marker is current starts no pod (--force-jobs runs it anyway).
The fetch and quantize Jobs run to completion (backoffLimit respected), then the serving Deployment's pod:
initContainers in order, the api_server with its rendered argv, startupProbe and readinessProbe
polled, preStop on stop. Details of what is faithful and what is not: kit/rehearse/kubelet.py and
k8s/README.md ("Rehearsal").

What the rehearsal changes, and says so: the mounted settings.yaml copy gets `model.source` (the
--model-source folder, pre-loaded onto the model store as an operator would), and on a machine
without a GPU the CPU AWQ preset (quantization.device=cpu, dtype=float16, 4x128 calibration tokens);
plus any --set. The rendered objects (argv, env, markers, mounts) stay as rendered.

--until serve-started (default without a GPU): success once the serving container started with
its rendered argv and either got ready or stopped where lmdeploy needs a GPU (api_server sizes its
batch from torch.cuda). --until ready (default with a GPU): the probes must pass; --then runs a
command against the ready server (OPENAI_BASE_URL / OPENAI_API_KEY set), --hold-s keeps it up.

Findings (exit 1, reported separately from pod failures): a Secret value in any process's
/proc/<pid>/cmdline.

Exit codes: 0 ok, 1 a pod failed (which container, why, log tail) or a finding, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets as pysecrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from kit import exitcodes, markers
from kit.deploy_plan import decide_stage, deploy_steps, marker_reader_pod, markers_by_stage
from kit.k8s_params import OVERLAYS_DIR, SERVE
from kit.logs import add_verbosity, setup_logging
from kit.rehearse import sandbox
from kit.rehearse.kubelet import (
    Host,
    PodFailed,
    PodRun,
    Runtime,
    cleanup_pod,
    new_pod,
    run_init_containers,
    settings_override,
    start_main,
    stop_pod,
    wait_probe,
)
from kit.settings import REPO_ROOT, Settings, SettingsError, load_settings

log = logging.getLogger("kit.rehearse")

UNTIL = ("serve-started", "ready")
# Quantize a tiny model on the CPU (the job tests' preset).
CPU_AWQ = {"quantization.device": "cpu", "quantization.dtype": "float16", "quantization.calib_samples": 4, "quantization.calib_seqlen": 128}
SOURCE_DIR = ".rehearse-source"
# Where lmdeploy stops on a machine without a GPU: api_server sizes its batch from torch.cuda
# (unless --max-batch-size is given), then picks the engine: TurboMind is a CUDA extension, so a
# CPU install falls back to the PyTorch engine, which the deployment never runs.
NEEDS_GPU = (
    "Torch not compiled with CUDA enabled",
    "Fallback to pytorch engine because turbomind is not built",
    "Found no NVIDIA driver on your system",
    "No CUDA GPUs are available",
)
MIN_SECRET_LEN = 8


class UsageError(Exception):
    pass


class NeedsGpu(Exception):
    """The serving container reached the point where lmdeploy needs a GPU (message: the log line)."""


def needs_gpu(lines: list[str]) -> str | None:
    return next((sig for line in lines for sig in NEEDS_GPU if sig in line), None)


# ---------------------------------------------------------------------------------------------- order


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


def rendered_settings(text: str, workdir: Path, name: str = "rendered-settings.yaml") -> Settings:
    """The Settings the pods load from a mounted settings.yaml (as rendered, or the rehearsal's copy)."""
    path = workdir / name
    path.write_text(text)
    profiles = list((yaml.safe_load(text) or {}).get("profiles") or {})
    try:
        return load_settings(profiles[0] if profiles else None, path)
    except SettingsError as exc:
        raise UsageError(f"the rendered settings.yaml does not load: {exc}") from None


# ---------------------------------------------------------------------------------------------- inputs


def render(overlay: Path) -> list[dict[str, Any]]:
    kubectl = REPO_ROOT / ".venv/bin/kubectl"
    binary = os.environ.get("KIT_KUBECTL") or (str(kubectl) if kubectl.exists() else shutil.which("kubectl"))
    if not binary:
        raise UsageError("kubectl (with kustomize) not found: run `make venv` or set KIT_KUBECTL")
    proc = subprocess.run([binary, "kustomize", str(overlay)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise UsageError(f"kustomize build {overlay} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def config_maps(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: dict(d.get("data") or {}) for d in docs if d["kind"] == "ConfigMap"}


def settings_map(cms: dict[str, dict[str, str]]) -> str:
    """The ConfigMap holding settings.yaml (mounted at /etc/lmdeploy-kit)."""
    names = [n for n, data in cms.items() if "settings.yaml" in data]
    if len(names) != 1:
        raise UsageError(f"expected one ConfigMap with settings.yaml among the rendered objects, found {names}")
    return names[0]


def pvc_mount_path(docs: list[dict[str, Any]]) -> str:
    """The in-pod mountPath of the model store (the PVC), from the first pod that mounts it."""
    for d in docs:
        spec = ((d.get("spec") or {}).get("template") or {}).get("spec") or {}
        claims = {v["name"] for v in spec.get("volumes") or [] if "persistentVolumeClaim" in v}
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            for vm in c.get("volumeMounts") or []:
                if vm["name"] in claims:
                    return vm["mountPath"]
    raise UsageError("no rendered pod mounts the model PVC")


def load_secrets(path: Path | None, api_key_secret: str, workdir: Path) -> tuple[dict[str, dict[str, str]], Path]:
    """The secrets file ({name: {key: value}}) or a generated API key (written 0600 into workdir)."""
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"secrets file {path}: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise UsageError(f"secrets file {path} must map Secret name -> {{key: value}}")
        return {str(k): {str(kk): str(vv) for kk, vv in v.items()} for k, v in data.items()}, path
    data = {api_key_secret: {"api-key": pysecrets.token_hex(24)}}
    out = workdir / "secrets.yaml"
    out.touch(mode=0o600)
    out.write_text(yaml.safe_dump(data))
    return data, out


def has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


def choose_isolation(requested: str, workdir: Path) -> tuple[str, str]:
    """('mountns' | 'prefix', why): try a trivial sandboxed process when auto."""
    if requested == "prefix":
        return "prefix", "asked for"
    if os.geteuid() != 0:
        if requested == "mountns":
            raise UsageError("--isolation mountns needs root (mount namespaces and bind mounts)")
        return "prefix", "not root: no mount namespace"
    probe = workdir / ".isolation-probe"
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "root").mkdir(exist_ok=True)
    spec = {
        "argv": ["sh", "-c", "test -d /rehearse-probe"],
        "env": {"PATH": "/usr/bin:/bin"},
        "cwd": "/",
        "uid": 65534,
        "gid": 65534,
        "groups": [],
        "readonly_root": True,
        "scratch": str(probe / "root"),
        "mounts": [{"target": "/rehearse-probe", "source": str(probe), "readonly": True}],
    }
    proc = sandbox.run_once(spec, REPO_ROOT)
    shutil.rmtree(probe, ignore_errors=True)
    if proc.returncode == 0:
        return "mountns", "private mount namespace, bind mounts at the real mountPaths, runAsUser applied"
    why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    if requested == "mountns":
        raise UsageError(f"--isolation mountns: the sandbox does not work here: {why}")
    return "prefix", f"mount namespace unavailable ({why}): host folders, paths rewritten, runAsUser not applied"


# ---------------------------------------------------------------------------------------------- findings


class CmdlineWatch(threading.Thread):
    """Scans every process's /proc/<pid>/cmdline for Secret values while the rehearsal runs."""

    def __init__(self, values: dict[str, str], redact: Any) -> None:
        super().__init__(name="cmdline-watch", daemon=True)
        self.values = {label: v for label, v in values.items() if len(v) >= MIN_SECRET_LEN}
        self.redact = redact
        self.findings: dict[str, dict[str, Any]] = {}
        self.stopped = threading.Event()
        self.scans = 0

    def scan(self) -> None:
        self.scans += 1
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            for label, value in self.values.items():
                if label not in self.findings and value.encode() in raw:
                    argv = [self.redact(a) for a in raw.decode(errors="replace").split("\0") if a]
                    self.findings[label] = {
                        "check": "secret-in-cmdline",
                        "secret": label,
                        "pid": int(entry.name),
                        "process": " ".join(argv)[:300],
                        "why": "any local user can read /proc/<pid>/cmdline (and `ps`, crash reports, audit logs); "
                        "pass the value by environment or a mounted file (issue 15 item 6)",
                    }

    def run(self) -> None:
        while not self.stopped.wait(0.3):
            self.scan()


# ---------------------------------------------------------------------------------------------- rehearsal


class Rehearsal:
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
        cms = config_maps(self.docs)
        settings_cm = settings_map(cms)
        self.settings = rendered_settings(cms[settings_cm]["settings.yaml"], self.workdir)
        values, secrets_file = load_secrets(args.secrets, self.settings.serving.api_key_secret, self.workdir)
        self.report["secrets_file"] = str(secrets_file)
        label_of = {v: f"{name}/{key}" for name, kv in values.items() for key, v in kv.items() if v}

        def redact(text: str) -> str:
            for value, label in label_of.items():
                if len(value) >= MIN_SECRET_LEN and value in text:
                    text = text.replace(value, f"<secret {label}>")
            return text

        mode, why = choose_isolation(args.isolation, self.workdir)
        self.say(f"isolation: {mode} ({why})")
        store = Path(args.store).resolve() if args.store else self.workdir / "pvc"
        store.mkdir(parents=True, exist_ok=True)
        overrides: dict[str, Any] = {}
        mount = pvc_mount_path(self.docs)
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
        gpu = has_gpu()
        if args.cpu_awq or (args.cpu_awq is None and not gpu):
            overrides.update(CPU_AWQ)
        for item in args.set:
            key, _, raw = item.partition("=")
            overrides[key.strip()] = yaml.safe_load(raw) if raw else ""
        if overrides:
            cms[settings_cm] = {**cms[settings_cm], "settings.yaml": settings_override(cms[settings_cm]["settings.yaml"], overrides)}
            self.say("mounted settings.yaml copy overrides: " + ", ".join(f"{k}={v}" for k, v in overrides.items()))
        self.pod_settings = rendered_settings(cms[settings_cm]["settings.yaml"], self.workdir, "mounted-settings.yaml")
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

    # -- steps

    def run_job(self, rt: Runtime, job: dict[str, Any], step: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        spec = job["spec"]
        backoff = int(spec.get("backoffLimit", 6))
        deadline = time.monotonic() + min(float(spec.get("activeDeadlineSeconds") or 1e9), self.args.job_timeout)
        step["backoff_limit"] = backoff
        failures = 0
        while True:
            pod = new_pod(rt.host, name, spec["template"], rt)
            self.pods.append(pod)
            self.say(f"job/{name}: pod {pod.name} (attempt {failures + 1} of {backoff + 1})")
            try:
                try:
                    run_init_containers(pod, self.tick)
                    runs = start_main(pod)
                    for run, _c in runs:
                        left = deadline - time.monotonic()
                        if rt.wait(run, max(left, 0)) is None:
                            raise PodFailed(f"job/{name} passed its deadline ({self.args.job_timeout:.0f} s here)", run.name, run.tail())
                    bad = [r for r, _ in runs if r.exit_code != 0]
                    if bad:
                        raise PodFailed(f"container {bad[0].name} exited with code {bad[0].exit_code}", bad[0].name, bad[0].tail())
                finally:
                    stop_pod(pod)
                    step["pods"].append(pod.summary())
                    cleanup_pod(pod)
            except PodFailed as exc:
                failures += 1
                step["pods"][-1]["failure"] = exc.reason
                self.say(f"job/{name}: pod {pod.name} failed: {exc.reason}")
                if failures > backoff or time.monotonic() > deadline or self.args.no_retry:
                    step["status"] = "Failed"
                    raise PodFailed(
                        f"job/{name} failed ({failures} pod(s), backoffLimit {backoff}): {exc.reason}", exc.container, exc.tail
                    ) from None
                time.sleep(self.args.backoff_s * 2 ** (failures - 1))
                continue
            step["status"] = "Complete"
            self.say(f"job/{name} complete ({failures} failed pod(s) before)")
            return

    def read_markers(self, rt: Runtime) -> dict[str, str]:
        """kit.cluster deploy's re-deploy decision: its marker reader pod (no GPU, the PVC read-only) prints the
        markers, kit.deploy_plan.decide_stage judges them. Returns {stage: why its Job is not run}."""
        pod_doc = marker_reader_pod(self.pod_settings, self.docs, "lmdeploy-markers")
        pod = new_pod(rt.host, pod_doc["metadata"]["name"], pod_doc, rt)
        self.pods.append(pod)
        step: dict[str, Any] = {"kind": "Pod", "name": pod_doc["metadata"]["name"], "pods": []}
        self.report["steps"].append(step)
        try:
            (run, _c), *_ = start_main(pod)
            code = rt.wait(run, float(pod_doc["spec"].get("activeDeadlineSeconds", 600)))
            if code != 0:
                raise PodFailed(f"the marker reader exited with {code}", run.name, run.tail())
            shown = json.loads(run.lines[-1])
        except (ValueError, IndexError):
            raise PodFailed("the marker reader printed no JSON", "markers", run.tail()) from None
        finally:
            stop_pod(pod)
            step["pods"].append(pod.summary())
            cleanup_pod(pod)
        found = markers_by_stage(self.pod_settings, shown)
        decisions = [decide_stage(self.pod_settings, stage, found) for stage in markers.STAGES]
        step["decisions"] = {d.stage: {"run": d.run, "reason": d.reason} for d in decisions}
        for d in decisions:
            self.say(f"markers: {d.stage}: {'run' if d.run else 'skip'} ({d.reason})")
        return {d.stage: d.reason for d in decisions if not d.run}

    def run_serve(self, rt: Runtime, dep: dict[str, Any], step: dict[str, Any]) -> None:
        name = dep["metadata"]["name"]
        step.update({"replicas_rendered": dep["spec"].get("replicas", 1), "serve_started": False})
        pod = new_pod(rt.host, name, dep["spec"]["template"], rt)
        self.pods.append(pod)
        self.say(f"deployment/{name}: pod {pod.name} (one replica rehearsed)")
        try:
            run_init_containers(pod, self.tick)
            runs = start_main(pod)
            step["serve_started"] = True
            run, c = runs[0]
            self.check_served_path(rt, run, pod, step)

            def watch() -> None:
                sig = needs_gpu(run.lines)
                if sig and self.args.until == "serve-started":
                    raise NeedsGpu(sig)

            try:
                if c.get("startupProbe"):
                    t = wait_probe(rt, run, c, c["startupProbe"], "startupProbe", watch)
                    step["startup_probe_passed_s"] = t
                    self.say(f"deployment/{name}: startupProbe passed {t:.1f} s after start")
                if c.get("readinessProbe"):
                    t = wait_probe(rt, run, c, c["readinessProbe"], "readinessProbe", watch)
                    step["ready_s"] = t
                    self.say(f"deployment/{name}: ready {t:.1f} s after start")
            except NeedsGpu as stop:
                step.update({"outcome": "needs-gpu", "needs_gpu": str(stop), "stopped_after_s": round(time.monotonic() - run.started, 1)})
                self.say(
                    f"deployment/{name}: {run.name} reached the point where lmdeploy needs a GPU ({stop}); stopping it (--until serve-started)"
                )
                rt.stop(run, 5)  # not a deletion: the rehearsal ends the container, no preStop
                return
            except PodFailed as exc:
                sig = needs_gpu(run.lines)
                hint = f" (lmdeploy needs a GPU: {sig!r})" if sig else ""
                raise PodFailed(exc.reason + hint, exc.container, exc.tail) from None
            step["outcome"] = "ready"
            self.after_ready(rt, run, c, step)
        finally:
            stop_pod(pod)
            step["pods"].append(pod.summary())
            cleanup_pod(pod)

    def check_served_path(self, rt: Runtime, run: Any, pod: PodRun, step: dict[str, Any]) -> None:
        """The model folder in the api_server argv must hold a model *as the container sees it*.

        On a machine without a GPU lmdeploy stops (TurboMind is a CUDA extension) before it reads the
        folder, so a volumeMount that does not match the argv would go unnoticed without this.
        """
        if "api_server" not in run.argv[:-1]:
            return
        served = run.argv[run.argv.index("api_server") + 1]
        missing = [rel for rel in ("config.json", markers.FILE_NAME) if not rt.exists_in_view(run, f"{served}/{rel}", pod.dir)]
        step["served_path"] = {"path": served, "missing": missing}
        if missing:
            raise PodFailed(
                f"container {run.name} serves {served}, but {', '.join(missing)} is not there as the container sees it "
                "(volumeMounts vs the api_server argv)",
                run.name,
            )
        self.say(f"{run.name}: {served} holds config.json and {markers.FILE_NAME} as the container sees it")

    def after_ready(self, rt: Runtime, run: Any, c: dict[str, Any], step: dict[str, Any]) -> None:
        port = next((p["containerPort"] for p in c.get("ports") or [] if p.get("name") == "http"), None)
        base = f"http://127.0.0.1:{port}/v1"
        env = {**os.environ, "OPENAI_BASE_URL": base}
        key = (rt.host.secrets.get(self.settings.serving.api_key_secret) or {}).get("api-key")
        if key:
            env["OPENAI_API_KEY"] = key  # a client pod would mount the same Secret
        self.say(f"serving at {base} (API key: secrets file {self.report['secrets_file']})")
        step["then"] = []
        for cmd in self.args.then:
            self.say(f"then: {cmd}")
            began = time.monotonic()
            proc = subprocess.run(cmd, shell=True, env=env, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
            out = rt.host.redact((proc.stdout + proc.stderr).strip())
            for line in out.splitlines()[-40:]:
                self.echo(f"  > {line[:300]}")
            step["then"].append(
                {"command": cmd, "exit_code": proc.returncode, "seconds": round(time.monotonic() - began, 2), "output": out[-4000:]}
            )
        for cmd in self.args.exec:
            self.say(f"exec in {run.name}: {cmd}")
            began = time.monotonic()
            code, out = rt.exec_in(run, ["sh", "-c", cmd], 120)
            out = rt.host.redact(out)
            for line in out.splitlines()[-40:]:
                self.echo(f"  > {line[:300]}")
            step["then"].append({"exec": cmd, "exit_code": code, "seconds": round(time.monotonic() - began, 2), "output": out[-4000:]})
        if self.args.hold_s:
            self.say(f"holding the server for {self.args.hold_s:.0f} s")
            end = time.monotonic() + self.args.hold_s
            while time.monotonic() < end and rt.poll(run) is None:
                time.sleep(0.5)

    def tick(self) -> None:
        """Called while waiting on processes; nothing periodic besides the cmdline watch today."""

    def run(self) -> int:
        host, watch = self.setup()
        rt = Runtime(host)
        _, needed, _ = deploy_order(self.docs, self.settings)
        missing = [name for name in needed if name not in host.secrets]
        if missing:
            raise UsageError(f"Secret {missing[0]} is not in the secrets file {self.report['secrets_file']} (make deploy stops here too)")
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


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kit.rehearse", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=os.environ.get("PROFILE") or "default", help="overlay k8s/overlays/PROFILE (env PROFILE)")
    p.add_argument("--overlay", help="an overlay folder instead of the profile's")
    p.add_argument("--rendered", type=Path, help="objects already rendered by `kubectl kustomize` (a machine without kubectl)")
    p.add_argument("--secrets", type=Path, help="YAML {secret-name: {key: value}}; default: a generated API key (written to the workdir)")
    p.add_argument("--model-source", help="local model folder the fetch Job fetches (pre-loaded onto the model store)")
    p.add_argument("--until", choices=UNTIL, help="serve-started (default without a GPU) or ready (default with one)")
    p.add_argument("--workdir", help="where pods, logs and (without --store) the model store live (default: a new temp folder)")
    p.add_argument("--store", help="the PVC's folder (share it between rehearsals to reuse fetched/quantized models)")
    p.add_argument("--isolation", choices=("auto", "mountns", "prefix"), default="auto", help="mount namespace or path rewriting")
    p.add_argument("--venv", help="the environment standing in for the image's /opt/venv (default: this Python's)")
    cpu = p.add_mutually_exclusive_group()
    cpu.add_argument("--cpu-awq", dest="cpu_awq", action="store_true", default=None, help="CPU AWQ preset (default without a GPU)")
    cpu.add_argument("--no-cpu-awq", dest="cpu_awq", action="store_false", help="keep the rendered quantization settings")
    p.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override the mounted settings copy (repeatable)"
    )
    p.add_argument("--init-timeout", type=float, default=60.0, help="seconds an initContainer may take (default 60)")
    p.add_argument("--job-timeout", type=float, default=1800.0, help="cap on a Job's activeDeadlineSeconds (default 1800)")
    p.add_argument("--backoff-s", type=float, default=1.0, help="first retry delay of a failed Job pod, doubling (kube: 10 s)")
    p.add_argument("--no-retry", action="store_true", help="fail a Job at its first failed pod")
    p.add_argument("--force-jobs", action="store_true", help="run the Jobs even when their markers are current (kit.cluster --force-jobs)")
    p.add_argument("--then", action="append", default=[], metavar="CMD", help="shell command to run against the ready server (repeatable)")
    p.add_argument(
        "--exec",
        action="append",
        default=[],
        metavar="CMD",
        help="`sh -c CMD` inside the ready serving container, as kubectl exec (repeatable)",
    )
    p.add_argument("--hold-s", type=float, default=0.0, help="keep the ready server up this long before stopping it")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    add_verbosity(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.until is None:
        args.until = "ready" if has_gpu() else "serve-started"
    overlay = Path(args.overlay) if args.overlay else REPO_ROOT / OVERLAYS_DIR / args.profile
    if args.rendered is not None and not args.rendered.is_file():
        print(f"error: --rendered {args.rendered} does not exist", file=sys.stderr)
        return exitcodes.USAGE
    if args.rendered is None and not (overlay / "kustomization.yaml").is_file():
        print(f"error: no overlay at {overlay} (profiles: default, seed, fc, multi-gpu)", file=sys.stderr)
        return exitcodes.USAGE
    if args.model_source and not (Path(args.model_source) / "config.json").is_file():
        print(f"error: --model-source {args.model_source} is not a model folder (no config.json)", file=sys.stderr)
        return exitcodes.USAGE
    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix=f"rehearse-{args.profile}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    try:
        docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d] if args.rendered else render(overlay)
        reh = Rehearsal(args, docs, workdir)
        code = reh.run()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return exitcodes.FAILED
    (workdir / "report.json").write_text(json.dumps(reh.report, indent=2) + "\n")
    if args.json:
        print(json.dumps(reh.report, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
