"""`python -m clients.chat`: chat with the served model (the `lmdeploy chat` experience over HTTP).

Streams the reply, keeps the conversation history, takes a system prompt, temperature and max
tokens. `--prompt TEXT` (or `--prompt -` for stdin) asks once and prints only the answer, for
scripts. In the interactive mode `/reset` clears the history and `/exit` (or Ctrl-D) quits.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from clients._common import (
    CONNECTION_ENV_HELP,
    ClientError,
    Connection,
    add_connection_args,
    as_client_error,
    connect,
    run_client,
)
from clients._common import stream_reply as _stream
from kit import exitcodes
from kit.logs import add_verbosity, setup_logging

log = logging.getLogger("clients.chat")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients.chat",
        description=__doc__.split("\n\n")[0],
        epilog=CONNECTION_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt", help="ask once, print only the answer and exit ('-' reads stdin)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float, help="sampling temperature (server default when unset)")
    p.add_argument("--max-tokens", type=int, help="max new tokens per reply (server default when unset)")
    p.add_argument("--no-stream", action="store_true", help="wait for the whole reply instead of streaming it")
    add_connection_args(p)
    add_verbosity(p)
    return p


def ask(client: Any, model: str, messages: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Send the conversation, echo the reply to stdout as it arrives, return it."""
    if args.no_stream:
        kwargs = {k: v for k, v in (("temperature", args.temperature), ("max_tokens", args.max_tokens)) if v is not None}
        resp = client.chat.completions.create(model=model, messages=messages, **kwargs)
        text = resp.choices[0].message.content or ""
        sys.stdout.write(text)
    else:
        parts = []
        for piece in _stream(client, model, messages, args.temperature, args.max_tokens):
            parts.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        text = "".join(parts)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return text


def _run(args: argparse.Namespace, conn: Connection) -> int:
    client, model = connect(conn)
    history: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt is not None:
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        if not prompt.strip():
            raise ClientError("empty prompt", exitcodes.USAGE)
        ask(client, model, [*history, {"role": "user", "content": prompt}], args)
        return exitcodes.OK

    interactive = sys.stdin.isatty()
    print(f"connected to {conn.base_url}, model {model}; /reset clears the history, /exit quits", file=sys.stderr)
    start = len(history)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return exitcodes.OK
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return exitcodes.OK
        if text == "/reset":
            del history[start:]
            print("(history cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        if interactive:
            sys.stdout.write("assistant> ")
        try:
            reply = ask(client, model, history, args)
        except Exception as exc:
            history.pop()  # the history keeps only answered turns
            err = as_client_error(exc, conn)
            if not isinstance(err, ClientError):
                raise
            log.error("%s", err)  # the session goes on; the user may retry
            continue
        history.append({"role": "assistant", "content": reply})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    if args.max_tokens is not None and args.max_tokens < 1:
        log.error("--max-tokens must be >= 1")
        return exitcodes.USAGE
    return run_client(args, _run)


if __name__ == "__main__":
    sys.exit(main())
