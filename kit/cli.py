"""`python -m kit`: show, check and render the settings.

Environment: PROFILE (profile name), KIT_SETTINGS (settings file path).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

from kit import exitcodes
from kit.entry import run, settings_from, settings_parser
from kit.settings import REPO_ROOT, Settings, SettingsError, load_settings, profile_names

log = logging.getLogger("kit")


_settings = settings_from


def _get(s: Settings, dotted: str) -> Any:
    node: Any = s
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise SettingsError(f"no setting {dotted!r}; see `python -m kit show`")
        node = getattr(node, part)
    return node


def cmd_show(args: argparse.Namespace) -> int:
    s = _settings(args)
    data = s.model_dump(mode="json")
    data["derived"] = {
        "fp16_path": s.fp16_path,
        "quantized_path": s.quantized_path,
        "serve_path": s.serve_path,
        "calibration_path": s.calibration_path,
        "model_format": s.effective_model_format,
    }
    print(json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False), end="" if not args.json else "\n")
    return exitcodes.OK


def cmd_get(args: argparse.Namespace) -> int:
    value = _get(_settings(args), args.key)
    if isinstance(value, bool):
        value = "true" if value else "false"
    print("" if value is None else value)
    return exitcodes.OK


def cmd_validate(args: argparse.Namespace) -> int:
    names = profile_names(Path(args.settings) if args.settings else None) if args.all else [args.profile or None]
    for name in names:
        args.profile = name
        s = _settings(args)
        print(f"ok: profile {s.profile}")
    return exitcodes.OK


def cmd_profiles(args: argparse.Namespace) -> int:
    print("\n".join(profile_names(Path(args.settings) if args.settings else None)))
    return exitcodes.OK


def cmd_serve_args(args: argparse.Namespace) -> int:
    from kit.render import serve_args

    print(json.dumps(serve_args(_settings(args))) if args.json else " ".join(serve_args(_settings(args))))
    return exitcodes.OK


def cmd_render(args: argparse.Namespace) -> int:
    from kit import outputs

    root = Path(args.root) if args.root else REPO_ROOT
    names = profile_names(Path(args.settings) if args.settings else None)
    written = outputs.render_all(
        {n: load_settings(n, Path(args.settings) if args.settings else None) for n in names}, root, check=args.check
    )
    if args.check:
        if written:
            print("generated files are out of date (run `make render`):\n  " + "\n  ".join(map(str, written)), file=sys.stderr)
            return exitcodes.FAILED
        print("generated files match settings.yaml")
        return exitcodes.OK
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("generated files already up to date")
    return exitcodes.OK


def cmd_table(args: argparse.Namespace) -> int:
    from kit.docs import settings_table

    print(settings_table(), end="")
    return exitcodes.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kit",
        description=__doc__,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[settings_parser()],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # The same options after the subcommand (`show --profile seed`); SUPPRESS keeps a value given before it.
    after = settings_parser(suppress=True)

    def add(name: str, func, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, parents=[after], allow_abbrev=False)
        p.set_defaults(func=func)
        return p

    p = add("show", cmd_show, "print the effective settings of a profile")
    p.add_argument("--json", action="store_true")
    p = add("get", cmd_get, "print one value, e.g. serving.quant_policy")
    p.add_argument("key")
    p = add("validate", cmd_validate, "validate a profile (or --all)")
    p.add_argument("--all", action="store_true")
    add("profiles", cmd_profiles, "list profiles")
    p = add("serve-args", cmd_serve_args, "print the api_server command line")
    p.add_argument("--json", action="store_true")
    p = add("render", cmd_render, "write generated files (Ansible vars, k8s params) for every profile")
    p.add_argument("--check", action="store_true", help="fail when a generated file differs")
    p.add_argument("--root", help=argparse.SUPPRESS)
    add("settings-table", cmd_table, "print the settings reference table (Markdown)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), lambda args: args.func(args), argv)
