"""Build (and push) the kit's container images with docker or podman: `make images`.

Tags, bases and versions all come from settings.yaml (kit.render.image_ref, images.*,
versions.*, provision.torch_index_url), so the manifests reference exactly what is built.

Environment: PROFILE (settings profile), KIT_SETTINGS (settings file),
KIT_IMAGES_ENGINE (docker|podman; default: whichever is present and working).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: `python images/build.py`
    sys.path.insert(0, str(REPO_ROOT))

from kit import exitcodes  # noqa: E402
from kit.entry import KitError, add_settings_options, run, settings_from  # noqa: E402
from kit.render import image_ref  # noqa: E402
from kit.settings import Settings, SettingsError  # noqa: E402

log = logging.getLogger("kit.images")

IMAGES = ("runtime", "client")
ENGINES = ("docker", "podman")


class BuildError(KitError):
    """A build precondition or step failed; the message is the one line the user sees."""


@dataclass
class ImagePlan:
    name: str
    ref: str
    dockerfile: str
    base: str
    build_args: dict[str, str] = field(default_factory=dict)


def _with_digest(ref: str, digest: str) -> str:
    return f"{ref}@{digest}" if digest else ref


def plan_images(s: Settings, names: list[str], variant: str = "cuda", extra_args: dict[str, str] | None = None) -> list[ImagePlan]:
    """What to build: tag, Dockerfile, base and build args per image, all from the settings."""
    v, im = s.versions, s.images
    plans = []
    for name in names:
        ref = image_ref(s, name).split("@", 1)[0]  # the digest is the registry's answer, not a tag
        if name == "runtime":
            if variant == "cpu":
                ref += "-cpu"  # never mistaken for the CUDA image
            base = _with_digest(im.cuda_base, im.cuda_base_digest)
            args = {
                "CUDA_BASE": base,
                "PYTHON_VERSION": v.python,
                "LMDEPLOY_VERSION": v.lmdeploy,
                "TORCH_VERSION": v.torch,
                "TRANSFORMERS_VERSION": v.transformers,
                "TORCH_INDEX_URL": s.provision.torch_index_url,
                "VARIANT": variant,
                "KIT_VERSION": im.kit_version,
            }
        else:
            base = _with_digest(im.python_base, im.python_base_digest)
            args = {
                "PYTHON_BASE": base,
                "PYTHON_VERSION": v.python,
                "LMDEPLOY_VERSION": v.lmdeploy,
                "KIT_VERSION": im.kit_version,
            }
        args.update({k: val for k, val in (extra_args or {}).items() if k in args})
        plans.append(ImagePlan(name, ref, f"images/{name}/Dockerfile", base, args))
    return plans


def find_engine(wanted: str | None) -> str:
    """docker when its daemon answers, else podman; `wanted` forces one."""
    candidates = [wanted] if wanted else list(ENGINES)
    notes = []
    for engine in candidates:
        if shutil.which(engine) is None:
            notes.append(f"{engine} not found on PATH")
            continue
        if engine == "docker":
            probe = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
            if probe.returncode != 0:
                notes.append("docker is installed but its daemon does not answer (`docker info` failed)")
                continue
        return engine
    hint = "install podman or docker" if not wanted else f"install {wanted} or pick the other with --engine"
    raise BuildError(f"no usable container engine: {'; '.join(notes)}; {hint}", exitcodes.USAGE)


def build_command(engine: str, plan: ImagePlan, from_base: str | None, network: str | None, no_cache: bool) -> list[str]:
    cmd = [engine, "build", "-f", plan.dockerfile, "-t", plan.ref]
    args = dict(plan.build_args)
    if from_base:
        if engine == "podman":
            cmd += ["--from", from_base]  # replaces the first FROM (the base stage)
        else:
            args["CUDA_BASE" if plan.name == "runtime" else "PYTHON_BASE"] = from_base
    for key, value in args.items():
        cmd += ["--build-arg", f"{key}={value}"]
    if network:
        cmd += ["--network", network]
    if no_cache:
        cmd.append("--no-cache")
    cmd.append(".")
    return cmd


def _parse_build_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SettingsError(f"--build-arg {item!r} must look like KEY=VALUE")
        out[key] = value
    return out


def _run(cmd: list[str]) -> None:
    log.info("$ %s", shlex.join(cmd))
    result = subprocess.run(cmd, cwd=REPO_ROOT)
    if result.returncode != 0:
        raise BuildError(f"`{shlex.join(cmd[:2])}` failed with exit code {result.returncode}: {shlex.join(cmd)}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make images",
        description="Build the runtime and client images, tagged <registry>/<image>:<kit>-lmdeploy<version> from settings.yaml.",
        epilog="Environment: PROFILE (settings profile), KIT_SETTINGS (settings file), "
        "KIT_IMAGES_ENGINE (docker|podman). Examples: make images ARGS=--dry-run; "
        "make images ARGS='--only client --push'.",
    )
    p.add_argument("--only", choices=IMAGES, action="append", help="build only this image (repeatable; default: runtime and client)")
    p.add_argument("--engine", choices=ENGINES, default=os.environ.get("KIT_IMAGES_ENGINE") or None, help="container engine")
    p.add_argument("--push", action="store_true", help="push each image to the settings' registry after building")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.add_argument("--from-base", metavar="LOCALREF", help="build FROM this local image instead of the settings' base (offline builds)")
    p.add_argument(
        "--variant",
        choices=["cuda", "cpu"],
        default="cuda",
        help="runtime only: cuda = lmdeploy[lite] + CUDA torch; cpu = lmdeploy --no-deps + CPU torch, tagged -cpu (tests)",
    )
    p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE", help="override one build arg (repeatable)")
    p.add_argument("--network", help="build network mode passed to the engine (e.g. host, none)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_settings_options(p)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), _main, argv, prog="images")


def _main(args: argparse.Namespace) -> int:
    names = list(dict.fromkeys(args.only)) if args.only else list(IMAGES)
    s = settings_from(args)
    extra = _parse_build_args(args.build_arg)
    plans = plan_images(s, names, args.variant, extra)
    known = {key for plan in plans for key in plan.build_args}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise SettingsError(f"--build-arg {', '.join(unknown)} is not used by {', '.join(names)}; allowed: {', '.join(sorted(known))}")

    try:
        if args.dry_run:  # print-only: name what would run, even on a machine without an engine
            engine = args.engine or next((e for e in ENGINES if shutil.which(e)), ENGINES[0])
        else:
            engine = find_engine(args.engine)
    except subprocess.TimeoutExpired:
        raise BuildError("`docker info` did not answer in 30 s; is the daemon hung? Use --engine podman", exitcodes.USAGE) from None

    steps = []
    for plan in plans:
        steps.append((plan, build_command(engine, plan, args.from_base, args.network, args.no_cache)))
        if args.push:
            steps.append((plan, [engine, "push", plan.ref]))

    if args.dry_run:
        if args.json:
            print(json.dumps({"engine": engine, "commands": [cmd for _, cmd in steps]}, indent=2))
        else:
            for _, cmd in steps:
                print(shlex.join(cmd))
        return exitcodes.OK

    done: list[dict[str, object]] = []
    for i, (plan, cmd) in enumerate(steps, 1):
        action = cmd[1]
        if not args.quiet:  # progress: builds take minutes
            print(f"[{i}/{len(steps)}] {action} {plan.ref}", file=sys.stderr, flush=True)
        start = time.monotonic()
        _run(cmd)
        elapsed = round(time.monotonic() - start, 1)
        log.info("%s %s in %.1f s", action, plan.ref, elapsed)
        if action == "build":
            done.append({"image": plan.name, "ref": plan.ref, "base": args.from_base or plan.base, "seconds": elapsed, "pushed": False})
        else:
            done[-1]["pushed"] = True
    if args.json:
        print(json.dumps({"engine": engine, "images": done}, indent=2))
    else:
        for item in done:
            print(f"{item['ref']}{'  (pushed)' if item['pushed'] else ''}")
    return exitcodes.OK


if __name__ == "__main__":
    sys.exit(main())
