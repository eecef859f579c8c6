"""`python -m kit.rehearse`: run the pods of a rendered overlay as local processes, in deploy order.

    python -m kit.rehearse --profile seed --model-source DIR [--until serve-started|ready] [--json]
    (the console script lmdeploy-kit-rehearse is the same command)

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

Exit codes: 0 ok, 1 a pod failed (which container, why, log tail) or a finding, 2 bad arguments or settings,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

from kit.entry import SETTINGS_ENV_HELP, add_settings_options, run, settings_from
from kit.k8s_params import OVERLAYS_DIR
from kit.rehearse.inputs import UsageError, has_gpu, render
from kit.rehearse.rehearsal import Rehearsal
from kit.settings import REPO_ROOT

UNTIL = ("serve-started", "ready")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kit.rehearse",
        description=__doc__,
        epilog="--profile also picks the overlay k8s/overlays/PROFILE; --set changes the pods' mounted settings.yaml copy.\n"
        f"{SETTINGS_ENV_HELP}, KIT_KUBECTL (kubectl with kustomize)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_options(p, settings_file=False)
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
    return p


def check_args(args: argparse.Namespace) -> Path:
    """The overlay to render; a missing input is a usage error before anything starts."""
    overlay = Path(args.overlay) if args.overlay else REPO_ROOT / OVERLAYS_DIR / args.profile
    if args.rendered is not None and not args.rendered.is_file():
        raise UsageError(f"--rendered {args.rendered} does not exist")
    if args.rendered is None and not (overlay / "kustomization.yaml").is_file():
        raise UsageError(f"no overlay at {overlay} (profiles: default, seed, fc, multi-gpu)")
    if args.model_source and not (Path(args.model_source) / "config.json").is_file():
        raise UsageError(f"--model-source {args.model_source} is not a model folder (no config.json)")
    return overlay


def rehearse(args: argparse.Namespace) -> int:
    # The profile (flag, env PROFILE, default) and each --set must load as settings before a pod starts.
    args.profile = settings_from(args).profile
    if args.until is None:
        args.until = "ready" if has_gpu() else "serve-started"
    overlay = check_args(args)
    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix=f"rehearse-{args.profile}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d] if args.rendered else render(overlay)
    reh = Rehearsal(args, docs, workdir)
    code = reh.run()
    (workdir / "report.json").write_text(json.dumps(reh.report, indent=2) + "\n")
    if args.json:
        print(json.dumps(reh.report, indent=2))
    return code


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), rehearse, argv)


if __name__ == "__main__":
    sys.exit(main())
