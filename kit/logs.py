"""Logging setup shared by the CLIs: -v/-q move the level one step from WARNING."""

from __future__ import annotations

import argparse
import logging

_LEVELS = [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less log output (repeatable)")


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    index = min(max(_LEVELS.index(logging.WARNING) - verbose + quiet, 0), len(_LEVELS) - 1)
    logging.basicConfig(level=_LEVELS[index], format="%(levelname)s %(name)s: %(message)s", force=True)
