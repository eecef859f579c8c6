"""The one table formatter: aligned text for terminals, pipe tables for Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def text_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], align: str = "", rule: bool = False) -> str:
    """Columns padded to their widest cell, two spaces apart, trailing spaces stripped.

    `align` has one letter per column, "l" or "r" (missing letters mean "l"); `rule` puts a
    dashed line under the header.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    if any(len(row) != len(header) for row in cells):
        raise ValueError(f"every row needs {len(header)} cells")
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    just = [(align[i:i + 1] or "l") for i in range(len(header))]  # fmt: skip

    def line(row: list[str]) -> str:
        return "  ".join(c.rjust(w) if j == "r" else c.ljust(w) for c, w, j in zip(row, widths, just, strict=True)).rstrip()

    lines = [line(cells[0])]
    if rule:
        lines.append("-" * len(lines[0]))
    return "\n".join(lines + [line(row) for row in cells[1:]])


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub pipe table; a `|` inside a cell is escaped so it cannot split the row."""

    def line(row: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"

    if any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row needs {len(header)} cells")
    return "\n".join([line(header), "| " + " | ".join("---" for _ in header) + " |"] + [line(r) for r in rows])
