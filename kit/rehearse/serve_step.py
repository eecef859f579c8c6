"""The serving Deployment's step of a rehearsal: one replica's pod, its probes, and what runs against it.

ServeStep is mixed into kit.rehearse.rehearsal.Rehearsal and uses its state (declared below).
initContainers, then the api_server with its rendered argv; the served folder is checked as the
container sees it; startupProbe and readinessProbe are polled. With --until serve-started a log line
saying lmdeploy needs a GPU ends the step with success; once ready, --then/--exec/--hold-s run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from kit import markers
from kit.rehearse.host import PodFailed
from kit.rehearse.kubelet import PodRun, cleanup_pod, new_pod, run_init_containers, start_main, stop_pod
from kit.rehearse.probes import wait_probe
from kit.rehearse.runtime import Runtime
from kit.settings import REPO_ROOT, Settings

# Where lmdeploy stops on a machine without a GPU: api_server sizes its batch from torch.cuda
# (unless --max-batch-size is given), then picks the engine: TurboMind is a CUDA extension, so a
# CPU install falls back to the PyTorch engine, which the deployment never runs.
NEEDS_GPU = (
    "Torch not compiled with CUDA enabled",
    "Fallback to pytorch engine because turbomind is not built",
    "Found no NVIDIA driver on your system",
    "No CUDA GPUs are available",
)


class NeedsGpu(Exception):
    """The serving container reached the point where lmdeploy needs a GPU (message: the log line)."""


def needs_gpu(lines: list[str]) -> str | None:
    return next((sig for line in lines for sig in NEEDS_GPU if sig in line), None)


class ServeStep:
    """run_serve (with check_served_path and after_ready) of a Rehearsal."""

    args: argparse.Namespace
    settings: Settings
    pods: list[PodRun]
    report: dict[str, Any]
    say: Callable[[str], None]
    echo: Callable[[str], None]
    tick: Callable[[], None]

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
