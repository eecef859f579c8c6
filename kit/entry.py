"""What every entry point shares: the settings options and one error -> exit-code mapping.

Each CLI (kit, kit.cluster, kit.plan, jobs, clients, images/build.py) declares `--profile`,
`--settings`, `--set` and `-v/-q` through `add_settings_options` (or the `settings_parser()`
parent), builds its settings with `settings_from`, and runs its body through `run`: a known error
becomes one stderr line and its exit code; anything else is logged at debug and re-raised.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kit import exitcodes
from kit.logs import add_verbosity, setup_logging
from kit.settings import Settings, SettingsError, deep_merge, load_settings, parse_override

log = logging.getLogger("kit")

SETTINGS_ENV_HELP = "environment: PROFILE (settings profile), KIT_SETTINGS (settings file)"


class KitError(Exception):
    """A known failure: its message is the one line the user sees, `code` the exit code."""

    def __init__(self, message: str, code: int = exitcodes.FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_settings_options(
    target: argparse.ArgumentParser | argparse._ArgumentGroup,
    *,
    overrides: bool = True,
    settings_file: bool = True,
    verbosity: bool = True,
    suppress: bool = False,
) -> None:
    """--profile, --settings, --set and -v/-q, worded the same in every tool.

    `suppress` leaves an option unset when not given (for a subcommand parser, so the value given
    before the subcommand survives).
    """
    default: Any = argparse.SUPPRESS if suppress else None
    target.add_argument("--profile", default=default, help="settings profile (env PROFILE; default: default)")
    if settings_file:
        target.add_argument("--settings", default=default, help="settings file (env KIT_SETTINGS; default: settings.yaml)")
    if overrides:
        target.add_argument(
            "--set",
            action="append",
            default=default,
            metavar="SECTION.KEY=VALUE",
            help="override one setting (repeatable), e.g. serving.quant_policy=4",
        )
    if verbosity:
        if suppress:
            target.add_argument("-v", "--verbose", action="count", default=default, help="more log output (repeatable)")
            target.add_argument("-q", "--quiet", action="count", default=default, help="less log output (repeatable)")
        else:
            add_verbosity(target)  # type: ignore[arg-type]


def settings_parser(**kwargs: bool) -> argparse.ArgumentParser:
    """A parent parser (`parents=[settings_parser()]`) with add_settings_options(**kwargs)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_settings_options(parser, **kwargs)
    return parser


def settings_from(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    """The settings the options name: profile, file, then each --set, then `overrides`."""
    merged: dict[str, Any] = {}
    for item in getattr(args, "set", None) or []:
        merged = deep_merge(merged, parse_override(item))
    settings_file = getattr(args, "settings", None)
    return load_settings(
        getattr(args, "profile", None), Path(settings_file) if settings_file else None, deep_merge(merged, overrides or {})
    )


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a known error; None for anything else (a bug: let it raise)."""
    if isinstance(exc, SettingsError):
        return exitcodes.USAGE
    if isinstance(exc, KeyboardInterrupt):
        return exitcodes.INTERRUPTED
    code = getattr(exc, "code", None)
    if isinstance(exc, Exception) and isinstance(code, int) and not isinstance(code, bool):
        return code
    return None


def report(prog: str | None, exc: BaseException) -> int:
    """Print the one line for a known error and return its exit code; re-raise anything else."""
    code = exit_code(exc)
    if code is None:
        log.debug("unexpected error", exc_info=exc)
        raise exc
    message = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {exc}"
    print(f"{prog}: {message}" if prog else message, file=sys.stderr)
    return code


def run(
    parser: argparse.ArgumentParser, body: Callable[[argparse.Namespace], int], argv: list[str] | None = None, prog: str | None = None
) -> int:
    """Parse argv, set the log level from -v/-q, run body(args); known errors -> report()."""
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0) or 0, getattr(args, "quiet", 0) or 0)
    try:
        return body(args)
    except (Exception, KeyboardInterrupt) as exc:
        return report(prog, exc)
