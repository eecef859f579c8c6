"""clients.funcall's check on other questions: the held-out expressions of tests/gpu/train_fc.py.

    python -m tests.gpu.fc_heldout [--base-url URL] [--tool-choice auto] [--json]

`make fc-check` asks one question ("Compute (3+5)*2", 16). This runs the same loop
(clients.funcall.run_check: the model's tool calls, the schema-checked dispatch, the verdict) for
each question of train_fc.HELD_OUT, none of which the test model saw in training, with the
question and the expected number swapped in for the duration of each run. Exit 0 when every
question passes, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clients import funcall
from clients._common import Connection, add_connection_args, connect, run_client
from kit import exitcodes
from kit.logs import add_verbosity, setup_logging
from tests.gpu.train_fc import HELD_OUT


@contextlib.contextmanager
def asking(question: str, expected: int) -> Iterator[None]:
    """clients.funcall with another question and expected number (the check's module constants)."""
    saved = funcall.QUESTION, funcall.EXPECTED, funcall.ANSWER_RE
    funcall.QUESTION, funcall.EXPECTED = question, expected
    funcall.ANSWER_RE = re.compile(rf"(?<![\d.]){expected}(?:\.0+)?(?!\.?\d)")
    try:
        yield
    finally:
        funcall.QUESTION, funcall.EXPECTED, funcall.ANSWER_RE = saved


def check(client: Any, model: str, question: str, expected: int, args: argparse.Namespace) -> dict[str, Any]:
    with asking(question, expected):
        return funcall.run_check(client, model, args)


def _run(args: argparse.Namespace, conn: Connection) -> int:
    client, model = connect(conn)
    verdicts = [check(client, model, q, n, args) for q, n in HELD_OUT]
    if args.output:
        args.output.write_text(json.dumps(verdicts, indent=2) + "\n")
    if args.json:
        print(json.dumps(verdicts, indent=2))
    else:
        print("\n\n".join(funcall.format_verdict(v) for v in verdicts))
    passed = sum(v["passed"] for v in verdicts)
    print(f"{passed}/{len(verdicts)} held-out questions passed", file=sys.stderr)
    return exitcodes.OK if passed == len(verdicts) else exitcodes.FAILED


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.gpu.fc_heldout", description=__doc__.split("\n\n")[0])
    p.add_argument("--tool-choice", choices=["auto", "required"], default="auto", help="first request's tool_choice (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=4, help="requests per question before giving up (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=256, help="max new tokens per reply (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default %(default)s)")
    p.add_argument(
        "--tool-role", choices=["tool", "environment"], default="tool", help="role of tool-result messages (default %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p.add_argument("--output", type=Path, help="also write the verdicts JSON to this file")
    add_connection_args(p)
    add_verbosity(p)
    args = p.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.max_steps < 1 or args.max_tokens < 1:
        print("--max-steps and --max-tokens must be >= 1", file=sys.stderr)
        return exitcodes.USAGE
    return run_client(args, _run)


if __name__ == "__main__":
    sys.exit(main())
