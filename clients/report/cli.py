"""`python -m clients.report`: parse, collect (file or live service), render, exit.

Exit 0 when every section of the report succeeded; 1 when one failed (the report is still
written and lists the failures; `--draft` accepts it with exit 0) or the service is unreachable;
2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from clients._common import CONNECTION_ENV_HELP, add_connection_args, load_kit_settings, resolve_connection
from clients.report.charts import render_charts
from clients.report.collect import collect_live
from clients.report.render import render_markdown
from kit.datafile import read_data
from kit.entry import KitError, run
from kit.exitcodes import FAILED, OK, USAGE
from kit.logs import add_verbosity

log = logging.getLogger("report")
RESULT_KEYS = {"configs", "clients", "quantize"}


class UsageError(KitError):
    """Bad input: one line, exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, USAGE)


def write_report(results: dict[str, Any], out: Path) -> tuple[Path, list[tuple[str, str]]]:
    """README.md (+ PNGs) under out; returns its path and the sections that failed."""
    out.mkdir(parents=True, exist_ok=True)
    charts, note = render_charts(results, out)
    rendered = render_markdown(results, charts, note)
    md = out / "README.md"
    md.write_text(rendered.markdown)
    return md, rendered.failures


def load_results(src: Path) -> dict[str, Any]:
    results = read_data(src, "JSON", UsageError, missing=f"{src} not found; run `make bench` or pass a results.json")
    if not isinstance(results, dict) or not RESULT_KEYS & set(results):
        raise UsageError(f"{src} is not a benchmark results file (no configs/clients/quantize)")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m clients.report",
        description="Write the evidence report (Markdown + PNG) from a results.json or the live service.",
        epilog=CONNECTION_ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="source", metavar="FILE", type=Path, help="a results.json written by tests/gpu/bench.py")
    p.add_argument("--out", type=Path, help="output directory (default: the results file's directory, else build/report)")
    p.add_argument("--draft", action="store_true", help="exit 0 even when a section failed (the report lists the failures)")
    p.add_argument("--json", action="store_true", help="print the collected results as JSON instead of the report path")
    add_connection_args(p)
    add_verbosity(p)
    return p


def _collect(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    if args.source:
        return load_results(args.source), args.out or args.source.parent
    conn = resolve_connection(args)
    results = collect_live(conn, load_kit_settings(args.profile))
    out = args.out or Path("build/report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results, out


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), _report, argv, prog="report")


def _report(args: argparse.Namespace) -> int:
    results, out = _collect(args)
    md, failed = write_report(results, out)
    print(json.dumps(results, indent=2) if args.json else md)
    if failed and not args.draft:
        names = ", ".join(name for name, _ in failed)
        print(f"report: {len(failed)} section(s) failed ({names}); {md} lists why; --draft accepts a partial report", file=sys.stderr)
        return FAILED
    return OK
