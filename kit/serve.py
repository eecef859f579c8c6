"""Start `lmdeploy serve api_server` with the API key read from a file, never from the command line.

lmdeploy 0.18 takes keys only as `--api-keys KEY`, which puts the key into the server's argv
(`/proc/<pid>/cmdline`, `ps` in the pod, the kubelet's view). This entrypoint takes the rendered
command *without* the key, parses it with lmdeploy's own CLI parser, sets the parsed `api_keys`
in-process and runs lmdeploy's own `api_server` command, so no process's argv ever holds the key.

    python -m kit.serve --api-key-file /etc/lmdeploy-secrets/api-key -- lmdeploy serve api_server MODEL ...

The key comes from `--api-key-file` (env KIT_API_KEY_FILE; one key per line, e.g. a mounted
Secret), else from the env var LMDEPLOY_API_KEY (a systemd EnvironmentFile), which is then
removed from this process's environment so the engine's child processes do not inherit it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from kit import exitcodes
from kit.entry import KitError, run
from kit.logs import add_verbosity
from kit.render import API_KEY_ENV

log = logging.getLogger("kit.serve")
API_KEY_FILE_ENV = "KIT_API_KEY_FILE"
SERVE_PREFIX = ["lmdeploy", "serve", "api_server"]


class UsageError(KitError):
    """Bad command line: exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exitcodes.USAGE)


class MissingKeyError(KitError):
    """No usable key: exit 1."""


EPILOG = (
    f"env: {API_KEY_FILE_ENV} (default of --api-key-file), {API_KEY_ENV} (the key itself, when no file is given). "
    "Exit 0 when the server stops, 1 when no key can be read, 2 on a bad command line."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kit.serve", description=__doc__.split("\n", 1)[0], epilog=EPILOG)
    p.add_argument("--api-key-file", default=os.environ.get(API_KEY_FILE_ENV), help="file holding the API key(s), one per line")
    add_verbosity(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help="`-- lmdeploy serve api_server MODEL ...` without --api-keys")
    return p


def server_argv(command: list[str]) -> list[str]:
    """The rendered command minus `lmdeploy`: what lmdeploy's own parser takes. Refuses a key in it."""
    if command[:1] == ["--"]:
        command = command[1:]
    if command[:3] != SERVE_PREFIX:
        raise UsageError(f"expected `-- {' '.join(SERVE_PREFIX)} MODEL ...` after the options, got {command[:3]}")
    if any(a == "--api-keys" or a.startswith("--api-keys=") for a in command):
        raise UsageError("--api-keys in the command would put the key in argv; pass it with --api-key-file")
    return command[1:]


def read_keys(path: str | None) -> list[str]:
    """Keys from the file (one per line), else from LMDEPLOY_API_KEY (removed from the environment)."""
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise MissingKeyError(f"cannot read the API key file {path}: {exc.strerror}; mount the Secret there") from None
        keys = [line.strip() for line in text.splitlines() if line.strip()]
        if not keys:
            raise MissingKeyError(f"the API key file {path} is empty; put the key in the Secret's `api-key` entry")
        return keys
    key = os.environ.pop(API_KEY_ENV, "").strip()
    if not key:
        raise MissingKeyError(f"no API key: pass --api-key-file (or {API_KEY_FILE_ENV}) or set {API_KEY_ENV}")
    return [key]


def parse_lmdeploy(argv: list[str]) -> Any:
    """lmdeploy's own CLI parser (as `lmdeploy` builds it); exits 2 with its message on bad arguments."""
    from lmdeploy.cli.cli import CLI
    from lmdeploy.cli.serve import SubCliServe

    CLI.add_parsers()
    SubCliServe.add_parsers()
    args = CLI.parser.parse_args(argv)
    # Same default as lmdeploy.cli.entrypoint.run: the served name falls back to the path.
    args.model_name = args.model_name or args.model_path
    return args


def start_server(opts: argparse.Namespace) -> int:
    """Check the command and the key, then run lmdeploy's own api_server command in this process."""
    lm_argv = server_argv(opts.command)
    keys = read_keys(opts.api_key_file)
    args = parse_lmdeploy(lm_argv)
    args.api_keys = keys
    log.info("starting lmdeploy api_server for %s with %d API key(s) from %s", args.model_path, len(keys), opts.api_key_file or API_KEY_ENV)
    args.run(args)
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), start_server, argv, prog="serve")


if __name__ == "__main__":
    sys.exit(main())
